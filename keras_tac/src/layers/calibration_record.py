import keras
import numpy as np
from keras import ops

from keras_tac.src import keras_internals
from keras_tac.src.api_export import keras_tac_export

# How many held-out confidences a model keeps for its conformal p-values.
# More are subsampled at random, which keeps the p-values exact (a random
# subset of exchangeable scores is still exchangeable with a new input);
# 4,096 floats add 16 KB to a saved model and resolve p-values down to
# 1 / 4,097.
MAX_REFERENCE_SCORES = 4096

# What a threshold variable holds while unset (never calibrated, or cleared
# by a refit). Up to keras-tac 0.3 it was NaN, and files saved then still
# hold NaN: both mean "unset" wherever a threshold is read (`is_unset`,
# `unset_mask`); only this value is written. NaN cannot be written: in a
# multi-process JAX run every replicated variable goes through
# `jax.device_put`, which checks that each process passes the same value
# with `==`, and NaN != NaN fails it ("... is not the same on each
# process"). Not `inf` either: calibrate stores `+inf` (a class that cannot
# meet its targets) and `-inf` (accept every finite input) as real
# thresholds. The largest float32 is finite, never a calibrated threshold
# (thresholds are held-out confidences or +-inf), and decides as NaN did,
# should anything compare with it: no finite confidence reaches it.
UNSET_THRESHOLD = float(np.finfo("float32").max)


def is_unset(values):
    """Whether stored threshold `values` (NumPy) are unset: NaN (files of
    keras-tac 0.3 or earlier) or `UNSET_THRESHOLD`."""
    values = np.asarray(values, "float32")
    return np.isnan(values) | (values == np.float32(UNSET_THRESHOLD))


def unset_mask(values):
    """`is_unset` with `keras.ops` (inside compiled and exported graphs)."""
    return ops.logical_or(ops.isnan(values), ops.equal(values, UNSET_THRESHOLD))


def load_unset_as_sentinel(layer, store, variables):
    """`layer`'s own variables from `store`, NaN in `variables` (threshold
    variables of files of keras-tac 0.3 or earlier) read as
    `UNSET_THRESHOLD`: so that such a file also loads under a multi-process
    JAX distribution, and the variables only ever hold the sentinel."""
    own = keras_internals.own_variables(layer)
    indices = {i for i, v in enumerate(own) if any(v is t for t in variables)}
    values = {}
    for key in store.keys():
        value = store[key]
        if int(key) in indices:
            value = np.asarray(value)
            value = np.where(
                np.isnan(value), np.asarray(UNSET_THRESHOLD, value.dtype), value
            )
        values[key] = value
    keras.layers.Layer.load_own_variables(layer, values)


