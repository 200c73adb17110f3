"""The on-disk feature cache of `TACModel.fit`: a directory of raw arrays
read through memory maps, checked against the model and the data before
it is reused.

A cache directory holds one sub-directory per part (`train`,
`validation`). Each part holds one raw file per array (the base output,
each pooled tap, the labels and sample weights a dataset gave) and a
`manifest.json` written last, by an atomic rename, once every file is
complete. The manifest records:

- the model fingerprint: the tap layers, the weights of the base (the
  taps and the cached base output depend on them), the shapes and dtypes
  of the taps, the dtype policy, the backend and the TAC head's
  configuration;
- the data fingerprint: a hash of the inputs, labels and sample weights,
  in order, and the number of samples;
- the shape, dtype and hash of every array file.

A part is reused only when all three match; anything else (no manifest,
as after an interrupted write; another model; other data; a file of the
wrong size or content) rebuilds it. Writes go one batch at a time and
reads through `np.memmap`, so memory stays bounded whatever the number of
samples.
"""

import hashlib
import json
import os
import shutil

import keras
import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Rows hashed at a time when fingerprinting arrays (bounded memory).
_HASH_ROWS = 4096
# Bytes read at a time when checking a file's hash.
_READ_BYTES = 1 << 22


def model_fingerprint(model):
    """A hex digest of everything in `model` the cached features depend on.

    Args:
        model: a `keras_tac.TACModel`.

    Returns:
        str.
    """
    digest = hashlib.blake2b(digest_size=20)
    head_config = dict(model.head.get_config())
    head_config.pop("name", None)
    description = {
        "format": FORMAT_VERSION,
        "backend": keras.backend.backend(),
        "tap_layers": list(model.tap_layers),
        "dtype_policy": str(getattr(model.base_model.dtype_policy, "name", "")),
        "taps": [
            [list(tensor.shape[1:]), str(tensor.dtype)]
            for tensor in keras.tree.flatten(model.tap_model.outputs)
        ],
        "head": head_config,
    }
    digest.update(json.dumps(description, sort_keys=True, default=str).encode())
    for weight in model.base_model.weights:
        _update(digest, keras.ops.convert_to_numpy(weight))
    return digest.hexdigest()


class DataFingerprint:
    """A running hash of a stream of batches (inputs, labels, weights)."""

    def __init__(self):
        self.digest = hashlib.blake2b(digest_size=20)
        self.num_samples = 0

    def update(self, inputs, labels=None, sample_weight=None):
        leaves = keras.tree.flatten(inputs)
        self.num_samples += int(np.shape(leaves[0])[0])
        for part in (leaves, labels, sample_weight):
            if part is None:
                self.digest.update(b"none")
                continue
            for leaf in keras.tree.flatten(part):
                _update(self.digest, np.asarray(leaf))

    def hexdigest(self):
        return f"{self.num_samples}:{self.digest.hexdigest()}"


def array_fingerprint(x, y=None, sample_weight=None):
    """The `DataFingerprint` of arrays, hashed `_HASH_ROWS` rows at a time
    (never the whole arrays at once)."""
    fingerprint = DataFingerprint()
    num_samples = int(np.shape(keras.tree.flatten(x)[0])[0])
    for start in range(0, num_samples, _HASH_ROWS):
        rows = slice(start, start + _HASH_ROWS)
        fingerprint.update(
            keras.tree.map_structure(lambda a, rows=rows: a[rows], x),
            None if y is None else np.asarray(y)[rows],
            None if sample_weight is None else np.asarray(sample_weight)[rows],
        )
    return fingerprint


def _update(digest, array):
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{array.shape[1:]}".encode())
    digest.update(memoryview(array.reshape(-1).view(np.uint8)))


class PartWriter:
    """Writes the arrays of one part, a batch at a time, then its manifest.

    Args:
        directory: the part's directory (created; an old manifest is
            removed first, so an interrupted write is never read back).
    """

    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        manifest = os.path.join(directory, MANIFEST)
        if os.path.exists(manifest):
            os.remove(manifest)
        self.directory = directory
        self.files = {}
        self.specs = {}

    def append(self, arrays):
        """Appends a batch: a dict of arrays with the same number of rows."""
        for key, value in arrays.items():
            value = np.ascontiguousarray(value)
            if key not in self.files:
                self.files[key] = open(self._path(key), "wb")
                self.specs[key] = {
                    "dtype": value.dtype.str,
                    "shape": [0, *value.shape[1:]],
                    "digest": hashlib.blake2b(digest_size=20),
                }
            spec = self.specs[key]
            if list(value.shape[1:]) != spec["shape"][1:]:
                raise ValueError(
                    f"Batches of `{key}` changed shape: expected "
                    f"(batch, *{tuple(spec['shape'][1:])}). Received: "
                    f"{value.shape}"
                )
            value = value.astype(spec["dtype"], copy=False)
            buffer = memoryview(value.reshape(-1).view(np.uint8))
            self.files[key].write(buffer)
            spec["digest"].update(buffer)
            spec["shape"][0] += int(value.shape[0])

    def finish(self, fingerprints):
        """Closes the files and writes the manifest (last, atomically)."""
        for handle in self.files.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        manifest = dict(fingerprints)
        manifest["format"] = FORMAT_VERSION
        manifest["arrays"] = {
            key: {
                "dtype": spec["dtype"],
                "shape": spec["shape"],
                "digest": spec["digest"].hexdigest(),
            }
            for key, spec in self.specs.items()
        }
        temporary = os.path.join(self.directory, MANIFEST + ".tmp")
        with open(temporary, "w") as handle:
            json.dump(manifest, handle)
        os.replace(temporary, os.path.join(self.directory, MANIFEST))

    def abort(self):
        for handle in self.files.values():
            handle.close()

    def _path(self, key):
        return os.path.join(self.directory, f"{key}.bin")


def read_manifest(directory):
    """The manifest of a part, or `None` when missing or unreadable."""
    try:
        with open(os.path.join(directory, MANIFEST)) as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != (
        FORMAT_VERSION
    ):
        return None
    return manifest


def mismatch(manifest, model_digest, data_digest=None):
    """Why a part's manifest does not match, or `None` when it does.

    `data_digest=None` checks the model only."""
    if manifest is None:
        return "no complete cache there (absent, or an interrupted write)"
    if manifest.get("model") != model_digest:
        return (
            "the model changed (tap layers, base weights, tap shapes or "
            "dtypes, or the TAC head's configuration)"
        )
    if data_digest is not None and manifest.get("data") != data_digest:
        return "the data changed (number of samples, inputs or labels)"
    return None


def open_arrays(directory, manifest):
    """The arrays of a part as read-only memmaps, or `None` when a file is
    missing, of the wrong size or of the wrong content."""
    arrays = {}
    for key, spec in manifest.get("arrays", {}).items():
        path = os.path.join(directory, f"{key}.bin")
        dtype = np.dtype(spec["dtype"])
        shape = tuple(spec["shape"])
        expected = int(np.prod(shape)) * dtype.itemsize
        if not os.path.exists(path) or os.path.getsize(path) != expected:
            return None
        if _file_digest(path) != spec["digest"]:
            return None
        if expected == 0:
            arrays[key] = np.empty(shape, dtype)
        else:
            arrays[key] = np.memmap(path, dtype=dtype, mode="r", shape=shape)
    return arrays


def _file_digest(path):
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def remove(directory):
    shutil.rmtree(directory, ignore_errors=True)
