import os

import keras
import numpy as np
import pytest
from conftest import Batches
from conftest import make_cnn
from scipy import special

import keras_tac
from keras_tac import scores
from keras_tac.src.features import FeatureBatch


def synthetic_batch(pooled, num_classes=3, base_output=None):
    """A `FeatureBatch` from given pooled features, for scorer maths."""
    rows = len(pooled[0])
    if base_output is None:
        base_output = np.zeros((rows, num_classes), "float32")
    return FeatureBatch(
        base_output=base_output,
        probabilities=False,
        pooled=pooled,
    )


class NumpyTests:
    """Base of the test classes that build no Keras model."""

    @pytest.fixture(autouse=True)
    def clear_session(self):
        # Overrides the shared fixture: no Keras session to reset (slow on
        # JAX).
        yield


@pytest.fixture
def tac(trained_cnn):
    return keras_tac.TACModel(trained_cnn, seed=2)


class TestFeaturesAndStatelessScores:
    def test_tac_scores_match_the_model(self, tac, digits):
        _, (x, _) = digits
        x = x[:150]
        scorers = [
            scores.TACScore(),
            *[scores.TACScore(kind) for kind in scores.TAC_SCORES],
        ]
        # A batch size that leaves a short, padded last batch.
        result, prediction = scores.compute_scores(
            tac, x, scorers, batch_size=64, verbose=0, return_prediction=True
        )
        out = tac.predict(x, verbose=0)
        np.testing.assert_array_equal(prediction, out["prediction"])
        rows = np.arange(len(x))
        distances = out["distances"]
        inner = out["profile"] @ tac.codes.T.astype("float32")
        expected = {
            "tac": out["confidence"],
            "tac_distance": -distances[rows, out["prediction"]],
            "tac_nearest_distance": -distances.min(axis=1),
            "tac_inner_product": inner[rows, out["prediction"]],
        }
        for name, values in expected.items():
            np.testing.assert_allclose(result[name], values, atol=2e-5)

    def test_logit_scores_against_numpy(self, tac, digits):
        _, (x, _) = digits
        x = x[:40]
        result = scores.compute_scores(tac, x, verbose=0)
        logits = tac.predict(x, verbose=0)["base_output"].astype("float64")
        assert list(result) == [
            "msp",
            "max_logit",
            "energy",
            "tac",
            "tac_distance",
            "tac_nearest_distance",
            "tac_inner_product",
        ]
        np.testing.assert_allclose(
            result["msp"], special.softmax(logits, axis=1).max(1), rtol=1e-5
        )
        np.testing.assert_allclose(
            result["max_logit"], logits.max(1), rtol=1e-5
        )
        np.testing.assert_allclose(
            result["energy"], special.logsumexp(logits, axis=1), rtol=1e-5
        )
        hot = scores.compute_scores(
            tac, x, [scores.Energy(temperature=2.0)], verbose=0
        )["energy"]
        np.testing.assert_allclose(
            hot, 2.0 * special.logsumexp(logits / 2.0, axis=1), rtol=1e-5
        )

    def test_probability_outputs(self):
        base = make_cnn(softmax=True)
        tac = keras_tac.TACModel(base)
        x = np.random.default_rng(0).random((20, 8, 8, 1)).astype("float32")
        result = scores.compute_scores(tac, x, verbose=0)
        probabilities = base.predict(x, verbose=0).astype("float64")
        np.testing.assert_allclose(
            result["msp"], probabilities.max(1), rtol=1e-5
        )
        np.testing.assert_allclose(
            result["max_logit"], np.log(probabilities.max(1)), rtol=1e-5
        )
        # log-sum-exp of log-probabilities is log(1): documented constant.
        np.testing.assert_array_equal(result["energy"], np.zeros(20))

    def test_batches_stream_in_order(self, tac, digits):
        _, (x, _) = digits
        extractor = scores.FeatureExtractor(tac)
        batches = list(extractor.batches(x[:50], batch_size=16, verbose=0))
        assert [len(b.base_output) for b in batches] == [16, 16, 16, 2]
        assert len(batches[0].pooled) == len(tac.tap_layers)
        assert [p.shape[1] for p in batches[0].pooled] == [16, 32, 32]
        whole = next(extractor.batches(x[:50], batch_size=50, verbose=0))
        np.testing.assert_allclose(
            np.concatenate([b.pooled[-1] for b in batches]),
            whole.pooled[-1],
            rtol=1e-5,
            atol=1e-6,
        )
        # The last tap ("features") pooled is that layer's output.
        features = keras.Model(
            tac.base_model.inputs, tac.base_model.get_layer("features").output
        )
        np.testing.assert_allclose(
            whole.pooled[-1],
            features.predict(x[:50], verbose=0),
            rtol=1e-5,
            atol=1e-6,
        )

    def test_bad_input(self, tac):
        with pytest.raises(ValueError, match="expected shape"):
            scores.compute_scores(tac, np.zeros((3, 9, 9, 1)), verbose=0)
        with pytest.raises(ValueError, match="batch_size"):
            scores.compute_scores(
                tac, np.zeros((3, 8, 8, 1)), batch_size=0, verbose=0
            )
        with pytest.raises(ValueError, match="not fitted"):
            scores.compute_scores(
                tac, np.zeros((3, 8, 8, 1)), [scores.DeepKNN()], verbose=0
            )
        with pytest.raises(ValueError, match="unique"):
            scores.compute_scores(
                tac, np.zeros((3, 8, 8, 1)), [scores.MaxLogit()] * 2
            )
        with pytest.raises(TypeError, match="Scorer"):
            scores.compute_scores(tac, np.zeros((3, 8, 8, 1)), ["msp"])
        with pytest.raises(ValueError, match="kind"):
            scores.TACScore("cosine")


