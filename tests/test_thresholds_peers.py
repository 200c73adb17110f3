"""`keras_tac.thresholds` against independent implementations: MAPIE's
Learn-then-Test pieces (Hoeffding-Bentkus p-values, multi-start fixed
sequence testing), crepes' conformal p-values and SciPy's
Benjamini-Hochberg adjustment. MAPIE and crepes are test dependencies,
imported directly so that a missing one fails instead of skipping."""

import itertools

import numpy as np
import pytest
from crepes.base import p_values_batch
from mapie.risk_control import FWERFixedSequenceTesting
from mapie.risk_control import control_fwer
from mapie.risk_control.methods import compute_hoeffding_bentkus_p_value
from scipy import stats

from keras_tac import thresholds
from keras_tac.src import thresholds as thresholds_src


def mapie_risks(errors, accepted):
    """Empirical risks for MAPIE, which takes `ceil(n * r_hat)` in floating
    point: `e / n` rounded down by one ulp where `n * (e / n)` lands above
    `e`, so that its ceiling is `e`."""
    errors = np.asarray(errors, np.float64)
    accepted = np.asarray(accepted, np.float64)
    risks = errors / accepted
    above = np.ceil(accepted * risks) > errors
    risks[above] = np.nextafter(risks[above], 0.0)
    assert np.all(np.ceil(accepted * risks) == errors)
    return risks


def counts_by_brute_force(grid, confidence, correct):
    accepted = np.array([np.sum(confidence >= t) for t in grid])
    errors = np.array([np.sum((confidence >= t) & ~correct) for t in grid])
    return accepted, errors


def mapie_p_values(errors, accepted, alpha, kind):
    # MAPIE's binary variant drops Bentkus' factor e; with a binary loss
    # its minimum is then the exact binomial tail (Hoeffding's bound is a
    # Chernoff bound, never below it): our "binomial" p-value.
    p_values = np.ones(len(accepted))
    some = accepted > 0
    p_values[some] = compute_hoeffding_bentkus_p_value(
        mapie_risks(errors[some], accepted[some]),
        accepted[some].astype(np.float64),
        alpha,
        binary=kind == "binomial",
    )[:, 0]
    return p_values


class TestLearnThenTestAgainstMapie:
    @pytest.mark.parametrize("kind", ["hb", "binomial"])
    @pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
    def test_p_values(self, kind, alpha):
        rng = np.random.default_rng(0)
        accepted = np.concatenate(
            [rng.integers(1, 3000, 300), [1, 2, 5, 25, 35, 100]]
        )
        errors = np.minimum(
            rng.binomial(accepted, rng.uniform(0, 2 * alpha, len(accepted))),
            accepted,
        )
        errors[-6:] = [0, 2, 0, 7, 29, 100]  # none, all, MAPIE's ulps
        ours = thresholds_src._p_values(errors, accepted, alpha, kind)
        np.testing.assert_allclose(
            ours, mapie_p_values(errors, accepted, alpha, kind), rtol=1e-9
        )
        # Spread over (0, 1], so the comparison is not only of tiny values.
        assert np.mean(ours < 0.05) > 0.1 and np.mean(ours > 0.5) > 0.1
        # Hoeffding-Bentkus is never below the exact binomial tail.
        binomial = thresholds_src._p_values(errors, accepted, alpha, "binomial")
        assert np.all(binomial <= ours + 1e-12)
        np.testing.assert_allclose(
            binomial, stats.binom.cdf(errors, accepted, alpha), rtol=1e-9
        )

    @pytest.mark.parametrize(
        "kind,num_starts,seed",
        list(itertools.product(["hb", "binomial"], [1, 3, 5], [0, 1, 2])),
    )
    def test_certified_set_matches_fixed_sequence_testing(
        self, kind, num_starts, seed
    ):
        # A grid and starts fixed in advance (MAPIE's: evenly spaced along
        # the grid, from conservative to liberal), a risk that is not
        # monotone (a pocket of errors among the most confident inputs),
        # ties, and NaN confidences. MAPIE computes its own p-values from
        # brute-force counts and runs its multi-start fixed sequence
        # testing; we run ours on the same grid and starts.
        rng = np.random.default_rng(seed)
        n, alpha, delta = 3000, 0.1, 0.1
        confidence = np.round(rng.random(n), 3)
        wrong_rate = 0.6 * (1 - confidence) ** 4 + 0.3 * (confidence > 0.95)
        correct = rng.random(n) >= wrong_rate
        confidence[rng.random(n) < 0.02] = np.nan
        tuning, testing = np.arange(600), np.arange(600, n)
        grid = thresholds_src._grid(confidence[tuning], n)
        size = len(grid)
        starts = sorted({i * (size // num_starts) for i in range(num_starts)})
        ours = thresholds_src._learn_then_test(
            confidence[tuning],
            correct[tuning],
            confidence[testing],
            correct[testing],
            alpha,
            delta,
            kind,
            num_starts,
            starts=starts,
        )
        np.testing.assert_array_equal(ours["grid"], grid)
        accepted, errors = counts_by_brute_force(
            grid, confidence[testing], correct[testing]
        )
        p_values = mapie_p_values(errors, accepted, alpha, kind)
        np.testing.assert_allclose(ours["p_values"], p_values, rtol=1e-9)
        expected = control_fwer(
            p_values, delta, FWERFixedSequenceTesting(n_starts=num_starts)
        )
        np.testing.assert_array_equal(
            np.flatnonzero(ours["certified"]), expected
        )
        # Not trivial: the pocket at the top stops the sequence that starts
        # there (all of it with one start); later starts certify some.
        assert not ours["certified"][0]
        if num_starts == 1:
            assert len(expected) == 0
        else:
            assert 0 < len(expected) < size


class TestConformalAgainstCrepes:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_p_values_without_smoothing(self, seed):
        rng = np.random.default_rng(seed)
        calibration = np.round(rng.normal(size=500), 1)  # many ties
        calibration[rng.random(500) < 0.05] = np.nan
        scores = np.round(rng.normal(size=300) * 1.5, 1)
        ours = thresholds.conformal_p_values(calibration, scores)
        # crepes takes non-conformity scores (higher = stranger) and
        # counts calibration scores at least as strange: -confidence.
        finite = calibration[np.isfinite(calibration)]
        expected = p_values_batch(-finite, -scores, smoothing=False)
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-15)
        assert len(np.unique(ours)) > 20


class TestBenjaminiHochbergAgainstScipy:
    @pytest.mark.parametrize("seed", range(5))
    @pytest.mark.parametrize("alpha", [0.05, 0.2])
    def test_matches_adjusted_p_values_and_brute_force(self, seed, alpha):
        rng = np.random.default_rng(seed)
        m = int(rng.integers(1, 60))
        p_values = np.concatenate(
            [rng.beta(0.3, 4, m // 2), rng.random(m - m // 2)]
        )
        p_values = np.round(p_values, 3)  # ties
        ours = thresholds.benjamini_hochberg(p_values, alpha)
        adjusted = stats.false_discovery_control(p_values, method="bh")
        np.testing.assert_array_equal(ours, adjusted <= alpha)
        # Brute force: the largest k whose k-th smallest p-value is at
        # most k alpha / m; reject the p-values at most that one.
        ranked = np.sort(p_values)
        passing = [k for k in range(1, m + 1) if ranked[k - 1] <= k * alpha / m]
        expected = (
            p_values <= ranked[max(passing) - 1]
            if passing
            else np.zeros(m, bool)
        )
        np.testing.assert_array_equal(ours, expected)
