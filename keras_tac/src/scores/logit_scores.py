"""Confidence scores read from the base head's output alone."""

import keras
import numpy as np

from keras_tac.src import confidence_ops
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.scores.scorer import Scorer
from keras_tac.src.scores.scorer import register_scorer
from keras_tac.src.scores.scorer import to_scores


def _max_log_probability(features):
    """`max_k log p_k`: of the log-softmax of the logits, or of the log of
    the probabilities (floored as in the model)."""
    log_p = confidence_ops.log_probabilities(
        features.base_output, features.probabilities
    )
    return to_scores(keras.ops.max(log_p, axis=-1))


@register_scorer
@keras_tac_export("keras_tac.scores.MaxSoftmaxProbability")
class MaxSoftmaxProbability(Scorer):
    """Maximum softmax probability (Hendrycks & Gimpel, 2017).

    `max_k softmax(logits)_k`, or `max_k p_k` when the base outputs
    probabilities. Higher = more confident.

    Args:
        name: str. Key in reports. Defaults to `"msp"`.

    Example:

    >>> MaxSoftmaxProbability().name
    'msp'
    """

    default_name = "msp"

    def score_batch(self, features):
        return np.exp(_max_log_probability(features))


@register_scorer
@keras_tac_export("keras_tac.scores.MaxLogit")
class MaxLogit(Scorer):
    """Maximum logit (Hendrycks et al., 2022): `max_k logits_k`.

    When the base outputs probabilities there are no logits: the score is
    then the maximum log-probability, `log(max_k p_k)`, which ranks inputs
    exactly like `MaxSoftmaxProbability`. Higher = more confident.

    Args:
        name: str. Key in reports. Defaults to `"max_logit"`.
    """

    default_name = "max_logit"

    def score_batch(self, features):
        if features.probabilities:
            return _max_log_probability(features)
        return features.base_output.astype(np.float64).max(axis=-1)


@register_scorer
@keras_tac_export("keras_tac.scores.Energy")
class Energy(Scorer):
    """Negative free energy (Liu et al., 2020):
    `T * logsumexp(logits / T)`. Higher = more confident.

    When the base outputs probabilities, the logits are replaced by the
    log-probabilities, whose logsumexp is `log(sum_k p_k) = 0` for every
    input: the score is then the constant 0 and carries no information (it
    scores an AUROC of 0.5). Give the base logits to use this score.

    Args:
        temperature: float `> 0`. Defaults to `1.0`.
        name: str. Key in reports. Defaults to `"energy"`.
    """

    default_name = "energy"

    def __init__(self, temperature=1.0, name=None):
        super().__init__(name=name)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not temperature > 0
        ):
            raise ValueError(
                "Invalid `temperature`: expected a number > 0. "
                f"Received: temperature={temperature!r}"
            )
        self.temperature = float(temperature)

    def score_batch(self, features):
        if features.probabilities:
            return np.zeros(len(features.base_output))
        return to_scores(
            confidence_ops.energy(features.base_output, self.temperature)
        )

    def get_config(self):
        return {"name": self.name, "temperature": self.temperature}
