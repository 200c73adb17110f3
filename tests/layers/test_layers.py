"""Tests of the profile layers: pooling, projection, slicing and reduction,
and their composition, each against a NumPy reference."""

import os

import keras
import numpy as np
import pytest
from conftest import to_numpy
from keras.src import testing as keras_testing

from keras_tac import layers


def input_gradient(function, x):
    """The gradient of `sum(function(x))` with respect to `x`, by the
    backend's own autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(function(x))
        return tape.gradient(total, x).numpy()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: jax.numpy.sum(function(v)))(x))
    import torch

    x = torch.tensor(x, requires_grad=True)
    function(x).sum().backward()
    return x.grad.numpy()


class _KerasHarness(keras_testing.TestCase):
    """Keras's own layer test case, run from pytest tests."""

    def runTest(self):  # A unittest.TestCase needs a test method.
        pass


def run_layer_test(layer_cls, **kwargs):
    """Keras's `TestCase.run_layer_test`: config and serialization round
    trips, build, symbolic and eager calls (output shapes and dtypes
    checked), a compiled training step and, unless the caller turns it off,
    the mixed precision check: under `"mixed_float16"` the eager outputs
    have the dtypes of `compute_output_spec` and the float weights stay
    float32. (Keras skips that check on PyTorch without CUDA; the
    cross-backend test in tests/test_mixed_precision.py covers it there.)
    """
    harness = _KerasHarness()
    harness.setUp()
    try:
        harness.run_layer_test(layer_cls, **kwargs)
    finally:
        harness.doCleanups()


def round_trip(layer, tmp_path, inputs):
    """Saves a one-layer model in .keras format, reloads it, and returns the
    outputs before and after."""
    model = keras.Sequential([keras.Input(inputs.shape[1:]), layer])
    path = os.path.join(tmp_path, "layer.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    return to_numpy(model(inputs)), to_numpy(restored(inputs))


class TestTapPooling:
    @pytest.mark.parametrize(
        "shape", [(3, 5), (3, 4, 5), (3, 4, 6, 5), (2, 2, 3, 4, 5)]
    )
    def test_mean_over_middle_axes(self, shape):
        x = np.random.default_rng(0).normal(size=shape).astype("float32")
        expected = x.reshape(shape[0], -1, shape[-1]).mean(axis=1)
        np.testing.assert_allclose(
            to_numpy(layers.TapPooling()(x)), expected, atol=1e-6
        )

    def test_rejects_rank_one(self):
        with pytest.raises(ValueError, match="rank 2 or more"):
            layers.TapPooling()(np.ones((3,), "float32"))

    def test_config(self):
        layer = layers.TapPooling(name="p")
        assert layers.TapPooling.from_config(layer.get_config()).name == "p"

    @pytest.mark.parametrize(
        "input_shape,output_shape", [((2, 7), (2, 7)), ((2, 3, 4, 5), (2, 5))]
    )
    def test_keras_layer_harness(self, input_shape, output_shape):
        run_layer_test(
            layers.TapPooling,
            init_kwargs={},
            input_shape=input_shape,
            expected_output_shape=output_shape,
            expected_output_dtype="float32",
            expected_num_trainable_weights=0,
            expected_num_non_trainable_weights=0,
            run_mixed_precision_check=True,
        )


class TestTapProjection:
    @pytest.mark.parametrize(
        "projection,depth",
        [("none", 0), ("small", 1), ("large", 2), ("very_large", 3)],
    )
    def test_shapes_and_depth(self, projection, depth):
        x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
        layer = layers.TapProjection(projection)
        y = to_numpy(layer(x))
        assert y.shape == (4, 6)
        assert len(layer.dense_layers) == depth
        # NumPy reference: Dense, then ReLU between Dense layers.
        expected = x
        for index, dense in enumerate(layer.dense_layers):
            if index:
                expected = np.maximum(expected, 0)
            expected = expected @ to_numpy(dense.kernel) + to_numpy(dense.bias)
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)

    def test_bad_projection(self):
        with pytest.raises(ValueError, match="Invalid `projection`.*huge"):
            layers.TapProjection("huge")

    def test_seeded_initialization(self):
        a, b = layers.TapProjection(seed=3), layers.TapProjection(seed=3)
        a.build((None, 5))
        b.build((None, 5))
        np.testing.assert_array_equal(
            to_numpy(a.dense_layers[0].kernel),
            to_numpy(b.dense_layers[0].kernel),
        )

    def test_save_load(self, tmp_path):
        x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
        before, after = round_trip(layers.TapProjection("large"), tmp_path, x)
        np.testing.assert_allclose(before, after, atol=1e-6)

    @pytest.mark.parametrize(
        "init_kwargs,num_weights",
        [
            (dict(projection="none"), 0),
            (dict(projection="large"), 4),
            # 5 Dense (kernel, bias) and 3 LayerNormalization (gamma, beta).
            (dict(projection="2x_large", num_slices=4), 16),
        ],
    )
    def test_keras_layer_harness(self, init_kwargs, num_weights):
        run_layer_test(
            layers.TapProjection,
            init_kwargs=init_kwargs,
            input_shape=(2, 8),
            expected_output_shape=(2, 8),
            expected_output_dtype="float32",
            expected_num_trainable_weights=num_weights,
            expected_num_non_trainable_weights=0,
            run_mixed_precision_check=True,
        )


