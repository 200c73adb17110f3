"""Export for serving, checked from the serving side.

The module fixture trains and calibrates a small TAC model, exports it
(SavedModel on TensorFlow and JAX, ONNX on PyTorch) and runs
tests/serving_client.py in a separate process that loads the artifact with
TensorFlow or ONNX Runtime while Keras and keras-tac are blocked from
import. The tests compare what that process answered, to direct signature
calls and to TF Serving REST request bodies, with `predict_with_rejection`
in this process.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import make_cnn

import keras_tac
from keras_tac.src import export as export_lib
from keras_tac.src import serving

BACKEND = keras.backend.backend()
FORMAT = "onnx" if BACKEND == "torch" else "tf_saved_model"
HAS_THRESHOLD_SIGNATURE = FORMAT == "tf_saved_model"
NO_THRESHOLD_SIGNATURE = (
    "The ONNX export (PyTorch backend) is one graph with the threshold "
    "baked in; only the SavedModel has a 'serve_with_threshold' signature."
)
NO_SAVED_MODEL = (
    "Keras 3.15 writes a SavedModel from PyTorch only through torch_xla "
    "(not supported); the PyTorch backend exports ONNX instead."
)
TESTS = os.path.dirname(os.path.abspath(__file__))
SERVING_MODULE = os.path.abspath(serving.__file__)
INTS = ("prediction", "tac_prediction")
FLOATS = ("confidence", "tac_confidence", "probabilities")
# Rows of the batch of 17 holding a NaN and an infinity.
NAN_ROW, INF_ROW = 3, 11


def _artifact_path(folder):
    return os.path.join(folder, "tac.onnx" if FORMAT == "onnx" else "tac")


def _bodies(batch_1, batch_17, thresholds_17):
    rows = batch_17.tolist()
    requests = {
        "rows": {"instances": rows},
        "rows_named": {
            "signature_name": "serving_default",
            "instances": [{"image": row} for row in rows],
        },
        "columns": {"inputs": rows},
        "columns_named": {"inputs": {"image": batch_1.tolist()}},
    }
    if HAS_THRESHOLD_SIGNATURE:
        requests["rows_threshold"] = {
            "signature_name": "serve_with_threshold",
            "instances": [
                {"image": row, "threshold": float(threshold)}
                for row, threshold in zip(rows, thresholds_17)
            ],
        }
        requests["columns_threshold"] = {
            "signature_name": "serve_with_threshold",
            "inputs": {"image": rows, "threshold": thresholds_17.tolist()},
        }
    bodies = {key: json.dumps(body) for key, body in requests.items()}
    row = rows[0]
    malformed = {
        "not_json": ("{instances: [", "not valid JSON"),
        "not_object": ("[1, 2]", "expected a JSON object"),
        "both": (
            {"instances": [row], "inputs": [row]},
            "exactly one of 'instances'",
        ),
        "neither": ({"signature_name": "serving_default"}, "Received neither"),
        "unknown_key": ({"instance": [row]}, "unknown keys ['instance']"),
        "empty": ({"instances": []}, "non-empty list"),
        "ragged": ({"instances": [row, row[:-1]]}, "not ragged"),
        "wrong_shape": (
            {"instances": [[[0.5] * 8] * 8]},
            "expects a tensor of shape (None, 8, 8, 1)",
        ),
        "strings": (
            {"instances": [[[["a"]] * 8] * 8]},
            "expects float32 values",
        ),
        "unknown_signature": (
            {"signature_name": "nope", "instances": [row]},
            "'nope' not found in signature def",
        ),
        "wrong_input_name": ({"inputs": {"img": [row]}}, "Missing: ['image']"),
        "mixed_rows": ({"instances": [{"image": row}, row]}, "not a mix"),
        "b64": ({"instances": [{"b64": "AAAA"}]}, "base64"),
    }
    if HAS_THRESHOLD_SIGNATURE:
        malformed["threshold_missing"] = (
            {"signature_name": "serve_with_threshold", "instances": [row]},
            "several inputs",
        )
        malformed["threshold_batch"] = (
            {
                "signature_name": "serve_with_threshold",
                "inputs": {"image": [row, row], "threshold": [0.5]},
            },
            "same batch size",
        )
    for key, (body, _) in malformed.items():
        bodies[key] = body if isinstance(body, str) else json.dumps(body)
    errors = {key: expected for key, (_, expected) in malformed.items()}
    return bodies, errors


@pytest.fixture(scope="module")
def served(digits, trained_cnn_weights, tmp_path_factory):
    """Exports a calibrated model, serves it from another process, and
    returns what that process answered with this process's references."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = digits
    base = make_cnn()
    base.set_weights(trained_cnn_weights)
    tac = keras_tac.TACModel(base)
    tac.compile(optimizer=keras.optimizers.Adam(1e-2))
    tac.fit(x_train[:256], y_train[:256], batch_size=64, epochs=1, verbose=0)
    tac.calibrate(x_test[:150], target_coverage=0.8, verbose=0)

    batch_1 = x_test[150:151]
    batch_17 = x_test[151:168].copy()
    batch_17[NAN_ROW, 2, 3, 0] = np.nan
    batch_17[INF_ROW, 0, 0, 0] = np.inf
    confidence = tac.predict_with_rejection(batch_17, verbose=0)["confidence"]
    finite = np.sort(confidence[np.isfinite(confidence)])
    low, high = float(finite[2]) - 1e-3, float(finite[-3]) + 1e-3
    thresholds_17 = np.where(np.arange(17) % 2, low, high).astype("float32")
    references = {
        "batch_1": tac.predict_with_rejection(batch_1, verbose=0),
        "batch_17": tac.predict_with_rejection(batch_17, verbose=0),
    }
    at_low = tac.predict_with_rejection(batch_17, threshold=low, verbose=0)
    at_high = tac.predict_with_rejection(batch_17, threshold=high, verbose=0)
    references["batch_17:threshold"] = {
        **at_low,
        "accepted": np.where(
            np.arange(17) % 2, at_low["accepted"], at_high["accepted"]
        ),
    }
    for key, batch in (("batch_1", batch_1), ("batch_17", batch_17)):
        logits = tac.predict(batch, verbose=0)["base_output"].astype("float64")
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
        references[key]["probabilities"] = probabilities
    references["batch_17:threshold"]["probabilities"] = references["batch_17"][
        "probabilities"
    ]

    folder = str(tmp_path_factory.mktemp("export"))
    artifact = _artifact_path(folder)
    tac.export(artifact, format=FORMAT, verbose=False)
    arrays = {"batch_1": batch_1, "batch_17": batch_17}
    if HAS_THRESHOLD_SIGNATURE:
        arrays["batch_17:threshold"] = thresholds_17
    np.savez(os.path.join(folder, "arrays.npz"), **arrays)
    bodies, errors = _bodies(batch_1, batch_17, thresholds_17)
    job = {
        "format": FORMAT,
        "artifact": artifact,
        "serving_module": SERVING_MODULE,
        "arrays": os.path.join(folder, "arrays.npz"),
        "requests": [{"id": key, "body": body} for key, body in bodies.items()],
        "output": os.path.join(folder, "results"),
    }
    with open(os.path.join(folder, "job.json"), "w") as file:
        json.dump(job, file)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.run(
        [
            sys.executable,
            os.path.join(TESTS, "serving_client.py"),
            os.path.join(folder, "job.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    with np.load(os.path.join(job["output"], "direct.npz")) as direct:
        direct = {key: direct[key] for key in direct.files}
    with open(os.path.join(job["output"], "rest.json")) as file:
        report = json.load(file)
    return {
        "artifact": artifact,
        "references": references,
        "direct": direct,
        "report": report,
        "errors": errors,
        "threshold": tac.threshold,
    }


def assert_matches(outputs, reference):
    """Compares served outputs with `predict_with_rejection`: exact for ints
    and bools, close for floats; on rows with a NaN or infinite input only
    `accepted` (False) counts, the predictions being unspecified there."""
    assert set(outputs) == set(export_lib.SERVING_OUTPUTS)
    accepted = np.asarray(outputs["accepted"])
    assert accepted.dtype == bool
    np.testing.assert_array_equal(accepted, reference["accepted"])
    rows = len(accepted)
    finite = np.ones(rows, bool)
    if rows == 17:
        finite[[NAN_ROW, INF_ROW]] = False
        assert not accepted[[NAN_ROW, INF_ROW]].any()
    for name in INTS:
        value = np.asarray(outputs[name])
        assert value.dtype.kind == "i", (name, value.dtype)
        np.testing.assert_array_equal(value[finite], reference[name][finite])
    for name in FLOATS:
        value = np.asarray(outputs[name], dtype="float64")
        assert value.shape[0] == rows
        # The combined confidence sums standardised Mahalanobis and kNN
        # terms of float32 distances over hundreds of features: compiled
        # and eager programs differ by up to ~3e-4 there (JAX).
        tolerance = 1e-3 if name == "confidence" else 1e-5
        np.testing.assert_allclose(
            value[finite],
            reference[name][finite],
            rtol=tolerance,
            atol=tolerance,
            err_msg=name,
        )


class ServedResults:
    """Tests that only read the fixture's results: no Keras session."""

    @pytest.fixture(autouse=True)
    def clear_session(self):
        yield


class TestServingProcess(ServedResults):
    def test_serving_process_never_imported_keras(self, served):
        assert served["report"]["keras_modules"] == []
        expected = "onnxruntime" if FORMAT == "onnx" else "tensorflow"
        assert served["report"]["runtime"] == expected

    def test_signature_inputs(self, served):
        signatures = served["report"]["signatures"]
        assert signatures["serving_default"] == {
            "image": ["float32", [None, 8, 8, 1]]
        }
        if HAS_THRESHOLD_SIGNATURE:
            assert set(signatures) == {
                "serve",
                "serving_default",
                "serve_with_threshold",
            }
            assert signatures["serve_with_threshold"] == {
                "image": ["float32", [None, 8, 8, 1]],
                "threshold": ["float32", [None]],
            }

    @pytest.mark.parametrize("key", ["batch_1", "batch_17"])
    def test_outputs_match_predict_with_rejection(self, served, key):
        outputs = {
            name: served["direct"][f"{key}/{name}"]
            for name in export_lib.SERVING_OUTPUTS
        }
        assert outputs["prediction"].dtype == np.int32
        assert outputs["confidence"].dtype == np.float32
        assert outputs["probabilities"].shape == (int(key[6:]), 10)
        assert_matches(outputs, served["references"][key])

    def test_baked_in_threshold_rejects_some(self, served):
        # The calibrated threshold must be the one in the artifact: with it,
        # this batch has accepted and rejected finite inputs.
        accepted = served["direct"]["batch_17/accepted"]
        assert accepted.any() and not accepted.all()

    @pytest.mark.skipif(
        not HAS_THRESHOLD_SIGNATURE, reason=NO_THRESHOLD_SIGNATURE
    )
    def test_threshold_signature(self, served):
        outputs = {
            name: served["direct"][f"batch_17:threshold/{name}"]
            for name in export_lib.SERVING_OUTPUTS
        }
        assert_matches(outputs, served["references"]["batch_17:threshold"])


class TestRestRequests(ServedResults):
    def response(self, served, key):
        answer = served["report"]["rest"][key]
        return answer["status"], json.loads(answer["body"])

    @pytest.mark.parametrize(
        "key, reference",
        [
            ("rows", "batch_17"),
            ("rows_named", "batch_17"),
            pytest.param(
                "rows_threshold",
                "batch_17:threshold",
                marks=pytest.mark.skipif(
                    not HAS_THRESHOLD_SIGNATURE, reason=NO_THRESHOLD_SIGNATURE
                ),
            ),
        ],
    )
    def test_row_format(self, served, key, reference):
        status, body = self.response(served, key)
        assert status == 200
        assert list(body) == ["predictions"]
        predictions = body["predictions"]
        assert isinstance(predictions, list) and len(predictions) == 17
        for item in predictions:
            assert set(item) == set(export_lib.SERVING_OUTPUTS)
            assert type(item["prediction"]) is int
            assert type(item["tac_prediction"]) is int
            assert type(item["accepted"]) is bool
            assert isinstance(item["confidence"], float)
            assert len(item["probabilities"]) == 10
        outputs = {
            name: np.array([item[name] for item in predictions])
            for name in export_lib.SERVING_OUTPUTS
        }
        assert_matches(outputs, served["references"][reference])

    @pytest.mark.parametrize(
        "key, reference",
        [
            ("columns", "batch_17"),
            ("columns_named", "batch_1"),
            pytest.param(
                "columns_threshold",
                "batch_17:threshold",
                marks=pytest.mark.skipif(
                    not HAS_THRESHOLD_SIGNATURE, reason=NO_THRESHOLD_SIGNATURE
                ),
            ),
        ],
    )
    def test_columnar_format(self, served, key, reference):
        status, body = self.response(served, key)
        assert status == 200
        assert list(body) == ["outputs"]
        outputs = body["outputs"]
        assert set(outputs) == set(export_lib.SERVING_OUTPUTS)
        rows = len(served["references"][reference]["accepted"])
        for name, value in outputs.items():
            assert isinstance(value, list) and len(value) == rows, name
        assert all(type(value) is bool for value in outputs["accepted"])
        outputs = {name: np.array(value) for name, value in outputs.items()}
        assert_matches(outputs, served["references"][reference])

    def test_malformed_requests_get_clear_errors(self, served):
        for key, expected in served["errors"].items():
            status, body = self.response(served, key)
            assert status == 400, key
            assert list(body) == ["error"], key
            assert expected in body["error"], (key, body["error"])


@pytest.mark.skipif(FORMAT != "tf_saved_model", reason=NO_SAVED_MODEL)
class TestSavedModelCli(ServedResults):
    def test_show_all_lists_the_signatures(self, served):
        cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
        if os.path.exists(cli):
            command = [cli]
        else:
            command = [
                sys.executable,
                "-m",
                "tensorflow.python.tools.saved_model_cli",
            ]
        process = subprocess.run(
            [*command, "show", "--all", "--dir", served["artifact"]],
            capture_output=True,
            text=True,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
            timeout=300,
        )
        assert process.returncode == 0, process.stderr[-3000:]
        text = process.stdout
        sections = text.split("signature_def[")
        by_name = {
            section.split("]", 1)[0].strip("'"): section
            for section in sections[1:]
        }
        assert {"serving_default", "serve", "serve_with_threshold"} <= set(
            by_name
        )
        for name in ("serving_default", "serve_with_threshold"):
            section = by_name[name]
            assert "inputs['image']" in section
            assert "shape: (-1, 8, 8, 1)" in section
            assert "Method name is: tensorflow/serving/predict" in section
            for output in export_lib.SERVING_OUTPUTS:
                assert f"outputs['{output}']" in section, (name, output)
        assert "inputs['threshold']" in by_name["serve_with_threshold"]
        assert "inputs['threshold']" not in by_name["serving_default"]
        assert "DT_BOOL" in by_name["serving_default"]
        assert "DT_INT32" in by_name["serving_default"]


def _run_in_process(path):
    """Loads an artifact in this process: the serving-default signature as
    a `keras_tac.serving.Signature`."""
    if FORMAT == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(
            path, providers=["CPUExecutionProvider"]
        )
        return serving.onnx_signature(session)
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    return serving.saved_model_signature(loaded.signatures["serving_default"])


class TestExportOptions:
    def test_multiple_inputs_and_explicit_threshold(self, tmp_path):
        image = keras.Input((6, 6, 1), name="image")
        meta = keras.Input((3,), name="meta")
        h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(image)
        h = keras.layers.GlobalAveragePooling2D()(h)
        h = keras.layers.Concatenate()([h, meta])
        h = keras.layers.Dense(8, activation="relu", name="features")(h)
        outputs = keras.layers.Dense(3, activation="softmax", name="head")(h)
        base = keras.Model([image, meta], outputs)
        tac = keras_tac.TACModel(base, tap_layers=["conv", "features"])
        rng = np.random.default_rng(0)
        x = [
            rng.random((9, 6, 6, 1), dtype="float32"),
            rng.random((9, 3), dtype="float32"),
        ]
        confidence = np.sort(tac.predict(x, verbose=0)["confidence"])
        threshold = float(confidence[4] + confidence[5]) / 2
        path = _artifact_path(str(tmp_path))
        # Not calibrated: the explicit threshold is the one baked in.
        tac.export(path, format=FORMAT, threshold=threshold, verbose=False)
        signature = _run_in_process(path)
        assert signature.inputs == {
            "image": ("float32", (None, 6, 6, 1)),
            "meta": ("float32", (None, 3)),
        }
        served = signature.fn(image=x[0], meta=x[1])
        reference = tac.predict_with_rejection(
            x, threshold=threshold, verbose=0
        )
        assert reference["accepted"].sum() == 4
        # The head ends in a softmax: probabilities are its output as is.
        reference["probabilities"] = tac.predict(x, verbose=0)["base_output"]
        assert_matches(served, reference)

    def test_uncalibrated_model_needs_a_threshold(self, tmp_path):
        tac = keras_tac.TACModel(make_cnn())
        path = _artifact_path(str(tmp_path))
        with pytest.raises(ValueError, match="uncalibrated TACModel"):
            tac.export(path, format=FORMAT, verbose=False)
        assert not os.path.exists(path)

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"format": "keras"}, "Invalid `format`"),
            ({"threshold": float("nan")}, "Invalid `threshold`"),
            ({"threshold": "0.5"}, "Invalid `threshold`"),
        ],
    )
    def test_invalid_arguments(self, tmp_path, kwargs, message):
        tac = keras_tac.TACModel(make_cnn())
        with pytest.raises(ValueError, match=message):
            tac.export(str(tmp_path / "out"), **kwargs)

    @pytest.mark.skipif(
        BACKEND != "torch",
        reason="Only the PyTorch backend cannot write a SavedModel.",
    )
    def test_saved_model_on_torch_names_onnx(self, tmp_path):
        tac = keras_tac.TACModel(make_cnn())
        with pytest.raises(ValueError, match="format='onnx'"):
            tac.export(str(tmp_path / "out"), threshold=-1.0)

    @pytest.mark.skipif(
        BACKEND == "torch", reason="The PyTorch backend exports ONNX."
    )
    def test_onnx_elsewhere_names_saved_model(self, tmp_path):
        tac = keras_tac.TACModel(make_cnn())
        with pytest.raises(ValueError, match="format='tf_saved_model'"):
            tac.export(
                str(tmp_path / "tac.onnx"), format="onnx", threshold=-1.0
            )


