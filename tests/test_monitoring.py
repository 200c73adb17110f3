"""The drift monitor and the Prometheus metrics of the model server
(`keras_tac.src.monitoring`), against NumPy recomputations written here."""

import ast
import logging
import math
import threading

import numpy as np
import prometheus_client
import pytest
from prometheus_client import parser

from keras_tac.src import monitoring
from keras_tac.src.monitoring import ConformalTestMartingale
from keras_tac.src.monitoring import ServingMetrics
from keras_tac.thresholds import conformal_p_values

STREAM_ROWS = 5000


def brute_force_values(p_values, jump_rate):
    """Simple Jumper's value after each step, with the capital of each bet
    kept as it is (no shares, no logs) for several streams at once.

    `p_values`: `(streams, steps)`. Returns `(streams, steps)` values."""
    p_values = np.asarray(p_values, np.float64)
    bets = np.array([-1.0, 0.0, 1.0])
    capital = np.full((len(p_values), 3), 1.0 / 3.0)
    values = np.empty(p_values.shape)
    for step in range(p_values.shape[1]):
        total = capital.sum(axis=1, keepdims=True)
        capital = (1.0 - jump_rate) * capital + jump_rate / 3.0 * total
        capital = capital * (1.0 + bets * (p_values[:, step, None] - 0.5))
        values[:, step] = capital.sum(axis=1)
    return values


def first_alarms(p_values, jump_rate=monitoring.DEFAULT_JUMP_RATE):
    """The step of each stream's alarm (default level), None without."""
    alarms = []
    for stream in p_values:
        martingale = ConformalTestMartingale(jump_rate)
        martingale.update(stream)
        alarms.append(martingale.alarm_step)
    return alarms


def alarm_fraction(alarms):
    return float(np.mean([step is not None for step in alarms]))


def exchangeable_p_values(rng, reference_size, streams, rows):
    """The served p-values when nothing drifts: per stream, a reference of
    held-out scores and a stream of scores from one distribution, the
    reference drawn anew for each stream."""
    p_values = np.empty((streams, rows))
    for index in range(streams):
        reference = rng.normal(size=reference_size)
        p_values[index] = conformal_p_values(reference, rng.normal(size=rows))
    return p_values


