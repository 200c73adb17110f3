"""Helpers of the reliability tests, and a worker for other backends.

Imported by the tests: `trained_tac` (one trained, calibrated TAC model per
test process, shared read-only by the modules that need one),
`model_outputs` and `codes_and_slices`.

Run as a script under another backend, it answers for that backend:

    KERAS_BACKEND=jax python tests/backend_worker.py WORKDIR

loads `WORKDIR/reference.keras` (saved by the test under its own backend),
writes what the loaded model computes on `WORKDIR/inputs.npy` to
`WORKDIR/result_<backend>.npz`, adds the codes and slice indices of fresh
models built with the seeds of `WORKDIR/request.json`, and saves the loaded
model again as `WORKDIR/saved_by_<backend>.keras` for the test to load.
"""

import json
import os
import sys

import keras
import numpy as np
from keras import ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import make_cnn  # noqa: E402

import keras_tac  # noqa: E402

# Outputs of `TACModel.predict` compared across backends.
FLOAT_OUTPUTS = (
    "base_output",
    "profile",
    "distances",
    "confidence",
    "tac_confidence",
)
INT_OUTPUTS = ("prediction", "tac_prediction", "input_is_finite")

_TRAINED = {}


def trained_tac(base_weights, digits):
    """A TAC model on the shared trained CNN: random slicing, seed 3, two
    epochs, calibrated to 90% coverage on the first 200 test digits (the
    rest stay unseen). Built once per process; callers must not change it.
    """
    if "tac" not in _TRAINED:
        keras.utils.set_random_seed(0)
        (x, y), (x_test, y_test) = digits
        base = make_cnn()
        base.set_weights(base_weights)
        tac = keras_tac.TACModel(base, slicing="random", seed=3)
        tac.compile(optimizer=keras.optimizers.Adam(1e-2))
        tac.fit(x, y, epochs=2, batch_size=64, verbose=0)
        tac.calibrate(x_test[:200], y_test[:200], verbose=0)
        _TRAINED["tac"] = tac
    return _TRAINED["tac"]


def slice_indices_of(tac):
    """The slice indices of each tap, as NumPy arrays."""
    return [
        np.asarray(ops.convert_to_numpy(layer.slice_reduce.indices))
        for layer in tac.head.profile_layers
    ]


def model_outputs(tac, x):
    """Everything a saved model must reproduce, as NumPy arrays."""
    outputs = tac.predict(x, verbose=0)
    result = {key: outputs[key] for key in FLOAT_OUTPUTS + INT_OUTPUTS}
    result["accepted"] = tac.predict_with_rejection(x, verbose=0)["accepted"]
    result["threshold"] = np.float64(
        np.nan if tac.threshold is None else tac.threshold
    )
    result["codes"] = tac.codes
    for index, indices in enumerate(slice_indices_of(tac)):
        result[f"slices_{index}"] = indices
    for index, weight in enumerate(tac.weights):
        result[f"weight_{index}"] = np.asarray(ops.convert_to_numpy(weight))
    return result


def codes_and_slices(seed):
    """Codes and random slice indices of a fresh TAC model on `make_cnn`."""
    tac = keras_tac.TACModel(make_cnn(), slicing="random", seed=seed)
    result = {"codes": tac.codes}
    for index, indices in enumerate(slice_indices_of(tac)):
        result[f"slices_{index}"] = indices
    return result


def main(workdir):
    backend = keras.backend.backend()
    with open(os.path.join(workdir, "request.json")) as file:
        request = json.load(file)
    x = np.load(os.path.join(workdir, "inputs.npy"))
    restored = keras_tac.saving.load_model(
        os.path.join(workdir, "reference.keras")
    )
    result = model_outputs(restored, x)
    result["compiled"] = np.bool_(restored.compiled)
    fresh = keras_tac.TACModel(make_cnn())
    fresh.compile()
    # `jit_compile` follows the loading backend, not the saving one.
    result["default_jit_compile"] = np.bool_(
        restored.jit_compile == fresh.jit_compile
    )
    result["optimizer"] = np.str_(type(restored.optimizer).__name__)
    for seed in request["seeds"]:
        for key, value in codes_and_slices(seed).items():
            result[f"seed_{seed}_{key}"] = value
    restored.save(os.path.join(workdir, f"saved_by_{backend}.keras"))
    np.savez(os.path.join(workdir, f"result_{backend}.npz"), **result)


if __name__ == "__main__":
    main(sys.argv[1])
