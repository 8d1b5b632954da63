"""The optimisation loop shared by the model-inversion attacks, and what the attacks share.

Every attack optimises some latent variables (GAN latents, a latent distribution, or pixels)
to minimise an attack-specific loss. `minimize` runs that optimisation for all identities and
restarts at once, as one batch, inside compiled chunks of iterations: one `tf.function` call
runs a `tf.while_loop` over up to `chunk_size` iterations, and the progress bar is updated
between calls. `InversionAttack` is the base class of the attacks: it checks the arguments,
builds the labels, calls the attack's `build_problem` and `minimize`, and packs the result.

Batch layout: identity-major. `classes=[3, 7]` with `per_class=2` gives labels `[3, 3, 7, 7]`.
"""

from typing import Callable, NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from trapmid_tf.validation import (
    check_model,
    check_non_negative_int,
    check_positive_int,
    is_integer,
)


class AttackResult(NamedTuple):
    """What an inversion returns, one row per image.

    Attributes:
        images: float32 NHWC images in [0, 1], shape `(len(classes) * per_class, H, W, C)`.
        labels: int32 identities, the requested classes in order, each `per_class` times.
        latents: The optimised variables that made each image (first axis one per image);
            see the attack for their meaning.
    """

    images: np.ndarray
    labels: np.ndarray
    latents: np.ndarray


class InversionProblem(NamedTuple):
    """One attack's optimisation problem, as `InversionAttack.build_problem` returns it.

    Attributes:
        variables: The `keras.Variable`s to optimise (a variable's `constraint`, if any, is
            applied by the optimiser after every update).
        loss: Callable `() -> scalar tensor`, the objective to minimise.
        optimizer: A fresh Keras optimiser for `variables`.
        finish: Callable `() -> (images, latents)` (arrays or tensors, one row per image),
            called once after the optimisation.
    """

    variables: list
    loss: Callable
    optimizer: keras.optimizers.Optimizer
    finish: Callable


def check_generator(generator):
    """Returns the latent size of an unconditional generator `(batch, z_dim) -> images`.

    Raises:
        ValueError: If `generator` is not a keras.Model taking `(batch, z_dim)` latents and
            returning NHWC images.
    """
    check_model("generator", generator)
    input_shape, output_shape = generator.input_shape, generator.output_shape
    if not isinstance(input_shape, tuple) or len(input_shape) != 2 or input_shape[1] is None:
        raise ValueError(
            f"`generator` must take latents of shape (batch, z_dim); its input shape is "
            f"{input_shape}."
        )
    if not isinstance(output_shape, tuple) or len(output_shape) != 4:
        raise ValueError(
            f"`generator` must output NHWC images; its output shape is {output_shape}."
        )
    return int(input_shape[1])


def latent_variable(initial_value, name, constraint=None):
    """Returns a trainable `keras.Variable` holding `initial_value`.

    Args:
        initial_value: The starting tensor.
        name: Variable name.
        constraint: None, or a projection `tensor -> tensor` that the optimiser applies after
            every update (e.g. a clip).
    """
    variable = keras.Variable(initial_value, name=name)
    variable.constraint = constraint  # The constructor does not take it.
    return variable


