"""Find layers of a base model and expose their outputs in one forward pass.

`keras.Model(base.inputs, layer.output)` fails with "Graph disconnected"
when the layer sits inside a nested sub-model (a backbone used as a layer).
`tap_model` instead re-traces the base graph, reusing every layer (so all
weights are shared), and swaps each nested sub-model that holds a tap for a
copy that also returns the tapped tensor.
"""

import warnings

import keras

from keras_tac.src import keras_internals
from keras_tac.src.api_export import keras_tac_export


@keras_tac_export("keras_tac.tapping.layer_paths")
def layer_paths(model, prefix=""):
    """All layers of `model`, nested ones included, as `(path, layer)` pairs.

    A path joins the names of the enclosing sub-models with `/`, e.g.
    `"backbone/conv_2"`. Input layers are left out.
    """
    pairs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        path = f"{prefix}{layer.name}"
        pairs.append((path, layer))
        if isinstance(layer, keras.Model) and _is_graph_model(layer):
            pairs.extend(layer_paths(layer, prefix=f"{path}/"))
    return pairs


@keras_tac_export("keras_tac.tapping.resolve_taps")
def resolve_taps(model, tap_layers):
    """Turns names, paths or layer objects into a list of `(path, layer)`.

    A bare name may match a layer at any depth if it is unique; a path
    (`"backbone/conv_2"`) names a nested layer exactly.
    """
    pairs = layer_paths(model)
    if not tap_layers:
        raise ValueError(
            "Invalid `tap_layers`: expected a non-empty list of layer names or "
            f"layers. Received: tap_layers={tap_layers!r}"
        )
    if isinstance(tap_layers, (str, keras.layers.Layer)):
        tap_layers = [tap_layers]
    resolved = []
    for tap in tap_layers:
        if isinstance(tap, keras.layers.Layer):
            matches = [(path, layer) for path, layer in pairs if layer is tap]
            description = f"layer {tap.name!r}"
        elif isinstance(tap, str):
            matches = [
                (path, layer)
                for path, layer in pairs
                if path == tap or path.rsplit("/", 1)[-1] == tap
            ]
            exact = [(path, layer) for path, layer in matches if path == tap]
            matches = exact or matches
            description = f"name {tap!r}"
        else:
            raise TypeError(
                "Invalid entry in `tap_layers`: expected a layer name (str) or "
                f"a keras Layer. Received: {tap!r} of type {type(tap).__name__}"
            )
        if not matches:
            available = ", ".join(repr(path) for path, _ in pairs)
            raise ValueError(
                f"Unknown tap layer: no layer of model {model.name!r} matches "
                f"the {description}. Available layers: {available}"
            )
        if len(matches) > 1:
            raise ValueError(
                f"Ambiguous tap layer: the {description} matches "
                f"{[path for path, _ in matches]}. Give the full path."
            )
        if matches[0][1] is keras_internals.output_layer(model):
            raise ValueError(
                f"Invalid tap layer {matches[0][0]!r}: it is the base model's "
                "output layer. Tap intermediate layers."
            )
        if any(matches[0][1] is layer for _, layer in resolved):
            raise ValueError(
                f"Duplicate tap layer {matches[0][0]!r}: each layer may be "
                f"tapped once. Received: tap_layers={tap_layers!r}"
            )
        resolved.append(matches[0])
    return resolved


@keras_tac_export("keras_tac.tapping.default_tap_layers")
def default_tap_layers(model, max_taps=4):
    """The automatic tap choice: the last layer of each resolution stage.

    Layers (nested ones included, in order) are grouped into runs whose
    outputs have the same rank and spatial shape; the last layer of each run
    ends a stage (for a conv net, the block before each downsampling; for the
    dense part, the penultimate layer). The output layer and layers with
    scalar-per-sample outputs are skipped. The last `max_taps` stage ends
    are kept: at most 4 taps, like the reference's 4 conv blocks.
    """
    output_layer = keras_internals.output_layer(model)
    stage_ends = []
    previous_key = None
    for path, layer in layer_paths(model):
        if layer is output_layer or isinstance(layer, keras.Model):
            continue
        shape = _output_shape(layer)
        if shape is None or len(shape) < 2 or not shape[-1] or shape[-1] < 2:
            continue
        key = (len(shape), tuple(shape[1:-1]))
        if key == previous_key:
            stage_ends[-1] = path
        else:
            stage_ends.append(path)
        previous_key = key
    if not stage_ends:
        raise ValueError(
            f"Could not choose tap layers automatically for model "
            f"{model.name!r}: no intermediate layer has a channel axis. "
            "Pass `tap_layers` explicitly."
        )
    return stage_ends[-max_taps:]


@keras_tac_export("keras_tac.tapping.tap_model")
def tap_model(model, taps):
    """A model `inputs -> [*model outputs, *tapped outputs]` sharing weights.

    Args:
        model: a built Functional or Sequential `keras.Model`.
        taps: list of `(path, layer)` from `resolve_taps`.

    Returns:
        A `keras.Model` whose outputs are the flat list of the base model's
        outputs followed by one tensor per tap, in the order of `taps`.
    """
    inputs, outputs, captured = _trace(model, [path for path, _ in taps])
    return keras.Model(
        inputs, list(outputs) + [captured[path] for path, _ in taps]
    )


