"""Figures that prove themselves, for the examples.

Each example records the figures it prints in `examples/results/NAME.json`,
stamped with the commit and the backend they came from, per mode
(`"full"`: the documented run; `"quick"`: the short run of the test suite)
and per backend. `--update-figures` records them; otherwise the run checks
its figures against the recorded ones of its mode and backend and names
every figure that drifted out of its tolerance band; in quick mode it then
exits with an error, so a regression in confidence quality fails the test
suite instead of going unnoticed (a full run on other hardware only
reports the drift). The README quotes the full figures from these files
(`tests/test_examples.py` checks that it does).
"""

import json
import os
import subprocess
import sys

import keras

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stamp():
    """Where figures come from: commit (with `+changes` when the package or
    the examples differ from it), backend and Keras version."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "keras_tac",
                "examples",
                ":!examples/results",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if changed:
            commit += "+changes"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "commit": commit,
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
    }


def load(name):
    path = os.path.join(RESULTS, f"{name}.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def record_or_check(name, figures, quick, update, tolerances):
    """Records `figures` (with `update`) or checks them against the
    recorded ones; exits with status 1 on drift.

    Args:
        name: str, the results file's name.
        figures: dict `{figure: float}`.
        quick: bool, the mode.
        update: bool. Record instead of checking.
        tolerances: dict `{figure: allowed absolute difference}`; figures
            not listed must match to 1e-6.
    """
    mode = "quick" if quick else "full"
    backend = keras.backend.backend()
    data = load(name)
    figures = {key: round(float(value), 6) for key, value in figures.items()}
    if update:
        data.setdefault(mode, {})[backend] = {
            "stamp": stamp(),
            "figures": figures,
        }
        os.makedirs(RESULTS, exist_ok=True)
        with open(
            os.path.join(RESULTS, f"{name}.json"), "w", encoding="utf-8"
        ) as file:
            json.dump(data, file, indent=2, sort_keys=True)
            file.write("\n")
        print(f"Recorded {len(figures)} {mode} figures for {backend}.")
        return
    recorded = data.get(mode, {}).get(backend)
    if recorded is None:
        print(
            f"No recorded {mode} figures for {backend} in "
            f"examples/results/{name}.json: run with --update-figures."
        )
        sys.exit(1)
    drifted = []
    for key, expected in recorded["figures"].items():
        got = figures.get(key)
        allowed = tolerances.get(key, 1e-6)
        if got is None or abs(got - expected) > allowed:
            drifted.append(f"{key}: {got} (recorded {expected} +- {allowed})")
    if drifted:
        print(
            f"Figures drifted from examples/results/{name}.json ({mode}, "
            f"{backend}, recorded at {recorded['stamp']['commit']}):"
        )
        for line in drifted:
            print(f"  {line}")
        if quick:
            # The test suite's check; a full run on other hardware may
            # legitimately differ, so it only reports.
            sys.exit(1)
        return
    print(
        f"All {len(recorded['figures'])} {mode} figures within tolerance of "
        f"those recorded at {recorded['stamp']['commit']} ({backend})."
    )
