"""Metrics for confidence scores: error detection, selective classification,
the value of a model allowed to reject, and out-of-distribution detection.

Pure NumPy, free of Keras state. Every function takes plain arrays:

- `scores` / `confidence`: one float per input, **higher = more confident**
  (more likely correct, or more likely in-distribution). A score where lower
  means more confident (a distance, say) must be negated first. Scores are
  never flipped behind your back: an AUROC below 0.5 is reported as such
  (the reference's `max(auc, 1 - auc)` hides a sign error).
- `correct`: bool per input, whether the base model's prediction is right.
  For error detection the **positive class is "correct"**; for OOD
  detection the **positive class is "in-distribution"**.

Ties are handled exactly. A threshold `t` accepts every input whose score
is `>= t`, so tied inputs are always accepted or rejected together; curves
have one point per distinct score. Areas (AUROC, AURC, AUGRC) equal their
expected value when the order of tied inputs is random, so a constant score
gets the AUROC of a coin (0.5) and the AURC of accepting at random.
"""

import math

import numpy as np

from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.validation.checks import check_binary

# Slack when comparing a fraction against a target (0.95 * n can be
# 18.999999999999996 in floating point).
_TOLERANCE = 1e-9


# ----------------------------------------------------------------------
# Generic ranking curves (positives vs negatives)
# ----------------------------------------------------------------------
@keras_tac_export("keras_tac.metrics.roc_curve")
def roc_curve(scores, positives):
    """Receiver operating characteristic with one point per distinct score.

    The threshold `t` predicts "positive" for every input with
    `score >= t`. The first point is `(0, 0)` at threshold `+inf`, as in
    scikit-learn's `roc_curve(..., drop_intermediate=False)`.

    Args:
        scores: array-like of shape `(n,)`. Higher = more likely positive.
        positives: array-like of bools (or 0/1) of shape `(n,)`, the
            positive class.

    Returns:
        A tuple `(fpr, tpr, thresholds)` of float arrays, thresholds
        decreasing, rates non-decreasing.

    Example:

    >>> fpr, tpr, _ = roc_curve([0.9, 0.8, 0.8, 0.1], [1, 1, 0, 0])
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0])
    """
    scores, positives = _check_scores(scores, positives, both_classes=True)
    true_positives, false_positives, thresholds = _counts_at_thresholds(
        scores, positives
    )
    num_positives = true_positives[-1]
    num_negatives = false_positives[-1]
    fpr = np.concatenate([[0.0], false_positives / num_negatives])
    tpr = np.concatenate([[0.0], true_positives / num_positives])
    thresholds = np.concatenate([[np.inf], thresholds])
    return fpr, tpr, thresholds


@keras_tac_export("keras_tac.metrics.roc_auc")
def roc_auc(scores, positives):
    """Area under the ROC curve: the probability that a random positive
    scores higher than a random negative, ties counting one half.

    Args:
        scores: array-like of shape `(n,)`. Higher = more likely positive.
        positives: array-like of bools of shape `(n,)`, the positive class.

    Returns:
        A float in `[0, 1]`; 0.5 for a constant score. Never symmetrised.

    Example:

    >>> roc_auc([3.0, 2.0, 2.0, 1.0], [True, True, False, False])
    0.875
    """
    fpr, tpr, _ = roc_curve(scores, positives)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


@keras_tac_export("keras_tac.metrics.fpr_at_tpr")
def fpr_at_tpr(scores, positives, tpr=0.95):
    """False positive rate at the highest threshold that reaches a true
    positive rate of at least `tpr` (e.g. "FPR at 95% TPR").

    Args:
        scores: array-like of shape `(n,)`. Higher = more likely positive.
        positives: array-like of bools of shape `(n,)`, the positive class.
        tpr: float in `(0, 1]`. Target true positive rate. Defaults to
            `0.95`.

    Returns:
        A float in `[0, 1]`. Lower is better.

    Example:

    >>> fpr_at_tpr([4.0, 3.0, 2.0, 1.0], [1, 0, 1, 0], tpr=0.95)
    0.5
    """
    validation.check_fraction("tpr", tpr)
    fpr, rates, _ = roc_curve(scores, positives)
    index = int(np.argmax(rates >= tpr - _TOLERANCE))
    return float(fpr[index])