def minimize(
    loss_fn, variables, optimizer, iterations, *, chunk_size=100, verbose=0, jit_compile=False
):
    """Minimises `loss_fn()` over `variables` for `iterations` steps in compiled chunks.

    Each step computes the loss and its gradient with respect to `variables` and calls
    `optimizer.apply`, which also applies each variable's `constraint`. The steps run in a
    `tf.function` holding a `tf.while_loop`; one call runs a chunk of up to `chunk_size`
    steps (the step count is a tensor argument, so a shorter last chunk is not retraced).
    `loss_fn` is therefore traced, not run, once per call of `minimize`; randomness inside it
    must come from `keras.random` ops with a `SeedGenerator`, so that every step draws anew.

    Args:
        loss_fn: Callable `() -> scalar tensor` reading `variables`.
        variables: List of `keras.Variable`s to optimise.
        optimizer: A Keras optimiser; built here for `variables` if it is not built yet.
        iterations: Number of steps, >= 0.
        chunk_size: Steps per compiled call (the progress bar updates between calls), >= 1.
        verbose: 0 silent, 1 progress bar, 2 one line per chunk (as `keras.utils.Progbar`).
        jit_compile: Whether to compile the chunk with XLA.

    Returns:
        The loss of the last step as a float, or None if `iterations` is 0.

    Raises:
        ValueError: If `iterations` or `chunk_size` is not a valid integer.
    """
    check_non_negative_int("iterations", iterations)
    check_positive_int("chunk_size", chunk_size)
    variables = list(variables)
    if not optimizer.built:
        optimizer.build(variables)

    def step(index, _):
        with tf.GradientTape() as tape:
            loss = ops.cast(loss_fn(), "float32")
        optimizer.apply(tape.gradient(loss, variables), variables)
        return index + 1, loss

    @tf.function(jit_compile=jit_compile, autograph=False)
    def run_chunk(steps):
        start = (tf.constant(0), tf.constant(0.0))
        # One step at a time: each step reads the variables the previous one updated.
        return tf.while_loop(
            lambda index, _: index < steps, step, start, parallel_iterations=1
        )[1]

    progress = keras.utils.Progbar(iterations, verbose=verbose, stateful_metrics=["loss"])
    loss, done = None, 0
    while done < iterations:
        steps = min(chunk_size, iterations - done)
        loss = float(run_chunk(tf.constant(steps, dtype=tf.int32)))
        done += steps
        progress.update(done, values=[("loss", loss)])
    return loss


def identity_labels(classes, per_class, num_classes):
    """Returns the int32 labels of an inversion batch: each class `per_class` times, in order.

    Args:
        classes: Iterable of class ids, each in `[0, num_classes)`; not empty.
        per_class: Restarts (images) per class, >= 1.
        num_classes: Number of classes of the target.

    Raises:
        ValueError: If `classes` is empty or holds a non-integer or out-of-range id, or
            `per_class` is not a positive integer.
    """
    check_positive_int("per_class", per_class)
    ids = list(classes)
    if not ids or not all(map(is_integer, ids)) or min(ids) < 0 or max(ids) >= num_classes:
        raise ValueError(
            f"`classes` must be a non-empty iterable of integer class ids in [0, {num_classes}); "
            f"received {ids!r}."
        )
    return np.repeat(np.asarray(ids, dtype=np.int32), per_class)


def cross_entropy_identity_loss(target):
    """Returns the per-image identity loss `CE(target(x), y)` (target in inference mode).

    Args:
        target: The attacked classifier (images -> logits).

    Returns:
        Callable `(images, labels) -> (batch,)` cross-entropies.
    """

    def loss(images, labels):
        logits = ops.cast(target(images, training=False), "float32")
        return ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)

    return loss


REFERENCE_IDENTITIES_PER_BATCH = 60  # the reference inverts identities 0-299 in batches of 60


def reference_batch_weights(num_identities, per_class, identities_per_batch):
    """Per-image weights that give every latent the gradient it has in the reference.

    The reference inverts consecutive identities in batches of `identities_per_batch` (the
    last batch may be smaller), one image per identity and restart, and minimises the batch
    mean. Here all identities and restarts form one batch (identity-major); weighting each
    image by one over the size of its identity's reference batch, and summing, gives each
    latent exactly the reference's gradient, however many identities share our batch.

    Args:
        num_identities: Number of identities in the batch.
        per_class: Images (restarts) per identity; the batch is identity-major.
        identities_per_batch: The reference's identities per batch, >= 1.

    Returns:
        float32 array `(num_identities * per_class,)`.

    Example:
        >>> reference_batch_weights(3, 2, identities_per_batch=2).tolist()
        [0.5, 0.5, 0.5, 0.5, 1.0, 1.0]
    """
    check_positive_int("identities_per_batch", identities_per_batch)
    batch_of_identity = np.arange(num_identities) // identities_per_batch
    batch_sizes = np.bincount(batch_of_identity)
    weights = 1.0 / batch_sizes[batch_of_identity]
    return np.repeat(weights, per_class).astype(np.float32)


def reference_batch_sum(per_image_losses, num_identities, identities_per_batch):
    """Sum of per-image losses weighted by `reference_batch_weights` (identity-major batch).

    Args:
        per_image_losses: `(num_identities * per_class,)` losses.
        num_identities: Number of identities in the batch.
        identities_per_batch: The reference's identities per batch.

    Returns:
        A scalar tensor whose gradient moves each latent as the reference's batch mean does.
    """
    count = int(per_image_losses.shape[0])
    weights = reference_batch_weights(
        num_identities, count // num_identities, identities_per_batch
    )
    return ops.sum(per_image_losses * weights)


