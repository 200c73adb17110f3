"""`TACModel.calibrate`: targets, guarantees, per-class thresholds and the
stored reference of the p-values, against NumPy and SciPy oracles."""

import math
import os
import warnings

import keras
import numpy as np
import pytest
from scipy import stats

import keras_tac
from keras_tac import thresholds
from keras_tac.src import calibration


def _targets(**given):
    expected = {"coverage": None, "tpr": None, "risk": None, "delta": None}
    expected["method"] = "ltt"
    expected.update(given)
    return expected


class TestCalibrationTargets:
    @pytest.fixture(autouse=True)
    def clear_session(self):
        yield

    @pytest.mark.parametrize(
        "given,expected",
        [
            ({}, _targets(coverage=0.9)),
            ({"target_coverage": 1.0}, _targets(coverage=1.0)),
            ({"target_tpr": 0.95}, _targets(tpr=0.95)),
            ({"target_risk": 0.1}, _targets(risk=0.1, delta=0.05)),
            (
                {"target_risk": 0.1, "delta": 0.01, "method": "sgr"},
                _targets(risk=0.1, delta=0.01, method="sgr"),
            ),
            (
                {"target_risk": 0.1, "target_coverage": 0.5, "delta": 0.2},
                _targets(risk=0.1, coverage=0.5, delta=0.2),
            ),
            (
                {"target_coverage": 0.8, "delta": 0.1},
                _targets(coverage=0.8, delta=0.1),
            ),
        ],
    )
    def test_valid(self, given, expected):
        assert calibration.calibration_targets(**given) == expected

    @pytest.mark.parametrize(
        "given,fragments",
        [
            (
                {"target_coverage": 0.9, "target_tpr": 0.9},
                ["`target_tpr` alone", "target_coverage"],
            ),
            (
                {"target_tpr": 0.9, "target_risk": 0.1},
                ["`target_tpr` alone", "target_risk"],
            ),
            ({"delta": 0.1}, ["`delta`", "neither target"]),
            ({"target_tpr": 0.9, "delta": 0.1}, ["`delta`", "neither"]),
            ({"method": "sgr"}, ["`method`", "target_risk=None"]),
            ({"target_risk": 0.1, "method": "bonferroni"}, ["`method`"]),
            ({"target_coverage": 0.0}, ["`target_coverage`", "(0, 1]"]),
            ({"target_coverage": True}, ["`target_coverage`"]),
            ({"target_tpr": -0.1}, ["`target_tpr`", "(0, 1]"]),
            ({"target_risk": 1.0}, ["`target_risk`", "(0, 1)"]),
            ({"target_risk": 0.1, "delta": 1.0}, ["`delta`", "(0, 1)"]),
            ({"target_risk": 0.1, "delta": "a"}, ["`delta`"]),
        ],
    )
    def test_refused(self, given, fragments):
        with pytest.raises(ValueError) as error:
            calibration.calibration_targets(**given)
        for fragment in fragments:
            assert fragment in str(error.value)


@pytest.fixture
def trained_tac(trained_cnn, digits):
    """A TAC on the trained digits CNN, its head trained for one epoch so
    that its confidence ranks errors; TAC's own distance score."""
    (x_train, y_train), _ = digits
    tac = keras_tac.TACModel(trained_cnn, seed=1, score="distance")
    tac.compile(optimizer=keras.optimizers.Adam(1e-2))
    tac.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    return tac


def split_oracle(count):
    """The documented split: the first tenth (rounded up) of
    `np.random.default_rng(0).permutation(count)` tunes."""
    tuning = np.zeros(count, bool)
    tuning[
        np.random.default_rng(0).permutation(count)[: math.ceil(count / 10)]
    ] = True
    return tuning


