"""Tests for `keras_tac.attacks`: L-infinity PGD and adversarial training.

Correctness is checked against two independent oracles: a linear model,
whose worst-case L-infinity perturbation is known in closed form (a corner
of the box, along the sign of the weight difference), and, where it is
installed, foolbox's `LinfPGD` (the TAC reference's attack library) on the
same CNN, started from the same point.
"""

import keras
import numpy as np
import pytest
from conftest import make_cnn

import keras_tac
from keras_tac import attacks
from keras_tac.src.attacks import adversarial_training
from keras_tac.src.attacks import pgd as pgd_lib

BACKEND = keras.backend.backend()
TAPS = ["conv_1", "conv_2", "features"]
# Measured on the 8x8-digits CNN of the fixtures (its clean accuracy is
# 0.65-0.95 by backend): PGD at epsilon 0.3 brings it to 0.00-0.02.
ATTACKED_ACCURACY_FLOOR = 0.1


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return (
        (x[:1000], y[:1000]),
        (x[1000:1200], y[1000:1200]),
        (
            x[1200:1296],
            y[1200:1296],
        ),
    )


@pytest.fixture(scope="module")
def cnn(trained_cnn_weights):
    """The fixtures' trained CNN, shared by tests that only attack it (one
    compiled gradient per module on JAX)."""
    model = make_cnn()
    model.set_weights(trained_cnn_weights)
    return model


@pytest.fixture(scope="module")
def tac(data, trained_cnn_weights):
    """A TAC model on the fixtures' trained CNN, trained and calibrated."""
    keras.utils.set_random_seed(0)
    base = make_cnn()
    base.set_weights(trained_cnn_weights)
    model = keras_tac.TACModel(base, tap_layers=TAPS)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y = data[0]
    model.fit(x[:640], y[:640], epochs=4, batch_size=64, verbose=0)
    model.calibrate(*data[1], target_coverage=0.95, verbose=0)
    return model


def accuracy(model, x, y):
    output = model.predict(x, verbose=0)
    if isinstance(output, dict):
        output = output["base_output"]
    return float(np.mean(np.argmax(output, axis=-1) == y))