@keras_tac_export("keras_tac.metrics.average_precision")
def average_precision(scores, positives):
    """Area under the precision-recall curve, as a step sum without
    interpolation: `sum_n (R_n - R_{n-1}) P_n` over distinct thresholds
    (scikit-learn's `average_precision_score`).

    Args:
        scores: array-like of shape `(n,)`. Higher = more likely positive.
        positives: array-like of bools of shape `(n,)`, the positive class.

    Returns:
        A float in `[0, 1]`; the positive rate for a constant score.

    Example:

    >>> average_precision([3.0, 2.0, 1.0], [1, 0, 1])
    0.8333333333333333
    """
    scores, positives = _check_scores(scores, positives, both_classes=False)
    true_positives, false_positives, _ = _counts_at_thresholds(
        scores, positives
    )
    if true_positives[-1] == 0:
        raise ValueError(
            "Average precision is undefined without positives: expected at "
            "least one positive label. Received none."
        )
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / true_positives[-1]
    recall_steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(recall_steps * precision))


@keras_tac_export("keras_tac.metrics.detection_rate_at_eer")
def detection_rate_at_eer(scores, positives):
    """Detection rate at the equal-error-rate point: `1 - EER`.

    The equal error rate is where the false positive rate equals the false
    negative rate `1 - TPR`. The ROC curve, with ties as straight segments
    (a randomised threshold), crosses the line `FPR = 1 - TPR` at exactly
    one point; the detection rate there is its TPR, which equals its TNR.

    Args:
        scores: array-like of shape `(n,)`. Higher = more likely positive.
        positives: array-like of bools of shape `(n,)`, the positive class.

    Returns:
        A float in `[0, 1]`; 0.5 for a constant score, 1 for a perfect one.

    Example:

    >>> detection_rate_at_eer([4.0, 3.0, 2.0, 1.0], [1, 0, 1, 0])
    0.5
    """
    fpr, tpr, _ = roc_curve(scores, positives)
    gap = fpr + tpr - 1.0
    index = int(np.argmax(gap >= 0.0))
    if gap[index] == 0.0 or index == 0:
        return float(tpr[index])
    weight = -gap[index - 1] / (gap[index] - gap[index - 1])
    crossing = tpr[index - 1] + weight * (tpr[index] - tpr[index - 1])
    return float(crossing)


# ----------------------------------------------------------------------
# Error detection (positive class: the base prediction is correct)
# ----------------------------------------------------------------------
@keras_tac_export("keras_tac.metrics.error_detection_metrics")
def error_detection_metrics(confidence, correct):
    """How well a confidence score separates correct from wrong predictions.

    Score direction: higher = more confident. Positive class: correct
    predictions of the base model.

    Args:
        confidence: array-like of shape `(n,)`.
        correct: array-like of bools of shape `(n,)`.

    Returns:
        A dict of floats:
        `"error_auroc"` (AUROC, correct vs wrong, higher is better),
        `"fpr95"` (fraction of wrong predictions accepted at the threshold
        that accepts 95% of the correct ones, lower is better),
        `"aupr_success"` (average precision with correct as positive),
        `"aupr_error"` (average precision with wrong as positive and the
        negated score), and `"error_detection_rate"` (`1 - EER`). All are
        NaN when `correct` holds only one class.

    Example:

    >>> metrics = error_detection_metrics([0.9, 0.8, 0.3], [True, True, False])
    >>> metrics["error_auroc"], metrics["fpr95"]
    (1.0, 0.0)
    """
    confidence, correct = _check_scores(confidence, correct)
    names = (
        "error_auroc",
        "fpr95",
        "aupr_success",
        "aupr_error",
        "error_detection_rate",
    )
    if correct.all() or not correct.any():
        return {name: math.nan for name in names}
    return dict(zip(names, _separation(confidence, correct)))


