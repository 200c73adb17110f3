"""Compare confidence scores on one model: `compare_scores` computes the
table, `write_report` writes it as Markdown, JSON and PNG plots."""

import json
import math
import os
import warnings

import numpy as np

from keras_tac.src import metrics
from keras_tac.src import optional
from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.features import FeatureExtractor
from keras_tac.src.scores import compute

# name: (higher is better, description). Order = column order.
ERROR_METRICS = {
    "error_auroc": (True, "AUROC, correct (positive) vs wrong predictions"),
    "fpr95": (False, "fraction of wrong predictions accepted at 95% TPR"),
    "aupr_success": (True, "average precision, correct as positive"),
    "aupr_error": (True, "average precision, wrong as positive"),
    "error_detection_rate": (True, "1 - equal error rate"),
    "aurc": (False, "area under the risk-coverage curve"),
    "e_aurc": (False, "AURC minus the oracle's AURC"),
    "augrc": (False, "area under the generalized risk-coverage curve"),
    "risk_at_coverage": (False, "selective risk at the target coverage"),
    "best_value": (True, "value per input at the best threshold"),
}
OOD_METRICS = {
    "ood_auroc": (True, "AUROC, in-distribution (positive) vs OOD"),
    "ood_fpr95": (False, "fraction of OOD inputs accepted at 95% TPR"),
    "ood_aupr_in": (True, "average precision, in-distribution as positive"),
    "ood_aupr_out": (True, "average precision, OOD as positive"),
    "ood_detection_rate": (True, "1 - equal error rate"),
}


