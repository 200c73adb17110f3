"""Export of a calibrated `TACModel` for serving: a TensorFlow SavedModel
for TF Serving (TensorFlow and JAX backends) or an ONNX file (PyTorch
backend), both answering prediction, confidence and the accept/reject
decision in one call."""

import re
import warnings

import keras
from keras import ops

from keras_tac.src import keras_internals
from keras_tac.src import optional
from keras_tac.src import rejection
from keras_tac.src.serving import SERVING_OUTPUTS

FORMATS = ("tf_saved_model", "onnx")
SERVE_ENDPOINT = "serve"
THRESHOLD_ENDPOINT = "serve_with_threshold"
THRESHOLD_INPUT = "threshold"
# A sample batch of 2: torch.export specialises a dimension traced at 1.
_ONNX_SAMPLE_BATCH = 2


def serving_outputs(model, inputs, threshold):
    """The serving outputs of a `TACModel`, computed with `keras.ops`.

    The same decision as `TACModel.predict_with_rejection`: an input is
    accepted when all its values are finite, its confidence is finite and
    `confidence >= threshold` (compared in float32).

    Args:
        model: a `TACModel`.
        inputs: a batch in the structure of the base model's input.
        threshold: float or float tensor broadcastable to `(batch,)`, or
            `None` for the model's per-class thresholds.

    Returns:
        A dict of tensors with one row per input: `"prediction"` (int32, the
        base head's class), `"confidence"` (float32), `"accepted"` (bool),
        `"tac_prediction"` (int32), `"tac_confidence"` (float32) and
        `"probabilities"` (float32, `(batch, num_classes)`: the softmax of
        the base head's logits, or the head's probabilities as they are when
        it ends in a softmax) and `"p_value"` (float32, the conformal
        p-value against `calibrate`'s held-out confidences).
    """
    outputs = model(inputs, training=False)
    confidence = ops.cast(outputs["confidence"], "float32")
    if threshold is None:
        threshold = rejection.stored_thresholds(model, outputs["prediction"])
    accepted = rejection.accept(
        confidence, outputs["input_is_finite"], threshold
    )
    p_value = model.calibration_record.p_values(
        confidence, outputs["input_is_finite"]
    )
    base_output = ops.cast(outputs["base_output"], "float32")
    if model.base_outputs_probabilities:
        probabilities = base_output
    else:
        probabilities = ops.softmax(base_output, axis=-1)
    return {
        "prediction": ops.cast(outputs["prediction"], "int32"),
        "confidence": confidence,
        "accepted": accepted,
        "tac_prediction": ops.cast(outputs["tac_prediction"], "int32"),
        "tac_confidence": ops.cast(outputs["tac_confidence"], "float32"),
        "probabilities": probabilities,
        "p_value": p_value,
    }


def export_tac_model(
    model,
    filepath,
    format="tf_saved_model",
    threshold=None,
    verbose=None,
    **kwargs,
):
    """Exports a calibrated `TACModel` for serving (see `TACModel.export`).

    Args:
        model: a `TACModel`.
        filepath: str or `pathlib.Path`. A directory for
            `"tf_saved_model"`, a file (e.g. `"tac.onnx"`) for `"onnx"`.
        format: str. `"tf_saved_model"` (TensorFlow and JAX backends) or
            `"onnx"` (PyTorch backend). Defaults to `"tf_saved_model"`.
        threshold: float or `None`. The rejection threshold baked into the
            artifact; `None` uses the one(s) stored by `calibrate` (one per
            class after `calibrate(..., per_class=True)`). Defaults to
            `None`.
        verbose: bool or `None`. Print the signatures (SavedModel) or the
            exporter's progress (ONNX). `None` means `True`, as in
            `keras.Model.export`. Defaults to `None`.
        **kwargs: backend options: `jax2tf_kwargs` and `is_static` (JAX,
            SavedModel), as in `keras.export.ExportArchive.add_endpoint`;
            `opset_version` (ONNX).
    """
    if format not in FORMATS:
        raise ValueError(
            f"Invalid `format`: expected one of {list(FORMATS)}. "
            f"Received: format={format!r}"
        )
    threshold = _resolve_threshold(model, threshold)
    verbose = True if verbose is None else bool(verbose)
    backend = keras.backend.backend()
    if format == "tf_saved_model":
        if backend not in ("tensorflow", "jax", "torch"):
            raise ValueError(
                "format='tf_saved_model' needs the TensorFlow or JAX "
                f"backend. Received backend {backend!r}"
            )
        if backend == "torch":
            raise ValueError(
                "format='tf_saved_model' is not available on the "
                f"{backend!r} backend: Keras writes a SavedModel from "
                "PyTorch only through torch_xla, which keras-tac does not "
                "support. Use `format='onnx'` (same named outputs, dynamic "
                "batch; serve it with ONNX Runtime), or save the model "
                "(`tac.save('tac.keras')`), reload it under "
                "KERAS_BACKEND=tensorflow or jax and export the SavedModel "
                "there."
            )
        _export_saved_model(model, filepath, threshold, verbose, **kwargs)
        return
    if backend != "torch":
        raise ValueError(
            "format='onnx' is only available on the PyTorch backend. On the "
            f"{backend!r} backend use format='tf_saved_model' (TF Serving). "
            "Keras's TensorFlow ONNX route (tf2onnx) cannot convert the "
            "bit operations of Keras's `argmax`, and its JAX route needs "
            "`jax2onnx`, which keras-tac does not depend on."
        )
    _export_onnx(model, filepath, threshold, verbose, **kwargs)


