"""Optimisers with PyTorch's update rules, for presets that copy a PyTorch reference.

Keras's `SGD(weight_decay=...)` decays weights decoupled from the gradient
(`w -= lr * wd * w`) and keeps its velocity in units of `lr * g`. PyTorch's `torch.optim.SGD`
adds `wd * w` to the gradient of every parameter before momentum, so that at momentum 0.9 the
decay acts about ten times as strongly, and its momentum buffer holds gradients, so a
learning-rate drop takes effect at once. `TorchSGD` follows PyTorch exactly.
"""

import keras
from keras import ops


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
        for argument, value, upper in (("momentum", momentum, 1.0), ("dampening", dampening, 1.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"`{argument}` must be a float; received {value!r}.")
            if not 0.0 <= value <= upper or (argument == "dampening" and value == upper):
                bounds = "[0, 1]" if argument == "momentum" else "[0, 1)"
                raise ValueError(f"`{argument}` must be in {bounds}; received {value!r}.")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or (
            weight_decay < 0
        ):
            raise ValueError(f"`weight_decay` must be a float >= 0; received {weight_decay!r}.")
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
