"""What keras_tac does only on the JAX backend, in one place.

Two things, neither of which applies on TensorFlow and PyTorch:

- `state_kept(model)`: leaves a model usable when a `predict` step raises
  (Keras's JAX trainer detaches the variables' values while it runs).
- `top_k_is_slow()`: whether `keras.ops.top_k` is to be avoided (the kNN
  search's k-th largest similarity then takes k max-and-remove passes).

keras-tac compiles with JAX's defaults and never changes how Keras's JAX
trainer compiles (versions up to 0.2 swapped the trainer's `jit` to choose
XLA:CPU fusion options; see CHANGELOG.md).
"""

import contextlib

import keras


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
