"""Optimisers with PyTorch's update rules, for presets that copy a PyTorch reference.

Keras's `SGD(weight_decay=...)` decays weights decoupled from the gradient
(`w -= lr * wd * w`) and keeps its velocity in units of `lr * g`. PyTorch's `torch.optim.SGD`
adds `wd * w` to the gradient of every parameter before momentum, so that at momentum 0.9 the
decay acts about ten times as strongly, and its momentum buffer holds gradients, so a
learning-rate drop takes effect at once. `TorchSGD` follows PyTorch exactly.

Keras's `Adam` adds epsilon to the square root of the second moment before its bias
correction, PyTorch's `torch.optim.Adam` after it, so the two differ while the second moment
is small (early steps, near-zero gradients); Keras's Adam also squares an embedding's sparse
gradient row by row before the rows of a repeated index add up. `TorchAdam` follows PyTorch.
"""

import keras
import tensorflow as tf
from keras import ops

from trapmid_tf.validation import check_fraction, check_non_negative_float


def dense_gradient(gradient):
    """Sums a sparse gradient into a dense tensor, as PyTorch's dense gradients are.

    The gradient of a row lookup (`keras.layers.Embedding`, `ops.take` of a variable) is a
    `tf.IndexedSlices` with one row per looked-up index; densifying adds the rows of an index
    looked up several times, which an optimiser that squares its gradient must see first.

    Args:
        gradient: A gradient: a `tf.IndexedSlices`, a dense tensor, or None.

    Returns:
        The dense tensor of a `tf.IndexedSlices`; any other `gradient` unchanged.
    """
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


@keras.saving.register_keras_serializable(package="trapmid_tf")
class TorchSGD(keras.optimizers.Optimizer):
    """Stochastic gradient descent with the update rule of PyTorch's `torch.optim.SGD`.

    Per trainable variable `w` with gradient `g`, learning rate `lr`, at step `t` (from 0):

        g = g + weight_decay * w                              (every variable, BN included)
        buf = g                                   if t == 0
        buf = momentum * buf + (1 - dampening) * g  otherwise
        g = g + momentum * buf  if nesterov else buf
        w = w - lr * g

    With `momentum=0` there is no buffer: `w = w - lr * (g + weight_decay * w)`. Non-trainable
    variables (BatchNorm moving statistics) are untouched, as PyTorch's buffers are.
    Learning-rate schedules, loss scaling, gradient clipping and `tf.distribute` strategies work
    as with any Keras optimiser.

    Args:
        learning_rate: Float, `keras.optimizers.schedules.LearningRateSchedule` or callable.
        momentum: Momentum factor, a float in [0, 1].
        dampening: Dampening of the momentum, a float in [0, 1).
        weight_decay: Coupled L2 weight decay (added to the gradient), a float >= 0.
        nesterov: Whether to use Nesterov momentum (needs `momentum > 0`, `dampening == 0`).
        name: Optimiser name.
        **kwargs: Other `keras.optimizers.Optimizer` arguments (`clipnorm`,
            `loss_scale_factor`, `gradient_accumulation_steps`, ...). Keras's own decoupled
            `weight_decay` is not available here.

    Example:
        >>> optimizer = TorchSGD(1e-2, momentum=0.9, weight_decay=1e-4)
        >>> TorchSGD.from_config(optimizer.get_config()).coupled_weight_decay
        0.0001
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.0,
        dampening=0.0,
        weight_decay=0.0,
        nesterov=False,
        name="torch_sgd",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=None, **kwargs)
        check_fraction("momentum", momentum, include_one=True)
        check_fraction("dampening", dampening)
        check_non_negative_float("weight_decay", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                "`nesterov=True` needs `momentum` > 0 and `dampening` == 0 (as in PyTorch); "
                f"received momentum={momentum!r}, dampening={dampening!r}."
            )
        self.momentum = float(momentum)
        self.dampening = float(dampening)
        # Not `weight_decay`: the base class reads that for its own decoupled decay (kept off).
        self.coupled_weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)

    def build(self, variables):
        """Creates one momentum buffer per variable (none when `momentum` is 0).

        Args:
            variables: The trainable variables this optimiser will update.
        """
        if self.built:
            return
        super().build(variables)
        self.momentum_buffers = []
        if self.momentum:
            self.momentum_buffers = self.add_optimizer_variables(variables, "momentum_buffer")

    def update_step(self, gradient, variable, learning_rate):
        """Applies PyTorch's SGD update to one variable.

        Args:
            gradient: The variable's gradient.
            variable: The variable.
            learning_rate: This step's learning rate.
        """
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay:
            gradient = ops.add(gradient, ops.multiply(variable, self.coupled_weight_decay))
        if self.momentum:
            buffer = self.momentum_buffers[self._get_variable_index(variable)]
            # At step 0 the buffer is zero and PyTorch sets it to the undampened gradient.
            first_step = ops.cast(ops.equal(self.iterations, 0), variable.dtype)
            gradient_weight = 1.0 - self.dampening * (1.0 - first_step)
            self.assign(
                buffer,
                ops.add(ops.multiply(buffer, self.momentum), ops.multiply(gradient, gradient_weight)),
            )
            if self.nesterov:
                gradient = ops.add(gradient, ops.multiply(buffer, self.momentum))
            else:
                gradient = buffer
        self.assign_sub(variable, ops.multiply(gradient, learning_rate))

    def get_config(self):
        """Returns the optimiser's configuration (with `weight_decay` the coupled decay)."""
        config = super().get_config()
        config.update(
            momentum=self.momentum,
            dampening=self.dampening,
            weight_decay=self.coupled_weight_decay,
            nesterov=self.nesterov,
        )
        return config


