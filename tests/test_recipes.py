"""The reference recipes (`keras_tac.recipes`) against the reference's
settings, written out here from the fact sheet of ServiceNow/tac as an
independent oracle (file:line of the reference in the comments)."""

import math
import os
import warnings

import keras
import numpy as np
import pytest
from conftest import to_numpy
from keras import ops

import keras_tac
from keras_tac import recipes

# exp_configs.py:16-50, launcher.sh:4-6, src/TAC.py:139-167,
# src/models.py:35-87, src/datasets.py:9-53.
MNIST_FACTS = {
    "taps": 4,
    "tap_widths": (64, 128, 256, 512),
    "tap_sizes": (26, 24, 22, 20),
    "leaky_relu_slope": 0.01,
    "projection": "small",
    "slices_per_tap": 16,
    "slicing": "uniform",
    "temperature": 10.0,
    "code_noise": 0.15,
    "mixup_alpha": 0.0,
    "cross_entropy_scale": 1.0,
    "regression_scale": 10.0,
    "head_loss_scale": 1.0,
    "train_classification_head": True,
    "learning_rate": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-5,
    "milestones": (5, 100, 150),
    "gamma": 0.1,
    "grad_clip": 1.0,
    "batch_size": 8,
    "epochs": 200,
    "crop_scale": (0.5, 1.0),
    "crop_ratio": (3 / 4, 4 / 3),
    "rotation_degrees": 30.0,
    "noise_probability": 0.5,
    "noise_levels": (0.1, 0.2, 0.3, 0.4),
}
# exp_configs.py:52-86, src/TAC.py:170-256, src/datasets.py:55-62,
# src/constants.py:7-9.
CIFAR_FACTS = {
    "taps": 3,
    "tap_widths": (160, 320, 640),
    "tap_sizes": (32, 16, 8),
    "projection": "very_large",
    "slices_per_tap": 16,
    "temperature": 15.0,
    "code_noise": 0.1,
    "mixup_alpha": 0.2,
    "train_classification_head": False,
    "learning_rate": 0.01,
    "momentum": 0.9,
    "weight_decay": 5e-5,
    "milestones": (10, 150, 250, 350),
    "gamma": 0.1,
    "grad_clip": 1.0,
    "batch_size": 128,
    "dropout": 0.3,
    "bn_momentum_pytorch": 0.1,
    "bn_epsilon": 1e-5,
    "rand_augment": {"magnitude": 20, "num_ops": 2, "magnitude_std": 0.5},
}


def quiet_fit(model, *args, **kwargs):
    with warnings.catch_warnings():
        # A few steps teach TAC little, which `fit` rightly warns about.
        warnings.simplefilter("ignore", UserWarning)
        return model.fit(*args, **kwargs)


@pytest.fixture(scope="module")
def digits():
    (x, y), _ = keras_tac.datasets.load_mnist_digits()
    return x[:48], y[:48]


def check_recipe_settings(recipe, tac, facts):
    assert tac.head.projection == facts["projection"]
    assert tac.head.block_width == facts["slices_per_tap"]
    assert tac.codes.shape == (10, facts["taps"] * facts["slices_per_tap"])
    assert float(to_numpy(tac.temperature)) == facts["temperature"]
    assert not tac.head.trainable_temperature
    assert tac.head.reduction == "mean"  # src/TAC.py:57-66
    assert tac.tac_loss.code_noise == facts["code_noise"]
    assert tac.mixup_alpha == facts["mixup_alpha"]
    # Error detection by <z, c_pred> (src/models.py:392-398).
    assert tac.score == "inner_product"
    optimizer = tac.optimizer
    assert isinstance(optimizer, recipes.CoupledSGD)
    assert math.isclose(
        float(to_numpy(optimizer.learning_rate)),
        facts["learning_rate"],
        rel_tol=1e-6,
    )
    assert optimizer.momentum == facts["momentum"]
    assert optimizer.coupled_weight_decay == facts["weight_decay"]
    assert optimizer.weight_decay is None  # no decoupled decay on top
    assert not optimizer.nesterov
    # One clip over the global norm of all gradients, nothing per variable.
    assert optimizer.global_clipnorm == facts["grad_clip"]
    assert optimizer.clipnorm is None and optimizer.clipvalue is None
    assert recipe.batch_size == facts["batch_size"]
    assert (
        recipe.train_classification_head == (facts["train_classification_head"])
    )
    reference = [
        facts["learning_rate"]
        * facts["gamma"] ** sum(e >= m for m in facts["milestones"])
        for e in range(facts["milestones"][-1] + 2)
    ]
    ours = [recipe.learning_rate_at(e) for e in range(len(reference))]
    np.testing.assert_allclose(ours, reference, rtol=1e-12)


