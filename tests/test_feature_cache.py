"""Cached-feature add-on training (`TACModel.fit(cache_features=...)`): the
cached path must train the same layers to the same weights, with the same
history, as the ordinary path that re-runs the base each step."""

import logging
import os

import keras
import numpy as np
import pytest
from conftest import make_cnn

from keras_tac import TACModel
from keras_tac import feature_cache

NUM_SAMPLES = 128
MESSAGE = "tap features computed once"


@pytest.fixture
def data(digits):
    (x, y), _ = digits
    return x[:NUM_SAMPLES], y[:NUM_SAMPLES]


def _tac(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    tac = TACModel(make_cnn(), code_noise=0.15, **kwargs)
    tac.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9, clipnorm=1.0)
    )
    return tac


def _profile_weights(tac):
    return [w for layer in tac.profile_layers for w in layer.get_weights()]


def _fit(tac, x, y, cache, **kwargs):
    kwargs.setdefault("epochs", 1)
    kwargs.setdefault("batch_size", 64)
    kwargs.setdefault("shuffle", False)
    kwargs.setdefault("verbose", 0)
    return tac.fit(x, y, cache_features=cache, **kwargs).history


def _assert_same_training(first, second, history_a, history_b):
    assert sorted(history_a) == sorted(history_b)
    for key in history_a:
        np.testing.assert_allclose(
            history_a[key], history_b[key], rtol=1e-5, atol=1e-6
        )
    for a, b in zip(_profile_weights(first), _profile_weights(second)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class TestCachedFeatureTraining:
    def test_matches_ordinary_path(self, data, caplog):
        x, y = data
        ordinary, cached = _tac(), _tac()
        base_before = [w.copy() for w in cached.base_model.get_weights()]
        initial = _profile_weights(cached)
        variables = [id(v) for v in cached.trainable_variables]
        with caplog.at_level(logging.INFO, logger="keras_tac"):
            history_a = _fit(ordinary, x, y, cache=False)
            assert MESSAGE not in caplog.text
            history_b = _fit(cached, x, y, cache=None)
        assert MESSAGE in caplog.text
        assert sorted(history_b) == ["base_accuracy", "loss", "tac_accuracy"]
        _assert_same_training(ordinary, cached, history_a, history_b)
        # The very same variables trained, the base untouched.
        assert [id(v) for v in cached.trainable_variables] == variables
        assert any(
            not np.allclose(a, b)
            for a, b in zip(initial, _profile_weights(cached))
        )
        for before, after in zip(base_before, cached.base_model.get_weights()):
            np.testing.assert_array_equal(before, after)

    def test_validation_data_and_sample_weight(self, data):
        x, y = data
        weights = np.linspace(0.5, 1.5, len(x)).astype("float32")
        kwargs = {
            "sample_weight": weights,
            "validation_data": (x[:50], y[:50]),
        }
        ordinary, cached = _tac(), _tac()
        history_a = _fit(ordinary, x, y, cache=False, **kwargs)
        history_b = _fit(cached, x, y, cache=True, **kwargs)
        assert "val_tac_accuracy" in history_b
        _assert_same_training(ordinary, cached, history_a, history_b)

    def test_disk_cache_matches_memory(self, data, monkeypatch, tmp_path):
        x, y = data
        kwargs = {"validation_split": 0.25}
        memory = _tac()
        history_a = _fit(memory, x, y, cache=True, **kwargs)
        # A budget of 0 bytes sends the features to a memmap on disk.
        monkeypatch.setattr(feature_cache, "MEMORY_BUDGET_BYTES", 0)
        monkeypatch.setattr(
            feature_cache.tempfile, "mkdtemp", lambda prefix: str(tmp_path)
        )
        disk = _tac()
        history_b = _fit(disk, x, y, cache=True, **kwargs)
        _assert_same_training(memory, disk, history_a, history_b)
        assert not os.path.exists(tmp_path)

    def test_callbacks_see_the_tac_model(self, data):
        x, y = data
        tac = _tac()
        seen = []
        callback = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: seen.append(batch)
        )
        callback_model = []
        callback.on_train_begin = lambda logs: callback_model.append(
            callback.model
        )
        _fit(tac, x, y, cache=True, epochs=2, callbacks=[callback])
        assert callback_model == [tac]
        assert seen == [0, 1] * 2

    def test_model_works_on_images_after_cached_fit(self, data):
        x, y = data
        tac = _tac()
        _fit(tac, x, y, cache=True)
        outputs = tac.predict(x, verbose=0)
        # The features the cache holds give the profile `predict` gives.
        features = feature_cache.feature_model(tac).predict(x, verbose=0)
        profile = np.concatenate(
            [
                keras.ops.convert_to_numpy(layer(tap))
                for layer, tap in zip(tac.profile_layers, features[1:])
            ],
            axis=-1,
        )
        np.testing.assert_allclose(
            profile, outputs["profile"], rtol=1e-5, atol=1e-5
        )
        results = tac.evaluate(x, y, verbose=0, return_dict=True)
        assert sorted(results) == ["base_accuracy", "loss", "tac_accuracy"]

    @pytest.mark.skipif(
        keras.backend.backend() == "torch",
        reason="jit_compile=True is torch.compile on torch, which takes "
        "minutes on a CPU; the benchmark's --full mode covers it",
    )
    def test_jit_compile(self, data):
        x, y = data
        eager, compiled = _tac(), _tac()
        eager.compile(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.9, clipnorm=1.0),
            jit_compile=False,
        )
        compiled.compile(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.9, clipnorm=1.0),
            jit_compile=True,
        )
        assert compiled.jit_compile
        history_a = _fit(eager, x, y, cache=True)
        history_b = _fit(compiled, x, y, cache=True)
        for key in history_a:
            np.testing.assert_allclose(
                history_a[key], history_b[key], rtol=1e-4, atol=1e-5
            )
        for a, b in zip(_profile_weights(eager), _profile_weights(compiled)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


class TestFallback:
    def test_mixup_falls_back(self, data, caplog):
        x, y = data
        tac = _tac(mixup_alpha=0.2)
        with caplog.at_level(logging.INFO, logger="keras_tac"):
            history = _fit(tac, x, y, cache=None)
        assert MESSAGE not in caplog.text
        assert np.isfinite(history["loss"]).all()
        with pytest.raises(ValueError, match="mixup"):
            _fit(tac, x, y, cache=True)

    def test_train_base_falls_back(self, data, caplog):
        x, y = data
        tac = _tac(train_base=True)
        before = [w.copy() for w in tac.base_model.get_weights()]
        with caplog.at_level(logging.INFO, logger="keras_tac"):
            _fit(tac, x, y, cache=None)
        assert MESSAGE not in caplog.text
        # The ordinary path trained the base.
        assert any(
            not np.array_equal(a, b)
            for a, b in zip(before, tac.base_model.get_weights())
        )
        with pytest.raises(ValueError, match="train_base"):
            _fit(tac, x, y, cache=True)

    def test_dataset_falls_back(self, data, caplog):
        import tensorflow as tf

        x, y = data
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
        tac = _tac()
        with caplog.at_level(logging.INFO, logger="keras_tac"):
            history = tac.fit(dataset, epochs=1, verbose=0)
        assert MESSAGE not in caplog.text
        assert np.isfinite(history.history["loss"]).all()
        with pytest.raises(ValueError, match="dataset"):
            tac.fit(dataset, epochs=1, verbose=0, cache_features=True)

    def test_invalid_cache_features(self, data):
        x, y = data
        with pytest.raises(ValueError, match="cache_features"):
            _fit(_tac(), x, y, cache="yes")
