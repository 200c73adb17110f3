"""PyTorch's default initialization, with Keras initializers.

`torch.nn.Linear` and `torch.nn.Conv2d` draw their kernel with
`kaiming_uniform_(a=sqrt(5))` and their bias from the same fan-in rule:
both are uniform on `[-1/sqrt(fan_in), 1/sqrt(fan_in)]`, with `fan_in`
the input channels times the kernel's spatial size. Keras counts fan-in the
same way, so `VarianceScaling(1/3, "fan_in", "uniform")` (limit
`sqrt(3 * scale / fan_in)`) is the same distribution for the kernel; the
bias needs its fan-in given, as Keras bias initializers see only the bias
shape. The reference leaves every layer at these defaults.
"""

import math

import keras
from keras import ops

from keras_tac.src import validation

# Keeps derived seeds in the range every backend accepts.
_SEED_MODULUS = validation.MAX_SEED + 1


def derived_seed(seed, index):
    """A distinct seed for the `index`-th layer built from `seed`."""
    return (int(seed) * 1009 + int(index) + 1) % _SEED_MODULUS


def kernel_initializer(seed):
    """PyTorch's default kernel initializer for Linear / Conv layers."""
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform", seed=seed
    )


def bias_initializer(fan_in, seed):
    """PyTorch's default bias initializer for a layer of this fan-in."""
    limit = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-limit, limit, seed=seed)


def initializer_arguments(fan_in, seed, index):
    """`kernel_initializer` and `bias_initializer` arguments of the
    `index`-th Dense or Conv layer of a network seeded with `seed`."""
    layer_seed = derived_seed(seed, 2 * index)
    return {
        "kernel_initializer": kernel_initializer(layer_seed),
        "bias_initializer": bias_initializer(
            fan_in, derived_seed(seed, 2 * index + 1)
        ),
    }


def reinitialize_dense(dense, seed, index):
    """Draws a built `Dense` layer's kernel and bias again, PyTorch's way."""
    fan_in = int(dense.kernel.shape[0])
    initializers = initializer_arguments(fan_in, seed, index)
    dense.kernel.assign(
        ops.cast(
            initializers["kernel_initializer"](dense.kernel.shape),
            dense.kernel.dtype,
        )
    )
    if dense.bias is not None:
        dense.bias.assign(
            ops.cast(
                initializers["bias_initializer"](dense.bias.shape),
                dense.bias.dtype,
            )
        )
