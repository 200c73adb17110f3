"""All figures of the benchmark for one Keras backend (the one set in
`KERAS_BACKEND`), written as JSON. Run through `benchmarks/run.py`, which
starts one process per backend:

    KERAS_BACKEND=jax python -m benchmarks.suite --mode short --output r.json
"""

import argparse
import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks import common
from keras_tac import TACModel
from keras_tac.datasets import load_mnist_digits

MODES = {
    "short": {
        "repeats": 5,
        "inference_samples": 1024,
        "batch_size": 256,
        "base_train_samples": 2000,
        "base_epochs": 1,
        "addon_train_samples": 1024,
        "addon_epochs": 20,
        "addon_batch_sizes": (64,),
        "noise_seeds": 0,
        "memory_samples": (500, 5000),
        "memory_repeats": 1,
        "scale_samples": 512,
        "scale_repeats": 3,
        "classes": (10, 1000),
        "taps": (1, 8),
        "torch_compile": False,
        "jit_fit_paths": (True,),
        "resnet_repeats": 3,
    },
    "full": {
        "repeats": 9,
        "inference_samples": 4096,
        "batch_size": 256,
        "base_train_samples": 4000,
        "base_epochs": 3,
        "addon_train_samples": 4000,
        "addon_epochs": 20,
        "addon_batch_sizes": (32, 64, 128, 256),
        "noise_seeds": 3,
        "memory_samples": (5000, 50000),
        "memory_repeats": 3,
        "scale_samples": 2048,
        "scale_repeats": 7,
        "classes": (10, 30, 100, 300, 1000),
        "taps": (1, 2, 3, 4, 5, 6, 7, 8),
        "torch_compile": True,
        "jit_fit_paths": (False, True),
        "resnet_repeats": 5,
    },
}

FIGURES = (
    "inference",
    "jit",
    "training",
    "scale",
    "memory",
    "resnet",
    "target",
)
# What each mode runs without `--figures`: ResNet50 costs 2-4 minutes per
# backend on 2 CPU cores, too much for the short run of CI; the target
# figure (`benchmarks/target.py`: the example CNN, the CNN tapped at every
# convolution and ResNet50) some 3-5 minutes.
DEFAULT_FIGURES = {
    "short": ("inference", "jit", "training", "scale", "memory"),
    "full": FIGURES,
}

# The reference's MNIST add-on regularisation and optimiser (batch 64
# instead of 8, so the learning rate is lower than its 0.1). Its gradient
# clip is `torch.nn.utils.clip_grad_norm_` over all parameters: one global
# norm (`global_clipnorm`), not Keras's per-variable `clipnorm`.
CODE_NOISE = 0.15


def _reference_optimizer():
    return keras.optimizers.SGD(
        0.05, momentum=0.9, weight_decay=5e-5, global_clipnorm=1.0
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=sorted(MODES), default="short")
    parser.add_argument("--output", required=True)
    parser.add_argument(
        "--figures",
        help=f"comma-separated subset of {','.join(FIGURES)} (default: "
        "all but resnet in short mode, all in full mode)",
    )
    args = parser.parse_args(argv)
    config = MODES[args.mode]
    figures = args.figures or ",".join(DEFAULT_FIGURES[args.mode])
    selected = [name for name in figures.split(",") if name]
    for name in selected:
        if name not in FIGURES:
            parser.error(f"unknown figure {name!r}; expected {FIGURES}")
    started = time.perf_counter()
    results = {
        "backend": keras.backend.backend(),
        "mode": args.mode,
        "machine": common.machine(),
        "config": config,
        "load_average_before": os.getloadavg(),
    }
    keras.utils.set_random_seed(0)
    data = _data(config)
    # Timings do not depend on the weights: train the base only when the
    # accuracies are measured.
    base = (
        _trained_base(data, config)
        if "training" in selected
        else common.mnist_cnn()
    )
    for name in selected:
        figure = globals()[f"{name}_figure"]
        start = time.perf_counter()
        _log(f"{name} ...")
        results[name] = figure(base, data, config)
        results[name]["seconds"] = time.perf_counter() - start
        results[name]["commit"] = common.commit_stamp()
        _log(f"{name}: {time.perf_counter() - start:.1f} s")
    results["load_average_after"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - started
    partial = set(selected) != set(DEFAULT_FIGURES[args.mode])
    if partial and os.path.exists(args.output):
        # A partial run updates those figures of an earlier full one.
        with open(args.output) as handle:
            earlier = json.load(handle)
        if earlier.get("mode") == args.mode:
            earlier.update({name: results[name] for name in selected})
            earlier.setdefault("rerun", {}).update(
                {name: results["load_average_before"] for name in selected}
            )
            results = earlier
    with open(args.output, "w") as handle:
        json.dump(results, handle, indent=1)


def _log(message):
    print(f"[{keras.backend.backend()}] {message}", file=sys.stderr)


def _data(config):
    (x, y), (x_test, y_test) = load_mnist_digits()
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test}


