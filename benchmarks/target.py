"""Issue 26's target: `predict_with_rejection` within 1.10x of the base's
`predict` on every backend, for the example CNN (`common.mnist_cnn`, default
taps), the same CNN tapped at every convolution, and ResNet50 at 96x96
(`suite.resnet50_base`, default taps), or the benchmark names the operation
that keeps it above.

    python -m benchmarks.target                   # all three backends
    python -m benchmarks.target --backend jax --models cnn,every_conv

One process per backend. Per model, `TACModel(base)` with its default
settings (score="combined") and, alternated in the same process, these
calls on the same inputs (medians of the paired per-repeat ratios to the
base's `predict`):

- `base`: `base.predict(x, batch_size=...)`;
- `rejection`: `tac.predict_with_rejection(x, threshold=0.0, ...)`, the
  figure of the target;
- `taps`: the graph model `predict_with_rejection` runs
  (`keras_tac.src.feature_graph.graph_model`) with only the base output and
  the pooled taps as outputs: the base with its taps leaving it, the
  pooling, no head;
- `distance`: `TACModel(base, score="distance")` (same taps)
  `.predict_with_rejection`: everything but the combined confidence;
- `taps + kNN`, `taps + Mahalanobis`: the `taps` model (same outputs)
  plus one signal of
  the combined confidence (`keras_tac.src.confidence_ops.knn_distance`
  on the last pooled tap against the 4,096-row bank;
  `mahalanobis_novelty` of every pooled tap).

Where the rejection ratio exceeds 1.10x, the overhead `ratio - 1` is split
into those stages (taps as outputs and pooling; the TAC head; the kNN
distance; the Mahalanobis novelty; the rest of the combined confidence)
and the largest is named. Writes `benchmarks/results/target_<backend>.json`
(unless `--output-dir ''`). No figure here is asserted by a test.
"""

import argparse
import json
import os
import subprocess
import sys
import time

TARGET = 1.10
MODELS = ("cnn", "every_conv", "resnet50")
# Inputs and batch per model: 1,024 digits at batch 256 for the CNNs (the
# suite's inference figure), 128 random 96x96 images at batch 64 for
# ResNet50 (a few minutes per backend on 2 CPU cores).
SIZES = {
    "cnn": (1024, 256),
    "every_conv": (1024, 256),
    "resnet50": (128, 64),
}
REPEATS = {"cnn": 9, "every_conv": 9, "resnet50": 5}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "jax", "torch")


def _models(name):
    """`(base, tap_layers or None, x, batch_size)` for one model name."""
    import numpy as np

    from benchmarks import common
    from benchmarks import suite

    samples, batch_size = SIZES[name]
    rng = np.random.default_rng(0)
    if name == "resnet50":
        base = suite.resnet50_base()
        x = rng.random((samples, 96, 96, 3), dtype=np.float32)
        return base, None, x, batch_size
    base = common.mnist_cnn()
    taps = None
    if name == "every_conv":
        import keras

        taps = [
            layer.name
            for layer in base.layers
            if isinstance(layer, keras.layers.Conv2D)
        ]
    x = rng.random((samples, 28, 28, 1), dtype=np.float32)
    return base, taps, x, batch_size


def _signal_model(tac, signal):
    """The `taps` graph plus one signal of the combined confidence."""
    import keras
    from keras import ops

    from keras_tac.src import confidence_ops
    from keras_tac.src import feature_graph

    class Signal(keras.layers.Layer):
        def __init__(self, confidence):
            super().__init__(dtype="float32", name=f"only_{signal}")
            self.confidence = confidence

        def call(self, pooled):
            layer = self.confidence
            if signal == "knn":
                return confidence_ops.knn_distance(
                    pooled[-1],
                    layer.bank,
                    layer.k,
                    ops.greater(layer.bank_valid, 0.5),
                )
            return confidence_ops.mahalanobis_novelty(
                pooled,
                layer.means,
                layer.precisions,
                ops.greater(layer.present, 0.5),
            )

    inputs = feature_graph.symbolic_inputs(tac)
    base_output, pooled = feature_graph.pooled_taps(tac, inputs)
    value = Signal(tac.confidence_layer)(list(pooled))
    # The `taps` model's outputs, and the signal.
    outputs = {"base_output": ops.cast(base_output, "float32")}
    for index, tensor in enumerate(pooled):
        outputs[f"pooled_{index}"] = ops.cast(tensor, "float32")
    outputs[signal] = value
    model = keras.Model(inputs, outputs)
    model.jit_compile = tac.jit_compile
    return model