# ----------------------------------------------------------------------
# Selective classification
# ----------------------------------------------------------------------
@keras_tac_export("keras_tac.metrics.risk_coverage_curve")
def risk_coverage_curve(confidence, correct):
    """Selective risk against coverage, one point per distinct confidence.

    Accepting the inputs with `confidence >= t`, coverage is the accepted
    fraction and selective risk the error rate among accepted inputs.

    Args:
        confidence: array-like of shape `(n,)`. Higher = more confident.
        correct: array-like of bools of shape `(n,)`.

    Returns:
        A tuple `(coverage, risk, thresholds)`: coverage increasing to 1,
        thresholds decreasing.

    Example:

    >>> coverage, risk, _ = risk_coverage_curve([3, 2, 2, 1], [1, 1, 0, 0])
    >>> coverage.tolist(), risk.tolist()
    ([0.25, 0.75, 1.0], [0.0, 0.3333333333333333, 0.5])
    """
    confidence, correct = _check_scores(confidence, correct)
    accepted_correct, accepted_wrong, thresholds = _counts_at_thresholds(
        confidence, correct
    )
    accepted = accepted_correct + accepted_wrong
    return accepted / len(confidence), accepted_wrong / accepted, thresholds


@keras_tac_export("keras_tac.metrics.aurc")
def aurc(confidence, correct):
    """Area under the risk-coverage curve (Geifman et al., 2019).

    `AURC = (1/n) sum_{k=1..n} errors(k) / k`, with `errors(k)` the number
    of wrong predictions among the `k` most confident inputs (its expected
    value over random orders of tied inputs). Lower is better; a constant
    score gives the overall error rate.

    Args:
        confidence: array-like of shape `(n,)`. Higher = more confident.
        correct: array-like of bools of shape `(n,)`.

    Returns:
        A float in `[0, 1]`.

    Example:

    >>> aurc([2.0, 1.0], [True, False])
    0.25
    """
    errors = _expected_errors(confidence, correct)
    counts = np.arange(1, len(errors))
    return float(np.mean(errors[1:] / counts))


@keras_tac_export("keras_tac.metrics.e_aurc")
def e_aurc(confidence, correct):
    """Excess AURC: `aurc(confidence) - aurc(oracle)`, where the oracle
    ranks every correct prediction above every wrong one.

    The oracle's AURC is computed exactly on the same `n` inputs (not with
    the continuous approximation `r + (1 - r) log(1 - r)`). Lower is
    better; 0 for a perfect ranking.

    Args:
        confidence: array-like of shape `(n,)`. Higher = more confident.
        correct: array-like of bools of shape `(n,)`.

    Returns:
        A float, `>= 0`.

    Example:

    >>> e_aurc([1.0, 2.0], [True, False])
    0.5
    """
    confidence, correct = _check_scores(confidence, correct)
    oracle = aurc(correct.astype(np.float64), correct)
    return float(aurc(confidence, correct) - oracle)


@keras_tac_export("keras_tac.metrics.augrc")
def augrc(confidence, correct):
    """Area under the generalized risk-coverage curve (Traub et al., 2024).

    The generalized risk at coverage `k / n` is `errors(k) / n`, the
    fraction of all inputs that are accepted and wrong; the area is taken
    with the trapezoidal rule from coverage 0. It equals
    `(1 - AUROC) * acc * (1 - acc) + (1 - acc)^2 / 2`, with `acc` the
    accuracy and `AUROC` the error-detection AUROC. Lower is better.

    Args:
        confidence: array-like of shape `(n,)`. Higher = more confident.
        correct: array-like of bools of shape `(n,)`.

    Returns:
        A float in `[0, 0.5]`.

    Example:

    >>> augrc([2.0, 1.0], [True, False])
    0.125
    """
    errors = _expected_errors(confidence, correct)
    count = len(errors) - 1
    return float(np.sum(errors[1:] + errors[:-1]) / (2.0 * count * count))