def _tile(x, size):
    return np.resize(x, (size, *x.shape[1:]))


def _trained_base(data, config):
    base = common.mnist_cnn()
    base.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    count = config["base_train_samples"]
    base.fit(
        data["x"][:count],
        data["y"][:count],
        epochs=config["base_epochs"],
        batch_size=64,
        verbose=0,
    )
    return base


# ----------------------------------------------------------------------
# 1. Inference: predict_with_rejection against base_model.predict
# ----------------------------------------------------------------------
def _inference_times(base, tac, x, batch_size, repeats):
    functions = {
        "base": lambda: base.predict(x, batch_size=batch_size, verbose=0),
        "tac": lambda: tac.predict_with_rejection(
            x, threshold=-1.0, batch_size=batch_size, verbose=0
        ),
    }
    first_call = _first_calls(functions)
    times = common.interleaved(functions, repeats)
    return {
        "base_ms_per_sample": 1e3 * float(np.median(times["base"])) / len(x),
        "tac_ms_per_sample": 1e3 * float(np.median(times["tac"])) / len(x),
        "ratio": common.paired_ratio(times, "tac", "base"),
        "first_call_seconds": first_call,
    }


def _first_calls(functions):
    """Seconds of each function's first call (tracing and compiling),
    before the timed repeats."""
    seconds = {}
    for name, function in functions.items():
        start = time.perf_counter()
        function()
        seconds[name] = time.perf_counter() - start
    return seconds


def inference_figure(base, data, config):
    tac = TACModel(base)
    x = _tile(data["x_test"], config["inference_samples"])
    result = _inference_times(
        base, tac, x, config["batch_size"], config["repeats"]
    )
    base_flops = common.base_flops(base)
    addon_flops = common.addon_flops(tac)
    result.update(
        {
            "num_samples": len(x),
            "batch_size": config["batch_size"],
            "repeats": config["repeats"],
            "tap_layers": tac.tap_layers,
            "jit_compile": bool(tac.jit_compile),
            "base_mflops_per_sample": base_flops / 1e6,
            "addon_mflops_per_sample": addon_flops / 1e6,
            "floor": 1.0 + addon_flops / base_flops,
        }
    )
    return result


# ----------------------------------------------------------------------
# 6. Inference on ResNet50 (96x96): a typical, larger base
# ----------------------------------------------------------------------
RESNET_SAMPLES = 256
RESNET_BATCH_SIZE = 64


def resnet50_base():
    """`keras.applications.ResNet50` without weights (nothing downloaded),
    96x96x3 inputs, 10 classes, seeded."""
    keras.utils.set_random_seed(0)
    return keras.applications.ResNet50(
        weights=None, input_shape=(96, 96, 3), classes=10
    )


def resnet_figure(base, data, config):
    """`TACModel.predict` and `predict_with_rejection` against the base's
    `predict` on ResNet50 at 96x96, default taps, batch 64, 256 random
    inputs (timing does not depend on the weights), alternated."""
    del base, data  # the MNIST model and digits are not used here
    model = resnet50_base()
    tac = TACModel(model)
    x = np.random.default_rng(0).random(
        (RESNET_SAMPLES, 96, 96, 3), dtype=np.float32
    )
    size = RESNET_BATCH_SIZE
    functions = {
        "base": lambda: model.predict(x, batch_size=size, verbose=0),
        "predict": lambda: tac.predict(x, batch_size=size, verbose=0),
        "rejection": lambda: tac.predict_with_rejection(
            x, threshold=-1.0, batch_size=size, verbose=0
        ),
    }
    first_call = _first_calls(functions)
    repeats = config["resnet_repeats"]
    times = common.interleaved(functions, repeats)
    base_flops = common.base_flops(model)
    result = {
        "num_samples": RESNET_SAMPLES,
        "batch_size": size,
        "repeats": repeats,
        "tap_layers": tac.tap_layers,
        "base_ms_per_sample": 1e3 * float(np.median(times["base"])) / len(x),
        "floor": 1.0 + common.addon_flops(tac) / base_flops,
        "base_mflops_per_sample": base_flops / 1e6,
        "seconds_per_call": {
            name: [float(t) for t in values] for name, values in times.items()
        },
        "first_call_seconds": first_call,
    }
    for name in functions:
        if name != "base":
            result[f"{name}_ratio"] = common.paired_ratio(times, name, "base")
    return result


