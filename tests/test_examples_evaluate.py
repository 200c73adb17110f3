"""Runs `examples/evaluate_scores.py` in its quick mode, in-process."""

import json
import os
import runpy
import sys

import keras
import pytest
from conftest import assert_promises_hold

EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "examples",
    "evaluate_scores.py",
)


@pytest.mark.slow
def test_evaluate_scores_quick(tmp_path, monkeypatch, capsys):
    output = tmp_path / "reports"
    monkeypatch.setattr(
        sys, "argv", [EXAMPLE, "--quick", "--output", str(output)]
    )
    runpy.run_path(EXAMPLE, run_name="__main__")
    printed = capsys.readouterr().out
    # The example checks its promises against the same run's baselines and
    # exits with status 1 when one is broken; here they must hold (8 AUROC
    # columns, 4 garbage kinds).
    assert_promises_hold(printed, at_least=12)
    with open(output / "score_comparison.json", encoding="utf-8") as file:
        written = json.load(file)
    assert written["stamp"]["backend"] == keras.backend.backend()
    summary = written["summary"]
    scenarios = ["mnist", "covariate_shift", "unseen_classes", "sklearn_digits"]
    for scenario in scenarios:
        for score in ("msp", "max_logit", "energy", "mahalanobis", "knn"):
            assert f"{scenario}/flat/{score}/error_auroc" in summary
        assert f"{scenario}/flat/tac/error_auroc" in summary
    assert "mnist/flat/tac/ood_auroc/photos" in summary
    assert "unseen_classes/flat/knn/ood_auroc/digits_6_9" in summary
    # Garbage inputs are never accepted (blank, saturated, scaled, NaN).
    garbage = {k: v for k, v in summary.items() if k.startswith("garbage/")}
    assert len(garbage) == 4 and not any(garbage.values())
    text = (output / "score_comparison.md").read_text(encoding="utf-8")
    assert "--quick at commit" in text
    assert "### Targets for the default confidence" in text
    assert "| tac |" in text
