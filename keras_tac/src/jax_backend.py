"""What keras_tac does only on the JAX backend, in one place.

Three things, none of which applies on TensorFlow and PyTorch:

- `state_kept(model)`: leaves a model usable when a `predict` step raises
  (Keras's JAX trainer detaches the variables' values while it runs).
- `inference_compilation()`: compiles TAC's inference functions with
  `XLA_CPU_OPTIONS` on a CPU.
- `top_k_is_slow()`: whether `keras.ops.top_k` is to be avoided (the kNN
  search's k-th largest similarity then takes k max-and-remove passes).

Why the compiler options: XLA:CPU (jaxlib 0.10) compiles a classifier with
one output into a single YNNPACK kernel, but once intermediate tensors (the
taps) are outputs too, it splits the network into many kernels with XLA's
slower elementwise code between them. Letting YNNPACK also fuse the
elementwise, dot and reduce operations keeps the split network fast, with
bit-identical outputs (figures in `docs/performance.md`).

`keras_tac.config.set_jax_cpu_inference_fusion(False)` compiles with JAX's
defaults; a `--xla_cpu_experimental_ynn_fusion_type` in the `XLA_FLAGS`
environment variable is the user's choice and always wins.
"""

import contextlib
import functools
import os

import keras

from keras_tac.src import config
from keras_tac.src import keras_internals

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"

XLA_CPU_OPTIONS = {
    YNN_FUSION_OPTION: ",".join(
        f"LIBRARY_FUSION_TYPE_{kind}" for kind in ("DOT", "ELTWISE", "REDUCE")
    ),
}


def inference_compiler_options():
    """The XLA options for TAC's inference functions, or `None`.

    `None` unless the backend is JAX on a CPU, the fusion is enabled
    (`keras_tac.config.jax_cpu_inference_fusion()`) and `XLA_FLAGS` does
    not choose the YNNPACK fusions itself.

    Example:

    >>> options = inference_compiler_options()
    >>> options is None or YNN_FUSION_OPTION in options
    True
    """
    if (
        keras.backend.backend() != "jax"
        or not config.jax_cpu_inference_fusion()
    ):
        return None
    import jax

    if jax.default_backend() != "cpu":
        return None
    if YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", ""):
        return None
    return dict(XLA_CPU_OPTIONS)


def top_k_is_slow():
    """True on the JAX backend, where `keras.ops.top_k` is to be avoided.

    JAX's `top_k` costs some 60x more than k max-and-remove passes on
    XLA:CPU (about 160-200 ms against 4 ms for k = 10 of 4,096 values per
    row, batch 256), and lowers to a StableHLO composite that TensorFlow
    2.21 cannot load from a JAX-exported SavedModel. PyTorch's and
    TensorFlow's `top_k` beat the passes (1.5 against 18 ms and 3.5
    against 8 ms there).

    Example:

    >>> top_k_is_slow() == (keras.backend.backend() == "jax")
    True
    """
    return keras.backend.backend() == "jax"


@contextlib.contextmanager
def inference_compilation():
    """Functions that Keras's JAX trainer compiles inside this context get
    `inference_compiler_options()`.

    Use it around `make_predict_function` / `make_test_function` (forward
    passes only: the training step keeps JAX's defaults).

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> with inference_compilation():
    ...     _ = model.make_predict_function(force=True)
    """
    options = inference_compiler_options()
    if options is None:
        yield
        return
    import jax

    jit = functools.partial(jax.jit, compiler_options=options)
    with keras_internals.jax_trainer_jit(jit):
        yield


@contextlib.contextmanager
def state_kept(model):
    """Leaves the model usable when a `predict` step raises.

    Keras's JAX trainer detaches the values of the variables while it
    predicts and reattaches them at the end: an error in a step (a
    malformed batch from a generator, an interrupt) would leave the model
    without weights. Holding the values (references, not copies) lets us
    reattach them.
    """
    if keras.backend.backend() != "jax":
        yield
        return
    values = [(variable, variable.value) for variable in model.variables]
    try:
        yield
    except BaseException:
        # The state of the last step that ran, if any (the step donates
        # its input buffers, so the held values may be gone by then)...
        model.jax_state_sync()
        # ... else the values held from before the first step.
        for variable, value in values:
            if getattr(variable, "_value", None) is None:
                variable.assign(value)
        raise


@contextlib.contextmanager
def state_synced_through(model, trainer):
    """While `trainer` trains layers of `model`, syncing `model`'s JAX state
    syncs the trainer's.

    Keras's JAX trainer keeps the variables' values out of the layers
    between the steps of an epoch; a callback reads them after calling its
    model's `jax_state_sync`. Callbacks of the cached-feature `fit` hold the
    TAC model, whose layers the head trainer is training.
    """
    if keras.backend.backend() != "jax":
        yield
        return

    def sync():
        trainer.jax_state_sync()

    object.__setattr__(model, "jax_state_sync", sync)
    try:
        yield
    finally:
        object.__delattr__(model, "jax_state_sync")
