"""Cached-feature add-on training (`TACModel.fit(cache_features=...)`): the
cached path must train the same layers to the same weights, with the same
history, as the ordinary path that re-runs the base each step."""

import contextlib
import logging
import os

import keras
import numpy as np
import pytest
from conftest import make_cnn

import keras_tac
from keras_tac import TACModel
from keras_tac.scores import FeatureExtractor
from keras_tac.src import feature_cache

NUM_SAMPLES = 128
MESSAGE = "tap features computed once"


@pytest.fixture
def data(digits):
    (x, y), _ = digits
    return x[:NUM_SAMPLES], y[:NUM_SAMPLES]


def _tac(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    kwargs.setdefault("code_noise", 0.15)
    tac = TACModel(make_cnn(), **kwargs)
    tac.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9, clipnorm=1.0)
    )
    return tac


@contextlib.contextmanager
def features_on_disk():
    """A memory budget of 0 bytes: cached features go to a memmap."""
    budget = keras_tac.config.feature_cache_memory_budget()
    keras_tac.config.set_feature_cache_memory_budget(0)
    try:
        yield
    finally:
        keras_tac.config.set_feature_cache_memory_budget(budget)


def _profile_weights(tac):
    return [w for layer in tac.head.profile_layers for w in layer.get_weights()]


def _fit(tac, x, y, cache, **kwargs):
    kwargs.setdefault("epochs", 1)
    kwargs.setdefault("batch_size", 64)
    kwargs.setdefault("shuffle", False)
    kwargs.setdefault("verbose", 0)
    return tac.fit(x, y, cache_features=cache, **kwargs).history


