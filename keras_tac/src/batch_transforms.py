"""Random transforms of the training batches of `TACModel.fit`:
augmentation and mixup.

A TAC model never sees labels in its forward pass, so both happen to the
data, batch by batch: arrays, `keras.utils.PyDataset`s and generators in
NumPy (augmentation layers run eagerly on the current backend), and
`tf.data.Dataset`s in their own pipeline (augmentation there must run in
TensorFlow graphs, as Keras's preprocessing layers do).

Mixup (the reference's, on CIFAR-10): each sample is mixed with another
sample of the same batch (a random permutation) with its own weight
`lambda ~ Beta(alpha, alpha)`: `x' = lambda x + (1 - lambda) x[perm]` for
every input, in float32 whatever the input dtype, and the labels, as class
probabilities, with the same `lambda`, so the TAC objective pulls the
profile toward the same mix of codes.
"""

import keras
import numpy as np

from keras_tac.src import validation
from keras_tac.src.losses.tac_loss import PROBABILITY_TOLERANCE
from keras_tac.src.streaming import ArrayBatches


def mix_batch(x, y, alpha, num_classes, rng):
    """One mixed batch, in NumPy.

    Args:
        x: array, or list / tuple / dict of arrays, with the batch first.
        y: integer labels `(batch,)` / `(batch, 1)` or class probabilities
            `(batch, num_classes)`.
        alpha: float `> 0`, the Beta parameter.
        num_classes: int.
        rng: `numpy.random.Generator`.

    Returns:
        `(mixed_x, mixed_probabilities)`, float32.

    Example:

    >>> x = np.array([[0.0], [1.0]], "float32")
    >>> mixed, labels = mix_batch(x, [0, 1], 0.2, 2, np.random.default_rng(0))
    >>> np.allclose(mixed[:, 0], labels[:, 1])
    True
    """
    probabilities = _as_probabilities(np.asarray(y), num_classes)
    batch_size = len(probabilities)
    weight = rng.beta(alpha, alpha, size=batch_size).astype("float32")
    permutation = rng.permutation(batch_size)

    def mix(array):
        array = np.asarray(array, dtype="float32")
        shaped = weight.reshape((-1,) + (1,) * (array.ndim - 1))
        return shaped * array + (1.0 - shaped) * array[permutation]

    return keras.tree.map_structure(mix, x), mix(probabilities)


class MappedBatches(keras.utils.PyDataset):
    """The batches of another `PyDataset`, each passed through `transform`
    (which subclasses define), in the source's order and epochs.

    Args:
        source: a `keras.utils.PyDataset`, or `None` when batches are passed
            to `transform` directly.
    """

    def __init__(self, source):
        super().__init__()
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        return self.transform(self.source[index])

    def on_epoch_end(self):
        self.source.on_epoch_end()

    def transform(self, batch):
        raise NotImplementedError


class TransformedBatches(MappedBatches):
    """The batches of another `PyDataset`, augmented and/or mixed.

    Args:
        source: a `keras.utils.PyDataset` yielding `(x, y)` or
            `(x, y, sample_weight)` batches.
        augmentation: a layer or callable applied to each batch of inputs
            (with `training=True` if it is a layer), or `None`.
        mixup_alpha: float. Mixup with `Beta(alpha, alpha)` weights when
            positive (see `mix_batch`).
        num_classes: int.
        seed: int. Seed of the mixing weights and permutations.
    """

    def __init__(self, source, augmentation, mixup_alpha, num_classes, seed):
        super().__init__(source)
        self.augmentation = augmentation
        self.mixup_alpha = mixup_alpha
        self.num_classes = num_classes
        self.rng = np.random.default_rng(seed)

    def transform(self, batch):
        """One `(x, y[, sample_weight])` batch, transformed."""
        batch = tuple(batch)
        x, y = batch[0], batch[1]
        if self.augmentation is not None:
            x = keras.tree.map_structure(
                keras.ops.convert_to_numpy, _augment(self.augmentation, x)
            )
        if self.mixup_alpha > 0:
            x, y = mix_batch(x, y, self.mixup_alpha, self.num_classes, self.rng)
        return (x, y, *batch[2:])