class InversionAttack:
    """Base class of the inversion attacks: `invert` around an attack's `build_problem`.

    Subclasses set `image_shape` (or None to take the target's input shape) and implement
    `build_problem`.

    Args:
        iterations: Optimisation steps, >= 0 (0 returns the initial latents' images).
        chunk_size: Steps per compiled call, >= 1; the progress bar updates between calls.
        jit_compile: Whether to compile the optimisation with XLA (off by default: XLA is
            slow to compile on CPU). XLA draws other (equally seeded) random numbers than
            TensorFlow's kernels, so attacks with per-step noise give other results with it.
        identities_per_batch: The reference's identities per batch (60), which sets each
            latent's step size where the update is not scale-free (see
            `reference_batch_weights`).
    """

    image_shape = None

    def __init__(
        self,
        iterations,
        chunk_size=100,
        jit_compile=False,
        identities_per_batch=REFERENCE_IDENTITIES_PER_BATCH,
    ):
        check_non_negative_int("iterations", iterations)
        check_positive_int("chunk_size", chunk_size)
        check_positive_int("identities_per_batch", identities_per_batch)
        self.identities_per_batch = int(identities_per_batch)
        self.iterations = int(iterations)
        self.chunk_size = int(chunk_size)
        self.jit_compile = bool(jit_compile)

    def build_problem(self, target, labels, num_identities, seed_generator):
        """Builds the attack's variables, loss, optimiser and final read-out.

        Args:
            target: The attacked classifier.
            labels: int32 tensor of the batch's labels, identity-major.
            num_identities: Number of requested classes (the batch holds `per_class` of each).
            seed_generator: The `keras.random.SeedGenerator` of this inversion; every random
                draw (initial latents, per-step noise, final samples) must use it.

        Returns:
            An `InversionProblem`.
        """
        raise NotImplementedError

    def invert(self, target, classes, per_class=5, seed=0, verbose=1):
        """Reconstructs `per_class` images of each class in `classes` from `target`.

        All restarts of all classes are optimised together as one batch.

        Args:
            target: A Keras classifier mapping float32 NHWC images in [0, 1] to logits.
            classes: Iterable of class ids to invert.
            per_class: Restarts (images) per class, >= 1.
            seed: Integer seed; the same seed gives the same result.
            verbose: 0 silent, 1 progress bar, 2 one line per chunk.

        Returns:
            An `AttackResult`; images are grouped by class in the order of `classes`.

        Raises:
            ValueError: On a bad argument, or if `target` does not take this attack's images.
        """
        num_classes = self._check_target(target)
        labels = identity_labels(classes, per_class, num_classes)
        check_non_negative_int("seed", seed)
        seed_generator = keras.random.SeedGenerator(int(seed))
        problem = self.build_problem(
            target, ops.convert_to_tensor(labels), len(labels) // per_class, seed_generator
        )
        minimize(
            problem.loss,
            problem.variables,
            problem.optimizer,
            self.iterations,
            chunk_size=self.chunk_size,
            verbose=verbose,
            jit_compile=self.jit_compile,
        )
        images, latents = problem.finish()
        return AttackResult(
            images=ops.convert_to_numpy(images).astype(np.float32),
            labels=labels,
            latents=ops.convert_to_numpy(latents),
        )

    def _check_target(self, target):
        """Returns the target's number of classes after checking it takes our images."""
        check_model("target", target)
        output_shape = target.output_shape
        if not isinstance(output_shape, tuple) or len(output_shape) != 2:
            raise ValueError(
                "`target` must output one (batch, classes) logits tensor; its output shape is "
                f"{output_shape}."
            )
        input_shape = tuple(target.input_shape[1:])
        if self.image_shape is None and (len(input_shape) != 3 or None in input_shape):
            raise ValueError(
                "`target` must take images of a fixed (height, width, channels); its input "
                f"shape is {target.input_shape}."
            )
        if self.image_shape is not None and input_shape != tuple(self.image_shape):
            raise ValueError(
                f"`target` must take the attack's images of shape {tuple(self.image_shape)}; "
                f"its input shape is {input_shape}."
            )
        return int(output_shape[-1])
