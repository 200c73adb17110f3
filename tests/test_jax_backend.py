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


class TestInferenceCompilerOptions:
    def test_only_on_jax_cpu(self, default_options):
        options = jax_backend.inference_compiler_options()
        if _on_jax_cpu():
            assert options == jax_backend.XLA_CPU_OPTIONS
            assert options is not jax_backend.XLA_CPU_OPTIONS
        else:
            assert options is None

    def test_xla_flags_of_the_user_win(self, default_options, monkeypatch):
        monkeypatch.setenv(
            "XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=eltwise"
        )
        assert jax_backend.inference_compiler_options() is None

    def test_turned_off(self, default_options):
        keras_tac.config.set_jax_cpu_inference_fusion(False)
        assert jax_backend.inference_compiler_options() is None


class TestInferenceCompilation:
    def test_trainer_jit_restored(self, default_options):
        if not ON_JAX:
            with jax_backend.inference_compilation():
                pass
            return
        from keras.src.backend.jax import trainer

        original = trainer.jit
        with pytest.raises(RuntimeError, match="inside"):
            with jax_backend.inference_compilation():
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
            "XLA_CPU_OPTIONS",
            {jax_backend.YNN_FUSION_OPTION: "NOT_A_FUSION_TYPE"},
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
