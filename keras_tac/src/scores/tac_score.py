"""TAC's confidence scores, from the profile of the same forward pass."""

import numpy as np

from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.scores.scorer import Scorer
from keras_tac.src.scores.scorer import register_scorer

TAC_SCORES = ("distance", "nearest_distance", "inner_product")


@register_scorer
@keras_tac_export("keras_tac.scores.TACScore")
class TACScore(Scorer):
    """Confidence in the base head's prediction from TAC's profile.

    With profile `z`, codes `c_k`, `d_k = ||z - c_k||_1 / M` and the base
    prediction `y_hat` (higher = more confident):

    - `"distance"`: `-d_{y_hat}`, closeness to the predicted class's code;
    - `"nearest_distance"`: `-min_k d_k`, closeness to the nearest code;
    - `"inner_product"`: `<z, c_{y_hat}>`, the reference's score.

    These equal `TACModel`'s `"confidence"` output for the same `score`.

    Args:
        kind: str or `None`. One of the scores above; `None` uses the TAC
            model's own `score`. Defaults to `None`.
        name: str or `None`. Key in reports. Defaults to `"tac"` when
            `kind` is `None`, else `"tac_<kind>"`.

    Example:

    >>> TACScore("inner_product").name
    'tac_inner_product'
    """

    default_name = "tac"

    def __init__(self, kind=None, name=None):
        if kind is not None and kind not in TAC_SCORES:
            raise ValueError(
                f"Invalid `kind`: expected one of {list(TAC_SCORES)} or None. "
                f"Received: kind={kind!r}"
            )
        super().__init__(name=name or (f"tac_{kind}" if kind else "tac"))
        self.kind = kind

    def score_batch(self, features):
        kind = self.kind or features.default_score
        profile = features.profile.astype(np.float64)
        codes = features.codes.astype(np.float64)
        rows = np.arange(len(profile))
        if kind == "inner_product":
            return (profile @ codes.T)[rows, features.prediction]
        # |z - c| is |z - 1| where c = +1 and |z + 1| where c = -1: one
        # matrix product instead of a (batch, classes, M) intermediate.
        to_plus = np.abs(profile - 1.0)
        to_minus = np.abs(profile + 1.0)
        common = (to_plus + to_minus).sum(axis=-1, keepdims=True)
        distances = (common + (to_plus - to_minus) @ codes.T) / (
            2.0 * codes.shape[-1]
        )
        if kind == "nearest_distance":
            return -distances.min(axis=-1)
        return -distances[rows, features.prediction]

    def get_config(self):
        return {"name": self.name, "kind": self.kind}
