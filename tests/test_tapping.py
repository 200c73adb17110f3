import keras
import numpy as np
import pytest
from conftest import make_cnn

from keras_tac import tapping


def nested_model():
    inner_in = keras.Input((10, 10, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv_a")(inner_in)
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv_b")(h)
    backbone = keras.Model(inner_in, h, name="backbone")
    inputs = keras.Input((10, 10, 3))
    h = backbone(inputs)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    h = keras.layers.Dense(8, activation="relu", name="head_features")(h)
    outputs = keras.layers.Dense(3, name="head")(h)
    return keras.Model(inputs, outputs, name="classifier")


class TestResolveTaps:
    def test_names_paths_and_layers(self):
        model = nested_model()
        inner = model.get_layer("backbone").get_layer("conv_b")
        taps = tapping.resolve_taps(model, ["conv_a", inner, "head_features"])
        assert [path for path, _ in taps] == [
            "backbone/conv_a",
            "backbone/conv_b",
            "head_features",
        ]
        assert taps[1][1] is inner

    def test_unknown_name_lists_available(self):
        with pytest.raises(
            ValueError, match="Available layers: .*backbone/conv_a"
        ):
            tapping.resolve_taps(nested_model(), ["conv_z"])

    def test_output_layer_and_duplicates(self):
        with pytest.raises(ValueError, match="output layer"):
            tapping.resolve_taps(nested_model(), ["head"])
        with pytest.raises(ValueError, match="Duplicate"):
            tapping.resolve_taps(nested_model(), ["gap", "gap"])

    def test_bad_types(self):
        with pytest.raises(TypeError, match="layer name"):
            tapping.resolve_taps(nested_model(), [3])
        with pytest.raises(ValueError, match="non-empty"):
            tapping.resolve_taps(nested_model(), [])


class TestTapModel:
    def test_nested_taps_share_weights_and_match(self):
        model = nested_model()
        # The plain approach fails for nested layers.
        with pytest.raises(ValueError):
            keras.Model(
                model.inputs,
                model.get_layer("backbone").get_layer("conv_a").output,
            )
        taps = tapping.resolve_taps(model, ["conv_a", "gap"])
        tapped = tapping.tap_model(model, taps)
        x = (
            np.random.default_rng(0)
            .normal(size=(4, 10, 10, 3))
            .astype("float32")
        )
        base, conv_a, gap = tapped(x)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(base),
            model.predict(x, verbose=0),
            atol=1e-5,
        )
        conv_a_model = keras.Model(
            model.get_layer("backbone").inputs,
            model.get_layer("backbone").get_layer("conv_a").output,
        )
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(conv_a),
            conv_a_model.predict(x, verbose=0),
            atol=1e-5,
        )
        assert tuple(gap.shape) == (4, 8)
        assert {id(v) for v in tapped.weights} <= {id(v) for v in model.weights}

    def test_sequential_with_sequence_outputs(self):
        model = keras.Sequential(
            [
                keras.Input((7, 4)),
                keras.layers.Conv1D(6, 3, name="conv"),
                keras.layers.GlobalAveragePooling1D(name="gap"),
                keras.layers.Dense(3, name="out"),
            ]
        )
        tapped = tapping.tap_model(model, tapping.resolve_taps(model, ["conv"]))
        x = np.ones((2, 7, 4), "float32")
        base, conv = tapped(x)
        assert tuple(conv.shape) == (2, 5, 6)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(base),
            model.predict(x, verbose=0),
            atol=1e-5,
        )


class TestDefaultTaps:
    def test_stage_ends_of_a_cnn(self):
        assert tapping.default_tap_layers(make_cnn()) == [
            "conv_1",
            "conv_2",
            "features",
        ]

    def test_nested(self):
        assert tapping.default_tap_layers(nested_model()) == [
            "backbone/conv_a",
            "backbone/conv_b",
            "head_features",
        ]

    def test_at_most_four(self):
        inputs = keras.Input((32,))
        h = inputs
        for index in range(3):
            h = keras.layers.Reshape((2, 16))(h)
            h = keras.layers.Conv1D(16, 1, name=f"c{index}")(h)
            h = keras.layers.Flatten()(h)
            h = keras.layers.Dense(32, name=f"d{index}")(h)
        model = keras.Model(inputs, keras.layers.Dense(2)(h))
        assert tapping.default_tap_layers(model) == ["c1", "d1", "c2", "d2"]
