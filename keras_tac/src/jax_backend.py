"""What keras_tac does only on the JAX backend, in one place.

Three things, none of which applies on TensorFlow and PyTorch:

- `state_kept(model)`: leaves a model usable when a `predict` step raises
  (Keras's JAX trainer detaches the variables' values while it runs).
- `inference_compilation(model)`: on a CPU, compiles TAC's inference
  functions with the fastest of `XLA_CPU_OPTION_SETS` for that model, and
  TAC's predict step as two programs (the base with its taps, then the
  head).
- `top_k_is_slow()`: whether `keras.ops.top_k` is to be avoided (the kNN
  search's k-th largest similarity then takes k max-and-remove passes).

Why the compiler options: XLA:CPU (jaxlib 0.10) compiles a classifier with
one output into a single YNNPACK kernel, but once intermediate tensors (the
taps) are outputs too, it splits the network into many kernels with XLA's
slower elementwise code between them. Letting YNNPACK also fuse the
elementwise, dot and reduce operations keeps a plain CNN fast; on a
BatchNorm ResNet the elementwise fusion makes the base itself slower, and
the dot and reduce fusions alone are fastest. Neither set suits every base,
so TAC's predict and evaluate time both on their first batch that takes
20 ms or more and keep the faster (`TunedStep`; the choice is recorded on
the model and reused by its other inference functions). Why two programs:
XLA:CPU schedules the single program of base and head worse than the two
alone (figures in `docs/performance.md`); the outputs are the same.

`keras_tac.config.set_jax_cpu_inference_fusion(False)` compiles with JAX's
defaults, as one program; a `--xla_cpu_experimental_ynn_fusion_type` in
the `XLA_FLAGS` environment variable is the user's choice and always wins.
"""

import contextlib
import os
import time

import keras

from keras_tac.src import config
from keras_tac.src import keras_internals

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"


def _fusions(*kinds):
    return {
        YNN_FUSION_OPTION: ",".join(
            f"LIBRARY_FUSION_TYPE_{kind}" for kind in kinds
        )
    }


# The candidates, in order of preference on a tie.
XLA_CPU_OPTION_SETS = (
    _fusions("DOT", "ELTWISE", "REDUCE"),
    _fusions("DOT", "REDUCE"),
)

# Where the choice made for a model is kept (an index into the sets).
_CHOICE = "_jax_cpu_inference_choice"
# Read by `TACModel.call` while it is traced: `TAPS_ONLY` (return the base
# output and the taps) or the list of those tensors, given.
TRACED_TAPS = "_traced_taps"
TAPS_ONLY = "taps only"


def inference_option_sets():
    """The XLA option sets TAC's inference functions choose from, or `None`.

    `None` unless the backend is JAX on a CPU, the fusion is enabled
    (`keras_tac.config.jax_cpu_inference_fusion()`) and `XLA_FLAGS` does
    not choose the YNNPACK fusions itself.

    Example:

    >>> option_sets = inference_option_sets()
    >>> option_sets is None or YNN_FUSION_OPTION in option_sets[0]
    True
    """
    if (
        keras.backend.backend() != "jax"
        or not config.jax_cpu_inference_fusion()
    ):
        return None
    import jax

    if jax.default_backend() != "cpu":
        return None
    if YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", ""):
        return None
    return [dict(options) for options in XLA_CPU_OPTION_SETS]


def inference_choice(model):
    """The option set chosen for `model`'s inference functions, or `None`
    before its first inference call (or off a JAX CPU).

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> inference_choice(model) is None
    True
    """
    index = model.__dict__.get(_CHOICE)
    return None if index is None else dict(XLA_CPU_OPTION_SETS[index])


def top_k_is_slow():
    """True on the JAX backend, where `keras.ops.top_k` is to be avoided.

    JAX's `top_k` costs some 60x more than k max-and-remove passes on
    XLA:CPU (about 160-200 ms against 4 ms for k = 10 of 4,096 values per
    row, batch 256), and lowers to a StableHLO composite that TensorFlow
    2.21 cannot load from a JAX-exported SavedModel. PyTorch's and
    TensorFlow's `top_k` beat the passes (1.5 against 18 ms and 3.5
    against 8 ms there).

    Example:

    >>> top_k_is_slow() == (keras.backend.backend() == "jax")
    True
    """
    return keras.backend.backend() == "jax"


@contextlib.contextmanager
def inference_compilation(
    model, split_at_taps=False, choice_of=None, may_choose=True
):
    """Functions that Keras's JAX trainer compiles for `model` inside this
    context are `TunedStep`s: compiled with the fastest of
    `inference_option_sets()` for `model`, and, with `split_at_taps`, as
    two programs (`model` must then be a `TACModel`). The choice is
    recorded on `choice_of` (default: `model`), and reused from there;
    without `may_choose` they take the recorded choice, or else the first
    option set, and time nothing.

    Use it around `make_predict_function` / `make_test_function` (forward
    passes only: the training step keeps JAX's defaults). Nothing changes
    where `inference_option_sets()` is `None`.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> with inference_compilation(model):
    ...     _ = model.make_predict_function(force=True)
    """
    option_sets = inference_option_sets()
    if option_sets is None:
        yield
        return

    def jit(step, **jit_kwargs):
        return TunedStep(
            step,
            model,
            option_sets,
            split_at_taps,
            jit_kwargs,
            choice_of=choice_of,
            may_choose=may_choose,
        )

    with keras_internals.jax_trainer_jit(jit):
        yield


