"""Tests for `keras_tac.src.batch_transforms`: mixup and augmentation of the
training batches of `TACModel.fit`.

The mixup oracle is exact: each input row holds a one-hot code of its own
sample (an "identity" block) and of its class, so a mixed row shows which
samples were mixed, with which weights, and what its label must be.
"""

import keras
import numpy as np
import pytest
from scipy import stats

import keras_tac
from keras_tac.src import batch_transforms

SCALE = 255  # the largest uint8: a weight cast to uint8 would show.


def encoded(labels, num_classes):
    """uint8 inputs `(n, n + num_classes)`: `SCALE` times the one-hot code
    of the sample's index, then of its class."""
    n = len(labels)
    identity = np.eye(n, dtype="uint8")
    classes = np.eye(num_classes, dtype="uint8")[labels]
    return np.concatenate([identity, classes], axis=1) * np.uint8(SCALE)


def check_mixed(mixed_x, mixed_y, labels, num_classes, own=None):
    """Checks a mixed batch of `encoded` inputs (`labels` of all samples)
    against the mixup rule; returns each row's weight on its own sample.

    `own[i]` is the index of the sample row `i` started from (default
    `i`). Each row must be a convex combination of its own sample and one
    partner, the partners distinct, and its label the same combination of
    the two one-hot labels."""
    mixed_x = np.asarray(mixed_x)
    mixed_y = np.asarray(mixed_y)
    assert mixed_x.dtype == mixed_y.dtype == np.float32
    n = len(labels)
    rows = np.arange(len(mixed_x))
    own = rows if own is None else np.asarray(own)
    weights = mixed_x[:, :n] / SCALE
    assert np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.count_nonzero(weights, axis=1) <= 2)
    own_weight = weights[rows, own]
    assert np.all(own_weight > 0)
    others = weights.copy()
    others[rows, own] = 0.0
    mixed_rows = others.sum(axis=1) > 0
    partners = others[mixed_rows].argmax(axis=1)
    assert len(set(partners.tolist())) == len(partners)
    one_hot = np.eye(num_classes)[labels]
    np.testing.assert_allclose(mixed_y, weights @ one_hot, atol=1e-5)
    # The class block of the inputs was mixed like the labels.
    np.testing.assert_allclose(mixed_x[:, n:] / SCALE, mixed_y, atol=1e-5)
    return own_weight


def assert_beta(weights, alpha):
    """A KS test of `weights` against Beta(alpha, alpha), both truncated to
    [0.001, 0.999]: float32 rounds weights near 1 to exactly 1, and rows
    mixed with themselves read 1 too."""
    low, high = 1e-3, 1 - 1e-3
    weights = np.asarray(weights, np.float64)
    interior = weights[(weights >= low) & (weights <= high)]
    assert len(interior) > 2000

    def truncated_cdf(a):
        beta = stats.beta(a, a)
        mass = beta.cdf(high) - beta.cdf(low)
        return lambda t: (beta.cdf(t) - beta.cdf(low)) / mass

    assert stats.kstest(interior, truncated_cdf(alpha)).pvalue > 1e-3
    # The test has power: the Beta of another alpha is rejected.
    assert stats.kstest(interior, truncated_cdf(2 * alpha)).pvalue < 1e-6


def dataset(x, y, *rest, batch_size):
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((x, y, *rest))
    return data.batch(batch_size)


