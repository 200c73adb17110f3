"""Tests of `FrozenBaseMixin`: a TAC model with `train_base=False` counts
the base's variables as non-trainable without touching the caller's model;
with `train_base=True` it trains them."""

import keras
import numpy as np
import pytest
from conftest import make_cnn

import keras_tac


def ids(variables):
    return [id(v) for v in variables]


def base_and_tac(train_base):
    base = make_cnn()
    return base, keras_tac.TACModel(base, train_base=train_base)


class TestFrozenBase:
    def test_base_variables_are_non_trainable(self):
        base, tac = base_and_tac(train_base=False)
        base_ids = set(ids(base.weights))
        assert base_ids and len(base_ids) == len(base.trainable_weights)
        for variables in (tac.trainable_variables, tac.trainable_weights):
            assert variables, "the TAC head must stay trainable"
            assert not base_ids & set(ids(variables))
        for variables in (
            tac.non_trainable_variables,
            tac.non_trainable_weights,
        ):
            assert base_ids <= set(ids(variables))
            # Each variable once.
            assert len(ids(variables)) == len(set(ids(variables)))
        # Every variable of the model is in exactly one of the two lists.
        everything = ids(tac.trainable_variables) + ids(
            tac.non_trainable_variables
        )
        assert sorted(everything) == sorted(set(ids(tac.variables)))

    def test_head_variables_stay_trainable(self):
        _, tac = base_and_tac(train_base=False)
        head = set(ids(tac.head.trainable_weights))
        assert head and head <= set(ids(tac.trainable_variables))

    def test_callers_base_is_left_trainable(self):
        base, tac = base_and_tac(train_base=False)
        assert base.trainable
        assert ids(base.trainable_weights) == ids(base.weights)
        assert all(v.trainable for v in base.weights)
        assert tac.base_model is base

    @pytest.mark.filterwarnings("ignore:.*TAC learned little")
    def test_fit_leaves_the_base_weights(self, digits):
        # The ordinary training path (no cached features): Keras's trainer
        # differentiates and updates `trainable_variables` only. Weight
        # decay would shrink any base variable listed there, even one
        # without gradient.
        (x, y), _ = digits
        base, tac = base_and_tac(train_base=False)
        before = [np.array(w) for w in base.get_weights()]
        head_before = [np.array(w) for w in tac.head.get_weights()]
        tac.compile(optimizer=keras.optimizers.SGD(0.1, weight_decay=0.5))
        tac.fit(x[:32], y[:32], batch_size=16, verbose=0, cache_features=False)
        for a, b in zip(before, base.get_weights()):
            np.testing.assert_array_equal(a, b)
        assert any(
            not np.allclose(a, b)
            for a, b in zip(head_before, tac.head.get_weights())
        )


class TestTrainedBase:
    def test_base_variables_are_trainable(self):
        base, tac = base_and_tac(train_base=True)
        base_ids = set(ids(base.trainable_weights))
        for variables in (tac.trainable_variables, tac.trainable_weights):
            assert base_ids <= set(ids(variables))
        for variables in (
            tac.non_trainable_variables,
            tac.non_trainable_weights,
        ):
            assert not base_ids & set(ids(variables))
        assert base.trainable
