"""The two-player GAN base that the GMI, KED-MI and PLG-MI priors specialise by their losses.

A prior is a `keras.Model` holding a generator and its opponent (a critic or discriminator)
with one optimizer each. Every `train_step` is one opponent step and, every `n`-th step, one
generator step; a subclass gives the two losses, its batch unpacking and its schedule
constants, and the base does the rest: compile (with the compile-config round trip), metrics,
seeding, sampling, the call and the config.

Under a `tf.distribute` strategy each replica returns its share of every loss
(`contract.global_batch_mean`), so the summed gradients are those of the global batch, and
logs the global value (`contract.global_value`). Random draws (latents, labels, noise) are
made for the whole global batch on every replica from the same seed and sliced
(`_replica_rows`), so a step on several replicas draws what the one-device step draws.
Batch statistics inside the networks (batch norm, minibatch discrimination) stay per replica.
"""

import keras
import tensorflow as tf
from keras import ops

from trapmid_tf.contract import checked_images, global_value, replica_slot
from trapmid_tf.optimizers import TorchAdam, dense_gradient
from trapmid_tf.saving import SeedStateMixin
from trapmid_tf.validation import check_positive_int

_serialize = keras.saving.serialize_keras_object
_deserialize = keras.saving.deserialize_keras_object


def _run_if(predicate, step, *args):
    """Runs `step(*args)` only where `predicate()` is true, inside a compiled train step.

    `step` may synchronise replicas (an optimizer update does), which a `tf.cond` in replica
    context cannot hold under a distribution strategy; there the condition moves to the
    cross-replica context and `step` runs on every replica from inside it. Per-replica
    tensors must reach `step` through `args`, not a closure.
    """

    def skip():
        return tf.constant(False)

    def run(call, *call_args):
        call(*call_args)
        return tf.constant(True)

    if not tf.distribute.has_strategy():
        tf.cond(predicate(), lambda: run(step, *args), skip)
        return

    def cross_replica(strategy, *replica_args):
        on_replicas = strategy.extended.call_for_each_replica
        return tf.cond(predicate(), lambda: run(on_replicas, step, replica_args), skip)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=args)


