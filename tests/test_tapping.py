import warnings

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
            h = keras.layers.Conv1D(16, 1, activation="relu", name=f"c{index}")(
                h
            )
            h = keras.layers.Flatten()(h)
            h = keras.layers.Dense(32, activation="relu", name=f"d{index}")(h)
        model = keras.Model(inputs, keras.layers.Dense(2)(h))
        assert tapping.default_tap_layers(model) == ["c1", "d1", "c2", "d2"]

    def test_resnet50_stage_outputs(self):
        model = keras.applications.ResNet50(
            weights=None, input_shape=(64, 64, 3), classes=10
        )
        assert tapping.default_tap_layers(model, min_width=16) == [
            "conv2_block3_out",
            "conv3_block4_out",
            "conv4_block6_out",
            "conv5_block3_out",
        ]

    def test_sequence_model_never_taps_its_own_pooling(self):
        inputs = keras.Input((40, 6))
        h = keras.layers.Conv1D(16, 5, activation="relu", name="c1")(inputs)
        h = keras.layers.MaxPooling1D(name="pool")(h)
        h = keras.layers.Conv1D(32, 5, activation="relu", name="c2")(h)
        h = keras.layers.GlobalAveragePooling1D(name="gap")(h)
        h = keras.layers.Dropout(0.2, name="drop")(h)
        model = keras.Model(inputs, keras.layers.Dense(4, name="out")(h))
        taps = tapping.default_tap_layers(model)
        assert taps == ["c1", "c2"]
        assert_pooled_taps_differ(model, taps)

    def test_mlp_hidden_layers_not_the_head(self):
        inputs = keras.Input((13,))
        h = keras.layers.Dense(32, activation="relu", name="h1")(inputs)
        h = keras.layers.Dropout(0.1)(h)
        h = keras.layers.Dense(32, name="h2")(h)
        h = keras.layers.BatchNormalization(name="bn2")(h)
        h = keras.layers.ReLU(name="relu2")(h)
        h = keras.layers.Dense(3, name="logits")(h)
        model = keras.Model(inputs, keras.layers.Softmax(name="softmax")(h))
        assert tapping.default_tap_layers(model) == ["h1", "relu2"]

    def test_transformer_block_outputs(self):
        model = tiny_vit(num_blocks=4)
        taps = tapping.default_tap_layers(model, min_width=8)
        # The patch embedding (a linear map of the pixels) is skipped; the
        # blocks' token outputs and the final norm are tapped.
        assert taps == ["block0_out", "block1_out", "block2_out", "final_norm"]
        assert_pooled_taps_differ(model, taps)

    def test_small_resnet_fills_with_whole_blocks(self):
        # Three stages of two blocks: the stage outputs, then one more block
        # output; never a block's add beside its own ReLU output.
        model = tiny_resnet()
        taps = tapping.default_tap_layers(model, min_width=8)
        assert taps == [
            "stage1_block1_out",
            "stage1_block2_out",
            "stage2_block2_out",
            "stage3_block2_out",
        ]
        assert_pooled_taps_differ(model, taps)

    def test_narrow_layers_are_skipped(self):
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(4, 3, activation="relu", name="narrow")(inputs)
        h = keras.layers.Conv2D(16, 3, activation="relu", name="wide")(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        model = keras.Model(inputs, keras.layers.Dense(10)(h))
        assert tapping.default_tap_layers(model, min_width=16) == ["wide"]
        with pytest.raises(ValueError, match="at least 32"):
            tapping.default_tap_layers(model, min_width=32)


def tiny_resnet():
    inputs = keras.Input((16, 16, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    h = keras.layers.ReLU(name="stem_relu")(h)
    for stage, width in enumerate((8, 16, 32), start=1):
        for block in (1, 2):
            name = f"stage{stage}_block{block}"
            strides = 2 if stage > 1 and block == 1 else 1
            c = keras.layers.Conv2D(
                width, 3, strides=strides, padding="same", name=f"{name}_conv"
            )(h)
            c = keras.layers.BatchNormalization(name=f"{name}_bn")(c)
            shortcut = h
            if strides > 1:
                shortcut = keras.layers.Conv2D(
                    width, 1, strides=2, name=f"{name}_proj"
                )(h)
            h = keras.layers.Add(name=f"{name}_add")([shortcut, c])
            h = keras.layers.ReLU(name=f"{name}_out")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))


def tiny_vit(num_blocks, dim=16):
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(dim, 4, strides=4, name="patches")(inputs)
    h = keras.layers.Reshape((16, dim))(h)
    for block in range(num_blocks):
        n = keras.layers.LayerNormalization()(h)
        a = keras.layers.MultiHeadAttention(2, dim // 2)(n, n)
        h = keras.layers.Add(name=f"block{block}_attention")([h, a])
        n = keras.layers.LayerNormalization()(h)
        m = keras.layers.Dense(2 * dim, activation="gelu")(n)
        h = keras.layers.Add(name=f"block{block}_out")(
            [h, keras.layers.Dense(dim)(m)]
        )
    h = keras.layers.LayerNormalization(name="final_norm")(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, keras.layers.Dense(5)(h))


def assert_pooled_taps_differ(model, taps):
    """No two taps pool to the same values (oracle: NumPy means)."""
    resolved = tapping.resolve_taps(model, taps)
    tapped = tapping.tap_model(model, resolved)
    shape = (3, *model.inputs[0].shape[1:])
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    outputs = [keras.ops.convert_to_numpy(t) for t in tapped(x)[1:]]
    pooled = [o.reshape(len(o), -1, o.shape[-1]).mean(axis=1) for o in outputs]
    for i in range(len(pooled)):
        for j in range(i + 1, len(pooled)):
            same_shape = pooled[i].shape == pooled[j].shape
            assert not (same_shape and np.allclose(pooled[i], pooled[j])), (
                taps[i],
                taps[j],
            )


def channels_first_cnn():
    inputs = keras.Input((3, 8, 8))
    h = keras.layers.Conv2D(8, 3, data_format="channels_first", name="conv")(
        inputs
    )
    h = keras.layers.Activation("relu", name="relu")(h)
    h = keras.layers.GlobalAveragePooling2D(
        data_format="channels_first", name="gap"
    )(h)
    h = keras.layers.Dense(16, activation="relu", name="hidden")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))


