"""TF Serving's REST predict bodies, in pure Python and NumPy.

The part of a TF Serving predict request (`POST /v1/models/NAME:predict`)
that a model server leaves to the model: turning the decoded JSON body into
one NumPy array per signature input, and the outputs back into the JSON
response TF Serving sends. `keras_tac.serve` (a KServe model server) calls
it; HTTP, JSON parsing and status codes are KServe's.

Request bodies (https://www.tensorflow.org/tfx/serving/api_rest):

- row format: `{"signature_name": "...", "instances": [...]}`, one list
  item per input row: the row's value when the signature has one input
  (or `{name: value}`), `{name: value, ...}` with several inputs;
- columnar format: `{"signature_name": "...", "inputs": ...}`, the whole
  batch: the tensor itself when the signature has one input (or
  `{name: tensor}`), `{name: tensor, ...}` with several.

`"signature_name"` is optional (default `"serving_default"`). Responses:
`{"predictions": [{name: value, ...}, ...]}` for row requests (a list of
plain values when the signature has a single output),
`{"outputs": {name: [...], ...}}` for columnar ones (the tensor itself for
a single output). A malformed body raises `RequestError` (HTTP 400).

This module imports neither Keras nor keras-tac's model code: the serving
process loads it next to TensorFlow or ONNX Runtime alone.
"""

import collections
import json

import numpy as np

DEFAULT_SIGNATURE = "serving_default"
# What an exported `TACModel` answers, in this order (`TACModel.export`).
SERVING_OUTPUTS = (
    "prediction",
    "confidence",
    "accepted",
    "tac_prediction",
    "tac_confidence",
    "probabilities",
    "p_value",
)

Signature = collections.namedtuple(
    "Signature", ["fn", "inputs", "outputs"], defaults=[None]
)
Signature.__doc__ = """A callable serving signature, its inputs and outputs.

`fn(**arrays)` takes one NumPy array per input name and returns a dict of
NumPy arrays (one row per input row). `inputs` (and `outputs`, when known)
map each name to `(dtype, shape)`, a NumPy dtype string and a tuple whose
`None` entries (the batch axis first) take any size."""


class RequestError(ValueError):
    """A malformed predict request; TF Serving answers it with HTTP 400
    and `{"error": str(error)}`."""


def saved_model_signature(function):
    """A `Signature` from a loaded SavedModel's signature function.

    Args:
        function: e.g. `tf.saved_model.load(path).signatures["serve"]`.
            Used through its `structured_input_signature`, keyword calls and
            `.numpy()`, so this module needs no TensorFlow import.

    Returns:
        A `Signature`.
    """
    _, specs = function.structured_input_signature

    def describe(specs):
        return {
            name: (spec.dtype.name, tuple(spec.shape.as_list()))
            for name, spec in specs.items()
        }

    def run(**arrays):
        outputs = function(**arrays)
        return {name: np.asarray(value) for name, value in outputs.items()}

    return Signature(
        run, describe(specs), describe(function.structured_outputs)
    )


_ONNX_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def onnx_signature(session):
    """A `Signature` from an `onnxruntime.InferenceSession`.

    Args:
        session: the session of an exported ONNX file; symbolic dimensions
            (such as `"batch"`) take any size.

    Returns:
        A `Signature`.
    """

    def describe(nodes):
        described = {}
        for node in nodes:
            if node.type not in _ONNX_TYPES:
                raise ValueError(
                    f"Unsupported ONNX type for {node.name!r}: expected one "
                    f"of {sorted(_ONNX_TYPES)}. Received: {node.type}"
                )
            shape = tuple(
                dim if isinstance(dim, int) else None for dim in node.shape
            )
            described[node.name] = (_ONNX_TYPES[node.type], shape)
        return described

    outputs = describe(session.get_outputs())
    names = list(outputs)

    def run(**arrays):
        return dict(zip(names, session.run(names, arrays)))

    return Signature(run, describe(session.get_inputs()), outputs)


