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
from keras_tac.src import validation
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
        _check_channels_last(*matches[0])
        resolved.append(matches[0])
    return resolved


def _data_format(layer, max_depth=64):
    """The `data_format` of `layer`, else of the nearest layer before it
    that has one (an activation or a normalization after a convolution
    keeps its layout), or `None` when none says."""
    for _ in range(max_depth):
        data_format = getattr(layer, "data_format", None)
        if data_format is not None:
            return data_format
        inbound = keras_internals.inbound_layers(layer)
        if not inbound:
            return None
        layer = inbound[0]
    return None


def _check_channels_last(path, layer):
    """Warns about a channels-first tap of rank 3 or more: `TapPooling`
    averages every axis but the last, which then keeps a spatial axis and
    averages the channels away. A warning, not an error, so that a model
    saved with such a tap still loads."""
    shape = _output_shape(layer)
    if shape is None or len(shape) <= 2:
        return
    data_format = _data_format(layer)
    if data_format == "channels_first":
        what = (
            "is channels-first (`data_format='channels_first'`, its own or "
            "that of the layer it follows)"
        )
    elif data_format is None and (
        keras.config.image_data_format() == "channels_first"
    ):
        what = (
            "does not say where its channels are, and Keras's image data "
            "format is 'channels_first'"
        )
    else:
        return
    warnings.warn(
        f"TACModel: tap {path!r} (output shape {shape}) {what}. TAC pools "
        "taps over every axis but the last (channels last), so a "
        "channels-first tap keeps a spatial axis and mixes the channels. "
        "Tap channels-last layers, or flattened or globally pooled ones.",
        # Through resolve_taps and built_taps, to TACModel's caller.
        stacklevel=5,
    )


@keras_tac_export("keras_tac.tapping.default_tap_layers")
def default_tap_layers(model, max_taps=4, min_width=2):
    """The automatic tap choice: the outputs of the network's stages.

    1. Candidates are the layers (nested ones included, in order) that
       compute features: not the classifier head (the last layer with
       weights and the parameter-free layers after it, e.g. a softmax), not
       layers that only reshape, pool, crop, pad or drop (`Flatten`,
       `GlobalAveragePooling2D`, `MaxPooling2D`, `Dropout`, ...: a tap on
       `GlobalAveragePooling2D(conv)` would pool to the same values as a tap
       on `conv`), and only outputs with a channel axis at least
       `min_width` wide.
    2. Consecutive candidates with the same rank and spatial shape form a
       resolution stage, whose last candidate is its output: for a
       residual network the activation after the stage's last residual
       add (`convN_blockM_out` in `keras.applications.ResNet50`); for the
       vector part (an MLP, a CNN's dense head) every hidden layer with
       weights starts a new stage, so each hidden layer's output is one.
    3. The last `max_taps` stage outputs are kept, like the reference's 4
       conv blocks (a stem is the first to go). With fewer stages than
       `max_taps`, the residual block outputs (`Add` layers) inside the
       stages fill the free places, evenly spaced through the depth: for a
       Vision Transformer, whose encoder blocks share one shape, those are
       the blocks' token outputs.

    Args:
        model: a built Functional or Sequential `keras.Model`.
        max_taps: int. Defaults to `4`.
        min_width: int. Narrowest channel axis to tap (a TAC model passes
            its code block width). Defaults to `2`.

    Returns:
        A list of layer paths, in network order.

    Example:

    >>> inputs = keras.Input((8, 8, 1))
    >>> h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    >>> h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    >>> h = keras.layers.Dense(8, activation="relu", name="hidden")(h)
    >>> model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))
    >>> default_tap_layers(model)
    ['conv', 'hidden']
    """
    validation.check_positive_int("max_taps", max_taps)
    candidates = _candidates(model, min_width)
    stages = []
    previous_key = None
    for path, layer, key in candidates:
        new_vector_layer = len(key) == 1 and _has_kernel(layer)
        if key != previous_key or new_vector_layer:
            stages.append([])
        stages[-1].append((path, layer))
        previous_key = key
    if not stages:
        raise ValueError(
            f"Could not choose tap layers automatically for model "
            f"{model.name!r}: no intermediate layer computes features with a "
            f"channel axis of at least {min_width}. Pass `tap_layers`."
        )
    chosen = [stage[-1][0] for stage in stages][-max_taps:]
    if len(chosen) < max_taps:
        chosen = _with_block_outputs(stages, chosen, max_taps)
    return chosen


def _candidates(model, min_width):
    """`(path, layer, key)` of the layers that may be tapped, in order; `key`
    is the output's rank and spatial shape."""
    pairs = [
        (path, layer)
        for path, layer in layer_paths(model)
        if not isinstance(layer, keras.Model)
    ]
    # The head: from the end back to the last layer with weights.
    head = set()
    for _, layer in reversed(pairs):
        head.add(id(layer))
        if layer.weights:
            break
    candidates = []
    nonlinear = False
    for path, layer in pairs:
        if id(layer) in head or isinstance(layer, _STRUCTURAL_LAYERS):
            continue
        # Before the first nonlinearity (e.g. a ViT's patch embedding) a
        # layer is a linear map of the input, not a learned feature.
        nonlinear = nonlinear or not _is_linear(layer)
        if not nonlinear:
            continue
        shape = _output_shape(layer)
        if shape is None or len(shape) < 2 or not shape[-1]:
            continue
        if shape[-1] < min_width:
            continue
        if len(shape) > 2 and _data_format(layer) == "channels_first":
            # Its last axis is spatial: TAC's pooling cannot read it.
            continue
        candidates.append((path, layer, (len(shape), *shape[1:-1])))
    return candidates


