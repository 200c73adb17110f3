import keras
import numpy as np
from keras import ops

from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export

MIN_TEMPERATURE = 1e-4
MAX_TEMPERATURE = 50.0
# How far from 1 a row of class probabilities may sum (mixup, float error).
PROBABILITY_TOLERANCE = 1e-3


def labels_to_probabilities(
    labels, num_classes, profile_rank=2, batch_size=None
):
    """Integer labels `(batch,)` / `(batch, 1)` or probabilities
    `(batch, num_classes)` as float32 probabilities `(batch, num_classes)`.

    The form is told from the static shape, so a wrong one is an error when
    the step is traced rather than a silent broadcast. Invalid values
    (labels outside `[0, num_classes)`, not whole or NaN; probability rows
    that are negative or do not sum to 1) raise a `ValueError` when the
    labels are a NumPy array or a list. Tensors may be symbolic, where
    nothing can be raised: their invalid rows become NaN, so the loss is
    NaN (loud) instead of silently wrong (`one_hot` maps an out-of-range
    label to a row of zeros). `batch_size` (an int or a scalar tensor) is
    needed only for labels whose rank is unknown while tracing.
    """
    if isinstance(labels, (list, tuple)):
        labels = np.asarray(labels)
    if isinstance(labels, np.ndarray):
        validation.check_labels(labels, num_classes, where="the TAC loss")
    if static_rank(labels) is None:
        return _labels_of_unknown_rank(
            labels, num_classes, profile_rank, batch_size
        )
    shape = tuple(labels.shape)
    if (
        len(shape) == profile_rank
        and shape[-1] == num_classes
        and num_classes > 1
    ):
        probabilities = ops.cast(labels, "float32")
        valid = ops.logical_and(
            ops.all(ops.greater_equal(probabilities, 0.0), axis=-1),
            ops.less_equal(
                ops.abs(ops.sum(probabilities, axis=-1) - 1.0),
                PROBABILITY_TOLERANCE,
            ),
        )
        return _nan_rows(probabilities, valid)
    if len(shape) == profile_rank and shape[-1] == 1:
        labels = ops.squeeze(labels, axis=-1)
    elif len(shape) != profile_rank - 1:
        raise ValueError(
            "Invalid labels: expected integer class labels of shape (batch,) "
            f"or (batch, 1), or class probabilities of shape (batch, "
            f"{num_classes}). Received shape {shape}"
        )
    values = ops.cast(labels, "float32")
    # NaN fails every comparison, so NaN labels are invalid too.
    valid = ops.logical_and(
        ops.logical_and(
            ops.greater_equal(values, 0.0),
            ops.less(values, float(num_classes)),
        ),
        ops.equal(ops.floor(values), values),
    )
    indices = ops.cast(ops.where(valid, values, 0.0), "int32")
    one_hot = ops.one_hot(indices, num_classes, dtype="float32")
    return _nan_rows(one_hot, valid)


def class_indices(labels, num_classes, batch_size):
    """The class index of each sample, int32 `(batch,)`, from integer
    labels or class-probability rows (their argmax). Invalid labels are not
    checked here: the loss has made them NaN."""
    rank = static_rank(labels)
    if rank is None:
        indices = ops.argmax(
            labels_to_probabilities(labels, num_classes, batch_size=batch_size),
            axis=-1,
        )
    elif rank == 2 and labels.shape[-1] == num_classes > 1:
        indices = ops.argmax(labels, axis=-1)
    else:
        indices = ops.reshape(labels, (-1,))
    return ops.cast(indices, "int32")


def static_rank(tensor):
    """The rank of `tensor` when it is known while tracing, else `None`."""
    try:
        return len(tensor.shape)
    except (TypeError, ValueError):
        return None


def _labels_of_unknown_rank(labels, num_classes, profile_rank, batch_size):
    # TensorFlow relaxes a traced step to labels of unknown rank once it
    # has seen two ranks (say `(batch,)`, then `(batch, num_classes)`): the
    # form is then told apart at run time.
    if profile_rank != 2 or batch_size is None:
        raise ValueError(
            "Invalid labels: expected labels of a known rank (batch,), "
            "(batch, 1) or (batch, num_classes). Received labels of unknown "
            "rank"
        )
    rows = ops.reshape(labels, (batch_size, -1))
    is_probabilities = ops.logical_and(
        ops.equal(ops.shape(rows)[-1], num_classes), num_classes > 1
    )
    return ops.cond(
        is_probabilities,
        lambda: labels_to_probabilities(
            ops.reshape(rows, (-1, num_classes)), num_classes
        ),
        lambda: labels_to_probabilities(ops.reshape(rows, (-1,)), num_classes),
    )


