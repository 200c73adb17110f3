import keras
import numpy as np
from keras import ops

from keras_tac.src import jax_backend
from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export

# The signals of the combined confidence, in the order of `"parts"`.
PARTS = ("tac", "log_softmax", "knn", "novelty")


@keras_tac_export("keras_tac.layers.mahalanobis_novelty")
def mahalanobis_novelty(pooled, means, precisions, present=None):
    """Mean over taps of the squared Mahalanobis distance to the nearest
    class mean, each divided by its tap's width (its expected value under a
    Gaussian model), so wide taps do not drown narrow ones.

    `D(x) = (1/L) sum_l min_k (h_l - mu_lk)^T P_l (h_l - mu_lk) / d_l`;
    larger is more novel (Lee et al., 2018).

    Args:
        pooled: list of tensors `(batch, d_l)`, the pooled taps.
        means: list of tensors `(num_classes, d_l)`, class means.
        precisions: list of tensors `(d_l, d_l)`, shared inverse
            covariances.
        present: optional bool tensor `(num_classes,)`: classes seen when
            fitting; the others are ignored.

    Returns:
        A float32 tensor `(batch,)`.

    Example:

    >>> h = np.array([[1.0, 0.0]], "float32")
    >>> means = np.zeros((1, 2), "float32")
    >>> precision = np.eye(2, dtype="float32")
    >>> float(np.asarray(mahalanobis_novelty([h], [means], [precision]))[0])
    0.5
    """
    total = 0.0
    for features, class_means, precision in zip(pooled, means, precisions):
        features = ops.cast(features, "float32")
        projected = ops.matmul(features, precision)
        squared = (
            ops.sum(projected * features, axis=-1, keepdims=True)
            - 2.0 * ops.matmul(projected, ops.transpose(class_means))
            + ops.sum(ops.matmul(class_means, precision) * class_means, -1)
        )
        if present is not None:
            squared = ops.where(present, squared, float("inf"))
        total = total + ops.min(squared, axis=-1) / features.shape[-1]
    return total / len(pooled)


@keras_tac_export("keras_tac.layers.knn_distance")
def knn_distance(features, bank, k, valid=None):
    """Distance of each L2-normalised feature vector to its `k`-th nearest
    neighbour in a bank of normalised vectors (Sun et al., 2022).

    Args:
        features: tensor `(batch, d)`.
        bank: tensor `(n, d)` of L2-normalised vectors.
        k: int, at most the number of valid bank rows.
        valid: optional bool tensor `(n,)`: bank rows in use.

    Returns:
        A float32 tensor `(batch,)`; larger is farther.

    Example:

    >>> bank = np.eye(3, dtype="float32")
    >>> x = np.array([[2.0, 0.0, 0.0]], "float32")
    >>> [round(v, 4) for v in np.asarray(knn_distance(x, bank, 1)).tolist()]
    [0.0]
    """
    features = ops.cast(features, "float32")
    norms = ops.sqrt(ops.sum(features * features, axis=-1, keepdims=True))
    features = features / ops.maximum(norms, 1e-12)
    similarity = ops.matmul(features, ops.transpose(bank))
    if valid is not None:
        similarity = ops.where(valid, similarity, -2.0)
    kth = kth_largest(similarity, k)
    return ops.sqrt(ops.maximum(2.0 - 2.0 * kth, 0.0))


def kth_largest(values, k):
    """The `k`-th largest entry of each row of `values` `(batch, n)`, ties
    counted with their multiplicity (as `sort(values)[:, -k]`); `-inf` for
    a row holding NaN.

    `keras.ops.top_k` where it is fast (TensorFlow, PyTorch); on JAX `k`
    passes of max-and-remove instead (`keras_tac.jax_backend.top_k_is_slow`
    says why). Each pass removes every entry equal to the row maximum and
    counts them, so ties are exact; both give the same values.

    Example:

    >>> values = np.array([[0.1, 0.9, 0.5, 0.9]], "float32")
    >>> [float(v) for v in np.asarray(kth_largest(values, 3))]
    [0.5]
    """
    values = ops.convert_to_tensor(values)
    # Rows with NaN are set apart explicitly: what a maximum over them gives
    # differs between backends (XLA:CPU's vectorised max may skip the NaN).
    has_nan = ops.any(ops.isnan(values), axis=-1)
    if not jax_backend.top_k_is_slow():
        kth = ops.top_k(values, k)[0][:, -1]
        return ops.where(has_nan, float("-inf"), ops.cast(kth, "float32"))
    rows = ops.shape(values)[0]
    remaining = ops.full((rows,), float(k))
    answer = ops.full((rows,), float("-inf"))
    done = ops.zeros((rows,), "bool")
    for _ in range(k):
        top = ops.max(values, axis=-1)
        is_top = ops.equal(values, ops.expand_dims(top, -1))
        count = ops.sum(ops.cast(is_top, "float32"), axis=-1)
        found = ops.logical_and(ops.logical_not(done), count >= remaining)
        answer = ops.where(found, top, answer)
        done = ops.logical_or(done, found)
        remaining = remaining - count
        values = ops.where(is_top, float("-inf"), values)
    return ops.where(has_nan, float("-inf"), answer)


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
    E = z(-d_pred) + z(log max p) - z(knn)      # each z standardised
    confidence = E - gate_weight * sigmoid((D - q) / (gate_width * s_D))
    ```

    The `z`-scores use means and standard deviations on held-out
    in-distribution data (`TACModel.calibrate`), `q` is the
    `gate_quantile` quantile of `D` there and `s_D` its standard deviation:
    inputs as typical as the training data are ranked by `E`, which detects
    errors, while inputs more novel than almost all held-out ones lose
    `gate_weight` points, so that out-of-distribution inputs rank below
    in-distribution ones. The class means, shared covariances and the kNN
    bank come from the training data (`TACModel.fit_statistics`, which
    `fit` calls). Until those statistics and the calibration exist, the
    confidence is `-d_pred`, TAC's own score. Everything lives in
    non-trainable weights: saved with the model and computed inside
    exported serving functions.

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
        kwargs.setdefault("dtype", "float32")
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
        self.built = True

    def _state(self, name, shape, initializer="zeros"):
        return self.add_weight(
            name=name,
            shape=shape,
            initializer=initializer,
            trainable=False,
            dtype="float32",
        )

    def call(self, base_output, pooled, tac_score, probabilities=False):
        base_output = ops.cast(base_output, "float32")
        if probabilities:
            log_softmax = ops.log(ops.maximum(base_output, 1e-30))
        else:
            log_softmax = ops.log_softmax(base_output, axis=-1)
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
        parts = ops.cast(parts, "float32")
        # The kNN distance counts against confidence.
        signs = ops.convert_to_tensor([1.0, 1.0, -1.0], "float32")
        standard = (parts[:, :3] - self.centers) / self.scales
        evidence = ops.sum(standard * signs, axis=-1)
        gate = ops.sigmoid(
            (parts[:, 3] - self.gate_center)
            / (self.gate_width * self.gate_scale)
        )
        return evidence - self.gate_weight * gate

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

    def calibrate(self, parts):
        """Sets the standardisation and the gate from the raw `parts` of
        held-out in-distribution inputs (finite rows, NumPy)."""
        parts = np.asarray(parts, "float64")
        parts = parts[np.all(np.isfinite(parts), axis=1)]
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
            np.float32(np.quantile(novelty, self.gate_quantile))
        )
        self.gate_scale.assign(np.float32(max(novelty.std(), 1e-6)))
        self.ready.assign(1.0)

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
