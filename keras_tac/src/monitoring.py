"""What a served model decides, for Prometheus, and a drift alarm.

`ServingMetrics` turns the outputs of each model call (`prediction`,
`confidence`, `accepted`, `p_value`, as `TACModel.predict_with_rejection`
and the model server answer them) into `keras_tac_*` metrics: counts of
requests, rows and accepted rows, acceptance per predicted class,
histograms of the confidence and of the p-value, and a drift monitor. The
monitor is a `ConformalTestMartingale` on the stream of served p-values:
it grows when the served inputs stop looking like the calibration inputs,
and raises an alarm, with a bounded false-alarm probability, when it
crosses `1 / alarm_level`.

NumPy and the standard library only; `prometheus_client` (installed with
KServe, `pip install keras-tac[serve]`) is imported by `ServingMetrics`.
Neither Keras nor keras-tac's model code is imported, so the model server
can use this module.
"""

import logging
import math
import threading

import numpy as np

from keras_tac.src.api_export import keras_tac_export

# Simple Jumper's jumping rate: the capital moved between bets at each step.
# Under the null the martingale loses about 0.6 * J nats a row (capital
# moved onto the losing bets), while a small J costs only about log(1 / J)
# nats once, so the small rate keeps the monitor sharp over long streams:
# measured on Beta(0.5, 1) p-values after 100,000 uniform ones (40 streams
# each), the median rows to the alarm are 160 (J = 1e-4), 620 (1e-3) and
# 3,700 (1e-2), and 51-55 for each from the start of a stream
# (tests/test_monitoring.py checks the first and the last).
DEFAULT_JUMP_RATE = 1e-4
DEFAULT_ALARM_LEVEL = 0.01
# The default (combined) confidence is a sum of three z-scores less a
# novelty gate of up to 10 points: from about -12 to 3 on in-distribution
# digits (1st and 99th percentiles, benchmarks/drift_monitor.py), lower on
# novel inputs. The p-value buckets split the small p-values that signal
# novel inputs.
CONFIDENCE_BUCKETS = (-30.0, -20.0, -15.0, -10.0, -7.5, -5.0, -3.0, -2.0)
CONFIDENCE_BUCKETS += (-1.0, 0.0, 1.0, 2.0, 3.0, 5.0)
P_VALUE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
MODEL_CALL_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
METRIC_PREFIX = "keras_tac_"

logger = logging.getLogger(__name__)


