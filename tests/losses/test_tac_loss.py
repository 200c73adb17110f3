import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_tac import codes as codes_lib
from keras_tac import layers
from keras_tac import losses


def reference_loss(
    labels, profile, codes, temperature, ce_weight, reg_weight, ce_codes=None
):
    """The TAC objective written out in NumPy, per sample; the
    cross-entropy against `ce_codes` (the noisy codes) when given."""
    one_hot = np.eye(len(codes))[labels] if labels.ndim == 1 else labels
    ce_codes = codes if ce_codes is None else ce_codes
    distances = np.abs(profile[:, None, :] - ce_codes[None]).mean(axis=-1)
    logits = -np.clip(temperature, 1e-4, 50) * distances
    logits = logits - logits.max(axis=1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    cross_entropy = -(one_hot * log_softmax).sum(axis=1)
    regression = np.abs(profile - one_hot @ codes).mean(axis=1)
    return ce_weight * cross_entropy + reg_weight * regression


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    codes, _ = codes_lib.class_codes(6, num_blocks=2, seed=0)
    profile = rng.normal(size=(9, codes.shape[1])).astype("float32")
    labels = rng.integers(0, 6, size=9)
    return codes.astype("float32"), profile, labels


class TestTacLoss:
    @pytest.mark.parametrize("temperature", [0.0, 1.0, 10.0, 100.0])
    def test_against_numpy(self, problem, temperature):
        codes, profile, labels = problem
        got = ops.convert_to_numpy(
            losses.tac_loss(labels, profile, codes, temperature, 1.0, 10.0)
        )
        expected = reference_loss(
            labels, profile, codes, temperature, 1.0, 10.0
        )
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

    def test_label_forms_agree(self, problem):
        codes, profile, labels = problem
        a = losses.tac_loss(labels, profile, codes)
        b = losses.tac_loss(labels[:, None], profile, codes)
        c = losses.tac_loss(np.eye(6, dtype="float32")[labels], profile, codes)
        np.testing.assert_allclose(
            ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-6
        )
        np.testing.assert_allclose(
            ops.convert_to_numpy(a), ops.convert_to_numpy(c), rtol=1e-6
        )

    def test_soft_labels_mix_codes(self, problem):
        codes, profile, _ = problem
        soft = np.zeros((9, 6), "float32")
        soft[:, 0], soft[:, 3] = 0.3, 0.7
        got = ops.convert_to_numpy(losses.tac_loss(soft, profile, codes))
        expected = reference_loss(soft, profile, codes, 10.0, 1.0, 10.0)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

    def test_zero_at_code(self, problem):
        codes, _, _ = problem
        loss = losses.tac_loss(
            np.arange(6), codes * 1.0, codes, temperature=50.0
        )
        assert np.all(ops.convert_to_numpy(loss) < 1e-3)

    def test_code_noise_flips_codes_in_the_cross_entropy_only(self, problem):
        codes, profile, labels = problem
        # The flips of `seed=1`, drawn as the loss draws them.
        flips = (
            ops.convert_to_numpy(keras.random.uniform(codes.shape, seed=1))
            < 0.5
        )
        assert 0.25 < flips.mean() < 0.75
        noisy_codes = np.where(flips, -codes, codes)
        noisy = ops.convert_to_numpy(
            losses.tac_loss(labels, profile, codes, code_noise=0.5, seed=1)
        )
        expected = reference_loss(
            labels, profile, codes, 10.0, 1.0, 10.0, ce_codes=noisy_codes
        )
        np.testing.assert_allclose(noisy, expected, rtol=1e-4, atol=1e-4)
        clean = reference_loss(labels, profile, codes, 10.0, 1.0, 10.0)
        assert np.abs(expected - clean).max() > 0.1
        # Without the cross-entropy, the noise changes nothing.
        np.testing.assert_allclose(
            ops.convert_to_numpy(
                losses.tac_loss(
                    labels,
                    profile,
                    codes,
                    cross_entropy_weight=0.0,
                    code_noise=0.5,
                    seed=1,
                )
            ),
            reference_loss(labels, profile, codes, 10.0, 0.0, 10.0),
            rtol=1e-5,
            atol=1e-5,
        )

    def test_whole_float_labels_match_integers(self, problem):
        codes, profile, labels = problem
        loss = losses.TACLoss(codes)
        expected = ops.convert_to_numpy(losses.tac_loss(labels, profile, codes))
        expected_mean = float(loss(labels, profile))
        for form in (
            labels.astype("float64"),
            labels.astype("float32"),
            labels.astype("float32")[:, None],
            labels.astype(float).tolist(),
        ):
            np.testing.assert_array_equal(
                ops.convert_to_numpy(losses.tac_loss(form, profile, codes)),
                expected,
            )
            assert float(loss(form, profile)) == expected_mean

    @pytest.mark.parametrize("bad", [2.5, np.nan])
    def test_non_whole_labels_are_errors(self, problem, bad):
        codes, profile, labels = problem
        labels = labels.astype("float64")
        labels[4] = bad
        for compute in (
            lambda y: losses.tac_loss(y, profile, codes),
            lambda y: losses.TACLoss(codes)(y, profile),
        ):
            with pytest.raises(ValueError) as error:
                compute(labels)
            message = str(error.value)
            assert "whole numbers in [0, 5]" in message, message
            assert "Received 1 invalid label(s)" in message, message

    def test_finite_on_extreme_profiles(self, problem):
        codes, profile, labels = problem
        loss = losses.tac_loss(labels, profile * 1e6, codes)
        assert np.all(np.isfinite(ops.convert_to_numpy(loss)))

    def test_bad_label_shape(self, problem):
        codes, profile, _ = problem
        with pytest.raises(ValueError, match="Invalid labels"):
            losses.tac_loss(np.zeros((9, 4)), profile, codes)

    def test_gradient_is_finite_and_pulls_toward_code(self, problem):
        codes, profile, labels = problem
        layer = keras.layers.Dense(codes.shape[1])
        model = keras.Sequential([keras.Input((codes.shape[1],)), layer])
        model.compile(
            optimizer=keras.optimizers.SGD(0.05), loss=losses.TACLoss(codes)
        )
        before = model.evaluate(profile, labels, verbose=0)
        model.fit(profile, labels, epochs=20, batch_size=9, verbose=0)
        after = model.evaluate(profile, labels, verbose=0)
        assert np.isfinite(after) and after < before


class TestTACLossClass:
    def test_matches_function(self, problem):
        codes, profile, labels = problem
        loss = losses.TACLoss(codes, temperature=5.0, regression_weight=2.0)
        expected = reference_loss(labels, profile, codes, 5.0, 1.0, 2.0).mean()
        np.testing.assert_allclose(
            float(loss(labels, profile)), expected, rtol=1e-4
        )

    def test_objective_applies_code_noise_in_training_only(self, problem):
        codes, profile, labels = problem
        generator = keras.random.SeedGenerator(7)
        replay = keras.random.SeedGenerator(7)
        loss = losses.TACLoss(codes, code_noise=0.3, seed=generator)
        one_hot = np.eye(6, dtype="float32")[labels]
        flips = (
            ops.convert_to_numpy(keras.random.uniform(codes.shape, seed=replay))
            < 0.3
        )
        assert flips.any()
        training = ops.convert_to_numpy(
            loss.objective(one_hot, profile, training=True)
        )
        inference = ops.convert_to_numpy(
            loss.objective(one_hot, profile, training=False)
        )
        np.testing.assert_allclose(
            training,
            reference_loss(
                labels,
                profile,
                codes,
                10.0,
                1.0,
                10.0,
                ce_codes=np.where(flips, -codes, codes),
            ),
            rtol=1e-4,
            atol=1e-4,
        )
        np.testing.assert_allclose(
            inference,
            reference_loss(labels, profile, codes, 10.0, 1.0, 10.0),
            rtol=1e-4,
            atol=1e-4,
        )
        assert np.abs(training - inference).max() > 0.1
        # The compiled-loss path (`call`) is the clean objective.
        np.testing.assert_allclose(
            float(loss(labels, profile)), inference.mean(), rtol=1e-5
        )

    def test_config_round_trip(self, problem):
        codes, _, _ = problem
        loss = losses.TACLoss(codes, temperature=3.0)
        clone = losses.TACLoss.from_config(loss.get_config())
        assert clone.get_config() == loss.get_config()
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(loss)
        )
        assert isinstance(restored, losses.TACLoss)

    def test_bad_arguments(self, problem):
        codes, profile, labels = problem
        with pytest.raises(ValueError, match="temperature"):
            losses.TACLoss(codes, temperature=100.0)
        with pytest.raises(ValueError, match="codes"):
            losses.TACLoss(np.zeros((3, 4)))
        with pytest.raises(ValueError, match=r"\(batch, 16\)"):
            losses.TACLoss(codes)(labels, profile[:, :5])

    def test_in_a_functional_model(self, tmp_path):
        """The layers and the loss compose with the functional API."""
        codes, width = codes_lib.class_codes(3, num_blocks=1, seed=0)
        inputs = keras.Input((6, 6, 8))
        profile = layers.ActivationProfile(num_slices=width)(inputs)
        model = keras.Model(inputs, profile)
        model.compile(optimizer="adam", loss=losses.TACLoss(codes))
        x = (
            np.random.default_rng(0)
            .normal(size=(12, 6, 6, 8))
            .astype("float32")
        )
        y = np.arange(12) % 3
        model.fit(x, y, epochs=1, verbose=0)
        path = os.path.join(tmp_path, "m.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        np.testing.assert_allclose(
            restored.predict(x, verbose=0),
            model.predict(x, verbose=0),
            atol=1e-6,
        )
        assert isinstance(restored.loss, losses.TACLoss)