class TestChannelsFirst:
    def test_a_channels_first_tap_warns(self):
        model = channels_first_cnn()
        # The oracle: the conv's last axis is spatial (6), not its 8
        # channels, so pooling all but the last axis would mix channels.
        assert model.get_layer("conv").output.shape[1:] == (8, 6, 6)
        with pytest.warns(UserWarning, match="'conv'.*channels-first"):
            tapping.resolve_taps(model, ["conv", "hidden"])
        # Rank-2 outputs have no spatial axes: any data format is fine.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert tapping.resolve_taps(model, ["gap"])[0][0] == "gap"

    def test_a_layer_after_a_channels_first_one_warns(self):
        # The activation has no `data_format`; it keeps the conv's layout.
        with pytest.warns(UserWarning, match="'relu'.*channels-first"):
            tapping.resolve_taps(channels_first_cnn(), ["relu"])

    def test_defaults_skip_channels_first_layers(self):
        assert tapping.default_tap_layers(channels_first_cnn()) == ["hidden"]

    def test_unknown_layout_warns_under_channels_first(self):
        # A reshape has no `data_format`, nor has the input before it.
        inputs = keras.Input((48,))
        h = keras.layers.Reshape((3, 4, 4), name="grid")(inputs)
        h = keras.layers.Flatten()(h)
        h = keras.layers.Dense(8, activation="relu", name="hidden")(h)
        model = keras.Model(inputs, keras.layers.Dense(3)(h))
        previous = keras.config.image_data_format()
        try:
            keras.config.set_image_data_format("channels_first")
            with pytest.warns(UserWarning, match="'grid'.*channels_first"):
                tapping.resolve_taps(model, ["grid"])
        finally:
            keras.config.set_image_data_format(previous)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tapping.resolve_taps(model, ["grid"])
