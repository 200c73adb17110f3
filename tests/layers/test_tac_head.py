"""Tests of `TACHead`, `class_scores` and `score_of` against NumPy."""

import os

import keras
import numpy as np
import pytest
from conftest import to_numpy
from test_layers import run_layer_test

from keras_tac import codes as codes_lib
from keras_tac import layers

NUM_CLASSES = 3
NUM_SLICES = 4  # The block width for 3 classes (Hadamard order 4).
SCORE_KINDS = ("distance", "nearest_distance", "inner_product")


def make_taps(batch=6, seed=0):
    """A spatial tap `(batch, 5, 5, 8)` and a flat tap `(batch, 16)`."""
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(batch, 5, 5, 8)).astype("float32"),
        rng.normal(size=(batch, 16)).astype("float32"),
    ]


def make_head(**kwargs):
    kwargs.setdefault("num_classes", NUM_CLASSES)
    kwargs.setdefault("num_slices", NUM_SLICES)
    return layers.TACHead(**kwargs)


def numpy_outputs(head, outputs):
    """Profile, codes, L1 distances, inner products and nearest codes in
    NumPy from the head's profile."""
    profile = to_numpy(outputs["profile"]).astype("float64")
    codes = to_numpy(head.codes).astype("float64")
    distances = np.abs(profile[:, None, :] - codes[None]).sum(-1)
    distances /= codes.shape[1]
    inner = profile @ codes.T
    nearest = np.argmax(np.sign(profile) @ codes.T, axis=1)
    return profile, codes, distances, inner, nearest


def numpy_class_scores(kind, distances, inner):
    if kind == "distance":
        return -distances
    if kind == "nearest_distance":
        return np.repeat(-distances.min(axis=1, keepdims=True), 3, axis=1)
    return inner


class TestClassScores:
    @pytest.mark.parametrize("kind", SCORE_KINDS)
    def test_against_numpy(self, kind):
        rng = np.random.default_rng(1)
        distances = rng.uniform(0, 2, size=(5, 3)).astype("float32")
        inner = rng.normal(size=(5, 3)).astype("float32")
        scores = to_numpy(layers.class_scores(kind, distances, inner))
        assert scores.shape == (5, 3) and scores.dtype == np.float32
        np.testing.assert_allclose(
            scores, numpy_class_scores(kind, distances, inner), atol=1e-6
        )

    def test_inner_product_needs_inner_products(self):
        with pytest.raises(ValueError, match="inner_products=None"):
            layers.class_scores("inner_product", np.zeros((2, 3), "float32"))

    def test_bad_kind(self):
        with pytest.raises(ValueError, match="Invalid `score`.*'margin'"):
            layers.class_scores("margin", np.zeros((2, 3), "float32"))


class TestScoreOf:
    def test_against_fancy_indexing(self):
        rng = np.random.default_rng(2)
        # Negative and positive scores: a masked sum must not add others.
        scores = rng.normal(size=(7, 5)).astype("float32")
        classes = rng.integers(0, 5, size=7)
        got = to_numpy(layers.score_of(scores, classes))
        np.testing.assert_array_equal(got, scores[np.arange(7), classes])

    def test_inside_a_functional_model(self):
        scores = keras.Input((4,))
        classes = keras.Input((), dtype="int32")
        model = keras.Model([scores, classes], layers.score_of(scores, classes))
        values = np.arange(12, dtype="float32").reshape(3, 4)
        got = model.predict([values, np.array([3, 0, 2])], verbose=0)
        np.testing.assert_array_equal(got, [3.0, 4.0, 10.0])


