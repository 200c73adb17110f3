"""The reference's training recipes (ServiceNow/tac), runnable by name.

`get("reference_mnist")` and `get("reference_cifar10")` return a `Recipe`:
the base network (`lenet_tac`, `wide_resnet`), its TAC head, optimizer
(`CoupledSGD`), learning-rate schedule and augmentation
(`mnist_augmentation`, `cifar10_augmentation`). See `docs/reference.md`
for each setting next to the reference's.
"""

from keras_tac.src.recipes.augmentation import RandomResizedCrop
from keras_tac.src.recipes.augmentation import RandomUniformNoise
from keras_tac.src.recipes.augmentation import ReferenceRandAugment
from keras_tac.src.recipes.augmentation import cifar10_augmentation
from keras_tac.src.recipes.augmentation import mnist_augmentation
from keras_tac.src.recipes.coupled_sgd import CoupledSGD
from keras_tac.src.recipes.lenet_tac import lenet_tac
from keras_tac.src.recipes.recipe import Recipe
from keras_tac.src.recipes.recipe import get
from keras_tac.src.recipes.recipe import names
from keras_tac.src.recipes.wide_resnet import wide_resnet
