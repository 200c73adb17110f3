"""Checks of user data that fail early with a message naming what was
expected and what came, instead of deep inside a backend."""

import math
import numbers

import keras
import numpy as np


def is_array_like(data):
    """True for NumPy arrays and backend tensors (things with a shape)."""
    return hasattr(data, "shape") and hasattr(data, "dtype")


# Seeds become int32 tensors on some backends (torch's SeedGenerator).
MAX_SEED = 2**31 - 1


def check_seed(seed, name="seed"):
    """Checks a seed: an int in `[0, 2**31 - 1]`, the range every backend
    accepts. Returns it as a Python int."""
    if (
        isinstance(seed, bool)
        or not isinstance(seed, (int, np.integer))
        or not 0 <= seed <= MAX_SEED
    ):
        raise ValueError(
            f"Invalid `{name}`: expected an int in [0, {MAX_SEED}]. "
            f"Received: {name}={seed!r}"
        )
    return int(seed)


def check_inputs(
    x, input_shapes, where, allow_non_finite=False, input_names=None
):
    """Checks arrays against the base model's input shapes and finiteness.

    `x` may be one array or a list / tuple / dict of arrays for a
    multi-input model; datasets and generators are checked elsewhere.
    With `input_names` (the names of the base model's inputs, in the order
    of `input_shapes`), a dict must have exactly those keys and is matched
    by name; without, its values are taken in sorted key order.
    Returns the number of samples.
    """
    if x is None:
        raise ValueError(
            f"`{where}` expected input arrays matching the base model's "
            f"inputs {input_shapes}. Received: x=None"
        )
    if isinstance(x, dict) and input_names is not None:
        if sorted(x) != sorted(input_names):
            raise ValueError(
                f"Invalid input to `{where}`: expected a dict with the keys "
                f"{sorted(input_names)} (the base model's input names). "
                f"Received keys {sorted(x)}"
            )
        x = [x[name] for name in input_names]
    arrays = _flatten(x)
    if len(arrays) != len(input_shapes):
        raise ValueError(
            f"`{where}` expected {len(input_shapes)} input array(s) matching "
            f"the base model's inputs {input_shapes}. Received {len(arrays)}"
        )
    sizes = set()
    for array, expected in zip(arrays, input_shapes):
        if not is_array_like(array):
            array = np.asarray(array)
        shape = tuple(array.shape)
        if len(shape) != len(expected) or any(
            want is not None and want != got
            for want, got in zip(expected[1:], shape[1:])
        ):
            raise ValueError(
                f"Invalid input to `{where}`: expected shape {expected} "
                f"(None = any size). Received shape {shape}"
            )
        if shape[0] == 0:
            raise ValueError(
                f"Invalid input to `{where}`: received an empty batch of "
                f"shape {shape}; expected at least one sample."
            )
        dtype = _dtype_name(array)
        if not _is_numeric(dtype):
            raise TypeError(
                f"Invalid input to `{where}`: expected a numeric array. "
                f"Received dtype {dtype}"
            )
        if not allow_non_finite and "float" in dtype:
            finite = np.isfinite(_to_float_numpy(array))
            if not finite.all():
                bad = int((~finite.reshape(shape[0], -1).all(axis=1)).sum())
                raise ValueError(
                    f"Invalid input to `{where}`: {bad} sample(s) hold NaN or "
                    "infinite values. Expected finite inputs (drop or repair "
                    "those samples)."
                )
        sizes.add(shape[0])
    if len(sizes) != 1:
        raise ValueError(
            f"Invalid input to `{where}`: all input arrays must have the same "
            f"number of samples. Received sizes {sorted(sizes)}"
        )
    return sizes.pop()


