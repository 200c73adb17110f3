"""Runs `examples/adversarial.py` in its quick mode on the current backend;
the example checks its promises against baselines of the same run."""

import os
import subprocess
import sys

import keras
import pytest
from conftest import assert_promises_hold

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
    # 2 models x 3 attacks x 2 promises, 2 x 2 rejected attacks, 2 x 1
    # adaptive gains.
    assert_promises_hold(stdout, at_least=18)