def layer_norm(x, layer):
    """NumPy LayerNormalization with PyTorch's epsilon (1e-5)."""
    mean = x.mean(axis=-1, keepdims=True)
    variance = x.var(axis=-1, keepdims=True)
    normalized = (x - mean) / np.sqrt(variance + 1e-5)
    return normalized * to_numpy(layer.gamma) + to_numpy(layer.beta)


def dense(x, layer):
    return x @ to_numpy(layer.kernel) + to_numpy(layer.bias)


class TestLargeProjections:
    """The reference's "x_large" and "2x_large" projections (ServiceNow/tac
    src/models.py:61-84), layer by layer."""

    def test_x_large_structure(self):
        # LN(d), Linear(d, d), ReLU, Linear(d, d), ReLU, Linear(d, d), LN(d)
        layer = layers.TapProjection("x_large")
        layer.build((None, 12))
        assert [d.units for d in layer.dense_layers] == [12, 12, 12]
        assert len(layer.norm_layers) == 2
        for norm in layer.norm_layers:
            assert norm.epsilon == 1e-5
        # 3 Dense (d*d + d) and 2 LayerNorm (2 d).
        assert layer.count_params() == 3 * (12 * 12 + 12) + 2 * 2 * 12

    def test_2x_large_structure(self):
        # LN, Lin(d,d), ReLU, Lin(d,d), ReLU, LN, Lin(d,S), ReLU,
        # Lin(S,S), ReLU, Lin(S,d), LN
        layer = layers.TapProjection("2x_large", num_slices=4)
        layer.build((None, 12))
        assert [d.units for d in layer.dense_layers] == [12, 12, 4, 4, 12]
        assert [tuple(d.kernel.shape) for d in layer.dense_layers] == [
            (12, 12),
            (12, 12),
            (12, 4),
            (4, 4),
            (4, 12),
        ]
        assert len(layer.norm_layers) == 3
        expected = (
            2 * (12 * 12 + 12) + (12 * 4 + 4) + (4 * 4 + 4) + (4 * 12 + 12)
        ) + 3 * 2 * 12
        assert layer.count_params() == expected

    def randomize_norms(self, layer):
        rng = np.random.default_rng(1)
        for norm in layer.norm_layers:
            norm.gamma.assign(rng.normal(size=norm.gamma.shape))
            norm.beta.assign(rng.normal(size=norm.beta.shape))

    def test_x_large_against_numpy(self):
        x = np.random.default_rng(0).normal(size=(5, 12)).astype("float32")
        layer = layers.TapProjection("x_large", seed=2)
        layer.build(x.shape)
        self.randomize_norms(layer)
        d, n = layer.dense_layers, layer.norm_layers
        expected = layer_norm(x, n[0])
        expected = np.maximum(dense(expected, d[0]), 0)
        expected = np.maximum(dense(expected, d[1]), 0)
        expected = layer_norm(dense(expected, d[2]), n[1])
        np.testing.assert_allclose(
            to_numpy(layer(x)), expected, rtol=1e-4, atol=1e-4
        )

    def test_2x_large_against_numpy(self):
        x = np.random.default_rng(0).normal(size=(5, 12)).astype("float32")
        layer = layers.TapProjection("2x_large", num_slices=4, seed=2)
        layer.build(x.shape)
        self.randomize_norms(layer)
        d, n = layer.dense_layers, layer.norm_layers
        expected = layer_norm(x, n[0])
        expected = np.maximum(dense(expected, d[0]), 0)
        expected = np.maximum(dense(expected, d[1]), 0)
        expected = layer_norm(expected, n[1])
        expected = np.maximum(dense(expected, d[2]), 0)
        expected = np.maximum(dense(expected, d[3]), 0)
        expected = layer_norm(dense(expected, d[4]), n[2])
        y = to_numpy(layer(x))
        assert y.shape == (5, 12)
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)

    def test_2x_large_needs_num_slices(self):
        with pytest.raises(ValueError, match="needs `num_slices`"):
            layers.TapProjection("2x_large")
        with pytest.raises(ValueError, match="num_slices"):
            layers.TapProjection("2x_large", num_slices=0)

    @pytest.mark.parametrize("projection", ["x_large", "2x_large"])
    def test_config_and_seeding(self, projection, tmp_path):
        layer = layers.TapProjection(projection, seed=5, num_slices=3)
        config = layer.get_config()
        assert config["projection"] == projection
        assert config["num_slices"] == 3
        clone = layers.TapProjection.from_config(config)
        assert clone.get_config() == config
        layer.build((None, 9))
        clone.build((None, 9))
        for a, b in zip(layer.dense_layers, clone.dense_layers):
            np.testing.assert_array_equal(
                to_numpy(a.kernel), to_numpy(b.kernel)
            )
        other = layers.TapProjection(projection, seed=6, num_slices=3)
        other.build((None, 9))
        assert not np.array_equal(
            to_numpy(layer.dense_layers[0].kernel),
            to_numpy(other.dense_layers[0].kernel),
        )
        x = np.random.default_rng(0).normal(size=(3, 9)).astype("float32")
        before, after = round_trip(layer, tmp_path, x)
        np.testing.assert_allclose(before, after, atol=1e-6)

    def test_profile_passes_its_slices_to_the_bottleneck(self, tmp_path):
        layer = layers.ActivationProfile(num_slices=4, projection="2x_large")
        x = np.random.default_rng(0).normal(size=(3, 2, 2, 16))
        y = to_numpy(layer(x.astype("float32")))
        assert y.shape == (3, 4)
        assert layer.projector.num_slices == 4
        assert [d.units for d in layer.projector.dense_layers] == [
            16,
            16,
            4,
            4,
            16,
        ]
        before, after = round_trip(layer, tmp_path, x.astype("float32"))
        np.testing.assert_allclose(before, after, atol=1e-6)
        # Other projections need no bottleneck and record none.
        assert (
            layers.ActivationProfile(4, "x_large").projector.num_slices is None
        )

    @pytest.mark.parametrize("projection", ["x_large", "2x_large"])
    def test_tac_head_accepts_them(self, projection):
        head = layers.TACHead(3, num_slices=4, projection=projection)
        taps = [np.ones((2, 3, 3, 8), "float32"), np.ones((2, 16), "float32")]
        outputs = head(taps)
        assert outputs["profile"].shape == (2, 8)
        bottleneck = head.profile_layers[0].projector.dense_layers[2]
        expected_units = 4 if projection == "2x_large" else 8
        assert bottleneck.units == expected_units
        clone = layers.TACHead.from_config(head.get_config())
        assert clone.projection == projection


