"""How long `TACModel.fit` trains when no `epochs` is given.

Keras counts training in epochs, but what the TAC head needs is optimizer
steps: the same head converges within a few hundred steps on 4,000 MNIST
digits, and needs thousands on 200 series, where an epoch is 7 steps
(measured in `docs/architectures.md`, "Small data"). With `epochs` left
out (or `epochs="auto"`), `fit` trains for a budget of steps instead,
counted in whole epochs, and stops early once the loss has stopped
improving (`ConvergenceStop`), or, on the training loss with a frozen
base that fits the training data, as soon as TAC is right there as often
as the base (its job done: more steps only overfit small sets). An
explicit `epochs` keeps Keras's meaning; `fit` then warns when the head
was still improving at the end (`training.warn_if_undertrained`).
"""

import math

import keras
import numpy as np

from keras_tac.src.validation import model_inputs

# At least this many optimizer steps, and this many epochs, capped at
# `MAX_EPOCHS`. Measured with `compile`'s default (Adam, 1e-2) on series
# and tables of 50 to 270 rows: 1,000 steps brought TAC's accuracy to the
# base's on each (osuleaf took the longest); twice that is the margin.
MIN_STEPS = 2000
MIN_EPOCHS = 10
MAX_EPOCHS = 1000
# Stop once the epoch loss has not improved by `RELATIVE_TOLERANCE` of the
# first epoch's loss for this many steps (at least `MIN_PATIENCE_EPOCHS`
# epochs).
PATIENCE_STEPS = 500
MIN_PATIENCE_EPOCHS = 3
RELATIVE_TOLERANCE = 1e-3
# Epochs when the number of batches per epoch is unknown (a generator).
UNKNOWN_SIZE_EPOCHS = 20
# On fewer batches than this, an epoch of the automatic budget makes
# several passes over arrays: each Keras epoch costs tens of milliseconds
# of its own (callbacks, iterators), which dominated training on 100 rows.
MIN_EPOCH_STEPS = 50
# The stop on catching up waits for a base right on at least this share of
# the training data: only then does a head that matches it have nothing
# left to learn from the labels but overfitting. A weaker base is no
# ceiling (a small CNN right on half of 3,200 MNIST digits, seed 0:
# stopped on catching up, TAC reached 0.52 on the test digits with an
# error AUROC of 0.76; trained on, 0.71 and 0.84).
CAUGHT_UP_MIN_BASE_ACCURACY = 0.99


def is_auto(epochs):
    """Whether `fit`'s `epochs` asks for the automatic budget."""
    if epochs is None or (isinstance(epochs, str) and epochs == "auto"):
        return True
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)):
        raise ValueError(
            "Invalid `epochs`: expected a positive int, or None / 'auto' "
            "to train until the loss stops improving. "
            f"Received: epochs={epochs!r}"
        )
    if epochs < 1:
        raise ValueError(
            f"Invalid `epochs`: expected a positive int. Received: "
            f"epochs={epochs}"
        )
    return False


def steps_per_epoch(x, fit_kwargs):
    """The batches per epoch of `fit(x, **fit_kwargs)`, or `None` when they
    cannot be counted before training (a generator, an infinite or
    unknown-size `tf.data.Dataset`)."""
    if fit_kwargs.get("steps_per_epoch"):
        return int(fit_kwargs["steps_per_epoch"])
    if isinstance(x, keras.utils.PyDataset):
        try:
            return len(x)
        except TypeError:
            return None
    if hasattr(x, "element_spec") and hasattr(x, "cardinality"):
        count = int(x.cardinality())
        return count if count > 0 else None
    leaves = keras.tree.flatten(x)
    if not leaves or not hasattr(leaves[0], "shape"):
        return None
    num_samples = int(leaves[0].shape[0])
    split = fit_kwargs.get("validation_split") or 0.0
    if split:
        num_samples = int(math.ceil(num_samples * (1.0 - split)))
    return max(1, math.ceil(num_samples / (fit_kwargs.get("batch_size") or 32)))


def auto_epochs(steps):
    """Epochs of the automatic budget, given `steps` per epoch (or
    `None`): enough for `MIN_STEPS` steps, within
    `[MIN_EPOCHS, MAX_EPOCHS]`."""
    if steps is None:
        return UNKNOWN_SIZE_EPOCHS
    return int(np.clip(math.ceil(MIN_STEPS / steps), MIN_EPOCHS, MAX_EPOCHS))


def patience(steps):
    """Epochs without improvement before `ConvergenceStop` stops."""
    if steps is None:
        return MIN_PATIENCE_EPOCHS
    return max(MIN_PATIENCE_EPOCHS, math.ceil(PATIENCE_STEPS / steps))


