"""Non-finite and extreme inputs are never accepted; the rest of the batch
is unaffected; the loss stays finite on extreme but finite activations.

Why extreme magnitudes are rejected with the distance scores (`"distance"`,
the default, and `"nearest_distance"`): the base is a ReLU network, which
is positively homogeneous up to its biases, so scaling an input by `s`
scales the tapped activations, hence the profile `z`, by about `|s|`. The
normalised L1 distance `||z - c_k||_1 / M` to every `+1`/`-1` code grows
with it, and the confidence `-d` falls far below any threshold calibrated
on real inputs. The reference's `"inner_product"` score `<z, c_pred>` grows
with `s` instead, so it accepts such inputs (documented on `TACModel`). A
base that normalises its input per sample (scale invariant) sees `s * x` as
`x`, and so does TAC.
"""

import hypothesis
import keras
import numpy as np
import pytest
from backend_worker import trained_tac
from hypothesis import strategies as st

from keras_tac import losses
from keras_tac import thresholds

FUZZ = hypothesis.settings(max_examples=20, deadline=None, database=None)
BATCH = 16
KINDS = (
    "nan_pixel",
    "inf_pixel",
    "minus_inf_pixel",
    "all_nan",
    "scale_1e6",
    "scale_minus_1e6",
    "noise_1e6",
    "constant_1e6",
    "scale_1e38",
)


@pytest.fixture(scope="module")
def setup(trained_cnn_weights, digits):
    tac = trained_tac(trained_cnn_weights, digits)
    _, (x_test, y_test) = digits
    calibration = tac.predict(x_test[:200], verbose=0)
    # A threshold for the "nearest_distance" score, as `calibrate` picks it.
    nearest = -calibration["distances"].min(axis=1)
    nearest_threshold = thresholds.coverage_threshold(nearest, 0.9)
    real = x_test[200 : 200 + BATCH]
    clean = tac.predict_with_rejection(real, verbose=0)
    return tac, x_test[200:], y_test[200:], real, clean, nearest_threshold


def make_hostile(sample, kind, pixel, rng):
    sample = sample.copy()
    row, column = pixel
    if kind == "nan_pixel":
        sample[row, column] = np.nan
    elif kind == "inf_pixel":
        sample[row, column] = np.inf
    elif kind == "minus_inf_pixel":
        sample[row, column] = -np.inf
    elif kind == "all_nan":
        sample[:] = np.nan
    elif kind == "scale_1e6":
        sample *= 1e6
    elif kind == "scale_minus_1e6":
        sample *= -1e6
    elif kind == "noise_1e6":
        sample = rng.normal(size=sample.shape) * 1e6
    elif kind == "constant_1e6":
        sample[:] = 1e6
    else:
        sample *= 1e38
    return sample.astype("float32")


def nearest_accepted(outputs, threshold):
    confidence = -outputs["distances"].min(axis=1)
    with np.errstate(invalid="ignore"):
        return outputs["input_is_finite"] & (confidence >= threshold)