class TestServingAdapter:
    """`keras_tac.serving` on a toy signature: no model, no Keras."""

    @pytest.fixture(autouse=True)
    def clear_session(self):
        yield

    @pytest.fixture
    def signatures(self):
        def two_outputs(x):
            return {
                "total": x.sum(axis=-1),
                "largest": np.argmax(x, axis=-1).astype("int32"),
            }

        def one_output(x, scale):
            return {"scaled": x * scale[:, None]}

        return {
            "serving_default": serving.Signature(
                two_outputs, {"x": ("float32", (None, 2))}
            ),
            "scale": serving.Signature(
                one_output,
                {"x": ("float32", (None, 2)), "scale": ("float32", (None,))},
            ),
        }

    def test_row_and_columnar_responses(self, signatures):
        rows = {"instances": [[1, 2], [3, 4.5]]}
        assert serving.predict(rows, signatures) == {
            "predictions": [
                {"total": 3.0, "largest": 1},
                {"total": 7.5, "largest": 1},
            ]
        }
        columns = {"inputs": {"x": [[1, 2], [3, 4.5]]}}
        assert serving.predict(json.dumps(columns), signatures) == {
            "outputs": {"total": [3.0, 7.5], "largest": [1, 1]}
        }
        # A single output is sent bare, in both formats.
        scaled = {
            "signature_name": "scale",
            "instances": [{"x": [1, 2], "scale": 2}, {"x": [0, 1], "scale": 3}],
        }
        assert serving.predict(scaled, signatures) == {
            "predictions": [[2.0, 4.0], [0.0, 3.0]]
        }
        scaled = {
            "signature_name": "scale",
            "inputs": {"x": [[1, 2]], "scale": [2]},
        }
        assert serving.predict(scaled.copy(), signatures) == {
            "outputs": [[2.0, 4.0]]
        }

    def test_non_finite_values_round_trip(self, signatures):
        body = '{"inputs": [[NaN, 1], [Infinity, 2]]}'
        response = serving.predict(body, signatures)
        total = response["outputs"]["total"]
        assert np.isnan(total[0]) and total[1] == np.inf
        assert "NaN" in json.dumps(response)

    @pytest.mark.parametrize(
        "body, message",
        [
            (b"\xff", "not valid JSON"),
            ('{"instances": [[1, 2]], "inputs": [[1, 2]]}', "Received both"),
            ('{"instances": [[1, 2, 3]]}', "Received shape (1, 3)"),
            ('{"instances": [[1, 2], [3]]}', "not ragged"),
            ('{"instances": [[true, false]]}', "Received values of type bool"),
            ('{"instances": [[null, 1]]}', "not ragged"),
            ('{"signature_name": 3, "inputs": [[1, 2]]}', "3 not found"),
            ('{"signature_name": "scale", "inputs": [[1, 2]]}', "several"),
        ],
    )
    def test_errors(self, signatures, body, message):
        with pytest.raises(serving.RequestError) as error:
            serving.predict(body, signatures)
        assert message in str(error.value)
        status, response = serving.handle(body, signatures)
        assert status == 400 and response == {"error": str(error.value)}

    def test_integer_inputs_reject_floats(self):
        signature = serving.Signature(
            lambda ids: {"ids": ids}, {"ids": ("int32", (None,))}
        )
        assert serving.predict('{"instances": [1, 2]}', signature) == {
            "predictions": [1, 2]
        }
        with pytest.raises(serving.RequestError, match="expects int32"):
            serving.predict('{"instances": [1.5, 2]}', signature)

    def test_imports_without_keras(self):
        code = (
            "import importlib.util, sys\n"
            "sys.modules['keras'] = None\n"
            "sys.modules['keras_tac'] = None\n"
            f"spec = importlib.util.spec_from_file_location('s', "
            f"{SERVING_MODULE!r})\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            "print(sorted(module.predict('{\"inputs\": [1]}', "
            "module.Signature(lambda x: {'y': x}, "
            "{'x': ('float32', (None,))}))))\n"
        )
        process = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True
        )
        assert process.returncode == 0, process.stderr
        assert process.stdout.strip() == "['outputs']"
