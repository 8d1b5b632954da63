"""The signed-gradient optimiser that updates the triggers."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="trapmid_tf")
class SignedGradientStep(keras.optimizers.Optimizer):
    """Plain signed gradient descent: `w <- w - learning_rate * sign(grad)`.

    This is the reference's trigger update. Under `tf.distribute` the optimiser sums the
    gradients over replicas before the update, so the sign is taken of the global gradient;
    a variable's constraint (the triggers' clip to [0, 1]) is applied after each update.

    Args:
        learning_rate: Step size.
        name: Optimiser name.
        **kwargs: Standard optimiser arguments.
    """

    def __init__(self, learning_rate=0.01, name="signed_gradient_step", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        """Applies `variable -= learning_rate * sign(gradient)`.

        Args:
            gradient: The gradient of `variable`, same shape.
            variable: The variable to update.
            learning_rate: The step size.
        """
        step = ops.cast(learning_rate, variable.dtype) * ops.sign(gradient)
        self.assign_sub(variable, step)
