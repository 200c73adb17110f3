import keras

from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export

# Number of Dense layers of each projection; ReLUs sit between them.
PROJECTION_DEPTHS = {"none": 0, "small": 1, "large": 2, "very_large": 3}


@keras_tac_export("keras_tac.layers.TapProjection")
class TapProjection(keras.layers.Layer):
    """A small trainable, width-preserving map of a pooled tapped activation.

    The reference's projection shapes, for an input of width `C`:

    - `"none"`: the identity (nothing to train);
    - `"small"`: one `Dense(C)`;
    - `"large"`: `Dense(C)`, ReLU, `Dense(C)`;
    - `"very_large"`: three `Dense(C)` with ReLUs between them.

    Args:
        projection: str. One of `"none"`, `"small"`, `"large"`,
            `"very_large"`. Defaults to `"small"`.
        seed: int. Seed of the kernel initializers. Defaults to `0`.
        **kwargs: base layer arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: a tensor of shape `(batch, C)`.

    Returns:
        A tensor of shape `(batch, C)`.

    Example:

    >>> import numpy as np
    >>> TapProjection("large")(np.ones((2, 8))).shape
    (2, 8)
    """

    def __init__(self, projection="small", seed=0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(projection, str) or projection not in (
            PROJECTION_DEPTHS
        ):
            raise ValueError(
                "Invalid `projection`: expected one of "
                f"{sorted(PROJECTION_DEPTHS)}. "
                f"Received: projection={projection!r}"
            )
        self.projection = projection
        self.seed = validation.check_seed(seed)
        self.dense_layers = []

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                "TapProjection expected an input of shape (batch, channels) "
                f"with a known channel count. Received shape {input_shape}"
            )
        width = input_shape[-1]
        shape = tuple(input_shape)
        for index in range(PROJECTION_DEPTHS[self.projection]):
            dense = keras.layers.Dense(
                width,
                kernel_initializer=keras.initializers.GlorotUniform(
                    seed=(self.seed * 7919 + index) % (validation.MAX_SEED + 1)
                ),
                dtype=self.dtype_policy,
                name=f"dense_{index}",
            )
            dense.build(shape)
            self.dense_layers.append(dense)
        self.input_spec = keras.InputSpec(ndim=2, axes={-1: width})

    def call(self, inputs):
        outputs = inputs
        for index, dense in enumerate(self.dense_layers):
            if index:
                outputs = keras.activations.relu(outputs)
            outputs = dense(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"projection": self.projection, "seed": self.seed})
        return config
