"""A JAX or PyTorch user needs no TensorFlow: `minimal_install_check.py`
trains, calibrates, rejects and saves with TensorFlow, the data packages
and the export tools blocked from import (`.ci/run` also runs it in a fresh
environment with only the core dependencies and JAX)."""

import os
import subprocess
import sys

import keras
import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "minimal_install_check.py")


@pytest.mark.slow  # a subprocess with TensorFlow blocked
def test_core_works_without_tensorflow():
    # TensorFlow itself needs TensorFlow: under its backend the check runs
    # on JAX.
    backend = keras.backend.backend()
    if backend == "tensorflow":
        backend = "jax"
    result = subprocess.run(
        [sys.executable, SCRIPT, "--block"],
        capture_output=True,
        text=True,
        env=dict(os.environ, KERAS_BACKEND=backend),
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "minimal install: OK" in result.stdout
