"""`benchmarks/drift_monitor.py` in its short mode meets issue 28's
targets on a real model: in-distribution streams rarely raise the drift
alarm, shifted ones raise it within a few hundred rows."""

import math

import pytest

from benchmarks import drift_monitor

# The short mode's seeds (100 streams per case).
SEEDS = drift_monitor.SETTINGS["short"]["seeds"]


@pytest.mark.slow
def test_short_benchmark_meets_the_targets(capsys):
    results = drift_monitor.main(["--short", "--output-dir", ""])
    assert "| 1000 | in-distribution |" in capsys.readouterr().out
    figures = results["figures"]["1000"]
    # At most 5% false alarms, with three standard errors of slack for 100
    # streams. Measured (JAX): 0 of 100 short, 1.2% of 500 full.
    slack = 3 * math.sqrt(0.05 * 0.95 / SEEDS)
    assert figures["false_alarm"] <= 0.05 + slack
    shifts = figures["shifts"]
    # Measured medians (JAX, short): 17 rows (noise sd 0.3), 15 (sd 0.5,
    # inverted), 18 (flipped), 131 (sd 0.1); 33-41 and 274 after 5,000
    # clean rows.
    for name in ("noise sd 0.3", "noise sd 0.5", "flipped", "inverted"):
        assert shifts[name]["detected"] == 1.0, name
        assert shifts[name]["median_rows"] <= 60, name
        assert shifts[name]["median_rows_after_clean"] <= 120, name
    assert shifts["noise sd 0.1"]["detected"] >= 0.9
    assert shifts["noise sd 0.1"]["median_rows"] <= 400