class TestSliceIndices:
    def test_uniform_is_contiguous(self):
        np.testing.assert_array_equal(
            layers.slice_indices(8, 4), [[0, 1], [2, 3], [4, 5], [6, 7]]
        )

    @pytest.mark.parametrize(
        "width,num_slices", [(10, 3), (64, 16), (7, 7), (100, 16)]
    )
    @pytest.mark.parametrize("slicing", ["uniform", "random"])
    def test_partition_of_channels(self, width, num_slices, slicing):
        indices = layers.slice_indices(width, num_slices, slicing, seed=1)
        used = indices[indices >= 0]
        np.testing.assert_array_equal(np.sort(used), np.arange(width))
        sizes = (indices >= 0).sum(axis=1)
        assert sizes.max() - sizes.min() <= 1

    def test_random_is_seeded(self):
        a = layers.slice_indices(32, 4, "random", seed=1)
        np.testing.assert_array_equal(
            a, layers.slice_indices(32, 4, "random", seed=1)
        )
        assert not np.array_equal(
            a, layers.slice_indices(32, 4, "random", seed=2)
        )

    def test_too_many_slices(self):
        with pytest.raises(
            ValueError, match="no larger than the tapped width 4"
        ):
            layers.slice_indices(4, 5)


# Every reduction and slicing, with equal slices (width 12) and padded ones
# (width 13): they take different paths.
EVERY_SLICING = pytest.mark.parametrize(
    "reduction,slicing,width",
    [
        (reduction, slicing, width)
        for reduction in ("mean", "median")
        for slicing in ("uniform", "random")
        for width in (12, 13)
    ],
)


