"""`TACModel.calibrate`: what a model promises about the inputs it accepts.

Reads the model's outputs on held-out data once, fits what the confidence
learns there (the combined confidence's standardisation and gate), picks
the rejection threshold(s) for the targets asked
(`keras_tac.thresholds`) and stores them, with the held-out confidences
that the conformal p-values compare against (`CalibrationRecord`).

When a guarantee is asked (`target_risk`, or `delta`), the held-out inputs
are split once at random (seed 0): a tuning tenth fits the confidence and
places Learn-then-Test's grid, the rest tests it and is the reference of
the p-values. The promise then holds by construction: nothing that the
tested inputs decide was fit on them.
"""

import math
import warnings

import numpy as np
from keras import ops

from keras_tac.src import distribution
from keras_tac.src import rejection
from keras_tac.src import thresholds as thresholds_lib
from keras_tac.src import validation
from keras_tac.src.validation import model_inputs

METHODS = ("ltt", "sgr")
# Fraction of the held-out inputs that tune the confidence and the grid
# when a guarantee is asked: the largest coverage in the simulations of
# tests/test_thresholds_simulation.py (0.15 to 0.25 lost up to 10 points at
# n = 2,000, alpha = 1%), as `thresholds.risk_threshold`'s default.
TUNING_FRACTION = 0.1
SPLIT_SEED = 0
# `calibrate` warns that its inputs look like training data when, on at
# least `TRAINING_LIKE_MIN_INPUTS` finite inputs, the base is right on
# `TRAINING_LIKE_ACCURACY` of them, or (without labels) its max softmax is
# above exp(SATURATED_LOG_SOFTMAX) (0.9999) on `TRAINING_LIKE_SATURATED`
# of them.
TRAINING_LIKE_MIN_INPUTS = 20
TRAINING_LIKE_ACCURACY = 0.995
TRAINING_LIKE_SATURATED = 0.9
SATURATED_LOG_SOFTMAX = math.log(1.0 - 1e-4)


def calibration_targets(
    target_coverage=None,
    target_tpr=None,
    target_risk=None,
    delta=None,
    method=None,
):
    """Validates `calibrate`'s targets.

    Returns a dict: `"coverage"`, `"tpr"`, `"risk"` (floats or `None`),
    `"delta"` (a float when a guarantee is asked, else `None`) and
    `"method"` (`"ltt"` or `"sgr"`). At most one of `target_tpr` and the
    others; `target_risk` and `target_coverage` together ask for both;
    `delta` alone with `target_coverage` guarantees the coverage. None of
    them means `target_coverage=0.9`.
    """
    if target_tpr is not None and (
        target_coverage is not None or target_risk is not None
    ):
        given = {
            name: value
            for name, value in (
                ("target_coverage", target_coverage),
                ("target_tpr", target_tpr),
                ("target_risk", target_risk),
            )
            if value is not None
        }
        raise ValueError(
            "`calibrate` expected `target_tpr` alone or any of "
            f"`target_coverage`, `target_risk`. Received: {given}"
        )
    if method is not None:
        validation.check_choice("method", method, METHODS)
        if target_risk is None:
            raise ValueError(
                "`method` chooses how `target_risk` is guaranteed. "
                f"Received: method={method!r} and target_risk=None"
            )
    if delta is not None and target_risk is None and target_coverage is None:
        raise ValueError(
            "`delta` applies with `target_risk` or `target_coverage`. "
            f"Received: delta={delta!r} and neither target"
        )
    targets = {"coverage": None, "tpr": None, "risk": None, "delta": None}
    targets["method"] = method or "ltt"
    if target_tpr is not None:
        validation.check_fraction("target_tpr", target_tpr)
        targets["tpr"] = float(target_tpr)
        return targets
    if target_risk is not None:
        validation.check_fraction("target_risk", target_risk, closed=False)
        targets["risk"] = float(target_risk)
        delta = 0.05 if delta is None else delta
    if target_coverage is None and target_risk is None:
        target_coverage = 0.9
    if target_coverage is not None:
        validation.check_fraction("target_coverage", target_coverage)
        targets["coverage"] = float(target_coverage)
    if delta is not None:
        validation.check_fraction("delta", delta, closed=False)
        targets["delta"] = float(delta)
    return targets


