"""How a `TACModel` trains: its objective, its metrics and `fit`.

`TACModel.compute_loss`, `compute_metrics` and `fit` delegate here. `fit`
chooses how the batches are made: from cached tapped features when the base
is frozen (`keras_tac.src.feature_cache`: the base runs once, and the
statistics of the combined confidence come from the same features), else
through Keras's own `fit`, with augmentation and mixup
(`keras_tac.src.batch_transforms`) or adversarial batches
(`keras_tac.attacks.AdversarialTraining`). Without the cache, the
statistics take one more inference pass of the base over the training
data.
"""

import math
import warnings

import keras
from keras import ops

from keras_tac.src import batch_transforms
from keras_tac.src import distribution
from keras_tac.src import feature_cache
from keras_tac.src import statistics
from keras_tac.src import training_budget
from keras_tac.src.losses.tac_loss import class_indices
from keras_tac.src.losses.tac_loss import labels_to_probabilities
from keras_tac.src.validation import model_inputs

# `fit` warns when TAC's training accuracy ends more than this below the
# base's (then saying whether the loss was still falling by more than
# `FALLING_TOLERANCE` of the first epoch's loss over the last fifth of the
# epochs), or when the loss was still falling by more than
# `IMPROVING_TOLERANCE`, a clear trend even where TAC matches the base (on
# separable data the loss keeps creeping down: 2.5% on a binary problem
# after 2,000 steps, with TAC at the base's accuracy).
ACCURACY_TOLERANCE = 0.02
FALLING_TOLERANCE = 0.01
IMPROVING_TOLERANCE = 0.05


def objective(model, y, y_pred, sample_weight=None, training=True):
    """The mean TAC objective of a batch (plus the base head's
    cross-entropy with `train_base=True`, and the layers' own losses)."""
    if y is None:
        raise ValueError(
            "TACModel needs class labels to train: pass `y` (integer "
            "labels) to `fit`/`evaluate`, or a dataset of (x, y) pairs."
        )
    probabilities = labels_to_probabilities(
        y, model.num_classes, batch_size=ops.shape(y_pred["profile"])[0]
    )
    loss = model.tac_loss.objective(
        probabilities, y_pred["profile"], training=training
    )
    if model.train_base:
        loss = loss + model.base_loss_weight * (
            keras.losses.categorical_crossentropy(
                probabilities,
                ops.cast(y_pred["base_output"], "float32"),
                from_logits=not model.base_outputs_probabilities,
            )
        )
    if sample_weight is not None:
        loss = loss * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
    loss = ops.mean(loss)
    for extra in model.losses:
        loss = loss + ops.cast(extra, "float32")
    # Under a tf.distribute strategy each replica's gradients are summed:
    # Keras's own `compute_loss` divides by the number of replicas too.
    return distribution.scale_loss(loss)


def update_accuracies(trackers, num_classes, y, y_pred, sample_weight=None):
    """Updates `(base accuracy, TAC accuracy)` `Mean` trackers on a batch."""
    batch_size = ops.shape(y_pred["profile"])[0]
    labels = class_indices(y, num_classes, batch_size)
    for tracker, key in zip(trackers, ("prediction", "tac_prediction")):
        correct = ops.cast(ops.equal(y_pred[key], labels), "float32")
        tracker.update_state(correct, sample_weight=sample_weight)


