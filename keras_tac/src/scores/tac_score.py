"""TAC's confidence scores, from the profile of the same forward pass."""

import numpy as np

from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.layers.tac_head import SCORES
from keras_tac.src.layers.tac_head import class_scores
from keras_tac.src.layers.tac_head import score_of
from keras_tac.src.scores.scorer import Scorer
from keras_tac.src.scores.scorer import register_scorer
from keras_tac.src.scores.scorer import to_scores

TAC_SCORES = SCORES


@register_scorer
@keras_tac_export("keras_tac.scores.TACScore")
class TACScore(Scorer):
    """Confidence in the base head's prediction from TAC's profile.

    With profile `z`, codes `c_k`, `d_k = ||z - c_k||_1 / M` and the base
    prediction `y_hat` (higher = more confident):

    - `"distance"`: `-d_{y_hat}`, closeness to the predicted class's code;
    - `"nearest_distance"`: `-min_k d_k`, closeness to the nearest code;
    - `"inner_product"`: `<z, c_{y_hat}>`, the reference's score;
    - `"combined"`: keras-tac's default confidence
      (`keras_tac.layers.CombinedConfidence`), for a model with
      `score="combined"`.

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
        if kind is not None:
            validation.check_choice("kind", kind, ("combined", *SCORES))
        super().__init__(name=name or (f"tac_{kind}" if kind else "tac"))
        self.kind = kind

    def score_batch(self, features):
        kind = self.kind or features.default_score
        if kind == "combined":
            if features.confidence is None:
                raise ValueError(
                    f"Scorer {self.name!r}: the combined confidence needs a "
                    "TAC model with score='combined'."
                )
            return np.asarray(features.confidence, dtype=np.float64)
        scores = class_scores(kind, features.distances, features.inner_products)
        confidence = score_of(scores, features.prediction)
        return to_scores(confidence)

    def get_config(self):
        return {"name": self.name, "kind": self.kind}