@keras_tac_export("keras_tac.monitoring.ConformalTestMartingale")
class ConformalTestMartingale:
    """A test martingale on a stream of conformal p-values: a drift alarm.

    The "Simple Jumper" betting martingale (Vovk, "Testing randomness
    online", Statistical Science, 2021): three bets on each p-value,

        f_e(p) = 1 + e * (p - 1/2),    e in {-1, 0, +1},

    (`e = -1` wins on small p-values: inputs less confident than the
    calibration inputs; `e = +1` on large ones; `e = 0` keeps its
    capital), with the capital split in thirds at the start. At each step
    a fraction `jump_rate` of all capital is first spread evenly over the
    three bets, `C_e <- (1 - J) C_e + J / 3 * C`, then each bet's capital is
    multiplied by `f_e(p)`; the value is `C = C_-1 + C_0 + C_+1`, starting
    at 1. It is kept in log space (as the log of `C` and the bets' shares),
    so millions of steps neither overflow nor underflow.

    If the p-values are independent and uniform on `[0, 1]` (the served
    inputs are exchangeable with the calibration inputs and the p-values
    are exact), the value is a nonnegative martingale with mean 1, and by
    Ville's inequality the probability that it ever reaches
    `1 / alarm_level` is at most `alarm_level`. The served p-values are not
    quite that: all rows are compared with one fixed set of `n` held-out
    confidences, so given that set they are i.i.d. but only approximately
    uniform (their mean is off by about `1 / sqrt(12 n)`), and the bound is
    approximate. Measured over 5,000-row streams exchangeable with the
    reference (normal scores, the reference redrawn for each of 400 to
    1,000 streams, defaults): a false-alarm rate of 4-5% at `n = 500`,
    2.4% at `n = 1,000` and about 1% at `n = 4,096`, against 0.5% with
    exact uniform p-values (tests/test_monitoring.py); on a digits model,
    1.2% at `n = 1,000` and 1.0% at `n = 4,096` (500 streams,
    benchmarks/drift_monitor.py). Calibrate on 1,000 inputs or more where
    a false-alarm rate near `alarm_level` matters. A shift shows within a
    few dozen rows when most p-values fall below 0.05 (noisy or inverted
    digits: 15-18 rows), within a few hundred when only 11% do (about 120).

    Under the null hypothesis the value drifts down (by about
    `0.6 * jump_rate` nats a step, the capital moved onto losing bets), so
    evidence of a late shift first has to make up for it; `reset()` (after
    recalibrating, or on a schedule) starts afresh. Non-finite p-values
    (NaN: a model that was never calibrated) are skipped and counted in
    `skipped`.

    Args:
        jump_rate: float in `[0, 1]`. The fraction of capital redistributed
            over the bets at each step (`J`). Defaults to `1e-4`: as fast
            as larger rates from the start of a stream, and much faster
            after a long in-distribution stretch (the module's comment
            gives the figures).
        alarm_level: float in `(0, 1)`. The alarm is raised when the value
            reaches `1 / alarm_level`. Defaults to `0.01` (a value of 100).

    Attributes:
        steps: int. P-values fed since the start (or `reset`).
        skipped: int. Non-finite p-values skipped.
        alarm_step: int or `None`. The step at which the value first
            reached `1 / alarm_level`.

    Example:

    >>> martingale = ConformalTestMartingale()
    >>> martingale.update([0.5, 0.5])  # f_e(1/2) = 1: no evidence
    1.0
    >>> value = martingale.update(np.full(30, 0.02))  # unusually low
    >>> martingale.alarm, martingale.alarm_step, martingale.steps
    (True, 17, 32)
    >>> martingale.update([float("nan")]) == value  # skipped
    True
    >>> martingale.skipped
    1
    """

    def __init__(
        self, jump_rate=DEFAULT_JUMP_RATE, alarm_level=DEFAULT_ALARM_LEVEL
    ):
        self.jump_rate = _check_float("jump_rate", jump_rate, 0.0, 1.0)
        self.alarm_level = _check_float(
            "alarm_level", alarm_level, 0.0, 1.0, closed=False
        )
        self.reset()

    def reset(self):
        """Starts afresh: value 1, no alarm, no steps."""
        # Shares of the capital on e = -1, 0, +1 (they sum to 1).
        self._shares = [1.0 / 3.0] * 3
        self._log_value = 0.0
        self._log_max = 0.0
        self.steps = 0
        self.skipped = 0
        self.alarm_step = None

    @property
    def threshold(self):
        """The value that raises the alarm: `1 / alarm_level`."""
        return 1.0 / self.alarm_level

    @property
    def log_value(self):
        """Natural log of the current value."""
        return self._log_value

    @property
    def value(self):
        """The current value (`inf` past the largest float)."""
        return _exp(self._log_value)

    @property
    def max_value(self):
        """The largest value since the start (or the last `reset`)."""
        return _exp(self._log_max)

    @property
    def alarm(self):
        """True once the value has reached `threshold` (until `reset`)."""
        return self.alarm_step is not None

    def update(self, p_values):
        """Feeds p-values in order (a batch of rows); returns the value.

        Args:
            p_values: array-like of any shape (flattened in C order),
                values in `[0, 1]`; non-finite values are skipped.

        Returns:
            The current value, a float.
        """
        p_values = np.asarray(p_values)
        if p_values.dtype.kind not in "biuf":
            raise ValueError(
                "Invalid `p_values`: expected numbers in [0, 1]. Received "
                f"dtype {p_values.dtype}"
            )
        p_values = p_values.astype(np.float64).ravel()
        finite = np.isfinite(p_values)
        outside = finite & ((p_values < 0.0) | (p_values > 1.0))
        if outside.any():
            position = int(np.flatnonzero(outside)[0])
            raise ValueError(
                "Invalid `p_values`: expected values in [0, 1] (or NaN, "
                f"skipped). Received: {float(p_values[position])!r} at "
                f"position {position}"
            )
        self.skipped += int(len(p_values) - finite.sum())
        self._run(p_values[finite].tolist())
        return self.value

    def _run(self, p_values):
        keep = 1.0 - self.jump_rate
        share = self.jump_rate / 3.0
        low, middle, high = self._shares
        log_value = self._log_value
        log_max = self._log_max
        log_threshold = -math.log(self.alarm_level)
        for step, p in enumerate(p_values, self.steps + 1):
            low = keep * low + share
            middle = keep * middle + share
            high = keep * high + share
            low *= 1.5 - p
            high *= 0.5 + p
            factor = low + middle + high
            low /= factor
            middle /= factor
            high /= factor
            log_value += math.log(factor)
            if log_value > log_max:
                log_max = log_value
                if self.alarm_step is None and log_max >= log_threshold:
                    self.alarm_step = step
        self._log_value = log_value
        self._log_max = log_max
        self._shares = [low, middle, high]
        self.steps += len(p_values)

    def __repr__(self):
        return (
            f"ConformalTestMartingale(jump_rate={self.jump_rate}, "
            f"alarm_level={self.alarm_level}, steps={self.steps}, "
            f"value={self.value:.4g}, alarm={self.alarm})"
        )