class TestPGD:
    def test_attack_succeeds_on_an_undefended_model(self, tac, data):
        x, y = data[2]
        assert accuracy(tac, x, y) > 0.5
        x_adv = attacks.pgd(tac, x, y, epsilon=0.3)
        assert accuracy(tac, x_adv, y) <= ATTACKED_ACCURACY_FLOOR
        # Attacking TAC's own prediction defeats it too.
        x_adv = attacks.pgd(tac, x, y, epsilon=0.3, target="tac")
        out = tac.predict(x_adv, verbose=0)
        assert np.mean(out["tac_prediction"] == y) <= ATTACKED_ACCURACY_FLOOR

    @pytest.mark.parametrize(
        "dtype, epsilon, clip",
        [
            ("float32", 0.3, (0.0, 1.0)),
            ("float64", 1 / 3, None),
            ("float16", 0.1, (-0.5, 2)),
            ("float32", 1 / 3, (0.0, 1.0)),
        ],
    )
    def test_ball_and_clip_hold_exactly(self, cnn, dtype, epsilon, clip):
        rng = np.random.default_rng(1)
        x = rng.uniform(0.0, 1.0, size=(40, 8, 8, 1)).astype(dtype)
        x[:5] = 0.0
        x[5:10] = 1.0
        y = rng.integers(0, 10, size=40)
        x_adv = attacks.pgd(
            cnn, x, y, epsilon=epsilon, clip=clip, batch_size=16
        )
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
        assert isinstance(x_adv, np.ndarray)
        # In the dtype's own arithmetic and exactly (float64).
        assert np.abs(x_adv - x).max() <= epsilon
        exact = np.abs(x_adv.astype(np.float64) - x.astype(np.float64))
        assert exact.max() <= epsilon
        if clip is not None:
            assert x_adv.min() >= clip[0] and x_adv.max() <= clip[1]
        # The attack uses its budget: most pixels sit on the ball's edge.
        assert np.mean(exact > 0.9 * epsilon) > 0.3

    def test_projection_rounds_into_the_ball(self):
        rng = np.random.default_rng(0)
        for dtype in ("float16", "float32", "float64"):
            x = rng.uniform(0, 1, size=10_000).astype(dtype)
            attacked = rng.uniform(-1, 2, size=10_000)
            for epsilon in (0.1, 0.3, 1 / 3, 0.7):
                result = pgd_lib.project(attacked, x, epsilon, (0.0, 1.0))
                assert result.dtype == x.dtype
                assert np.abs(result - x).max() <= epsilon
                exact = result.astype(np.float64) - x.astype(np.float64)
                assert np.abs(exact).max() <= epsilon
                assert result.min() >= 0.0 and result.max() <= 1.0

    def test_epsilon_zero_returns_the_inputs(self, cnn, data):
        x, y = data[2]
        x_adv = attacks.pgd(cnn, x[:8], y[:8], epsilon=0.0)
        np.testing.assert_array_equal(x_adv, x[:8])

    def test_seed_reproduces(self, tac, data):
        x, y = data[2][0][:24], data[2][1][:24]
        first = attacks.pgd(tac, x, y, epsilon=0.2, steps=3, seed=3)
        again = attacks.pgd(tac, x, y, epsilon=0.2, steps=3, seed=3)
        other = attacks.pgd(tac, x, y, epsilon=0.2, steps=3, seed=4)
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, other)

    def test_labels_as_probabilities(self, cnn, data):
        x, y = data[2][0][:16], data[2][1][:16]
        indices = attacks.pgd(cnn, x, y, steps=3)
        one_hot = attacks.pgd(cnn, x, np.eye(10)[y], steps=3)
        np.testing.assert_array_equal(indices, one_hot)

    def test_adaptive_attack_keeps_confidence_high(self, tac, data):
        x, y = data[2]
        base = attacks.pgd(tac, x, y, epsilon=0.3, random_start=False)
        adaptive = attacks.pgd(
            tac, x, y, epsilon=0.3, target="adaptive", random_start=False
        )
        base_out = tac.predict_with_rejection(base, verbose=0)
        adaptive_out = tac.predict_with_rejection(adaptive, verbose=0)
        assert adaptive_out["confidence"].mean() > (
            base_out["confidence"].mean() + 1.0
        )
        # Wrong and accepted: what the adaptive attack is after.
        fooled = adaptive_out["accepted"] & (adaptive_out["prediction"] != y)
        base_fooled = base_out["accepted"] & (base_out["prediction"] != y)
        assert fooled.mean() > base_fooled.mean()

    def test_adaptive_attack_on_tac_distance_score(self, cnn, data):
        model = keras_tac.TACModel(cnn, tap_layers=TAPS, score="distance")
        x, y = data[2][0][:16], data[2][1][:16]
        x_adv = attacks.pgd(model, x, y, target="adaptive", steps=3)
        assert np.abs(x_adv - x).max() <= 0.3
        # The attack moved the inputs and made the base head wrong where it
        # was right (an attack that returns its input fails here).
        assert np.mean(np.abs(x_adv - x) > 0.01) > 0.5
        clean = np.argmax(cnn.predict(x, verbose=0), axis=1) == y
        attacked = np.argmax(cnn.predict(x_adv, verbose=0), axis=1) == y
        assert attacked.sum() < clean.sum() / 2

    def test_differentiable_outputs_match_the_model(self, tac, data):
        x = data[2][0][:32]
        expected = tac.predict(x, verbose=0)
        outputs = pgd_lib.differentiable_outputs(
            tac, keras.ops.convert_to_tensor(x)
        )
        for key in ("base_output", "distances", "confidence", "prediction"):
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(outputs[key]),
                expected[key],
                rtol=1e-4,
                atol=1e-3,
                err_msg=key,
            )

    def test_differentiable_confidence_without_the_knn_distance(
        self, tac, data
    ):
        # The attacked confidence follows the layer when `calibrate` left
        # the kNN distance out.
        x = keras.ops.convert_to_tensor(data[2][0][:32])
        weights = tac.confidence_layer.signal_weights
        calibrated = keras.ops.convert_to_numpy(weights)
        try:
            weights.assign([1.0, 1.0, 1.0])
            with_knn = pgd_lib.differentiable_outputs(tac, x)["confidence"]
            weights.assign([1.0, 1.0, 0.0])
            expected = tac.predict(data[2][0][:32], verbose=0)["confidence"]
            outputs = pgd_lib.differentiable_outputs(tac, x)
        finally:
            weights.assign(calibrated)
        confidence = keras.ops.convert_to_numpy(outputs["confidence"])
        np.testing.assert_allclose(confidence, expected, rtol=1e-4, atol=1e-3)
        with_knn = keras.ops.convert_to_numpy(with_knn)
        assert not np.allclose(confidence, with_knn, atol=1e-2)

    def test_returns_numpy_for_backend_tensors(self, cnn, data):
        x, y = data[2][0][:8], data[2][1][:8]
        x_adv = attacks.pgd(cnn, keras.ops.convert_to_tensor(x), y, steps=2)
        assert isinstance(x_adv, np.ndarray) and x_adv.shape == x.shape


