"""Hostile input, fuzzed across the public API.

Every entry point answers bad input with a clear error that says what it
expected and what it received, or with a documented result: never a crash
deep inside a backend, never silent garbage. Keras models are slow to
build, so each is built once per module and hypothesis fuzzes the inputs.
"""

import math
import numbers
import re
import warnings

import hypothesis
import keras
import numpy as np
import pytest
from conftest import make_cnn
from conftest import to_numpy
from hypothesis import strategies as st
from keras import ops

import keras_tac
from keras_tac import codes as codes_lib
from keras_tac import layers
from keras_tac import losses
from keras_tac import metrics

FUZZ = hypothesis.settings(
    max_examples=15,
    # The same examples on every run, so that CI is reproducible.
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
NUM_CLASSES = 10


def assert_clear(error, *fragments):
    """A clear error: it says what was expected and what was received (or
    which values were wrong), and names each of `fragments`."""
    message = str(error)
    assert re.search("expected", message, re.IGNORECASE), message
    assert re.search("received|invalid", message, re.IGNORECASE), message
    for fragment in fragments:
        assert fragment in message, message


def is_real(value):
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(value)
    )


def is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(
        value, (bool, np.bool_)
    )


# Anything a user might pass for a scalar argument.
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 2**33),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 60).map(np.float32),
    st.integers(0, 20).map(np.int64),
    st.text(max_size=4),
    st.sampled_from(["small", "random", "median", "distance", "logits"]),
    st.just([1.0]),
)


def numeric_oracles():
    """TACModel arguments and what a valid value is (10 classes, taps of
    width 16 and more, so at least 4 code bits per tap)."""

    def real_in(low, high):
        return lambda v: is_real(v) and low <= v <= high

    def one_of(*choices):
        return lambda v: isinstance(v, str) and v in choices

    return {
        "num_slices": lambda v: is_int(v) and v >= 4,
        "seed": lambda v: is_int(v) and 0 <= v <= 2**31 - 1,
        "temperature": real_in(1e-4, 50.0),
        "code_noise": real_in(0.0, 0.999),
        "mixup_alpha": real_in(0.0, math.inf),
        "cross_entropy_weight": real_in(0.0, math.inf),
        "regression_weight": real_in(0.0, math.inf),
        "base_loss_weight": real_in(0.0, math.inf),
        "projection": one_of("none", "small", "large", "very_large"),
        "score": one_of("distance", "nearest_distance", "inner_product"),
        "slicing": one_of("uniform", "random"),
        "reduction": one_of("mean", "median"),
        "base_output": one_of("auto", "logits", "probabilities"),
    }


@pytest.fixture(scope="module")
def base():
    return make_cnn()


class TestTACModelArguments:
    @FUZZ
    @hypothesis.given(
        name=st.sampled_from(sorted(numeric_oracles())), value=ANY_VALUE
    )
    def test_each_argument(self, base, name, value):
        valid = numeric_oracles()[name](value)
        try:
            tac = keras_tac.TACModel(base, **{name: value})
        except (ValueError, TypeError) as error:
            assert not valid, f"{name}={value!r} refused: {error}"
            assert_clear(error, f"`{name}`")
            return
        assert valid, f"{name}={value!r} accepted"
        assert tac.get_config()[name] == value

    @FUZZ
    @hypothesis.given(
        taps=st.lists(
            st.one_of(
                st.sampled_from(
                    ["conv_1", "pool_1", "conv_2", "pool_2", "features"]
                ),
                st.sampled_from(["logits", "image", "cnn", "nope", ""]),
                st.integers(0, 3),
            ),
            max_size=4,
        )
    )
    def test_tap_layers(self, base, taps):
        known = {"conv_1", "pool_1", "conv_2", "pool_2", "features"}
        valid = (
            bool(taps)
            and all(isinstance(t, str) and t in known for t in taps)
            and len(set(taps)) == len(taps)
        )
        try:
            tac = keras_tac.TACModel(base, tap_layers=taps)
        except (ValueError, TypeError) as error:
            assert not valid, f"{taps} refused: {error}"
            message = str(error)
            assert any(
                word in message
                for word in ("Unknown", "Duplicate", "output layer", "Invalid")
            ), message
            return
        assert valid, f"{taps} accepted"
        assert tac.tap_layers == taps
        assert tac.codes.shape == (NUM_CLASSES, 16 * len(taps))

    def test_tap_from_another_model(self, base):
        other = make_cnn()
        with pytest.raises(ValueError, match="Available layers"):
            keras_tac.TACModel(base, tap_layers=[other.get_layer("conv_1")])


