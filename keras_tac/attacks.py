"""Adversarial inputs and adversarial training (L-infinity PGD), on every
backend. See `docs/adversarial.md` for what TAC does against them."""

from keras_tac.src.attacks.adversarial_training import AdversarialTraining
from keras_tac.src.attacks.pgd import pgd