def decode_request(body, signatures):
    """Parses a predict request body into input arrays.

    Args:
        body: the decoded JSON body (a `dict`).
        signatures: a `Signature`, or a dict from signature name to
            `Signature`.

    Returns:
        A tuple `(signature_name, arrays, row_format)`: the signature to
        run, a dict of NumPy arrays keyed by input name, and whether the
        request used the row (`"instances"`) format.

    Raises:
        RequestError: if the body is not a valid predict request for the
            signature.

    Example:

    >>> signature = Signature(
    ...     lambda x: {"double": 2 * x}, {"x": ("float32", (None, 2))}
    ... )
    >>> name, arrays, row_format = decode_request(
    ...     {"instances": [[1, 2], [3, 4]]}, signature
    ... )
    >>> name, arrays["x"].tolist(), row_format
    ('serving_default', [[1.0, 2.0], [3.0, 4.0]], True)
    """
    if not isinstance(body, dict):
        raise RequestError(
            "Invalid request: expected a JSON object with 'instances' or "
            f"'inputs'. Received: {_describe(body)}"
        )
    signatures = _as_signature_dict(signatures)
    name = body.get("signature_name", DEFAULT_SIGNATURE)
    if name not in signatures:
        raise RequestError(
            f"Serving signature name: {name!r} not found in signature def. "
            f"Expected one of {sorted(signatures)}"
        )
    unknown = sorted(set(body) - {"signature_name", "instances", "inputs"})
    if unknown:
        raise RequestError(
            "Invalid request: expected the keys 'signature_name' and one of "
            f"'instances' or 'inputs'. Received unknown keys {unknown}"
        )
    has_rows, has_columns = "instances" in body, "inputs" in body
    if has_rows == has_columns:
        raise RequestError(
            "Invalid request: expected exactly one of 'instances' (row "
            "format) or 'inputs' (columnar format). Received "
            + ("both" if has_rows else "neither")
        )
    specs = signatures[name].inputs
    if has_rows:
        columns = _rows_to_columns(body["instances"], specs)
    else:
        columns = _named_columns(body["inputs"], specs, "inputs")
    arrays = {
        input_name: _to_array(columns[input_name], input_name, dtype, shape)
        for input_name, (dtype, shape) in specs.items()
    }
    sizes = {array.shape[0] for array in arrays.values() if array.ndim}
    if len(sizes) > 1:
        raise RequestError(
            "Invalid request: all inputs must have the same batch size. "
            "Received batch sizes "
            f"{ {key: value.shape[0] for key, value in arrays.items()} }"
        )
    return name, arrays, has_rows


def encode_response(outputs, row_format):
    """Builds the response TF Serving sends for a predict request.

    Args:
        outputs: dict of NumPy arrays, one row per input row.
        row_format: bool. The request used `"instances"`.

    Returns:
        A JSON-serialisable dict: `{"predictions": [...]}` (one item per
        row, a `{name: value}` object unless there is a single output) or
        `{"outputs": ...}` (a `{name: tensor}` object unless there is a
        single output).
    """
    outputs = {name: np.asarray(value) for name, value in outputs.items()}
    if not row_format:
        values = {name: value.tolist() for name, value in outputs.items()}
        if len(values) == 1:
            return {"outputs": next(iter(values.values()))}
        return {"outputs": values}
    sizes = {
        value.shape[0] if value.ndim else None for value in outputs.values()
    }
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "Cannot build a row-format response: every output must have the "
            "same batch size. Received shapes "
            f"{ {name: value.shape for name, value in outputs.items()} }"
        )
    (size,) = sizes
    if len(outputs) == 1:
        return {"predictions": next(iter(outputs.values())).tolist()}
    return {
        "predictions": [
            {name: value[row].tolist() for name, value in outputs.items()}
            for row in range(size)
        ]
    }