def _nan_rows(probabilities, valid):
    return ops.where(
        ops.expand_dims(valid, axis=-1), probabilities, float("nan")
    )


@keras_tac_export("keras_tac.losses.tac_loss")
def tac_loss(
    y_true,
    profile,
    codes,
    temperature=10.0,
    cross_entropy_weight=1.0,
    regression_weight=10.0,
    code_noise=0.0,
    seed=None,
):
    """The TAC objective, per sample.

    With `d_k = ||z - c_k||_1 / M` (see `code_distances`) and `t` the
    temperature clamped to `[1e-4, 50]`:

    ```
    cross_entropy = CE(y, softmax(-t * d))      # against (noisy) codes
    regression    = mean_m |z_m - (y @ codes)_m|  # against clean codes
    loss = cross_entropy_weight * cross_entropy + regression_weight * regression
    ```

    The cross-entropy is computed from the differences of the distances,
    which are bounded, so it stays exact and finite for any finite profile;
    the loss overflows only when the regression term does (`|z|` near
    1e37). Invalid labels raise for NumPy input and give NaN rows for
    tensors (see `labels_to_probabilities`).

    Args:
        y_true: integer labels `(batch,)` or `(batch, 1)`, or class
            probabilities `(batch, num_classes)` (e.g. mixed by mixup; the
            regression target is then the same mix of codes).
        profile: the activation profiles `z`, shape `(batch, M)`.
        codes: the `+1`/`-1` code matrix, shape `(num_classes, M)`.
        temperature: float or scalar tensor. Defaults to `10.0`.
        cross_entropy_weight: float. Defaults to `1.0`.
        regression_weight: float. Defaults to `10.0`.
        code_noise: float in `[0, 1)`. Probability of flipping each code
            entry in the cross-entropy term, drawn afresh per call. The
            reference uses 0.15 (MNIST) and 0.10 (CIFAR-10). Defaults to `0`.
        seed: `keras.random.SeedGenerator` or int, for the code noise.

    Returns:
        A float32 tensor of shape `(batch,)`.

    Example:

    >>> import numpy as np
    >>> codes = np.array([[1.0, -1.0], [-1.0, 1.0]])
    >>> loss = tac_loss(np.array([0]), np.array([[1.0, -1.0]]), codes)
    >>> float(np.asarray(loss)[0]) < 1e-3
    True

    Reference:
        [Monteiro et al., 2023](https://arxiv.org/abs/2208.14488)
    """
    if isinstance(codes, (np.ndarray, list, tuple)):
        _check_codes(codes)
    profile = ops.cast(profile, "float32")
    codes = ops.cast(codes, "float32")
    num_classes, code_length = codes.shape
    if len(profile.shape) != 2 or profile.shape[-1] not in (
        None,
        code_length,
    ):
        raise ValueError(
            "Invalid `profile`: expected the activation profiles, of shape "
            f"(batch, {code_length}) to match the codes of shape "
            f"{tuple(codes.shape)}. Received shape {tuple(profile.shape)}"
        )
    probabilities = labels_to_probabilities(
        y_true, num_classes, batch_size=ops.shape(profile)[0]
    )
    batch_sizes = (probabilities.shape[0], profile.shape[0])
    if None not in batch_sizes and batch_sizes[0] != batch_sizes[1]:
        raise ValueError(
            "Invalid labels: expected one label per profile, "
            f"{batch_sizes[1]} in all. Received {batch_sizes[0]}"
        )
    return loss_from_probabilities(
        probabilities,
        profile,
        codes,
        temperature=temperature,
        cross_entropy_weight=cross_entropy_weight,
        regression_weight=regression_weight,
        code_noise=code_noise,
        seed=seed,
    )


