"""The TAC reference's CIFAR-10 recipe on a GPU machine (not run in CI).

    KERAS_BACKEND=jax python benchmarks/gpu/reference_cifar10.py \\
        --base-weights wrn_28_10.weights.h5      # add-on, as the reference
    KERAS_BACKEND=jax python benchmarks/gpu/reference_cifar10.py
                                                 # from scratch (no weights)
    python benchmarks/gpu/reference_cifar10.py --smoke   # a CPU check

Runs `keras_tac.recipes.get("reference_cifar10")`: WideResNet-28-10, TAC on
its three group outputs with the "very_large" projections, temperature 15,
code noise 0.1, mixup 0.2, PyTorch's SGD (learning rate 0.01, momentum 0.9,
weight decay 5e-5, global clip 1.0), steps at epochs 10/150/250/350, batch
size 128, horizontal flip and timm's RandAugment m20-n2-mstd0.5.

The reference adds TAC to a pretrained WRN-28-10 it does not ship. With
`--base-weights` (weights of `recipe.build_base()`, e.g. saved with
`base.save_weights`) the base is frozen and only TAC trains, as in the
reference; without, base and TAC train jointly from scratch
(`train_base=True`, BatchNorm in training mode).

Data: CIFAR-10 from `tensorflow_datasets`, read from `--data-dir` (or
TFDS's default directory) without downloading; the script exits with a
message when it is not there. 5,000 training images are held out to
calibrate the rejection threshold (the reference trains on all 50,000 and
picks checkpoints on the test set; this script does not look at the test
set until the end). Augmentation runs in the `tf.data` pipeline (any Keras
backend), mixup in `TACModel.fit`.

Writes `results.json` (settings, per-epoch history and times, final
figures) and `tac.keras` to `--output-dir`.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

HELD_OUT = 5000


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="default: the recipe's"
    )
    parser.add_argument("--base-weights", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--output-dir", default=os.path.join("runs", "reference_cifar10")
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="256 random images, WRN-10-1, 1 epoch: checks the script",
    )
    return parser.parse_args(argv)


def load_cifar10(data_dir):
    try:
        import tensorflow_datasets as tfds

        splits = tfds.load(
            "cifar10",
            split=["train", "test"],
            data_dir=data_dir,
            download=False,
            batch_size=-1,
            as_supervised=True,
        )
    except Exception as error:  # noqa: BLE001 (any failure: same message)
        sys.exit(
            "CIFAR-10 is not available locally to tensorflow_datasets "
            f"(data_dir={data_dir or 'default'}): {error}\n"
            "Prepare it once on a machine with network access "
            "(`tfds.load('cifar10', data_dir=DIR)`), copy DIR here and pass "
            "--data-dir DIR."
        )
    (x_train, y_train), (x_test, y_test) = (
        (np.asarray(x), np.asarray(y)) for x, y in splits
    )
    return (
        (x_train.astype("float32") / 255.0, y_train.astype("int32")),
        (x_test.astype("float32") / 255.0, y_test.astype("int32")),
    )


def random_data(seed):
    rng = np.random.default_rng(seed)
    x = rng.random((320, 32, 32, 3), dtype="float32")
    y = rng.integers(0, 10, size=320).astype("int32")
    return (x[:256], y[:256]), (x[256:], y[256:])


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras
    import tensorflow as tf

    import keras_tac
    from keras_tac import metrics

    recipe = keras_tac.recipes.get("reference_cifar10")
    keras.utils.set_random_seed(args.seed)
    if args.smoke:
        (x_train, y_train), (x_test, y_test) = random_data(args.seed)
        held_out, base_kwargs, epochs = 64, {"depth": 10}, 1
        base_kwargs["width_multiplier"] = 1
    else:
        (x_train, y_train), (x_test, y_test) = load_cifar10(args.data_dir)
        held_out, base_kwargs = HELD_OUT, {}
        epochs = args.epochs or recipe.epochs
    order = np.random.default_rng(args.seed).permutation(len(x_train))
    x_cal, y_cal = x_train[order[:held_out]], y_train[order[:held_out]]
    x_fit, y_fit = x_train[order[held_out:]], y_train[order[held_out:]]

    base = recipe.build_base(seed=args.seed, **base_kwargs)
    add_on = args.base_weights is not None
    if add_on:
        base.load_weights(args.base_weights)
    tac = recipe.build_tac(base, train_base=not add_on, seed=args.seed)

    augmentation = recipe.augmentation(seed=args.seed)
    dataset = (
        tf.data.Dataset.from_tensor_slices((x_fit, y_fit))
        .shuffle(len(x_fit), seed=args.seed, reshuffle_each_iteration=True)
        .batch(recipe.batch_size)
        .map(
            lambda x, y: (augmentation(x, training=True), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .prefetch(tf.data.AUTOTUNE)
    )
    epoch_times = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.time()

        def on_epoch_end(self, epoch, logs=None):
            epoch_times.append(time.time() - self.start)

    start = time.time()
    history = tac.fit(
        dataset,
        epochs=epochs,
        callbacks=[recipe.schedule_callback(), EpochTimer()],
        verbose=2,
    )
    train_seconds = time.time() - start

    tac.calibrate(x_cal, y_cal, target_coverage=0.95, verbose=0)
    out = tac.predict_with_rejection(x_test, batch_size=256, verbose=0)
    logits = tac.predict(x_test, batch_size=256, verbose=0)["base_output"]
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    correct = out["prediction"] == y_test
    accepted = out["accepted"]
    results = {
        "base accuracy": float(correct.mean()),
        "TAC accuracy": float((out["tac_prediction"] == y_test).mean()),
        "error-detection AUROC, TAC": float(
            metrics.roc_auc(out["confidence"], correct)
        ),
        "error-detection AUROC, max softmax": float(
            metrics.roc_auc(probabilities.max(axis=1), correct)
        ),
        "accepted fraction": float(accepted.mean()),
        "accuracy on accepted": float(correct[accepted].mean())
        if accepted.any()
        else float("nan"),
    }
    report = {
        "recipe": recipe.name,
        "mode": "add-on" if add_on else "from scratch",
        "smoke": args.smoke,
        "backend": keras.backend.backend(),
        "epochs": epochs,
        "train_samples": len(x_fit),
        "train_seconds": train_seconds,
        "epoch_seconds": epoch_times,
        "history": {
            k: [float(v) for v in values]
            for k, values in history.history.items()
        },
        "results": results,
    }
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as file:
        json.dump(report, file, indent=2)
    tac.save(os.path.join(args.output_dir, "tac.keras"))
    print(f"\n{report['mode']} on {report['backend']}, {epochs} epochs")
    print("| figure | value |\n| --- | --- |")
    for name, value in results.items():
        print(f"| {name} | {value:.4f} |")
    return report


if __name__ == "__main__":
    main()
