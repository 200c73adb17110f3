"""Loading saved TAC models with clear errors."""

from keras_tac.src.saving import load_model
from keras_tac.src.saving import upgrade_file
