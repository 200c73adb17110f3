"""Two-process JAX training resumed with `keras.callbacks.BackupAndRestore`
after one process dies mid-`fit`.

`multiprocess_restore_worker.py` runs as processes 0 and 1 of a
two-process JAX cluster on localhost (as `test_multiprocess.py`), fitting
a `TACModel` head for 3 epochs, without and with the feature cache, with
`BackupAndRestore` (one backup directory per process). Process 1 exits
hard at the end of epoch 1, after its backup; the survivor then fails at
once, in the first collective of epoch 2 (measured: "Gloo AllGather
failed ... Connection reset by peer", exit 3 from the worker's handler; a
hang would be killed after `GRACE` seconds).
Both processes restart on fresh ports: `fit` resumes at epoch 2 and ends
with the losses and head weights of an uninterrupted two-process run.

The runs: (1) uncached, process 1 dies; (2) uncached resumed, then cached,
process 1 dies; (3) cached resumed; (4) the uninterrupted oracle, both
modes. `test_fit_resumes_at_the_backed_up_epoch` checks the same in one
process, on any backend (not slow).

With the feature cache the head trains in a trainer model
(`feature_cache._HeadTrainer`) whose callbacks see the TAC model: the
callback restores the weights there (the trainer's are the head's) and
sets the epoch to start at there too, which the trainer reads from it.

The slow test is JAX only: the worker runs with KERAS_BACKEND=jax
whatever the suite's backend, except in the TensorFlow pass (as
`test_multiprocess.py`).
"""

import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from test_multiprocess import free_ports
from test_multiprocess import worker_env

WORKER = os.path.join(
    os.path.dirname(__file__), "multiprocess_restore_worker.py"
)
TIMEOUT = 300
# Seconds the survivor may take to end once its peer has died.
GRACE = 20
DIE_CODE = 17
EPOCHS = 3
DIE_AFTER = 1
# Resumed against uninterrupted. Measured (JAX 0.10.2, Keras 3.15.1, CPU):
# equal to the bit (the same computation, from the restored weights,
# optimizer and seed-generator state); limits at float32 rounding.
TOLERANCES = dict(loss=1e-6, weights=1e-6)


def tails(logs):
    out = []
    for i, log in enumerate(logs):
        log.seek(0)
        out.append(f"--- process {i}:\n{log.read()[-3000:]}")
    return "\n".join(out)


def run_pair(outdir, backup, modes, die_mode=None):
    """Runs processes 0 and 1 on a fresh port. Without `die_mode`, fails
    unless both exit 0 within `TIMEOUT`; with it, process 1 must exit with
    `DIE_CODE` (after epoch `DIE_AFTER` of that mode), and the survivor's
    ending is returned: its exit code, or "hung" if it ran `GRACE` seconds
    more (then killed)."""
    outdir.mkdir()
    port = free_ports()
    command = ["--port", port, "--backup-dir", str(backup), "--modes", modes]
    if die_mode:
        command += ["--die-mode", die_mode]
        command += ["--die-after-epoch", str(DIE_AFTER)]
    logs = [open(outdir / f"stderr_{i}.txt", "w+") for i in range(2)]
    processes = [
        subprocess.Popen(
            [sys.executable, WORKER, "--process-id", str(i), *command]
            + [str(outdir)],
            env=worker_env("jax"),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        for i, log in zip(range(2), logs)
    ]
    ending = None
    try:
        if die_mode:
            try:
                processes[1].wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail("process 1 did not die:\n" + tails(logs))
            if processes[1].returncode != DIE_CODE:
                pytest.fail(
                    f"process 1 exited {processes[1].returncode}, not "
                    f"{DIE_CODE}:\n" + tails(logs)
                )
            start = time.monotonic()
            try:
                ending = processes[0].wait(timeout=GRACE)
            except subprocess.TimeoutExpired:
                ending = "hung"
            ending = (ending, round(time.monotonic() - start, 1))
        else:
            for process in processes:
                try:
                    process.wait(timeout=TIMEOUT)
                except subprocess.TimeoutExpired:
                    pytest.fail("workers timed out:\n" + tails(logs))
            codes = [process.returncode for process in processes]
            if any(codes):
                pytest.fail(f"workers failed {codes}:\n" + tails(logs))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
    return ending


def epoch_log(outdir, mode, process):
    with open(outdir / f"{mode}_log_{process}.json") as f:
        return json.load(f)


def results(outdir, mode):
    first, second = (
        dict(np.load(outdir / f"{mode}_process_{i}.npz")) for i in range(2)
    )
    # Global state: the same in both processes, to the bit.
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], key)
    return first


