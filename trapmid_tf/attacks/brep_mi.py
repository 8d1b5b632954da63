"""BREP-MI: the label-only boundary-repulsion inversion (Kahla et al., CVPR 2022).

The attacker sees only the target's predicted label of each query, never scores or gradients.
It walks in the latent space of a GAN prior (here GMI's generator), starting from a latent whose
image the target already labels as the attacked class y, and moves away from the class boundary:

1. Draw N points on the sphere of radius R around z: `z + R u_n`, u_n uniform unit vectors.
2. Query their labels; `phi_n = 0` if the label is y, else -1 (repulsion only, as the authors
   run it). If more than `growth_fraction` of the points are labelled y, grow the sphere:
   R <- R * growth (the walk is that far from the boundary).
3. Step `z' = clip(z + step * mean_n(phi_n u_n), -bound, bound)`, with `step = min(R / 3,
   max_step)` computed before any growth; keep z' only if it is still labelled y.
4. Stop when `patience` accepted steps pass without growth (or at `max_iterations`).

The reconstruction is the point of the last growth (the point the authors score), or the
current point if the sphere never grew.

Defaults are the authors' `config2.yaml`: R = 2, growth 1.3, N = 32, step R / 3 capped at 3,
latents clipped to [-1.5, 1.5], patience 1000, initial points from batches of 256 z ~ N(0, I)
clipped likewise. The radius and the step cap are lengths in latent space; they are stated for
the authors' z_dim of 100 and scaled by `sqrt(z_dim / 100)` (the typical norm of a latent grows
as sqrt(z_dim)), so they are the authors' values for GMI's 100-d prior. Two safety limits are
ours: `max_iterations` (the authors' loop has no cap, and rejected steps do not count towards
patience) and `max_initial_batches` (the authors search initial points until they find them;
ours searches until every class has one or `MAX_INITIAL_BATCHES` batches of 256, 2,560,000
queries, are spent). A class still without a starting point is recorded
(`classes_without_start`); its images are random draws and are no reconstructions: the
privacy pipeline leaves them out of the scores and lists the class apart.
Differences from the authors' code: the walk of every requested image runs in one batch (each
with its own radius and counters); the direction uses unit vectors u_n also on the iteration
that grows the sphere (the authors divide that one by the grown radius).

API: the attack itself (`BREPMIAttack.run`) receives only a label oracle, a callable mapping
images to one integer label each; it refuses a Keras model and any answer that is not hard
labels. `HardLabelOracle(classifier)` makes such an oracle; `invert(target, ...)` does this for
the suite's uniform call.
"""

import math
import warnings
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from trapmid_tf.attacks.inversion import (
    AttackResult,
    check_generator,
    identity_labels,
)
from trapmid_tf.validation import (
    check_model,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
)

REFERENCE_Z_DIM = 100
REFERENCE_RADIUS = 2.0
REFERENCE_MAX_STEP = 3.0
PROGRESS_EVERY = 100  # Iterations between progress lines.
# Default bound on the batches searched for initial points (100 before: it left two classes of
# a Trap-MID digits target without a start).
MAX_INITIAL_BATCHES = 10_000


class HardLabelOracle:
    """A classifier seen as a label-only attacker sees it: each query returns argmax labels.

    Args:
        classifier: Keras classifier, images in [0, 1] -> logits.
        batch_size: Images per forward pass.

    Attributes:
        num_classes: The classifier's number of classes (the label space is public).
        queries: Number of images queried so far.
    """

    def __init__(self, classifier, batch_size=1024):
        check_model("classifier", classifier)
        check_positive_int("batch_size", batch_size)
        spec = tf.TensorSpec((None, *classifier.input_shape[1:]), tf.float32)
        self._labels = tf.function(
            lambda images: ops.argmax(classifier(images, training=False), axis=-1),
            input_signature=[spec],
        )
        self._batch_size = int(batch_size)
        self.num_classes = int(classifier.output_shape[-1])
        self.queries = 0

    def __call__(self, images):
        """Returns the predicted label of each image.

        Args:
            images: Float32 NHWC images in [0, 1].

        Returns:
            An int32 numpy array `(images,)`.
        """
        images = np.asarray(images, dtype=np.float32)
        labels = [
            self._labels(images[start : start + self._batch_size]).numpy()
            for start in range(0, len(images), self._batch_size)
        ]
        self.queries += len(images)
        return np.concatenate(labels).astype(np.int32)


