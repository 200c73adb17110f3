"""
Title: The TAC reference's MNIST recipe, end to end
Author: keras-tac developers
Description: Train LeNet_TAC and its Total Activation Classifier from scratch
with the settings of the authors' reference code, then reject likely errors.

## Introduction

The authors of TAC (Monteiro et al., ICLR 2023) published a PyTorch
reference, ServiceNow/tac. `keras_tac.recipes.get("reference_mnist")` holds
its MNIST recipe: the LeNet_TAC network (four unpadded 3x3 convolutions with
LeakyReLUs, tapped after each), the "small" projections, 16-bit Hadamard
codes per tap, temperature 10, code noise 0.15, PyTorch's SGD (learning rate
0.1, momentum 0.9, weight decay 5e-5, one global gradient-norm clip of 1),
the step schedule at epochs 5/100/150, batch size 8, 200 epochs, and the
reference's augmentation (random resized crop, rotation, additive noise).
`docs/reference.md` lists every setting next to the reference's.

The reference adds TAC to a pretrained LeNet_TAC that it does not ship.
This example trains base and TAC together from a random initialization with
the recipe (`recipe.build_tac(base, train_base=True)`), on the 5,000 real
MNIST digits bundled with keras-tac, calibrates a rejection threshold on
held-out digits, and reports on the test digits: the base head's accuracy,
TAC's own accuracy, how well TAC's confidence and the max softmax
probability separate the head's correct answers from its errors
(error-detection AUROC), the fraction of inputs accepted and the accuracy on
them.

**What is shortened.** The recipe's 200 epochs at batch size 8 take hours
on a laptop CPU (each step runs the four convolutions of LeNet_TAC forward
and backward on 8 digits): by default this example runs 2 epochs (`--epochs
2`, a few minutes on two free CPU cores), so no learning-rate step is reached
(the recipe's steps fall at epochs 5, 100 and 150, and the schedule is
indexed by epoch), on the 3,200 training digits left after holding out the
calibration digits (the reference trains on MNIST's 60,000). Trained from a
random initialization for so few steps, the network is far from converged:
expect figures far below a converged model's, rising quickly with
`--epochs`. Pass `--epochs 200` for the full recipe. `--quick` is a smoke
run for the test suite (1 epoch on 160 digits).

Run it with `python examples/reference_mnist.py` (any Keras backend through
`KERAS_BACKEND`; TensorFlow by default).

## Setup
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_tac import datasets  # noqa: E402
from keras_tac import metrics  # noqa: E402
from keras_tac import recipes  # noqa: E402

HYPERPARAMETERS = {
    "recipe": "reference_mnist",
    "epochs": 2,
    "max_samples": None,
    "calibration_fraction": 0.2,
    "target_coverage": 0.95,
    "seed": 0,
}
QUICK = {"epochs": 1, "max_samples": 200}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs (the recipe's: 200; default here: 2)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument(
        "--output", default=None, help="save the trained model (.keras) here"
    )
    return parser.parse_args()


"""
## Data

`load_mnist_digits` returns the 5,000 bundled digits (500 per class) as
28x28x1 images in `[0, 1]`, split 4,000 / 1,000. Part of the training split
is held out to calibrate the threshold; the test split is used only for the
final figures (the reference selects checkpoints on its test set; we do
not).
"""


def load_data(config):
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist_digits()
    limit = config["max_samples"]
    if limit:
        x_train, y_train = x_train[:limit], y_train[:limit]
        x_test, y_test = x_test[: limit // 2], y_test[: limit // 2]
    order = np.random.default_rng(config["seed"]).permutation(len(x_train))
    cut = int(len(x_train) * (1 - config["calibration_fraction"]))
    fit_index, calibration_index = order[:cut], order[cut:]
    return (
        (x_train[fit_index], y_train[fit_index]),
        (x_train[calibration_index], y_train[calibration_index]),
        (x_test, y_test),
    )


"""
## Model