class TestMixBatch:
    @pytest.mark.parametrize("label_form", ["indices", "one_hot"])
    def test_uint8_inputs_mix_in_pairs_with_their_labels(self, label_form):
        labels = np.arange(16) % 4
        x = encoded(labels, 4)
        y = labels if label_form == "indices" else np.eye(4)[labels]
        mixed_x, mixed_y = batch_transforms.mix_batch(
            x, y, 0.4, 4, np.random.default_rng(0)
        )
        weights = check_mixed(mixed_x, mixed_y, labels, 4)
        # One weight per sample, not one per batch, and not cast to 0.
        interior = weights[(weights > 1e-3) & (weights < 1 - 1e-3)]
        assert len(np.unique(interior)) >= 8

    def test_every_input_of_a_structure_shares_the_weights(self):
        labels = np.arange(12) % 3
        x = encoded(labels, 3)
        inputs = {"ids": x[:, :12], "classes": x[:, 12:]}
        mixed_x, mixed_y = batch_transforms.mix_batch(
            inputs, labels, 0.4, 3, np.random.default_rng(1)
        )
        joined = np.concatenate([mixed_x["ids"], mixed_x["classes"]], axis=1)
        check_mixed(joined, mixed_y, labels, 3)

    @pytest.mark.parametrize("alpha", [0.2, 2.0])
    def test_weights_follow_beta(self, alpha):
        rng = np.random.default_rng(2)
        labels = np.arange(500) % 2
        x = encoded(labels, 2)
        weights = [
            check_mixed(
                *batch_transforms.mix_batch(x, labels, alpha, 2, rng),
                labels,
                2,
            )
            for _ in range(8)
        ]
        assert_beta(np.concatenate(weights), alpha)