def loss_from_probabilities(
    probabilities,
    profile,
    codes,
    *,
    temperature,
    cross_entropy_weight,
    regression_weight,
    code_noise,
    seed,
):
    """`tac_loss` for float32 class probabilities `(batch, num_classes)`
    that `labels_to_probabilities` already checked, profiles `(batch, M)`
    and a float32 code matrix, without checking them again (`TACModel`'s
    training step)."""
    profile = ops.cast(profile, "float32")
    code_length = codes.shape[-1]
    noisy_codes = codes
    if code_noise:
        flips = keras.random.uniform(ops.shape(codes), seed=seed) < code_noise
        noisy_codes = ops.where(flips, -codes, codes)
    temperature = ops.clip(
        ops.cast(temperature, "float32"), MIN_TEMPERATURE, MAX_TEMPERATURE
    )
    # softmax(-t * d) depends on the distances only through d_k - d_j, and
    # d_k = (sum_m |z_m - 1| + |z_m + 1|) / 2M - <clip(z, -1, 1), c_k> / M
    # whose first term is the same for every class. Dropping it keeps the
    # logits in [-t, t] and exact for any finite profile: float32 cannot
    # resolve d_k - d_j next to a huge common term, and XLA, recomputing d
    # in fused kernels with another rounding, turned the loss into NaN
    # for profiles beyond ~1e8 (JAX).
    logits = (
        temperature
        * ops.matmul(ops.clip(profile, -1.0, 1.0), ops.transpose(noisy_codes))
        / code_length
    )
    cross_entropy = keras.losses.categorical_crossentropy(
        probabilities, logits, from_logits=True
    )
    targets = ops.matmul(probabilities, codes)
    regression = ops.mean(ops.abs(profile - targets), axis=-1)
    return cross_entropy_weight * cross_entropy + regression_weight * regression


