"""Rejection thresholds chosen on held-out data, with what they promise.

Pure NumPy (plus `scipy.special`, installed with scikit-learn), free of
Keras state; `TACModel.calibrate` calls these. Confidence scores are
"higher = more confident" and a threshold `t` accepts an input when
`confidence >= t`. NaN confidences mark inputs that are never accepted
(non-finite inputs).

Three ways to pick `t`:

- `coverage_threshold`: accept at least a given fraction of all inputs
  (measured on the calibration inputs, or, with `delta`, guaranteed for
  future inputs with probability at least `1 - delta`).
- `tpr_threshold`: accept at least a given fraction of the (finite)
  in-distribution inputs: the "TPR" of OOD detection with in-distribution as
  the positive class, the operating point of the FPR-at-95%-TPR metric.
- `risk_threshold`: the largest coverage whose selective risk (error rate
  among accepted inputs) is, with probability at least `1 - delta` over the
  draw of the calibration set, at most a target: Learn-then-Test
  (Angelopoulos et al., 2021) by default, or Geifman & El-Yaniv's selection
  with guaranteed risk (SGR).

And two tools for flagging novel inputs: `conformal_p_values`
(how unusual each confidence is among calibration confidences) and
`benjamini_hochberg` (which of many p-values to flag at a false discovery
rate).
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
# At most this many candidate thresholds in Learn-then-Test's grid (and in
# the `needed_inputs` estimate).
_MAX_GRID = 1000
_METHODS = ("ltt", "sgr")
_P_VALUES = ("binomial", "hb")
_DEFAULT_TUNING_FRACTION = 0.1


@keras_tac_export("keras_tac.thresholds.coverage_threshold")
def coverage_threshold(confidence, target_coverage, delta=None):
    """The largest threshold that accepts at least `target_coverage` of all
    inputs: measured on `confidence`, or with `delta`, guaranteed for
    future inputs.

    Without `delta`, the threshold accepts at least `target_coverage` of
    the given inputs. Inputs whose confidence is NaN count in the total but
    are never accepted, so the achieved coverage can fall short when they
    are many. With ties the achieved coverage may exceed the target.

    With `delta`, the threshold is the `k`-th largest of the `n`
    confidences (NaN counting as the lowest) for the smallest `k` with
    `P(Beta(k, n + 1 - k) >= target_coverage) >= 1 - delta`. If the
    calibration inputs and future inputs are exchangeable (i.i.d. from one
    distribution), the true coverage `P(confidence >= t)` of the `k`-th
    largest of `n` confidences is `Beta(k, n + 1 - k)` distributed when
    confidences are continuous, and larger with ties, so with probability
    at least `1 - delta` over the calibration draw the true coverage is at
    least `target_coverage`. Distribution-free and exact; not a promise
    about the coverage on any particular set of future inputs, nor after a
    distribution shift.

    Args:
        confidence: array-like of shape `(n,)`. Higher = more confident;
            NaN for inputs that are never accepted.
        target_coverage: float in `(0, 1]`.
        delta: float in `(0, 1)`, or `None` (the default) for the measured
            coverage. Allowed probability that the true coverage is below
            `target_coverage`.

    Returns:
        A float, one of the finite confidences.

    Raises:
        ValueError: with `delta`, when `n` is too small for any `k` (the
            message says how many inputs would be needed), or when the
            `k`-th largest confidence is NaN (too many non-finite inputs).

    Example:

    >>> coverage_threshold([0.9, 0.8, 0.7, 0.1], 0.5)
    0.8
    >>> scores = np.arange(1000) / 1000  # 0.0 ... 0.999
    >>> coverage_threshold(scores, 0.9)  # accepts 900 of 1000
    0.1
    >>> coverage_threshold(scores, 0.9, delta=0.05)  # accepts 916 of 1000
    0.084
    """
    validation.check_fraction("target_coverage", target_coverage)
    confidence, valid = _split_valid(confidence)
    if delta is None:
        wanted = _count_for_fraction(target_coverage, len(confidence))
        return _top_k_threshold(confidence[valid], wanted)
    validation.check_fraction("delta", delta, closed=False)
    threshold, problem = _guaranteed_coverage(
        confidence, valid, target_coverage, delta
    )
    if problem:
        raise ValueError(problem)
    return threshold


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
def risk_threshold(
    confidence,
    correct,
    target_risk,
    delta=0.05,
    *,
    target_coverage=None,
    method="ltt",
    p_value="binomial",
    tuning=None,
    tuning_fraction=_DEFAULT_TUNING_FRACTION,
    num_starts=3,
    seed=0,
):
    """The largest coverage whose selective risk is guaranteed at most
    `target_risk`, with probability at least `1 - delta`.

    **What is guaranteed.** If the calibration inputs and future inputs
    are exchangeable (drawn i.i.d. from one distribution), then with
    probability at least `1 - delta` over the draw of the calibration
    inputs, the true selective risk at the returned threshold `t`,
    `R(t) = P(wrong | confidence >= t)`, is at most `target_risk`; with
    `target_coverage`, the true coverage `P(confidence >= t)` is also at
    least `target_coverage` (both at once, with probability at least
    `1 - delta`). When no threshold can be certified the result says so
    (`"feasible"` False, `"threshold"` `inf`); it never returns an
    uncertified threshold. **What is not guaranteed:** the error rate
    measured on a particular test set (it fluctuates around `R(t)`, and
    exceeds it about half of the time when `R(t)` is close to the target),
    anything after a distribution shift, and the risk of any one class or
    subgroup. The measured `"selective_risk"` and `"coverage"` in the
    result are descriptive only.

    **Learn-then-Test** (`method="ltt"`, the default; Angelopoulos, Bates,
    Candès, Jordan & Lei, 2021). The inputs are split at random
    (`np.random.default_rng(seed)`) into a tuning part (`tuning_fraction`
    of them) and a testing part, or `tuning` gives the tuning part and all
    of `confidence` is the testing part. The tuning part alone fixes:

    - the grid: quantiles of the finite tuning confidences at evenly
      spaced levels (linearly interpolated between them; one more than
      the testing inputs, at most 1000), ordered from the highest
      (conservative) to the lowest (liberal) threshold, then `-inf`
      (accept every finite input), so that full coverage is always a
      candidate;
    - up to `num_starts` starting points: the p-values predicted on the
      tuning counts rescaled to the testing size say where the test will
      likely reject at level `delta / num_starts`; the first start is the
      most liberal grid point predicted to reject, the others are spread
      evenly from it toward the most conservative one predicted to reject
      (so that a too optimistic prediction still leaves a start that
      rejects).

    Each grid threshold `t` is a null hypothesis `R(t) > target_risk`,
    tested on the testing part with `n_t` accepted inputs and `e_t` errors
    among them. `p_value="binomial"`: `P(Binomial(n_t, target_risk) <=
    e_t)`, exact given `n_t` (the accepted testing inputs are i.i.d. from
    the selective distribution); `p_value="hb"`: the Hoeffding-Bentkus
    p-value of Bates et al. (2021), `min(exp(-n_t h1(r, target_risk)),
    e * P(Binomial(n_t, target_risk) <= e_t))` with `r = e_t / n_t`, valid
    for any loss in `[0, 1]` and never smaller than the binomial one. No
    accepted input gives p-value 1. Family-wise error control: fixed
    sequence testing from each start toward lower thresholds, each at
    level `delta / s` (`s` the number of distinct starts, Bonferroni over
    the starts), each stopping at its first non-rejection. All rejected
    thresholds are certified at once; the result is the lowest of them
    (the largest coverage). Unlike a union bound over every candidate
    (SGR), the level is not divided by the number of candidates, and
    several starts keep a high-risk pocket (say, confident errors at the
    top) from stalling the search.

    **SGR** (`method="sgr"`; Geifman & El-Yaniv, 2017), which
    Learn-then-Test replaces as the default: valid but conservative. The
    candidates are the `m` distinct finite confidences, each a threshold
    `t` that accepts the inputs with `confidence >= t` (tied inputs are
    accepted together). Taking them from the lowest (`j = 1`, full
    coverage) to the highest (`j = m`), candidate `j` gets the risk bound
    `risk_upper_bound(errors_j, accepted_j, delta_j)` with
    `delta_j = delta / (j * H_m)` and `H_m = 1 + 1/2 + ... + 1/m`: a
    weighted union bound (the `delta_j` sum to `delta`) in which full
    coverage pays the least. The result is the lowest candidate whose
    bound is at most `target_risk`. As in SGR, each candidate's accepted
    inputs are treated as a binomial sample of its selective distribution
    (the candidates themselves come from the same data).

    **`target_coverage`** (with either method): risk is certified at
    `delta / 2` and coverage at `delta / 2` (a union bound). The coverage
    bound is exact and distribution-free: the largest threshold `t_cov`
    whose true coverage is at least `target_coverage` with probability at
    least `1 - delta / 2` (see `coverage_threshold` with `delta`), taken on
    the testing part when `tuning` is given (the tuning part may have
    fitted the confidence), else on all inputs. The result is the lowest
    risk-certified threshold if it is at most `t_cov`, else infeasible.

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
        target_coverage: float in `(0, 1]`, or `None` (the default). A
            coverage to guarantee as well.
        method: `"ltt"` (the default) or `"sgr"`.
        p_value: `"binomial"` (the default) or `"hb"`. Learn-then-Test's
            p-values.
        tuning: `None` (the default: split the inputs), or a tuple
            `(tuning_confidence, tuning_correct)` of arrays of one shape
            `(m,)` that place the grid and the starts; then all of
            `confidence` and `correct` is the testing part. Learn-then-Test
            only.
        tuning_fraction: float in `(0, 1)`. The fraction of the inputs that
            tune when `tuning` is `None`. Defaults to `0.1`: the tuning
            part only places the grid and the starts, and every input it
            takes is lost to the test (in simulations, 0.1 gave larger
            certified coverages than 0.2 or 0.3 from 300 to 2000 inputs).
        num_starts: int, at least 1. Most starts of the fixed sequence
            testing. Defaults to `3`.
        seed: int. Seed of the random split. Defaults to `0`.

    Returns:
        A dict:

        - `"threshold"`: float, `inf` when infeasible.
        - `"feasible"`: bool.
        - `"coverage"`, `"selective_risk"`: measured at the threshold on
          all the inputs given (with `tuning`, the tuning and the testing
          inputs together); 0 and NaN when infeasible.
        - `"method"`: `"ltt"` or `"sgr"`.
        - `"unmet"`: tuple of the targets not met, `"target_risk"` and/or
          `"target_coverage"` (both when each alone can be certified but
          not together); empty when feasible.
        - `"needed_inputs"`: when infeasible, an estimate of how many
          calibration inputs in all (split the same way) would make it
          feasible if new inputs behaved like these: the smallest number
          at which some grid threshold with a measured risk below the
          target (and a measured coverage above `target_coverage`) would
          be predicted to pass, at least `n + 1`. `None` when feasible, or
          when no amount would do because the measured risk is at or above
          the target at every such threshold.
        - `"message"`: `""` when feasible, else an English sentence naming
          the targets, `delta`, the number of inputs and `needed_inputs`
          (or that the measured risk is above the target).
        - Learn-then-Test: `"p_value"` at the threshold (NaN when
          infeasible), `"num_tested"` (grid thresholds whose p-value was
          compared with a level) and `"num_testing_inputs"`.
        - SGR: `"risk_bound"` at the threshold (NaN when infeasible).

    Example:

    >>> confidence = np.arange(2000) / 2000
    >>> correct = np.arange(2000) >= 200  # the 200 least confident are wrong
    >>> result = risk_threshold(confidence, correct, 0.05)
    >>> result["feasible"], result["coverage"], result["num_testing_inputs"]
    (True, 0.935, 1800)
    >>> risk_threshold(confidence, correct, 0.05, method="sgr")["coverage"]
    0.9285
    >>> small = risk_threshold(confidence[::20], correct[::20], 0.01)
    >>> small["feasible"], small["unmet"], small["needed_inputs"]
    (False, ('target_risk',), 503)
    """
    validation.check_fraction("target_risk", target_risk, closed=False)
    validation.check_fraction("delta", delta, closed=False)
    if target_coverage is not None:
        validation.check_fraction("target_coverage", target_coverage)
    validation.check_choice("method", method, _METHODS)
    validation.check_choice("p_value", p_value, _P_VALUES)
    validation.check_fraction("tuning_fraction", tuning_fraction, closed=False)
    validation.check_positive_int("num_starts", num_starts)
    seed = validation.check_seed(seed)
    confidence, valid = _split_valid(confidence)
    correct = check_binary("correct", correct, shape=confidence.shape)
    if method == "sgr" and tuning is not None:
        raise ValueError(
            "Invalid `tuning`: it only applies to method='ltt'. Received: "
            "method='sgr' with a tuning part"
        )
    if method == "sgr" and p_value != "binomial":
        raise ValueError(
            "Invalid `p_value`: method='sgr' uses Clopper-Pearson bounds, "
            f"only p_value='binomial'. Received: p_value={p_value!r}"
        )
    if tuning is not None:
        tuning_confidence, tuning_correct = _check_tuning(tuning)
        all_confidence = np.concatenate([tuning_confidence, confidence])
        all_correct = np.concatenate([tuning_correct, correct])
    else:
        all_confidence, all_correct = confidence, correct
    if not np.isfinite(all_confidence).any():
        raise ValueError(
            "Invalid `confidence`: no finite value; nothing can be accepted."
        )
    risk_delta = delta if target_coverage is None else delta / 2
    problem = _Problem(
        target_risk, delta, risk_delta, target_coverage, len(all_confidence)
    )

    if method == "sgr":
        candidates, bounds, certified = _sgr(
            confidence, valid, correct, target_risk, risk_delta
        )
        extra = {"risk_bound": math.nan}
        testing_share = 1.0
    else:
        if tuning is None:
            if len(confidence) < 2:
                raise ValueError(
                    "Invalid `confidence`: method='ltt' splits the inputs "
                    "into a tuning and a testing part and needs at least 2. "
                    f"Received {len(confidence)}"
                )
            order = np.random.default_rng(seed).permutation(len(confidence))
            num_tuning = min(
                max(1, round(tuning_fraction * len(confidence))),
                len(confidence) - 1,
            )
            tune, test = order[:num_tuning], order[num_tuning:]
            tuning_confidence, tuning_correct = confidence[tune], correct[tune]
            testing_confidence, testing_correct = (
                confidence[test],
                correct[test],
            )
        else:
            testing_confidence, testing_correct = confidence, correct
        ltt = _learn_then_test(
            tuning_confidence,
            tuning_correct,
            testing_confidence,
            testing_correct,
            target_risk,
            risk_delta,
            p_value,
            num_starts,
        )
        candidates = ltt["grid"]
        certified = ltt["certified"]
        bounds = ltt["p_values"]
        extra = {
            "p_value": math.nan,
            "num_tested": ltt["num_tested"],
            "num_testing_inputs": len(testing_confidence),
        }
        testing_share = len(testing_confidence) / len(all_confidence)

    risk_met = bool(certified.any())
    # Candidates in SGR are increasing, in LTT decreasing: the lowest
    # certified threshold either way.
    best = None
    if risk_met:
        best = int(np.flatnonzero(certified)[np.argmin(candidates[certified])])
    coverage_met = True
    if target_coverage is not None:
        # On `confidence` alone: an explicit tuning part may have fitted
        # the confidence function, so only the testing part is
        # exchangeable with future inputs.
        t_cov, _ = _guaranteed_coverage(
            confidence, valid, target_coverage, delta / 2
        )
        coverage_met = t_cov is not None
    if risk_met and coverage_met and target_coverage is not None:
        feasible = bool(candidates[best] <= t_cov)
    else:
        feasible = risk_met and coverage_met

    if feasible:
        threshold = float(candidates[best])
        accepted = np.isfinite(all_confidence) & (all_confidence >= threshold)
        num_accepted = int(accepted.sum())
        result = {
            "threshold": threshold,
            "feasible": True,
            "coverage": num_accepted / len(all_confidence),
            "selective_risk": float(np.sum(accepted & ~all_correct))
            / num_accepted,
            "method": method,
            "unmet": (),
            "needed_inputs": None,
            "message": "",
        }
        if method == "sgr":
            extra["risk_bound"] = float(bounds[best])
        else:
            extra["p_value"] = float(bounds[best])
        result.update(extra)
        return result

    if not risk_met and coverage_met:
        unmet = ("target_risk",)
    elif risk_met and not coverage_met:
        unmet = ("target_coverage",)
    else:
        unmet = ("target_risk", "target_coverage")
    needed = _needed_inputs(
        all_confidence,
        all_correct,
        problem,
        method,
        testing_share,
        num_starts,
        p_value,
    )
    result = {
        "threshold": math.inf,
        "feasible": False,
        "coverage": 0.0,
        "selective_risk": math.nan,
        "method": method,
        "unmet": unmet,
        "needed_inputs": needed,
        "message": problem.message(unmet, needed, method),
    }
    result.update(extra)
    return result


@keras_tac_export("keras_tac.thresholds.conformal_p_values")
def conformal_p_values(calibration_scores, scores):
    """Conformal p-values: how unusually low each confidence is among the
    calibration confidences.

    `p(s) = (1 + #{calibration scores <= s}) / (n + 1)`, with `n` the
    number of finite calibration scores (non-finite ones are dropped). If
    a new input and the calibration inputs are exchangeable (the input is
    not novel), `P(p(s) <= u) <= u` for every `u`: a small p-value is
    evidence that the input is novel. A non-finite score gets p-value 0
    (a non-finite input is never "normal"). To flag many inputs at a
    controlled false discovery rate, pass the p-values to
    `benjamini_hochberg`.

    Args:
        calibration_scores: array-like of shape `(n,)`, confidences of
            in-distribution calibration inputs. Higher = more confident.
        scores: array-like of any shape, confidences of new inputs.

    Returns:
        A float64 NumPy array of the shape of `scores`, values in
        `[0, 1]`.

    Example:

    >>> conformal_p_values([0.1, 0.5, 0.9, float("nan")], [0.05, 0.5, 1.0])
    array([0.25, 0.75, 1.  ])
    """
    calibration, valid = _split_valid(calibration_scores)
    calibration = np.sort(calibration[valid])
    if len(calibration) == 0:
        raise ValueError(
            "Invalid `calibration_scores`: no finite value; expected at "
            "least one finite calibration score."
        )
    scores = np.asarray(scores)
    if scores.dtype.kind not in "biuf":
        raise TypeError(
            f"Invalid `scores`: expected numbers. Received dtype {scores.dtype}"
        )
    scores = scores.astype(np.float64)
    finite = np.isfinite(scores)
    counts = np.searchsorted(
        calibration, np.where(finite, scores, 0.0), side="right"
    )
    return np.where(finite, (1.0 + counts) / (len(calibration) + 1.0), 0.0)


@keras_tac_export("keras_tac.thresholds.benjamini_hochberg")
def benjamini_hochberg(p_values, alpha):
    """Which hypotheses the Benjamini-Hochberg step-up procedure rejects
    at false discovery rate `alpha`.

    With the `m` p-values sorted, `p_(1) <= ... <= p_(m)`, the largest `k`
    with `p_(k) <= k * alpha / m` is found, and the `k` smallest p-values
    are rejected. When the p-values of the true null hypotheses are
    independent (or positively dependent, as conformal p-values sharing one
    calibration set are), the expected fraction of false rejections among
    the rejections is at most `alpha`.

    Args:
        p_values: array-like of shape `(m,)`, values in `[0, 1]` (NaN is an
            error).
        alpha: float in `(0, 1)`. Target false discovery rate.

    Returns:
        A NumPy bool array of shape `(m,)`, True where rejected (flagged).

    Example:

    >>> benjamini_hochberg([0.001, 0.02, 0.04, 0.5], 0.1).tolist()
    [True, True, True, False]
    >>> benjamini_hochberg([0.001, 0.02, 0.04, 0.5], 0.05).tolist()
    [True, True, False, False]
    """
    validation.check_fraction("alpha", alpha, closed=False)
    p_values = np.asarray(p_values)
    if p_values.ndim != 1 or p_values.dtype.kind not in "biuf":
        raise ValueError(
            "Invalid `p_values`: expected a 1-D array of numbers. Received "
            f"shape {p_values.shape} and dtype {p_values.dtype}"
        )
    p_values = p_values.astype(np.float64)
    if np.isnan(p_values).any():
        raise ValueError(
            "Invalid `p_values`: NaN at positions "
            f"{np.flatnonzero(np.isnan(p_values))[:10].tolist()}; expected "
            "values in [0, 1] (conformal_p_values gives 0, never NaN, to "
            "non-finite inputs)."
        )
    if ((p_values < 0) | (p_values > 1)).any():
        raise ValueError(
            "Invalid `p_values`: expected values in [0, 1]. Received "
            f"values from {p_values.min()} to {p_values.max()}"
        )
    count = len(p_values)
    ranked = np.sort(p_values)
    passes = ranked <= alpha * np.arange(1, count + 1) / count
    if not passes.any():
        return np.zeros(count, bool)
    largest = int(np.flatnonzero(passes)[-1])
    return p_values <= ranked[largest]


class _Problem:
    """The targets of one `risk_threshold` call, for its messages."""

    def __init__(self, target_risk, delta, risk_delta, target_coverage, n):
        self.target_risk = target_risk
        self.delta = delta
        self.risk_delta = risk_delta
        self.target_coverage = target_coverage
        self.n = n

    def message(self, unmet, needed, method):
        targets = f"a selective risk <= target_risk={self.target_risk}"
        if self.target_coverage is not None:
            targets += (
                f" and a coverage >= target_coverage={self.target_coverage}"
            )
        text = (
            f"Cannot guarantee {targets} with probability >= 1 - delta "
            f"(delta={self.delta}) from {self.n} calibration inputs "
            f"(method={method!r}; unmet: {', '.join(unmet)})."
        )
        if needed is not None:
            return (
                f"{text} About {needed} calibration inputs like these would "
                "be needed (an estimate)."
            )
        where = "at every candidate threshold"
        if self.target_coverage is not None:
            where += (
                " that accepts more than target_coverage="
                f"{self.target_coverage} of the inputs"
            )
        return (
            f"{text} The measured risk itself is at or above "
            f"target_risk={self.target_risk} {where}, so more inputs like "
            "these would not help: lower the target coverage, raise the "
            "target risk or improve the model."
        )


def _check_tuning(tuning):
    if not isinstance(tuning, (tuple, list)) or len(tuning) != 2:
        raise ValueError(
            "Invalid `tuning`: expected a pair (tuning_confidence, "
            f"tuning_correct). Received: {type(tuning).__name__}"
        )
    if np.ndim(tuning[0]) != 1:
        raise ValueError(
            "Invalid `tuning`: expected a pair (tuning_confidence, "
            "tuning_correct) of 1-D arrays. Received a first item of shape "
            f"{np.shape(tuning[0])}"
        )
    tuning_confidence, _ = _split_valid(tuning[0])
    tuning_correct = check_binary(
        "tuning_correct", tuning[1], shape=tuning_confidence.shape
    )
    return tuning_confidence, tuning_correct


def _sgr(confidence, valid, correct, target_risk, delta):
    """SGR's candidates (increasing), bounds and which meet the target."""
    if not valid.any():
        return np.zeros(0), np.zeros(0), np.zeros(0, bool)
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
    return candidates, bounds, bounds <= target_risk


