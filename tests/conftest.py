"""Shared fixtures: small real data and small base models, sized so that the
whole suite runs in minutes on every backend."""

import keras
import numpy as np
import pytest
from keras import ops
from sklearn.datasets import load_digits

import keras_tac


def to_numpy(x):
    """A backend tensor (or array, or list) as a NumPy array."""
    return np.asarray(ops.convert_to_numpy(x))


def assert_allclose(actual, desired, **kwargs):
    """`np.testing.assert_allclose` on tensors of any backend."""
    np.testing.assert_allclose(to_numpy(actual), to_numpy(desired), **kwargs)


@pytest.fixture(autouse=True)
def seeded():
    # Not `clear_session()`: it costs ~0.4 s a test under torch, and no
    # test here depends on global name counters.
    keras.utils.set_random_seed(0)
    yield


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits as `((x_train, y_train), (x_test, y_test))`,
    images float32 in [0, 1] of shape (n, 8, 8, 1), labels int32."""
    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


class Batches(keras.utils.PyDataset):
    """Fixed batches of rows of arrays, made on demand: a dataset that can
    be read again, counting its batch reads in `reads`. A batch is the
    tuple of the arrays' rows, or the rows of the only array."""

    def __init__(self, *arrays, batch_size=64):
        super().__init__()
        self.arrays = arrays
        self.batch_size = batch_size
        self.reads = 0

    def __len__(self):
        return -(-len(self.arrays[0]) // self.batch_size)

    def __getitem__(self, index):
        self.reads += 1
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        items = tuple(array[rows] for array in self.arrays)
        return items if len(items) > 1 else items[0]


def make_cnn(input_shape=(8, 8, 1), num_classes=10, softmax=False, seed=0):
    """A small functional CNN with named blocks: conv_1, conv_2, features."""
    init = keras.initializers.GlorotUniform
    inputs = keras.Input(input_shape, name="image")
    h = keras.layers.Conv2D(
        16,
        3,
        padding="same",
        activation="relu",
        name="conv_1",
        kernel_initializer=init(seed),
    )(inputs)
    h = keras.layers.MaxPooling2D(name="pool_1")(h)
    h = keras.layers.Conv2D(
        32,
        3,
        padding="same",
        activation="relu",
        name="conv_2",
        kernel_initializer=init(seed + 1),
    )(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool_2")(h)
    h = keras.layers.Dense(
        32,
        activation="relu",
        name="features",
        kernel_initializer=init(seed + 2),
    )(h)
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax" if softmax else None,
        name="logits",
        kernel_initializer=init(seed + 3),
    )(h)
    return keras.Model(inputs, outputs, name="cnn")


@pytest.fixture(scope="session")
def trained_cnn_weights(digits):
    """Weights of `make_cnn()` trained briefly on the digits (shared, so
    each test need not retrain the base)."""
    keras.utils.set_random_seed(0)
    (x, y), _ = digits
    model = make_cnn()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=4, batch_size=64, verbose=0)
    return model.get_weights()


def calibrated_tac(digits, trained_cnn_weights):
    """A TACModel on the trained CNN, fit for one epoch and calibrated
    (80% coverage on the first 150 test digits): what the export and
    serving tests ship."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, _) = digits
    base = make_cnn()
    base.set_weights(trained_cnn_weights)
    tac = keras_tac.TACModel(base)
    tac.compile(optimizer=keras.optimizers.Adam(1e-2))
    tac.fit(x_train[:256], y_train[:256], batch_size=64, epochs=1, verbose=0)
    tac.calibrate(x_test[:150], target_coverage=0.8, verbose=0)
    return tac


@pytest.fixture
def trained_cnn(trained_cnn_weights):
    """A fresh `make_cnn()` with the shared trained weights."""
    model = make_cnn()
    model.set_weights(trained_cnn_weights)
    return model
