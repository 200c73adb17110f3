"""The parts a `TACModel` composes (head, confidence layer, loss): built
from its flat arguments, or checked when given."""

from keras_tac.src import feature_graph
from keras_tac.src import tapping
from keras_tac.src import validation
from keras_tac.src.layers.combined_confidence import CombinedConfidence
from keras_tac.src.layers.tac_head import TACHead
from keras_tac.src.losses.tac_loss import TACLoss


def head(given, num_classes, score, seed, **arguments):
    """The given `TACHead`, checked, or one built from `arguments`."""
    if given is None:
        return TACHead(
            num_classes,
            score="distance" if score == "combined" else score,
            seed=seed,
            name="tac_head",
            **arguments,
        )
    _check_head(given, num_classes, score)
    return given


def built_taps(model, tap_layers):
    """Resolves `tap_layers` (`None`: the defaults) on `model.base_model`,
    builds `model.head` for them unless built, and returns their paths."""
    if tap_layers is None:
        tap_layers = tapping.default_tap_layers(
            model.base_model, min_width=model.head.block_width
        )
    taps = tapping.resolve_taps(model.base_model, tap_layers)
    paths = [path for path, _ in taps]
    tap_model = feature_graph.tap_model(model, taps)
    if not model.head.built:
        tapping.build_head(model.head, tap_model, paths)
    check_head_taps(model.head, paths)
    return paths


def loss(given, head, seed_generator, **arguments):
    """The given `TACLoss` (or one built from `arguments`), bound to the
    head's codes and temperature."""
    if given is None:
        given = TACLoss(None, **arguments)
    elif not isinstance(given, TACLoss):
        raise ValueError(
            "Invalid `loss`: expected a keras_tac.losses.TACLoss. "
            f"Received: loss={given!r}"
        )
    return given.bound_to(head.codes, head.temperature, seed_generator)


def model_seed(seed, head):
    if seed is None:
        return 0 if head is None else head.seed
    seed = validation.check_seed(seed)
    if head is not None and head.seed != seed:
        raise ValueError(
            f"Invalid `seed`: the given head was built with seed={head.seed}."
            f" Pass seed=None (or the same seed). Received: seed={seed}"
        )
    return seed


def _check_head(head, num_classes, score):
    if not isinstance(head, TACHead) or head.num_classes != num_classes:
        raise ValueError(
            f"Invalid `head`: expected a keras_tac.layers.TACHead for the "
            f"base model's {num_classes} classes. Received: head={head!r}"
        )
    expected = "distance" if score == "combined" else score
    if head.score != expected:
        raise ValueError(
            f"Invalid `head`: score={score!r} reads the head's "
            f"{expected!r} scores. Received a head with score={head.score!r}"
        )


def check_head_taps(head, tap_layers):
    if len(head.profile_layers) != len(tap_layers):
        raise ValueError(
            f"Invalid `head`: it was built for {len(head.profile_layers)} "
            f"taps. Received tap_layers={tap_layers}"
        )


def confidence_layer(confidence, score, num_classes, head):
    if score != "combined":
        if confidence is not None:
            raise ValueError(
                "Invalid `confidence`: a confidence layer needs "
                f"score='combined'. Received: score={score!r}"
            )
        return None
    widths = [layer.input_width for layer in head.profile_layers]
    if confidence is None:
        return CombinedConfidence(
            num_classes, widths, name="combined_confidence"
        )
    if not isinstance(confidence, CombinedConfidence) or (
        confidence.num_classes != num_classes
        or list(confidence.tap_widths) != widths
    ):
        raise ValueError(
            "Invalid `confidence`: expected a keras_tac.layers."
            f"CombinedConfidence({num_classes}, {widths}). "
            f"Received: confidence={confidence!r}"
        )
    return confidence