def _grid(scores, size):
    """`size` thresholds (fewer with ties), decreasing: the finite
    `scores`' quantiles at evenly spaced levels from 1 to 0, linearly
    interpolated between the scores, then `-inf` (accept every finite
    input: full coverage is always a candidate, whatever the tuning part
    holds)."""
    scores = scores[np.isfinite(scores)]
    if len(scores) == 0:
        return np.zeros(0)
    levels = np.linspace(0.0, 1.0, max(2, min(size, _MAX_GRID)))
    grid = np.unique(np.quantile(scores, levels))[::-1]
    return np.append(grid, -np.inf)


def _counts(grid, confidence, correct):
    """Accepted inputs and errors among them at each grid threshold."""
    finite = np.isfinite(confidence)
    scores = np.sort(confidence[finite])
    wrong = np.sort(confidence[finite & ~correct])
    accepted = len(scores) - np.searchsorted(scores, grid, side="left")
    errors = len(wrong) - np.searchsorted(wrong, grid, side="left")
    return accepted, errors


def _p_values(errors, accepted, alpha, kind):
    """Exact p-values of `R > alpha` from integer counts (1 where nothing
    is accepted)."""
    errors = np.asarray(errors, np.int64)
    accepted = np.asarray(accepted, np.int64)
    some = accepted > 0
    safe = np.where(some, accepted, 1)
    # Integer counts: SciPy deprecates float ones in `bdtr`.
    binomial = special.bdtr(errors, safe, alpha)
    if kind == "hb":
        binomial = np.minimum(
            _hoeffding(errors / safe, safe, alpha), math.e * binomial
        )
    return np.where(some, binomial, 1.0)


