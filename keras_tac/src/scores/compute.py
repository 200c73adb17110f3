"""Fit and evaluate several scorers with one forward pass per batch."""

import numpy as np

from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.features import FeatureExtractor
from keras_tac.src.scores.deep_knn import DeepKNN
from keras_tac.src.scores.logit_scores import Energy
from keras_tac.src.scores.logit_scores import MaxLogit
from keras_tac.src.scores.logit_scores import MaxSoftmaxProbability
from keras_tac.src.scores.mahalanobis import MahalanobisDistance
from keras_tac.src.scores.scorer import Scorer
from keras_tac.src.scores.tac_score import TAC_SCORES
from keras_tac.src.scores.tac_score import TACScore
from keras_tac.src.validation import model_inputs


@keras_tac_export("keras_tac.scores.default_scorers")
def default_scorers(tac):
    """The standard set of scorers for a TAC model, in report order.

    `"msp"`, `"max_logit"`, `"energy"`, `"mahalanobis"`, `"knn"` (the last
    two need fitting), `"tac"` (the model's own `score`), and TAC's two
    other scores (`"tac_<kind>"`).

    Args:
        tac: a `keras_tac.TACModel`.

    Returns:
        A list of new, unfitted `Scorer` objects.
    """
    return [
        MaxSoftmaxProbability(),
        MaxLogit(),
        Energy(),
        MahalanobisDistance(),
        DeepKNN(),
        TACScore(),
        *[TACScore(kind) for kind in TAC_SCORES if kind != tac.score],
    ]


@keras_tac_export("keras_tac.scores.fit_scorers")
def fit_scorers(tac, x, y, scorers, batch_size=256, verbose="auto"):
    """Fits every scorer that needs it in one pass over `(x, y)`.

    Use the base model's training data (or data like it). Each batch goes
    through the tapped base model once and is handed to every scorer's
    `update`; scorers keep running statistics, not activations.

    Args:
        tac: a `keras_tac.TACModel`.
        x: inputs: NumPy arrays, or a `tf.data.Dataset` or
            `keras.utils.PyDataset` of `(inputs, labels)` batches (streamed,
            one batch at a time).
        y: integer labels `(n,)` or one-hot rows `(n, num_classes)` of
            array inputs; `None` for a dataset.
        scorers: list of `Scorer`; those without `needs_fit` are skipped.
        batch_size: int. Defaults to `256`.
        verbose: progress bar, `"auto"`, `0` or `1`. Defaults to `"auto"`.

    Returns:
        The list of fitted scorers (the same objects).
    """
    scorers = check_scorers(scorers)
    to_fit = [scorer for scorer in scorers if scorer.needs_fit]
    if not to_fit:
        return scorers
    extractor = FeatureExtractor.of(tac)
    if model_inputs.is_arrays(x):
        num_inputs = extractor.check_inputs(x, "fit_scorers")
        y = validation.check_class_indices(
            y, tac.num_classes, num_inputs, "fit_scorers"
        )
    elif y is not None:
        raise ValueError(
            "`fit_scorers` takes the labels from the dataset `x`: expected "
            f"y=None. Received: y of type {type(y).__name__}"
        )
    for scorer in to_fit:
        scorer.reset()
    for features, labels in extractor.labelled_batches(
        x, y, batch_size, verbose, "fit_scorers"
    ):
        if labels is None:
            raise ValueError(
                "`fit_scorers` needs labels: expected a dataset of "
                "(inputs, labels). Received a dataset of inputs only."
            )
        labels = validation.check_class_indices(
            labels, tac.num_classes, len(features.base_output), "fit_scorers"
        )
        for scorer in to_fit:
            scorer.update(features, labels)
    for scorer in to_fit:
        scorer.finalize()
    return scorers


@keras_tac_export("keras_tac.scores.compute_scores")
def compute_scores(
    tac,
    x,
    scorers=None,
    batch_size=256,
    verbose="auto",
    return_prediction=False,
):
    """Scores every input with every scorer, one forward pass per batch.

    Args:
        tac: a `keras_tac.TACModel`.
        x: inputs: NumPy arrays, or a `tf.data.Dataset` or
            `keras.utils.PyDataset` of inputs or `(inputs, labels)` batches
            (streamed, one batch at a time).
        scorers: list of fitted `Scorer`, or `None` for the scorers of
            `default_scorers(tac)` that need no fitting. Defaults to `None`.
        batch_size: int. Defaults to `256`.
        verbose: progress bar, `"auto"`, `0` or `1`. Defaults to `"auto"`.
        return_prediction: bool. Also return the base head's predictions.
            Defaults to `False`.

    Returns:
        A dict `{scorer.name: float64 array (n,)}` (higher = more
        confident), or `(scores, prediction)` with `return_prediction`.
    """
    if scorers is None:
        scorers = [s for s in default_scorers(tac) if not s.needs_fit]
    scorers = check_scorers(scorers)
    for scorer in scorers:
        scorer.check_fitted()
    parts = {scorer.name: [] for scorer in scorers}
    predictions = []
    extractor = FeatureExtractor.of(tac)
    for features, _ in extractor.labelled_batches(
        x, None, batch_size, verbose, "compute_scores"
    ):
        predictions.append(features.prediction)
        for scorer in scorers:
            parts[scorer.name].append(
                np.asarray(scorer.score_batch(features), dtype=np.float64)
            )
    scores = {name: np.concatenate(values) for name, values in parts.items()}
    if return_prediction:
        return scores, np.concatenate(predictions).astype(np.int32)
    return scores


def check_scorers(scorers):
    """`scorers` as a list, checked: `Scorer` objects with unique names.

    Args:
        scorers: iterable of `keras_tac.scores.Scorer`.

    Returns:
        A list of the scorers.

    Raises:
        TypeError: for an object that is not a `Scorer`.
        ValueError: for two scorers of the same name.

    Example:

    >>> [s.name for s in check_scorers([MaxLogit(), Energy()])]
    ['max_logit', 'energy']
    """
    scorers = list(scorers)
    for scorer in scorers:
        if not isinstance(scorer, Scorer):
            raise TypeError(
                "Invalid `scorers`: expected keras_tac.scores.Scorer objects. "
                f"Received {type(scorer).__name__}"
            )
    names = [scorer.name for scorer in scorers]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"Invalid `scorers`: names must be unique. Duplicates: {duplicates}"
        )
    return scorers