@keras_tac_export("keras_tac.metrics.selective_risk_at_coverage")
def selective_risk_at_coverage(confidence, correct, coverage):
    """Selective risk at the highest threshold that accepts at least
    `coverage` of the inputs (with ties, it may accept more).

    Args:
        confidence: array-like of shape `(n,)`. Higher = more confident.
        correct: array-like of bools of shape `(n,)`.
        coverage: float in `(0, 1]`. Target fraction of accepted inputs.

    Returns:
        A float, the error rate among accepted inputs. Lower is better.

    Example:

    >>> selective_risk_at_coverage([3, 2, 1, 0], [1, 1, 0, 0], 0.5)
    0.0
    """
    validation.check_fraction("coverage", coverage)
    coverages, risks, _ = risk_coverage_curve(confidence, correct)
    index = int(np.argmax(coverages >= coverage - _TOLERANCE))
    return float(risks[index])


@keras_tac_export("keras_tac.metrics.coverage_at_risk")
def coverage_at_risk(confidence, correct, risk):
    """Largest coverage whose selective risk is at most `risk`.

    Measured on the given inputs (no finite-sample guarantee: for that see
    `keras_tac.thresholds.risk_threshold`).

    Args:
        confidence: array-like of shape `(n,)`. Higher = more confident.
        correct: array-like of bools of shape `(n,)`.
        risk: float in `[0, 1]`. Largest acceptable error rate.

    Returns:
        A float in `[0, 1]`; 0 if even the most confident inputs exceed
        `risk`. Higher is better.

    Example:

    >>> coverage_at_risk([3, 2, 1, 0], [1, 1, 0, 1], 0.0)
    0.5
    """
    if (
        isinstance(risk, bool)
        or not isinstance(risk, (int, float, np.floating))
        or not 0.0 <= risk <= 1.0
    ):
        raise ValueError(
            "Invalid `risk`: expected a float in [0, 1]. "
            f"Received: risk={risk!r}"
        )
    coverages, risks, _ = risk_coverage_curve(confidence, correct)
    allowed = risks <= risk + _TOLERANCE
    return float(coverages[allowed].max()) if allowed.any() else 0.0


# ----------------------------------------------------------------------
# Value of a model allowed to reject
# ----------------------------------------------------------------------
@keras_tac_export("keras_tac.metrics.value_curve")
def value_curve(
    confidence, correct, reward=1.0, error_cost=1.0, rejection_cost=0.0
):
    """Average value per input of accepting the inputs with
    `confidence >= t`, for every distinct threshold `t`.

    `value(t) = (reward * accepted_correct - error_cost * accepted_wrong
    - rejection_cost * rejected) / n`. The first point, threshold `+inf`,
    rejects everything (value `-rejection_cost`); the last accepts
    everything (the model without rejection).

    Args:
        confidence: array-like of shape `(n,)`. Higher = more confident.
        correct: array-like of bools of shape `(n,)`.
        reward: float. Gain of an accepted correct answer. Defaults to `1`.
        error_cost: float `>= 0`. Loss of an accepted wrong answer.
            Defaults to `1`.
        rejection_cost: float `>= 0`. Loss of a rejection (e.g. the cost of
            asking a person). Defaults to `0`.

    Returns:
        A tuple `(thresholds, values, coverage)` of float arrays.

    Example:

    >>> _, values, _ = value_curve([2.0, 1.0], [True, False])
    >>> values.tolist()
    [0.0, 0.5, 0.0]
    """
    confidence, correct = _check_scores(confidence, correct)
    check_costs(reward, error_cost, rejection_cost)
    accepted_correct, accepted_wrong, thresholds = _counts_at_thresholds(
        confidence, correct
    )
    num_inputs = len(confidence)
    accepted_correct = np.concatenate([[0], accepted_correct])
    accepted_wrong = np.concatenate([[0], accepted_wrong])
    rejected = num_inputs - accepted_correct - accepted_wrong
    values = (
        reward * accepted_correct
        - error_cost * accepted_wrong
        - rejection_cost * rejected
    ) / num_inputs
    thresholds = np.concatenate([[np.inf], thresholds])
    coverage = (num_inputs - rejected) / num_inputs
    return thresholds, values, coverage


