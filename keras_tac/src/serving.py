"""TF Serving's REST predict API, in pure Python and NumPy.

Turns the JSON body of a TF Serving predict request (`POST
/v1/models/NAME:predict`) into input arrays, runs a signature, and builds
the JSON response TF Serving would send back, so an exported `TACModel`
can be checked against exactly the requests a client sends, and served
behind any web framework when TF Serving is not at hand.

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
a single output), and `{"error": "..."}` with HTTP status 400 for a
malformed request.

This module imports neither Keras nor keras-tac: a serving process can
load it on its own, by file path, next to TensorFlow or ONNX Runtime.
"""

import collections
import json

import numpy as np

DEFAULT_SIGNATURE = "serving_default"

Signature = collections.namedtuple("Signature", ["fn", "inputs"])
Signature.__doc__ = """A callable serving signature and its inputs.

`fn(**arrays)` takes one NumPy array per input name and returns a dict of
NumPy arrays (one row per input row). `inputs` maps each input name to
`(dtype, shape)`, a NumPy dtype string and a tuple whose `None` entries
(the batch axis first) take any size."""


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
    inputs = {
        name: (spec.dtype.name, tuple(spec.shape.as_list()))
        for name, spec in specs.items()
    }

    def run(**arrays):
        outputs = function(**arrays)
        return {name: np.asarray(value) for name, value in outputs.items()}

    return Signature(run, inputs)


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
    inputs = {}
    for node in session.get_inputs():
        if node.type not in _ONNX_TYPES:
            raise ValueError(
                f"Unsupported ONNX input type for {node.name!r}: expected one "
                f"of {sorted(_ONNX_TYPES)}. Received: {node.type}"
            )
        shape = tuple(
            dim if isinstance(dim, int) else None for dim in node.shape
        )
        inputs[node.name] = (_ONNX_TYPES[node.type], shape)
    names = [node.name for node in session.get_outputs()]

    def run(**arrays):
        return dict(zip(names, session.run(names, arrays)))

    return Signature(run, inputs)


def decode_request(body, signatures):
    """Parses a predict request body into input arrays.

    Args:
        body: the request body: a JSON `str` or `bytes`, or the decoded
            `dict`.
        signatures: a `Signature`, or a dict from signature name to
            `Signature`.

    Returns:
        A tuple `(signature_name, arrays, row_format)`: the signature to
        run, a dict of NumPy arrays keyed by input name, and whether the
        request used the row (`"instances"`) format.

    Raises:
        RequestError: if the body is not a valid predict request for the
            signature.
    """
    body = _load_json(body)
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


def predict(body, signatures):
    """Answers a predict request body as TF Serving would.

    Args:
        body: the request body (JSON `str` / `bytes`, or decoded `dict`).
        signatures: a `Signature`, or a dict from signature name to
            `Signature`.

    Returns:
        The response dict (see `encode_response`).

    Raises:
        RequestError: for a malformed request.

    Example:

    >>> signature = Signature(
    ...     lambda x: {"double": 2 * x}, {"x": ("float32", (None, 2))}
    ... )
    >>> predict('{"instances": [[1, 2], [3, 4]]}', signature)
    {'predictions': [[2.0, 4.0], [6.0, 8.0]]}
    >>> predict('{"inputs": {"x": [[1, 2]]}}', signature)
    {'outputs': [[2.0, 4.0]]}
    """
    name, arrays, row_format = decode_request(body, signatures)
    outputs = _as_signature_dict(signatures)[name].fn(**arrays)
    return encode_response(outputs, row_format)


def handle(body, signatures):
    """Like `predict`, as an HTTP handler: returns `(status, response)`,
    with `(400, {"error": message})` for a malformed request."""
    try:
        return 200, predict(body, signatures)
    except RequestError as error:
        return 400, {"error": str(error)}


def _load_json(body):
    if isinstance(body, (bytes, bytearray, str)):
        try:
            return json.loads(body)
        except ValueError as error:
            raise RequestError(
                f"Invalid request: the body is not valid JSON ({error})"
            ) from None
    return body


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
