"""A KServe model server for what `TACModel.export` wrote.

KServe (https://kserve.github.io) owns the HTTP side: routes, JSON
parsing, readiness and metadata, its V1 protocol (TF Serving's REST API,
`POST /v1/models/NAME:predict`) and V2 (the Open Inference Protocol of
KServe and Triton, `POST /v2/models/NAME/infer`). This module adds the
model KServe calls (`TACServingModel`: load the artifact, turn a request
into arrays, run it, answer), request limits, and the command line:

    python -m keras_tac.serve --model PATH --name mnist_tac --http-port 8080

It imports neither Keras nor keras-tac's model code: the server runs next
to TensorFlow (a SavedModel) or ONNX Runtime (an `.onnx` file) alone.
"""

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import signal
import sys

import numpy as np

from keras_tac.src import serving
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.batching import MicroBatcher
from keras_tac.src.monitoring import ServingMetrics

THRESHOLD_SIGNATURE = "serve_with_threshold"
THRESHOLD_PARAMETER = "threshold"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8080
DEFAULT_MAX_BODY_BYTES = 16 * 2**20
DEFAULT_MAX_BATCH_ROWS = 1024
# Server-side batching: the most rows one model call holds (0: off).
DEFAULT_MAX_BATCH_SIZE = 64
# The batcher's column of per-row thresholds (":" is in no input's name).
_ROW_THRESHOLDS = "threshold:rows"
# V2 tensor datatypes of the NumPy dtypes an export uses.
_V2_DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}


@keras_tac_export("keras_tac.serve.load_signatures")
def load_signatures(path):
    """Loads an exported `TACModel` as serving signatures.

    Args:
        path: a SavedModel directory (TensorFlow, JAX backends) or an
            `.onnx` file (PyTorch backend), as `TACModel.export` wrote it.

    Returns:
        A dict from signature name to `keras_tac.serving.Signature`:
        `"serving_default"` (the exported threshold), and for a SavedModel
        also `"serve_with_threshold"` (a threshold per input row).

    Raises:
        ValueError: if `path` is neither.
    """
    if os.path.isfile(path) and path.endswith(".onnx"):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # Idle worker threads sleep instead of spinning: on a server the
        # cores they would spin on are the ones HTTP and JSON need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(
            path, options, providers=["CPUExecutionProvider"]
        )
        return {serving.DEFAULT_SIGNATURE: serving.onnx_signature(session)}
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        signatures = {
            name: serving.saved_model_signature(function)
            for name, function in loaded.signatures.items()
        }
        # The signature functions hold the loaded object weakly.
        for signature in signatures.values():
            signature.fn.loaded = loaded
        return signatures
    raise ValueError(
        "Expected `model` to be what `TACModel.export` wrote: a SavedModel "
        "directory (with a saved_model.pb) or an `.onnx` file. Received: "
        f"{path!r}"
    )


@keras_tac_export("keras_tac.serve.BatchTooLarge")
class BatchTooLarge(Exception):
    """A request over the server's row limit (HTTP 413)."""


def _import_kserve():
    """Imports KServe, which parses `sys.argv` when imported: it must not
    see (or reject) this server's own arguments."""
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        import kserve
        import kserve.model_server
    except ImportError as error:
        raise ImportError(
            "`keras_tac.serve` needs KServe: `pip install keras-tac[serve]`."
        ) from error
    finally:
        sys.argv = argv
    return kserve


kserve = _import_kserve()


