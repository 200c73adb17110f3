"""Cost of the conformal p-value in `predict_with_rejection` (issue 27).

    KERAS_BACKEND=jax python -m benchmarks.p_value_cost

The example CNN (`common.mnist_cnn`) in a default `TACModel`, calibrated on
4,096 inputs (a full reference of held-out confidences). Alternated in one
process, the graph model `predict_with_rejection` runs with and without
its `p_value` output, on the same 4,096 inputs in batches of 256; prints
the median of the paired ratios. No figure here is asserted by a test.
"""

import time

import keras
import numpy as np

import keras_tac
from benchmarks import common
from keras_tac.src import rejection

REPEATS = 7
KEYS = [
    "prediction",
    "confidence",
    "tac_prediction",
    "tac_confidence",
    "input_is_finite",
]


def main():
    base = common.mnist_cnn()
    tac = keras_tac.TACModel(base)
    rng = np.random.default_rng(0)
    x = rng.random((4096, *base.input_shape[1:])).astype("float32")
    tac.fit_statistics(x[:512], rng.integers(0, 10, 512), verbose=0)
    tac.calibrate(x, verbose=0)
    variants = (KEYS, [*KEYS, "p_value"])
    for keys in variants:  # compile both first
        rejection.predict_outputs(tac, x, keys, 256, 0)
    ratios = []
    for _ in range(REPEATS):
        seconds = []
        for keys in variants:
            start = time.perf_counter()
            rejection.predict_outputs(tac, x, keys, 256, 0)
            seconds.append(time.perf_counter() - start)
        ratios.append(seconds[1] / seconds[0])
    print(
        f"{keras.backend.backend()}: predict_with_rejection's graph with "
        f"p_value / without: {np.median(ratios):.3f}x (median of "
        f"{REPEATS}; {', '.join(f'{r:.3f}' for r in ratios)})"
    )


if __name__ == "__main__":
    main()