# ----------------------------------------------------------------------
# 7. Issue 26's target: predict_with_rejection within 1.10x of the base
# ----------------------------------------------------------------------
def target_figure(base, data, config):
    """`benchmarks.target`'s figure of each model (the example CNN, the
    CNN tapped at every convolution, ResNet50 96x96): the rejection ratio
    and, above 1.10x, the operation that keeps it there."""
    del base, data, config  # each model brings its own inputs
    from benchmarks import target

    return {name: target.measure(name) for name in target.MODELS}


# ----------------------------------------------------------------------
# 5. jit_compile: inference ratio and training with jit_compile=True
# ----------------------------------------------------------------------
def jit_figure(base, data, config):
    backend = keras.backend.backend()
    if backend == "torch" and not config["torch_compile"]:
        return {
            "skipped": "torch.compile takes minutes per model on a small "
            "CPU; measured in --full mode"
        }
    tac = TACModel(base)
    x = _tile(data["x_test"], config["inference_samples"])
    original = base.jit_compile
    for model in (base, tac):
        model.jit_compile = True
        model.predict_function = None
    try:
        if backend == "jax":
            # JAX compiles by default: the inference figure is this one.
            result = {"note": "jit_compile=True is the default on JAX"}
        else:
            result = _inference_times(
                base, tac, x, config["batch_size"], config["repeats"]
            )
        result["jit_compile"] = bool(tac.jit_compile)
        # The training paths compile and run with jit_compile=True.
        count = 256
        for cache in config["jit_fit_paths"]:
            keras.utils.set_random_seed(0)
            model = TACModel(base)
            model.compile(optimizer="sgd", jit_compile=True)
            start = time.perf_counter()
            history = model.fit(
                data["x"][:count],
                data["y"][:count],
                epochs=1,
                batch_size=64,
                verbose=0,
                cache_features=cache,
            )
            key = "cached" if cache else "ordinary"
            result[f"fit_{key}_seconds"] = time.perf_counter() - start
            result[f"fit_{key}_loss"] = float(history.history["loss"][-1])
            result[f"fit_{key}_jit_compile"] = bool(model.jit_compile)
    finally:
        base.jit_compile = original
        base.predict_function = None
    return result


# ----------------------------------------------------------------------
# 2. Add-on training: cached features against re-running the base
# ----------------------------------------------------------------------
def _train_addon(base, data, config, cache, seed, batch_size):
    keras.utils.set_random_seed(seed)
    tac = TACModel(base, code_noise=CODE_NOISE, seed=seed)
    tac.compile(optimizer=_reference_optimizer())
    count = config["addon_train_samples"]
    start = time.perf_counter()
    history = tac.fit(
        data["x"][:count],
        data["y"][:count],
        epochs=config["addon_epochs"],
        batch_size=batch_size,
        verbose=0,
        cache_features=cache,
    )
    seconds = time.perf_counter() - start
    outputs = tac.predict(data["x_test"], batch_size=256, verbose=0)
    correct = outputs["prediction"] == data["y_test"]
    return {
        "seconds": seconds,
        "final_loss": float(history.history["loss"][-1]),
        "base_accuracy": float(correct.mean()),
        "tac_accuracy": float(
            (outputs["tac_prediction"] == data["y_test"]).mean()
        ),
        "error_detection_auroc": float(
            roc_auc_score(correct, outputs["confidence"])
        ),
    }


