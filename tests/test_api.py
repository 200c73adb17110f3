"""The public API is exactly what `keras_tac_export` names, and the
NumPy-only modules work without a Keras backend."""

import importlib
import inspect
import os
import subprocess
import sys

import keras_tac
import keras_tac.serve  # noqa: F401 (not imported by keras_tac: needs KServe)
from keras_tac.src.api_export import EXPORTS

PUBLIC_MODULES = (
    "keras_tac",
    "keras_tac.attacks",
    "keras_tac.codes",
    "keras_tac.config",
    "keras_tac.datasets",
    "keras_tac.layers",
    "keras_tac.losses",
    "keras_tac.metrics",
    "keras_tac.monitoring",
    "keras_tac.recipes",
    "keras_tac.rejection",
    "keras_tac.saving",
    "keras_tac.scores",
    "keras_tac.serve",
    "keras_tac.tapping",
    "keras_tac.thresholds",
)
# Public names that are constants, modules, or defined in a module that
# must stay importable without keras-tac (`serving`, loaded by file path).
NOT_DECORATED = {"__version__", "BUNDLED_MNIST_NAME", "TAC_SCORES"}


def resolve(path):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_every_export_is_at_its_public_path():
    assert EXPORTS, "nothing was exported"
    for path, symbol in EXPORTS.items():
        assert resolve(path) is symbol, path


def test_public_modules_hold_only_exports():
    exported = {id(symbol) for symbol in EXPORTS.values()}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if name.startswith("_") or name in NOT_DECORATED or name == "src":
                continue
            if inspect.ismodule(value):
                assert value.__name__.startswith("keras_tac."), name
                assert not value.__name__.startswith("keras_tac.src"), (
                    f"{module_name}.{name} exposes an internal module"
                )
                continue
            assert id(value) in exported, (
                f"{module_name}.{name} is public but not exported with "
                "keras_tac_export"
            )
            assert f"{module_name}.{name}" in EXPORTS, (
                f"{module_name}.{name} is exported under another path"
            )


def test_keras_objects_are_registered():
    import keras

    for path, symbol in EXPORTS.items():
        if isinstance(symbol, type) and issubclass(
            symbol, (keras.layers.Layer, keras.losses.Loss)
        ):
            name = keras.saving.get_registered_name(symbol)
            assert name == f"keras_tac>{symbol.__name__}", path


def test_numpy_modules_work_without_a_backend():
    # Keras cannot be imported at all here, as with no backend installed.
    code = (
        "import sys\n"
        "sys.modules['keras'] = None\n"
        "import keras_tac\n"
        "from keras_tac import codes, metrics, thresholds\n"
        "codes_, _ = codes.class_codes(4, 2)\n"
        "assert metrics.roc_auc([2.0, 1.0], [True, False]) == 1.0\n"
        "assert thresholds.coverage_threshold([3.0, 2.0, 1.0], 0.5) == 2.0\n"
        "try:\n"
        "    keras_tac.TACModel\n"
        "except ImportError as error:\n"
        "    assert 'needs Keras with a working backend' in str(error)\n"
        "else:\n"
        "    raise AssertionError('TACModel without Keras')\n"
    )
    env = dict(os.environ)
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    assert keras_tac.TACModel is resolve("keras_tac.TACModel")
