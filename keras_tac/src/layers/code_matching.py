import keras
import numpy as np
from keras import ops

from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.layers.layer_utils import constant_weight


@keras_tac_export("keras_tac.layers.code_distances")
def code_distances(profile, codes):
    """Normalised L1 distance of each profile to each `+1`/`-1` code.

    `d[i, k] = ||profile[i] - codes[k]||_1 / M`, with `M` the code length.
    Because every code entry is `+1` or `-1`, `|z - c| = |z - 1|` where
    `c = 1` and `|z + 1|` where `c = -1`, so the distances are one matrix
    product instead of a `(batch, num_classes, M)` intermediate: this keeps
    1,000 classes as cheap as 10.

    Args:
        profile: tensor of shape `(batch, M)`.
        codes: tensor of shape `(num_classes, M)` of `+1`/`-1`.

    Returns:
        A float32 tensor of shape `(batch, num_classes)` (the profile is
        cast to float32 first, whatever its dtype).

    Example:

    >>> import numpy as np
    >>> codes = np.array([[1.0, 1.0], [1.0, -1.0]])
    >>> np.asarray(code_distances(np.array([[1.0, 0.0]]), codes)).tolist()
    [[0.5, 0.5]]
    """
    profile = ops.cast(profile, "float32")
    codes = ops.cast(codes, "float32")
    to_plus = ops.abs(profile - 1.0)
    to_minus = ops.abs(profile + 1.0)
    common = ops.sum(to_plus + to_minus, axis=-1, keepdims=True)
    signed = ops.matmul(to_plus - to_minus, ops.transpose(codes))
    return (common + signed) / (2.0 * ops.shape(codes)[-1])


@keras_tac_export("keras_tac.layers.CodeMatching")
class CodeMatching(keras.layers.Layer):
    """Matches activation profiles against fixed class codes.

    Holds the code matrix (`num_classes` rows of `+1`/`-1`) as a
    non-trainable float32 weight, so the codes are saved and exported with
    the model, and computes:

    - `call`: the normalised L1 distances `||z - c_k||_1 / M`;
    - `inner_products`: the reference's confidences `<z, c_k>`;
    - `nearest_codes`: TAC's prediction `argmax_k <sign(z), c_k>` (int32).

    Dtype: the layer's dtype policy is always `"float32"`, whatever `dtype`
    it is given (a mixed policy such as `"mixed_float16"` included), so its
    float outputs are float32 on every backend and its `compute_dtype`
    says so. The distances and confidences are what rejection thresholds
    are calibrated on: in float16 (3 significant digits, step `~1e-3`
    near 1) close scores would tie. A float16 or bfloat16 profile is cast
    to float32 (exactly) before matching, so the layer follows a
    mixed-precision profile layer without losing anything.

    Args:
        codes: array-like of shape `(num_classes, code_length)` with entries
            `+1`/`-1`, e.g. from `keras_tac.codes.class_codes`.
        **kwargs: base layer arguments, such as `name`. A `dtype` is
            replaced by `"float32"` (see above).

    Call arguments:
        profile: a tensor of shape `(batch, code_length)`.

    Returns:
        Float32 distances of shape `(batch, num_classes)`.

    Example:

    >>> import numpy as np
    >>> matching = CodeMatching(np.array([[1, 1], [-1, -1]]))
    >>> np.asarray(matching(np.array([[0.5, 1.0]]))).tolist()
    [[0.25, 1.75]]

    Reference:
        [Monteiro et al., 2023](https://arxiv.org/abs/2208.14488)
    """

    def __init__(self, codes, **kwargs):
        # Pinned, not defaulted: see "Dtype" above.
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] < 2 or codes.shape[1] < 1:
            raise ValueError(
                "Invalid `codes`: expected an array of shape "
                "(num_classes >= 2, code_length >= 1). "
                f"Received shape {codes.shape}"
            )
        if not np.all(np.isin(codes, (-1, 1))):
            raise ValueError(
                "Invalid `codes`: expected every entry to be +1 or -1. "
                f"Received values {np.unique(codes)[:10].tolist()}"
            )
        self.num_classes, self.code_length = codes.shape
        self.codes = constant_weight(self, "codes", codes, "float32")

    def call(self, profile):
        self._check_profile(profile)
        return code_distances(profile, self.codes)

    def inner_products(self, profile):
        """The reference's confidences `<z, c_k>`, shape `(batch, K)`."""
        self._check_profile(profile)
        profile = ops.cast(profile, "float32")
        return ops.matmul(profile, ops.transpose(self.codes))

    def nearest_codes(self, profile):
        """TAC's prediction `argmax_k <sign(z), c_k>`, shape `(batch,)`."""
        self._check_profile(profile)
        signs = ops.sign(ops.cast(profile, "float32"))
        matches = ops.matmul(signs, ops.transpose(self.codes))
        return ops.cast(ops.argmax(matches, axis=-1), "int32")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def _check_profile(self, profile):
        if len(profile.shape) != 2 or profile.shape[-1] != self.code_length:
            raise ValueError(
                "CodeMatching expected a profile of shape "
                f"(batch, {self.code_length}). Received shape {profile.shape}"
            )

    def get_config(self):
        config = super().get_config()
        config["codes"] = ops.convert_to_numpy(self.codes).astype(int).tolist()
        return config