@keras_tac_export("keras_tac.serve.TACServingModel")
class TACServingModel(kserve.Model):
    """The model a KServe server calls for an exported `TACModel`.

    KServe decodes each request (a dict for V1, an `InferRequest` for V2)
    and calls `predict`, which answers `prediction`, `confidence`,
    `accepted`, `tac_prediction`, `tac_confidence`, `probabilities` and
    `p_value`, as `TACModel.predict_with_rejection` does. A `threshold` request
    parameter (`{"parameters": {"threshold": t}}`, in V1 and V2 bodies)
    overrides the exported one. Inputs must be finite: JSON has no NaN, and
    a V2 binary tensor holding one is refused (HTTP 400).

    Args:
        name: the model name in the URLs (`/v1/models/NAME:predict`).
        model_path: a SavedModel directory or an `.onnx` file written by
            `TACModel.export`.
        max_batch_rows: the most rows one request may hold (HTTP 413
            above, checked before the body is turned into arrays).
        max_batch_size: server-side batching: concurrent requests share a
            model call of up to this many rows (`keras_tac.serve`'s
            `MicroBatcher`; answers are row for row those of separate
            calls). A request that finds the model idle runs at once;
            requests that arrive while it is busy wait for the next call
            together. A request above `max_batch_size` rows runs alone.
            `0` turns batching off (one model call per request).
            Defaults to `64`.
        batch_timeout_ms: how long a request that finds the model idle
            waits for others before its call (the classic dynamic batcher).
            Defaults to `0.0` (no wait).
        metrics: a `keras_tac.monitoring.ServingMetrics` that counts
            the model's decisions and watches its p-values for drift
            (served at `/metrics`), or `None` for one on prometheus_client's
            default registry, shared by the models of the process.

    Example:

    ```python
    model = TACServingModel("mnist_tac", "serving/tac/1")
    model.load()
    serve_models([model], http_port=8080)
    ```
    """

    def __init__(
        self,
        name,
        model_path,
        max_batch_rows=DEFAULT_MAX_BATCH_ROWS,
        max_batch_size=DEFAULT_MAX_BATCH_SIZE,
        batch_timeout_ms=0.0,
        metrics=None,
    ):
        super().__init__(name)
        for argument, value in [
            ("max_batch_rows", max_batch_rows),
            ("max_batch_size", max_batch_size),
        ]:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(
                    f"Expected `{argument}` to be an int. Received: {value!r}"
                )
        if max_batch_rows < 1:
            raise ValueError(
                "Expected `max_batch_rows` to be a positive int. Received: "
                f"{max_batch_rows!r}"
            )
        if max_batch_size < 0:
            raise ValueError(
                "Expected `max_batch_size` to be >= 0 (0: no server-side "
                f"batching). Received: {max_batch_size!r}"
            )
        self.model_path = model_path
        self.max_batch_rows = max_batch_rows
        self.max_batch_size = max_batch_size
        self.signatures = None
        self.metrics = metrics
        self.batcher = None
        if max_batch_size:
            # Validates `batch_timeout_ms`.
            self.batcher = MicroBatcher(
                self._run_batch, max_batch_size, batch_timeout_ms
            )
        elif batch_timeout_ms:
            raise ValueError(
                "`batch_timeout_ms` needs server-side batching: "
                "`max_batch_size` is 0. Received: "
                f"batch_timeout_ms={batch_timeout_ms!r}"
            )

    def load(self):
        self.signatures = load_signatures(self.model_path)
        if self.metrics is None:
            self.metrics = _default_metrics()
        if self.batcher is not None:
            # Compile the padded batch shapes before the first request.
            size = 1
            while size <= self.max_batch_size:
                self._call(serving.DEFAULT_SIGNATURE, self._zeros(size), None)
                size *= 2
        self.ready = True
        return self.ready

    def _zeros(self, rows):
        """A batch of zeros (any-size dimensions 1) for every input."""
        return {
            name: np.zeros(
                (rows, *(1 if dim is None else dim for dim in shape[1:])),
                dtype,
            )
            for name, (dtype, shape) in self._default.inputs.items()
        }

    @property
    def _default(self):
        return self.signatures[serving.DEFAULT_SIGNATURE]

    def get_input_types(self):
        return _tensor_metadata(self._default.inputs)

    def get_output_types(self):
        return _tensor_metadata(self._default.outputs or {})

    async def predict(self, payload, headers=None, response_headers=None):
        if isinstance(payload, kserve.InferRequest):
            arrays, threshold = self._decode_v2(payload)
            outputs = await self._run(
                serving.DEFAULT_SIGNATURE, arrays, threshold
            )
            return self._encode_v2(payload, outputs)
        if isinstance(payload, (bytes, bytearray)):
            # KServe leaves bodies without a JSON content type undecoded;
            # TF Serving reads them as JSON whatever the header.
            payload = _parse_json(payload)
        if not isinstance(payload, dict):
            raise _invalid(
                "Invalid request: expected a JSON object with 'instances' or "
                f"'inputs'. Received: {type(payload).__name__}"
            )
        body = dict(payload)
        threshold = _threshold(body.pop("parameters", None))
        self._check_rows(serving.declared_rows(body))
        try:
            name, arrays, row_format = serving.decode_request(
                body, self.signatures
            )
        except serving.RequestError as error:
            raise _invalid(str(error)) from None
        if threshold is not None and name != serving.DEFAULT_SIGNATURE:
            raise _invalid(
                f"Invalid request: the {THRESHOLD_PARAMETER!r} parameter "
                f"goes with the default signature; {name!r} was named"
            )
        outputs = await self._run(name, arrays, threshold)
        return serving.encode_response(outputs, row_format)

    def _check_rows(self, rows):
        if rows > self.max_batch_rows:
            raise BatchTooLarge(
                f"The request holds {rows} rows; this server takes at most "
                f"{self.max_batch_rows} per request (--max-batch-rows)"
            )

    async def _run(self, name, arrays, threshold):
        for input_name, array in arrays.items():
            if array.dtype.kind != "f":
                continue
            finite = np.isfinite(array.reshape(len(array), -1)).all(axis=1)
            if not finite.all():
                self.metrics.refused_non_finite(self.name, len(array))
                rows = np.flatnonzero(~finite)
                raise _invalid(
                    f"Invalid request: input {input_name!r} holds NaN or "
                    f"infinite values (rows {rows[:10].tolist()}); expected "
                    "finite numbers"
                )
        if self.batcher is not None:
            key = (name, threshold is not None)
            if threshold is not None:
                rows = _rows(arrays)
                arrays = {
                    **arrays,
                    _ROW_THRESHOLDS: np.full(rows, threshold, "float32"),
                }
            outputs = await self.batcher.submit(key, arrays)
        else:
            loop = asyncio.get_running_loop()
            self.metrics.observe_model_call(self.name, _rows(arrays))
            # Off the event loop: readiness and other requests keep
            # answering.
            outputs = await loop.run_in_executor(
                None, self._call, name, arrays, threshold
            )
        outputs = {key: outputs[key] for key in serving.SERVING_OUTPUTS}
        self.metrics.observe(self.name, outputs)
        return outputs

    def _run_batch(self, key, arrays):
        """The batcher's model call: `arrays` holds the rows of one or
        more requests, with their thresholds as a column when given.

        The rows are padded (with copies of the last row, whose answers are
        dropped) to a power of two up to `max_batch_size`: a model compiled
        per input shape (a SavedModel written from JAX) then meets a few
        shapes, compiled when the server loads, instead of one new shape
        per batch size."""
        name, has_threshold = key
        rows = _rows(arrays)
        self.metrics.observe_model_call(self.name, rows)
        size = _padded_size(rows, self.max_batch_size)
        arrays = {
            input_name: np.concatenate(
                [array, np.repeat(array[-1:], size - rows, axis=0)]
            )
            if size > rows
            else array
            for input_name, array in arrays.items()
        }
        threshold = arrays.pop(_ROW_THRESHOLDS) if has_threshold else None
        outputs = self._call(name, arrays, threshold)
        return {
            output: np.asarray(value)[:rows]
            for output, value in outputs.items()
        }

    def _call(self, name, arrays, threshold):
        """One signature call; `threshold` is `None`, a float or one float
        per row."""
        if threshold is None:
            return self.signatures[name].fn(**arrays)
        rows = _rows(arrays)
        threshold = np.broadcast_to(np.asarray(threshold, "float32"), (rows,))
        if THRESHOLD_SIGNATURE in self.signatures:
            return self.signatures[THRESHOLD_SIGNATURE].fn(
                **arrays, **{THRESHOLD_PARAMETER: np.array(threshold)}
            )
        # ONNX bakes the threshold in: the accept rule is applied here to
        # the exported confidence (`_run` refused non-finite inputs).
        outputs = dict(self._default.fn(**arrays))
        outputs["accepted"] = accept(outputs["confidence"], True, threshold)
        return outputs

    def _decode_v2(self, request):
        specs = self._default.inputs
        names = [tensor.name for tensor in request.inputs]
        if sorted(names) != sorted(specs):
            raise _invalid(
                f"Invalid request: expected the inputs {sorted(specs)}. "
                f"Received: {names}"
            )
        arrays = {}
        for tensor in request.inputs:
            dtype, shape = specs[tensor.name]
            datatype = _V2_DATATYPES[dtype]
            if tensor.datatype != datatype:
                raise _invalid(
                    f"Invalid request: input {tensor.name!r} expects datatype "
                    f"{datatype}. Received: {tensor.datatype}"
                )
            declared = tuple(tensor.shape)
            if len(declared) != len(shape) or any(
                want is not None and want != got
                for want, got in zip(shape, declared)
            ):
                raise _invalid(
                    f"Invalid request: input {tensor.name!r} expects shape "
                    f"{list(d if d is not None else -1 for d in shape)} "
                    f"(-1 = any size). Received: {list(declared)}"
                )
            self._check_rows(declared[0])
            try:
                array = tensor.as_numpy()
            except (ValueError, TypeError) as error:
                raise _invalid(
                    f"Invalid request: the data of input {tensor.name!r} does "
                    f"not fill its shape {list(declared)} ({error})"
                ) from None
            arrays[tensor.name] = array.astype(dtype, copy=False)
        sizes = {name: len(array) for name, array in arrays.items()}
        if len(set(sizes.values())) > 1 or 0 in sizes.values():
            raise _invalid(
                "Invalid request: every input needs the same, non-zero "
                f"batch size. Received: {sizes}"
            )
        return arrays, _threshold(request.parameters, _STANDARD_PARAMETERS)

    def _encode_v2(self, request, outputs):
        requested = request.request_outputs or []
        wanted = [output.name for output in requested] or list(
            serving.SERVING_OUTPUTS
        )
        unknown = sorted(set(wanted) - set(outputs))
        if unknown:
            raise _invalid(
                f"Invalid request: unknown outputs {unknown}; expected some "
                f"of {list(serving.SERVING_OUTPUTS)}"
            )
        # The binary tensor extension: `binary_data_output` sets the
        # default, each requested output's `binary_data` overrides it.
        # (KServe reads a requested output without `binary_data` as JSON.)
        binary = bool(request.use_binary_outputs)
        for output in requested:
            parameters = dict(output.parameters or {})
            unknown = sorted(set(parameters) - {"binary_data"})
            if unknown:
                raise _invalid(
                    f"Invalid request: output {output.name!r} has unknown "
                    f"parameters {unknown}; expected only 'binary_data'"
                )
            parameters.setdefault("binary_data", binary)
            output.parameters = parameters
        tensors = []
        for name in wanted:
            value = np.asarray(outputs[name])
            tensors.append(
                kserve.InferOutput(
                    name=name,
                    shape=list(value.shape),
                    datatype=_V2_DATATYPES[value.dtype.name],
                    data=value,
                )
            )
        return kserve.InferResponse(
            response_id=request.id or "",
            model_name=self.name,
            infer_outputs=tensors,
            use_binary_outputs=binary,
            requested_outputs=requested or None,
        )


