"""Tests of the training statistics of the combined confidence
(`keras_tac.src.statistics`): class means, shared precisions and the kNN
bank, against NumPy and scikit-learn on the pooled taps."""

import math

import keras
import numpy as np
import pytest
from conftest import make_cnn
from conftest import to_numpy
from sklearn.covariance import EmpiricalCovariance

import keras_tac
from keras_tac.src import statistics

NUM_INPUTS = 60
BATCH_SIZE = 16  # Leaves a short last batch of 12.
# The ridge of `keras_tac.scores.MahalanobisDistance` (its default
# `regularization`), relative to the mean variance.
RIDGE = 1e-3


class ArrayDataset(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[rows], self.y[rows]


@pytest.fixture(scope="module")
def tac():
    # An untrained base is enough: the statistics are of its features.
    return keras_tac.TACModel(make_cnn(seed=4), seed=3)


@pytest.fixture(scope="module")
def data(digits, tac):
    """Inputs, labels, and the oracle features: the base output and each
    tap averaged over its spatial axes in NumPy, from the tap model."""
    (x, y), _ = digits
    x, y = x[:NUM_INPUTS], y[:NUM_INPUTS]
    outputs = tac.tap_model.predict(x, verbose=0)
    pooled = [
        t.reshape(len(t), -1, t.shape[-1]).mean(axis=1).astype("float64")
        for t in outputs[1:]
    ]
    return {"x": x, "y": y, "base_output": outputs[0], "pooled": pooled}


@pytest.fixture
def reset_threshold(tac):
    yield
    tac.rejection_threshold.assign(float("nan"))


def oracle_statistics(pooled, labels, num_classes=10):
    """Class means, shared precisions (scikit-learn's covariance of the
    class-centred features, plus the ridge) and present classes."""
    present = np.bincount(labels, minlength=num_classes) > 0
    means, precisions = [], []
    for h in pooled:
        mu = np.zeros((num_classes, h.shape[1]))
        for k in np.flatnonzero(present):
            mu[k] = h[labels == k].mean(axis=0)
        covariance = (
            EmpiricalCovariance(assume_centered=True)
            .fit(h - mu[labels])
            .covariance_
        )
        width = h.shape[1]
        ridge = RIDGE * np.trace(covariance) / width
        precisions.append(np.linalg.inv(covariance + ridge * np.eye(width)))
        means.append(mu)
    return means, precisions, present


def unit_rows(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def assert_statistics(layer, pooled, labels):
    means, precisions, present = oracle_statistics(pooled, labels)
    np.testing.assert_array_equal(to_numpy(layer.present), present)
    for variable, expected in zip(layer.means, means):
        np.testing.assert_allclose(
            to_numpy(variable)[present], expected[present], atol=1e-5
        )
    for variable, expected in zip(layer.precisions, precisions):
        scale = np.abs(expected).max()
        np.testing.assert_allclose(
            to_numpy(variable), expected, rtol=1e-3, atol=1e-5 * scale
        )


def assert_bank(layer, last_tap):
    rows = len(last_tap)
    bank = to_numpy(layer.bank)
    np.testing.assert_allclose(bank[:rows], unit_rows(last_tap), atol=1e-6)
    np.testing.assert_array_equal(bank[rows:], 0.0)
    np.testing.assert_array_equal(
        to_numpy(layer.bank_valid), np.arange(layer.bank_size) < rows
    )


def sources(x, y):
    import tensorflow as tf

    return {
        "arrays": (x, y),
        "tf_data": (
            tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH_SIZE),
            None,
        ),
        "py_dataset": (ArrayDataset(x, y, BATCH_SIZE), None),
    }


class TestFitStatistics:
    @pytest.mark.parametrize("source", ["arrays", "tf_data", "py_dataset"])
    def test_against_numpy(self, tac, data, source):
        x, y = sources(data["x"], data["y"])[source]
        statistics.fit_statistics(tac, x, y, batch_size=BATCH_SIZE, verbose=0)
        layer = tac.confidence_layer
        assert_statistics(layer, data["pooled"], data["y"])
        assert_bank(layer, data["pooled"][-1])

    def test_absent_classes(self, tac, data):
        keep = data["y"] < 5
        x, y = data["x"][keep], data["y"][keep]
        statistics.fit_statistics(tac, x, y, batch_size=BATCH_SIZE, verbose=0)
        layer = tac.confidence_layer
        np.testing.assert_array_equal(
            to_numpy(layer.present), np.arange(10) < 5
        )
        pooled = [h[keep] for h in data["pooled"]]
        assert_statistics(layer, pooled, y)
        assert_bank(layer, pooled[-1])

    def test_one_hot_labels(self, tac, data):
        one_hot = np.eye(10, dtype="float32")[data["y"]]
        statistics.fit_statistics(tac, data["x"], one_hot, verbose=0)
        assert_statistics(tac.confidence_layer, data["pooled"], data["y"])

    def test_without_labels_uses_base_predictions(self, tac, data):
        statistics.fit_statistics(
            tac, data["x"], batch_size=BATCH_SIZE, verbose=0
        )
        predictions = np.argmax(data["base_output"], axis=1)
        # The test is only meaningful if predictions differ from labels.
        assert not np.array_equal(predictions, data["y"])
        assert_statistics(tac.confidence_layer, data["pooled"], predictions)

    def test_bad_labels(self, tac, data):
        labels = data["y"].copy()
        labels[3] = 10
        with pytest.raises(ValueError, match="fit_statistics"):
            statistics.fit_statistics(tac, data["x"], labels, verbose=0)

    def test_more_labels_than_inputs(self, tac, data):
        with pytest.raises(ValueError, match="labels"):
            statistics.fit_statistics(
                tac, data["x"][:20], data["y"][:30], verbose=0
            )

    def test_non_finite_dataset_input(self, tac, data):
        import tensorflow as tf

        x = data["x"][:20].copy()
        x[3, 0, 0, 0] = np.nan
        dataset = tf.data.Dataset.from_tensor_slices((x, data["y"][:20]))
        with pytest.raises(ValueError, match="NaN"):
            statistics.fit_statistics(tac, dataset.batch(8), verbose=0)

    def test_non_finite_array_input(self, tac, data):
        x = data["x"][:20].copy()
        x[3, 0, 0, 0] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            statistics.fit_statistics(tac, x, data["y"][:20], verbose=0)

    def test_too_few_inputs(self, tac, data):
        with pytest.raises(statistics.TooFewInputs, match="k=10.*Received 4"):
            statistics.fit_statistics(
                tac, data["x"][:4], data["y"][:4], verbose=0
            )


class TestFitStatisticsFromFeatures:
    def test_same_as_from_inputs(self, tac, data, tmp_path):
        # Memory-mapped features, as the disk feature cache holds them.
        arrays = [data["base_output"], *data["pooled"]]
        mapped = []
        for index, array in enumerate(arrays):
            path = str(tmp_path / f"features_{index}.npy")
            np.save(path, array.astype("float32"))
            mapped.append(np.load(path, mmap_mode="r"))
        statistics.fit_statistics_from_features(
            tac, mapped[0], mapped[1:], data["y"]
        )
        assert_statistics(tac.confidence_layer, data["pooled"], data["y"])
        assert_bank(tac.confidence_layer, data["pooled"][-1])

    def test_without_labels(self, tac, data):
        statistics.fit_statistics_from_features(
            tac, data["base_output"], data["pooled"], None
        )
        predictions = np.argmax(data["base_output"], axis=1)
        assert_statistics(tac.confidence_layer, data["pooled"], predictions)

    def test_more_inputs_than_one_chunk_and_the_bank(self, tac):
        # 5,000 synthetic rows: two chunks of the streaming pass, and more
        # than the 4,096 rows the bank keeps.
        rng = np.random.default_rng(0)
        rows = 5000
        widths = list(tac.confidence_layer.tap_widths)
        pooled = [
            rng.normal(size=(rows, w)) * (1 + np.arange(w)) for w in widths
        ]
        labels = rng.integers(0, 10, size=rows)
        base_output = rng.normal(size=(rows, 10)).astype("float32")
        statistics.fit_statistics_from_features(
            tac, base_output, [p.astype("float32") for p in pooled], labels
        )
        layer = tac.confidence_layer
        assert_statistics(layer, pooled, labels)
        bank = to_numpy(layer.bank)
        assert layer.bank_size == 4096
        np.testing.assert_array_equal(to_numpy(layer.bank_valid), 1.0)
        # A subset of distinct inputs' normalised features.
        features = unit_rows(pooled[-1])
        nearest = np.argmax(bank @ features.T, axis=1)
        np.testing.assert_allclose(bank, features[nearest], atol=1e-5)
        assert len(np.unique(nearest)) == 4096
        # Seeded: the same subset again.
        statistics.fit_statistics_from_features(
            tac, base_output, [p.astype("float32") for p in pooled], labels
        )
        np.testing.assert_array_equal(to_numpy(layer.bank), bank)


class TestFitAfterTraining:
    def test_too_few_inputs_warn_and_reset_the_threshold(
        self, tac, data, reset_threshold
    ):
        tac.rejection_threshold.assign(0.5)
        with pytest.warns(UserWarning, match="k=10.*Received 5"):
            statistics.fit_after_training(
                tac,
                lambda: statistics.fit_statistics(
                    tac, data["x"][:5], data["y"][:5], verbose=0
                ),
            )
        assert tac.threshold is None

    def test_success_resets_the_threshold(self, tac, reset_threshold):
        tac.rejection_threshold.assign(0.5)
        calls = []
        statistics.fit_after_training(tac, lambda: calls.append(1))
        assert calls == [1] and tac.threshold is None

    def test_other_errors_propagate(self, tac, reset_threshold):
        def fail():
            raise ValueError("not about k")

        tac.rejection_threshold.assign(0.5)
        with pytest.raises(ValueError, match="not about k"):
            statistics.fit_after_training(tac, fail)

    @pytest.mark.filterwarnings("ignore:.*TAC learned little")
    def test_fit_on_too_few_inputs_warns(self, digits):
        (x, y), _ = digits
        tac = keras_tac.TACModel(make_cnn())
        tac.compile()
        with pytest.warns(UserWarning, match="k=10"):
            tac.fit(x[:6], y[:6], epochs=1, verbose=0)
        assert tac.threshold is None
        np.testing.assert_array_equal(
            to_numpy(tac.confidence_layer.bank_valid), 0.0
        )
