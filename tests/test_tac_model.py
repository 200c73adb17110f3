import os
import warnings

import keras
import numpy as np
import pytest
from conftest import make_cnn
from keras import ops
from sklearn.metrics import roc_auc_score

import keras_tac
from keras_tac import codes as codes_lib


def weights_of(model):
    return [np.array(ops.convert_to_numpy(w)) for w in model.weights]


def fitted_tac(trained_cnn, digits, epochs=3, **kwargs):
    (x, y), _ = digits
    tac = keras_tac.TACModel(trained_cnn, **kwargs)
    tac.compile(optimizer=keras.optimizers.Adam(1e-2))
    tac.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return tac


class TestConstruction:
    def test_defaults(self):
        tac = keras_tac.TACModel(make_cnn())
        assert tac.tap_layers == ["conv_1", "conv_2", "features"]
        assert tac.num_classes == 10 and tac.head.block_width == 16
        assert tac.codes.shape == (10, 48)
        assert set(np.unique(tac.codes)) == {-1, 1}
        assert tac.min_hamming_distance == 24
        assert tac.threshold is None
        assert not tac.base_outputs_probabilities

    def test_codes_are_seeded(self):
        a = keras_tac.TACModel(make_cnn(), seed=3).codes
        b = keras_tac.TACModel(make_cnn(), seed=3).codes
        c = keras_tac.TACModel(make_cnn(), seed=4).codes
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
        expected, _ = codes_lib.class_codes(10, 3, max_block_width=16, seed=3)
        np.testing.assert_array_equal(a, expected)

    def test_config_round_trip(self):
        tac = keras_tac.TACModel(
            make_cnn(softmax=True),
            tap_layers=["conv_2", "features"],
            num_slices=16,
            projection="large",
            slicing="random",
            reduction="median",
            score="nearest_distance",
            code_noise=0.1,
            seed=5,
        )
        config = tac.get_config()
        clone = keras_tac.TACModel.from_config(config)
        assert clone.get_config() == config
        np.testing.assert_array_equal(clone.codes, tac.codes)
        assert tac.base_outputs_probabilities

    @pytest.mark.parametrize("num_classes", [2, 1000])
    def test_class_count_extremes(self, num_classes):
        inputs = keras.Input((12,))
        h = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
        base = keras.Model(inputs, keras.layers.Dense(num_classes)(h))
        tac = keras_tac.TACModel(base)
        x = np.random.default_rng(0).normal(size=(8, 12)).astype("float32")
        y = np.arange(8) % num_classes
        tac.compile()
        history = tac.fit(x, y, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        assert tac.codes.shape[0] == num_classes
        assert tac.min_hamming_distance > 0
        out = tac.predict(x, verbose=0)
        assert out["distances"].shape == (8, num_classes)

    @pytest.mark.parametrize(
        "kwargs,error,match",
        [
            (dict(tap_layers=["nope"]), ValueError, "Available layers"),
            (dict(tap_layers=["logits"]), ValueError, "output layer"),
            (dict(tap_layers=["conv_1"], num_slices=32, seed=0), None, None),
            (dict(projection="huge"), ValueError, "projection"),
            (dict(score="margin"), ValueError, "score"),
            (dict(temperature=0.0), ValueError, "temperature"),
            (dict(code_noise=1.5), ValueError, "code_noise"),
        ],
    )
    def test_bad_arguments(self, kwargs, error, match):
        if error is None:
            assert (
                keras_tac.TACModel(make_cnn(), **kwargs).head.block_width == 16
            )
            return
        with pytest.raises(error, match=match):
            keras_tac.TACModel(make_cnn(), **kwargs)

    def test_tap_too_narrow_for_codes(self):
        base = make_cnn(num_classes=20)  # 32 code bits needed > conv_1's 16
        with pytest.raises(ValueError, match="'conv_1' has width 16"):
            keras_tac.TACModel(base, tap_layers=["conv_1"], num_slices=32)

    def test_unbuilt_and_subclassed_bases(self):
        with pytest.raises(ValueError, match="not built"):
            keras_tac.TACModel(keras.Sequential([keras.layers.Dense(3)]))
        with pytest.raises(TypeError, match="keras.Model"):
            keras_tac.TACModel(keras.layers.Dense(3))

        class Custom(keras.Model):
            def __init__(self):
                super().__init__()
                self.dense = keras.layers.Dense(3)

            def call(self, x):
                return self.dense(x)

        custom = Custom()
        custom.build((None, 4))
        custom(np.ones((1, 4), "float32"))
        # Built and called, it still has no graph to tap: the error says so
        # rather than asking to build it.
        with pytest.raises(TypeError, match="no graph of layers to tap"):
            keras_tac.TACModel(custom)

    def test_non_classifier_base(self):
        inputs = keras.Input((4,))
        base = keras.Model(inputs, keras.layers.Dense(1)(inputs))
        with pytest.raises(ValueError, match="num_classes >= 2"):
            keras_tac.TACModel(base)


def nested_base(ending, depth=1, sequential=False):
    """A base `(6,) -> features (16) -> head`: the layers of `ending()`,
    inside `depth` levels of nested models (Sequential or Functional)."""

    def head(level):
        if level > depth:
            return ending()
        layers = head(level + 1)
        if sequential:
            model = keras.Sequential([keras.Input((16,)), *layers])
        else:
            inputs = keras.Input((16,))
            outputs = inputs
            for layer in layers:
                outputs = layer(outputs)
            model = keras.Model(inputs, outputs)
        return [model]

    inputs = keras.Input((6,))
    outputs = keras.layers.Dense(16, activation="relu", name="features")(inputs)
    for layer in head(1):
        outputs = layer(outputs)
    return keras.Model(inputs, outputs)


SOFTMAX_ENDINGS = {
    "softmax_layer": lambda: [keras.layers.Dense(3), keras.layers.Softmax()],
    "activation": lambda: [
        keras.layers.Dense(3),
        keras.layers.Activation("softmax"),
    ],
    "dense": lambda: [keras.layers.Dense(3, activation="softmax")],
}
OTHER_ENDINGS = {
    "logits": lambda: [keras.layers.Dense(3)],
    "relu": lambda: [keras.layers.Dense(3), keras.layers.Activation("relu")],
    "dense_relu": lambda: [keras.layers.Dense(3, activation="relu")],
}


class SoftmaxOfItsOwn(keras.layers.Layer):
    """A softmax written outside Keras: nothing in the graph says so."""

    def call(self, inputs):
        return ops.softmax(inputs)


class DenseOfItsOwn(keras.layers.Dense):
    """A custom layer whose `activation` can be read."""


def custom_ending():
    return [keras.layers.Dense(3), SoftmaxOfItsOwn(name="own_softmax")]


def assert_said_explicitly_without_warning(base):
    """`base_output="probabilities"` is taken as said, silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explicit = keras_tac.TACModel(
            base, tap_layers=["features"], base_output="probabilities"
        )
    assert explicit.base_outputs_probabilities


def lambda_ending():
    return [
        keras.layers.Dense(3),
        keras.layers.Lambda(lambda t: ops.softmax(t), name="soft"),
    ]


class TestBaseOutput:
    @pytest.mark.parametrize(
        "depth,sequential", [(0, False), (1, False), (2, False), (1, True)]
    )
    @pytest.mark.parametrize(
        "ending", sorted(SOFTMAX_ENDINGS) + sorted(OTHER_ENDINGS)
    )
    def test_auto_reads_nested_heads(self, ending, depth, sequential):
        endings = {**SOFTMAX_ENDINGS, **OTHER_ENDINGS}
        base = nested_base(endings[ending], depth, sequential)
        x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
        sums = base.predict(x, verbose=0).sum(axis=1)
        # The oracle: whether the base's output rows are probabilities.
        assert np.allclose(sums, 1.0) == (ending in SOFTMAX_ENDINGS)
        tac = keras_tac.TACModel(base, tap_layers=["features"])
        assert tac.base_outputs_probabilities == (ending in SOFTMAX_ENDINGS)

    def test_probabilities_are_the_base_output(self):
        from keras_tac import scores
        from keras_tac.src import export

        base = nested_base(SOFTMAX_ENDINGS["activation"], depth=2)
        tac = keras_tac.TACModel(base, tap_layers=["features"])
        x = np.random.default_rng(0).normal(size=(20, 6)).astype("float32")
        probabilities = base.predict(x, verbose=0)
        msp = scores.compute_scores(
            tac, x, [scores.MaxSoftmaxProbability()], verbose=0
        )["msp"]
        # Not the max of a softmax of the probabilities (near 1/3 here).
        np.testing.assert_allclose(msp, probabilities.max(axis=1), rtol=1e-5)
        served = export.serving_outputs(tac, x, 0.0)
        np.testing.assert_allclose(
            ops.convert_to_numpy(served["probabilities"]),
            probabilities,
            rtol=1e-5,
            atol=1e-6,
        )

    @pytest.mark.parametrize("depth", [0, 1, 2])
    def test_lambda_ending_warns_once(self, depth):
        base = nested_base(lambda_ending, depth)
        with pytest.warns(UserWarning) as record:
            tac = keras_tac.TACModel(base, tap_layers=["features"])
        messages = [
            str(w.message) for w in record if "Lambda" in str(w.message)
        ]
        assert len(messages) == 1 and "base_output=" in messages[0]
        assert not tac.base_outputs_probabilities
        assert_said_explicitly_without_warning(base)

    def test_custom_ending_warns_and_names_its_class(self):
        base = nested_base(custom_ending, depth=1)
        x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
        # The oracle: the base's rows are probabilities, which the graph
        # cannot tell.
        np.testing.assert_allclose(
            base.predict(x, verbose=0).sum(axis=1), 1.0, rtol=1e-5
        )
        with pytest.warns(UserWarning, match="SoftmaxOfItsOwn.*base_output="):
            tac = keras_tac.TACModel(base, tap_layers=["features"])
        assert not tac.base_outputs_probabilities
        assert_said_explicitly_without_warning(base)

    @pytest.mark.parametrize("activation", ["softmax", None])
    def test_custom_layer_with_an_activation_is_read(self, activation):
        base = nested_base(
            lambda: [DenseOfItsOwn(3, activation=activation)], depth=0
        )
        x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
        sums = base.predict(x, verbose=0).sum(axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tac = keras_tac.TACModel(base, tap_layers=["features"])
        assert tac.base_outputs_probabilities == bool(np.allclose(sums, 1.0))
        assert tac.base_outputs_probabilities == (activation == "softmax")


class TestForward:
    def test_scores_against_numpy(self):
        x = np.random.default_rng(0).normal(size=(6, 8, 8, 1)).astype("float32")
        results = {}
        for score in ("distance", "nearest_distance", "inner_product"):
            tac = keras_tac.TACModel(make_cnn(), score=score)
            results[score] = tac.predict(x, verbose=0)
        out = results["distance"]
        codes = tac.codes.astype("float32")
        z = out["profile"]
        distances = np.abs(z[:, None] - codes[None]).mean(axis=-1)
        np.testing.assert_allclose(
            out["distances"], distances, rtol=1e-5, atol=1e-5
        )
        pred = out["prediction"]
        rows = np.arange(len(x))
        np.testing.assert_allclose(
            out["confidence"], -distances[rows, pred], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_array_equal(
            out["tac_prediction"], np.argmax(np.sign(z) @ codes.T, axis=1)
        )
        np.testing.assert_allclose(
            results["nearest_distance"]["confidence"],
            -distances.min(axis=1),
            rtol=1e-5,
            atol=1e-6,
        )
        np.testing.assert_allclose(
            results["inner_product"]["confidence"],
            (z @ codes.T)[rows, pred],
            rtol=1e-4,
            atol=1e-4,
        )
        np.testing.assert_array_equal(
            out["prediction"], np.argmax(out["base_output"], axis=1)
        )

    def test_outputs_do_not_depend_on_training(self):
        # The base runs in inference mode in add-on training and the head
        # has no dropout: the same keys and values in both modes.
        x = np.random.default_rng(1).normal(size=(5, 8, 8, 1)).astype("float32")
        tac = keras_tac.TACModel(make_cnn())
        inference = tac(x)
        training = tac(x, training=True)
        assert (
            set(training)
            == set(inference)
            == {
                "base_output",
                "profile",
                "distances",
                "prediction",
                "confidence",
                "tac_prediction",
                "tac_confidence",
                "input_is_finite",
                # The default score="combined" also returns its signals.
                "confidence_parts",
            }
        )
        for key in training:
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(training[key]),
                keras.ops.convert_to_numpy(inference[key]),
                rtol=1e-6,
                err_msg=key,
            )

    def test_every_label_form_in_a_row(self, trained_cnn, digits):
        _, (x_test, y_test) = digits
        x, y = x_test[:64], y_test[:64]
        tac = keras_tac.TACModel(trained_cnn)
        tac.compile()
        # One model, three label ranks in a row: TensorFlow then traces the
        # step for labels of unknown rank.
        forms = {
            "labels": y,
            "one_hot": np.eye(10, dtype="float32")[y],
            "column": y.reshape(-1, 1),
        }
        results = {
            name: tac.evaluate(x, labels, return_dict=True, verbose=0)
            for name, labels in forms.items()
        }
        expected = (tac.predict(x, verbose=0)["prediction"] == y).mean()
        for name, result in results.items():
            np.testing.assert_allclose(
                result["base_accuracy"], expected, atol=1e-6, err_msg=name
            )
            np.testing.assert_allclose(
                result["tac_accuracy"],
                results["labels"]["tac_accuracy"],
                atol=1e-6,
                err_msg=name,
            )


class TestAddOn:
    def test_base_untouched_and_tac_learns(self, trained_cnn, digits):
        (_, _), (x_test, y_test) = digits
        before = weights_of(trained_cnn)
        base_pred = np.argmax(trained_cnn.predict(x_test, verbose=0), axis=1)
        tac = fitted_tac(trained_cnn, digits, epochs=4)
        for a, b in zip(before, weights_of(trained_cnn)):
            np.testing.assert_array_equal(a, b)
        out = tac.predict_with_rejection(x_test, threshold=-np.inf, verbose=0)
        np.testing.assert_array_equal(out["prediction"], base_pred)
        metrics = tac.evaluate(x_test, y_test, return_dict=True, verbose=0)
        assert {"loss", "base_accuracy", "tac_accuracy"} <= set(metrics)
        assert metrics["base_accuracy"] == pytest.approx(
            np.mean(base_pred == y_test), abs=1e-6
        )
        # TAC's own prediction is far above chance (0.1) after a few epochs.
        assert metrics["tac_accuracy"] > 0.6
        # Its confidence ranks the base's correct predictions above its
        # errors (chance is 0.5).
        correct = out["prediction"] == y_test
        assert 0 < correct.sum() < len(correct)
        assert roc_auc_score(correct, out["confidence"]) > 0.75

    def test_caller_keeps_a_trainable_base(self, trained_cnn, digits):
        (x, y), _ = digits
        base = trained_cnn
        trainable = [w.path for w in base.trainable_weights]
        before = weights_of(base)
        tac = keras_tac.TACModel(base)
        tac.compile(optimizer=keras.optimizers.Adam(1e-2))
        head_before = [np.array(w) for w in tac.head.get_weights()]
        for cache_features in (True, False):
            tac.fit(
                x[:128],
                y[:128],
                batch_size=32,
                cache_features=cache_features,
                verbose=0,
            )
        # The add-on fit trained the head and left the base bit-identical.
        assert any(
            not np.array_equal(a, b)
            for a, b in zip(head_before, tac.head.get_weights())
        )
        for a, b in zip(before, weights_of(base)):
            np.testing.assert_array_equal(a, b)
        # The caller's base is as trainable as it was, and trains.
        assert base.trainable
        assert [w.path for w in base.trainable_weights] == trainable
        base.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        base.fit(x[:64], y[:64], batch_size=32, verbose=0)
        for a, b in zip(before, weights_of(base)):
            assert not np.array_equal(a, b)

    def test_train_base_changes_the_base(self, digits):
        (x, y), _ = digits
        base = make_cnn()
        before = weights_of(base)
        tac = keras_tac.TACModel(base, train_base=True)
        tac.compile(optimizer=keras.optimizers.Adam(1e-2))
        tac.fit(x[:64], y[:64], batch_size=32, verbose=0)
        assert base.trainable
        for a, b in zip(before, weights_of(base)):
            assert not np.array_equal(a, b)

    @pytest.mark.parametrize("cache_features", [False, True])
    def test_training_step_is_traced_once(
        self, trained_cnn, digits, cache_features, monkeypatch
    ):
        # Keras builds a TensorFlow model's optimizer in the first traced
        # step, which makes TensorFlow trace it twice; `fit` builds it first.
        (x, y), _ = digits
        tac = keras_tac.TACModel(trained_cnn)
        tac.compile(optimizer="sgd")
        optimizer_built = []
        # Recorded in Keras's trainer class, so the model around the head
        # that the cached path trains is recorded too.
        trainer = next(
            cls for cls in type(tac).__mro__ if "train_step" in vars(cls)
        )
        train_step = trainer.train_step

        def recording_train_step(model, *args):
            optimizer_built.append(tac.optimizer.built)
            return train_step(model, *args)

        monkeypatch.setattr(trainer, "train_step", recording_train_step)
        tac.fit(
            x[:256],
            y[:256],
            epochs=2,
            batch_size=64,
            verbose=0,
            cache_features=cache_features,
        )
        assert all(optimizer_built)
        # TensorFlow and JAX run the step's Python once, to trace it;
        # PyTorch runs it eagerly, at each of the 8 steps.
        steps = 8 if keras.backend.backend() == "torch" else 1
        assert len(optimizer_built) == steps

    def test_validation_data_and_dataset_input(self, trained_cnn, digits):
        import tensorflow as tf

        (x, y), (x_test, y_test) = digits
        tac = keras_tac.TACModel(trained_cnn)
        tac.compile()
        dataset = tf.data.Dataset.from_tensor_slices((x[:256], y[:256])).batch(
            64
        )
        history = tac.fit(
            dataset, epochs=1, validation_data=(x_test, y_test), verbose=0
        )
        assert {"val_loss", "val_base_accuracy", "val_tac_accuracy"} <= set(
            history.history
        )


class TestJoint:
    def test_base_trains_with_batchnorm_in_training_mode(self, digits):
        (x, y), _ = digits
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(16, 3, padding="same", name="conv")(inputs)
        h = keras.layers.BatchNormalization(name="bn")(h)
        h = keras.layers.ReLU(name="relu")(h)
        h = keras.layers.Flatten()(h)
        base = keras.Model(inputs, keras.layers.Dense(10)(h))
        bn = base.get_layer("bn")
        moving_mean = np.array(ops.convert_to_numpy(bn.moving_mean))
        kernel = np.array(ops.convert_to_numpy(base.get_layer("conv").kernel))
        tac = keras_tac.TACModel(base, tap_layers=["relu"], train_base=True)
        tac.compile(optimizer=keras.optimizers.Adam(1e-2))
        history = tac.fit(x[:512], y[:512], epochs=2, batch_size=64, verbose=0)
        assert not np.allclose(
            moving_mean, ops.convert_to_numpy(bn.moving_mean)
        )
        assert not np.allclose(
            kernel, ops.convert_to_numpy(base.get_layer("conv").kernel)
        )
        assert history.history["base_accuracy"][-1] > 0.5

    def test_frozen_base_with_train_base(self):
        base = make_cnn()
        base.trainable = False
        with pytest.raises(ValueError, match="trainable"):
            keras_tac.TACModel(base, train_base=True)


def numpy_tac_loss(one_hot, profile, ce_codes, codes, temperature=50.0):
    """The TAC objective per sample in NumPy (weights 1 and 10): the
    cross-entropy against `ce_codes` (noisy in training), the regression
    against the clean `codes`."""
    profile = profile.astype(np.float64)
    distances = np.abs(profile[:, None] - ce_codes[None]).mean(axis=-1)
    logits = -temperature * distances
    logits -= logits.max(axis=1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    cross_entropy = -(one_hot * log_softmax).sum(axis=1)
    regression = np.abs(profile - one_hot @ codes).mean(axis=1)
    return cross_entropy + 10.0 * regression


def replayed_code_flips(tac):
    """The code-noise flips the next training step of `tac` will draw: the
    same draw from a copy of its seed generator's state."""
    replay = keras.random.SeedGenerator(0)
    replay.state.assign(ops.convert_to_numpy(tac.seed_generator.state))
    uniform = keras.random.uniform(tac.codes.shape, seed=replay)
    return ops.convert_to_numpy(uniform) < tac.tac_loss.code_noise


class TestRegularisers:
    def test_code_noise_flips_codes_in_the_training_cross_entropy(
        self, trained_cnn, digits
    ):
        (x, y), _ = digits
        x, y = x[:32], y[:32]
        # The largest temperature, so the flips move the cross-entropy well
        # beyond the tolerance of the comparisons.
        tac = keras_tac.TACModel(
            trained_cnn, code_noise=0.3, temperature=50.0, seed=4
        )
        codes = tac.codes.astype(np.float64)
        one_hot = np.eye(10)[y]
        profile = ops.convert_to_numpy(tac(x)["profile"])
        flips = replayed_code_flips(tac)
        assert 0.15 < flips.mean() < 0.45
        noisy_codes = np.where(flips, -codes, codes)
        training = float(tac.compute_loss(x, y, training=True))
        inference = float(tac.compute_loss(x, y, training=False))
        clean = numpy_tac_loss(one_hot, profile, codes, codes).mean()
        noisy = numpy_tac_loss(one_hot, profile, noisy_codes, codes).mean()
        np.testing.assert_allclose(inference, clean, rtol=1e-4)
        np.testing.assert_allclose(training, noisy, rtol=1e-4)
        # Apart by far more than the tolerance of the comparisons.
        assert abs(noisy - clean) > 1e-3 * clean

    @pytest.mark.parametrize("cache_features", [True, False])
    def test_fit_trains_with_the_code_noise(
        self, trained_cnn, digits, cache_features
    ):
        # One step of a zero learning rate: the training loss is the noisy
        # loss at the initial weights, evaluation the clean one.
        (x, y), _ = digits
        x, y = x[:32], y[:32]
        tac = keras_tac.TACModel(
            trained_cnn, code_noise=0.3, temperature=50.0, seed=4
        )
        tac.compile(optimizer=keras.optimizers.SGD(0.0))
        codes = tac.codes.astype(np.float64)
        one_hot = np.eye(10)[y]
        profile = tac.predict(x, verbose=0)["profile"]
        noisy_codes = np.where(replayed_code_flips(tac), -codes, codes)
        history = tac.fit(
            x,
            y,
            epochs=1,
            batch_size=32,
            cache_features=cache_features,
            verbose=0,
        )
        evaluated = tac.evaluate(x, y, return_dict=True, verbose=0)
        np.testing.assert_allclose(
            history.history["loss"][0],
            numpy_tac_loss(one_hot, profile, noisy_codes, codes).mean(),
            rtol=1e-4,
        )
        np.testing.assert_allclose(
            evaluated["loss"],
            numpy_tac_loss(one_hot, profile, codes, codes).mean(),
            rtol=1e-4,
        )

    def test_trainable_temperature_trains(self, trained_cnn, digits):
        tac = fitted_tac(
            trained_cnn,
            digits,
            epochs=1,
            trainable_temperature=True,
            reduction="median",
            slicing="random",
        )
        (x, y), _ = digits
        metrics = tac.evaluate(x[:128], y[:128], return_dict=True, verbose=0)
        assert np.isfinite(metrics["loss"])
        assert float(ops.convert_to_numpy(tac.temperature)) != 10.0
        fixed = fitted_tac(trained_cnn, digits, epochs=1)
        assert float(ops.convert_to_numpy(fixed.temperature)) == 10.0


class TestRejection:
    def test_calibrate_and_reject(self, trained_cnn, digits):
        (_, _), (x_test, y_test) = digits
        tac = fitted_tac(trained_cnn, digits, epochs=2)
        x_cal, y_cal = x_test[:200], y_test[:200]
        summary = tac.calibrate(x_cal, y_cal, target_coverage=0.8, verbose=0)
        assert tac.threshold == summary["threshold"]
        assert 0.8 <= summary["coverage"] <= 0.8 + 1 / 200 + 1e-9
        out = tac.predict_with_rejection(x_cal, verbose=0)
        assert out["accepted"].mean() == pytest.approx(summary["coverage"])
        assert set(out) == {
            "prediction",
            "confidence",
            "accepted",
            "tac_prediction",
            "tac_confidence",
            "p_value",
        }
        assert (
            out["prediction"].dtype == np.int32
            and out["accepted"].dtype == bool
        )
        np.testing.assert_array_equal(
            out["accepted"], out["confidence"] >= tac.threshold
        )
        everything = tac.predict_with_rejection(
            x_cal, threshold=-1e9, verbose=0
        )
        assert everything["accepted"].all()

    def test_uncalibrated_and_bad_threshold(self):
        tac = keras_tac.TACModel(make_cnn())
        x = np.zeros((2, 8, 8, 1), "float32")
        with pytest.raises(ValueError, match="calibrate"):
            tac.predict_with_rejection(x)
        with pytest.raises(ValueError, match="threshold"):
            tac.predict_with_rejection(x, threshold=float("nan"))
        with pytest.raises(ValueError, match="target_coverage"):
            tac.calibrate(x, target_coverage=1.5)

    def test_non_finite_inputs_never_accepted(self):
        tac = keras_tac.TACModel(make_cnn())
        x = np.random.default_rng(0).random((6, 8, 8, 1)).astype("float32")
        clean = tac.predict_with_rejection(x, threshold=-1e30, verbose=0)
        bad = x.copy()
        bad[1, 3, 3, 0] = np.nan
        bad[2, 0, 0, 0] = np.inf
        bad[3] = -np.inf
        out = tac.predict_with_rejection(bad, threshold=-1e30, verbose=0)
        np.testing.assert_array_equal(
            out["accepted"], [True, False, False, False, True, True]
        )
        for key in ("confidence", "prediction"):
            np.testing.assert_allclose(
                out[key][[0, 4, 5]], clean[key][[0, 4, 5]], rtol=1e-6
            )
        with pytest.raises(ValueError, match="NaN or infinite"):
            tac.compile()
            tac.fit(bad, np.zeros(6, "int32"), verbose=0)


class TestLabels:
    @pytest.mark.parametrize("cache_features", [True, False])
    def test_whole_float_labels_match_integers(
        self, trained_cnn, digits, cache_features
    ):
        (x, y), (x_test, y_test) = digits
        x, y, x_test, y_test = x[:128], y[:128], x_test[:60], y_test[:60]
        results = []
        for dtype in ("int32", "float64", "float32"):
            keras.utils.set_random_seed(0)
            tac = keras_tac.TACModel(trained_cnn)
            tac.compile(optimizer=keras.optimizers.Adam(1e-2))
            history = tac.fit(
                x,
                y.astype(dtype),
                batch_size=32,
                epochs=2,
                cache_features=cache_features,
                verbose=0,
            )
            results.append(
                (
                    history.history,
                    [np.array(w) for w in tac.head.get_weights()],
                    tac.evaluate(
                        x_test,
                        y_test.astype(dtype),
                        return_dict=True,
                        verbose=0,
                    ),
                    tac.calibrate(
                        x_test,
                        y_test.astype(dtype),
                        target_coverage=0.8,
                        verbose=0,
                    ),
                )
            )
        expected = results[0]
        correct = tac.predict(x_test, verbose=0)["prediction"] == y_test
        assert expected[3]["accuracy"] == correct.mean()
        for result in results[1:]:
            np.testing.assert_equal(result, expected)

    @pytest.mark.parametrize("bad", [2.5, np.nan])
    def test_non_whole_labels_are_errors(self, trained_cnn, digits, bad):
        _, (x, y) = digits
        x = x[:8]
        y = y[:8].astype("float64")
        y[5] = bad
        tac = keras_tac.TACModel(trained_cnn, score="distance")
        tac.compile()
        for method in (tac.fit, tac.calibrate):
            with pytest.raises(ValueError) as error:
                method(x, y, verbose=0)
            message = str(error.value)
            assert "whole numbers in [0, 9]" in message, message
            assert "Received 1 invalid label(s)" in message, message
        assert tac.threshold is None
        # `evaluate` is Keras's own: an invalid label makes its loss NaN
        # (`labels_to_probabilities`), never a finite number.
        loss = tac.evaluate(x, y, verbose=0, return_dict=True)["loss"]
        assert np.isnan(loss)

    @pytest.mark.parametrize("inputs", ["arrays", "dataset"])
    def test_calibrate_checks_labels_against_the_predictions(
        self, trained_cnn, digits, inputs
    ):
        import tensorflow as tf

        _, (x, y) = digits
        x, y = x[:40], y[:40]
        data = x
        if inputs == "dataset":
            data = tf.data.Dataset.from_tensor_slices(x).batch(16)
        tac = keras_tac.TACModel(trained_cnn, score="distance")
        prediction = tac.predict(x, verbose=0)["prediction"]
        summary = tac.calibrate(data, y.tolist(), verbose=0)
        assert summary["accuracy"] == pytest.approx(np.mean(prediction == y))
        threshold = tac.threshold
        bad_labels = {
            "expected 40 labels, one per input sample": y[:39],
            "whole numbers in [0, 9]": np.where(y == 3, 10, y),
            "whole numbers": np.where(y == 3, 2.5, y),
        }
        for fragment, labels in bad_labels.items():
            for form in (labels, labels.tolist()):
                with pytest.raises(ValueError) as error:
                    tac.calibrate(data, form, verbose=0)
                message = str(error.value)
                assert fragment in message and "Received" in message
        # Refused before anything was stored.
        assert tac.threshold == threshold


class TestInputChecks:
    @pytest.mark.parametrize(
        "x,y,error,match",
        [
            (
                np.zeros((4, 8, 8, 1)),
                np.array([0, 1, 2, 10]),
                ValueError,
                r"\[0, 9\]",
            ),
            (
                np.zeros((4, 8, 8, 1)),
                np.array([0, 1, 2, -1]),
                ValueError,
                r"\[0, 9\]",
            ),
            (
                np.zeros((4, 8, 8, 1)),
                np.array([0.5, 1, 2, 3]),
                ValueError,
                "whole numbers",
            ),
            (
                np.zeros((4, 8, 8, 1)),
                np.array([0, 1, 2]),
                ValueError,
                "4 labels",
            ),
            (
                np.zeros((4, 8, 8)),
                np.array([0, 1, 2, 3]),
                ValueError,
                r"\(None, 8, 8, 1\)",
            ),
            (
                np.zeros((4, 8, 8, 1)),
                np.eye(10)[:4] * 2,
                ValueError,
                "sum to 1",
            ),
            (np.zeros((0, 8, 8, 1)), np.zeros(0, "int32"), ValueError, "empty"),
        ],
    )
    def test_fit_rejects(self, x, y, error, match):
        tac = keras_tac.TACModel(make_cnn())
        tac.compile()
        with pytest.raises(error, match=match):
            tac.fit(x.astype("float32"), y, verbose=0)

    def test_one_hot_labels_are_probabilities(self):
        tac = keras_tac.TACModel(make_cnn())
        tac.compile()
        x = np.zeros((4, 8, 8, 1), "float32")
        history = tac.fit(x, np.eye(10, dtype="float32")[:4], verbose=0)
        assert np.isfinite(history.history["loss"][0])

    def test_compile_rejects_loss_and_metrics(self):
        tac = keras_tac.TACModel(make_cnn())
        with pytest.raises(ValueError, match="loss=None"):
            tac.compile(loss="mse")
        with pytest.raises(ValueError, match="metrics=None"):
            tac.compile(metrics=["accuracy"])


class TestSaving:
    def test_keras_round_trip(self, trained_cnn, digits, tmp_path):
        (_, _), (x_test, y_test) = digits
        tac = fitted_tac(
            trained_cnn, digits, epochs=1, slicing="random", seed=3
        )
        tac.calibrate(x_test, y_test, verbose=0)
        path = os.path.join(tmp_path, "tac.keras")
        before = weights_of(tac)
        tac.save(path)
        for a, b in zip(before, weights_of(tac)):
            np.testing.assert_array_equal(a, b)
        restored = keras.saving.load_model(path)
        assert type(restored) is keras_tac.TACModel
        assert restored.threshold == tac.threshold
        np.testing.assert_array_equal(restored.codes, tac.codes)
        for a, b in zip(tac.head.profile_layers, restored.head.profile_layers):
            np.testing.assert_array_equal(
                ops.convert_to_numpy(a.slice_reduce.indices),
                ops.convert_to_numpy(b.slice_reduce.indices),
            )
        expected = tac.predict_with_rejection(x_test, verbose=0)
        got = restored.predict_with_rejection(x_test, verbose=0)
        for key in expected:
            np.testing.assert_allclose(
                got[key], expected[key], rtol=1e-6, atol=1e-6
            )
        # Training resumes after loading.
        restored.fit(x_test[:64], y_test[:64], epochs=1, verbose=0)


class TestTapKinds:
    def test_sequential_sequence_and_nested_bases(self):
        sequence = keras.Sequential(
            [
                keras.Input((12, 5)),
                keras.layers.Conv1D(16, 3, activation="relu", name="conv"),
                keras.layers.GlobalAveragePooling1D(name="gap"),
                keras.layers.Dense(16, activation="relu", name="dense"),
                keras.layers.Dense(3, name="out"),
            ]
        )
        backbone_in = keras.Input((12, 5))
        backbone = keras.Model(
            backbone_in,
            keras.layers.Conv1D(16, 3, name="inner_conv")(backbone_in),
            name="backbone",
        )
        inputs = keras.Input((12, 5))
        h = keras.layers.GlobalAveragePooling1D()(backbone(inputs))
        nested = keras.Model(inputs, keras.layers.Dense(3)(h))
        x = np.random.default_rng(0).normal(size=(24, 12, 5)).astype("float32")
        y = np.arange(24) % 3
        for base, taps in (
            (sequence, ["conv", "dense"]),  # 3-D and 2-D taps, Sequential
            (nested, ["backbone/inner_conv"]),  # inside a nested model
        ):
            tac = keras_tac.TACModel(base, tap_layers=taps, num_slices=4)
            tac.compile()
            tac.fit(x, y, epochs=1, verbose=0)
            out = tac.predict(x, verbose=0)
            assert out["profile"].shape == (24, 4 * len(taps))
            np.testing.assert_allclose(
                out["base_output"], base.predict(x, verbose=0), atol=1e-5
            )


class TestLearnedLittleWarning:
    def _binary_model(self):
        inputs = keras.Input((4,))
        h = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
        return keras.Model(inputs, keras.layers.Dense(2, name="logits")(h))

    def test_no_warning_when_tac_matches_a_binary_base(self):
        # Two classes: chance is 50%, and TAC as accurate as a perfect base
        # learned all there is.
        rng = np.random.default_rng(0)
        y = rng.integers(0, 2, 256)
        x = (rng.normal(size=(256, 4)) + 3.0 * y[:, None]).astype("float32")
        base = self._binary_model()
        base.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        base.fit(x, y, epochs=20, verbose=0)
        tac = keras_tac.TACModel(base, num_slices=4)
        tac.compile()
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            # The default call: trained until TAC catches up with the base
            # or its loss stops improving.
            history = tac.fit(x, y, verbose=0)
        assert history.history["tac_accuracy"][-1] > 0.9

    def test_warns_when_tac_stays_at_chance(self, trained_cnn, digits):
        (x, y), _ = digits
        tac = keras_tac.TACModel(trained_cnn)
        # A learning rate of zero: TAC cannot move from its start.
        tac.compile(optimizer=keras.optimizers.SGD(0.0))
        with pytest.warns(UserWarning, match="learned little.*conv_1"):
            tac.fit(x[:256], y[:256], epochs=6, verbose=0)


@pytest.mark.parametrize("cache_features", [True, False])
def test_fit_checks_the_training_inputs_once(
    trained_cnn, digits, monkeypatch, cache_features
):
    # Oracle: a count of the array checks (shape, dtype and a finiteness
    # scan each); `fit` also runs the statistics pass of the combined
    # confidence, which must not check again.
    from keras_tac.src.validation import model_inputs

    (x, y), _ = digits
    x, y = x[:256], y[:256]
    seen = []
    check = model_inputs.check_inputs

    def counted(inputs, *args, **kwargs):
        seen.append(inputs is x)
        return check(inputs, *args, **kwargs)

    monkeypatch.setattr(model_inputs, "check_inputs", counted)
    tac = keras_tac.TACModel(trained_cnn)
    tac.compile()
    tac.fit(
        x, y, epochs=1, batch_size=64, verbose=0, cache_features=cache_features
    )
    assert seen.count(True) == 1, seen
    seen.clear()
    tac.fit_statistics(x, y, verbose=0)
    assert seen.count(True) == 1, seen
