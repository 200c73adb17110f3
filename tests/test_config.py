"""Tests of the process-wide settings (`keras_tac.config`): round trips,
bad values, and the effect of the feature cache's memory budget."""

import os

import keras
import numpy as np
import pytest
from conftest import make_cnn

import keras_tac
from keras_tac.src import config
from keras_tac.src import disk_cache
from keras_tac.src import feature_cache

NUM_INPUTS = 32


@pytest.fixture(autouse=True)
def restore_settings():
    budget = config.feature_cache_memory_budget()
    fusion = config.jax_cpu_inference_fusion()
    yield
    config.set_feature_cache_memory_budget(budget)
    config.set_jax_cpu_inference_fusion(fusion)


class TestFeatureCacheMemoryBudget:
    def test_public_names(self):
        assert (
            keras_tac.config.feature_cache_memory_budget
            is config.feature_cache_memory_budget
        )
        assert (
            keras_tac.config.set_feature_cache_memory_budget
            is config.set_feature_cache_memory_budget
        )

    @pytest.mark.parametrize("value", [0, 1, 12345, 2**40, np.int64(7)])
    def test_round_trip(self, value):
        keras_tac.config.set_feature_cache_memory_budget(value)
        got = keras_tac.config.feature_cache_memory_budget()
        assert got == int(value) and type(got) is int

    @pytest.mark.parametrize(
        "value", [-1, True, "1GB", None, float("nan"), float("inf")]
    )
    def test_bad_values(self, value):
        keras_tac.config.set_feature_cache_memory_budget(2048)
        with pytest.raises(ValueError, match="Invalid `num_bytes`"):
            keras_tac.config.set_feature_cache_memory_budget(value)
        assert keras_tac.config.feature_cache_memory_budget() == 2048


class _ListCacheFiles(keras.callbacks.Callback):
    """Records the cache directory's files while training runs."""

    def __init__(self, directories):
        super().__init__()
        self.directories = directories
        self.files = None

    def on_train_begin(self, logs=None):
        self.files = {}
        for directory in self.directories:
            part = os.path.join(directory, "train")
            arrays = disk_cache.open_arrays(
                part, disk_cache.read_manifest(part)
            )
            self.files.update({key: np.array(a) for key, a in arrays.items()})


class TestBudgetSendsFeaturesToDisk:
    def _fit(self, digits, monkeypatch, tmp_path, budget):
        (x, y), _ = digits
        x, y = x[:NUM_INPUTS], y[:NUM_INPUTS]
        directories = []

        def mkdtemp(prefix):
            directory = tmp_path / f"{prefix}{len(directories)}"
            directory.mkdir()
            directories.append(str(directory))
            return str(directory)

        monkeypatch.setattr(feature_cache.tempfile, "mkdtemp", mkdtemp)
        keras_tac.config.set_feature_cache_memory_budget(budget)
        tac = keras_tac.TACModel(make_cnn(), score="distance")
        tac.compile()
        recorder = _ListCacheFiles(directories)
        tac.fit(
            x,
            y,
            epochs=1,
            batch_size=16,
            verbose=0,
            cache_features=True,
            callbacks=[recorder],
        )
        return tac, x, directories, recorder.files

    @pytest.mark.filterwarnings("ignore:.*TAC learned little")
    def test_budget_zero_uses_a_memmap_file(
        self, digits, monkeypatch, tmp_path
    ):
        tac, x, directories, files = self._fit(digits, monkeypatch, tmp_path, 0)
        assert len(directories) == 1
        # On disk while training runs: the base output, then each tap
        # averaged over its spatial axes (NumPy on the tap model's output).
        outputs = tac.tap_model.predict(x, verbose=0)
        expected = [outputs[0]] + [
            t.reshape(len(t), -1, t.shape[-1]).mean(axis=1) for t in outputs[1:]
        ]
        assert list(files) == ["base_output"] + [
            f"pooled_{i}" for i in range(3)
        ]
        for got, want in zip(files.values(), expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        # Removed after training.
        assert not os.path.exists(directories[0])

    @pytest.mark.filterwarnings("ignore:.*TAC learned little")
    def test_large_budget_keeps_features_in_memory(
        self, digits, monkeypatch, tmp_path
    ):
        _, _, directories, files = self._fit(
            digits, monkeypatch, tmp_path, 2**30
        )
        assert directories == [] and files == {}


class TestJaxCpuInferenceFusion:
    def test_public_names(self):
        assert (
            keras_tac.config.jax_cpu_inference_fusion
            is config.jax_cpu_inference_fusion
        )
        assert (
            keras_tac.config.set_jax_cpu_inference_fusion
            is config.set_jax_cpu_inference_fusion
        )

    @pytest.mark.parametrize("value", [False, True])
    def test_deprecated_round_trip(self, value):
        # Deprecated in 0.3: it warns, keeps the value and changes nothing.
        with pytest.warns(DeprecationWarning, match="no effect"):
            keras_tac.config.set_jax_cpu_inference_fusion(value)
        assert keras_tac.config.jax_cpu_inference_fusion() is value

    @pytest.mark.parametrize("value", [0, 1, "yes", None, np.bool_(True)])
    def test_bad_values(self, value):
        with pytest.raises(ValueError, match="Invalid `enabled`"):
            keras_tac.config.set_jax_cpu_inference_fusion(value)
