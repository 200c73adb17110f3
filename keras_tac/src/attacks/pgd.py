"""L-infinity projected gradient descent (PGD), one code path on every
backend: the loss and the update are `keras.ops`, and only the input
gradient comes from the backend (`gradients`)."""

import math
import weakref

import keras
import numpy as np
from keras import ops

from keras_tac.src import tapping
from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.attacks import gradients
from keras_tac.src.layers.tac_head import score_of
from keras_tac.src.losses.tac_loss import MAX_TEMPERATURE
from keras_tac.src.losses.tac_loss import MIN_TEMPERATURE
from keras_tac.src.validation import model_inputs

# What the attack increases (see `pgd`).
TARGETS = ("base", "tac", "adaptive")
# Weight of the confidence in the adaptive attack's first phase. 0 is
# scale-free (one loss term at a time, and PGD follows only the sign of
# the gradient) and was the strongest on average over epsilon 0.1 / 0.2 /
# 0.3 on the MNIST example (docs/adversarial.md).
DEFAULT_CONFIDENCE_WEIGHT = 0.0


@keras_tac_export("keras_tac.attacks.pgd")
def pgd(
    model,
    x,
    y,
    epsilon=0.3,
    steps=10,
    step_size=None,
    random_start=True,
    target="base",
    clip=(0.0, 1.0),
    batch_size=256,
    seed=0,
    confidence_weight=DEFAULT_CONFIDENCE_WEIGHT,
):
    """Adversarial inputs by L-infinity projected gradient descent (PGD).

    Untargeted PGD as in the TAC reference (foolbox's `LinfPGD`): start
    from `x` plus uniform noise in `[-epsilon, epsilon]` (`random_start`),
    then `steps` times step by `step_size` along the sign of the gradient
    of the attack loss, project onto the L-infinity ball of radius
    `epsilon` around `x` and onto the `clip` range. With `a` the attacked
    input, `y` its label and `T` TAC's temperature, the loss increased is:

    - `target="base"`: the base head's cross-entropy `CE(y, base(a))`;
    - `target="tac"`: the cross-entropy of TAC's own prediction, whose
      logits are the negative code distances: `CE(y, -T * d(a))`;
    - `target="adaptive"`: the attack a detector must be judged against,
      which wants the base head wrong *and* the model confident
      (selective PGD, Bryniarski et al., 2022). While the base head still
      answers `y`, it increases `CE(y, base(a)) + confidence_weight *
      confidence(a)`; once the answer is wrong, it increases the model's
      confidence in that wrong answer (the `"confidence"` output), so that
      the input is accepted. It returns, per input, the iterate with the
      most confident wrong answer (the last iterate when none was wrong).
      For keras-tac's default combined confidence, the sigmoid of its
      novelty gate is replaced by a softplus while attacking: it is flat
      far from the training data, where PGD's random start lands, and
      would hide the gradient (see `combined_confidence`).
      `random_start=False` is the stronger choice here: the random start
      makes the input novel, which the attack must then undo.

    The attack runs in float32 on the current backend (TensorFlow, JAX or
    PyTorch, same code), batch by batch, with the model in inference mode.
    Random starts come from a NumPy generator seeded with `seed`: the same
    seed gives the same noise on every backend.

    Args:
        model: a `keras_tac.TACModel`, or, for `target="base"`, any built
            single-input `keras.Model` with `(batch, num_classes)` logits
            or softmax probabilities.
        x: float array `(n, ...)`, the inputs to attack (finite, within
            `clip`).
        y: their labels: integer classes `(n,)` or class probabilities
            `(n, num_classes)`.
        epsilon: float `>= 0`. Radius of the L-infinity ball. Defaults to
            `0.3`.
        steps: int `>= 1`. Gradient steps. Defaults to `10`.
        step_size: float `> 0` or `None` (`epsilon / steps`, the
            reference's). Defaults to `None`.
        random_start: bool. Start from a random point of the ball.
            Defaults to `True`.
        target: str. `"base"`, `"tac"` or `"adaptive"`. Defaults to
            `"base"`.
        clip: `(low, high)` or `None`. The valid input range. Defaults to
            `(0.0, 1.0)`.
        batch_size: int. Inputs attacked at once. Defaults to `256`.
        seed: int in `[0, 2**31 - 1]`. Seed of the random start. Defaults
            to `0`.
        confidence_weight: float `>= 0`. Weight of the confidence while
            the adaptive attack still has the base answering right.
            Defaults to `0.0`.

    Returns:
        A NumPy array of the shape and dtype of `x`, with
        `abs(x_adv - x) <= epsilon` and `low <= x_adv <= high` holding
        exactly in NumPy.

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> x = np.full((2, 4), 0.5, "float32")
    >>> x_adv = pgd(model, x, [0, 1], epsilon=0.1, steps=2)
    >>> x_adv.shape, bool(np.abs(x_adv - x).max() <= 0.1)
    ((2, 4), True)

    Reference:
        [Madry et al., 2018](https://arxiv.org/abs/1706.06083);
        [Bryniarski et al., 2022](https://arxiv.org/abs/2106.15023);
        [Monteiro et al., 2023](https://arxiv.org/abs/2208.14488)
    """
    settings = check_settings(
        epsilon,
        steps,
        step_size,
        random_start,
        target,
        clip,
        batch_size,
        confidence_weight,
    )
    check_model(model, target)
    seed = validation.check_seed(seed)
    x, probabilities = check_data(model, x, y, settings["clip"])
    return attack_arrays(model, x, probabilities, settings, seed)


