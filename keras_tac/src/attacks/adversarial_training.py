"""Adversarial training: part of every training batch replaced by PGD
attacks on the model being trained, as in the TAC reference (the first
half of each batch, L-infinity PGD with epsilon 0.3 and 10 steps on
MNIST).

The attacks happen to the data, batch by batch, eagerly, against the
model's current weights (`AdversarialBatches`, a `keras.utils.PyDataset`
wrapper like `keras_tac.src.batch_transforms.TransformedBatches`), so one
code path serves add-on and joint training on every backend. In add-on
mode the base stays frozen: attacks only read its weights.
"""

import math

import keras
import numpy as np

from keras_tac.src import batch_transforms
from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.attacks import gradients
from keras_tac.src.attacks import pgd as pgd_lib


@keras_tac_export("keras_tac.attacks.AdversarialTraining")
class AdversarialTraining:
    """Settings of adversarial training: which part of each training batch
    is replaced by which attack.

    Each training batch of `n` inputs has its first `max(1, floor(n *
    fraction))` inputs replaced by `keras_tac.attacks.pgd` attacks on the
    model as it is at that step (weights of the previous step), with
    their true labels; the rest stays clean. The reference attacks the
    first half of each batch (`fraction=0.5`) with `epsilon=0.3`, 10
    steps of `epsilon / 10` and a random start on MNIST (20/255 on
    CIFAR-10), targeting the base head.

    Use it with `fit` (below), or build the training data of
    `keras.Model.fit` with `training_data`. Training on attacked inputs
    costs about `fraction * (steps + 1)` extra forward and backward passes
    per batch, and cannot use `TACModel.fit`'s cached features.

    Args:
        epsilon: the attack, as in `keras_tac.attacks.pgd`. Defaults to
            `0.3`.
        steps: as in `keras_tac.attacks.pgd`. Defaults to `10`.
        step_size: as in `keras_tac.attacks.pgd`. Defaults to `None`.
        random_start: as in `keras_tac.attacks.pgd`. Defaults to `True`.
        target: as in `keras_tac.attacks.pgd`. Defaults to `"base"`.
        clip: as in `keras_tac.attacks.pgd`. Defaults to `(0.0, 1.0)`.
        confidence_weight: as in `keras_tac.attacks.pgd`. Defaults to
            `0.0`.
        fraction: float in `(0, 1]`. Part of each batch attacked. Defaults
            to `0.5`.
        seed: int or `None`. Seed of the random starts; `None` draws one
            from NumPy's global generator (which
            `keras.utils.set_random_seed` seeds) when the data is built.
            Defaults to `None`.

    Example:

    >>> adversarial = AdversarialTraining(epsilon=0.3, steps=10)
    >>> adversarial.fit(tac, x_train, y_train, epochs=5)  # doctest: +SKIP

    Reference:
        [Madry et al., 2018](https://arxiv.org/abs/1706.06083);
        [Monteiro et al., 2023](https://arxiv.org/abs/2208.14488)
    """

    def __init__(
        self,
        epsilon=0.3,
        steps=10,
        step_size=None,
        fraction=0.5,
        target="base",
        clip=(0.0, 1.0),
        random_start=True,
        confidence_weight=pgd_lib.DEFAULT_CONFIDENCE_WEIGHT,
        seed=None,
    ):
        self.settings = pgd_lib.check_settings(
            epsilon,
            steps,
            step_size,
            random_start,
            target,
            clip,
            # Set per batch: each batch's attacked part at once.
            1,
            confidence_weight,
        )
        validation.check_fraction("fraction", fraction)
        self.fraction = float(fraction)
        self.seed = None if seed is None else validation.check_seed(seed)
        self.step_size = step_size

    def __repr__(self):
        config = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"AdversarialTraining({config})"

    def get_config(self):
        settings = self.settings
        return {
            "epsilon": settings["epsilon"],
            "steps": settings["steps"],
            "step_size": self.step_size,
            "fraction": self.fraction,
            "target": settings["target"],
            "clip": settings["clip"],
            "random_start": settings["random_start"],
            "confidence_weight": settings["confidence_weight"],
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def num_attacked(self, batch_size):
        """How many inputs of a batch of `batch_size` are attacked."""
        return max(1, int(math.floor(batch_size * self.fraction)))

    def training_data(self, model, x, y=None, fit_kwargs=None):
        """The training data of `model.fit` with attacked batches.

        Returns `(x, y, fit_kwargs)` for `keras.Model.fit`: arrays
        become an `AdversarialBatches` (with `batch_size`, `shuffle` and
        `sample_weight` taken from `fit_kwargs`), a `PyDataset` is
        wrapped, a generator mapped. `fit_kwargs["callbacks"]` gains the
        callback that keeps the attacks on the current weights (and stops
        them once training ends, so later passes over the same batches,
        such as `TACModel.fit`'s statistics, read clean inputs).

        Args:
            model: the model `fit` trains (a `TACModel`, or a plain
                classifier with `target="base"`).
            x: training data as `fit` takes it: arrays, a
                `keras.utils.PyDataset` or a generator of `(x, y)` or
                `(x, y, sample_weight)` batches. Not a `tf.data.Dataset`.
            y: the labels when `x` is an array, as `fit` takes them.
            fit_kwargs: dict of the other arguments of `fit`, or `None`.
        """
        # As keras_tac.src.batch_transforms.transformed_data does.
        pgd_lib.check_model(model, self.settings["target"])
        fit_kwargs = dict(fit_kwargs or {})
        seed = self.seed
        if seed is None:
            seed = int(np.random.randint(validation.MAX_SEED))
        if _is_tf_dataset(x):
            raise ValueError(
                "Adversarial training attacks batches eagerly in NumPy and "
                "cannot run inside a tf.data pipeline. Pass arrays, a "
                "keras.utils.PyDataset or a generator (for example "
                "`dataset.as_numpy_iterator()`). Received a tf.data.Dataset"
            )
        if isinstance(x, keras.utils.PyDataset):
            batches = AdversarialBatches(x, model, self, seed)
            data = batches
        elif y is None and not _is_arrays(x):
            batches = AdversarialBatches(None, model, self, seed)
            data = (batches.transform(batch) for batch in x)
        else:
            source = batch_transforms.array_batches(
                x, y, fit_kwargs, "adversarial training"
            )
            batches = AdversarialBatches(source, model, self, seed)
            data = batches
        callbacks = list(fit_kwargs.get("callbacks") or [])
        fit_kwargs["callbacks"] = [*callbacks, AttackCallback(batches)]
        return data, None, fit_kwargs

    def fit(self, model, x, y=None, **fit_kwargs):
        """`model.fit(x, y, **fit_kwargs)` with attacked batches.

        For a `TACModel` this is what `TACModel.fit(..., adversarial=self)`
        does: the TAC objective on the mixed batches (and the base head's
        cross-entropy with `train_base=True`); a frozen base stays exactly
        as it was. The combined confidence's statistics are then fitted on
        the clean training data.

        Returns:
            A `keras.callbacks.History`.
        """
        if pgd_lib.is_tac(model):
            return model.fit(x, y, adversarial=self, **fit_kwargs)
        data, _, fit_kwargs = self.training_data(model, x, y, fit_kwargs)
        return model.fit(data, **fit_kwargs)


class AdversarialBatches(batch_transforms.MappedBatches):
    """The batches of another `PyDataset` with their first inputs attacked.

    Args:
        source: a `keras.utils.PyDataset` yielding `(x, y)` or
            `(x, y, sample_weight)` batches (or `None` when batches are
            passed to `transform` directly).
        model: the model attacked, the one being trained.
        adversarial: an `AdversarialTraining`.
        seed: int. Seed of the random starts (one draw per batch).
    """

    def __init__(self, source, model, adversarial, seed):
        super().__init__(source)
        self.model = model
        self.adversarial = adversarial
        self.rng = np.random.default_rng(seed)
        # Cleared by `AttackCallback` when training ends.
        self.active = True

    def transform(self, batch):
        """One `(x, y[, sample_weight])` batch, its first inputs
        attacked."""
        batch = tuple(batch)
        if len(batch) < 2 or batch[1] is None:
            raise ValueError(
                "Adversarial training needs labelled batches (x, y) or (x, "
                f"y, sample_weight). Received a batch of {len(batch)} item(s)"
            )
        if not self.active:
            return batch
        x, y = batch[0], batch[1]
        adversarial = self.adversarial
        settings = adversarial.settings
        where = "adversarial training"
        x, probabilities = pgd_lib.check_data(
            self.model, x, y, settings["clip"], where
        )
        count = adversarial.num_attacked(len(x))
        seed = int(self.rng.integers(validation.MAX_SEED))
        attacked = pgd_lib.attack_arrays(
            self.model,
            x[:count],
            probabilities[:count],
            dict(settings, batch_size=count),
            seed,
        )
        x = np.concatenate([attacked, x[count:]])
        return (x, y, *batch[2:])


class AttackCallback(keras.callbacks.Callback):
    """Keeps the attacks of `AdversarialBatches` on the weights of the
    current step (Keras's JAX trainer holds them outside the variables
    during an epoch) and stops them when training ends."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def on_train_begin(self, logs=None):
        self.batches.active = True

    def on_train_batch_begin(self, batch, logs=None):
        gradients.record_values(self.batches.model)

    def on_train_end(self, logs=None):
        self.batches.active = False
        gradients.forget_values(self.batches.model)


def _is_tf_dataset(x):
    module = type(x).__module__
    return module.startswith("tensorflow") and hasattr(x, "element_spec")


def _is_arrays(x):
    return validation.is_array_like(x) or isinstance(x, (list, tuple, dict))