@keras_tac_export("keras_tac.metrics.rejection_value")
def rejection_value(
    confidence,
    correct,
    threshold,
    reward=1.0,
    error_cost=1.0,
    rejection_cost=0.0,
):
    """Average value per input when accepting `confidence >= threshold`.

    See `value_curve` for the definition and the arguments.

    Returns:
        A float: `(reward * accepted_correct - error_cost * accepted_wrong -
        rejection_cost * rejected) / n`. Higher is better.

    Example:

    >>> rejection_value([2.0, 1.0], [True, False], threshold=1.5)
    0.5
    """
    confidence, correct = _check_scores(confidence, correct)
    check_costs(reward, error_cost, rejection_cost)
    if isinstance(threshold, bool) or not isinstance(
        threshold, (int, float, np.floating, np.integer)
    ):
        raise ValueError(
            "Invalid `threshold`: expected a number. "
            f"Received: threshold={threshold!r}"
        )
    accepted = confidence >= threshold
    total = (
        reward * np.sum(accepted & correct)
        - error_cost * np.sum(accepted & ~correct)
        - rejection_cost * np.sum(~accepted)
    )
    return float(total / len(confidence))


@keras_tac_export("keras_tac.metrics.best_rejection_threshold")
def best_rejection_threshold(
    confidence, correct, reward=1.0, error_cost=1.0, rejection_cost=0.0
):
    """The threshold that maximises `rejection_value` on these inputs.

    Among thresholds of equal value, the one accepting the most inputs.
    Chosen on the data it is measured on, so it is optimistic: pick it on
    held-out data and report the value on test data.

    Returns:
        A tuple `(threshold, value)`; `threshold` is `inf` when rejecting
        everything is best.

    Example:

    >>> best_rejection_threshold([3.0, 2.0, 1.0], [True, True, False])
    (2.0, 0.6666666666666666)
    """
    thresholds, values, _ = value_curve(
        confidence, correct, reward, error_cost, rejection_cost
    )
    best = np.flatnonzero(values == values.max())[-1]
    return float(thresholds[best]), float(values[best])


# ----------------------------------------------------------------------
# Out-of-distribution detection (positive class: in-distribution)
# ----------------------------------------------------------------------
@keras_tac_export("keras_tac.metrics.ood_metrics")
def ood_metrics(scores_in, scores_out):
    """How well a score separates in-distribution from OOD inputs.

    Score direction: higher = more in-distribution (more confident).
    Positive class: in-distribution.

    Args:
        scores_in: array-like, scores of in-distribution inputs.
        scores_out: array-like, scores of out-of-distribution inputs
            (unseen classes, other data sets, shifted inputs).

    Returns:
        A dict of floats: `"ood_auroc"`, `"ood_fpr95"` (fraction of OOD
        inputs accepted at the threshold that accepts 95% of the
        in-distribution ones, lower is better), `"ood_aupr_in"` (in as
        positive), `"ood_aupr_out"` (OOD as positive, negated score) and
        `"ood_detection_rate"` (`1 - EER`).

    Example:

    >>> ood_metrics([3.0, 2.0], [1.0, 0.0])["ood_auroc"]
    1.0
    """
    scores_in = _as_scores(scores_in, "scores_in")
    scores_out = _as_scores(scores_out, "scores_out")
    scores = np.concatenate([scores_in, scores_out])
    inside = np.concatenate(
        [np.ones(len(scores_in), bool), np.zeros(len(scores_out), bool)]
    )
    names = (
        "ood_auroc",
        "ood_fpr95",
        "ood_aupr_in",
        "ood_aupr_out",
        "ood_detection_rate",
    )
    return dict(zip(names, _separation(scores, inside)))


