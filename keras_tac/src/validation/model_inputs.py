"""Checks of model inputs (arrays and backend tensors) against a base
model's inputs: shape, dtype, batch size and finiteness. Needs Keras; the
pure-NumPy checks are in `checks`."""

import keras
import numpy as np

from keras_tac.src.validation import checks
from keras_tac.src.validation.checks import is_array_like


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
        x = _by_name(x, input_names, f"a dict of inputs to `{where}`")
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
        _check_shape(shape, expected, where)
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


def check_data(model, x, y, where, allow_non_finite=False):
    """Validates the data given to a `TACModel` method up front: arrays by
    `check_inputs` (and labels by `check_labels` for `fit` / `evaluate`),
    datasets by their element spec. Returns the number of samples of
    arrays, else `None`."""
    if x is None:
        raise ValueError(
            f"`{where}` expected inputs `x` (arrays, or a dataset). "
            "Received: x=None"
        )
    spec = getattr(x, "element_spec", None)
    if spec is not None:
        check_element_spec(model, spec, where)
        return None
    if not is_arrays(x):
        return None
    num_samples = check_inputs(
        x,
        model.input_shapes,
        where,
        allow_non_finite=allow_non_finite,
        input_names=input_names(model.base_model),
    )
    if where in ("fit", "evaluate"):
        checks.check_labels(y, model.num_classes, num_samples, where)
    return num_samples


def check_element_spec(model, spec, where):
    """Checks a `tf.data.Dataset`'s element spec against the model's inputs
    and, for `fit` / `evaluate`, its labels."""
    inputs = spec[0] if isinstance(spec, tuple) else spec
    if isinstance(inputs, dict):
        inputs = _by_name(
            inputs,
            input_names(model.base_model),
            f"the dataset inputs of `{where}`",
        )
    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if len(inputs) == len(model.input_shapes):
        for input_spec, expected in zip(inputs, model.input_shapes):
            shape = getattr(input_spec, "shape", None)
            if shape is None or shape.rank is None:
                continue
            shape = tuple(shape)
            if len(shape) != len(expected) or any(
                want is not None and got is not None and want != got
                for want, got in zip(expected[1:], shape[1:])
            ):
                raise ValueError(
                    f"Invalid dataset for `{where}`: expected batches of "
                    f"inputs of shape {expected} (None = any size). "
                    f"Received element spec shape {shape}"
                )
    if not isinstance(spec, tuple) or len(spec) < 2:
        if where in ("fit", "evaluate"):
            raise ValueError(
                f"`{where}` expected a dataset of (inputs, labels) pairs. "
                f"Received a dataset with element spec {spec}"
            )
        return
    labels = spec[1]
    dtype = getattr(labels, "dtype", None)
    if dtype is not None and not (dtype.is_integer or dtype.is_floating):
        raise TypeError(
            f"`{where}` expected integer labels. Received dtype {dtype}"
        )
    shape = getattr(labels, "shape", None)
    if shape is not None and dtype.is_floating and len(shape) == 2:
        if shape[-1] not in (1, model.num_classes):
            raise TypeError(
                f"`{where}` expected class labels of shape (batch,) or "
                f"(batch, 1), or class probabilities of shape (batch, "
                f"{model.num_classes}). Received labels of dtype {dtype} "
                f"and shape {shape}"
            )


def input_names(model):
    """The names by which a dict of inputs is matched to `model.inputs`."""
    try:
        structure = model.input
    except (AttributeError, ValueError):
        # Sequential models may have `inputs` but no `input` structure.
        structure = None
    if isinstance(structure, dict):
        return sorted(structure)
    return [tensor.name for tensor in model.inputs]


def _by_name(values, names, what):
    """The values of a dict in the order of the base model's input
    `names`, which must be exactly its keys."""
    if sorted(values) != sorted(names):
        raise ValueError(
            f"Invalid keys in {what}: expected {sorted(names)} (the base "
            f"model's input names). Received keys {sorted(values)}"
        )
    return [values[name] for name in names]


def check_tensors(model, inputs):
    """Checks the inputs of `TACModel.call` by their static shapes (when it
    is traced, or called eagerly): a wrong rank or size is an error naming
    the expected shape, not a failure deep in a backend. Sizes unknown
    while tracing pass; values are not read (non-finite inputs are flagged
    in `"input_is_finite"`)."""
    if isinstance(inputs, dict):
        inputs = _by_name(
            inputs, input_names(model.base_model), "the inputs of `call`"
        )
    tensors = keras.tree.flatten(inputs)
    where = f"{type(model).__name__}.call"
    if len(tensors) != len(model.input_shapes):
        raise ValueError(
            f"`{where}` expected {len(model.input_shapes)} input(s) matching "
            f"the base model's inputs {model.input_shapes}. Received "
            f"{len(tensors)}"
        )
    for tensor, expected in zip(tensors, model.input_shapes):
        _check_shape(tuple(tensor.shape), expected, where)


def _check_shape(shape, expected, where):
    """Rank and every size `expected` fixes; a size unknown while tracing
    (None, or a symbolic size) passes."""
    if len(shape) != len(expected) or any(
        isinstance(want, int) and isinstance(got, int) and want != got
        for want, got in zip(expected[1:], shape[1:])
    ):
        raise ValueError(
            f"Invalid input to `{where}`: expected shape {expected} "
            f"(None = any size). Received shape {shape}"
        )
