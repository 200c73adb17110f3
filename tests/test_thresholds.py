import math
import os

import keras
import numpy as np
import pytest
from conftest import make_cnn
from scipy import stats

import keras_tac
from keras_tac import metrics
from keras_tac import thresholds


class NumpyTests:
    """Base of the pure NumPy test classes."""

    @pytest.fixture(autouse=True)
    def clear_session(self):
        # Overrides the shared fixture: no Keras session to reset (slow on
        # JAX) in pure NumPy tests.
        yield


class TestCoverageAndTPR(NumpyTests):
    def test_coverage_threshold(self):
        confidence = [0.9, 0.8, 0.7, 0.1]
        assert thresholds.coverage_threshold(confidence, 0.5) == 0.8
        assert thresholds.coverage_threshold(confidence, 0.51) == 0.7
        assert thresholds.coverage_threshold(confidence, 1.0) == 0.1
        # 0.7 * 10 is 7.000000000000001 in floating point: still 7 inputs.
        assert thresholds.coverage_threshold(np.arange(10.0), 0.7) == 3.0

    def test_coverage_counts_nan_in_total(self):
        confidence = [0.9, np.nan, 0.7, np.nan]
        # Half of 4 inputs: the 2 finite ones.
        assert thresholds.coverage_threshold(confidence, 0.5) == 0.7
        # More than can be accepted: the lowest finite confidence.
        assert thresholds.coverage_threshold(confidence, 1.0) == 0.7

    def test_ties_may_exceed_target(self):
        confidence = np.array([3.0, 2.0, 2.0, 2.0, 1.0])
        threshold = thresholds.coverage_threshold(confidence, 0.4)
        assert threshold == 2.0
        assert np.mean(confidence >= threshold) == 0.8

    def test_tpr_threshold_excludes_nan(self):
        confidence = [0.9, 0.8, 0.7, np.nan]
        assert thresholds.tpr_threshold(confidence, 2 / 3) == 0.8
        assert thresholds.coverage_threshold(confidence, 2 / 3) == 0.7

    def test_tpr_threshold_is_the_fpr95_operating_point(self):
        rng = np.random.default_rng(0)
        inside = np.round(rng.normal(1.0, 1.0, 300), 1)
        outside = np.round(rng.normal(0.0, 1.0, 200), 1)
        threshold = thresholds.tpr_threshold(inside, 0.95)
        assert np.mean(inside >= threshold) >= 0.95
        assert np.mean(outside >= threshold) == pytest.approx(
            metrics.ood_metrics(inside, outside)["ood_fpr95"]
        )

    @pytest.mark.parametrize(
        "function,name",
        [("coverage_threshold", "target_coverage")]
        + [("tpr_threshold", "target_tpr")],
    )
    @pytest.mark.parametrize("value", [0.0, 1.5, True, "high"])
    def test_bad_targets(self, function, name, value):
        with pytest.raises(ValueError, match=name):
            getattr(thresholds, function)([1.0, 2.0], value)

    def test_no_finite_confidence(self):
        with pytest.raises(ValueError, match="non-finite"):
            thresholds.coverage_threshold([np.nan, np.nan], 0.5)
        with pytest.raises(ValueError, match="1-D"):
            thresholds.coverage_threshold(np.ones((2, 2)), 0.5)


class TestRiskBound(NumpyTests):
    @pytest.mark.parametrize(
        "errors,accepted,delta", [(0, 100, 0.05), (3, 50, 0.01), (40, 41, 0.2)]
    )
    def test_is_the_binomial_tail_solution(self, errors, accepted, delta):
        bound = thresholds.risk_upper_bound(errors, accepted, delta)
        assert bound > errors / accepted
        assert stats.binom.cdf(errors, accepted, bound) == pytest.approx(
            delta, rel=1e-6
        )

    def test_edges(self):
        assert thresholds.risk_upper_bound(5, 5, 0.05) == 1.0
        # No errors in n: the classic "rule of three" region, 1 - delta^(1/n).
        assert thresholds.risk_upper_bound(0, 100, 0.05) == pytest.approx(
            1 - 0.05 ** (1 / 100)
        )
        assert thresholds.risk_upper_bound(
            2, 100, 0.01
        ) > thresholds.risk_upper_bound(2, 100, 0.1)
        with pytest.raises(ValueError, match="num_errors"):
            thresholds.risk_upper_bound(6, 5, 0.05)
        with pytest.raises(ValueError, match="delta"):
            thresholds.risk_upper_bound(1, 5, 1.0)


