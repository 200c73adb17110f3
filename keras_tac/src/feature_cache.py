"""Cached-feature add-on training for `TACModel.fit`.

With the base model frozen and run in inference mode, and data without
random augmentation, the tapped activations of an input are the same at
every epoch. The trainable part of a TAC add-on, the `TACHead`, starts with
a weight-free global average pooling, so the pooled taps are exact inputs to
the rest of it. `TACModel.fit` then runs the base once over the data
(`FeatureExtractor`), keeps the pooled taps and the base head's output (in
memory, or in a disk memmap above
`keras_tac.config.feature_cache_memory_budget()`), and trains the same head
on them through Keras's own `fit` of a small model around the head (loss,
metrics, callbacks, history and validation as in the ordinary path): an
epoch costs the head's few small matrix products instead of a forward pass
of the base.
"""

import logging
import math
import shutil
import tempfile

import keras
import numpy as np

from keras_tac.src import config
from keras_tac.src import distribution
from keras_tac.src import jax_backend
from keras_tac.src import keras_internals
from keras_tac.src import statistics
from keras_tac.src.features import FeatureExtractor
from keras_tac.src.streaming import ArrayBatches
from keras_tac.src.validation import model_inputs

BASE_OUTPUT_KEY = "base_output"

logger = logging.getLogger("keras_tac")


def tap_key(index):
    """The dict key of the pooled features of tap `index`."""
    return f"pooled_{index}"


def should_cache(
    model, x, y, validation_data, cache_features, fit_kwargs, augmentation=None
):
    """Whether `fit` trains on cached features, given `cache_features`
    (`None`: when valid, `True`: required, `False`: never)."""
    if cache_features not in (None, True, False):
        raise ValueError(
            "Invalid `cache_features`: expected None, True or False. "
            f"Received: cache_features={cache_features!r}"
        )
    if cache_features is False:
        return False
    reason = reason_not_to_cache(model, x, y, validation_data, fit_kwargs)
    if augmentation is not None:
        reason = "`augmentation` transforms the inputs at random each step"
    if reason is not None and cache_features:
        raise ValueError(
            "`cache_features=True` but cached-feature training is not "
            f"valid here: {reason}."
        )
    return reason is None


def reason_not_to_cache(model, x, y, validation_data, fit_kwargs):
    """Why `fit` cannot train on cached features, or `None` when it can.

    Caching is exact only when the tapped activations of an input cannot
    change between epochs: the base is frozen and runs in inference mode,
    the inputs are fixed arrays (a dataset or generator may augment at
    random), and nothing mixes inputs (mixup).
    """
    if model.train_base:
        return "the base model trains jointly (`train_base=True`)"
    if model.mixup_alpha > 0:
        return "mixup (`mixup_alpha > 0`) mixes inputs at random each step"
    if (
        x is None
        or not model_inputs.is_arrays(x)
        or y is None
        or not model_inputs.is_arrays(y)
    ):
        return (
            "`x` and `y` are not NumPy arrays or tensors (a dataset or "
            "generator may augment its inputs at random)"
        )
    if validation_data is not None and not (
        isinstance(validation_data, (list, tuple))
        and len(validation_data) in (2, 3)
        and model_inputs.is_arrays(validation_data[0])
    ):
        return "`validation_data` is not a tuple of arrays"
    steps = fit_kwargs.get("steps_per_epoch")
    if steps is not None:
        batch_size = fit_kwargs.get("batch_size") or 32
        epochs = fit_kwargs.get("epochs", 1) - fit_kwargs.get(
            "initial_epoch", 0
        )
        if epochs * steps * batch_size < _num_samples(x):
            return (
                "training sees fewer samples than the data holds, so "
                "computing features for all of it would not pay off"
            )
    return None