def fit(
    model,
    keras_fit,
    x=None,
    y=None,
    validation_data=None,
    cache_features=None,
    augmentation=None,
    adversarial=None,
    feature_cache_dir=None,
    **kwargs,
):
    """`TACModel.fit`; `keras_fit` is `keras.Model.fit` bound to the model.

    With a frozen base, no mixup and arrays as `x`, `y` and
    `validation_data`, every epoch would feed the head the same tapped
    activations: the base then runs once and the head trains on the pooled
    taps kept (`keras_tac.src.feature_cache`), with the same loss,
    metrics, callbacks and `History`; the features stay in memory up to
    `keras_tac.config.feature_cache_memory_budget()`, else go to a
    temporary directory, or to `feature_cache_dir`.

    Args:
        model: the `TACModel`, compiled.
        keras_fit: `keras.Model.fit` bound to `model`.
        cache_features: `None` (cache when valid), `True` (require it; an
            error says why it is not valid) or `False`. With `True` (or a
            `feature_cache_dir`), `x` and `validation_data` may also be a
            finite `tf.data.Dataset` or `keras.utils.PyDataset` of
            `(inputs, labels[, weights])` that gives the same batches at
            every pass: it is read once and streamed to disk.
        feature_cache_dir: a directory path, or `None`. Keeps the cached
            features there (read through memory maps) and reuses them in
            later calls while they match the model (tap layers, base
            weights, tap shapes and dtypes, head configuration) and the
            data (number of samples, a hash of inputs and labels); anything
            else, an interrupted write included, is rebuilt.
        augmentation: a layer (called with `training=True`) or callable
            applied to each batch of training inputs (not to
            `validation_data`); see `keras_tac.src.batch_transforms`.
        adversarial: a `keras_tac.attacks.AdversarialTraining`: part of
            each training batch is replaced by attacks on the model as it
            is at that step (no feature cache; not combined with
            `augmentation` or mixup).
        **kwargs: the arguments of `keras.Model.fit`.

    Returns:
        A `keras.callbacks.History`.
    """
    model_inputs.check_data(model, x, y, "fit")
    if isinstance(validation_data, (list, tuple)):
        model_inputs.check_data(model, *validation_data[:2], "fit")
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        # Built here, not inside Keras's first traced step: a tf.function
        # that creates variables is traced twice. In the model's
        # tf.distribute scope, if any, as Keras's fit would.
        with distribution.strategy_scope(model):
            optimizer.build(model.trainable_variables)
    _check_adversarial(
        model, adversarial, cache_features, augmentation, feature_cache_dir
    )
    kwargs, budget = training_budget.apply(
        x, kwargs, validation_data, frozen_base=not model.train_base
    )
    num_samples = _num_samples(x)
    if adversarial is None and feature_cache.should_cache(
        model,
        x,
        y,
        validation_data,
        cache_features,
        kwargs,
        augmentation,
        feature_cache_dir,
    ):
        history = feature_cache.fit_on_cached_features(
            model,
            x,
            y,
            validation_data,
            kwargs,
            feature_cache_dir,
            passes=budget.passes,
        )
    else:
        data = (x, y)
        if augmentation is not None or model.mixup_alpha > 0:
            x, y, kwargs = batch_transforms.transformed_data(
                x, y, kwargs, augmentation, model.mixup_alpha, model.num_classes
            )
        if adversarial is not None:
            x, y, kwargs = adversarial.training_data(model, x, y, kwargs)
        if budget.passes > 1:
            x, y = training_budget.repeat((x, y), budget.passes)
            kwargs["sample_weight"] = training_budget.repeat(
                kwargs.get("sample_weight"), budget.passes
            )
        history = keras_fit(x, y, validation_data=validation_data, **kwargs)
        if model.confidence_layer is not None:
            _statistics_after_fit(model, *data, kwargs)
    warn_if_undertrained(model, history, num_samples, budget.stop)
    return history


def _num_samples(x):
    leaves = keras.tree.flatten(x) if model_inputs.is_arrays(x) else []
    return int(leaves[0].shape[0]) if leaves else None


def _statistics_after_fit(model, x, y, kwargs):
    if not (model_inputs.is_arrays(x) or hasattr(x, "element_spec")) and (
        not isinstance(x, keras.utils.PyDataset)
    ):
        warnings.warn(
            "TACModel.fit: the training data is a generator, which cannot "
            "be read twice: call `fit_statistics(x_train, y_train)` "
            "before `calibrate`.",
            stacklevel=4,
        )
        return
    statistics.fit_after_training(
        model,
        lambda: statistics.fit_statistics(
            model,
            x,
            y,
            batch_size=kwargs.get("batch_size"),
            verbose=0,
            checked=True,
        ),
    )