def sgr_oracle(confidence, correct, target_risk, delta):
    """Reference SGR, written independently of `keras_tac`: a plain loop
    over every distinct finite confidence from the lowest (full coverage)
    up, candidate `j` of `m` bounded at level `delta / (j * H_m)` with the
    Clopper-Pearson bound as a Beta quantile. `None` if none meets the
    target."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct).astype(bool)
    finite = np.isfinite(confidence)
    candidates = sorted(set(confidence[finite].tolist()))
    harmonic = sum(1 / j for j in range(1, len(candidates) + 1))
    for j, threshold in enumerate(candidates, start=1):
        accepted = finite & (confidence >= threshold)
        num_accepted = int(accepted.sum())
        num_errors = int((accepted & ~correct).sum())
        level = 1 - delta / (j * harmonic)
        if num_errors == num_accepted:
            bound = 1.0
        else:
            bound = stats.beta.ppf(
                level, num_errors + 1, num_accepted - num_errors
            )
        if bound <= target_risk:
            return {
                "threshold": threshold,
                "risk_bound": bound,
                "selective_risk": num_errors / num_accepted,
                "coverage": num_accepted / len(confidence),
                "feasible": True,
            }
    return None


SGR_KEYS = ("threshold", "risk_bound", "selective_risk", "coverage")
SGR_KEYS += ("feasible",)


def assert_matches_oracle(result, expected):
    assert result["method"] == "sgr"
    if expected is None:
        assert {key: result[key] for key in SGR_KEYS} == {
            "threshold": math.inf,
            "risk_bound": pytest.approx(math.nan, nan_ok=True),
            "selective_risk": pytest.approx(math.nan, nan_ok=True),
            "coverage": 0.0,
            "feasible": False,
        }
        assert result["unmet"] == ("target_risk",)
        assert result["message"].startswith("Cannot guarantee")
        return
    assert result["feasible"] is True
    assert result["unmet"] == () and result["message"] == ""
    assert result["needed_inputs"] is None
    assert result["threshold"] == expected["threshold"]
    assert result["coverage"] == expected["coverage"]
    assert result["selective_risk"] == pytest.approx(
        expected["selective_risk"], abs=1e-12
    )
    assert result["risk_bound"] == pytest.approx(
        expected["risk_bound"], rel=1e-9
    )


class TestSGR(NumpyTests):
    def test_finds_a_guaranteed_threshold(self):
        confidence = np.arange(1000) / 1000
        correct = np.arange(1000) >= 100
        result = thresholds.risk_threshold(
            confidence, correct, 0.05, 0.05, method="sgr"
        )
        assert result["feasible"]
        accepted = confidence >= result["threshold"]
        assert result["coverage"] == accepted.mean()
        assert result["selective_risk"] == pytest.approx(
            np.mean(~correct[accepted])
        )
        assert result["risk_bound"] <= 0.05
        # The threshold is candidate j = 1000 * (1 - coverage) + 1 from the
        # bottom, bounded at level delta / (j * H_1000).
        rank = round(1000 * (1 - result["coverage"])) + 1
        harmonic = np.sum(1 / np.arange(1, 1001))
        assert result["risk_bound"] == pytest.approx(
            thresholds.risk_upper_bound(
                np.sum(~correct[accepted]),
                accepted.sum(),
                0.05 / (rank * harmonic),
            )
        )
        # The next lower candidate fails the target.
        lower = confidence >= result["threshold"] - 0.001
        assert (
            thresholds.risk_upper_bound(
                np.sum(~correct[lower]),
                lower.sum(),
                0.05 / ((rank - 1) * harmonic),
            )
            > 0.05
        )
        # Close to the best possible: 900 correct and at most ~3% errors.
        assert 0.9 < result["coverage"] <= 0.95

    @pytest.mark.parametrize("n,coverage", [(20, 0.0), (60, 1.0)])
    def test_all_correct_reaches_full_coverage(self, n, coverage):
        # Full coverage is candidate j = 1: with no error in n, its bound
        # is 1 - (delta / H_n)^(1 / n), ~0.19 for n = 20 (above the target:
        # no candidate can do better) and ~0.073 for n = 60.
        confidence = np.random.default_rng(n).random(n)
        result = thresholds.risk_threshold(
            confidence, np.ones(n, bool), 0.1, method="sgr"
        )
        harmonic = np.sum(1 / np.arange(1, n + 1))
        full_bound = 1 - (0.05 / harmonic) ** (1 / n)
        assert result["coverage"] == coverage
        assert result["feasible"] == (full_bound <= 0.1)
        if result["feasible"]:
            assert result["threshold"] == confidence.min()
            assert result["risk_bound"] == pytest.approx(full_bound)

    @pytest.mark.parametrize("n", [20, 60, 200, 1000])
    @pytest.mark.parametrize("delta", [0.05, 0.2])
    def test_all_correct_matches_oracle(self, n, delta):
        confidence = np.random.default_rng(n).random(n)
        correct = np.ones(n, bool)
        result = thresholds.risk_threshold(
            confidence, correct, 0.1, delta, method="sgr"
        )
        expected = sgr_oracle(confidence, correct, 0.1, delta)
        assert_matches_oracle(result, expected)
        if n >= 60:
            assert result["coverage"] == 1.0

    @pytest.mark.parametrize(
        "seed,levels,target,delta,feasible",
        [
            (0, None, 0.05, 0.05, True),
            (1, 20, 0.05, 0.05, True),
            (2, 100, 0.1, 0.01, True),
            (3, 10, 0.1, 0.2, True),
            (4, None, 0.2, 0.1, True),
            (5, 50, 0.03, 0.05, False),
            (6, 5, 0.15, 0.05, True),
        ],
    )
    def test_random_data_matches_oracle(
        self, seed, levels, target, delta, feasible
    ):
        # Errors concentrated at low confidence, ties from rounding, and a
        # few NaN confidences (never accepted).
        rng = np.random.default_rng(seed)
        n = int(rng.integers(300, 800))
        confidence = rng.random(n)
        correct = rng.random(n) >= 0.9 * (1 - confidence) ** 4
        if levels:
            confidence = np.round(confidence * levels) / levels
        confidence[rng.random(n) < 0.03] = np.nan
        result = thresholds.risk_threshold(
            confidence, correct, target, delta, method="sgr"
        )
        expected = sgr_oracle(confidence, correct, target, delta)
        assert_matches_oracle(result, expected)
        # Not trivial: the feasible cases stop strictly inside the data.
        assert result["feasible"] == feasible
        assert 0.0 < result["coverage"] < 1.0 or not feasible
        # 0/1 integers are the same booleans.
        as_integers = thresholds.risk_threshold(
            confidence, correct.astype(int), target, delta, method="sgr"
        )
        assert as_integers.keys() == result.keys()
        for key in SGR_KEYS:
            assert as_integers[key] == pytest.approx(result[key], nan_ok=True)

    def test_full_coverage_despite_wrong_top(self):
        # The 10 most confident inputs are wrong: every threshold above the
        # lowest has a higher risk, but full coverage (10 errors in 1000)
        # meets the target, and the search starts there.
        confidence = np.arange(1000) / 1000
        correct = np.arange(1000) < 990
        result = thresholds.risk_threshold(
            confidence, correct, 0.03, method="sgr"
        )
        assert result["coverage"] == 1.0 and result["threshold"] == 0.0
        assert_matches_oracle(
            result, sgr_oracle(confidence, correct, 0.03, 0.05)
        )

    def test_ties_are_accepted_together(self):
        confidence = np.repeat([0.2, 0.5, 0.9], [100, 300, 300])
        correct = np.ones(700, bool)
        correct[:30] = False  # 30% wrong at 0.2
        result = thresholds.risk_threshold(
            confidence, correct, 0.05, method="sgr"
        )
        assert result["threshold"] == 0.5
        assert result["coverage"] == 600 / 700
        assert_matches_oracle(
            result, sgr_oracle(confidence, correct, 0.05, 0.05)
        )

    def test_infeasible(self):
        confidence = np.linspace(0, 1, 50)
        correct = np.arange(50) % 2 == 0
        result = thresholds.risk_threshold(
            confidence, correct, 0.01, method="sgr"
        )
        assert not result["feasible"]
        assert result["threshold"] == np.inf and result["coverage"] == 0.0
        assert math.isnan(result["risk_bound"])
        assert math.isnan(result["selective_risk"])

    def test_non_finite_never_accepted(self):
        confidence = np.concatenate(
            [np.arange(200) / 200, [np.nan, np.inf, -np.inf] * 10]
        )
        correct = np.ones(230, bool)
        result = thresholds.risk_threshold(
            confidence, correct, 0.1, method="sgr"
        )
        # Every finite input, the non-finite ones in the denominator.
        assert result["feasible"] and result["coverage"] == 200 / 230
        assert result["threshold"] == 0.0

    def test_guarantee_holds_in_simulation(self):
        # Confidence c ~ U(0, 1), wrong with probability 0.9 (1 - c)^8: the
        # true risk of accepting c >= t is
        # E[0.9 (1 - c)^8 | c >= t] = 0.1 (1 - t)^8, above the target 0.05
        # below t = 1 - 0.5^(1/8) ~ 0.083 (ideal coverage ~0.917).
        rng = np.random.default_rng(0)
        target, delta, draws, n = 0.05, 0.1, 400, 400
        violations = 0
        coverages = []
        for _ in range(draws):
            confidence = rng.random(n)
            correct = rng.random(n) >= 0.9 * (1 - confidence) ** 8
            result = thresholds.risk_threshold(
                confidence, correct, target, delta, method="sgr"
            )
            if result["feasible"]:
                true_risk = 0.1 * (1 - result["threshold"]) ** 8
                violations += true_risk > target
                coverages.append(result["coverage"])
        slack = 3 * math.sqrt(delta * (1 - delta) / draws)
        assert violations / draws <= delta + slack
        # Useful, not only safe: feasible in most draws, at a coverage
        # not far below the ideal one.
        assert len(coverages) >= 0.9 * draws
        assert np.mean(coverages) > 0.65

    @pytest.mark.parametrize(
        "kwargs,match",
        [
            ({"target_risk": 0.0}, "target_risk"),
            ({"target_risk": 1.0}, "target_risk"),
            ({"target_risk": 0.1, "delta": 0.0}, "delta"),
        ],
    )
    def test_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            thresholds.risk_threshold([0.1, 0.2], [True, False], **kwargs)
        with pytest.raises(ValueError, match="correct"):
            thresholds.risk_threshold([0.1, 0.2], [True], 0.1)
        with pytest.raises(ValueError, match="no finite"):
            thresholds.risk_threshold([np.nan, np.nan], [True, False], 0.1)

    @pytest.mark.parametrize(
        "correct",
        [[3] * 10, [0, 2] * 5, [0.5] * 10, [1.0, np.nan] * 5, ["yes"] * 10],
    )
    def test_correct_must_be_binary(self, correct):
        # Class labels (all 3s would otherwise count as all correct),
        # probabilities and strings are refused.
        with pytest.raises(ValueError, match="`correct`.*0/1"):
            thresholds.risk_threshold(np.arange(10.0), correct, 0.1)

    @pytest.mark.parametrize(
        "correct",
        [
            np.arange(100) >= 10,
            (np.arange(100) >= 10).astype("int32"),
            (np.arange(100) >= 10).astype("uint8"),
            (np.arange(100) >= 10).astype("float32"),
            (np.arange(100) >= 10).tolist(),
            [int(i >= 10) for i in range(100)],
        ],
    )
    def test_binary_correct_accepted(self, correct):
        result = thresholds.risk_threshold(
            np.arange(100.0), correct, 0.08, method="sgr"
        )
        assert result["threshold"] == 10.0 and result["coverage"] == 0.9


def ltt_data(n, seed=0):
    """Confidence ~ U(0, 1), wrong with probability 0.5 (1 - c)^4, a few
    NaN confidences (never accepted)."""
    rng = np.random.default_rng(seed)
    confidence = rng.random(n)
    correct = rng.random(n) >= 0.5 * (1 - confidence) ** 4
    confidence[rng.random(n) < 0.01] = np.nan
    return confidence, correct


LTT_KEYS = {"threshold", "feasible", "coverage", "selective_risk", "method"}
LTT_KEYS |= {"unmet", "needed_inputs", "message", "p_value", "num_tested"}
LTT_KEYS |= {"num_testing_inputs"}


class TestLearnThenTest(NumpyTests):
    def test_result(self):
        confidence, correct = ltt_data(2000)
        result = thresholds.risk_threshold(confidence, correct, 0.05, 0.1)
        assert set(result) == LTT_KEYS
        assert result["method"] == "ltt" and result["feasible"] is True
        assert result["unmet"] == () and result["message"] == ""
        assert result["needed_inputs"] is None
        assert result["num_testing_inputs"] == 1800
        # Measured on all inputs, NaN confidences in the denominator.
        accepted = confidence >= result["threshold"]
        assert result["coverage"] == accepted.mean()
        assert result["selective_risk"] == np.mean(~correct[accepted])
        assert 0.6 < result["coverage"] < 0.99
        assert 0 < result["p_value"] <= 0.1 / 3
        assert result["num_tested"] >= 1
        # Seeded: the same seed, the same split and result.
        again = thresholds.risk_threshold(confidence, correct, 0.05, 0.1)
        assert again == result
        other = thresholds.risk_threshold(
            confidence, correct, 0.05, 0.1, seed=1
        )
        assert other["threshold"] != result["threshold"]

    def test_explicit_tuning_part(self):
        # With `tuning`, all of `confidence` is tested: the p-value at the
        # threshold is the binomial tail of the testing counts there.
        confidence, correct = ltt_data(2000)
        tuning = (confidence[:300], correct[:300])
        result = thresholds.risk_threshold(
            confidence[300:], correct[300:], 0.05, 0.1, tuning=tuning
        )
        assert result["num_testing_inputs"] == 1700
        testing = confidence[300:] >= result["threshold"]
        errors = np.sum(testing & ~correct[300:])
        assert result["p_value"] == pytest.approx(
            stats.binom.cdf(errors, testing.sum(), 0.05), rel=1e-9
        )
        assert result["p_value"] <= 0.1 / 3
        finite = confidence[:300][np.isfinite(confidence[:300])]
        assert finite.min() <= result["threshold"] <= finite.max()
        # Measured on the tuning and testing inputs together.
        accepted = confidence >= result["threshold"]
        assert result["coverage"] == accepted.mean()

    def test_confident_errors_do_not_stall_the_search(self):
        # The 2% most confident inputs are all wrong: the highest
        # thresholds fail, yet the starts placed from the tuning part find
        # the thresholds below them.
        n = 3000
        confidence = np.arange(n) / n
        correct = (np.arange(n) >= 300) & (np.arange(n) < n - 60)
        result = thresholds.risk_threshold(confidence, correct, 0.05, 0.1)
        assert result["feasible"] and result["coverage"] > 0.85
        sgr = thresholds.risk_threshold(
            confidence, correct, 0.05, 0.1, method="sgr"
        )
        assert result["coverage"] >= sgr["coverage"] - 0.01

    def test_infeasible_needs_more_inputs(self):
        # 100 inputs with the 10 least confident wrong: too few to certify
        # a 1% risk. The estimate of the inputs needed, made of the same
        # pattern, is enough.
        def pattern(n):
            return np.arange(n) / n, np.arange(n) >= n // 10

        result = thresholds.risk_threshold(*pattern(100), 0.01)
        assert result["feasible"] is False and result["threshold"] == math.inf
        assert result["coverage"] == 0.0 and math.isnan(
            result["selective_risk"]
        )
        assert math.isnan(result["p_value"])
        assert result["unmet"] == ("target_risk",)
        needed = result["needed_inputs"]
        assert isinstance(needed, int) and needed > 100
        for part in ("target_risk=0.01", "delta=0.05", "100 calibration"):
            assert part in result["message"]
        assert f"About {needed} calibration inputs" in result["message"]
        assert thresholds.risk_threshold(*pattern(needed + 50), 0.01)[
            "feasible"
        ]
        assert not thresholds.risk_threshold(*pattern(needed // 2), 0.01)[
            "feasible"
        ]

    def test_needed_inputs_are_more_than_given(self):
        # The estimate is a total that would be feasible: above the count
        # that was not (a bisection that moved settled entries once gave
        # 1,000 for 1,000 inputs).
        rng = np.random.default_rng(0)
        checked = 0
        for _ in range(150):
            n = int(rng.integers(50, 1500))
            confidence = rng.random(n)
            slope = rng.uniform(1, 6)
            wrong = rng.random(n) < 0.3 * (1 - confidence) ** slope
            target = float(rng.choice([0.005, 0.01, 0.02, 0.05]))
            result = thresholds.risk_threshold(
                confidence, ~wrong, target, delta=0.1
            )
            if not result["feasible"] and result["needed_inputs"]:
                checked += 1
                assert result["needed_inputs"] > n, (n, target)
        assert checked >= 20

    def test_infeasible_when_the_measured_risk_is_too_high(self):
        confidence = np.linspace(0, 1, 400)
        # 25% wrong everywhere, the most confident input too: no
        # threshold has a measured risk below 10%.
        correct = np.arange(400) % 4 != 3
        for method in ("ltt", "sgr"):
            result = thresholds.risk_threshold(
                confidence, correct, 0.1, method=method
            )
            assert not result["feasible"] and result["needed_inputs"] is None
            assert "would not help" in result["message"]

    @pytest.mark.parametrize("method", ["ltt", "sgr"])
    def test_target_coverage(self, method):
        confidence, correct = ltt_data(3000, seed=1)
        kwargs = {"method": method}
        free = thresholds.risk_threshold(
            confidence, correct, 0.05, 0.05 / 2, **kwargs
        )
        # Met: the threshold is at most the coverage-certified one.
        result = thresholds.risk_threshold(
            confidence, correct, 0.05, 0.05, target_coverage=0.5, **kwargs
        )
        assert result["feasible"] and result["unmet"] == ()
        assert result["threshold"] == free["threshold"]
        assert result["threshold"] <= thresholds.coverage_threshold(
            confidence, 0.5, delta=0.05 / 2
        )
        # Each alone possible, not together.
        result = thresholds.risk_threshold(
            confidence, correct, 0.05, 0.05, target_coverage=0.95, **kwargs
        )
        assert not result["feasible"]
        assert result["unmet"] == ("target_risk", "target_coverage")
        assert "target_coverage=0.95" in result["message"]
        # Too few inputs to guarantee 99% coverage.
        result = thresholds.risk_threshold(
            confidence[:50],
            np.ones(50, bool),
            0.5,
            target_coverage=0.99,
            **kwargs,
        )
        assert result["unmet"] == ("target_coverage",)
        assert result["needed_inputs"] > 50

    def test_hoeffding_bentkus(self):
        # With an explicit tuning part all inputs are tested: the p-value
        # at the threshold is Bates et al.'s, from the counts there.
        confidence, correct = ltt_data(3000, seed=2)
        tuning = (confidence[:300], correct[:300])
        result = thresholds.risk_threshold(
            confidence[300:],
            correct[300:],
            0.05,
            0.1,
            tuning=tuning,
            p_value="hb",
        )
        assert result["feasible"] and result["coverage"] > 0.5
        accepted = confidence[300:] >= result["threshold"]
        n = accepted.sum()
        risk = np.sum(accepted & ~correct[300:]) / n
        h1 = risk * math.log(risk / 0.05) + (1 - risk) * math.log(
            (1 - risk) / 0.95
        )
        expected = min(
            math.exp(-n * h1),
            math.e * stats.binom.cdf(round(n * risk), n, 0.05),
        )
        assert result["p_value"] == pytest.approx(expected, rel=1e-9)
        assert result["p_value"] <= 0.1 / 3

    @pytest.mark.parametrize(
        "kwargs,match",
        [
            ({"method": "conformal"}, "method"),
            ({"p_value": "bonferroni"}, "p_value"),
            ({"method": "sgr", "p_value": "hb"}, "p_value"),
            ({"method": "sgr", "tuning": ([0.5], [True])}, "tuning"),
            ({"tuning": ([0.5, 0.6], [True])}, "tuning_correct"),
            ({"tuning": [0.5, 0.6]}, "tuning"),
            ({"tuning_fraction": 1.0}, "tuning_fraction"),
            ({"num_starts": 0}, "num_starts"),
            ({"seed": -1}, "seed"),
            ({"target_coverage": 0.0}, "target_coverage"),
        ],
    )
    def test_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            thresholds.risk_threshold(
                [0.1, 0.2, 0.3], [True, False, True], 0.1, **kwargs
            )
        with pytest.raises(ValueError, match="at least 2"):
            thresholds.risk_threshold([0.1], [True], 0.1)


class TestGuaranteedCoverage(NumpyTests):
    @pytest.mark.parametrize(
        "n,target,delta", [(50, 0.5, 0.1), (200, 0.9, 0.05), (1000, 0.95, 0.01)]
    )
    def test_matches_beta_oracle(self, n, target, delta):
        # Oracle: the smallest k with P(Beta(k, n + 1 - k) >= target) >=
        # 1 - delta, found by a plain loop; the threshold is the k-th
        # largest confidence, NaN counting as the lowest.
        confidence = np.round(np.random.default_rng(n).random(n), 2)
        confidence[:3] = np.nan
        k = next(
            k
            for k in range(1, n + 1)
            if stats.beta.sf(target, k, n + 1 - k) >= 1 - delta
        )
        ranked = np.sort(np.nan_to_num(confidence, nan=-np.inf))[::-1]
        threshold = thresholds.coverage_threshold(confidence, target, delta)
        assert threshold == ranked[k - 1]
        # More than the measured threshold asks.
        assert threshold <= thresholds.coverage_threshold(confidence, target)

    def test_too_few_inputs(self):
        # k = n works once 1 - c^n >= 1 - delta: n >= log(0.05) / log(0.9).
        with pytest.raises(ValueError, match="at least 29 are needed"):
            thresholds.coverage_threshold(np.arange(28.0), 0.9, delta=0.05)
        assert thresholds.coverage_threshold(np.arange(29.0), 0.9, 0.05) == 0.0
        with pytest.raises(ValueError, match="finite"):
            thresholds.coverage_threshold(
                [*range(100), *[np.nan] * 20], 0.8, delta=0.05
            )
        with pytest.raises(ValueError, match="delta"):
            thresholds.coverage_threshold([1.0, 2.0], 0.5, delta=1.0)


class TestNovelty(NumpyTests):
    def test_conformal_p_values(self):
        p = thresholds.conformal_p_values(
            [1.0, 2.0, 2.0, 3.0, np.nan], [0.5, 2.0, 3.0, 9.0, np.nan, np.inf]
        )
        np.testing.assert_allclose(p, [0.2, 0.8, 1.0, 1.0, 0.0, 0.0])
        assert thresholds.conformal_p_values([1.0], np.ones((2, 3))).shape == (
            2,
            3,
        )
        with pytest.raises(ValueError, match="no finite"):
            thresholds.conformal_p_values([np.nan], [1.0])

    def test_conformal_p_values_are_valid(self):
        # P(p <= u) <= u for an exchangeable new score.
        rng = np.random.default_rng(0)
        scores = np.round(rng.random((20000, 20)), 1)
        p = np.array(
            [
                thresholds.conformal_p_values(row[:-1], row[-1:])[0]
                for row in scores[:4000]
            ]
        )
        for u in (0.05, 0.1, 0.3):
            assert np.mean(p <= u) <= u + 3 * math.sqrt(u / 4000)

    def test_benjamini_hochberg(self):
        assert thresholds.benjamini_hochberg([], 0.1).tolist() == []
        assert thresholds.benjamini_hochberg([0.5, 0.01], 0.05).tolist() == [
            False,
            True,
        ]
        with pytest.raises(ValueError, match="NaN"):
            thresholds.benjamini_hochberg([0.1, np.nan], 0.1)
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            thresholds.benjamini_hochberg([0.1, 1.5], 0.1)
        with pytest.raises(ValueError, match="alpha"):
            thresholds.benjamini_hochberg([0.1], 1.0)


@pytest.fixture
def digits_tac(trained_cnn):
    """An add-on TAC over the trained digits CNN. Its projections are not
    trained: calibration only needs some confidence score (TAC's distance,
    which needs no training statistics)."""
    return keras_tac.TACModel(trained_cnn, seed=1, score="distance")


class TestCalibrate:
    def test_default_is_target_coverage(self, digits_tac, digits):
        _, (x, y) = digits
        summary = digits_tac.calibrate(x, y, verbose=0)
        confidence = digits_tac.predict(x, verbose=0)["confidence"]
        assert summary["threshold"] == thresholds.coverage_threshold(
            confidence, 0.9
        )
        assert summary["coverage"] == np.mean(
            confidence >= summary["threshold"]
        )
        assert set(summary) == {
            "threshold",
            "coverage",
            "accuracy",
            "selective_accuracy",
        }

    def test_target_tpr(self, digits_tac, digits):
        _, (x, _) = digits
        summary = digits_tac.calibrate(x, target_tpr=0.95, verbose=0)
        assert summary["tpr"] >= 0.95 and summary["coverage"] >= 0.95
        assert digits_tac.threshold == summary["threshold"]
        # Oracle: the NumPy threshold on the confidences `predict` gives,
        # and by brute force the largest confidence accepting >= 95%.
        confidence = digits_tac.predict_with_rejection(x, verbose=0)[
            "confidence"
        ]
        assert summary["threshold"] == thresholds.tpr_threshold(
            confidence, 0.95
        )
        candidates = [
            c for c in np.unique(confidence) if np.mean(confidence >= c) >= 0.95
        ]
        assert summary["threshold"] == max(candidates)
        assert summary["tpr"] == np.mean(confidence >= max(candidates))

    def test_target_risk_and_save_load(self, trained_cnn, digits, tmp_path):
        # A TAC trained for one epoch, so that its confidence ranks errors;
        # three calibration inputs are non-finite (never accepted, but
        # counted in the coverage).
        (x_train, y_train), (x, y) = digits
        tac = keras_tac.TACModel(trained_cnn, seed=1, score="distance")
        tac.compile(optimizer=keras.optimizers.Adam(1e-2))
        tac.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
        x = x.copy()
        x[:3, 0, 0, 0] = np.nan
        outputs = tac.predict(x, verbose=0)
        finite = np.isfinite(x).all(axis=(1, 2, 3))
        confidence = np.where(finite, outputs["confidence"], np.nan)
        correct = outputs["prediction"] == y
        # The base accuracy differs between backends: take the lowest
        # target on a grid whose threshold lies strictly inside the data.
        inside = []
        for target in (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45):
            result = thresholds.risk_threshold(
                confidence, correct, target, 0.1, method="sgr"
            )
            if 0.0 < result["coverage"] < 1.0:
                inside.append(target)
        assert inside, "no target gives a threshold inside the data"
        target = inside[0]
        expected = thresholds.risk_threshold(
            confidence, correct, target, 0.1, method="sgr"
        )
        assert_matches_oracle(
            expected, sgr_oracle(confidence, correct, target, 0.1)
        )
        summary = tac.calibrate(
            x, y, target_risk=target, delta=0.1, method="sgr", verbose=0
        )
        assert summary["threshold"] == expected["threshold"]
        assert tac.threshold == pytest.approx(expected["threshold"])
        assert summary["risk_bound"] == expected["risk_bound"]
        assert summary["coverage"] == expected["coverage"]
        assert summary["selective_accuracy"] == pytest.approx(
            1 - expected["selective_risk"]
        )
        assert summary["accuracy"] == pytest.approx(correct.mean())
        assert summary["delta"] == 0.1
        path = os.path.join(tmp_path, "tac.keras")
        tac.save(path)
        restored = keras.saving.load_model(path)
        assert restored.threshold == tac.threshold
        np.testing.assert_array_equal(
            restored.predict_with_rejection(x, verbose=0)["accepted"],
            confidence >= summary["threshold"],
        )

    def test_combined_confidence_is_calibrated_on_the_data(
        self, trained_cnn, digits
    ):
        # The default score standardises its signals on the calibration
        # inputs, then picks the threshold on the calibrated confidences:
        # the ones `predict` gives afterwards.
        (x_train, y_train), (x, y) = digits
        tac = keras_tac.TACModel(trained_cnn, seed=1)
        assert tac.score == "combined"
        tac.compile(optimizer=keras.optimizers.Adam(1e-2))
        tac.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
        with pytest.raises(ValueError, match="fit_statistics"):
            keras_tac.TACModel(trained_cnn).calibrate(x, verbose=0)
        summary = tac.calibrate(x, y, target_coverage=0.8, verbose=0)
        confidence = tac.predict(x, verbose=0)["confidence"]
        # To the last bit or so: calibrate combines the signals eagerly,
        # `predict` in its compiled head program (on JAX's CPU, a program
        # of its own since the predict step is split at the taps).
        np.testing.assert_allclose(
            summary["threshold"],
            thresholds.coverage_threshold(confidence, 0.8),
            rtol=1e-6,
        )
        # An input at the threshold may fall either side of that last bit.
        coverage = np.mean(confidence >= summary["threshold"])
        assert abs(summary["coverage"] - coverage) <= 1 / len(x)

    def test_infeasible_risk_raises(self, digits_tac, digits):
        _, (x, y) = digits
        before = digits_tac.threshold
        with pytest.raises(ValueError, match="Cannot guarantee"):
            digits_tac.calibrate(x[:40], y[:40], target_risk=0.001, verbose=0)
        assert digits_tac.threshold == before

    @pytest.mark.parametrize(
        "kwargs,match",
        [
            ({"target_coverage": 0.9, "target_tpr": 0.9}, "alone"),
            ({"target_tpr": 0.9, "target_risk": 0.1}, "alone"),
            ({"delta": 0.1}, "applies with"),
            ({"target_risk": 0.1, "y": None}, "needs labels"),
            ({"target_tpr": 1.5}, "target_tpr"),
            ({"target_risk": 0.1, "delta": 2.0}, "delta"),
        ],
    )
    def test_bad_targets(self, kwargs, match):
        tac = keras_tac.TACModel(make_cnn())
        x = np.zeros((3, 8, 8, 1), "float32")
        kwargs.setdefault("y", np.zeros(3, "int32"))
        with pytest.raises(ValueError, match=match):
            tac.calibrate(x, **kwargs)
