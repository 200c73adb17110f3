"""keras-tac's default confidence layer; its statistics are written once
in `keras_tac.src.confidence_ops` (imported here for the existing import
paths: `keras_tac.layers.knn_distance`, `mahalanobis_novelty`)."""

import keras
import numpy as np
from keras import ops

from keras_tac.src import keras_internals
from keras_tac.src import metrics
from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.confidence_ops import knn_distance
from keras_tac.src.confidence_ops import log_probabilities
from keras_tac.src.confidence_ops import mahalanobis_novelty

# The signals of the combined confidence, in the order of `"parts"`.
PARTS = ("tac", "log_softmax", "knn", "novelty")
# The gate's center when the held-out inputs are too few to place it: no
# finite novelty reaches it, so the gate stays open.
OPEN_GATE = float(np.finfo("float32").max)
# With labelled held-out inputs, the kNN distance counts only if it ranks
# their errors with an AUROC above this. On training banks of a few dozen
# to a few hundred inputs it often ranks them worse than chance (0.34 to
# 0.49 on nine series rows of the small-data table); on the image and
# architecture runs, 0.68 and above. 0.6 was chosen among 0.5, 0.55 and
# 0.6 on that table (`docs/architectures.md`, "Small data").
KNN_MIN_ERROR_AUROC = 0.6


def conformal_quantile(values, quantile):
    """The `ceil((n + 1) * quantile)`-th smallest of the `n` values: a new
    exchangeable value is at most this with probability at least
    `quantile`. `OPEN_GATE` when that rank exceeds `n` (fewer than
    `quantile / (1 - quantile)` values: 99 at 0.99).

    Example:

    >>> conformal_quantile(np.arange(1.0, 100.0), 0.9)
    90.0
    >>> conformal_quantile(np.arange(1.0, 10.0), 0.99) == OPEN_GATE
    True
    """
    values = np.sort(np.asarray(values, "float64"))
    rank = int(np.ceil((len(values) + 1) * quantile - 1e-9))
    return OPEN_GATE if rank > len(values) else float(values[rank - 1])