class TestBadInput:
    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"epsilon": -0.1}, "Invalid `epsilon`: expected a finite number"),
            ({"epsilon": float("nan")}, "Invalid `epsilon`"),
            ({"steps": 0}, "Invalid `steps`: expected a positive int"),
            ({"steps": 2.5}, "Received: steps=2.5"),
            ({"step_size": 0.0}, "Invalid `step_size`: expected a finite"),
            ({"target": "head"}, "Invalid `target`: expected one of"),
            ({"clip": (1.0, 0.0)}, "Invalid `clip`: expected a pair"),
            ({"clip": "unit"}, "Invalid `clip`"),
            ({"batch_size": 0}, "Invalid `batch_size`"),
            ({"seed": -1}, "Invalid `seed`"),
            ({"random_start": "yes"}, "Invalid `random_start`"),
            ({"confidence_weight": -1.0}, "Invalid `confidence_weight`"),
        ],
    )
    def test_invalid_settings(self, tac, data, kwargs, message):
        x, y = data[2][0][:4], data[2][1][:4]
        with pytest.raises(ValueError, match="Received") as info:
            attacks.pgd(tac, x, y, **kwargs)
        assert message in str(info.value)

    def test_labels_out_of_range(self, tac, data):
        x = data[2][0][:4]
        with pytest.raises(ValueError, match=r"expected whole numbers in \[0"):
            attacks.pgd(tac, x, [0, 1, 2, 10])
        with pytest.raises(ValueError, match="expected 4 labels"):
            attacks.pgd(tac, x, [0, 1])

    def test_inputs_outside_the_clip_range(self, tac, data):
        x, y = data[2][0][:4] * 2.0, data[2][1][:4]
        with pytest.raises(ValueError, match=r"within the `clip` range") as e:
            attacks.pgd(tac, x, y)
        assert "Received values in [0.0, 2.0]" in str(e.value)
        # Its own range is fine.
        attacks.pgd(tac, x, y, clip=(0.0, 2.0), steps=1)

    def test_non_finite_inputs(self, tac, data):
        x, y = data[2][0][:4].copy(), data[2][1][:4]
        x[1, 0, 0, 0] = np.nan
        with pytest.raises(ValueError, match="1 sample.* NaN or infinite"):
            attacks.pgd(tac, x, y, clip=None)
        x[1, 0, 0, 0] = np.inf
        with pytest.raises(ValueError, match="NaN or infinite"):
            attacks.pgd(tac, x, y, clip=None)

    def test_wrong_shape_and_dtype(self, tac, data):
        y = data[2][1][:4]
        with pytest.raises(ValueError, match="expected shape"):
            attacks.pgd(tac, np.zeros((4, 9, 9, 1), "float32"), y)
        with pytest.raises(TypeError, match="floating-point"):
            attacks.pgd(tac, np.zeros((4, 8, 8, 1), "uint8"), y)

    def test_plain_model_only_for_base_target(self, cnn, data):
        x, y = data[2][0][:4], data[2][1][:4]
        with pytest.raises(ValueError, match="needs a keras_tac.TACModel"):
            attacks.pgd(cnn, x, y, target="tac")
        with pytest.raises(TypeError, match="expected a keras_tac.TACModel"):
            attacks.pgd(lambda a: a, x, y)