@keras_tac_export("keras_tac.compare_scores")
def compare_scores(
    tac,
    x_test,
    y_test,
    x_fit=None,
    y_fit=None,
    x_ood=None,
    scorers=None,
    coverage=0.9,
    reward=1.0,
    error_cost=1.0,
    rejection_cost=0.0,
    batch_size=256,
    verbose="auto",
    return_details=False,
):
    """Compares TAC's confidence scores with baseline scores of the same base.

    Every score is "higher = more confident" and scores the base head's own
    prediction, so all rows judge the same predictions. Error detection
    takes "correct" as the positive class; OOD detection takes
    "in-distribution" as the positive class (see `keras_tac.metrics`).

    Scores (`keras_tac.scores.default_scorers`): `"msp"`, `"max_logit"`,
    `"energy"`, `"mahalanobis"` and `"knn"` (these two are fitted on
    `x_fit`/`y_fit`), `"tac"` (the model's own `score`) and TAC's two other
    scores (`"tac_<kind>"`). **Without `x_fit`, scorers that need fitting
    and are not already fitted are left out of the report** (with a
    warning); pass the base model's training data to include them.

    Args:
        tac: a `keras_tac.TACModel`.
        x_test: in-distribution test inputs (NumPy arrays).
        y_test: their integer labels `(n,)` (or one-hot rows).
        x_fit: inputs to fit the scorers that need it, typically the base
            model's training data. Defaults to `None`.
        y_fit: labels of `x_fit`. Defaults to `None`.
        x_ood: out-of-distribution inputs: an array, or a dict
            `{name: array}` for several OOD sets. Defaults to `None`.
        scorers: list of `keras_tac.scores.Scorer`, or `None` for
            `default_scorers(tac)`. Fitted ones are kept as they are unless
            `x_fit` is given (then every scorer needing a fit is refitted).
            Defaults to `None`.
        coverage: float in `(0, 1]`. Coverage of `"risk_at_coverage"`.
            Defaults to `0.9`.
        reward: float. Value of an accepted correct answer, for
            `"best_value"`. Defaults to `1`.
        error_cost: float `>= 0`. Cost of an accepted error. Defaults to `1`.
        rejection_cost: float `>= 0`. Cost of a rejection. Defaults to `0`.
        batch_size: int. Defaults to `256`.
        verbose: progress bars, `"auto"`, `0` or `1`. Defaults to `"auto"`.
        return_details: bool. Also return the raw scores, for
            `write_report`'s plots. Defaults to `False`.

    Returns:
        A dict `{score name: {metric name: float}}`. Metrics:
        `"error_auroc"`, `"fpr95"`, `"aupr_success"`, `"aupr_error"`,
        `"error_detection_rate"` (NaN when the test predictions are all
        right or all wrong), `"aurc"`, `"e_aurc"`, `"augrc"`,
        `"risk_at_coverage"` and `"best_value"` (the value per input
        `(reward * accepted correct - error_cost * accepted wrong -
        rejection_cost * rejected) / n` at the best threshold, chosen on the
        test set itself, so optimistic). With `x_ood` an array, also
        `"ood_auroc"`, `"ood_fpr95"`, `"ood_aupr_in"`, `"ood_aupr_out"` and
        `"ood_detection_rate"`; with a dict, these keys get a `"/<name>"`
        suffix per OOD set (`"ood_auroc/photos"`).
        With `return_details=True`, a tuple `(report, details)`; `details`
        holds `"accuracy"`, `"correct"`, `"test_scores"`,
        `"ood_scores"` (`{set name: {score name: array}}`) and the settings.

    Example:

    >>> report = keras_tac.compare_scores(
    ...     tac, x_test, y_test, x_fit=x_train, y_fit=y_train, x_ood=x_ood
    ... )  # doctest: +SKIP
    >>> report["tac"]["error_auroc"]  # doctest: +SKIP
    """
    if scorers is None:
        scorers = compute.default_scorers(tac)
    scorers = compute.check_scorers(scorers)
    validation.check_fraction("coverage", coverage)
    metrics.check_costs(reward, error_cost, rejection_cost)
    extractor = FeatureExtractor.of(tac)
    num_test = extractor.check_inputs(x_test, "compare_scores")
    labels = validation.check_class_indices(
        y_test, tac.num_classes, num_test, "compare_scores"
    )
    ood_sets = _ood_sets(x_ood)
    for name, x in ood_sets.items():
        extractor.check_inputs(x, f"compare_scores (x_ood {name!r})")

    if x_fit is not None:
        if y_fit is None:
            raise ValueError(
                "`compare_scores` fits scorers on `x_fit` with their labels: "
                "pass `y_fit` too. Received: y_fit=None"
            )
        compute.fit_scorers(tac, x_fit, y_fit, scorers, batch_size, verbose)
    elif y_fit is not None:
        raise ValueError(
            "`y_fit` was given without `x_fit`. Pass both or neither."
        )
    skipped = [s.name for s in scorers if s.needs_fit and not s.fitted]
    if skipped:
        warnings.warn(
            f"compare_scores: left out {skipped}, which need fitting; pass "
            "`x_fit` and `y_fit` (the training data) to include them.",
            stacklevel=2,
        )
    scorers = [s for s in scorers if s.name not in skipped]

    test_scores, prediction = compute.compute_scores(
        tac, x_test, scorers, batch_size, verbose, return_prediction=True
    )
    correct = prediction == labels
    ood_scores = {
        name: compute.compute_scores(tac, x, scorers, batch_size, verbose)
        for name, x in ood_sets.items()
    }
    single_ood = not isinstance(x_ood, dict)

    report = {}
    for scorer in scorers:
        name = scorer.name
        confidence = test_scores[name]
        row = metrics.error_detection_metrics(confidence, correct)
        row["aurc"] = metrics.aurc(confidence, correct)
        row["e_aurc"] = metrics.e_aurc(confidence, correct)
        row["augrc"] = metrics.augrc(confidence, correct)
        row["risk_at_coverage"] = metrics.selective_risk_at_coverage(
            confidence, correct, coverage
        )
        row["best_value"] = metrics.best_rejection_threshold(
            confidence, correct, reward, error_cost, rejection_cost
        )[1]
        for set_name, set_scores in ood_scores.items():
            for key, value in metrics.ood_metrics(
                confidence, set_scores[name]
            ).items():
                row[key if single_ood else f"{key}/{set_name}"] = value
        report[name] = row
    if not return_details:
        return report
    details = {
        "accuracy": float(correct.mean()),
        "num_test": int(num_test),
        "correct": correct,
        "test_scores": test_scores,
        "ood_scores": ood_scores,
        "num_ood": {
            name: int(len(next(iter(s.values())))) if s else 0
            for name, s in ood_scores.items()
        },
        "coverage": float(coverage),
        "value_costs": {
            "reward": float(reward),
            "error_cost": float(error_cost),
            "rejection_cost": float(rejection_cost),
        },
    }
    return report, details