class TestPerClass:
    def test_coverage_per_predicted_class(self, trained_tac, digits, tmp_path):
        _, (x, y) = digits
        x = x.copy()
        x[:2, 0, 0, 0] = np.nan
        with warnings.catch_warnings():
            # A class the briefly trained base never predicts warns.
            warnings.simplefilter("ignore")
            summary = trained_tac.calibrate(
                x, y, target_coverage=0.8, per_class=True, verbose=0
            )
        outputs = trained_tac.predict(x, verbose=0)
        finite = np.isfinite(x).all(axis=(1, 2, 3))
        confidence = np.where(finite, outputs["confidence"], np.nan)
        prediction = outputs["prediction"]
        # Oracle: each class's threshold on the inputs predicted as it;
        # inf (reject all) for a class no input is predicted as.
        expected = np.array(
            [
                thresholds.coverage_threshold(confidence[prediction == k], 0.8)
                if np.isfinite(confidence[prediction == k]).any()
                else np.inf
                for k in range(10)
            ],
            "float32",
        )
        assert np.isfinite(expected).sum() >= 5
        np.testing.assert_array_equal(
            summary["class_thresholds"].astype("float32"), expected
        )
        np.testing.assert_array_equal(trained_tac.class_thresholds, expected)
        assert summary["threshold"] is None and trained_tac.threshold is None
        result = trained_tac.predict_with_rejection(x, verbose=0)
        np.testing.assert_array_equal(
            result["accepted"],
            finite & (confidence >= expected[prediction]),
        )
        for k in range(10):
            members = (prediction == k) & finite
            if members.any():
                assert result["accepted"][members].mean() >= 0.8 - 1e-9
        # An explicit threshold overrides the per-class ones.
        overridden = trained_tac.predict_with_rejection(
            x, threshold=-np.inf, verbose=0
        )
        np.testing.assert_array_equal(overridden["accepted"], finite)
        # Saved and loaded: the same thresholds and decisions.
        path = os.path.join(tmp_path, "tac.keras")
        trained_tac.save(path)
        restored = keras.saving.load_model(path)
        np.testing.assert_array_equal(restored.class_thresholds, expected)
        np.testing.assert_array_equal(
            restored.predict_with_rejection(x, verbose=0)["accepted"],
            result["accepted"],
        )
        # Calibrating once more with one threshold clears them.
        trained_tac.calibrate(x, target_coverage=0.8, verbose=0)
        assert trained_tac.class_thresholds is None

    def test_class_that_cannot_meet_the_target_rejects_all(
        self, trained_tac, digits
    ):
        _, (x, y) = digits
        prediction = trained_tac.predict(x, verbose=0)["prediction"]
        # Only inputs predicted 0-8: class 9 has no calibration input.
        keep = prediction != 9
        with pytest.warns(UserWarning, match="class 9: no calibration input"):
            summary = trained_tac.calibrate(
                x[keep], y[keep], target_coverage=0.8, per_class=True, verbose=0
            )
        assert summary["class_thresholds"][9] == np.inf
        assert 9 in summary["infeasible_classes"]
        result = trained_tac.predict_with_rejection(x, verbose=0)
        assert not result["accepted"][prediction == 9].any()


class TestPValues:
    def test_reference_is_the_held_out_confidences(self, trained_tac, digits):
        _, (x, _) = digits
        calibration_x, new_x = x[:250], x[250:].copy()
        new_x[0, 0, 0, 0] = np.nan
        trained_tac.calibrate(calibration_x, verbose=0)
        reference = trained_tac.predict(calibration_x, verbose=0)["confidence"]
        result = trained_tac.predict_with_rejection(new_x, verbose=0)
        scores = result["confidence"]
        expected = (1 + (reference[None, :] <= scores[:, None]).sum(axis=1)) / (
            len(reference) + 1
        )
        expected[0] = 0.0
        np.testing.assert_allclose(result["p_value"], expected, rtol=1e-6)
        # Same as the NumPy function on the same scores.
        np.testing.assert_allclose(
            result["p_value"][1:],
            thresholds.conformal_p_values(reference, scores[1:]),
            rtol=1e-6,
        )

    def test_nan_before_calibration_and_after_refitting(
        self, trained_cnn, digits
    ):
        (x_train, y_train), (x, _) = digits
        tac = keras_tac.TACModel(trained_cnn, seed=1)
        tac.fit_statistics(x_train[:200], y_train[:200], verbose=0)
        result = tac.predict_with_rejection(x[:5], threshold=0.0, verbose=0)
        assert np.isnan(result["p_value"]).all()
        tac.calibrate(x[:100], verbose=0)
        assert tac.calibration_record.num_reference_scores == 100
        tac.fit_statistics(x_train[:200], y_train[:200], verbose=0)
        assert tac.calibration_record.num_reference_scores == 0
        assert tac.threshold is None


