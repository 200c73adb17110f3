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
import os
import shutil
import tempfile
import weakref

import keras
import numpy as np

from keras_tac.src import config
from keras_tac.src import disk_cache
from keras_tac.src import distribution
from keras_tac.src import feature_graph
from keras_tac.src import keras_internals
from keras_tac.src import statistics
from keras_tac.src import training as training_lib
from keras_tac.src import training_budget
from keras_tac.src.features import FeatureExtractor
from keras_tac.src.features import dataset_elements
from keras_tac.src.streaming import ArrayBatches
from keras_tac.src.validation import model_inputs

BASE_OUTPUT_KEY = "base_output"

logger = logging.getLogger("keras_tac")


def tap_key(index):
    """The dict key of the pooled features of tap `index`."""
    return f"pooled_{index}"


def should_cache(
    model,
    x,
    y,
    validation_data,
    cache_features,
    fit_kwargs,
    augmentation=None,
    directory=None,
):
    """Whether `fit` trains on cached features, given `cache_features`
    (`None`: when valid, `True`: required, `False`: never) and the cache
    `directory` (`None`, or a path: required there)."""
    if cache_features not in (None, True, False):
        raise ValueError(
            "Invalid `cache_features`: expected None, True or False. "
            f"Received: cache_features={cache_features!r}"
        )
    if directory is not None and not isinstance(directory, (str, os.PathLike)):
        raise ValueError(
            "Invalid `feature_cache_dir`: expected None or a directory path "
            f"(str or os.PathLike). Received: feature_cache_dir={directory!r}"
        )
    if directory is not None and cache_features is False:
        raise ValueError(
            "`feature_cache_dir` names a feature cache but "
            "`cache_features=False` turns it off: pass one of them."
        )
    if cache_features is False:
        return False
    explicit = bool(cache_features) or directory is not None
    reason = reason_not_to_cache(
        model, x, y, validation_data, fit_kwargs, explicit
    )
    if augmentation is not None:
        reason = "`augmentation` transforms the inputs at random each step"
    if reason is not None and explicit:
        asked = (
            "`cache_features=True`"
            if directory is None
            else "`feature_cache_dir` is set"
        )
        raise ValueError(
            f"{asked} but cached-feature training is not valid here: {reason}."
        )
    return reason is None


def is_dataset(data):
    """A `keras.utils.PyDataset` or a `tf.data.Dataset`: data that can be
    read more than once, a batch at a time."""
    return isinstance(data, keras.utils.PyDataset) or hasattr(
        data, "element_spec"
    )


def reason_not_to_cache(
    model, x, y, validation_data, fit_kwargs, explicit=False
):
    """Why `fit` cannot train on cached features, or `None` when it can.

    Caching is exact only when the tapped activations of an input cannot
    change between epochs: the base is frozen and runs in inference mode,
    the inputs are fixed (a dataset may augment at random, so datasets are
    cached only when asked for, `explicit`: the caller vouches that every
    pass gives the same batches), and nothing mixes inputs (mixup).
    """
    if model.train_base:
        return "the base model trains jointly (`train_base=True`)"
    if model.mixup_alpha > 0:
        return "mixup (`mixup_alpha > 0`) mixes inputs at random each step"
    arrays = (
        x is not None
        and model_inputs.is_arrays(x)
        and y is not None
        and model_inputs.is_arrays(y)
    )
    if not arrays and not (explicit and is_dataset(x)):
        if explicit:
            return (
                "`x` is neither arrays (with labels `y`) nor a "
                "`tf.data.Dataset` or `keras.utils.PyDataset` (a Python "
                "generator can be read only once: wrap it in a "
                f"`keras.utils.PyDataset`). Received: x of type "
                f"{type(x).__name__}"
            )
        return (
            "`x` and `y` are not NumPy arrays or tensors (a dataset or "
            "generator may augment its inputs at random; pass "
            "`cache_features=True` to cache a dataset that does not)"
        )
    if validation_data is not None and not (
        (
            isinstance(validation_data, (list, tuple))
            and len(validation_data) in (2, 3)
            and model_inputs.is_arrays(validation_data[0])
        )
        or (explicit and is_dataset(validation_data))
    ):
        return "`validation_data` is not a tuple of arrays"
    steps = fit_kwargs.get("steps_per_epoch")
    if steps is not None and arrays:
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


