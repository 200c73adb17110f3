"""keras-tac: Total Activation Classifiers for Keras 3.

Classifiers that know when they are likely wrong (Monteiro et al., ICLR
2023). The public API is what this package and its modules export
(`layers`, `losses`, `scores`, `codes`, `metrics`, `thresholds`,
`tapping`, `datasets`, `saving`, `serving`); everything under
`keras_tac.src` is internal.

`codes`, `metrics` and `thresholds` are pure NumPy: they work without a
Keras backend. Everything else needs one (`pip install keras-tac[jax]`,
`[torch]` or `[tensorflow]`, and `KERAS_BACKEND` set to it).
"""

import importlib as _importlib
import sys as _sys

from keras_tac import codes
from keras_tac import metrics
from keras_tac import thresholds

__version__ = "0.3.0"


def _is_model_server():
    """Whether this process is `python -m keras_tac.serve`, which serves an
    exported artifact without Keras (see keras_tac/serve.py)."""
    argv = list(getattr(_sys, "orig_argv", ()))
    return any(
        flag == "-m" and module == "keras_tac.serve"
        for flag, module in zip(argv, argv[1:])
    )


try:
    if _is_model_server():
        raise ImportError("the model server process does not load Keras")
    _importlib.import_module("keras")
except ImportError as error:
    # Keras could not load its backend (none installed): the NumPy-only
    # modules above still work; the rest says what to install when used.
    _BACKEND_ERROR = error

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(
            f"`keras_tac.{name}` needs Keras with a working backend, but "
            f"`import keras` failed ({_BACKEND_ERROR}). Install one, e.g. "
            "`pip install keras-tac[jax]` and `KERAS_BACKEND=jax`. Without "
            "a backend only `keras_tac.codes`, `keras_tac.metrics` and "
            "`keras_tac.thresholds` are available."
        ) from _BACKEND_ERROR

else:
    from keras_tac import attacks
    from keras_tac import config
    from keras_tac import datasets
    from keras_tac import layers
    from keras_tac import losses
    from keras_tac import recipes
    from keras_tac import rejection
    from keras_tac import saving
    from keras_tac import scores
    from keras_tac import serving
    from keras_tac import tapping
    from keras_tac.src.evaluation import compare_scores
    from keras_tac.src.evaluation import report_to_markdown
    from keras_tac.src.evaluation import write_report
    from keras_tac.src.tac_model import TACModel
