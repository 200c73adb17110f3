"""The private Keras APIs that keras-tac relies on
(`keras_tac.src.keras_internals`), each checked directly, so that a Keras
release that changes one fails here with a message that says so."""

import keras
import pytest

from keras_tac.src import keras_internals

CHECKED_AGAINST = "3.15"
ON_JAX = keras.backend.backend() == "jax"


def changed(what):
    return (
        f"Keras {keras.version()} changed {what}. keras_tac.src."
        f"keras_internals was checked against Keras {CHECKED_AGAINST}: "
        "update it (and this test) for the new release."
    )


def functional():
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(inputs))


class FunctionalSubclass(keras.Model):
    def __init__(self):
        inputs = keras.Input((4,))
        super().__init__(inputs, keras.layers.Dense(2)(inputs))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def sequential():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])


def subclassed():
    model = Subclassed()
    model(keras.ops.ones((1, 4)))
    return model


class TestRunThroughGraph:
    @pytest.mark.parametrize("make", [functional, FunctionalSubclass])
    def test_functional_models_have_it(self, make):
        model = make()
        assert callable(getattr(model, "_run_through_graph", None)), changed(
            "Functional models: they no longer have `_run_through_graph`"
        )
        assert keras_internals.is_functional(model)

    @pytest.mark.parametrize("make", [sequential, subclassed])
    def test_other_models_do_not(self, make):
        model = make()
        assert not hasattr(model, "_run_through_graph"), changed(
            f"{type(model).__name__} models: they now have "
            "`_run_through_graph`, which told Functional models apart"
        )
        assert not keras_internals.is_functional(model)

    def test_layers_are_not_functional(self):
        assert not keras_internals.is_functional(keras.layers.Dense(2))


class TestKerasHistory:
    def test_functional_output_names_its_layer(self):
        inputs = keras.Input((4,))
        main = keras.layers.Dense(2, name="main")
        # Built after `main`: the last of `model.layers`, not the output.
        aux = keras.layers.Dense(3, name="aux")
        model = keras.Model(inputs, [main(inputs), aux(inputs)])
        history = getattr(model.outputs[0], "_keras_history", None)
        assert history is not None, changed(
            "Functional outputs: they no longer have `_keras_history`"
        )
        assert history[0] is main, changed(
            "`_keras_history`: its first entry is no longer the layer that "
            "produced the tensor"
        )
        assert history.operation is main, changed(
            "`_keras_history`: it no longer has an `operation` field"
        )
        assert model.layers[-1] is aux
        assert keras_internals.output_layer(model) is main

    def test_nested_model_output(self):
        inner = functional()
        inputs = keras.Input((4,))
        outer = keras.Model(inputs, inner(inputs))
        history = outer.outputs[0]._keras_history
        assert history[0] is inner, changed(
            "`_keras_history` of a nested model's output: it no longer "
            "names the nested model"
        )
        assert keras_internals.output_layer(outer) is inner

    def test_sequential_and_subclassed(self):
        model = sequential()
        assert keras_internals.output_layer(model) is model.layers[-1]
        assert keras_internals.output_layer(keras.Sequential()) is None
        assert keras_internals.output_layer(subclassed()) is None


class TestPrintMsg:
    def test_keras_has_it(self):
        from keras.src.utils import io_utils

        assert callable(getattr(io_utils, "print_msg", None)), changed(
            "`keras.src.utils.io_utils.print_msg`: it is gone"
        )

    def test_prints_to_stdout(self, capsys):
        assert keras.config.is_interactive_logging_enabled()
        keras_internals.print_msg("hello from keras-tac")
        assert capsys.readouterr().out == "hello from keras-tac\n", changed(
            "`io_utils.print_msg`: it no longer writes the message and a "
            "line break to stdout"
        )

    def test_logs_when_interactive_logging_is_off(self, capsys, monkeypatch):
        from keras.src.utils import io_utils

        logged = []
        # Keras logs through absl's `logging.info`; whether that reaches
        # Python's handlers depends on what else imported absl.
        monkeypatch.setattr(io_utils.logging, "info", logged.append)
        keras.config.disable_interactive_logging()
        try:
            keras_internals.print_msg("quiet message")
        finally:
            keras.config.enable_interactive_logging()
        assert capsys.readouterr().out == "", changed(
            "`io_utils.print_msg`: it prints although interactive logging "
            "is disabled"
        )
        assert logged == ["quiet message"], changed(
            "`io_utils.print_msg`: it no longer logs (absl) when "
            "interactive logging is disabled"
        )


@pytest.mark.skipif(
    not ON_JAX, reason="Keras's JAX trainer exists on the JAX backend only"
)
class TestInTfGraph:
    def test_eager_is_not_a_graph(self):
        assert keras_internals.in_tf_graph() is False

    def test_inside_a_tf_data_map(self):
        tf = pytest.importorskip("tensorflow")
        seen = []

        def record(x):
            seen.append(keras_internals.in_tf_graph())
            return x

        list(tf.data.Dataset.range(2).map(record))
        assert seen == [True]


class TestInboundLayers:
    def test_the_layers_an_add_consumes(self):
        inputs = keras.Input((4,))
        a = keras.layers.Dense(4, name="a")(inputs)
        b = keras.layers.ReLU(name="b")(a)
        added = keras.layers.Add(name="add")([a, b])
        model = keras.Model(inputs, keras.layers.Dense(2)(added))
        inbound = keras_internals.inbound_layers(model.get_layer("add"))
        assert [layer.name for layer in inbound] == ["a", "b"], changed(
            "`KerasTensor._keras_history` of a layer's inputs"
        )


class TestOwnVariables:
    def test_in_the_order_of_the_saved_keys(self):
        # A layer with a trainable and a non-trainable weight: the saved
        # store numbers them as `own_variables` lists them.
        layer = keras.layers.BatchNormalization()
        layer.build((None, 3))
        own = keras_internals.own_variables(layer)
        store = {}
        layer.save_own_variables(store)
        assert sorted(store, key=int) == [str(i) for i in range(len(own))], (
            changed("`Layer.save_own_variables`'s keys")
        )
        for key, variable in zip(sorted(store, key=int), own):
            assert keras.ops.convert_to_numpy(variable).tolist() == (
                keras.ops.convert_to_numpy(store[key]).tolist()
            ), changed("the order of a layer's own saved variables")
        assert [v.name for v in own] == [
            "gamma",
            "beta",
            "moving_mean",
            "moving_variance",
        ], changed("`_trainable_variables` / `_non_trainable_variables`")
