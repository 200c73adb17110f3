import keras
from keras import ops

from keras_tac.src.api_export import keras_tac_export


@keras_tac_export("keras_tac.layers.TapPooling")
class TapPooling(keras.layers.Layer):
    """Averages a tapped activation over its spatial or sequence axes.

    A tensor of shape `(batch, d1, ..., dn, channels)` becomes
    `(batch, channels)`: the mean over every axis but the first and the last
    (channels last, as Keras lays out convolutions by default). A 2-D input
    `(batch, channels)` passes through unchanged.

    Call arguments:
        inputs: a tensor of rank 2 or more.

    Returns:
        A tensor of shape `(batch, channels)`. For float inputs, in the
        layer's compute dtype on every backend (Keras casts them to it:
        float16 under `"mixed_float16"`).

    Example:

    >>> import numpy as np
    >>> tuple(TapPooling()(np.ones((2, 5, 5, 3))).shape)
    (2, 3)

    Reference:
        [Monteiro et al., 2023](https://arxiv.org/abs/2208.14488)
    """

    def call(self, inputs):
        rank = len(inputs.shape)
        if rank < 2:
            raise ValueError(
                "TapPooling expected an input of rank 2 or more "
                f"(batch, ..., channels). Received shape {inputs.shape}"
            )
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        if not dtype.startswith(("float", "bfloat", "int", "uint")):
            raise TypeError(
                f"TapPooling expected a numeric tensor. Received dtype {dtype}"
            )
        if rank == 2:
            return inputs
        axes = tuple(range(1, rank - 1))
        if inputs.shape[-1] is None:
            return ops.mean(inputs, axis=axes)
        # The same values as a plain mean, but on JAX's XLA:CPU this form
        # compiles to a faster program inside a tapped network (measured in
        # docs/performance.md).
        pooled = ops.mean(inputs, axis=axes, keepdims=True)
        return ops.reshape(pooled, (-1, inputs.shape[-1]))

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(
                "TapPooling expected an input of rank 2 or more "
                f"(batch, ..., channels). Received shape {input_shape}"
            )
        return (input_shape[0], input_shape[-1])
