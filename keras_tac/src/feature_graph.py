"""The one forward pass of a TAC model: taps -> pooled taps -> head ->
confidence.

`TACModel.call`, the feature cache (which keeps the pooled taps and trains
the head from them), the training statistics, the scorers, the rejection
functions and the export all run these two functions, eagerly, traced or on
symbolic tensors:

- `pooled_taps(tac, inputs)`: the base with its taps, each tap pooled as
  the head pools it; returns the base output and the pooled taps.
- `head_outputs(tac, base_output, pooled)`: the head, the base head's
  prediction and the confidence, from those.

`graph_model(tac, keys)` is the same graph as a functional `keras.Model`
returning only `keys`: what `predict_with_rejection`, `calibrate` and the
feature extractor run, so only the outputs they read leave the device.
"""

import contextlib
import weakref

import keras
from keras import ops

from keras_tac.src import distribution
from keras_tac.src import rejection
from keras_tac.src import tapping
from keras_tac.src.layers.tac_head import score_of

# Per TAC model, the functional model `inputs -> [base output, *taps]`. It
# shares the base's layers and weights; kept here, not on the TAC model, so
# that Keras does not track (and save) the base's weights twice.
_TAP_MODELS = weakref.WeakKeyDictionary()


def tap_model(tac, taps=None):
    """The functional model `inputs -> [base output, *tapped tensors]` of
    `tac`, sharing the base's layers and weights; built once, from `taps`
    (`(path, layer)` pairs from `keras_tac.tapping.resolve_taps`) or else
    from `tac.tap_layers`."""
    model = _TAP_MODELS.get(tac)
    if model is None:
        if taps is None:
            taps = tapping.resolve_taps(tac.base_model, tac.tap_layers)
        model = _TAP_MODELS[tac] = tapping.tap_model(tac.base_model, taps)
    return model


def pooled_taps(tac, inputs, training=False):
    """The base output and the tapped activations pooled by the head.

    The base runs in training mode only with `train_base=True` and
    `training`; a frozen base passes no gradient.

    Args:
        tac: a `keras_tac.TACModel`.
        inputs: the base model's inputs.
        training: bool. Defaults to `False`.

    Returns:
        `(base_output, pooled)`: `(batch, num_classes)` and a list of
        `(batch, channels)` tensors, one per tap.
    """
    training = bool(training) and tac.train_base
    tapped = tap_model(tac)(inputs, training=training)
    if not tac.train_base:
        tapped = [ops.stop_gradient(tensor) for tensor in tapped]
    taps = tapped[1:]
    if isinstance(taps[0], keras.KerasTensor):
        # Building a functional model: one node for all the pooling layers
        # (they share the name "pooling", which a functional model forbids).
        return tapped[0], keras.layers.Lambda(tac.head.pool)(taps)
    return tapped[0], tac.head.pool(taps)


def head_outputs(tac, base_output, pooled, training=False, confidence=True):
    """The TAC model's outputs from the base output and the pooled taps;
    without `confidence`, TAC's own score stands as `"confidence"` (what
    the head trains on, in the cached fit).

    Returns:
        A dict with `"base_output"`, `"pooled"` (the list of pooled taps),
        `"profile"`, `"distances"`, `"scores"`, `"prediction"`,
        `"confidence"`, `"tac_prediction"`, `"tac_confidence"`, and with
        the combined confidence `"confidence_parts"`.
    """
    head = tac.head(pooled, training=training)
    prediction = ops.cast(ops.argmax(base_output, axis=-1), "int32")
    outputs = {
        "base_output": base_output,
        "pooled": head["pooled"],
        "profile": head["profile"],
        "distances": head["distances"],
        "scores": head["scores"],
        "prediction": prediction,
        "confidence": score_of(head["scores"], prediction),
        "tac_prediction": head["tac_prediction"],
        "tac_confidence": head["tac_confidence"],
    }
    if confidence and tac.confidence_layer is not None:
        combined = tac.confidence_layer(
            base_output,
            head["pooled"],
            outputs["confidence"],
            probabilities=tac.base_outputs_probabilities,
        )
        outputs["confidence"] = combined["confidence"]
        outputs["confidence_parts"] = combined["parts"]
    return outputs


def symbolic_inputs(tac):
    """Fresh `keras.Input`s shaped like the base model's inputs."""
    return keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype),
        tap_model(tac).input,
    )


# Per TAC model, its graph models by output keys. They hold the TAC model's
# layers, never the model itself, so the entry dies with the model.
_GRAPH_MODELS = weakref.WeakKeyDictionary()


def graph_model(tac, keys, distributed=True):
    """The TAC model's forward pass as a functional model with outputs
    `keys` (a tuple of output names of `TACModel.call`, plus `"pooled_<i>"`
    and `"inner_products"`). Built once per model and keys; its compiled
    function follows the TAC model's `jit_compile`. With `distributed`, in
    the TAC model's `tf.distribute` scope (its `predict` splits batches
    over the replicas); without, on one replica (for `predict_on_batch`
    of whole batches, as the feature passes run).

    Example:

    >>> model = graph_model(tac, ("confidence",))  # doctest: +SKIP
    >>> model.predict(x)["confidence"].shape  # doctest: +SKIP
    (n,)
    """
    keys = tuple(keys)
    models = _GRAPH_MODELS.setdefault(tac, {})
    model = models.get((keys, distributed))
    if model is None:
        scope = distribution.strategy_scope if distributed else _no_scope
        with scope(tac):
            model = models[(keys, distributed)] = _build(tac, keys)
    if model.jit_compile != tac.jit_compile:
        model.jit_compile = tac.jit_compile
        model.predict_function = None
    return model


def _build(tac, keys):
    inputs = symbolic_inputs(tac)
    base_output, pooled = pooled_taps(tac, inputs)
    wanted = set(keys)
    outputs = {"base_output": ops.cast(base_output, "float32")}
    for index, tensor in enumerate(pooled):
        outputs[f"pooled_{index}"] = ops.cast(tensor, "float32")
    if wanted - set(outputs):
        outputs.update(head_outputs(tac, base_output, pooled))
        outputs["input_is_finite"] = rejection.finite_per_sample(inputs)
        if "p_value" in wanted:
            # Called as a layer, so that the graph reads its current
            # reference scores, not those it was built with.
            outputs["p_value"] = tac.calibration_record(
                outputs["confidence"], outputs["input_is_finite"]
            )
        if "inner_products" in wanted:
            outputs["inner_products"] = tac.head.code_matching.inner_products(
                outputs["profile"]
            )
    missing = wanted - set(outputs)
    if missing:
        raise ValueError(
            f"Unknown output names {sorted(missing)}; expected some of "
            f"{sorted(outputs)}"
        )
    return keras.Model(
        inputs, {key: outputs[key] for key in keys}, name="tac_graph"
    )


def _no_scope(tac):
    return contextlib.nullcontext()