def linear_model(weights, bias):
    model = keras.Sequential(
        [keras.Input((weights.shape[0],)), keras.layers.Dense(2)]
    )
    model.set_weights([weights, bias])
    return model


class TestLinearOracle:
    """For two classes and logits `x W + b`, the cross-entropy of class `y`
    grows as the margin `x (w_y - w_o)` shrinks, so its maximum over the
    box `|a - x| <= eps` (within `clip`) is the corner
    `clip(x - eps * sign(w_y - w_o))`, whatever the start point."""

    def setup_method(self):
        rng = np.random.default_rng(0)
        self.weights = rng.normal(size=(32, 2)).astype("float32")
        self.bias = rng.normal(size=2).astype("float32")
        self.x = rng.uniform(0.2, 0.8, size=(50, 32)).astype("float32")
        self.y = rng.integers(0, 2, size=50)
        self.model = linear_model(self.weights, self.bias)

    def oracle(self, epsilon, clip=None):
        difference = self.weights[:, self.y].T - self.weights[:, 1 - self.y].T
        corner = self.x.astype(np.float64) - epsilon * np.sign(difference)
        if clip is not None:
            corner = np.clip(corner, *clip)
        return corner

    @pytest.mark.parametrize("clip", [None, (0.0, 1.0)])
    def test_reaches_the_worst_case_corner(self, clip):
        epsilon = 0.3
        x_adv = attacks.pgd(
            self.model,
            self.x,
            self.y,
            epsilon=epsilon,
            random_start=False,
            clip=clip,
        )
        np.testing.assert_allclose(x_adv, self.oracle(epsilon, clip), atol=1e-6)

    def test_from_a_random_start(self):
        # Steps of 2 eps / steps reach the corner from anywhere in the box.
        epsilon, steps = 0.25, 5
        x_adv = attacks.pgd(
            self.model,
            self.x,
            self.y,
            epsilon=epsilon,
            steps=steps,
            step_size=2 * epsilon / steps,
            clip=None,
            seed=7,
        )
        np.testing.assert_allclose(x_adv, self.oracle(epsilon), atol=1e-6)

    def test_worst_case_margin(self):
        # The margin at the corner is the closed-form minimum.
        epsilon = 0.1
        x_adv = attacks.pgd(
            self.model, self.x, self.y, epsilon=epsilon, random_start=False
        )
        logits = x_adv @ self.weights + self.bias
        rows = np.arange(len(self.y))
        margin = logits[rows, self.y] - logits[rows, 1 - self.y]
        difference = self.weights[:, self.y].T - self.weights[:, 1 - self.y].T
        clean = (self.x @ self.weights + self.bias)[rows, self.y] - (
            self.x @ self.weights + self.bias
        )[rows, 1 - self.y]
        expected = clean - epsilon * np.abs(difference).sum(axis=1)
        np.testing.assert_allclose(margin, expected, rtol=1e-4, atol=1e-4)


def foolbox_model(model):
    import foolbox

    if BACKEND == "tensorflow":
        return foolbox.TensorFlowModel(model, bounds=(0, 1))
    if BACKEND == "torch":
        return foolbox.PyTorchModel(model, bounds=(0, 1), device="cpu")
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def logits(x):
        return model.stateless_call(trainable, non_trainable, x)[0]

    return foolbox.JAXModel(logits, bounds=(0, 1))