class TestMahalanobis(NumpyTests):
    def reference(self, features, labels, point, regularization):
        """Direct computation from all features at once."""
        classes = np.unique(labels)
        means = np.stack([features[labels == k].mean(0) for k in classes])
        centred = features - means[np.searchsorted(classes, labels)]
        covariance = centred.T @ centred / len(features)
        width = features.shape[1]
        covariance += (
            regularization * np.trace(covariance) / width * np.eye(width)
        )
        precision = np.linalg.inv(covariance)
        diffs = point[:, None, :] - means[None]
        squared = np.einsum("nkd,de,nke->nk", diffs, precision, diffs)
        return means, squared.min(1) / width

    @pytest.mark.parametrize("offset", [0.0, 1e4])
    def test_streaming_fit_matches_direct(self, offset):
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 3, 500)
        tap_a = rng.normal(size=(500, 5)) + labels[:, None] + offset
        tap_b = rng.normal(size=(500, 3)) * 2 - labels[:, None]
        scorer = scores.MahalanobisDistance(regularization=1e-3)
        for start in range(0, 500, 64):
            batch = slice(start, start + 64)
            scorer.update(
                synthetic_batch([tap_a[batch], tap_b[batch]]), labels[batch]
            )
        scorer.finalize()
        queries = [rng.normal(size=(7, 5)) + offset, rng.normal(size=(7, 3))]
        got = scorer.score_batch(synthetic_batch(queries))
        means_a, squared_a = self.reference(tap_a, labels, queries[0], 1e-3)
        means_b, squared_b = self.reference(tap_b, labels, queries[1], 1e-3)
        np.testing.assert_allclose(scorer.means[0], means_a, rtol=1e-9)
        np.testing.assert_allclose(got, -(squared_a + squared_b) / 2, rtol=1e-6)
        last = scores.MahalanobisDistance(taps="last", regularization=1e-3)
        last.update(synthetic_batch([tap_a, tap_b]), labels)
        last.finalize()
        np.testing.assert_allclose(
            last.score_batch(synthetic_batch(queries)), -squared_b, rtol=1e-6
        )

    def test_missing_class_and_dead_units(self):
        rng = np.random.default_rng(1)
        features = np.concatenate(
            [rng.normal(size=(60, 2)), np.zeros((60, 1))], axis=1
        )
        labels = np.repeat([0, 2], 30)
        scorer = scores.MahalanobisDistance()
        scorer.update(synthetic_batch([features]), labels)
        scorer.finalize()
        assert scorer.present.tolist() == [True, False, True]
        values = scorer.score_batch(synthetic_batch([features[:5]]))
        assert np.all(np.isfinite(values)) and np.all(values <= 0)

    def test_errors(self):
        with pytest.raises(ValueError, match="taps"):
            scores.MahalanobisDistance(taps="first")
        with pytest.raises(ValueError, match="regularization"):
            scores.MahalanobisDistance(regularization=-1.0)
        scorer = scores.MahalanobisDistance(taps=[5])
        with pytest.raises(ValueError, match="taps"):
            scorer.update(synthetic_batch([np.ones((2, 2))]), [0, 1])
        with pytest.raises(ValueError, match="no fit data"):
            scores.MahalanobisDistance().finalize()
        with pytest.raises(ValueError, match="not fitted"):
            scores.MahalanobisDistance().score_batch(
                synthetic_batch([np.ones((2, 2))])
            )