def check_label_oracle(label_oracle):
    """Raises ValueError unless `label_oracle` is a callable that is not a Keras model or layer.

    A label-only attack must not be handed anything that exposes scores or gradients.
    """
    if isinstance(label_oracle, (keras.Model, keras.layers.Layer)):
        raise ValueError(
            "`label_oracle` must be a callable returning hard labels (one int per image); "
            f"received a {type(label_oracle).__name__}, which gives scores. Wrap the "
            "classifier in `HardLabelOracle`."
        )
    if not callable(label_oracle):
        raise ValueError(f"`label_oracle` must be callable; received {label_oracle!r}.")


def query_labels(label_oracle, images):
    """Queries the oracle and checks that it answered with one integer label per image.

    Args:
        label_oracle: Callable images -> labels.
        images: NHWC images.

    Returns:
        An int64 numpy array `(images,)`.

    Raises:
        ValueError: If the answer is not a 1-D integer array with one entry per image (e.g.
            scores or logits).
    """
    answer = np.asarray(label_oracle(images))
    if answer.shape != (len(images),) or not np.issubdtype(answer.dtype, np.integer):
        raise ValueError(
            f"`label_oracle` must return one integer label per image, shape ({len(images)},); "
            f"received shape {answer.shape} and dtype {answer.dtype} (scores are not allowed in "
            "a label-only attack)."
        )
    return answer.astype(np.int64)


class BREPMIWalk:
    """The state of all walks of one BREP-MI run, one row per requested image.

    Attributes:
        latents: `(rows, z_dim)` current points.
        labels: `(rows,)` attacked classes.
        radii: `(rows,)` sphere radii.
        moves: `(rows,)` accepted steps that did not grow the sphere.
        moves_at_growth: `(rows,)` value of `moves` at the last growth.
        grown: `(rows,)` whether the sphere ever grew.
        best: `(rows, z_dim)` point accepted at the last growth.
        active: `(rows,)` whether the walk goes on.
        queries: `(rows,)` labels queried by the walk.
    """

    def __init__(self, latents, labels, radius, active):
        self.latents = np.array(latents, dtype=np.float64)
        self.labels = np.asarray(labels, dtype=np.int64)
        rows = len(self.labels)
        self.radii = np.full(rows, float(radius))
        self.moves = np.zeros(rows, np.int64)
        self.moves_at_growth = np.zeros(rows, np.int64)
        self.grown = np.zeros(rows, bool)
        self.best = self.latents.copy()
        self.active = np.array(active, dtype=bool)
        self.queries = np.zeros(rows, np.int64)


class BREPMIResult(NamedTuple):
    """What `BREPMIAttack.run` returns, one row per image (rows as `AttackResult`).

    Attributes:
        images: Float32 NHWC reconstructions in [0, 1].
        labels: int32 attacked classes.
        latents: The latents of the images.
        radii: Final sphere radius of each walk.
        grown: Whether the sphere grew at least once (the authors count a walk that never grew
            as a failure).
        found: Whether an initial point of the class was found (else the image is a random
            draw and the walk never ran).
        queries: Labels queried by each walk (without the initial search).
        initial_queries: Labels queried to find the initial points.
        iterations: Iterations run.
    """

    images: np.ndarray
    labels: np.ndarray
    latents: np.ndarray
    radii: np.ndarray
    grown: np.ndarray
    found: np.ndarray
    queries: np.ndarray
    initial_queries: int
    iterations: int


