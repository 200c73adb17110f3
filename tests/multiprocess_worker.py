"""Worker of `tests/test_multiprocess.py`: one TAC workflow, data-parallel
over several processes (one per host in real use), or in one process (the
oracle), from the same seeds and data; on JAX or on TensorFlow.

    KERAS_BACKEND=jax python tests/multiprocess_worker.py \\
        --process-id I --num-processes 2 --port P OUTDIR
    KERAS_BACKEND=tensorflow python tests/multiprocess_worker.py \\
        --process-id I --num-processes 2 --port P0,P1 OUTDIR
    KERAS_BACKEND=jax python tests/multiprocess_worker.py \\
        --process-id 0 --num-processes 1 OUTDIR [--reload DIR]

With `--num-processes 2` each process joins the cluster
(`keras.distribution.initialize`, CPU collectives over gloo), sees one host
CPU device and runs under `keras.distribution.DataParallel` over both
processes' devices. Every phase reads a `tf.data.Dataset` of this
process's share: batches of 32 rows, every other one
(`dataset.batch(32).shard(2, process_id)`), or, in the mode "pydataset",
a `keras.utils.PyDataset` of the same batches (`Share`), so that global
batch `k` (the two processes' batches `k`, in process order, as Keras's
JAX trainer joins them with `jax.make_array_from_process_local_data`)
holds rows `64 k ... 64 k + 63` in order: the oracle's batch `k` (batches
of 64, one process, no distribution).

On TensorFlow, with `--num-processes 2`, each process is one worker of a
`tf.distribute.MultiWorkerMirroredStrategy` (`TF_CONFIG`, set here before
TensorFlow starts, names the workers `localhost:P0` and `localhost:P1`;
CPU only, one replica per worker), and the models are built and compiled
in its scope. Each process passes the whole dataset in global batches of
64 and the strategy shards it (`AutoShardPolicy.DATA`: Keras distributes
it with `experimental_distribute_dataset`, which splits each global batch
into one batch of 32 per replica, in worker order): the same layout as
above. Keras 3.15's TensorFlow trainer fails there in the first `fit`
(see `tests/test_multiprocess.py`).

The workflow: the base trains (plain Keras), then for each mode (add-on
`fit` without and with the feature cache, joint training, the add-on `fit`
without the cache on PyDatasets) a `TACModel` fits (statistics included),
evaluates, calibrates, predicts with rejection and is saved (by process
0). The oracle then also calibrates on process 0's share of the held-out
set alone (`shard_threshold`). Results go to
`OUTDIR/<mode>_<num_processes>_<process_id>.npz`; the first failure, with
its phase, to `OUTDIR/error_<process_id>.json`.
With `--reload DIR` the oracle also loads the models saved in `DIR` (by a
multi-process run) and predicts with them (`OUTDIR/reloaded_<mode>.npz`).
"""

import argparse
import contextlib
import json
import os
import sys
import time
import traceback

# "cpu" (the tests: one host CPU device per process) or "gpu" (JAX, one
# GPU per process: `benchmarks/gpu/scale_out.sh`).
DEVICE_KIND = os.environ.get("KERAS_TAC_DEVICE_KIND", "cpu")
if DEVICE_KIND == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

GLOBAL_BATCH = 64


MODES = ("uncached", "cached", "joint", "pydataset")
# What each mode's phases read: this process's share as a `tf.data`
# dataset, or as a `keras.utils.PyDataset` (the same batches).
DATA_KIND = dict(pydataset="PyDataset")


def fit_options(mode):
    """`TACModel.fit`'s arguments for a mode."""
    if mode == "joint":
        # Joint training: no feature cache (the base trains too).
        return {}
    if mode == "uncached":
        return dict(cache_features=False)
    if mode == "pydataset":
        # Keras shuffles a PyDataset's batches unless told not to (each
        # process its own share).
        return dict(cache_features=False, shuffle=False)
    # The cached trainer's batches: this process's share of each global
    # batch (its default is 32 rows, whatever the dataset's batches), in
    # order (each process would shuffle its own share: another, equally
    # valid, order than one process's).
    per_process = GLOBAL_BATCH if BACKEND == "tensorflow" else None
    return dict(
        cache_features=True,
        batch_size=per_process or GLOBAL_BATCH // NPROC,
        shuffle=False,
    )


def parse():
    parser = argparse.ArgumentParser()
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--num-processes", type=int, default=1)
    # JAX: the coordinator's port; TensorFlow: one port per worker.
    parser.add_argument("--port", default="0")
    parser.add_argument("--reload", default=None)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("outdir")
    return parser.parse_args()


ARGS = parse()
PID, NPROC = ARGS.process_id, ARGS.num_processes
BACKEND = os.environ.get("KERAS_BACKEND", "jax")