class TestRegistry:
    def test_names_and_get(self):
        assert recipes.names() == ["reference_cifar10", "reference_mnist"]
        recipe = recipes.get("reference_mnist")
        assert isinstance(recipe, recipes.Recipe)
        assert recipes.get(recipe) is recipe

    def test_unknown_name(self):
        with pytest.raises(ValueError, match="Unknown recipe.*mnist_v2"):
            recipes.get("mnist_v2")

    def test_recipes_are_frozen_data(self):
        import dataclasses

        recipe = recipes.get("reference_mnist")
        with pytest.raises(dataclasses.FrozenInstanceError):
            recipe.epochs = 3
        shorter = dataclasses.replace(recipe, epochs=3)
        assert shorter.epochs == 3 and recipe.epochs == 200


class TestLeNetTAC:
    def test_layer_shapes_and_parameters_by_hand(self):
        model = recipes.lenet_tac(num_classes=10)
        assert model.input_shape == (None, 28, 28, 1)
        channels, size = 1, 28
        total = 0
        for index, (width, expected_size) in enumerate(
            zip(MNIST_FACTS["tap_widths"], MNIST_FACTS["tap_sizes"]), 1
        ):
            size -= 2  # an unpadded 3x3 convolution
            assert size == expected_size
            conv = model.get_layer(f"conv_{index}")
            assert conv.output.shape == (None, size, size, width)
            assert conv.kernel.shape == (3, 3, channels, width)
            assert conv.strides == (1, 1) and conv.padding == "valid"
            params = 3 * 3 * channels * width + width
            assert conv.count_params() == params
            total += params
            channels = width
        head = model.get_layer("logits")
        assert head.kernel.shape == (512, 10)
        total += 512 * 10 + 10
        assert total == 1_554_954
        assert model.count_params() == total
        assert model.output_shape == (None, 10)

    def test_only_convs_leaky_relus_pool_and_head(self):
        model = recipes.lenet_tac()
        kinds = [type(layer).__name__ for layer in model.layers[1:]]
        assert kinds == ["Conv2D", "LeakyReLU"] * 4 + [
            "GlobalAveragePooling2D",
            "Dense",
        ]
        for index in range(1, 5):
            layer = model.get_layer(f"leaky_relu_{index}")
            assert layer.negative_slope == MNIST_FACTS["leaky_relu_slope"]
        assert model.get_layer("logits").activation.__name__ == "linear"

    def test_head_reads_the_pooled_last_activation(self):
        model = recipes.lenet_tac(seed=3)
        x = np.random.default_rng(0).random((2, 28, 28, 1), "float32")
        last = keras.Model(model.input, model.get_layer("leaky_relu_4").output)
        pooled = to_numpy(last(x)).mean(axis=(1, 2))
        head = model.get_layer("logits")
        expected = pooled @ to_numpy(head.kernel) + to_numpy(head.bias)
        np.testing.assert_allclose(
            to_numpy(model(x)), expected, rtol=1e-4, atol=1e-5
        )

    def test_pytorch_default_initialization(self):
        model = recipes.lenet_tac(seed=0)
        for name, fan_in in [("conv_4", 9 * 256), ("logits", 512)]:
            layer = model.get_layer(name)
            bound = 1.0 / math.sqrt(fan_in)
            for weights in (to_numpy(layer.kernel), to_numpy(layer.bias)):
                assert np.abs(weights).max() <= bound
                assert np.abs(weights).max() > 0.9 * bound
            # Uniform on [-b, b]: standard deviation b / sqrt(3).
            std = to_numpy(layer.kernel).std()
            assert abs(std - bound / math.sqrt(3)) < 0.03 * bound

    def test_seeded(self):
        a, b = recipes.lenet_tac(seed=1), recipes.lenet_tac(seed=1)
        c = recipes.lenet_tac(seed=2)
        for x, y in zip(a.weights, b.weights):
            np.testing.assert_array_equal(to_numpy(x), to_numpy(y))
        assert not np.array_equal(
            to_numpy(a.weights[0]), to_numpy(c.weights[0])
        )


