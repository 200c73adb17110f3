"""`python -m keras_tac.serve`, tested as a client would.

The module fixture exports a calibrated model on the current backend
(SavedModel on TensorFlow and JAX, ONNX on PyTorch), starts the KServe
server on it as a subprocess on 127.0.0.1 (a free port), waits for
readiness and talks HTTP to it. Answers are compared with
`predict_with_rejection` in this process.
"""

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import keras
import numpy as np
import psutil
import pytest
from conftest import calibrated_tac

from benchmarks.serving import NAME
from benchmarks.serving import start_server
from keras_tac.src import serving

# A server subprocess on an exported model.
pytestmark = pytest.mark.slow

BACKEND = keras.backend.backend()
FORMAT = "onnx" if BACKEND == "torch" else "tf_saved_model"
MAX_BODY_BYTES = 200_000
MAX_BATCH_ROWS = 64
INTS = ("prediction", "tac_prediction")
FLOATS = ("confidence", "tac_confidence", "probabilities", "p_value")
V2_DATATYPES = {
    "prediction": "INT32",
    "confidence": "FP32",
    "accepted": "BOOL",
    "tac_prediction": "INT32",
    "tac_confidence": "FP32",
    "probabilities": "FP32",
    "p_value": "FP32",
}


def _start_server(artifact, log_path):
    log = open(log_path, "w")
    try:
        process, url = start_server(
            artifact,
            log,
            "--max-body-bytes",
            str(MAX_BODY_BYTES),
            "--max-batch-rows",
            str(MAX_BATCH_ROWS),
            python_flags=("-X", "importtime"),
        )
    except RuntimeError as error:
        log.close()
        with open(log_path) as file:
            pytest.fail(f"{error}:\n{file.read()[-3000:]}")
    return process, url, log


@pytest.fixture(scope="module")
def server(digits, trained_cnn_weights, tmp_path_factory):
    tac = calibrated_tac(digits, trained_cnn_weights)
    batch = digits[1][0][150:167]
    reference = tac.predict_with_rejection(batch, verbose=0)
    # A threshold that rejects a different number of rows than the
    # calibrated one, so that the override shows in the decisions.
    confidence = np.sort(reference["confidence"])
    rejected = 3 if (~reference["accepted"]).sum() != 3 else 9
    threshold = float(confidence[rejected - 1] + confidence[rejected]) / 2
    at_threshold = tac.predict_with_rejection(
        batch, threshold=threshold, verbose=0
    )
    logits = tac.predict(batch, verbose=0)["base_output"].astype("float64")
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
    reference["probabilities"] = at_threshold["probabilities"] = probabilities

    folder = tmp_path_factory.mktemp("serve")
    artifact = str(folder / ("tac.onnx" if FORMAT == "onnx" else "tac"))
    tac.export(artifact, format=FORMAT, verbose=False)
    log_path = str(folder / "server.log")
    process, url, log = _start_server(artifact, log_path)
    client = httpx.Client(base_url=url, timeout=60)
    yield {
        "client": client,
        "process": process,
        "port": int(url.rsplit(":", 1)[1]),
        "log": log_path,
        "artifact": artifact,
        "batch": batch,
        "reference": reference,
        "threshold": threshold,
        "at_threshold": at_threshold,
    }
    client.close()
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture(autouse=True)
def clear_session():
    # The tests only talk HTTP; the module fixture owns the Keras session.
    yield


def assert_served(outputs, reference):
    """Served outputs (name -> array) against `predict_with_rejection`:
    exact for classes and decisions, close for floats."""
    assert set(outputs) == set(serving.SERVING_OUTPUTS)
    accepted = np.asarray(outputs["accepted"])
    assert accepted.dtype == bool
    np.testing.assert_array_equal(accepted, reference["accepted"])
    for name in INTS:
        np.testing.assert_array_equal(outputs[name], reference[name])
    for name in FLOATS:
        # Compiled and eager programs differ by up to ~3e-4 in the combined
        # confidence (standardised sums over hundreds of features).
        tolerance = 1e-3 if name == "confidence" else 1e-5
        if name == "p_value":
            # Steps of 1 / 151 (150 held-out digits): those 1e-3 may
            # cross one or two.
            tolerance = 0.015
        np.testing.assert_allclose(
            np.asarray(outputs[name], "float64"),
            reference[name],
            rtol=tolerance,
            atol=tolerance,
            err_msg=name,
        )


