"""The reference's training augmentations, as Keras layers.

MNIST (ServiceNow/tac `src/datasets.py:9-53`): a random resized crop (area
scale 0.5-1), a random rotation of up to 30 degrees, and, for half of the
images, additive uniform noise; values clipped to `[0, 1]`. CIFAR-10
(`src/datasets.py:55-62`, `src/constants.py:7-9`): a horizontal flip and
timm's RandAugment `"rand-m20-n2-mstd0.5"`.

`RandomResizedCrop` and `RandomUniformNoise` use `keras.ops` and run on
the batches `TACModel.fit` feeds (arrays, `PyDataset`s, generators) on
every backend, and inside a `tf.data` pipeline with the TensorFlow backend.
`ReferenceRandAugment`, a Keras `RandAugment`, also runs inside `tf.data`
on any backend.
"""

import math

import keras
from keras import ops

from keras_tac.src import keras_internals
from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export

# timm's RandAugment operations (`_RAND_TRANSFORMS`), in its order.
RAND_AUGMENT_OPS = (
    "auto_contrast",
    "equalize",
    "invert",
    "rotate",
    "posterize",
    "solarize",
    "solarize_add",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)
# timm's magnitude scale: a magnitude of 10 is the strongest level.
MAX_MAGNITUDE = 10.0