class TestReferenceMnist:
    def test_settings(self):
        recipe = recipes.get("reference_mnist")
        tac = recipe.build_tac(recipe.build_base(num_classes=10))
        check_recipe_settings(recipe, tac, MNIST_FACTS)
        assert recipe.epochs == MNIST_FACTS["epochs"]
        assert tac.tac_loss.cross_entropy_weight == 1.0
        assert tac.tac_loss.regression_weight == 10.0
        assert tac.base_loss_weight == MNIST_FACTS["head_loss_scale"]
        assert tac.head.slicing == MNIST_FACTS["slicing"]

    def test_taps_after_each_activation(self):
        recipe = recipes.get("reference_mnist")
        tac = recipe.build_tac(recipe.build_base())
        assert tac.tap_layers == [f"leaky_relu_{i}" for i in range(1, 5)]
        x = np.random.default_rng(0).random((2, 28, 28, 1), "float32")
        outputs = tac.tap_model(x)
        for tap, width, size in zip(
            outputs[1:], MNIST_FACTS["tap_widths"], MNIST_FACTS["tap_sizes"]
        ):
            assert tuple(tap.shape) == (2, size, size, width)
        # Post-activation: negative values are the pre-activation * 0.01.
        conv = keras.Model(
            tac.base_model.input, tac.base_model.get_layer("conv_1").output
        )
        pre = to_numpy(conv(x))
        expected = np.where(pre > 0, pre, 0.01 * pre)
        np.testing.assert_allclose(
            to_numpy(outputs[1]), expected, rtol=1e-5, atol=1e-6
        )

    def test_schedule_callback(self):
        recipe = recipes.get("reference_mnist")
        tac = recipe.build_tac(recipe.build_base())
        callback = recipe.fit_kwargs["callbacks"][0]
        assert isinstance(callback, keras.callbacks.LearningRateScheduler)
        callback.set_model(tac)
        # MultiStepLR([5, 100, 150], 0.1) stepped once per epoch.
        for epoch, expected in [
            (0, 0.1),
            (4, 0.1),
            (5, 0.01),
            (99, 0.01),
            (100, 1e-3),
            (149, 1e-3),
            (150, 1e-4),
            (199, 1e-4),
        ]:
            callback.on_epoch_begin(epoch)
            learning_rate = float(to_numpy(tac.optimizer.learning_rate))
            assert math.isclose(learning_rate, expected, rel_tol=1e-6)

    def test_fit_kwargs(self):
        kwargs = recipes.get("reference_mnist").fit_kwargs
        assert kwargs["batch_size"] == 8 and kwargs["epochs"] == 200
        assert isinstance(kwargs["augmentation"], keras.layers.Pipeline)
        # A new augmentation layer each time.
        assert (
            recipes.get("reference_mnist").fit_kwargs["augmentation"]
            is not kwargs["augmentation"]
        )

    def test_projection_initialization_is_pytorch_default(self):
        recipe = recipes.get("reference_mnist")
        tac = recipe.build_tac(recipe.build_base())
        for profile, width in zip(
            tac.head.profile_layers, MNIST_FACTS["tap_widths"]
        ):
            (dense,) = profile.projector.dense_layers
            bound = 1.0 / math.sqrt(width)
            for weights in (to_numpy(dense.kernel), to_numpy(dense.bias)):
                assert np.abs(weights).max() <= bound
                assert np.abs(weights).max() > 0.8 * bound
        # Reference projection parameters: sum of d * d + d.
        projection_params = sum(
            p.projector.count_params() for p in tac.head.profile_layers
        )
        assert projection_params == 349_120

    def test_add_on_trains_the_head_of_a_copy(self, digits):
        x, y = digits
        recipe = recipes.get("reference_mnist")
        base = recipe.build_base()
        before = [to_numpy(w) for w in base.weights]
        tac = recipe.build_tac(base)
        assert tac.base_model is not base
        assert tac.train_base  # so the head's cross-entropy is trained
        trainable = {v.path for v in tac.trainable_variables}
        assert {"logits/kernel", "logits/bias"} <= trainable
        assert not any(path.startswith("conv_") for path in trainable)
        assert all(layer.trainable for layer in base.layers)
        quiet_fit(tac, x[:16], y[:16], batch_size=8, epochs=1, verbose=0)
        for weight, old in zip(base.weights, before):
            np.testing.assert_array_equal(to_numpy(weight), old)
        copy = tac.base_model
        for name in ("conv_1", "conv_4"):
            np.testing.assert_array_equal(
                to_numpy(copy.get_layer(name).kernel),
                to_numpy(base.get_layer(name).kernel),
            )
        assert not np.array_equal(
            to_numpy(copy.get_layer("logits").kernel),
            to_numpy(base.get_layer("logits").kernel),
        )

    def test_from_scratch_trains_the_base(self, digits):
        x, y = digits
        recipe = recipes.get("reference_mnist")
        base = recipe.build_base()
        tac = recipe.build_tac(base, train_base=True)
        assert tac.base_model is base
        trainable = {v.path for v in tac.trainable_variables}
        assert "conv_1/kernel" in trainable
        before = to_numpy(base.get_layer("conv_1").kernel)
        quiet_fit(tac, x[:16], y[:16], batch_size=8, epochs=1, verbose=0)
        assert not np.array_equal(
            before, to_numpy(base.get_layer("conv_1").kernel)
        )

    def test_short_fit_with_the_augmentation_applied(self, digits, tmp_path):
        x, y = digits
        recipe = recipes.get("reference_mnist")
        tac = recipe.build_tac(recipe.build_base())
        kwargs = recipe.fit_kwargs
        layer = kwargs["augmentation"]
        seen = []

        def augment(batch):
            out = layer(batch, training=True)
            seen.append((np.asarray(batch), to_numpy(out)))
            return out

        kwargs.update(augmentation=augment, epochs=2)
        history = quiet_fit(tac, x, y, verbose=0, **kwargs)
        # Every training batch (Keras may also peek at the first one).
        assert len(seen) >= 2 * len(x) // 8
        assert all(batch.shape == (8, 28, 28, 1) for batch, _ in seen)
        for original, augmented in seen:
            assert augmented.shape == original.shape
            assert not np.allclose(augmented, original)
            assert augmented.min() >= 0.0 and augmented.max() <= 1.0
        assert np.isfinite(history.history["loss"]).all()
        assert history.history["learning_rate"] == pytest.approx([0.1, 0.1])
        path = os.path.join(tmp_path, "mnist.keras")
        tac.save(path)
        restored = keras.saving.load_model(path)
        assert isinstance(restored.optimizer, recipes.CoupledSGD)
        assert restored.optimizer.coupled_weight_decay == 5e-5
        np.testing.assert_allclose(
            restored.predict(x[:4], verbose=0)["profile"],
            tac.predict(x[:4], verbose=0)["profile"],
            atol=1e-6,
        )
        # The frozen convolutions stay frozen after loading.
        assert not restored.base_model.get_layer("conv_1").trainable