class GANPrior(SeedStateMixin, keras.Model):
    """A generator and its opponent trained by alternating steps; subclasses give the losses.

    Subclasses set:
        _OPPONENT: The attribute naming the opponent network ("critic", "discriminator");
            its optimizer is Keras's `self.optimizer`, also `<_OPPONENT>_optimizer`, whose
            `iterations` count the steps (so saving and reloading resumes the schedule).
        _INTERVAL: The config key of the opponent steps per generator step ("n_critic",
            "n_dis"), also the attribute holding it.
        _NETWORKS: Config keys holding networks.
        _METRICS: Metric names, including "<_OPPONENT>_loss" and "generator_loss".
        _GENERATOR_LEADS: False: the generator steps after the opponent's step that brings
            its count to a multiple of the interval; True: before each opponent step whose
            count so far is a multiple (the first, then every interval-th).
        _ADAM_BETAS: `(beta_1, beta_2)` of each player's default `TorchAdam(2e-4)` (epsilon
            1e-8), the references' `torch.optim.Adam`.
    and define `_unpack(data)`, returning the batch as a tuple of tensors, and
    `_opponent_losses(*batch)` and `_generator_losses(*batch)`, each returning a dict of
    metric name -> this replica's share of the value (see `contract.global_batch_mean`),
    with the minimised loss under "<_OPPONENT>_loss" or "generator_loss".

    Freezing the generator (`generator.trainable = False`) skips the generator steps.
    """

    _OPPONENT = None
    _INTERVAL = None
    _NETWORKS = ("generator",)
    _METRICS = ()
    _GENERATOR_LEADS = False
    _ADAM_BETAS = (0.5, 0.999)

    def __init__(self, generator, opponent, interval, seed, **kwargs):
        check_positive_int(self._INTERVAL, interval)
        super().__init__(**kwargs)
        self.generator = generator
        setattr(self, self._OPPONENT, opponent)
        setattr(self, self._INTERVAL, int(interval))
        self.z_dim = int(generator.inputs[0].shape[-1])
        self.image_shape = tuple(generator.output_shape[1:])
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        self._trackers = {name: keras.metrics.Mean(name=name) for name in self._METRICS}
        self.built = True

    # === Compilation ===

    def compile(self, generator_optimizer=None, opponent_optimizer=None, **kwargs):
        """Attaches one optimizer per player (the default Adam when None) and builds both.

        Subclasses expose it with the opponent's keyword (`critic_optimizer`, ...).

        Args:
            generator_optimizer: The generator's optimizer, or None for the default Adam.
            opponent_optimizer: The opponent's optimizer, or None for the default Adam.
            **kwargs: `keras.Model.compile` options other than optimizer, loss and metrics
                (e.g. `jit_compile`, default False).

        Raises:
            ValueError: On `optimizer`, `loss` or `metrics` arguments, or one optimizer
                object passed for both players.
        """
        for name in ("optimizer", "loss", "metrics", "loss_weights", "weighted_metrics"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"{type(self).__name__}.compile does not take `{name}`; pass "
                    f"`generator_optimizer` and `{self._OPPONENT}_optimizer`. Its losses and "
                    f"metrics ({', '.join(self._METRICS)}) are fixed."
                )
        if generator_optimizer is not None and generator_optimizer is opponent_optimizer:
            raise ValueError(
                f"`generator_optimizer` and `{self._OPPONENT}_optimizer` must be two different "
                "optimizer objects (each keeps its own state); received the same one twice."
            )
        kwargs.setdefault("jit_compile", False)
        super().compile(
            optimizer=keras.optimizers.get(opponent_optimizer or self._default_optimizer()),
            **kwargs,
        )
        self.generator_optimizer = keras.optimizers.get(
            generator_optimizer or self._default_optimizer()
        )
        # Keras builds only `self.optimizer`, and only lazily; build both now, in scope.
        with self.distribute_strategy.scope():
            self.optimizer.build(self._opponent.trainable_variables)
            self.generator_optimizer.build(self.generator.trainable_variables)

    def _default_optimizer(self):
        beta_1, beta_2 = self._ADAM_BETAS
        return TorchAdam(learning_rate=2e-4, beta_1=beta_1, beta_2=beta_2, epsilon=1e-8)

    def get_compile_config(self):
        return {
            "generator_optimizer": _serialize(self.generator_optimizer),
            f"{self._OPPONENT}_optimizer": _serialize(self.optimizer),
            "jit_compile": self.jit_compile,
        }

    def compile_from_config(self, config):
        config = dict(config)
        for key in ("generator_optimizer", f"{self._OPPONENT}_optimizer"):
            config[key] = _deserialize(config[key])
        self.compile(**config)

    # === Training ===

    @property
    def _opponent(self):
        return getattr(self, self._OPPONENT)

    def call(self, inputs, training=False):
        """Generates images: `prior(inputs)` is `generator(inputs)`.

        Args:
            inputs: What the generator takes: latents `(batch, z_dim)`, or `[z, y]` for a
                conditional generator.
            training: Whether the generator runs in training mode.

        Returns:
            Images in [0, 1], `(batch, *image_shape)`.
        """
        return self.generator(inputs, training=training)

    @property
    def metrics(self):
        return list(self._trackers.values())

    def train_step(self, data):
        """One opponent step and, every interval-th step, one generator step.

        Args:
            data: A batch as the subclass documents.

        Returns:
            The metrics, means over the epoch so far (the generator's over its steps only;
            0 before the first).
        """
        batch = self._unpack(data)
        if self._GENERATOR_LEADS:
            self._generator_turn(batch)
        opponent_loss = f"{self._OPPONENT}_loss"
        self._update(self.optimizer, self._opponent, opponent_loss, self._opponent_losses, *batch)
        if not self._GENERATOR_LEADS:
            self._generator_turn(batch)
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    def _generator_turn(self, batch):
        if self.generator.trainable_variables:
            _run_if(self._generator_due, self._generator_update, *batch)

    def _generator_due(self):
        """Whether the opponent's step count is a multiple of the interval."""
        interval = getattr(self, self._INTERVAL)
        return ops.equal(ops.mod(self.optimizer.iterations, interval), 0)

    def _generator_update(self, *batch):
        self._update(
            self.generator_optimizer, self.generator, "generator_loss", self._generator_losses,
            *batch,
        )

    def _update(self, optimizer, network, loss_name, losses, *batch):
        """One optimizer step of `network` on `losses(*batch)[loss_name]`; logs every value.

        Sparse gradients (class embeddings) are summed into dense ones first, as the
        references' PyTorch embeddings give them, whatever the optimizer does with sparse ones.
        """
        variables = network.trainable_variables
        with tf.GradientTape() as tape:
            shares = losses(*batch)
        gradients = tape.gradient(shares[loss_name], variables)
        optimizer.apply([dense_gradient(g) for g in gradients], variables)
        for name, share in shares.items():
            self._trackers[name].update_state(global_value(share))

    # === Sampling ===

    def _replica_rows(self, draw, batch_size):
        """This replica's rows of `draw(global batch size)`, drawn alike on every replica.

        Args:
            draw: Maps a number of rows to a tensor, or a tuple of tensors, of that many rows,
                drawing from the model's seed generator.
            batch_size: This replica's batch size.
        """
        replicas, replica = replica_slot()
        rows = slice(replica * batch_size, (replica + 1) * batch_size)
        return tf.nest.map_structure(lambda values: values[rows], draw(batch_size * replicas))

    # === Input checks ===

    def _checked_images(self, images, name="images"):
        """Checks shape and dtype now and values (finite, in [0, 1]) when the step runs."""
        images, checks = checked_images(images, self.image_shape, name)
        with tf.control_dependencies(checks):
            return tf.identity(images)

    # === Saving ===

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            **{key: _serialize(getattr(self, key)) for key in self._NETWORKS},
            self._INTERVAL: getattr(self, self._INTERVAL),
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in cls._NETWORKS:
            config[key] = _deserialize(config[key])
        return cls(**config)
