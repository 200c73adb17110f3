"""The public API, named where each public symbol is defined.

`keras_tac_export("keras_tac.layers.TACHead")` records the public path of a
class or function (the public modules under `keras_tac/` import exactly
these; `tests/test_api.py` checks that the two agree) and registers Keras
objects (layers, models, losses, metrics, optimizers) for serialization under
`"keras_tac>ClassName"`, so saved models load without `custom_objects`.

This module imports Keras only to register a class that is already a Keras
object, so NumPy-only modules (`codes`, `metrics`, `thresholds`) can use
the decorator without loading a backend.
"""

import sys

PACKAGE = "keras_tac"

# Public path -> symbol, filled as the implementation modules are imported.
EXPORTS = {}


class keras_tac_export:
    """Decorator: exports a class or function under one or more public
    paths (`"keras_tac.X"` or `"keras_tac.module.X"`).

    Args:
        path: str or list of str. The public path(s).
    """

    def __init__(self, path):
        self.paths = [path] if isinstance(path, str) else list(path)
        for path in self.paths:
            if not path.startswith(f"{PACKAGE}."):
                raise ValueError(
                    f"Invalid public path {path!r}: expected a path under "
                    f"{PACKAGE!r}."
                )

    def __call__(self, symbol):
        for path in self.paths:
            EXPORTS[path] = symbol
        if _is_keras_object(symbol):
            import keras

            keras.saving.register_keras_serializable(
                package=PACKAGE, name=symbol.__name__
            )(symbol)
        return symbol


def _is_keras_object(symbol):
    keras = sys.modules.get("keras")
    if keras is None or not isinstance(symbol, type):
        return False
    return issubclass(
        symbol,
        (
            keras.layers.Layer,
            keras.losses.Loss,
            keras.metrics.Metric,
            keras.optimizers.Optimizer,
        ),
    )