class TestMnistAugmentation:
    def test_reference_settings(self):
        pipeline = recipes.mnist_augmentation(seed=0)
        crop, rotation, noise = pipeline.layers
        assert isinstance(crop, recipes.RandomResizedCrop)
        assert crop.scale == MNIST_FACTS["crop_scale"]
        np.testing.assert_allclose(crop.ratio, MNIST_FACTS["crop_ratio"])
        assert crop.interpolation == "bilinear"
        assert isinstance(rotation, keras.layers.RandomRotation)
        degrees = MNIST_FACTS["rotation_degrees"]
        np.testing.assert_allclose(
            np.array(rotation.factor) * 360.0, (-degrees, degrees)
        )
        assert rotation.fill_mode == "constant"
        assert rotation.fill_value == 0.0
        assert rotation.interpolation == "nearest"
        assert isinstance(noise, recipes.RandomUniformNoise)
        assert noise.probability == MNIST_FACTS["noise_probability"]
        assert noise.levels == MNIST_FACTS["noise_levels"]
        assert noise.value_range == (0.0, 1.0)

    def test_crop_box_area_and_ratio(self):
        # An image whose pixels hold their own coordinates shows the box.
        size = 28
        rows, columns = np.meshgrid(
            np.arange(size), np.arange(size), indexing="ij"
        )
        image = np.stack([rows, columns], axis=-1).astype("float32")
        batch = np.repeat(image[None], 64, axis=0)
        layer = recipes.RandomResizedCrop(
            scale=(0.5, 1.0), interpolation="nearest", seed=0
        )
        out = to_numpy(layer(batch))
        heights = out[..., 0].max(axis=(1, 2)) - out[..., 0].min(axis=(1, 2))
        widths = out[..., 1].max(axis=(1, 2)) - out[..., 1].min(axis=(1, 2))
        area = (heights + 1) * (widths + 1) / size**2
        assert area.min() >= 0.5 - 0.08 and area.max() <= 1.0
        ratio = (widths + 1) / (heights + 1)
        assert ratio.min() >= 0.75 - 0.1 and ratio.max() <= 4 / 3 + 0.1
        assert area.std() > 0.05  # boxes differ per image
        # Each output row reads one input row: a crop, not a warp.
        assert (np.diff(out[..., 0], axis=2) == 0).all()

    def test_crop_identity_and_inference(self):
        x = np.random.default_rng(0).random((3, 28, 28, 1), "float32")
        full = recipes.RandomResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0))
        np.testing.assert_allclose(to_numpy(full(x)), x, atol=1e-6)
        layer = recipes.RandomResizedCrop(seed=1)
        np.testing.assert_array_equal(to_numpy(layer(x, training=False)), x)

    def test_noise_levels_and_probability(self):
        x = np.zeros((400, 16, 16, 1), "float32")
        out = to_numpy(recipes.RandomUniformNoise(seed=0)(x))
        peaks = out.max(axis=(1, 2, 3))
        noisy = peaks > 0
        assert 0.4 < noisy.mean() < 0.6
        assert out.min() >= 0.0
        # Each noisy image's amplitude is one of the four levels.
        levels = np.array(MNIST_FACTS["noise_levels"])
        nearest = levels[np.searchsorted(levels, peaks[noisy])]
        assert (peaks[noisy] <= nearest).all()
        assert (peaks[noisy] > nearest - 0.04).all()
        assert set(np.round(nearest, 1)) == set(levels)

    def test_noise_clips_always(self):
        x = np.full((8, 2, 2, 1), 1.5, "float32")
        layer = recipes.RandomUniformNoise(probability=0.0, seed=0)
        np.testing.assert_array_equal(to_numpy(layer(x)), np.ones_like(x))
        np.testing.assert_array_equal(to_numpy(layer(x, training=False)), x)

    @pytest.mark.parametrize(
        "layer",
        [
            recipes.RandomResizedCrop(scale=(0.5, 1.0), seed=3),
            recipes.RandomUniformNoise(levels=(0.2,), seed=3),
        ],
    )
    def test_config_round_trip_and_save(self, layer, tmp_path):
        config = layer.get_config()
        assert type(layer).from_config(config).get_config() == config
        model = keras.Sequential([keras.Input((28, 28, 1)), layer])
        path = os.path.join(tmp_path, "augmentation.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        assert restored.layers[0].get_config() == config

    def test_seeded(self):
        x = np.random.default_rng(0).random((4, 28, 28, 1), "float32")
        a = to_numpy(recipes.mnist_augmentation(seed=4)(x, training=True))
        b = to_numpy(recipes.mnist_augmentation(seed=4)(x, training=True))
        np.testing.assert_allclose(a, b)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="Invalid `scale`"):
            recipes.RandomResizedCrop(scale=(0.5, 2.0))
        with pytest.raises(ValueError, match="Invalid `levels`"):
            recipes.RandomUniformNoise(levels=())
        with pytest.raises(ValueError, match="batch of images"):
            recipes.RandomResizedCrop()(np.ones((4, 28), "float32"))