class TestTransformedData:
    def test_tf_dataset_mixup_keeps_the_invariants(self):
        labels = np.arange(48) % 3
        x = encoded(labels, 3)
        sample_weight = np.linspace(0.5, 2.0, 48).astype("float32")
        data, y, kwargs = batch_transforms.transformed_data(
            dataset(x, labels, sample_weight, batch_size=16),
            None,
            {"epochs": 2},
            mixup_alpha=0.4,
            num_classes=3,
        )
        assert y is None and kwargs == {"epochs": 2}
        batches = list(data)
        assert len(batches) == 3
        for index, (mixed_x, mixed_y, weight) in enumerate(batches):
            rows = np.arange(16) + 16 * index
            # The dataset is not shuffled: row i started from sample i.
            weights = check_mixed(mixed_x, mixed_y, labels, 3, own=rows)
            np.testing.assert_array_equal(weight, sample_weight[rows])
            interior = weights[(weights > 1e-3) & (weights < 1 - 1e-3)]
            assert len(np.unique(interior)) >= 6

    @pytest.mark.parametrize("alpha", [0.2, 2.0])
    def test_tf_dataset_weights_follow_beta(self, alpha):
        labels = np.arange(500) % 2
        x = encoded(labels, 2)
        data, _, _ = batch_transforms.transformed_data(
            dataset(np.tile(x, (8, 1)), np.tile(labels, 8), batch_size=500),
            None,
            {},
            mixup_alpha=alpha,
            num_classes=2,
        )
        weights = [
            check_mixed(mixed_x, mixed_y, labels, 2)
            for mixed_x, mixed_y in data
        ]
        assert_beta(np.concatenate(weights), alpha)

    def test_arrays_keep_their_sample_weights(self):
        labels = np.arange(40) % 4
        x = encoded(labels, 4)
        # Sample i weighs i + 1: the weight of a row names its sample.
        sample_weight = np.arange(1, 41).astype("float32")
        batches, y, kwargs = batch_transforms.transformed_data(
            x,
            labels,
            {"batch_size": 8, "sample_weight": sample_weight, "epochs": 3},
            mixup_alpha=0.4,
            num_classes=4,
        )
        assert y is None
        assert kwargs == {"epochs": 3, "shuffle": False}
        assert len(batches) == 5
        owners = []
        for index in range(len(batches)):
            mixed_x, mixed_y, weight = batches[index]
            own = weight.astype(int) - 1
            check_mixed(mixed_x, mixed_y, labels, 4, own=own)
            owners.extend(own.tolist())
        # Shuffled (by default, as in `fit`), every sample served once.
        assert sorted(owners) == list(range(40))
        assert owners != list(range(40))

    def test_generator_batches_are_mixed(self):
        labels = np.arange(24) % 3
        x = encoded(labels, 3)
        batches = ((x[i : i + 8], labels[i : i + 8]) for i in (0, 8, 16))
        mixed, y, _ = batch_transforms.transformed_data(
            batches, None, {}, mixup_alpha=0.4, num_classes=3
        )
        assert y is None
        for index, (mixed_x, mixed_y) in enumerate(mixed):
            check_mixed(
                mixed_x, mixed_y, labels, 3, own=np.arange(8) + 8 * index
            )

    @pytest.mark.parametrize("bad", [2.5, np.nan, -1.0, 3.0])
    def test_invalid_labels_are_not_mixed_away(self, bad):
        # Batches of a generator or dataset reach `fit` unchecked: mixing
        # must not turn an invalid label into a valid looking target.
        x = encoded(np.arange(8) % 3, 3)
        labels = (np.arange(8) % 3).astype("float64")
        labels[5] = bad
        generator, _, _ = batch_transforms.transformed_data(
            iter([(x, labels)]), None, {}, mixup_alpha=0.4, num_classes=3
        )
        with pytest.raises(ValueError, match=r"whole numbers in \[0, 2\]"):
            next(generator)
        # In a tf.data graph nothing can raise: the rows mixed with the
        # invalid label are NaN, and so is the loss.
        data, _, _ = batch_transforms.transformed_data(
            dataset(x, labels, batch_size=8),
            None,
            {},
            mixup_alpha=0.4,
            num_classes=3,
        )
        mixed_x, mixed_y = next(iter(data))
        mixed_x, mixed_y = np.asarray(mixed_x), np.asarray(mixed_y)
        touched = mixed_x[:, 5] > 0
        assert touched[5]
        assert np.all(np.isnan(mixed_y[touched]))
        assert np.all(np.isfinite(mixed_y[~touched]))

    def test_invalid_probability_rows_are_not_mixed_away(self):
        x = encoded(np.arange(8) % 3, 3)
        probabilities = np.eye(3, dtype="float32")[np.arange(8) % 3]
        probabilities[5] = [2.0, -1.0, 0.0]  # sums to 1, but negative
        with pytest.raises(ValueError, match="non-negative"):
            batch_transforms.mix_batch(
                x, probabilities, 0.4, 3, np.random.default_rng(0)
            )
        data, _, _ = batch_transforms.transformed_data(
            dataset(x, probabilities, batch_size=8),
            None,
            {},
            mixup_alpha=0.4,
            num_classes=3,
        )
        mixed_x, mixed_y = (np.asarray(t) for t in next(iter(data)))
        touched = mixed_x[:, 5] > 0
        assert np.all(np.isnan(mixed_y[touched]))
        assert np.all(np.isfinite(mixed_y[~touched]))

    def test_validation_split_is_an_error(self):
        x = np.zeros((8, 3), "float32")
        y = np.arange(8) % 2
        for transforms in (
            {"mixup_alpha": 0.2, "num_classes": 2},
            {"augmentation": lambda batch: batch},
        ):
            with pytest.raises(ValueError, match="validation_split"):
                batch_transforms.transformed_data(
                    x, y, {"validation_split": 0.25}, **transforms
                )

    def test_augmentation_on_arrays_and_tf_datasets(self, digits):
        _, (images, labels) = digits
        images, labels = images[:64], labels[:64]
        flipped = images[:, :, ::-1]
        augmentation = keras.layers.Pipeline(
            [keras.layers.RandomFlip("horizontal", seed=1)]
        )
        arrays, _, _ = batch_transforms.transformed_data(
            images,
            labels,
            {"batch_size": 16, "shuffle": False},
            augmentation=augmentation,
        )
        from_arrays = [arrays[index] for index in range(len(arrays))]
        from_dataset, _, _ = batch_transforms.transformed_data(
            dataset(images, labels, batch_size=16),
            None,
            {},
            augmentation=augmentation,
        )
        for batches in (from_arrays, list(from_dataset)):
            x = np.concatenate([np.asarray(batch[0]) for batch in batches])
            y = np.concatenate([np.asarray(batch[1]) for batch in batches])
            np.testing.assert_array_equal(y, labels)
            same = np.all(np.isclose(x, images), axis=(1, 2, 3))
            mirrored = np.all(np.isclose(x, flipped), axis=(1, 2, 3))
            # Each image as it was or mirrored, and both happen.
            assert np.all(same | mirrored)
            assert 10 < mirrored.sum() < 54