def fit_on_cached_features(model, x, y, validation_data, fit_kwargs):
    """Trains `model.head` on cached features; returns the `History`.

    Args:
        model: the `TACModel`, compiled.
        x, y, validation_data: as given to `TACModel.fit` (arrays).
        fit_kwargs: the other keyword arguments of `fit`.
    """
    fit_kwargs = dict(fit_kwargs)
    verbose = fit_kwargs.pop("verbose", "auto")
    batch_size = fit_kwargs.get("batch_size") or 32
    extractor = FeatureExtractor.of(model)
    width = _feature_bytes_per_sample(model)
    total = _num_samples(x) + (
        _num_samples(validation_data[0]) if validation_data else 0
    )
    on_disk = width * total > config.feature_cache_memory_budget()
    where = "a temporary file" if on_disk else "memory"
    _announce(
        "TACModel.fit: base model frozen, so the TAC head trains on tap "
        f"features computed once ({total} samples, {width} bytes each, in "
        f"{where}) instead of re-running the base each step. Pass "
        "`cache_features=False` to turn this off.",
        verbose,
    )
    store = _FeatureStore(on_disk)
    # In the TAC model's tf.distribute scope, if any: the trainer then
    # trains with the strategy the model was built in.
    with distribution.strategy_scope(model):
        trainer = _HeadTrainer(model)
        trainer.compile(
            optimizer=model.optimizer,
            run_eagerly=model.run_eagerly,
            jit_compile=model.jit_compile,
            steps_per_execution=model.steps_per_execution,
        )
    try:
        progress = verbose if verbose in (1, "auto") else 0
        features = store.compute(extractor, x, batch_size, progress)
        labels = y
        if validation_data:
            validation_data = (
                store.compute(extractor, validation_data[0], batch_size, 0),
                *validation_data[1:],
            )
        if on_disk:
            x, y, validation_data, fit_kwargs = _as_batches(
                features, y, validation_data, fit_kwargs
            )
        else:
            x = features
        callbacks = keras.callbacks.CallbackList(
            fit_kwargs.pop("callbacks", None),
            add_history=True,
            add_progbar=verbose not in (0, False),
            verbose=1 if verbose == "auto" else verbose,
            epochs=fit_kwargs.get("epochs", 1),
            steps=_steps_per_epoch(x, fit_kwargs),
            model=model,
        )
        with jax_backend.state_synced_through(model, trainer):
            trainer.fit(
                x,
                y,
                validation_data=validation_data,
                callbacks=callbacks,
                verbose=verbose,
                **fit_kwargs,
            )
        if model.confidence_layer is not None:
            # The training statistics, from the features at hand.
            statistics.fit_after_training(
                model,
                lambda: statistics.fit_statistics_from_features(
                    model,
                    features[BASE_OUTPUT_KEY],
                    [features[tap_key(i)] for i in range(extractor.num_taps)],
                    labels,
                ),
            )
        return model.history
    finally:
        store.close()