def choose_threshold(targets, confidence, correct, tuning=None):
    """The threshold meeting `targets` on held-out `confidence` (NaN:
    never accepted) and `correct` (bools, needed with a risk target).

    `tuning` is `(confidence, correct)` of the tuning part when the inputs
    were split. Returns `(threshold, summary entries, message)`: the
    threshold is `inf` and the message says why when the targets cannot be
    met with this data.
    """
    if targets["tpr"] is not None:
        return thresholds_lib.tpr_threshold(confidence, targets["tpr"]), {}, ""
    if targets["risk"] is None and targets["delta"] is None:
        threshold = thresholds_lib.coverage_threshold(
            confidence, targets["coverage"]
        )
        return threshold, {}, ""
    if targets["risk"] is None:
        try:
            threshold = thresholds_lib.coverage_threshold(
                confidence, targets["coverage"], delta=targets["delta"]
            )
        except ValueError as error:
            return math.inf, {"delta": targets["delta"]}, str(error)
        return threshold, {"delta": targets["delta"]}, ""
    result = thresholds_lib.risk_threshold(
        confidence,
        correct,
        targets["risk"],
        delta=targets["delta"],
        target_coverage=targets["coverage"],
        method=targets["method"],
        tuning=tuning,
    )
    extra = {"delta": targets["delta"], "method": targets["method"]}
    if "risk_bound" in result:
        extra["risk_bound"] = result["risk_bound"]
    if "p_value" in result:
        # Learn-then-Test's p-value of "risk > target" at the threshold.
        extra["risk_p_value"] = result["p_value"]
    if not result["feasible"]:
        return math.inf, extra, result["message"]
    return result["threshold"], extra, ""


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
    method=None,
    per_class=False,
):
    """`TACModel.calibrate`: picks and stores the rejection threshold(s).

    Targets (see `keras_tac.thresholds` for what each promises):

    - `target_coverage` alone: accept at least this fraction of `x`
      (the default, 0.9); with `delta`, a coverage that holds on future
      inputs with probability `1 - delta`.
    - `target_tpr`: accept at least this fraction of the finite inputs.
    - `target_risk` (needs `y`): the error rate among accepted future
      inputs is at most `target_risk` with probability `1 - delta`
      (default 0.05), by Learn-then-Test (`method="ltt"`, default) or
      selection with guaranteed risk (`method="sgr"`); with
      `target_coverage` too, both hold at once.

    `per_class=True` picks one threshold per predicted class, each meeting
    the targets among the inputs predicted as that class.

    Returns:
        A dict: `"threshold"` (`None` with `per_class=True`), and
        `"class_thresholds"` with `per_class=True` (a class that cannot
        meet the targets gets `inf`: its inputs are all rejected, with a
        warning naming it); `"coverage"` on `x`, `"tpr"`, `"delta"`,
        `"method"` and `"risk_bound"` (SGR) where they apply,
        `"num_tuning"` when the inputs were split, and with `y` the base
        head's `"accuracy"` and `"selective_accuracy"`; with `y` and the
        combined confidence, when the base is both right and wrong there,
        `"knn_error_auroc"` (how the kNN distance ranks the errors) and
        `"knn_weight"` (0 when that is at most 0.6: the kNN distance is
        then left out of the confidence).

    Raises:
        ValueError: bad targets, labels missing for `target_risk`, or (one
            threshold) the targets cannot be met: the message names the
            target and how many calibration inputs would be needed.
    """
    model_inputs.check_data(model, x, None, "calibrate", True)
    targets = calibration_targets(
        target_coverage, target_tpr, target_risk, delta, method
    )
    if targets["risk"] is not None and y is None:
        raise ValueError(
            "`target_risk` needs labels: pass `y` (integer labels of the "
            "calibration inputs) to `calibrate`. Received: y=None"
        )
    keys = ["prediction", "confidence", "input_is_finite"]
    if model.confidence_layer is not None:
        keys.append("confidence_parts")
    outputs = rejection.predict_outputs(model, x, keys, batch_size, verbose)
    # The thresholds are the whole held-out set's: under a multi-process
    # JAX distribution each process predicted its own share (the same in
    # every process, as the replicated threshold variables must be).
    outputs = {k: distribution.gather(v) for k, v in outputs.items()}
    if y is not None and distribution.is_multi_process():
        y = distribution.gather(np.asarray(y))
    finite = outputs["input_is_finite"]
    labels = None
    if y is not None:
        # Checked against what was predicted, so datasets are covered too.
        labels = validation.check_class_indices(
            y, model.num_classes, len(finite), "calibrate"
        )
    if not finite.any():
        raise ValueError(
            "Cannot calibrate: no calibration input gave a finite "
            "confidence (all inputs are non-finite)."
        )
    _warn_if_training_like(outputs, labels, finite)
    tuning = _tuning_mask(model, targets, len(finite))
    confidence = outputs["confidence"]
    correct = None if labels is None else outputs["prediction"] == labels
    knn_auroc = None
    if model.confidence_layer is not None:
        confidence, knn_auroc = _calibrated_combined(
            model, outputs, correct, tuning
        )
    valid = finite & np.isfinite(confidence)
    if not valid.any():
        raise ValueError(
            "Cannot calibrate: no calibration input gave a finite "
            "confidence (all inputs are non-finite)."
        )
    confidence = np.where(valid, confidence, np.nan)
    if per_class:
        threshold = None
        class_thresholds, extra = _per_class_thresholds(
            model, targets, confidence, correct, outputs["prediction"], tuning
        )
    else:
        threshold, extra, message = choose_threshold(
            targets, *_parts(confidence, correct, tuning)
        )
        if message:
            raise ValueError(message)
        class_thresholds = None
    testing = valid if tuning is None else valid & ~tuning
    if threshold is None:
        rejection.clear_threshold(model)
    else:
        model.rejection_threshold.assign(threshold)
    record = model.calibration_record
    record.set_class_thresholds(class_thresholds)
    record.set_reference_scores(confidence[testing])
    per_input = (
        threshold
        if class_thresholds is None
        else class_thresholds[outputs["prediction"]]
    )
    accepted = ops.convert_to_numpy(
        rejection.accept(confidence, finite, per_input)
    )
    summary = {"threshold": threshold, "coverage": float(accepted.mean())}
    if class_thresholds is not None:
        summary["class_thresholds"] = class_thresholds
    if targets["tpr"] is not None:
        summary["tpr"] = float(accepted[valid].mean())
    summary.update(extra)
    if tuning is not None:
        summary["num_tuning"] = int(tuning.sum())
    if knn_auroc is not None:
        summary["knn_error_auroc"] = knn_auroc
        summary["knn_weight"] = float(
            ops.convert_to_numpy(model.confidence_layer.signal_weights)[2]
        )
    if correct is not None:
        summary["accuracy"] = float(correct.mean())
        summary["selective_accuracy"] = (
            float(correct[accepted].mean()) if accepted.any() else math.nan
        )
    return summary


