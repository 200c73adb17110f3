"""Tests of `CombinedConfidence`, `mahalanobis_novelty` and `knn_distance`
against SciPy and brute-force NumPy."""

import os

import keras
import numpy as np
import pytest
from conftest import to_numpy
from scipy import special
from scipy.spatial import distance
from test_layers import run_layer_test

from keras_tac import layers
from keras_tac import rejection

NUM_CLASSES = 3
TAP_WIDTHS = (4, 5)
BANK_SIZE = 8
K = 2


def spd(rng, width):
    """A random symmetric positive definite matrix."""
    a = rng.normal(size=(width, width))
    return a @ a.T + np.eye(width)


def unit_rows(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def scipy_novelty(pooled, means, precisions, present):
    """Mean over taps of min over present classes of the squared SciPy
    Mahalanobis distance divided by the tap's width."""
    rows = len(pooled[0])
    per_tap = []
    for h, mu, precision in zip(pooled, means, precisions):
        squared = np.array(
            [
                [
                    distance.mahalanobis(h[i], mu[k], precision) ** 2
                    for k in range(len(mu))
                    if present[k]
                ]
                for i in range(rows)
            ]
        )
        per_tap.append(squared.min(axis=1) / h.shape[1])
    return np.mean(per_tap, axis=0)


def brute_force_knn(features, bank, k, valid):
    """Euclidean distance of each normalised feature vector to its k-th
    nearest valid bank row."""
    queries = unit_rows(features.astype("float64"))
    rows = bank[valid].astype("float64")
    result = []
    for query in queries:
        distances = sorted(np.linalg.norm(rows - query, axis=1))
        result.append(distances[k - 1])
    return np.array(result)


def conformal_oracle(values, quantile):
    """By hand: the ceil((n + 1) q)-th smallest value, or the largest
    float32 (an open gate) when that rank is past the n values."""
    n = len(values)
    rank = -(-(n + 1) * round(quantile * 1000) // 1000)  # exact ceiling
    if rank > n:
        return float(np.finfo("float32").max)
    return sorted(values)[rank - 1]


def numpy_combine(
    parts, calibration, gate_quantile, weight=10.0, width=0.5, knn_weight=1.0
):
    """The formula of the `CombinedConfidence` docstring, in NumPy."""
    centers = calibration[:, :3].mean(axis=0)
    scales = calibration[:, :3].std(axis=0)
    z = (parts[:, :3] - centers) / scales
    evidence = z[:, 0] + z[:, 1] - knn_weight * z[:, 2]
    q = conformal_oracle(list(calibration[:, 3]), gate_quantile)
    s = calibration[:, 3].std()
    return evidence - weight * special.expit((parts[:, 3] - q) / (width * s))


@pytest.fixture
def statistics():
    """Means, precisions, classes present and a normalised bank."""
    rng = np.random.default_rng(0)
    return {
        "means": [rng.normal(size=(NUM_CLASSES, w)) for w in TAP_WIDTHS],
        "precisions": [spd(rng, w) for w in TAP_WIDTHS],
        "present": np.array([1.0, 0.0, 1.0]),
        "bank": unit_rows(rng.normal(size=(6, TAP_WIDTHS[-1]))),
    }


def make_inputs(rows=5, seed=1):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(rows, NUM_CLASSES)).astype("float32"),
        [rng.normal(size=(rows, w)).astype("float32") for w in TAP_WIDTHS],
        -rng.uniform(0, 2, size=rows).astype("float32"),
    )


def make_layer(**kwargs):
    kwargs.setdefault("num_classes", NUM_CLASSES)
    kwargs.setdefault("tap_widths", list(TAP_WIDTHS))
    kwargs.setdefault("bank_size", BANK_SIZE)
    kwargs.setdefault("k", K)
    return layers.CombinedConfidence(**kwargs)


def fitted_layer(statistics, **kwargs):
    layer = make_layer(**kwargs)
    layer.set_statistics(**statistics)
    return layer