def check_labels(y, num_classes, num_samples, where):
    """Checks integer labels `(n,)` / `(n, 1)` in `[0, num_classes)`, or
    class-probability rows `(n, num_classes)` (e.g. one-hot or mixed)."""
    if y is None:
        raise ValueError(f"`{where}` expected labels `y`. Received: y=None")
    y = np.asarray(y)
    if y.shape[:1] != (num_samples,):
        raise ValueError(
            f"Invalid labels for `{where}`: expected {num_samples} labels, one "
            f"per input sample. Received shape {y.shape}"
        )
    if y.ndim == 2 and y.shape[1] == num_classes and num_classes > 1:
        if (
            y.dtype.kind not in "biuf"
            or not np.all(np.isfinite(y))
            or np.any(y < 0)
            or not np.allclose(y.sum(axis=1), 1.0, atol=1e-3)
        ):
            raise ValueError(
                f"Invalid labels for `{where}`: rows of shape (n, "
                f"{num_classes}) are read as class probabilities; expected "
                "finite, non-negative values that sum to 1 per row (for "
                "integer labels pass shape (n,)). Received rows summing to "
                f"{_some_sums(y)}"
            )
        return y
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"Invalid labels for `{where}`: expected integer class labels of "
            f"shape ({num_samples},) or class probabilities of shape "
            f"({num_samples}, {num_classes}). Received shape {y.shape}"
        )
    if y.dtype.kind not in "iu":
        raise TypeError(
            f"Invalid labels for `{where}`: expected integer class labels. "
            f"Received dtype {y.dtype}; convert with `y.astype('int32')` if "
            "the values are whole numbers."
        )
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"Invalid labels for `{where}`: expected values in [0, "
            f"{num_classes - 1}] for {num_classes} classes. Received values "
            f"from {y.min()} to {y.max()}"
        )
    return y


def _some_sums(y):
    try:
        sums = np.unique(np.round(y.astype(np.float64).sum(axis=1), 4))
    except (TypeError, ValueError):
        return f"(non-numeric dtype {y.dtype})"
    return ", ".join(str(value) for value in sums[:4])


def _flatten(x):
    if isinstance(x, dict):
        return [x[key] for key in sorted(x)]
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def _dtype_name(array):
    """Keras's name of a NumPy or backend dtype (`"float32"`, `"bfloat16"`,
    `"bool"`), or the raw dtype's text when Keras does not know it."""
    dtype = getattr(array, "dtype", None)
    try:
        return keras.backend.standardize_dtype(dtype)
    except (TypeError, ValueError, AttributeError):
        return str(dtype)


def _is_numeric(dtype_name):
    return dtype_name == "bool" or dtype_name.startswith(
        ("float", "bfloat", "int", "uint")
    )


def _to_float_numpy(array):
    if not isinstance(array, np.ndarray):
        array = keras.ops.convert_to_numpy(array)
    array = np.asarray(array)
    if array.dtype.kind != "f":
        # bfloat16 (ml_dtypes) is not a NumPy float kind.
        array = array.astype(np.float32)
    return array


def check_number(name, value, low=0.0, high=math.inf):
    """A finite real number in `[low, high]` (bools are refused)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ValueError(
            f"Invalid `{name}`: expected a finite number in [{low}, {high}]. "
            f"Received: {name}={value!r}"
        )


def check_fraction(name, value, closed=True):
    """A real number in `(0, 1]`, or in `(0, 1)` with `closed=False`
    (bools are refused)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.floating))
        or not 0.0 < value
        or not (value <= 1.0 if closed else value < 1.0)
    ):
        interval = "(0, 1]" if closed else "(0, 1)"
        raise ValueError(
            f"Invalid `{name}`: expected a float in {interval}. "
            f"Received: {name}={value!r}"
        )


def check_positive_int(name, value):
    """An int (NumPy ints too) of at least 1 (bools are refused)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < 1
    ):
        raise ValueError(
            f"Invalid `{name}`: expected a positive int. "
            f"Received: {name}={value!r}"
        )


def check_class_indices(y, num_classes, num_samples, where):
    """`check_labels`, then class-probability rows as their argmax: the
    class index of each sample, shape `(n,)`."""
    labels = check_labels(y, num_classes, num_samples, where)
    return labels.argmax(axis=1) if labels.ndim == 2 else labels


def is_arrays(data):
    """True when `data` (or every leaf of a list/tuple/dict) is an array."""
    items = keras.tree.flatten(data)
    return bool(items) and all(is_array_like(item) for item in items)


def pad_batch(array, size):
    """Pads a short last batch to `size` rows by repeating its last row, so
    compiled functions see one batch shape; callers drop the padded rows."""
    array = np.asarray(keras.ops.convert_to_numpy(array))
    missing = size - array.shape[0]
    if missing <= 0:
        return array
    filler = np.repeat(array[-1:], missing, axis=0)
    return np.concatenate([array, filler], axis=0)