@keras.saving.register_keras_serializable(package="trapmid_tf")
class TorchAdam(keras.optimizers.Optimizer):
    """Adam with the update rule of PyTorch's `torch.optim.Adam` (amsgrad off, no decay).

    Per trainable variable `w` with gradient `g`, learning rate `lr`, at step `t` (from 1):

        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g^2
        w = w - lr / (1 - beta_1^t) * m / (sqrt(v) / sqrt(1 - beta_2^t) + epsilon)

    Epsilon is added to the bias-corrected `sqrt(v)`; Keras's `Adam` adds it to the
    uncorrected one (`w -= lr sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)`),
    which acts like PyTorch's epsilon times `1 / sqrt(1 - beta_2^t)` (32 at the first step
    with beta_2 0.999). A sparse gradient (`tf.IndexedSlices`, from an embedding lookup) is
    summed into a dense one first (`dense_gradient`), as PyTorch's `nn.Embedding` gradient is,
    so the rows of a class looked up twice add before they are squared, and every row's
    moments decay at every step. The bias corrections and the step size are computed in
    float64, as PyTorch's Python floats are, the rest in the variables' dtype (float32 or
    float64). Learning-rate schedules, loss scaling, gradient clipping and `tf.distribute`
    strategies work as with any Keras optimiser. PyTorch's `weight_decay`, `amsgrad` and
    `maximize` are not implemented (the references copied here leave them off).

    Args:
        learning_rate: Float, `keras.optimizers.schedules.LearningRateSchedule` or callable.
        beta_1: Decay of the first moment, a float in [0, 1).
        beta_2: Decay of the second moment, a float in [0, 1).
        epsilon: Added to the bias-corrected `sqrt(v)`, a float >= 0 (PyTorch's default 1e-8).
        name: Optimiser name.
        **kwargs: Other `keras.optimizers.Optimizer` arguments (`clipnorm`,
            `loss_scale_factor`, `gradient_accumulation_steps`, ...). Keras's decoupled
            `weight_decay` is not available here.

    Example:
        >>> optimizer = TorchAdam(2e-4, beta_1=0.0, beta_2=0.9)
        >>> TorchAdam.from_config(optimizer.get_config()).beta_2
        0.9
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        name="torch_adam",
        **kwargs,
    ):
        weight_decay = kwargs.pop("weight_decay", None)
        if weight_decay is not None:
            raise ValueError(
                "TorchAdam has no weight decay (PyTorch's Adam with weight_decay=0); "
                f"`weight_decay` must be None; received {weight_decay!r}."
            )
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=None, **kwargs)
        self.beta_1 = check_fraction("beta_1", beta_1)
        self.beta_2 = check_fraction("beta_2", beta_2)
        check_non_negative_float("epsilon", epsilon)
        self.epsilon = float(epsilon)

    def build(self, variables):
        """Creates the first and second moments of every variable.

        Args:
            variables: The trainable variables this optimiser will update.
        """
        if self.built:
            return
        super().build(variables)
        self.first_moments, self.second_moments = self.add_optimizer_variables(
            variables, ["first_moment", "second_moment"]
        )

    def update_step(self, gradient, variable, learning_rate):
        """Applies PyTorch's Adam update to one variable.

        Args:
            gradient: The variable's gradient (dense, or a `tf.IndexedSlices`).
            variable: The variable.
            learning_rate: This step's learning rate.
        """
        dtype = variable.dtype

        def constant(value, dtype=dtype):  # Not through a float32 tensor, as Keras casts.
            return ops.convert_to_tensor(float(value), dtype)

        # The bias corrections in float64, as PyTorch's Python floats: in float32,
        # 1 - 0.999^t would lose 1e-5 of its value to cancellation.
        step = ops.cast(self.iterations + 1, "float64")
        first_correction = 1.0 - ops.power(constant(self.beta_1, "float64"), step)
        second_correction = 1.0 - ops.power(constant(self.beta_2, "float64"), step)
        step_size = ops.cast(
            ops.divide(ops.cast(learning_rate, "float64"), first_correction), dtype
        )
        second_correction_sqrt = ops.cast(ops.sqrt(second_correction), dtype)
        gradient = ops.cast(dense_gradient(gradient), dtype)
        index = self._get_variable_index(variable)
        first, second = self.first_moments[index], self.second_moments[index]
        self.assign_add(
            first, ops.multiply(ops.subtract(gradient, first), constant(1.0 - self.beta_1))
        )
        self.assign(
            second,
            ops.add(
                ops.multiply(second, constant(self.beta_2)),
                ops.multiply(ops.square(gradient), constant(1.0 - self.beta_2)),
            ),
        )
        denominator = ops.add(
            ops.divide(ops.sqrt(second), second_correction_sqrt), constant(self.epsilon)
        )
        self.assign_sub(variable, ops.multiply(ops.divide(first, denominator), step_size))

    def get_config(self):
        """Returns the optimiser's configuration."""
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return config
