"""Runs `examples/adversarial.py` in its quick mode on the current backend;
the example checks its figures against the recorded ones."""

import os
import subprocess
import sys

import keras
import pytest

EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "examples",
    "adversarial.py",
)


@pytest.mark.slow
def test_adversarial_quick():
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    result = subprocess.run(
        [sys.executable, EXAMPLE, "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    output = result.stdout[-4000:] + result.stderr[-4000:]
    assert result.returncode == 0, output
    stdout = result.stdout
    assert "### TAC trained as usual (add-on)" in stdout
    assert "### after adversarial training" in stdout
    assert "| 0.3 | adaptive |" in stdout
    assert "| adversarial |" in stdout
    assert "quick figures within tolerance" in stdout, stdout[-2000:]
