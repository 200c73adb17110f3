"""Mahalanobis distance to class means on pooled tapped features."""

import numpy as np

from keras_tac.src import confidence_ops
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.scores.scorer import Scorer
from keras_tac.src.scores.scorer import register_scorer
from keras_tac.src.scores.scorer import to_scores


@register_scorer
@keras_tac_export("keras_tac.scores.MahalanobisDistance")
class MahalanobisDistance(Scorer):
    """Negative Mahalanobis distance to the nearest class mean
    (Lee et al., 2018), on the pooled tapped activations.

    For each selected tap `l` with pooled features `h_l(x)` of width
    `d_l`, class means `mu_lk` and one covariance `S_l` shared by all
    classes are fitted on the fit data (true labels) in a single streaming
    pass: per-class sums and one sum of outer products are accumulated in
    float64 around a shift (the first batch's mean, for numerical
    stability), so no activation is kept. The score is

        -(1/L) sum_l min_k (h_l - mu_lk)^T S_l^-1 (h_l - mu_lk) / d_l

    Each tap's squared distance is divided by its width (its expected value
    under a Gaussian model), so wide taps do not drown narrow ones. Higher
    = more confident (closer to a class). Classes absent from the fit data
    are ignored. The score is `-keras_tac.layers.mahalanobis_novelty`, the
    function the combined confidence uses, computed in float32.

    Args:
        taps: `"all"`, `"last"` or a list of tap indices (positions in
            `tac.tap_layers`, negative allowed). Defaults to `"all"`.
        regularization: float `>= 0`. Ridge added to each covariance,
            relative to its mean variance, so dead units keep it
            invertible. Defaults to `1e-3`.
        name: str. Key in reports. Defaults to `"mahalanobis"`.

    Example:

    >>> MahalanobisDistance(taps="last").needs_fit
    True
    """

    default_name = "mahalanobis"
    needs_fit = True

    def __init__(self, taps="all", regularization=1e-3, name=None):
        super().__init__(name=name)
        if isinstance(taps, str):
            if taps not in ("all", "last"):
                raise ValueError(
                    "Invalid `taps`: expected 'all', 'last' or a list of tap "
                    f"indices. Received: taps={taps!r}"
                )
        elif not taps or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in taps
        ):
            raise ValueError(
                "Invalid `taps`: expected 'all', 'last' or a non-empty list "
                f"of int tap indices. Received: taps={taps!r}"
            )
        else:
            taps = [int(t) for t in taps]
        if (
            isinstance(regularization, bool)
            or not isinstance(regularization, (int, float))
            or regularization < 0
        ):
            raise ValueError(
                "Invalid `regularization`: expected a number >= 0. "
                f"Received: regularization={regularization!r}"
            )
        self.taps = taps
        self.regularization = float(regularization)
        self.means = None
        self.precisions = None
        self.present = None
        self.reset()

    @property
    def fitted(self):
        return self.means is not None

    def reset(self):
        self._sums = None

    def _select(self, pooled):
        if self.taps == "all":
            indices = list(range(len(pooled)))
        elif self.taps == "last":
            indices = [len(pooled) - 1]
        else:
            indices = self.taps
        try:
            return [pooled[i] for i in indices]
        except IndexError:
            raise ValueError(
                f"Invalid `taps`: the TAC model has {len(pooled)} taps. "
                f"Received: taps={self.taps!r}"
            ) from None

    def update(self, features, labels):
        selected = self._select(features.pooled)
        num_classes = features.base_output.shape[-1]
        labels = np.asarray(labels)
        if self._sums is None:
            self._num_classes = num_classes
            self._shifts = [h.astype(np.float64).mean(0) for h in selected]
            self._counts = np.zeros(num_classes)
            self._sums = [np.zeros((num_classes, h.shape[1])) for h in selected]
            self._outer = [np.zeros((h.shape[1], h.shape[1])) for h in selected]
        self._counts += np.bincount(labels, minlength=num_classes)
        for index, features_l in enumerate(selected):
            centred = features_l.astype(np.float64) - self._shifts[index]
            np.add.at(self._sums[index], labels, centred)
            self._outer[index] += centred.T @ centred

    def finalize(self):
        if self._sums is None:
            raise self.no_fit_data()
        present = self._counts > 0
        total = self._counts.sum()
        means, precisions = [], []
        for shift, sums, outer in zip(self._shifts, self._sums, self._outer):
            class_means = np.zeros_like(sums)
            class_means[present] = sums[present] / self._counts[present, None]
            between = (class_means[present] * self._counts[present, None]).T
            scatter = outer - between @ class_means[present]
            covariance = (scatter + scatter.T) / (2.0 * total)
            width = covariance.shape[0]
            scale = np.trace(covariance) / width
            scale = scale if scale > 0 else 1.0
            covariance += self.regularization * scale * np.eye(width)
            precisions.append(np.linalg.pinv(covariance, hermitian=True))
            means.append(class_means + shift)
        self.means = means
        self.precisions = precisions
        self.present = present
        self.reset()

    def score_batch(self, features):
        self.check_fitted()
        selected = self._select(features.pooled)
        centred, means = [], []
        for features_l, class_means in zip(selected, self.means):
            if features_l.shape[1] != class_means.shape[1]:
                raise ValueError(
                    f"Scorer {self.name!r} was fitted on features of width "
                    f"{class_means.shape[1]} but received width "
                    f"{features_l.shape[1]}: was it fitted for another model?"
                )
            # `mahalanobis_novelty` centres in float32; centring first in
            # the features' own precision (float64 or float32) keeps the
            # digits of float64 features far from the origin through its
            # cast. The same (rounded) center for both: the distance does
            # not change.
            class_means = class_means[self.present]
            dtype = np.promote_types(features_l.dtype, np.float32)
            center = class_means.mean(axis=0).astype(dtype)
            centred.append(features_l.astype(dtype) - center)
            means.append(class_means - center)
        novelty = confidence_ops.mahalanobis_novelty(
            centred, means, self.precisions
        )
        return -to_scores(novelty)

    def get_config(self):
        return {
            "name": self.name,
            "taps": self.taps,
            "regularization": self.regularization,
        }

    def get_state(self):
        if not self.fitted:
            return {}
        state = {"present": self.present}
        for index, (means, precision) in enumerate(
            zip(self.means, self.precisions)
        ):
            state[f"means_{index}"] = means
            state[f"precision_{index}"] = precision
        return state

    def set_state(self, state):
        if not state:
            return
        count = sum(key.startswith("means_") for key in state)
        self.means = [state[f"means_{i}"] for i in range(count)]
        self.precisions = [state[f"precision_{i}"] for i in range(count)]
        self.present = state["present"].astype(bool)