def four_slices(reduction, slicing, width):
    """Random inputs of `width` channels, a 4-slice `SliceReduce` and its
    slice indices."""
    x = np.random.default_rng(0).normal(size=(5, width)).astype("float32")
    layer = layers.SliceReduce(4, slicing=slicing, reduction=reduction, seed=2)
    return x, layer, layers.slice_indices(width, 4, slicing, seed=2)


class TestSliceReduce:
    @EVERY_SLICING
    def test_against_numpy(self, reduction, slicing, width):
        x, layer, indices = four_slices(reduction, slicing, width)
        y = to_numpy(layer(x))
        reduce = np.mean if reduction == "mean" else np.median
        expected = np.stack(
            [reduce(x[:, row[row >= 0]], axis=1) for row in indices], axis=1
        )
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)

    def test_indices_are_a_saved_weight(self, tmp_path):
        x = np.random.default_rng(0).normal(size=(3, 10)).astype("float32")
        layer = layers.SliceReduce(3, slicing="random", seed=4)
        before, after = round_trip(layer, tmp_path, x)
        np.testing.assert_allclose(before, after, atol=1e-6)
        assert not layer.indices.trainable

    @EVERY_SLICING
    def test_gradient(self, reduction, slicing, width):
        x, layer, indices = four_slices(reduction, slicing, width)
        grad = input_gradient(layer, x)
        assert np.all(np.isfinite(grad))
        for row in indices:
            row = row[row >= 0]
            # Each slice's output moves by 1 when all its channels do.
            np.testing.assert_allclose(grad[:, row].sum(axis=1), 1.0, rtol=1e-5)
            if reduction == "mean":
                np.testing.assert_allclose(grad[:, row], 1.0 / len(row))

    @pytest.mark.parametrize(
        "kwargs,match",
        [
            (dict(num_slices=0), "num_slices"),
            (dict(num_slices=2.5), "num_slices"),
            (dict(slicing="strided"), "slicing"),
            (dict(reduction="max"), "reduction"),
        ],
    )
    def test_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            layers.SliceReduce(**kwargs)

    def test_config_round_trip(self):
        layer = layers.SliceReduce(
            5, slicing="random", reduction="median", seed=9
        )
        clone = layers.SliceReduce.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()

    @pytest.mark.parametrize(
        "init_kwargs,width",
        [
            # Equal slices: the reshape (and gather) paths.
            (dict(num_slices=4), 8),
            (dict(num_slices=4, slicing="random"), 8),
            # Unequal slices (10 channels into 4): the masked paths.
            (dict(num_slices=4), 10),
            (dict(num_slices=4, slicing="random", reduction="median"), 10),
        ],
    )
    def test_keras_layer_harness(self, init_kwargs, width):
        run_layer_test(
            layers.SliceReduce,
            init_kwargs=init_kwargs,
            input_shape=(2, width),
            expected_output_shape=(2, 4),
            expected_output_dtype="float32",
            expected_num_trainable_weights=0,
            # The int32 slice indices.
            expected_num_non_trainable_weights=1,
            run_mixed_precision_check=True,
        )


class TestActivationProfile:
    def test_composition(self):
        x = np.random.default_rng(0).normal(size=(4, 3, 3, 8)).astype("float32")
        layer = layers.ActivationProfile(num_slices=4, projection="small")
        y = to_numpy(layer(x))
        dense = layer.projector.dense_layers[0]
        pooled = x.mean(axis=(1, 2))
        projected = pooled @ to_numpy(dense.kernel) + to_numpy(dense.bias)
        expected = projected.reshape(4, 4, 2).mean(axis=-1)
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)

    def test_too_many_slices_for_tap(self):
        with pytest.raises(ValueError, match="tapped width 8"):
            layers.ActivationProfile(num_slices=16)(np.ones((2, 8), "float32"))

    @pytest.mark.parametrize("projection", ["none", "small"])
    @pytest.mark.parametrize("shape", [(2, 6), (0, 6), (2, 3, 3, 10)])
    def test_wrong_width_after_build(self, projection, shape):
        # `call` runs the sublayers' `call` directly, so the width check
        # must be the profile layer's own (no Dense checks it with "none").
        layer = layers.ActivationProfile(num_slices=4, projection=projection)
        layer(np.ones((2, 8), "float32"))
        with pytest.raises(ValueError, match="expected axis -1 .* value 8"):
            layer(np.ones(shape, "float32"))

    def test_config_and_save(self, tmp_path):
        layer = layers.ActivationProfile(
            6, "very_large", "random", "median", seed=3
        )
        assert (
            layers.ActivationProfile.from_config(
                layer.get_config()
            ).get_config()
            == layer.get_config()
        )
        x = np.random.default_rng(1).normal(size=(3, 5, 12)).astype("float32")
        before, after = round_trip(layer, tmp_path, x)
        np.testing.assert_allclose(before, after, atol=1e-6)

    @pytest.mark.parametrize(
        "init_kwargs,input_shape,num_weights",
        [
            # Pooled (rank 2) and spatial taps; one Dense (kernel, bias).
            (dict(num_slices=4), (2, 12), 2),
            (dict(num_slices=3, slicing="random"), (2, 3, 3, 12), 2),
            (
                dict(num_slices=4, projection="none", reduction="median"),
                (2, 5, 10),
                0,
            ),
        ],
    )
    def test_keras_layer_harness(self, init_kwargs, input_shape, num_weights):
        run_layer_test(
            layers.ActivationProfile,
            init_kwargs=init_kwargs,
            input_shape=input_shape,
            expected_output_shape=(2, init_kwargs["num_slices"]),
            expected_output_dtype="float32",
            expected_num_trainable_weights=num_weights,
            # The int32 slice indices.
            expected_num_non_trainable_weights=1,
            run_mixed_precision_check=True,
        )