def check_settings(
    epsilon,
    steps,
    step_size,
    random_start,
    target,
    clip,
    batch_size,
    confidence_weight,
):
    """Checks the attack's arguments (those of `pgd` but the model and
    the data); returns them as a dict."""
    validation.check_number("epsilon", epsilon, 0.0, math.inf)
    validation.check_positive_int("steps", steps)
    if step_size is None:
        step_size = epsilon / steps
    elif (
        isinstance(step_size, bool)
        or not isinstance(step_size, (int, float, np.floating))
        or not math.isfinite(step_size)
        or step_size <= 0
    ):
        raise ValueError(
            "Invalid `step_size`: expected a finite number > 0, or None "
            f"(epsilon / steps). Received: step_size={step_size!r}"
        )
    if not isinstance(random_start, (bool, np.bool_)):
        raise ValueError(
            "Invalid `random_start`: expected a bool. Received: "
            f"random_start={random_start!r}"
        )
    validation.check_choice("target", target, TARGETS)
    validation.check_positive_int("batch_size", batch_size)
    validation.check_number(
        "confidence_weight", confidence_weight, 0.0, math.inf
    )
    return {
        "epsilon": float(epsilon),
        "steps": int(steps),
        "step_size": float(step_size),
        "random_start": bool(random_start),
        "target": target,
        "clip": _check_clip(clip),
        "batch_size": int(batch_size),
        "confidence_weight": float(confidence_weight),
    }


def is_tac(model):
    from keras_tac.src.tac_model import TACModel

    return isinstance(model, TACModel)


def check_model(model, target):
    """Checks that `model` can be attacked with `target`."""
    if is_tac(model):
        if len(model.input_shapes) != 1:
            raise ValueError(
                "`pgd` attacks models with one input. This TAC model's base "
                f"has {len(model.input_shapes)}: {model.input_shapes}"
            )
        return
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Invalid `model`: expected a keras_tac.TACModel or a keras.Model. "
            f"Received: {type(model).__name__}"
        )
    if target != "base":
        raise ValueError(
            f"`target={target!r}` needs a keras_tac.TACModel; a plain "
            f"keras.Model ({model.name!r}) can only be attacked with "
            "target='base'."
        )
    inputs = getattr(model, "inputs", None)
    outputs = getattr(model, "outputs", None)
    if not inputs or not outputs or len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            "`pgd` attacks a built keras.Model with one input and one "
            "`(batch, num_classes)` output (start it with keras.Input). "
            f"Received model {model.name!r} with inputs "
            f"{_shapes(inputs)} and outputs {_shapes(outputs)}"
        )
    if len(outputs[0].shape) != 2 or (outputs[0].shape[-1] or 0) < 2:
        raise ValueError(
            "`pgd` expected a classifier whose output is (batch, "
            f"num_classes >= 2). Received output shape {outputs[0].shape}"
        )


def _shapes(tensors):
    return [tuple(t.shape) for t in tensors or []]