def input_specs(model):
    """`keras.InputSpec`s of the base model's inputs, batch size `None`,
    named as `serving_input_names` says (flattened, in input order)."""
    tensors = keras.tree.flatten(_input_structure(model))
    return [
        keras.InputSpec(
            shape=(None, *tensor.shape[1:]), dtype=tensor.dtype, name=name
        )
        for tensor, name in zip(tensors, serving_input_names(model))
    ]


def _input_structure(model):
    """The base model's input tensors, in their structure."""
    base = model.base_model
    try:
        return base.input
    except AttributeError:
        # A Sequential model has no `input` until it is called; its one
        # input is in `inputs`.
        (tensor,) = base.inputs
        return tensor


# The names Keras gives an unnamed `keras.Input`: a per-session counter.
_AUTO_INPUT_NAME = re.compile(r"input_layer(_\d+)?")


def serving_input_names(model):
    """The names of the exported artifact's inputs.

    Each input is named after the base model's input layer (`keras.Input(
    ..., name="image")` gives `"image"`). Keras names an unnamed input
    `input_layer`, `input_layer_1`, ... by how many were built before in the
    session; those become `"input"` (one input) or `"input_0"`, `"input_1"`,
    ... (by position), so the same model exports the same names on every
    backend and in every session.

    Args:
        model: a `TACModel`.

    Returns:
        A list of str, one per flattened input of the base model.

    Raises:
        ValueError: if an input is named `"threshold"` (the threshold input
            of the `serve_with_threshold` signature) or two inputs end up
            with the same name.
    """
    tensors = keras.tree.flatten(_input_structure(model))
    names = []
    for index, tensor in enumerate(tensors):
        history = getattr(tensor, "_keras_history", None)
        name = history.operation.name if history else tensor.name
        if _AUTO_INPUT_NAME.fullmatch(name):
            name = "input" if len(tensors) == 1 else f"input_{index}"
        if name == THRESHOLD_INPUT:
            raise ValueError(
                f"Cannot export: the base model has an input named "
                f"{THRESHOLD_INPUT!r}, the name of the threshold input of "
                f"the {THRESHOLD_ENDPOINT!r} signature. Rename that input."
            )
        names.append(name)
    if len(set(names)) != len(names):
        raise ValueError(
            "Cannot export: the artifact's inputs are named after the base "
            "model's input layers, and these names repeat: "
            f"{names}. Name the inputs (`keras.Input(..., name=...)`)."
        )
    return names


def _resolve_threshold(model, threshold):
    """The threshold to bake in: a float, or `None` for the model's
    per-class thresholds (read from its weights by the artifact)."""
    if threshold is None:
        if model.class_thresholds is not None:
            return None
        threshold = model.threshold
        if threshold is None:
            raise ValueError(
                "Cannot export an uncalibrated TACModel: the artifact "
                "needs a rejection threshold. Call "
                "`tac.calibrate(x_val, y_val)` first, or pass `threshold=` "
                "to `export`."
            )
    return rejection.check_threshold(threshold)


def _pack(model, flat_inputs):
    return keras.tree.pack_sequence_as(_input_structure(model), flat_inputs)


