"""`CalibrationRecord`: per-class thresholds and conformal p-values, against
NumPy by hand (crepes checks the NumPy p-values in
tests/test_thresholds_peers.py; this module also runs on the oldest Keras,
without the test-only peers)."""

import os

import keras
import numpy as np
import pytest
from conftest import to_numpy

from keras_tac import layers
from keras_tac.src.layers.calibration_record import MAX_REFERENCE_SCORES


def p_value_oracle(reference, scores):
    """(1 + #{reference <= s}) / (n + 1) by brute force; 0 for NaN."""
    reference = np.asarray(reference, "float64")
    out = []
    for score in scores:
        if not np.isfinite(score):
            out.append(0.0)
            continue
        out.append(
            (1 + sum(r <= score for r in reference)) / (1 + len(reference))
        )
    return np.array(out)


class TestPValues:
    def test_against_brute_force_with_ties(self):
        rng = np.random.default_rng(0)
        reference = np.round(rng.normal(size=300), 1).astype("float32")
        scores = np.concatenate(
            [np.round(rng.normal(size=50), 1), reference[:5], [-9.0, 9.0]]
        ).astype("float32")
        record = layers.CalibrationRecord(num_classes=3)
        record.set_reference_scores(reference)
        p = to_numpy(record.p_values(scores, np.ones(len(scores), bool)))
        np.testing.assert_allclose(
            p, p_value_oracle(reference, scores), rtol=1e-6
        )
        assert p[-2] == pytest.approx(1 / 301) and p[-1] == 1.0

    def test_non_finite_inputs_and_confidences_get_zero(self):
        record = layers.CalibrationRecord(num_classes=2)
        record.set_reference_scores([0.1, 0.2, 0.3])
        p = to_numpy(
            record.p_values(
                np.array([0.2, np.nan, np.inf, 0.2], "float32"),
                np.array([True, True, True, False]),
            )
        )
        # +inf confidence is not finite: never accepted, p-value 0.
        np.testing.assert_array_equal(p, [0.75, 0.0, 0.0, 0.0])

    def test_nan_until_a_reference_is_stored(self):
        record = layers.CalibrationRecord(num_classes=2)
        p = to_numpy(record.p_values(np.array([0.5], "float32"), [True]))
        assert np.isnan(p).all()
        assert record.num_reference_scores == 0

    def test_more_scores_than_kept_are_subsampled(self):
        scores = np.arange(MAX_REFERENCE_SCORES + 1000, dtype="float32")
        record = layers.CalibrationRecord(num_classes=2)
        record.set_reference_scores(scores, seed=3)
        stored = to_numpy(record.reference_scores)
        assert record.num_reference_scores == MAX_REFERENCE_SCORES
        # A subset of the given scores, without repeats, sorted.
        assert np.isin(stored, scores).all()
        assert len(np.unique(stored)) == MAX_REFERENCE_SCORES
        assert (np.diff(stored) > 0).all()
        # NaN and inf scores are dropped, not stored.
        record.set_reference_scores([1.0, np.nan, np.inf, 2.0])
        assert record.num_reference_scores == 2


class TestClassThresholds:
    def test_thresholds_for(self):
        record = layers.CalibrationRecord(num_classes=3)
        prediction = np.array([0, 1, 2, 1])
        np.testing.assert_array_equal(
            to_numpy(record.thresholds_for(prediction, 0.5)), [0.5] * 4
        )
        assert record.per_class is None
        record.set_class_thresholds([0.1, np.inf, -1.0])
        np.testing.assert_array_equal(
            to_numpy(record.thresholds_for(prediction, 0.5)),
            np.float32([0.1, np.inf, -1.0, np.inf]),
        )
        np.testing.assert_array_equal(
            record.per_class, np.float32([0.1, np.inf, -1.0])
        )
        record.set_class_thresholds(None)
        assert record.per_class is None

    @pytest.mark.parametrize("values", [[0.1, 0.2], [0.1, np.nan, 0.3]])
    def test_bad_thresholds(self, values):
        record = layers.CalibrationRecord(num_classes=3)
        with pytest.raises(ValueError, match="Expected 3 per-class thresholds"):
            record.set_class_thresholds(values)


def test_saved_and_loaded(tmp_path):
    confidence = keras.Input(shape=(), name="confidence")
    finite = keras.Input(shape=(), dtype="bool", name="finite")
    record = layers.CalibrationRecord(num_classes=4, name="record")
    model = keras.Model([confidence, finite], record(confidence, finite))
    record.set_reference_scores([0.2, 0.4, 0.6])
    record.set_class_thresholds([0.1, 0.2, 0.3, 0.4])
    path = os.path.join(tmp_path, "record.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    loaded = restored.get_layer("record")
    assert loaded.get_config() == record.get_config()
    np.testing.assert_array_equal(
        loaded.per_class, np.float32([0.1, 0.2, 0.3, 0.4])
    )
    p = restored([np.float32([0.5, 0.1]), np.array([True, False])])
    np.testing.assert_allclose(to_numpy(p), [0.75, 0.0])


def test_nan_thresholds_of_older_files_load_as_unset(tmp_path):
    # Files of keras-tac 0.3 and earlier store an unset threshold as NaN;
    # it is now the largest float32 (a multi-process JAX run refuses NaN,
    # which is not equal to itself). Such a file loads unset, and the
    # variable holds the new marker: the same in every process.
    confidence = keras.Input(shape=(), name="confidence")
    finite = keras.Input(shape=(), dtype="bool", name="finite")
    record = layers.CalibrationRecord(num_classes=3, name="record")
    model = keras.Model([confidence, finite], record(confidence, finite))
    unset = np.float32(np.finfo("float32").max)
    np.testing.assert_array_equal(
        to_numpy(record.class_thresholds), [unset] * 3
    )
    record.class_thresholds.assign(np.full(3, np.nan, "float32"))  # as 0.3
    path = os.path.join(tmp_path, "record.keras")
    model.save(path)
    loaded = keras.saving.load_model(path).get_layer("record")
    assert loaded.per_class is None
    np.testing.assert_array_equal(
        to_numpy(loaded.class_thresholds), [unset] * 3
    )
    # Unset: each class falls back to the single threshold.
    np.testing.assert_array_equal(
        to_numpy(loaded.thresholds_for(np.array([0, 2]), 0.25)), [0.25, 0.25]
    )