class ConvergenceStop(keras.callbacks.Callback):
    """Stops training once the monitored loss has stopped improving, or,
    with `stop_when_caught_up`, once TAC has caught up with the base.

    An epoch improves when its loss is below the best so far by more than
    `relative_tolerance` of the first epoch's loss (relative: the TAC
    objective's scale depends on the code length and the loss weights;
    to the first epoch: near a loss of 0, any change is large relative
    to the current value). After `patience` epochs without improvement, training
    stops; with `restore_best_weights`, the weights of the best epoch
    come back (for a validation loss, as `keras.callbacks.EarlyStopping`).

    With `stop_when_caught_up`, training also stops at the end of the first
    epoch whose TAC training accuracy (`tac_accuracy`) is at least the
    base's (`base_accuracy`), where the base is right on at least
    `CAUGHT_UP_MIN_BASE_ACCURACY` of the training data. With the loss
    alone the head overfitted small
    sets: on OSULeaf's 160 series (an MLP), TAC was right on every training
    series after 100 steps, and its test accuracy then fell from 0.51 to
    0.48 over the 2,000 steps of the budget (`docs/architectures.md`,
    "Small data").

    Args:
        monitor: str. The log to watch. Defaults to `"loss"`.
        patience: int. Epochs without improvement. Defaults to `3`.
        relative_tolerance: float. Defaults to `1e-3`.
        restore_best_weights: bool. Defaults to `False`.
        stop_when_caught_up: bool. Defaults to `False`.

    Example:

    >>> stop = ConvergenceStop(patience=2)
    >>> stop.patience
    2
    """

    def __init__(
        self,
        monitor="loss",
        patience=MIN_PATIENCE_EPOCHS,
        relative_tolerance=RELATIVE_TOLERANCE,
        restore_best_weights=False,
        stop_when_caught_up=False,
    ):
        super().__init__()
        self.monitor = monitor
        self.patience = int(patience)
        self.relative_tolerance = float(relative_tolerance)
        self.restore_best_weights = bool(restore_best_weights)
        self.stop_when_caught_up = bool(stop_when_caught_up)
        self.stopped_epoch = None
        self.caught_up = False

    def on_train_begin(self, logs=None):
        self.best = math.inf
        self.first = None
        self.best_epoch = None
        self.best_weights = None
        self.wait = 0
        self.stopped_epoch = None
        self.caught_up = False

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.stop_when_caught_up and _caught_up(logs):
            self.caught_up = True
            self.stopped_epoch = epoch
            self.model.stop_training = True
            return
        value = logs.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        if self.first is None:
            self.first = value
        # Relative to the first epoch's loss: near a loss of 0, a
        # relative change of the current value says nothing.
        margin = self.relative_tolerance * abs(self.first)
        if self.best_epoch is None or value < self.best - margin:
            self.best = value
            self.best_epoch = epoch
            self.wait = 0
            if self.restore_best_weights:
                self.best_weights = [
                    keras.ops.convert_to_numpy(v)
                    for v in self.model.trainable_variables
                ]
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            for variable, value in zip(
                self.model.trainable_variables, self.best_weights
            ):
                variable.assign(value)


def _caught_up(logs):
    tac = logs.get("tac_accuracy")
    base = logs.get("base_accuracy")
    if tac is None or base is None:
        return False
    tac, base = float(tac), float(base)
    return (
        math.isfinite(tac)
        and base >= CAUGHT_UP_MIN_BASE_ACCURACY
        and tac >= base
    )


class Budget:
    """What `apply` decided: `stop` (the `ConvergenceStop`, or `None` with
    an explicit `epochs`) and `passes` (passes over the data per epoch)."""

    def __init__(self, stop=None, passes=1):
        self.stop = stop
        self.passes = passes


def apply(x, fit_kwargs, validation_data, frozen_base=True):
    """Resolves `fit_kwargs["epochs"]`.

    With the automatic budget: sets the epochs, adds a `ConvergenceStop`
    to the callbacks (watching the validation loss when there is
    validation data, and then restoring the best weights; else the
    training loss, stopping early too once TAC has caught up with the
    base when `frozen_base`: a base in training moves on) and, for arrays
    of fewer than `MIN_EPOCH_STEPS` batches, asks for several passes per
    epoch (`Budget.passes`; `repeat` applies them). Returns the new keyword
    arguments and a `Budget`.
    """
    fit_kwargs = dict(fit_kwargs)
    if not is_auto(fit_kwargs.get("epochs")):
        return fit_kwargs, Budget()
    steps = steps_per_epoch(x, fit_kwargs)
    split = bool(fit_kwargs.get("validation_split"))
    passes = 1
    if (
        steps is not None
        and steps < MIN_EPOCH_STEPS
        and not split
        and not fit_kwargs.get("steps_per_epoch")
        and model_inputs.is_arrays(x)
    ):
        passes = math.ceil(MIN_EPOCH_STEPS / steps)
        steps *= passes
    validated = validation_data is not None or split
    stop = ConvergenceStop(
        monitor="val_loss" if validated else "loss",
        patience=patience(steps),
        restore_best_weights=validated,
        stop_when_caught_up=frozen_base and not validated,
    )
    fit_kwargs["epochs"] = auto_epochs(steps)
    callbacks = fit_kwargs.get("callbacks")
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks.append(stop)
    else:
        fit_kwargs["callbacks"] = list(callbacks or []) + [stop]
    return fit_kwargs, Budget(stop, passes)


def repeat(data, passes):
    """Arrays (or a structure of arrays, or `None`) repeated `passes`
    times along the first axis: one epoch then makes `passes` passes."""
    if data is None or passes == 1:
        return data
    return keras.tree.map_structure(
        lambda array: np.concatenate([np.asarray(array)] * passes), data
    )
