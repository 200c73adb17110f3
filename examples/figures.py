"""Figures that prove themselves, for the examples.

Every example states what the method promises as relations between figures
of the same run: the default confidence ranks errors at least as well as
the max softmax probability, TAC's accuracy is within a few points of the
base's, photos are rejected, and so on (`at_least`, `at_most`). Each
relation carries a margin derived from the spread measured over seeds on
the three backends (`examples/seed_spread.py`, results in
`examples/results/seed_spread/`), so it holds on any machine and still
fails when the method regresses. The rule: three standard deviations below
the mean slack, on the backend where that is lowest; for OOD AUROCs, whose
slack is skewed (TAC's sits near 1 while max softmax's varies widely, so
the standard deviation says little about the lower tail), the lowest slack
seen plus 0.05. The quick run of the test suite exits
with status 1 when a promise is broken; a full run reports it.

The documented full figures are recorded in `examples/results/NAME.json`,
stamped with the commit, backend and Keras version (`--update-figures`);
the README and docs quote them from there (`tests/test_docs_figures.py`
checks that they do). A full run on other hardware compares its figures
with the recorded ones and only reports the difference: training on
another CPU is not bit-identical, so a recorded figure is a measurement,
not a test oracle.
"""

import collections
import json
import os
import subprocess
import sys

import keras

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `examples/seed_spread.py` sets it to collect each run's figures.
DUMP_VARIABLE = "KERAS_TAC_FIGURES_JSON"


class Promise(
    collections.namedtuple(
        "Promise", ["label", "value", "reference", "margin", "relation"]
    )
):
    """`value >= reference - margin` (`relation=">="`) or `value <=
    reference + margin` (`"<="`), with figures of one run."""

    @property
    def slack(self):
        """How far the value is on the safe side of the reference, before
        the margin (negative: on the wrong side)."""
        if self.relation == ">=":
            return self.value - self.reference
        return self.reference - self.value

    @property
    def holds(self):
        return self.slack >= -self.margin

    def describe(self):
        sign = "-" if self.relation == ">=" else "+"
        return (
            f"{self.label}: {self.value:.4f} {self.relation} "
            f"{self.reference:.4f} {sign} {self.margin:.3f}"
        )


def at_least(label, value, reference, margin=0.0):
    """The promise `value >= reference - margin`."""
    return Promise(label, float(value), float(reference), margin, ">=")


def at_most(label, value, reference, margin=0.0):
    """The promise `value <= reference + margin`."""
    return Promise(label, float(value), float(reference), margin, "<=")


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


def _dump(name, figures, promises):
    path = os.environ.get(DUMP_VARIABLE)
    if not path:
        return
    with open(path, "w", encoding="utf-8") as file:
        json.dump(
            {
                "example": name,
                "stamp": stamp(),
                "figures": figures,
                "promises": {
                    p.label: dict(p._asdict(), slack=p.slack) for p in promises
                },
            },
            file,
            indent=1,
        )


def _record(name, figures):
    data = load(name)
    backend = keras.backend.backend()
    data.setdefault("full", {})[backend] = {
        "stamp": stamp(),
        "figures": figures,
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(
        os.path.join(RESULTS, f"{name}.json"), "w", encoding="utf-8"
    ) as file:
        json.dump(data, file, indent=2, sort_keys=True)
        file.write("\n")
    print(f"Recorded {len(figures)} full figures for {backend}.")


def _compare_with_recorded(name, figures, tolerances):
    backend = keras.backend.backend()
    recorded = load(name).get("full", {}).get(backend)
    if recorded is None:
        print(f"No recorded full figures for {backend} in {name}.json.")
        return
    moved = []
    for key, expected in recorded["figures"].items():
        got = figures.get(key)
        allowed = tolerances.get(key, 1e-6)
        if got is None or abs(got - expected) > allowed:
            moved.append(f"{key}: {got} (recorded {expected} +- {allowed})")
    where = f"recorded at {recorded['stamp']['commit']} ({backend})"
    if moved:
        # Reported, not failed: another machine trains differently.
        print(f"Figures that differ from those {where}:")
        for line in moved:
            print(f"  {line}")
    else:
        print(f"All {len(recorded['figures'])} figures within tolerance of")
        print(f"those {where}.")


def check(name, figures, promises, quick, update=False, tolerances=None):
    """Checks this run's promises; records or compares the full figures.

    Args:
        name: str, the results file's name (`examples/results/NAME.json`).
        figures: dict `{figure: float}`, this run's figures.
        promises: list of `Promise`, relations between this run's figures.
        quick: bool. The test suite's short run: a broken promise exits
            with status 1.
        update: bool. Record the (full) figures instead of comparing them.
        tolerances: dict `{figure: allowed absolute difference}` for the
            comparison of a full run with the recorded figures (1e-6 for
            figures not listed); the comparison is only reported.
    """
    figures = {key: round(float(value), 6) for key, value in figures.items()}
    _dump(name, figures, promises)
    broken = [p for p in promises if not p.holds]
    print(f"\nPromises ({len(promises)}, against this run's baselines):")
    for promise in promises:
        print(f"  {'ok' if promise.holds else 'BROKEN'}  {promise.describe()}")
    if broken:
        print(f"{len(broken)} promise(s) broken.")
    else:
        print(f"All {len(promises)} promises hold.")
    if not quick:
        if update:
            _record(name, figures)
        else:
            _compare_with_recorded(name, figures, tolerances or {})
    elif update:
        print("Quick figures are not recorded: only full runs are quoted.")
    if broken and quick:
        sys.exit(1)