def v1(server, body, **kwargs):
    return server["client"].post(
        f"/v1/models/{NAME}:predict", json=body, **kwargs
    )


def v2_body(batch, **extra):
    return {
        "inputs": [
            {
                "name": "image",
                "shape": list(batch.shape),
                "datatype": "FP32",
                "data": batch.ravel().tolist(),
            }
        ],
        **extra,
    }


def v2(server, body, **kwargs):
    return server["client"].post(
        f"/v2/models/{NAME}/infer", json=body, **kwargs
    )


def rows_to_outputs(predictions):
    return {
        name: np.array([row[name] for row in predictions])
        for name in serving.SERVING_OUTPUTS
    }


def columns_of(response):
    """The outputs of a V1 columnar answer, as arrays."""
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    return {name: np.array(value) for name, value in outputs.items()}


def v2_to_outputs(body):
    outputs = {}
    for tensor in body["outputs"]:
        assert tensor["datatype"] == V2_DATATYPES[tensor["name"]]
        outputs[tensor["name"]] = np.array(tensor["data"]).reshape(
            tensor["shape"]
        )
    return outputs


class TestPredict:
    def test_readiness_and_metadata(self, server):
        client = server["client"]
        assert client.get(f"/v1/models/{NAME}").json() == {
            "name": NAME,
            "ready": True,
        }
        assert client.get(f"/v2/models/{NAME}/ready").status_code == 200
        metadata = client.get(f"/v2/models/{NAME}").json()
        assert metadata["name"] == NAME
        assert metadata["inputs"] == [
            {"name": "image", "datatype": "FP32", "shape": [-1, 8, 8, 1]}
        ]
        outputs = {item["name"]: item for item in metadata["outputs"]}
        assert set(outputs) == set(serving.SERVING_OUTPUTS)
        for name, item in outputs.items():
            assert item["datatype"] == V2_DATATYPES[name], name
        assert outputs["probabilities"]["shape"] == [-1, 10]
        assert outputs["accepted"]["shape"] == [-1]

    def test_v1_rows(self, server):
        rows = server["batch"].tolist()
        response = v1(server, {"instances": rows})
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert len(predictions) == 17
        for row in predictions:
            assert type(row["prediction"]) is int
            assert type(row["accepted"]) is bool
            assert isinstance(row["confidence"], float)
        assert_served(rows_to_outputs(predictions), server["reference"])
        # The exported threshold really decides: some rows go each way.
        accepted = server["reference"]["accepted"]
        assert accepted.any() and not accepted.all()

    def test_v1_named_rows(self, server):
        body = {
            "signature_name": "serving_default",
            "instances": [{"image": row} for row in server["batch"].tolist()],
        }
        response = v1(server, body)
        assert response.status_code == 200, response.text
        outputs = rows_to_outputs(response.json()["predictions"])
        assert_served(outputs, server["reference"])

    def test_v1_columns(self, server):
        body = {"inputs": {"image": server["batch"].tolist()}}
        assert_served(columns_of(v1(server, body)), server["reference"])

    def test_v2_infer(self, server):
        response = v2(server, v2_body(server["batch"], id="request-7"))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_name"] == NAME and body["id"] == "request-7"
        assert_served(v2_to_outputs(body), server["reference"])

    def test_v2_requested_outputs(self, server):
        body = v2_body(server["batch"], outputs=[{"name": "accepted"}])
        response = v2(server, body)
        assert response.status_code == 200, response.text
        (tensor,) = response.json()["outputs"]
        assert tensor["name"] == "accepted"
        np.testing.assert_array_equal(
            tensor["data"], server["reference"]["accepted"]
        )

    def test_threshold_parameter(self, server):
        parameters = {"threshold": server["threshold"]}
        expected = server["at_threshold"]
        # The override changes decisions, so the test can tell.
        assert (expected["accepted"] != server["reference"]["accepted"]).any()
        rows = server["batch"].tolist()
        response = v1(server, {"instances": rows, "parameters": parameters})
        assert response.status_code == 200, response.text
        assert_served(rows_to_outputs(response.json()["predictions"]), expected)
        response = v2(server, v2_body(server["batch"], parameters=parameters))
        assert response.status_code == 200, response.text
        assert_served(v2_to_outputs(response.json()), expected)

    @pytest.mark.skipif(
        FORMAT != "tf_saved_model",
        reason="The ONNX export (PyTorch backend) has one signature; its "
        "threshold override is the request parameter (tested above).",
    )
    def test_threshold_signature_as_tf_serving(self, server):
        body = {
            "signature_name": "serve_with_threshold",
            "inputs": {
                "image": server["batch"].tolist(),
                "threshold": [server["threshold"]] * 17,
            },
        }
        assert_served(columns_of(v1(server, body)), server["at_threshold"])

    def test_body_without_json_content_type(self, server):
        body = json.dumps({"instances": server["batch"][:2].tolist()})
        response = server["client"].post(
            f"/v1/models/{NAME}:predict",
            content=body,
            headers={"content-type": "text/plain"},
        )
        assert response.status_code == 200, response.text
        outputs = rows_to_outputs(response.json()["predictions"])
        np.testing.assert_array_equal(
            outputs["prediction"], server["reference"]["prediction"][:2]
        )

    def test_concurrent_clients(self, server):
        rows = server["batch"].tolist()
        answers, errors = [], []

        def client():
            with httpx.Client(
                base_url=server["client"].base_url, timeout=120
            ) as own:
                for _ in range(3):
                    try:
                        answers.append(
                            own.post(
                                f"/v1/models/{NAME}:predict",
                                json={"instances": rows},
                            )
                        )
                    except httpx.HTTPError as error:
                        errors.append(error)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert [answer.status_code for answer in answers] == [200] * 24
        for answer in answers:
            outputs = rows_to_outputs(answer.json()["predictions"])
            assert_served(outputs, server["reference"])