def fit_on_cached_features(
    model, x, y, validation_data, fit_kwargs, directory=None, passes=1
):
    """Trains `model.head` on cached features; returns the `History`.

    Args:
        model: the `TACModel`, compiled.
        x, y, validation_data: as given to `TACModel.fit` (arrays, or
            datasets: a `tf.data.Dataset` or `keras.utils.PyDataset`).
        fit_kwargs: the other keyword arguments of `fit`.
        directory: the cache directory the user named (kept, and reused
            when it matches the model and the data), or `None` (memory, or
            a temporary directory removed afterwards).
        passes: int. Passes over the training features per epoch (the
            automatic budget's, `keras_tac.src.training_budget`).
    """
    fit_kwargs = dict(fit_kwargs)
    verbose = fit_kwargs.pop("verbose", "auto")
    batch_size = fit_kwargs.get("batch_size") or 32
    # The cache keeps the pooled taps and the base output: the pass skips
    # the head.
    extractor = FeatureExtractor.of(model, pooled_only=True)
    width = _feature_bytes_per_sample(model)
    streamed = is_dataset(x) or is_dataset(validation_data)
    if streamed:
        total = "all"
        on_disk = True
    else:
        total = _num_samples(x) + (
            _num_samples(validation_data[0]) if validation_data else 0
        )
        on_disk = (
            directory is not None
            or width * total > config.feature_cache_memory_budget()
        )
    if directory is not None:
        where = f"the cache directory {os.fspath(directory)!r}"
    else:
        where = "a temporary directory" if on_disk else "memory"
    _announce(
        "TACModel.fit: base model frozen, so the TAC head trains on tap "
        f"features computed once ({total} samples, {width} bytes each, in "
        f"{where}) instead of re-running the base each step. Pass "
        "`cache_features=False` to turn this off.",
        verbose,
    )
    store = _FeatureStore(on_disk, directory, model, verbose)
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
        features, labels, weights = store.compute(
            "train", extractor, x, y, batch_size, progress
        )
        if streamed:
            fit_kwargs["batch_size"] = fit_kwargs.get("batch_size") or (
                store.batch_size
            )
            if weights is not None:
                fit_kwargs["sample_weight"] = weights
        if validation_data is not None:
            data = validation_data
            val_y = None
            if not is_dataset(data):
                data, val_y = validation_data[0], validation_data[1]
            val_features, val_labels, val_weights = store.compute(
                "validation", extractor, data, val_y, batch_size, 0
            )
            if not is_dataset(validation_data) and len(validation_data) > 2:
                val_weights = validation_data[2]
            validation_data = (val_features, val_labels) + (
                () if val_weights is None else (val_weights,)
            )
        if on_disk:
            x, y, validation_data, fit_kwargs = _as_batches(
                features, labels, validation_data, fit_kwargs, passes
            )
        else:
            x, y = training_budget.repeat((features, y), passes)
            fit_kwargs["sample_weight"] = training_budget.repeat(
                fit_kwargs.get("sample_weight"), passes
            )
        callbacks = keras.callbacks.CallbackList(
            fit_kwargs.pop("callbacks", None),
            add_history=True,
            add_progbar=verbose not in (0, False),
            verbose=1 if verbose == "auto" else verbose,
            epochs=fit_kwargs.get("epochs", 1),
            steps=training_budget.steps_per_epoch(x, fit_kwargs),
            model=model,
        )
        _ACTIVE_TRAINERS[model] = trainer
        try:
            trainer.fit(
                x,
                y,
                validation_data=validation_data,
                callbacks=callbacks,
                verbose=verbose,
                **fit_kwargs,
            )
        finally:
            del _ACTIVE_TRAINERS[model]
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
    objective and metrics, on `{base_output, pooled_0, ...}` inputs."""

    def __init__(self, tac):
        super().__init__(name=f"{tac.name}_on_cached_features")
        # Weak, and so not tracked: the base (and its weights) is no part
        # of this model.
        self.tac = weakref.ref(tac)
        self.head = tac.head
        # The code noise's random state, threaded through compiled steps.
        self.seed_generator = tac.seed_generator
        self.base_accuracy_tracker = keras.metrics.Mean(name="base_accuracy")
        self.tac_accuracy_tracker = keras.metrics.Mean(name="tac_accuracy")
        self.built = True

    # Callbacks see (and stop) the TAC model, not this one.
    @property
    def stop_training(self):
        return self.tac().stop_training

    @stop_training.setter
    def stop_training(self, value):
        self.tac().stop_training = value

    # The epoch `fit` starts at, which `keras.callbacks.BackupAndRestore`
    # sets on the TAC model (with the weights it restores there): read
    # from it. Keras's `__init__` sets `None` before `tac` exists.
    @property
    def _initial_epoch(self):
        tac = self.__dict__.get("tac")
        return getattr(tac(), "_initial_epoch", None) if tac else None

    @_initial_epoch.setter
    def _initial_epoch(self, value):
        tac = self.__dict__.get("tac")
        if tac is not None:
            tac()._initial_epoch = value

    @property
    def history(self):
        return getattr(self.tac(), "history", None)

    def call(self, features, training=False):
        num_taps = len(self.head.profile_layers)
        pooled = [features[tap_key(i)] for i in range(num_taps)]
        # The head only: the confidence needs no training.
        return feature_graph.head_outputs(
            self.tac(),
            features[BASE_OUTPUT_KEY],
            pooled,
            training,
            confidence=False,
        )

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        return training_lib.objective(
            self.tac(), y, y_pred, sample_weight, training
        )

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        training_lib.update_accuracies(
            (self.base_accuracy_tracker, self.tac_accuracy_tracker),
            self.tac().num_classes,
            y,
            y_pred,
            sample_weight,
        )
        return self.get_metrics_result()


def active_trainer(tac):
    """The head trainer of a cached-feature `fit` of `tac` now running, or
    `None`: on JAX its state is the TAC model's current one."""
    return _ACTIVE_TRAINERS.get(tac)


