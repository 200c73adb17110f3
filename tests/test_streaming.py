"""`ArrayBatches` serves the same data as Keras's array adapter, one batch
at a time; `TACModel.predict` / `evaluate` stream NumPy inputs with it on
TensorFlow and PyTorch and give the results of Keras's own array path."""

import keras
import numpy as np
import pytest
from conftest import make_cnn

from keras_tac import TACModel
from keras_tac.src import rejection
from keras_tac.src import streaming


class TestArrayBatches:
    def test_slices_in_order(self):
        x = np.arange(10)[:, None].astype("float32")
        y = np.arange(10)
        weights = np.linspace(0, 1, 10)
        batches = streaming.ArrayBatches(x, y, weights, batch_size=4)
        assert len(batches) == 3
        served = [batches[i] for i in range(len(batches))]
        np.testing.assert_array_equal(np.concatenate([b[0] for b in served]), x)
        np.testing.assert_array_equal(np.concatenate([b[1] for b in served]), y)
        np.testing.assert_array_equal(
            np.concatenate([b[2] for b in served]), weights
        )

    def test_nested_inputs_and_no_targets(self):
        x = {"a": np.zeros((5, 2)), "b": [np.ones((5, 3)), np.ones((5, 1))]}
        batch = streaming.ArrayBatches(x, batch_size=2)[2]
        assert len(batch) == 1
        assert batch[0]["a"].shape == (1, 2)
        # Lists become tuples, as in Keras's own TensorFlow adapter.
        assert isinstance(batch[0]["b"], tuple)

    @pytest.mark.parametrize("shuffle", [True, "batch"])
    def test_shuffle_serves_every_row_once_per_epoch(self, shuffle):
        y = np.arange(20)
        rows = np.arange(3, 20)
        batches = streaming.ArrayBatches(
            y, y, batch_size=4, rows=rows, shuffle=shuffle
        )
        orders = []
        for _ in range(3):
            served = np.concatenate(
                [batches[i][1] for i in range(len(batches))]
            )
            np.testing.assert_array_equal(np.sort(served), rows)
            orders.append(served)
            batches.on_epoch_end()
        assert any(not np.array_equal(orders[0], o) for o in orders[1:])
        if shuffle == "batch":
            # Fixed batches (as in Keras), each in its own order.
            for start in range(0, len(rows), 4):
                np.testing.assert_array_equal(
                    np.sort(orders[1][start : start + 4]),
                    rows[start : start + 4],
                )


class TestStreamedPredictions:
    def test_same_results_as_keras_array_path(self, digits):
        (x, _), _ = digits
        x = x[:100]
        tac = TACModel(make_cnn())
        tac.compile(optimizer="sgd")
        assert streaming.should_stream(x) == (
            keras.backend.backend() in ("tensorflow", "torch")
        )
        # `predict_with_rejection` and `calibrate` serve arrays through
        # `ArrayBatches` there; Keras's own `predict` is the oracle.
        keys = ("confidence", "prediction", "profile", "input_is_finite")
        streamed = rejection.predict_outputs(tac, x, keys, batch_size=32)
        direct = tac.predict(x, batch_size=32, verbose=0)
        for key in keys:
            np.testing.assert_allclose(
                streamed[key], direct[key], rtol=1e-6, atol=1e-6
            )