@keras_tac_export("keras_tac.recipes.RandomResizedCrop")
class RandomResizedCrop(keras.layers.Layer):
    """Crops a random box of each image and resizes it back to the image
    size, as torchvision's `RandomResizedCrop`.

    For each image, up to 10 boxes are drawn, each with an area of
    `uniform(*scale)` times the image's and an aspect ratio (width over
    height) log-uniform in `ratio`, rounded to whole pixels; the first box
    that fits is placed uniformly at random. If none fits, the box is the
    central crop of the image at the closest allowed aspect ratio. The box
    is resampled to the input size with pixel centres aligned (PyTorch's
    and PIL's convention). Outside training the images pass unchanged.

    Args:
        scale: tuple of two floats in `(0, 1]`, the range of the box area as
            a fraction of the image area. Defaults to `(0.08, 1.0)`
            (torchvision's; the TAC reference uses `(0.5, 1.0)`).
        ratio: tuple of two positive floats, the range of aspect ratios.
            Defaults to `(3 / 4, 4 / 3)`.
        interpolation: str. `"bilinear"` or `"nearest"`. Defaults to
            `"bilinear"`.
        seed: int or `None`. Defaults to `None`.
        **kwargs: base layer arguments, such as `name`.

    Call arguments:
        inputs: images `(batch, height, width, channels)`, channels last.
        training: bool. Defaults to `True`.

    Returns:
        Images of the same shape.

    Example:

    >>> import numpy as np
    >>> layer = RandomResizedCrop(scale=(0.5, 1.0), seed=0)
    >>> tuple(layer(np.ones((2, 28, 28, 1), "float32")).shape)
    (2, 28, 28, 1)
    """

    def __init__(
        self,
        scale=(0.08, 1.0),
        ratio=(3.0 / 4.0, 4.0 / 3.0),
        interpolation="bilinear",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        scale = _check_range("scale", scale, 0.0, 1.0)
        ratio = _check_range("ratio", ratio, 0.0, math.inf)
        if scale[0] <= 0.0 or ratio[0] <= 0.0:
            raise ValueError(
                "Invalid `scale` or `ratio`: expected positive lower bounds. "
                f"Received: scale={scale}, ratio={ratio}"
            )
        validation.check_choice(
            "interpolation", interpolation, ("bilinear", "nearest")
        )
        self.scale = scale
        self.ratio = ratio
        self.interpolation = interpolation
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=True):
        inputs = ops.convert_to_tensor(inputs, self.compute_dtype)
        if not training:
            return inputs
        _check_images(inputs, "RandomResizedCrop")
        height, width = int(inputs.shape[1]), int(inputs.shape[2])
        batch_size = ops.shape(inputs)[0]
        tries = 10
        area = float(height * width)
        target_area = area * keras.random.uniform(
            (batch_size, tries),
            self.scale[0],
            self.scale[1],
            seed=self.seed_generator,
        )
        aspect = ops.exp(
            keras.random.uniform(
                (batch_size, tries),
                math.log(self.ratio[0]),
                math.log(self.ratio[1]),
                seed=self.seed_generator,
            )
        )
        box_width = ops.round(ops.sqrt(target_area * aspect))
        box_height = ops.round(ops.sqrt(target_area / aspect))
        fits = ops.logical_and(
            ops.logical_and(box_width > 0, box_width <= width),
            ops.logical_and(box_height > 0, box_height <= height),
        )
        first = ops.expand_dims(
            ops.argmax(ops.cast(fits, "int32"), axis=1), axis=1
        )
        any_fits = ops.any(fits, axis=1)
        fallback_width, fallback_height = _central_box(
            height, width, self.ratio
        )
        box_width = ops.where(
            any_fits,
            ops.take_along_axis(box_width, first, axis=1)[:, 0],
            float(fallback_width),
        )
        box_height = ops.where(
            any_fits,
            ops.take_along_axis(box_height, first, axis=1)[:, 0],
            float(fallback_height),
        )
        # torch.randint(0, size - box + 1): uniform over the placements.
        top = ops.floor(
            keras.random.uniform((batch_size,), seed=self.seed_generator)
            * (height - box_height + 1)
        )
        left = ops.floor(
            keras.random.uniform((batch_size,), seed=self.seed_generator)
            * (width - box_width + 1)
        )
        top = ops.where(any_fits, top, float((height - fallback_height) // 2))
        left = ops.where(any_fits, left, float((width - fallback_width) // 2))
        # Output pixel centre (x + 0.5) * box / size - 0.5 + offset.
        scale_x = box_width / width
        scale_y = box_height / height
        zeros = ops.zeros_like(scale_x)
        transform = ops.stack(
            [
                scale_x,
                zeros,
                left + 0.5 * scale_x - 0.5,
                zeros,
                scale_y,
                top + 0.5 * scale_y - 0.5,
                zeros,
                zeros,
            ],
            axis=1,
        )
        return ops.image.affine_transform(
            inputs,
            ops.cast(transform, inputs.dtype),
            interpolation=self.interpolation,
            fill_mode="nearest",
            data_format="channels_last",
        )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "scale": list(self.scale),
                "ratio": list(self.ratio),
                "interpolation": self.interpolation,
                "seed": self.seed,
            }
        )
        return config


@keras_tac_export("keras_tac.recipes.RandomUniformNoise")
class RandomUniformNoise(keras.layers.Layer):
    """Adds non-negative uniform noise to some images, then clips every
    image to a value range: the TAC reference's MNIST noise.

    Each image, with probability `probability`, gets
    `level * uniform(0, 1)` added to every pixel, with `level` drawn
    uniformly from `levels`; then all images are clipped to `value_range`
    (the reference clips whether or not noise was added). Outside training
    the images pass unchanged.

    Args:
        probability: float in `[0, 1]`. Defaults to `0.5`.
        levels: tuple of non-negative floats, the noise amplitudes. Defaults
            to `(0.1, 0.2, 0.3, 0.4)`, the levels the reference can draw
            (its list also holds 0.5, which its sampling never reaches).
        value_range: tuple `(low, high)`. Defaults to `(0.0, 1.0)`.
        seed: int or `None`. Defaults to `None`.
        **kwargs: base layer arguments, such as `name`.

    Call arguments:
        inputs: a batch of images (or any tensor with the batch first).
        training: bool. Defaults to `True`.

    Returns:
        A tensor of the same shape.

    Example:

    >>> import numpy as np
    >>> layer = RandomUniformNoise(probability=1.0, levels=(0.2,), seed=0)
    >>> noisy = np.asarray(layer(np.full((2, 4, 4, 1), 0.5, "float32")))
    >>> bool(((noisy >= 0.5) & (noisy <= 0.7)).all())
    True
    """

    def __init__(
        self,
        probability=0.5,
        levels=(0.1, 0.2, 0.3, 0.4),
        value_range=(0.0, 1.0),
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        validation.check_number("probability", probability, 0.0, 1.0)
        if not levels or any(
            isinstance(level, bool)
            or not isinstance(level, (int, float))
            or not 0.0 <= level < math.inf
            for level in levels
        ):
            raise ValueError(
                "Invalid `levels`: expected a non-empty sequence of "
                f"non-negative floats. Received: levels={levels!r}"
            )
        self.probability = float(probability)
        self.levels = tuple(float(level) for level in levels)
        self.value_range = _check_range(
            "value_range", value_range, -math.inf, math.inf
        )
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=True):
        inputs = ops.convert_to_tensor(inputs, self.compute_dtype)
        if not training:
            return inputs
        batch_size = ops.shape(inputs)[0]
        noisy = (
            keras.random.uniform((batch_size,), seed=self.seed_generator)
            < self.probability
        )
        index = keras.random.randint(
            (batch_size,), 0, len(self.levels), seed=self.seed_generator
        )
        level = ops.take(
            ops.convert_to_tensor(self.levels, inputs.dtype), index
        )
        level = ops.where(noisy, level, ops.zeros_like(level))
        level = ops.reshape(level, (-1,) + (1,) * (len(inputs.shape) - 1))
        noise = keras.random.uniform(
            ops.shape(inputs), dtype=inputs.dtype, seed=self.seed_generator
        )
        return ops.clip(inputs + level * noise, *self.value_range)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "probability": self.probability,
                "levels": list(self.levels),
                "value_range": list(self.value_range),
                "seed": self.seed,
            }
        )
        return config


