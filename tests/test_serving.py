"""`keras_tac.serving` (TF Serving's REST bodies) on toy signatures: no
model, no Keras; and the model server's NumPy accept rule, tested equal
to `keras_tac.rejection.accept`. The exported model behind a real server
is tests/test_serve.py."""

import json
import subprocess
import sys

import numpy as np
import pytest

from keras_tac.src import serving

SERVING_MODULE = serving.__file__


def predict(body, signatures):
    """What the model server does with a decoded V1 body."""
    name, arrays, row_format = serving.decode_request(body, signatures)
    signature = serving._as_signature_dict(signatures)[name]
    return serving.encode_response(signature.fn(**arrays), row_format)


@pytest.fixture(autouse=True)
def clear_session():
    yield


@pytest.fixture
def signatures():
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


def test_row_and_columnar_responses(signatures):
    rows = {"instances": [[1, 2], [3, 4.5]]}
    assert predict(rows, signatures) == {
        "predictions": [
            {"total": 3.0, "largest": 1},
            {"total": 7.5, "largest": 1},
        ]
    }
    columns = {"inputs": {"x": [[1, 2], [3, 4.5]]}}
    assert predict(columns, signatures) == {
        "outputs": {"total": [3.0, 7.5], "largest": [1, 1]}
    }
    # A single output is sent bare, in both formats.
    scaled = {
        "signature_name": "scale",
        "instances": [{"x": [1, 2], "scale": 2}, {"x": [0, 1], "scale": 3}],
    }
    assert predict(scaled, signatures) == {
        "predictions": [[2.0, 4.0], [0.0, 3.0]]
    }
    scaled = {
        "signature_name": "scale",
        "inputs": {"x": [[1, 2]], "scale": [2]},
    }
    assert predict(scaled, signatures) == {"outputs": [[2.0, 4.0]]}


@pytest.mark.parametrize(
    "body, message",
    [
        ([1, 2], "expected a JSON object"),
        ({"instances": [[1, 2]], "inputs": [[1, 2]]}, "Received both"),
        ({"signature_name": "serving_default"}, "Received neither"),
        ({"instance": [[1, 2]]}, "unknown keys ['instance']"),
        ({"instances": []}, "non-empty list"),
        ({"instances": [[1, 2, 3]]}, "Received shape (1, 3)"),
        ({"instances": [[1, 2], [3]]}, "not ragged"),
        ({"instances": [[True, False]]}, "Received values of type bool"),
        ({"instances": [["a", "b"]]}, "expects float32 values"),
        ({"instances": [[None, 1]]}, "not ragged"),
        ({"instances": [{"x": [1, 2]}, [1, 2]]}, "not a mix"),
        ({"instances": [{"b64": "AAAA"}]}, "base64"),
        ({"inputs": {"y": [[1, 2]]}}, "Missing: ['x']"),
        ({"signature_name": 3, "inputs": [[1, 2]]}, "3 not found"),
        ({"signature_name": "nope", "inputs": [[1, 2]]}, "'nope' not found"),
        ({"signature_name": "scale", "inputs": [[1, 2]]}, "several"),
        (
            {
                "signature_name": "scale",
                "inputs": {"x": [[1, 2]], "scale": [1, 2]},
            },
            "same batch size",
        ),
    ],
)
def test_errors(signatures, body, message):
    with pytest.raises(serving.RequestError) as error:
        predict(body, signatures)
    assert message in str(error.value)


def test_integer_inputs_reject_floats():
    signature = serving.Signature(
        lambda ids: {"ids": ids}, {"ids": ("int32", (None,))}
    )
    assert predict({"instances": [1, 2]}, signature) == {"predictions": [1, 2]}
    with pytest.raises(serving.RequestError, match="expects int32"):
        predict({"instances": [1.5, 2]}, signature)


@pytest.mark.parametrize(
    "body, rows",
    [
        ({"instances": [[1, 2]] * 3}, 3),
        ({"inputs": [[1, 2]] * 5}, 5),
        ({"inputs": {"x": [[1, 2]] * 4, "scale": [1] * 4}}, 4),
        ({"inputs": 7}, 0),
        ([1, 2], 0),
    ],
)
def test_declared_rows(body, rows):
    assert serving.declared_rows(body) == rows


def test_imports_without_keras():
    code = (
        "import importlib.util, json, sys\n"
        "sys.modules['keras'] = None\n"
        "sys.modules['keras_tac'] = None\n"
        f"spec = importlib.util.spec_from_file_location('s', "
        f"{SERVING_MODULE!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "sig = module.Signature(lambda x: {'y': x}, "
        "{'x': ('float32', (None,))})\n"
        "name, arrays, rows = module.decode_request({'inputs': [1]}, sig)\n"
        "print(json.dumps(module.encode_response(sig.fn(**arrays), rows)))\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    assert process.returncode == 0, process.stderr
    assert json.loads(process.stdout) == {"outputs": [1.0]}


@pytest.mark.parametrize("seed", range(3))
def test_server_accept_rule_is_rejection_accept(seed):
    # The server imports no Keras: its rule is NumPy, and equal to the one
    # `TACModel.predict_with_rejection` and the exports call.
    from keras import ops

    from keras_tac.src import model_server
    from keras_tac.src import rejection

    rng = np.random.default_rng(seed)
    rows = 400
    threshold = float(rng.normal())
    confidence = rng.normal(size=rows)
    # Values that equal the threshold only once rounded to float32, and
    # non-finite ones.
    near = np.float32(threshold) + rng.choice([-1e-9, 0.0, 1e-9], size=rows)
    confidence = np.where(rng.random(rows) < 0.3, near, confidence)
    special = rng.choice([np.nan, np.inf, -np.inf], size=rows)
    confidence = np.where(rng.random(rows) < 0.1, special, confidence)
    finite = rng.random(rows) < 0.9
    per_row = rng.normal(size=rows).astype("float32")
    for t in (threshold, np.inf, -np.inf, per_row):
        for input_is_finite in (finite, True):
            want = ops.convert_to_numpy(
                rejection.accept(
                    confidence, np.broadcast_to(input_is_finite, rows), t
                )
            )
            got = model_server.accept(confidence, input_is_finite, t)
            np.testing.assert_array_equal(got, want)