def _check_adversarial(
    model, adversarial, cache_features, augmentation, feature_cache_dir=None
):
    if adversarial is None:
        return
    if not hasattr(adversarial, "training_data"):
        raise ValueError(
            "Invalid `adversarial`: expected a "
            "`keras_tac.attacks.AdversarialTraining` or None. "
            f"Received: adversarial={adversarial!r}"
        )
    if cache_features or feature_cache_dir is not None:
        raise ValueError(
            "`cache_features=True` (or a `feature_cache_dir`) cannot be "
            "combined with `adversarial`: "
            "attacked inputs change at every step, so their tapped "
            "features cannot be cached."
        )
    if augmentation is not None or model.mixup_alpha > 0:
        raise ValueError(
            "`adversarial` cannot be combined with `augmentation` or "
            f"mixup (mixup_alpha={model.mixup_alpha}): pass one of them."
        )


def warn_if_undertrained(model, history, num_samples=None, stop=None):
    """Warns when the TAC head ended `fit` under-trained: its nearest-code
    accuracy on the training data more than `ACCURACY_TOLERANCE` (or one
    sample) below the base's, or its loss still falling by more than
    `IMPROVING_TOLERANCE` of the first epoch's loss over the last fifth of
    the epochs, unless `stop` (the automatic budget's `ConvergenceStop`)
    ended training. The message names what to change."""
    logs = getattr(history, "history", None) or {}
    losses = [v for v in logs.get("loss", []) if math.isfinite(v)]
    if not logs.get("tac_accuracy") or not logs.get("base_accuracy"):
        return
    tac_accuracy = logs["tac_accuracy"][-1]
    base_accuracy = logs["base_accuracy"][-1]
    tolerance = ACCURACY_TOLERANCE
    if num_samples:
        tolerance = max(tolerance, 1.0 / num_samples)
    behind = tac_accuracy < base_accuracy - tolerance
    window = max(2, math.ceil(0.2 * len(losses)))
    stopped = stop is not None and stop.stopped_epoch is not None
    falling = 0.0
    if len(losses) > window and not stopped:
        # Relative to the first epoch's loss, as `ConvergenceStop`.
        falling = (losses[-window - 1] - losses[-1]) / max(
            abs(losses[0]), 1e-12
        )
    improving = falling > (FALLING_TOLERANCE if behind else IMPROVING_TOLERANCE)
    # Too few epochs to see a trend: the head may still be improving.
    unknown = len(losses) <= window and not stopped
    if not (behind or improving):
        return
    chance = 1.0 / model.num_classes
    accuracies = (
        f"TAC's nearest-code accuracy on the training data is "
        f"{tac_accuracy:.1%} against the base's {base_accuracy:.1%} (chance "
        f"{chance:.1%})"
    )
    if stop is None:
        train_longer = (
            " Leave `epochs` out (fit then trains until the loss stops "
            "improving), or raise `epochs` or the optimizer's learning rate."
        )
    else:
        # The automatic budget ran out before the loss settled.
        train_longer = (
            f" The automatic budget ({len(losses)} epochs) ran out: pass a "
            "larger `epochs`, or raise the optimizer's learning rate."
        )
    if improving:
        what = (
            f"{accuracies}, and its loss was still falling (by "
            f"{falling:.1%} of its first epoch's value over the last "
            f"{window} epochs): the TAC head is under-trained." + train_longer
        )
    elif unknown:
        what = (
            f"{accuracies} after {len(losses)} epoch(s), too few to tell "
            "whether it was still improving: the TAC head may be "
            "under-trained." + train_longer
        )
    else:
        # Converged below the base: the taps carry little that TAC reads.
        learned = (
            "learned little"
            if tac_accuracy - chance <= 0.5 * (base_accuracy - chance)
            else "learned less than the base"
        )
        what = (
            f"{accuracies}, and its loss has stopped improving: TAC "
            f"{learned} from the taps {model.tap_layers}. Try deeper taps "
            "(`tap_layers=`, e.g. the input of the classification head), "
            "a larger `projection` (`'large'`) or a larger learning rate."
        )
    warnings.warn(f"TACModel.fit: {what}", stacklevel=4)