class TestCoupledSGD:
    def torch_sgd(self, weights, gradients, learning_rates, clip):
        """PyTorch's clip_grad_norm_ then SGD(momentum=0.9,
        weight_decay=0.01), in NumPy."""
        weights = [w.copy() for w in weights]
        buffers = [np.zeros_like(w) for w in weights]
        for step, grads in enumerate(gradients):
            norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
            scale = min(1.0, clip / norm)
            for i, g in enumerate(grads):
                d = g * scale + 0.01 * weights[i]
                buffers[i] = 0.9 * buffers[i] + d
                weights[i] = weights[i] - learning_rates[step] * buffers[i]
        return weights

    def test_matches_pytorch_sgd(self):
        rng = np.random.default_rng(0)
        weights = [rng.normal(size=(3, 2)), rng.normal(size=(2,))]
        gradients = [
            [rng.normal(size=w.shape) * s for w in weights]
            for s in (5.0, 0.1, 3.0, 0.2)
        ]
        learning_rates = [0.1, 0.1, 0.01, 0.01]
        optimizer = recipes.CoupledSGD(
            0.1, momentum=0.9, weight_decay=0.01, global_clipnorm=1.0
        )
        variables = [keras.Variable(w.astype("float32")) for w in weights]
        optimizer.build(variables)
        for step, grads in enumerate(gradients):
            optimizer.learning_rate = learning_rates[step]
            optimizer.apply(
                [ops.convert_to_tensor(g.astype("float32")) for g in grads],
                variables,
            )
        expected = self.torch_sgd(weights, gradients, learning_rates, 1.0)
        for variable, value in zip(variables, expected):
            np.testing.assert_allclose(
                to_numpy(variable), value, rtol=1e-5, atol=1e-6
            )

    def test_config_round_trip(self):
        optimizer = recipes.CoupledSGD(
            0.1, momentum=0.9, weight_decay=5e-5, global_clipnorm=1.0
        )
        config = keras.optimizers.serialize(optimizer)
        restored = keras.optimizers.deserialize(config)
        assert isinstance(restored, recipes.CoupledSGD)
        assert restored.coupled_weight_decay == 5e-5
        assert restored.weight_decay is None
        assert restored.get_config() == optimizer.get_config()

    def test_excluded_variables_do_not_decay(self):
        optimizer = recipes.CoupledSGD(1.0, weight_decay=0.5)
        decayed = keras.Variable(np.ones(2, "float32"), name="kernel")
        kept = keras.Variable(np.ones(2, "float32"), name="bias")
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        zero = ops.zeros((2,))
        optimizer.apply([zero, zero], [decayed, kept])
        np.testing.assert_allclose(to_numpy(decayed), [0.5, 0.5])
        np.testing.assert_allclose(to_numpy(kept), [1.0, 1.0])

    def test_no_nesterov(self):
        with pytest.raises(ValueError, match="Nesterov"):
            recipes.CoupledSGD(nesterov=True)