class TestConformalTestMartingale:
    @pytest.mark.parametrize("jump_rate", [0.0, 1e-4, 0.01, 0.3, 1.0])
    def test_matches_the_capital_recomputed_step_by_step(self, jump_rate):
        rng = np.random.default_rng(1)
        # Uniform, then lower p-values: the value falls, then climbs.
        p_values = np.concatenate(
            [rng.random((3, 1000)), rng.beta(0.5, 1.0, (3, 300))], axis=1
        )
        expected = brute_force_values(p_values, jump_rate)
        for stream, values in zip(p_values, expected):
            martingale = ConformalTestMartingale(jump_rate)
            value = martingale.update(stream)
            np.testing.assert_allclose(value, values[-1], rtol=1e-9)
            np.testing.assert_allclose(
                martingale.log_value, np.log(values[-1]), atol=1e-9
            )
            np.testing.assert_allclose(
                martingale.max_value, max(1.0, values.max()), rtol=1e-9
            )
            crossed = np.flatnonzero(values >= 100.0)
            expected_step = int(crossed[0]) + 1 if len(crossed) else None
            assert martingale.alarm_step == expected_step
            assert martingale.alarm == (expected_step is not None)
            assert martingale.steps == p_values.shape[1]

    def test_without_jumps_the_mean_of_three_products(self):
        # J = 0: each bet keeps its third, C = mean_e prod_i f_e(p_i).
        p_values = np.random.default_rng(2).random(400)
        expected = np.mean(
            [np.prod(1.0 + e * (p_values - 0.5)) for e in (-1, 0, 1)]
        )
        martingale = ConformalTestMartingale(jump_rate=0.0)
        np.testing.assert_allclose(
            martingale.update(p_values), expected, rtol=1e-10
        )

    def test_a_batch_equals_its_rows_one_by_one(self):
        p_values = np.random.default_rng(3).beta(0.7, 1.0, 3000)
        whole = ConformalTestMartingale(jump_rate=0.01)
        whole.update(p_values)
        by_row = ConformalTestMartingale(jump_rate=0.01)
        for p in p_values:
            by_row.update(np.array([p]))
        chunks = ConformalTestMartingale(jump_rate=0.01)
        for chunk in np.array_split(p_values, [7, 100, 101, 2500]):
            chunks.update(chunk)
        for other in (by_row, chunks):
            assert other.log_value == whole.log_value
            assert other.max_value == whole.max_value
            assert other.alarm_step == whole.alarm_step
            assert other.steps == whole.steps == 3000

    def test_millions_of_steps_stay_finite(self):
        rng = np.random.default_rng(4)
        falling = ConformalTestMartingale(jump_rate=0.01)
        falling.update(rng.random(1_000_000))
        # About -0.6 * J nats a step (the module's figure).
        assert -9000 < falling.log_value < -3000
        # The value underflows; its log (the log10 gauge) does not.
        assert falling.value == 0.0 and math.isfinite(falling.log_value)
        rising = ConformalTestMartingale()
        rising.update(np.zeros(5000))
        # The e = -1 bet grows by 3/2 a step, less the jumps.
        assert rising.log_value == pytest.approx(
            5000 * math.log(1.5) + math.log(1 / 3), rel=0.01
        )
        assert rising.value == rising.max_value == math.inf

    def test_non_finite_p_values_are_skipped_and_counted(self):
        martingale = ConformalTestMartingale()
        martingale.update([0.1, np.nan, 0.3, np.inf, -np.inf])
        reference = ConformalTestMartingale()
        reference.update([0.1, 0.3])
        assert martingale.log_value == reference.log_value
        assert martingale.steps == 2
        assert martingale.skipped == 3
        # An uncalibrated model's NaN p-values leave the value at 1.
        uncalibrated = ConformalTestMartingale()
        assert uncalibrated.update(np.full(100, np.nan, "float32")) == 1.0
        assert uncalibrated.skipped == 100 and not uncalibrated.alarm

    def test_reset(self):
        martingale = ConformalTestMartingale()
        martingale.update(np.zeros(50))
        martingale.update([np.nan])
        assert martingale.alarm
        martingale.reset()
        assert (martingale.value, martingale.max_value) == (1.0, 1.0)
        assert not martingale.alarm and martingale.alarm_step is None
        assert (martingale.steps, martingale.skipped) == (0, 0)

    def test_threshold_and_repr(self):
        martingale = ConformalTestMartingale(jump_rate=0.5, alarm_level=0.05)
        assert martingale.threshold == 20.0
        assert "jump_rate=0.5" in repr(martingale)
        assert "alarm=False" in repr(martingale)

    @pytest.mark.parametrize(
        "arguments, message",
        [
            ({"jump_rate": -0.1}, r"`jump_rate`: expected a float in \[0"),
            ({"jump_rate": 1.5}, "Received: 1.5"),
            ({"jump_rate": "0.1"}, "Received: '0.1'"),
            ({"jump_rate": True}, "Received: True"),
            ({"alarm_level": 0.0}, r"`alarm_level`: expected a float in \(0"),
            ({"alarm_level": 1.0}, "Received: 1.0"),
            ({"alarm_level": math.nan}, "Received: nan"),
        ],
    )
    def test_bad_arguments(self, arguments, message):
        with pytest.raises(ValueError, match=message):
            ConformalTestMartingale(**arguments)

    @pytest.mark.parametrize(
        "p_values, message",
        [
            ([0.5, 1.5], r"values in \[0, 1\].*Received: 1.5 at position 1"),
            ([-0.25], "Received: -0.25 at position 0"),
            (["0.5"], "expected numbers"),
        ],
    )
    def test_bad_p_values(self, p_values, message):
        martingale = ConformalTestMartingale()
        with pytest.raises(ValueError, match=message):
            martingale.update(p_values)
        assert martingale.steps == 0

    def test_exact_p_values_alarm_at_most_alpha_of_the_time(self):
        # Ville: P(ever >= 1 / alpha) <= alpha for i.i.d. uniform p-values.
        streams = 400
        p_values = np.random.default_rng(5).random((streams, STREAM_ROWS))
        rate = alarm_fraction(first_alarms(p_values))
        alpha = monitoring.DEFAULT_ALARM_LEVEL
        assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / streams)

    @pytest.mark.parametrize(
        # Measured with these seeds: 0.04, 0.024, 0.0125 (400 streams
        # each, 1,000 at n = 1,000); 0.0475, 0.024, 0.0075 with seed 1.
        "reference_size, streams, bound",
        [(500, 400, 0.08), (1000, 1000, 0.05), (4096, 400, 0.03)],
    )
    def test_served_p_values_false_alarm_rate(
        self, reference_size, streams, bound
    ):
        # With one reference per stream, the p-values are only
        # conditionally i.i.d. and near-uniform: Ville's bound is
        # approximate, the rate is measured (the class docstring's figures).
        rng = np.random.default_rng(reference_size)
        p_values = exchangeable_p_values(
            rng, reference_size, streams, STREAM_ROWS
        )
        rate = alarm_fraction(first_alarms(p_values))
        assert rate <= bound

    def test_low_p_values_alarm_within_a_hundred_rows(self):
        # Beta(0.5, 1): P(p <= u) = sqrt(u). Measured: median 48 rows, 90th
        # percentile 77.
        p_values = np.random.default_rng(6).beta(0.5, 1.0, (100, 2000))
        steps = first_alarms(p_values)
        assert None not in steps
        assert np.median(steps) <= 70
        assert np.percentile(steps, 90) <= 110

    def test_shifted_scores_alarm_within_a_few_hundred_rows(self):
        # New scores 0.3 and 0.5 standard deviations lower than the 1,000
        # held-out ones. Measured: medians 130 and 57 rows.
        rng = np.random.default_rng(7)
        for shift, bound in ((0.3, 200), (0.5, 80)):
            p_values = np.stack(
                [
                    conformal_p_values(
                        rng.normal(size=1000), rng.normal(-shift, 1.0, 3000)
                    )
                    for _ in range(60)
                ]
            )
            steps = first_alarms(p_values)
            assert None not in steps
            assert np.median(steps) <= bound

    def test_small_jump_rate_stays_sharp_after_a_long_quiet_stretch(self):
        # The default's reason: after 100,000 exchangeable rows, Beta(0.5, 1)
        # p-values raise the alarm in a median of 160 rows with J = 1e-4
        # against 3,700 with J = 1e-2 (about 55 for both from the start;
        # 40 streams).
        rng = np.random.default_rng(8)
        quiet, shifted = 100_000, 6000
        delays = {}
        for jump_rate in (monitoring.DEFAULT_JUMP_RATE, 0.01):
            delays[jump_rate] = []
            for _ in range(12):
                martingale = ConformalTestMartingale(jump_rate)
                martingale.update(rng.random(quiet))
                assert not martingale.alarm
                martingale.update(rng.beta(0.5, 1.0, shifted))
                assert martingale.alarm
                delays[jump_rate].append(martingale.alarm_step - quiet)
        assert np.median(delays[monitoring.DEFAULT_JUMP_RATE]) <= 300
        assert np.median(delays[0.01]) >= 2000


