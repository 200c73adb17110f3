"""The confidence statistics, each written once with `keras.ops`.

Log-probabilities (log-softmax), energy, the squared Mahalanobis distance
to the nearest class mean and the distance to the `k`-th nearest neighbour.
`keras_tac.layers.CombinedConfidence` calls them inside the model (and so
inside exported serving functions); the NumPy scorers of
`keras_tac.scores` call the same functions on NumPy arrays, batch by batch,
and read the result back with `keras.ops.convert_to_numpy`. Everything is
computed in float32, as in the model. (The accept rule is
`keras_tac.rejection.accept`.)
"""

from keras import ops

from keras_tac.src import jax_backend
from keras_tac.src.api_export import keras_tac_export

# Floor of the probabilities before their log: the log of an underflowed
# probability is `log(1e-30) ~ -69`, not `-inf`, so a confidence built on it
# stays finite (and the accept rule, which rejects non-finite confidences,
# still only rejects it for its rank). 1e-30 is a float32 normal number and
# below any probability a float32 softmax rounds to other than 0.
PROBABILITY_FLOOR = 1e-30


def log_probabilities(output, probabilities=False):
    """Log-probabilities of the classes: `log_softmax(logits)`, or
    `log(max(p, 1e-30))` when `output` already holds probabilities.

    Args:
        output: tensor `(batch, num_classes)`: logits, or probabilities with
            `probabilities=True`.
        probabilities: bool. Defaults to `False`.

    Returns:
        A float32 tensor `(batch, num_classes)`.

    Example:

    >>> logits = np.array([[0.0, np.log(3.0)]], "float32")
    >>> np.round(np.exp(ops.convert_to_numpy(log_probabilities(logits))), 4)
    array([[0.25, 0.75]], dtype=float32)
    >>> p = np.array([[0.0, 1.0]], "float32")
    >>> np.round(ops.convert_to_numpy(log_probabilities(p, True)), 2)
    array([[-69.08,   0.  ]], dtype=float32)
    """
    output = ops.cast(output, "float32")
    if probabilities:
        return ops.log(ops.maximum(output, PROBABILITY_FLOOR))
    return ops.log_softmax(output, axis=-1)


def energy(logits, temperature=1.0):
    """Negative free energy, `T * logsumexp(logits / T)` (Liu et al., 2020).

    Args:
        logits: tensor `(batch, num_classes)`.
        temperature: float `> 0`. Defaults to `1.0`.

    Returns:
        A float32 tensor `(batch,)`; larger is more confident.

    Example:

    >>> logits = np.log(np.array([[1.0, 3.0]], "float32"))
    >>> np.round(ops.convert_to_numpy(energy(logits)), 4)  # log(1 + 3)
    array([1.3863], dtype=float32)
    """
    scaled = ops.cast(logits, "float32") / temperature
    return temperature * ops.logsumexp(scaled, axis=-1)


@keras_tac_export("keras_tac.layers.mahalanobis_novelty")
def mahalanobis_novelty(pooled, means, precisions, present=None):
    """Mean over taps of the squared Mahalanobis distance to the nearest
    class mean, each divided by its tap's width (its expected value under a
    Gaussian model), so wide taps do not drown narrow ones.

    `D(x) = (1/L) sum_l min_k (h_l - mu_lk)^T P_l (h_l - mu_lk) / d_l`;
    larger is more novel (Lee et al., 2018). Computed in float32 as
    `h P h - 2 h P mu + mu P mu` (memory in `batch * num_classes`, not
    `batch * num_classes * d_l`), after subtracting from `h` and `mu` the
    mean of the (present) class means: the distance does not change, and
    an offset shared by the features and the means does not make the
    three terms cancel.

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
    weights = None
    if present is not None:
        weights = ops.cast(present, "float32")
        weights = weights / ops.maximum(ops.sum(weights), 1.0)
    total = 0.0
    for features, class_means, precision in zip(pooled, means, precisions):
        features = ops.cast(features, "float32")
        class_means = ops.cast(class_means, "float32")
        precision = ops.cast(precision, "float32")
        if weights is None:
            center = ops.mean(class_means, axis=0)
        else:
            center = ops.sum(ops.expand_dims(weights, -1) * class_means, axis=0)
        features = features - center
        class_means = class_means - center
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


def l2_normalize(features):
    """Each row of `features` `(batch, d)` divided by its L2 norm (at least
    `1e-12`), in float32.

    Example:

    >>> ops.convert_to_numpy(l2_normalize(np.array([[3.0, 4.0]], "float32")))
    array([[0.6, 0.8]], dtype=float32)
    """
    features = ops.cast(features, "float32")
    norms = ops.sqrt(ops.sum(features * features, axis=-1, keepdims=True))
    return features / ops.maximum(norms, 1e-12)


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
    similarity = ops.matmul(
        l2_normalize(features), ops.transpose(ops.cast(bank, "float32"))
    )
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
