"""Saved models come back the same on every backend; damaged files are a
clear error; saving leaves the live model alone; seeds fix codes, slices
and training.

One test saves a trained, calibrated model under the current backend and
has the two other backends load it in subprocesses (`backend_worker.py`):
that covers the `.keras` round trip on every backend, loading across
backends (both directions: each worker saves the model again and this
process loads it), backend parity of profiles, confidences and decisions
with the same weights, and the codes and slices that each backend draws
from a seed. Run under each of the three backends, the suite covers every
ordered pair of backends.
"""

import json
import os
import subprocess
import sys

import hypothesis
import keras
import numpy as np
import pytest
from backend_worker import FLOAT_OUTPUTS
from backend_worker import codes_and_slices
from backend_worker import model_outputs
from backend_worker import trained_tac
from conftest import make_cnn
from hypothesis import strategies as st
from keras import ops

import keras_tac
from keras_tac import codes as codes_lib
from keras_tac.layers import slice_indices

BACKENDS = ("tensorflow", "jax", "torch")
WORKER = os.path.join(os.path.dirname(__file__), "backend_worker.py")
SEEDS = (0, 7, 2**31 - 1)
# Float outputs agree within this across backends (float32, same weights).
TOLERANCE = 1e-5
# The combined confidence divides each signal by its spread on the
# calibration data (for the log max softmax a few hundredths), which
# magnifies float32 differences between backends about a hundredfold.
CONFIDENCE_TOLERANCE = 1e-3
FUZZ = hypothesis.settings(max_examples=10, deadline=None, database=None)


@pytest.fixture(scope="module")
def tac(trained_cnn_weights, digits):
    return trained_tac(trained_cnn_weights, digits)


def numpy_codes_and_slices(seed):
    """What a TAC model on `make_cnn` must hold for `seed`, from the pure
    NumPy helpers (taps conv_1, conv_2, features of widths 16, 32, 32)."""
    codes, block_width = codes_lib.class_codes(10, 3, 16, seed=seed)
    result = {"codes": codes}
    for index, width in enumerate((16, 32, 32)):
        result[f"slices_{index}"] = slice_indices(
            width, block_width, "random", (seed + index) % 2**31
        )
    return result


def parity_inputs(digits):
    """Unseen test digits, then 4 extreme-magnitude and 3 non-finite rows."""
    _, (x_test, _) = digits
    real = x_test[200:248]
    hostile = np.concatenate([x_test[248:252] * 1e6, x_test[252:255]])
    hostile[4, 3, 3, 0] = np.nan
    hostile[5, 0, 0, 0] = np.inf
    hostile[6] = -np.inf
    return np.concatenate([real, hostile]).astype("float32"), len(real)


def snapshot(model):
    """The state saving must not touch."""
    return {
        "variables": [
            np.array(ops.convert_to_numpy(v)) for v in model.variables
        ],
        "optimizer": [
            np.array(ops.convert_to_numpy(v)) for v in model.optimizer.variables
        ],
        "trainable": [(v.path, v.trainable) for v in model.variables]
        + [
            (layer.name, layer.trainable)
            for layer in [model, model.base_model]
            + model.base_model.layers
            + model.head.profile_layers
        ],
        "compiled": model.compiled,
        "optimizer_object": id(model.optimizer),
        "threshold": model.threshold,
    }


def assert_same_snapshot(after, before):
    for key in ("trainable", "compiled", "optimizer_object", "threshold"):
        assert after[key] == before[key], key
    for key in ("variables", "optimizer"):
        assert len(after[key]) == len(before[key])
        for got, want in zip(after[key], before[key]):
            np.testing.assert_array_equal(got, want)


