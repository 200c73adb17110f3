"""Batched feature extraction: one forward pass of the tapped base model per
batch gives everything every confidence score needs."""

import weakref

import keras
import numpy as np
from keras import ops

from keras_tac.src import jax_backend
from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.layers.tap_pooling import TapPooling
from keras_tac.src.validation import model_inputs


@keras_tac_export("keras_tac.scores.FeatureBatch")
class FeatureBatch:
    """The features of one batch of inputs, as NumPy arrays.

    Attributes:
        base_output: `(batch, num_classes)` float32, the base head's output
            (logits, or probabilities when `probabilities` is True).
        probabilities: bool, whether `base_output` holds probabilities.
        prediction: `(batch,)` int, the base head's class.
        profile: `(batch, M)` float32, TAC's activation profile.
        codes: `(num_classes, M)` float32 of +1/-1, TAC's class codes.
        default_score: str, the TAC model's configured `score`.
        pooled: list of `(batch, channels)` float32, each tapped activation
            averaged over its spatial axes, in the order of
            `tac.tap_layers`; the last tap is the head's input with the
            default taps.
    """

    def __init__(
        self, base_output, probabilities, profile, codes, default_score, pooled
    ):
        self.base_output = base_output
        self.probabilities = probabilities
        self.prediction = np.argmax(base_output, axis=-1)
        self.profile = profile
        self.codes = codes
        self.default_score = default_score
        self.pooled = pooled


@keras_tac_export("keras_tac.scores.FeatureExtractor")
class FeatureExtractor:
    """Runs `tac`'s tapped base model once per batch and returns the base
    output, TAC's profile and the pooled tapped activations.

    Wraps `tac._tap_model` (which shares the base model's weights) in a
    functional model that also pools each tap and computes the profile, so
    only small per-input vectors leave the model: activations are never
    held for more than one batch.

    Args:
        tac: a `keras_tac.TACModel`.

    Example:

    >>> extractor = FeatureExtractor(tac)  # doctest: +SKIP
    >>> for batch in extractor.batches(x, batch_size=256):  # doctest: +SKIP
    ...     batch.pooled[-1].shape
    """

    def __init__(self, tac):
        source = tac._tap_model
        inputs = keras.tree.map_structure(
            lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype),
            source.input,
        )
        tapped = source(inputs, training=False)
        base_output, taps = tapped[0], tapped[1:]
        profile = ops.concatenate(
            [
                ops.cast(layer(tap, training=False), "float32")
                for layer, tap in zip(tac.profile_layers, taps)
            ],
            axis=-1,
        )
        pooled = [ops.cast(TapPooling()(tap), "float32") for tap in taps]
        self.model = keras.Model(
            inputs, [ops.cast(base_output, "float32"), profile, *pooled]
        )
        self.probabilities = bool(tac.base_outputs_probabilities)
        self.codes = tac.codes.astype(np.float32)
        self.default_score = tac.score
        self.input_shapes = tac.input_shapes
        self.num_taps = len(taps)

    @classmethod
    def of(cls, tac):
        """The extractor of `tac`, built once per model and reused, so that
        its compiled function is traced once (weights are read at each
        call, so later training is seen)."""
        extractor = _EXTRACTORS.get(tac)
        if extractor is None:
            extractor = cls(tac)
            _EXTRACTORS[tac] = extractor
        # Settings that may change after construction.
        extractor.codes = tac.codes.astype(np.float32)
        extractor.default_score = tac.score
        return extractor

    def batches(self, x, batch_size=256, verbose="auto", where="scores"):
        """Yields one `FeatureBatch` per batch of `x`, in order.

        Args:
            x: NumPy array (or list / dict of arrays for a multi-input
                model) of inputs.
            batch_size: int. Defaults to `256`.
            verbose: `"auto"`, `0` or `1`: show a progress bar
                (`keras.utils.Progbar`) unless `0`. Defaults to `"auto"`.
            where: str. Name of the caller, for error messages.

        Yields:
            `FeatureBatch` objects.
        """
        num_inputs = self.check_inputs(x, where)
        validation.check_positive_int("batch_size", batch_size)
        batch_size = min(int(batch_size), num_inputs)
        progbar = None
        if verbose not in (0, False):
            progbar = keras.utils.Progbar(num_inputs, unit_name="input")
        with jax_backend.inference_compilation():
            self.model.make_predict_function()
        for start in range(0, num_inputs, batch_size):
            stop = min(start + batch_size, num_inputs)
            batch = keras.tree.map_structure(
                lambda a, start=start, stop=stop: model_inputs.pad_batch(
                    np.asarray(a[start:stop]), batch_size
                ),
                x,
            )
            outputs = self.model.predict_on_batch(batch)
            outputs = [
                np.asarray(ops.convert_to_numpy(o))[: stop - start]
                for o in outputs
            ]
            yield FeatureBatch(
                base_output=outputs[0],
                probabilities=self.probabilities,
                profile=outputs[1],
                codes=self.codes,
                default_score=self.default_score,
                pooled=outputs[2:],
            )
            if progbar is not None:
                progbar.update(stop)

    def check_inputs(self, x, where):
        """Validates `x` against the base model; returns the input count."""
        return model_inputs.check_inputs(x, self.input_shapes, where)


# Values must not reference their key (the TAC model), or it never dies.
_EXTRACTORS = weakref.WeakKeyDictionary()
