"""Cached-feature add-on training for `TACModel.fit`.

With a frozen base model (`train_base=False`), inputs the base sees in
inference mode, and data without random augmentation, the tapped
activations of an input are the same at every epoch. The only trainable part
of a TAC add-on (the `ActivationProfile` layers) starts with a weight-free
global average pooling (`TapPooling`), so the pooled taps are exact inputs
to the rest of the add-on. `TACModel.fit` then runs the base model once over
the data, keeps the pooled taps and the base head's output (in memory, or in
a disk memmap above `MEMORY_BUDGET_BYTES`), and trains the very same profile
layers on them through the ordinary Keras `fit` (callbacks, history,
validation, progress bar): an epoch costs the add-on's few small matrix
products instead of a forward pass of the base.

The cached features are passed to `TACModel.call` as a dict whose keys are
`BASE_OUTPUT_KEY` and `tap_key(i)`; `call` recognises that structure and
skips the base model.
"""

import logging
import math
import shutil
import tempfile
import weakref

import keras
import numpy as np

from keras_tac.src import jax_backend
from keras_tac.src.layers.tap_pooling import TapPooling
from keras_tac.src.streaming import ArrayBatches
from keras_tac.src.validation import model_inputs

# Cached features larger than this many bytes (training and validation
# together) go to a memory-mapped file in a temporary directory, removed
# when `fit` returns. Set `keras_tac.feature_cache.MEMORY_BUDGET_BYTES` to
# change it.
MEMORY_BUDGET_BYTES = 1 << 30

BASE_OUTPUT_KEY = "tac_cached_base_output"
TAP_KEY_PREFIX = "tac_cached_tap_"

logger = logging.getLogger("keras_tac")

_FEATURE_MODELS = weakref.WeakKeyDictionary()


def tap_key(index):
    """The dict key of the pooled features of tap `index`."""
    return f"{TAP_KEY_PREFIX}{index}"


def is_cached_features(inputs):
    """True when `inputs` is a dict of cached features, not model inputs."""
    return isinstance(inputs, dict) and BASE_OUTPUT_KEY in inputs


def unpack_cached_features(inputs, num_taps):
    """`(base_output, [pooled tap 0, ...])` from a dict of cached features."""
    return inputs[BASE_OUTPUT_KEY], [
        inputs[tap_key(index)] for index in range(num_taps)
    ]


def reason_not_to_cache(model, x, y, fit_kwargs):
    """Why `fit` cannot train on cached features, or `None` when it can.

    Caching is exact only when the tapped activations of an input cannot
    change between epochs: the base is frozen and runs in inference mode,
    the inputs are fixed arrays (a dataset or generator may augment at
    random), and nothing mixes inputs (mixup).
    """
    if is_cached_features(x):
        return "`x` already holds cached features"
    if model.train_base:
        return "the base model trains jointly (`train_base=True`)"
    if model.base_model.trainable_weights:
        return "the base model has trainable weights"
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


def fit_on_cached_features(model, fit, x, y, validation_data, fit_kwargs):
    """Runs `fit` (the Keras `Model.fit` of `model`) on cached features.

    Args:
        model: the `TACModel`.
        fit: `keras.Model.fit` bound to `model`.
        x, y, validation_data: as given to `TACModel.fit`.
        fit_kwargs: the other keyword arguments of `fit`.

    Returns:
        The `History` of `fit`.
    """
    fit_kwargs = dict(fit_kwargs)
    verbose = fit_kwargs.get("verbose", "auto")
    batch_size = fit_kwargs.get("batch_size") or 32
    validation_arrays = (
        isinstance(validation_data, (list, tuple))
        and len(validation_data) in (2, 3)
        and model_inputs.is_arrays(validation_data[0])
    )
    width = _feature_bytes_per_sample(model)
    num_samples = _num_samples(x)
    total = num_samples + (
        _num_samples(validation_data[0]) if validation_arrays else 0
    )
    on_disk = width * total > MEMORY_BUDGET_BYTES
    where = "a temporary file" if on_disk else "memory"
    _announce(
        "TACModel.fit: base model frozen, so the profile layers train on "
        f"tap features computed once ({total} samples, {width} bytes each, "
        f"in {where}) instead of re-running the base each step. Pass "
        "`cache_features=False` to turn this off.",
        verbose,
    )
    store = _FeatureStore(on_disk)
    try:
        features = store.compute(model, x, batch_size, verbose)
        if validation_arrays:
            validation_data = (
                store.compute(model, validation_data[0], batch_size, verbose),
                *validation_data[1:],
            )
        if on_disk:
            x, y, validation_data, fit_kwargs = _as_batches(
                features, y, validation_data, fit_kwargs
            )
        else:
            x = features
        return fit(x, y, validation_data=validation_data, **fit_kwargs)
    finally:
        store.close()