def _keras_floor(data, config, batch_size):
    """Seconds of the same `fit` call (samples, epochs, batch size,
    optimizer) for a model that is one small Dense layer on the input
    pixels: Keras's own per-step cost, which bounds any add-on's speedup."""
    count = config["addon_train_samples"]
    x = data["x"][:count].reshape(count, -1)
    model = keras.Sequential([keras.Input(x.shape[1:]), keras.layers.Dense(10)])
    model.compile(
        optimizer=_reference_optimizer(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    start = time.perf_counter()
    model.fit(
        x,
        data["y"][:count],
        epochs=config["addon_epochs"],
        batch_size=batch_size,
        verbose=0,
    )
    return time.perf_counter() - start


def training_figure(base, data, config):
    """Whole `fit` calls (compilation and, for the cached path, the
    feature pass included), ordinary then cached, per batch size."""
    result = {
        "num_samples": config["addon_train_samples"],
        "epochs": config["addon_epochs"],
        "batch_sizes": {},
    }
    for batch_size in config["addon_batch_sizes"]:
        ordinary = _train_addon(base, data, config, False, 0, batch_size)
        cached = _train_addon(base, data, config, True, 0, batch_size)
        floor = _keras_floor(data, config, batch_size)
        base_passes = config["addon_epochs"] * _base_pass_seconds(
            base, data["x"][: config["addon_train_samples"]], batch_size
        )
        result["batch_sizes"][str(batch_size)] = {
            "ordinary": ordinary,
            "cached": cached,
            "keras_floor_seconds": floor,
            "base_passes_seconds": base_passes,
            "cached_over_base_passes": cached["seconds"] / base_passes,
            "speedup": ordinary["seconds"] / cached["seconds"],
            "speedup_bound": ordinary["seconds"] / floor,
            "tac_accuracy_difference": cached["tac_accuracy"]
            - ordinary["tac_accuracy"],
            "auroc_difference": cached["error_detection_auroc"]
            - ordinary["error_detection_auroc"],
        }
    if config["noise_seeds"]:
        # Seed-to-seed spread of the (cheap) cached path at the first batch
        # size: the noise level against which the differences are judged.
        batch_size = config["addon_batch_sizes"][0]
        first = result["batch_sizes"][str(batch_size)]["cached"]
        runs = [
            _train_addon(base, data, config, True, seed, batch_size)
            for seed in range(1, config["noise_seeds"] + 1)
        ]
        for key in ("tac_accuracy", "error_detection_auroc"):
            values = [run[key] for run in runs] + [first[key]]
            result[f"{key}_seed_std"] = float(np.std(values, ddof=1))
    return result


def _base_pass_seconds(base, x, batch_size):
    """Median seconds of the base's `predict` over `x` (after a warm-up):
    what an epoch of the ordinary path costs at least."""
    base.predict(x, batch_size=batch_size, verbose=0)
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        base.predict(x, batch_size=batch_size, verbose=0)
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


# ----------------------------------------------------------------------
# 4. Scale: time per sample against classes and taps
# ----------------------------------------------------------------------
def scale_figure(base, data, config):
    x = _tile(data["x_test"], config["scale_samples"])
    repeats = config["scale_repeats"]
    batch_size = config["batch_size"]
    classes = []
    for num_classes in config["classes"]:
        model = common.mnist_cnn(num_classes=num_classes)
        tac = TACModel(model)
        row = _inference_times(model, tac, x, batch_size, repeats)
        row["num_classes"] = num_classes
        row["code_length"] = int(tac.codes.shape[1])
        row["floor"] = 1.0 + common.addon_flops(tac) / common.base_flops(model)
        classes.append(row)
    taps = []
    for num_taps in config["taps"]:
        tac = TACModel(base, tap_layers=list(common.TAP_ORDER[:num_taps]))
        row = _inference_times(base, tac, x, batch_size, repeats)
        row["num_taps"] = num_taps
        row["tap_layers"] = tac.tap_layers
        row["floor"] = 1.0 + common.addon_flops(tac) / common.base_flops(base)
        taps.append(row)
    return {
        "num_samples": len(x),
        "repeats": repeats,
        "classes": classes,
        "taps": taps,
    }


# ----------------------------------------------------------------------
# 3. Memory: peak RSS of evaluate / calibrate / baseline fitting at N, 10N
# ----------------------------------------------------------------------
def _memory_probes(sizes):
    """One `benchmarks.memory` report per size, from fresh processes run
    side by side (only memory is read)."""
    processes = {
        size: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.memory",
                "--num-samples",
                str(size),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for size in sizes
    }
    probes = {}
    for size, process in processes.items():
        output, _ = process.communicate()
        if process.returncode:
            return None
        probes[size] = json.loads(output.strip().splitlines()[-1])
    return probes


def memory_figure(base, data, config):
    """Peak RSS at N and 10N samples: the median over `memory_repeats`
    fresh processes per size, since the RSS a framework holds before an
    operation moves by up to ~150 MB between processes (PyTorch)."""
    small, large = config["memory_samples"]
    runs = []
    for _ in range(config["memory_repeats"]):
        probes = _memory_probes((small, large))
        if probes is None:
            return {"error": "memory probe failed"}
        runs.append(probes)
    # The inputs are the same arrays in every run.
    inputs = [runs[0][small]["inputs_mb"], runs[0][large]["inputs_mb"]]
    operations = {}
    for name in runs[0][small]["operations"]:
        reports = [
            (run[small]["operations"][name], run[large]["operations"][name])
            for run in runs
        ]
        if any("skipped" in low or "skipped" in high for low, high in reports):
            operations[name] = {"skipped": reports[0][0].get("skipped")}
            continue
        low = [report[0]["peak_mb"] for report in reports]
        high = [report[1]["peak_mb"] for report in reports]
        peaks = [float(np.median(low)), float(np.median(high))]
        operations[name] = {
            "peak_mb": peaks,
            "peak_mb_runs": [low, high],
            "growth": peaks[1] / peaks[0] - 1.0,
            "growth_without_inputs": (
                (peaks[1] - inputs[1]) / (peaks[0] - inputs[0]) - 1.0
            ),
        }
    return {
        "num_samples": [small, large],
        "repeats": config["memory_repeats"],
        "inputs_mb": inputs,
        "operations": operations,
    }


if __name__ == "__main__":
    main()