def accept(confidence, input_is_finite, threshold):
    """`keras_tac.rejection.accept` in NumPy, for a server without Keras:
    finite input, finite confidence and `confidence >= threshold`, compared
    in float32. tests/test_serving.py checks that the two agree.

    Args:
        confidence: float array `(batch,)`.
        input_is_finite: bool or bool array `(batch,)`.
        threshold: float, or float array broadcastable to `(batch,)`.

    Returns:
        A bool array `(batch,)`.

    Example:

    >>> accept(np.array([0.9, 0.2, np.nan]), True, 0.5).tolist()
    [True, False, False]
    """
    confidence = np.asarray(confidence, "float32")
    with np.errstate(invalid="ignore"):
        return (
            np.asarray(input_is_finite, bool)
            & np.isfinite(confidence)
            & (confidence >= np.asarray(threshold, "float32"))
        )


def _padded_size(rows, max_batch_size):
    """The next power of two from `rows`, at most `max_batch_size`; `rows`
    itself when it is larger.

    Example:

    >>> [_padded_size(rows, 48) for rows in (1, 3, 4, 33, 48, 100)]
    [1, 4, 4, 48, 48, 100]
    """
    if rows >= max_batch_size:
        return rows
    return min(1 << (rows - 1).bit_length(), max_batch_size)


