"""Per-input features of a TAC model, one forward pass per batch.

`FeatureExtractor` runs the TAC model's own forward pass as a graph model
(`keras_tac.src.feature_graph.graph_model`, sharing the base's weights)
with only small per-input vectors as outputs: the base head's output, each
tap's pooled activation, the profile, the code distances and inner
products. The feature cache of `TACModel.fit` and every confidence
scorer read these, through the same padded batch loop.
"""

import keras
import numpy as np
from keras import ops

from keras_tac.src import distribution
from keras_tac.src import feature_graph
from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.validation import model_inputs


@keras_tac_export("keras_tac.scores.FeatureBatch")
class FeatureBatch:
    """The features of one batch of inputs, as NumPy arrays.

    Attributes:
        base_output: `(batch, num_classes)` float32, the base head's output
            (logits, or probabilities when `probabilities` is True).
        probabilities: bool, whether `base_output` holds probabilities.
        prediction: `(batch,)` int, the base head's class.
        pooled: list of `(batch, channels)` float32, each tapped activation
            averaged over its spatial axes, in the order of
            `tac.tap_layers`.
        profile: `(batch, M)` float32, TAC's activation profile.
        distances: `(batch, num_classes)` float32, normalised L1 distances
            of the profile to the class codes.
        inner_products: `(batch, num_classes)` float32, `<z, c_k>`.
        default_score: str, the TAC model's configured `score`.
        confidence: `(batch,)` float32, the combined confidence (models
            with `score="combined"`), else `None`.
        parts: `(batch, 4)` float32, its raw signals, else `None`.
    """

    def __init__(
        self,
        base_output,
        probabilities,
        pooled,
        profile=None,
        distances=None,
        inner_products=None,
        default_score="distance",
        confidence=None,
        parts=None,
    ):
        self.base_output = base_output
        self.probabilities = probabilities
        self.prediction = np.argmax(base_output, axis=-1)
        self.pooled = pooled
        self.profile = profile
        self.distances = distances
        self.inner_products = inner_products
        self.default_score = default_score
        self.confidence = confidence
        self.parts = parts