def _functions(base, tac, distance, x, batch_size):
    from keras_tac.src import feature_graph

    pooled_keys = ("base_output",) + tuple(
        f"pooled_{i}" for i in range(len(tac.tap_layers))
    )
    taps = feature_graph.graph_model(tac, pooled_keys)
    knn = _signal_model(tac, "knn")
    novelty = _signal_model(tac, "mahalanobis")

    def predict(model):
        return lambda: model.predict(x, batch_size=batch_size, verbose=0)

    def rejection(model):
        return lambda: model.predict_with_rejection(
            x, threshold=0.0, batch_size=batch_size, verbose=0
        )

    return {
        "base": predict(base),
        "rejection": rejection(tac),
        "taps": predict(taps),
        "distance": rejection(distance),
        "taps + kNN": predict(knn),
        "taps + Mahalanobis": predict(novelty),
    }


# The stages of the overhead, from the variants' ratios to the base.
STAGES = {
    "taps as outputs and their pooling": lambda r: r["taps"] - 1.0,
    "TAC head (projection, code matching)": lambda r: r["distance"] - r["taps"],
    "kNN distance of the combined confidence": lambda r: (
        r["taps + kNN"] - r["taps"]
    ),
    "Mahalanobis novelty of the combined confidence": lambda r: (
        r["taps + Mahalanobis"] - r["taps"]
    ),
    "rest of the combined confidence": lambda r: (
        r["rejection"]
        - r["distance"]
        - (r["taps + kNN"] - r["taps"])
        - (r["taps + Mahalanobis"] - r["taps"])
    ),
}


def measure(name, repeats=None):
    """One model's figure on the current backend, as a dict."""
    import keras
    import numpy as np

    from benchmarks import common
    from keras_tac import TACModel

    keras.utils.set_random_seed(0)
    base, tap_layers, x, batch_size = _models(name)
    tac = TACModel(base, tap_layers=tap_layers)
    distance = TACModel(base, tap_layers=tap_layers, score="distance")
    functions = _functions(base, tac, distance, x, batch_size)
    first_call = {}
    for key, function in functions.items():
        start = time.perf_counter()
        function()
        first_call[key] = time.perf_counter() - start
    repeats = repeats or REPEATS[name]
    load_before = os.getloadavg()[0]
    times = common.interleaved(functions, repeats)
    ratios = {
        key: common.paired_ratio(times, key, "base")
        for key in functions
        if key != "base"
    }
    medians = {key: value["median"] for key, value in ratios.items()}
    stages = {stage: float(f(medians)) for stage, f in STAGES.items()}
    base_flops = common.base_flops(base)
    result = {
        "model": name,
        "tap_layers": tac.tap_layers,
        "score": tac.score,
        "num_samples": len(x),
        "batch_size": batch_size,
        "repeats": repeats,
        "jit_compile": bool(tac.jit_compile),
        "ratio": ratios["rejection"],
        "ratios": ratios,
        "base_ms_per_sample": 1e3 * float(np.median(times["base"])) / len(x),
        "floor": 1.0 + common.addon_flops(tac) / base_flops,
        "stages": stages,
        "above_target": medians["rejection"] > TARGET,
        "operation": (
            max(stages, key=stages.get)
            if medians["rejection"] > TARGET
            else None
        ),
        "first_call_seconds": first_call,
        "seconds_per_call": {
            key: [float(t) for t in values] for key, values in times.items()
        },
        "load_average": [load_before, os.getloadavg()[0]],
        "commit": common.commit_stamp(),
    }
    return result