class _HeadTrainer(keras.Model):
    """The model `fit` trains on cached features: the TAC model's own head,
    loss and metrics, on `{base_output, pooled_0, ...}` inputs."""

    def __init__(self, tac):
        # Not tracked: the base (and its weights) is no part of this model.
        object.__setattr__(self, "_tac", tac)
        super().__init__(name=f"{tac.name}_on_cached_features")
        self.head = tac.head
        # The code noise's random state, threaded through compiled steps.
        self.seed_generator = tac.seed_generator
        self.base_accuracy_tracker = keras.metrics.Mean(name="base_accuracy")
        self.tac_accuracy_tracker = keras.metrics.Mean(name="tac_accuracy")
        self.built = True

    # Callbacks see (and stop) the TAC model, not this one.
    @property
    def stop_training(self):
        return self._tac.stop_training

    @stop_training.setter
    def stop_training(self, value):
        self._tac.stop_training = value

    @property
    def history(self):
        return getattr(self._tac, "history", None)

    def call(self, features, training=False):
        num_taps = len(self.head.profile_layers)
        pooled = [features[tap_key(i)] for i in range(num_taps)]
        outputs = dict(self.head(pooled, training=training))
        base_output = features[BASE_OUTPUT_KEY]
        outputs["base_output"] = base_output
        outputs["prediction"] = keras.ops.cast(
            keras.ops.argmax(base_output, axis=-1), "int32"
        )
        return outputs

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        return self._tac.compute_loss(x, y, y_pred, sample_weight, training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self._tac.update_accuracies(
            (self.base_accuracy_tracker, self.tac_accuracy_tracker),
            y,
            y_pred,
            sample_weight,
        )
        return self.get_metrics_result()


class _FeatureStore:
    """Owns the cached arrays (and the temporary directory, if any)."""

    def __init__(self, on_disk):
        self.on_disk = on_disk
        self.directory = None
        self.count = 0

    def compute(self, extractor, x, batch_size, verbose):
        """Pooled taps and base output of every sample of `x`, streamed."""
        num_samples = _num_samples(x)
        # Inference keeps no activations for backpropagation, so larger
        # batches than training's fit in the same memory.
        step = max(batch_size, min(256, 4 * batch_size))
        keys = [BASE_OUTPUT_KEY] + [
            tap_key(i) for i in range(extractor.num_taps)
        ]
        arrays = None
        start = 0
        for batch in extractor.batches(x, step, verbose, "fit"):
            values = [batch.base_output, *batch.pooled]
            if arrays is None:
                arrays = [
                    self._allocate((num_samples, *v.shape[1:]), v.dtype)
                    for v in values
                ]
            stop = start + len(batch.base_output)
            for array, value in zip(arrays, values):
                array[start:stop] = value
            start = stop
        return dict(zip(keys, arrays))

    def _allocate(self, shape, dtype):
        if not self.on_disk:
            return np.empty(shape, dtype)
        if self.directory is None:
            self.directory = tempfile.mkdtemp(prefix="keras_tac_features_")
        self.count += 1
        path = f"{self.directory}/features_{self.count}.npy"
        return np.lib.format.open_memmap(
            path, mode="w+", dtype=dtype, shape=shape
        )

    def close(self):
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def _as_batches(features, y, validation_data, fit_kwargs):
    """Disk-cached features as `ArrayBatches`, so that `fit` reads one batch
    at a time (the array adapter of TensorFlow would load them whole)."""
    batch_size = fit_kwargs.pop("batch_size", None) or 32
    shuffle = fit_kwargs.pop("shuffle", True)
    sample_weight = fit_kwargs.pop("sample_weight", None)
    split = fit_kwargs.pop("validation_split", 0.0) or 0.0
    rows = np.arange(_num_samples(features))
    y = np.asarray(y)
    sample_weight = None if sample_weight is None else np.asarray(sample_weight)
    if split and validation_data is None:
        # As Keras splits arrays: the last fraction, before shuffling.
        cut = int(math.ceil(len(rows) * (1.0 - split)))
        validation_data = ArrayBatches(
            features, y, sample_weight, batch_size, rows=rows[cut:]
        )
        rows = rows[:cut]
    elif validation_data is not None:
        val_weight = validation_data[2] if len(validation_data) > 2 else None
        validation_data = ArrayBatches(
            validation_data[0],
            np.asarray(validation_data[1]),
            None if val_weight is None else np.asarray(val_weight),
            fit_kwargs.pop("validation_batch_size", None) or batch_size,
        )
    train = ArrayBatches(
        features, y, sample_weight, batch_size, rows=rows, shuffle=shuffle
    )
    fit_kwargs["shuffle"] = False
    return train, None, validation_data, fit_kwargs


def _steps_per_epoch(x, fit_kwargs):
    """The batches per epoch, as Keras's `fit` would count them."""
    if fit_kwargs.get("steps_per_epoch"):
        return fit_kwargs["steps_per_epoch"]
    if isinstance(x, keras.utils.PyDataset):
        return len(x)
    num_samples = _num_samples(x)
    split = fit_kwargs.get("validation_split") or 0.0
    if split:
        num_samples = int(math.ceil(num_samples * (1.0 - split)))
    return math.ceil(num_samples / (fit_kwargs.get("batch_size") or 32))


def _announce(message, verbose):
    if verbose in (0, False):
        logger.info(message)
    else:
        keras_internals.print_msg(message)


def _feature_bytes_per_sample(model):
    widths = [layer.input_width for layer in model.head.profile_layers]
    return 4 * (model.num_classes + sum(widths))


def _num_samples(x):
    return int(keras.tree.flatten(x)[0].shape[0])
