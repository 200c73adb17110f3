"""Worker of `tests/test_distribution.py`: one TAC workflow run twice, on
one device and data-parallel on two, in a process of its own.

    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python tests/distribution_worker.py OUTDIR
    KERAS_BACKEND=tensorflow python tests/distribution_worker.py OUTDIR

JAX sees two host devices (from `XLA_FLAGS`, set by the caller) and runs
data-parallel under `keras.distribution.DataParallel()`; TensorFlow splits
its CPU into two logical devices and runs under a
`tf.distribute.MirroredStrategy` over them, the model built and compiled in
its scope. The single-device run (the oracle) happens in the same process,
with no distribution set, from the same seeds and data.

For each training mode (add-on on cached features, add-on without the
cache, joint `train_base=True`, and two streamed add-on modes whose every
phase reads a `tf.data.Dataset` or a `keras.utils.PyDataset`, the latter
through the disk feature cache, scorers included) and each run, the
workflow fits, evaluates, calibrates, predicts with rejection, saves and
reloads (the cached mode also exports a SavedModel and serves it with
TensorFlow); the results go to
`OUTDIR/<mode>_<run>.npz`. Which devices the head's outputs lived on while
each phase ran goes to `OUTDIR/placements.json`.
"""

import json
import os
import sys

BACKEND = os.environ["KERAS_BACKEND"]
# "cpu" (the tests: 2 host or logical CPU devices) or "gpu" (every GPU the
# machine has; `benchmarks/gpu/scale_out.sh`).
DEVICE_KIND = os.environ.get("KERAS_TAC_DEVICE_KIND", "cpu")
NUM_DEVICES = 2

if BACKEND == "tensorflow":
    # Before anything initialises TensorFlow's runtime.
    import tensorflow as tf

    if DEVICE_KIND == "cpu":
        _cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            _cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_DEVICES
        )

import contextlib  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import Batches  # noqa: E402
from conftest import make_cnn  # noqa: E402

import keras_tac  # noqa: E402
from keras_tac.src import feature_graph  # noqa: E402

MODES = {
    "cached": dict(train_base=False, cache_features=True),
    "uncached": dict(train_base=False, cache_features=False),
    "joint": dict(train_base=True, cache_features=None),
    # Streamed: every phase reads a dataset, not arrays (the scorers too).
    # tf.data through the ordinary path; a PyDataset through the disk
    # feature cache (a directory of memmaps).
    "stream_tf_data": dict(
        train_base=False, cache_features=False, stream="tf.data"
    ),
    "stream_py_dataset": dict(
        train_base=False, cache_features=True, stream="PyDataset"
    ),
}
# The mode whose models are also exported (a SavedModel) and served.
EXPORT_MODE = "cached"
REJECTION_KEYS = ("prediction", "confidence", "accepted", "tac_prediction")

# What the head's profile was placed on, per phase of the distributed runs:
# {phase: sorted list of placement descriptions}.
PLACEMENTS = {}
_phase = [None]
_STRATEGY = {}


def digits():
    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    return x[order], y[order]


def _record(description):
    if _phase[0] is None:
        # Traced outside the phases checked (e.g. by `export`).
        return
    PLACEMENTS.setdefault(_phase[0], set()).add(description)


def record_placement(tensor):
    """Records, at trace time, how `tensor` is spread over devices."""
    if _phase[0] is None:
        return
    if BACKEND == "jax":
        import jax

        def describe(sharding):
            shape = tuple(tensor.shape)
            _record(
                json.dumps(
                    {
                        "devices": len(sharding.device_set),
                        "batch": shape[0],
                        "shard_batch": sharding.shard_shape(shape)[0],
                    }
                )
            )

        jax.debug.inspect_array_sharding(tensor, callback=describe)
    else:
        context = tf.distribute.get_replica_context()
        replicas = 1 if context is None else context.num_replicas_in_sync
        _record(json.dumps({"replicas": replicas, "device": tensor.device}))


def watch(tac):
    """Wraps the head's `call` to record where its profile lives."""
    head = tac.head
    call = head.call

    def recorded_call(*args, **kwargs):
        outputs = call(*args, **kwargs)
        record_placement(outputs["profile"])
        return outputs

    head.call = recorded_call


@contextlib.contextmanager
def phase(name):
    _phase[0] = name
    try:
        yield
    finally:
        _phase[0] = None


def distributed_scope():
    """A function returning the scope to build (and load) models in."""
    if BACKEND == "jax":
        keras.distribution.set_distribution(keras.distribution.DataParallel())
        return contextlib.nullcontext
    if "strategy" not in _STRATEGY:
        # One strategy per process: the collective all-reduces of a second
        # MirroredStrategy can collide with the first's (TensorFlow 2.21
        # aborts with "Shape mismatch in the collective instance").
        kind = DEVICE_KIND.upper()
        logical = [d.name for d in tf.config.list_logical_devices(kind)]
        _STRATEGY["strategy"] = tf.distribute.MirroredStrategy(logical)
    return _STRATEGY["strategy"].scope


def streamed(kind, *arrays):
    """`arrays` as a dataset of batches of 64 (`kind`: "tf.data" or
    "PyDataset")."""
    if kind == "PyDataset":
        return Batches(*arrays)
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(
        arrays if len(arrays) > 1 else arrays[0]
    ).batch(64)


