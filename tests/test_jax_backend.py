"""`keras_tac.src.jax_backend`: what keras-tac does on JAX only (tested on
every backend: elsewhere it must change nothing)."""

import keras
import numpy as np
import pytest

from keras_tac import TACModel
from keras_tac.src import jax_backend


def test_top_k_is_avoided_on_jax_only():
    assert jax_backend.top_k_is_slow() == (keras.backend.backend() == "jax")


def test_a_predict_step_that_raises_leaves_the_model_usable(trained_cnn):
    # Oracle: the outputs of the same model before the failing call.
    tac = TACModel(trained_cnn, score="distance")
    x = np.random.default_rng(0).random((8, 8, 8, 1)).astype("float32")
    before = tac.predict_with_rejection(x, threshold=0.0, verbose=0)

    def batches():
        yield x[:4]
        raise RuntimeError("a broken generator")

    with pytest.raises(RuntimeError, match="broken generator"):
        tac.predict_with_rejection(batches(), threshold=0.0, verbose=0)
    after = tac.predict_with_rejection(x, threshold=0.0, verbose=0)
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
