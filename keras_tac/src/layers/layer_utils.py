"""Helpers shared by the layers of this package (not public API)."""


def constant_weight(layer, name, value, dtype):
    """Adds to `layer` a non-trainable weight `name` holding the NumPy
    array `value`, so that it is saved and exported with the layer.

    Args:
        layer: the `keras.layers.Layer` that owns the weight.
        name: str. The weight's name (part of saved files: keep it).
        value: NumPy array. The weight's shape and value.
        dtype: str. The weight's dtype.

    Returns:
        The new `keras.Variable`.
    """
    weight = layer.add_weight(
        name=name,
        shape=value.shape,
        dtype=dtype,
        initializer="zeros",
        trainable=False,
    )
    weight.assign(value.astype(dtype))
    return weight


def config_with(config, layer, names):
    """`config` (a base layer config) updated with the attributes `names`
    of `layer`, in that order, under the same names; returns `config`."""
    config.update({name: getattr(layer, name) for name in names})
    return config
