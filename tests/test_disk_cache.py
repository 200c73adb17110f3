"""The on-disk feature cache of `TACModel.fit(feature_cache_dir=...)`:
reused while it matches the model and the data, rebuilt otherwise (changed
weights, data or taps, a truncated, corrupted or half-written cache), never
read stale. The oracle of every rebuild is a fit on a fresh cache (or in
memory) of the same model and data: the same head weights."""

import logging
import os

import keras
import numpy as np
import pytest
from conftest import Batches
from conftest import assert_close_at_scale
from conftest import make_cnn

from keras_tac import TACModel
from keras_tac.src import disk_cache
from keras_tac.src import feature_cache
from keras_tac.src import features

NUM_SAMPLES = 96
BATCH = 32
MESSAGE_REUSE = "reusing the cached train features"
MESSAGE_REBUILD = "rebuilding the cached train features"

pytestmark = pytest.mark.filterwarnings("ignore:.*TAC learned little")


@pytest.fixture
def data(digits):
    (x, y), _ = digits
    return x[:NUM_SAMPLES], y[:NUM_SAMPLES]


def _tac(tap_layers=None, **kwargs):
    keras.utils.set_random_seed(0)
    tac = TACModel(make_cnn(), tap_layers=tap_layers, code_noise=0.0, **kwargs)
    tac.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return tac


def _weights(tac):
    return [w for layer in tac.head.profile_layers for w in layer.get_weights()]


def _assert_same_weights(a, b):
    """Head weights of two models (or a list of weights and a model)."""
    a = a if isinstance(a, list) else _weights(a)
    for first, second in zip(a, _weights(b)):
        np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-6)


@pytest.fixture
def base_calls(monkeypatch):
    """Counts the forward passes of the feature extractor (the base)."""
    calls = []
    predict_on_batch = features.distribution.predict_on_batch

    def counting(model, batch):
        calls.append(len(keras.tree.flatten(batch)[0]))
        return predict_on_batch(model, batch)

    monkeypatch.setattr(features.distribution, "predict_on_batch", counting)
    return calls


def _fit(tac, x, y=None, directory=None, caplog=None, **kwargs):
    kwargs.setdefault("epochs", 2)
    kwargs.setdefault("batch_size", BATCH)
    kwargs.setdefault("shuffle", False)
    kwargs.setdefault("verbose", 0)
    if kwargs["batch_size"] is None:
        kwargs.pop("batch_size")
    with caplog.at_level(logging.INFO, logger="keras_tac"):
        caplog.clear()
        tac.fit(x, y, feature_cache_dir=directory, **kwargs)
    return caplog.text


def _oracle(x, y, tap_layers=None, base_weights=None):
    """The same model trained on in-memory cached features."""
    tac = _tac(tap_layers)
    if base_weights is not None:
        tac.base_model.set_weights(base_weights)
    tac.fit(
        x,
        y,
        epochs=2,
        batch_size=BATCH,
        shuffle=False,
        verbose=0,
        cache_features=True,
    )
    return tac


@pytest.fixture(scope="module")
def oracle_weights(digits):
    """The head weights of `_oracle` on the unchanged data, trained once for
    the module: what most tests compare a disk-cached fit with."""
    (x, y), _ = digits
    return _weights(_oracle(x[:NUM_SAMPLES], y[:NUM_SAMPLES]))


class TestReuse:
    def test_fresh_cache_trains_as_memory_and_is_reused(
        self, data, tmp_path, base_calls, caplog, oracle_weights
    ):
        x, y = data
        oracle = oracle_weights
        first = _tac()
        log = _fit(first, x, y, tmp_path, caplog)
        assert MESSAGE_REUSE not in log and MESSAGE_REBUILD not in log
        assert sum(base_calls) >= NUM_SAMPLES
        _assert_same_weights(oracle, first)
        manifest = tmp_path / "train" / disk_cache.MANIFEST
        written = manifest.stat().st_mtime_ns

        base_calls.clear()
        second = _tac()
        log = _fit(second, x, y, tmp_path, caplog)
        # Reused: the base never ran, the files were not rewritten.
        assert MESSAGE_REUSE in log
        assert base_calls == []
        assert manifest.stat().st_mtime_ns == written
        _assert_same_weights(oracle, second)

    def test_cached_arrays_are_the_tap_features(self, data, tmp_path):
        x, y = data
        tac = _tac()
        tac.fit(x, y, epochs=1, verbose=0, feature_cache_dir=tmp_path)
        part = str(tmp_path / "train")
        arrays = disk_cache.open_arrays(part, disk_cache.read_manifest(part))
        # NumPy on the tap model's outputs: the base output, then each tap
        # averaged over its spatial axes.
        outputs = tac.tap_model.predict(x, verbose=0)
        expected = [outputs[0]] + [
            t.reshape(len(t), -1, t.shape[-1]).mean(axis=1) for t in outputs[1:]
        ]
        keys = [feature_cache.BASE_OUTPUT_KEY] + [
            feature_cache.tap_key(i) for i in range(len(outputs) - 1)
        ]
        assert sorted(arrays) == sorted(keys)
        for key, want in zip(keys, expected):
            assert isinstance(arrays[key], np.memmap)
            # Float32 round-off of make_cnn's longest path (217 products,
            # see tests/test_features.py) in another batch size's kernels.
            assert_close_at_scale(arrays[key], want, terms=512)


