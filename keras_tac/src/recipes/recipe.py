import dataclasses
from collections.abc import Callable

import keras

from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.recipes import augmentation
from keras_tac.src.recipes import torch_init
from keras_tac.src.recipes.coupled_sgd import CoupledSGD
from keras_tac.src.recipes.lenet_tac import LENET_TAC_TAPS
from keras_tac.src.recipes.lenet_tac import lenet_tac
from keras_tac.src.recipes.wide_resnet import WIDE_RESNET_TAPS
from keras_tac.src.recipes.wide_resnet import wide_resnet


@keras_tac_export("keras_tac.recipes.Recipe")
@dataclasses.dataclass(frozen=True)
class Recipe:
    """A training recipe: a base network, its TAC head and how to train it.

    Plain data: every setting of the reference's configuration is a field,
    and the methods only build objects from them. Get the reference's
    recipes by name with `keras_tac.recipes.get`; change a setting with
    `dataclasses.replace(recipe, epochs=20)`.

    Three ways to train:

    - add-on (the reference's): `build_tac(base)` on a trained `base`.
      Only the TAC projections train, on a frozen base in inference mode;
      with `train_classification_head` (the reference's MNIST setting) the
      base's output layer `head_layer` trains too, on a copy of `base`
      whose other layers are frozen, with its cross-entropy added to the
      objective (`tac.base_model` is that copy; `base` is left as it was);
    - from scratch: `build_tac(recipe.build_base(), train_base=True)`:
      base and TAC train jointly from a random initialization with the TAC
      objective plus the base head's cross-entropy (BatchNorm in training
      mode, unlike the reference, which keeps its base in inference mode);
    - fine-tuning: `build_tac(base, train_base=True)` on a trained `base`.

    Args:
        name: str. The recipe's name.
        description: str. One line.
        base_builder: callable `(num_classes, input_shape, seed, **kwargs)`
            returning the untrained base `keras.Model`.
        input_shape: tuple. The base's input shape, channels last.
        num_classes: int. The reference's number of classes.
        tap_layers: tuple of str. The tapped layers of the base.
        head_layer: str. The base's classification layer.
        projection: the `TACModel` argument.
        num_slices: the `TACModel` argument.
        slicing: the `TACModel` argument.
        reduction: the `TACModel` argument.
        temperature: the `TACModel` argument.
        code_noise: the `TACModel` argument.
        mixup_alpha: the `TACModel` argument.
        score: the `TACModel` argument (the reference's is
            `"inner_product"`, `<z, c_pred>`).
        cross_entropy_weight: the `TACModel` argument.
        regression_weight: the `TACModel` argument.
        base_loss_weight: the `TACModel` argument.
        train_classification_head: bool. Train `head_layer` in add-on mode.
        learning_rate: float. The initial learning rate.
        momentum: the optimizer's (`CoupledSGD`, PyTorch's SGD).
        weight_decay: the optimizer's (`CoupledSGD`, PyTorch's SGD).
        global_clipnorm: the optimizer's (`CoupledSGD`, PyTorch's SGD).
        milestones: tuple of int. Epochs at which the learning rate is
            multiplied by `gamma` (PyTorch's `MultiStepLR`).
        gamma: float.
        batch_size: the `fit` argument.
        epochs: the `fit` argument.
        augmentation_builder: callable `(seed)` returning the training
            augmentation layer, or `None`.
        reference: str. Where the settings come from.

    Example:

    >>> import keras_tac
    >>> recipe = keras_tac.recipes.get("reference_mnist")
    >>> recipe.batch_size, recipe.epochs, recipe.projection
    (8, 200, 'small')
    >>> [round(recipe.learning_rate_at(e), 6) for e in (0, 5, 100, 150)]
    [0.1, 0.01, 0.001, 0.0001]
    >>> base = recipe.build_base(num_classes=10)
    >>> tac = recipe.build_tac(base)
    >>> tac.optimizer.global_clipnorm
    1.0

    Then `tac.fit(x, y, **recipe.fit_kwargs)`.
    """

    name: str
    description: str
    base_builder: Callable
    input_shape: tuple
    num_classes: int
    tap_layers: tuple
    head_layer: str
    projection: str
    num_slices: int
    slicing: str
    reduction: str
    temperature: float
    code_noise: float
    mixup_alpha: float
    score: str
    cross_entropy_weight: float
    regression_weight: float
    base_loss_weight: float
    train_classification_head: bool
    learning_rate: float
    momentum: float
    weight_decay: float
    milestones: tuple
    gamma: float
    global_clipnorm: float
    batch_size: int
    epochs: int
    augmentation_builder: Callable = None
    reference: str = ""

    def build_base(self, num_classes=None, seed=0, **kwargs):
        """The recipe's base network, untrained (PyTorch's default
        initialization, as the reference).

        Args:
            num_classes: int or `None` (the recipe's `num_classes`).
            seed: int. Seed of the initializers. Defaults to `0`.
            **kwargs: other arguments of `base_builder` (for a Wide ResNet,
                `depth`, `width_multiplier`, `dropout_rate`).

        Returns:
            A functional `keras.Model` from images to logits.
        """
        return self.base_builder(
            num_classes=num_classes or self.num_classes,
            input_shape=self.input_shape,
            seed=seed,
            **kwargs,
        )

    @property
    def tac_kwargs(self):
        """The `TACModel` arguments of the recipe, as a dict."""
        return {
            "tap_layers": list(self.tap_layers),
            "num_slices": self.num_slices,
            "projection": self.projection,
            "slicing": self.slicing,
            "reduction": self.reduction,
            "temperature": self.temperature,
            # The reference never hands its temperature to the optimizer.
            "trainable_temperature": False,
            "code_noise": self.code_noise,
            "mixup_alpha": self.mixup_alpha,
            "score": self.score,
            "cross_entropy_weight": self.cross_entropy_weight,
            "regression_weight": self.regression_weight,
            "base_loss_weight": self.base_loss_weight,
        }

    def build_tac(self, base, train_base=False, seed=0, compile=True):
        """A `TACModel` on `base` with the recipe's taps, projection, codes,
        temperature, code noise and mixup, compiled with its optimizer.

        The projections are initialized as PyTorch's `Linear` layers (the
        reference's). See the class docstring for the three training modes.

        Args:
            base: a `keras.Model` built by `build_base` (trained for add-on
                mode, or not for training from scratch).
            train_base: bool. Train the base jointly with TAC. Defaults to
                `False`.
            seed: int. Seed of the codes, slices, projections and
                regularisers. Defaults to `0`.
            compile: bool. Compile with `build_optimizer()`. Defaults to
                `True`.

        Returns:
            A `keras_tac.TACModel`.
        """
        from keras_tac.src.tac_model import TACModel

        seed = validation.check_seed(seed)
        train_head = self.train_classification_head and not train_base
        if train_head:
            base = _copy_with_trainable_layer(base, self.head_layer)
        tac = TACModel(
            base,
            train_base=bool(train_base) or train_head,
            seed=seed,
            **self.tac_kwargs,
        )
        for tap, profile in enumerate(tac.head.profile_layers):
            for index, dense in enumerate(profile.projector.dense_layers):
                torch_init.reinitialize_dense(
                    dense, torch_init.derived_seed(seed, 1000 + tap), index
                )
        if compile:
            tac.compile(optimizer=self.build_optimizer())
        return tac

    def build_optimizer(self):
        """The recipe's optimizer: PyTorch's SGD (`CoupledSGD`)
        with the recipe's momentum, weight decay and one global
        gradient-norm clip."""
        return CoupledSGD(
            learning_rate=self.learning_rate,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            global_clipnorm=self.global_clipnorm,
        )

    def learning_rate_at(self, epoch, learning_rate=None):
        """The learning rate of epoch `epoch` (0-based): the initial rate
        times `gamma` for each milestone at or before it, as PyTorch's
        `MultiStepLR` stepped once per epoch. `learning_rate` (the current
        one, passed by `keras.callbacks.LearningRateScheduler`) is
        ignored."""
        passed = sum(int(epoch) >= milestone for milestone in self.milestones)
        return float(self.learning_rate * self.gamma**passed)

    def schedule_callback(self):
        """A `keras.callbacks.LearningRateScheduler` that sets
        `learning_rate_at(epoch)` at the start of every epoch."""
        return keras.callbacks.LearningRateScheduler(self.learning_rate_at)

    def augmentation(self, seed=None):
        """A new training augmentation layer, or `None`."""
        if self.augmentation_builder is None:
            return None
        return self.augmentation_builder(seed=seed)

    @property
    def fit_kwargs(self):
        """The `TACModel.fit` arguments: `batch_size`, `epochs`,
        `augmentation` (a new layer) and `callbacks` (the learning-rate
        schedule). Add your own callbacks to the list."""
        return {
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "augmentation": self.augmentation(),
            "callbacks": [self.schedule_callback()],
        }


