"""Runs `examples/evaluate_scores.py` in its quick mode, in-process."""

import json
import os
import runpy
import sys

import pytest

EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "examples",
    "evaluate_scores.py",
)


@pytest.mark.slow
def test_evaluate_scores_quick(tmp_path, monkeypatch):
    output = tmp_path / "reports"
    monkeypatch.setattr(
        sys, "argv", [EXAMPLE, "--quick", "--output", str(output)]
    )
    runpy.run_path(EXAMPLE, run_name="__main__")
    scenarios = ["mnist", "covariate_shift", "unseen_classes", "sklearn_digits"]
    for scenario in scenarios:
        for name in ("report.md", "report.json", "risk_coverage.png"):
            assert (output / scenario / name).stat().st_size > 0
    with open(output / "score_comparison.json", encoding="utf-8") as file:
        summary = json.load(file)
    assert sorted(summary) == sorted(scenarios)
    required = {"msp", "max_logit", "energy", "mahalanobis", "knn", "tac"}
    assert required <= set(summary["mnist"])
    assert "ood_auroc/photos" in summary["mnist"]["tac"]
    assert "ood_auroc/digits_6_9" in summary["unseen_classes"]["knn"]
    text = (output / "score_comparison.md").read_text(encoding="utf-8")
    assert "--quick mode" in text
    assert "## Thresholds calibrated" in text
    assert "| tac |" in text