class TestGuarantees:
    def test_risk_by_learn_then_test(self, trained_tac, digits):
        _, (x, y) = digits
        outputs = trained_tac.predict(x, verbose=0)
        confidence = outputs["confidence"].astype("float64")
        correct = outputs["prediction"] == y
        target = 0.5 * (1 - correct.mean()) + 0.02
        summary = trained_tac.calibrate(
            x, y, target_risk=target, delta=0.1, verbose=0
        )
        tuning = split_oracle(len(x))
        expected = thresholds.risk_threshold(
            confidence[~tuning],
            correct[~tuning],
            target,
            delta=0.1,
            tuning=(confidence[tuning], correct[tuning]),
        )
        assert expected["feasible"]
        assert summary["threshold"] == pytest.approx(expected["threshold"])
        assert summary["num_tuning"] == tuning.sum()
        assert summary["method"] == "ltt" and summary["delta"] == 0.1
        # The tested inputs reject the null at that threshold: SciPy's
        # binomial tail, at most delta.
        accepted = ~tuning & (confidence >= summary["threshold"])
        p_value = stats.binom.cdf(
            (~correct[accepted]).sum(), accepted.sum(), target
        )
        assert p_value <= 0.1
        # The p-values' reference is the tested part only.
        assert (
            trained_tac.calibration_record.num_reference_scores
            == (~tuning).sum()
        )

    def test_sgr_is_kept(self, trained_tac, digits):
        _, (x, y) = digits
        outputs = trained_tac.predict(x, verbose=0)
        correct = outputs["prediction"] == y
        # The lowest target SGR can guarantee here (training differs
        # between backends).
        for offset in (0.05, 0.1, 0.15, 0.2, 0.3, 0.4):
            target = min(0.5 * (1 - correct.mean()) + offset, 0.9)
            expected = thresholds.risk_threshold(
                outputs["confidence"], correct, target, delta=0.1, method="sgr"
            )
            if expected["feasible"]:
                break
        assert expected["feasible"]
        summary = trained_tac.calibrate(
            x, y, target_risk=target, delta=0.1, method="sgr", verbose=0
        )
        assert summary["threshold"] == pytest.approx(expected["threshold"])
        assert summary["risk_bound"] == expected["risk_bound"]
        assert "num_tuning" not in summary

    def test_both_constraints_or_a_clear_error(self, trained_tac, digits):
        _, (x, y) = digits
        before = trained_tac.threshold
        with pytest.raises(ValueError) as error:
            trained_tac.calibrate(
                x,
                y,
                target_risk=0.001,
                target_coverage=0.99,
                delta=0.1,
                verbose=0,
            )
        assert "target_coverage" in str(error.value) or "target_risk" in str(
            error.value
        )
        assert trained_tac.threshold == before
        with pytest.raises(ValueError, match="target_risk"):
            trained_tac.calibrate(x[:40], y[:40], target_risk=0.001, verbose=0)

    def test_guaranteed_coverage(self, trained_tac, digits):
        _, (x, _) = digits
        summary = trained_tac.calibrate(
            x, target_coverage=0.8, delta=0.1, verbose=0
        )
        confidence = trained_tac.predict(x, verbose=0)["confidence"]
        assert summary["threshold"] == pytest.approx(
            thresholds.coverage_threshold(confidence, 0.8, delta=0.1)
        )
        # More conservative than the plain coverage target.
        assert summary["coverage"] >= 0.8

    def test_combined_confidence_fit_on_the_tuning_part(
        self, trained_cnn, digits
    ):
        (x_train, y_train), (x, y) = digits
        tac = keras_tac.TACModel(trained_cnn, seed=1)
        tac.fit_statistics(x_train, y_train, verbose=0)
        parts = tac.predict(x, verbose=0)["confidence_parts"]
        accuracy = np.mean(tac.predict(x, verbose=0)["prediction"] == y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                tac.calibrate(
                    x, y, target_risk=1 - accuracy + 0.05, delta=0.2, verbose=0
                )
            except ValueError:
                pass  # infeasible is fine: the gate is fit first
        tuning = split_oracle(len(x))
        layer = tac.confidence_layer
        novelty = sorted(parts[tuning, 3].astype("float64"))
        # The conformal quantile by hand: rank ceil((n + 1) * 0.99) of the
        # tuning inputs' novelty, or an open gate past the last.
        rank = math.ceil((len(novelty) + 1) * layer.gate_quantile)
        expected = (
            novelty[rank - 1]
            if rank <= len(novelty)
            else float(np.finfo("float32").max)
        )
        assert float(keras.ops.convert_to_numpy(layer.gate_center)) == (
            pytest.approx(expected, rel=1e-5)
        )


class TestKNNWeight:
    """The kNN distance is left out of the default confidence when, on the
    labelled calibration inputs, it ranks the base's errors with an AUROC
    of 0.6 or less (oracle: SciPy's Mann-Whitney U)."""

    @pytest.fixture
    def fitted(self, trained_cnn, digits):
        (x_train, y_train), (x, y) = digits
        tac = keras_tac.TACModel(trained_cnn, seed=1)
        tac.fit_statistics(x_train, y_train, verbose=0)
        outputs = tac.predict(x, verbose=0)
        return tac, x, outputs["prediction"], outputs["confidence_parts"]

    @staticmethod
    def auroc_oracle(knn, correct):
        # AUROC = U / (n_right * n_wrong), ties one half; nearer is better.
        u = stats.mannwhitneyu(-knn[correct], -knn[~correct]).statistic
        return u / (correct.sum() * (~correct).sum())

    @staticmethod
    def weights(tac):
        return keras.ops.convert_to_numpy(
            tac.confidence_layer.signal_weights
        ).tolist()

    def test_kept_where_it_ranks_errors(self, fitted, digits):
        tac, x, prediction, parts = fitted
        y = digits[1][1]
        correct = prediction == y
        summary = tac.calibrate(x, y, target_coverage=0.9, verbose=0)
        expected = self.auroc_oracle(parts[:, 2].astype("float64"), correct)
        assert summary["knn_error_auroc"] == pytest.approx(expected, abs=1e-6)
        assert expected > 0.6
        assert summary["knn_weight"] == 1.0
        assert self.weights(tac) == [1.0, 1.0, 1.0]

    def test_left_out_where_it_does_not(self, fitted):
        tac, x, prediction, parts = fitted
        # Labels that make the base wrong on the tenth of the inputs
        # nearest their neighbours: the kNN distance ranks these errors
        # worse than chance.
        knn = parts[:, 2].astype("float64")
        nearest = knn <= np.quantile(knn, 0.1)
        y = np.where(nearest, (prediction + 1) % 10, prediction)
        summary = tac.calibrate(x, y, target_coverage=0.9, verbose=0)
        expected = self.auroc_oracle(knn, ~nearest)
        assert expected < 0.1
        assert summary["knn_error_auroc"] == pytest.approx(expected, abs=1e-6)
        assert summary["knn_weight"] == 0.0
        assert self.weights(tac) == [1.0, 1.0, 0.0]
        # The confidence is the formula without the kNN term.
        p = parts.astype("float64")
        z = (p[:, :2] - p[:, :2].mean(0)) / p[:, :2].std(0)
        center = keras.ops.convert_to_numpy(tac.confidence_layer.gate_center)
        gate = 1 / (1 + np.exp(-(p[:, 3] - center) / (0.5 * p[:, 3].std())))
        np.testing.assert_allclose(
            tac.predict(x, verbose=0)["confidence"],
            z.sum(1) - 10 * gate,
            rtol=1e-3,
            atol=1e-3,
        )
        # Without labels, all three signals count again.
        summary = tac.calibrate(x, target_coverage=0.9, verbose=0)
        assert "knn_weight" not in summary
        assert self.weights(tac) == [1.0, 1.0, 1.0]


class TestTrainingLikeWarning:
    """`calibrate` warns when its inputs look like training data."""

    def _overfit_tac(self):
        # Well separated classes: the base is right on every training row
        # and its max softmax saturates there.
        rng = np.random.default_rng(0)
        y = rng.integers(0, 3, 120)
        x = (rng.normal(size=(120, 6)) + 8.0 * np.eye(3, 6)[y]).astype(
            "float32"
        )
        inputs = keras.Input((6,))
        h = keras.layers.Dense(16, activation="relu")(inputs)
        base = keras.Model(inputs, keras.layers.Dense(3)(h))
        base.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        base.fit(x, y, epochs=200, verbose=0)
        tac = keras_tac.TACModel(base, num_slices=4)
        tac.compile()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tac.fit(x, y, epochs=5, verbose=0)
        return tac, x, y

    def test_warns_on_training_rows(self):
        tac, x, y = self._overfit_tac()
        # Oracle: the criteria by hand on the base's own outputs.
        logits = tac.base_model.predict(x, verbose=0)
        assert np.mean(np.argmax(logits, 1) == y) >= 0.995
        with pytest.warns(UserWarning, match="right on 100.0%.*look like"):
            tac.calibrate(x, y, verbose=0)
        probabilities = keras.ops.convert_to_numpy(
            keras.ops.softmax(logits, axis=-1)
        )
        if np.mean(probabilities.max(1) >= 1 - 1e-4) >= 0.9:
            # Without labels, the saturated softmax alone warns.
            with pytest.warns(UserWarning, match="max softmax exceeds"):
                tac.calibrate(x, verbose=0)

    def test_no_warning_on_held_out_data(self, trained_cnn, digits):
        (x_train, y_train), (x_test, y_test) = digits
        tac = keras_tac.TACModel(trained_cnn, seed=1)
        tac.compile()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tac.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
        # The fixture's CNN errs on a few percent of the test digits.
        predicted = tac.predict(x_test, verbose=0)["prediction"]
        assert np.mean(predicted == y_test) < 0.99
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            tac.calibrate(x_test, y_test, verbose=0)

    def test_labels_overrule_a_saturated_softmax(self):
        # The base saturated but wrong on some held-out rows: with labels
        # the accuracy decides, and 90% is no sign of training data.
        tac, x, y = self._overfit_tac()
        wrong = (y[:40] + 1) % 3
        labels = np.concatenate([wrong[:4], y[4:40]])
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            tac.calibrate(x[:40], labels, verbose=0)

    def test_few_inputs_never_warn(self):
        tac, x, y = self._overfit_tac()
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            tac.calibrate(x[:10], y[:10], verbose=0)