@keras_tac_export("keras_tac.monitoring.ServingMetrics")
class ServingMetrics:
    """Prometheus metrics of what a served `TACModel` decides, with a
    drift monitor per model.

    `observe(model_name, outputs)` takes the NumPy outputs of one model
    call and updates these metrics, each labelled with `model`:

    - `keras_tac_requests_total`, `keras_tac_rows_total`,
      `keras_tac_accepted_rows_total`: requests (calls of `observe`), rows,
      accepted rows.
    - `keras_tac_class_rows_total{predicted_class, accepted}`: rows per
      predicted class and decision (`"true"`/`"false"`): the acceptance
      rate of each class.
    - `keras_tac_accepted_fraction`: accepted rows / rows since start.
    - `keras_tac_confidence` (histogram, `CONFIDENCE_BUCKETS`; non-finite
      confidences left out; no `_sum`, as OpenMetrics asks of histograms
      with negative buckets) and `keras_tac_p_value` (histogram,
      `P_VALUE_BUCKETS`; NaN p-values of an uncalibrated model left out).
    - `keras_tac_drift_martingale`, `keras_tac_drift_martingale_log10`:
      the value of the model's `ConformalTestMartingale` on its p-values
      (the log for when the value is huge or tiny), and
      `keras_tac_drift_alarm`: 1 once it reached `1 / alarm_level`, else
      0. The first alarm logs one WARNING on this module's logger.

    `observe_model_call(model_name, rows)` adds one model call's rows to
    the histogram `keras_tac_model_call_rows` (rows per call: with
    server-side batching, several requests share a call).

    `refused_non_finite(model_name, rows)` counts, in
    `keras_tac_refused_non_finite_rows_total`, rows of requests refused
    because an input held NaN or infinity (those never reach the model).
    Safe to call from several threads; p-values enter the monitor one
    call at a time, in the order the calls take its lock.

    Args:
        registry: a `prometheus_client.CollectorRegistry`. Defaults to
            `prometheus_client.REGISTRY`, which KServe serves at
            `/metrics`. One `ServingMetrics` per registry (the metric
            names are registered once).
        jump_rate: float. The drift monitors' `jump_rate`
            (`ConformalTestMartingale`). Defaults to `1e-4`.
        alarm_level: float. The drift monitors' `alarm_level`. Defaults to
            `0.01`.

    Example:

    >>> import prometheus_client
    >>> registry = prometheus_client.CollectorRegistry()
    >>> metrics = ServingMetrics(registry)
    >>> metrics.observe("digits", {
    ...     "prediction": np.array([3, 3, 7]),
    ...     "confidence": np.array([1.2, 0.4, -2.5], "float32"),
    ...     "accepted": np.array([True, True, False]),
    ...     "p_value": np.array([0.8, 0.4, 0.01], "float32"),
    ... })
    >>> registry.get_sample_value(
    ...     "keras_tac_accepted_rows_total", {"model": "digits"})
    2.0
    >>> registry.get_sample_value(
    ...     "keras_tac_accepted_fraction", {"model": "digits"})
    0.666...
    >>> registry.get_sample_value(
    ...     "keras_tac_p_value_bucket", {"model": "digits", "le": "0.05"})
    1.0
    """

    def __init__(
        self,
        registry=None,
        jump_rate=DEFAULT_JUMP_RATE,
        alarm_level=DEFAULT_ALARM_LEVEL,
    ):
        try:
            import prometheus_client
        except ImportError as error:
            raise ImportError(
                "`ServingMetrics` needs prometheus_client: "
                "`pip install keras-tac[serve]`."
            ) from error
        # Checked now, not at the first model's first request.
        ConformalTestMartingale(jump_rate, alarm_level)
        self.jump_rate = jump_rate
        self.alarm_level = alarm_level
        if registry is None:
            registry = prometheus_client.REGISTRY
        self.registry = registry

        def metric(kind, name, documentation, labels=("model",), **kwargs):
            return kind(
                METRIC_PREFIX + name,
                documentation,
                labels,
                registry=registry,
                **kwargs,
            )

        counter = prometheus_client.Counter
        gauge = prometheus_client.Gauge
        histogram = prometheus_client.Histogram
        self.requests = metric(counter, "requests", "Requests answered.")
        self.rows = metric(counter, "rows", "Rows answered.")
        self.accepted_rows = metric(
            counter, "accepted_rows", "Rows answered and accepted."
        )
        self.refused_non_finite_rows = metric(
            counter,
            "refused_non_finite_rows",
            "Rows of requests refused for a NaN or infinite input.",
        )
        self.class_rows = metric(
            counter,
            "class_rows",
            "Rows answered, per predicted class and decision.",
            labels=("model", "predicted_class", "accepted"),
        )
        self.accepted_fraction = metric(
            gauge, "accepted_fraction", "Accepted rows / rows since start."
        )
        self.confidence = metric(
            histogram,
            "confidence",
            "The confidence of the rows (finite ones).",
            buckets=CONFIDENCE_BUCKETS,
        )
        self.p_value = metric(
            histogram,
            "p_value",
            "The conformal p-value of the rows' confidence against the "
            "calibration inputs' (calibrated models).",
            buckets=P_VALUE_BUCKETS,
        )
        self.drift_martingale = metric(
            gauge,
            "drift_martingale",
            "Conformal test martingale on the p-values; large values are "
            "evidence of drift.",
        )
        self.drift_martingale_log10 = metric(
            gauge,
            "drift_martingale_log10",
            "log10 of keras_tac_drift_martingale.",
        )
        self.drift_alarm = metric(
            gauge,
            "drift_alarm",
            "1 once keras_tac_drift_martingale reached 1 / alarm_level.",
        )
        self.model_call_rows = metric(
            histogram,
            "model_call_rows",
            "Rows per model call (several requests share a call when the "
            "server batches them).",
            buckets=MODEL_CALL_BUCKETS,
        )
        self._lock = threading.Lock()
        self._martingales = {}
        self._totals = {}

    def martingale(self, model_name):
        """The drift monitor of `model_name` (a `ConformalTestMartingale`),
        created if new. `observe` updates it under a lock that readers do
        not take: read it while no call is observed, or read the gauges."""
        with self._lock:
            return self._martingale(model_name)

    def _martingale(self, model_name):
        if model_name not in self._martingales:
            self._martingales[model_name] = ConformalTestMartingale(
                self.jump_rate, self.alarm_level
            )
        return self._martingales[model_name]

    def observe_model_call(self, model_name, rows):
        """Counts one model call of `rows` rows in
        `keras_tac_model_call_rows`."""
        self.model_call_rows.labels(model=str(model_name)).observe(rows)

    def observe(self, model_name, outputs):
        """Counts one model call's outputs.

        Args:
            model_name: str. The `model` label.
            outputs: dict of arrays with a row per input: `"prediction"`
                (class indices) and `"accepted"` (bools) are needed;
                `"confidence"` and `"p_value"` are observed when present.
                Other keys are ignored.
        """
        name = str(model_name)
        missing = [k for k in ("prediction", "accepted") if k not in outputs]
        if missing:
            raise ValueError(
                f"Invalid `outputs`: expected the keys 'prediction' and "
                f"'accepted'. Missing: {missing}; received keys "
                f"{sorted(outputs)}"
            )
        prediction = _column(outputs, "prediction")
        accepted = _column(outputs, "accepted").astype(bool)
        rows = len(prediction)
        for key in ("accepted", "confidence", "p_value"):
            if key in outputs and len(_column(outputs, key)) != rows:
                raise ValueError(
                    f"Invalid `outputs`: expected {rows} rows in every "
                    f"output, as in 'prediction'. Received "
                    f"{len(_column(outputs, key))} in {key!r}"
                )
        num_accepted = int(accepted.sum())
        self.requests.labels(model=name).inc()
        self.rows.labels(model=name).inc(rows)
        self.accepted_rows.labels(model=name).inc(num_accepted)
        pairs, counts = np.unique(
            np.stack([prediction.astype(np.int64), accepted]),
            axis=1,
            return_counts=True,
        )
        for (label, decision), count in zip(pairs.T.tolist(), counts):
            self.class_rows.labels(
                model=name,
                predicted_class=str(label),
                accepted="true" if decision else "false",
            ).inc(int(count))
        for key, histogram in (
            ("confidence", self.confidence),
            ("p_value", self.p_value),
        ):
            if key in outputs:
                values = _column(outputs, key).astype(np.float64)
                child = histogram.labels(model=name)
                for value in values[np.isfinite(values)].tolist():
                    child.observe(value)
        with self._lock:
            total_rows, total_accepted = self._totals.get(name, (0, 0))
            total_rows += rows
            total_accepted += num_accepted
            self._totals[name] = (total_rows, total_accepted)
            if total_rows:
                self.accepted_fraction.labels(model=name).set(
                    total_accepted / total_rows
                )
            if "p_value" not in outputs:
                return
            martingale = self._martingale(name)
            was_alarm = martingale.alarm
            martingale.update(_column(outputs, "p_value"))
            self._set_drift_gauges(name, martingale)
            raised = martingale.alarm and not was_alarm
            value, steps = martingale.value, martingale.steps
            alarm_step = martingale.alarm_step
        if raised:
            logger.warning(
                "Drift alarm for model %r: the conformal test martingale on "
                "its p-values reached %.4g (threshold %.4g, alarm level %g) "
                "at p-value %d; now %.4g after %d p-values. The served "
                "inputs no longer look exchangeable with the calibration "
                "inputs.",
                name,
                martingale.max_value,
                martingale.threshold,
                martingale.alarm_level,
                alarm_step,
                value,
                steps,
            )

    def refused_non_finite(self, model_name, rows):
        """Counts `rows` rows refused for NaN or infinite inputs.

        Args:
            model_name: str. The `model` label.
            rows: int >= 0. Rows of the refused request.
        """
        if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)):
            raise ValueError(
                f"Invalid `rows`: expected an int >= 0. Received: {rows!r}"
            )
        if rows < 0:
            raise ValueError(
                f"Invalid `rows`: expected an int >= 0. Received: {rows!r}"
            )
        self.refused_non_finite_rows.labels(model=str(model_name)).inc(
            int(rows)
        )

    def reset_drift(self, model_name):
        """Restarts the drift monitor of `model_name` (value 1, no alarm),
        e.g. after the model was recalibrated."""
        name = str(model_name)
        with self._lock:
            martingale = self._martingale(name)
            martingale.reset()
            self._set_drift_gauges(name, martingale)

    def _set_drift_gauges(self, name, martingale):
        self.drift_martingale.labels(model=name).set(martingale.value)
        self.drift_martingale_log10.labels(model=name).set(
            martingale.log_value / math.log(10.0)
        )
        self.drift_alarm.labels(model=name).set(float(martingale.alarm))