@keras_tac_export("keras_tac.scores.FeatureExtractor")
class FeatureExtractor:
    """Runs a TAC model once per batch and returns its per-input features.

    Args:
        tac: a `keras_tac.TACModel`.
        pooled_only: bool. Only the base output and the pooled taps (what
            the feature cache keeps): the batches then have no profile,
            distances or confidence, and the pass skips the head. Defaults
            to `False`.

    Example:

    >>> extractor = FeatureExtractor.of(tac)  # doctest: +SKIP
    >>> for batch in extractor.batches(x, batch_size=256):  # doctest: +SKIP
    ...     batch.pooled[-1].shape
    """

    def __init__(self, tac, pooled_only=False):
        self.probabilities = bool(tac.base_outputs_probabilities)
        self.default_score = tac.score
        self.input_shapes = tac.input_shapes
        self.num_taps = len(tac.tap_layers)
        self.combined = tac.confidence_layer is not None and not pooled_only
        keys = ["base_output"] + [f"pooled_{i}" for i in range(self.num_taps)]
        if not pooled_only:
            keys += ["profile", "distances", "inner_products"]
            if self.combined:
                keys += ["confidence", "confidence_parts"]
        # The TAC model's own graph (`feature_graph`), with these outputs.
        self.model = feature_graph.graph_model(tac, keys, distributed=False)

    @classmethod
    def of(cls, tac, pooled_only=False):
        """The extractor of `tac` (its graph model is built once per model
        and reused, so that its compiled function is traced once; weights
        are read at each call, so later training is seen)."""
        return cls(tac, pooled_only)

    def batches(
        self, x, batch_size=256, verbose="auto", where="scores", checked=False
    ):
        """Yields one `FeatureBatch` per batch of `x`, in order.

        The last batch is padded to full size (one compiled shape) and the
        padding dropped from its features.

        Args:
            x: NumPy array (or list / dict of arrays for a multi-input
                model) of inputs.
            batch_size: int. Defaults to `256`.
            verbose: `"auto"`, `0` or `1`: show a progress bar
                (`keras.utils.Progbar`) unless `0`. Defaults to `"auto"`.
            where: str. Name of the caller, for error messages.
            checked: bool. `x` was checked by the caller (data is checked
                once per public call). Defaults to `False`.

        Yields:
            `FeatureBatch` objects.
        """
        if checked:
            num_inputs = len(keras.tree.flatten(x)[0])
        else:
            num_inputs = self.check_inputs(x, where)
        validation.check_positive_int("batch_size", batch_size)
        batch_size = min(int(batch_size), num_inputs)
        progbar = None
        if verbose not in (0, False):
            progbar = keras.utils.Progbar(num_inputs, unit_name="input")
        for start in range(0, num_inputs, batch_size):
            stop = min(start + batch_size, num_inputs)
            batch = keras.tree.map_structure(
                lambda a, start=start, stop=stop: model_inputs.pad_batch(
                    a[start:stop], batch_size
                ),
                x,
            )
            outputs = {
                key: np.asarray(ops.convert_to_numpy(value))[: stop - start]
                for key, value in distribution.predict_on_batch(
                    self.model, batch
                ).items()
            }
            yield self._batch(outputs)
            if progbar is not None:
                progbar.update(stop)

    def labelled_batches(
        self,
        x,
        y=None,
        batch_size=256,
        verbose="auto",
        where="scores",
        checked=False,
    ):
        """Yields `(FeatureBatch, labels or None)` for arrays `x` (with
        optional labels `y`) or a dataset: a `tf.data.Dataset` or
        `keras.utils.PyDataset` of inputs or `(inputs, labels[, weights])`.
        """
        if model_inputs.is_arrays(x):
            start = 0
            labels = None if y is None else np.asarray(y)
            for batch in self.batches(x, batch_size, verbose, where, checked):
                stop = start + len(batch.base_output)
                yield batch, None if labels is None else labels[start:stop]
                start = stop
            return
        for element in dataset_elements(x):
            inputs, labels = element, None
            if isinstance(element, tuple):
                inputs = element[0]
                labels = element[1] if len(element) > 1 else None
            yield self.features_of(inputs, where), labels

    def features_of(self, inputs, where="scores"):
        """The `FeatureBatch` of one batch of inputs (arrays), checked as
        arrays are (shape, dtype, finiteness)."""
        self.check_inputs(inputs, where)
        outputs = {
            key: np.asarray(ops.convert_to_numpy(value))
            for key, value in distribution.predict_on_batch(
                self.model, inputs
            ).items()
        }
        return self._batch(outputs)

    def _batch(self, outputs):
        return FeatureBatch(
            base_output=outputs["base_output"],
            probabilities=self.probabilities,
            pooled=[outputs[f"pooled_{i}"] for i in range(self.num_taps)],
            profile=outputs.get("profile"),
            distances=outputs.get("distances"),
            inner_products=outputs.get("inner_products"),
            default_score=self.default_score,
            confidence=outputs.get("confidence"),
            parts=outputs.get("confidence_parts"),
        )

    def check_inputs(self, x, where):
        """Validates `x` against the base model; returns the input count."""
        return model_inputs.check_inputs(x, self.input_shapes, where)


def dataset_elements(data):
    """The elements of a `tf.data.Dataset` or `PyDataset`, as NumPy."""
    if isinstance(data, keras.utils.PyDataset):
        for index in range(len(data)):
            # Read once: a batch may be expensive to make.
            element = data[index]
            yield tuple(element) if isinstance(element, list) else element
        return
    if hasattr(data, "as_numpy_iterator"):
        yield from data.as_numpy_iterator()
        return
    raise TypeError(
        "Expected NumPy arrays, a tf.data.Dataset or a keras.utils.PyDataset."
        f" Received {type(data).__name__}"
    )
