import time

import keras
import numpy as np
import pytest

import keras_tac
from keras_tac import TACModel
from keras_tac.scores import FeatureExtractor
from keras_tac.src import jax_backend

ON_JAX = keras.backend.backend() == "jax"


def _on_jax_cpu():
    if not ON_JAX:
        return False
    import jax

    return jax.default_backend() == "cpu"


@pytest.fixture
def default_options(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    keras_tac.config.set_jax_cpu_inference_fusion(True)
    yield
    keras_tac.config.set_jax_cpu_inference_fusion(True)


class TestInferenceOptionSets:
    def test_only_on_jax_cpu(self, default_options):
        option_sets = jax_backend.inference_option_sets()
        if _on_jax_cpu():
            assert option_sets == list(jax_backend.XLA_CPU_OPTION_SETS)
            assert option_sets[0] is not jax_backend.XLA_CPU_OPTION_SETS[0]
        else:
            assert option_sets is None

    def test_xla_flags_of_the_user_win(self, default_options, monkeypatch):
        monkeypatch.setenv(
            "XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=eltwise"
        )
        assert jax_backend.inference_option_sets() is None

    def test_turned_off(self, default_options):
        keras_tac.config.set_jax_cpu_inference_fusion(False)
        assert jax_backend.inference_option_sets() is None


class TestInferenceCompilation:
    def test_trainer_jit_restored(self, default_options):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        if not ON_JAX:
            # Nothing to replace off JAX: a predict function made inside
            # the context is Keras's own and answers as the model's call.
            x = np.random.default_rng(0).random((5, 3)).astype("float32")
            with jax_backend.inference_compilation(model):
                model.make_predict_function(force=True)
            np.testing.assert_allclose(
                model.predict(x, verbose=0),
                keras.ops.convert_to_numpy(model(x)),
                rtol=1e-6,
                atol=1e-6,
            )
            return
        from keras.src.backend.jax import trainer

        original = trainer.jit
        with pytest.raises(RuntimeError, match="inside"):
            with jax_backend.inference_compilation(model):
                if _on_jax_cpu():
                    assert trainer.jit is not original
                raise RuntimeError("inside")
        assert trainer.jit is original

    @pytest.mark.skipif(
        not _on_jax_cpu(), reason="XLA:CPU compiler options exist on JAX only"
    )
    def test_options_reach_the_compiler(self, trained_cnn, monkeypatch):
        # An invalid value must fail the compilation: proof that predict
        # compiles with the options and not with JAX's defaults.
        monkeypatch.delenv("XLA_FLAGS", raising=False)
        monkeypatch.setattr(
            jax_backend,
            "XLA_CPU_OPTION_SETS",
            ({jax_backend.YNN_FUSION_OPTION: "NOT_A_FUSION_TYPE"},),
        )
        # score="distance": `fit` then runs no inference pass (statistics).
        tac = TACModel(trained_cnn, score="distance")
        x = np.zeros((4, 8, 8, 1), "float32")
        with pytest.raises(Exception, match="NOT_A_FUSION_TYPE"):
            tac.predict(x, verbose=0)
        # The training step keeps JAX's defaults.
        tac.compile(optimizer="adam")
        tac.fit(x, np.arange(4), epochs=1, verbose=0, cache_features=False)

    def test_same_outputs_as_default_options(
        self, trained_cnn, digits, default_options, monkeypatch
    ):
        (x_train, y_train), (x_test, y_test) = digits
        x, y = x_test[:300], y_test[:300]
        tac = TACModel(trained_cnn)
        tac.compile(optimizer=keras.optimizers.Adam(1e-2))
        tac.fit(x_train[:256], y_train[:256], epochs=2, verbose=0)
        tuned = tac.predict(x, batch_size=128, verbose=0)
        tuned_loss = tac.evaluate(x, y, batch_size=128, verbose=0)
        tuned_features = next(
            FeatureExtractor.of(tac).batches(x, batch_size=128, verbose=0)
        )

        keras_tac.config.set_jax_cpu_inference_fusion(False)
        tac.make_predict_function(force=True)
        tac.make_test_function(force=True)
        FeatureExtractor.of(tac).model.make_predict_function(force=True)
        plain = tac.predict(x, batch_size=128, verbose=0)
        plain_loss = tac.evaluate(x, y, batch_size=128, verbose=0)
        plain_features = next(
            FeatureExtractor.of(tac).batches(x, batch_size=128, verbose=0)
        )

        assert tuned.keys() == plain.keys()
        for key in plain:
            np.testing.assert_allclose(
                tuned[key], plain[key], rtol=1e-5, atol=1e-6, err_msg=key
            )
        np.testing.assert_allclose(tuned_loss, plain_loss, rtol=1e-5)
        np.testing.assert_allclose(
            tuned_features.profile, plain_features.profile, atol=1e-6
        )


class CountedCompilations:
    """Wraps `TunedStep.compiled`: counts the compilations asked for and
    adds `delays[i]` seconds to every run of option set `i`."""

    def __init__(self, monkeypatch, delays=None):
        self.count = 0
        original = jax_backend.TunedStep.compiled
        counter = self
        sets = jax_backend.XLA_CPU_OPTION_SETS

        def compiled(step, options):
            counter.count += 1
            run = original(step, options)
            delay = (delays or {}).get(sets.index(options), 0.0)

            def delayed(state, data):
                time.sleep(delay)
                return run(state, data)

            return delayed

        monkeypatch.setattr(jax_backend.TunedStep, "compiled", compiled)


@pytest.mark.skipif(
    not _on_jax_cpu(), reason="the option sets are chosen on JAX's CPU only"
)
class TestTunedStep:
    @pytest.mark.parametrize("slow", [0, 1])
    def test_the_faster_option_set_is_kept(
        self, trained_cnn, digits, default_options, monkeypatch, slow
    ):
        # Oracle: every run made to last over the threshold, one option set
        # 60 ms longer than the other, so the other must be chosen.
        over = jax_backend.TunedStep.MIN_SECONDS_TO_CHOOSE
        delays = {0: over, 1: over}
        delays[slow] += 0.06
        counted = CountedCompilations(monkeypatch, delays)
        tac = TACModel(trained_cnn)
        x = digits[1][0][:64]
        first = tac.predict(x, batch_size=32, verbose=0)
        faster = jax_backend.XLA_CPU_OPTION_SETS[1 - slow]
        assert jax_backend.inference_choice(tac) == faster
        assert counted.count == len(jax_backend.XLA_CPU_OPTION_SETS)
        # The trial runs worked on copies: the state is intact.
        again = tac.predict(x, batch_size=32, verbose=0)
        for key in first:
            np.testing.assert_array_equal(first[key], again[key], err_msg=key)

    def test_small_batches_keep_the_first_option_set(
        self, trained_cnn, digits, default_options, monkeypatch
    ):
        # The digits CNN takes well under the threshold per batch: nothing
        # is chosen, and only the first option set is compiled, until a
        # batch takes long enough (here, one made slow on purpose).
        counted = CountedCompilations(monkeypatch)
        tac = TACModel(trained_cnn)
        x = digits[1][0][:64]
        tac.predict(x[:8], batch_size=8, verbose=0)
        tac.predict(x, batch_size=32, verbose=0)
        assert jax_backend.inference_choice(tac) is None
        assert counted.count == 1
        slow = CountedCompilations(monkeypatch, {0: 0.05, 1: 0.05})
        tac.make_predict_function(force=True)
        tac.predict(x, batch_size=32, verbose=0)
        assert jax_backend.inference_choice(tac) is not None
        assert slow.count == len(jax_backend.XLA_CPU_OPTION_SETS)

    def test_the_choice_is_made_once_per_model(
        self, trained_cnn, digits, default_options, monkeypatch
    ):
        over = jax_backend.TunedStep.MIN_SECONDS_TO_CHOOSE
        counted = CountedCompilations(monkeypatch, {0: over, 1: over})
        tac = TACModel(trained_cnn, score="distance")
        (x, y) = digits[1][0][:64], digits[1][1][:64]
        tac.predict(x, batch_size=32, verbose=0)
        assert counted.count == len(jax_backend.XLA_CPU_OPTION_SETS)
        # Its other inference functions take the recorded choice.
        tac.predict_with_rejection(x, threshold=0.0, verbose=0)
        tac.compile(optimizer="adam")
        tac.evaluate(x, y, verbose=0)
        # So does the feature pass of the scorers and the feature cache.
        next(FeatureExtractor.of(tac).batches(x, batch_size=32, verbose=0))
        assert counted.count == len(jax_backend.XLA_CPU_OPTION_SETS) + 3

    def test_the_feature_pass_chooses_nothing(
        self, trained_cnn, digits, default_options, monkeypatch
    ):
        # The cached fit's pass would pay for the trials: it takes the
        # first option set (or the TAC model's choice) and times nothing.
        over = jax_backend.TunedStep.MIN_SECONDS_TO_CHOOSE
        counted = CountedCompilations(monkeypatch, {0: over, 1: over})
        tac = TACModel(trained_cnn)
        x = digits[1][0][:64]
        for pooled_only in (False, True):
            extractor = FeatureExtractor.of(tac, pooled_only=pooled_only)
            next(extractor.batches(x, batch_size=32, verbose=0))
        assert counted.count == 2
        assert jax_backend.inference_choice(tac) is None

    def test_predict_runs_the_base_and_the_head_as_two_programs(
        self, trained_cnn, digits, default_options, monkeypatch
    ):
        import jax

        tac = TACModel(trained_cnn)
        x = digits[1][0][:64]
        seen = []
        original = TACModel.call

        def call(model, *args, **kwargs):
            given = model.__dict__.get(jax_backend.TRACED_TAPS)
            seen.append("taps" if isinstance(given, str) else type(given))
            return original(model, *args, **kwargs)

        monkeypatch.setattr(TACModel, "call", call)
        got = tac.predict(x, batch_size=64, verbose=0)
        # Traced once as the base and its taps, once as the head on them
        # (with the first option set: these batches are too small to time).
        assert jax_backend.inference_choice(tac) is None
        assert seen.count("taps") == seen.count(list) == 1
        # Oracle: the whole model as one program, with the same options.
        monkeypatch.setattr(TACModel, "call", original)
        trainable = [v.value for v in tac.trainable_variables]
        others = [v.value for v in tac.non_trainable_variables]
        one_program = jax.jit(
            lambda t, n, inputs: tac.stateless_call(t, n, inputs)[0],
            compiler_options=jax_backend.XLA_CPU_OPTION_SETS[0],
        )
        expected = one_program(trainable, others, x)
        for key in got:
            np.testing.assert_allclose(
                got[key], np.asarray(expected[key]), rtol=1e-6, err_msg=key
            )


@pytest.mark.skipif(
    _on_jax_cpu(), reason="off JAX's CPU; there the option sets are chosen"
)
def test_no_choice_off_jax_cpu(trained_cnn, digits):
    tac = TACModel(trained_cnn)
    x = digits[1][0][:64]
    outputs = tac.predict(x, batch_size=32, verbose=0)
    assert outputs["prediction"].shape == (64,)
    assert jax_backend.inference_choice(tac) is None
    assert tac.__dict__.get(jax_backend.TRACED_TAPS) is None