class TestStandardClients:
    """Other people's clients, as their users would call them: Triton's
    `tritonclient.http` (V2, JSON and binary tensors), KServe's
    `InferenceRESTClient` (V1 and V2)."""

    def triton(self, server):
        import tritonclient.http as triton_http

        return triton_http.InferenceServerClient(
            f"127.0.0.1:{server['port']}", network_timeout=120
        )

    def triton_inputs(self, batch, binary):
        import tritonclient.http as triton_http

        tensor = triton_http.InferInput("image", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=binary)
        return [tensor]

    def triton_outputs(self, result, names=serving.SERVING_OUTPUTS):
        return {name: result.as_numpy(name) for name in names}

    def test_triton_metadata(self, server):
        client = self.triton(server)
        assert client.is_server_ready() and client.is_model_ready(NAME)
        metadata = client.get_model_metadata(NAME)
        assert metadata["inputs"] == [
            {"name": "image", "datatype": "FP32", "shape": [-1, 8, 8, 1]}
        ]

    @pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
    def test_triton_all_outputs(self, server, binary):
        # Without named outputs the client asks for binary outputs
        # (`binary_data_output`); with JSON inputs it sends no content type.
        client = self.triton(server)
        batch = np.asarray(server["batch"], "float32")
        result = client.infer(NAME, self.triton_inputs(batch, binary))
        assert_served(self.triton_outputs(result), server["reference"])

    def test_triton_requested_outputs_json_and_binary(self, server):
        import tritonclient.http as triton_http

        client = self.triton(server)
        batch = np.asarray(server["batch"], "float32")
        outputs = [
            triton_http.InferRequestedOutput("accepted", binary_data=False),
            triton_http.InferRequestedOutput("p_value", binary_data=True),
        ]
        result = client.infer(
            NAME,
            self.triton_inputs(batch, binary=False),
            outputs=outputs,
            request_id="triton-1",
        )
        response = result.get_response()
        assert response["id"] == "triton-1"
        by_name = {tensor["name"]: tensor for tensor in response["outputs"]}
        assert set(by_name) == {"accepted", "p_value"}
        assert "data" in by_name["accepted"]  # JSON
        assert "data" not in by_name["p_value"]  # binary
        np.testing.assert_array_equal(
            result.as_numpy("accepted"), server["reference"]["accepted"]
        )
        np.testing.assert_allclose(
            result.as_numpy("p_value"),
            server["reference"]["p_value"],
            atol=0.015,
        )

    def test_triton_threshold_and_standard_parameters(self, server):
        client = self.triton(server)
        batch = np.asarray(server["batch"], "float32")
        result = client.infer(
            NAME,
            self.triton_inputs(batch, binary=True),
            parameters={"threshold": server["threshold"]},
            priority=1,
        )
        assert_served(self.triton_outputs(result), server["at_threshold"])

    def test_triton_unsupported_standard_parameter(self, server):
        from tritonclient.utils import InferenceServerException

        client = self.triton(server)
        batch = np.asarray(server["batch"][:2], "float32")
        with pytest.raises(InferenceServerException, match="'timeout' is not"):
            client.infer(NAME, self.triton_inputs(batch, True), timeout=1000)

    def test_triton_async_requests(self, server):
        client = self.triton(server)
        batch = np.asarray(server["batch"], "float32")
        pending = [
            client.async_infer(NAME, self.triton_inputs(batch[i:], binary))
            for i, binary in [(0, True), (5, False), (9, True)]
        ]
        for start, request in zip((0, 5, 9), pending):
            result = request.get_result(timeout=120)
            expected = {
                name: value[start:]
                for name, value in server["reference"].items()
            }
            assert_served(self.triton_outputs(result), expected)

    def test_triton_asyncio_client(self, server):
        import tritonclient.http.aio as triton_aio

        batch = np.asarray(server["batch"], "float32")

        async def run():
            client = triton_aio.InferenceServerClient(
                f"127.0.0.1:{server['port']}"
            )
            try:
                return await asyncio.gather(
                    *(
                        client.infer(
                            NAME, self.triton_inputs(batch, binary=False)
                        )
                        for _ in range(4)
                    )
                )
            finally:
                await client.close()

        for result in asyncio.run(run()):
            assert_served(self.triton_outputs(result), server["reference"])

    def test_kserve_client_v2(self, server):
        import kserve

        batch = np.asarray(server["batch"], "float32")
        tensor = kserve.InferInput("image", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=False)
        request = kserve.InferRequest(
            model_name=NAME, infer_inputs=[tensor], request_id="kserve-1"
        )

        async def run():
            client = kserve.InferenceRESTClient(
                kserve.RESTConfig(protocol="v2", timeout=120)
            )
            try:
                return await client.infer(
                    server["client"].base_url, request, model_name=NAME
                )
            finally:
                await client.close()

        response = asyncio.run(run())
        assert response.id == "kserve-1"
        outputs = {
            output.name: output.as_numpy() for output in response.outputs
        }
        assert_served(outputs, server["reference"])

    def test_kserve_client_v1(self, server):
        import kserve

        async def run():
            client = kserve.InferenceRESTClient(
                kserve.RESTConfig(protocol="v1", timeout=120)
            )
            try:
                return await client.infer(
                    server["client"].base_url,
                    {"instances": server["batch"].tolist()},
                    model_name=NAME,
                )
            finally:
                await client.close()

        response = asyncio.run(run())
        outputs = rows_to_outputs(response["predictions"])
        assert_served(outputs, server["reference"])

    def test_v2_json_without_content_type(self, server):
        body = json.dumps(v2_body(server["batch"])).encode()
        response = server["client"].post(
            f"/v2/models/{NAME}/infer", content=body
        )
        assert "content-type" not in response.request.headers
        assert response.status_code == 200, response.text
        assert_served(v2_to_outputs(response.json()), server["reference"])


