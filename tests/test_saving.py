"""`keras_tac.saving`: files saved by keras-tac 0.1.0 (before the `TACHead`
layout) load, on every backend, and give the outputs that code gave."""

import json
import os
import zipfile

import keras
import numpy as np
import pytest

import keras_tac

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
LEGACY = ("tensorflow", "torch")


def legacy_file(backend):
    return os.path.join(FIXTURES, f"legacy_v0_1_{backend}.keras")


def expected_outputs(backend):
    path = os.path.join(FIXTURES, f"legacy_v0_1_{backend}_expected.npz")
    with np.load(path) as data:
        return dict(data)


@pytest.mark.parametrize("saved_on", LEGACY)
class TestLegacyFiles:
    def test_loads_with_the_outputs_it_gave(self, saved_on):
        expected = expected_outputs(saved_on)
        tac = keras_tac.saving.load_model(legacy_file(saved_on))
        assert isinstance(tac, keras_tac.TACModel)
        assert tac.threshold == pytest.approx(float(expected["threshold"]))
        np.testing.assert_array_equal(tac.codes, expected["codes"])
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(tac.temperature),
            expected["temperature"],
            rtol=1e-6,
        )
        # The options it was saved with (tests/fixtures/README.md).
        assert tac.score == "nearest_distance"
        assert tac.head.slicing == "random"
        assert tac.head.reduction == "median"
        assert tac.head.projection == "very_large"
        assert tac.head.trainable_temperature
        outputs = tac.predict(expected["x"], verbose=0)
        for key in ("profile", "distances"):
            np.testing.assert_allclose(
                outputs[key], expected[key], rtol=1e-4, atol=1e-5, err_msg=key
            )
        decided = tac.predict_with_rejection(expected["x"], verbose=0)
        for key in ("prediction", "tac_prediction", "accepted"):
            np.testing.assert_array_equal(decided[key], expected[key], key)
        for key in ("confidence", "tac_confidence"):
            np.testing.assert_allclose(
                decided[key], expected[key], rtol=1e-4, atol=1e-5, err_msg=key
            )

    def test_optimizer_state_moves_with_the_weights(self, saved_on):
        tac = keras_tac.saving.load_model(legacy_file(saved_on))
        # SGD with momentum: one momentum per trainable variable, in the
        # same order; a wrong order would mismatch shapes or values.
        momentums = [v for v in tac.optimizer.variables if "momentum" in v.path]
        assert len(momentums) == len(tac.trainable_variables)
        for momentum, variable in zip(momentums, tac.trainable_variables):
            assert tuple(momentum.shape) == tuple(variable.shape)
        assert any(
            np.any(keras.ops.convert_to_numpy(m) != 0) for m in momentums
        )

    def test_keras_load_model_names_the_version(self, saved_on):
        with pytest.raises(ValueError, match="keras-tac 0.1.0.*load_model"):
            keras.saving.load_model(legacy_file(saved_on))

    def test_upgrade_file_once(self, saved_on, tmp_path):
        upgraded = os.path.join(tmp_path, "tac.keras")
        keras_tac.saving.upgrade_file(legacy_file(saved_on), upgraded)
        tac = keras.saving.load_model(upgraded)
        expected = expected_outputs(saved_on)
        outputs = tac.predict(expected["x"], verbose=0)
        np.testing.assert_allclose(
            outputs["profile"], expected["profile"], rtol=1e-4, atol=1e-5
        )
        # The source is left as it was.
        with zipfile.ZipFile(legacy_file(saved_on)) as archive:
            config = json.loads(archive.read("config.json"))
        assert "format_version" not in config["config"]
        with pytest.raises(ValueError, match="nothing to upgrade"):
            keras_tac.saving.upgrade_file(upgraded, upgraded + ".again")


V0_2 = ("tensorflow", "jax", "torch")


@pytest.mark.parametrize("saved_on", V0_2)
def test_v0_2_files_load_and_answer_the_same(saved_on):
    """A default TAC model (combined confidence) saved by keras-tac 0.2.0
    before the TACModel redesign (tests/fixtures/README.md) loads with
    both loaders and gives the outputs and decisions it gave."""
    path = os.path.join(FIXTURES, f"v0_2_{saved_on}.keras")
    with np.load(path.replace(".keras", "_expected.npz")) as data:
        expected = dict(data)
    for load in (keras_tac.saving.load_model, keras.saving.load_model):
        tac = load(path)
        assert isinstance(tac, keras_tac.TACModel)
        assert tac.score == "combined"
        assert tac.tap_layers == list(expected["tap_layers"])
        assert tac.threshold == pytest.approx(float(expected["threshold"]))
        np.testing.assert_array_equal(tac.codes, expected["codes"])
        outputs = tac.predict(expected["x"], verbose=0)
        decided = tac.predict_with_rejection(expected["x"], verbose=0)
        # How NaN propagates through the base's pooling differs between
        # backends: the non-finite sample is compared by its decision only.
        finite = expected["output_input_is_finite"]
        assert not finite.all()
        assert not decided["accepted"][~finite].any()
        # Saved before the calibration record: one threshold, and no
        # reference for p-values until it is calibrated again.
        assert tac.class_thresholds is None
        assert np.isnan(decided["p_value"]).all()
        for key, value in expected.items():
            source, _, name = key.partition("_")
            if source not in ("output", "decided"):
                continue
            actual = (outputs if source == "output" else decided)[name]
            actual, value = actual[finite], value[finite]
            if value.dtype.kind == "f":
                np.testing.assert_allclose(
                    actual, value, rtol=1e-4, atol=1e-3, err_msg=key
                )
            else:
                np.testing.assert_array_equal(actual, value, err_msg=key)


def test_base_models_own_training_state_survives(trained_cnn, digits, tmp_path):
    (x, y), _ = digits
    trained_cnn.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    trained_cnn.fit(x[:128], y[:128], epochs=1, batch_size=32, verbose=0)
    tac = keras_tac.TACModel(trained_cnn)
    path = os.path.join(tmp_path, "tac.keras")
    tac.save(path)
    restored = keras_tac.saving.load_model(path)
    saved = [
        keras.ops.convert_to_numpy(v) for v in trained_cnn.optimizer.variables
    ]
    loaded = [
        keras.ops.convert_to_numpy(v)
        for v in restored.base_model.optimizer.variables
    ]
    assert len(saved) == len(loaded) > 2
    for a, b in zip(saved, loaded):
        np.testing.assert_array_equal(a, b)
