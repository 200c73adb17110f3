"""What keras_tac does for Keras's distribution engines, in one place.

keras-tac trains and predicts through Keras's own `fit`/`evaluate`/
`predict`, so data parallelism (`keras.distribution.DataParallel` on JAX,
a `tf.distribute` strategy on TensorFlow) is Keras's: the same gradient
averaging, the same batch split. Three things step outside those loops and
need help, all no-ops without a distribution:

- `strategy_scope(model)`: on TensorFlow, the scope of the strategy the
  model was built in. Variables keras-tac creates outside Keras's `fit` (the
  optimizer's, built before the first step; the cached-feature trainer's
  metrics) must be created in it, as `tf.distribute` requires.
- `predict_on_batch(model, batch)`: `model.predict_on_batch` with the batch
  split over the devices as Keras's `predict` splits it. Keras's JAX
  `predict_on_batch` leaves a batch on one device; the feature passes of
  keras-tac (feature cache, training statistics, scorers) use it.
- `scale_loss(loss)`: on TensorFlow, `TACModel.compute_loss` divided by
  the number of replicas, as Keras's own `compute_loss` divides it (the
  strategy sums the replicas' gradients).

PyTorch: Keras 3.15 has no distribution API on torch (see
`docs/distribution.md`).
"""

import contextlib

import keras


def strategy_scope(model):
    """The scope of the `tf.distribute` strategy `model` was built in, or a
    no-op context (other backends, or no strategy).

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> with strategy_scope(model):
    ...     pass
    """
    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    # Keras's TensorFlow trainer: the strategy the model was built in, else
    # the current one (TensorFlow's default strategy, whose scope is a
    # no-op).
    return model.distribute_strategy.scope()


def split_batch(batch):
    """`batch` (a structure of arrays) laid out along the batch axis of the
    global JAX distribution, as Keras lays out the batches of `predict`.

    Unchanged on other backends, without a distribution, or when the batch
    size is not a multiple of the number of devices along the batch axis
    (the batch then stays on one device: slower, same results).
    """
    if keras.backend.backend() != "jax":
        return batch
    distribution = keras.distribution.distribution()
    if distribution is None or not hasattr(distribution, "batch_dim_name"):
        return batch
    mesh = distribution.device_mesh
    axis = mesh.axis_names.index(distribution.batch_dim_name)
    num_shards = mesh.shape[axis]

    def split(array):
        if array is None or array.shape[0] % num_shards:
            return array
        layout = distribution.get_data_layout(array.shape)
        return keras.distribution.distribute_tensor(array, layout)

    leaves = keras.tree.flatten(batch)
    if any(a is not None and a.shape[0] % num_shards for a in leaves):
        return batch
    return keras.tree.map_structure(split, batch)


def predict_on_batch(model, batch):
    """`model.predict_on_batch(batch)`, the batch split over the devices of
    the global JAX distribution (see `split_batch`)."""
    return model.predict_on_batch(split_batch(batch))


def scale_loss(loss):
    """`loss` divided by the number of replicas of the current
    `tf.distribute` strategy (TensorFlow; unchanged otherwise).

    The strategy sums the replicas' gradients: a loss averaged over each
    replica's share of the batch must be divided by the number of replicas
    to give the gradient of the global batch mean, as Keras's own
    `compute_loss` does.
    """
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas == 1:
        return loss
    return loss * (1.0 / replicas)