def format_rows(result):
    """Lines for one model's figure."""
    ratio = result["ratio"]
    line = (
        f"  {result['model']:10s} predict_with_rejection / base predict "
        f"{ratio['median']:.3f}x (q25-q75 {ratio['q25']:.2f}-"
        f"{ratio['q75']:.2f}, floor {result['floor']:.3f}x, base "
        f"{result['base_ms_per_sample']:.3f} ms per sample)"
    )
    if result["operation"]:
        line += f"  ABOVE {TARGET:.2f}x: {result['operation']}"
    lines = [line]
    others = ", ".join(
        f"{key} {value['median']:.3f}x"
        for key, value in result["ratios"].items()
        if key != "rejection"
    )
    lines.append(f"    variants / base: {others}")
    stages = ", ".join(
        f"{stage} {value:+.3f}" for stage, value in result["stages"].items()
    )
    lines.append(f"    overhead by stage: {stages}")
    return lines


def run_backend(models, output):
    """All `models` on the current backend; prints and writes JSON."""
    import keras

    from benchmarks import common

    results = {
        "backend": keras.backend.backend(),
        "machine": common.machine(),
        "target": TARGET,
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "models": {},
    }
    for name in models:
        start = time.perf_counter()
        result = measure(name)
        result["seconds"] = time.perf_counter() - start
        results["models"][name] = result
        print(f"[{results['backend']}] {name}: {result['seconds']:.0f} s")
        for line in format_rows(result):
            print(line, flush=True)
    if output:
        with open(output, "w") as handle:
            json.dump(results, handle, indent=1)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--backend",
        action="append",
        help="tensorflow, jax or torch (repeat or comma-separate); default: "
        "all three, one process each",
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help=",".join(MODELS)
    )
    parser.add_argument(
        "--output-dir", default=os.path.join(ROOT, "benchmarks", "results")
    )
    parser.add_argument(
        "--xla-flags",
        help="XLA_FLAGS for the processes (JAX, TensorFlow's XLA), e.g. "
        "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT,"
        "LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE: base and TAC "
        "both compile with them; results go to target_<backend>_xla_flags.json",
    )
    parser.add_argument(
        "--in-process", action="store_true", help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    for name in models:
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; expected {MODELS}")
    if args.in_process:
        backend = os.environ["KERAS_BACKEND"]
        suffix = "_xla_flags" if os.environ.get("XLA_FLAGS") else ""
        output = (
            os.path.join(args.output_dir, f"target_{backend}{suffix}.json")
            if args.output_dir
            else None
        )
        run_backend(models, output)
        return 0
    backends = []
    for item in args.backend or BACKENDS:
        backends.extend(b.strip() for b in item.split(",") if b.strip())
    failed = []
    for backend in backends:
        if backend not in BACKENDS:
            parser.error(f"unknown backend {backend!r}; expected {BACKENDS}")
        start = time.perf_counter()
        print(f"== {backend}", flush=True)
        code = subprocess.call(
            [
                sys.executable,
                "-m",
                "benchmarks.target",
                "--in-process",
                "--models",
                ",".join(models),
                "--output-dir",
                args.output_dir,
            ],
            cwd=ROOT,
            env={
                **os.environ,
                **({"XLA_FLAGS": args.xla_flags} if args.xla_flags else {}),
                "KERAS_BACKEND": backend,
                "PYTHONPATH": os.pathsep.join(
                    p for p in (ROOT, os.environ.get("PYTHONPATH")) if p
                ),
            },
        )
        print(f"== {backend}: {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(backend)
    if failed:
        print(f"Failed on: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
