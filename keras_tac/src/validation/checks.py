"""Checks of arguments and labels that fail early with a message naming
what was expected and what came. Pure NumPy: no Keras import, so the
NumPy-only modules (`codes`, `metrics`, `thresholds`) can use them without
a backend. Checks of model inputs, which need Keras, are in
`model_inputs`."""

import math
import numbers

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
