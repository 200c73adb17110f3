"""Speed and memory benchmark of keras-tac, one process per Keras backend.

    python -m benchmarks.run --short            # CI: 1-3 min per backend
    python -m benchmarks.run --full             # the documented figures
    python -m benchmarks.run --short --backend jax

Prints one table (figures by backend; ratios are medians over repeats of
side-by-side measurements in one process) and writes the raw results to
`benchmarks/results/<mode>_<backend>.json`. See `docs/performance.md`.
"""

import argparse
import json
import os
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--short", action="store_true", help="default")
    mode.add_argument("--full", action="store_true")
    parser.add_argument(
        "--backend",
        action="append",
        help="tensorflow, jax or torch (repeat or comma-separate); "
        "default: all three",
    )
    parser.add_argument("--output-dir", default=RESULTS)
    parser.add_argument(
        "--figures",
        help="comma-separated subset of inference,jit,training,scale,memory,"
        "resnet,target (updates those figures in an existing result file; "
        "resnet, ResNet50 at 96x96, and target, issue 26's three models, "
        "run by default in --full only)",
    )
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="print the table of existing results, run nothing",
    )
    args = parser.parse_args(argv)
    mode = "full" if args.full else "short"
    backends = []
    for item in args.backend or BACKENDS:
        backends.extend(b.strip() for b in item.split(",") if b.strip())
    for backend in backends:
        if backend not in BACKENDS:
            parser.error(f"unknown backend {backend!r}; expected {BACKENDS}")
    os.makedirs(args.output_dir, exist_ok=True)
    results = {}
    failed = []
    for backend in backends:
        path = os.path.join(args.output_dir, f"{mode}_{backend}.json")
        if not args.table_only:
            start = time.perf_counter()
            print(f"== {backend} ({mode})", file=sys.stderr, flush=True)
            code = subprocess.call(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.suite",
                    "--mode",
                    mode,
                    "--output",
                    path,
                    *(["--figures", args.figures] if args.figures else []),
                ],
                cwd=ROOT,
                env={
                    **os.environ,
                    "KERAS_BACKEND": backend,
                    "PYTHONPATH": os.pathsep.join(
                        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p
                    ),
                },
            )
            print(
                f"== {backend}: {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            if code:
                failed.append(backend)
                continue
        if os.path.exists(path):
            with open(path) as handle:
                results[backend] = json.load(handle)
    print(format_table(results, mode))
    if failed:
        print(f"Benchmark failed on: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _get(result, *keys):
    for key in keys:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def _ratio(value, digits=2):
    return "n/a" if value is None else f"{value:.{digits}f}x"


def _rows(result):
    """(figure, cell) pairs for one backend's results."""
    inference = result.get("inference", {})
    jit = result.get("jit", {})
    training = result.get("training", {})
    memory = result.get("memory", {})
    scale = result.get("scale", {})
    rows = []
    rows.append(
        (
            "1. predict_with_rejection / base predict (batch 256)",
            f"{_ratio(_get(inference, 'ratio', 'median'))} "
            f"(floor {_ratio(inference.get('floor'), 3)})",
        )
    )
    rows.append(
        (
            "   base / TAC ms per sample",
            f"{inference.get('base_ms_per_sample', 0):.3f} / "
            f"{inference.get('tac_ms_per_sample', 0):.3f}",
        )
    )
    rows.extend(_first_call_rows(inference, "tac", ""))
    # Recorded before issue 26, when TAC compiled with keras-tac's own XLA
    # options on JAX's CPU (the rows of older result files).
    plain = inference.get("jax_default_options")
    if plain and "ratio" in plain:
        rows.append(
            (
                "   same, TAC under JAX's default XLA options",
                f"{_ratio(plain['ratio']['median'])} "
                f"({plain['base_ms_per_sample']:.3f} / "
                f"{plain['tac_ms_per_sample']:.3f} ms)",
            )
        )
    rows.extend(_resnet_rows(result.get("resnet", {})))
    rows.extend(_target_rows(result.get("target", {})))
    if "skipped" in jit:
        jit_cell = "skipped (--full)"
    elif "note" in jit:
        jit_cell = "default (= 1.)"
    else:
        jit_cell = _ratio(_get(jit, "ratio", "median"))
    fits = [
        jit[f"fit_{key}_jit_compile"]
        for key in ("ordinary", "cached")
        if f"fit_{key}_jit_compile" in jit
    ]
    if fits:
        jit_cell += ", fit ok" if all(fits) else ", fit NOT compiled"
    rows.append(("5. same with jit_compile=True", jit_cell))
    epochs = training.get("epochs")
    for batch_size, run in training.get("batch_sizes", {}).items():
        ordinary, cached = run["ordinary"], run["cached"]
        rows.append(
            (
                f"2. add-on fit speedup, cached, {epochs} epochs, "
                f"batch {batch_size}",
                f"{_ratio(run['speedup'], 1)} "
                f"({ordinary['seconds']:.1f} / {cached['seconds']:.1f} s)",
            )
        )
        if "cached_over_base_passes" in run:
            rows.append(
                (
                    f"   cached fit / {epochs} base predict passes, batch "
                    f"{batch_size}",
                    f"{_ratio(run['cached_over_base_passes'])} "
                    f"({run['base_passes_seconds']:.1f} s)",
                )
            )
        if "speedup_bound" in run:
            rows.append(
                (
                    f"   bound: ordinary / 1-Dense-layer fit, batch "
                    f"{batch_size}",
                    f"{_ratio(run['speedup_bound'], 1)} "
                    f"({run['keras_floor_seconds']:.1f} s)",
                )
            )
        rows.append(
            (
                f"   TAC acc / AUROC ordinary vs cached, batch {batch_size}",
                f"{ordinary['tac_accuracy']:.3f}/"
                f"{ordinary['error_detection_auroc']:.3f} vs "
                f"{cached['tac_accuracy']:.3f}/"
                f"{cached['error_detection_auroc']:.3f}",
            )
        )
    if "tac_accuracy_seed_std" in training:
        rows.append(
            (
                "   seed std of TAC acc / AUROC (cached)",
                f"{training['tac_accuracy_seed_std']:.3f} / "
                f"{training['error_detection_auroc_seed_std']:.3f}",
            )
        )
    sizes = memory.get("num_samples", ["?", "?"])
    for name, values in memory.get("operations", {}).items():
        if "skipped" in values:
            cell = "skipped"
        else:
            cell = (
                f"{100 * values['growth']:+.0f}% "
                f"({values['peak_mb'][0]:.0f}->{values['peak_mb'][1]:.0f} MB)"
            )
        rows.append(
            (f"3. peak RSS {name}, {sizes[0]}->{sizes[1]} samples", cell)
        )
    for key, label in (("classes", "num_classes"), ("taps", "num_taps")):
        points = scale.get(key, [])
        if not points:
            continue
        first, last = points[0], points[-1]
        rows.append(
            (
                f"4. TAC / base time, {first[label]}->{last[label]} {key}",
                f"{_ratio(first['ratio']['median'])}->"
                f"{_ratio(last['ratio']['median'])} "
                f"({first['tac_ms_per_sample']:.3f}->"
                f"{last['tac_ms_per_sample']:.3f} ms)",
            )
        )
    rows.append(("   benchmark seconds", f"{result.get('seconds', 0):.0f}"))
    load = result.get("load_average_before")
    if load:
        rows.append(("   load average (1 min) before", f"{load[0]:.1f}"))
    return rows


def _resnet_rows(resnet):
    """The ResNet50 figure's rows (none when it was not run)."""
    if "predict_ratio" not in resnet:
        return []
    rows = [
        (
            "6. ResNet50 96x96: TACModel.predict / base predict (batch 64)",
            f"{_ratio(resnet['predict_ratio']['median'])} "
            f"(floor {_ratio(resnet['floor'], 3)})",
        ),
        (
            "   ResNet50: predict_with_rejection / base predict",
            f"{_ratio(resnet['rejection_ratio']['median'])} "
            f"(base {resnet['base_ms_per_sample']:.1f} ms per sample)",
        ),
    ]
    # Recorded before issue 26 (see `_rows`).
    plain = resnet.get("predict_jax_default_options_ratio")
    if plain:
        rows.append(
            (
                "   ResNet50: TAC predict under JAX's default XLA options",
                _ratio(plain["median"]),
            )
        )
    rows.extend(_first_call_rows(resnet, "predict", "ResNet50: "))
    return rows


def _target_rows(target):
    """The target figure's rows (`benchmarks/target.py`), where run: each
    model's rejection ratio and, above 1.10x, the operation named."""
    rows = []
    for name, figure in target.items():
        if not isinstance(figure, dict) or "ratio" not in figure:
            continue
        cell = _ratio(figure["ratio"]["median"])
        if figure.get("operation"):
            cell += f" ({figure['operation']})"
        rows.append(
            (f"7. target {name}: predict_with_rejection / base predict", cell)
        )
    return rows


def _first_call_rows(figure, tac, prefix):
    """The first calls (tracing and compiling) and, in results recorded
    before issue 26, the XLA:CPU fusions keras-tac then chose on JAX."""
    rows = []
    first = figure.get("first_call_seconds")
    if first:
        rows.append(
            (
                f"   {prefix}first call: base / TAC seconds",
                f"{first['base']:.1f} / {first[tac]:.1f}",
            )
        )
    if figure.get("jax_fusions_chosen"):
        rows.append(
            (
                f"   {prefix}XLA:CPU fusions chosen",
                figure["jax_fusions_chosen"],
            )
        )
    return rows


def _curves(results):
    lines = []
    for backend, result in results.items():
        scale = result.get("scale", {})
        for key, label in (("classes", "num_classes"), ("taps", "num_taps")):
            points = scale.get(key, [])
            if not points:
                continue
            cells = ", ".join(
                f"{p[label]}: {p['tac_ms_per_sample']:.3f} ms "
                f"({p['ratio']['median']:.2f}x base, FLOPs {p['floor']:.2f}x)"
                for p in points
            )
            lines.append(f"  {backend} {key}: {cells}")
    return lines


def format_table(results, mode):
    """The table of figures (rows) by backend (columns), in Markdown."""
    if not results:
        return "No results."
    machine = next(iter(results.values())).get("machine", {})
    lines = [
        f"keras-tac benchmark ({mode}) on {machine.get('cpu')} "
        f"x{machine.get('nproc')}, keras {machine.get('keras')}",
        "",
        *table_lines(results),
    ]
    curves = _curves(results)
    if curves:
        lines += ["", "Scale curves (TAC time per sample):", *curves]
    return "\n".join(lines)


def commits(results):
    """`{backend: sorted commits its figures were measured at}`."""
    return {
        backend: sorted(
            {
                figure["commit"]
                for figure in result.values()
                if isinstance(figure, dict) and "commit" in figure
            }
        )
        for backend, result in results.items()
    }


def table_lines(results):
    """The Markdown lines of the table: figures (rows) by backend."""
    backends = list(results)
    per_backend = {b: dict(_rows(results[b])) for b in backends}
    figures = []
    for backend in backends:
        previous = None
        for figure, _ in _rows(results[backend]):
            if figure not in figures:
                # After the row that precedes it for this backend.
                at = figures.index(previous) + 1 if previous else 0
                figures.insert(at, figure)
            previous = figure
    header = ["figure", *backends]
    body = [
        [figure, *(per_backend[b].get(figure, "") for b in backends)]
        for figure in figures
    ]
    widths = [
        max(len(row[i]) for row in [header, *body]) for i in range(len(header))
    ]

    def line(cells):
        return (
            "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
        )

    return [
        line(header),
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        *(line(row) for row in body),
    ]


if __name__ == "__main__":
    sys.exit(main())