class TestDeepKNN(NumpyTests):
    def test_against_brute_force(self):
        rng = np.random.default_rng(2)
        bank = rng.normal(size=(80, 6))
        queries = rng.normal(size=(9, 6))
        scorer = scores.DeepKNN(k=4, tap=0)
        scorer.update(synthetic_batch([bank[:50], np.ones((50, 2))]), None)
        scorer.update(synthetic_batch([bank[50:], np.ones((30, 2))]), None)
        scorer.finalize()
        got = scorer.score_batch(synthetic_batch([queries, np.ones((9, 2))]))
        unit_bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
        unit_queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        distances = np.linalg.norm(
            unit_queries[:, None] - unit_bank[None], axis=-1
        )
        np.testing.assert_allclose(
            got, -np.sort(distances, axis=1)[:, 3], atol=1e-5
        )

    def test_bank_size_and_errors(self):
        features = np.random.default_rng(3).normal(size=(30, 4))
        scorer = scores.DeepKNN(k=2, max_bank_size=10)
        scorer.update(synthetic_batch([features]), None)
        scorer.finalize()
        assert scorer.bank.shape == (10, 4)
        too_few = scores.DeepKNN(k=50)
        too_few.update(synthetic_batch([features]), None)
        with pytest.raises(ValueError, match="fewer than k=50"):
            too_few.finalize()
        with pytest.raises(ValueError, match="width"):
            scorer.score_batch(synthetic_batch([np.ones((2, 3))]))
        with pytest.raises(ValueError, match="k"):
            scores.DeepKNN(k=0)

    def test_expect_keeps_the_same_bank_in_bounded_memory(self):
        features = np.random.default_rng(4).normal(size=(101, 5))
        # The oracle: the whole data kept, then subsampled at `finalize`.
        oracle = scores.DeepKNN(k=2, max_bank_size=12, seed=7)
        oracle.update(synthetic_batch([features]), None)
        oracle.finalize()
        streamed = scores.DeepKNN(k=2, max_bank_size=12, seed=7)
        streamed.expect(len(features))
        for start, stop in ((0, 7), (7, 60), (60, 61), (61, 101)):
            streamed.update(synthetic_batch([features[start:stop]]), None)
            # Only the bank is held, never the batches.
            assert streamed._parts == []
        streamed.finalize()
        np.testing.assert_array_equal(streamed.bank, oracle.bank)
        short = scores.DeepKNN(k=2, max_bank_size=12)
        short.expect(len(features))
        short.update(synthetic_batch([features[:50]]), None)
        with pytest.raises(ValueError, match="expected 101 fit inputs"):
            short.finalize()