def _rows(arrays):
    """The rows of a request: its inputs' common length."""
    return len(next(iter(arrays.values())))


@functools.cache
def _default_metrics():
    """The process's `ServingMetrics` on prometheus_client's registry,
    which KServe serves at `/metrics`; shared by the models served."""
    return ServingMetrics()


def _parse_json(body):
    try:
        return json.loads(body)
    except ValueError as error:
        raise _invalid(
            f"Invalid request: the body is not valid JSON ({error})"
        ) from None


def _invalid(message):
    return kserve.errors.InvalidInput(message)


# Standard V2 request parameters (the binary tensor extension; Triton's
# client sends `binary_data_output` whenever no outputs are named).
# `priority` is accepted and has no effect: one queue, as in a Triton
# model without priority levels.
_STANDARD_PARAMETERS = ("binary_data_output", "priority")
# Standard parameters this server cannot honour: refused, not ignored.
_UNSUPPORTED_PARAMETERS = {
    "sequence_id": "this model is stateless (no sequence batching)",
    "sequence_start": "this model is stateless (no sequence batching)",
    "sequence_end": "this model is stateless (no sequence batching)",
    "timeout": "this server has no per-request timeout",
}


def _threshold(parameters, standard=()):
    """The `threshold` request parameter, or `None`; `standard` names the
    other parameters the protocol allows."""
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise _invalid(
            "Invalid request: expected 'parameters' to be an object, e.g. "
            f'{{"{THRESHOLD_PARAMETER}": 0.5}}. Received: {parameters!r}'
        )
    unsupported = sorted(set(parameters) & set(_UNSUPPORTED_PARAMETERS))
    if standard and unsupported:
        raise _invalid(
            f"Invalid request: the parameter {unsupported[0]!r} is not "
            f"supported: {_UNSUPPORTED_PARAMETERS[unsupported[0]]}"
        )
    allowed = {THRESHOLD_PARAMETER, *standard}
    unknown = sorted(set(parameters) - allowed)
    if unknown:
        raise _invalid(
            f"Invalid request: unknown parameters {unknown}; expected "
            f"some of {sorted(allowed)}"
        )
    if THRESHOLD_PARAMETER not in parameters:
        return None
    value = parameters[THRESHOLD_PARAMETER]
    if isinstance(value, dict):  # V2 REST may wrap values by type.
        value = next(iter(value.values()), None)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
    ):
        raise _invalid(
            f"Invalid request: expected the {THRESHOLD_PARAMETER!r} "
            f"parameter to be a finite number. Received: {value!r}"
        )
    return float(value)


