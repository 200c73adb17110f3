"""
Title: TAC with its defaults on small data sets
Author: keras-tac contributors
Date created: 2026/12/07
Last modified: 2026/12/07
Description: The library's default call (`TACModel(base)`, `compile()`,
    `fit(x, y)`, `calibrate(x, y)`) on the nine time-series sets of sktime
    (a Conv1D and an MLP each) and four scikit-learn tables (an MLP): does
    TAC's head learn what the base knows, and does the default confidence
    rank the base's errors at least as well as max softmax?
Accelerator: None (CPU: about 35 minutes on 2 shared cores on TensorFlow;
    --quick about 1)
"""

"""
## Introduction

Most users of keras-tac will not tune TAC: they wrap a trained classifier
and call the defaults. Small data sets are where those defaults are most
likely to fall short: a few dozen training rows give the head few steps and
the statistics of the default confidence few samples. This example trains
a base classifier on every small set that `keras_tac.datasets` ships
offline and adds TAC with **exactly** the default call:

```python
tac = keras_tac.TACModel(base, seed=seed)
tac.compile()
tac.fit(x_fit, y_fit)
tac.calibrate(x_calibration, y_calibration)
```

For each (data set, model) it reports, mean ± standard deviation over
three seeds: the base's test accuracy and TAC's nearest-code accuracy (does
the head learn what the base knows?), and the error-detection AUROC of the
default confidence (`tac`) next to max softmax (`msp`) and the best of the
other baselines (`max_logit`, `energy`, `mahalanobis`, `knn`), all rating
the same base predictions (`keras_tac.compare_scores`).

Run `python examples/small_data.py`, or `--quick` (one seed, three rows:
the short run of the test suite); `--sets` and `--models` pick a subset.
Every run checks per row that TAC's accuracy is near the base's and that
`tac` ranks errors at least as well as `msp`, within margins; the quick run
fails when it does not. `--update-figures` records a full run's figures.
"""

"""
## Setup
"""

import os  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import figures  # noqa: E402

import keras_tac  # noqa: E402
from keras_tac import datasets  # noqa: E402

# Every set of `datasets.load_time_series`, in its original train/test
# split, and the tables of `datasets.load_sklearn_table`.
TIME_SERIES = (
    "acsf1",
    "arrow_head",
    "basic_motions",
    "gunpoint",
    "italy_power_demand",
    "japanese_vowels",
    "osuleaf",
    "plaid",
    "unit_test",
)
TABLES = ("breast_cancer", "wine", "iris", "digits")
MODELS = ("conv1d", "mlp")
# (set, model): both models on the series, the MLP only on tables.
ROWS = tuple(
    [(name, model) for name in TIME_SERIES for model in MODELS]
    + [(name, "mlp") for name in TABLES]
)
HYPERPARAMETERS = {
    "seeds": [0, 1, 2],
    "rows": [f"{name}/{model}" for name, model in ROWS],
    # Held out of each training split to calibrate: this fraction (at least
    # `min_calibration` rows), stratified when every class has 2 rows or
    # more, always with this seed (the split does not vary with the seed).
    "calibration_fraction": 0.2,
    "min_calibration": 2,
    "calibration_seed": 0,
    # Base training: Adam at this rate, batches of `batch_size`, and
    # epochs = clip(ceil(step_budget / steps_per_epoch), min_epochs,
    # max_epochs), so that a set of 16 rows trains for as many steps as
    # one of 400 (where the cap allows).
    "base_learning_rate": 1e-3,
    "batch_size": 32,
    "step_budget": 1500,
    "min_epochs": 20,
    "max_epochs": 300,
}
QUICK = {
    "seeds": [0],
    # Fast but one of each kind: a Conv1D on a univariate series, an MLP on
    # a multichannel series and an MLP on a table.
    "rows": [
        "italy_power_demand/conv1d",
        "japanese_vowels/mlp",
        "breast_cancer/mlp",
    ],
}
BASELINES = ("msp", "max_logit", "energy", "mahalanobis", "knn")
SCORES = BASELINES + ("tac",)
# How far a full run on another machine may drift from the recorded
# figures before the difference is reported (not failed).
TOLERANCE = 0.03
# What every run promises per row, as margins below the same run's
# baseline: TAC's nearest-code accuracy against the base's, and the default
# confidence's error AUROC against max softmax's.
MARGINS = {"accuracy": 0.02, "error_auroc": 0.01}
# Provisional: the quick run has one seed, so its figures swing more than a
# mean over three; these margins are a guess until the spread is measured
# over seeds and backends (`examples/seed_spread.py`).
QUICK_MARGINS = {"accuracy": 0.05, "error_auroc": 0.05}
# With fewer test errors per seed than this, the error AUROC rests on a
# handful of ranks (one error moves it by 1/errors): no promise on it.
MIN_ERRORS_FOR_AUROC = 5

