"""Batches of in-memory arrays served one at a time.

Keras's array adapters for TensorFlow and PyTorch convert whole NumPy
arrays before the first batch (on TensorFlow two copies of the inputs at
peak; on PyTorch about 1 GB more for 50,000 MNIST images), so `evaluate`
or `predict` on N samples costs memory in N. keras-tac's own passes
(`predict_with_rejection`, `calibrate`, the cached fit) serve arrays
through `ArrayBatches`; Keras's `predict` and `evaluate` keep Keras's
adapters (give them an `ArrayBatches` for flat memory). `ArrayBatches`
slices one batch at a time instead: the working memory does not grow with
N. The JAX adapter already slices per batch.
"""

import math

import keras
import numpy as np


class ArrayBatches(keras.utils.PyDataset):
    """`(x[, y[, sample_weight]])` batches sliced from arrays on demand.

    Args:
        x: a NumPy array (or memmap), or a list / tuple / dict of them.
        y: optional array of targets.
        sample_weight: optional array of per-sample weights.
        batch_size: int or `None` (32).
        rows: optional integer array: the rows to serve, in this order
            (contiguous rows are served as slices, other rows gathered).
        shuffle: `False`, `True` (a new order of `rows` every epoch) or
            `"batch"` (fixed batches, each in a new order), as in `fit`.
    """

    def __init__(
        self,
        x,
        y=None,
        sample_weight=None,
        batch_size=None,
        rows=None,
        shuffle=False,
    ):
        super().__init__()
        self.x = x
        self.y = _as_array(y)
        self.sample_weight = _as_array(sample_weight)
        self.batch_size = int(batch_size or 32)
        self.num_samples = int(keras.tree.flatten(x)[0].shape[0])
        self.rows = None if rows is None else np.asarray(rows)
        self.shuffle = shuffle
        # Seeded from NumPy's global generator, which
        # `keras.utils.set_random_seed` seeds.
        self.rng = np.random.default_rng(np.random.randint(2**31 - 1))
        self.order = self._draw_order()

    def __len__(self):
        size = self.num_samples if self.rows is None else len(self.rows)
        return math.ceil(size / self.batch_size)

    def __getitem__(self, index):
        start = index * self.batch_size
        stop = start + self.batch_size
        if self.order is None:
            select = slice(start, min(stop, self.num_samples))
        else:
            select = self.order[start:stop]
        batch = (keras.tree.map_structure(lambda a: a[select], self.x),)
        if self.y is not None:
            batch += (self.y[select],)
            if self.sample_weight is not None:
                batch += (self.sample_weight[select],)
        # As Keras's own array adapter does: tf.data wants tuples.
        return keras.tree.lists_to_tuples(batch)

    def on_epoch_end(self):
        self.order = self._draw_order()

    def _draw_order(self):
        if self.rows is None and not self.shuffle:
            return None
        rows = np.arange(self.num_samples) if self.rows is None else self.rows
        if self.shuffle == "batch":
            # As Keras does: fixed batches, each in a new order.
            return np.concatenate(
                [
                    self.rng.permutation(rows[start : start + self.batch_size])
                    for start in range(0, len(rows), self.batch_size)
                ]
            )
        if self.shuffle:
            return self.rng.permutation(rows)
        return rows


def should_stream(x):
    """True where serving `x` through `ArrayBatches` saves memory: NumPy
    inputs on the TensorFlow and PyTorch backends."""
    if keras.backend.backend() not in ("tensorflow", "torch") or x is None:
        return False
    items = keras.tree.flatten(x)
    return bool(items) and all(isinstance(i, np.ndarray) for i in items)


def _as_array(data):
    if data is None or hasattr(data, "shape"):
        return data
    return np.asarray(data)