def v2_tensor(name, shape, datatype, data):
    """A V2 body with one input tensor."""
    tensor = {"name": name, "shape": shape, "datatype": datatype}
    return {"inputs": [{**tensor, "data": data}]}


def _nan_binary_request(batch):
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": batch.nbytes},
                }
            ]
        }
    ).encode()
    return header + batch.tobytes(), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


BAD_REQUESTS = {
    # name: (protocol, body builder, status, message)
    "not_json": ("v1", lambda b: "{instances: [", 400, "request format"),
    "nan": ("v1", lambda b: '{"instances": [NaN]}', 400, "request format"),
    "not_object": ("v1", lambda b: "[1, 2]", 400, "expected a JSON object"),
    "wrong_shape": (
        "v1",
        lambda b: {"instances": [[[0.5] * 8] * 8]},
        400,
        "expects a tensor of shape (None, 8, 8, 1)",
    ),
    "strings": (
        "v1",
        lambda b: {"instances": [[[["a"]] * 8] * 8]},
        400,
        "expects float32 values",
    ),
    "unknown_signature": (
        "v1",
        lambda b: {"signature_name": "nope", "instances": b[:1].tolist()},
        400,
        "'nope' not found in signature def",
    ),
    "ragged": (
        "v1",
        lambda b: {"instances": [b[0].tolist(), b[1, :-1].tolist()]},
        400,
        "not ragged",
    ),
    "threshold_not_a_number": (
        "v1",
        lambda b: {
            "instances": b[:1].tolist(),
            "parameters": {"threshold": "x"},
        },
        400,
        "to be a finite number",
    ),
    "unknown_parameter": (
        "v1",
        lambda b: {"instances": b[:1].tolist(), "parameters": {"top_k": 3}},
        400,
        "unknown parameters ['top_k']",
    ),
    "v2_unknown_parameter": (
        "v2",
        lambda b: v2_body(b[:1], parameters={"top_k": 3}),
        400,
        "unknown parameters ['top_k']",
    ),
    "v2_unknown_output_parameter": (
        "v2",
        lambda b: v2_body(
            b[:1],
            outputs=[{"name": "accepted", "parameters": {"classification": 2}}],
        ),
        400,
        "unknown parameters ['classification']",
    ),
    "v2_wrong_datatype": (
        "v2",
        lambda b: v2_tensor("image", [1, 8, 8, 1], "INT32", [0] * 64),
        400,
        "expects datatype FP32. Received: INT32",
    ),
    "v2_wrong_shape": (
        "v2",
        lambda b: v2_tensor("image", [1, 64], "FP32", [0.0] * 64),
        400,
        "expects shape [-1, 8, 8, 1]",
    ),
    "v2_short_data": (
        "v2",
        lambda b: v2_tensor("image", [2, 8, 8, 1], "FP32", [0.0] * 64),
        400,
        "does not fill its shape",
    ),
    "v2_wrong_input_name": (
        "v2",
        lambda b: v2_tensor("img", [1, 8, 8, 1], "FP32", [0.0] * 64),
        400,
        "expected the inputs ['image']",
    ),
    "v2_nan_binary": ("v2", _nan_binary_request, 400, "NaN or infinite"),
    "too_many_rows_v1": (
        "v1",
        lambda b: {"instances": [b[0].tolist()] * (MAX_BATCH_ROWS + 1)},
        413,
        f"at most {MAX_BATCH_ROWS} per request",
    ),
    "too_many_rows_columns": (
        "v1",
        lambda b: {"inputs": {"image": [b[0].tolist()] * (MAX_BATCH_ROWS + 1)}},
        413,
        f"at most {MAX_BATCH_ROWS} per request",
    ),
    "too_many_rows_v2": (
        "v2",
        lambda b: v2_body(np.repeat(b[:1], MAX_BATCH_ROWS + 1, axis=0)),
        413,
        f"at most {MAX_BATCH_ROWS} per request",
    ),
    "body_too_large": (
        "v1",
        lambda b: {"instances": [b[0].tolist()] * 400},
        413,
        f"at most {MAX_BODY_BYTES}",
    ),
}