parser = argparse.ArgumentParser(description="TAC's defaults on small data.")
parser.add_argument("--quick", action="store_true", help="the short run")
parser.add_argument("--update-figures", action="store_true")
parser.add_argument("--no-check", action="store_true")
parser.add_argument(
    "--sets",
    nargs="+",
    choices=TIME_SERIES + TABLES,
    help="run only these data sets (not recorded)",
)
parser.add_argument(
    "--models",
    nargs="+",
    choices=MODELS,
    help="run only these models (not recorded)",
)
parser.add_argument(
    "--seeds", nargs="+", type=int, help="these seeds only (not recorded)"
)
parser.add_argument(
    "--output",
    default=os.path.join("reports", "small_data"),
    help="folder for the Markdown and JSON report",
)
args, _ = parser.parse_known_args()
quick = args.quick or os.environ.get("KERAS_TAC_EXAMPLE_QUICK") == "1"
config = dict(HYPERPARAMETERS, **(QUICK if quick else {}))
if args.sets or args.models:
    # A chosen subset is taken from every row, also in the quick run.
    config["rows"] = [
        f"{name}/{model}"
        for name, model in ROWS
        if name in (args.sets or TIME_SERIES + TABLES)
        and model in (args.models or MODELS)
    ]
if args.seeds:
    config["seeds"] = list(args.seeds)
if not config["rows"]:
    parser.error("no (set, model) row matches --sets and --models")
started = time.time()

"""
## Data

Every set comes from a package installed with `keras-tac[data]`, through
`keras_tac.datasets`, so nothing is downloaded. The series keep sktime's
train/test split; the tables are split 80/20 by `load_sklearn_table`.
From each training split a calibration part is held out; the rest (the
"fitting split") trains the base and TAC and fits the baselines. Inputs are
standardised with the fitting split's statistics: per column for tables,
per channel for series (over their real steps: the zero padding of
unequal-length series, japanese_vowels and plaid, stays zero).
"""


def hold_out(y):
    """Indices `(fit, calibration)` of a training split."""
    count = max(
        config["min_calibration"],
        round(len(y) * config["calibration_fraction"]),
    )
    counts = np.bincount(y)
    counts = counts[counts > 0]
    # Stratifying needs 2 rows of every class and room for one per class
    # on both sides.
    stratify = (
        counts.min() >= 2
        and count >= len(counts)
        and len(y) - count >= len(counts)
    )
    return train_test_split(
        np.arange(len(y)),
        test_size=count,
        random_state=config["calibration_seed"],
        stratify=y if stratify else None,
    )


def real_steps(x):
    """Mask `(n, steps)` of the real steps of end-padded series: up to the
    last step where some channel is not zero."""
    nonzero = np.any(x != 0, axis=2)
    lengths = x.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
    lengths = np.where(nonzero.any(axis=1), lengths, 0)
    return np.arange(x.shape[1])[None, :] < lengths[:, None]