def _copy_with_trainable_layer(base, layer_name):
    """A copy of `base`, same weights, with only `layer_name` trainable."""
    names = [layer.name for layer in base.layers]
    if layer_name not in names:
        raise ValueError(
            f"The recipe trains the base's classification layer "
            f"{layer_name!r}, but model {base.name!r} has no such layer. "
            "Build the base with `recipe.build_base`. Layers: "
            f"{names}"
        )
    copy = keras.models.clone_model(base)
    copy.set_weights(base.get_weights())
    for layer in copy.layers:
        layer.trainable = layer.name == layer_name
    return copy


REFERENCE_MNIST = Recipe(
    name="reference_mnist",
    description=(
        "LeNet_TAC on 28x28 MNIST digits, TAC on its four LeakyReLU "
        "outputs (ServiceNow/tac, exp_configs.py:16-50)."
    ),
    base_builder=lenet_tac,
    input_shape=(28, 28, 1),
    num_classes=10,
    tap_layers=LENET_TAC_TAPS,
    head_layer="logits",
    projection="small",
    num_slices=16,
    slicing="uniform",
    reduction="mean",
    temperature=10.0,
    code_noise=0.15,
    mixup_alpha=0.0,
    score="inner_product",
    cross_entropy_weight=1.0,
    regression_weight=10.0,
    base_loss_weight=1.0,
    train_classification_head=True,
    learning_rate=0.1,
    momentum=0.9,
    weight_decay=5e-5,
    milestones=(5, 100, 150),
    gamma=0.1,
    global_clipnorm=1.0,
    batch_size=8,
    epochs=200,
    augmentation_builder=augmentation.mnist_augmentation,
    reference="ServiceNow/tac exp_configs.py:16-50, launcher.sh:4-6",
)

