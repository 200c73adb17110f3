"""Imports of optional dependencies, with an error naming the extra to
install (`pip install keras-tac[EXTRA]`) when one is missing."""

import importlib


def require(module, extra, feature):
    """Imports `module` for `feature`, or raises an `ImportError` that names
    the `extra` providing it.

    Args:
        module: str, e.g. `"tensorflow_datasets"`.
        extra: str, the keras-tac extra that installs it, e.g. `"data"`.
        feature: str, what needs it, for the message.

    Returns:
        The module.

    Example:

    >>> require("json", "data", "reading JSON").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{feature} needs `{module}`, which is not installed. Install it "
            f'with `pip install "keras-tac[{extra}]"`.'
        ) from error
