import keras
from keras import ops

from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export


@keras_tac_export("keras_tac.recipes.CoupledSGD")
class CoupledSGD(keras.optimizers.SGD):
    """SGD with momentum and L2 weight decay added to the gradient, as
    `torch.optim.SGD` (dampening 0, no Nesterov) does.

    Keras's `weight_decay` is decoupled: it shrinks each variable by
    `learning_rate * weight_decay` outside the momentum. PyTorch's SGD, used
    by the TAC reference, adds `weight_decay * w` to the gradient, so the
    decay goes through the momentum buffer (about `1 / (1 - momentum)`, ten
    times, stronger at momentum 0.9). PyTorch also keeps the buffer in
    gradient units and scales it by the current learning rate, where Keras's
    velocity is in step units: the two differ after a learning-rate change.
    This optimizer follows PyTorch on both counts; per variable and step:

    ```
    g = clipped_gradient + weight_decay * w
    buffer = momentum * buffer + g
    w = w - learning_rate * buffer
    ```

    Gradients are clipped first (`global_clipnorm` and the other Keras
    clipping arguments), the decay term is not clipped, as in the reference
    (`clip_grad_norm_` before `optimizer.step()`).
    `exclude_from_weight_decay` is honoured.

    Args:
        learning_rate: float or schedule. Defaults to `0.01`.
        momentum: float in `[0, 1]`. Defaults to `0.0`.
        weight_decay: float `>= 0`. The L2 coefficient, added to the
            gradient. Stored as `coupled_weight_decay` (Keras's own
            `weight_decay` attribute, the decoupled one, stays `None`).
            Defaults to `0.0`.
        **kwargs: other `keras.optimizers.SGD` arguments, such as
            `global_clipnorm` and `name` (not `nesterov`).

    Example:

    >>> import numpy as np
    >>> optimizer = CoupledSGD(0.1, momentum=0.9, weight_decay=0.5)
    >>> w = keras.Variable(np.array([1.0], "float32"))
    >>> optimizer.apply([keras.ops.zeros((1,))], [w])
    >>> round(float(w.numpy()[0]), 4)  # 1 - 0.1 * (0 + 0.5 * 1)
    0.95
    """

    def __init__(
        self, learning_rate=0.01, momentum=0.0, weight_decay=0.0, **kwargs
    ):
        if kwargs.pop("nesterov", False):
            raise ValueError(
                "CoupledSGD follows torch.optim.SGD without "
                "Nesterov momentum. Received: nesterov=True"
            )
        # Keras's decoupled decay, absent from saved configs of this class.
        kwargs.pop("weight_decay", None)
        validation.check_number("weight_decay", weight_decay)
        super().__init__(
            learning_rate=learning_rate,
            momentum=float(momentum),
            nesterov=False,
            weight_decay=None,
            **kwargs,
        )
        self.coupled_weight_decay = float(weight_decay)

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay and self._use_weight_decay(variable):
            gradient = ops.add(
                gradient,
                ops.multiply(
                    ops.cast(self.coupled_weight_decay, variable.dtype),
                    variable,
                ),
            )
        if self.momentum:
            buffer = self.momentums[self._get_variable_index(variable)]
            # The buffer starts at zero, so its first value is the gradient,
            # as PyTorch's.
            self.assign(
                buffer,
                ops.add(
                    ops.multiply(
                        buffer, ops.cast(self.momentum, variable.dtype)
                    ),
                    gradient,
                ),
            )
            gradient = buffer
        self.assign_sub(variable, ops.multiply(gradient, learning_rate))

    def get_config(self):
        config = super().get_config()
        config.pop("nesterov", None)
        config["weight_decay"] = self.coupled_weight_decay
        return config