# foolbox (the reference's attack library) is in the `test` extra.
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_matches_foolbox_linf_pgd(cnn, data):
    """Same model, same start (no random start), same steps: our PGD and
    foolbox's `LinfPGD` agree pixel for pixel, up to the sign of gradients
    that are zero up to rounding."""
    import foolbox

    x, y = data[2]
    ours = attacks.pgd(cnn, x, y, epsilon=0.3, random_start=False)
    attack = foolbox.attacks.LinfPGD(
        abs_stepsize=0.03, steps=10, random_start=False
    )
    # int64 labels: eagerpy's mixed-dtype comparison on TensorFlow uses
    # `np.find_common_type`, which NumPy 2 removed.
    labels = keras.ops.convert_to_tensor(y.astype("int64"))
    _, theirs, _ = attack(
        foolbox_model(cnn),
        keras.ops.convert_to_tensor(x),
        labels,
        epsilons=0.3,
    )
    theirs = keras.ops.convert_to_numpy(theirs)
    assert np.mean(np.abs(ours - theirs) <= 1e-5) > 0.99
    assert accuracy(cnn, ours, y) == pytest.approx(
        accuracy(cnn, theirs, y), abs=0.02
    )


@pytest.mark.filterwarnings("ignore:TACModel.fit. TAC.s nearest-code accuracy")
class TestAdversarialTraining:
    def test_addon_leaves_the_base_bit_identical(self, data, trained_cnn):
        (x, y), (x_val, y_val), (x_test, _) = data
        before = [w.copy() for w in trained_cnn.get_weights()]
        predictions = trained_cnn.predict(x_test, verbose=0)
        model = keras_tac.TACModel(trained_cnn, tap_layers=TAPS)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        head = [w.copy() for w in model.head.get_weights()]
        adversarial = attacks.AdversarialTraining(epsilon=0.3, steps=2)
        # Two epochs with validation: on JAX, the first step of each epoch
        # reads weights that the trainer keeps outside the variables.
        history = adversarial.fit(
            model,
            x[:256],
            y[:256],
            epochs=2,
            batch_size=64,
            validation_data=(x_val[:64], y_val[:64]),
            verbose=0,
        )
        assert len(history.history["loss"]) == 2
        for old, new in zip(before, trained_cnn.get_weights()):
            np.testing.assert_array_equal(old, new)
        np.testing.assert_array_equal(
            predictions, trained_cnn.predict(x_test, verbose=0)
        )
        assert any(
            not np.array_equal(old, new)
            for old, new in zip(head, model.head.get_weights())
        )

    def test_joint_training_trains_the_base(self, data):
        (x, y), _, _ = data
        keras.utils.set_random_seed(0)
        base = make_cnn()
        before = [w.copy() for w in base.get_weights()]
        model = keras_tac.TACModel(base, tap_layers=TAPS, train_base=True)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        attacks.AdversarialTraining(steps=2).fit(
            model, x[:128], y[:128], epochs=1, batch_size=64, verbose=0
        )
        assert not np.array_equal(before[0], base.get_weights()[0])

    def test_batches_attack_the_first_part(self, tac, data):
        x, y = data[2][0][:10], data[2][1][:10]
        adversarial = attacks.AdversarialTraining(epsilon=0.2, steps=2)
        batches = adversarial_training.AdversarialBatches(
            None, tac, adversarial, seed=0
        )
        attacked, labels, weights = batches.transform((x, y, np.ones(10)))
        assert attacked.dtype == x.dtype and attacked.shape == x.shape
        np.testing.assert_array_equal(labels, y)
        np.testing.assert_array_equal(attacked[5:], x[5:])
        assert np.abs(attacked[:5] - x[:5]).max() <= 0.2
        assert np.all(np.abs(attacked[:5] - x[:5]).max(axis=(1, 2, 3)) > 0)
        assert adversarial.num_attacked(1) == 1
        assert adversarial.num_attacked(7) == 3
        # Once training ends, the same batches come back clean.
        batches.active = False
        np.testing.assert_array_equal(batches.transform((x, y))[0], x)

    def test_training_data_from_arrays(self, tac, data):
        (x, y), _, _ = data
        adversarial = attacks.AdversarialTraining(steps=1, seed=0)
        batches, labels, kwargs = adversarial.training_data(
            tac, x[:100], y[:100], {"batch_size": 32, "epochs": 2}
        )
        assert labels is None
        assert kwargs["epochs"] == 2 and kwargs["shuffle"] is False
        assert "batch_size" not in kwargs
        assert isinstance(
            kwargs["callbacks"][-1], adversarial_training.AttackCallback
        )
        assert len(batches) == 4
        x_batch, y_batch = batches[0]
        assert x_batch.shape == (32, 8, 8, 1) and y_batch.shape == (32,)

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"fraction": 0.0}, "Invalid `fraction`"),
            ({"fraction": 1.5}, "Invalid `fraction`"),
            ({"epsilon": -1}, "Invalid `epsilon`"),
            ({"steps": 0}, "Invalid `steps`"),
            ({"target": "x"}, "Invalid `target`"),
            ({"seed": 2**31}, "Invalid `seed`"),
        ],
    )
    def test_invalid_settings(self, kwargs, message):
        with pytest.raises(ValueError, match="Received"):
            attacks.AdversarialTraining(**kwargs)
        with pytest.raises(ValueError, match=message.replace("`", ".")):
            attacks.AdversarialTraining(**kwargs)

    def test_bad_training_data(self, tac, data):
        (x, y), _, _ = data
        adversarial = attacks.AdversarialTraining(steps=1)
        with pytest.raises(ValueError, match="validation_split"):
            adversarial.training_data(tac, x, y, {"validation_split": 0.1})
        batches = adversarial_training.AdversarialBatches(
            None, tac, adversarial, seed=0
        )
        with pytest.raises(ValueError, match="labelled batches"):
            batches.transform((x[:4],))
        with pytest.raises(ValueError, match=r"labels for `adversarial"):
            batches.transform((x[:4], [0, 1, 2, 11]))

    def test_tf_dataset_is_refused(self, tac, data):
        import tensorflow as tf

        (x, y), _, _ = data
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
        with pytest.raises(ValueError, match="as_numpy_iterator"):
            attacks.AdversarialTraining().training_data(tac, dataset)

    def test_tac_fit_option(self, data, monkeypatch):
        (x, y), _, _ = data
        attacked = []
        transform = adversarial_training.AdversarialBatches.transform

        def counting_transform(self, batch):
            result = transform(self, batch)
            attacked.append(self.active)
            return result

        monkeypatch.setattr(
            adversarial_training.AdversarialBatches,
            "transform",
            counting_transform,
        )
        base = make_cnn()
        model = keras_tac.TACModel(base, tap_layers=TAPS)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        adversarial = attacks.AdversarialTraining(steps=1, seed=0)
        with pytest.raises(ValueError, match="cache_features=True"):
            model.fit(
                x[:64], y[:64], adversarial=adversarial, cache_features=True
            )
        with pytest.raises(ValueError, match="augmentation"):
            model.fit(
                x[:64],
                y[:64],
                adversarial=adversarial,
                augmentation=lambda b: b,
            )
        with pytest.raises(ValueError, match="AdversarialTraining"):
            model.fit(x[:64], y[:64], adversarial=0.3)
        head = [w.copy() for w in model.head.get_weights()]
        history = model.fit(
            x[:128],
            y[:128],
            adversarial=adversarial,
            epochs=1,
            batch_size=64,
            verbose=0,
        )
        assert len(history.history["loss"]) == 1
        # Both training batches attacked (then clean ones for statistics).
        assert attacked[:2] == [True, True]
        assert any(
            not np.array_equal(old, new)
            for old, new in zip(head, model.head.get_weights())
        )

    def test_config_round_trip(self):
        adversarial = attacks.AdversarialTraining(
            epsilon=0.1, steps=4, fraction=0.25, target="tac", seed=3
        )
        config = adversarial.get_config()
        again = attacks.AdversarialTraining.from_config(config)
        assert again.get_config() == config
        assert "fraction=0.25" in repr(adversarial)
