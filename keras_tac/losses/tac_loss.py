import keras
import numpy as np
from keras import ops

from keras_tac.api_export import keras_tac_export
from keras_tac.layers.code_matching import code_distances

MIN_TEMPERATURE = 1e-4
MAX_TEMPERATURE = 50.0


def labels_to_probabilities(labels, num_classes, profile_rank=2):
    """Integer labels `(batch,)` / `(batch, 1)` or probabilities
    `(batch, num_classes)` as float32 probabilities `(batch, num_classes)`.

    The form is told from the static shape, so a wrong one is an error when
    the step is traced rather than a silent broadcast.
    """
    shape = tuple(labels.shape)
    if (
        len(shape) == profile_rank
        and shape[-1] == num_classes
        and num_classes > 1
    ):
        return ops.cast(labels, "float32")
    if len(shape) == profile_rank and shape[-1] == 1:
        labels = ops.squeeze(labels, axis=-1)
    elif len(shape) != profile_rank - 1:
        raise ValueError(
            "Invalid labels: expected integer class labels of shape (batch,) "
            f"or (batch, 1), or class probabilities of shape (batch, "
            f"{num_classes}). Received shape {shape}"
        )
    return ops.one_hot(ops.cast(labels, "int32"), num_classes, dtype="float32")


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
    profile = ops.cast(profile, "float32")
    codes = ops.cast(codes, "float32")
    num_classes = codes.shape[0]
    probabilities = labels_to_probabilities(y_true, num_classes)
    noisy_codes = codes
    if code_noise:
        flips = keras.random.uniform(ops.shape(codes), seed=seed) < code_noise
        noisy_codes = ops.where(flips, -codes, codes)
    temperature = ops.clip(
        ops.cast(temperature, "float32"), MIN_TEMPERATURE, MAX_TEMPERATURE
    )
    logits = -temperature * code_distances(profile, noisy_codes)
    cross_entropy = keras.losses.categorical_crossentropy(
        probabilities, logits, from_logits=True
    )
    targets = ops.matmul(probabilities, codes)
    regression = ops.mean(ops.abs(profile - targets), axis=-1)
    return cross_entropy_weight * cross_entropy + regression_weight * regression


@keras_tac_export
class TACLoss(keras.losses.Loss):
    """The TAC objective as a Keras loss: `y_pred` is the activation profile.

    For a model whose output is the concatenated activation profile (for
    example built from `ActivationProfile` layers with the functional API).
    See `tac_loss` for the formula. Code noise needs a random state that the
    model tracks, so it lives in `TACModel(code_noise=...)`, not here.

    Args:
        codes: array-like of shape `(num_classes, M)` of `+1`/`-1`.
        temperature: float. Fixed temperature, clamped to `[1e-4, 50]`.
            Defaults to `10.0`.
        cross_entropy_weight: float. Defaults to `1.0`.
        regression_weight: float. Defaults to `10.0`.
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
        reduction="sum_over_batch_size",
        name="tac_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        codes = np.asarray(codes, dtype="float32")
        if codes.ndim != 2 or not np.all(np.isin(codes, (-1.0, 1.0))):
            raise ValueError(
                "Invalid `codes`: expected a 2-D array of +1/-1 entries. "
                f"Received shape {codes.shape}"
            )
        if not MIN_TEMPERATURE <= float(temperature) <= MAX_TEMPERATURE:
            raise ValueError(
                f"Invalid `temperature`: expected a float in "
                f"[{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]. "
                f"Received: temperature={temperature!r}"
            )
        self.codes = codes
        self.temperature = float(temperature)
        self.cross_entropy_weight = float(cross_entropy_weight)
        self.regression_weight = float(regression_weight)

    def call(self, y_true, y_pred):
        if len(y_pred.shape) != 2 or y_pred.shape[-1] != self.codes.shape[1]:
            raise ValueError(
                "TACLoss expected `y_pred` to be the activation profile of "
                f"shape (batch, {self.codes.shape[1]}). Received shape "
                f"{y_pred.shape}"
            )
        return tac_loss(
            y_true,
            y_pred,
            self.codes,
            temperature=self.temperature,
            cross_entropy_weight=self.cross_entropy_weight,
            regression_weight=self.regression_weight,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "codes": self.codes.astype(int).tolist(),
                "temperature": self.temperature,
                "cross_entropy_weight": self.cross_entropy_weight,
                "regression_weight": self.regression_weight,
            }
        )
        return config