# ----------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------
DTYPES = ("float16", "float32", "float64", "int32")


@st.composite
def arrays(draw, max_rank=5, widths=(4, 8), max_batch=3):
    """Arrays of assorted rank, shape and dtype, channels last."""
    rank = draw(st.integers(0, max_rank))
    shape = ()
    if rank >= 1:
        shape = (draw(st.integers(0, max_batch)),)
    if rank >= 2:
        middle = [draw(st.integers(1, 3)) for _ in range(rank - 2)]
        shape += (*middle, draw(st.sampled_from(widths)))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 9)))
    return rng.normal(size=shape).astype(dtype)


@pytest.fixture(scope="module")
def built_layers():
    slicers = {}
    for reduction in ("mean", "median"):
        layer = layers.SliceReduce(3, slicing="random", reduction=reduction)
        layer.build((None, 8))
        slicers[reduction] = layer
    profile = layers.ActivationProfile(num_slices=4, projection="none")
    profile.build((None, 5, 5, 8))
    codes = np.random.default_rng(0).choice([-1, 1], size=(5, 8))
    return slicers, profile, layers.CodeMatching(codes), codes


class TestLayers:
    @FUZZ
    @hypothesis.given(x=arrays())
    def test_tap_pooling(self, x):
        if x.ndim < 2:
            with pytest.raises(ValueError) as error:
                layers.TapPooling()(x)
            assert_clear(error.value, "rank 2")
            return
        out = to_numpy(layers.TapPooling()(x))
        assert out.shape == (x.shape[0], x.shape[-1])
        expected = x.astype("float32").mean(axis=tuple(range(1, x.ndim - 1)))
        tolerance = 1e-2 if x.dtype == np.float16 else 1e-5
        np.testing.assert_allclose(out, expected, rtol=tolerance, atol=1e-3)

    @FUZZ
    @hypothesis.given(
        x=arrays(max_rank=3, widths=(6, 8, 10)),
        reduction=st.sampled_from(["mean", "median"]),
    )
    def test_slice_reduce(self, built_layers, x, reduction):
        layer = built_layers[0][reduction]
        if x.shape[1:] != (8,):
            with pytest.raises(ValueError) as error:
                layer(x)
            assert_clear(error.value)
            return
        out = to_numpy(layer(x)).astype("float32")
        indices = to_numpy(layer.indices)
        reduce = np.mean if reduction == "mean" else np.median
        expected = np.stack(
            [
                reduce(x[:, row[row >= 0]].astype("float32"), axis=1)
                for row in indices
            ],
            axis=1,
        )
        np.testing.assert_allclose(out, expected, rtol=1e-2, atol=1e-2)

    @FUZZ
    @hypothesis.given(x=arrays(widths=(6, 8, 10)))
    def test_activation_profile(self, built_layers, x):
        profile = built_layers[1]
        if x.ndim < 2 or x.shape[-1] != 8:
            with pytest.raises(ValueError) as error:
                profile(x)
            assert_clear(error.value)
            return
        assert to_numpy(profile(x)).shape == (x.shape[0], 4)

    @FUZZ
    @hypothesis.given(x=arrays(max_rank=3, widths=(7, 8, 9)))
    def test_code_matching(self, built_layers, x):
        matching, codes = built_layers[2], built_layers[3]
        if x.shape[1:] != (8,):
            with pytest.raises(ValueError) as error:
                matching(x)
            assert_clear(error.value, "(batch, 8)")
            return
        distances = matching(x)
        assert "float32" in str(distances.dtype)
        profile = x.astype("float32")
        expected = np.abs(profile[:, None] - codes[None]).mean(axis=-1)
        np.testing.assert_allclose(
            to_numpy(distances), expected, rtol=1e-5, atol=1e-5
        )

    @FUZZ
    @hypothesis.given(
        layer_and_name=st.sampled_from(
            [
                ("SliceReduce", "num_slices"),
                ("SliceReduce", "slicing"),
                ("SliceReduce", "seed"),
                ("TapProjection", "projection"),
                ("TapProjection", "seed"),
                ("ActivationProfile", "num_slices"),
                ("ActivationProfile", "projection"),
                ("ActivationProfile", "seed"),
            ]
        ),
        value=ANY_VALUE,
    )
    def test_layer_arguments(self, layer_and_name, value):
        layer, name = layer_and_name
        valid = {
            "seed": lambda v: is_int(v) and 0 <= v <= 2**31 - 1,
            "num_slices": lambda v: is_int(v) and v >= 1,
            "projection": lambda v: (
                isinstance(v, str)
                and v in ("none", "small", "large", "very_large")
            ),
            "slicing": lambda v: (
                isinstance(v, str) and v in ("uniform", "random")
            ),
        }[name](value)
        try:
            getattr(layers, layer)(**{name: value})
        except (ValueError, TypeError) as error:
            assert not valid, f"{name}={value!r} refused: {error}"
            assert_clear(error, f"`{name}`")
            return
        assert valid, f"{layer}({name}={value!r}) accepted"

    @pytest.mark.parametrize(
        "codes",
        [np.ones((1, 4)), np.ones(4), [[0, 1], [1, 1]], [["a", "b"]], []],
    )
    def test_bad_codes(self, codes):
        for build in (layers.CodeMatching, losses.TACLoss):
            with pytest.raises(ValueError) as error:
                build(codes)
            assert_clear(error.value, "`codes`")


