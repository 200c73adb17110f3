import keras

from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.layers.layer_utils import config_with

# The layers of each projection, in order, for an input of width `C` and
# `S` slices: "dense" is `Dense(C)`, "bottleneck" is `Dense(S)`, "norm" a
# `LayerNormalization`, "relu" an activation (the reference's
# `get_projection_params`, src/models.py:35-87).
PROJECTION_LAYERS = {
    "none": (),
    "small": ("dense",),
    "large": ("dense", "relu", "dense"),
    "very_large": ("dense", "relu", "dense", "relu", "dense"),
    "x_large": (
        "norm",
        "dense",
        "relu",
        "dense",
        "relu",
        "dense",
        "norm",
    ),
    "2x_large": (
        "norm",
        "dense",
        "relu",
        "dense",
        "relu",
        "norm",
        "bottleneck",
        "relu",
        "bottleneck",
        "relu",
        "dense",
        "norm",
    ),
}
# Number of Dense layers of each projection.
PROJECTION_DEPTHS = {
    name: sum(kind in ("dense", "bottleneck") for kind in steps)
    for name, steps in PROJECTION_LAYERS.items()
}
# PyTorch's `LayerNorm` default, kept by the reference.
LAYER_NORM_EPSILON = 1e-5


@keras_tac_export("keras_tac.layers.TapProjection")
class TapProjection(keras.layers.Layer):
    """A small trainable, width-preserving map of a pooled tapped activation.

    The reference's projection shapes, for an input of width `C` and `S`
    slices (`LN` a `LayerNormalization`, epsilon `1e-5` as PyTorch's):

    - `"none"`: the identity (nothing to train);
    - `"small"`: one `Dense(C)`;
    - `"large"`: `Dense(C)`, ReLU, `Dense(C)`;
    - `"very_large"`: three `Dense(C)` with ReLUs between them;
    - `"x_large"`: `LN`, the three Dense layers of `"very_large"`, `LN`;
    - `"2x_large"`: `LN`, `Dense(C)`, ReLU, `Dense(C)`, ReLU, `LN`, then a
      bottleneck `Dense(S)`, ReLU, `Dense(S)`, ReLU, `Dense(C)`, and `LN`.

    Args:
        projection: str. One of `"none"`, `"small"`, `"large"`,
            `"very_large"`, `"x_large"`, `"2x_large"`. Defaults to
            `"small"`.
        seed: int. Seed of the kernel initializers. Defaults to `0`.
        num_slices: int or `None`. The bottleneck width `S` of
            `"2x_large"` (the slices per tap; `ActivationProfile` passes its
            own), required there and unused otherwise. Defaults to `None`.
        **kwargs: base layer arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: a tensor of shape `(batch, C)`.

    Returns:
        A tensor of shape `(batch, C)`, in the compute dtype of the layer
        on every backend (float16 under `"mixed_float16"`: the Dense and
        LayerNormalization layers inside share its policy, so they keep
        float32 weights, and LayerNormalization normalises in float32).

    Example:

    >>> import numpy as np
    >>> tuple(TapProjection("large")(np.ones((2, 8))).shape)
    (2, 8)
    >>> layer = TapProjection("2x_large", num_slices=4)
    >>> tuple(layer(np.ones((2, 8))).shape)
    (2, 8)
    >>> [dense.units for dense in layer.dense_layers]
    [8, 8, 4, 4, 8]
    """

    def __init__(self, projection="small", seed=0, num_slices=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(projection, str) or projection not in (
            PROJECTION_LAYERS
        ):
            raise ValueError(
                "Invalid `projection`: expected one of "
                f"{sorted(PROJECTION_LAYERS)}. "
                f"Received: projection={projection!r}"
            )
        if num_slices is not None:
            validation.check_positive_int("num_slices", num_slices)
            num_slices = int(num_slices)
        elif "bottleneck" in PROJECTION_LAYERS[projection]:
            raise ValueError(
                f"The {projection!r} projection needs `num_slices`, the "
                "width of its bottleneck. Received: num_slices=None"
            )
        self.projection = projection
        self.seed = validation.check_seed(seed)
        self.num_slices = num_slices
        self.dense_layers = []
        self.norm_layers = []

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                "TapProjection expected an input of shape (batch, channels) "
                f"with a known channel count. Received shape {input_shape}"
            )
        width = input_shape[-1]
        shape = tuple(input_shape)
        for kind in PROJECTION_LAYERS[self.projection]:
            if kind == "norm":
                layer = keras.layers.LayerNormalization(
                    epsilon=LAYER_NORM_EPSILON,
                    dtype=self.dtype_policy,
                    name=f"layer_norm_{len(self.norm_layers)}",
                )
                layer.build(shape)
                self.norm_layers.append(layer)
            elif kind != "relu":
                index = len(self.dense_layers)
                layer = keras.layers.Dense(
                    width if kind == "dense" else self.num_slices,
                    kernel_initializer=keras.initializers.GlorotUniform(
                        seed=(self.seed * 7919 + index)
                        % (validation.MAX_SEED + 1)
                    ),
                    dtype=self.dtype_policy,
                    name=f"dense_{index}",
                )
                layer.build(shape)
                shape = (shape[0], layer.units)
                self.dense_layers.append(layer)
        self.input_spec = keras.InputSpec(ndim=2, axes={-1: width})

    def call(self, inputs):
        outputs = inputs
        dense_layers = iter(self.dense_layers)
        norm_layers = iter(self.norm_layers)
        for kind in PROJECTION_LAYERS[self.projection]:
            if kind == "relu":
                outputs = keras.activations.relu(outputs)
            elif kind == "norm":
                outputs = next(norm_layers)(outputs)
            else:
                outputs = next(dense_layers)(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return config_with(
            super().get_config(), self, ("projection", "seed", "num_slices")
        )