_ACTIVE_TRAINERS = weakref.WeakKeyDictionary()


class _FeatureStore:
    """Computes the cached features of each part (`"train"`,
    `"validation"`), in memory or on disk, and owns the temporary
    directory, if any.

    On disk, each part is a `disk_cache` directory: in the directory the
    user named, reused when its manifest matches the model and the data,
    else rebuilt; or in a temporary directory removed by `close`.
    """

    def __init__(self, on_disk, directory, model, verbose):
        self.on_disk = on_disk
        self.named = directory is not None
        self.root = None if directory is None else os.fspath(directory)
        self.verbose = verbose
        self.batch_size = None
        self.model_digest = (
            disk_cache.model_fingerprint(model) if self.named else ""
        )

    def compute(self, part, extractor, x, y, batch_size, verbose):
        """`(features, labels, sample_weight)` of every sample of `x`.

        Arrays keep their own `y` (and the caller its sample weights); a
        dataset's labels and sample weights are cached beside its features.
        """
        # Inference keeps no activations for backpropagation, so larger
        # batches than training's fit in the same memory.
        step = max(batch_size, min(256, 4 * batch_size))
        if not self.on_disk:
            return self._in_memory(extractor, x, step, verbose), y, None
        if self.root is None:
            self.root = tempfile.mkdtemp(prefix="keras_tac_features_")
        directory = os.path.join(self.root, part)
        data_digest = ""
        if self.named:
            manifest = disk_cache.read_manifest(directory)
            reason = disk_cache.mismatch(manifest, self.model_digest)
            if reason is None:
                # The model matches: hash the data (no base pass) to know.
                data_digest = _data_fingerprint(x, y).hexdigest()
                reason = disk_cache.mismatch(
                    manifest, self.model_digest, data_digest
                )
            if reason is None:
                arrays = disk_cache.open_arrays(directory, manifest)
                if arrays is not None:
                    _announce(
                        f"TACModel.fit: reusing the cached {part} features "
                        f"in {directory!r} (they match the model and data).",
                        self.verbose,
                    )
                    return self._unpack(
                        arrays, manifest.get("batch_size"), x, y
                    )
                reason = "a cached file is truncated or corrupted"
            if manifest is not None or os.path.exists(directory):
                _announce(
                    f"TACModel.fit: rebuilding the cached {part} features "
                    f"in {directory!r}: {reason}.",
                    self.verbose,
                )
        arrays, batch_size = self._build(
            directory, extractor, x, y, step, verbose, data_digest
        )
        return self._unpack(arrays, batch_size, x, y)

    def _build(self, directory, extractor, x, y, step, verbose, data_digest):
        writer = disk_cache.PartWriter(directory)
        fingerprint = disk_cache.DataFingerprint()
        batch_size = None
        try:
            if is_dataset(x):
                for inputs, labels, weights in _dataset_batches(x):
                    batch = extractor.features_of(inputs, "fit")
                    batch_size = batch_size or len(batch.base_output)
                    writer.append(_feature_arrays(batch, labels, weights))
                    if self.named:
                        fingerprint.update(inputs, labels, weights)
                if not writer.files:
                    raise ValueError(
                        "`fit` received a dataset with no batches: expected "
                        "at least one batch of (inputs, labels)."
                    )
                data_digest = fingerprint.hexdigest()
            else:
                for batch in extractor.batches(
                    x, step, verbose, "fit", checked=True
                ):
                    writer.append(_feature_arrays(batch))
                if self.named and not data_digest:
                    data_digest = _data_fingerprint(x, y).hexdigest()
        except BaseException:
            writer.abort()
            raise
        writer.finish(
            {
                "model": self.model_digest,
                "data": data_digest,
                "batch_size": batch_size,
            }
        )
        arrays = disk_cache.open_arrays(
            directory, disk_cache.read_manifest(directory)
        )
        return arrays, batch_size

    def _unpack(self, arrays, batch_size, x, y):
        labels = arrays.pop(LABELS_KEY, None)
        weights = arrays.pop(WEIGHTS_KEY, None)
        if not is_dataset(x):
            labels = y
        elif labels is None:
            raise ValueError(
                "`fit` needs labels: expected a dataset of (inputs, labels) "
                "or (inputs, labels, sample_weight). Received a dataset of "
                "inputs only."
            )
        else:
            # The dataset's batch size, to train on the cache in batches
            # of the same size.
            self.batch_size = self.batch_size or batch_size
        return arrays, labels, weights

    @staticmethod
    def _in_memory(extractor, x, step, verbose):
        num_samples = _num_samples(x)
        keys = [BASE_OUTPUT_KEY] + [
            tap_key(i) for i in range(extractor.num_taps)
        ]
        arrays = None
        start = 0
        for batch in extractor.batches(x, step, verbose, "fit", checked=True):
            values = [batch.base_output, *batch.pooled]
            if arrays is None:
                arrays = [
                    np.empty((num_samples, *v.shape[1:]), v.dtype)
                    for v in values
                ]
            stop = start + len(batch.base_output)
            for array, value in zip(arrays, values):
                array[start:stop] = value
            start = stop
        return dict(zip(keys, arrays))

    def close(self):
        if self.root is not None and not self.named:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


