"""The input gradient of an attack loss: everything in `keras_tac.attacks`
that depends on the backend, in one place.

`input_gradient(model, loss)` returns a function `(x, labels) ->
(gradient, aux)`: the gradient of `sum(values)` with respect to `x`, where
`values, aux = loss(x, labels)`, and `aux`, as backend tensors:

- TensorFlow: a `tf.GradientTape` inside a `tf.function` that reads the
  model's variables;
- JAX: `jax.grad` of a stateless call (the variables' values are an
  argument, mapped in with `keras.StatelessScope`), compiled once with
  `jax.jit`;
- PyTorch: `torch.autograd.grad` on a leaf copy of `x`, eagerly.

`loss(x, labels)` is written with `keras.ops` and returns one value per
sample (and a per-sample `aux` tensor, not differentiated); samples do not
interact (the model runs in inference mode), so the gradient of the sum is
each sample's own gradient.

JAX also needs `record_values`: while Keras's JAX trainer runs an epoch it
keeps the variables' values out of the variables (they are "purged" and
passed from step to step). An attack on the model being trained (the
batches of adversarial training, fetched inside the training step) reads
them from what `record_values` saw at the start of the step, from a
callback's `on_train_batch_begin`.
"""

import weakref

import keras

# model -> {key: gradient function}; the functions hold the model weakly.
_FUNCTIONS = weakref.WeakKeyDictionary()
# model -> list of (variable, value) recorded at the start of a JAX step.
_RECORDED = weakref.WeakKeyDictionary()


def input_gradient(model, loss, key):
    """A function `(x, labels) -> (d sum(values) / dx, aux)` with
    `values, aux = loss(x, labels)`, cached on `model` under `key`
    (hashable: what `loss` depends on besides the model), so repeated
    attacks compile once.

    Args:
        model: the `keras.Model` whose variables `loss` reads.
        loss: callable `(x, labels) -> (values, aux)`, two `(batch,)`
            tensors, in `keras.ops`.
        key: hashable, identifies `loss` for the cache.

    Returns:
        A callable taking backend tensors `x` (float32) and `labels` and
        returning the gradient, a backend tensor shaped like `x`, and
        `aux`.
    """
    functions = _FUNCTIONS.setdefault(model, {})
    if key not in functions:
        functions[key] = _BUILDERS[keras.backend.backend()](model, loss)
    return functions[key]


def _tensorflow(model, loss):
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def gradient(x, labels):
        with tf.GradientTape() as tape:
            tape.watch(x)
            values, aux = loss(x, labels)
            total = tf.reduce_sum(values)
        return tape.gradient(total, x), tf.stop_gradient(aux)

    return gradient


def _jax(model, loss):
    import jax

    model_ref = weakref.ref(model)

    def total(values, x, labels):
        variables = model_ref().variables
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            losses, aux = loss(x, labels)
        return jax.numpy.sum(losses), aux

    compiled = jax.jit(jax.grad(total, argnums=1, has_aux=True))

    def gradient(x, labels):
        return compiled(current_values(model_ref()), x, labels)

    return gradient


def _torch(model, loss):
    import torch

    def gradient(x, labels):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            values, aux = loss(x, labels)
            (grad,) = torch.autograd.grad(values.sum(), [x])
        return grad.detach(), aux.detach()

    return gradient


_BUILDERS = {"tensorflow": _tensorflow, "jax": _jax, "torch": _torch}


def record_values(model):
    """Records the current values of `model`'s variables (JAX only; a
    no-op elsewhere). Call it from a callback's `on_train_batch_begin`:
    the values then are those the coming training step receives."""
    if keras.backend.backend() != "jax":
        return
    _RECORDED[model] = _live_values(model)


def forget_values(model):
    """Drops what `record_values` kept for `model`."""
    _RECORDED.pop(model, None)


def current_values(model):
    """The values of `model.variables` (JAX), also while Keras's JAX
    trainer holds them outside the variables: each comes from the variable
    itself, else from `record_values`, else from the trainer's state."""
    found = {id(v): value for v, value in _live_values(model) if _ok(value)}
    for source in (_RECORDED.get(model, ()), _trainer_state(model)):
        for variable, value in source:
            if id(variable) not in found and _ok(value):
                found[id(variable)] = value
    missing = [v.path for v in model.variables if id(v) not in found]
    if missing:
        raise RuntimeError(
            "Cannot attack the model now: Keras's JAX trainer holds the "
            f"values of {len(missing)} variable(s) (e.g. {missing[0]!r}) "
            "outside the model. To attack the model being trained, record "
            "its values at the start of each step (`record_values` in a "
            "callback's `on_train_batch_begin`)."
        )
    return [found[id(v)] for v in model.variables]


def _live_values(model):
    return [(v, getattr(v, "_value", None)) for v in model.variables]


def _trainer_state(model):
    state = getattr(model, "_jax_state", None) or {}
    pairs = []
    for name, variables in (
        ("trainable_variables", model.trainable_variables),
        ("non_trainable_variables", model.non_trainable_variables),
    ):
        values = state.get(name)
        if values and len(values) == len(variables):
            pairs.extend(zip(variables, values))
    return pairs


def _ok(value):
    if value is None:
        return False
    is_deleted = getattr(value, "is_deleted", None)
    return not (callable(is_deleted) and is_deleted())
