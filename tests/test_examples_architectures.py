"""`examples/architectures.py` runs top to bottom in its short mode on the
current backend: every family (residual CNN, Vision Transformer, MLPs on
tables, Conv1D on time series, text CNN) trains, gets TAC with default
taps and is compared with the baselines, and the promises of each family
hold against the baselines of the same run."""

import json
import os
import subprocess
import sys

import keras
import pytest
from conftest import assert_promises_hold

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = (
    "resnet_mnist",
    "vit_mnist",
    "mlp_breast_cancer",
    "mlp_digits",
    "conv1d_japanese_vowels",
    "text_cnn_sms_spam",
)


@pytest.mark.slow
def test_architectures_quick(tmp_path):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "examples", "architectures.py"),
            "--quick",
            "--output",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Per family: accuracy, error AUROC and each OOD set's AUROC.
    assert_promises_hold(result.stdout, at_least=3 * len(FAMILIES))
    with open(tmp_path / "architectures.json", encoding="utf-8") as file:
        info = json.load(file)["info"]
    assert sorted(info) == sorted(FAMILIES)
    for family in FAMILIES:
        assert info[family]["tap_layers"], family
        assert f"### {family}" in result.stdout