class TestTACHead:
    def test_config_round_trip(self):
        head = make_head(
            projection="large",
            slicing="random",
            reduction="median",
            score="inner_product",
            temperature=3.0,
            trainable_temperature=True,
            seed=7,
            name="head",
        )
        config = head.get_config()
        clone = layers.TACHead.from_config(config)
        assert clone.get_config() == config
        taps = make_taps()
        head(taps)
        clone(taps)
        np.testing.assert_array_equal(to_numpy(clone.codes), head.codes)
        assert float(to_numpy(clone.temperature)) == 3.0
        assert clone.temperature.trainable

    @pytest.mark.parametrize("slicing", ["uniform", "random"])
    def test_profile_is_the_concatenation_of_profiles(self, slicing):
        taps = make_taps()
        head = make_head(slicing=slicing, projection="small", seed=5)
        profile = to_numpy(head(taps)["profile"])
        # Independent layers with the seeds the head documents (one per
        # tap: seed + index).
        expected = np.concatenate(
            [
                to_numpy(
                    layers.ActivationProfile(
                        num_slices=NUM_SLICES,
                        projection="small",
                        slicing=slicing,
                        seed=5 + index,
                    )(tap)
                )
                for index, tap in enumerate(taps)
            ],
            axis=1,
        )
        assert profile.shape == (6, 2 * NUM_SLICES)
        np.testing.assert_allclose(profile, expected, rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("score", SCORE_KINDS)
    def test_outputs_against_numpy(self, score):
        head = make_head(score=score)
        outputs = head(make_taps())
        _, _, distances, inner, nearest = numpy_outputs(head, outputs)
        np.testing.assert_allclose(
            to_numpy(outputs["distances"]), distances, rtol=1e-5, atol=1e-5
        )
        scores = numpy_class_scores(score, distances, inner)
        np.testing.assert_allclose(
            to_numpy(outputs["scores"]), scores, rtol=1e-5, atol=1e-5
        )
        prediction = to_numpy(outputs["tac_prediction"])
        assert prediction.dtype == np.int32
        np.testing.assert_array_equal(prediction, nearest)
        np.testing.assert_allclose(
            to_numpy(outputs["tac_confidence"]),
            scores[np.arange(len(scores)), nearest],
            rtol=1e-5,
            atol=1e-5,
        )

    def test_pooled_outputs_are_spatial_means(self):
        taps = make_taps()
        pooled = make_head()(taps)["pooled"]
        assert len(pooled) == 2
        np.testing.assert_allclose(
            to_numpy(pooled[0]), taps[0].mean(axis=(1, 2)), atol=1e-6
        )
        np.testing.assert_array_equal(to_numpy(pooled[1]), taps[1])

    def test_pooled_taps_give_the_same_outputs(self):
        taps = make_taps()
        head = make_head()
        raw = head(taps)
        pooled = head([taps[0].mean(axis=(1, 2)), taps[1]])
        for key in ("profile", "distances", "scores", "tac_confidence"):
            np.testing.assert_allclose(
                to_numpy(pooled[key]), to_numpy(raw[key]), atol=1e-5
            )
        np.testing.assert_array_equal(
            to_numpy(pooled["tac_prediction"]), to_numpy(raw["tac_prediction"])
        )

    @pytest.mark.parametrize(
        "num_classes,num_slices,block_width",
        [(3, 4, 4), (3, 16, 4), (10, 16, 16), (10, 8, 8)],
    )
    def test_codes_are_seeded_class_codes(
        self, num_classes, num_slices, block_width
    ):
        taps = [np.ones((2, 3, 3, 16), "float32"), np.ones((2, 16), "float32")]
        heads = [
            layers.TACHead(num_classes, num_slices=num_slices, seed=seed)
            for seed in (5, 5, 6)
        ]
        for head in heads:
            head(taps)
        codes = [to_numpy(head.codes) for head in heads]
        expected, width = codes_lib.class_codes(
            num_classes, 2, max_block_width=num_slices, seed=5
        )
        assert width == block_width == heads[0].block_width
        assert codes[0].shape == (num_classes, 2 * block_width)
        np.testing.assert_array_equal(codes[0], expected)
        np.testing.assert_array_equal(codes[1], codes[0])
        assert not np.array_equal(codes[2], codes[0])

    def test_temperature_weight(self):
        fixed, free = (
            make_head(temperature=2.5),
            make_head(trainable_temperature=True),
        )
        for head in (fixed, free):
            head(make_taps())
        assert float(to_numpy(fixed.temperature)) == 2.5
        assert not fixed.temperature.trainable
        assert free.temperature.trainable
        assert any(w is free.temperature for w in free.trainable_weights)

    def test_wrong_number_of_taps(self):
        head = make_head()
        taps = make_taps()
        head(taps)
        with pytest.raises(ValueError, match="expected 2 tapped tensors"):
            head.call(taps[:1])

    def test_tap_narrower_than_the_code_block(self):
        taps = [np.ones((2, 5, 5, 3), "float32"), np.ones((2, 16), "float32")]
        with pytest.raises(ValueError, match="tap 0 has width 3"):
            make_head()(taps)

    def test_rank_one_tap(self):
        with pytest.raises(ValueError, match="rank 2"):
            make_head().build([(4,)])

    @pytest.mark.parametrize(
        "kwargs,match",
        [
            (dict(score="margin"), "Invalid `score`"),
            (dict(projection="huge"), "Invalid `projection`"),
            (dict(slicing="strided"), "Invalid `slicing`"),
            (dict(reduction="max"), "Invalid `reduction`"),
            (dict(num_classes=1), "Invalid `num_classes`"),
            (dict(num_slices=0), "Invalid `num_slices`"),
            (dict(temperature=0.0), "Invalid `temperature`"),
            (dict(seed=-1), "Invalid `seed`"),
        ],
    )
    def test_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            make_head(**kwargs)

    def test_save_load_in_functional_model(self, tmp_path):
        inputs = keras.Input((6, 6, 3))
        conv = keras.layers.Conv2D(8, 3, name="conv")(inputs)
        flat = keras.layers.Dense(16, name="dense")(
            keras.layers.GlobalAveragePooling2D()(conv)
        )
        head = make_head(score="nearest_distance", slicing="random", seed=3)
        model = keras.Model(inputs, head([conv, flat]))
        # Change the head's weights and temperature, so that a reloaded
        # model that re-initialised them from the seed would differ.
        rng = np.random.default_rng(0)
        for weight in [*head.trainable_weights, head.temperature]:
            value = to_numpy(weight)
            weight.assign(value + rng.uniform(0.5, 1.0, size=value.shape))
        x = rng.normal(size=(4, 6, 6, 3)).astype("float32")
        before = model.predict(x, verbose=0)
        path = os.path.join(tmp_path, "head.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        after = restored.predict(x, verbose=0)
        for key in ("profile", "distances", "scores", "tac_prediction"):
            np.testing.assert_allclose(after[key], before[key], atol=1e-6)
        for a, b in zip(before["pooled"], after["pooled"]):
            np.testing.assert_allclose(a, b, atol=1e-6)
        restored_head = restored.layers[-1]
        assert isinstance(restored_head, layers.TACHead)
        np.testing.assert_array_equal(
            to_numpy(restored_head.codes), to_numpy(head.codes)
        )
        np.testing.assert_allclose(
            to_numpy(restored_head.temperature), to_numpy(head.temperature)
        )

    @pytest.mark.parametrize(
        "init_kwargs,num_trainable",
        [
            # Two profile layers, one Dense (kernel, bias) each.
            (dict(), 4),
            (
                dict(
                    score="inner_product",
                    reduction="median",
                    slicing="random",
                    trainable_temperature=True,
                ),
                5,
            ),
        ],
    )
    def test_keras_layer_harness(self, init_kwargs, num_trainable):
        run_layer_test(
            layers.TACHead,
            init_kwargs=dict(
                num_classes=NUM_CLASSES, num_slices=4, **init_kwargs
            ),
            # A spatial tap and a pooled one.
            input_shape=((2, 5, 5, 8), (2, 16)),
            expected_output_shape={
                "pooled": [(2, 8), (2, 16)],
                "profile": (2, 8),
                "distances": (2, NUM_CLASSES),
                "scores": (2, NUM_CLASSES),
                "tac_prediction": (2,),
                "tac_confidence": (2,),
            },
            expected_output_dtype={
                "pooled": ["float32", "float32"],
                "profile": "float32",
                "distances": "float32",
                "scores": "float32",
                "tac_prediction": "int32",
                "tac_confidence": "float32",
            },
            expected_num_trainable_weights=num_trainable,
            # The slice indices of the two taps, the codes and (unless
            # trainable) the temperature.
            expected_num_non_trainable_weights=8 - num_trainable,
            # The harness trains on the layer's outputs as targets, through
            # `tf.data.Dataset.from_generator` on TensorFlow, which cannot
            # hold the Python list of `"pooled"` (a limitation of tf.data,
            # not of the layer: TACModel trains TACHead on every backend).
            run_training_check=keras.backend.backend() != "tensorflow",
            run_mixed_precision_check=True,
        )