The recipe builds the base network (PyTorch's default initialization, as in
the reference) and the TAC model on its four LeakyReLU outputs, compiled
with the recipe's optimizer. `train_base=True` trains both from scratch:
the objective is the TAC loss plus the head's cross-entropy.
"""


def build(recipe, config):
    keras.utils.set_random_seed(config["seed"])
    base = recipe.build_base(seed=config["seed"])
    tac = recipe.build_tac(base, train_base=True, seed=config["seed"])
    return base, tac


"""
## Train

`recipe.fit_kwargs` holds the batch size, the epochs, the augmentation layer
(applied to every training batch) and the learning-rate schedule callback.
"""


def train(recipe, tac, train_data, config):
    x_fit, y_fit = train_data
    fit_kwargs = dict(recipe.fit_kwargs, epochs=config["epochs"])
    return tac.fit(x_fit, y_fit, verbose=2, **fit_kwargs)


"""
## Evaluate with rejection

The threshold is set on the held-out digits so that `target_coverage` of
them is accepted, then applied to the test digits.
"""


def evaluate(tac, calibration_data, test_data, config):
    x_calibration, y_calibration = calibration_data
    x_test, y_test = test_data
    tac.calibrate(
        x_calibration,
        y_calibration,
        target_coverage=config["target_coverage"],
        verbose=0,
    )
    out = tac.predict_with_rejection(x_test, verbose=0)
    logits = tac.predict(x_test, verbose=0)["base_output"]
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    correct = out["prediction"] == y_test
    accepted = out["accepted"]
    return {
        "base accuracy": correct.mean(),
        "TAC accuracy": (out["tac_prediction"] == y_test).mean(),
        "error-detection AUROC, TAC": metrics.roc_auc(
            out["confidence"], correct
        ),
        "error-detection AUROC, max softmax": metrics.roc_auc(
            probabilities.max(axis=1), correct
        ),
        "accepted fraction": accepted.mean(),
        "accuracy on accepted": correct[accepted].mean()
        if accepted.any()
        else float("nan"),
    }


def print_report(recipe, config, results, num_train, num_test, seconds):
    print(
        f"\nRecipe {recipe.name!r}, trained from scratch on {num_train} "
        f"digits for {config['epochs']} of the recipe's {recipe.epochs} "
        f"epochs (batch size {recipe.batch_size}), on "
        f"{keras.backend.backend()}, in {seconds:.0f} s."
    )
    if config["epochs"] < recipe.epochs:
        print(
            "Shortened: fewer epochs than the recipe (its learning-rate "
            "steps fall at epochs "
            f"{', '.join(str(m) for m in recipe.milestones)}), and the "
            "bundled 5,000 digits instead of MNIST's 70,000."
        )
    print(f"\nResults on {num_test} test digits")
    print("| figure | value |\n| --- | --- |")
    for name, value in results.items():
        print(f"| {name} | {value:.4f} |")


"""
## Save

With `--output`, the `.keras` file holds the base, the TAC layers, the codes,
the calibrated threshold and the optimizer; `keras.saving.load_model` reads
it back after `import keras_tac`.
"""


def main():
    args = parse_args()
    config = dict(HYPERPARAMETERS)
    if args.quick:
        config.update(QUICK)
    if args.epochs is not None:
        config["epochs"] = args.epochs
    recipe = recipes.get(config["recipe"])
    start = time.time()
    train_data, calibration_data, test_data = load_data(config)
    base, tac = build(recipe, config)
    train(recipe, tac, train_data, config)
    results = evaluate(tac, calibration_data, test_data, config)
    print_report(
        recipe,
        config,
        results,
        len(train_data[1]),
        len(test_data[1]),
        time.time() - start,
    )
    if args.output:
        directory = os.path.dirname(args.output)
        if directory:
            os.makedirs(directory, exist_ok=True)
        tac.save(args.output)
        print(f"\nSaved {args.output}")
    return results


if __name__ == "__main__":
    main()