class TestBadRequests:
    @pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
    def test_refused_with_a_clear_error(self, server, name):
        protocol, build, status, message = BAD_REQUESTS[name]
        path = (
            f"/v1/models/{NAME}:predict"
            if protocol == "v1"
            else f"/v2/models/{NAME}/infer"
        )
        built = build(np.array(server["batch"]))
        headers = {"content-type": "application/json"}
        if isinstance(built, tuple):
            built, headers = built
        if not isinstance(built, (str, bytes)):
            built = json.dumps(built)
        if name == "v2_nan_binary":
            batch = np.array(server["batch"][:2])
            batch[1, 3, 3, 0] = np.nan
            built, headers = _nan_binary_request(batch)
        response = server["client"].post(path, content=built, headers=headers)
        assert response.status_code == status, response.text
        assert message in response.json()["error"], response.text
        self.assert_still_serving(server)

    def test_chunked_body_over_the_limit(self, server):
        row = json.dumps(server["batch"][0].tolist()).encode()

        def chunks():
            yield b'{"instances": ['
            for _ in range(400):
                yield row + b","
            yield row + b"]}"

        response = server["client"].post(
            f"/v1/models/{NAME}:predict",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 413, response.text
        assert f"at most {MAX_BODY_BYTES}" in response.json()["error"]
        self.assert_still_serving(server)

    def test_unknown_model(self, server):
        response = server["client"].post(
            "/v1/models/nope:predict", json={"instances": [1]}
        )
        assert response.status_code == 404
        assert "nope" in response.text
        self.assert_still_serving(server)

    def assert_still_serving(self, server):
        assert server["process"].poll() is None
        response = v1(server, {"instances": server["batch"][:3].tolist()})
        assert response.status_code == 200, response.text
        predictions = [
            row["prediction"] for row in response.json()["predictions"]
        ]
        assert predictions == server["reference"]["prediction"][:3].tolist()


class TestServerProcess:
    def test_binds_loopback_only(self, server):
        listening = [
            connection.laddr
            for connection in psutil.Process(server["process"].pid).connections(
                kind="inet"
            )
            if connection.status == psutil.CONN_LISTEN
        ]
        assert listening, "the server listens on nothing"
        assert {address.ip for address in listening} == {"127.0.0.1"}
        assert {address.port for address in listening} == {server["port"]}

    def test_never_imported_keras(self, server):
        # `-X importtime` lists every module the server process imported.
        with open(server["log"]) as file:
            modules = {
                line.rsplit("|", 1)[1].strip()
                for line in file
                if line.startswith("import time:") and "|" in line
            }
        assert "keras_tac.src.model_server" in modules
        keras_modules = sorted(
            name
            for name in modules
            if name.split(".")[0] in ("keras", "tf_keras")
        )
        assert keras_modules == []
        # Of keras-tac, the serving modules and the pure-NumPy ones only.
        ours = {name for name in modules if name.startswith("keras_tac.")}
        assert "keras_tac.src.tac_model" not in ours
        assert not any(name.startswith("keras_tac.src.layers") for name in ours)
        if FORMAT == "onnx":
            # ONNX Runtime alone (TensorFlow itself imports JAX when present).
            assert "onnxruntime" in modules
            assert not {"tensorflow", "torch", "jax"} & modules
        else:
            assert "tensorflow" in modules and "onnxruntime" not in modules


def _send_partly(port, body, held_back):
    """Opens a connection and sends a V1 request but the last `held_back`
    bytes of its body: the server has the request, not yet all of it."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=120)
    head = (
        f"POST /v1/models/{NAME}:predict HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    connection.sendall(head + body[:-held_back])
    return connection


def _read_response(connection):
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


def test_sigterm_drains_requests_in_flight(server, tmp_path):
    """SIGTERM while requests are in flight: each is answered in full, new
    connections are refused, and the server exits cleanly. (This server
    runs without batching: one model call per request.)"""
    with open(tmp_path / "server.log", "w") as log:
        process, url = start_server(
            server["artifact"], log, "--max-batch-size", "0"
        )
        port = int(url.rsplit(":", 1)[1])
        try:
            rows = server["batch"][:5]
            body = json.dumps({"instances": rows.tolist()}).encode()
            connections = [_send_partly(port, body, 10) for _ in range(4)]
            time.sleep(1.0)  # the server has read the headers
            process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=5)
            for connection in connections:
                connection.sendall(body[-10:])
                status, payload = _read_response(connection)
                connection.close()
                assert status == 200, payload
                predictions = json.loads(payload)["predictions"]
                assert [row["prediction"] for row in predictions] == (
                    server["reference"]["prediction"][:5].tolist()
                )
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()


def _scrape(url):
    """`/metrics` as {(sample name, frozenset of labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=60).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _buckets(values, bounds):
    """Prometheus's cumulative bucket counts (`le`) of `values`, by hand."""
    values = np.asarray(values, "float64")
    return [int((values <= bound).sum()) for bound in bounds] + [len(values)]


def test_metrics_count_decisions_and_watch_drift(server, digits, tmp_path):
    """A fresh server: `/metrics` counts what it answered (NumPy counts of
    the answers as the oracle) and its drift monitor follows the served
    p-values, alarming on noisy digits."""
    from prometheus_client.utils import floatToGoString

    from keras_tac.src import monitoring

    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        process, url = start_server(server["artifact"], log)
    try:
        client = httpx.Client(base_url=url, timeout=60)
        stream = digits[1][0][150:]  # test digits not used to calibrate
        noisy = np.clip(
            stream + np.random.default_rng(0).normal(0, 0.5, stream.shape),
            0,
            1,
        ).astype("float32")
        answers, sizes = [], []
        for part in (stream, noisy):
            for start in range(0, len(part), 13):
                rows = part[start : start + 13]
                response = client.post(
                    f"/v2/models/{NAME}/infer", json=v2_body(rows)
                )
                assert response.status_code == 200, response.text
                answers.append(v2_to_outputs(response.json()))
                sizes.append(len(rows))
        bad = np.array(stream[:3])
        bad[1, 2, 2, 0] = np.inf
        content, headers = _nan_binary_request(bad)
        response = client.post(
            f"/v2/models/{NAME}/infer", content=content, headers=headers
        )
        assert response.status_code == 400
        served = {
            name: np.concatenate([answer[name] for answer in answers])
            for name in ("prediction", "accepted", "confidence", "p_value")
        }
        metrics = _scrape(url)
        client.close()
    finally:
        process.terminate()
        process.wait(timeout=60)

    def value(name, **labels):
        return metrics[name, frozenset({"model": NAME, **labels}.items())]

    rows = len(served["prediction"])
    assert value("keras_tac_requests_total") == len(answers)
    assert value("keras_tac_rows_total") == rows
    assert value("keras_tac_accepted_rows_total") == served["accepted"].sum()
    assert value("keras_tac_accepted_fraction") == pytest.approx(
        served["accepted"].mean()
    )
    assert value("keras_tac_refused_non_finite_rows_total") == 3
    for label in range(10):
        for decision in (True, False):
            expected = np.sum(
                (served["prediction"] == label)
                & (served["accepted"] == decision)
            )
            key = dict(
                predicted_class=str(label), accepted=str(decision).lower()
            )
            assert (
                metrics.get(
                    (
                        "keras_tac_class_rows_total",
                        frozenset({"model": NAME, **key}.items()),
                    ),
                    0.0,
                )
                == expected
            ), key
    for name, bounds, values in [
        ("keras_tac_p_value", monitoring.P_VALUE_BUCKETS, served["p_value"]),
        (
            "keras_tac_confidence",
            monitoring.CONFIDENCE_BUCKETS,
            served["confidence"],
        ),
        ("keras_tac_model_call_rows", monitoring.MODEL_CALL_BUCKETS, sizes),
    ]:
        labels = [floatToGoString(bound) for bound in bounds] + ["+Inf"]
        counts = [value(f"{name}_bucket", le=label) for label in labels]
        assert counts == _buckets(values, bounds), name
    # The monitor saw the served p-values in order (requests were
    # sequential): the same martingale by hand, and an alarm on the noise.
    oracle = monitoring.ConformalTestMartingale()
    oracle.update(served["p_value"][: len(stream)])
    alarm_before_noise = oracle.alarm
    oracle.update(served["p_value"][len(stream) :])
    assert oracle.alarm and not alarm_before_noise
    assert value("keras_tac_drift_alarm") == 1
    assert value("keras_tac_drift_martingale_log10") == pytest.approx(
        oracle.log_value / np.log(10), rel=1e-5
    )
    with open(log_path) as file:
        assert "drift" in file.read().lower()


def _run_command_line(*options):
    return subprocess.run(
        [sys.executable, "-m", "keras_tac.serve", "--name", NAME, *options],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_command_line_refuses_a_timeout_without_batching(tmp_path):
    process = _run_command_line(
        "--model",
        str(tmp_path / "missing"),
        "--max-batch-size",
        "0",
        "--batch-timeout-ms",
        "5",
    )
    assert process.returncode == 2
    assert "`batch_timeout_ms` needs server-side batching" in process.stderr


def test_command_line_names_a_bad_model_path(tmp_path):
    process = _run_command_line("--model", str(tmp_path / "missing"))
    assert process.returncode != 0
    assert "Expected `model` to be what `TACModel.export` wrote" in (
        process.stderr
    )