def tiny_base(width, num_classes):
    inputs = keras.Input((width,))
    h = keras.layers.Dense(16, activation="relu", name="features")(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(h))


class TestFit:
    def test_fit_with_mixup_on_uint8_trains_on_mixed_batches(self):
        seen = []

        class Recording(keras_tac.TACModel):
            def compute_loss(
                self,
                x=None,
                y=None,
                y_pred=None,
                sample_weight=None,
                training=True,
            ):
                seen.append(
                    [
                        keras.ops.convert_to_numpy(value)
                        for value in (x, y, sample_weight)
                    ]
                )
                return super().compute_loss(
                    x, y, y_pred, sample_weight, training
                )

        labels = np.arange(48) % 3
        x = encoded(labels, 3)
        tac = Recording(
            tiny_base(x.shape[1], 3), tap_layers=["features"], mixup_alpha=0.4
        )
        # Eager steps: the recorded batches are concrete.
        tac.compile(run_eagerly=True)
        history = tac.fit(
            x,
            labels,
            sample_weight=np.arange(1, 49).astype("float32"),
            batch_size=16,
            epochs=1,
            verbose=0,
        )
        assert np.isfinite(history.history["loss"][0])
        assert len(seen) == 3
        weights, owners = [], []
        for mixed_x, mixed_y, sample_weight in seen:
            # Sample i weighs i + 1: the weight of a row names its sample.
            own = sample_weight.astype(int) - 1
            weights.append(check_mixed(mixed_x, mixed_y, labels, 3, own=own))
            owners.extend(own.tolist())
        assert sorted(owners) == list(range(48))
        weights = np.concatenate(weights)
        interior = weights[(weights > 1e-3) & (weights < 1 - 1e-3)]
        assert len(np.unique(interior)) >= 10

    def test_validation_split_with_mixup_is_an_error(self):
        tac = keras_tac.TACModel(tiny_base(4, 2), mixup_alpha=0.2)
        tac.compile()
        x = np.random.default_rng(0).random((16, 4)).astype("float32")
        with pytest.raises(ValueError, match="validation_split"):
            tac.fit(x, np.arange(16) % 2, validation_split=0.25, verbose=0)

    def test_augmentation_reaches_training_batches_only(
        self, trained_cnn, digits
    ):
        (x, y), (x_val, y_val) = digits
        x, y, x_val, y_val = x[:96], y[:96], x_val[:64], y_val[:64]
        pipeline = keras.layers.Pipeline(
            [keras.layers.RandomFlip("horizontal", seed=1)]
        )
        seen = []

        def augmentation(batch):
            seen.append(np.array(keras.ops.convert_to_numpy(batch)))
            return pipeline(batch, training=True)

        tac = keras_tac.TACModel(trained_cnn)
        tac.compile()
        history = tac.fit(
            x,
            y,
            validation_data=(x_val, y_val),
            augmentation=augmentation,
            batch_size=32,
            epochs=2,
            verbose=0,
        )
        seen = np.concatenate(seen)
        # Every training image, in each epoch (Keras may also read a batch
        # ahead, to learn its shapes); no validation image.
        _, counts = np.unique(
            [row.tobytes() for row in seen], return_counts=True
        )
        assert {row.tobytes() for row in seen} == {row.tobytes() for row in x}
        assert counts.min() >= 2
        # Validation ran on the images as they are: its loss is the loss
        # of the trained model on them.
        expected = tac.evaluate(x_val, y_val, return_dict=True, verbose=0)
        np.testing.assert_allclose(
            history.history["val_loss"][-1], expected["loss"], rtol=1e-5
        )

    def test_augmentation_with_cache_features_is_an_error(self):
        tac = keras_tac.TACModel(tiny_base(4, 2))
        tac.compile()
        x = np.random.default_rng(0).random((16, 4)).astype("float32")
        with pytest.raises(ValueError, match="augmentation"):
            tac.fit(
                x,
                np.arange(16) % 2,
                augmentation=lambda batch: batch,
                cache_features=True,
                verbose=0,
            )