class TestMahalanobisNovelty:
    @pytest.mark.parametrize("present", [None, [True, False, True]])
    def test_against_scipy(self, statistics, present):
        _, pooled, _ = make_inputs()
        means, precisions = statistics["means"], statistics["precisions"]
        if present is not None:
            # The absent class's mean sits on the first input: not ignoring
            # it would give that input novelty 0 on this tap.
            means = [m.copy() for m in means]
            means[0][1] = pooled[0][0]
        got = to_numpy(
            layers.mahalanobis_novelty(
                pooled,
                [m.astype("float32") for m in means],
                [p.astype("float32") for p in precisions],
                None if present is None else np.array(present),
            )
        )
        expected = scipy_novelty(
            pooled, means, precisions, present or [True] * NUM_CLASSES
        )
        assert got.shape == (5,) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-4)


class TestKNNDistance:
    @pytest.mark.parametrize("k", [1, 3])
    def test_against_brute_force(self, k):
        rng = np.random.default_rng(2)
        features = rng.normal(size=(6, 5)).astype("float32") * 3.0
        bank = unit_rows(rng.normal(size=(10, 5)))
        valid = np.ones(10, bool)
        # Invalid rows hold the queries themselves: if they were not
        # ignored, they would be the nearest neighbours at distance 0.
        valid[[1, 4, 7]] = False
        bank[[1, 4, 7]] = unit_rows(features[:3])
        got = to_numpy(
            layers.knn_distance(features, bank.astype("float32"), k, valid)
        )
        expected = brute_force_knn(features, bank, k, valid)
        assert got.shape == (6,)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

    def test_without_mask(self):
        rng = np.random.default_rng(3)
        features = rng.normal(size=(4, 3)).astype("float32")
        bank = unit_rows(rng.normal(size=(5, 3)))
        got = to_numpy(layers.knn_distance(features, bank.astype("float32"), 2))
        expected = brute_force_knn(features, bank, 2, np.ones(5, bool))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


