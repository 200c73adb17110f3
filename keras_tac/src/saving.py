"""Loading saved TAC models with clear errors for damaged files.

`keras.saving.load_model` reports a truncated `.keras` file as "File not
found", a flipped byte as a zip CRC error and a damaged weights file as an
HDF5 `OSError`, none of which says what went wrong. `load_model` here
checks the archive first and names the problem.
"""

import json
import os
import zipfile
import zlib

import keras

from keras_tac.src.api_export import keras_tac_export

# Members of a `.keras` archive (Keras 3's saving format).
CONFIG_FILE = "config.json"
WEIGHTS_FILES = ("model.weights.h5", "model.weights.npz")


@keras_tac_export("keras_tac.saving.load_model")
def load_model(filepath, compile=True, safe_mode=True):
    """Loads a model saved with `model.save("....keras")`.

    Like `keras.saving.load_model`, which it calls, but a missing,
    truncated or corrupted file is a clear error naming the file and the
    damage. Every keras-tac class is registered with Keras, so no
    `custom_objects` are needed; a model saved under one backend
    (TensorFlow, JAX or PyTorch) loads under any other.

    Args:
        filepath: str or `pathlib.Path`. A `.keras` file (other formats go
            straight to `keras.saving.load_model`).
        compile: bool. Restore the training configuration too. Defaults to
            `True`.
        safe_mode: bool. Refuse to deserialize lambdas. Defaults to `True`.

    Returns:
        The model, e.g. a `keras_tac.TACModel` with its codes, slices and
        rejection threshold.

    Raises:
        FileNotFoundError: no file at `filepath`.
        ValueError: the file is not a complete, intact `.keras` archive.

    Example:

    ```python
    tac.save("tac.keras")
    restored = keras_tac.saving.load_model("tac.keras")
    restored.threshold == tac.threshold  # True
    ```
    """
    path = os.fspath(filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Cannot load a model: no file at {path!r}. Expected a `.keras` "
            "file written by `model.save`."
        )
    if path.endswith(".keras"):
        if os.path.isdir(path):
            raise ValueError(
                f"Cannot load a model from {path!r}: expected a `.keras` "
                "file. Received a directory."
            )
        _check_archive(path)
    try:
        return keras.saving.load_model(
            path, compile=compile, safe_mode=safe_mode
        )
    except PermissionError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        # h5py reports a damaged weights file as an OSError.
        raise ValueError(
            f"Cannot load a model from {path!r}: its weights are truncated "
            f"or corrupted ({type(error).__name__}: {error}). Save the model "
            "again."
        ) from error


def _check_archive(path):
    size = os.path.getsize(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"Cannot load a model from {path!r}: expected a `.keras` (zip) "
            f"archive. Received {size} bytes that are not a complete zip "
            "archive: the file is truncated or corrupted."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
            names = archive.namelist()
            config = archive.read(CONFIG_FILE) if CONFIG_FILE in names else b""
    except Exception as error:
        # A damaged header can raise about anything here (BadZipFile,
        # NotImplementedError for a bogus compression method, ...).
        raise ValueError(
            f"Cannot load a model from {path!r}: the archive is corrupted "
            f"({type(error).__name__}: {error})."
        ) from error
    if damaged is not None:
        raise ValueError(
            f"Cannot load a model from {path!r}: the archive member "
            f"{damaged!r} is corrupted (checksum mismatch)."
        )
    if CONFIG_FILE not in names or not any(
        name in names for name in WEIGHTS_FILES
    ):
        raise ValueError(
            f"Cannot load a model from {path!r}: expected a `.keras` archive "
            f"holding {CONFIG_FILE!r} and one of {list(WEIGHTS_FILES)}. "
            f"Received members {names}"
        )
    try:
        json.loads(config)
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(
            f"Cannot load a model from {path!r}: its {CONFIG_FILE!r} is not "
            f"valid JSON ({error})."
        ) from error
