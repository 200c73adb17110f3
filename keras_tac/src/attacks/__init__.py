"""Adversarial inputs (L-infinity PGD) and adversarial training for TAC
models, on every backend (public API: `keras_tac.attacks`)."""
