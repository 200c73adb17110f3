"""Small, real datasets that ship with installed packages."""

from keras_tac.src import datasets as _datasets
from keras_tac.src.datasets import BUNDLED_MNIST_NAME
from keras_tac.src.datasets import load_mnist_digits
from keras_tac.src.datasets import load_photo_patches
from keras_tac.src.datasets import load_sklearn_digits
from keras_tac.src.datasets import load_sklearn_table
from keras_tac.src.datasets import load_sms_spam
from keras_tac.src.datasets import load_tfds
from keras_tac.src.datasets import load_time_series
from keras_tac.src.datasets import split_by_classes


def __getattr__(name):
    # `BundledMnist` is built on first use: tensorflow_datasets loads then.
    if name == "BundledMnist":
        return _datasets.BundledMnist
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
