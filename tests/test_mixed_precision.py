"""Mixed precision: the base and the profile layers compute in float16 or
bfloat16, the code matching (distances, confidences) stays in float32."""

import keras
import numpy as np
import pytest
from conftest import make_cnn

import keras_tac
from keras_tac import layers

F16, F32, I32 = "float16", "float32", "int32"
CODES = [[1, 1, -1, -1], [1, -1, 1, -1], [-1, 1, 1, 1]]


def _normal(*shape):
    return np.random.default_rng(0).normal(size=shape).astype("float32")


def _matching_outputs(layer, profile):
    return {
        "distances": layer(profile),
        "inner_products": layer.inner_products(profile),
        "nearest_codes": layer.nearest_codes(profile),
    }


# Each layer under "mixed_float16": how to make it, its inputs (positional,
# keyword), how to get its outputs, and their dtypes, written out here so
# that the same expectation runs on every backend.
MIXED_FLOAT16_CASES = {
    "TapPooling": (
        lambda **kw: layers.TapPooling(**kw),
        lambda: ((_normal(2, 3, 3, 8),), {}),
        None,
        F16,
    ),
    "TapProjection": (
        lambda **kw: layers.TapProjection("2x_large", num_slices=4, **kw),
        lambda: ((_normal(2, 8),), {}),
        None,
        F16,
    ),
    "SliceReduce": (
        lambda **kw: layers.SliceReduce(4, reduction="median", **kw),
        lambda: ((_normal(2, 10),), {}),
        None,
        F16,
    ),
    "ActivationProfile": (
        lambda **kw: layers.ActivationProfile(num_slices=4, **kw),
        lambda: ((_normal(2, 3, 3, 8),), {}),
        None,
        F16,
    ),
    "CodeMatching": (
        lambda **kw: layers.CodeMatching(CODES, **kw),
        lambda: ((_normal(2, 4),), {}),
        _matching_outputs,
        {"distances": F32, "inner_products": F32, "nearest_codes": I32},
    ),
    "TACHead": (
        lambda **kw: layers.TACHead(num_classes=3, num_slices=4, **kw),
        lambda: (([_normal(2, 5, 5, 8), _normal(2, 16)],), {}),
        None,
        {
            "pooled": [F16, F16],
            "profile": F32,
            "distances": F32,
            "scores": F32,
            "tac_prediction": I32,
            "tac_confidence": F32,
        },
    ),
    "CombinedConfidence": (
        lambda **kw: layers.CombinedConfidence(
            num_classes=3, tap_widths=[4, 5], bank_size=8, k=2, **kw
        ),
        lambda: (
            (_normal(2, 3), [_normal(2, 4), _normal(2, 5)], _normal(2)),
            {},
        ),
        None,
        {"confidence": F32, "parts": F32},
    ),
}


def _dtypes(outputs):
    return keras.tree.map_structure(
        lambda x: keras.backend.standardize_dtype(x.dtype), outputs
    )


def _symbolic(structure, dtype):
    return keras.tree.map_structure(
        lambda x: keras.KerasTensor(x.shape, dtype), structure
    )


@pytest.mark.parametrize("how", ["layer_dtype", "global_policy"])
@pytest.mark.parametrize("name", sorted(MIXED_FLOAT16_CASES))
def test_mixed_float16_output_dtypes_are_the_same_on_every_backend(name, how):
    """Eager, symbolic (float32 or float16 inputs) and `compute_output_spec`
    outputs have the dtypes written in `MIXED_FLOAT16_CASES`, on every
    backend (Keras's own mixed precision check does not run on PyTorch
    without CUDA), and the float weights stay float32."""
    make, make_inputs, apply, expected = MIXED_FLOAT16_CASES[name]
    apply = apply or (lambda layer, *args, **kwargs: layer(*args, **kwargs))
    args, kwargs = make_inputs()
    if how == "layer_dtype":
        layer = make(dtype="mixed_float16")
    else:
        keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            layer = make()
        finally:
            keras.mixed_precision.set_global_policy("float32")
    assert _dtypes(apply(layer, *args, **kwargs)) == expected, "eager"
    for dtype in (F32, F16):
        outputs = apply(layer, *_symbolic(args, dtype), **kwargs)
        assert _dtypes(outputs) == expected, f"symbolic, {dtype} inputs"
    spec = layer.compute_output_spec(*_symbolic(args, F16), **kwargs)
    if apply is _matching_outputs:
        expected = expected["distances"]  # What `call` returns.
    assert _dtypes(spec) == expected, "compute_output_spec"
    for weight in layer.weights:
        assert keras.backend.standardize_dtype(weight.dtype) in (F32, I32)


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
