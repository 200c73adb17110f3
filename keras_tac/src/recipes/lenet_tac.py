import keras

from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.recipes import torch_init

# Channels of the four convolutions (reference src/TAC.py:146-149).
LENET_TAC_FILTERS = (64, 128, 256, 512)
# `torch.nn.functional.leaky_relu`'s default slope, used by the reference
# (src/TAC.py:155-165); Keras's `LeakyReLU` defaults to 0.3.
LEAKY_RELU_SLOPE = 0.01
# The tapped layers: the output of each LeakyReLU (src/TAC.py:167).
LENET_TAC_TAPS = tuple(
    f"leaky_relu_{index}" for index in range(1, len(LENET_TAC_FILTERS) + 1)
)


@keras_tac_export("keras_tac.recipes.lenet_tac")
def lenet_tac(num_classes=10, input_shape=(28, 28, 1), seed=0, name=None):
    """The reference's MNIST base network, LeNet_TAC, untrained.

    Four unpadded 3x3 convolutions (64, 128, 256 and 512 channels, stride
    1, with bias), each followed by a LeakyReLU of slope 0.01; no pooling,
    normalization or dropout between them. The classification head is one
    `Dense(num_classes)` (logits) on the global average of the last
    LeakyReLU's output. On 28x28 inputs the feature maps are 26, 24, 22 and
    20 pixels wide. Kernels and biases are initialized as PyTorch's
    defaults (uniform on `+-1/sqrt(fan_in)`), as in the reference.

    The layers are named `conv_1` ... `conv_4`, `leaky_relu_1` ...
    `leaky_relu_4` (the TAC taps, `LENET_TAC_TAPS`), `pool` and `logits`.

    Args:
        num_classes: int, at least 2. Defaults to `10`.
        input_shape: tuple `(height, width, channels)`, channels last. The
            reference's is `(28, 28, 1)`, values in `[0, 1]`. Defaults to
            `(28, 28, 1)`.
        seed: int. Seed of the initializers. Defaults to `0`.
        name: str or `None`. The model's name. Defaults to `"lenet_tac"`.

    Returns:
        A functional `keras.Model` from images to logits.

    Example:

    >>> model = lenet_tac(num_classes=10)
    >>> model.output.shape, model.count_params()
    ((None, 10), 1554954)

    Reference:
        ServiceNow/tac, `src/TAC.py` (`LeNet_TAC`) and `src/models.py`
        (`classification_head`).
    """
    validation.check_positive_int("num_classes", num_classes)
    seed = validation.check_seed(seed)
    inputs = keras.Input(tuple(input_shape), name="image")
    outputs = inputs
    channels = int(input_shape[-1])
    for index, filters in enumerate(LENET_TAC_FILTERS):
        outputs = keras.layers.Conv2D(
            filters,
            3,
            padding="valid",
            name=f"conv_{index + 1}",
            **torch_init.initializer_arguments(9 * channels, seed, index),
        )(outputs)
        outputs = keras.layers.LeakyReLU(
            negative_slope=LEAKY_RELU_SLOPE, name=f"leaky_relu_{index + 1}"
        )(outputs)
        channels = filters
    outputs = keras.layers.GlobalAveragePooling2D(name="pool")(outputs)
    outputs = keras.layers.Dense(
        num_classes,
        name="logits",
        **torch_init.initializer_arguments(
            channels, seed, len(LENET_TAC_FILTERS)
        ),
    )(outputs)
    return keras.Model(inputs, outputs, name=name or "lenet_tac")
