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

Several JAX processes (`keras.distribution.initialize`, one process per
host, a distribution over every process's devices) each feed their own
share of the data, as Keras's JAX trainer expects (it makes each
per-process batch global with `jax.make_array_from_process_local_data`).
Keras 3.15's `predict` then fails: its outputs are global arrays that no
process can read whole (`np.concatenate` of "a `jax.Array` that spans
non-addressable devices"). So, in that setting only:

- `local_predictions(model)`: within it, `model.predict` and
  `predict_on_batch` return this process's rows (those of its own inputs,
  in order), read from the outputs' addressable shards.
- `gather(array)`: the arrays of every process, concatenated in process
  order (`process_allgather`): the training statistics and the calibrated
  thresholds are those of the whole data, the same in every process (as
  replicated variables must be). Every process must bring the same number
  of batches of the same sizes.

PyTorch: Keras 3.15 has no distribution API on torch (see
`docs/distribution.md`).
"""

import contextlib

import keras
import numpy as np


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


def is_multi_process():
    """Whether a JAX distribution spans several processes (`False` on other
    backends, in one process, or without a distribution)."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    return (
        jax.process_count() > 1
        and keras.distribution.distribution() is not None
    )


def gather(array):
    """`array` (NumPy, this process's rows) concatenated along its first
    axis over every process, in process order, on every process; unchanged
    (and `None` too) without a multi-process distribution."""
    if array is None or not is_multi_process():
        return array
    from jax.experimental import multihost_utils

    array = np.asarray(array)
    # Booleans travel as bytes (not every collective takes them).
    dtype = array.dtype
    if dtype == np.bool_:
        array = array.astype("uint8")
    gathered = np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return gathered.astype(dtype) if dtype == np.bool_ else gathered


def gather_count(count):
    """The sum of `count` over every process (unchanged in one)."""
    if not is_multi_process():
        return int(count)
    return int(gather(np.asarray([count], "int64")).sum())


def _local_rows(array):
    """This process's rows of a global output batch, as NumPy."""
    import jax

    if not isinstance(array, jax.Array) or array.is_fully_addressable:
        return np.asarray(array)
    pieces = {}
    for shard in array.addressable_shards:
        rows = shard.index[0] if shard.index else slice(None)
        pieces.setdefault(rows.start or 0, shard.data)
    return np.concatenate([np.asarray(pieces[k]) for k in sorted(pieces)])


@contextlib.contextmanager
def local_predictions(model):
    """Within it, `model.predict` / `predict_on_batch` return this
    process's rows under a multi-process JAX distribution (a no-op
    otherwise): Keras's own would fail to read the global outputs."""
    if not is_multi_process():
        yield
        return
    model.make_predict_function()
    function = model.predict_function

    def local(state, iterator):
        outputs, state = function(state, iterator)
        return keras.tree.map_structure(_local_rows, outputs), state

    model.predict_function = local
    try:
        yield
    finally:
        model.predict_function = function


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

    if is_multi_process():
        # This process's share of a global batch, as Keras's JAX trainer
        # makes it (`jax.make_array_from_process_local_data`).
        import jax

        def split(array):
            if array is None:
                return array
            shape = (array.shape[0] * jax.process_count(), *array.shape[1:])
            layout = distribution.get_data_layout(shape)
            return jax.make_array_from_process_local_data(
                layout.backend_layout, np.asarray(array)
            )

        return keras.tree.map_structure(split, batch)

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
    the global JAX distribution (see `split_batch`); this process's rows
    under a multi-process one (`local_predictions`)."""
    with local_predictions(model):
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
