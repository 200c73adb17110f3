import keras

from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.layers.layer_utils import config_with
from keras_tac.src.layers.slice_reduce import SliceReduce
from keras_tac.src.layers.tap_pooling import TapPooling
from keras_tac.src.layers.tap_projection import TapProjection


@keras_tac_export("keras_tac.layers.ActivationProfile")
class ActivationProfile(keras.layers.Layer):
    """Turns one tapped activation into its activation profile.

    Pool (`TapPooling`), project (`TapProjection`), slice and reduce
    (`SliceReduce`): a tensor of shape `(batch, ..., C)` becomes a vector of
    `num_slices` scalars per sample. A TAC model concatenates the profiles of
    all its taps and matches them against the class codes.

    Args:
        num_slices: int. Slices (code bits) for this tap, at most its width
            `C`. Defaults to `16`.
        projection: str. `"none"`, `"small"`, `"large"`, `"very_large"`,
            `"x_large"` or `"2x_large"` (see `TapProjection`; the bottleneck
            of `"2x_large"` is `num_slices` wide). Defaults to `"small"`.
        slicing: str. `"uniform"` or `"random"`. Defaults to `"uniform"`.
        reduction: str. `"mean"` or `"median"`. Defaults to `"mean"`.
        seed: int. Seed of the projection's initializers and the random
            slicing. Defaults to `0`.
        **kwargs: base layer arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: a tensor of rank 2 or more, channels last.

    Returns:
        A tensor of shape `(batch, num_slices)` in the layer's compute
        dtype, on every backend: float16 under `"mixed_float16"` (the
        sublayers share this layer's dtype policy; their weights stay
        float32). `TACHead` casts the profile to float32 before matching it
        against the codes.

    Example:

    >>> import numpy as np
    >>> layer = ActivationProfile(num_slices=4)
    >>> tuple(layer(np.ones((2, 7, 7, 32), "float32")).shape)
    (2, 4)

    Reference:
        [Monteiro et al., 2023](https://arxiv.org/abs/2208.14488)
    """

    def __init__(
        self,
        num_slices=16,
        projection="small",
        slicing="uniform",
        reduction="mean",
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_slices = num_slices
        self.projection = projection
        self.slicing = slicing
        self.reduction = reduction
        self.seed = validation.check_seed(seed)
        self.input_width = None
        self.pooling = TapPooling(dtype=self.dtype_policy, name="pooling")
        self.projector = TapProjection(
            projection,
            seed=seed,
            # The width of the "2x_large" bottleneck.
            num_slices=num_slices if projection == "2x_large" else None,
            dtype=self.dtype_policy,
            name="projection",
        )
        self.slice_reduce = SliceReduce(
            num_slices,
            slicing=slicing,
            reduction=reduction,
            seed=seed,
            dtype=self.dtype_policy,
            name="slice_reduce",
        )

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                "ActivationProfile expected a tapped tensor of rank 2 or more "
                f"with a known channel count. Received shape {input_shape}"
            )
        width = input_shape[-1]
        self.input_width = width
        if self.num_slices > width:
            raise ValueError(
                "Invalid `num_slices`: expected a positive int no larger than "
                f"the tapped width {width}. Received: num_slices="
                f"{self.num_slices} (layer {self.name!r})"
            )
        pooled_shape = (input_shape[0], width)
        self.pooling.build(input_shape)
        self.projector.build(pooled_shape)
        self.slice_reduce.build(pooled_shape)
        # Checked here, since `call` skips the sublayers' own checks.
        self.input_spec = keras.InputSpec(min_ndim=2, axes={-1: width})

    def call(self, inputs):
        # `build` built the sublayers for this layer's width and dtype
        # policy, and this layer's own call has cast and checked the inputs:
        # calling their `call` skips Keras's per-call bookkeeping, costly
        # per sublayer, tap and step in eager PyTorch (docs/performance.md;
        # Keras's `TimeDistributed` calls its layer the same way). The Dense
        # layers inside the projection keep their full call (quantized modes
        # dispatch there).
        if len(inputs.shape) != 2:
            # Pooling is the identity on (batch, channels), e.g. the pooled
            # features that `fit` caches.
            inputs = self.pooling.call(inputs)
        return self.slice_reduce.call(self.projector.call(inputs))

    def compute_output_shape(self, input_shape):
        # The slices' shape: `(batch, num_slices)`.
        return self.slice_reduce.compute_output_shape(input_shape)

    def get_config(self):
        return config_with(
            super().get_config(),
            self,
            ("num_slices", "projection", "slicing", "reduction", "seed"),
        )