class TestHostileInputs:
    @FUZZ
    @hypothesis.given(
        hostile=st.dictionaries(
            st.integers(0, BATCH - 1),
            st.sampled_from(KINDS),
            min_size=1,
            max_size=6,
        ),
        pixel=st.tuples(st.integers(0, 7), st.integers(0, 7)),
        seed=st.integers(0, 99),
    )
    def test_never_accepted_and_batch_unaffected(
        self, setup, hostile, pixel, seed
    ):
        tac, _, _, real, clean, nearest_threshold = setup
        rng = np.random.default_rng(seed)
        batch = real.copy()
        for index, kind in hostile.items():
            batch[index] = make_hostile(real[index], kind, pixel, rng)
        rows = sorted(hostile)
        others = [i for i in range(BATCH) if i not in hostile]
        out = tac.predict_with_rejection(batch, verbose=0)
        assert not out["accepted"][rows].any(), hostile
        for key in ("accepted", "prediction", "tac_prediction"):
            np.testing.assert_array_equal(out[key][others], clean[key][others])
        for key in ("confidence", "tac_confidence"):
            np.testing.assert_allclose(
                out[key][others], clean[key][others], rtol=1e-6, atol=1e-6
            )
        outputs = tac.predict(batch, verbose=0)
        accepted = nearest_accepted(outputs, nearest_threshold)
        assert not accepted[rows].any(), hostile
        non_finite = [i for i in rows if not np.isfinite(batch[i]).all()]
        assert not outputs["input_is_finite"][non_finite].any()

    def test_extreme_scales_fall_far_below_the_threshold(self, setup):
        tac, unseen, labels, _, _, nearest_threshold = setup
        threshold = tac.threshold
        real = tac.predict(unseen, verbose=0)
        assert np.median(real["confidence"]) > threshold
        medians = []
        for scale in (1e3, 1e6, -1e6):
            outputs = tac.predict(unseen * scale, verbose=0)
            accepted = tac.predict_with_rejection(unseen * scale, verbose=0)
            assert not accepted["accepted"].any(), scale
            assert not nearest_accepted(outputs, nearest_threshold).any()
            assert np.all(outputs["confidence"] < threshold)
            medians.append(np.median(outputs["confidence"]))
            # The distance grows with the profile, which grows with |s|.
            size = np.abs(outputs["profile"]).mean(axis=1)
            assert np.all(size > 10 * np.abs(real["profile"]).mean(axis=1))
            # The loss stays finite on these activations.
            loss = losses.tac_loss(labels, outputs["profile"], tac.codes)
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(loss)))
        assert medians[1] < medians[0] < threshold

    def test_inner_product_accepts_extreme_inputs(self, setup, digits):
        """The documented weakness of the reference's score."""
        tac, unseen, _, _, _, _ = setup
        _, (x_test, _) = digits
        codes = tac.codes.astype("float32")

        def inner_product(x):
            outputs = tac.predict(x, verbose=0)
            matches = outputs["profile"] @ codes.T
            return np.take_along_axis(
                matches, outputs["prediction"][:, None], axis=1
            )[:, 0]

        threshold = thresholds.coverage_threshold(
            inner_product(x_test[:200]), 0.9
        )
        accepted = inner_product(unseen * 1e6) >= threshold
        assert accepted.mean() > 0.5


class TestLossOnExtremeActivations:
    @FUZZ
    @hypothesis.given(
        exponent=st.integers(0, 30),
        sign=st.sampled_from([1.0, -1.0]),
        seed=st.integers(0, 9),
    )
    def test_loss_finite(self, setup, exponent, sign, seed):
        tac = setup[0]
        codes = tac.codes.astype("float32")
        rng = np.random.default_rng(seed)
        profile = rng.normal(size=(4, codes.shape[1])) * sign * 10.0**exponent
        loss = losses.tac_loss(
            np.arange(4), profile.astype("float32"), codes, temperature=50.0
        )
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(loss)))

    def test_gradient_step_finite(self, setup):
        """One SGD step on profiles from 1 to 1e30 in magnitude: the loss
        and the updated weights stay finite."""
        codes = setup[0].codes.astype("float32")
        width = codes.shape[1]
        model = keras.Sequential(
            [
                keras.Input((width,)),
                keras.layers.Dense(
                    width, kernel_initializer="identity", use_bias=False
                ),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.SGD(1e-3), loss=losses.TACLoss(codes)
        )
        rng = np.random.default_rng(0)
        scales = 10.0 ** np.array([0, 6, 12, 18, 24, 30])[:, None]
        x = (rng.normal(size=(6, width)) * scales).astype("float32")
        loss = model.train_on_batch(x, np.arange(6) % len(codes))
        assert np.isfinite(loss)
        kernel = keras.ops.convert_to_numpy(model.weights[0])
        assert np.all(np.isfinite(kernel))