def _hoeffding(risk, count, alpha):
    risk = np.minimum(risk, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(risk > 0, risk * np.log(risk / alpha), 0.0)
    second = (1 - risk) * np.log((1 - risk) / (1 - alpha))
    return np.exp(-count * (first + second))


def _smooth_p_values(errors, accepted, alpha, kind):
    """`_p_values` for non-integer (rescaled) counts, through the
    regularized incomplete beta function:
    `P(Binomial(n, a) <= k) = I_{1-a}(n - k, k + 1)`."""
    errors, accepted = np.broadcast_arrays(
        np.asarray(errors, np.float64), np.asarray(accepted, np.float64)
    )
    some = accepted > errors
    binomial = np.ones(errors.shape)
    binomial[some] = special.betainc(
        accepted[some] - errors[some], errors[some] + 1, 1 - alpha
    )
    if kind == "hb":
        safe = np.where(accepted > 0, accepted, 1.0)
        hoeffding = _hoeffding(errors / safe, safe, alpha)
        binomial = np.minimum(
            np.where(accepted > 0, hoeffding, 1.0), math.e * binomial
        )
    return binomial


def _choose_starts(
    accepted, errors, scale, alpha, level, kind, num_starts, spacing=None
):
    """Up to `num_starts` distinct grid indices from the tuning counts.

    Start 0 is the most liberal grid index whose p-value, predicted on
    the tuning counts rescaled by `scale` (the testing size over the
    tuning size), is at most `level` (or, if none is, the index with the
    smallest predicted p-value). Start `j` is at `(1 - j * spacing)` times
    its index (`spacing = 1 / num_starts` by default): more conservative
    starts, which still reject when the tuning part was too optimistic.
    The grid indices follow the tuning ranks, so index ratios are ratios
    of tuning coverage."""
    accepted = np.asarray(accepted, np.float64)
    errors = np.asarray(errors, np.float64)
    predicted = _smooth_p_values(errors * scale, accepted * scale, alpha, kind)
    rejected = np.flatnonzero(predicted <= level)
    if len(rejected):
        first, last = int(rejected[0]), int(rejected[-1])
    else:
        first = last = int(np.flatnonzero(predicted == predicted.min())[-1])
    if spacing is None:
        spacing = 1 / num_starts
    starts = {
        int(round(last - j * spacing * (last - first)))
        for j in range(num_starts)
    }
    return sorted(starts)


def _fixed_sequence(p_values, starts, level):
    """Fixed sequence testing from each start toward higher indices, each
    stopping at its first p-value above `level`. Returns the rejected
    mask and how many indices were tested."""
    size = len(p_values)
    failures = np.append(np.flatnonzero(p_values > level), size)
    rejected = np.zeros(size, bool)
    tested = np.zeros(size, bool)
    for start in starts:
        stop = int(failures[np.searchsorted(failures, start)])
        rejected[start:stop] = True
        tested[start : stop + 1] = True
    return rejected, int(tested[:size].sum())


def _learn_then_test(
    tuning_confidence,
    tuning_correct,
    testing_confidence,
    testing_correct,
    target_risk,
    delta,
    kind,
    num_starts,
    starts=None,
):
    """Learn-then-Test on a split: the grid and starts from the tuning
    part (unless `starts` are given), the p-values and the fixed sequence
    testing on the testing part."""
    grid = _grid(tuning_confidence, len(testing_confidence) + 1)
    if len(grid) == 0:
        return {
            "grid": grid,
            "p_values": np.zeros(0),
            "certified": np.zeros(0, bool),
            "num_tested": 0,
            "num_starts": 0,
            "starts": [],
        }
    accepted, errors = _counts(grid, testing_confidence, testing_correct)
    p_values = _p_values(errors, accepted, target_risk, kind)
    if starts is None:
        num_tuning = len(tuning_confidence)
        scale = len(testing_confidence) / num_tuning
        tune_accepted, tune_errors = _counts(
            grid, tuning_confidence, tuning_correct
        )
        starts = _choose_starts(
            tune_accepted,
            tune_errors,
            scale,
            target_risk,
            delta / num_starts,
            kind,
            num_starts,
        )
    certified, num_tested = _fixed_sequence(
        p_values, starts, delta / len(starts)
    )
    return {
        "grid": grid,
        "p_values": p_values,
        "certified": certified,
        "num_tested": num_tested,
        "num_starts": len(starts),
        "starts": starts,
    }


def _guaranteed_coverage(confidence, valid, target_coverage, delta):
    """The largest threshold whose true coverage is at least
    `target_coverage` with probability at least `1 - delta`, and `""`; or
    `None` and why not."""
    n = len(confidence)
    ranks = np.arange(1, n + 1)
    # P(Beta(k, n + 1 - k) >= c) = I_{1-c}(n + 1 - k, k), increasing in k.
    enough = special.betainc(n + 1 - ranks, ranks, 1 - target_coverage) >= (
        1 - delta - _TOLERANCE
    )
    if not enough.any():
        needed = _needed_for_coverage(1.0, target_coverage, delta)
        return None, (
            f"Cannot guarantee a coverage >= target_coverage="
            f"{target_coverage} with probability >= 1 - delta "
            f"(delta={delta}) from {n} inputs: at least {needed} are "
            "needed."
        )
    rank = int(ranks[enough][0])
    scores = np.sort(confidence[valid])[::-1]
    if rank > len(scores):
        return None, (
            f"Cannot guarantee a coverage >= target_coverage="
            f"{target_coverage} with probability >= 1 - delta "
            f"(delta={delta}): it takes accepting the {rank} most confident "
            f"of {n} inputs, and only {len(scores)} have a finite "
            "confidence."
        )
    return float(scores[rank - 1]), ""


def _coverage_certified(total, fraction, target_coverage, delta):
    """Whether `total` inputs with a `fraction` of them accepted would
    certify `target_coverage` (vectorized)."""
    rank = np.maximum(np.floor(total * fraction + _TOLERANCE), 1.0)
    rank = np.minimum(rank, total)
    return special.betainc(total + 1 - rank, rank, 1 - target_coverage) >= (
        1 - delta - _TOLERANCE
    )


def _needed_for_coverage(fraction, target_coverage, delta):
    fraction = np.asarray([fraction], np.float64)
    return int(
        _smallest_total(
            lambda total: _coverage_certified(
                total, fraction, target_coverage, delta
            ),
            1,
            1,
        )[0]
    )


def _smallest_total(passes, start, size):
    """Smallest integer total `>= start` at which `passes(totals)` (an
    array of `size` totals to `size` booleans) turns True, assuming it
    stays True above: doubling, then bisection. `inf` past 2**40."""
    high = np.full(size, float(start))
    ok = passes(high)
    for _ in range(41):
        if ok.all():
            break
        high = np.where(ok, high, high * 2)
        ok = passes(high)
    # `low` fails (or is below `start`); unreachable ones are left alone.
    low = np.where(high == start, start - 1.0, high / 2)
    low = np.where(ok, low, high)
    active = high - low > 1
    while active.any():
        # Only the unsettled entries move: a settled `high` stays >= start.
        middle = np.floor((low + high) / 2)
        good = passes(middle)
        high = np.where(active & good, middle, high)
        low = np.where(active & ~good, middle, low)
        active = high - low > 1
    return np.where(ok, high, np.inf)


def _needed_inputs(
    confidence, correct, problem, method, testing_share, num_starts, kind
):
    """Estimate of the total calibration inputs that would make a
    `risk_threshold` call feasible, or `None` if none would."""
    n = problem.n
    grid = _grid(confidence, _MAX_GRID)
    accepted, errors = _counts(grid, confidence, correct)
    fraction = accepted / n
    risk = errors / np.maximum(accepted, 1)
    usable = (accepted > 0) & (risk < problem.target_risk)
    if problem.target_coverage is not None:
        usable &= fraction > problem.target_coverage + _TOLERANCE
    if not usable.any():
        return None
    fraction, risk = fraction[usable], risk[usable]
    alpha = problem.target_risk

    def passes(total):
        count = total * fraction * testing_share
        if method == "sgr":
            harmonic = np.log(total) + np.euler_gamma + 0.5 / total
            rank = total * (1 - fraction) + 1
            level = problem.risk_delta / (rank * harmonic)
        else:
            level = problem.risk_delta / num_starts
        ok = _smooth_p_values(count * risk, count, alpha, kind) <= level
        if problem.target_coverage is not None:
            ok &= _coverage_certified(
                total, fraction, problem.target_coverage, problem.delta / 2
            )
        return ok

    totals = _smallest_total(passes, n + 1, len(fraction))
    best = float(np.min(totals))
    return None if math.isinf(best) else int(best)


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