class TestCodeMatching:
    def setup_method(self):
        rng = np.random.default_rng(0)
        self.codes = rng.choice([-1, 1], size=(5, 12))
        self.profile = rng.normal(size=(7, 12)).astype("float32") * 2

    def test_distances_against_numpy(self):
        matching = layers.CodeMatching(self.codes)
        expected = np.abs(self.profile[:, None, :] - self.codes[None]).mean(
            axis=-1
        )
        np.testing.assert_allclose(
            to_numpy(matching(self.profile)), expected, rtol=1e-5, atol=1e-5
        )

    def test_inner_products_and_nearest(self):
        matching = layers.CodeMatching(self.codes)
        np.testing.assert_allclose(
            to_numpy(matching.inner_products(self.profile)),
            self.profile @ self.codes.T,
            rtol=1e-5,
            atol=1e-5,
        )
        expected = np.argmax(np.sign(self.profile) @ self.codes.T, axis=1)
        np.testing.assert_array_equal(
            to_numpy(matching.nearest_codes(self.profile)), expected
        )

    def test_float32_under_float16_input(self):
        matching = layers.CodeMatching(self.codes)
        out = matching(self.profile.astype("float16"))
        assert "float32" in str(out.dtype)

    @pytest.mark.parametrize(
        "codes,match",
        [
            (np.ones((1, 4)), "shape"),
            (np.ones(4), "shape"),
            (np.array([[0, 1], [1, 1]]), r"\+1 or -1"),
        ],
    )
    def test_bad_codes(self, codes, match):
        with pytest.raises(ValueError, match=match):
            layers.CodeMatching(codes)

    def test_wrong_profile_width(self):
        with pytest.raises(ValueError, match=r"\(batch, 12\)"):
            layers.CodeMatching(self.codes)(np.ones((2, 11), "float32"))

    def test_config_and_save(self, tmp_path):
        matching = layers.CodeMatching(self.codes, name="m")
        clone = layers.CodeMatching.from_config(matching.get_config())
        np.testing.assert_array_equal(to_numpy(clone.codes), self.codes)
        before, after = round_trip(matching, tmp_path, self.profile)
        np.testing.assert_allclose(before, after)

    def test_keras_layer_harness(self):
        run_layer_test(
            layers.CodeMatching,
            init_kwargs={
                "codes": [[1, 1, -1, -1], [1, -1, 1, -1], [-1, 1, 1, 1]]
            },
            input_shape=(2, 4),
            expected_output_shape=(2, 3),
            expected_output_dtype="float32",
            expected_num_trainable_weights=0,
            # The float32 codes.
            expected_num_non_trainable_weights=1,
            run_mixed_precision_check=True,
        )

    def test_policy_is_always_float32(self):
        # See the "Dtype" paragraph of CodeMatching's docstring.
        for dtype in (None, "float32", "mixed_float16", "mixed_bfloat16"):
            matching = layers.CodeMatching(self.codes, dtype=dtype)
            assert matching.dtype_policy.name == "float32"
            assert matching.compute_dtype == "float32"
            out = matching(self.profile.astype("float16"))
            assert keras.backend.standardize_dtype(out.dtype) == "float32"

    @pytest.mark.slow
    def test_jit_matches_eager(self):
        matching = layers.CodeMatching(self.codes)
        model = keras.Sequential([keras.Input((12,)), matching])
        eager = to_numpy(model(self.profile))
        model.compile(jit_compile=True)
        compiled = model.predict(self.profile, verbose=0)
        np.testing.assert_allclose(eager, compiled, rtol=1e-5, atol=1e-5)
