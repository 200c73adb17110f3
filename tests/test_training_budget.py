"""`TACModel.fit` without `epochs`: the automatic budget of optimizer
steps (`keras_tac.src.training_budget`) and the under-training warnings
(`keras_tac.src.training.warn_if_undertrained`)."""

import math
import warnings

import keras
import numpy as np
import pytest

import keras_tac
from keras_tac.src import training_budget


class TestBudget:
    def test_auto_epochs_counts_steps(self):
        # By hand: enough epochs for MIN_STEPS steps, within the bounds.
        minimum = training_budget.MIN_STEPS
        assert training_budget.auto_epochs(7) == math.ceil(minimum / 7)
        assert training_budget.auto_epochs(1) == min(
            minimum, training_budget.MAX_EPOCHS
        )
        assert (
            training_budget.auto_epochs(10 * minimum)
            == training_budget.MIN_EPOCHS
        )
        assert (
            training_budget.auto_epochs(None)
            == training_budget.UNKNOWN_SIZE_EPOCHS
        )

    def test_steps_per_epoch_of_each_kind_of_data(self):
        x = np.zeros((100, 3), "float32")
        steps = training_budget.steps_per_epoch
        assert steps(x, {}) == 4  # ceil(100 / 32)
        assert steps(x, {"batch_size": 10}) == 10
        assert steps(x, {"batch_size": 10, "validation_split": 0.25}) == 8
        assert steps(x, {"steps_per_epoch": 3}) == 3
        assert steps({"a": x, "b": x}, {"batch_size": 50}) == 2

        class Batches(keras.utils.PyDataset):
            def __len__(self):
                return 6

            def __getitem__(self, index):
                return x[:1], np.zeros(1)

        assert steps(Batches(), {}) == 6
        assert steps(iter([x]), {}) is None

    def test_steps_of_a_tf_dataset(self):
        tf = pytest.importorskip("tensorflow")
        dataset = tf.data.Dataset.from_tensor_slices(np.zeros((10, 2)))
        assert training_budget.steps_per_epoch(dataset.batch(4), {}) == 3
        assert training_budget.steps_per_epoch(dataset.repeat(), {}) is None

    @pytest.mark.parametrize("epochs", [0, -2, 1.5, "ten", True])
    def test_invalid_epochs_are_refused(self, epochs):
        with pytest.raises(ValueError, match="Invalid `epochs`"):
            training_budget.is_auto(epochs)

    def test_auto_spellings(self):
        assert training_budget.is_auto(None)
        assert training_budget.is_auto("auto")
        assert not training_budget.is_auto(np.int64(3))


def test_repeat_tiles_every_array():
    x = {"a": np.arange(3), "b": np.arange(6).reshape(3, 2)}
    repeated = training_budget.repeat((x, np.arange(3)), 2)
    np.testing.assert_array_equal(repeated[0]["a"], [0, 1, 2, 0, 1, 2])
    assert repeated[0]["b"].shape == (6, 2)
    np.testing.assert_array_equal(repeated[1], [0, 1, 2, 0, 1, 2])
    assert training_budget.repeat(None, 3) is None


def test_apply_asks_for_passes_on_few_batches_only():
    x = np.zeros((96, 2), "float32")
    kwargs, budget = training_budget.apply(x, {"batch_size": 32}, None)
    assert budget.passes == 17  # ceil(50 / 3)
    assert kwargs["epochs"] == training_budget.auto_epochs(51)
    assert kwargs["callbacks"] == [budget.stop]
    big = np.zeros((32 * 60, 2), "float32")
    kwargs, budget = training_budget.apply(big, {"batch_size": 32}, None)
    assert budget.passes == 1
    assert kwargs["epochs"] == training_budget.auto_epochs(60)
    # A validation split would take copies of training rows: no passes.
    _, budget = training_budget.apply(x, {"validation_split": 0.25}, None)
    assert budget.passes == 1 and budget.stop.monitor == "val_loss"
    kwargs, budget = training_budget.apply(x, {"epochs": 4}, None)
    assert kwargs["epochs"] == 4 and budget.stop is None


