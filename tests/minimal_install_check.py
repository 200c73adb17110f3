"""What a JAX or PyTorch user gets from `pip install keras-tac[jax]`: train,
calibrate, reject and save, with no TensorFlow, no data packages and no
export tools; features that need an extra say which.

Run by `tests/test_install.py` with those packages blocked from import, and
by `.ci/run` in a fresh virtual environment holding only the core
dependencies and `jax[cpu]`. Prints "minimal install: OK" on success.
"""

import os
import sys
import tempfile

if "--block" in sys.argv:
    # As if never installed: `import tensorflow` raises ImportError.
    for name in (
        "tensorflow",
        "tensorflow_datasets",
        "mlxtend",
        "sklearn",
        "matplotlib",
        "onnx",
        "onnxscript",
    ):
        sys.modules[name] = None

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_tac  # noqa: E402

keras.utils.set_random_seed(0)

rng = np.random.default_rng(0)
num_classes = 4
# Four Gaussian clusters in 6x6 images: learnable in a few steps.
labels = rng.integers(0, num_classes, 400)
centers = rng.normal(size=(num_classes, 6, 6, 1)).astype("float32")
x = centers[labels] + 0.3 * rng.normal(size=(400, 6, 6, 1)).astype("float32")

inputs = keras.Input((6, 6, 1))
h = keras.layers.Conv2D(16, 3, activation="relu", name="conv")(inputs)
h = keras.layers.GlobalAveragePooling2D()(h)
h = keras.layers.Dense(16, activation="relu", name="features")(h)
base = keras.Model(inputs, keras.layers.Dense(num_classes)(h))
base.compile(
    optimizer=keras.optimizers.Adam(1e-2),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
)
base.fit(x[:300], labels[:300], epochs=5, verbose=0)

tac = keras_tac.TACModel(base, num_slices=8)
tac.compile(optimizer=keras.optimizers.Adam(1e-2))
tac.fit(x[:300], labels[:300], epochs=5, verbose=0)
summary = tac.calibrate(x[300:350], labels[300:350], verbose=0)
out = tac.predict_with_rejection(x[350:], verbose=0)
assert out["accepted"].shape == (50,), out["accepted"].shape
accuracy = (out["prediction"] == labels[350:]).mean()
assert accuracy > 0.8, accuracy
path = os.path.join(tempfile.mkdtemp(), "tac.keras")
tac.save(path)
restored = keras.saving.load_model(path)
again = restored.predict_with_rejection(x[350:], verbose=0)
np.testing.assert_array_equal(again["accepted"], out["accepted"])
np.testing.assert_allclose(again["confidence"], out["confidence"], atol=1e-5)

if "--block" in sys.argv:
    export_format = "onnx" if keras.backend.backend() == "torch" else None
    export_format = export_format or "tf_saved_model"

    def export_path():
        return os.path.join(tempfile.mkdtemp(), "tac.onnx")

    for call, extra in (
        (keras_tac.datasets.load_mnist_digits, "data"),
        (lambda: keras_tac.datasets.load_tfds("bundled_mnist"), "data"),
        (lambda: tac.export(export_path(), format=export_format), "export"),
    ):
        try:
            call()
        except ImportError as error:
            assert f"keras-tac[{extra}]" in str(error), str(error)
        else:
            raise AssertionError(f"{call} worked without its extra")
print(
    f"minimal install: OK ({keras.backend.backend()}, accuracy {accuracy:.2f}"
    f", threshold {summary['threshold']:.3f})"
)