class BREPMIAttack:
    """The BREP-MI walk on an unconditional GAN generator, with hard labels only.

    Args:
        generator: Unconditional generator `(batch, z_dim)` -> images in [0, 1] (GMI's).
        initial_radius: First sphere radius; None for the authors' 2 scaled by
            `sqrt(z_dim / 100)`.
        growth: Factor by which the radius grows (authors: 1.3), > 1.
        sphere_points: Points per sphere (authors: 32).
        step_ratio: Step size as a fraction of the radius (authors: 1/3).
        max_step: Cap on the step size; None for the authors' 3 scaled by `sqrt(z_dim / 100)`.
        latent_bound: Latents are clipped to `[-latent_bound, latent_bound]` (authors: 1.5).
        growth_fraction: The sphere grows when more than this fraction of its points keep the
            label (authors: sum of +-1 labels > 0.75 N, i.e. 0.875), in [0, 1).
        patience: Accepted steps without growth before a walk stops (authors: 1000).
        max_iterations: Iterations after which every walk stops (ours; None: no cap; 0 returns
            the initial points, the attack's un-optimised starting samples).
        initial_batch: Latents drawn per batch when searching initial points (authors: 256).
        max_initial_batches: Batches searched for initial points before giving up on a class
            (ours, default `MAX_INITIAL_BATCHES`; the authors search until found). The search
            stops as soon as every class has its starting points.

    Attributes:
        iterations: Iterations the last `run` (or `invert`) took, at most `max_iterations`;
            None before the first run. The suite records it as the attack's steps.
        classes_without_start: Sorted list of the classes for which the last `run` (or
            `invert`) found no initial point (their images are random draws); None before
            the first run.
    """

    def __init__(
        self,
        generator,
        initial_radius=None,
        growth=1.3,
        sphere_points=32,
        step_ratio=1.0 / 3.0,
        max_step=None,
        latent_bound=1.5,
        growth_fraction=0.875,
        patience=1000,
        max_iterations=10000,
        initial_batch=256,
        max_initial_batches=MAX_INITIAL_BATCHES,
    ):
        self.z_dim = check_generator(generator)
        scale = math.sqrt(self.z_dim / REFERENCE_Z_DIM)
        initial_radius = REFERENCE_RADIUS * scale if initial_radius is None else initial_radius
        max_step = REFERENCE_MAX_STEP * scale if max_step is None else max_step
        for name, value in [
            ("initial_radius", initial_radius),
            ("step_ratio", step_ratio),
            ("max_step", max_step),
            ("latent_bound", latent_bound),
        ]:
            check_positive_float(name, value)
        check_positive_float("growth", growth)
        if growth <= 1.0:
            raise ValueError(f"`growth` must be > 1; received {growth!r}.")
        if isinstance(growth_fraction, bool) or not 0.0 <= growth_fraction < 1.0:
            raise ValueError(f"`growth_fraction` must be in [0, 1); received {growth_fraction!r}.")
        for name, value in [
            ("sphere_points", sphere_points),
            ("patience", patience),
            ("initial_batch", initial_batch),
            ("max_initial_batches", max_initial_batches),
        ]:
            check_positive_int(name, value)
        if max_iterations is not None:
            check_non_negative_int("max_iterations", max_iterations)
        self.generator = generator
        self.initial_radius = float(initial_radius)
        self.growth = float(growth)
        self.sphere_points = int(sphere_points)
        self.step_ratio = float(step_ratio)
        self.max_step = float(max_step)
        self.latent_bound = float(latent_bound)
        self.growth_fraction = float(growth_fraction)
        self.patience = int(patience)
        self.max_iterations = max_iterations
        self.initial_batch = int(initial_batch)
        self.max_initial_batches = int(max_initial_batches)
        self.iterations = None
        self.classes_without_start = None
        spec = tf.TensorSpec((None, self.z_dim), tf.float32)
        self._generate = tf.function(
            lambda z: generator(z, training=False), input_signature=[spec]
        )

    def generate(self, latents):
        """Runs the generator in inference mode.

        Args:
            latents: `(rows, z_dim)` latents.

        Returns:
            A float32 numpy array of the images.
        """
        return self._generate(np.asarray(latents, dtype=np.float32)).numpy()

    def initial_latents(self, label_oracle, labels, rng):
        """Searches a distinct clipped N(0, I) latent per row whose image has the row's label.

        Args:
            label_oracle: Callable images -> labels.
            labels: `(rows,)` attacked classes.
            rng: `numpy.random.Generator`.

        Returns:
            `(latents, found, queries)`: rows not found keep a random latent.
        """
        bound = self.latent_bound
        latents = np.clip(rng.standard_normal((len(labels), self.z_dim)), -bound, bound)
        found = np.zeros(len(labels), bool)
        queries = 0
        for _ in range(self.max_initial_batches):
            if found.all():
                break
            candidates = np.clip(
                rng.standard_normal((self.initial_batch, self.z_dim)), -bound, bound
            )
            predicted = query_labels(label_oracle, self.generate(candidates))
            queries += len(candidates)
            for label in np.unique(labels[~found]):
                rows = np.flatnonzero((labels == label) & ~found)
                matches = np.flatnonzero(predicted == label)[: len(rows)]
                latents[rows[: len(matches)]] = candidates[matches]
                found[rows[: len(matches)]] = True
        return latents, found, queries

    def step(self, walk, label_oracle, rng):
        """One BREP-MI iteration of every active walk (the module's steps 1-4), in place.

        Args:
            walk: A `BREPMIWalk`.
            label_oracle: Callable images -> labels.
            rng: `numpy.random.Generator`; the sphere directions are one draw of shape
                `(active rows, sphere_points, z_dim)`.
        """
        rows = np.flatnonzero(walk.active)
        count = self.sphere_points
        radii = walk.radii[rows]
        labels = walk.labels[rows]
        directions = rng.standard_normal((len(rows), count, self.z_dim))
        directions /= np.linalg.norm(directions, axis=2, keepdims=True)
        points = walk.latents[rows, None] + radii[:, None, None] * directions
        answers = query_labels(label_oracle, self.generate(points.reshape(-1, self.z_dim)))
        inside = answers.reshape(len(rows), count) == labels[:, None]
        repulsion = np.mean((inside[..., None] - 1.0) * directions, axis=1)
        step_sizes = np.minimum(radii * self.step_ratio, self.max_step)
        candidates = np.clip(
            walk.latents[rows] + step_sizes[:, None] * repulsion,
            -self.latent_bound,
            self.latent_bound,
        )
        grow = inside.sum(axis=1) > self.growth_fraction * count
        walk.radii[rows[grow]] *= self.growth
        walk.moves_at_growth[rows[grow]] = walk.moves[rows[grow]]
        accepted = query_labels(label_oracle, self.generate(candidates)) == labels
        walk.latents[rows[accepted]] = candidates[accepted]
        walk.best[rows[accepted & grow]] = candidates[accepted & grow]
        walk.grown[rows[accepted & grow]] = True
        walk.moves[rows[accepted & ~grow]] += 1
        walk.queries[rows] += count + 1
        walk.active[rows] = walk.moves[rows] - walk.moves_at_growth[rows] < self.patience

    def run(self, label_oracle, classes, num_classes, per_class=1, seed=0, verbose=0):
        """Runs BREP-MI for `per_class` walks of each class, seeing only hard labels.

        Args:
            label_oracle: Callable mapping float32 NHWC images in [0, 1] to one integer label
                each (e.g. `HardLabelOracle(target)`); a Keras model is refused.
            classes: Iterable of class ids to invert.
            num_classes: Size of the label space.
            per_class: Walks (images) per class, each from its own initial point.
            seed: Integer seed of every random draw.
            verbose: 0 silent, else one line every 100 iterations.

        Returns:
            A `BREPMIResult`.

        Raises:
            ValueError: On a bad argument or an oracle that does not answer hard labels.
        """
        check_label_oracle(label_oracle)
        labels = identity_labels(classes, per_class, num_classes)
        check_non_negative_int("seed", seed)
        rng = np.random.default_rng(int(seed))
        latents, found, initial_queries = self.initial_latents(label_oracle, labels, rng)
        if not found.all():
            warnings.warn(
                f"BREP-MI found no initial point for classes "
                f"{np.unique(labels[~found]).tolist()} in {initial_queries} queries; those "
                "images are random draws.",
                stacklevel=2,
            )
        walk = BREPMIWalk(latents, labels, self.initial_radius, found)
        iterations = 0
        while walk.active.any() and (
            self.max_iterations is None or iterations < self.max_iterations
        ):
            self.step(walk, label_oracle, rng)
            iterations += 1
            if verbose and iterations % PROGRESS_EVERY == 0:
                print(
                    f"BREP-MI iteration {iterations}: {int(walk.active.sum())} walks active, "
                    f"mean radius {walk.radii.mean():.3f}"
                )
        self.iterations = iterations
        self.classes_without_start = np.unique(labels[~found]).tolist()
        final = np.where(walk.grown[:, None], walk.best, walk.latents).astype(np.float32)
        return BREPMIResult(
            images=self.generate(final),
            labels=labels,
            latents=final,
            radii=walk.radii,
            grown=walk.grown,
            found=found,
            queries=walk.queries,
            initial_queries=int(initial_queries),
            iterations=iterations,
        )

    def invert(self, target, classes, per_class=5, seed=0, verbose=1):
        """Runs BREP-MI against `target` through a `HardLabelOracle` (the suite's call shape).

        Args:
            target: Keras classifier, images in [0, 1] -> logits; only its labels are used.
            classes, per_class, seed: As `run`.
            verbose: As `run`.

        Returns:
            An `AttackResult` (images, labels, latents of `run`).

        Raises:
            ValueError: If `target` does not take the generator's images.
        """
        check_model("target", target)
        image_shape = tuple(self.generator.output_shape[1:])
        if tuple(target.input_shape[1:]) != image_shape:
            raise ValueError(
                f"`target` must take the generator's images of shape {image_shape}; its input "
                f"shape is {tuple(target.input_shape[1:])}."
            )
        oracle = HardLabelOracle(target)
        result = self.run(oracle, classes, oracle.num_classes, per_class, seed, verbose)
        return AttackResult(result.images, result.labels, result.latents)