def assert_same_model(got, expected, num_real, where):
    """Same codes, slices, threshold and weights (exactly), same outputs
    (within `TOLERANCE` on real inputs, `CONFIDENCE_TOLERANCE` for the
    combined confidence, 1e-4 relative or 1e-5 of the largest magnitude on
    the 1e6-scaled ones) and same
    decisions away from the threshold."""
    np.testing.assert_array_equal(got["codes"], expected["codes"], where)
    slice_keys = [key for key in expected if key.startswith("slices_")]
    weight_keys = [key for key in expected if key.startswith("weight_")]
    assert len(slice_keys) == 3 and len(weight_keys) > 10
    for key in slice_keys + weight_keys:
        np.testing.assert_array_equal(got[key], expected[key], where)
    assert float(got["threshold"]) == float(expected["threshold"]), where
    real, extreme = slice(0, num_real), slice(num_real, num_real + 4)
    for key in FLOAT_OUTPUTS:
        tolerance = CONFIDENCE_TOLERANCE if key == "confidence" else TOLERANCE
        np.testing.assert_allclose(
            got[key][real],
            expected[key][real],
            rtol=tolerance,
            atol=tolerance,
            err_msg=f"{where}: {key}",
        )
        # Float32 rounding scales with the largest magnitude of the output
        # (~1e5 here), not with each element: an element near 0 of a row
        # near 1e5 is a cancellation and may differ by ~0.1.
        scale = np.abs(expected[key][extreme]).max()
        np.testing.assert_allclose(
            got[key][extreme],
            expected[key][extreme],
            rtol=1e-4,
            atol=1e-5 * scale,
            err_msg=f"{where}: {key} (1e6-scaled inputs)",
        )
    # Decisions: the same wherever a float error of 1e-4 cannot flip them.
    logits = np.sort(expected["base_output"][real], axis=1)
    clear = logits[:, -1] - logits[:, -2] > 1e-4
    np.testing.assert_array_equal(
        got["prediction"][real][clear], expected["prediction"][real][clear]
    )
    signs_clear = np.all(np.abs(expected["profile"][real]) > 1e-4, axis=1)
    np.testing.assert_array_equal(
        got["tac_prediction"][real][signs_clear],
        expected["tac_prediction"][real][signs_clear],
    )
    margin = np.abs(expected["confidence"][real] - expected["threshold"])
    far = margin > CONFIDENCE_TOLERANCE
    np.testing.assert_array_equal(
        got["accepted"][real][far], expected["accepted"][real][far]
    )
    assert not got["accepted"][num_real:].any(), where
    np.testing.assert_array_equal(
        got["input_is_finite"], expected["input_is_finite"]
    )


