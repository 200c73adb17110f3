"""`risk_threshold`'s guarantee and power, by simulation on a population
whose selective risk is known in closed form.

Confidence `u ~ U(0, 1)`; the prediction is wrong with probability
`A (1 - u)^6`. Accepting `u >= t` (coverage `c = 1 - t`) has the true
selective risk `R(t) = A (1 - t)^6 / 7`, increasing in the coverage, and
`A` puts the largest safe coverage at `alpha = 0.02` at 76%: the best any
valid method could return is `c* = 0.76 (alpha / 0.02)^(1/6)`.

Each setting draws 1000 calibration sets. A draw violates the guarantee
when the returned threshold is feasible and its true risk exceeds the
target (an infeasible answer promises nothing, so it is no violation);
the violation rate must stay within `delta` plus 3 standard errors.
Coverage is the true coverage `1 - t` (0 when infeasible).
"""

import math

import numpy as np
import pytest

from keras_tac import thresholds

DRAWS = 1000
EXPONENT = 6
SCALE = 0.02 * (EXPONENT + 1) / 0.76**EXPONENT


def true_risk(threshold):
    return SCALE * (1 - threshold) ** EXPONENT / (EXPONENT + 1)


def best_coverage(target_risk):
    return min(1.0, 0.76 * (target_risk / 0.02) ** (1 / EXPONENT))


def simulate(n, target_risk, delta, seed, **kwargs):
    """Violation rate, coverage violation rate (with `target_coverage`)
    and mean true coverage over `DRAWS` calibration sets."""
    rng = np.random.default_rng(seed)
    confidence = rng.random((DRAWS, n))
    correct = rng.random((DRAWS, n)) >= SCALE * (1 - confidence) ** EXPONENT
    violations = coverage_violations = 0
    coverages = []
    for draw in range(DRAWS):
        result = thresholds.risk_threshold(
            confidence[draw],
            correct[draw],
            target_risk,
            delta,
            seed=draw,
            **kwargs,
        )
        if not result["feasible"]:
            assert result["threshold"] == math.inf
            coverages.append(0.0)
            continue
        threshold = result["threshold"]
        violations += true_risk(threshold) > target_risk
        target_coverage = kwargs.get("target_coverage")
        coverage_violations += (
            target_coverage is not None and 1 - threshold < target_coverage
        )
        coverages.append(1 - threshold)
    return violations / DRAWS, coverage_violations / DRAWS, np.mean(coverages)


def slack(delta):
    return 3 * math.sqrt(delta * (1 - delta) / DRAWS)


# Calls taking 2.5 s or more (pytest --durations=0, 2 CPU cores) run with
# the slow tests (`pytest -m slow`), like `SLOW_IN_DEFAULT_RUN`.
SLOW = pytest.mark.slow
SETTINGS = [
    (2000, 0.02, 0.1),
    pytest.param(500, 0.02, 0.1, marks=SLOW),
    pytest.param(2000, 0.01, 0.1, marks=SLOW),
    pytest.param(300, 0.05, 0.05, marks=SLOW),
]


class TestLearnThenTest:
    def test_population(self):
        # The closed forms agree with a large sample.
        rng = np.random.default_rng(0)
        u = rng.random(2_000_000)
        wrong = rng.random(2_000_000) < SCALE * (1 - u) ** EXPONENT
        for threshold in (0.1, 0.24, 0.5):
            accepted = u >= threshold
            risk = true_risk(threshold)
            error = math.sqrt(risk * (1 - risk) / accepted.sum())
            assert abs(np.mean(wrong[accepted]) - risk) <= 4 * error
        assert true_risk(1 - best_coverage(0.02)) == pytest.approx(0.02)
        assert SCALE <= 1

    @pytest.mark.parametrize("n,target_risk,delta", SETTINGS)
    def test_valid_and_more_powerful_than_sgr(self, n, target_risk, delta):
        ltt, _, ltt_coverage = simulate(n, target_risk, delta, seed=n)
        sgr, _, sgr_coverage = simulate(
            n, target_risk, delta, seed=n, method="sgr"
        )
        best = best_coverage(target_risk)
        print(
            f"n={n} alpha={target_risk} delta={delta}: coverage LTT "
            f"{ltt_coverage:.3f}, SGR {sgr_coverage:.3f}, best {best:.3f}; "
            f"violations LTT {ltt:.3f}, SGR {sgr:.3f}"
        )
        assert ltt <= delta + slack(delta)
        assert sgr <= delta + slack(delta)
        assert ltt_coverage >= sgr_coverage
        if n == 2000:
            assert ltt_coverage >= best - 0.10

    @pytest.mark.parametrize("n,target_risk,delta", [(2000, 0.02, 0.1)])
    def test_hoeffding_bentkus_is_valid(self, n, target_risk, delta):
        violations, _, coverage = simulate(
            n, target_risk, delta, seed=n + 1, p_value="hb"
        )
        _, _, binomial_coverage = simulate(n, target_risk, delta, seed=n + 1)
        print(f"n={n} hb: violations {violations:.3f}, coverage {coverage:.3f}")
        assert violations <= delta + slack(delta)
        # The binomial p-value is never larger, so never less powerful.
        assert coverage <= binomial_coverage + 1e-12

    @pytest.mark.parametrize(
        "n,target_risk,delta,target_coverage",
        [
            pytest.param(2000, 0.02, 0.1, 0.6, marks=SLOW),
            pytest.param(2000, 0.02, 0.1, 0.68, marks=SLOW),
            (500, 0.05, 0.1, 0.6),
        ],
    )
    def test_valid_with_target_coverage(
        self, n, target_risk, delta, target_coverage
    ):
        # Either promise failing counts; each gets half of delta.
        means = {}
        for method in ("ltt", "sgr"):
            risk, coverage, mean = simulate(
                n,
                target_risk,
                delta,
                seed=n + 2,
                method=method,
                target_coverage=target_coverage,
            )
            print(
                f"n={n} alpha={target_risk} coverage>={target_coverage} "
                f"{method}: risk violations {risk:.3f}, coverage "
                f"violations {coverage:.3f}, mean coverage {mean:.3f}"
            )
            assert risk + coverage <= delta + slack(delta)
            means[method] = mean
        assert means["ltt"] >= means["sgr"]


class TestGuaranteedCoverage:
    @pytest.mark.parametrize("n,target_coverage,delta", [(200, 0.9, 0.1)])
    def test_coverage_threshold_with_delta(self, n, target_coverage, delta):
        # True coverage of U(0, 1) scores above t is 1 - t.
        rng = np.random.default_rng(3)
        confidence = rng.random((4000, n))
        misses = 0
        for draw in range(len(confidence)):
            threshold = thresholds.coverage_threshold(
                confidence[draw], target_coverage, delta=delta
            )
            misses += 1 - threshold < target_coverage
        rate = misses / len(confidence)
        # Exact: P(Beta(k, n + 1 - k) < c) <= delta, and close to it.
        assert rate <= delta + 3 * math.sqrt(delta * (1 - delta) / 4000)
        assert rate >= delta / 3