def _trace(model, paths):
    """Re-runs the graph of `model` on new inputs, capturing tapped tensors.

    Returns `(inputs, flat_outputs, {path: tensor})`, the inputs in the
    structure of `model.input`.
    """
    local = {}
    nested = {}
    for path in paths:
        head, _, rest = path.partition("/")
        if rest:
            nested.setdefault(head, []).append(rest)
        else:
            local[head] = path
    captured = {}

    def call_layer(layer, *args, **kwargs):
        if layer.name in nested:
            inner = nested[layer.name]
            sub_inputs, sub_outputs, sub_captured = _trace(layer, inner)
            sub_model = keras.Model(
                sub_inputs, list(sub_outputs) + [sub_captured[p] for p in inner]
            )
            results = sub_model(*args, **kwargs)
            count = len(sub_outputs)
            for offset, inner_path in enumerate(inner):
                captured[f"{layer.name}/{inner_path}"] = results[count + offset]
            structure = layer.output
            return keras.tree.pack_sequence_as(structure, results[:count])
        output = layer(*args, **kwargs)
        if layer.name in local:
            captured[local[layer.name]] = output
        return output

    if isinstance(model, keras.Sequential):
        source = _model_inputs(model)[0]
        inputs = keras.Input(batch_shape=source.shape, dtype=source.dtype)
        output = inputs
        for layer in model.layers:
            output = call_layer(layer, output)
        return inputs, [output], captured
    cloned = keras.models.clone_model(
        model, clone_function=lambda layer: layer, call_function=call_layer
    )
    return cloned.input, keras.tree.flatten(cloned.outputs), captured


def _model_inputs(model):
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError(
            f"The base model {model.name!r} is not built: it has no symbolic "
            "inputs. Give it an `Input` or call `model.build(input_shape)` "
            "before wrapping it."
        )
    return inputs


def _is_graph_model(model):
    return isinstance(model, keras.Sequential) or (
        keras_internals.is_functional(model)
    )


def _output_shape(layer):
    try:
        output = layer.output
    except (AttributeError, ValueError):
        return None
    if isinstance(output, (list, tuple, dict)):
        return None
    return tuple(output.shape)


def check_base_model(base_model, train_base=False):
    """Checks that `base_model` is a built Functional or Sequential classifier
    with one `(batch, num_classes >= 2)` output, trainable if it must train."""
    if not isinstance(base_model, keras.Model):
        raise TypeError(
            "Invalid `base_model`: expected a built keras.Model (Functional "
            f"or Sequential). Received: {type(base_model).__name__}"
        )
    if not (
        isinstance(base_model, keras.Sequential)
        or keras_internals.is_functional(base_model)
    ):
        raise TypeError(
            "Invalid `base_model`: a subclassed model "
            f"({type(base_model).__name__}) has no graph of layers to tap, "
            "built or not. Build it with the functional API "
            "(`inputs = keras.Input(shape)`, layers called on tensors, "
            "`keras.Model(inputs, outputs)`) or as a `keras.Sequential`."
        )
    if not getattr(base_model, "inputs", None):
        raise ValueError(
            f"Invalid `base_model`: model {base_model.name!r} is not built (it "
            "has no symbolic inputs). Start it with `keras.Input(shape)` or "
            "call `base_model.build(input_shape)` first."
        )
    outputs = base_model.outputs
    if (
        len(outputs) != 1
        or len(outputs[0].shape) != 2
        or outputs[0].shape[-1] < 2
    ):
        raise ValueError(
            "Invalid `base_model`: expected a classifier with one output of "
            "shape (batch, num_classes >= 2). Received output shapes "
            f"{[tuple(o.shape) for o in outputs]}"
        )
    if train_base and not base_model.trainable:
        raise ValueError(
            "`train_base=True` but `base_model.trainable` is False. Set "
            "`base_model.trainable = True` or use `train_base=False`."
        )


def build_head(head, tap_model, tap_paths):
    """Builds a `TACHead` for the tapped tensors of `tap_model`, naming the
    tapped layer in the error when one is too narrow for the codes."""
    shapes = [tuple(tensor.shape) for tensor in tap_model.outputs[1:]]
    for path, shape in zip(tap_paths, shapes):
        # Checked here too, to name the tapped layer.
        if shape[-1] is None or shape[-1] < head.block_width:
            raise ValueError(
                f"Invalid `num_slices`: tap {path!r} has width {shape[-1]} "
                f"(output shape {shape}) but each tap needs "
                f"{head.block_width} slices (code bits) for "
                f"{head.num_classes} classes with num_slices="
                f"{head.num_slices}. Tap a wider layer or lower `num_slices`."
            )
    head.build(shapes)


def ends_in_softmax(model):
    """Whether the base's output is a softmax, following nested models.

    A `Lambda` at the end cannot be read: it is taken for logits, with a
    warning naming `base_output=`."""
    layer = keras_internals.output_layer(model)
    while isinstance(layer, keras.Model):
        layer = keras_internals.output_layer(layer)
    if isinstance(layer, keras.layers.Softmax):
        return True
    if isinstance(layer, keras.layers.Lambda):
        warnings.warn(
            f"TACModel: the base model ends in a Lambda layer "
            f"({layer.name!r}), so whether it outputs logits or "
            "probabilities cannot be read from the graph; taken as logits. "
            "Pass `base_output='probabilities'` if it ends in a softmax, or "
            "`base_output='logits'` to silence this warning.",
            stacklevel=3,
        )
        return False
    activation = getattr(layer, "activation", None)
    return activation is keras.activations.softmax or activation == "softmax"
