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


def check_labels(y, num_classes, num_samples=None, where="labels"):
    """Checks class labels, with one rule everywhere (`fit`, `evaluate`,
    `calibrate`, the scorers, `tac_loss`):

    - class indices of shape `(n,)` or `(n, 1)`: whole numbers in
      `[0, num_classes)`, of an integer, bool or float dtype (`3.0` is
      class 3; `2.5` and NaN are errors);
    - class probabilities of shape `(n, num_classes)` (one-hot or mixed):
      finite, non-negative rows that sum to 1.

    Args:
        y: array-like of labels.
        num_classes: int.
        num_samples: int or `None`. The number of labels expected.
        where: str. Name of the caller, for error messages.

    Returns:
        The labels as an array: int64 class indices `(n,)`, or the float
        probability rows `(n, num_classes)`.
    """
    if y is None:
        raise ValueError(f"`{where}` expected labels `y`. Received: y=None")
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise TypeError(
            f"Invalid labels for `{where}`: expected integer class labels or "
            f"class probabilities. Received dtype {y.dtype}"
        )
    if num_samples is not None and y.shape[:1] != (num_samples,):
        raise ValueError(
            f"Invalid labels for `{where}`: expected {num_samples} labels, one "
            f"per input sample. Received shape {y.shape}"
        )
    if y.ndim == 2 and y.shape[1] == num_classes and num_classes > 1:
        sums = y.astype(np.float64).sum(axis=1)
        if (
            not np.all(np.isfinite(y))
            or np.any(y < 0)
            or np.any(np.abs(sums - 1.0) > 1e-3)
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
        shape = "n" if num_samples is None else num_samples
        raise ValueError(
            f"Invalid labels for `{where}`: expected integer class labels of "
            f"shape ({shape},) or class probabilities of shape ({shape}, "
            f"{num_classes}). Received shape {y.shape}"
        )
    values = y.astype(np.float64)
    bad = ~(
        np.isfinite(values)
        & (values >= 0)
        & (values < num_classes)
        & (np.floor(values) == values)
    )
    if np.any(bad):
        raise ValueError(
            f"Invalid labels for `{where}`: expected whole numbers in [0, "
            f"{num_classes - 1}] for {num_classes} classes. Received "
            f"{int(bad.sum())} invalid label(s), e.g. {values[bad][0]!r}"
        )
    return values.astype(np.int64)


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


def check_choice(name, value, choices):
    """One of `choices` (a tuple of strings)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"Invalid `{name}`: expected one of {list(choices)}. "
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


def check_binary(name, values, shape=None):
    """Checks a binary array: booleans, or integers or floats that are all
    0 or 1 (class labels such as `3`, or `0.5`, are refused).

    Args:
        name: str, the argument's name, for the error message.
        values: array-like.
        shape: tuple or `None`. The shape `values` must have. Defaults to
            `None` (any shape).

    Returns:
        A NumPy bool array of the same shape.

    Example:

    >>> check_binary("correct", [1, 0, 1]).tolist()
    [True, False, True]
    """
    values = np.asarray(values)
    if shape is not None and values.shape != tuple(shape):
        raise ValueError(
            f"Invalid `{name}`: expected a boolean array of shape "
            f"{tuple(shape)}, one value per input. Received shape "
            f"{values.shape}"
        )
    if values.dtype == bool:
        return values
    if values.dtype.kind not in "iuf":
        raise ValueError(
            f"Invalid `{name}`: expected booleans or 0/1 values. Received "
            f"dtype {values.dtype}"
        )
    binary = (values == 0) | (values == 1)
    if not binary.all():
        wrong = np.unique(values[~binary])
        listed = ", ".join(str(value) for value in wrong[:5].tolist())
        more = ", ..." if len(wrong) > 5 else ""
        raise ValueError(
            f"Invalid `{name}`: expected booleans or 0/1 values (not class "
            f"labels or probabilities). Received {int((~binary).sum())} "
            f"value(s) outside {{0, 1}}: {listed}{more}"
        )
    return values.astype(bool)
