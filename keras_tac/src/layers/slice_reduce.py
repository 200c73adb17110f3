import keras
import numpy as np
from keras import ops

from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.layers.layer_utils import config_with
from keras_tac.src.layers.layer_utils import constant_weight

SLICINGS = ("uniform", "random")
REDUCTIONS = ("mean", "median")


@keras_tac_export("keras_tac.layers.slice_indices")
def slice_indices(width, num_slices, slicing="uniform", seed=0):
    """The channel indices of each slice, as a padded NumPy array.

    Every channel belongs to exactly one slice and slice sizes differ by at
    most one (the reference drops the leftover channels; here none is lost,
    and when `num_slices` divides `width` the slices are the reference's).

    - `"uniform"`: contiguous chunks, in channel order.
    - `"random"`: a seeded random permutation of the channels, then chunks
      (indices drawn without replacement).

    Args:
        width: int. Number of channels.
        num_slices: int. Number of slices, from 1 to `width`.
        slicing: str. `"uniform"` or `"random"`. Defaults to `"uniform"`.
        seed: int. Seed of the random permutation. Defaults to `0`.

    Returns:
        An int32 array of shape `(num_slices, ceil(width / num_slices))`;
        unused positions of the shorter slices hold `-1`.

    Example:

    >>> slice_indices(5, 2).tolist()
    [[0, 1, 2], [3, 4, -1]]
    """
    _check_slicing(slicing)
    _check_num_slices(num_slices, width)
    channels = np.arange(width)
    if slicing == "random":
        channels = np.random.default_rng(seed).permutation(width)
    chunks = np.array_split(channels, num_slices)
    indices = np.full((num_slices, len(chunks[0])), -1, dtype=np.int32)
    for row, chunk in enumerate(chunks):
        indices[row, : len(chunk)] = chunk
    return indices


@keras_tac_export("keras_tac.layers.SliceReduce")
class SliceReduce(keras.layers.Layer):
    """Splits a vector into disjoint slices and reduces each to one scalar.

    For an input of width `C`, the channels are split into `num_slices`
    disjoint slices (see `slice_indices`) and each slice is reduced to its
    mean (or median). The slice indices are fixed, seeded and stored as a
    non-trainable weight, so they survive saving and export.

    Args:
        num_slices: int. Number of slices (output width), at most the input
            width. Defaults to `16`.
        slicing: str. `"uniform"` (contiguous chunks) or `"random"`
            (seeded random channel sets). Defaults to `"uniform"`.
        reduction: str. `"mean"` or `"median"`. Defaults to `"mean"`.
        seed: int. Seed of the random slicing. Defaults to `0`.
        **kwargs: base layer arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: a tensor of shape `(batch, C)`.

    Returns:
        A tensor of shape `(batch, num_slices)` in the layer's compute dtype
        (Keras's convention, the same on every backend: float16 under
        `"mixed_float16"`, whose float inputs Keras casts to float16; a
        mean or median of float16 values is as precise as they are).

    Example:

    >>> import numpy as np
    >>> x = np.arange(8, dtype="float32")[None]
    >>> np.asarray(SliceReduce(num_slices=4)(x)).tolist()
    [[0.5, 2.5, 4.5, 6.5]]
    """

    def __init__(
        self,
        num_slices=16,
        slicing="uniform",
        reduction="mean",
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_slicing(slicing)
        if reduction not in REDUCTIONS:
            raise ValueError(
                f"Invalid `reduction`: expected one of {REDUCTIONS}. "
                f"Received: reduction={reduction!r}"
            )
        _check_num_slices(num_slices, width=None)
        self.num_slices = num_slices
        self.slicing = slicing
        self.reduction = reduction
        self.seed = validation.check_seed(seed)

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                "SliceReduce expected an input of shape (batch, channels) "
                f"with a known channel count. Received shape {input_shape}"
            )
        indices = slice_indices(
            input_shape[-1], self.num_slices, self.slicing, self.seed
        )
        self.indices = constant_weight(self, "slice_indices", indices, "int32")
        # The indices fit this width only: a wider input would be cut short,
        # a narrower one indexed out of range (silently clipped on JAX).
        self.input_spec = keras.InputSpec(ndim=2, axes={-1: input_shape[-1]})

    def call(self, inputs):
        num_slices, slice_width = self.indices.shape
        equal_slices = num_slices * slice_width == inputs.shape[-1]
        if self.reduction == "mean" and equal_slices:
            # Equal slices, so no padding to mask: a mean over a reshape,
            # a few ops instead of a dozen (and fewer still to
            # differentiate) in every training step. Uniform slices are
            # contiguous chunks, so they need no gather either.
            if self.slicing == "random":
                inputs = ops.take(
                    inputs, ops.reshape(self.indices, (-1,)), axis=1
                )
            sliced = ops.reshape(inputs, (-1, num_slices, slice_width))
            return ops.mean(sliced, axis=-1)
        valid = ops.greater_equal(self.indices, 0)
        gathered = ops.take(inputs, ops.maximum(self.indices, 0), axis=1)
        sizes = ops.sum(ops.cast(valid, inputs.dtype), axis=-1)
        if self.reduction == "mean":
            total = ops.sum(ops.where(valid, gathered, 0), axis=-1)
            return total / sizes
        # Padding sorts last, so the median sits at the slice's own middle.
        padded = ops.where(valid, gathered, float("inf"))
        ordered = ops.sort(padded, axis=-1)
        counts = ops.sum(ops.cast(valid, "int32"), axis=-1)
        lower = ops.expand_dims((counts - 1) // 2, axis=(0, 2))
        upper = ops.expand_dims(counts // 2, axis=(0, 2))
        batch_shape = (ops.shape(inputs)[0], self.num_slices, 1)
        lower = ops.broadcast_to(lower, batch_shape)
        upper = ops.broadcast_to(upper, batch_shape)
        low = ops.take_along_axis(ordered, lower, axis=-1)
        high = ops.take_along_axis(ordered, upper, axis=-1)
        return ops.squeeze((low + high) / 2, axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_slices)

    def get_config(self):
        return config_with(
            super().get_config(),
            self,
            ("num_slices", "slicing", "reduction", "seed"),
        )


def _check_slicing(slicing):
    if slicing not in SLICINGS:
        raise ValueError(
            f"Invalid `slicing`: expected one of {SLICINGS}. "
            f"Received: slicing={slicing!r}"
        )


def _check_num_slices(num_slices, width):
    validation.check_positive_int("num_slices", num_slices)
    if width is not None and num_slices > width:
        raise ValueError(
            "Invalid `num_slices`: expected a positive int no larger than "
            f"the tapped width {width}. Received: num_slices={num_slices!r}"
        )