class TestWideResNet:
    def test_structure_of_a_small_one(self):
        # WRN-10-1: one pre-activation block per group.
        model = recipes.wide_resnet(depth=10, width_multiplier=1, seed=0)
        kinds = {layer.name: type(layer).__name__ for layer in model.layers}
        assert kinds["stem_conv"] == "Conv2D"
        assert kinds["stem_bn"] == "BatchNormalization"
        assert kinds["stem_relu"] == "ReLU"
        block = [
            layer.name
            for layer in model.layers
            if layer.name.startswith("group_2_block_1")
        ]
        assert block == [
            "group_2_block_1_bn_1",
            "group_2_block_1_relu_1",
            "group_2_block_1_conv_1",
            "group_2_block_1_dropout",
            "group_2_block_1_bn_2",
            "group_2_block_1_relu_2",
            "group_2_block_1_conv_2_pad",
            "group_2_block_1_conv_2",
            "group_2_block_1_shortcut",
        ]
        # The stride is on the second convolution, padded on both sides as
        # PyTorch's padding=1.
        pad = model.get_layer("group_2_block_1_conv_2_pad")
        assert pad.padding == ((1, 1), (1, 1))
        conv = model.get_layer("group_2_block_1_conv_2")
        assert conv.strides == (2, 2) and conv.padding == "valid"
        assert model.get_layer("group_2_block_1_conv_1").strides == (1, 1)
        shortcut = model.get_layer("group_2_block_1_shortcut")
        assert shortcut.kernel.shape == (1, 1, 16, 32)
        assert shortcut.strides == (2, 2) and shortcut.use_bias
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                assert layer.momentum == 1 - CIFAR_FACTS["bn_momentum_pytorch"]
                assert layer.epsilon == CIFAR_FACTS["bn_epsilon"]
            if isinstance(layer, keras.layers.Conv2D):
                assert layer.use_bias
            if isinstance(layer, keras.layers.Dropout):
                assert layer.rate == CIFAR_FACTS["dropout"]
        # No BatchNorm-ReLU after the last group: the head pools the sum.
        assert kinds["group_3_output"] == "Add"
        assert model.get_layer("pool").input is (
            model.get_layer("group_3_output").output
        )

    def test_strided_convolution_pads_both_sides(self):
        # A 1-channel identity kernel picks input pixel (2i - 1, 2j - 1):
        # PyTorch's padding=1, stride=2 (Keras's "same" would pick 2i).
        model = recipes.wide_resnet(depth=10, width_multiplier=1)
        pad = model.get_layer("group_2_block_1_conv_2_pad")
        conv = model.get_layer("group_2_block_1_conv_2")
        x = np.random.default_rng(0).random((1, 16, 16, 32), "float32")
        kernel = np.zeros((3, 3, 32, 32), "float32")
        kernel[0, 0, 0, 0] = 1.0
        conv.kernel.assign(kernel)
        conv.bias.assign(np.zeros(32, "float32"))
        out = to_numpy(conv(pad(x)))
        padded = np.pad(x[0, :, :, 0], 1)
        np.testing.assert_allclose(out[0, :, :, 0], padded[0:-2:2, 0:-2:2])

    def test_parameter_count_of_wrn_28_10_by_hand(self):
        def conv(cin, cout, k):
            return k * k * cin * cout + cout

        def bn(c):
            return 4 * c  # gamma, beta, moving mean, moving variance

        total = conv(3, 16, 3) + bn(16)
        cin = 16
        for width in CIFAR_FACTS["tap_widths"]:
            for block in range(4):  # (28 - 4) / 6
                total += bn(cin) + conv(cin, width, 3)
                total += bn(width) + conv(width, width, 3)
                if block == 0:
                    total += conv(cin, width, 1)
                cin = width
        total += 640 * 10 + 10
        # The built model has this count: checked where WRN-28-10 is built
        # (once, in the slow test below: 36.5M parameters take seconds).
        assert total == WRN_28_10_PARAMETERS

    def test_bad_depth(self):
        with pytest.raises(ValueError, match="6 n \\+ 4"):
            recipes.wide_resnet(depth=27)

    def test_add_on_runs_the_base_in_inference_mode(self):
        recipe = recipes.get("reference_cifar10")
        base = recipe.build_base(depth=10, width_multiplier=1)
        tac = recipe.build_tac(base)
        assert not tac.train_base
        assert tac.tap_layers == [
            "group_1_output",
            "group_2_output",
            "group_3_output",
        ]
        x = np.random.default_rng(0).random((4, 32, 32, 3), "float32")
        # Dropout and BatchNorm off: the training forward equals inference.
        training = to_numpy(tac(x, training=True)["base_output"])
        np.testing.assert_allclose(
            training, to_numpy(base(x, training=False)), atol=1e-5
        )


