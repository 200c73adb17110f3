"""Each example runs top to bottom in its short mode, on the current
backend, and leaves a model that loads back."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import assert_promises_hold

import keras_tac

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name, *args):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_mnist_rejection(tmp_path):
    output = os.path.join(tmp_path, "tac.keras")
    stdout = run_example("mnist_rejection.py", "--quick", "--save", output)
    assert "| accuracy on accepted |" in stdout
    assert "| error-detection AUROC, TAC |" in stdout
    # TAC's promises against this run's baselines (examples/figures.py).
    assert_promises_hold(stdout, at_least=7)
    tac = keras.saving.load_model(output)
    assert isinstance(tac, keras_tac.TACModel)
    assert tac.threshold is not None
    x = np.zeros((3, 28, 28, 1), "float32")
    out = tac.predict_with_rejection(x, verbose=0)
    assert out["accepted"].shape == (3,)


@pytest.mark.slow
def test_reference_mnist(tmp_path):
    output = os.path.join(tmp_path, "reference_mnist.keras")
    stdout = run_example("reference_mnist.py", "--quick", "--output", output)
    assert "on 160 digits: base pretrained for 1 epochs, then TAC added" in (
        stdout
    )
    # One quick epoch leaves LeNet_TAC at chance: no figure to check.
    assert "no figure is checked" in stdout
    assert "Shortened:" in stdout
    for figure in (
        "base accuracy",
        "TAC accuracy",
        "error-detection AUROC, TAC",
        "error-detection AUROC, max softmax",
        "accepted fraction",
        "accuracy on accepted",
    ):
        assert f"| {figure} |" in stdout
    tac = keras.saving.load_model(output)
    assert tac.threshold is not None
    assert tac.score == "inner_product"
    out = tac.predict_with_rejection(np.zeros((2, 28, 28, 1), "float32"))
    assert out["accepted"].shape == (2,)


def test_saved_model_loads_and_predicts():
    """The committed model that the README's quick start loads."""
    path = os.path.join(ROOT, "saved_models", "mnist_tac.keras")
    tac = keras.saving.load_model(path)
    from keras_tac import datasets

    (_, _), (x_test, y_test) = datasets.load_mnist_digits()
    out = tac.predict_with_rejection(x_test[:200], verbose=0)
    correct = out["prediction"] == y_test[:200]
    assert correct.mean() > 0.9
    assert 0.8 < out["accepted"].mean() <= 1.0
    # Accepted inputs are answered more accurately than all inputs.
    assert correct[out["accepted"]].mean() >= correct.mean()


@pytest.mark.slow
def test_mnist_guarantees():
    import re

    stdout = run_example("mnist_guarantees.py", "--quick")
    rows = re.findall(
        r"^\| (0\.5|1|2)% \| (LTT|SGR) \| ([^|]+) \|.*\| ([^|]+) \|$",
        stdout,
        re.MULTILINE,
    )
    assert len(rows) == 6, stdout[-3000:]
    for _, _, coverage, note in rows:
        # Certified (a test coverage), or refused with what would help.
        assert coverage.strip() == "infeasible" or float(coverage) > 0
        if coverage.strip() == "infeasible":
            assert "needed" in note or "above the target" in note
    for figure in ("false discovery rate", "power"):
        assert f"| {figure} |" in stdout
    # LTT vs SGR at three targets, Benjamini-Hochberg's FDR and power
    # (examples/mnist_guarantees.py), plus the risk of each certified row.
    assert_promises_hold(stdout, at_least=5)