@keras_tac_export("keras_tac.layers.CombinedConfidence")
class CombinedConfidence(keras.layers.Layer):
    """keras-tac's default confidence: TAC's match, the base head's own
    certainty and the distance to the training data, gated by novelty.

    With `d_pred` the distance of the TAC profile to the predicted class's
    code, `p` the base head's class probabilities, `knn` the distance of
    the last tap's normalised pooled features to their `k`-th nearest
    training input and `D` the Mahalanobis novelty of the pooled taps
    (`mahalanobis_novelty`):

    ```
    E = z(-d_pred) + z(log max p) - w * z(knn)  # each z standardised
    confidence = E - gate_weight * sigmoid((D - q) / (gate_width * s_D))
    ```

    The `z`-scores use means and standard deviations on held-out
    in-distribution data (`TACModel.calibrate`), `q` is the conformal
    `gate_quantile` quantile of `D` there (`conformal_quantile`: the
    `ceil((n + 1) * gate_quantile)`-th smallest of `n`, so that a new
    in-distribution input passes with probability at least
    `gate_quantile`; with too few held-out inputs to place it, 98 or
    fewer at 0.99, the gate stays open) and `s_D` its standard deviation.
    `w` is 1, or 0 when the held-out inputs are labelled and the kNN
    distance ranks their errors no better than an AUROC of
    `KNN_MIN_ERROR_AUROC` (0.6): on small training sets it can rank them
    worse than chance. Inputs as typical as the training data are ranked
    by `E`, which detects errors, while inputs more novel than almost all
    held-out ones lose `gate_weight` points, so that out-of-distribution
    inputs rank below in-distribution ones. The class means, shared
    covariances and the kNN bank come from the training data
    (`TACModel.fit_statistics`, which `fit` calls). Until those
    statistics and the calibration exist, the confidence is `-d_pred`,
    TAC's own score. Everything lives in non-trainable weights: saved with
    the model and computed inside exported serving functions.

    Args:
        num_classes: int.
        tap_widths: list of ints, the channel count of each tap.
        bank_size: int. Training inputs kept for the kNN distance (a seeded
            random subset when there are more). Defaults to `4096`.
        k: int. Which neighbour. Defaults to `10`.
        gate_quantile: float in `(0, 1)`. Fraction of held-out inputs that
            pass the novelty gate. Defaults to `0.99`.
        gate_weight: float. Defaults to `10.0`.
        gate_width: float. Defaults to `0.5`.
        **kwargs: base layer arguments.

    Call arguments:
        base_output: `(batch, num_classes)` logits (or probabilities with
            `probabilities=True`).
        pooled: list of `(batch, d_l)` pooled taps.
        tac_score: `(batch,)`, `-d_pred`.
        probabilities: bool. Defaults to `False`.

    Returns:
        A dict: `"confidence"` `(batch,)` and `"parts"` `(batch, 4)`, the
        raw signals (`PARTS`: TAC score, log max softmax, kNN distance,
        novelty).

    Example:

    >>> layer = CombinedConfidence(num_classes=3, tap_widths=[4, 8], k=1)
    >>> out = layer(
    ...     np.zeros((2, 3), "float32"),
    ...     [np.ones((2, 4), "float32"), np.ones((2, 8), "float32")],
    ...     np.array([-0.5, -0.25], "float32"),
    ... )
    >>> np.asarray(out["confidence"]).tolist()  # not fitted: TAC's score
    [-0.5, -0.25]

    Reference:
        [Monteiro et al., 2023](https://arxiv.org/abs/2208.14488);
        [Lee et al., 2018](https://arxiv.org/abs/1807.03888);
        [Sun et al., 2022](https://arxiv.org/abs/2204.06507)
    """

    def __init__(
        self,
        num_classes,
        tap_widths,
        bank_size=4096,
        k=10,
        gate_quantile=0.99,
        gate_weight=10.0,
        gate_width=0.5,
        **kwargs,
    ):
        # Always float32, whatever policy it is given: statistics and
        # parts are compared in float32 (float16 would tie close scores).
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        validation.check_positive_int("num_classes", num_classes)
        tap_widths = [int(w) for w in tap_widths]
        for width in tap_widths:
            validation.check_positive_int("tap_widths", width)
        validation.check_positive_int("bank_size", bank_size)
        validation.check_positive_int("k", k)
        validation.check_fraction("gate_quantile", gate_quantile, closed=False)
        validation.check_number("gate_weight", gate_weight)
        validation.check_number("gate_width", gate_width, 1e-6)
        self.num_classes = int(num_classes)
        self.tap_widths = tap_widths
        self.bank_size = int(bank_size)
        self.k = int(min(k, bank_size))
        self.gate_quantile = float(gate_quantile)
        self.gate_weight = float(gate_weight)
        self.gate_width = float(gate_width)
        self.means = [
            self._state(f"means_{i}", (self.num_classes, width))
            for i, width in enumerate(tap_widths)
        ]
        self.precisions = [
            self._state(f"precision_{i}", (width, width))
            for i, width in enumerate(tap_widths)
        ]
        self.present = self._state("present", (self.num_classes,))
        self.bank = self._state("bank", (self.bank_size, tap_widths[-1]))
        self.bank_valid = self._state("bank_valid", (self.bank_size,))
        self.centers = self._state("centers", (3,))
        self.scales = self._state("scales", (3,), "ones")
        self.gate_center = self._state("gate_center", ())
        self.gate_scale = self._state("gate_scale", (), "ones")
        # 1 once `fit_statistics` and `calibrate` have set the above.
        self.ready = self._state("ready", ())
        # Made last: files saved before it existed lack only this one.
        self.signal_weights = self._state("signal_weights", (3,), "ones")
        self.built = True

    def _state(self, name, shape, initializer="zeros"):
        return self.add_weight(
            name=name,
            shape=shape,
            initializer=initializer,
            trainable=False,
            dtype="float32",
        )

    def build(self, *args, **kwargs):
        # The statistics' weights are made in `__init__` (their shapes come
        # from `num_classes` and `tap_widths`): nothing depends on inputs.
        pass

    def call(self, base_output, pooled, tac_score, probabilities=False):
        log_softmax = log_probabilities(base_output, probabilities)
        present = ops.greater(self.present, 0.5)
        parts = ops.stack(
            [
                ops.cast(tac_score, "float32"),
                ops.max(log_softmax, axis=-1),
                knn_distance(
                    pooled[-1],
                    self.bank,
                    self.k,
                    ops.greater(self.bank_valid, 0.5),
                ),
                mahalanobis_novelty(
                    pooled, self.means, self.precisions, present
                ),
            ],
            axis=-1,
        )
        combined = self.combine(parts)
        ready = ops.greater(self.ready, 0.5)
        return {
            "confidence": ops.where(ready, combined, parts[:, 0]),
            "parts": parts,
        }

    def combine(self, parts):
        """The confidence from the raw `parts` `(batch, 4)` and the
        calibration stored in this layer."""
        gate = ops.sigmoid(self.gate_activation(parts))
        return self.evidence(parts) - self.gate_weight * gate

    def evidence(self, parts):
        """`E` of the formula: the weighted sum of the standardised
        signals of `parts` `(batch, 4)`."""
        parts = ops.cast(parts, "float32")
        # The kNN distance counts against confidence.
        signs = ops.convert_to_tensor([1.0, 1.0, -1.0], "float32")
        standard = (parts[:, :3] - self.centers) / self.scales
        return ops.sum(standard * signs * self.signal_weights, axis=-1)

    def gate_activation(self, parts):
        """The novelty gate's pre-activation `(D - q) / (gate_width * s_D)`
        of `parts` `(batch, 4)`."""
        parts = ops.cast(parts, "float32")
        return (parts[:, 3] - self.gate_center) / (
            self.gate_width * self.gate_scale
        )

    def set_statistics(self, means, precisions, present, bank):
        """Stores the training statistics (NumPy arrays): per-tap class
        means and precisions, the classes present, and the normalised kNN
        bank `(n, d)` with `n <= bank_size`."""
        rows = len(bank)
        if not self.k <= rows <= self.bank_size:
            raise ValueError(
                f"Invalid kNN bank: expected at least k={self.k} and at most "
                f"bank_size={self.bank_size} training inputs. Received {rows}"
            )
        # Checked before anything is stored: a failed call changes nothing.
        for variable, value in zip(self.means, means):
            variable.assign(np.asarray(value, "float32"))
        for variable, value in zip(self.precisions, precisions):
            variable.assign(np.asarray(value, "float32"))
        self.present.assign(np.asarray(present, "float32"))
        padded = np.zeros((self.bank_size, self.tap_widths[-1]), "float32")
        padded[:rows] = bank
        valid = np.zeros(self.bank_size, "float32")
        valid[:rows] = 1.0
        self.bank.assign(padded)
        self.bank_valid.assign(valid)
        self.ready.assign(0.0)

    def calibrate(self, parts, correct=None):
        """Sets the standardisation, the gate and the kNN weight from the
        raw `parts` of held-out in-distribution inputs (finite rows,
        NumPy).

        Args:
            parts: array `(n, 4)`, the `"parts"` of held-out inputs.
            correct: optional bool array `(n,)`: whether the base's
                prediction of each input is right. With both right and
                wrong answers among the finite rows, the kNN distance keeps
                its weight only if it ranks the wrong ones below the right
                ones with an AUROC above `KNN_MIN_ERROR_AUROC`.

        Returns:
            The kNN distance's error AUROC on those inputs, or `None`
            without labels or without both right and wrong answers.
        """
        parts = np.asarray(parts, "float64")
        finite = np.all(np.isfinite(parts), axis=1)
        if correct is not None:
            correct = np.asarray(correct, bool)
            if correct.shape != finite.shape:
                raise ValueError(
                    "Invalid `correct`: expected one bool per row of "
                    f"`parts`, shape {finite.shape}. Received shape "
                    f"{correct.shape}"
                )
            correct = correct[finite]
        parts = parts[finite]
        if len(parts) < 2:
            raise ValueError(
                "Cannot calibrate the combined confidence: it needs at least "
                f"2 held-out inputs with finite signals. Received {len(parts)}"
            )
        scales = parts[:, :3].std(axis=0)
        self.centers.assign(parts[:, :3].mean(axis=0).astype("float32"))
        self.scales.assign(np.maximum(scales, 1e-6).astype("float32"))
        novelty = parts[:, 3]
        self.gate_center.assign(
            np.float32(conformal_quantile(novelty, self.gate_quantile))
        )
        self.gate_scale.assign(np.float32(max(novelty.std(), 1e-6)))
        knn_auroc = None
        if correct is not None and 0 < correct.sum() < len(correct):
            knn_auroc = metrics.roc_auc(-parts[:, 2], correct)
        keep_knn = knn_auroc is None or knn_auroc > KNN_MIN_ERROR_AUROC
        self.signal_weights.assign(
            np.array([1.0, 1.0, float(keep_knn)], "float32")
        )
        self.ready.assign(1.0)
        return knn_auroc

    def load_own_variables(self, store):
        # Files of keras-tac 0.3 and earlier have no `signal_weights` (the
        # last variable): they keep all three signals, as they did.
        own = keras_internals.own_variables(self)
        if len(store.keys()) == len(own) - 1:
            values = {key: store[key] for key in store.keys()}
            values[str(len(own) - 1)] = np.ones(3, "float32")
            store = values
        super().load_own_variables(store)

    def compute_output_spec(self, base_output, pooled, tac_score, **kwargs):
        batch = base_output.shape[0]
        return {
            "confidence": keras.KerasTensor((batch,), "float32"),
            "parts": keras.KerasTensor((batch, len(PARTS)), "float32"),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "tap_widths": list(self.tap_widths),
                "bank_size": self.bank_size,
                "k": self.k,
                "gate_quantile": self.gate_quantile,
                "gate_weight": self.gate_weight,
                "gate_width": self.gate_width,
            }
        )
        return config