def _tensor_metadata(specs):
    return [
        {
            "name": name,
            "datatype": _V2_DATATYPES[dtype],
            "shape": [-1 if dim is None else dim for dim in shape],
        }
        for name, (dtype, shape) in specs.items()
    ]


class BodySizeLimit:
    """ASGI middleware refusing request bodies over `max_bytes` (HTTP 413)
    before they reach KServe's decoding: by their `Content-Length`, or
    while a chunked body streams in."""

    def __init__(self, app, max_bytes):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and int(length) > self.max_bytes:
            return await self._refuse(send, int(length))
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(received)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _BodyTooLarge as error:
            if started:
                raise
            await self._refuse(send, error.args[0], at_least=True)

    async def _refuse(self, send, size, at_least=False):
        message = (
            f"The request body is {'over ' if at_least else ''}{size} "
            f"bytes; this server takes at most {self.max_bytes} "
            "(--max-body-bytes)"
        )
        body = json.dumps({"error": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class V2JsonWithoutContentType:
    """ASGI middleware: a V2 infer body without the binary tensor header
    (`Inference-Header-Content-Length`) is JSON, whatever its content type.

    KServe reads a body without `Content-Type: application/json` as binary
    tensors, and then refuses it for the missing header; clients such as
    Triton's `tritonclient.http` send JSON with no content type at all."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].startswith("/v2/")
            and scope["path"].endswith("/infer")
        ):
            headers = dict(scope["headers"])
            content_type = headers.get(b"content-type", b"")
            if (
                b"inference-header-content-length" not in headers
                and not content_type.split(b";")[0].strip().endswith(b"json")
            ):
                others = [
                    (name, value)
                    for name, value in scope["headers"]
                    if name != b"content-type"
                ]
                scope = dict(
                    scope,
                    headers=[*others, (b"content-type", b"application/json")],
                )
        return await self.app(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


async def _batch_too_large(request, error):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=413, content={"error": str(error)})


@keras_tac_export("keras_tac.serve.serve_models")
def serve_models(
    models,
    http_port=DEFAULT_HTTP_PORT,
    host=DEFAULT_HOST,
    max_body_bytes=DEFAULT_MAX_BODY_BYTES,
):
    """Serves loaded models over HTTP with KServe's REST server until
    interrupted (SIGINT or SIGTERM).

    Args:
        models: loaded `TACServingModel`s (or other KServe models).
        http_port: the port to listen on.
        host: the address to bind; `"127.0.0.1"` keeps the server local,
            `"0.0.0.0"` exposes it on every interface.
        max_body_bytes: the largest request body accepted (HTTP 413 above).
    """
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.model_repository_extension import (
        ModelRepositoryExtension,
    )
    from kserve.protocol.rest.server import RESTServer

    registry = ModelRepository()
    for model in models:
        if not model.ready:
            raise ValueError(f"Model {model.name!r} is not loaded.")
        registry.update(model)
    app = kserve.model_server.app
    app.add_middleware(V2JsonWithoutContentType)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_exception_handler(BatchTooLarge, _batch_too_large)
    server = RESTServer(
        FASTAPI_APP_IMPORT_STRING,
        DataPlane(model_registry=registry),
        ModelRepositoryExtension(model_registry=registry),
        http_port,
    )
    # KServe's server binds every interface; this one binds `host` only.
    server.config.host = host
    server.run()


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m keras_tac.serve",
        description=(
            "Serve an exported TACModel (SavedModel directory or .onnx file) "
            "with KServe: V1 (TF Serving REST) and V2 (Open Inference "
            "Protocol) endpoints."
        ),
    )
    parser.add_argument(
        "--model", required=True, help="what TACModel.export wrote"
    )
    parser.add_argument("--name", required=True, help="the model name")
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="the address to bind (0.0.0.0: every interface)",
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES
    )
    parser.add_argument(
        "--max-batch-rows",
        type=int,
        default=DEFAULT_MAX_BATCH_ROWS,
        help="the most rows one request may hold (HTTP 413 above)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULT_MAX_BATCH_SIZE,
        help=(
            "server-side batching: the most rows of concurrent requests "
            "merged into one model call (0: off, one call per request)"
        ),
    )
    parser.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=0.0,
        help=(
            "how long a request may wait for others to share its model "
            "call when the model is idle (0: never; requests that arrive "
            "while the model is busy are merged anyway)"
        ),
    )
    return parser


def _exit_drained(signum, frame):
    sys.exit(0)


@keras_tac_export("keras_tac.serve.main")
def main(argv=None):
    """The command line: `python -m keras_tac.serve --help`."""
    args = _parser().parse_args(argv)
    # TensorFlow imports Keras when it can; the server does without it.
    for name in ("keras", "tf_keras"):
        sys.modules.setdefault(name, None)
    try:
        model = TACServingModel(
            args.name,
            args.model,
            max_batch_rows=args.max_batch_rows,
            max_batch_size=args.max_batch_size,
            batch_timeout_ms=args.batch_timeout_ms,
        )
    except ValueError as error:
        _parser().error(str(error))
    model.load()
    # Uvicorn drains the requests in flight on SIGTERM, then raises the
    # signal again: a drained server exits with status 0.
    signal.signal(signal.SIGTERM, _exit_drained)
    with contextlib.suppress(KeyboardInterrupt):
        serve_models(
            [model],
            http_port=args.http_port,
            host=args.host,
            max_body_bytes=args.max_body_bytes,
        )
