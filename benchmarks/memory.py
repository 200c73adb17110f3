"""Peak memory of the streaming operations, in a fresh process.

Builds the example model, compiles every operation on a few samples, then
runs each on `--num-samples` random inputs while a thread samples the
resident set size (RSS). Prints one JSON line:

    KERAS_BACKEND=jax python -m benchmarks.memory --num-samples 5000

The suite runs it at N and 10N samples; streaming means the peak grows by
little more than the inputs themselves.
"""

import argparse
import gc
import json

import keras
import numpy as np

from benchmarks import common
from keras_tac import TACModel

BATCH_SIZE = 256


def _operations(tac, x, y):
    operations = {
        "evaluate": lambda: tac.evaluate(
            x, y, batch_size=BATCH_SIZE, verbose=0
        ),
        "calibrate": lambda: tac.calibrate(
            x, y, batch_size=BATCH_SIZE, verbose=0
        ),
        "predict_with_rejection": lambda: tac.predict_with_rejection(
            x, batch_size=BATCH_SIZE, verbose=0
        ),
    }
    try:
        from keras_tac import scores
    except ImportError:
        return operations
    scorers = [s for s in scores.default_scorers(tac) if s.needs_fit]
    operations["fit_scorers"] = lambda: scores.fit_scorers(
        tac, x, y, scorers, batch_size=BATCH_SIZE, verbose=0
    )
    return operations


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-samples", type=int, required=True)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    tac = TACModel(common.mnist_cnn())
    tac.compile(optimizer="sgd")
    rng = np.random.default_rng(0)
    warm_x = rng.random((300, 28, 28, 1), dtype=np.float32)
    warm_y = rng.integers(0, 10, 300).astype(np.int32)
    # Compile every function first, so that the probes see steady state.
    for operation in _operations(tac, warm_x, warm_y).values():
        operation()
    x = rng.random((args.num_samples, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, args.num_samples).astype(np.int32)
    report = {
        "num_samples": args.num_samples,
        "inputs_mb": (x.nbytes + y.nbytes) / 2**20,
        "operations": {},
    }
    for name, operation in _operations(tac, x, y).items():
        gc.collect()
        try:
            with common.PeakRSS() as probe:
                operation()
        except Exception as error:  # A scorer API still changing.
            report["operations"][name] = {"skipped": repr(error)[:200]}
            continue
        report["operations"][name] = {
            "before_mb": probe.before / 2**20,
            "peak_mb": probe.peak / 2**20,
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
