"""Rejection thresholds chosen on held-out data, with what they promise.

Pure NumPy (plus `scipy.special`, installed with scikit-learn), free of
Keras state; `TACModel.calibrate` calls these. Confidence scores are
"higher = more confident" and a threshold `t` accepts an input when
`confidence >= t`. NaN confidences mark inputs that are never accepted
(non-finite inputs).

Three ways to pick `t`:

- `coverage_threshold`: accept at least a given fraction of all inputs.
- `tpr_threshold`: accept at least a given fraction of the (finite)
  in-distribution inputs: the "TPR" of OOD detection with in-distribution as
  the positive class, the operating point of the FPR-at-95%-TPR metric.
- `risk_threshold`: the largest coverage whose selective risk (error rate
  among accepted inputs) is, with probability at least `1 - delta` over the
  draw of the calibration set, at most a target: Geifman & El-Yaniv's
  selection with guaranteed risk (SGR).
"""

import math

import numpy as np
from scipy import special

from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.validation.checks import check_binary

# Slack when comparing a fraction against a target (0.7 * 10 is
# 7.000000000000001 in floating point).
_TOLERANCE = 1e-9


@keras_tac_export("keras_tac.thresholds.coverage_threshold")
def coverage_threshold(confidence, target_coverage):
    """The largest threshold that accepts at least `target_coverage` of all
    inputs.

    Inputs whose confidence is NaN count in the total but are never
    accepted, so the achieved coverage can fall short when they are many.
    With ties the achieved coverage may exceed the target.

    Args:
        confidence: array-like of shape `(n,)`. Higher = more confident;
            NaN for inputs that are never accepted.
        target_coverage: float in `(0, 1]`.

    Returns:
        A float, one of the finite confidences.

    Example:

    >>> coverage_threshold([0.9, 0.8, 0.7, 0.1], 0.5)
    0.8
    """
    validation.check_fraction("target_coverage", target_coverage)
    confidence, valid = _split_valid(confidence)
    wanted = _count_for_fraction(target_coverage, len(confidence))
    return _top_k_threshold(confidence[valid], wanted)


@keras_tac_export("keras_tac.thresholds.tpr_threshold")
def tpr_threshold(confidence, target_tpr):
    """The largest threshold that accepts at least `target_tpr` of the
    in-distribution inputs whose confidence is finite.

    TPR (true positive rate) is measured on in-distribution data with
    "in-distribution" as the positive class: the fraction of such inputs
    that are accepted. Unlike `coverage_threshold`, inputs with a NaN
    confidence (non-finite inputs) are left out of the total: they are not
    valid in-distribution inputs. `target_tpr=0.95` gives the operating
    point of the FPR-at-95%-TPR metric.

    Args:
        confidence: array-like of shape `(n,)`, confidences of
            in-distribution inputs. Higher = more confident.
        target_tpr: float in `(0, 1]`.

    Returns:
        A float, one of the finite confidences.

    Example:

    >>> tpr_threshold([0.9, 0.8, 0.7, float("nan")], 2 / 3)
    0.8
    """
    validation.check_fraction("target_tpr", target_tpr)
    confidence, valid = _split_valid(confidence)
    scores = confidence[valid]
    return _top_k_threshold(
        scores, _count_for_fraction(target_tpr, len(scores))
    )


@keras_tac_export("keras_tac.thresholds.risk_upper_bound")
def risk_upper_bound(num_errors, num_accepted, delta):
    """Upper confidence bound on the true selective risk.

    The largest risk `b` under which seeing at most `num_errors` errors in
    `num_accepted` accepted inputs still has probability at least `delta`:
    the `b` solving `P(Binomial(num_accepted, b) <= num_errors) = delta`
    (a one-sided Clopper-Pearson bound; Geifman & El-Yaniv's `B*`). The
    true risk is below it with probability at least `1 - delta`.

    Args:
        num_errors: int, errors among accepted inputs.
        num_accepted: int, accepted inputs (at least 1).
        delta: float in `(0, 1)`.

    Returns:
        A float in `(0, 1]`.

    Example:

    >>> round(risk_upper_bound(0, 100, 0.05), 4)
    0.0295
    """
    validation.check_fraction("delta", delta, closed=False)
    num_errors = int(num_errors)
    num_accepted = int(num_accepted)
    if num_accepted < 1 or not 0 <= num_errors <= num_accepted:
        raise ValueError(
            "Invalid counts: expected 0 <= num_errors <= num_accepted and "
            f"num_accepted >= 1. Received: num_errors={num_errors}, "
            f"num_accepted={num_accepted}"
        )
    if num_errors == num_accepted:
        return 1.0
    return float(
        special.betaincinv(num_errors + 1, num_accepted - num_errors, 1 - delta)
    )


