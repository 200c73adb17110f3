"""Loading saved TAC models with clear errors for damaged files.

`keras.saving.load_model` reports a truncated `.keras` file as "File not
found", a flipped byte as a zip CRC error and a damaged weights file as an
HDF5 `OSError`, none of which says what went wrong. `load_model` here
checks the archive first and names the problem.
"""

import copy
import json
import os
import tempfile
import zipfile
import zlib

import keras

from keras_tac.src.api_export import keras_tac_export

# Members of a `.keras` archive (Keras 3's saving format).
CONFIG_FILE = "config.json"
WEIGHTS_FILES = ("model.weights.h5", "model.weights.npz")
# Layout version of a saved `TACModel`: 1 = keras-tac 0.1.0 (no `TACHead`,
# written without a version), 2 = today's.
FORMAT_VERSION = 2


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
        if _needs_upgrade(path):
            with tempfile.TemporaryDirectory() as directory:
                upgraded = os.path.join(directory, "upgraded.keras")
                upgrade_file(path, upgraded)
                return _load(upgraded, path, compile, safe_mode)
    return _load(path, path, compile, safe_mode)


@keras_tac_export("keras_tac.saving.upgrade_file")
def upgrade_file(source, destination):
    """Rewrites a `.keras` file saved by keras-tac 0.1.0 in today's layout.

    keras-tac 0.1.0 kept the profile layers, the code matching and the
    temperature in the `TACModel` itself; they now live in its `TACHead`.
    The weights (and optimizer state) are moved to their new places, the
    configuration marked with the current layout version; nothing else
    changes. `load_model` does this on the fly; call this to convert a file
    once.

    Args:
        source: str or path-like, the old `.keras` file.
        destination: str or path-like, the new file (not `source`).

    Example:

    ```python
    keras_tac.saving.upgrade_file("old_tac.keras", "tac.keras")
    tac = keras.saving.load_model("tac.keras")
    ```
    """
    import h5py

    source, destination = os.fspath(source), os.fspath(destination)
    if not _needs_upgrade(source):
        raise ValueError(
            f"{source!r} holds no TACModel saved by keras-tac 0.1.0: "
            "nothing to upgrade."
        )
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members[CONFIG_FILE])
    config["config"]["format_version"] = FORMAT_VERSION
    members[CONFIG_FILE] = json.dumps(config).encode("utf-8")
    with tempfile.TemporaryDirectory() as directory:
        old_path = os.path.join(directory, "old.h5")
        new_path = os.path.join(directory, "new.h5")
        with open(old_path, "wb") as file:
            file.write(members[WEIGHTS_FILES[0]])
        with h5py.File(old_path, "r") as old, h5py.File(new_path, "w") as new:
            for key, value in old.attrs.items():
                new.attrs[key] = value
            for name in old:
                old.copy(old[name], new, name=name)
            _move_legacy_weights(new)
        with open(new_path, "rb") as file:
            members[WEIGHTS_FILES[0]] = file.read()
    with zipfile.ZipFile(destination, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _move_legacy_weights(weights):
    """keras-tac 0.1.0 weight paths -> today's, in an open HDF5 file."""
    temperature, threshold = weights["vars/0"], weights["vars/1"]
    del weights["vars"]
    weights.create_group("vars")
    weights.copy(threshold, weights["vars"], name="0")
    weights.create_group("head/vars")
    weights.copy(temperature, weights["head/vars"], name="0")
    weights.move("code_matching", "head/code_matching")
    weights.create_group("head/profile_layers")
    for name in list(weights["layers"]):
        if name.startswith("activation_profile"):
            weights.move(f"layers/{name}", f"head/profile_layers/{name}")


def _needs_upgrade(path):
    """Whether `path` holds a TACModel in keras-tac 0.1.0's layout."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if CONFIG_FILE not in names or WEIGHTS_FILES[0] not in names:
            return False
        config = json.loads(archive.read(CONFIG_FILE))
    return config.get(
        "registered_name"
    ) == "keras_tac>TACModel" and "format_version" not in config.get(
        "config", {}
    )


def _load(path, shown_path, compile, safe_mode):
    try:
        return keras.saving.load_model(
            path, compile=compile, safe_mode=safe_mode
        )
    except PermissionError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        # h5py reports a damaged weights file as an OSError.
        raise ValueError(
            f"Cannot load a model from {shown_path!r}: its weights are "
            f"truncated or corrupted ({type(error).__name__}: {error}). "
            "Save the model again."
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


def compile_config_with_backend(config):
    """A `TACModel`'s compile config, marked with the saving backend."""
    if config:
        config = dict(config, backend=keras.backend.backend())
    return config


def compile_from_config_across_backends(model, config):
    """Compiles `model` from a compile config saved on any backend."""
    config = dict(config)
    if config.pop("backend", None) != keras.backend.backend():
        # `jit_compile` is XLA on TensorFlow and JAX but torch.compile on
        # PyTorch: use the loading backend's default.
        config.pop("jit_compile", None)
    optimizer = config.pop("optimizer", None)
    if isinstance(optimizer, dict):
        # By class name (and registered name, for custom optimizers), not
        # module: a model saved under one backend records that backend's
        # optimizer module (e.g. torch_adam).
        optimizer = keras.optimizers.deserialize(
            {
                key: optimizer[key]
                for key in ("class_name", "config", "registered_name")
                if optimizer.get(key) is not None
            }
        )
    config = keras.saving.deserialize_keras_object(config)
    model.compile(optimizer=optimizer or "adam", **config)
    if hasattr(model, "optimizer") and model.built:
        model.optimizer.build(model.trainable_variables)


def tac_model_config(model):
    """The constructor arguments of a `TACModel` for its config: the flat
    arguments its head and loss were built from (what every saved version
    holds) and, with the combined confidence, that layer's own config."""
    head, loss = model.head, model.tac_loss
    config = {
        "base_model": keras.saving.serialize_keras_object(model.base_model),
        "tap_layers": list(model.tap_layers),
        "num_slices": head.num_slices,
        "projection": head.projection,
        "train_base": model.train_base,
        "seed": model.seed,
        "slicing": head.slicing,
        "reduction": head.reduction,
        "score": model.score,
        "temperature": head.initial_temperature,
        "trainable_temperature": head.trainable_temperature,
        "cross_entropy_weight": loss.cross_entropy_weight,
        "regression_weight": loss.regression_weight,
        "base_loss_weight": model.base_loss_weight,
        "code_noise": loss.code_noise,
        "mixup_alpha": model.mixup_alpha,
        "base_output": model.base_output,
        "format_version": FORMAT_VERSION,
    }
    if model.confidence_layer is not None:
        config["confidence"] = keras.saving.serialize_keras_object(
            model.confidence_layer
        )
    return config


def tac_model_arguments(config):
    """The constructor arguments of a `TACModel` from its config, with the
    base model deserialized (and its own optimizer built, so its saved
    state loads: Keras skips the state of an unbuilt optimizer)."""
    # Keras's deserialization consumes nested dicts: keep the caller's.
    config = copy.deepcopy(config)
    version = config.pop("format_version", 1)
    if version != FORMAT_VERSION:
        raise ValueError(
            f"This TACModel was saved by keras-tac 0.1.0 (layout version "
            f"{version}; this keras-tac reads version {FORMAT_VERSION}). "
            "Load the file with `keras_tac.saving.load_model(path)`, which "
            "converts it."
        )
    base_model = keras.saving.deserialize_keras_object(config["base_model"])
    optimizer = getattr(base_model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(base_model.trainable_variables)
    config["base_model"] = base_model
    if config.get("confidence") is not None:
        config["confidence"] = keras.saving.deserialize_keras_object(
            config["confidence"]
        )
    return config
