"""Process-wide settings of keras-tac, read and changed through functions
(as `keras.config`), never by assigning module attributes."""

import math

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
    """Whether TAC's inference functions on JAX's CPU backend are compiled
    with XLA:CPU's YNNPACK fusions and TAC's predict step as two programs.

    When on, the first inference call of a model times its program under
    each of keras-tac's fusion sets (dot, elementwise and reduce; or dot
    and reduce) on its first batch and keeps the faster: a one-off cost of
    some six batches. See `docs/performance.md`.

    Returns:
        bool. Defaults to `True`.
    """
    return _SETTINGS["jax_cpu_inference_fusion"]


@keras_tac_export("keras_tac.config.set_jax_cpu_inference_fusion")
def set_jax_cpu_inference_fusion(enabled):
    """Turns the YNNPACK fusions of TAC's JAX CPU inference on or off.

    Off, TAC's inference functions compile with JAX's defaults, as one
    program each, and no fusion set is timed.
    A `--xla_cpu_experimental_ynn_fusion_type` in the `XLA_FLAGS`
    environment variable always wins over this setting. Models already
    compiled keep their functions until `make_predict_function(force=True)`.

    Args:
        enabled: bool.
    """
    if not isinstance(enabled, bool):
        raise ValueError(
            f"Invalid `enabled`: expected a bool. Received: enabled={enabled!r}"
        )
    _SETTINGS["jax_cpu_inference_fusion"] = enabled