# WRN-28-10's parameters, counted by hand in
# `test_parameter_count_of_wrn_28_10_by_hand`.
WRN_28_10_PARAMETERS = 36_504_746


class TestReferenceCifar10:
    def test_settings(self):
        recipe = recipes.get("reference_cifar10")
        # A narrow, shallow base with the recipe's head (the full
        # WRN-28-10 is built in the slow test below).
        base = recipe.build_base(depth=10, width_multiplier=10)
        tac = recipe.build_tac(base)
        check_recipe_settings(recipe, tac, CIFAR_FACTS)
        assert tac.tap_layers == [
            "group_1_output",
            "group_2_output",
            "group_3_output",
        ]
        for tap, width, size in zip(
            tac.tap_model.outputs[1:],
            CIFAR_FACTS["tap_widths"],
            CIFAR_FACTS["tap_sizes"],
        ):
            assert tuple(tap.shape[1:]) == (size, size, width)
        for profile in tac.head.profile_layers:
            assert len(profile.projector.dense_layers) == 3
        # No epoch count in the reference: at least its last milestone.
        assert recipe.epochs > CIFAR_FACTS["milestones"][-1]

    def test_augmentation_settings(self):
        pipeline = recipes.cifar10_augmentation(seed=0)
        flip, rand_augment = pipeline.layers
        assert isinstance(flip, keras.layers.RandomFlip)
        assert flip.mode == "horizontal"
        assert isinstance(rand_augment, keras.layers.RandAugment)
        facts = CIFAR_FACTS["rand_augment"]
        assert rand_augment.num_ops == facts["num_ops"]
        assert rand_augment.magnitude == facts["magnitude"]
        assert rand_augment.magnitude_std == facts["magnitude_std"]
        assert rand_augment.probability == 0.5
        assert rand_augment.value_range == (0.0, 1.0)
        x = np.random.default_rng(0).random((4, 32, 32, 3), "float32")
        draws = rand_augment.get_random_transformation(x)
        # m20 with mstd 0.5 is clipped to timm's strongest level.
        np.testing.assert_allclose(to_numpy(draws["levels"]), 1.0)
        assert to_numpy(draws["operations"]).shape == (2, 4)

    @pytest.mark.slow
    def test_wrn_28_10_builds_trains_one_step_and_reloads(self, tmp_path):
        recipe = recipes.get("reference_cifar10")
        base = recipe.build_base(num_classes=10)
        assert base.count_params() == WRN_28_10_PARAMETERS
        tac = recipe.build_tac(base)
        x = np.random.default_rng(0).random((8, 32, 32, 3), "float32")
        y = np.arange(8) % 10
        kwargs = recipe.fit_kwargs
        kwargs.update(epochs=1, batch_size=8)
        before = to_numpy(
            tac.head.profile_layers[0].projector.dense_layers[0].kernel
        )
        history = quiet_fit(tac, x, y, verbose=0, **kwargs)
        assert np.isfinite(history.history["loss"]).all()
        after = to_numpy(
            tac.head.profile_layers[0].projector.dense_layers[0].kernel
        )
        assert not np.array_equal(before, after)
        path = os.path.join(tmp_path, "wrn.keras")
        tac.save(path)
        restored = keras.saving.load_model(path)
        np.testing.assert_allclose(
            restored.predict(x, verbose=0)["profile"],
            tac.predict(x, verbose=0)["profile"],
            atol=1e-5,
        )