def test_apply_stops_on_catching_up_with_a_frozen_base_only():
    x = np.zeros((96, 2), "float32")
    _, budget = training_budget.apply(x, {}, None)
    assert budget.stop.stop_when_caught_up
    # A base in training moves on; a validation loss decides alone.
    _, budget = training_budget.apply(x, {}, None, frozen_base=False)
    assert not budget.stop.stop_when_caught_up
    _, budget = training_budget.apply(x, {}, (x, np.zeros(96)))
    assert not budget.stop.stop_when_caught_up


class _Recorder:
    stop_training = False
    trainable_variables = ()


class TestConvergenceStop:
    def _run(self, losses, **kwargs):
        stop = training_budget.ConvergenceStop(**kwargs)
        stop.set_model(_Recorder())
        stop.on_train_begin()
        for epoch, loss in enumerate(losses):
            stop.on_epoch_end(epoch, {"loss": loss})
            if stop.model.stop_training:
                return epoch
        return None

    def test_stops_after_patience_epochs_without_relative_gain(self):
        # Best 10.0 at epoch 1; 9.995 is within 1e-3 of it (no gain), so
        # epochs 2, 3 and 4 are three epochs without improvement.
        losses = [12.0, 10.0, 9.995, 10.2, 9.999, 5.0]
        assert self._run(losses, patience=3) == 4

    def test_keeps_going_while_improving(self):
        losses = list(10.0 * 0.99 ** np.arange(50))
        assert self._run(losses, patience=2) is None

    def test_the_tolerance_is_relative(self):
        # Gains below 1e-3 of the best (0.1 on a loss of 100) are none;
        # they count from the best, so slow steady progress still counts.
        losses = [100.0, 99.95, 99.92, 99.95]
        assert self._run([100.0, 99.95, 99.92, 99.85], patience=3) is None
        assert self._run(losses, patience=3) == 3
        assert self._run([x / 100 for x in losses], patience=3) == 3

    def test_non_finite_logs_are_ignored(self):
        assert self._run([5.0, float("nan"), 4.0], patience=1) is None

    def test_stops_once_caught_up_with_the_base(self):
        # Oracle: the first epoch whose TAC accuracy reaches the base's,
        # however much the loss is still falling.
        stop = training_budget.ConvergenceStop(
            patience=100, stop_when_caught_up=True
        )
        stop.set_model(_Recorder())
        stop.on_train_begin()
        history = [(5.0, 0.5, 1.0), (4.0, 0.99, 1.0), (3.0, 1.0, 1.0)]
        for epoch, (loss, tac, base) in enumerate(history):
            stop.on_epoch_end(
                epoch,
                {"loss": loss, "tac_accuracy": tac, "base_accuracy": base},
            )
            if stop.model.stop_training:
                break
        assert (epoch, stop.stopped_epoch, stop.caught_up) == (2, 2, True)

    def test_catching_up_is_ignored_unless_asked_or_unknown(self):
        logs = {"loss": 1.0, "tac_accuracy": 1.0, "base_accuracy": 1.0}
        for kwargs, extra in [
            ({}, {}),
            ({"stop_when_caught_up": True}, {"tac_accuracy": float("nan")}),
            ({"stop_when_caught_up": True}, {"base_accuracy": None}),
            # A base wrong on more than 1% of the training data is no
            # ceiling: TAC may learn more than it.
            (
                {"stop_when_caught_up": True},
                {"base_accuracy": 0.985, "tac_accuracy": 0.995},
            ),
        ]:
            stop = training_budget.ConvergenceStop(patience=100, **kwargs)
            stop.set_model(_Recorder())
            stop.on_train_begin()
            stop.on_epoch_end(0, {**logs, **extra})
            assert not stop.model.stop_training and not stop.caught_up

    def test_restores_the_best_weights(self):
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        stop = training_budget.ConvergenceStop(
            monitor="val_loss", patience=5, restore_best_weights=True
        )
        stop.set_model(model)
        stop.on_train_begin()
        kernel = model.trainable_variables[0]
        for epoch, (value, loss) in enumerate([(1.0, 3.0), (2.0, 1.0)]):
            kernel.assign([[value]])
            stop.on_epoch_end(epoch, {"val_loss": loss})
        kernel.assign([[7.0]])
        stop.on_epoch_end(2, {"val_loss": 4.0})
        stop.on_train_end()
        assert float(keras.ops.convert_to_numpy(kernel)[0, 0]) == 2.0


