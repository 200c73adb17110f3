"""Each confidence statistic is written once, in `confidence_ops`, with
`keras.ops`: tested here against oracles independent of it (SciPy,
scikit-learn, the formula in float64 NumPy), and the NumPy scorers and
`CombinedConfidence` tested to give what it gives."""

import numpy as np
import pytest
from keras import ops
from scipy import special
from sklearn.covariance import EmpiricalCovariance
from sklearn.neighbors import NearestNeighbors

from keras_tac import layers
from keras_tac import scores
from keras_tac.src import confidence_ops
from keras_tac.src.features import FeatureBatch

# float32 arithmetic against float64 oracles.
RTOL = 2e-5


@pytest.fixture(autouse=True)
def clear_session():
    # Overrides the shared fixture: these tests build no Keras model.
    yield


def to_numpy(tensor):
    return np.asarray(ops.convert_to_numpy(tensor))


def batch(pooled, base_output, probabilities=False):
    return FeatureBatch(
        base_output=base_output, probabilities=probabilities, pooled=pooled
    )


def random_fit(rng, widths=(5, 12), num_classes=4, rows=300, offset=0.0):
    """Pooled taps, labels and logits of a random fit set."""
    labels = rng.integers(0, num_classes, rows)
    pooled = [
        (
            rng.normal(size=(rows, width)) + 0.7 * labels[:, None] + offset
        ).astype("float32")
        for width in widths
    ]
    logits = (rng.normal(size=(rows, num_classes)) * 3).astype("float32")
    return pooled, labels, logits


def fitted(scorer, pooled, labels, logits):
    scorer.update(batch(pooled, logits), labels)
    scorer.finalize()
    return scorer


class TestLogProbabilities:
    def test_logits_against_scipy(self):
        rng = np.random.default_rng(0)
        logits = (rng.normal(size=(50, 7)) * 20).astype("float32")
        got = to_numpy(confidence_ops.log_probabilities(logits))
        want = special.log_softmax(logits.astype(np.float64), axis=-1)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-5)

    def test_probabilities_are_floored(self):
        p = np.array([[0.0, 0.25, 0.75], [0.0, 0.0, 0.0]], "float32")
        got = to_numpy(confidence_ops.log_probabilities(p, True))
        want = np.log(np.maximum(p.astype(np.float64), 1e-30))
        np.testing.assert_allclose(got, want, rtol=RTOL)
        assert np.all(np.isfinite(got))

    def test_scorers_use_it(self):
        rng = np.random.default_rng(1)
        logits = (rng.normal(size=(40, 5)) * 5).astype("float32")
        probabilities = special.softmax(logits, axis=-1).astype("float32")
        for output, is_p in ((logits, False), (probabilities, True)):
            features = batch([np.zeros((40, 1))], output, is_p)
            shared = to_numpy(
                ops.max(confidence_ops.log_probabilities(output, is_p), -1)
            )
            np.testing.assert_array_equal(
                scores.MaxSoftmaxProbability().score_batch(features),
                np.exp(shared.astype(np.float64)),
            )
            want = shared if is_p else logits.max(-1)
            np.testing.assert_array_equal(
                scores.MaxLogit().score_batch(features), want
            )
        # The floor: an all-zero row scores log(1e-30), not -inf.
        zero = batch([np.zeros((1, 1))], np.zeros((1, 3), "float32"), True)
        np.testing.assert_allclose(
            scores.MaxLogit().score_batch(zero), [np.log(1e-30)], rtol=1e-6
        )


class TestEnergy:
    @pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
    def test_against_scipy(self, temperature):
        rng = np.random.default_rng(2)
        logits = (rng.normal(size=(60, 9)) * 10 + 50).astype("float32")
        got = to_numpy(confidence_ops.energy(logits, temperature))
        want = temperature * special.logsumexp(
            logits.astype(np.float64) / temperature, axis=-1
        )
        np.testing.assert_allclose(got, want, rtol=RTOL)
        features = batch([np.zeros((60, 1))], logits)
        np.testing.assert_array_equal(
            scores.Energy(temperature).score_batch(features), got
        )


def sklearn_mahalanobis(pooled, means, precisions, present):
    """`mahalanobis_novelty` by scikit-learn, in float64: one
    `EmpiricalCovariance` per class, its location the class mean and its
    precision the shared one."""
    total = 0.0
    for features, class_means, precision in zip(pooled, means, precisions):
        features = features.astype(np.float64)
        squared = []
        for mean in np.asarray(class_means, np.float64)[present]:
            estimator = EmpiricalCovariance().fit(features[:2])
            estimator.location_ = mean
            estimator.precision_ = np.asarray(precision, np.float64)
            squared.append(estimator.mahalanobis(features))
        total = total + np.min(squared, axis=0) / features.shape[1]
    return total / len(pooled)


