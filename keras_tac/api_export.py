"""One registration decorator for every public, serializable class."""

import keras

PACKAGE = "keras_tac"


def keras_tac_export(cls):
    """Registers `cls` with Keras so that saved models load without
    `custom_objects`; its registered name is `"keras_tac>ClassName"`."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)