REFERENCE_CIFAR10 = Recipe(
    name="reference_cifar10",
    description=(
        "WideResNet-28-10 on 32x32 CIFAR-10 images, TAC on its three group "
        "outputs (ServiceNow/tac, exp_configs.py:52-86)."
    ),
    base_builder=wide_resnet,
    input_shape=(32, 32, 3),
    num_classes=10,
    tap_layers=WIDE_RESNET_TAPS,
    head_layer="logits",
    projection="very_large",
    num_slices=16,
    slicing="uniform",
    reduction="mean",
    temperature=15.0,
    code_noise=0.1,
    mixup_alpha=0.2,
    score="inner_product",
    cross_entropy_weight=1.0,
    regression_weight=10.0,
    base_loss_weight=1.0,
    train_classification_head=False,
    learning_rate=0.01,
    momentum=0.9,
    weight_decay=5e-5,
    milestones=(10, 150, 250, 350),
    gamma=0.1,
    global_clipnorm=1.0,
    batch_size=128,
    # Not in the reference (no CIFAR-10 epoch count anywhere): 50 epochs
    # past its last milestone.
    epochs=400,
    augmentation_builder=augmentation.cifar10_augmentation,
    reference="ServiceNow/tac exp_configs.py:52-86",
)

RECIPES = {
    recipe.name: recipe for recipe in (REFERENCE_MNIST, REFERENCE_CIFAR10)
}


@keras_tac_export("keras_tac.recipes.get")
def get(name):
    """The recipe named `name`.

    Args:
        name: str. `"reference_mnist"` or `"reference_cifar10"` (see
            `names()`).

    Returns:
        A `Recipe`.

    Example:

    >>> get("reference_cifar10").projection
    'very_large'
    """
    if isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise ValueError(
            f"Unknown recipe: expected one of {sorted(RECIPES)}. "
            f"Received: name={name!r}"
        )
    return RECIPES[name]


@keras_tac_export("keras_tac.recipes.names")
def names():
    """The names of the available recipes, sorted.

    Example:

    >>> names()
    ['reference_cifar10', 'reference_mnist']
    """
    return sorted(RECIPES)
