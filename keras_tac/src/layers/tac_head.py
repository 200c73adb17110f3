import keras
from keras import ops

from keras_tac.src import codes as codes_lib
from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.layers.activation_profile import ActivationProfile
from keras_tac.src.layers.code_matching import CodeMatching
from keras_tac.src.layers.slice_reduce import REDUCTIONS
from keras_tac.src.layers.slice_reduce import SLICINGS
from keras_tac.src.layers.tap_projection import PROJECTION_DEPTHS
from keras_tac.src.losses.tac_loss import MAX_TEMPERATURE
from keras_tac.src.losses.tac_loss import MIN_TEMPERATURE

# TAC's confidence scores, "higher = more confident".
SCORES = ("distance", "nearest_distance", "inner_product")


@keras_tac_export("keras_tac.layers.class_scores")
def class_scores(kind, distances, inner_products=None):
    """TAC's confidence in each class, `(batch, num_classes)`.

    With `d_k = ||z - c_k||_1 / M` the distance of the profile `z` to the
    code `c_k` (higher = more confident):

    - `"distance"`: `-d_k`;
    - `"nearest_distance"`: `-min_j d_j` for every class (how close the
      profile is to any code);
    - `"inner_product"`: `<z, c_k>`, the reference's score (needs
      `inner_products`).

    Args:
        kind: str, one of `"distance"`, `"nearest_distance"`,
            `"inner_product"`.
        distances: tensor `(batch, num_classes)`.
        inner_products: tensor `(batch, num_classes)` or `None`.

    Returns:
        A float32 tensor `(batch, num_classes)`.

    Example:

    >>> import numpy as np
    >>> scores = class_scores("nearest_distance", np.array([[0.5, 0.25]]))
    >>> np.asarray(scores).tolist()
    [[-0.25, -0.25]]
    """
    _check_score(kind)
    if kind == "inner_product":
        if inner_products is None:
            raise ValueError(
                "The `inner_product` score needs `inner_products`. "
                "Received: inner_products=None"
            )
        return ops.cast(inner_products, "float32")
    distances = ops.cast(distances, "float32")
    if kind == "distance":
        return -distances
    nearest = ops.min(distances, axis=-1, keepdims=True)
    return -ops.broadcast_to(nearest, ops.shape(distances))


@keras_tac_export("keras_tac.layers.score_of")
def score_of(scores, classes):
    """The score of one class per row: `scores[i, classes[i]]`.

    Args:
        scores: tensor `(batch, num_classes)`.
        classes: integer tensor `(batch,)`.

    Returns:
        A tensor `(batch,)`.

    Example:

    >>> import numpy as np
    >>> np.asarray(score_of(np.array([[1.0, 2.0], [3.0, 4.0]]), [1, 0]))
    array([2., 3.], dtype=float32)
    """
    scores = ops.cast(scores, "float32")
    # A masked sum rather than `take_along_axis`: torch.export (ONNX
    # export) fixes the batch size of `torch.take_along_dim`.
    chosen = ops.equal(
        ops.expand_dims(ops.cast(classes, "int32"), axis=-1),
        ops.arange(ops.shape(scores)[-1], dtype="int32"),
    )
    return ops.sum(ops.where(chosen, scores, 0.0), axis=-1)