def test_imports_only_numpy_stdlib_and_prometheus():
    # The model server imports this module: no Keras, no model code.
    tree = ast.parse(open(monitoring.__file__).read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported == {
        "logging",
        "math",
        "threading",
        "numpy",
        "prometheus_client",
        # The public-path decorator, which imports no Keras for a class
        # that is not a Keras object (tests/test_api.py).
        "keras_tac.src.api_export",
    }


def outputs_of(prediction, accepted, confidence=None, p_value=None):
    outputs = {
        "prediction": np.asarray(prediction, "int64"),
        "accepted": np.asarray(accepted, bool),
    }
    if confidence is not None:
        outputs["confidence"] = np.asarray(confidence, "float32")
    if p_value is not None:
        outputs["p_value"] = np.asarray(p_value, "float32")
    return outputs


def random_outputs(rng, rows, p_value=True):
    confidence = rng.normal(0.0, 3.0, rows).astype("float32")
    outputs = outputs_of(
        rng.integers(0, 4, rows),
        confidence >= -1.0,
        confidence,
        rng.random(rows) if p_value else None,
    )
    return outputs


def cumulative_buckets(values, bounds):
    """Prometheus's `le` buckets: how many values are <= each bound."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return [float((values <= bound).sum()) for bound in bounds] + [
        float(len(values))
    ]


class TestServingMetrics:
    def sample(self, registry, name, **labels):
        return registry.get_sample_value("keras_tac_" + name, labels)

    def test_counts_against_numpy(self):
        registry = prometheus_client.CollectorRegistry()
        metrics = ServingMetrics(registry)
        rng = np.random.default_rng(0)
        calls = [random_outputs(rng, rows) for rows in (50, 1, 200)]
        for outputs in calls:
            metrics.observe("digits", outputs)
        joined = {
            key: np.concatenate([outputs[key] for outputs in calls])
            for key in calls[0]
        }
        accepted = joined["accepted"]
        get = self.sample
        assert get(registry, "requests_total", model="digits") == 3.0
        assert get(registry, "rows_total", model="digits") == 251.0
        assert get(registry, "accepted_rows_total", model="digits") == float(
            accepted.sum()
        )
        assert get(registry, "accepted_fraction", model="digits") == (
            pytest.approx(accepted.mean())
        )
        for label in range(4):
            for decision in (True, False):
                expected = np.sum(
                    (joined["prediction"] == label) & (accepted == decision)
                )
                observed = get(
                    registry,
                    "class_rows_total",
                    model="digits",
                    predicted_class=str(label),
                    accepted="true" if decision else "false",
                )
                assert (observed or 0.0) == float(expected)
        for key, bounds in (
            ("confidence", monitoring.CONFIDENCE_BUCKETS),
            ("p_value", monitoring.P_VALUE_BUCKETS),
        ):
            expected = cumulative_buckets(joined[key], bounds)
            labels = [
                prometheus_client.utils.floatToGoString(b) for b in bounds
            ]
            observed = [
                get(registry, f"{key}_bucket", model="digits", le=le)
                for le in [*labels, "+Inf"]
            ]
            assert observed == expected
            assert get(registry, f"{key}_count", model="digits") == 251.0
        # OpenMetrics leaves out the sum of a histogram with negative
        # buckets (the sum would not be monotonic).
        assert get(registry, "confidence_sum", model="digits") is None
        assert get(registry, "p_value_sum", model="digits") == (
            pytest.approx(joined["p_value"].astype(np.float64).sum())
        )
        # The drift gauges: one martingale over the calls' p-values.
        expected = brute_force_values(
            joined["p_value"][None], monitoring.DEFAULT_JUMP_RATE
        )[0, -1]
        assert get(registry, "drift_martingale", model="digits") == (
            pytest.approx(expected, rel=1e-9)
        )
        assert get(registry, "drift_martingale_log10", model="digits") == (
            pytest.approx(np.log10(expected), rel=1e-9)
        )
        assert get(registry, "drift_alarm", model="digits") == 0.0
        assert metrics.martingale("digits").steps == 251

    def test_rows_per_model_call(self):
        registry = prometheus_client.CollectorRegistry()
        metrics = ServingMetrics(registry)
        sizes = [1, 3, 64, 100, 2000]
        for rows in sizes:
            metrics.observe_model_call("digits", rows)
        for bound in monitoring.MODEL_CALL_BUCKETS:
            expected = sum(rows <= bound for rows in sizes)
            assert (
                registry.get_sample_value(
                    "keras_tac_model_call_rows_bucket",
                    {"model": "digits", "le": str(float(bound))},
                )
                == expected
            ), bound
        assert registry.get_sample_value(
            "keras_tac_model_call_rows_sum", {"model": "digits"}
        ) == sum(sizes)

    def test_exposition_text_parses_to_the_same_values(self):
        registry = prometheus_client.CollectorRegistry()
        metrics = ServingMetrics(registry)
        outputs = outputs_of(
            [3, 3, 7, 1],
            [True, True, False, True],
            [1.2, 0.4, -2.5, 7.0],
            [0.8, 0.4, 0.01, 0.3],
        )
        metrics.observe("digits", outputs)
        metrics.refused_non_finite("digits", 5)
        text = prometheus_client.generate_latest(registry).decode()
        families = {
            family.name: family
            for family in parser.text_string_to_metric_families(text)
        }
        types = {
            name: family.type
            for name, family in families.items()
            if not name.endswith("_created")
        }
        assert types == {
            "keras_tac_requests": "counter",
            "keras_tac_rows": "counter",
            "keras_tac_accepted_rows": "counter",
            "keras_tac_refused_non_finite_rows": "counter",
            "keras_tac_class_rows": "counter",
            "keras_tac_accepted_fraction": "gauge",
            "keras_tac_confidence": "histogram",
            "keras_tac_p_value": "histogram",
            "keras_tac_drift_martingale": "gauge",
            "keras_tac_drift_martingale_log10": "gauge",
            "keras_tac_drift_alarm": "gauge",
            "keras_tac_model_call_rows": "histogram",
        }
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in families.values()
            for sample in family.samples
        }
        digits = (("model", "digits"),)
        assert samples[("keras_tac_rows_total", digits)] == 4.0
        assert samples[("keras_tac_accepted_rows_total", digits)] == 3.0
        assert samples[("keras_tac_accepted_fraction", digits)] == 0.75
        assert samples[("keras_tac_refused_non_finite_rows_total", digits)] == (
            5.0
        )
        assert samples[
            (
                "keras_tac_class_rows_total",
                (
                    ("accepted", "true"),
                    ("model", "digits"),
                    ("predicted_class", "3"),
                ),
            )
        ] == (2.0)
        # le = 0.05 holds 0.01; le = 0.5 holds 0.01, 0.3 and 0.4.
        for le, count in (("0.05", 1.0), ("0.5", 3.0), ("+Inf", 4.0)):
            key = ("keras_tac_p_value_bucket", (("le", le), *digits))
            assert samples[key] == count
        # Confidence 7.0 falls in le = 10.0 only; -2.5 from le = -2.0 on.
        for le, count in (("-3.0", 0.0), ("-2.0", 1.0), ("5.0", 3.0)):
            key = ("keras_tac_confidence_bucket", (("le", le), *digits))
            assert samples[key] == count
        for (name, labels), value in samples.items():
            if name.endswith("_created"):
                continue
            assert registry.get_sample_value(name, dict(labels)) == value
        expected = brute_force_values([[0.8, 0.4, 0.01, 0.3]], 1e-4)[0, -1]
        assert samples[("keras_tac_drift_martingale", digits)] == (
            pytest.approx(expected, rel=1e-6)
        )

    def test_models_and_registries_are_separate(self):
        first = prometheus_client.CollectorRegistry()
        second = prometheus_client.CollectorRegistry()
        metrics_first = ServingMetrics(first)
        metrics_second = ServingMetrics(second, jump_rate=0.5)
        metrics_first.observe("a", outputs_of([0, 1], [True, False]))
        metrics_first.observe("b", outputs_of([2], [True], p_value=[0.0]))
        metrics_second.observe("a", outputs_of([0], [False], p_value=[0.9]))
        assert self.sample(first, "rows_total", model="a") == 2.0
        assert self.sample(first, "rows_total", model="b") == 1.0
        assert self.sample(second, "rows_total", model="a") == 1.0
        assert self.sample(second, "rows_total", model="b") is None
        assert self.sample(first, "accepted_fraction", model="a") == 0.5
        assert self.sample(second, "accepted_fraction", model="a") == 0.0
        # No p-values for model "a" of the first: no drift gauges.
        assert self.sample(first, "drift_martingale", model="a") is None
        # f(0) for model "b": shares (1/3, 1/3, 1/3) -> 1.5/3 + 1/3 + 0.5/3.
        assert self.sample(first, "drift_martingale", model="b") == (
            pytest.approx(1.0)
        )
        assert metrics_second.martingale("a").jump_rate == 0.5
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            ServingMetrics(first)

    def test_uncalibrated_model_feeds_no_p_values(self):
        registry = prometheus_client.CollectorRegistry()
        metrics = ServingMetrics(registry)
        metrics.observe(
            "m", outputs_of([0, 1], [False, False], [0.1, 0.2], [np.nan] * 2)
        )
        assert self.sample(registry, "p_value_count", model="m") == 0.0
        assert self.sample(registry, "confidence_count", model="m") == 2.0
        assert self.sample(registry, "drift_martingale", model="m") == 1.0
        assert metrics.martingale("m").skipped == 2

    def test_alarm_logs_one_warning(self, caplog):
        registry = prometheus_client.CollectorRegistry()
        metrics = ServingMetrics(registry)
        low = outputs_of([0] * 20, [False] * 20, p_value=[0.001] * 20)
        with caplog.at_level(logging.WARNING, logger=monitoring.__name__):
            metrics.observe("digits", outputs_of([0], [True], p_value=[0.5]))
            assert not caplog.records
            metrics.observe("digits", low)
            martingale = metrics.martingale("digits")
            value = martingale.value
            metrics.observe("digits", low)
        assert len(caplog.records) == 1
        message = caplog.records[0].getMessage()
        assert martingale.alarm_step == 16
        for part in (
            "'digits'",
            "threshold 100",
            "at p-value 16",
            f"now {value:.4g} after 21 p-values",
        ):
            assert part in message, message
        assert self.sample(registry, "drift_alarm", model="digits") == 1.0
        assert self.sample(
            registry, "drift_martingale_log10", model="digits"
        ) == pytest.approx(martingale.log_value / math.log(10))
        metrics.reset_drift("digits")
        assert self.sample(registry, "drift_alarm", model="digits") == 0.0
        assert self.sample(registry, "drift_martingale", model="digits") == 1.0

    def test_refused_non_finite(self):
        registry = prometheus_client.CollectorRegistry()
        metrics = ServingMetrics(registry)
        metrics.refused_non_finite("m", 3)
        metrics.refused_non_finite("m", np.int64(2))
        metrics.refused_non_finite("m", 0)
        total = self.sample(
            registry, "refused_non_finite_rows_total", model="m"
        )
        assert total == 5.0
        assert self.sample(registry, "rows_total", model="m") is None
        for rows in (-1, 1.5, True, "3"):
            with pytest.raises(ValueError, match="`rows`: expected an int"):
                metrics.refused_non_finite("m", rows)

    def test_bad_outputs(self):
        metrics = ServingMetrics(prometheus_client.CollectorRegistry())
        with pytest.raises(ValueError, match=r"Missing: \['accepted'\]"):
            metrics.observe("m", {"prediction": np.zeros(2, "int64")})
        with pytest.raises(ValueError, match="expected 2 rows.*3 in 'p_value'"):
            metrics.observe(
                "m", outputs_of([0, 1], [True, True], p_value=[0.1] * 3)
            )
        with pytest.raises(ValueError, match="one value per row"):
            metrics.observe("m", outputs_of([[0, 1]], [[True, True]]))
        with pytest.raises(ValueError, match="`alarm_level`"):
            ServingMetrics(
                prometheus_client.CollectorRegistry(), alarm_level=2.0
            )

    def test_column_outputs(self):
        # A (rows, 1) output is a row per input, as a (rows,) one.
        registry = prometheus_client.CollectorRegistry()
        metrics = ServingMetrics(registry)
        metrics.observe(
            "m",
            outputs_of([[1], [2]], [[True], [False]], p_value=[[0.2], [0.9]]),
        )
        assert self.sample(registry, "accepted_rows_total", model="m") == 1.0
        assert metrics.martingale("m").steps == 2

    def test_threads(self):
        registry = prometheus_client.CollectorRegistry()
        metrics = ServingMetrics(registry)
        calls = [
            random_outputs(np.random.default_rng(seed), 64)
            for seed in range(200)
        ]
        errors = []

        def work(part):
            try:
                for outputs in calls[part::8]:
                    metrics.observe("m", outputs)
            except Exception as error:  # surfaced below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        accepted = sum(int(outputs["accepted"].sum()) for outputs in calls)
        get = self.sample
        assert get(registry, "rows_total", model="m") == 200 * 64
        assert get(registry, "accepted_rows_total", model="m") == accepted
        assert get(registry, "accepted_fraction", model="m") == (
            pytest.approx(accepted / (200 * 64))
        )
        assert get(registry, "p_value_count", model="m") == 200 * 64
        martingale = metrics.martingale("m")
        assert martingale.steps == 200 * 64
        assert get(registry, "drift_martingale", model="m") == (
            martingale.value
        )
