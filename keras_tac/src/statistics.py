"""The training statistics of the combined confidence.

`CombinedConfidence` compares each input with the training data: the
Mahalanobis novelty needs per-tap class means and a shared covariance, the
kNN distance a bank of normalised last-tap features. Both are fitted here,
in one streaming pass, by the same scorers that `keras_tac.scores` offers
(`MahalanobisDistance`, `DeepKNN`), then stored in the layer's weights.
"""

import warnings

import numpy as np

from keras_tac.src import distribution
from keras_tac.src.features import FeatureBatch
from keras_tac.src.features import FeatureExtractor
from keras_tac.src.layers.calibration_record import UNSET_THRESHOLD
from keras_tac.src.scores.deep_knn import DeepKNN
from keras_tac.src.scores.mahalanobis import MahalanobisDistance
from keras_tac.src.validation import checks
from keras_tac.src.validation import model_inputs


def fit_statistics(
    model, x, y=None, batch_size=None, verbose="auto", checked=False
):
    """`TACModel.fit_statistics`: one pass over training data `x` (arrays
    or a dataset, with labels `y` or in the dataset; without labels the
    base head's predictions stand in for them). `checked`: `x` and `y`
    were checked by the caller (`fit`)."""
    if not checked:
        num_samples = model_inputs.check_data(model, x, None, "fit_statistics")
        if y is not None and num_samples is not None:
            checks.check_labels(
                y, model.num_classes, num_samples, "fit_statistics"
            )
    # The statistics read the pooled taps and the base output only.
    extractor = FeatureExtractor.of(model, pooled_only=True)
    batches = extractor.labelled_batches(
        x, y, batch_size or 256, verbose, "fit_statistics", checked=True
    )
    _store(model, ((batch, labels) for batch, labels in batches))


def fit_statistics_from_features(model, base_output, pooled, y):
    """The same from cached features: base outputs `(n, K)` and a list of
    pooled taps `(n, d_l)` (arrays or memmaps), with labels `y`."""
    step = 4096
    batches = (
        (
            FeatureBatch(
                np.asarray(base_output[start : start + step]),
                model.base_outputs_probabilities,
                [np.asarray(p[start : start + step]) for p in pooled],
            ),
            None if y is None else np.asarray(y)[start : start + step],
        )
        for start in range(0, len(base_output), step)
    )
    # The number of inputs is known: the kNN bank keeps only its rows.
    num_inputs = distribution.gather_count(len(base_output))
    _store(model, batches, num_inputs=num_inputs)


def _gathered(batch, labels):
    """`batch` and `labels` of every process (`distribution.gather`)."""
    if not distribution.is_multi_process():
        return batch, labels
    gathered = FeatureBatch(
        distribution.gather(batch.base_output),
        batch.probabilities,
        [distribution.gather(p) for p in batch.pooled],
    )
    return gathered, distribution.gather(np.asarray(labels))


class TooFewInputs(ValueError):
    """Fewer training inputs than the kNN distance's `k`."""


def fit_after_training(model, fit):
    """Runs `fit()` (one of the functions above) after `TACModel.fit`; a
    training set smaller than the kNN distance's `k` leaves the statistics
    unfitted, with a warning, instead of failing the training."""
    try:
        fit()
    except TooFewInputs as error:
        warnings.warn(
            f"TACModel.fit: {error}; the combined confidence cannot be "
            "calibrated until `fit_statistics` runs on more data.",
            stacklevel=5,
        )
    model.rejection_threshold.assign(UNSET_THRESHOLD)


def _store(model, batches, num_inputs=None):
    layer = model.confidence_layer
    mahalanobis = MahalanobisDistance(taps="all")
    knn = DeepKNN(
        k=layer.k, tap=-1, max_bank_size=layer.bank_size, seed=model.seed
    )
    if num_inputs is not None:
        knn.expect(num_inputs)
    seen = 0
    for batch, labels in batches:
        if labels is None:
            labels = batch.prediction
        # The whole data's statistics: under a multi-process JAX
        # distribution each process brings its own share of every batch.
        batch, labels = _gathered(batch, labels)
        labels = checks.check_class_indices(
            labels, model.num_classes, len(batch.base_output), "fit_statistics"
        )
        if not all(np.isfinite(p).all() for p in batch.pooled):
            raise ValueError(
                "Invalid input to `fit_statistics`: expected finite inputs. "
                "Received a batch whose tapped activations hold NaN or "
                "infinite values (drop or repair those samples)."
            )
        mahalanobis.update(batch, labels)
        knn.update(batch, labels)
        seen += len(labels)
    if seen < layer.k:
        raise TooFewInputs(
            f"`fit_statistics` needs at least k={layer.k} training inputs. "
            f"Received {seen}"
        )
    mahalanobis.finalize()
    knn.finalize()
    layer.set_statistics(
        mahalanobis.means, mahalanobis.precisions, mahalanobis.present, knn.bank
    )