class TestCombinedConfidence:
    def test_config_round_trip(self):
        layer = make_layer(
            gate_quantile=0.9, gate_weight=4.0, gate_width=0.25, name="cc"
        )
        config = layer.get_config()
        clone = layers.CombinedConfidence.from_config(config)
        assert clone.get_config() == config
        assert config["tap_widths"] == list(TAP_WIDTHS)
        assert (clone.k, clone.bank_size) == (K, BANK_SIZE)

    def test_k_is_capped_by_the_bank_size(self):
        assert make_layer(k=20, bank_size=8).k == 8

    def test_parts_against_numpy(self, statistics):
        layer = fitted_layer(statistics)
        logits, pooled, tac_score = make_inputs()
        parts = to_numpy(layer(logits, pooled, tac_score)["parts"])
        assert parts.shape == (5, 4)
        valid = np.arange(BANK_SIZE) < len(statistics["bank"])
        padded = np.zeros((BANK_SIZE, TAP_WIDTHS[-1]))
        padded[: len(statistics["bank"])] = statistics["bank"]
        expected = np.stack(
            [
                tac_score,
                special.log_softmax(logits.astype("float64"), axis=1).max(1),
                brute_force_knn(pooled[-1], padded, K, valid),
                scipy_novelty(
                    pooled,
                    statistics["means"],
                    statistics["precisions"],
                    statistics["present"] > 0,
                ),
            ],
            axis=1,
        )
        np.testing.assert_allclose(parts, expected, rtol=1e-4, atol=1e-4)

    def test_probabilities(self, statistics):
        layer = fitted_layer(statistics)
        logits, pooled, tac_score = make_inputs()
        probabilities = special.softmax(logits, axis=1).astype("float32")
        parts = to_numpy(
            layer(probabilities, pooled, tac_score, probabilities=True)["parts"]
        )
        np.testing.assert_allclose(
            parts[:, 1], np.log(probabilities.max(axis=1)), atol=1e-5
        )

    def test_uncalibrated_confidence_is_the_tac_score(self, statistics):
        layer = make_layer()
        logits, pooled, tac_score = make_inputs()

        def confidence():
            return to_numpy(layer(logits, pooled, tac_score)["confidence"])

        np.testing.assert_array_equal(confidence(), tac_score)
        layer.set_statistics(**statistics)
        np.testing.assert_array_equal(confidence(), tac_score)
        calibration = to_numpy(layer(*make_inputs(20, seed=4))["parts"])
        layer.calibrate(calibration)
        assert not np.allclose(confidence(), tac_score)
        # New statistics invalidate the calibration.
        layer.set_statistics(**statistics)
        np.testing.assert_array_equal(confidence(), tac_score)

    @pytest.mark.parametrize("gate_quantile", [0.5, 0.9])
    def test_calibrated_confidence_against_the_formula(
        self, statistics, gate_quantile
    ):
        layer = fitted_layer(statistics, gate_quantile=gate_quantile)
        calibration = to_numpy(layer(*make_inputs(20, seed=4))["parts"])
        layer.calibrate(calibration)
        out = layer(*make_inputs())
        parts = to_numpy(out["parts"]).astype("float64")
        expected = numpy_combine(parts, calibration, gate_quantile)
        np.testing.assert_allclose(
            to_numpy(out["confidence"]), expected, rtol=1e-4, atol=1e-4
        )
        np.testing.assert_allclose(
            to_numpy(layer.combine(parts)), expected, rtol=1e-4, atol=1e-4
        )

    def test_combine_with_gate_arguments(self):
        rng = np.random.default_rng(5)
        calibration = rng.normal(size=(30, 4))
        layer = make_layer(gate_quantile=0.8, gate_weight=3.0, gate_width=2.0)
        layer.calibrate(calibration)
        parts = rng.normal(size=(6, 4))
        np.testing.assert_allclose(
            to_numpy(layer.combine(parts)),
            numpy_combine(parts, calibration, 0.8, weight=3.0, width=2.0),
            rtol=1e-4,
            atol=1e-5,
        )

    def test_calibrate_statistics(self):
        rng = np.random.default_rng(6)
        parts = rng.normal(size=(40, 4)) * [1.0, 2.0, 3.0, 4.0] + 1.0
        finite = parts.copy()
        parts[3, 0], parts[7, 3] = np.nan, np.inf
        layer = make_layer(gate_quantile=0.75)
        layer.calibrate(parts)
        finite = np.delete(finite, [3, 7], axis=0)
        np.testing.assert_allclose(
            to_numpy(layer.centers), finite[:, :3].mean(0), rtol=1e-5
        )
        np.testing.assert_allclose(
            to_numpy(layer.scales), finite[:, :3].std(0), rtol=1e-5
        )
        np.testing.assert_allclose(
            to_numpy(layer.gate_center),
            sorted(finite[:, 3])[29],  # 38 values: rank ceil(39 * 0.75) = 30
            rtol=1e-5,
        )
        np.testing.assert_allclose(
            to_numpy(layer.gate_scale), finite[:, 3].std(), rtol=1e-5
        )
        assert float(to_numpy(layer.ready)) == 1.0

    @pytest.mark.parametrize("count, expected", [(5, 0.0), (200, -5.0)])
    def test_calibrate_constant_signal(self, count, expected):
        parts = np.ones((count, 4))
        layer = make_layer()
        layer.calibrate(parts)
        assert np.all(to_numpy(layer.scales) > 0)
        assert float(to_numpy(layer.gate_scale)) > 0
        confidence = to_numpy(layer.combine(parts))
        # Every signal at its centre: no evidence; with 200 inputs, half
        # the gate (weight 10); with 5, too few to place the 0.99
        # quantile, the gate stays open.
        np.testing.assert_allclose(confidence, expected, atol=1e-5)

    @staticmethod
    def labelled_parts(knn_of_errors):
        """Calibration parts of 5 right answers with kNN distances 1..5 and
        of wrong answers with `knn_of_errors`, and who is right."""
        rng = np.random.default_rng(7)
        knn = np.concatenate([np.arange(1.0, 6.0), knn_of_errors])
        parts = rng.normal(size=(len(knn), 4))
        parts[:, 2] = knn
        correct = np.arange(len(knn)) < 5
        return parts, correct

    @staticmethod
    def pairwise_auroc(knn, correct):
        """By hand: the share of (right, wrong) pairs where the right
        answer is nearer its neighbours, ties one half."""
        right, wrong = knn[correct], knn[~correct]
        wins = [(r < w) + 0.5 * (r == w) for r in right for w in wrong]
        return float(np.mean(wins))

    @pytest.mark.parametrize(
        "knn_of_errors, kept",
        [
            ([6.0, 7.0], True),  # errors farthest: AUROC 1
            ([0.0, 0.5], False),  # errors nearest: AUROC 0
            ([2.5, 4.0], False),  # 5.5 of 10 pairs: AUROC 0.55
            ([3.0, 4.5], True),  # 6.5 of 10 pairs (a tie): AUROC 0.65
        ],
    )
    def test_knn_weight_from_labels(self, knn_of_errors, kept):
        parts, correct = self.labelled_parts(knn_of_errors)
        expected_auroc = self.pairwise_auroc(parts[:, 2], correct)
        layer = make_layer(gate_quantile=0.8)
        auroc = layer.calibrate(parts, correct)
        assert auroc == pytest.approx(expected_auroc)
        np.testing.assert_array_equal(
            to_numpy(layer.signal_weights), [1.0, 1.0, float(kept)]
        )
        queries = np.random.default_rng(8).normal(size=(6, 4))
        np.testing.assert_allclose(
            to_numpy(layer.combine(queries)),
            numpy_combine(queries, parts, 0.8, knn_weight=float(kept)),
            rtol=1e-4,
            atol=1e-5,
        )

    @pytest.mark.parametrize("labels", ["none", "all_right", "all_wrong"])
    def test_knn_kept_without_right_and_wrong_answers(self, labels):
        parts, correct = self.labelled_parts([0.0, 0.5])
        layer = make_layer()
        layer.calibrate(parts, correct)  # drops the kNN distance
        correct = {
            "none": None,
            "all_right": np.ones(len(parts), bool),
            "all_wrong": np.zeros(len(parts), bool),
        }[labels]
        assert layer.calibrate(parts, correct) is None
        np.testing.assert_array_equal(to_numpy(layer.signal_weights), [1] * 3)

    def test_knn_weight_ignores_non_finite_rows(self):
        parts, correct = self.labelled_parts([6.0, 7.0])
        # A wrong answer nearer than all right ones, but with a NaN signal:
        # not calibrated on, so the AUROC stays 1.
        parts = np.concatenate([parts, [[0.0, 0.0, 0.0, np.nan]]])
        correct = np.append(correct, False)
        assert make_layer().calibrate(parts, correct) == 1.0

    def test_knn_weight_needs_one_label_per_row(self):
        parts, correct = self.labelled_parts([6.0, 7.0])
        with pytest.raises(ValueError, match=r"shape \(7,\).*shape \(6,\)"):
            make_layer().calibrate(parts, correct[:-1])

    def test_calibrate_needs_two_finite_rows(self):
        parts = np.ones((3, 4))
        parts[1:, 2] = np.nan
        with pytest.raises(ValueError, match="at least 2.*Received 1"):
            make_layer().calibrate(parts)

    def test_set_statistics_stores_a_padded_bank(self, statistics):
        layer = fitted_layer(statistics)
        bank = to_numpy(layer.bank)
        rows = len(statistics["bank"])
        np.testing.assert_allclose(bank[:rows], statistics["bank"], atol=1e-7)
        np.testing.assert_array_equal(bank[rows:], 0.0)
        np.testing.assert_array_equal(
            to_numpy(layer.bank_valid), np.arange(BANK_SIZE) < rows
        )
        np.testing.assert_array_equal(
            to_numpy(layer.present), statistics["present"]
        )
        for variable, value in zip(layer.means, statistics["means"]):
            np.testing.assert_allclose(to_numpy(variable), value, rtol=1e-6)

    def test_set_statistics_with_fewer_rows_than_k(self, statistics):
        statistics["bank"] = statistics["bank"][:2]
        with pytest.raises(ValueError, match="at least k=3.*Received 2"):
            fitted_layer(statistics, k=3)

    def test_failed_set_statistics_changes_nothing(self, statistics):
        layer = fitted_layer(statistics, k=3)
        layer.calibrate(to_numpy(layer(*make_inputs(20, seed=4))["parts"]))
        before = [to_numpy(w).copy() for w in layer.weights]
        shifted = dict(statistics)
        shifted["means"] = [m + 100.0 for m in statistics["means"]]
        shifted["bank"] = statistics["bank"][:2]
        with pytest.raises(ValueError, match="at least k=3"):
            layer.set_statistics(**shifted)
        for a, b in zip(before, layer.weights):
            np.testing.assert_array_equal(a, to_numpy(b))

    @pytest.mark.parametrize(
        "kwargs,match",
        [
            (dict(gate_quantile=1.0), "gate_quantile"),
            (dict(gate_quantile=0.0), "gate_quantile"),
            (dict(k=0), "Invalid `k`"),
            (dict(bank_size=0), "bank_size"),
            (dict(tap_widths=[4, 0]), "tap_widths"),
            (dict(num_classes=0), "num_classes"),
            (dict(gate_width=0.0), "gate_width"),
            (dict(gate_weight=float("nan")), "gate_weight"),
        ],
    )
    def test_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            make_layer(**kwargs)

    @pytest.mark.parametrize(
        "where", ["base_output", "first_tap", "last_tap", "tac_score"]
    )
    def test_non_finite_signals_are_never_accepted(self, statistics, where):
        layer = fitted_layer(statistics)
        layer.calibrate(to_numpy(layer(*make_inputs(20, seed=4))["parts"]))
        logits, pooled, tac_score = make_inputs()
        target = {
            "base_output": logits,
            "first_tap": pooled[0],
            "last_tap": pooled[-1],
            "tac_score": tac_score,
        }[where]
        target[1] = np.nan
        confidence = to_numpy(layer(logits, pooled, tac_score)["confidence"])
        assert not np.isfinite(confidence[1])
        assert np.isfinite(np.delete(confidence, 1)).all()
        # Even with the lowest threshold, the accept rule refuses it.
        accepted = to_numpy(
            rejection.accept(confidence, np.ones(5, bool), -np.inf)
        )
        assert not accepted[1] and np.delete(accepted, 1).all()

    def test_uncalibrated_nan_taps_give_the_tac_score(self, statistics):
        # Documented: until calibrated, the confidence is TAC's score (the
        # model's `input_is_finite` flag rejects NaN inputs).
        layer = fitted_layer(statistics)
        logits, pooled, tac_score = make_inputs()
        pooled[0][1] = np.nan
        confidence = to_numpy(layer(logits, pooled, tac_score)["confidence"])
        np.testing.assert_array_equal(confidence, tac_score)

    def test_save_load_keeps_the_statistics(self, statistics, tmp_path):
        logits_in = keras.Input((NUM_CLASSES,))
        pooled_in = [keras.Input((w,)) for w in TAP_WIDTHS]
        score_in = keras.Input(())
        layer = fitted_layer(statistics, gate_quantile=0.8)
        model = keras.Model(
            [logits_in, *pooled_in, score_in],
            layer(logits_in, pooled_in, score_in),
        )
        layer.calibrate(to_numpy(layer(*make_inputs(20, seed=4))["parts"]))
        logits, pooled, tac_score = make_inputs()
        inputs = [logits, *pooled, tac_score]
        before = model.predict(inputs, verbose=0)
        path = os.path.join(tmp_path, "combined.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        after = restored.predict(inputs, verbose=0)
        np.testing.assert_allclose(after["parts"], before["parts"], atol=1e-6)
        np.testing.assert_allclose(
            after["confidence"], before["confidence"], atol=1e-6
        )
        # Calibrated, so not the TAC score.
        assert not np.allclose(after["confidence"], tac_score)
        clone = restored.layers[-1]
        assert isinstance(clone, layers.CombinedConfidence)
        for a, b in zip(clone.weights, layer.weights):
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_files_without_signal_weights_keep_the_knn_distance(statistics):
    # A file of keras-tac 0.3 holds every variable but the last one,
    # `signal_weights`: its layer loads with all three signals.
    layer = fitted_layer(statistics)
    parts, correct = TestCombinedConfidence.labelled_parts([0.0, 0.5])
    layer.calibrate(parts, correct)
    store = {}
    layer.save_own_variables(store)
    old_store = {key: store[key] for key in store if key != str(len(store) - 1)}
    restored = make_layer()
    restored.load_own_variables(old_store)
    np.testing.assert_array_equal(to_numpy(restored.signal_weights), [1] * 3)
    for name in ("centers", "scales", "gate_center", "bank", "ready"):
        np.testing.assert_array_equal(
            to_numpy(getattr(restored, name)), to_numpy(getattr(layer, name))
        )
    # A new file keeps the dropped kNN distance.
    restored.load_own_variables(store)
    np.testing.assert_array_equal(
        to_numpy(restored.signal_weights), [1.0, 1.0, 0.0]
    )


@pytest.mark.parametrize("k", [1, 3, 10])
def test_kth_largest_counts_ties_as_a_sort(k):
    from keras_tac.src.confidence_ops import kth_largest

    rng = np.random.default_rng(k)
    # Few distinct values, so that ties fall everywhere, including at k.
    values = rng.integers(0, 6, size=(64, 40)).astype("float32") / 5.0
    values[0] = 0.4  # one row of equal values
    expected = np.sort(values, axis=1)[:, -k]
    np.testing.assert_array_equal(to_numpy(kth_largest(values, k)), expected)


def _compiled(function):
    """`function` compiled as inside a model's predict step (eager on
    PyTorch, which has no compiled path here)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(function)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, jit_compile=False)
    return function


@pytest.mark.parametrize("width", [30, 4096])
@pytest.mark.parametrize("compiled", [False, True])
def test_kth_largest_of_a_row_with_nan_is_minus_inf(width, compiled):
    from keras_tac.src.confidence_ops import kth_largest

    values = np.random.default_rng(0).random((6, width)).astype("float32")
    values[0, 3] = np.nan
    values[1] = np.nan
    values[2, 5] = np.inf
    values[3, 0] = np.nan
    values[4, -1] = np.nan
    expected = np.sort(values, axis=1)[:, -3]
    # Every row holding NaN reads -inf, wherever the NaN is: XLA:CPU's
    # vectorised max (rows of 64 or more) skips a NaN or returns -inf,
    # depending on its position, so the rows are set apart explicitly.
    expected[[0, 1, 3, 4]] = -np.inf
    if compiled:
        got = _compiled(lambda v: kth_largest(v, 3))(values)
    else:
        got = kth_largest(values, 3)
    np.testing.assert_array_equal(to_numpy(got), expected)


@pytest.mark.parametrize("slow", [False, True])
def test_knn_distance_same_with_top_k_and_with_passes(monkeypatch, slow):
    from keras_tac.src import jax_backend

    rng = np.random.default_rng(3)
    features = rng.standard_normal((32, 8)).astype("float32")
    features[4] = np.nan
    bank = rng.standard_normal((300, 8)).astype("float32")
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    bank[10] = bank[11]  # tied similarities
    valid = np.arange(300) < 250
    monkeypatch.setattr(jax_backend, "top_k_is_slow", lambda: slow)
    got = to_numpy(layers.knn_distance(features, bank, 10, valid))
    monkeypatch.setattr(jax_backend, "top_k_is_slow", lambda: not slow)
    other = to_numpy(layers.knn_distance(features, bank, 10, valid))
    finite = np.isfinite(features).all(axis=1)
    np.testing.assert_array_equal(got, other)
    # A row of NaN features is infinitely far from the bank.
    np.testing.assert_array_equal(got[~finite], np.inf)
    # And the definition, by brute force in NumPy (finite rows).
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = np.where(valid, unit @ bank.T, -2.0)
    kth = np.sort(similarity, axis=1)[:, -10]
    expected = np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-5)


def test_keras_layer_harness():
    rng = np.random.default_rng(0)
    run_layer_test(
        layers.CombinedConfidence,
        init_kwargs=dict(
            num_classes=NUM_CLASSES,
            tap_widths=list(TAP_WIDTHS),
            bank_size=BANK_SIZE,
            k=K,
        ),
        # A nested list (`pooled`) cannot be an `input_shape` dict.
        input_data={
            "base_output": rng.normal(size=(2, NUM_CLASSES)).astype("float32"),
            "pooled": [
                rng.normal(size=(2, w)).astype("float32") for w in TAP_WIDTHS
            ],
            "tac_score": rng.normal(size=(2,)).astype("float32"),
        },
        expected_output_shape={"confidence": (2,), "parts": (2, 4)},
        expected_output_dtype={"confidence": "float32", "parts": "float32"},
        expected_num_trainable_weights=0,
        # Means and precisions of 2 taps, present, bank, bank_valid,
        # centers, scales, gate_center, gate_scale, ready, signal_weights.
        expected_num_non_trainable_weights=13,
        # The harness's training model calls its layer on one input.
        run_training_check=False,
        run_mixed_precision_check=True,
    )
