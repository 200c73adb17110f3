"""The Keras internals keras-tac relies on, where Keras has no public API.

Checked against Keras 3.15. `tests/test_keras_internals.py` fails loudly if
a Keras release changes any of them; everything else in keras-tac uses
public Keras APIs only.

- `is_functional`: a Functional model (graph of layers) answers
  `_run_through_graph`; a subclassed model does not. Public Keras has no
  `Functional` class to test against.
- `output_layer`: the layer that produced a Functional model's output, from
  the output tensor's `_keras_history` (the last entry of `model.layers` is
  not always it).
- `inbound_layers`: the layers whose outputs a layer of a Functional model
  consumes, from its input tensors' `_keras_history`.
- `in_tf_graph`: whether a TensorFlow graph is being traced, as Keras's
  preprocessing layers ask before choosing their backend.
- `print_msg`: Keras's own progress-message printer, which respects
  `keras.config.disable_interactive_logging()` (then logs via absl).
- `own_variables`: a layer's own variables in the order of the keys
  (`"0"`, `"1"`, ...) that `Layer.save_own_variables` writes them under.
"""

import keras


def is_functional(model):
    """True for a Functional model (a graph of layers), including
    `keras.Model(inputs, outputs)` subclasses; False for Sequential and
    subclassed models."""
    return isinstance(model, keras.Model) and hasattr(
        model, "_run_through_graph"
    )


def output_layer(model):
    """The layer whose output is the (first) output of a Functional or
    Sequential `model`, or `None` when it cannot be told."""
    if isinstance(model, keras.Sequential):
        return model.layers[-1] if model.layers else None
    outputs = getattr(model, "outputs", None)
    if not outputs:
        return None
    history = getattr(outputs[0], "_keras_history", None)
    return history[0] if history else None


def inbound_layers(layer):
    """The layers that produced the inputs of `layer` in the (first) graph
    it was called in, in input order (empty when they cannot be told)."""
    try:
        inputs = layer.input
    except (AttributeError, ValueError):
        return []
    layers = []
    for tensor in keras.tree.flatten(inputs):
        history = getattr(tensor, "_keras_history", None)
        if history:
            layers.append(history[0])
    return layers


def in_tf_graph():
    """True while tracing a TensorFlow graph (a `tf.data` map or a
    `tf.function`), whatever the Keras backend: preprocessing layers then
    compute with TensorFlow."""
    from keras.src.utils import backend_utils

    return backend_utils.in_tf_graph()


def print_msg(message):
    """Prints `message` as Keras prints its progress messages."""
    from keras.src.utils import io_utils

    io_utils.print_msg(message)


def own_variables(layer):
    """`layer`'s own variables (not its sublayers'), in the order that
    `keras.layers.Layer.save_own_variables` numbers them in a saved file."""
    return layer._trainable_variables + layer._non_trainable_variables
