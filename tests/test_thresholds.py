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


class TestSGR(NumpyTests):
    def test_finds_a_guaranteed_threshold(self):
        confidence = np.arange(1000) / 1000
        correct = np.arange(1000) >= 100
        result = thresholds.risk_threshold(confidence, correct, 0.05, 0.05)
        assert result["feasible"]
        accepted = confidence >= result["threshold"]
        assert result["coverage"] == accepted.mean()
        assert result["selective_risk"] == pytest.approx(
            np.mean(~correct[accepted])
        )
        assert result["risk_bound"] <= 0.05
        steps = math.ceil(math.log2(1000))
        assert result["risk_bound"] == pytest.approx(
            thresholds.risk_upper_bound(
                np.sum(~correct[accepted]), accepted.sum(), 0.05 / steps
            )
        )
        # Close to the best possible: 900 correct and at most ~2% errors.
        assert 0.85 < result["coverage"] <= 0.95

    def test_infeasible(self):
        confidence = np.linspace(0, 1, 50)
        correct = np.arange(50) % 2 == 0
        result = thresholds.risk_threshold(confidence, correct, 0.01)
        assert not result["feasible"]
        assert result["threshold"] == np.inf and result["coverage"] == 0.0

    def test_non_finite_never_accepted(self):
        confidence = np.concatenate([np.arange(200) / 200, [np.nan] * 20])
        correct = np.ones(220, bool)
        result = thresholds.risk_threshold(confidence, correct, 0.1)
        assert result["feasible"] and result["coverage"] <= 200 / 220

    def test_guarantee_holds_in_simulation(self):
        # Confidence c ~ U(0, 1), wrong with probability 1 - c: the true
        # risk of accepting c >= t is (1 - t) / 2.
        rng = np.random.default_rng(0)
        target, delta, trials = 0.1, 0.1, 300
        violations = 0
        coverages = []
        for _ in range(trials):
            confidence = rng.random(400)
            correct = rng.random(400) < confidence
            result = thresholds.risk_threshold(
                confidence, correct, target, delta
            )
            if result["feasible"]:
                violations += (1 - result["threshold"]) / 2 > target
                coverages.append(result["coverage"])
        assert violations / trials <= delta
        # It is useful, not only safe: the ideal coverage is 0.2.
        assert np.mean(coverages) > 0.1

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


@pytest.fixture
def digits_tac(trained_cnn):
    """An add-on TAC over the trained digits CNN. Its projections are not
    trained: calibration only needs some confidence score."""
    return keras_tac.TACModel(trained_cnn, seed=1)


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

    def test_target_risk_and_save_load(self, digits_tac, digits, tmp_path):
        # The untrained TAC's score is barely related to correctness (SGR's
        # binary search assumes risk falls as the threshold rises), so the
        # target is loose; `TestSGR` checks the maths.
        _, (x, y) = digits
        summary = digits_tac.calibrate(
            x, y, target_risk=0.8, delta=0.1, verbose=0
        )
        assert summary["risk_bound"] <= 0.8 and summary["delta"] == 0.1
        confidence = digits_tac.predict(x, verbose=0)["confidence"]
        expected = thresholds.risk_threshold(
            confidence,
            digits_tac.predict(x, verbose=0)["prediction"] == y,
            0.8,
            0.1,
        )
        assert summary["threshold"] == pytest.approx(expected["threshold"])
        assert 1 - summary["selective_accuracy"] <= summary["risk_bound"]
        path = os.path.join(tmp_path, "tac.keras")
        digits_tac.save(path)
        restored = keras.saving.load_model(path)
        assert restored.threshold == digits_tac.threshold
        np.testing.assert_array_equal(
            restored.predict_with_rejection(x, verbose=0)["accepted"],
            confidence >= summary["threshold"],
        )

    def test_infeasible_risk_raises(self, digits_tac, digits):
        _, (x, y) = digits
        before = digits_tac.threshold
        with pytest.raises(ValueError, match="Cannot guarantee"):
            digits_tac.calibrate(x[:40], y[:40], target_risk=0.001, verbose=0)
        assert digits_tac.threshold == before

    @pytest.mark.parametrize(
        "kwargs,match",
        [
            ({"target_coverage": 0.9, "target_tpr": 0.9}, "at most one"),
            ({"target_tpr": 0.9, "target_risk": 0.1}, "at most one"),
            ({"delta": 0.1}, "only applies"),
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