# ----------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------
def labels(num_classes, batch):
    """Labels in every form a user might pass, valid or not."""
    integers = st.lists(
        st.integers(-2, num_classes + 1), min_size=batch, max_size=batch
    ).map(lambda v: np.array(v, "int64"))
    floats = st.lists(
        st.one_of(
            st.integers(0, num_classes - 1).map(float),
            st.floats(-1, num_classes + 1, width=32, allow_subnormal=False),
            st.just(float("nan")),
        ),
        min_size=batch,
        max_size=batch,
    ).map(lambda v: np.array(v, "float32"))
    one_hot = st.builds(
        lambda v, width: np.eye(width, dtype="float32")[
            np.clip(v, 0, width - 1)
        ],
        st.lists(st.integers(0, num_classes), min_size=batch, max_size=batch),
        st.sampled_from([num_classes - 1, num_classes, num_classes + 1]),
    )
    soft = st.builds(
        lambda seed, scale: (
            np.random.default_rng(seed)
            .dirichlet(np.ones(num_classes), size=batch)
            .astype("float32")
            * scale
        ),
        st.integers(0, 9),
        st.sampled_from([1.0, 1.0, 0.5, -1.0]),
    )
    return st.one_of(
        integers,
        integers.map(lambda v: v[:, None]),
        integers.map(lambda v: np.stack([v, v], axis=1)),
        integers.map(lambda v: v[:-1]),
        floats,
        one_hot,
        soft,
    )