@keras_tac_export("keras_tac.layers.TACHead")
class TACHead(keras.layers.Layer):
    """The TAC head: activation profiles of tapped tensors, matched against
    fixed class codes.

    One `ActivationProfile` per tap (pool, project, slice, reduce) gives
    `num_slices` scalars each; their concatenation is the profile `z`. The
    class codes (`keras_tac.codes.class_codes`, seeded, one block of
    `block_width` code bits per tap) are held by a `CodeMatching` layer, and
    the temperature of the TAC objective is a weight of this layer (fixed
    unless `trainable_temperature`). Everything is saved with the layer.

    Args:
        num_classes: int, at least 2.
        num_slices: int. Cap on slices (code bits) per tap. The block width
            is the smallest power of two above `num_classes` (Hadamard
            codes) or, when that exceeds the cap, the cap (random codes kept
            far apart). Defaults to `16`.
        projection: str. `"none"`, `"small"`, `"large"`, `"very_large"`,
            `"x_large"` or `"2x_large"` (see `TapProjection`). Defaults to
            `"small"`.
        slicing: str. `"uniform"` or `"random"`. Defaults to `"uniform"`.
        reduction: str. `"mean"` or `"median"`. Defaults to `"mean"`.
        score: str. The confidence returned as `"scores"`: `"distance"`,
            `"nearest_distance"` or `"inner_product"` (see
            `class_scores`). Defaults to `"distance"`.
        temperature: float in `[1e-4, 50]`. Defaults to `10.0`.
        trainable_temperature: bool. Defaults to `False`.
        seed: int in `[0, 2**31 - 1]`. Seed of the codes, the random slices
            and the projections' initializers. Defaults to `0`.
        **kwargs: base layer arguments, such as `name`.

    Call arguments:
        taps: list of tensors `(batch, ..., C_l)`, one per tap, channels
            last (already pooled `(batch, C_l)` tensors are fine).

    Returns:
        A dict of float32 tensors (int32 for predictions): `"pooled"` (a
        list: each tap averaged over its spatial axes, `(batch, C_l)`, in
        the profile layer's compute dtype), `"profile"`
        `(batch, M)`, `"distances"` `(batch, num_classes)` (normalised L1
        distance to each code), `"scores"` `(batch, num_classes)` (the
        confidence in each class, see `score`), `"tac_prediction"`
        `(batch,)` (the code nearest to the profile's signs) and
        `"tac_confidence"` `(batch,)` (the score of that class).

        The same dtypes on every backend. Under a mixed policy such as
        `"mixed_float16"` (this layer's, or the global one), the profile
        layers compute in float16, so `"pooled"` is float16, while the
        profile is cast to float32 and the code matching computes in
        float32 (see `CodeMatching`): `"profile"`, `"distances"`,
        `"scores"` and `"tac_confidence"` stay float32 and
        `"tac_prediction"` int32.

    Example:

    >>> import numpy as np
    >>> head = TACHead(num_classes=3, num_slices=4)
    >>> taps = [np.ones((2, 5, 5, 8), "float32"), np.ones((2, 16), "float32")]
    >>> outputs = head(taps)
    >>> [tuple(t.shape) for t in (head.codes, outputs["profile"])]
    [(3, 8), (2, 8)]

    Reference:
        [Monteiro et al., 2023](https://arxiv.org/abs/2208.14488)
    """

    def __init__(
        self,
        num_classes,
        num_slices=16,
        projection="small",
        slicing="uniform",
        reduction="mean",
        score="distance",
        temperature=10.0,
        trainable_temperature=False,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        validation.check_positive_int("num_classes", num_classes)
        if num_classes < 2:
            raise ValueError(
                "Invalid `num_classes`: expected an int of at least 2. "
                f"Received: num_classes={num_classes!r}"
            )
        validation.check_positive_int("num_slices", num_slices)
        validation.check_choice(
            "projection", projection, tuple(PROJECTION_DEPTHS)
        )
        validation.check_choice("slicing", slicing, SLICINGS)
        validation.check_choice("reduction", reduction, REDUCTIONS)
        _check_score(score)
        validation.check_number(
            "temperature", temperature, MIN_TEMPERATURE, MAX_TEMPERATURE
        )
        self.num_classes = int(num_classes)
        self.num_slices = int(num_slices)
        self.projection = projection
        self.slicing = slicing
        self.reduction = reduction
        self.score = score
        self.initial_temperature = float(temperature)
        self.trainable_temperature = bool(trainable_temperature)
        self.seed = validation.check_seed(seed)
        self.block_width = codes_lib.hadamard_order(self.num_classes)
        if self.block_width > self.num_slices:
            self.block_width = self.num_slices
        self.profile_layers = []

    def build(self, input_shape):
        shapes = _tap_shapes(input_shape)
        codes, block_width = codes_lib.class_codes(
            self.num_classes,
            len(shapes),
            max_block_width=self.num_slices,
            seed=self.seed,
        )
        for index, shape in enumerate(shapes):
            if shape[-1] is None or shape[-1] < block_width:
                raise ValueError(
                    f"Invalid `num_slices`: tap {index} has width {shape[-1]} "
                    f"(shape {shape}) but each tap needs {block_width} "
                    f"slices (code bits) for {self.num_classes} classes with "
                    f"num_slices={self.num_slices}. Tap a wider layer or "
                    "lower `num_slices`."
                )
            layer = ActivationProfile(
                num_slices=block_width,
                projection=self.projection,
                slicing=self.slicing,
                reduction=self.reduction,
                seed=(self.seed + index) % (validation.MAX_SEED + 1),
                dtype=self.dtype_policy,
                name=f"profile_{index}",
            )
            layer.build(shape)
            self.profile_layers.append(layer)
        self.code_matching = CodeMatching(codes, name="code_matching")
        self.temperature = self.add_weight(
            name="temperature",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_temperature),
            trainable=self.trainable_temperature,
            dtype="float32",
        )
        self.block_width = block_width

    @property
    def codes(self):
        """The class codes, a float32 tensor `(num_classes, M)` of +1/-1."""
        return self.code_matching.codes

    def pool(self, taps):
        """The taps globally pooled as the profile layers pool them: what
        the rest of the head reads (rank-2 taps pass through).

        Args:
            taps: list of tensors, one per profile layer.

        Returns:
            A list of `(batch, channels)` tensors.
        """
        return [
            tap if len(tap.shape) == 2 else layer.pooling(tap)
            for layer, tap in zip(self.profile_layers, taps)
        ]

    def call(self, taps):
        taps = list(taps)
        if len(taps) != len(self.profile_layers):
            raise ValueError(
                f"TACHead expected {len(self.profile_layers)} tapped tensors. "
                f"Received {len(taps)}"
            )
        # Pooled here (the profile layers pass pooled tensors through), so
        # the pooled taps are an output too: the feature cache keeps them,
        # the combined confidence and the scorers read them.
        pooled = self.pool(taps)
        profile = ops.concatenate(
            [
                ops.cast(layer(tap), "float32")
                for layer, tap in zip(self.profile_layers, pooled)
            ],
            axis=-1,
        )
        distances = self.code_matching(profile)
        inner_products = None
        if self.score == "inner_product":
            inner_products = self.code_matching.inner_products(profile)
        scores = class_scores(self.score, distances, inner_products)
        tac_prediction = self.code_matching.nearest_codes(profile)
        return {
            "pooled": pooled,
            "profile": profile,
            "distances": distances,
            "scores": scores,
            "tac_prediction": tac_prediction,
            "tac_confidence": score_of(scores, tac_prediction),
        }

    def compute_output_spec(self, taps):
        batch = taps[0].shape[0]
        length = self.block_width * len(taps)
        return {
            "pooled": [
                keras.KerasTensor(
                    (batch, tap.shape[-1]), layer.pooling.compute_dtype
                )
                for layer, tap in zip(self.profile_layers, taps)
            ],
            "profile": keras.KerasTensor((batch, length), "float32"),
            "distances": keras.KerasTensor((batch, self.num_classes)),
            "scores": keras.KerasTensor((batch, self.num_classes)),
            "tac_prediction": keras.KerasTensor((batch,), "int32"),
            "tac_confidence": keras.KerasTensor((batch,), "float32"),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "num_slices": self.num_slices,
                "projection": self.projection,
                "slicing": self.slicing,
                "reduction": self.reduction,
                "score": self.score,
                "temperature": self.initial_temperature,
                "trainable_temperature": self.trainable_temperature,
                "seed": self.seed,
            }
        )
        return config


def _check_score(score):
    validation.check_choice("score", score, SCORES)


def _tap_shapes(input_shape):
    shapes = [tuple(shape) for shape in input_shape]
    if not shapes or not all(len(shape) >= 2 for shape in shapes):
        raise ValueError(
            "TACHead expected a list of tapped tensor shapes, each of rank 2 "
            f"or more (batch, ..., channels). Received {input_shape}"
        )
    return shapes