# ----------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------
def _separation(scores, positive):
    """AUROC, FPR at 95% TPR, average precision of the positive class and of
    the negative class (negated scores), and `1 - EER`: how well `scores`
    rank the `positive` inputs above the others."""
    return (
        roc_auc(scores, positive),
        fpr_at_tpr(scores, positive, 0.95),
        average_precision(scores, positive),
        average_precision(-scores, ~positive),
        detection_rate_at_eer(scores, positive),
    )


def _as_scores(scores, name):
    scores = np.asarray(scores)
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.ndim != 1 or scores.shape[0] == 0:
        raise ValueError(
            f"Invalid `{name}`: expected a non-empty 1-D array of scores. "
            f"Received shape {scores.shape}"
        )
    if scores.dtype.kind not in "biuf":
        raise TypeError(
            f"Invalid `{name}`: expected numbers. Received dtype {scores.dtype}"
        )
    scores = scores.astype(np.float64)
    if np.isnan(scores).any():
        raise ValueError(
            f"Invalid `{name}`: {int(np.isnan(scores).sum())} score(s) are "
            "NaN. Expected numbers (+-inf is allowed)."
        )
    return scores


def _check_scores(scores, labels, both_classes=False):
    scores = _as_scores(scores, "scores")
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    labels = check_binary("labels", labels, shape=scores.shape)
    if both_classes and (labels.all() or not labels.any()):
        raise ValueError(
            "Undefined with a single class: expected both positive and "
            f"negative labels. Received {int(labels.sum())} positive(s) of "
            f"{labels.size}."
        )
    return scores, labels


def check_costs(reward, error_cost, rejection_cost):
    """Checks the value of a decision: `reward` a finite number,
    `error_cost` and `rejection_cost` numbers `>= 0`.

    Args:
        reward: float. Gain of an accepted correct answer.
        error_cost: float. Loss of an accepted wrong answer.
        rejection_cost: float. Loss of a rejection.

    Raises:
        ValueError: naming the first invalid argument.

    Example:

    >>> check_costs(1.0, 2.0, rejection_cost=-1.0)
    Traceback (most recent call last):
    ...
    ValueError: Invalid `rejection_cost`: expected a number >= 0. ...
    """
    for name, value in (
        ("reward", reward),
        ("error_cost", error_cost),
        ("rejection_cost", rejection_cost),
    ):
        _check_cost(name, value, allow_negative=name == "reward")


def _check_cost(name, value, allow_negative=False):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.floating, np.integer))
        or not math.isfinite(value)
        or (value < 0 and not allow_negative)
    ):
        expected = "a finite number" if allow_negative else "a number >= 0"
        raise ValueError(
            f"Invalid `{name}`: expected {expected}. Received: {name}={value!r}"
        )


def _counts_at_thresholds(scores, positives):
    """Cumulative positive and negative counts at each distinct score,
    scores taken in decreasing order (ties grouped)."""
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    ranked_positives = positives[order]
    # `!=` rather than `np.diff`: inf - inf is NaN.
    ends = np.concatenate(
        [np.flatnonzero(ranked[1:] != ranked[:-1]), [len(ranked) - 1]]
    )
    true_positives = np.cumsum(ranked_positives)[ends]
    false_positives = ends + 1 - true_positives
    return (
        true_positives.astype(np.float64),
        false_positives.astype(np.float64),
        ranked[ends],
    )


def _expected_errors(confidence, correct):
    """Expected number of errors among the `k` most confident inputs, for
    `k = 0..n`, tied inputs taken in a uniformly random order (linear
    within each tie group)."""
    confidence, correct = _check_scores(confidence, correct)
    accepted_correct, accepted_wrong, _ = _counts_at_thresholds(
        confidence, correct
    )
    accepted = np.concatenate([[0.0], accepted_correct + accepted_wrong])
    errors = np.concatenate([[0.0], accepted_wrong])
    return np.interp(np.arange(len(confidence) + 1), accepted, errors)