def load(name):
    """`{"fit", "calibration", "test"}` of standardised `(x, y)`."""
    if name in TIME_SERIES:
        (x_train, y_train), (x_test, y_test) = datasets.load_time_series(name)
    else:
        (x_train, y_train), (x_test, y_test) = datasets.load_sklearn_table(
            name, seed=0
        )
    fit, calibration = hold_out(y_train)
    x_fit = x_train[fit]
    if name in TIME_SERIES:
        mask = real_steps(x_fit)
        mean, std = x_fit[mask].mean(axis=0), x_fit[mask].std(axis=0)
    else:
        mean, std = x_fit.mean(axis=0), x_fit.std(axis=0)
    # Constant columns (the border pixels of digits) are left unscaled.
    std = np.where(std > 0, std, 1.0)

    def standardise(x):
        z = (x - mean) / std
        if name in TIME_SERIES:
            z = np.where(real_steps(x)[..., None], z, 0.0)
        return z.astype("float32")

    return {
        "fit": (standardise(x_fit), y_train[fit]),
        "calibration": (
            standardise(x_train[calibration]),
            y_train[calibration],
        ),
        "test": (standardise(x_test), y_test),
    }


"""
## Models

Two small bases, the kind one would try first on a small set: a Conv1D
network (two convolutions, global average pooling) for series, and an MLP
on the flattened input (a series' steps and channels, or a table's
columns). Both end in a `Dense` layer of logits.
"""


