"""Shared pieces of the benchmarks: the example model, FLOP counts, timing
and memory probes. Imported after `KERAS_BACKEND` is set."""

import os
import subprocess
import threading
import time

import keras
import numpy as np

from keras_tac.src.layers.tap_projection import PROJECTION_DEPTHS

# The taps of the scale curve, in the order they are added: the four default
# taps first (`keras_tac.tapping.default_tap_layers` picks them), then the
# other intermediate layers. The eighth is the 3,136-wide flattened tensor.
TAP_ORDER = (
    "conv_2",
    "conv_4",
    "pool_2",
    "dense_1",
    "conv_1",
    "conv_3",
    "pool_1",
    "flatten",
)


def mnist_cnn(num_classes=10, seed=0):
    """The example model's shapes on 28x28x1 inputs:
    Conv(32)-Conv(32)-pool-Conv(64)-Conv(64)-pool-Dense(128)-Dense(classes),
    3x3 "same" convolutions with ReLU, logits out."""
    init = keras.initializers.GlorotUniform
    inputs = keras.Input((28, 28, 1), name="image")
    h = inputs
    for index, filters in enumerate((32, 32, 64, 64)):
        h = keras.layers.Conv2D(
            filters,
            3,
            padding="same",
            activation="relu",
            kernel_initializer=init(seed + index),
            name=f"conv_{index + 1}",
        )(h)
        if index % 2:
            h = keras.layers.MaxPooling2D(name=f"pool_{index // 2 + 1}")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(
        128,
        activation="relu",
        kernel_initializer=init(seed + 4),
        name="dense_1",
    )(h)
    outputs = keras.layers.Dense(
        num_classes, kernel_initializer=init(seed + 5), name="logits"
    )(h)
    return keras.Model(inputs, outputs, name="mnist_cnn")


def base_flops(model):
    """Multiply-adds x 2 of the Conv2D and Dense layers, from their shapes."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            out = layer.output.shape
            kernel = int(np.prod(layer.kernel_size))
            fan_in = layer.input.shape[-1] // layer.groups
            total += 2 * int(np.prod(out[1:])) * kernel * fan_in
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return total


def addon_flops(tac):
    """FLOPs TAC adds to the base's forward pass, from the tap shapes:
    pooling (one add per tapped value), the projection's Dense layers,
    slice means, code matching (distances, nearest codes) and, for the
    combined confidence, the Mahalanobis novelty of every tap and the kNN
    distance to the bank (a sort of the bank's similarities included)."""
    depth = PROJECTION_DEPTHS[tac.head.projection]
    total = 0
    for tensor in tac.tap_model.outputs[1:]:
        shape = tensor.shape
        width = shape[-1]
        if len(shape) > 2:
            total += int(np.prod(shape[1:]))
        total += depth * 2 * width * width + width
    code_length = tac.codes.shape[1]
    # |z-1|, |z+1|, their sum and difference; two (M x K) products.
    total += 4 * code_length + 4 * code_length * tac.num_classes
    confidence = tac.confidence_layer
    if confidence is not None:
        for width in confidence.tap_widths:
            # Whitening product and the distance to each class mean.
            total += 2 * width * width + 3 * width * tac.num_classes
        bank = confidence.bank_size
        total += 2 * bank * confidence.tap_widths[-1]
        total += int(bank * np.log2(bank))
    return total


def interleaved(functions, repeats):
    """Times each function `repeats` times, alternating between them so
    that load from other processes hits all alike.

    Returns `{name: [seconds, ...]}`."""
    for function in functions.values():
        function()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times, numerator, denominator):
    """Median and quartiles of the per-repeat ratios."""
    ratios = np.asarray(times[numerator]) / np.asarray(times[denominator])
    return {
        "median": float(np.median(ratios)),
        "q25": float(np.percentile(ratios, 25)),
        "q75": float(np.percentile(ratios, 75)),
    }


def rss_bytes():
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def anonymous_rss_bytes():
    """The part of the RSS not backed by files (heap, stacks): the RSS less
    its file-backed pages (memory-mapped files, which the kernel can drop
    and re-read), from /proc (Linux)."""
    with open("/proc/self/statm") as handle:
        fields = handle.read().split()
    return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Context manager sampling the RSS every millisecond; `.peak` after."""

    def __init__(self, interval=0.001):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self.peak_anonymous = max(
                self.peak_anonymous, anonymous_rss_bytes()
            )
            time.sleep(self.interval)

    def __enter__(self):
        self.before = rss_bytes()
        self.peak = self.before
        self.peak_anonymous = anonymous_rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        return False


def machine():
    """CPU model, core count and library versions, for the report."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": model,
        "nproc": os.cpu_count(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
    }
    info["backend_version"] = _backend_version(info["backend"])
    return info


def _backend_version(backend):
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.__version__
    if backend == "jax":
        import jax

        return jax.__version__
    if backend == "torch":
        import torch

        return torch.__version__
    return "unknown"


def commit_stamp():
    """The repository's short commit, with `+changes` when `keras_tac/` or
    `benchmarks/` (results aside) differ from it: what a figure came from."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=root,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "keras_tac",
                "benchmarks",
                ":(exclude)benchmarks/results",
            ],
            capture_output=True,
            text=True,
            cwd=root,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")