def _check_clip(clip):
    if clip is None:
        return None
    try:
        low, high = (float(value) for value in clip)
    except (TypeError, ValueError):
        raise ValueError(
            "Invalid `clip`: expected a pair (low, high) of finite numbers "
            f"with low < high, or None. Received: clip={clip!r}"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(
            "Invalid `clip`: expected a pair (low, high) of finite numbers "
            f"with low < high, or None. Received: clip={clip!r}"
        )
    return low, high


def input_shape_and_classes(model):
    """`(input shape, num_classes)` of a TAC model or a plain classifier."""
    if is_tac(model):
        return model.input_shapes[0], model.num_classes
    return tuple(model.inputs[0].shape), int(model.outputs[0].shape[-1])


def check_data(model, x, y, clip, where="pgd"):
    """Checks inputs and labels; returns `(x, probabilities)` as NumPy
    (`where` names the caller in errors)."""
    input_shape, num_classes = input_shape_and_classes(model)
    if isinstance(x, (list, tuple, dict)):
        raise ValueError(
            f"`{where}` expected one input array. Received a "
            f"{type(x).__name__} of {len(x)} arrays"
        )
    x = _as_numpy(x)
    num_samples = model_inputs.check_inputs(x, [input_shape], where)
    if x.dtype.kind != "f":
        raise TypeError(
            f"Invalid input to `{where}`: expected floating-point inputs (the "
            f"attack moves them continuously). Received dtype {x.dtype}"
        )
    if clip is not None:
        low, high = float(x.min()), float(x.max())
        if low < clip[0] or high > clip[1]:
            raise ValueError(
                f"Invalid input to `{where}`: the inputs must lie within the "
                f"`clip` range [{clip[0]}, {clip[1]}]. Received values in "
                f"[{low}, {high}]: pass the inputs' valid range as `clip` "
                "(or clip=None)."
            )
    labels = validation.check_labels(y, num_classes, num_samples, where)
    if labels.ndim == 1:
        probabilities = np.eye(num_classes, dtype="float32")[labels]
    else:
        probabilities = labels.astype("float32")
    return x, probabilities


def _as_numpy(x):
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        x = ops.convert_to_numpy(x)
    return np.asarray(x)


def attack_arrays(model, x, probabilities, settings, seed):
    """The attack on checked NumPy inputs and float32 class probabilities
    (see `pgd`; `settings` from `check_settings`)."""
    gradient = gradients.input_gradient(
        model,
        attack_loss(model, settings["target"], settings["confidence_weight"]),
        key=(settings["target"], settings["confidence_weight"]),
    )
    rng = np.random.default_rng(seed)
    epsilon, clip = settings["epsilon"], settings["clip"]
    size = settings["batch_size"]
    inputs = x.astype("float32")
    attacked = []
    for start in range(0, len(x), size):
        original = inputs[start : start + size]
        if settings["random_start"]:
            noise = rng.uniform(-epsilon, epsilon, size=original.shape)
            current = original + noise.astype("float32")
        else:
            current = original
        attacked.append(
            _attack_batch(
                gradient,
                original,
                current,
                probabilities[start : start + size],
                settings,
            )
        )
    return project(np.concatenate(attacked), x, epsilon, clip)


def _attack_batch(gradient, original, current, probabilities, settings):
    epsilon, clip = settings["epsilon"], settings["clip"]
    original = ops.convert_to_tensor(original, "float32")
    current = ops.convert_to_tensor(current, "float32")
    labels = ops.convert_to_tensor(probabilities, "float32")
    if clip is not None:
        current = ops.clip(current, clip[0], clip[1])
    # The adaptive attack returns its best iterate (a wrong answer with the
    # highest confidence), the others their last, as the reference does.
    keep_best = settings["target"] == "adaptive"
    best, best_progress = current, None
    for step in range(settings["steps"] + keep_best):
        grad, progress = gradient(current, labels)
        if keep_best:
            if best_progress is None:
                best_progress = progress
            better = ops.greater(progress, best_progress)
            best_progress = ops.where(better, progress, best_progress)
            shape = (-1,) + (1,) * (len(current.shape) - 1)
            best = ops.where(ops.reshape(better, shape), current, best)
            if step == settings["steps"]:
                break
        grad = ops.where(ops.isfinite(grad), grad, ops.zeros_like(grad))
        current = current + settings["step_size"] * ops.sign(grad)
        current = original + ops.clip(current - original, -epsilon, epsilon)
        if clip is not None:
            current = ops.clip(current, clip[0], clip[1])
    if keep_best:
        # Never wrong: the last iterate, as for the other targets.
        never = ops.reshape(ops.equal(best_progress, -np.inf), shape)
        current = ops.where(never, current, best)
    return ops.convert_to_numpy(current)


def project(attacked, x, epsilon, clip):
    """`attacked` cast to `x`'s dtype and moved into the ball and the clip
    range so that both hold exactly in NumPy: in the dtype's own arithmetic
    (`abs(x_adv - x) <= epsilon`) and in float64."""
    dtype = x.dtype
    x64 = x.astype(np.float64)
    low, high = x64 - epsilon, x64 + epsilon
    if clip is not None:
        low, high = np.maximum(low, clip[0]), np.minimum(high, clip[1])
    result = np.clip(attacked.astype(np.float64), low, high).astype(dtype)
    # Rounding to the dtype may leave the box by an ulp: step toward `x`,
    # which is inside it.
    for _ in range(8):
        result64 = result.astype(np.float64)
        outside = (
            (np.abs(result - x) > epsilon)
            | (np.abs(result64 - x64) > epsilon)
            | (result64 < low)
            | (result64 > high)
        )
        if not outside.any():
            return result
        result[outside] = np.nextafter(result[outside], x[outside])
    return np.where(outside, x, result)


def attack_loss(model, target, confidence_weight):
    """The loss each attacked input increases, `(x, probabilities) ->
    (values, progress)` in `keras.ops`, two `(batch,)` tensors (see `pgd`).

    `progress` ranks the iterates of the adaptive attack (the confidence
    of a wrong answer, `-inf` for a right one); the other targets keep
    their last iterate and return zeros."""
    model_is_tac = is_tac(model)
    probabilities_out = (
        model.base_outputs_probabilities
        if model_is_tac
        else tapping.ends_in_softmax(model)
    )
    # Weakly: the compiled gradients are cached per model, in a weak-keyed
    # dict that must not keep the model alive.
    model_ref = weakref.ref(model)

    def loss(x, labels):
        model = model_ref()
        if not model_is_tac or target == "base":
            # The base head alone: no need to run TAC's head.
            base = model.base_model if model_is_tac else model
            output = base(x, training=False)
            values = _cross_entropy(labels, output, probabilities_out)
            return values, ops.zeros_like(values)
        outputs = differentiable_outputs(
            model, x, confidence=target == "adaptive"
        )
        if target == "tac":
            temperature = ops.clip(
                ops.cast(model.head.temperature, "float32"),
                MIN_TEMPERATURE,
                MAX_TEMPERATURE,
            )
            logits = -temperature * ops.cast(outputs["distances"], "float32")
            values = _cross_entropy(labels, logits, False)
            return values, ops.zeros_like(values)
        cross_entropy = _cross_entropy(
            labels, outputs["base_output"], probabilities_out
        )
        confidence = outputs["attack_confidence"]
        label = ops.cast(ops.argmax(labels, axis=-1), "int32")
        wrong = ops.not_equal(outputs["prediction"], label)
        values = ops.where(
            wrong, confidence, cross_entropy + confidence_weight * confidence
        )
        progress = ops.where(
            wrong, outputs["confidence"], ops.full_like(confidence, -np.inf)
        )
        return values, progress

    return loss


def _cross_entropy(labels, output, probabilities):
    return keras.losses.categorical_crossentropy(
        labels, ops.cast(output, "float32"), from_logits=not probabilities
    )


def differentiable_outputs(tac, x, confidence=True):
    """`"base_output"`, `"distances"` and (with `confidence`) `"prediction"`
    and `"confidence"` of a TAC model in inference mode, as `TACModel.call`
    computes them but differentiable with respect to `x` (`call` stops the
    gradient at the taps of a frozen base)."""
    tapped = tac.tap_model(x, training=False)
    base_output, taps = tapped[0], list(tapped[1:])
    head = tac.head(taps, training=False)
    outputs = {"base_output": base_output, "distances": head["distances"]}
    if not confidence:
        return outputs
    prediction = ops.cast(ops.argmax(base_output, axis=-1), "int32")
    score = score_of(head["scores"], prediction)
    outputs["prediction"] = prediction
    outputs["confidence"] = outputs["attack_confidence"] = score
    if tac.confidence_layer is not None:
        layer = tac.confidence_layer
        parts = layer(
            base_output,
            head["pooled"],
            score,
            probabilities=tac.base_outputs_probabilities,
        )["parts"]
        outputs["confidence"] = combined_confidence(layer, parts, ops.sigmoid)
        outputs["attack_confidence"] = combined_confidence(
            layer, parts, ops.softplus
        )
    return outputs


def combined_confidence(layer, parts, gate):
    """`CombinedConfidence`'s confidence from its raw `parts`, with
    `gate` applied to the novelty gate's pre-activation `u`.

    `ops.sigmoid` gives the layer's own confidence. It saturates: an
    input far more novel than the training data (a random start of PGD
    is one) sits where the sigmoid is flat, and its gradient says nothing
    about how to look less novel, a gradient masking that would make the
    detector look robust to an adaptive attack that it does not resist.
    The adaptive attack uses `ops.softplus` instead, whose slope tends to
    1 as `u` grows and to 0 once the input passes the gate.
    """
    parts = ops.cast(parts, "float32")
    combined = layer.evidence(parts) - layer.gate_weight * gate(
        layer.gate_activation(parts)
    )
    ready = ops.greater(layer.ready, 0.5)
    return ops.where(ready, combined, parts[:, 0])