def _with_block_outputs(stages, chosen, max_taps):
    """`chosen` plus residual block outputs, evenly spaced, in order."""
    order = [path for stage in stages for path, _ in stage]
    adds = [
        (path, layer)
        for stage in stages
        for path, layer in stage
        if isinstance(layer, keras.layers.Add)
    ]
    if not adds:
        return chosen
    # Whole blocks only: the adds fed by the same kinds of layers as the
    # last one (a Transformer block ends in its MLP's add, not in the add
    # after its attention). A block's output is its add, or the activation
    # right after it (a ResNet's `_out`); a block whose output is chosen
    # already is not a candidate (its add would pool to nearly the same).
    kinds = _inbound_kinds(adds[-1][1])
    outputs = _block_outputs(stages)
    blocks = [
        outputs.get(path, path)
        for path, layer in adds
        if _inbound_kinds(layer) == kinds
        and outputs.get(path, path) not in chosen
    ]
    free = min(max_taps - len(chosen), len(blocks))
    if free <= 0:
        return chosen
    # Evenly spaced through the blocks, ending a spacing before the last
    # (the stage output that follows it is chosen already).
    picks = [
        blocks[max(len(blocks) * (i + 1) // (free + 1) - 1, 0)]
        for i in range(free)
    ]
    return sorted(set(chosen) | set(picks), key=order.index)


def _block_outputs(stages):
    """`{add path: path of the activation applied to it}` for the `Add`
    layers whose next candidate is an activation of the add alone."""
    layers = [pair for stage in stages for pair in stage]
    outputs = {}
    for (path, layer), (next_path, next_layer) in zip(layers, layers[1:]):
        if not isinstance(layer, keras.layers.Add):
            continue
        if isinstance(next_layer, _ACTIVATION_LAYERS) and (
            keras_internals.inbound_layers(next_layer) == [layer]
        ):
            outputs[path] = next_path
    return outputs


def _inbound_kinds(layer):
    return sorted(
        type(inbound).__name__
        for inbound in keras_internals.inbound_layers(layer)
    )


def _has_kernel(layer):
    return any(weight.name == "kernel" for weight in layer.weights)


def _is_linear(layer):
    """Whether `layer` is an affine map of its inputs at inference (a dense
    or convolution layer without activation, an add, a batch norm...)."""
    if isinstance(layer, _AFFINE_LAYERS):
        return True
    if not hasattr(layer, "activation") or not _has_kernel(layer):
        return False
    return layer.activation in (None, keras.activations.linear)


def _structural_layers():
    """Keras layers that only reshape, pool, crop, pad, drop or regularise:
    they compute no features of their own."""
    names = (
        "Flatten Reshape Permute RepeatVector Identity Masking "
        "Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D "
        "GaussianDropout GaussianNoise AlphaDropout ActivityRegularization "
        "MaxPooling1D MaxPooling2D MaxPooling3D AveragePooling1D "
        "AveragePooling2D AveragePooling3D GlobalAveragePooling1D "
        "GlobalAveragePooling2D GlobalAveragePooling3D GlobalMaxPooling1D "
        "GlobalMaxPooling2D GlobalMaxPooling3D Cropping1D Cropping2D "
        "Cropping3D ZeroPadding1D ZeroPadding2D ZeroPadding3D"
    ).split()
    return tuple(
        getattr(keras.layers, name)
        for name in names
        if hasattr(keras.layers, name)
    )


_STRUCTURAL_LAYERS = _structural_layers()
_AFFINE_LAYERS = tuple(
    getattr(keras.layers, name)
    for name in (
        "Add Subtract Concatenate Average BatchNormalization Rescaling "
        "Normalization Embedding"
    ).split()
    if hasattr(keras.layers, name)
)
# Layers that only apply a nonlinearity to their one input: after an `Add`,
# the output of a residual block.
_ACTIVATION_LAYERS = tuple(
    getattr(keras.layers, name)
    for name in "Activation ReLU LeakyReLU ELU PReLU".split()
    if hasattr(keras.layers, name)
)


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

    A final layer whose output cannot be read from the graph (a `Lambda`,
    or a layer defined outside Keras without an `activation`) is taken for
    logits, with a warning naming `base_output=`."""
    layer = keras_internals.output_layer(model)
    while isinstance(layer, keras.Model):
        layer = keras_internals.output_layer(layer)
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    custom = not type(layer).__module__.startswith("keras.")
    if isinstance(layer, keras.layers.Lambda) or (
        custom and activation is None
    ):
        kind = (
            "a Lambda layer"
            if isinstance(layer, keras.layers.Lambda)
            else f"a {type(layer).__name__} layer (not a Keras layer)"
        )
        warnings.warn(
            f"TACModel: the base model ends in {kind} ({layer.name!r}), so "
            "whether it outputs logits or probabilities cannot be read "
            "from the graph; taken as logits. Pass "
            "`base_output='probabilities'` if it ends in a softmax, or "
            "`base_output='logits'` to silence this warning.",
            stacklevel=3,
        )
        return False
    return activation is keras.activations.softmax or activation == "softmax"
