"""When a TAC model accepts an input, written once.

The accept rule (finite input, finite confidence, `confidence >= threshold`,
compared in float32), the threshold check and the stored thresholds.
`TACModel.calibrate` (`keras_tac.src.calibration`) /
`predict_with_rejection` and the exported serving signatures all call
these; the rule is written with `keras.ops` so it runs
inside compiled functions and on NumPy arrays alike.
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_tac.src import distribution
from keras_tac.src import feature_graph
from keras_tac.src import jax_backend
from keras_tac.src import streaming
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.layers.calibration_record import UNSET_THRESHOLD
from keras_tac.src.layers.calibration_record import is_unset
from keras_tac.src.validation import model_inputs

REJECTION_KEYS = (
    "prediction",
    "confidence",
    "accepted",
    "tac_prediction",
    "tac_confidence",
    "p_value",
)


@keras_tac_export("keras_tac.rejection.check_threshold")
def check_threshold(threshold):
    """A rejection threshold as a Python float.

    Any real number (Python, NumPy scalar, 0-d array); `inf` rejects every
    input and `-inf` accepts every finite one. NaN and bools are errors.

    Example:

    >>> check_threshold(np.float32(0.5))
    0.5
    """
    if isinstance(threshold, np.ndarray) and threshold.ndim == 0:
        threshold = threshold.item()
    if (
        isinstance(threshold, (bool, np.bool_))
        or not isinstance(threshold, numbers.Real)
        or math.isnan(threshold)
    ):
        raise ValueError(
            "Invalid `threshold`: expected a number (not NaN). "
            f"Received: threshold={threshold!r}"
        )
    return float(threshold)


@keras_tac_export("keras_tac.rejection.accept")
def accept(confidence, input_is_finite, threshold):
    """The accept rule: finite input, finite confidence and
    `confidence >= threshold` (in float32).

    Args:
        confidence: float tensor or array `(batch,)`.
        input_is_finite: bool tensor or array `(batch,)`.
        threshold: float, or float tensor broadcastable to `(batch,)`.

    Returns:
        A bool tensor `(batch,)` (convert with `keras.ops.convert_to_numpy`).

    Example:

    >>> import numpy as np
    >>> accepted = accept([0.9, 0.2, np.nan], [True, True, True], 0.5)
    >>> keras.ops.convert_to_numpy(accepted).tolist()
    [True, False, False]
    """
    confidence = ops.cast(confidence, "float32")
    return ops.logical_and(
        ops.logical_and(
            ops.cast(input_is_finite, "bool"), ops.isfinite(confidence)
        ),
        ops.greater_equal(confidence, ops.cast(threshold, "float32")),
    )


def threshold_variable(model):
    """The rejection threshold variable of `model` (saved with it): unset
    (`UNSET_THRESHOLD`, see there why not NaN) until `calibrate` sets it,
    so an uncalibrated model does not reject silently, it refuses to
    decide."""
    return model.add_weight(
        name="rejection_threshold",
        shape=(),
        initializer=keras.initializers.Constant(UNSET_THRESHOLD),
        trainable=False,
        dtype="float32",
    )


def stored_threshold(model):
    """The single stored threshold of `model` as a float, or `None` while
    unset (`UNSET_THRESHOLD`, or NaN in a file of keras-tac 0.3 or earlier)."""
    value = float(ops.convert_to_numpy(model.rejection_threshold))
    return None if is_unset(value) else value


def clear_threshold(model):
    """Marks the single threshold of `model` unset."""
    model.rejection_threshold.assign(UNSET_THRESHOLD)


def finite_per_sample(inputs):
    """A bool tensor `(batch,)`: whether every value of each sample of
    `inputs` (a tensor or a structure of them) is finite."""
    finite = None
    for tensor in keras.tree.flatten(inputs):
        if "float" not in str(getattr(tensor, "dtype", "float")):
            continue
        flags = ops.isfinite(tensor)
        if len(flags.shape) > 1:
            flags = ops.all(flags, axis=tuple(range(1, len(flags.shape))))
        finite = flags if finite is None else ops.logical_and(finite, flags)
    if finite is None:
        # No float input (token ids): every sample is finite. Shaped from
        # the input, so that it also builds on symbolic inputs.
        first = keras.tree.flatten(inputs)[0]
        finite = ops.ones_like(first, dtype="bool")
        if len(finite.shape) > 1:
            finite = ops.all(finite, axis=tuple(range(1, len(finite.shape))))
    return finite


def predict_outputs(model, x, keys, batch_size=None, verbose="auto"):
    """The TAC model's outputs `keys` on inputs `x` (checked before), as
    NumPy arrays: `predict` of its graph model with only those outputs
    (`keras_tac.src.feature_graph.graph_model`), NumPy inputs served one
    batch at a time where that keeps memory flat."""
    graph = feature_graph.graph_model(model, keys)
    if streaming.should_stream(x):
        x = streaming.ArrayBatches(x, batch_size=batch_size)
        batch_size = None
    # Under a multi-process JAX distribution: this process's rows.
    with jax_backend.state_kept(graph), distribution.local_predictions(graph):
        return graph.predict(x, batch_size=batch_size, verbose=verbose)


def is_calibrated(model):
    """Whether `model` holds a threshold (one, or one per class)."""
    return (
        model.threshold is not None
        or model.calibration_record.per_class is not None
    )


def stored_thresholds(model, prediction):
    """The stored threshold of each input (float32 tensor `(batch,)`): its
    predicted class's when calibrated per class, else the single one.
    Written with `keras.ops`, so the exports compute it too."""
    return model.calibration_record.thresholds_for(
        prediction, model.rejection_threshold
    )


def predict_with_rejection(
    model, x, threshold=None, batch_size=None, verbose="auto"
):
    """`TACModel.predict_with_rejection`: predictions and decisions.

    `threshold=None` uses the stored threshold(s); a number overrides them
    for every input and class. Also returns each input's conformal
    `"p_value"` against the held-out confidences of `calibrate`."""
    model_inputs.check_data(model, x, None, "predict_with_rejection", True)
    if threshold is None:
        if not is_calibrated(model):
            raise ValueError(
                "No rejection threshold: call `calibrate(x_val, y_val)` "
                "first, or pass `threshold=`."
            )
    else:
        threshold = check_threshold(threshold)
    # Only what the decision and the result need leaves the device.
    keys = [key for key in REJECTION_KEYS if key != "accepted"]
    outputs = predict_outputs(
        model, x, [*keys, "input_is_finite"], batch_size, verbose
    )
    result = {key: outputs[key] for key in keys}
    if threshold is None:
        threshold = stored_thresholds(model, outputs["prediction"])
    result["accepted"] = ops.convert_to_numpy(
        accept(outputs["confidence"], outputs["input_is_finite"], threshold)
    )
    return {key: result[key] for key in REJECTION_KEYS}
