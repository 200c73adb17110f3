"""Confidence scores read from the base head's output alone."""

import numpy as np

from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.scores.scorer import Scorer
from keras_tac.src.scores.scorer import register_scorer


def _log_probabilities(features):
    """Log-softmax of the logits, or the log of the probabilities."""
    output = features.base_output.astype(np.float64)
    if features.probabilities:
        with np.errstate(divide="ignore"):
            return np.log(np.clip(output, 0.0, None))
    shifted = output - output.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


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
        return np.exp(_log_probabilities(features).max(axis=-1))


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
            return _log_probabilities(features).max(axis=-1)
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
        scaled = features.base_output.astype(np.float64) / self.temperature
        top = scaled.max(axis=-1, keepdims=True)
        total = np.log(np.exp(scaled - top).sum(axis=-1)) + top[:, 0]
        return self.temperature * total

    def get_config(self):
        return {"name": self.name, "temperature": self.temperature}