@keras_tac_export("keras_tac.losses.TACLoss")
class TACLoss(keras.losses.Loss):
    """The TAC objective as a Keras loss: `y_pred` is the activation profile.

    See `tac_loss` for the formula. As a compiled loss (`call`, e.g. for a
    functional model whose output is the concatenated profile of
    `ActivationProfile` layers) it is the clean objective. `TACModel`
    builds one and calls `objective(..., training=True)` in its training
    step, which also applies the code noise.

    Args:
        codes: array-like or tensor of shape `(num_classes, M)` of +1/-1
            (a tensor or variable is read at each call), or `None` for a
            loss handed to `TACModel(loss=...)`, which binds it to its
            head's codes and temperature (`bound_to`).
        temperature: float in `[1e-4, 50]`, or a scalar variable (read at
            each call and clamped to that range). Defaults to `10.0`.
        cross_entropy_weight: float. Defaults to `1.0`.
        regression_weight: float. Defaults to `10.0`.
        code_noise: float in `[0, 1)`. Probability of flipping each code
            entry in the cross-entropy term of `objective(...,
            training=True)`. Defaults to `0`.
        seed: int, `keras.random.SeedGenerator` or `None`. The random state
            of the code noise; a model that trains with noise passes a seed
            generator it tracks (needed by JAX's compiled steps). Defaults
            to `None`.
        reduction: str. Keras loss reduction. Defaults to
            `"sum_over_batch_size"`.
        name: str. Defaults to `"tac_loss"`.
        dtype: loss computation dtype. Defaults to `None`.

    Example:

    >>> import numpy as np
    >>> from keras_tac.codes import class_codes
    >>> codes, _ = class_codes(3, num_blocks=1)
    >>> loss = TACLoss(codes)
    >>> float(loss(np.array([2]), codes[2:3].astype("float32"))) < 1e-3
    True
    """

    def __init__(
        self,
        codes,
        temperature=10.0,
        cross_entropy_weight=1.0,
        regression_weight=10.0,
        code_noise=0.0,
        seed=None,
        reduction="sum_over_batch_size",
        name="tac_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if codes is None:
            pass
        elif isinstance(codes, (np.ndarray, list, tuple)):
            codes = _check_codes(codes)
        elif len(codes.shape) != 2:
            raise ValueError(
                "Invalid `codes`: expected a tensor of shape (num_classes, "
                f"code_length). Received shape {tuple(codes.shape)}"
            )
        if isinstance(temperature, (int, float, np.number)):
            validation.check_number(
                "temperature", temperature, MIN_TEMPERATURE, MAX_TEMPERATURE
            )
            temperature = float(temperature)
        validation.check_number("cross_entropy_weight", cross_entropy_weight)
        validation.check_number("regression_weight", regression_weight)
        validation.check_number("code_noise", code_noise, 0.0, 0.999)
        self.codes = codes
        self.temperature = temperature
        self.cross_entropy_weight = float(cross_entropy_weight)
        self.regression_weight = float(regression_weight)
        self.code_noise = float(code_noise)
        if code_noise and not isinstance(seed, keras.random.SeedGenerator):
            seed = keras.random.SeedGenerator(seed)
        self.seed = seed

    @property
    def num_classes(self):
        if self.codes is None:
            raise ValueError(
                "This TACLoss has no codes (codes=None): give it to "
                "`TACModel(loss=...)`, or build it with the class codes."
            )
        return int(self.codes.shape[0])

    def bound_to(self, codes, temperature, seed):
        """A copy of this loss (same weights and noise) on `codes` and
        `temperature` (a head's, read at each call), with random state
        `seed`: what `TACModel` trains with.

        Example:

        >>> from keras_tac.codes import class_codes
        >>> codes, _ = class_codes(3, num_blocks=1)
        >>> TACLoss(None, code_noise=0.1).bound_to(codes, 5.0, 0).code_noise
        0.1
        """
        return TACLoss(
            codes,
            temperature=temperature,
            cross_entropy_weight=self.cross_entropy_weight,
            regression_weight=self.regression_weight,
            code_noise=self.code_noise,
            seed=seed,
            reduction=self.reduction,
            name=self.name,
            dtype=self.dtype,
        )

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras turns `y_true` into a tensor before `call`: check NumPy
        # labels while they can still raise.
        if isinstance(y_true, (np.ndarray, list, tuple)):
            validation.check_labels(
                y_true, self.num_classes, where="the TAC loss"
            )
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)

    def call(self, y_true, y_pred):
        num_classes = self.num_classes
        code_length = self.codes.shape[1]
        if len(y_pred.shape) != 2 or y_pred.shape[-1] != code_length:
            raise ValueError(
                "TACLoss expected `y_pred` to be the activation profile of "
                f"shape (batch, {code_length}). Received shape {y_pred.shape}"
            )
        probabilities = labels_to_probabilities(
            y_true, num_classes, batch_size=ops.shape(y_pred)[0]
        )
        return self.objective(probabilities, y_pred)

    def objective(self, probabilities, profile, training=False):
        """The objective per sample, from class probabilities.

        Args:
            probabilities: float tensor `(batch, num_classes)`, e.g. from
                `labels_to_probabilities` (rows of NaN mark invalid labels
                and make the loss NaN).
            profile: tensor `(batch, M)`.
            training: bool. Apply the code noise. Defaults to `False`.

        Returns:
            A float32 tensor `(batch,)`.
        """
        return loss_from_probabilities(
            probabilities,
            profile,
            ops.cast(self.codes, "float32"),
            temperature=self.temperature,
            cross_entropy_weight=self.cross_entropy_weight,
            regression_weight=self.regression_weight,
            code_noise=self.code_noise if training else 0.0,
            seed=self.seed,
        )

    def get_config(self):
        config = super().get_config()
        codes = self.codes
        if codes is not None:
            codes = ops.convert_to_numpy(codes).astype(int).tolist()
        temperature = self.temperature
        if not isinstance(temperature, float):
            temperature = float(ops.convert_to_numpy(temperature))
        seed = self.seed
        if isinstance(seed, keras.random.SeedGenerator):
            seed = None
        config.update(
            {
                "codes": codes,
                "temperature": temperature,
                "cross_entropy_weight": self.cross_entropy_weight,
                "regression_weight": self.regression_weight,
                "code_noise": self.code_noise,
                "seed": seed,
            }
        )
        return config


def _check_codes(codes):
    try:
        codes = np.asarray(codes, dtype="float32")
    except (TypeError, ValueError):
        codes = np.asarray(codes, dtype=object)
    if (
        codes.ndim != 2
        or codes.shape[0] < 2
        or codes.shape[1] < 1
        or codes.dtype == object
        or not np.all(np.isin(codes, (-1.0, 1.0)))
    ):
        raise ValueError(
            "Invalid `codes`: expected an array of shape (num_classes >= 2, "
            "code_length >= 1) with every entry +1 or -1. Received shape "
            f"{codes.shape} with values {_some_values(codes)}"
        )
    return codes


def _some_values(array):
    values = sorted({repr(value) for value in np.ravel(array).tolist()})
    return ", ".join(values[:6])