class TunedStep:
    """A step function of Keras's JAX trainer, `step(state, data)`,
    compiled with the option set chosen for its model.

    Until a choice is recorded (on `choice_of`, by default the model), the
    step runs with the first option set, and times it on a batch larger
    than any it timed before. If that batch takes `MIN_SECONDS_TO_CHOOSE`
    or more, every option set is compiled and timed on it (one run after
    the compiling one, two when the fastest two are within 10%; on copies
    of the state) and the fastest is kept and recorded; below that, the
    batch is too small to tell the sets apart, or for the choice to
    matter.

    With `split_at_taps` the step runs as two compiled programs: the base
    with its taps (`TACModel.call` returning early), then the whole step
    on the given taps. `jit_kwargs` (buffer donation, output shardings) go
    to the second, which returns the step's outputs and state.
    """

    MIN_SECONDS_TO_CHOOSE = 0.02

    def __init__(
        self,
        step,
        model,
        option_sets,
        split_at_taps,
        jit_kwargs,
        choice_of=None,
        may_choose=True,
    ):
        self.step = step
        self.model = model
        self.choice_of = model if choice_of is None else choice_of
        self.option_sets = option_sets
        self.split_at_taps = split_at_taps
        self.jit_kwargs = jit_kwargs
        self.may_choose = may_choose and len(option_sets) > 1
        self._candidates = {}
        self._index = None
        self._timed_rows = 0

    def __call__(self, state, data):
        if self._index is None:
            self._index = self.choice_of.__dict__.get(_CHOICE)
        if (
            self._index is None
            and self.may_choose
            and _rows(data) > self._timed_rows
        ):
            self._try_option_sets(state, data)
        return self._candidate(self._index or 0)(state, data)

    def compiled(self, options):
        """The step compiled (on its first call) with `options`."""
        import jax

        if not self.split_at_taps:
            return jax.jit(
                self.step, compiler_options=options, **self.jit_kwargs
            )
        model, step = self.model, self.step

        def base_step(state, data):
            with _traced_taps(model, TAPS_ONLY):
                return step(state, data)[0]

        def head_step(state, data, taps):
            with _traced_taps(model, taps):
                return step(state, data)

        base = jax.jit(base_step, compiler_options=options)
        head = jax.jit(head_step, compiler_options=options, **self.jit_kwargs)
        return lambda state, data: head(state, data, base(state, data))

    def _candidate(self, index):
        if index not in self._candidates:
            self._candidates[index] = self.compiled(self.option_sets[index])
        return self._candidates[index]

    def _seconds(self, index, state, data):
        import jax

        # A copy: the step may donate the state's buffers.
        copy = jax.block_until_ready(jax.tree.map(_copy_array, state))
        start = time.perf_counter()
        jax.block_until_ready(self._candidate(index)(copy, data))
        return time.perf_counter() - start

    def _try_option_sets(self, state, data):
        self._timed_rows = _rows(data)
        indices = range(len(self.option_sets))
        self._seconds(0, state, data)  # compiles
        seconds = {0: [self._seconds(0, state, data)]}
        if seconds[0][0] < self.MIN_SECONDS_TO_CHOOSE:
            return
        for index in indices[1:]:
            self._seconds(index, state, data)  # compiles
            seconds[index] = [self._seconds(index, state, data)]
        fastest, second = sorted(indices, key=lambda i: seconds[i][0])[:2]
        if seconds[second][0] < 1.1 * seconds[fastest][0]:
            # Too close for one run to tell: one more each.
            for index in indices:
                seconds[index].append(self._seconds(index, state, data))
        self._index = min(indices, key=lambda index: min(seconds[index]))
        object.__setattr__(self.choice_of, _CHOICE, self._index)
        for index in indices:
            if index != self._index:
                del self._candidates[index]


def _rows(data):
    """The batch size of a step's `data` (0 when it cannot be told)."""
    for value in keras.tree.flatten(data):
        shape = getattr(value, "shape", None)
        if shape:
            return shape[0]
    return 0


def _copy_array(value):
    return value.copy() if hasattr(value, "copy") else value


@contextlib.contextmanager
def _traced_taps(model, value):
    object.__setattr__(model, TRACED_TAPS, value)
    try:
        yield
    finally:
        object.__setattr__(model, TRACED_TAPS, None)


@contextlib.contextmanager
def state_kept(model):
    """Leaves the model usable when a `predict` step raises.

    Keras's JAX trainer detaches the values of the variables while it
    predicts and reattaches them at the end: an error in a step (a
    malformed batch from a generator, an interrupt) would leave the model
    without weights. Holding the values (references, not copies) lets us
    reattach them.
    """
    if keras.backend.backend() != "jax":
        yield
        return
    values = [(variable, variable.value) for variable in model.variables]
    try:
        yield
    except BaseException:
        # The state of the last step that ran, if any (the step donates
        # its input buffers, so the held values may be gone by then)...
        model.jax_state_sync()
        # ... else the values held from before the first step.
        for variable, value in values:
            if getattr(variable, "_value", None) is None:
                variable.assign(value)
        raise


@contextlib.contextmanager
def state_synced_through(model, trainer):
    """While `trainer` trains layers of `model`, syncing `model`'s JAX state
    syncs the trainer's.

    Keras's JAX trainer keeps the variables' values out of the layers
    between the steps of an epoch; a callback reads them after calling its
    model's `jax_state_sync`. Callbacks of the cached-feature `fit` hold the
    TAC model, whose layers the head trainer is training.
    """
    if keras.backend.backend() != "jax":
        yield
        return

    def sync():
        trainer.jax_state_sync()

    object.__setattr__(model, "jax_state_sync", sync)
    try:
        yield
    finally:
        object.__delattr__(model, "jax_state_sync")
