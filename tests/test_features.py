"""Tests of `FeatureExtractor` and `FeatureBatch`: per-input features equal
the TAC model's own outputs and NumPy pooling of the tapped tensors, in
order, for arrays and datasets."""

import math

import keras
import numpy as np
import pytest
from conftest import FLOAT32_EPS
from conftest import assert_close_at_scale
from conftest import make_cnn
from conftest import to_numpy

import keras_tac
from keras_tac.scores import FeatureBatch
from keras_tac.scores import FeatureExtractor

NUM_INPUTS = 40
BATCH_SIZE = 16  # Leaves a short, padded last batch of 8.


class ShuffledDataset(keras.utils.PyDataset):
    """Batches of `(x, y)` in a fixed shuffled order."""

    def __init__(self, x, y, batch_size, seed=0):
        super().__init__()
        self.order = np.random.default_rng(seed).permutation(len(x))
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index):
        rows = self.order[
            index * self.batch_size : (index + 1) * self.batch_size
        ]
        return self.x[rows], self.y[rows]


@pytest.fixture(scope="module")
def tac(digits):
    """A TAC model with fitted and calibrated combined confidence, so that
    every feature, the confidence included, is informative."""
    (x, y), (x_test, _) = digits
    tac = keras_tac.TACModel(make_cnn(seed=1), seed=2)
    tac.fit_statistics(x[:64], y[:64], verbose=0)
    tac.calibrate(x_test[NUM_INPUTS : NUM_INPUTS + 64], verbose=0)
    return tac


@pytest.fixture(scope="module")
def data(digits, tac):
    """Inputs and the oracle features: `predict`'s outputs, the tap model's
    tensors averaged in NumPy over their spatial axes."""
    _, (x, _) = digits
    x = x[:NUM_INPUTS]
    outputs = tac.tap_model.predict(x, verbose=0)
    pooled = [
        t.reshape(len(t), -1, t.shape[-1]).mean(axis=1) for t in outputs[1:]
    ]
    return {
        "x": x,
        "predict": tac.predict(x, verbose=0),
        "base_output": outputs[0],
        "pooled": pooled,
    }


def concatenated(batches):
    """The features of all batches, joined along the batch axis."""
    keys = ("base_output", "profile", "distances", "inner_products")
    keys += ("prediction", "confidence", "parts")
    result = {
        key: np.concatenate([getattr(b, key) for b in batches]) for key in keys
    }
    result["pooled"] = [
        np.concatenate([b.pooled[i] for b in batches])
        for i in range(len(batches[0].pooled))
    ]
    return result


# Float32 round-off allowed between the features and their oracles, in
# units of round-off at the values' scale (conftest.assert_close_at_scale):
# make_cnn sums 9 + 144 + 32 + 32 = 217 products along its longest path
# (conv_1, conv_2, features, logits) and the taps' pooling up to 16 more;
# the head adds its projections' fan-in (at most 64) and the profile's
# sums. 512 covers a different summation order in every one of them. A
# plausible bug (a tap, row or code out of order, a missing bias or mean)
# moves features by a large part of their scale: 512 * eps32 is 6e-5 of it.
TERMS = 512
# The combined confidence divides its standardised signals by held-out
# standard deviations that are small next to the signals (about a tenth
# here), which scales the round-off of its parts up.
CONFIDENCE_TERMS = 10 * TERMS


def assert_features(features, data, codes, rows=None):
    """Features of the inputs `rows` (default all) against the oracles."""
    rows = np.arange(NUM_INPUTS) if rows is None else rows
    predict = {key: value[rows] for key, value in data["predict"].items()}
    assert_close_at_scale(
        features["base_output"], data["base_output"][rows], TERMS
    )
    # The argmax, except where the two top logits are within round-off.
    logits = data["base_output"][rows]
    top_two = np.sort(logits, axis=1)[:, -2:]
    clear = (
        top_two[:, 1] - top_two[:, 0]
        > 2 * TERMS * FLOAT32_EPS * np.abs(logits).max()
    )
    np.testing.assert_array_equal(
        features["prediction"][clear], np.argmax(logits, axis=1)[clear]
    )
    for got, expected in zip(features["pooled"], data["pooled"]):
        assert_close_at_scale(got, expected[rows], TERMS)
    for key in ("profile", "distances"):
        assert_close_at_scale(features[key], predict[key], TERMS, key)
    assert_close_at_scale(
        features["inner_products"],
        predict["profile"] @ codes.T.astype("float32"),
        TERMS,
    )
    assert_close_at_scale(features["parts"], predict["confidence_parts"], TERMS)
    assert_close_at_scale(
        features["confidence"], predict["confidence"], CONFIDENCE_TERMS
    )
    assert np.isfinite(features["parts"]).all()