@keras_tac_export("keras_tac.report_to_markdown")
def report_to_markdown(report, details=None, title=None, images=None):
    """Formats a `compare_scores` report as Markdown tables.

    One table for error detection and selective classification, one per
    OOD set; the best value of each column is in bold, and each header
    says whether higher (↑) or lower (↓) is better.

    Args:
        report: the dict returned by `compare_scores`.
        details: the details from `compare_scores(..., return_details=True)`
            or `None`; adds the accuracy and sample counts. Defaults to
            `None`.
        title: str or `None`. A `##` heading. Defaults to `None`.
        images: list of `(caption, relative path)` to link. Defaults to
            `None`.

    Returns:
        A Markdown string.
    """
    lines = []
    if title:
        lines += [f"## {title}", ""]
    if details is not None:
        lines += [
            f"Base model accuracy on the {details['num_test']} test inputs: "
            f"{details['accuracy']:.4f}. Risk at coverage "
            f"{details['coverage']:g}; value with reward "
            f"{details['value_costs']['reward']:g}, error cost "
            f"{details['value_costs']['error_cost']:g}, rejection cost "
            f"{details['value_costs']['rejection_cost']:g}.",
            "",
        ]
    names = list(report)
    keys = list(dict.fromkeys(k for row in report.values() for k in row))
    error_keys = [k for k in ERROR_METRICS if k in keys]
    if error_keys:
        lines += ["Error detection and selective classification:", ""]
        lines += _table(report, names, error_keys, ERROR_METRICS)
    for set_name, columns in _ood_columns(keys).items():
        label = "OOD detection" + (f" ({set_name})" if set_name else "")
        if details is not None and set_name in details.get("num_ood", {}):
            label += f", {details['num_ood'][set_name]} OOD inputs"
        elif details is not None and not set_name and details.get("num_ood"):
            label += f", {sum(details['num_ood'].values())} OOD inputs"
        lines += [label + ":", ""]
        lines += _table(report, names, columns, OOD_METRICS)
    for caption, path in images or []:
        lines += [f"![{caption}]({path})", ""]
    return "\n".join(lines)


@keras_tac_export("keras_tac.write_report")
def write_report(report, directory, details=None, title=None, plots=True):
    """Writes a `compare_scores` report: Markdown, JSON and PNG plots.

    Files: `report.md` (tables, see `report_to_markdown`), `report.json`
    (the metrics, plus the accuracy and counts when `details` is given),
    and, when `details` is given and `plots` is True,
    `risk_coverage.png` (the risk-coverage curves of all scores on one
    figure) and `score_histograms.png` (per score, the histograms of
    correct, wrong and each OOD set). Plots need matplotlib
    (`pip install keras-tac[plots]`), imported only here.

    Args:
        report: the dict returned by `compare_scores`.
        directory: str or path-like, created if needed.
        details: the details from `compare_scores(..., return_details=True)`
            or `None` (then no plots). Defaults to `None`.
        title: str or `None`. Heading of the Markdown file. Defaults to
            `None`.
        plots: bool. Write the PNG plots. Defaults to `True`.

    Returns:
        A dict `{"markdown": path, "json": path, ...}` of written files
        (`"risk_coverage"` and `"histograms"` with plots).
    """
    directory = str(directory)
    os.makedirs(directory, exist_ok=True)
    paths = {}
    images = []
    if plots and details is not None:
        paths["risk_coverage"] = os.path.join(directory, "risk_coverage.png")
        plot_risk_coverage(details, paths["risk_coverage"], title=title)
        paths["histograms"] = os.path.join(directory, "score_histograms.png")
        plot_score_histograms(details, paths["histograms"], title=title)
        images = [
            ("Risk-coverage curves", "risk_coverage.png"),
            ("Score histograms", "score_histograms.png"),
        ]
    paths["markdown"] = os.path.join(directory, "report.md")
    with open(paths["markdown"], "w", encoding="utf-8") as file:
        file.write(report_to_markdown(report, details, title, images))
    summary = {"title": title, "metrics": _jsonable(report)}
    if details is not None:
        for key in ("accuracy", "num_test", "num_ood", "coverage"):
            summary[key] = details[key]
        summary["value_costs"] = details["value_costs"]
    paths["json"] = os.path.join(directory, "report.json")
    with open(paths["json"], "w", encoding="utf-8") as file:
        json.dump(summary, file, indent=2, allow_nan=True)
    return paths


