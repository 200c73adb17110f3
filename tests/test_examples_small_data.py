"""`examples/small_data.py` runs top to bottom in its short mode on the
current backend: each of its rows (a Conv1D on a series, an MLP on a
multichannel series, an MLP on a table) trains a base, adds TAC with the
library's default call, compares the scores, writes the Markdown and JSON
report, and the promises of each row hold against the baselines of the
same run."""

import json
import os
import subprocess
import sys

import keras
import pytest
from conftest import assert_promises_hold

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = (
    "italy_power_demand/conv1d",
    "japanese_vowels/mlp",
    "breast_cancer/mlp",
)


@pytest.mark.slow
def test_small_data_quick(tmp_path):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "examples", "small_data.py"),
            "--quick",
            "--output",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Per row: the accuracy promise, and the AUROC one where the base makes
    # enough test errors (the two series rows do).
    assert_promises_hold(result.stdout, at_least=len(ROWS) + 2)
    report = (tmp_path / "small_data.md").read_text(encoding="utf-8")
    assert report.startswith("# TAC's defaults on small data sets")
    with open(tmp_path / "small_data.json", encoding="utf-8") as file:
        data = json.load(file)
    assert set(data) >= {"stamp", "config", "info", "runs", "summary"}
    assert data["stamp"]["backend"] == keras.backend.backend()
    assert sorted(data["info"]) == sorted(ROWS)
    for row in ROWS:
        name, model = row.split("/")
        assert f"| {name} | {model} |" in report
        assert len(data["runs"][row]) == 1  # one seed
        assert data["info"][row]["tap_layers"], row
        for key in ("base_accuracy", "tac_accuracy"):
            assert 0 <= data["summary"][f"{row}/{key}"] <= 1, (row, key)
    # The base makes errors on both series (the table may have none).
    for row in ROWS[:2]:
        for score in ("tac", "msp"):
            assert f"{row}/{score}/error_auroc" in data["summary"], row