class TestMahalanobis:
    @pytest.mark.parametrize("offset", [0.0, 1e4])
    def test_against_sklearn(self, offset):
        rng = np.random.default_rng(3)
        pooled, labels, logits = random_fit(rng, offset=offset)
        scorer = fitted(scores.MahalanobisDistance(), pooled, labels, logits)
        queries, _, _ = random_fit(rng, rows=25, offset=offset)
        means = [m.astype("float32") for m in scorer.means]
        precisions = [p.astype("float32") for p in scorer.precisions]
        present = np.array([True, False, True, True])
        got = to_numpy(
            confidence_ops.mahalanobis_novelty(
                queries, means, precisions, present
            )
        )
        want = sklearn_mahalanobis(queries, means, precisions, present)
        np.testing.assert_allclose(got, want, rtol=RTOL)

    @pytest.mark.parametrize("offset", [0.0, 1e4])
    def test_scorer_and_layer_use_it(self, offset):
        rng = np.random.default_rng(4)
        pooled, labels, logits = random_fit(rng, offset=offset)
        labels[labels == 1] = 0  # class 1 absent from the fit data
        scorer = fitted(scores.MahalanobisDistance(), pooled, labels, logits)
        assert scorer.present.tolist() == [True, False, True, True]
        queries, _, _ = random_fit(rng, rows=30, offset=offset)
        shared = to_numpy(
            confidence_ops.mahalanobis_novelty(
                queries, scorer.means, scorer.precisions, scorer.present
            )
        )
        got = scorer.score_batch(batch(queries, logits[:30]))
        if not offset:
            np.testing.assert_allclose(-got, shared, rtol=RTOL)
        # Far from the origin, the float64 means lose digits when the
        # function casts them to float32 (as they would in the model): the
        # scorer centres them first and stays exact.
        want = sklearn_mahalanobis(
            queries, scorer.means, scorer.precisions, scorer.present
        )
        np.testing.assert_allclose(-got, want, rtol=RTOL)
        # The keras.ops layer's novelty is the same function's.
        assert layers.mahalanobis_novelty is confidence_ops.mahalanobis_novelty


def sklearn_knn(features, bank, k):
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    search = NearestNeighbors(n_neighbors=k).fit(bank.astype(np.float64))
    distances, _ = search.kneighbors(unit.astype(np.float64))
    return distances[:, k - 1]


class TestKNN:
    @pytest.mark.parametrize("k", [1, 4])
    def test_against_sklearn(self, k):
        rng = np.random.default_rng(5)
        bank = rng.normal(size=(70, 6))
        bank = (bank / np.linalg.norm(bank, axis=1, keepdims=True)).astype(
            "float32"
        )
        features = rng.normal(size=(15, 6)).astype("float32") * 4
        valid = np.arange(70) < 50
        got = to_numpy(confidence_ops.knn_distance(features, bank, k, valid))
        want = sklearn_knn(features, bank[:50], k)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-4)

    def test_scorer_and_layer_use_it(self):
        rng = np.random.default_rng(6)
        pooled, labels, logits = random_fit(rng)
        scorer = fitted(scores.DeepKNN(k=3), pooled, labels, logits)
        np.testing.assert_allclose(
            np.linalg.norm(scorer.bank, axis=1), 1.0, rtol=1e-6
        )
        queries, _, _ = random_fit(rng, rows=20)
        got = scorer.score_batch(batch(queries, logits[:20]))
        shared = to_numpy(
            confidence_ops.knn_distance(queries[-1], scorer.bank, 3)
        )
        np.testing.assert_array_equal(-got, shared)
        want = sklearn_knn(queries[-1], scorer.bank, 3)
        np.testing.assert_allclose(-got, want, rtol=1e-5, atol=2e-4)
        assert layers.knn_distance is confidence_ops.knn_distance


def test_combined_confidence_parts_equal_the_scorers():
    """The layer's raw signals are the scorers' values (same functions,
    same statistics): log max softmax, kNN distance, novelty."""
    rng = np.random.default_rng(7)
    pooled, labels, logits = random_fit(rng, widths=(4, 8))
    mahalanobis = fitted(scores.MahalanobisDistance(), pooled, labels, logits)
    knn = fitted(scores.DeepKNN(k=5), pooled, labels, logits)
    layer = layers.CombinedConfidence(
        num_classes=4, tap_widths=[4, 8], bank_size=512, k=5
    )
    layer.set_statistics(
        mahalanobis.means, mahalanobis.precisions, mahalanobis.present, knn.bank
    )
    queries, _, query_logits = random_fit(rng, widths=(4, 8), rows=40)
    tac_score = np.zeros(40, "float32")
    parts = to_numpy(layer(query_logits, queries, tac_score)["parts"])
    features = batch(queries, query_logits)
    np.testing.assert_allclose(
        parts[:, 1],
        np.log(scores.MaxSoftmaxProbability().score_batch(features)),
        rtol=1e-6,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        parts[:, 2], -knn.score_batch(features), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(
        parts[:, 3], -mahalanobis.score_batch(features), rtol=1e-5
    )
