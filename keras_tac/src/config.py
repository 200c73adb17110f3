"""Process-wide settings of keras-tac, read and changed through functions
(as `keras.config`), never by assigning module attributes."""

import math
import warnings

import numpy as np

from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export

_SETTINGS = {
    # Cached tap features larger than this (training and validation data
    # together) are kept in a memory-mapped temporary file instead of RAM.
    "feature_cache_memory_budget": 1 << 30,
    "jax_cpu_inference_fusion": True,
}


@keras_tac_export("keras_tac.config.feature_cache_memory_budget")
def feature_cache_memory_budget():
    """The size in bytes above which `TACModel.fit` keeps cached tap
    features on disk (a memory-mapped temporary file) instead of in memory.

    Returns:
        int. Defaults to `2**30` (1 GiB).

    Example:

    >>> feature_cache_memory_budget() > 0
    True
    """
    return _SETTINGS["feature_cache_memory_budget"]


@keras_tac_export("keras_tac.config.set_feature_cache_memory_budget")
def set_feature_cache_memory_budget(num_bytes):
    """Sets the size in bytes above which cached tap features go to disk.

    Args:
        num_bytes: int `>= 0`. `0` always uses a temporary file.

    Example:

    >>> set_feature_cache_memory_budget(2**30)
    """
    if isinstance(num_bytes, bool) or not isinstance(
        num_bytes, (int, np.integer)
    ):
        raise ValueError(
            "Invalid `num_bytes`: expected an int >= 0. "
            f"Received: num_bytes={num_bytes!r}"
        )
    validation.check_number("num_bytes", num_bytes, 0, math.inf)
    _SETTINGS["feature_cache_memory_budget"] = int(num_bytes)


@keras_tac_export("keras_tac.config.jax_cpu_inference_fusion")
def jax_cpu_inference_fusion():
    """Deprecated, no effect: the value last given to
    `set_jax_cpu_inference_fusion`.

    keras-tac 0.2 compiled TAC's inference on JAX's CPU with XLA:CPU
    fusion options it chose by timing, by replacing a piece of Keras's JAX
    trainer at run time. Since 0.3 keras-tac compiles with JAX's defaults;
    `XLA_FLAGS` (e.g. `--xla_cpu_experimental_ynn_fusion_type=...`) sets
    the options for every program instead.

    Returns:
        bool. Defaults to `True`.
    """
    return _SETTINGS["jax_cpu_inference_fusion"]


@keras_tac_export("keras_tac.config.set_jax_cpu_inference_fusion")
def set_jax_cpu_inference_fusion(enabled):
    """Deprecated, no effect (see `jax_cpu_inference_fusion`); warns.

    Args:
        enabled: bool.
    """
    if not isinstance(enabled, bool):
        raise ValueError(
            f"Invalid `enabled`: expected a bool. Received: enabled={enabled!r}"
        )
    warnings.warn(
        "keras_tac.config.set_jax_cpu_inference_fusion has no effect since "
        "keras-tac 0.3 (TAC compiles with JAX's defaults; set XLA options "
        "with the XLA_FLAGS environment variable).",
        DeprecationWarning,
        stacklevel=2,
    )
    _SETTINGS["jax_cpu_inference_fusion"] = enabled
