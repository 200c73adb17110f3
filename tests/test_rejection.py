"""Tests for `keras_tac.src.rejection`: the accept rule, the threshold
check and the calibration targets, and that `predict_with_rejection` and
the serving signature decide alike."""

import math

import keras
import numpy as np
import pytest
from conftest import make_cnn

import keras_tac
from keras_tac.src import export
from keras_tac.src import rejection


def accept_oracle(confidence, input_is_finite, threshold):
    """The documented rule in NumPy: finite input, finite confidence and
    `confidence >= threshold`, both in float32."""
    confidence = np.asarray(confidence, np.float32)
    return (
        np.asarray(input_is_finite, bool)
        & np.isfinite(confidence)
        & (confidence >= np.float32(threshold))
    )


def accepted(confidence, input_is_finite, threshold):
    return keras.ops.convert_to_numpy(
        rejection.accept(confidence, input_is_finite, threshold)
    )


CONFIDENCE = np.array(
    [0.5, -1.25, np.nan, np.inf, -np.inf, 0.1, 3.0, 0.5], np.float32
)
FINITE = np.array([True, True, True, True, True, True, False, True])


class TestAccept:
    @pytest.mark.parametrize(
        "threshold",
        [0.5, -1.25, 0.1, 0.0, -np.inf, np.inf, 1e30, -1e30, 3.0],
    )
    def test_against_numpy(self, threshold):
        got = accepted(CONFIDENCE, FINITE, threshold)
        assert got.dtype == bool and got.shape == (8,)
        np.testing.assert_array_equal(
            got, accept_oracle(CONFIDENCE, FINITE, threshold)
        )

    def test_edges_by_hand(self):
        # A threshold equal to a confidence accepts it; -inf accepts every
        # finite confidence of a finite input, inf none; NaN and +-inf
        # confidences and non-finite inputs never.
        np.testing.assert_array_equal(
            accepted(CONFIDENCE, FINITE, 0.5),
            [True, False, False, False, False, False, False, True],
        )
        np.testing.assert_array_equal(
            accepted(CONFIDENCE, FINITE, -np.inf),
            [True, True, False, False, False, True, False, True],
        )
        assert not accepted(CONFIDENCE, FINITE, np.inf).any()

    def test_compared_in_float32(self):
        confidence = np.float32(0.1)
        # Above 0.1f in float64, the same number in float32.
        threshold = float(confidence) + 1e-12
        assert float(confidence) < threshold
        assert np.float32(threshold) == confidence
        assert accepted([confidence], [True], threshold).tolist() == [True]
        # float64 confidences are compared in float32 too.
        assert accepted([float(confidence)], [True], 0.1).tolist() == [True]
        below = np.nextafter(confidence, np.float32(-1))
        assert accepted([below], [True], confidence).tolist() == [False]

    def test_tensor_threshold_and_lists(self):
        threshold = keras.ops.convert_to_tensor(np.float32(0.1))
        np.testing.assert_array_equal(
            accepted(CONFIDENCE.tolist(), FINITE.tolist(), threshold),
            accept_oracle(CONFIDENCE, FINITE, 0.1),
        )


class TestCheckThreshold:
    @pytest.mark.parametrize(
        "threshold,expected",
        [
            (0.5, 0.5),
            (np.float32(0.1), float(np.float32(0.1))),
            (np.float64(-2.5), -2.5),
            (np.array(0.25), 0.25),
            (np.array(np.float32(0.1)), float(np.float32(0.1))),
            (3, 3.0),
            (np.int64(-4), -4.0),
            (math.inf, math.inf),
            (-math.inf, -math.inf),
        ],
    )
    def test_valid(self, threshold, expected):
        got = rejection.check_threshold(threshold)
        assert type(got) is float
        assert got == expected

    @pytest.mark.parametrize(
        "threshold",
        [
            True,
            np.bool_(False),
            np.array(True),
            math.nan,
            np.float32("nan"),
            np.array(np.nan),
            "0.5",
            None,
            [0.5],
            np.array([0.5]),
        ],
    )
    def test_refused(self, threshold):
        with pytest.raises(ValueError) as error:
            rejection.check_threshold(threshold)
        message = str(error.value)
        assert "`threshold`" in message and "expected" in message
        assert "Received: threshold=" in message


def tac_with_statistics(score, rng):
    """A TAC model on `make_cnn`; with `score="combined"`, its training
    statistics fitted on random inputs drawn from `rng`."""
    tac = keras_tac.TACModel(
        make_cnn(), tap_layers=["conv_1", "features"], score=score
    )
    if score == "combined":
        tac.fit_statistics(
            rng.random((40, 8, 8, 1)).astype("float32"),
            rng.integers(0, 10, 40),
            verbose=0,
        )
    return tac


