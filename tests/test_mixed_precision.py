"""Mixed precision: the base and the profile layers compute in float16 or
bfloat16, the code matching (distances, confidences) stays in float32."""

import keras
import numpy as np
import pytest
from conftest import make_cnn

import keras_tac


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_train_and_predict(policy, digits):
    (x, y), (x_test, y_test) = digits
    compute_dtype = policy.split("_")[1]
    tac = keras_tac.TACModel(make_cnn(), train_base=True, seed=1)
    assert tac.base_model.dtype_policy.compute_dtype == compute_dtype
    assert (
        tac.head.profile_layers[0].dtype_policy.compute_dtype == compute_dtype
    )
    assert tac.head.code_matching.dtype_policy.name == "float32"
    tac.compile(optimizer=keras.optimizers.Adam(1e-3))
    if policy == "mixed_float16":
        assert isinstance(tac.optimizer, keras.optimizers.LossScaleOptimizer)
    history = tac.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for weight in tac.trainable_weights:
        assert weight.dtype == "float32"
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(weight)))

    outputs = tac.predict(x_test[:64], verbose=0)
    assert outputs["base_output"].dtype.name == compute_dtype
    for key in ("profile", "distances", "confidence", "tac_confidence"):
        assert outputs[key].dtype == np.float32, key
        assert np.all(np.isfinite(outputs[key])), key
    # The distances are float32 arithmetic on the (rounded) profile.
    codes = tac.codes.astype("float32")
    profile = outputs["profile"]
    expected = np.abs(profile[:, None] - codes[None]).mean(axis=-1)
    np.testing.assert_allclose(outputs["distances"], expected, atol=1e-5)

    summary = tac.calibrate(x_test[:64], y_test[:64], verbose=0)
    assert np.isfinite(summary["threshold"])
    out = tac.predict_with_rejection(x_test[:64], verbose=0)
    assert out["confidence"].dtype == np.float32
    assert 0.8 <= out["accepted"].mean() <= 1.0
    # 1e6 overflows float16 inside the base: still never accepted.
    extreme = tac.predict_with_rejection(x_test[:64] * 1e6, verbose=0)
    assert not extreme["accepted"].any()


def test_policy_is_restored():
    assert keras.mixed_precision.global_policy().name == "float32"
