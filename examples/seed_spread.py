"""Measures how much each example's promises vary over seeds.

Runs an example's quick mode once per seed on the current Keras backend
(`KERAS_BACKEND`), collects the slack of each promise (how far its value is
on the safe side of its baseline, before the margin) and records the
lowest, mean and standard deviation per promise in
`examples/results/seed_spread/EXAMPLE.BACKEND.json`, beside the margin
the example uses.
The margins in the examples are chosen from these records by the rule in
`examples/figures.py`; `--summary` prints, per promise, what the rule gives
from the records of every backend (the margin recorded beside each run is
the one the example used then).

    KERAS_BACKEND=jax python examples/seed_spread.py mnist_rejection \\
        --seeds 0 1 2 3 4
    python examples/seed_spread.py mnist_rejection --summary
"""

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "seed_spread")
# How each example takes a seed.
SEED_FLAG = {
    "mnist_rejection": "--seed",
    "adversarial": "--seeds",
    "architectures": "--seeds",
    "evaluate_scores": "--seeds",
}


def run_once(example, seed, backend):
    with tempfile.TemporaryDirectory() as directory:
        dump = os.path.join(directory, "figures.json")
        env = dict(
            os.environ, KERAS_BACKEND=backend, KERAS_TAC_FIGURES_JSON=dump
        )
        command = [
            sys.executable,
            os.path.join(HERE, f"{example}.py"),
            "--quick",
            SEED_FLAG[example],
            str(seed),
        ]
        if example in ("architectures", "evaluate_scores"):
            command += ["--output", directory]
        result = subprocess.run(
            command, capture_output=True, text=True, env=env, check=False
        )
        if not os.path.exists(dump):
            raise RuntimeError(
                f"{example} seed {seed} wrote no figures:\n"
                + result.stdout[-2000:]
                + result.stderr[-2000:]
            )
        with open(dump, encoding="utf-8") as file:
            return json.load(file)


def rule_margin(label, records):
    """The margin the rule of `examples/figures.py` gives for one promise
    from its records on every backend."""
    if "ood_auroc" in label or "OOD AUROC" in label:
        lowest = min(min(r["slack"]) for r in records)
        return math.ceil(100 * (max(0.0, -lowest) + 0.05)) / 100
    lowest = min(r["mean"] - 3 * r["std"] for r in records)
    return math.ceil(100 * max(0.0, -lowest)) / 100


def summary(example):
    records = {}
    for path in sorted(glob.glob(os.path.join(RESULTS, f"{example}.*.json"))):
        backend = os.path.basename(path).split(".")[1]
        with open(path, encoding="utf-8") as file:
            records[backend] = json.load(file)["promises"]
    labels = next(iter(records.values()))
    print(f"{example}: margins by the rule, from {', '.join(records)}")
    for label in labels:
        per_backend = [r[label] for r in records.values() if label in r]
        print(f"  {rule_margin(label, per_backend):.2f}  {label}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("example", choices=sorted(SEED_FLAG))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--summary", action="store_true", help="the rule's margins only"
    )
    args = parser.parse_args()
    if args.summary:
        summary(args.example)
        return
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    runs = []
    for seed in args.seeds:
        runs.append(run_once(args.example, seed, backend))
        print(f"seed {seed}: done", flush=True)
    spread = {}
    for label, first in runs[0]["promises"].items():
        promise = [run["promises"][label] for run in runs]
        slack = np.array([p["slack"] for p in promise])
        spread[label] = {
            "values": [p["value"] for p in promise],
            "slack": [round(float(v), 4) for v in slack],
            "min": round(float(slack.min()), 4),
            "mean": round(float(slack.mean()), 4),
            "std": round(float(slack.std(ddof=1)), 4) if len(slack) > 1 else 0,
            "margin": first["margin"],
        }
        flag = "" if slack.min() >= -spread[label]["margin"] else "  <- below"
        print(
            f"{label}: min {slack.min():+.4f} mean {slack.mean():+.4f} "
            f"margin {spread[label]['margin']}{flag}"
        )
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{args.example}.{backend}.json")
    record = {"stamp": runs[0]["stamp"], "seeds": args.seeds}
    with open(path, "w", encoding="utf-8") as file:
        json.dump(dict(record, promises=spread), file, indent=1)
        file.write("\n")


if __name__ == "__main__":
    main()