def transformed_data(
    x, y, fit_kwargs, augmentation=None, mixup_alpha=0.0, num_classes=None
):
    """The training data of `fit` with the transforms applied to every
    batch.

    Returns `(x, y, fit_kwargs)` for `keras.Model.fit`: arrays become a
    `TransformedBatches` (with `batch_size`, `shuffle` and `sample_weight`
    taken from `fit_kwargs`), a `PyDataset` is wrapped, a generator mapped,
    and a `tf.data.Dataset` mapped with TensorFlow ops. Random draws are
    seeded from NumPy's global generator (`keras.utils.set_random_seed`
    seeds it) and the augmentation's own seed generator.
    """
    fit_kwargs = dict(fit_kwargs)
    seed = int(np.random.randint(2**31 - 1))
    if _is_tf_dataset(x):
        dataset = _tf_transformed(
            x, augmentation, mixup_alpha, num_classes, seed
        )
        return dataset, None, fit_kwargs
    transforms = (augmentation, mixup_alpha, num_classes, seed)
    if isinstance(x, keras.utils.PyDataset):
        return TransformedBatches(x, *transforms), None, fit_kwargs
    if y is None:
        batches = TransformedBatches(None, *transforms)
        return (batches.transform(batch) for batch in x), None, fit_kwargs
    source = array_batches(x, y, fit_kwargs, "augmentation or mixup")
    return TransformedBatches(source, *transforms), None, fit_kwargs


def array_batches(x, y, fit_kwargs, transform_name):
    """Arrays as the `ArrayBatches` that `fit` would cut, taking
    `sample_weight`, `batch_size` and `shuffle` out of `fit_kwargs` (the
    batches shuffle themselves; `fit` must not)."""
    if fit_kwargs.get("validation_split"):
        raise ValueError(
            f"`validation_split` cannot be combined with {transform_name}: "
            "pass `validation_data` instead."
        )
    source = ArrayBatches(
        x,
        y,
        fit_kwargs.pop("sample_weight", None),
        fit_kwargs.pop("batch_size", None),
        shuffle=fit_kwargs.pop("shuffle", True),
    )
    fit_kwargs["shuffle"] = False
    return source


def _augment(augmentation, x):
    if isinstance(augmentation, keras.layers.Layer):
        return augmentation(x, training=True)
    return augmentation(x)


def _as_probabilities(labels, num_classes):
    # Checked here too: batches of a dataset or generator reach `fit`
    # unchecked, and mixing would hide an invalid label (2.5 read as 2).
    labels = validation.check_labels(labels, num_classes, where="fit")
    if labels.ndim == 2:
        return labels.astype("float32")
    return np.eye(num_classes, dtype="float32")[labels]


def _is_tf_dataset(x):
    module = type(x).__module__
    return module.startswith("tensorflow") and hasattr(x, "element_spec")


def _tf_transformed(dataset, augmentation, mixup_alpha, num_classes, seed):
    import tensorflow as tf

    generator = tf.random.Generator.from_seed(seed)
    alpha = mixup_alpha

    def transform(x, y, *rest):
        if augmentation is not None:
            x = _augment(augmentation, x)
        if mixup_alpha <= 0:
            return (x, y, *rest)
        batch_size = tf.shape(tf.nest.flatten(x)[0])[0]
        # Beta(a, a) as the ratio of two Gamma(a, 1) draws (tf.random has
        # no Beta).
        gamma_a, gamma_b = (
            tf.random.stateless_gamma(
                [batch_size], generator.make_seeds()[:, 0], alpha
            )
            for _ in range(2)
        )
        weight = gamma_a / (gamma_a + gamma_b)
        permutation = tf.argsort(generator.uniform([batch_size]))

        def mixed(tensor):
            tensor = tf.cast(tensor, tf.float32)
            shape = tf.concat(
                [[batch_size], tf.ones([tf.rank(tensor) - 1], tf.int32)], 0
            )
            shaped = tf.reshape(weight, shape)
            return shaped * tensor + (1.0 - shaped) * tf.gather(
                tensor, permutation
            )

        probabilities = _tf_probabilities(y, num_classes)
        return (tf.nest.map_structure(mixed, x), mixed(probabilities), *rest)

    return dataset.map(transform)


def _tf_probabilities(y, num_classes):
    """Labels as float32 class probabilities in a TensorFlow graph, with the
    rule of `labels_to_probabilities`: invalid labels (not whole, out of
    range, NaN; probability rows that are negative or do not sum to 1)
    become rows of NaN, so the loss is NaN rather than mixed into a valid
    looking target."""
    import tensorflow as tf

    if y.shape.rank == 2 and y.shape[-1] == num_classes > 1:
        probabilities = tf.cast(y, tf.float32)
        valid = tf.reduce_all(probabilities >= 0.0, axis=-1) & (
            tf.abs(tf.reduce_sum(probabilities, axis=-1) - 1.0)
            <= PROBABILITY_TOLERANCE
        )
    else:
        values = tf.cast(tf.reshape(y, [-1]), tf.float32)
        # NaN fails every comparison, so NaN labels are invalid too.
        valid = (
            (values >= 0.0)
            & (values < float(num_classes))
            & (tf.floor(values) == values)
        )
        indices = tf.cast(tf.where(valid, values, 0.0), tf.int32)
        probabilities = tf.one_hot(indices, num_classes)
    return tf.where(valid[:, None], probabilities, float("nan"))
