"""Where TAC's inference overhead goes, for one backend and one base model.

    KERAS_BACKEND=jax python -m benchmarks.profile_inference --model resnet

Prints, for the base model and its `TACModel` (default taps and score):

- the FLOP floor (`1 + add-on FLOPs / base FLOPs`, from layer shapes) and,
  on JAX, XLA's own cost analysis of the compiled programs;
- how often the TAC head's `call` runs in Python over repeated
  `predict_with_rejection` calls (on TensorFlow and JAX: the traces; on
  PyTorch, which runs eagerly: the batches);
- the bytes that leave the device per batch: everything `predict` returns
  against what `predict_with_rejection` fetches (the outputs of its graph
  model, `keras_tac.src.feature_graph.graph_model`);
- on JAX, the compiled pieces timed alone, alternated, per batch, under
  JAX's default XLA options (keras-tac sets none; `XLA_FLAGS` is the
  user's way to set them): the base, the base with its taps as outputs,
  the graph model with only the pooled taps, the graph model
  `predict_with_rejection` runs, and the host time per batch of
  `predict_with_rejection` around its compiled function;
- `predict`, `TACModel.predict` and `predict_with_rejection`, alternated.

Medians over `--repeats` alternated calls; the load average is printed,
since the machine may be shared. No figure here is asserted anywhere.
"""

import argparse
import os

import keras
import numpy as np

from benchmarks import common
from benchmarks import suite
from keras_tac import TACModel
from keras_tac.src import feature_graph
from keras_tac.src import rejection


def _models(name):
    if name == "resnet":
        base = suite.resnet50_base()
        shape, batch_size = (96, 96, 3), suite.RESNET_BATCH_SIZE
        samples = suite.RESNET_SAMPLES
    else:
        base = common.mnist_cnn()
        shape, batch_size, samples = (28, 28, 1), 256, 1024
    x = np.random.default_rng(0).random((samples, *shape), dtype=np.float32)
    return base, TACModel(base), x, batch_size


def _show(times, reference):
    for name, values in times.items():
        ratio = common.paired_ratio(times, name, reference)["median"]
        print(
            f"  {name:34s} {1e3 * np.median(values):9.1f} ms   "
            f"{ratio:.3f}x {reference}"
        )


def _count_calls(tac, x, batch_size, calls):
    """Python executions of the TAC head's `call` over `calls` calls of
    `predict_with_rejection` (after one warm-up call)."""
    tac.predict_with_rejection(
        x, threshold=0.0, batch_size=batch_size, verbose=0
    )
    count = [0]
    owner = type(tac.head)
    original = owner.call

    def counted(self, *args, **kwargs):
        count[0] += 1
        return original(self, *args, **kwargs)

    owner.call = counted
    try:
        for _ in range(calls):
            tac.predict_with_rejection(
                x, threshold=0.0, batch_size=batch_size, verbose=0
            )
    finally:
        owner.call = original
    return count[0]


def _bytes_per_batch(tac, x, batch_size):
    batches = -(-len(x) // batch_size)
    full = tac.predict(x, batch_size=batch_size, verbose=0)
    keys = [k for k in rejection.REJECTION_KEYS if k != "accepted"]
    fetched = rejection.predict_outputs(
        tac, x, [*keys, "input_is_finite"], batch_size=batch_size, verbose=0
    )
    return (
        sum(v.nbytes for v in full.values()) / batches,
        sum(v.nbytes for v in fetched.values()) / batches,
    )


def _jax_pieces(base, tac, x, batch_size, repeats):
    import jax

    batch = jax.numpy.asarray(x[:batch_size])
    keys = [k for k in rejection.REJECTION_KEYS if k != "accepted"]
    pooled_keys = ("base_output",) + tuple(
        f"pooled_{i}" for i in range(len(tac.tap_layers))
    )
    pieces = {
        "base": base,
        "base + taps as outputs": feature_graph.tap_model(tac),
        "base + pooled taps": feature_graph.graph_model(tac, pooled_keys),
        "graph model of predict_with_rejection": feature_graph.graph_model(
            tac, (*keys, "input_is_finite")
        ),
    }
    functions = {}
    print("XLA cost analysis per batch (flops, bytes accessed):")
    for label, model in pieces.items():
        # Copies: Keras's predict donates the variables' buffers.
        t = [jax.numpy.copy(v.value) for v in model.trainable_variables]
        n = [jax.numpy.copy(v.value) for v in model.non_trainable_variables]
        jitted = jax.jit(
            lambda t, n, inputs, model=model: model.stateless_call(
                t, n, inputs
            )[0]
        )
        cost = jitted.lower(t, n, batch).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        print(
            f"  {label:48s} {cost.get('flops', 0):.4g} "
            f"{cost.get('bytes accessed', 0):.4g}"
        )
        functions[label] = lambda j=jitted, t=t, n=n: jax.block_until_ready(
            j(t, n, batch)
        )
    print(f"Compiled pieces alone, batch {batch_size}:")
    _show(common.interleaved(functions, repeats), "base")
    # Host time around the compiled function: the whole call per batch
    # against the compiled graph model alone on the same batches.
    step = functions["graph model of predict_with_rejection"]
    sub = x[: 4 * batch_size]
    times = common.interleaved(
        {
            "predict_with_rejection": lambda: tac.predict_with_rejection(
                sub, threshold=0.0, batch_size=batch_size, verbose=0
            ),
            "compiled program x batches": lambda: [step() for _ in range(4)],
        },
        repeats,
    )
    host = (
        np.median(times["predict_with_rejection"])
        - np.median(times["compiled program x batches"])
    ) / 4
    print(
        f"  host time per batch around the compiled step: {1e3 * host:.1f} ms"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=("cnn", "resnet"), default="cnn")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    backend = keras.backend.backend()
    print(f"backend {backend}, model {args.model}, load {os.getloadavg()}")
    keras.utils.set_random_seed(0)
    base, tac, x, batch_size = _models(args.model)
    base_flops, addon_flops = common.base_flops(base), common.addon_flops(tac)
    print(
        f"FLOPs per sample: base {base_flops / 1e6:.1f} M, add-on "
        f"{addon_flops / 1e6:.1f} M, floor {1 + addon_flops / base_flops:.4f}"
    )
    calls = _count_calls(tac, x, batch_size, 3)
    batches = -(-len(x) // batch_size)
    print(
        f"the TAC head's call ran {calls} times in Python over 3 calls of "
        f"predict_with_rejection after a warm-up ({batches} batches each)"
    )
    full, fetched = _bytes_per_batch(tac, x, batch_size)
    print(
        f"bytes off the device per batch: predict {full:.0f}, "
        f"predict_with_rejection {fetched:.0f}"
    )
    if backend == "jax":
        _jax_pieces(base, tac, x, batch_size, args.repeats)
    print(f"Whole calls, {len(x)} inputs, batch {batch_size}:")
    times = common.interleaved(
        {
            "base predict": lambda: base.predict(
                x, batch_size=batch_size, verbose=0
            ),
            "TACModel.predict": lambda: tac.predict(
                x, batch_size=batch_size, verbose=0
            ),
            "predict_with_rejection": lambda: tac.predict_with_rejection(
                x, threshold=0.0, batch_size=batch_size, verbose=0
            ),
        },
        args.repeats,
    )
    _show(times, "base predict")
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