@keras_tac_export("keras_tac.layers.CalibrationRecord")
class CalibrationRecord(keras.layers.Layer):
    """What `TACModel.calibrate` learns beyond one threshold, kept as
    weights so that it is saved and exported with the model.

    - `class_thresholds` `(num_classes,)`: one rejection threshold per
      predicted class (`calibrate(..., per_class=True)`), unset
      (`UNSET_THRESHOLD`; NaN in files of keras-tac 0.3) when the model
      uses its single threshold.
    - `reference_scores` `(MAX_REFERENCE_SCORES,)`: the held-out
      confidences, sorted, `+inf` past the last one. A new input's
      conformal p-value is `(1 + #{reference <= confidence}) / (n + 1)`:
      small when its confidence is lower than most held-out inputs', i.e.
      evidence that it does not come from their distribution.

    Both are computed with `keras.ops`, so they run inside the exported
    SavedModel and ONNX graphs. A model saved before this layer existed
    loads with both unset: one threshold, NaN p-values until it is
    calibrated again.

    Args:
        num_classes: int. Number of classes of the base model.
        **kwargs: `keras.layers.Layer` arguments.

    Example:

    >>> record = CalibrationRecord(num_classes=3)
    >>> record.set_reference_scores(np.array([0.1, 0.2, 0.3, 0.4]))
    >>> p = record.p_values(np.array([0.05, 0.25, np.nan]), np.ones(3, bool))
    >>> [round(float(v), 2) for v in keras.ops.convert_to_numpy(p)]
    [0.2, 0.6, 0.0]
    """

    def __init__(self, num_classes, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.class_thresholds = self.add_weight(
            name="class_thresholds",
            shape=(self.num_classes,),
            initializer=keras.initializers.Constant(UNSET_THRESHOLD),
            trainable=False,
            dtype="float32",
        )
        self.reference_scores = self.add_weight(
            name="reference_scores",
            shape=(MAX_REFERENCE_SCORES,),
            initializer=keras.initializers.Constant(float("inf")),
            trainable=False,
            dtype="float32",
        )
        self.built = True

    def call(self, confidence, input_is_finite):
        return self.p_values(confidence, input_is_finite)

    def p_values(self, confidence, input_is_finite):
        """Conformal p-values `(batch,)` of `confidence` against the stored
        held-out confidences: 0 for a non-finite input or confidence, NaN
        while no reference is stored."""
        confidence = ops.cast(confidence, "float32")
        reference = ops.convert_to_tensor(self.reference_scores)
        # A comparison per reference score, not a search: it exports to
        # ONNX and TF Serving alike, and 4,096 per input is cheap.
        at_most = ops.sum(
            ops.cast(
                ops.less_equal(reference[None, :], confidence[:, None]),
                "float32",
            ),
            axis=-1,
        )
        count = ops.sum(ops.cast(ops.isfinite(reference), "float32"))
        p_value = (1.0 + at_most) / (count + 1.0)
        valid = ops.logical_and(
            ops.cast(input_is_finite, "bool"), ops.isfinite(confidence)
        )
        p_value = ops.where(valid, p_value, ops.zeros_like(p_value))
        return ops.where(
            ops.greater(count, 0.0), p_value, ops.full_like(p_value, np.nan)
        )

    def thresholds_for(self, prediction, threshold):
        """Per-input thresholds `(batch,)`: the predicted class's threshold
        where one is stored, `threshold` (the model's single one) where
        not."""
        per_class = ops.convert_to_tensor(self.class_thresholds)
        # A mask, not `take`: PyTorch's gather exports to an ONNX Squeeze
        # that fails on a dynamic batch.
        is_class = ops.equal(
            ops.cast(prediction, "int32")[:, None],
            ops.arange(self.num_classes, dtype="int32")[None, :],
        )
        chosen = ops.sum(
            ops.where(is_class, per_class[None, :], ops.zeros_like(per_class)),
            axis=-1,
        )
        fallback = ops.full_like(chosen, 1.0) * ops.cast(threshold, "float32")
        return ops.where(unset_mask(chosen), fallback, chosen)

    @property
    def per_class(self):
        """The per-class thresholds as a NumPy array, or `None`."""
        values = ops.convert_to_numpy(self.class_thresholds)
        return None if is_unset(values).all() else values

    @property
    def num_reference_scores(self):
        """How many held-out confidences are stored."""
        scores = ops.convert_to_numpy(self.reference_scores)
        return int(np.isfinite(scores).sum())

    def set_class_thresholds(self, values):
        """Stores per-class thresholds (`None` clears them)."""
        if values is None:
            self.class_thresholds.assign(
                np.full(self.num_classes, UNSET_THRESHOLD, "float32")
            )
            return
        values = np.asarray(values, "float64")
        if values.shape != (self.num_classes,) or np.isnan(values).any():
            raise ValueError(
                f"Expected {self.num_classes} per-class thresholds, none "
                f"NaN. Received shape {values.shape}: {values.tolist()}"
            )
        self.class_thresholds.assign(values.astype("float32"))

    def set_reference_scores(self, scores, seed=0):
        """Stores the finite values of `scores`, sorted; a random
        `MAX_REFERENCE_SCORES` of them when there are more."""
        scores = np.asarray(scores, "float32").ravel()
        scores = scores[np.isfinite(scores)]
        if len(scores) > MAX_REFERENCE_SCORES:
            rng = np.random.default_rng(seed)
            scores = rng.choice(scores, MAX_REFERENCE_SCORES, replace=False)
        stored = np.full(MAX_REFERENCE_SCORES, np.inf, "float32")
        stored[: len(scores)] = np.sort(scores)
        self.reference_scores.assign(stored)

    def load_own_variables(self, store):
        # Models saved before keras-tac 0.3 have no record: keep it unset.
        if len(store.keys()) == 0:
            return
        load_unset_as_sentinel(self, store, [self.class_thresholds])

    def compute_output_shape(self, confidence_shape, input_is_finite_shape):
        return confidence_shape

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes})
        config.pop("dtype", None)
        return config