def feature_model(model):
    """A functional model `inputs -> [base output, *pooled taps]`.

    Built on `model._tap_model` (so it shares the base's weights and runs
    one forward pass), once per `TACModel`, with one `TapPooling` per tap in
    the dtype policy of the profile layer's own pooling.
    """
    cached = _FEATURE_MODELS.get(model)
    if cached is not None:
        return cached
    source = model._tap_model
    outputs = [source.outputs[0]]
    for layer, tap in zip(model.profile_layers, source.outputs[1:]):
        pooling = TapPooling(dtype=layer.pooling.dtype_policy)
        outputs.append(pooling(tap))
    result = keras.Model(source.input, outputs, name="tac_feature_model")
    _FEATURE_MODELS[model] = result
    return result


class _FeatureStore:
    """Owns the cached arrays (and the temporary directory, if any)."""

    def __init__(self, on_disk):
        self.on_disk = on_disk
        self.directory = None
        self.count = 0

    def compute(self, model, x, batch_size, verbose):
        """Pooled taps and base output of every sample of `x`, streamed."""
        extractor = feature_model(model)
        if extractor.jit_compile != model.jit_compile:
            extractor.jit_compile = model.jit_compile
            extractor.predict_function = None
        with jax_backend.inference_compilation():
            extractor.make_predict_function()
        num_samples = _num_samples(x)
        # Inference keeps no activations for backpropagation, so larger
        # batches than training's fit in the same memory.
        step = max(batch_size, min(256, 4 * batch_size))
        step = min(step, num_samples)
        arrays = None
        progbar = None
        if verbose not in (0, False):
            progbar = keras.utils.Progbar(num_samples, unit_name="sample")
        for start in range(0, num_samples, step):
            stop = min(start + step, num_samples)
            # The last batch is padded to full size: one compiled shape.
            batch = keras.tree.map_structure(
                lambda a, start=start, stop=stop: model_inputs.pad_batch(
                    a[start:stop], step
                ),
                x,
            )
            outputs = extractor.predict_on_batch(batch)
            outputs = [
                keras.ops.convert_to_numpy(o)[: stop - start] for o in outputs
            ]
            if arrays is None:
                arrays = [
                    self._allocate((num_samples, *o.shape[1:]), o.dtype)
                    for o in outputs
                ]
            for array, output in zip(arrays, outputs):
                array[start:stop] = output
            if progbar is not None:
                progbar.update(stop)
        keys = [BASE_OUTPUT_KEY] + [tap_key(i) for i in range(len(arrays) - 1)]
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
    elif validation_data is not None and is_cached_features(validation_data[0]):
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


def _announce(message, verbose):
    if verbose in (0, False):
        logger.info(message)
    else:
        print(message)


def _feature_bytes_per_sample(model):
    source = feature_model(model)
    total = 0
    for output in source.outputs:
        size = int(np.prod(output.shape[1:]))
        total += size * _itemsize(output.dtype)
    return total


def _itemsize(dtype):
    try:
        return np.dtype(keras.backend.standardize_dtype(dtype)).itemsize
    except TypeError:
        # bfloat16 and other types NumPy does not know.
        return 2 if "16" in str(dtype) else 4


def _num_samples(x):
    return int(keras.tree.flatten(x)[0].shape[0])