if BACKEND == "tensorflow":
    # CPU only; the cluster before TensorFlow starts.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if NPROC > 1:
        os.environ["TF_CONFIG"] = json.dumps(
            {
                "cluster": {
                    "worker": [f"localhost:{p}" for p in ARGS.port.split(",")]
                },
                "task": {"type": "worker", "index": PID},
            }
        )
    import tensorflow as tf

    # At the start of the program, before any other TensorFlow op.
    STRATEGY = (
        tf.distribute.MultiWorkerMirroredStrategy() if NPROC > 1 else None
    )
else:
    if DEVICE_KIND == "gpu" and NPROC > 1:
        # One GPU per process, as on hosts with one GPU each.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(PID)
    import jax

    if NPROC > 1 and DEVICE_KIND == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")

import keras  # noqa: E402

keras.config.disable_traceback_filtering()

if BACKEND != "tensorflow" and NPROC > 1:
    # Before any computation.
    keras.distribution.initialize(
        job_addresses=f"localhost:{ARGS.port}",
        num_processes=NPROC,
        process_id=PID,
    )

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import make_cnn  # noqa: E402

import keras_tac  # noqa: E402

STAGE = ["setup"]
TIMES = {}


def digits():
    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    return x[order], y[order]


class Share(keras.utils.PyDataset):
    """This process's share of `arrays` as a `PyDataset`: the batches of
    `shard` (rows `32 (2 k + process_id) ...`; in one process, batches of
    64), made on demand."""

    def __init__(self, *arrays):
        super().__init__()
        self.arrays = arrays
        self.size = GLOBAL_BATCH // NPROC

    def __len__(self):
        return -(-len(self.arrays[0]) // GLOBAL_BATCH)

    def __getitem__(self, index):
        start = (index * NPROC + PID) * self.size
        items = tuple(a[start : start + self.size] for a in self.arrays)
        return items if len(items) > 1 else items[0]


def shard(*arrays, kind="tf.data"):
    """This process's share of `arrays`, as a dataset of its batches (on
    TensorFlow, the whole data in global batches: the strategy shards it);
    `kind`: "tf.data" or "PyDataset" (JAX only)."""
    if kind == "PyDataset":
        assert BACKEND != "tensorflow"
        return Share(*arrays)
    dataset = tf.data.Dataset.from_tensor_slices(
        arrays if len(arrays) > 1 else arrays[0]
    )
    if BACKEND == "tensorflow":
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        return dataset.batch(GLOBAL_BATCH).with_options(options)
    per_process = GLOBAL_BATCH // NPROC
    return dataset.batch(per_process).shard(NPROC, PID)


def scope():
    """The scope the models are built and compiled in."""
    if BACKEND == "tensorflow" and STRATEGY is not None:
        return STRATEGY.scope()
    return contextlib.nullcontext()


class stage:
    def __init__(self, name):
        self.name = name

    def __enter__(self):
        STAGE[0] = self.name
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        TIMES[self.name] = round(time.perf_counter() - self.start, 2)


def barrier(name):
    if NPROC > 1 and BACKEND != "tensorflow":
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def calibration_of(tac):
    """What `calibrate` stored in the combined confidence: the signals'
    centers and scales, and the kNN weight."""
    layer = tac.confidence_layer
    return {
        f"calibration_{name}": np.asarray(
            keras.ops.convert_to_numpy(getattr(layer, name))
        )
        for name in ("centers", "scales", "signal_weights")
    }


def statistics_of(tac):
    """The combined confidence's training statistics, by weight name."""
    layer = tac.confidence_layer
    return {
        "stat_" + w.path.split("/")[-1]: np.asarray(w.numpy())
        for w in layer.weights
    }


def run(mode, data, base_weights):
    (x, y), (x_val, y_val), (x_cal, y_cal), x_test = data
    kind = DATA_KIND.get(mode, "tf.data")
    keras.utils.set_random_seed(0)
    with scope():
        base = make_cnn()
    base.set_weights(base_weights)
    result = {}
    with stage(f"{mode}/build"), scope():
        tac = keras_tac.TACModel(base, train_base=mode == "joint", seed=1)
        tac.compile(optimizer=keras.optimizers.Adam(1e-2))
        assert tac.threshold is None and tac.class_thresholds is None
    with stage(f"{mode}/fit"):
        history = tac.fit(
            shard(x, y, kind=kind), epochs=2, verbose=0, **fit_options(mode)
        ).history
    result["loss"] = np.asarray(history["loss"])
    result["codes"] = tac.codes
    result.update(statistics_of(tac))
    with stage(f"{mode}/evaluate"):
        metrics = tac.evaluate(
            shard(x_val, y_val, kind=kind), return_dict=True, verbose=0
        )
    result["evaluate_loss"] = np.float64(metrics["loss"])
    result["evaluate_tac_accuracy"] = np.float64(metrics["tac_accuracy"])
    with stage(f"{mode}/calibrate"):
        summary = tac.calibrate(
            shard(x_cal, y_cal, kind=kind), target_coverage=0.8, verbose=0
        )
    result["threshold"] = np.float64(tac.threshold)
    result.update(calibration_of(tac))
    result["calibrated_coverage"] = np.float64(summary["coverage"])
    result["num_reference_scores"] = np.int64(
        tac.calibration_record.num_reference_scores
    )
    with stage(f"{mode}/predict_with_rejection"):
        out = tac.predict_with_rejection(shard(x_test, kind=kind), verbose=0)
    for key, value in out.items():
        result[key] = np.asarray(value)
    with stage(f"{mode}/save"):
        # Every process saves: Keras 3.15's `save` creates variables (a
        # throwaway optimizer, `saving_lib.get_attr_skipset`), and under a
        # multi-process distribution creating a variable is collective
        # (`jax.device_put` checks that every process passes the same
        # value). Process 0 writes the file; the others a scratch copy.
        path = os.path.join(ARGS.outdir, f"{mode}_{NPROC}.keras")
        if PID:
            path = os.path.join(ARGS.outdir, f"scratch_{PID}.keras")
        tac.save(path)
        if PID:
            os.remove(path)
        barrier(f"saved {mode}")
    if NPROC == 1:
        # The threshold that process 0 would pick, calibrating on its share
        # of the held-out set alone (batches 0, 2, 4, ... of 32 rows): the
        # test checks that it differs from the whole set's. Last, after
        # the save: the model's calibration is no longer used.
        rows = np.arange(len(x_cal)).reshape(-1, GLOBAL_BATCH // 2)[::2]
        rows = rows.ravel()
        with stage(f"{mode}/shard_calibrate"):
            tac.calibrate(
                x_cal[rows],
                y_cal[rows],
                target_coverage=0.8,
                batch_size=GLOBAL_BATCH,
                verbose=0,
            )
        result["shard_threshold"] = np.float64(tac.threshold)
        result.update({f"shard_{k}": v for k, v in calibration_of(tac).items()})
    np.savez(os.path.join(ARGS.outdir, f"{mode}_{NPROC}_{PID}.npz"), **result)


def reload(mode, x_test):
    path = os.path.join(ARGS.reload, f"{mode}_2.keras")
    loaded = keras.saving.load_model(path)
    out = loaded.predict_with_rejection(
        x_test, batch_size=GLOBAL_BATCH, verbose=0
    )
    result = {key: np.asarray(value) for key, value in out.items()}
    result["threshold"] = np.float64(loaded.threshold)
    np.savez(os.path.join(ARGS.outdir, f"reloaded_{mode}.npz"), **result)


def main():
    if BACKEND == "tensorflow" and NPROC > 1:
        assert STRATEGY.num_replicas_in_sync == NPROC
    elif NPROC > 1:
        assert jax.process_count() == NPROC, jax.process_count()
        # Each process feeds its own share (`shard`): Keras must not shard
        # the datasets again (its default for a multi-process
        # distribution; Keras 3.15 shards only tf.data datasets and feeds
        # any other input, a PyDataset included, as the process's share).
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(
                devices=jax.devices(), auto_shard_dataset=False
            )
        )
    x, y = digits()
    data = (
        (x[:512], y[:512]),
        (x[512:640], y[512:640]),
        (x[640:896], y[640:896]),
        x[896:1024],
    )
    with stage("base/fit"):
        keras.utils.set_random_seed(0)
        with scope():
            base = make_cnn()
            base.compile(
                optimizer=keras.optimizers.Adam(1e-2),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                ),
            )
        base_loss = base.fit(shard(*data[0]), epochs=3, verbose=0).history
        base_weights = [np.asarray(w) for w in base.get_weights()]
    np.savez(
        os.path.join(ARGS.outdir, f"base_{NPROC}_{PID}.npz"),
        loss=np.asarray(base_loss["loss"]),
        **{f"weight_{i}": w for i, w in enumerate(base_weights)},
    )
    for mode in ARGS.modes.split(","):
        run(mode, data, base_weights)
    if ARGS.reload:
        for mode in ARGS.modes.split(","):
            with stage(f"{mode}/reload"):
                reload(mode, data[3])
    with open(os.path.join(ARGS.outdir, f"times_{NPROC}_{PID}.json"), "w") as f:
        json.dump(TIMES, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        with open(os.path.join(ARGS.outdir, f"error_{PID}.json"), "w") as f:
            json.dump({"stage": STAGE[0], "error": traceback.format_exc()}, f)
        sys.stderr.write(f"FAILED in {STAGE[0]}\n{traceback.format_exc()}")
        sys.stderr.flush()
        # Not a clean exit: the other process may wait in a collective.
        os._exit(3)