class TestFeatureBatch:
    def test_prediction_is_the_argmax(self):
        base_output = np.array([[0.1, 0.7, 0.2], [0.5, -1.0, 0.0]], "float32")
        batch = FeatureBatch(base_output, False, [np.zeros((2, 4))])
        np.testing.assert_array_equal(batch.prediction, [1, 0])
        assert batch.profile is None and batch.confidence is None
        assert batch.default_score == "distance"


class TestFeatureExtractor:
    def test_built_once_per_model(self, tac):
        extractor = FeatureExtractor.of(tac)
        # One graph model (and so one compiled function) per model.
        assert FeatureExtractor.of(tac).model is extractor.model
        assert extractor.num_taps == 3 and extractor.combined
        other = keras_tac.TACModel(make_cnn(seed=1), seed=2, score="distance")
        assert FeatureExtractor.of(other).model is not extractor.model
        assert not FeatureExtractor.of(other).combined

    def test_batches_match_predict_and_numpy(self, tac, data):
        batches = list(
            FeatureExtractor.of(tac).batches(data["x"], BATCH_SIZE, verbose=0)
        )
        assert [len(b.base_output) for b in batches] == [16, 16, 8]
        assert all(b.default_score == "combined" for b in batches)
        features = concatenated(batches)
        assert_features(features, data, tac.codes)
        # Calibrated: the combined confidence, not TAC's own score.
        assert not np.allclose(features["confidence"], features["parts"][:, 0])

    def test_pooled_only_gives_the_same_pooled_taps(self, tac, data):
        # Oracle: the full extractor's pooled taps and base output, and
        # the pooled taps as a NumPy mean over the tapped tensors.
        lean = FeatureExtractor.of(tac, pooled_only=True)
        assert lean.model is FeatureExtractor.of(tac, pooled_only=True).model
        assert lean.model is not FeatureExtractor.of(tac).model
        assert lean.num_taps == 3 and not lean.combined
        got = next(lean.batches(data["x"], NUM_INPUTS, 0))
        full = next(FeatureExtractor.of(tac).batches(data["x"], NUM_INPUTS, 0))
        np.testing.assert_allclose(got.base_output, full.base_output, atol=1e-6)
        for mine, theirs in zip(got.pooled, full.pooled):
            np.testing.assert_allclose(mine, theirs, atol=1e-6)
        taps = [to_numpy(t) for t in tac.tap_model(data["x"])[1:]]
        for mine, tap in zip(got.pooled, taps):
            axes = tuple(range(1, tap.ndim - 1))
            expected = tap.mean(axis=axes) if axes else tap
            np.testing.assert_allclose(mine, expected, rtol=1e-5, atol=1e-6)
        assert got.profile is None and got.confidence is None

    def test_one_batch_larger_than_the_data(self, tac, data):
        batches = list(FeatureExtractor.of(tac).batches(data["x"], 1000, 0))
        assert len(batches) == 1
        assert_features(concatenated(batches), data, tac.codes)

    def test_later_weight_changes_are_seen(self, data):
        tac = keras_tac.TACModel(make_cnn(seed=1), seed=2, score="distance")
        extractor = FeatureExtractor.of(tac)
        before = next(extractor.batches(data["x"], NUM_INPUTS, 0)).profile
        kernel = tac.head.profile_layers[0].trainable_weights[0]
        kernel.assign(to_numpy(kernel) * 2.0 + 0.1)
        after = next(extractor.batches(data["x"], NUM_INPUTS, 0)).profile
        assert not np.allclose(before, after)
        np.testing.assert_allclose(
            after, tac.predict(data["x"], verbose=0)["profile"], atol=1e-5
        )

    @pytest.mark.parametrize(
        "x,error,match",
        [
            (np.zeros((4, 9, 9, 1), "float32"), ValueError, "shape"),
            (np.zeros((0, 8, 8, 1), "float32"), ValueError, "empty"),
            (np.full((4, 8, 8, 1), np.nan, "float32"), ValueError, "NaN"),
        ],
    )
    def test_bad_inputs(self, tac, x, error, match):
        with pytest.raises(error, match=match):
            next(FeatureExtractor.of(tac).batches(x, 4, 0, where="here"))

    def test_bad_batch_size(self, tac, data):
        with pytest.raises(ValueError, match="batch_size"):
            next(FeatureExtractor.of(tac).batches(data["x"], 0, 0))


