"""The serving side of tests/test_export.py, run in its own process.

Loads an exported TAC artifact the way a server does, with TensorFlow
(SavedModel) or ONNX Runtime (ONNX) and without Keras or keras-tac (both are
blocked from import; keras_tac/src/serving.py is loaded by file path), and
runs its signatures on given arrays. tests/test_serve.py talks to the real
server over HTTP.

Usage: python serving_client.py JOB.json

JOB.json holds `format` ("tf_saved_model" or "onnx"), `artifact` (path),
`serving_module` (path of keras_tac/serving.py), `arrays` (an .npz of
named batches; a key "NAME" runs the default signature, a pair "NAME" /
"NAME:threshold" also runs "serve_with_threshold") and `output` (a folder
for the results: direct.npz and report.json).
"""

import importlib.util
import json
import os
import sys

# Refuse Keras outright: the artifact must be standalone. (TensorFlow tries
# to import Keras and carries on without it.)
for _blocked in ("keras", "keras_tac", "tf_keras"):
    sys.modules[_blocked] = None

import numpy as np  # noqa: E402


def load_serving_module(path):
    spec = importlib.util.spec_from_file_location("tac_serving", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_signatures(serving, job):
    if job["format"] == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(
            job["artifact"], providers=["CPUExecutionProvider"]
        )
        return {serving.DEFAULT_SIGNATURE: serving.onnx_signature(session)}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    loaded = tf.saved_model.load(job["artifact"])
    return {
        name: serving.saved_model_signature(function)
        for name, function in loaded.signatures.items()
    }


def main(job_path):
    with open(job_path) as file:
        job = json.load(file)
    serving = load_serving_module(job["serving_module"])
    signatures = load_signatures(serving, job)
    default = signatures[serving.DEFAULT_SIGNATURE]
    direct = {}
    with np.load(job["arrays"]) as arrays:
        for key in arrays.files:
            if ":" in key:
                continue
            (name,) = default.inputs
            outputs = default.fn(**{name: arrays[key]})
            for output, value in outputs.items():
                direct[f"{key}/{output}"] = value
            if f"{key}:threshold" in arrays.files:
                outputs = signatures["serve_with_threshold"].fn(
                    **{
                        name: arrays[key],
                        "threshold": arrays[f"{key}:threshold"],
                    }
                )
                for output, value in outputs.items():
                    direct[f"{key}:threshold/{output}"] = value
    loaded = sorted(
        name
        for name, module in sys.modules.items()
        if module is not None and name.split(".")[0] in ("keras", "keras_tac")
    )
    os.makedirs(job["output"], exist_ok=True)
    np.savez(os.path.join(job["output"], "direct.npz"), **direct)
    with open(os.path.join(job["output"], "report.json"), "w") as file:
        json.dump(
            {
                "signatures": {
                    name: {
                        input_name: [dtype, list(shape)]
                        for input_name, (dtype, shape) in sig.inputs.items()
                    }
                    for name, sig in signatures.items()
                },
                "keras_modules": loaded,
                "runtime": "onnxruntime"
                if job["format"] == "onnx"
                else "tensorflow",
            },
            file,
        )


if __name__ == "__main__":
    main(sys.argv[1])
