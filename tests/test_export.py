"""Export for serving, checked from the serving side.

The module fixture trains and calibrates a small TAC model, exports it
(SavedModel on TensorFlow and JAX, ONNX on PyTorch) and runs
tests/serving_client.py in a separate process that loads the artifact with
TensorFlow or ONNX Runtime while Keras and keras-tac are blocked from
import. The tests compare what that process answered to direct signature
calls with `predict_with_rejection` in this process. The real server, over
HTTP, is tests/test_serve.py.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import calibrated_tac
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
FLOATS = ("confidence", "tac_confidence", "probabilities", "p_value")
# Rows of the batch of 17 holding a NaN and an infinity.
NAN_ROW, INF_ROW = 3, 11


def _artifact_path(folder):
    return os.path.join(folder, "tac.onnx" if FORMAT == "onnx" else "tac")


@pytest.fixture(scope="module")
def served(digits, trained_cnn_weights, tmp_path_factory):
    """Exports a calibrated model, serves it from another process, and
    returns what that process answered with this process's references."""
    tac = calibrated_tac(digits, trained_cnn_weights)
    x_test = digits[1][0]

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
    job = {
        "format": FORMAT,
        "artifact": artifact,
        "serving_module": SERVING_MODULE,
        "arrays": os.path.join(folder, "arrays.npz"),
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
    with open(os.path.join(job["output"], "report.json")) as file:
        report = json.load(file)
    return {
        "artifact": artifact,
        "arrays": job["arrays"],
        "references": references,
        "direct": direct,
        "report": report,
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
        np.testing.assert_array_equal(
            np.asarray(outputs["p_value"])[[NAN_ROW, INF_ROW]], 0.0
        )
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
        if name == "p_value":
            # A step of 1 / (n + 1) per held-out confidence crossed: those
            # 1e-3 may cross one or two.
            tolerance = 0.015
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


@pytest.mark.slow  # the serving subprocess
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


@pytest.mark.skipif(FORMAT != "tf_saved_model", reason=NO_SAVED_MODEL)
@pytest.mark.slow  # saved_model_cli subprocesses
class TestSavedModelCli(ServedResults):
    def saved_model_cli(self, *args):
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
            [*command, *args],
            capture_output=True,
            text=True,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
            timeout=300,
        )
        assert process.returncode == 0, process.stderr[-3000:]
        return process.stdout

    def test_run_answers_as_predict_with_rejection(self, served, tmp_path):
        self.saved_model_cli(
            "run",
            "--dir",
            served["artifact"],
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"image={served['arrays']}[batch_1]",
            "--outdir",
            str(tmp_path),
        )
        outputs = {
            name: np.load(tmp_path / f"{name}.npy")
            for name in export_lib.SERVING_OUTPUTS
        }
        assert_matches(outputs, served["references"]["batch_1"])

    def test_show_all_lists_the_signatures(self, served):
        text = self.saved_model_cli(
            "show", "--all", "--dir", served["artifact"]
        )
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

    def test_per_class_thresholds_and_p_values_are_exported(
        self, digits, trained_cnn_weights, tmp_path
    ):
        tac = calibrated_tac(digits, trained_cnn_weights)
        x_test = digits[1][0]
        summary = tac.calibrate(
            x_test[:150], target_coverage=0.8, per_class=True, verbose=0
        )
        path = _artifact_path(str(tmp_path))
        tac.export(path, format=FORMAT, verbose=False)
        signature = _run_in_process(path)
        batch = x_test[150:230]
        served = signature.fn(**{next(iter(signature.inputs)): batch})
        reference = tac.predict_with_rejection(batch, verbose=0)
        logits = tac.predict(batch, verbose=0)["base_output"]
        reference["probabilities"] = keras.ops.convert_to_numpy(
            keras.ops.softmax(logits, axis=-1)
        )
        # The oracle of the decision: each input's predicted class's
        # threshold, from calibrate's summary.
        thresholds = summary["class_thresholds"].astype("float32")
        np.testing.assert_array_equal(
            reference["accepted"],
            reference["confidence"] >= thresholds[reference["prediction"]],
        )
        assert_matches(served, reference)

    def test_unnamed_input_is_exported_as_input(self, tmp_path):
        # Unnamed inputs made earlier in the session push Keras's counter
        # (input_layer_1, ...); the artifact's name must not depend on it.
        keras.Input((3,))
        base = keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(6, activation="relu", name="features"),
                keras.layers.Dense(3, name="head"),
            ]
        )
        layer_name = base.inputs[0]._keras_history.operation.name
        assert layer_name != "input_layer"  # the counter moved
        tac = keras_tac.TACModel(base, tap_layers=["features"])
        path = _artifact_path(str(tmp_path))
        tac.export(path, format=FORMAT, threshold=0.0, verbose=False)
        signature = _run_in_process(path)
        assert signature.inputs == {"input": ("float32", (None, 4))}

    def test_serving_input_names(self):
        def base(inputs):
            merged = keras.layers.Concatenate()(inputs)
            hidden = keras.layers.Dense(4, name="features")(merged)
            return keras.Model(inputs, keras.layers.Dense(2)(hidden))

        names = export_lib.serving_input_names
        named = [keras.Input((2,), name="image"), keras.Input((3,))]
        tac = keras_tac.TACModel(base(named), tap_layers=["features"])
        assert names(tac) == ["image", "input_1"]
        unnamed = [keras.Input((2,)), keras.Input((3,))]
        tac = keras_tac.TACModel(base(unnamed), tap_layers=["features"])
        assert names(tac) == ["input_0", "input_1"]
        clash = [keras.Input((2,), name="input_1"), keras.Input((3,))]
        tac = keras_tac.TACModel(base(clash), tap_layers=["features"])
        with pytest.raises(ValueError, match=r"repeat: \['input_1', "):
            names(tac)
        reserved = [keras.Input((2,), name="threshold"), keras.Input((3,))]
        tac = keras_tac.TACModel(base(reserved), tap_layers=["features"])
        with pytest.raises(ValueError, match="input named 'threshold'"):
            names(tac)

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