class TestLabelledBatches:
    def test_arrays(self, tac, data):
        # Labels are the row numbers, so they name the input they go with.
        labels = np.arange(NUM_INPUTS)
        pairs = list(
            FeatureExtractor.of(tac).labelled_batches(
                data["x"], labels, BATCH_SIZE, verbose=0
            )
        )
        assert [len(y) for _, y in pairs] == [16, 16, 8]
        for batch, y in pairs:
            assert len(batch.base_output) == len(y)
            features = concatenated([batch])
            assert_features(features, data, tac.codes, rows=y)
        np.testing.assert_array_equal(
            np.concatenate([y for _, y in pairs]), labels
        )

    def test_arrays_without_labels(self, tac, data):
        pairs = list(
            FeatureExtractor.of(tac).labelled_batches(
                data["x"], None, BATCH_SIZE, verbose=0
            )
        )
        assert len(pairs) == 3 and all(y is None for _, y in pairs)

    @pytest.mark.parametrize("kind", ["tf_data", "py_dataset"])
    def test_shuffled_datasets(self, tac, data, kind):
        import tensorflow as tf

        labels = np.arange(NUM_INPUTS)
        if kind == "tf_data":
            dataset = (
                tf.data.Dataset.from_tensor_slices((data["x"], labels))
                .shuffle(NUM_INPUTS, seed=1)
                .batch(BATCH_SIZE)
            )
        else:
            dataset = ShuffledDataset(data["x"], labels, BATCH_SIZE)
        pairs = list(FeatureExtractor.of(tac).labelled_batches(dataset))
        rows = np.concatenate([y for _, y in pairs])
        # Every input once, in the dataset's (shuffled) order.
        np.testing.assert_array_equal(np.sort(rows), labels)
        assert not np.array_equal(rows, labels)
        assert_features(
            concatenated([b for b, _ in pairs]), data, tac.codes, rows=rows
        )

    def test_dataset_of_inputs_and_of_weighted_triples(self, tac, data):
        import tensorflow as tf

        x, labels = data["x"], np.arange(NUM_INPUTS)
        inputs_only = tf.data.Dataset.from_tensor_slices(x).batch(BATCH_SIZE)
        pairs = list(FeatureExtractor.of(tac).labelled_batches(inputs_only))
        assert [y for _, y in pairs] == [None] * 3
        assert_features(concatenated([b for b, _ in pairs]), data, tac.codes)
        triples = tf.data.Dataset.from_tensor_slices(
            (x, labels, np.ones(NUM_INPUTS, "float32"))
        ).batch(BATCH_SIZE)
        pairs = list(FeatureExtractor.of(tac).labelled_batches(triples))
        np.testing.assert_array_equal(
            np.concatenate([y for _, y in pairs]), labels
        )

    def test_unsupported_data(self, tac):
        generator = (np.zeros((2, 8, 8, 1), "float32") for _ in range(2))
        with pytest.raises(TypeError, match="tf.data.Dataset"):
            next(FeatureExtractor.of(tac).labelled_batches(generator))