class TestReferenceRandAugment:
    def test_output_range_and_config(self, tmp_path):
        layer = recipes.ReferenceRandAugment(
            value_range=(0, 1), magnitude=20, magnitude_std=0.5, seed=0
        )
        x = np.random.default_rng(0).random((8, 32, 32, 3), "float32")
        out = to_numpy(layer(x))
        assert out.shape == x.shape
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert not np.allclose(out, x)
        np.testing.assert_array_equal(to_numpy(layer(x, training=False)), x)
        config = layer.get_config()
        clone = recipes.ReferenceRandAugment.from_config(config)
        assert clone.get_config() == config
        model = keras.Sequential([keras.Input((32, 32, 3)), layer])
        path = os.path.join(tmp_path, "rand_augment.keras")
        model.save(path)
        assert keras.saving.load_model(path).layers[0].get_config() == config

    def test_probability_zero_is_identity(self):
        layer = recipes.ReferenceRandAugment(
            value_range=(0, 1), probability=0.0, seed=0
        )
        x = np.random.default_rng(0).random((4, 16, 16, 3), "float32")
        np.testing.assert_allclose(to_numpy(layer(x)), x, atol=1e-5)

    def test_operations_against_pil(self):
        from PIL import Image as image_module
        from PIL import ImageEnhance
        from PIL import ImageOps

        rng = np.random.default_rng(0)
        image = (rng.random((32, 32, 3)) * 255).astype("uint8")
        rows, columns = np.mgrid[0:32, 0:32]
        smooth = np.stack(
            [
                128 + 100 * np.sin(columns / 5.0),
                128 + 100 * np.cos(rows / 4.0),
                128 + 50 * np.sin((rows + columns) / 6.0),
            ],
            axis=-1,
        ).astype("uint8")
        grey = (128, 128, 128)
        bilinear = image_module.BILINEAR
        exact = {
            "auto_contrast": ImageOps.autocontrast,
            "equalize": ImageOps.equalize,
            "invert": ImageOps.invert,
            "posterize": lambda p: ImageOps.posterize(p, 4),
            "solarize": lambda p: ImageOps.solarize(p, 256),
            "solarize_add": lambda p: p.point(
                [min(255, i + 110) if i < 128 else i for i in range(256)] * 3
            ),
            "color": lambda p: ImageEnhance.Color(p).enhance(1.9),
            "contrast": lambda p: ImageEnhance.Contrast(p).enhance(1.9),
            "brightness": lambda p: ImageEnhance.Brightness(p).enhance(1.9),
            "sharpness": lambda p: ImageEnhance.Sharpness(p).enhance(1.9),
        }
        geometric = {
            "rotate": lambda p: p.rotate(30, bilinear, fillcolor=grey),
            "shear_x": lambda p: p.transform(
                p.size, 0, (1, 0.3, 0, 0, 1, 0), bilinear, fillcolor=grey
            ),
            "translate_y": lambda p: p.transform(
                p.size, 0, (1, 0, 0, 0, 1, 0.45 * 32), bilinear, fillcolor=grey
            ),
        }
        layer = recipes.ReferenceRandAugment(value_range=(0, 255))
        ones = ops.ones((1,))
        for name, reference in {**exact, **geometric}.items():
            source = smooth if name in geometric else image
            expected = np.asarray(
                reference(image_module.fromarray(source)), "float32"
            )
            ours = to_numpy(
                getattr(layer, f"_{name}")(
                    ops.convert_to_tensor(source[None].astype("float32")),
                    ones,
                    ones,
                )
            )[0]
            error = np.abs(ours - expected)
            if name in exact:
                # PIL rounds to 8 bits; we do not.
                assert error.max() <= 1.5, name
            else:
                # Interpolation differs only near the filled border.
                assert error.mean() < 2.0 and (error > 2).mean() < 0.06, name

    def test_inside_tf_data(self):
        import tensorflow as tf

        x = np.random.default_rng(0).random((8, 32, 32, 3), "float32")
        dataset = tf.data.Dataset.from_tensor_slices(x).batch(4)
        dataset = dataset.map(recipes.cifar10_augmentation(seed=0))
        batches = [batch.numpy() for batch in dataset]
        assert [b.shape for b in batches] == [(4, 32, 32, 3)] * 2
        assert all(0.0 <= b.min() and b.max() <= 1.0 for b in batches)