def label_oracle(y, num_classes, batch):
    """The labels as class probabilities, or None when they are invalid."""
    y = np.asarray(y, "float64")
    if y.ndim == 2 and y.shape[1] == num_classes:
        ok = np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, atol=1e-3)
        return y if ok and len(y) == batch else None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != batch:
        return None
    if not np.all(np.isfinite(y) & (y == np.floor(y))):
        return None
    if np.any(y < 0) or np.any(y >= num_classes):
        return None
    return np.eye(num_classes)[y.astype(int)]


@pytest.fixture(scope="module")
def loss_problem():
    codes, _ = codes_lib.class_codes(6, num_blocks=2, seed=0)
    profile = np.random.default_rng(0).normal(size=(5, codes.shape[1]))
    return codes.astype("float32"), profile.astype("float32")


class TestLoss:
    @FUZZ
    @hypothesis.given(y=labels(6, 5))
    def test_numpy_labels(self, loss_problem, y):
        codes, profile = loss_problem
        probabilities = label_oracle(y, 6, 5)
        if probabilities is None:
            with pytest.raises((ValueError, TypeError)) as error:
                losses.tac_loss(y, profile, codes)
            assert_clear(error.value, "labels")
            with pytest.raises((ValueError, TypeError)):
                losses.TACLoss(codes)(y, profile)
            return
        loss = to_numpy(losses.tac_loss(y, profile, codes))
        expected = to_numpy(
            losses.tac_loss(probabilities.astype("float32"), profile, codes)
        )
        assert np.all(np.isfinite(loss))
        np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5)

    @FUZZ
    @hypothesis.given(
        y=st.lists(
            st.one_of(
                st.integers(-2, 7).map(float),
                st.floats(-1, 7, width=32, allow_subnormal=False),
                st.just(float("nan")),
            ),
            min_size=5,
            max_size=5,
        ).map(lambda v: np.array(v, "float32"))
    )
    def test_tensor_labels_mark_invalid_rows_nan(self, loss_problem, y):
        """Tensors may be symbolic: invalid rows give NaN, not garbage.
        (Subnormal labels are left out: XLA flushes them to 0, a class.)"""
        codes, profile = loss_problem
        loss = to_numpy(
            losses.tac_loss(ops.convert_to_tensor(y), profile, codes)
        )
        valid = np.isfinite(y) & (y == np.floor(y)) & (y >= 0) & (y < 6)
        assert np.all(np.isnan(loss[~valid]))
        if valid.any():
            expected = to_numpy(
                losses.tac_loss(y[valid].astype("int32"), profile[valid], codes)
            )
            np.testing.assert_allclose(loss[valid], expected, rtol=1e-5)

    @pytest.mark.parametrize(
        "profile_shape", [(5,), (5, 15), (5, 17), (5, 1, 16), (4, 16)]
    )
    def test_profile_shapes(self, loss_problem, profile_shape):
        codes, _ = loss_problem
        assert codes.shape == (6, 16)
        profile = np.zeros(profile_shape, "float32")
        with pytest.raises(ValueError) as error:
            losses.tac_loss(np.arange(5) % 6, profile, codes)
        assert_clear(error.value)
        if len(profile_shape) == 2 and profile_shape[0] == 5:
            with pytest.raises(ValueError, match=r"\(batch, 16\)"):
                losses.TACLoss(codes)(np.arange(5) % 6, profile)

    def test_bad_labels_in_fit_give_nan_loss(self, loss_problem):
        """Inside `fit` the labels are tensors, possibly symbolic: an
        out-of-range label makes the loss NaN instead of training on a
        row of zeros."""
        codes, profile = loss_problem
        model = keras.Sequential(
            [
                keras.Input((codes.shape[1],)),
                keras.layers.Dense(codes.shape[1]),
            ]
        )
        model.compile(optimizer="sgd", loss=losses.TACLoss(codes))
        good = np.array([0, 1, 2, 3, 5])
        bad = np.array([0, 1, 2, 3, 6])
        history = model.fit(profile, good, batch_size=5, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        history = model.fit(profile, bad, batch_size=5, verbose=0)
        assert np.isnan(history.history["loss"][0])


# ----------------------------------------------------------------------
# predict, predict_with_rejection, calibrate
# ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tac():
    keras.utils.set_random_seed(0)
    model = keras_tac.TACModel(make_cnn(), tap_layers=["conv_1", "features"])
    rng = np.random.default_rng(0)
    x = rng.random((6, 8, 8, 1)).astype("float32")
    # The default confidence compares inputs with training data.
    model.fit_statistics(
        rng.random((40, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 40)
    )
    return model, x, model.predict(x, verbose=0)


def input_arrays():
    """Perturbations of a valid batch `(6, 8, 8, 1)` float32."""
    shapes = st.sampled_from(
        [
            (6, 8, 8, 1),
            (6, 8, 8),
            (6, 8, 8, 1, 1),
            (6, 8, 8, 3),
            (6, 9, 8, 1),
            (6, 8, 7, 1),
            (0, 8, 8, 1),
            (6, 64),
            (6,),
            (),
        ]
    )
    dtypes = st.sampled_from(
        ["float32", "float64", "float16", "int32", "uint8", "bool"]
        + ["complex64", "<U1", "object"]
    )
    return st.builds(lambda s, d: np.zeros(s).astype(d), shapes, dtypes)


# keras-tac's own entry points check their data up front; `predict` is
# Keras's, whose inputs `TACModel.call` checks by shape when traced
# (`test_predict_checks_shapes_when_traced`).
ENTRY_POINTS = ("predict_with_rejection", "calibrate")


def call(tac, where, x, **kwargs):
    if where == "predict_with_rejection":
        kwargs.setdefault("threshold", 0.0)
    return getattr(tac, where)(x, verbose=0, **kwargs)


class TestPredictAndCalibrate:
    @FUZZ
    @hypothesis.given(x=input_arrays(), where=st.sampled_from(ENTRY_POINTS))
    def test_input_arrays(self, tac, x, where):
        model, _, _ = tac
        threshold = model.threshold
        valid = x.shape == (6, 8, 8, 1) and x.dtype.kind in "biuf"
        try:
            out = call(model, where, x)
        except (ValueError, TypeError) as error:
            assert not valid, f"{x.shape} {x.dtype} refused: {error}"
            assert_clear(error, f"`{where}`")
            assert model.threshold == threshold  # nothing half-done
            return
        assert valid, f"{x.shape} {x.dtype} accepted by {where}"
        if where == "calibrate":
            assert out["coverage"] == 1.0  # identical inputs tie
        else:
            assert len(out["prediction"]) == 6

    @FUZZ
    @hypothesis.given(
        threshold=st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(-5, 5),
            st.booleans(),
            st.floats(-2, 2).map(np.float32),
            st.floats(-2, 2).map(np.array),
            st.text(max_size=3),
            st.just([0.5]),
        )
    )
    def test_thresholds(self, tac, threshold):
        model, x, outputs = tac
        valid = (
            is_real(threshold)
            or (isinstance(threshold, float) and not math.isnan(threshold))
            or isinstance(threshold, np.ndarray)
        )
        try:
            out = model.predict_with_rejection(x, threshold, verbose=0)
        except ValueError as error:
            assert not valid, f"{threshold!r} refused: {error}"
            assert_clear(error, "`threshold`")
            return
        assert valid, f"{threshold!r} accepted"
        expected = outputs["confidence"].astype("float64") >= float(threshold)
        np.testing.assert_array_equal(out["accepted"], expected)

    # Ranks: TensorFlow retraces with the sizes that changed left unknown,
    # which the check lets through (the base model then refuses them).
    @pytest.mark.parametrize("shape", [(6, 8, 8), (6, 8, 8, 1, 1), (6, 64)])
    def test_predict_checks_shapes_when_traced(self, shape):
        # A model of its own: on JAX, Keras 3.15's `predict` leaves any
        # model without its variables' values when a step raises.
        model = keras_tac.TACModel(
            make_cnn(), tap_layers=["conv_1", "features"], score="distance"
        )
        with pytest.raises(ValueError) as error:
            model.predict(np.zeros(shape, "float32"), verbose=0)
        assert_clear(error.value, "expected shape (None, 8, 8, 1)")

    def test_other_input_containers(self, tac):
        model, x, outputs = tac
        same = model.predict({"image": x}, verbose=0)
        np.testing.assert_allclose(same["confidence"], outputs["confidence"])
        tensor = model.predict_with_rejection(
            ops.convert_to_tensor(x), threshold=0.0, verbose=0
        )
        np.testing.assert_allclose(tensor["confidence"], outputs["confidence"])
        for where in ENTRY_POINTS:
            for bad, fragment in (
                ({"img": x}, "['image']"),
                ([x, x], "1 input array"),
                (None, "x=None"),
            ):
                with pytest.raises(ValueError) as error:
                    call(model, where, bad)
                assert_clear(error.value, fragment)

    def test_malformed_dataset_and_generator(self, tac):
        import tensorflow as tf

        model, x, outputs = tac
        dataset = tf.data.Dataset.from_tensor_slices(x[:, :, :4]).batch(3)
        for where in ENTRY_POINTS:
            with pytest.raises(ValueError) as error:
                call(model, where, dataset)
            assert_clear(error.value, "(None, 8, 8, 1)")

        def batches():
            yield (x[:3],)
            yield (x[3:, :, :4],)

        # Keras raises (the model must survive it: Keras's JAX trainer
        # would otherwise lose the weights), except on TensorFlow, whose
        # generator adapter may relax the batch shape (then the model runs
        # on the 8x4 images) or end the epoch at the malformed batch with
        # Keras's warning "Your input ran out of data". Generators are not
        # checked ahead: only arrays and datasets are.
        try:
            out = model.predict_with_rejection(
                batches(), threshold=0.0, verbose=0
            )
        except ValueError:
            pass
        else:
            assert keras.backend.backend() == "tensorflow"
            assert len(out["accepted"]) in (3, 6)
        again = model.predict(x, verbose=0)
        np.testing.assert_allclose(again["confidence"], outputs["confidence"])

    @FUZZ
    @hypothesis.given(y=labels(NUM_CLASSES, 6))
    def test_calibration_labels(self, tac, y):
        model, x, outputs = tac
        # One label rule everywhere: whole floats are class indices too.
        probabilities = label_oracle(y, NUM_CLASSES, 6)
        try:
            summary = model.calibrate(x, y, verbose=0)
        except (ValueError, TypeError) as error:
            assert probabilities is None, str(error)
            assert_clear(error, "labels")
            return
        assert probabilities is not None, f"{y!r} accepted"
        correct = outputs["prediction"] == probabilities.argmax(axis=1)
        assert summary["accuracy"] == pytest.approx(correct.mean())

    def test_degenerate_calibration_data(self, tac):
        model, x, outputs = tac
        predicted = outputs["prediction"]
        # All correct: nothing needs rejecting.
        many = np.tile(x, (5, 1, 1, 1))
        summary = model.calibrate(
            many, np.tile(predicted, 5), target_risk=0.3, verbose=0
        )
        assert summary["accuracy"] == summary["selective_accuracy"] == 1.0
        assert summary["coverage"] == 1.0
        # Learn-then-Test rejected "risk > 0.3" there: 27 tested inputs, all
        # right, have probability 0.7^27 under it.
        assert summary["risk_p_value"] <= 0.05
        # All wrong: no risk guarantee is possible; coverage still works.
        wrong = (predicted + 1) % NUM_CLASSES
        with pytest.raises(ValueError, match="Cannot guarantee"):
            model.calibrate(x, wrong, target_risk=0.5, verbose=0)
        summary = model.calibrate(x, wrong, target_coverage=0.5, verbose=0)
        assert summary["accuracy"] == summary["selective_accuracy"] == 0.0
        assert summary["coverage"] >= 0.5
        # One class only.
        one_class = np.full(6, 3)
        summary = model.calibrate(x, one_class, target_tpr=0.5, verbose=0)
        assert summary["accuracy"] == pytest.approx(np.mean(predicted == 3))
        # Identical inputs: their confidences need not be bit-identical
        # (a CPU's kernels may round rows of one batch differently), so
        # the promise is on confidences, not inputs: the coverage is what
        # the threshold accepts of the confidences that `predict` gives,
        # at least the target, and equal confidences are accepted together
        # (tests/test_thresholds.py tests ties on exact values).
        same = np.repeat(x[:1], 6, axis=0)
        summary = model.calibrate(same, target_coverage=0.5, verbose=0)
        confidence = model.predict_with_rejection(same, verbose=0)["confidence"]
        accepted = confidence >= summary["threshold"]
        assert summary["coverage"] == accepted.mean() >= 0.5
        assert set(confidence[accepted]).isdisjoint(confidence[~accepted])
        # Non-finite inputs count in the coverage but are never accepted.
        some_nan = x.copy()
        some_nan[:3] = np.nan
        summary = model.calibrate(some_nan, target_coverage=1.0, verbose=0)
        assert summary["coverage"] == 0.5
        with pytest.raises(ValueError) as error:
            model.calibrate(np.full_like(x, np.inf), verbose=0)
        assert "no calibration input" in str(error.value)
        assert model.threshold == summary["threshold"]  # left as it was


# ----------------------------------------------------------------------
# Metrics (pure NumPy)
# ----------------------------------------------------------------------
SCORE_VALUES = st.one_of(
    st.floats(-5, 5), st.sampled_from([np.nan, np.inf, -np.inf, 0.0])
)


def metric_calls():
    two = ("scores", "labels")
    return {
        "roc_auc": (metrics.roc_auc, two),
        "fpr_at_tpr": (metrics.fpr_at_tpr, two),
        "average_precision": (metrics.average_precision, two),
        "detection_rate_at_eer": (metrics.detection_rate_at_eer, two),
        "aurc": (metrics.aurc, two),
        "e_aurc": (metrics.e_aurc, two),
        "augrc": (metrics.augrc, two),
        "error_detection_metrics": (metrics.error_detection_metrics, two),
        "selective_risk_at_coverage": (
            lambda s, c: metrics.selective_risk_at_coverage(s, c, 0.5),
            two,
        ),
        "coverage_at_risk": (
            lambda s, c: metrics.coverage_at_risk(s, c, 0.2),
            two,
        ),
        "ood_metrics": (metrics.ood_metrics, ("scores", "scores")),
    }


class TestMetrics:
    @FUZZ
    @hypothesis.given(
        name=st.sampled_from(sorted(metric_calls())),
        scores=st.lists(SCORE_VALUES, max_size=7).map(np.array),
        labels=st.one_of(
            st.lists(st.booleans(), max_size=7).map(np.array),
            st.lists(st.integers(-1, 2), max_size=7).map(np.array),
            st.lists(st.floats(0, 1), max_size=3).map(np.array),
        ),
        two_d=st.booleans(),
    )
    def test_bad_and_edge_arrays(self, name, scores, labels, two_d):
        function, arguments = metric_calls()[name]
        if two_d:
            scores = np.stack([scores, scores], axis=-1)
        second = scores if arguments[1] == "scores" else labels
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            try:
                result = function(scores, second)
            except (ValueError, TypeError) as error:
                assert_clear(error)
                return
        values = result.values() if isinstance(result, dict) else [result]
        for value in values:
            assert isinstance(value, float), result
            single_class = name == "error_detection_metrics"
            assert math.isfinite(value) or single_class, result
            if math.isfinite(value) and name != "e_aurc":
                assert 0.0 <= value <= 1.0, result