def _warn_if_training_like(outputs, labels, finite):
    """Warns when the held-out inputs look like training data: the base
    right on almost all of them (with labels), or (without labels) its max
    softmax saturated on almost all of them. What `calibrate` fits there (the
    combined confidence's standardisation, the thresholds) would then be
    optimistic on new inputs."""
    count = int(finite.sum())
    if count < TRAINING_LIKE_MIN_INPUTS:
        return
    signs = []
    if labels is not None:
        accuracy = float(
            np.mean(outputs["prediction"][finite] == labels[finite])
        )
        if accuracy >= TRAINING_LIKE_ACCURACY:
            signs.append(f"the base is right on {accuracy:.1%} of them")
    # Without labels, a saturated softmax is the only sign. With them, the
    # accuracy is the direct one: a base saturated on truly held-out
    # inputs (an overconfident MLP on 91 rows of a table) is no alarm.
    if labels is None and "confidence_parts" in outputs:
        log_max_softmax = outputs["confidence_parts"][finite, 1]
        saturated = float(np.mean(log_max_softmax >= SATURATED_LOG_SOFTMAX))
        if saturated >= TRAINING_LIKE_SATURATED:
            signs.append(
                f"its max softmax exceeds {math.exp(SATURATED_LOG_SOFTMAX):.4f}"
                f" on {saturated:.1%} of them"
            )
    if signs:
        warnings.warn(
            f"TACModel.calibrate: on these {count} held-out inputs "
            + " and ".join(signs)
            + ": they look like training data. The combined confidence's "
            "standardisation and the thresholds fitted on them will be "
            "optimistic on new inputs. Calibrate on inputs the model did "
            "not train on (e.g. hold out a fifth of the training data).",
            stacklevel=4,
        )


