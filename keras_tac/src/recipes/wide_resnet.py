import keras

from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.recipes import torch_init

# PyTorch's BatchNorm2d(momentum=0.1) updates the running statistics as
# `0.9 * old + 0.1 * batch`, which is Keras's `momentum=0.9`; its epsilon
# is PyTorch's default (Keras's is 1e-3).
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5
# The tapped layers: the residual sum that ends each group of blocks.
WIDE_RESNET_TAPS = ("group_1_output", "group_2_output", "group_3_output")


@keras_tac_export("keras_tac.recipes.wide_resnet")
def wide_resnet(
    num_classes=10,
    input_shape=(32, 32, 3),
    depth=28,
    width_multiplier=10,
    dropout_rate=0.3,
    seed=0,
    name=None,
):
    """The reference's CIFAR-10 base network, a Wide ResNet, untrained.

    As the reference's `Wide_ResNet_TAC` (WRN-28-10 by default): a 3x3 stem
    convolution to 16 channels followed by BatchNorm and ReLU, then three
    groups of `(depth - 4) / 6` pre-activation blocks of widths
    `16 * width_multiplier`, `32 * width_multiplier` and
    `64 * width_multiplier` (160, 320, 640), the first block of the second
    and third groups striding by 2. A block computes

    ```
    BN -> ReLU -> Conv3x3 -> Dropout -> BN -> ReLU -> Conv3x3 (stride s)
    ```

    and adds a shortcut: the input, or a 1x1 convolution (stride `s`) when
    the stride or the width changes. There is no activation after the sum
    and no BatchNorm-ReLU after the last group: the head is one
    `Dense(num_classes)` (logits) on the global average of the last group's
    raw output. All convolutions have a bias, as in the reference; strided
    3x3 convolutions pad one pixel on every side, as PyTorch's `padding=1`
    (Keras's `"same"` would pad only after). BatchNorm uses momentum 0.9
    (PyTorch's 0.1) and epsilon 1e-5. Kernels and biases are initialized as
    PyTorch's defaults.

    The group outputs, the TAC taps, are the layers `group_1_output`,
    `group_2_output` and `group_3_output` (`WIDE_RESNET_TAPS`); the head is
    `pool` then `logits`.

    Args:
        num_classes: int, at least 2. Defaults to `10`.
        input_shape: tuple `(height, width, channels)`, channels last.
            Defaults to `(32, 32, 3)`.
        depth: int of the form `6 n + 4`. Defaults to `28`.
        width_multiplier: int. Defaults to `10`.
        dropout_rate: float in `[0, 1)`, between the two convolutions of a
            block. Defaults to `0.3`.
        seed: int. Seed of the initializers and dropout. Defaults to `0`.
        name: str or `None`. The model's name. Defaults to
            `"wide_resnet_{depth}_{width_multiplier}"`.

    Returns:
        A functional `keras.Model` from images to logits.

    Example:

    >>> model = wide_resnet(depth=10, width_multiplier=1)
    >>> [model.get_layer(tap).output.shape[1:] for tap in WIDE_RESNET_TAPS]
    [(32, 32, 16), (16, 16, 32), (8, 8, 64)]

    Reference:
        ServiceNow/tac, `src/TAC.py` (`WideBasic`, `Wide_ResNet_TAC`),
        adapted there from Zagoruyko and Komodakis, "Wide Residual
        Networks", 2016.
    """
    validation.check_positive_int("num_classes", num_classes)
    validation.check_positive_int("width_multiplier", width_multiplier)
    validation.check_number("dropout_rate", dropout_rate, 0.0, 1.0)
    if (
        isinstance(depth, bool)
        or not isinstance(depth, int)
        or depth < 10
        or (depth - 4) % 6
    ):
        raise ValueError(
            "Invalid `depth`: expected an int of the form 6 n + 4 with "
            f"n >= 1 (10, 16, 22, 28, ...). Received: depth={depth!r}"
        )
    seed = validation.check_seed(seed)
    builder = _Builder(seed, dropout_rate)
    inputs = keras.Input(tuple(input_shape), name="image")
    outputs = builder.conv(inputs, 16, 3, 1, "stem_conv")
    outputs = builder.batch_norm(outputs, "stem_bn")
    outputs = keras.layers.ReLU(name="stem_relu")(outputs)
    blocks_per_group = (depth - 4) // 6
    widths = [16 * width_multiplier * 2**group for group in range(3)]
    for group, (width, stride) in enumerate(zip(widths, (1, 2, 2)), 1):
        for block in range(1, blocks_per_group + 1):
            outputs = builder.block(
                outputs,
                width,
                stride if block == 1 else 1,
                f"group_{group}_block_{block}",
                f"group_{group}_output" if block == blocks_per_group else None,
            )
    outputs = keras.layers.GlobalAveragePooling2D(name="pool")(outputs)
    outputs = builder.dense(outputs, num_classes, "logits")
    return keras.Model(
        inputs,
        outputs,
        name=name or f"wide_resnet_{depth}_{width_multiplier}",
    )


class _Builder:
    """Builds layers with PyTorch's default initialization, each seeded
    by its position in the network."""

    def __init__(self, seed, dropout_rate):
        self.seed = seed
        self.dropout_rate = float(dropout_rate)
        self.index = 0

    def _initializers(self, fan_in):
        arguments = torch_init.initializer_arguments(
            fan_in, self.seed, self.index
        )
        self.index += 1
        return arguments

    def conv(self, inputs, filters, size, stride, name):
        channels = int(inputs.shape[-1])
        if stride != 1 and size > 1:
            # PyTorch's padding=1 pads both sides; "same" would pad only
            # the bottom and right of an even-sized input.
            inputs = keras.layers.ZeroPadding2D(size // 2, name=f"{name}_pad")(
                inputs
            )
            padding = "valid"
        else:
            padding = "same" if size > 1 else "valid"
        return keras.layers.Conv2D(
            filters,
            size,
            strides=stride,
            padding=padding,
            name=name,
            **self._initializers(size * size * channels),
        )(inputs)

    def dense(self, inputs, units, name):
        return keras.layers.Dense(
            units, name=name, **self._initializers(int(inputs.shape[-1]))
        )(inputs)

    def batch_norm(self, inputs, name):
        return keras.layers.BatchNormalization(
            momentum=BATCH_NORM_MOMENTUM,
            epsilon=BATCH_NORM_EPSILON,
            name=name,
        )(inputs)

    def block(self, inputs, width, stride, name, output_name=None):
        outputs = self.batch_norm(inputs, f"{name}_bn_1")
        outputs = keras.layers.ReLU(name=f"{name}_relu_1")(outputs)
        outputs = self.conv(outputs, width, 3, 1, f"{name}_conv_1")
        if self.dropout_rate:
            outputs = keras.layers.Dropout(
                self.dropout_rate,
                seed=torch_init.derived_seed(self.seed, self.index),
                name=f"{name}_dropout",
            )(outputs)
        outputs = self.batch_norm(outputs, f"{name}_bn_2")
        outputs = keras.layers.ReLU(name=f"{name}_relu_2")(outputs)
        outputs = self.conv(outputs, width, 3, stride, f"{name}_conv_2")
        shortcut = inputs
        if stride != 1 or int(inputs.shape[-1]) != width:
            shortcut = self.conv(inputs, width, 1, stride, f"{name}_shortcut")
        return keras.layers.Add(name=output_name or f"{name}_add")(
            [outputs, shortcut]
        )
