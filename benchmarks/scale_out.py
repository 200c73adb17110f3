"""Scale-out benchmark (issue 18): the disk feature cache's memory, and
add-on training on 1 against 2 devices.

    KERAS_BACKEND=jax python -m benchmarks.scale_out            # both
    KERAS_BACKEND=tensorflow python -m benchmarks.scale_out --figures memory
    python -m benchmarks.scale_out --sizes 2000,20000 --figures memory

Memory: the peak resident set size (RSS, sampled every millisecond in a
thread) of an add-on `TACModel.fit(..., feature_cache_dir=...)`, one epoch,
on synthetic 28x28 images made batch by batch by a `keras.utils.PyDataset`
(no array of all samples exists), each size in a fresh process (the child
`memory` command). Target: the peak at the large size at most 25% above
the peak at the small one.

Devices: seconds per epoch of add-on training on cached features, on one
device and data-parallel on two, in one process (the child `devices`
command), the two alternated and each the median of its epochs after the
first (which compiles): JAX on two host devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=2`, one device = no
distribution set), TensorFlow on two logical CPU devices under a
`tf.distribute.MirroredStrategy` (one device = no strategy); with
`--device-kind gpu`, every GPU of the machine instead
(`benchmarks/gpu/scale_out.sh`). PyTorch has no distribution API in Keras
and is not timed.

Prints a table and writes `benchmarks/results/scale_out_<backend>.json`
(with the machine and the load average).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
BATCH_SIZE = 512
MEMORY_TARGET = 1.25
DEVICE_SAMPLES = 20_000


def _small_cnn():
    """A tiny CNN base on 28x28x1 images (the memory figure is about the
    cache, not the base): two strided convolutions, pooled, a Dense."""
    import keras

    init = keras.initializers.GlorotUniform
    inputs = keras.Input((28, 28, 1), name="image")
    h = keras.layers.Conv2D(
        16, 3, strides=2, activation="relu", name="conv_1",
        kernel_initializer=init(0),
    )(inputs)  # fmt: skip
    h = keras.layers.Conv2D(
        32, 3, strides=2, activation="relu", name="conv_2",
        kernel_initializer=init(1),
    )(h)  # fmt: skip
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    h = keras.layers.Dense(
        64, activation="relu", name="features", kernel_initializer=init(2)
    )(h)
    outputs = keras.layers.Dense(10, name="logits", kernel_initializer=init(3))(
        h
    )
    return keras.Model(inputs, outputs, name="small_cnn")


def _tac():
    import keras

    from keras_tac import TACModel

    keras.utils.set_random_seed(0)
    tac = TACModel(
        _small_cnn(), tap_layers=["conv_1", "conv_2", "features"], seed=0
    )
    tac.compile(optimizer=keras.optimizers.Adam(1e-3))
    return tac


def synthetic_batches(num_samples, batch_size=BATCH_SIZE):
    """A `PyDataset` of `num_samples` synthetic images and labels, each
    batch drawn from a generator seeded by its index (the same batches at
    every pass, none kept)."""
    import keras
    import numpy as np

    class Synthetic(keras.utils.PyDataset):
        def __len__(self):
            return -(-num_samples // batch_size)

        def __getitem__(self, index):
            size = min(batch_size, num_samples - index * batch_size)
            rng = np.random.default_rng(index)
            x = rng.random((size, 28, 28, 1), dtype=np.float32)
            y = rng.integers(0, 10, size).astype(np.int32)
            return x, y

    return Synthetic()


def memory_child(num_samples):
    """One process, one size: the peak RSS of a disk-cached add-on fit."""
    import gc
    import warnings

    # Random labels: TAC learns nothing, and says so; not the point here.
    warnings.filterwarnings("ignore", message=".*TAC learned little")

    from benchmarks import common

    tac = _tac()
    with tempfile.TemporaryDirectory() as directory:
        # Compiles every function on a small dataset first.
        tac.fit(
            synthetic_batches(2 * BATCH_SIZE),
            epochs=1,
            verbose=0,
            feature_cache_dir=os.path.join(directory, "warm"),
        )
        gc.collect()
        start = time.perf_counter()
        with common.PeakRSS() as probe:
            tac.fit(
                synthetic_batches(num_samples),
                epochs=1,
                verbose=0,
                feature_cache_dir=os.path.join(directory, "cache"),
            )
        seconds = time.perf_counter() - start
        cache_bytes = sum(
            os.path.getsize(os.path.join(root, name))
            for root, _, names in os.walk(os.path.join(directory, "cache"))
            for name in names
        )
    return {
        "num_samples": num_samples,
        "before_mb": probe.before / 2**20,
        "peak_mb": probe.peak / 2**20,
        "peak_anonymous_mb": probe.peak_anonymous / 2**20,
        "inputs_mb_if_held": num_samples * 28 * 28 * 4 / 2**20,
        "cache_mb_on_disk": cache_bytes / 2**20,
        "seconds": seconds,
    }


def devices_child(num_samples, epochs, repeats, device_kind="cpu"):
    """One process: seconds per epoch on 1 device and data-parallel on all
    (2 CPU devices, or every GPU), alternated."""
    import warnings

    import keras
    import numpy as np

    warnings.filterwarnings("ignore", message=".*TAC learned little")
    backend = keras.backend.backend()
    rng = np.random.default_rng(0)
    x = rng.random((num_samples, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, num_samples).astype(np.int32)
    if backend == "tensorflow":
        import tensorflow as tf

        kind = device_kind.upper()
        logical = [d.name for d in tf.config.list_logical_devices(kind)]
        strategy = tf.distribute.MirroredStrategy(logical)
        num_devices_all = len(logical)
    else:
        import jax

        num_devices_all = len(jax.devices())

    class EpochTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    def run(num_devices):
        scope = None
        if num_devices > 1 and backend == "jax":
            keras.distribution.set_distribution(
                keras.distribution.DataParallel()
            )
        elif num_devices > 1:
            scope = strategy.scope()
        try:
            if scope is not None:
                with scope:
                    tac = _tac()
            else:
                tac = _tac()
            timer = EpochTimes()
            tac.fit(
                x,
                y,
                epochs=epochs,
                batch_size=256,
                cache_features=True,
                callbacks=[timer],
                verbose=0,
            )
        finally:
            if backend == "jax":
                keras.distribution.set_distribution(None)
        # The first epoch compiles the step.
        return float(np.median(timer.times[1:]))

    times = {1: [], num_devices_all: []}
    for _ in range(repeats):
        for num_devices in times:
            times[num_devices].append(run(num_devices))
    one = float(np.median(times[1]))
    many = float(np.median(times[num_devices_all]))
    return {
        "device_kind": device_kind,
        "num_devices": num_devices_all,
        "num_samples": num_samples,
        "batch_size": 256,
        "seconds_per_epoch_1_device": one,
        "seconds_per_epoch_n_devices": many,
        "ratio_n_over_1": many / one,
        "all_times": {str(k): v for k, v in times.items()},
    }


def _child(command, backend, extra, env_extra=None):
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": os.pathsep.join(
            p for p in (ROOT, os.environ.get("PYTHONPATH")) if p
        ),
        **(env_extra or {}),
    }
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale_out", command, *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if completed.returncode:
        raise RuntimeError(completed.stderr[-3000:])
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=["run", "memory", "devices"],
    )
    parser.add_argument("--sizes", default="20000,200000")
    parser.add_argument("--num-samples", type=int, default=DEVICE_SAMPLES)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--figures", default="memory,devices")
    parser.add_argument("--output-dir", default=RESULTS)
    parser.add_argument(
        "--device-kind",
        default="cpu",
        choices=["cpu", "gpu"],
        help="devices of the 1-vs-N figure: 2 CPU devices, or every GPU",
    )
    args = parser.parse_args(argv)
    if args.command == "memory":
        print(json.dumps(memory_child(args.num_samples)))
        return
    if args.command == "devices":
        backend = os.environ.get("KERAS_BACKEND")
        if backend == "tensorflow" and args.device_kind == "cpu":
            # Before TensorFlow initialises its runtime.
            import tensorflow as tf

            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * 2
            )
        print(
            json.dumps(
                devices_child(
                    args.num_samples,
                    args.epochs,
                    args.repeats,
                    args.device_kind,
                )
            )
        )
        return
    import keras

    from benchmarks import common

    backend = keras.backend.backend()
    figures = set(args.figures.split(","))
    result = {
        "machine": common.machine(),
        "load_average_before": os.getloadavg(),
    }
    if "memory" in figures:
        sizes = [int(s) for s in args.sizes.split(",")]
        runs = [
            _child("memory", backend, ["--num-samples", str(n)]) for n in sizes
        ]
        growth = runs[-1]["peak_mb"] / runs[0]["peak_mb"]
        anonymous = runs[-1]["peak_anonymous_mb"] / runs[0]["peak_anonymous_mb"]
        result["memory"] = {
            "runs": runs,
            "peak_growth": growth,
            "peak_anonymous_growth": anonymous,
            "target": MEMORY_TARGET,
            "met": growth <= MEMORY_TARGET,
        }
        for run in runs:
            print(
                f"{backend}: disk-cached add-on fit on {run['num_samples']:,}"
                f" samples: peak RSS {run['peak_mb']:.0f} MB (before "
                f"{run['before_mb']:.0f} MB; the inputs would be "
                f"{run['inputs_mb_if_held']:.0f} MB; cache on disk "
                f"{run['cache_mb_on_disk']:.1f} MB; {run['seconds']:.1f} s)"
            )
        print(
            f"{backend}: peak growth {sizes[-1]:,} / {sizes[0]:,} samples: "
            f"{growth:.3f}x (target <= {MEMORY_TARGET}x: "
            f"{'met' if growth <= MEMORY_TARGET else 'NOT met'}); "
            f"not file-backed {anonymous:.3f}x"
        )
    if "devices" in figures and backend in ("jax", "tensorflow"):
        env = {}
        if backend == "jax" and args.device_kind == "cpu":
            env["XLA_FLAGS"] = (
                os.environ.get("XLA_FLAGS", "")
                + " --xla_force_host_platform_device_count=2"
            ).strip()
        devices = _child(
            "devices",
            backend,
            [
                "--num-samples",
                str(args.num_samples),
                "--epochs",
                str(args.epochs),
                "--repeats",
                str(args.repeats),
                "--device-kind",
                args.device_kind,
            ],
            env,
        )
        result["devices"] = devices
        print(
            f"{backend}: add-on epoch on {devices['num_samples']:,} cached "
            f"samples: 1 device {devices['seconds_per_epoch_1_device']:.3f} "
            f"s, {devices['num_devices']} {args.device_kind} devices "
            f"{devices['seconds_per_epoch_n_devices']:.3f} s, ratio "
            f"{devices['num_devices']}/1 = {devices['ratio_n_over_1']:.2f}"
        )
    result["load_average_after"] = os.getloadavg()
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, f"scale_out_{backend}.json")
    with open(path, "w") as handle:
        json.dump(result, handle, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
