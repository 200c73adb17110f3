"""A JAX or PyTorch user needs no TensorFlow: `minimal_install_check.py`
trains, calibrates, rejects and saves with TensorFlow, the data packages
and the export tools blocked from import (`.ci/run` also runs it in a fresh
environment with only the core dependencies and JAX). The dependency
metadata: pyproject.toml declares ranges, and constraints.txt and
constraints-oldest.txt pin versions inside them (the two tested ends)."""

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


# pyproject.toml declares ranges (a library installs beside the user's
# Keras); constraints.txt and constraints-oldest.txt pin the two tested
# ends. The checks read the files: no install, no network.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject_requirements():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from packaging.requirements import Requirement

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
        project = tomllib.load(file)["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines.extend(extra)
    requirements = [Requirement(line) for line in lines]
    return [r for r in requirements if r.name != "keras-tac"]


def _pins(name):
    from packaging.utils import canonicalize_name

    pins = {}
    with open(os.path.join(ROOT, name)) as file:
        for line in file:
            line = line.split("#")[0].strip()
            if line:
                package, version = line.split("==")
                pins[canonicalize_name(package)] = version
    return pins


def _requirement(name):
    from packaging.utils import canonicalize_name

    (requirement,) = [
        r
        for r in _pyproject_requirements()
        if canonicalize_name(r.name) == name
    ]
    return requirement


def test_keras_is_a_range_of_keras_3():
    specifier = _requirement("keras").specifier
    assert "3.8.0" in specifier
    assert "3.15.1" in specifier
    assert "4.0.0" not in specifier
    assert "3.7.0" not in specifier


@pytest.mark.parametrize("name", ["constraints.txt", "constraints-oldest.txt"])
def test_constraints_pin_versions_inside_the_ranges(name):
    from packaging.utils import canonicalize_name

    pins = _pins(name)
    assert "keras-tac" not in pins
    assert {"keras", "jax", "jaxlib", "numpy"} <= set(pins)
    for requirement in _pyproject_requirements():
        version = pins.get(canonicalize_name(requirement.name))
        if version is not None:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{name}: {requirement.name}=={version} outside {requirement}"
            )


def test_constraints_pin_the_cpu_torch():
    # A torch range resolves to a multi-GB CUDA build on PyPI: the project's
    # own installs pin exactly 2.13.0 (also the local 2.13.0+cpu wheel).
    assert _pins("constraints.txt")["torch"] == "2.13.0"


def test_oldest_constraints_are_the_lower_end():
    from packaging.version import Version

    keras_floor = min(
        Version(spec.version)
        for spec in _requirement("keras").specifier
        if spec.operator == ">="
    )
    jax_floor = min(
        Version(spec.version)
        for spec in _requirement("jax").specifier
        if spec.operator == ">="
    )
    pins = _pins("constraints-oldest.txt")
    assert Version(pins["keras"]).release[:2] == keras_floor.release[:2]
    assert Version(pins["jax"]) == jax_floor


def test_version_is_the_changelogs_latest():
    # One version, said three times: pyproject.toml, keras_tac.__version__
    # and the newest release section of CHANGELOG.md (Keep a Changelog).
    import re

    import keras_tac

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
        version = tomllib.load(file)["project"]["version"]
    assert keras_tac.__version__ == version
    with open(os.path.join(ROOT, "CHANGELOG.md")) as file:
        releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", file.read(), re.M)
    assert releases and releases[0] == version, releases