class TestFitAndSave:
    def test_fit_scorers_on_a_model(self, tac, digits):
        (x, y), (x_test, _) = digits
        fitted = scores.fit_scorers(
            tac,
            x[:300],
            y[:300],
            [scores.MahalanobisDistance(), scores.DeepKNN(k=5)],
            batch_size=128,
            verbose=0,
        )
        assert all(scorer.fitted for scorer in fitted)
        pooled = next(
            scores.FeatureExtractor(tac).batches(x[:300], 300, verbose=0)
        ).pooled
        for index, features in enumerate(pooled):
            expected = np.stack(
                [features[y[:300] == k].mean(0) for k in range(10)]
            )
            np.testing.assert_allclose(
                fitted[0].means[index], expected, rtol=1e-4, atol=1e-5
            )
        result = scores.compute_scores(tac, x_test[:20], fitted, verbose=0)
        assert set(result) == {"mahalanobis", "knn"}
        with pytest.raises(ValueError, match="labels"):
            scores.fit_scorers(tac, x[:10], y[:9], fitted, verbose=0)

    def test_datasets_stream_as_arrays(self, tac, digits):
        import tensorflow as tf

        (x, y), (x_test, _) = digits
        x, y, x_test = x[:200], y[:200], x_test[:50]

        def fitted(data, labels=None):
            scorer = scores.MahalanobisDistance()
            scores.fit_scorers(tac, data, labels, [scorer], verbose=0)
            return scorer

        # The oracle: the same scorers fitted and applied on arrays.
        oracle = fitted(x, y)
        expected = scores.compute_scores(tac, x_test, [oracle], verbose=0)
        sources = {
            "tf.data": lambda *a: tf.data.Dataset.from_tensor_slices(
                a if len(a) > 1 else a[0]
            ).batch(64),
            "PyDataset": Batches,
        }
        for name, make in sources.items():
            scorer = fitted(make(x, y))
            for got, want in zip(scorer.means, oracle.means):
                np.testing.assert_allclose(
                    got, want, rtol=1e-5, atol=1e-6, err_msg=name
                )
            result = scores.compute_scores(
                tac, make(x_test), [scorer], verbose=0
            )
            np.testing.assert_allclose(
                result["mahalanobis"],
                expected["mahalanobis"],
                rtol=1e-4,
                atol=1e-6,
                err_msg=name,
            )
        with pytest.raises(ValueError, match="y=None"):
            fitted(Batches(x, y), y)
        with pytest.raises(ValueError, match="needs labels"):
            fitted(Batches(x))

    def test_fit_scorers_label_rule(self, tac, digits):
        (x, y), _ = digits
        x, y = x[:200], y[:200]

        def fitted_means(labels):
            scorer = scores.MahalanobisDistance()
            scores.fit_scorers(tac, x, labels, [scorer], verbose=0)
            return scorer.means

        expected = fitted_means(y)
        for form in (y.astype("float64"), y.astype("float32"), y.tolist()):
            np.testing.assert_equal(fitted_means(form), expected)
        for bad in (2.5, np.nan):
            labels = y.astype("float64")
            labels[7] = bad
            with pytest.raises(ValueError) as error:
                fitted_means(labels)
            message = str(error.value)
            assert "fit_scorers" in message and "whole numbers" in message

    def test_save_and_load_every_scorer(self, tmp_path):
        rng = np.random.default_rng(4)
        pooled = [rng.normal(size=(40, 3)), rng.normal(size=(40, 5))]
        labels = rng.integers(0, 3, 40)
        batch = synthetic_batch(
            pooled, base_output=rng.normal(size=(40, 3)).astype("float32")
        )
        batch.profile = rng.normal(size=(40, 4)).astype("float32")
        codes = np.array(
            [[1, 1, -1, -1], [1, -1, 1, -1], [-1, 1, 1, -1]], "float32"
        )
        batch.inner_products = batch.profile @ codes.T
        all_scorers = [
            scores.MaxSoftmaxProbability(),
            scores.MaxLogit(name="logit"),
            scores.Energy(temperature=3.0),
            scores.TACScore("inner_product"),
            scores.MahalanobisDistance(taps=[0], regularization=0.1),
            scores.DeepKNN(k=3, tap=0, max_bank_size=20, seed=5),
        ]
        for scorer in all_scorers:
            scorer.update(batch, labels)
            scorer.finalize()
            path = os.path.join(tmp_path, f"{scorer.name}.npz")
            scorer.save(path)
            restored = scores.load_scorer(path)
            assert type(restored) is type(scorer)
            assert restored.get_config() == scorer.get_config()
            np.testing.assert_array_equal(
                restored.score_batch(batch), scorer.score_batch(batch)
            )
            assert type(type(scorer).load(path)) is type(scorer)
        with pytest.raises(TypeError, match="DeepKNN"):
            scores.DeepKNN.load(os.path.join(tmp_path, "msp.npz"))

    def test_save_errors(self, tmp_path):
        with pytest.raises(ValueError, match="not fitted"):
            scores.DeepKNN().save(os.path.join(tmp_path, "knn.npz"))
        with pytest.raises(ValueError, match=".npz"):
            scores.MaxLogit().save(os.path.join(tmp_path, "logit.json"))
        path = os.path.join(tmp_path, "other.npz")
        np.savez(path, values=np.ones(3))
        with pytest.raises(ValueError, match="not a saved"):
            scores.load_scorer(path)