def _assert_same_training(first, second, history_a, history_b, tol=1e-5):
    assert sorted(history_a) == sorted(history_b)
    for key in history_a:
        np.testing.assert_allclose(
            history_a[key], history_b[key], rtol=tol, atol=tol
        )
    for a, b in zip(_profile_weights(first), _profile_weights(second)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


class _BatchRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.models = []
        self.batches = []

    def on_train_begin(self, logs=None):
        self.models.append(self.model)

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append(batch)


def _fit_kwargs(x, y):
    return {
        "epochs": 2,
        "sample_weight": np.linspace(0.5, 1.5, len(x)).astype("float32"),
        "validation_data": (x[:32], y[:32]),
    }


@pytest.fixture(scope="module")
def trained_pair(digits):
    """The same model trained by the ordinary and the cached path (with
    validation data, sample weights and a callback), once per module."""
    keras.backend.clear_session()
    (x, y), _ = digits
    x, y = x[:NUM_SAMPLES], y[:NUM_SAMPLES]
    ordinary, cached = _tac(), _tac()
    result = {
        "x": x,
        "y": y,
        "ordinary": ordinary,
        "cached": cached,
        "initial": _profile_weights(cached),
        "variables": [id(v) for v in cached.trainable_variables],
        "base_before": [w.copy() for w in cached.base_model.get_weights()],
        "recorder": _BatchRecorder(),
    }
    logger = logging.getLogger("keras_tac")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        result["history_ordinary"] = _fit(
            ordinary, x, y, cache=False, **_fit_kwargs(x, y)
        )
        result["log_ordinary"] = [r.getMessage() for r in records]
        result["history_cached"] = _fit(
            cached,
            x,
            y,
            cache=None,
            callbacks=[result["recorder"]],
            **_fit_kwargs(x, y),
        )
        result["log_cached"] = [r.getMessage() for r in records]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return result


class TestCachedFeatureTraining:
    def test_switched_on_automatically_and_logged(self, trained_pair):
        assert not any(MESSAGE in m for m in trained_pair["log_ordinary"])
        assert any(MESSAGE in m for m in trained_pair["log_cached"])

    def test_same_history_and_weights_as_ordinary_path(self, trained_pair):
        assert sorted(trained_pair["history_cached"]) == [
            "base_accuracy",
            "loss",
            "tac_accuracy",
            "val_base_accuracy",
            "val_loss",
            "val_tac_accuracy",
        ]
        _assert_same_training(
            trained_pair["ordinary"],
            trained_pair["cached"],
            trained_pair["history_ordinary"],
            trained_pair["history_cached"],
        )

    def test_trains_the_profile_layers_and_leaves_the_base(self, trained_pair):
        cached = trained_pair["cached"]
        variables = [id(v) for v in cached.trainable_variables]
        assert variables == trained_pair["variables"]
        assert any(
            not np.allclose(a, b)
            for a, b in zip(trained_pair["initial"], _profile_weights(cached))
        )
        for before, after in zip(
            trained_pair["base_before"], cached.base_model.get_weights()
        ):
            np.testing.assert_array_equal(before, after)

    def test_callbacks_see_the_tac_model(self, trained_pair):
        recorder = trained_pair["recorder"]
        assert recorder.models == [trained_pair["cached"]]
        steps = -(-NUM_SAMPLES // 64)
        assert recorder.batches == list(range(steps)) * 2

    def test_model_works_on_images_after_cached_fit(self, trained_pair):
        tac, x, y = (trained_pair[k] for k in ("cached", "x", "y"))
        outputs = tac.predict(x, verbose=0)
        # The features the cache holds give the profile `predict` gives.
        batch = next(FeatureExtractor.of(tac).batches(x, len(x), verbose=0))
        profile = keras.ops.convert_to_numpy(tac.head(batch.pooled)["profile"])
        np.testing.assert_allclose(
            profile, outputs["profile"], rtol=1e-5, atol=1e-5
        )
        results = tac.evaluate(x, y, verbose=0, return_dict=True)
        assert sorted(results) == ["base_accuracy", "loss", "tac_accuracy"]

    def test_disk_cache_matches_memory(
        self, trained_pair, monkeypatch, tmp_path
    ):
        x, y = trained_pair["x"], trained_pair["y"]
        # A budget of 0 bytes sends the features to a memmap on disk.
        monkeypatch.setattr(
            feature_cache.tempfile, "mkdtemp", lambda prefix: str(tmp_path)
        )
        disk = _tac()
        with features_on_disk():
            history = _fit(disk, x, y, cache=True, **_fit_kwargs(x, y))
        _assert_same_training(
            trained_pair["cached"],
            disk,
            trained_pair["history_cached"],
            history,
        )
        assert not os.path.exists(tmp_path)

    def test_validation_split_on_disk(self, data, monkeypatch):
        x, y = data
        kwargs = {"validation_split": 0.25}
        memory = _tac()
        history_a = _fit(memory, x, y, cache=True, **kwargs)
        disk = _tac()
        with features_on_disk():
            history_b = _fit(disk, x, y, cache=True, **kwargs)
        assert "val_loss" in history_b
        _assert_same_training(memory, disk, history_a, history_b)

    def test_jit_compile(self, data):
        # Without code noise: XLA draws other random numbers.
        x, y = data
        models = []
        for jit_compile in (False, True):
            tac = _tac(code_noise=0.0)
            tac.compile(
                optimizer=keras.optimizers.SGD(
                    0.05, momentum=0.9, clipnorm=1.0
                ),
                jit_compile=jit_compile,
            )
            assert tac.jit_compile == jit_compile
            models.append((tac, _fit(tac, x, y, cache=True)))
        (eager, history_a), (compiled, history_b) = models
        _assert_same_training(eager, compiled, history_a, history_b, tol=1e-4)


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
        # Asked for, a dataset is cached (see tests/test_disk_cache.py).
        with caplog.at_level(logging.INFO, logger="keras_tac"):
            tac.fit(dataset, epochs=1, verbose=0, cache_features=True)
        assert MESSAGE in caplog.text

    def test_invalid_cache_features(self, data):
        x, y = data
        with pytest.raises(ValueError, match="cache_features"):
            _fit(_tac(), x, y, cache="yes")