def _tuning_mask(model, targets, count):
    """Which held-out inputs tune (a fixed random tenth) when a
    guarantee is asked and something is fit on them: Learn-then-Test's
    grid, or the combined confidence; `None` otherwise."""
    ltt = targets["risk"] is not None and targets["method"] == "ltt"
    fits_confidence = (
        targets["delta"] is not None
        and targets["method"] == "ltt"
        and model.confidence_layer is not None
    )
    if not (ltt or fits_confidence):
        return None
    rng = np.random.default_rng(SPLIT_SEED)
    tuning = np.zeros(count, bool)
    # At least 2: the combined confidence's spread needs two inputs.
    size = min(max(math.ceil(TUNING_FRACTION * count), 2), count - 1)
    tuning[rng.permutation(count)[:size]] = True
    return tuning


def _parts(confidence, correct, tuning):
    """`(confidence, correct, tuning)` for `choose_threshold`: the testing
    part and the tuning pair, or everything and `None`."""
    if tuning is None:
        return confidence, correct, None
    tune = (confidence[tuning], None if correct is None else correct[tuning])
    testing = ~tuning
    return (
        confidence[testing],
        None if correct is None else correct[testing],
        tune,
    )


def _per_class_thresholds(
    model, targets, confidence, correct, prediction, tuning
):
    """One threshold per predicted class; `inf`, with a warning, where a
    class cannot meet the targets."""
    values = np.full(model.num_classes, math.inf)
    problems = []
    extra = {}
    for label in range(model.num_classes):
        members = prediction == label
        if not np.isfinite(confidence[members]).any():
            problems.append(f"class {label}: no calibration input predicted")
            continue
        part_tuning = None if tuning is None else tuning[members]
        if part_tuning is not None and not part_tuning.any():
            part_tuning = None
        threshold, extra, message = choose_threshold(
            targets,
            *_parts(
                confidence[members],
                None if correct is None else correct[members],
                part_tuning,
            ),
        )
        if message:
            problems.append(f"class {label}: {message}")
        values[label] = threshold
    extra = {
        key: value
        for key, value in extra.items()
        if key not in ("risk_bound", "risk_p_value")
    }
    if problems:
        warnings.warn(
            "Some classes cannot meet the calibration targets and reject "
            "all their inputs (threshold inf):\n" + "\n".join(problems),
            stacklevel=3,
        )
        extra["infeasible_classes"] = [
            label
            for label in range(model.num_classes)
            if values[label] == math.inf
        ]
    return values, extra


def _calibrated_combined(model, outputs, correct, tuning):
    """Calibrates the combined confidence on the held-out inputs' raw
    signals (the tuning part's only, when split); returns its values on
    all of them, and the kNN distance's error AUROC there (or `None`)."""
    layer = model.confidence_layer
    if not float(ops.convert_to_numpy(ops.sum(layer.bank_valid))):
        raise ValueError(
            "Cannot calibrate: score='combined' expected statistics of the "
            "training data, which this model does not have yet. Call `fit` "
            "(which fits them) or `fit_statistics(x_train, y_train)` first."
        )
    parts = outputs["confidence_parts"]
    fitting = outputs["input_is_finite"]
    if tuning is not None:
        fitting = fitting & tuning
    knn_auroc = layer.calibrate(
        parts[fitting], None if correct is None else correct[fitting]
    )
    return ops.convert_to_numpy(layer.combine(parts)), knn_auroc