@pytest.mark.slow  # two subprocesses, one per other backend
class TestAcrossBackends:
    def test_save_load_and_parity_on_every_backend(self, tac, digits, tmp_path):
        backend = keras.backend.backend()
        others = [name for name in BACKENDS if name != backend]
        x, num_real = parity_inputs(digits)
        before = snapshot(tac)
        tac.save(tmp_path / "reference.keras")
        assert_same_snapshot(snapshot(tac), before)
        np.save(tmp_path / "inputs.npy", x)
        (tmp_path / "request.json").write_text(json.dumps({"seeds": SEEDS}))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        workers = {
            other: subprocess.Popen(
                [sys.executable, WORKER, str(tmp_path)],
                env=dict(env, KERAS_BACKEND=other),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for other in others
        }
        try:
            expected = model_outputs(tac, x)
            restored = keras_tac.saving.load_model(tmp_path / "reference.keras")
            assert type(restored) is keras_tac.TACModel
            assert restored.compiled
            assert_same_model(
                model_outputs(restored, x), expected, num_real, backend
            )
            logs = {
                other: worker.communicate(timeout=300)[0]
                for other, worker in workers.items()
            }
        finally:
            for worker in workers.values():
                worker.kill()
        for other in others:
            assert workers[other].returncode == 0, logs[other][-3000:]
            with np.load(tmp_path / f"result_{other}.npz") as file:
                result = dict(file)
            where = f"saved under {backend}, loaded under {other}"
            assert_same_model(result, expected, num_real, where)
            assert bool(result["compiled"])
            assert bool(result["default_jit_compile"])
            assert str(result["optimizer"]) == type(tac.optimizer).__name__
            back = keras_tac.saving.load_model(
                tmp_path / f"saved_by_{other}.keras"
            )
            where = f"saved under {other}, loaded under {backend}"
            assert_same_model(model_outputs(back, x), expected, num_real, where)
            for seed in SEEDS:
                for key, value in numpy_codes_and_slices(seed).items():
                    np.testing.assert_array_equal(
                        result[f"seed_{seed}_{key}"], value, f"{other} {seed}"
                    )


class TestRoundTrip:
    def test_uncalibrated_model_stays_uncalibrated(self, tmp_path):
        tac = keras_tac.TACModel(make_cnn(), tap_layers=["conv_2"])
        tac.save(tmp_path / "tac.keras")
        restored = keras_tac.saving.load_model(tmp_path / "tac.keras")
        assert tac.threshold is None and restored.threshold is None
        assert not restored.compiled
        with pytest.raises(ValueError, match="calibrate"):
            restored.predict_with_rejection(np.zeros((1, 8, 8, 1)))

    def test_saving_twice_leaves_model_untouched(self, tac, tmp_path):
        before = snapshot(tac)
        tac.save(tmp_path / "a.keras")
        tac.save_weights(tmp_path / "a.weights.h5")
        tac.save(tmp_path / "b.keras")
        assert_same_snapshot(snapshot(tac), before)
        with open(tmp_path / "a.keras", "rb") as a:
            assert a.read(2) == b"PK"


@pytest.fixture(scope="module")
def saved_file(tmp_path_factory):
    tac = keras_tac.TACModel(make_cnn(), tap_layers=["conv_2", "features"])
    path = tmp_path_factory.mktemp("saved") / "tac.keras"
    tac.save(path)
    weights = [np.array(ops.convert_to_numpy(w)) for w in tac.weights]
    with open(path, "rb") as file:
        return file.read(), weights


class TestDamagedFiles:
    @FUZZ
    @hypothesis.given(fraction=st.floats(0.0, 1.0, exclude_max=True))
    def test_truncated_file(self, saved_file, tmp_path_factory, fraction):
        data, _ = saved_file
        path = tmp_path_factory.mktemp("cut") / "tac.keras"
        path.write_bytes(data[: int(fraction * len(data))])
        with pytest.raises(ValueError, match="truncated or corrupted"):
            keras_tac.saving.load_model(path)
        # Keras's own error for this says "File not found".
        with pytest.raises(Exception):  # noqa: B017
            keras.saving.load_model(path)

    @FUZZ
    @hypothesis.given(
        position=st.floats(0.0, 1.0, exclude_max=True),
        mask=st.integers(1, 255),
    )
    def test_flipped_byte(self, saved_file, tmp_path_factory, position, mask):
        data, weights = saved_file
        damaged = bytearray(data)
        damaged[int(position * len(data))] ^= mask
        path = tmp_path_factory.mktemp("flip") / "tac.keras"
        path.write_bytes(bytes(damaged))
        try:
            restored = keras_tac.saving.load_model(path)
        except ValueError as error:
            assert str(path) in str(error)
            return
        # A harmless byte (a timestamp in a zip header): the same model.
        for got, want in zip(restored.weights, weights):
            np.testing.assert_array_equal(ops.convert_to_numpy(got), want)

    def test_damaged_members(self, saved_file, tmp_path):
        import zipfile

        data, _ = saved_file
        (tmp_path / "good.keras").write_bytes(data)

        def rewrite(name, change):
            path = tmp_path / f"{name}.keras"
            with (
                zipfile.ZipFile(tmp_path / "good.keras") as source,
                zipfile.ZipFile(path, "w") as target,
            ):
                for member in source.namelist():
                    content = change(member, source.read(member))
                    if content is not None:
                        target.writestr(member, content)
            return path

        cases = {
            "no_weights": (lambda m, c: None if m.endswith(".h5") else c),
            "bad_json": (lambda m, c: c[:-9] if m == "config.json" else c),
            "cut_weights": (
                lambda m, c: c[: len(c) // 2] if m.endswith(".h5") else c
            ),
        }
        messages = {
            "no_weights": "model.weights.h5",
            "bad_json": "not valid JSON",
            "cut_weights": "truncated or corrupted",
        }
        for name, change in cases.items():
            with pytest.raises(ValueError, match=messages[name]):
                keras_tac.saving.load_model(rewrite(name, change))
        with pytest.raises(FileNotFoundError, match="no file"):
            keras_tac.saving.load_model(tmp_path / "missing.keras")
        with pytest.raises(ValueError, match="directory"):
            os.mkdir(tmp_path / "folder.keras")
            keras_tac.saving.load_model(tmp_path / "folder.keras")


class TestDeterminism:
    @FUZZ
    @hypothesis.given(seed=st.integers(0, 2**31 - 1))
    def test_codes_and_slices_follow_the_seed(self, seed):
        expected = numpy_codes_and_slices(seed)
        got = codes_and_slices(seed)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            np.testing.assert_array_equal(got[key], value, key)

    @pytest.mark.slow  # two joint trainings
    def test_same_seeds_same_training(self, digits):
        """Joint training with random slices, code noise and mixup, twice
        from the same seeds: the same weights, bit for bit."""
        (x, y), _ = digits

        def train():
            keras.utils.set_random_seed(1)
            tac = keras_tac.TACModel(
                make_cnn(),
                train_base=True,
                slicing="random",
                code_noise=0.1,
                mixup_alpha=0.2,
                seed=5,
            )
            initial = [np.array(ops.convert_to_numpy(w)) for w in tac.weights]
            tac.compile(optimizer=keras.optimizers.Adam(1e-2))
            tac.fit(x[:96], y[:96], batch_size=32, epochs=1, verbose=0)
            final = [np.array(ops.convert_to_numpy(w)) for w in tac.weights]
            return initial, final

        (initial, first), (_, second) = train(), train()
        for a, b in zip(first, second):
            np.testing.assert_array_equal(a, b)
        changed = sum(not np.array_equal(a, b) for a, b in zip(first, initial))
        assert changed > 5  # the base and the projections trained