def fit_kwargs(options, x, y, directory):
    """The data arguments of `fit` for a mode: arrays, or a dataset."""
    kind = options.get("stream")
    if kind is None:
        return dict(x=x, y=y, batch_size=64)
    kwargs = dict(x=streamed(kind, x, y))
    if kind == "PyDataset":
        kwargs["feature_cache_dir"] = directory
    return kwargs


def serve(export_dir, x):
    """The SavedModel's `serving_default` answers on `x`, as arrays."""
    import tensorflow as tf

    loaded = tf.saved_model.load(export_dir)
    outputs = loaded.signatures["serving_default"](image=tf.constant(x))
    return {key: np.asarray(value) for key, value in outputs.items()}


def run(mode, distributed, data, workdir):
    (x, y), (x_val, y_val), (x_cal, y_cal), x_test = data
    options = MODES[mode]
    keras.utils.set_random_seed(0)
    scope = distributed_scope() if distributed else contextlib.nullcontext
    try:
        with scope():
            tac = keras_tac.TACModel(
                make_cnn(), train_base=options["train_base"], seed=1
            )
            tac.compile(optimizer=keras.optimizers.Adam(1e-2))
        if distributed:
            watch(tac)
        prefix = f"{mode}/"
        kind = options.get("stream")
        cache_dir = os.path.join(workdir, f"features_{int(distributed)}")
        with phase(prefix + "fit"):
            history = tac.fit(
                epochs=2,
                shuffle=False,
                cache_features=options["cache_features"],
                verbose=0,
                **fit_kwargs(options, x, y, cache_dir),
            ).history
        with phase(prefix + "evaluate"):
            if kind is None:
                metrics = tac.evaluate(
                    x_val, y_val, batch_size=64, return_dict=True, verbose=0
                )
            else:
                metrics = tac.evaluate(
                    streamed(kind, x_val, y_val), return_dict=True, verbose=0
                )
        with phase(prefix + "calibrate"):
            if kind is None:
                summary = tac.calibrate(
                    x_cal, y_cal, target_coverage=0.8, batch_size=64, verbose=0
                )
            else:
                summary = tac.calibrate(
                    streamed(kind, x_cal, y_cal),
                    target_coverage=0.8,
                    verbose=0,
                )
        scorer_results = {}
        if kind is not None:
            # A new feature extractor, so that its step is traced (and its
            # placement recorded) in this phase, not reused from `fit`.
            feature_graph._GRAPH_MODELS.pop(tac, None)
            with phase(prefix + "scorers"):
                scorer = keras_tac.scores.MahalanobisDistance()
                keras_tac.scores.fit_scorers(
                    tac, streamed(kind, x, y), None, [scorer], verbose=0
                )
                scorer_results = keras_tac.scores.compute_scores(
                    tac, streamed(kind, x_test), [scorer], verbose=0
                )
        with phase(prefix + "predict"):
            out = tac.predict_with_rejection(x_test, batch_size=64, verbose=0)
        path = os.path.join(workdir, f"{mode}_{int(distributed)}.keras")
        tac.save(path)
        with scope():
            loaded = keras.saving.load_model(path)
        reloaded = loaded.predict_with_rejection(
            x_test, batch_size=64, verbose=0
        )
        result = {
            "codes": tac.codes,
            "threshold": np.float64(tac.threshold),
            "loaded_threshold": np.float64(loaded.threshold),
            "loss": np.asarray(history["loss"]),
            "evaluate_loss": np.float64(metrics["loss"]),
            "evaluate_tac_accuracy": np.float64(metrics["tac_accuracy"]),
            "calibrated_coverage": np.float64(summary["coverage"]),
        }
        for name, values in scorer_results.items():
            result["scores_" + name] = np.asarray(values)
        for key in REJECTION_KEYS:
            result[key] = np.asarray(out[key])
            result["loaded_" + key] = np.asarray(reloaded[key])
        if mode == EXPORT_MODE:
            # Exported from the distributed model (and, for the oracle,
            # from the single-device one), served by TensorFlow on one
            # device.
            export_dir = os.path.join(workdir, f"export_{int(distributed)}")
            tac.export(export_dir, verbose=False)
            served = serve(export_dir, x_test)
            for key in REJECTION_KEYS:
                result["exported_" + key] = served[key]
        np.savez(
            os.path.join(workdir, f"{mode}_{int(distributed)}.npz"), **result
        )
    finally:
        if distributed and BACKEND == "jax":
            keras.distribution.set_distribution(None)


def main(workdir):
    x, y = digits()
    # Batches of 64 split evenly over the 2 devices, no partial batch.
    data = (
        (x[:256], y[:256]),
        (x[256:384], y[256:384]),
        (x[384:640], y[384:640]),
        x[640:768],
    )
    modes = sys.argv[2:] or list(MODES)
    for mode in modes:
        for distributed in (False, True):
            run(mode, distributed, data, workdir)
    with open(os.path.join(workdir, "placements.json"), "w") as f:
        json.dump(
            {
                key: [json.loads(item) for item in sorted(value)]
                for key, value in PLACEMENTS.items()
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main(sys.argv[1])