class TestRebuild:
    def _cached(self, x, y, directory, caplog, tap_layers=None):
        _fit(_tac(tap_layers), x, y, directory, caplog)

    def test_changed_base_weights(
        self, data, tmp_path, base_calls, caplog, capsys
    ):
        x, y = data
        self._cached(x, y, tmp_path, caplog)
        changed = [w * 1.01 for w in _tac().base_model.get_weights()]
        base_calls.clear()
        tac = _tac()
        tac.base_model.set_weights(changed)
        capsys.readouterr()
        _fit(tac, x, y, tmp_path, caplog, verbose=1)
        # At verbose > 0 the message is printed.
        log = capsys.readouterr().out
        assert MESSAGE_REBUILD in log and "the model changed" in log
        assert sum(base_calls) >= NUM_SAMPLES
        _assert_same_weights(_oracle(x, y, base_weights=changed), tac)

    @pytest.mark.parametrize("change", ["one_value", "labels", "fewer"])
    def test_changed_data(self, data, tmp_path, base_calls, caplog, change):
        x, y = data
        self._cached(x, y, tmp_path, caplog)
        x, y = x.copy(), y.copy()
        if change == "one_value":
            x[-1, 0, 0, 0] += 0.5
        elif change == "labels":
            y[0] = (y[0] + 1) % 10
        else:
            x, y = x[:-BATCH], y[:-BATCH]
        base_calls.clear()
        tac = _tac()
        log = _fit(tac, x, y, tmp_path, caplog)
        assert MESSAGE_REBUILD in log and "the data changed" in log
        assert sum(base_calls) >= len(x)
        _assert_same_weights(_oracle(x, y), tac)

    def test_changed_taps(self, data, tmp_path, base_calls, caplog):
        x, y = data
        self._cached(x, y, tmp_path, caplog, tap_layers=["conv_1", "features"])
        base_calls.clear()
        tac = _tac(["conv_2", "features"])
        log = _fit(tac, x, y, tmp_path, caplog)
        assert MESSAGE_REBUILD in log and "the model changed" in log
        assert sum(base_calls) >= NUM_SAMPLES
        _assert_same_weights(_oracle(x, y, ["conv_2", "features"]), tac)

    @pytest.mark.parametrize("damage", ["truncated", "flipped", "manifest"])
    def test_damaged_cache(
        self, data, tmp_path, base_calls, caplog, damage, oracle_weights
    ):
        x, y = data
        self._cached(x, y, tmp_path, caplog)
        part = tmp_path / "train"
        target = part / f"{feature_cache.tap_key(0)}.bin"
        if damage == "truncated":
            os.truncate(target, target.stat().st_size - 4)
        elif damage == "flipped":
            raw = bytearray(target.read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            target.write_bytes(bytes(raw))
        else:
            (part / disk_cache.MANIFEST).write_text('{"format": 1, "mod')
        base_calls.clear()
        tac = _tac()
        log = _fit(tac, x, y, tmp_path, caplog)
        assert MESSAGE_REBUILD in log
        assert sum(base_calls) >= NUM_SAMPLES
        _assert_same_weights(oracle_weights, tac)

    def test_interrupted_write_is_rebuilt(
        self, data, tmp_path, monkeypatch, caplog, oracle_weights
    ):
        x, y = data
        self._cached(x, y, tmp_path, caplog)
        # A new build (other data) killed after its first batch: its
        # manifest is gone first, so the stale files are never read.
        calls = []
        predict_on_batch = features.distribution.predict_on_batch

        def failing(model, batch):
            calls.append(1)
            if len(calls) > 1:
                raise KeyboardInterrupt
            return predict_on_batch(model, batch)

        monkeypatch.setattr(features.distribution, "predict_on_batch", failing)
        x_new = x[::-1].copy()
        y_new = y[::-1].copy()
        with pytest.raises(KeyboardInterrupt):
            _fit(_tac(), x_new, y_new, tmp_path, caplog, batch_size=8)
        monkeypatch.setattr(
            features.distribution, "predict_on_batch", predict_on_batch
        )
        assert disk_cache.read_manifest(str(tmp_path / "train")) is None
        tac = _tac()
        log = _fit(tac, x, y, tmp_path, caplog)
        assert MESSAGE_REBUILD in log and "interrupted" in log
        _assert_same_weights(oracle_weights, tac)


class TestStreamedInputs:
    def test_py_dataset(
        self, data, tmp_path, base_calls, caplog, oracle_weights
    ):
        x, y = data
        oracle = oracle_weights
        dataset = Batches(x, y, batch_size=BATCH)
        tac = _tac()
        _fit(tac, dataset, None, tmp_path, caplog, batch_size=None)
        # Read once, not once per epoch.
        assert dataset.reads == len(dataset)
        _assert_same_weights(oracle, tac)
        base_calls.clear()
        again = _tac()
        log = _fit(again, dataset, None, tmp_path, caplog, batch_size=None)
        assert MESSAGE_REUSE in log and base_calls == []
        _assert_same_weights(oracle, again)
        # A dataset of other data is detected by its fingerprint.
        log = _fit(
            _tac(),
            Batches(x[::-1], y[::-1], batch_size=BATCH),
            None,
            tmp_path,
            caplog,
        )
        assert "the data changed" in log

    def test_tf_data_with_validation_in_a_temporary_cache(
        self, data, monkeypatch, tmp_path
    ):
        import tensorflow as tf

        x, y = data
        oracle = _tac()
        history_a = oracle.fit(
            x,
            y,
            validation_data=(x[:BATCH], y[:BATCH]),
            epochs=2,
            batch_size=BATCH,
            shuffle=False,
            verbose=0,
            cache_features=True,
        ).history
        monkeypatch.setattr(
            feature_cache.tempfile, "mkdtemp", lambda prefix: str(tmp_path)
        )
        train = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
        valid = tf.data.Dataset.from_tensor_slices((x[:BATCH], y[:BATCH]))
        tac = _tac()
        history_b = tac.fit(
            train,
            validation_data=valid.batch(BATCH),
            epochs=2,
            shuffle=False,
            verbose=0,
            cache_features=True,
        ).history
        _assert_same_weights(oracle, tac)
        for key in history_a:
            np.testing.assert_allclose(
                history_a[key], history_b[key], rtol=1e-5
            )
        # The temporary directory is removed afterwards.
        assert not os.path.exists(tmp_path)

    def test_infinite_dataset_is_an_error(self, data, tmp_path):
        import tensorflow as tf

        x, y = data
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        with pytest.raises(ValueError, match="infinite"):
            _tac().fit(
                dataset.repeat(),
                steps_per_epoch=2,
                verbose=0,
                feature_cache_dir=tmp_path,
            )


class TestBadArguments:
    def test_generator_is_an_error(self, data, tmp_path):
        x, y = data
        generator = ((x[i : i + 8], y[i : i + 8]) for i in range(0, 96, 8))
        with pytest.raises(ValueError, match="PyDataset"):
            _tac().fit(generator, verbose=0, feature_cache_dir=tmp_path)

    def test_cache_turned_off_is_an_error(self, data, tmp_path):
        x, y = data
        with pytest.raises(ValueError, match="cache_features=False"):
            _tac().fit(
                x,
                y,
                verbose=0,
                cache_features=False,
                feature_cache_dir=tmp_path,
            )

    def test_not_a_path(self, data):
        x, y = data
        with pytest.raises(ValueError, match="Invalid `feature_cache_dir`"):
            _tac().fit(x, y, verbose=0, feature_cache_dir=3)

    def test_joint_training_is_an_error(self, data, tmp_path):
        x, y = data
        with pytest.raises(ValueError, match="train_base"):
            _tac(train_base=True).fit(
                x, y, verbose=0, feature_cache_dir=tmp_path
            )