def _column(outputs, key):
    """One output as a 1-D NumPy array (a row per input)."""
    array = np.asarray(outputs[key])
    if array.ndim == 0:
        raise ValueError(
            f"Invalid `outputs`: expected {key!r} to hold a row per input. "
            f"Received a scalar: {array!r}"
        )
    if array.ndim > 1 and array.size == len(array):
        array = array.reshape(len(array))
    if array.ndim != 1:
        raise ValueError(
            f"Invalid `outputs`: expected {key!r} to hold one value per "
            f"row. Received shape {array.shape}"
        )
    return array


def _exp(log_value):
    return math.exp(log_value) if log_value < 709.0 else math.inf


def _check_float(name, value, low, high, closed=True):
    """A float in `[low, high]` (`(low, high)` when not `closed`)."""
    interval = f"[{low}, {high}]" if closed else f"({low}, {high})"
    if not isinstance(value, (int, float, np.floating, np.integer)) or (
        isinstance(value, bool)
    ):
        raise ValueError(
            f"Invalid `{name}`: expected a float in {interval}. Received: "
            f"{value!r}"
        )
    value = float(value)
    inside = low <= value <= high if closed else low < value < high
    if not inside:
        raise ValueError(
            f"Invalid `{name}`: expected a float in {interval}. Received: "
            f"{value!r}"
        )
    return value