def plot_risk_coverage(details, path, title=None):
    """Saves the risk-coverage curves of every score on one figure (PNG).

    Args:
        details: the details from `compare_scores(..., return_details=True)`.
        path: str, the PNG file.
        title: str or `None`. Figure title. Defaults to `None`.
    """
    figure_class = _figure_class()
    figure = figure_class(figsize=(7, 5), dpi=110)
    axes = figure.add_subplot()
    correct = details["correct"]
    for name, confidence in details["test_scores"].items():
        coverage, risk, _ = metrics.risk_coverage_curve(confidence, correct)
        style = "-" if name.startswith("tac") else "--"
        axes.plot(coverage, risk, style, label=name, linewidth=1.5)
    axes.axhline(1.0 - details["accuracy"], color="grey", linewidth=0.8)
    axes.set_xlabel("coverage (fraction of inputs accepted)")
    axes.set_ylabel("selective risk (error rate among accepted)")
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(bottom=0.0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title(title or "Risk-coverage curves")
    figure.tight_layout()
    figure.savefig(path)


def plot_score_histograms(details, path, title=None, bins=40):
    """Saves, for every score, histograms of its values on correct and
    wrong test predictions and on each OOD set (PNG).

    Args:
        details: the details from `compare_scores(..., return_details=True)`.
        path: str, the PNG file.
        title: str or `None`. Figure title. Defaults to `None`.
        bins: int. Bins per histogram. Defaults to `40`.
    """
    figure_class = _figure_class()
    names = list(details["test_scores"])
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = figure_class(figsize=(4 * columns, 2.8 * rows), dpi=100)
    correct = details["correct"]
    for index, name in enumerate(names):
        axes = figure.add_subplot(rows, columns, index + 1)
        groups = [
            ("correct", details["test_scores"][name][correct]),
            ("wrong", details["test_scores"][name][~correct]),
        ]
        groups += [
            (set_name, scores[name])
            for set_name, scores in details["ood_scores"].items()
        ]
        groups = [(label, v[np.isfinite(v)]) for label, v in groups]
        values = np.concatenate([v for _, v in groups if len(v)])
        low, high = np.percentile(values, [0.5, 99.5])
        if not high > low:
            low, high = low - 0.5, high + 0.5
        edges = np.linspace(low, high, bins + 1)
        for label, group in groups:
            if len(group):
                axes.hist(
                    np.clip(group, low, high),
                    bins=edges,
                    density=True,
                    histtype="step",
                    linewidth=1.3,
                    label=f"{label} ({len(group)})",
                )
        axes.set_title(name, fontsize=10)
        axes.tick_params(labelsize=7)
        axes.legend(fontsize=7)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path)


def _ood_sets(x_ood):
    if x_ood is None:
        return {}
    if isinstance(x_ood, dict):
        if not x_ood or not all(isinstance(k, str) and k for k in x_ood):
            raise ValueError(
                "Invalid `x_ood`: expected an array or a non-empty dict of "
                f"{{name: array}} with string names. Received keys "
                f"{list(x_ood)}"
            )
        bad = [k for k in x_ood if "/" in k]
        if bad:
            raise ValueError(
                f"Invalid `x_ood` names {bad}: '/' separates the metric from "
                "the set name in report keys; use another character."
            )
        return dict(x_ood)
    return {"ood": x_ood}


def _ood_columns(keys):
    """`{set name ("" for a single set): [metric keys]}` in column order."""
    groups = {}
    for metric in OOD_METRICS:
        for key in keys:
            base, _, set_name = key.partition("/")
            if base == metric:
                groups.setdefault(set_name, []).append(key)
    return groups


def _table(report, names, columns, info):
    headers = []
    best = {}
    for key in columns:
        higher, _ = info[key.partition("/")[0]]
        headers.append(f"{key.partition('/')[0]} {'↑' if higher else '↓'}")
        values = [report[n].get(key, math.nan) for n in names]
        finite = [
            v for v in values if isinstance(v, float) and math.isfinite(v)
        ]
        if finite:
            best[key] = max(finite) if higher else min(finite)
    lines = [
        "| score | " + " | ".join(headers) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name in names:
        cells = []
        for key in columns:
            value = report[name].get(key, math.nan)
            if not math.isfinite(value):
                cells.append("n/a")
                continue
            text = f"{value:.4f}"
            if key in best and f"{best[key]:.4f}" == text:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def _jsonable(report):
    return {
        name: {
            key: (None if not math.isfinite(v) else float(v))
            for key, v in row.items()
        }
        for name, row in report.items()
    }


def _figure_class():
    return optional.require(
        "matplotlib.figure",
        "plots",
        "Plotting (`write_report(..., plots=True)`)",
    ).Figure