def _export_saved_model(model, filepath, threshold, verbose, **kwargs):
    optional.require("tensorflow", "export", "Exporting a SavedModel")
    specs = input_specs(model)
    threshold_spec = keras.InputSpec(
        shape=(None,), dtype="float32", name=THRESHOLD_INPUT
    )
    structure = specs[0] if len(specs) == 1 else specs

    def serve(inputs):
        return serving_outputs(
            model, _pack(model, keras.tree.flatten(inputs)), threshold
        )

    def serve_with_threshold(inputs, threshold):
        return serving_outputs(
            model, _pack(model, keras.tree.flatten(inputs)), threshold
        )

    archive = keras.export.ExportArchive()
    archive.track(model)
    # The first endpoint is also written as "serving_default".
    archive.add_endpoint(
        SERVE_ENDPOINT, serve, input_signature=[structure], **kwargs
    )
    archive.add_endpoint(
        THRESHOLD_ENDPOINT,
        serve_with_threshold,
        input_signature=[structure, threshold_spec],
        **kwargs,
    )
    archive.write_out(filepath, verbose=verbose)


def _export_onnx(model, filepath, threshold, verbose, opset_version=None):
    for module in ("onnx", "onnxscript"):
        optional.require(module, "export", "Exporting to ONNX")
    import torch

    specs = input_specs(model)

    class ServingModule(torch.nn.Module):
        def __init__(self, tac_model):
            super().__init__()
            self.tac_model = tac_model

        def forward(self, *flat_inputs):
            outputs = serving_outputs(
                self.tac_model, _pack(self.tac_model, flat_inputs), threshold
            )
            return tuple(outputs[name] for name in SERVING_OUTPUTS)

    module = ServingModule(model).eval()
    samples = tuple(
        torch.zeros(
            (_ONNX_SAMPLE_BATCH, *spec.shape[1:]),
            dtype=getattr(torch, spec.dtype),
        )
        for spec in specs
    )
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        # Every input shares the one batch axis, which the exporter reports.
        warnings.filterwarnings("ignore", message=".*axis name: batch.*")
        program = torch.onnx.export(
            module,
            samples,
            input_names=[spec.name for spec in specs],
            output_names=list(SERVING_OUTPUTS),
            dynamic_shapes=(tuple({0: batch} for _ in specs),),
            opset_version=opset_version,
            dynamo=True,
            verbose=verbose,
        )
    program.save(str(filepath))
    _drop_no_op_squeezes(str(filepath))
    if verbose:
        keras_internals.print_msg(f"Saved artifact at '{filepath}'.")


def _drop_no_op_squeezes(path):
    """Removes the axes of ONNX `Squeeze` nodes that are not of size 1.

    `torch.squeeze(x, dim)` does nothing when that dimension is not 1 (the
    Keras torch backend's `ops.take` relies on it), but the exporter writes
    an ONNX `Squeeze`, which rejects such an axis when the model loads.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(path)
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {}
    graph = inferred.graph
    for value in [*graph.value_info, *graph.input, *graph.output]:
        shapes[value.name] = [
            dim.dim_value if dim.HasField("dim_value") else None
            for dim in value.type.tensor_type.shape.dim
        ]
    constants = {
        tensor.name: numpy_helper.to_array(tensor)
        for tensor in proto.graph.initializer
    }
    for node in proto.graph.node:
        if (
            node.op_type == "Constant"
            and node.attribute
            and node.attribute[0].type == onnx.AttributeProto.TENSOR
        ):
            constants[node.output[0]] = numpy_helper.to_array(
                node.attribute[0].t
            )
    changed = False
    for node in proto.graph.node:
        if (
            node.op_type != "Squeeze"
            or len(node.input) != 2
            or node.input[1] not in constants
            or not shapes.get(node.input[0])
        ):
            continue
        shape = shapes[node.input[0]]
        axes = [
            int(axis) % len(shape)
            for axis in np.atleast_1d(constants[node.input[1]])
        ]
        kept = [axis for axis in axes if shape[axis] in (None, 1)]
        if kept == axes:
            continue
        changed = True
        if kept:
            name = f"{node.name}_kept_axes"
            proto.graph.initializer.append(
                numpy_helper.from_array(np.array(kept, dtype="int64"), name)
            )
            node.input[1] = name
        else:
            node.op_type = "Identity"
            del node.input[1]
    if changed:
        onnx.checker.check_model(proto)
        onnx.save(proto, path)