class TestServingAgrees:
    @pytest.mark.parametrize("score", ["distance", "combined"])
    def test_predict_with_rejection_and_serving_outputs(self, score):
        rng = np.random.default_rng(0)
        tac = tac_with_statistics(score, rng)
        x = rng.random((12, 8, 8, 1)).astype("float32")
        x[3, 0, 0, 0] = np.nan
        x[7, 2, 2, 0] = -np.inf
        confidence = tac.predict(x, verbose=0)["confidence"]
        assert confidence.dtype == np.float32
        finite = np.ones(12, bool)
        finite[[3, 7]] = False
        ranked = np.sort(confidence[finite & np.isfinite(confidence)])
        middle = ranked[len(ranked) // 2]
        thresholds = [
            middle,  # np.float32, equal to a confidence
            float(middle),
            float(middle) + 1e-12,  # equal to it in float32
            np.array(middle),
            float(np.nextafter(middle, np.float32(np.inf))),
            -np.inf,
            np.inf,
        ]
        for threshold in thresholds:
            expected = accept_oracle(confidence, finite, threshold)
            predicted = tac.predict_with_rejection(
                x, threshold=threshold, verbose=0
            )
            served = export.serving_outputs(
                tac, keras.ops.convert_to_tensor(x), threshold
            )
            # As the exported signature gets it: a float32 tensor.
            served_tensor = export.serving_outputs(
                tac,
                keras.ops.convert_to_tensor(x),
                keras.ops.convert_to_tensor(np.float32(threshold)),
            )
            for result in (predicted, served, served_tensor):
                np.testing.assert_array_equal(
                    keras.ops.convert_to_numpy(result["accepted"]),
                    expected,
                    err_msg=repr(threshold),
                )
            # (What a non-finite input's confidence is differs between
            # compiled and eager runs: XLA's max-pooling and ReLU drop NaN.)
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(served["confidence"])[finite],
                predicted["confidence"][finite],
                rtol=1e-6,
            )
        # The threshold equal to the median confidence accepts it: half of
        # the finite inputs, or more where confidences tie.
        accepted_at_middle = accept_oracle(confidence, finite, middle)
        assert accepted_at_middle.sum() >= len(ranked) - len(ranked) // 2


class TestRejectionOutputs:
    """`predict_with_rejection` compiles a predict function that returns
    only what the decision and its result need."""

    def _model(self):
        rng = np.random.default_rng(1)
        tac = tac_with_statistics("combined", rng)
        x = rng.random((21, 8, 8, 1)).astype("float32")
        x[5, 1, 1, 0] = np.nan
        return tac, x

    def test_same_values_as_the_full_predict(self):
        tac, x = self._model()
        # 21 inputs in batches of 8: the last batch is partial.
        full = tac.predict(x, batch_size=8, verbose=0)
        threshold = float(np.nanmedian(full["confidence"]))
        result = tac.predict_with_rejection(
            x, threshold=threshold, batch_size=8, verbose=0
        )
        assert set(result) == set(rejection.REJECTION_KEYS)
        for key in rejection.REJECTION_KEYS:
            if key in ("accepted", "p_value"):
                continue
            np.testing.assert_array_equal(result[key], full[key], err_msg=key)
        # Never calibrated: no held-out confidences to compare against.
        assert np.isnan(result["p_value"]).all()
        np.testing.assert_array_equal(
            result["accepted"],
            accept_oracle(
                full["confidence"], full["input_is_finite"], threshold
            ),
        )

    def test_only_the_keys_leave(self):
        tac, x = self._model()
        keys = ("confidence", "input_is_finite")
        subset = rejection.predict_outputs(tac, x, keys, batch_size=8)
        assert sorted(subset) == sorted(keys)
        full = tac.predict(x, batch_size=8, verbose=0)
        assert {"profile", "distances", "base_output"} <= set(full)
        np.testing.assert_array_equal(subset["confidence"], full["confidence"])

    def test_graph_model_kept_between_calls(self):
        from keras_tac.src import feature_graph

        tac, x = self._model()
        tac.predict_with_rejection(x, threshold=0.0, verbose=0)
        keys = [k for k in rejection.REJECTION_KEYS if k != "accepted"]
        graph = feature_graph.graph_model(tac, [*keys, "input_is_finite"])
        function = graph.predict_function
        assert function is not None
        tac.predict_with_rejection(x, threshold=1.0, verbose=0)
        # The same compiled function: no rebuild (and no retrace) per call.
        assert graph.predict_function is function
        tac.compile(optimizer="sgd", jit_compile=False)
        result = tac.predict_with_rejection(x, threshold=0.0, verbose=0)
        assert result["accepted"].shape == (len(x),)