def build_conv1d(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    h = layers.Conv1D(32, 5, padding="same", activation="relu")(inputs)
    h = layers.MaxPooling1D(2)(h)
    h = layers.Conv1D(64, 5, padding="same", activation="relu")(h)
    h = layers.GlobalAveragePooling1D()(h)
    h = layers.Dense(32, activation="relu")(h)
    outputs = layers.Dense(num_classes, name="logits")(h)
    return keras.Model(inputs, outputs, name="conv1d")


def build_mlp(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    h = layers.Flatten()(inputs)
    h = layers.Dense(64, activation="relu")(h)
    h = layers.Dense(64, activation="relu")(h)
    h = layers.Dense(32, activation="relu")(h)
    outputs = layers.Dense(num_classes, name="logits")(h)
    return keras.Model(inputs, outputs, name="mlp")


BUILDERS = {"conv1d": build_conv1d, "mlp": build_mlp}

"""
## Train and calibrate

The base trains for a fixed budget of steps (see `HYPERPARAMETERS`), then
TAC is added with the library's default call and nothing else: no epochs,
no learning rate, no batch size. Warnings that `fit` or `calibrate` raise
(such as "TAC learned little from the taps") are kept for the report.
"""


def base_epochs(num_rows):
    steps_per_epoch = math.ceil(num_rows / config["batch_size"])
    epochs = math.ceil(config["step_budget"] / steps_per_epoch)
    return int(np.clip(epochs, config["min_epochs"], config["max_epochs"]))


def train(model, seed, data, num_classes):
    keras.utils.set_random_seed(seed)
    x_fit, y_fit = data["fit"]
    base = BUILDERS[model](x_fit.shape[1:], num_classes)
    base.compile(
        optimizer=keras.optimizers.Adam(config["base_learning_rate"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    base.fit(
        x_fit,
        y_fit,
        epochs=base_epochs(len(x_fit)),
        batch_size=config["batch_size"],
        verbose=0,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # The default call, exactly.
        tac = keras_tac.TACModel(base, seed=seed)
        tac.compile()
        tac.fit(x_fit, y_fit, verbose=0)
        tac.calibrate(*data["calibration"], verbose=0)
    quiet = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
    messages = sorted(
        {str(w.message) for w in caught if not issubclass(w.category, quiet)}
    )
    return tac, messages


def scorers():
    return [
        keras_tac.scores.MaxSoftmaxProbability(),
        keras_tac.scores.MaxLogit(),
        keras_tac.scores.Energy(),
        keras_tac.scores.MahalanobisDistance(),
        keras_tac.scores.DeepKNN(),
        keras_tac.scores.TACScore(),
    ]


"""
## Run every row

Error detection takes the base's correct test predictions as the positive
class (AUROC; higher is better). TAC's accuracy is that of its nearest
code (`tac_prediction`), against the base head's accuracy on the same test
inputs. When the base makes no test error (or only errors), the error
AUROC is undefined: it is kept as NaN and shown as "n/a".
"""

runs = {}
info = {}
for row in config["rows"]:
    name, model = row.split("/")
    data = load(name)
    x_test, y_test = data["test"]
    num_classes = int(max(data["fit"][1].max(), y_test.max())) + 1
    info[row] = {
        "sizes": {key: len(value[0]) for key, value in data.items()},
        "input_shape": list(x_test.shape[1:]),
        "classes": num_classes,
        # The test accuracy of always answering the most frequent class.
        "majority_accuracy": float(np.bincount(y_test).max() / len(y_test)),
        "base_epochs": base_epochs(len(data["fit"][0])),
        # Distinct messages, and the seeds whose fit or calibrate warned.
        "warnings": [],
        "warned_seeds": [],
        "seconds": [],
    }
    runs[row] = []
    for seed in config["seeds"]:
        run_started = time.time()
        tac, messages = train(model, seed, data, num_classes)
        report = keras_tac.compare_scores(
            tac,
            x_test,
            y_test,
            x_fit=data["fit"][0],
            y_fit=data["fit"][1],
            scorers=scorers(),
            verbose=0,
        )
        accuracies = tac.evaluate(
            x_test, y_test, batch_size=256, return_dict=True, verbose=0
        )
        base_accuracy = float(accuracies["base_accuracy"])
        errors = int(round((1 - base_accuracy) * len(y_test)))
        defined = 0 < errors < len(y_test)
        runs[row].append(
            {
                "seed": seed,
                "base_accuracy": base_accuracy,
                "tac_accuracy": float(accuracies["tac_accuracy"]),
                "test_errors": errors,
                "error_auroc": {
                    score: float(report[score]["error_auroc"])
                    if defined
                    else float("nan")
                    for score in SCORES
                },
            }
        )
        info[row]["tap_layers"] = list(tac.tap_layers)
        info[row]["warnings"] += [
            m for m in messages if m not in info[row]["warnings"]
        ]
        if messages:
            info[row]["warned_seeds"].append(seed)
        seconds = time.time() - run_started
        info[row]["seconds"].append(seconds)
        print(
            f"{row} seed {seed}: {seconds:.0f} s, base accuracy "
            f"{base_accuracy:.3f} ({errors} errors), TAC accuracy "
            f"{runs[row][-1]['tac_accuracy']:.3f}, error AUROC tac "
            f"{runs[row][-1]['error_auroc']['tac']:.3f} msp "
            f"{runs[row][-1]['error_auroc']['msp']:.3f} "
            f"({time.time() - started:.0f} s in all)"
        )
        keras.backend.clear_session()

"""
## Table

One line per (data set, model): mean ± standard deviation over the seeds.
The error AUROCs average the seeds where the base made errors; "n/a" when
it made none in any seed.
"""


def values(row, key):
    return np.array([run[key] for run in runs[row]], "float64")


def auroc_values(row, score):
    array = np.array([run["error_auroc"][score] for run in runs[row]])
    return array[~np.isnan(array)]


def cell(array):
    if len(array) == 0:
        return "n/a"
    return f"{array.mean():.3f} ± {array.std():.3f}"


summary = {}
lines = [
    "| set | model | fit / cal / test | classes | base acc | TAC acc | "
    "`tac` error AUROC | `msp` error AUROC | best baseline | test errors "
    "per seed | s per run |",
    "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
]
notes = []
for row in config["rows"]:
    name, model = row.split("/")
    sizes = info[row]["sizes"]
    base_accuracy = values(row, "base_accuracy")
    tac_accuracy = values(row, "tac_accuracy")
    errors = values(row, "test_errors")
    info[row]["mean_test_errors"] = float(errors.mean())
    summary[f"{row}/base_accuracy"] = float(base_accuracy.mean())
    summary[f"{row}/tac_accuracy"] = float(tac_accuracy.mean())
    means = {}
    for score in SCORES:
        array = auroc_values(row, score)
        if len(array):
            means[score] = float(array.mean())
            # Undefined figures stay out of the summary (and the record).
            summary[f"{row}/{score}/error_auroc"] = means[score]
    baselines = {s: means[s] for s in BASELINES if s in means}
    if baselines:
        best = max(baselines, key=baselines.get)
        best_cell = f"{best} {cell(auroc_values(row, best))}"
    else:
        best_cell = "n/a"
    lines.append(
        f"| {name} | {model} | {sizes['fit']} / {sizes['calibration']} / "
        f"{sizes['test']} | {info[row]['classes']} | {cell(base_accuracy)} | "
        f"{cell(tac_accuracy)} | {cell(auroc_values(row, 'tac'))} | "
        f"{cell(auroc_values(row, 'msp'))} | {best_cell} | "
        f"{errors.mean():.1f} | {np.mean(info[row]['seconds']):.0f} |"
    )
    if errors.min() == 0:
        notes.append(
            f"- {row}: the base made no test error in "
            f"{int((errors == 0).sum())} of {len(errors)} seeds; the error "
            "AUROC is undefined there (n/a) and averages the other seeds."
        )
    if errors.mean() < MIN_ERRORS_FOR_AUROC:
        notes.append(
            f"- {row}: {errors.mean():.1f} test errors per seed, fewer than "
            f"{MIN_ERRORS_FOR_AUROC}: the error AUROC rests on too few "
            "ranks, so it promises nothing."
        )
    if base_accuracy.mean() < info[row]["majority_accuracy"] + 0.05:
        notes.append(
            f"- {row}: the base barely beats always answering the most "
            f"frequent class ({info[row]['majority_accuracy']:.3f})."
        )
    if info[row]["warnings"]:
        # The same warning recurs per seed with other numbers: once is
        # enough here (the JSON keeps them all).
        notes.append(
            f"- {row}: `fit`/`calibrate` warned in "
            f"{len(info[row]['warned_seeds'])} of {len(errors)} seeds, "
            f"first: {info[row]['warnings'][0]}"
        )

stamp = figures.stamp()
report = "\n".join(
    [
        "# TAC's defaults on small data sets",
        "",
        "Produced by `examples/small_data.py`"
        + (" --quick" if quick else "")
        + f" at commit {stamp['commit']} on the {stamp['backend']} backend "
        f"(Keras {stamp['keras']}) in {time.time() - started:.0f} s; seeds "
        f"{config['seeds']}, mean ± standard deviation over seeds. TAC is "
        "the default call: `TACModel(base, seed=seed)`, `compile()`, "
        "`fit(x_fit, y_fit)`, `calibrate(x_cal, y_cal)`. Best baseline: the "
        "highest mean error AUROC of " + ", ".join(BASELINES) + ".",
        "",
        *lines,
        "",
        *(["Notes:", "", *notes, ""] if notes else []),
    ]
)
print(report)


def finite(value):
    """JSON has no NaN: undefined AUROCs are written as null."""
    return None if isinstance(value, float) and math.isnan(value) else value


os.makedirs(args.output, exist_ok=True)
with open(
    os.path.join(args.output, "small_data.md"), "w", encoding="utf-8"
) as file:
    file.write(report)
with open(
    os.path.join(args.output, "small_data.json"), "w", encoding="utf-8"
) as file:
    json.dump(
        {
            "stamp": stamp,
            "config": config,
            "info": info,
            "runs": {
                row: [
                    dict(
                        run,
                        error_auroc={
                            k: finite(v) for k, v in run["error_auroc"].items()
                        },
                    )
                    for run in row_runs
                ]
                for row, row_runs in runs.items()
            },
            "summary": summary,
        },
        file,
        indent=1,
    )


def promises(summary):
    margins = QUICK_MARGINS if quick else MARGINS
    checks = []
    for row in config["rows"]:
        checks.append(
            figures.at_least(
                f"{row}: TAC accuracy vs base accuracy",
                summary[f"{row}/tac_accuracy"],
                summary[f"{row}/base_accuracy"],
                margins["accuracy"],
            )
        )
        if info[row]["mean_test_errors"] < MIN_ERRORS_FOR_AUROC:
            continue
        checks.append(
            figures.at_least(
                f"{row}/error_auroc: tac vs msp",
                summary[f"{row}/tac/error_auroc"],
                summary[f"{row}/msp/error_auroc"],
                margins["error_auroc"],
            )
        )
    return checks


if not args.no_check:
    figures.check(
        "small_data",
        summary,
        promises(summary),
        quick=quick,
        update=args.update_figures
        and not (args.sets or args.models or args.seeds),
        tolerances={key: TOLERANCE for key in summary},
    )