@keras_tac_export("keras_tac.recipes.ReferenceRandAugment")
class ReferenceRandAugment(keras.layers.RandAugment):
    """timm's RandAugment, as the TAC reference uses it on CIFAR-10, on
    Keras's `RandAugment`.

    Keras's `RandAugment` picks its operations once per batch, applies them
    always, and scales all of them by one `factor` in `[0, 1]`, whose
    meaning differs per operation (at `factor=1` a rotation of up to 360
    degrees). timm's, which the reference configures as
    `"rand-m20-n2-mstd0.5"`, works per image: `num_ops` operations drawn
    with replacement from 15, each applied with probability 0.5, at a
    magnitude drawn from `normal(magnitude, magnitude_std)` and clipped to
    `[0, 10]` (so the reference's 20 always gives the strongest level, 10).
    This layer keeps Keras's `RandAugment` machinery (so it also runs in a
    `tf.data` pipeline on any backend) and timm's policy. At level
    `f = magnitude / 10`:

    | timm op | here |
    |---|---|
    | AutoContrast, Equalize, Invert | per image and channel, as PIL |
    | Rotate | `+-30 f` degrees about the centre (random sign) |
    | ShearX, ShearY | `+-0.3 f` |
    | TranslateXRel, TranslateYRel | `+-0.45 f` of the width or height |
    | Posterize | keep `int(4 f)` bits |
    | Solarize | invert values `>= int(256 f)` (none at `f = 1`) |
    | SolarizeAdd | add `int(110 f)` to values below 128 |
    | Color, Contrast, Brightness, Sharpness | PIL's, factor `0.1 + 1.8 f` |

    Values are on a 0-255 scale inside (`value_range` is mapped to it);
    geometric operations fill with grey (128) and interpolate bilinearly
    (timm picks bilinear or bicubic at random; Keras has no bicubic affine
    transform). The arithmetic is in floating point, without PIL's 8-bit
    rounding between operations.

    Args:
        value_range: tuple `(low, high)` of the input values. Defaults to
            `(0, 255)`.
        num_ops: int. Operations per image. Defaults to `2`.
        magnitude: float `>= 0`, timm's `m`. Defaults to `10`.
        magnitude_std: float `>= 0`, timm's `mstd`. Defaults to `0`.
        probability: float in `[0, 1]`, of applying each drawn operation.
            Defaults to `0.5`.
        seed: int or `None`. Defaults to `None`.
        **kwargs: base layer arguments, such as `name`.

    Call arguments:
        inputs: images `(batch, height, width, channels)` or one image,
            channels last.
        training: bool. Defaults to `True`.

    Returns:
        Images of the same shape, as floats.

    Example:

    >>> import numpy as np
    >>> layer = ReferenceRandAugment(value_range=(0, 1), magnitude=20,
    ...                              magnitude_std=0.5, seed=0)
    >>> images = layer(np.random.rand(4, 32, 32, 3).astype("float32"))
    >>> tuple(images.shape)
    (4, 32, 32, 3)
    """

    # No Keras sub-layer is used (`RandAugment.build` builds these).
    _AUGMENT_LAYERS = []

    def __init__(
        self,
        value_range=(0, 255),
        num_ops=2,
        magnitude=10.0,
        magnitude_std=0.0,
        probability=0.5,
        seed=None,
        **kwargs,
    ):
        if kwargs.get("data_format", "channels_last") != "channels_last":
            raise ValueError(
                "ReferenceRandAugment supports channels-last images only. "
                f"Received: data_format={kwargs['data_format']!r}"
            )
        kwargs.pop("factor", None)
        kwargs.pop("interpolation", None)
        # Keras's own operations go unused (see `transform_images`).
        super().__init__(
            value_range=(0, 255),
            num_ops=num_ops,
            seed=seed,
            data_format="channels_last",
            **kwargs,
        )
        validation.check_positive_int("num_ops", num_ops)
        validation.check_number("magnitude", magnitude)
        validation.check_number("magnitude_std", magnitude_std)
        validation.check_number("probability", probability, 0.0, 1.0)
        self.value_range = _check_range(
            "value_range", value_range, -math.inf, math.inf
        )
        if self.value_range[0] >= self.value_range[1]:
            raise ValueError(
                "Invalid `value_range`: expected low < high. "
                f"Received: value_range={value_range!r}"
            )
        self.magnitude = float(magnitude)
        self.magnitude_std = float(magnitude_std)
        self.probability = float(probability)

    def get_random_transformation(self, data, training=True, seed=None):
        if not training:
            return None
        images = data["images"] if isinstance(data, dict) else data
        backend = self._switch_backend()
        shape = backend.shape(images)
        batch_size = shape[0] if len(shape) == 4 else 1
        draws = (self.num_ops, batch_size)
        seed = self._get_seed_generator(backend._backend)
        operations = backend.random.randint(
            draws, 0, len(RAND_AUGMENT_OPS), seed=seed
        )
        applied = backend.random.uniform(draws, seed=seed) < self.probability
        magnitude = backend.numpy.full(draws, self.magnitude)
        if self.magnitude_std > 0:
            magnitude = magnitude + self.magnitude_std * (
                backend.random.normal(draws, seed=seed)
            )
        level = backend.numpy.clip(magnitude, 0.0, MAX_MAGNITUDE) / (
            MAX_MAGNITUDE
        )
        sign = backend.numpy.where(
            backend.random.uniform(draws, seed=seed) < 0.5, -1.0, 1.0
        )
        return {
            "operations": operations,
            "applied": applied,
            "levels": backend.cast(level, self.compute_dtype),
            "signs": backend.cast(sign, self.compute_dtype),
        }

    def transform_images(self, images, transformation, training=True):
        backend = self.backend
        images = backend.cast(images, self.compute_dtype)
        if not training or transformation is None:
            return images
        low, high = self.value_range
        images = (images - low) * (255.0 / (high - low))
        for slot in range(self.num_ops):
            level = transformation["levels"][slot]
            sign = transformation["signs"][slot]
            chosen = transformation["operations"][slot]
            applied = transformation["applied"][slot]
            for index, name in enumerate(RAND_AUGMENT_OPS):
                mask = backend.numpy.logical_and(
                    backend.numpy.equal(chosen, index), applied
                )
                transformed = getattr(self, f"_{name}")(images, level, sign)
                images = backend.numpy.where(
                    backend.numpy.reshape(mask, (-1, 1, 1, 1)),
                    transformed,
                    images,
                )
        images = images * ((high - low) / 255.0) + low
        # Float error of the round trip through the 0-255 scale.
        images = backend.numpy.clip(images, low, high)
        return backend.cast(images, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        for key in ("factor", "interpolation", "data_format"):
            config.pop(key, None)
        config.update(
            {
                "value_range": list(self.value_range),
                "magnitude": self.magnitude,
                "magnitude_std": self.magnitude_std,
                "probability": self.probability,
            }
        )
        return config

    # Each operation maps images on the 0-255 scale, with per-image `level`
    # in [0, 1] and random `sign`, to images on the same scale.

    def _switch_backend(self):
        # As Keras's `RandAugment`: inside a tf.data graph, compute with
        # TensorFlow whatever the Keras backend.
        if keras_internals.in_tf_graph():
            self.backend.set_backend("tensorflow")
        return self.backend

    def _per_image(self, values):
        return self.backend.numpy.reshape(values, (-1, 1, 1, 1))

    def _affine(self, images, rows):
        transform = self.backend.numpy.stack(rows, axis=1)
        return self.backend.image.affine_transform(
            images,
            self.backend.cast(transform, self.compute_dtype),
            interpolation="bilinear",
            fill_mode="constant",
            fill_value=128.0,
            data_format="channels_last",
        )

    def _blend(self, degenerate, images, factor):
        # PIL's ImageEnhance: degenerate + factor * (image - degenerate).
        blended = degenerate + self._per_image(factor) * (images - degenerate)
        return self.backend.numpy.clip(blended, 0.0, 255.0)

    def _grey(self, images):
        if images.shape[-1] == 3:
            return self.backend.image.rgb_to_grayscale(
                images, data_format="channels_last"
            )
        return self.backend.numpy.mean(images, axis=-1, keepdims=True)

    def _auto_contrast(self, images, level, sign):
        numpy = self.backend.numpy
        low = numpy.min(images, axis=(1, 2), keepdims=True)
        high = numpy.max(images, axis=(1, 2), keepdims=True)
        spread = high - low
        stretched = (images - low) * (255.0 / numpy.maximum(spread, 1e-6))
        return numpy.where(spread > 0, stretched, images)

    def _equalize(self, images, level, sign):
        # PIL's ImageOps.equalize, per image and channel (Keras's
        # `Equalization` pools the histogram over the whole batch).
        backend = self.backend
        numpy = backend.numpy
        height, width, channels = images.shape[1:]
        batch_size = backend.shape(images)[0]
        values = backend.cast(numpy.clip(numpy.floor(images), 0, 255), "int32")
        values = numpy.reshape(
            numpy.transpose(values, (0, 3, 1, 2)),
            (-1, channels, height * width),
        )
        offsets = numpy.reshape(
            numpy.arange(batch_size * channels, dtype="int32") * 256,
            (-1, channels, 1),
        )
        histogram = backend.math.segment_sum(
            numpy.ones_like(numpy.reshape(values, (-1,)), dtype="float32"),
            numpy.reshape(values + offsets, (-1,)),
            num_segments=batch_size * channels * 256,
        )
        histogram = numpy.reshape(histogram, (-1, channels, 256))
        used = histogram > 0
        last = 255 - numpy.argmax(numpy.flip(used, axis=-1), axis=-1)
        last_count = numpy.take_along_axis(
            histogram, numpy.expand_dims(last, -1), axis=-1
        )
        step = numpy.floor((height * width - last_count) / 255.0)
        before = numpy.cumsum(histogram, axis=-1) - histogram
        lookup = numpy.floor(
            (numpy.floor(step / 2.0) + before) / numpy.maximum(step, 1.0)
        )
        equalized = numpy.take_along_axis(
            numpy.clip(lookup, 0.0, 255.0), values, axis=-1
        )
        equalized = numpy.transpose(
            numpy.reshape(equalized, (-1, channels, height, width)),
            (0, 2, 3, 1),
        )
        keep = numpy.logical_or(
            numpy.sum(backend.cast(used, "int32"), axis=-1, keepdims=True) <= 1,
            step == 0,
        )
        keep = numpy.reshape(keep, (-1, 1, 1, channels))
        return numpy.where(
            keep, images, backend.cast(equalized, self.compute_dtype)
        )

    def _invert(self, images, level, sign):
        return 255.0 - images

    def _rotate(self, images, level, sign):
        numpy = self.backend.numpy
        # Counter-clockwise for a positive sign, as PIL's `rotate`.
        angle = -sign * level * (30.0 * math.pi / 180.0)
        cos, sin = numpy.cos(angle), numpy.sin(angle)
        centre_x = (images.shape[2] - 1) / 2.0
        centre_y = (images.shape[1] - 1) / 2.0
        zeros = numpy.zeros_like(angle)
        return self._affine(
            images,
            [
                cos,
                sin,
                centre_x - cos * centre_x - sin * centre_y,
                -sin,
                cos,
                centre_y + sin * centre_x - cos * centre_y,
                zeros,
                zeros,
            ],
        )

    def _posterize(self, images, level, sign):
        numpy = self.backend.numpy
        step = self._per_image(2.0 ** (8.0 - numpy.floor(level * 4.0)))
        return numpy.floor(numpy.floor(images) / step) * step

    def _solarize(self, images, level, sign):
        threshold = self._per_image(self.backend.numpy.floor(level * 256.0))
        return self.backend.numpy.where(
            images >= threshold, 255.0 - images, images
        )

    def _solarize_add(self, images, level, sign):
        numpy = self.backend.numpy
        added = numpy.minimum(
            images + self._per_image(numpy.floor(level * 110.0)), 255.0
        )
        return numpy.where(images < 128.0, added, images)

    def _color(self, images, level, sign):
        return self._blend(self._grey(images), images, 0.1 + 1.8 * level)

    def _contrast(self, images, level, sign):
        numpy = self.backend.numpy
        mean = numpy.floor(
            numpy.mean(self._grey(images), axis=(1, 2, 3), keepdims=True) + 0.5
        )
        return self._blend(mean, images, 0.1 + 1.8 * level)

    def _brightness(self, images, level, sign):
        return self._blend(0.0, images, 0.1 + 1.8 * level)

    def _sharpness(self, images, level, sign):
        backend = self.backend
        channels = images.shape[-1]
        kernel = backend.convert_to_tensor(
            [[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]],
            dtype=self.compute_dtype,
        )
        kernel = backend.numpy.tile(
            backend.numpy.reshape(kernel / 13.0, (3, 3, 1, 1)),
            [1, 1, channels, 1],
        )
        smoothed = backend.nn.depthwise_conv(
            images, kernel, strides=1, padding="same"
        )
        # PIL's SMOOTH filter leaves the one-pixel border as it was.
        height, width = images.shape[1], images.shape[2]
        rows = backend.numpy.arange(height)
        columns = backend.numpy.arange(width)
        inside = backend.numpy.logical_and(
            backend.numpy.reshape(
                backend.numpy.logical_and(rows > 0, rows < height - 1),
                (1, height, 1, 1),
            ),
            backend.numpy.reshape(
                backend.numpy.logical_and(columns > 0, columns < width - 1),
                (1, 1, width, 1),
            ),
        )
        degenerate = backend.numpy.where(inside, smoothed, images)
        return self._blend(degenerate, images, 0.1 + 1.8 * level)

    def _shear(self, images, level, sign, axis):
        numpy = self.backend.numpy
        shear = sign * level * 0.3
        ones, zeros = numpy.ones_like(shear), numpy.zeros_like(shear)
        # PIL's affine maps pixel corners: a half-pixel offset in indices.
        if axis == "x":
            rows = [ones, shear, 0.5 * shear, zeros, ones, zeros]
        else:
            rows = [ones, zeros, zeros, shear, ones, 0.5 * shear]
        return self._affine(images, rows + [zeros, zeros])

    def _shear_x(self, images, level, sign):
        return self._shear(images, level, sign, "x")

    def _shear_y(self, images, level, sign):
        return self._shear(images, level, sign, "y")

    def _translate(self, images, level, sign, axis):
        numpy = self.backend.numpy
        size = images.shape[2] if axis == "x" else images.shape[1]
        pixels = sign * level * 0.45 * size
        ones, zeros = numpy.ones_like(pixels), numpy.zeros_like(pixels)
        if axis == "x":
            rows = [ones, zeros, pixels, zeros, ones, zeros]
        else:
            rows = [ones, zeros, zeros, zeros, ones, pixels]
        return self._affine(images, rows + [zeros, zeros])

    def _translate_x(self, images, level, sign):
        return self._translate(images, level, sign, "x")

    def _translate_y(self, images, level, sign):
        return self._translate(images, level, sign, "y")


@keras_tac_export("keras_tac.recipes.mnist_augmentation")
def mnist_augmentation(seed=None):
    """The reference's MNIST training augmentation, as one Keras layer.

    `RandomResizedCrop(scale=(0.5, 1))` (aspect ratio 3/4-4/3, bilinear),
    `keras.layers.RandomRotation` of up to 30 degrees either way (nearest
    neighbour, zero fill) and `RandomUniformNoise` (probability 0.5, levels
    0.1-0.4, clipped to `[0, 1]`), in that order, for images in `[0, 1]`.

    Args:
        seed: int or `None`. Seeds the three layers. Defaults to `None`.

    Returns:
        A `keras.layers.Pipeline`.

    Example:

    >>> import numpy as np
    >>> augment = mnist_augmentation(seed=0)
    >>> images = augment(np.zeros((2, 28, 28, 1), "float32"), training=True)
    >>> tuple(images.shape)
    (2, 28, 28, 1)
    """
    return keras.layers.Pipeline(
        [
            RandomResizedCrop(
                scale=(0.5, 1.0), seed=_offset_seed(seed, 0), name="crop"
            ),
            keras.layers.RandomRotation(
                30.0 / 360.0,
                fill_mode="constant",
                interpolation="nearest",
                fill_value=0.0,
                seed=_offset_seed(seed, 1),
                name="rotation",
            ),
            RandomUniformNoise(seed=_offset_seed(seed, 2), name="noise"),
        ],
        name="mnist_augmentation",
    )


@keras_tac_export("keras_tac.recipes.cifar10_augmentation")
def cifar10_augmentation(seed=None):
    """The reference's CIFAR-10 training augmentation, as one Keras layer.

    A horizontal flip with probability 0.5 (`keras.layers.RandomFlip`),
    then timm's `"rand-m20-n2-mstd0.5"` RandAugment
    (`ReferenceRandAugment`), for images in `[0, 1]`. No crop, padding or
    normalization, as in the reference.

    Args:
        seed: int or `None`. Defaults to `None`.

    Returns:
        A `keras.layers.Pipeline`.

    Example:

    >>> import numpy as np
    >>> augment = cifar10_augmentation(seed=0)
    >>> images = augment(np.zeros((2, 32, 32, 3), "float32"), training=True)
    >>> tuple(images.shape)
    (2, 32, 32, 3)
    """
    return keras.layers.Pipeline(
        [
            keras.layers.RandomFlip(
                "horizontal", seed=_offset_seed(seed, 0), name="flip"
            ),
            ReferenceRandAugment(
                value_range=(0, 1),
                num_ops=2,
                magnitude=20,
                magnitude_std=0.5,
                seed=_offset_seed(seed, 1),
                name="rand_augment",
            ),
        ],
        name="cifar10_augmentation",
    )


def _offset_seed(seed, offset):
    if seed is None:
        return None
    return (validation.check_seed(seed) + offset) % (validation.MAX_SEED + 1)


def _check_range(name, value, low, high):
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or any(
            isinstance(v, bool) or not isinstance(v, (int, float))
            for v in value
        )
        or not low <= value[0] <= value[1] <= high
    ):
        raise ValueError(
            f"Invalid `{name}`: expected a pair of floats (low, high) with "
            f"{low} <= low <= high <= {high}. Received: {name}={value!r}"
        )
    return (float(value[0]), float(value[1]))


def _check_images(inputs, where):
    if len(inputs.shape) != 4 or None in inputs.shape[1:]:
        raise ValueError(
            f"{where} expected a batch of images (batch, height, width, "
            f"channels) with known sizes. Received shape {inputs.shape}"
        )


def _central_box(height, width, ratio):
    """torchvision's fallback: the central crop at the closest allowed
    aspect ratio, as `(box_width, box_height)`."""
    image_ratio = width / height
    if image_ratio < ratio[0]:
        return width, int(round(width / ratio[0]))
    if image_ratio > ratio[1]:
        return int(round(height * ratio[1])), height
    return width, height