LABELS_KEY = "labels"
WEIGHTS_KEY = "sample_weight"


def _feature_arrays(batch, labels=None, weights=None):
    arrays = {BASE_OUTPUT_KEY: batch.base_output}
    for index, pooled in enumerate(batch.pooled):
        arrays[tap_key(index)] = pooled
    if labels is not None:
        arrays[LABELS_KEY] = np.asarray(labels)
    if weights is not None:
        arrays[WEIGHTS_KEY] = np.asarray(weights)
    return arrays


def _dataset_batches(data):
    """`(inputs, labels or None, sample_weight or None)` per batch of a
    finite `tf.data.Dataset` or `PyDataset`."""
    cardinality = getattr(data, "cardinality", None)
    if cardinality is not None and int(cardinality()) == -1:
        raise ValueError(
            "Cached-feature training reads the whole dataset once: expected "
            "a finite `tf.data.Dataset`. Received an infinite one (drop "
            "`.repeat()`, or pass `cache_features=False`)."
        )
    for element in dataset_elements(data):
        if not isinstance(element, tuple):
            element = (element,)
        yield (
            element[0],
            element[1] if len(element) > 1 else None,
            element[2] if len(element) > 2 else None,
        )


def _data_fingerprint(x, y):
    if is_dataset(x):
        fingerprint = disk_cache.DataFingerprint()
        for batch in _dataset_batches(x):
            fingerprint.update(*batch)
        return fingerprint
    return disk_cache.array_fingerprint(x, y)


def _as_batches(features, y, validation_data, fit_kwargs, passes=1):
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
        features,
        y,
        sample_weight,
        batch_size,
        rows=np.tile(rows, passes),
        shuffle=shuffle,
    )
    fit_kwargs["shuffle"] = False
    return train, None, validation_data, fit_kwargs


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