def assert_resumed(died, resumed, oracle, mode):
    """`died`: the run in which process 1 died after epoch `DIE_AFTER` of
    `mode`; `resumed`: the restarted run; `oracle`: uninterrupted."""
    expected = results(oracle, mode)
    np.testing.assert_array_equal(expected["epochs_begun"], range(EPOCHS))
    for i in range(2):
        # Both processes ran epochs 0 ... DIE_AFTER before the death, as
        # the uninterrupted run.
        log = epoch_log(died, mode, i)
        assert log["ended"] == list(range(DIE_AFTER + 1)), (i, log)
        np.testing.assert_allclose(
            log["loss"],
            expected["loss"][: DIE_AFTER + 1],
            rtol=TOLERANCES["loss"],
        )
    actual = results(resumed, mode)
    # The restart begins at the epoch after the last completed one.
    resumed_epochs = list(range(DIE_AFTER + 1, EPOCHS))
    assert actual["epochs_begun"].tolist() == resumed_epochs, mode
    assert actual["history_epochs"].tolist() == resumed_epochs, mode
    np.testing.assert_allclose(
        actual["loss"],
        expected["loss"][DIE_AFTER + 1 :],
        rtol=TOLERANCES["loss"],
        err_msg=mode,
    )
    heads = [key for key in expected if key.startswith("head_")]
    assert heads
    for key in heads:
        scale = np.abs(expected[key]).max() or 1.0
        np.testing.assert_allclose(
            actual[key],
            expected[key],
            atol=TOLERANCES["weights"] * scale,
            rtol=0,
            err_msg=f"{mode} {key}",
        )


@pytest.mark.slow
def test_backup_and_restore_after_a_process_dies(tmp_path):
    if keras.backend.backend() == "tensorflow":
        pytest.skip(
            "Multi-process data parallelism is tested on the JAX engine "
            "(run this test under KERAS_BACKEND=jax or torch; its workers "
            "use JAX whatever the backend)."
        )
    backup = tmp_path / "backup"
    survivors = {}
    # (1) Uncached: process 1 dies after epoch 1.
    survivors["uncached"] = run_pair(
        tmp_path / "died_uncached", backup, "uncached", die_mode="uncached"
    )
    for i in range(2):
        # Each process's backup: the weights after epoch 1, the next epoch.
        metadata = backup / "uncached" / f"process_{i}"
        with open(metadata / "training_metadata.json") as f:
            assert json.load(f)["epoch"] == DIE_AFTER + 1
    # (2) Uncached resumed; then cached, where process 1 dies.
    survivors["cached"] = run_pair(
        tmp_path / "resumed_uncached",
        backup,
        "uncached,cached",
        die_mode="cached",
    )
    # A completed `fit` removes its backup.
    assert not list((backup / "uncached").iterdir())
    # (3) Cached resumed.
    run_pair(tmp_path / "resumed_cached", backup, "cached")
    assert not list((backup / "cached").iterdir())
    # (4) The uninterrupted run.
    run_pair(tmp_path / "oracle", tmp_path / "oracle_backup", "uncached,cached")

    print("survivor (exit code or 'hung', seconds after the death):", survivors)
    for ending, _ in survivors.values():
        # It cannot finish: its peer is gone.
        assert ending != 0, survivors
    assert_resumed(
        tmp_path / "died_uncached",
        tmp_path / "resumed_uncached",
        tmp_path / "oracle",
        "uncached",
    )
    assert_resumed(
        tmp_path / "resumed_uncached",
        tmp_path / "resumed_cached",
        tmp_path / "oracle",
        "cached",
    )


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("interrupted")


@pytest.mark.parametrize("cache_features", [False, True])
def test_fit_resumes_at_the_backed_up_epoch(tmp_path, cache_features):
    """One process, any backend: a `fit` interrupted after epoch 1 resumes
    at epoch 2 with `BackupAndRestore`, as an uninterrupted one (with the
    feature cache the head trains in a trainer model, which reads the
    epoch the callback restores on the TAC model)."""
    from conftest import make_cnn

    import keras_tac

    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1)).astype("float32")
    y = np.arange(64) % 10

    def fit(callbacks):
        keras.utils.set_random_seed(0)
        tac = keras_tac.TACModel(make_cnn(), seed=1)
        tac.compile(optimizer=keras.optimizers.Adam(1e-2))
        options = dict(epochs=4, batch_size=16, shuffle=False, verbose=0)
        history = tac.fit(
            x, y, callbacks=callbacks, cache_features=cache_features, **options
        )
        return history, tac

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        fit([backup, _Interrupt()])
    resumed, tac = fit([backup])
    expected, oracle = fit([])
    assert resumed.epoch == [2, 3]
    np.testing.assert_allclose(
        resumed.history["loss"], expected.history["loss"][2:], rtol=1e-5
    )
    for actual, wanted in zip(tac.head.weights, oracle.head.weights):
        np.testing.assert_allclose(
            np.asarray(actual), np.asarray(wanted), atol=1e-6
        )
