"""When a TAC model accepts an input, written once.

The accept rule (finite input, finite confidence, `confidence >= threshold`,
compared in float32), the threshold check and the calibration targets.
`TACModel.calibrate` / `predict_with_rejection` and the exported serving
signatures all call these; the rule is written with `keras.ops` so it runs
inside compiled functions and on NumPy arrays alike.
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_tac.src import feature_graph
from keras_tac.src import jax_backend
from keras_tac.src import streaming
from keras_tac.src import thresholds as thresholds_lib
from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.validation import model_inputs

REJECTION_KEYS = (
    "prediction",
    "confidence",
    "accepted",
    "tac_prediction",
    "tac_confidence",
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
    """The rejection threshold variable of `model` (saved with it): NaN
    until `calibrate` sets it, so an uncalibrated model does not reject
    silently, it refuses to decide."""
    return model.add_weight(
        name="rejection_threshold",
        shape=(),
        initializer=keras.initializers.Constant(float("nan")),
        trainable=False,
        dtype="float32",
    )


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


def calibration_target(
    target_coverage=None, target_tpr=None, target_risk=None, delta=None
):
    """Validates `calibrate`'s targets: returns `(kind, target, delta)`
    with `kind` one of `"coverage"`, `"tpr"`, `"risk"`."""
    given = {
        name: value
        for name, value in (
            ("target_coverage", target_coverage),
            ("target_tpr", target_tpr),
            ("target_risk", target_risk),
        )
        if value is not None
    }
    if len(given) > 1:
        raise ValueError(
            "`calibrate` expected at most one of `target_coverage`, "
            f"`target_tpr`, `target_risk`. Received: {given}"
        )
    if delta is not None and target_risk is None:
        raise ValueError(
            "`delta` only applies with `target_risk`. Received: "
            f"delta={delta!r} and target_risk=None"
        )
    if target_risk is not None:
        validation.check_fraction("target_risk", target_risk, closed=False)
        delta = 0.05 if delta is None else delta
        validation.check_fraction("delta", delta, closed=False)
        return "risk", float(target_risk), float(delta)
    if target_tpr is not None:
        validation.check_fraction("target_tpr", target_tpr)
        return "tpr", float(target_tpr), None
    if target_coverage is None:
        target_coverage = 0.9
    validation.check_fraction("target_coverage", target_coverage)
    return "coverage", float(target_coverage), None


def calibration_threshold(kind, target, delta, confidence, correct):
    """The threshold for a target, and extra entries for the summary.

    `confidence` holds NaN for inputs that are never accepted; `correct`
    (bools) is needed for `kind="risk"` only."""
    if kind == "coverage":
        return thresholds_lib.coverage_threshold(confidence, target), {}
    if kind == "tpr":
        return thresholds_lib.tpr_threshold(confidence, target), {}
    result = thresholds_lib.risk_threshold(
        confidence, correct, target, delta=delta
    )
    if not result["feasible"]:
        raise ValueError(
            f"Cannot guarantee target_risk={target} with delta={delta} on "
            f"{len(confidence)} calibration inputs: no threshold has an "
            "upper risk bound that low. Use more calibration data, a larger "
            "`target_risk` or a larger `delta`."
        )
    return result["threshold"], {
        "risk_bound": result["risk_bound"],
        "delta": delta,
    }


def calibrate(
    model,
    x,
    y=None,
    batch_size=None,
    verbose="auto",
    target_coverage=None,
    target_tpr=None,
    target_risk=None,
    delta=None,
):
    """`TACModel.calibrate`: picks and stores the rejection threshold.

    Give at most one target: `target_coverage` (accept at least this
    fraction of all inputs), `target_tpr` (of the finite inputs) or
    `target_risk` (a selective risk guaranteed with probability
    `1 - delta`, needs `y`; see `keras_tac.thresholds.risk_threshold`).
    None means `target_coverage=0.9`. The threshold is saved with the
    model and baked into exports.

    Args:
        model: a `keras_tac.TACModel`.
        x: held-out inputs (not the training data): arrays or a dataset.
        y: optional labels of `x`. Defaults to `None`.
        batch_size, verbose: as in `predict`.
        target_coverage, target_tpr: floats in `(0, 1]`, or `None`.
        target_risk, delta: floats in `(0, 1)`, or `None` (`delta`
            defaults to `0.05`).

    Returns:
        A dict: `"threshold"`, `"coverage"` on `x`, `"tpr"` or
        `"risk_bound"` and `"delta"` with those targets, and with `y` the
        base head's `"accuracy"` and `"selective_accuracy"`.
    """
    model_inputs.check_data(model, x, None, "calibrate", True)
    kind, target, delta = calibration_target(
        target_coverage, target_tpr, target_risk, delta
    )
    if kind == "risk" and y is None:
        raise ValueError(
            "`target_risk` needs labels: pass `y` (integer labels of the "
            "calibration inputs) to `calibrate`. Received: y=None"
        )
    keys = ["prediction", "confidence", "input_is_finite"]
    if model.confidence_layer is not None:
        keys.append("confidence_parts")
    outputs = predict_outputs(model, x, keys, batch_size, verbose)
    confidence = outputs["confidence"]
    labels = None
    if y is not None:
        # Checked against what was predicted, so datasets are covered too.
        labels = validation.check_class_indices(
            y, model.num_classes, len(confidence), "calibrate"
        )
    if not outputs["input_is_finite"].any():
        raise ValueError(
            "Cannot calibrate: no calibration input gave a finite "
            "confidence (all inputs are non-finite)."
        )
    if model.confidence_layer is not None:
        confidence = _calibrated_combined(model, outputs)
    valid = outputs["input_is_finite"] & np.isfinite(confidence)
    if not valid.any():
        raise ValueError(
            "Cannot calibrate: no calibration input gave a finite "
            "confidence (all inputs are non-finite)."
        )
    correct = None if labels is None else outputs["prediction"] == labels
    threshold, extra = calibration_threshold(
        kind, target, delta, np.where(valid, confidence, np.nan), correct
    )
    model.rejection_threshold.assign(threshold)
    accepted = ops.convert_to_numpy(
        accept(confidence, outputs["input_is_finite"], threshold)
    )
    summary = {"threshold": threshold, "coverage": float(accepted.mean())}
    if kind == "tpr":
        summary["tpr"] = float(accepted[valid].mean())
    summary.update(extra)
    if correct is not None:
        summary["accuracy"] = float(correct.mean())
        summary["selective_accuracy"] = (
            float(correct[accepted].mean()) if accepted.any() else math.nan
        )
    return summary


def predict_outputs(model, x, keys, batch_size=None, verbose="auto"):
    """The TAC model's outputs `keys` on inputs `x` (checked before), as
    NumPy arrays: `predict` of its graph model with only those outputs
    (`keras_tac.src.feature_graph.graph_model`), NumPy inputs served one
    batch at a time where that keeps memory flat."""
    graph = feature_graph.graph_model(model, keys)
    if streaming.should_stream(x):
        x = streaming.ArrayBatches(x, batch_size=batch_size)
        batch_size = None
    with jax_backend.state_kept(graph):
        return graph.predict(x, batch_size=batch_size, verbose=verbose)


def predict_with_rejection(
    model, x, threshold=None, batch_size=None, verbose="auto"
):
    """`TACModel.predict_with_rejection`: predictions and decisions."""
    model_inputs.check_data(model, x, None, "predict_with_rejection", True)
    if threshold is None:
        threshold = model.threshold
        if threshold is None:
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
    result["accepted"] = ops.convert_to_numpy(
        accept(outputs["confidence"], outputs["input_is_finite"], threshold)
    )
    return {key: result[key] for key in REJECTION_KEYS}


def _calibrated_combined(model, outputs):
    """Calibrates the combined confidence on the held-out inputs' raw
    signals; returns its values on them."""
    layer = model.confidence_layer
    if not float(ops.convert_to_numpy(ops.sum(layer.bank_valid))):
        raise ValueError(
            "Cannot calibrate: score='combined' expected statistics of the "
            "training data, which this model does not have yet. Call `fit` "
            "(which fits them) or `fit_statistics(x_train, y_train)` first."
        )
    parts = outputs["confidence_parts"]
    layer.calibrate(parts[outputs["input_is_finite"]])
    return ops.convert_to_numpy(layer.combine(parts))