@keras_tac_export("keras_tac.thresholds.risk_threshold")
def risk_threshold(confidence, correct, target_risk, delta=0.05):
    """Selection with guaranteed risk (SGR, Geifman & El-Yaniv, 2017).

    The candidates are the `m` distinct finite confidences, each a
    threshold `t` that accepts the inputs with `confidence >= t` (tied
    inputs are accepted together). Taking them from the lowest (`j = 1`,
    full coverage) to the highest (`j = m`), candidate `j` gets the risk
    bound `risk_upper_bound(errors_j, accepted_j, delta_j)` with
    `delta_j = delta / (j * H_m)` and `H_m = 1 + 1/2 + ... + 1/m`: a
    weighted union bound (the `delta_j` sum to `delta`) in which full
    coverage, where a model is usually deployed, pays the least. The
    result is the lowest candidate (largest coverage) whose bound is at
    most `target_risk`; every candidate is examined, so a high-risk region
    between low and high thresholds does not stop the search.

    The guarantee: if the calibration inputs are drawn i.i.d. from the
    deployment distribution, then with probability at least `1 - delta`
    over that draw the `m` bounds hold at once, so the true selective risk
    (error rate among accepted future inputs) at the returned threshold is
    at most `target_risk`. As in SGR, each candidate's accepted inputs are
    treated as a binomial sample of its selective distribution (the
    candidates themselves come from the same data). The guaranteed
    quantity is the true risk, not `selective_risk`, which is measured on
    the calibration inputs.

    Args:
        confidence: array-like of shape `(n,)`. Higher = more confident;
            NaN for inputs that are never accepted (they count in the
            coverage's denominator).
        correct: array-like of shape `(n,)`: booleans, or 0/1 integers or
            floats, whether the base prediction is right (class labels are
            refused).
        target_risk: float in `(0, 1)`. Largest acceptable error rate among
            accepted inputs.
        delta: float in `(0, 1)`. Allowed probability that the guarantee
            fails. Defaults to `0.05`.

    Returns:
        A dict: `"threshold"` (`inf` when no threshold meets the target),
        `"risk_bound"` (the bound at that threshold, NaN if none),
        `"selective_risk"` and `"coverage"` (measured on the calibration
        inputs, NaN and 0 if none) and `"feasible"` (bool).

    Example:

    >>> confidence = np.arange(1000) / 1000
    >>> correct = np.arange(1000) >= 100  # the 100 least confident are wrong
    >>> result = risk_threshold(confidence, correct, 0.05, delta=0.05)
    >>> result["feasible"], result["coverage"] > 0.9
    (True, True)
    >>> risk_threshold(np.arange(60) / 60, np.ones(60, bool), 0.1)["coverage"]
    1.0
    """
    validation.check_fraction("target_risk", target_risk, closed=False)
    validation.check_fraction("delta", delta, closed=False)
    confidence, valid = _split_valid(confidence)
    correct = check_binary("correct", correct, shape=confidence.shape)
    if not valid.any():
        raise ValueError(
            "Invalid `confidence`: no finite value; nothing can be accepted."
        )
    # Candidates in increasing order: candidate j accepts groups j..m.
    candidates, group = np.unique(confidence[valid], return_inverse=True)
    num_candidates = len(candidates)
    group_sizes = np.bincount(group, minlength=num_candidates)
    group_errors = np.bincount(group[~correct[valid]], minlength=num_candidates)
    accepted = np.cumsum(group_sizes[::-1])[::-1]
    errors = np.cumsum(group_errors[::-1])[::-1]
    ranks = np.arange(1, num_candidates + 1)
    deltas = delta / (ranks * np.sum(1.0 / ranks))
    bounds = np.ones(num_candidates)
    some_right = errors < accepted
    bounds[some_right] = special.betaincinv(
        errors[some_right] + 1,
        accepted[some_right] - errors[some_right],
        1 - deltas[some_right],
    )
    meets = bounds <= target_risk
    if not meets.any():
        return {
            "threshold": math.inf,
            "risk_bound": math.nan,
            "selective_risk": math.nan,
            "coverage": 0.0,
            "feasible": False,
        }
    best = int(np.argmax(meets))
    return {
        "threshold": float(candidates[best]),
        "risk_bound": float(bounds[best]),
        "selective_risk": float(errors[best] / accepted[best]),
        "coverage": float(accepted[best] / len(confidence)),
        "feasible": True,
    }


def _split_valid(confidence):
    confidence = np.asarray(confidence)
    if confidence.ndim != 1 or confidence.shape[0] == 0:
        raise ValueError(
            "Invalid `confidence`: expected a non-empty 1-D array. "
            f"Received shape {confidence.shape}"
        )
    if confidence.dtype.kind not in "biuf":
        raise TypeError(
            "Invalid `confidence`: expected numbers. "
            f"Received dtype {confidence.dtype}"
        )
    confidence = confidence.astype(np.float64)
    return confidence, np.isfinite(confidence)


def _count_for_fraction(fraction, total):
    return max(1, math.ceil(fraction * total - _TOLERANCE * total))


def _top_k_threshold(scores, count):
    if len(scores) == 0:
        raise ValueError(
            "Cannot pick a threshold: no input has a finite confidence "
            "(all inputs are non-finite)."
        )
    ranked = np.sort(scores)[::-1]
    return float(ranked[min(count, len(ranked)) - 1])
