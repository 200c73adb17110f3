"""Worker of `tests/test_multiprocess_restore.py`: a `TACModel` add-on `fit`
over two JAX processes with `keras.callbacks.BackupAndRestore`, which one
process may leave hard at the end of an epoch.

    KERAS_BACKEND=jax python tests/multiprocess_restore_worker.py \\
        --process-id I --port P --backup-dir DIR [--modes uncached,cached] \\
        [--die-mode MODE --die-after-epoch K] OUTDIR

The set-up of `multiprocess_worker.py`: two processes on localhost
(`keras.distribution.initialize`, gloo CPU collectives, one host CPU
device each, `DataParallel(auto_shard_dataset=False)`), each feeding its
share of the digits (batches of 32, every other one: global batch `k` is
rows `64 k ... 64 k + 63`). The base (the untrained CNN of `make_cnn`,
seed 0: only the head trains) is frozen; for each mode (`fit` without and
with the feature cache) a `TACModel` fits `EPOCHS` epochs with
`[BackupAndRestore(DIR/<mode>/process_I), EpochLog, Die]`.

Keras's `BackupAndRestore` has no notion of processes: every process
saves the (replicated) weights and the epoch at each epoch's end, and
restores them at the start of `fit`. Each process gets its own backup
directory, so that two processes never write one file at once.

With `--die-after-epoch K`, process 1 exits hard (`os._exit(17)`) at the
end of epoch K of mode `--die-mode`, after its backup of that epoch
(`Die` comes after `BackupAndRestore`). `EpochLog` appends each epoch it
sees (begun, and ended with its loss) to `OUTDIR/<mode>_log_I.json` as it
goes; a completed `fit` writes `OUTDIR/<mode>_process_I.npz` (the
`History` losses, the epochs run, the head's weights).
"""

import argparse
import json
import os
import sys
import traceback

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EPOCHS = 3
GLOBAL_BATCH = 64
NPROC = 2
DIE_CODE = 17


def parse():
    parser = argparse.ArgumentParser()
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--port", required=True)
    parser.add_argument("--backup-dir", required=True)
    parser.add_argument("--modes", default="uncached,cached")
    parser.add_argument("--die-mode", default=None)
    parser.add_argument("--die-after-epoch", type=int, default=None)
    parser.add_argument("outdir")
    return parser.parse_args()


ARGS = parse()
PID = ARGS.process_id

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import keras  # noqa: E402

keras.config.disable_traceback_filtering()
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


def digits():
    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    return x[order][:512], y[order][:512]


def shard(x, y):
    """This process's share: every other batch of 32 rows."""
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    return dataset.batch(GLOBAL_BATCH // NPROC).shard(NPROC, PID)


def fit_options(mode):
    if mode == "uncached":
        return dict(cache_features=False)
    # This process's share of each global batch, in order.
    return dict(
        cache_features=True, batch_size=GLOBAL_BATCH // NPROC, shuffle=False
    )


class EpochLog(keras.callbacks.Callback):
    """Appends the epochs begun and ended (with their loss) to a file, as
    they happen: a process that dies keeps its record."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.record = {"begun": [], "ended": [], "loss": []}

    def write(self):
        with open(self.path, "w") as f:
            json.dump(self.record, f)

    def on_epoch_begin(self, epoch, logs=None):
        self.record["begun"].append(int(epoch))
        self.write()

    def on_epoch_end(self, epoch, logs=None):
        self.record["ended"].append(int(epoch))
        self.record["loss"].append(float(logs["loss"]))
        self.write()


class Die(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            sys.stderr.write(f"process {PID}: dying after epoch {epoch}\n")
            sys.stderr.flush()
            os._exit(DIE_CODE)


def run(mode, x, y):
    keras.utils.set_random_seed(0)
    base = make_cnn()
    tac = keras_tac.TACModel(base, seed=1)
    tac.compile(optimizer=keras.optimizers.Adam(1e-2))
    log = EpochLog(os.path.join(ARGS.outdir, f"{mode}_log_{PID}.json"))
    callbacks = [
        keras.callbacks.BackupAndRestore(
            os.path.join(ARGS.backup_dir, mode, f"process_{PID}")
        ),
        log,
    ]
    if mode == ARGS.die_mode and PID == 1:
        callbacks.append(Die(ARGS.die_after_epoch))
    history = tac.fit(
        shard(x, y),
        epochs=EPOCHS,
        verbose=0,
        callbacks=callbacks,
        **fit_options(mode),
    )
    result = {
        "loss": np.asarray(history.history["loss"]),
        "history_epochs": np.asarray(history.epoch),
        "epochs_begun": np.asarray(log.record["begun"]),
    }
    for i, weight in enumerate(tac.head.weights):
        result[f"head_{i}"] = np.asarray(weight.numpy())
    np.savez(os.path.join(ARGS.outdir, f"{mode}_process_{PID}.npz"), **result)


def main():
    assert jax.process_count() == NPROC, jax.process_count()
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(
            devices=jax.devices(), auto_shard_dataset=False
        )
    )
    x, y = digits()
    for mode in ARGS.modes.split(","):
        run(mode, x, y)


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        sys.stderr.write(f"FAILED\n{traceback.format_exc()}")
        sys.stderr.flush()
        # Not a clean exit: the other process may wait in a collective.
        os._exit(3)