def _separable(n=96, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 6)) + 4.0 * np.eye(3, 6)[y]
    return x.astype("float32"), y


def _base(x, y):
    inputs = keras.Input(x.shape[1:])
    h = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    base = keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))
    base.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    base.fit(x, y, epochs=40, verbose=0)
    return base


class TestAutomaticFit:
    def test_a_frozen_head_stops_after_patience(self):
        # Oracle: with a learning rate of 0 the loss never improves, so the
        # budget ends after the first epoch plus `patience` epochs.
        x, y = _separable()
        tac = keras_tac.TACModel(_base(x, y), num_slices=4)
        tac.compile(optimizer=keras.optimizers.SGD(0.0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            history = tac.fit(x, y, batch_size=32, verbose=0)
        # 3 batches, so each epoch makes ceil(50 / 3) = 17 passes.
        steps = 3 * math.ceil(training_budget.MIN_EPOCH_STEPS / 3)
        assert len(history.history["loss"]) == 1 + training_budget.patience(
            steps
        )

    @pytest.mark.parametrize("epochs", [None, "auto"])
    def test_default_fit_learns_what_the_base_knows(self, epochs):
        x, y = _separable()
        base = _base(x, y)
        base_accuracy = np.mean(np.argmax(base.predict(x, verbose=0), 1) == y)
        tac = keras_tac.TACModel(base, num_slices=4)
        tac.compile()
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            history = tac.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
        ran = len(history.history["loss"])
        assert ran <= training_budget.auto_epochs(51)
        tac_accuracy = np.mean(tac.predict(x, verbose=0)["tac_prediction"] == y)
        assert tac_accuracy >= base_accuracy - 0.02

    def test_default_fit_stops_once_caught_up(self):
        x, y = _separable()
        base = _base(x, y)
        # The stop needs a base that fits the training data.
        base_right = np.argmax(base.predict(x, verbose=0), 1) == y
        assert base_right.mean() >= training_budget.CAUGHT_UP_MIN_BASE_ACCURACY
        tac = keras_tac.TACModel(base, num_slices=4)
        tac.compile()
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            history = tac.fit(x, y, batch_size=32, verbose=0)
        logs = history.history
        # Oracle: the logs themselves. Training ended at the first epoch
        # where TAC's training accuracy reached the base's.
        reached = [
            tac_accuracy >= base_accuracy
            for tac_accuracy, base_accuracy in zip(
                logs["tac_accuracy"], logs["base_accuracy"]
            )
        ]
        assert reached[-1] and not any(reached[:-1])
        # The weights kept are the last epoch's: right where the base is.
        tac_right = tac.predict(x, verbose=0)["tac_prediction"] == y
        assert tac_right.mean() >= base_right.mean() - 0.02

    def test_a_jointly_trained_base_does_not_stop_on_catching_up(self):
        x, y = _separable()
        tac = keras_tac.TACModel(_base(x, y), num_slices=4, train_base=True)
        tac.compile()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            history = tac.fit(x, y, batch_size=32, verbose=0)
        logs = history.history
        reached = np.asarray(logs["tac_accuracy"]) >= np.asarray(
            logs["base_accuracy"]
        )
        # It trains on past the first epoch that caught up.
        assert reached.any() and len(reached) > np.argmax(reached) + 1

    def test_an_explicit_epochs_is_kept(self):
        x, y = _separable()
        tac = keras_tac.TACModel(_base(x, y), num_slices=4)
        tac.compile()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            history = tac.fit(x, y, epochs=2, verbose=0)
        assert len(history.history["loss"]) == 2

    def test_validation_data_is_watched(self):
        x, y = _separable()
        tac = keras_tac.TACModel(_base(x, y), num_slices=4)
        tac.compile(optimizer=keras.optimizers.SGD(0.0))
        stop_seen = []

        class Spy(keras.callbacks.Callback):
            def on_train_end(self, logs=None):
                stop_seen.append(self.model.stop_training)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            history = tac.fit(
                x[:64],
                y[:64],
                validation_data=(x[64:], y[64:]),
                callbacks=[Spy()],
                batch_size=32,
                verbose=0,
            )
        # 2 batches, 25 passes per epoch: the stop watched `val_loss`,
        # flat at lr 0.
        assert "val_loss" in history.history
        assert len(history.history["loss"]) == 1 + training_budget.patience(50)
        assert stop_seen == [True]


class TestCompileDefaults:
    def test_addon_head_gets_a_larger_learning_rate(self):
        x, y = _separable(16)
        base = _base(x, y)
        tac = keras_tac.TACModel(base, num_slices=4)
        tac.compile()
        assert isinstance(tac.optimizer, keras.optimizers.Adam)
        assert float(tac.optimizer.learning_rate) == pytest.approx(1e-2)
        joint = keras_tac.TACModel(base, num_slices=4, train_base=True)
        joint.compile()
        assert float(joint.optimizer.learning_rate) == pytest.approx(1e-3)
        named = keras_tac.TACModel(base, num_slices=4)
        named.compile(optimizer="adam")
        assert float(named.optimizer.learning_rate) == pytest.approx(1e-3)


class TestUndertrainedWarning:
    def test_warns_when_cut_short_while_improving(self):
        x, y = _separable()
        tac = keras_tac.TACModel(_base(x, y), num_slices=4)
        tac.compile(optimizer=keras.optimizers.Adam(1e-3))
        with pytest.warns(UserWarning, match="under-trained.*Leave `epochs`"):
            tac.fit(x, y, epochs=5, batch_size=32, verbose=0)

    def test_warns_when_the_head_cannot_move(self):
        x, y = _separable()
        tac = keras_tac.TACModel(_base(x, y), num_slices=4)
        tac.compile(optimizer=keras.optimizers.SGD(0.0))
        with pytest.warns(UserWarning, match="stopped improving.*learned"):
            tac.fit(x, y, epochs=6, batch_size=32, verbose=0)

    def test_no_warning_when_all_is_well(self):
        x, y = _separable()
        tac = keras_tac.TACModel(_base(x, y), num_slices=4)
        tac.compile()
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            tac.fit(x, y, verbose=0)

    def test_an_exhausted_budget_says_so(self, monkeypatch):
        # Oracle: a budget of 10 epochs, too short for Adam at 1e-4, so
        # the loss is still falling and TAC behind the base at the end.
        monkeypatch.setattr(training_budget, "MIN_STEPS", 1)
        x, y = _separable()
        tac = keras_tac.TACModel(_base(x, y), num_slices=4)
        tac.compile(optimizer=keras.optimizers.Adam(1e-4))
        with pytest.warns(UserWarning, match="automatic budget.*ran out"):
            history = tac.fit(x, y, batch_size=32, verbose=0)
        assert len(history.history["loss"]) == training_budget.MIN_EPOCHS

    def test_one_epoch_behind_the_base_is_too_few_to_tell(self):
        x, y = _separable()
        tac = keras_tac.TACModel(_base(x, y), num_slices=4)
        tac.compile(optimizer=keras.optimizers.SGD(0.0))
        with pytest.warns(UserWarning, match="after 1 epoch.*too few"):
            tac.fit(x, y, epochs=1, batch_size=32, verbose=0)