def declared_rows(body):
    """The number of rows a predict body holds, read without decoding it.

    A server checks it against its batch limit before building arrays.

    Args:
        body: the decoded JSON body (a `dict`).

    Returns:
        The length of `"instances"`, or of the outer list of the first
        `"inputs"` tensor; `0` when the body holds neither as a list.

    Example:

    >>> declared_rows({"instances": [[1, 2], [3, 4], [5, 6]]})
    3
    >>> declared_rows({"inputs": {"x": [[1, 2]], "t": [0.5]}})
    1
    """
    if not isinstance(body, dict):
        return 0
    value = body.get("instances", body.get("inputs"))
    if isinstance(value, dict) and value:
        value = next(iter(value.values()))
    return len(value) if isinstance(value, list) else 0


def _as_signature_dict(signatures):
    if isinstance(signatures, Signature):
        return {DEFAULT_SIGNATURE: signatures}
    return dict(signatures)


def _rows_to_columns(instances, specs):
    if not isinstance(instances, list) or not instances:
        raise RequestError(
            "Invalid request: 'instances' must be a non-empty list with one "
            f"item per input row. Received: {_describe(instances)}"
        )
    objects = [isinstance(row, dict) for row in instances]
    if any(objects) and not all(objects):
        raise RequestError(
            "Invalid request: the items of 'instances' must be all objects "
            "({input name: value}) or all plain values, not a mix"
        )
    if not objects[0]:
        if len(specs) != 1:
            raise RequestError(
                "Invalid request: the signature has several inputs "
                f"{sorted(specs)}, so each item of 'instances' must be an "
                "object with one value per input"
            )
        return {next(iter(specs)): instances}
    columns = {name: [] for name in specs}
    for index, row in enumerate(instances):
        row = _named_columns(row, specs, f"instances[{index}]")
        for name in specs:
            columns[name].append(row[name])
    return columns


def _named_columns(value, specs, where):
    """`value` is the tensor itself (one input) or `{name: tensor}`."""
    if _is_b64(value):
        raise RequestError(
            f"Invalid request: {where!r} holds a base64 object "
            "({'b64': ...}), which is only for string inputs; this "
            "signature takes numeric tensors"
        )
    if not isinstance(value, dict):
        if len(specs) == 1:
            return {next(iter(specs)): value}
        raise RequestError(
            f"Invalid request: the signature has several inputs "
            f"{sorted(specs)}, so {where!r} must be an object with one "
            f"value per input. Received: {_describe(value)}"
        )
    missing = sorted(set(specs) - set(value))
    extra = sorted(set(value) - set(specs))
    if missing or extra:
        raise RequestError(
            f"Invalid request: {where!r} must name the inputs "
            f"{sorted(specs)}. Missing: {missing}; unknown: {extra}"
        )
    return value


def _is_b64(value):
    return isinstance(value, dict) and set(value) == {"b64"}


# The JSON value kinds (NumPy kinds) each input kind accepts.
_ACCEPTED_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}


def _to_array(value, name, dtype, shape):
    try:
        array = np.array(value)
    except ValueError:
        array = None
    if array is None or array.dtype == object:
        raise RequestError(
            f"Invalid request: input {name!r} must be a rectangular "
            f"(not ragged) nested list of numbers of shape {shape} "
            "(None = any size)"
        )
    wanted = np.dtype(dtype)
    if array.dtype.kind not in _ACCEPTED_KINDS.get(wanted.kind, ""):
        raise RequestError(
            f"Invalid request: input {name!r} expects {wanted.name} values. "
            f"Received values of type {array.dtype.name}"
        )
    if len(array.shape) != len(shape) or any(
        want is not None and want != got
        for want, got in zip(shape, array.shape)
    ):
        raise RequestError(
            f"Invalid request: input {name!r} expects a tensor of shape "
            f"{shape} (None = any size; in 'instances' each row drops the "
            f"first axis). Received shape {array.shape}"
        )
    if array.ndim and array.shape[0] == 0:
        raise RequestError(
            f"Invalid request: input {name!r} is an empty batch; expected "
            "at least one row"
        )
    return array.astype(wanted)


def _describe(value):
    text = json.dumps(value) if _is_jsonable(value) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_jsonable(value):
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
