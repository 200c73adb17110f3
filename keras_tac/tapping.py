"""Finding and tapping layers of a base model."""

from keras_tac.src.tapping import default_tap_layers
from keras_tac.src.tapping import layer_paths
from keras_tac.src.tapping import resolve_taps
from keras_tac.src.tapping import tap_model
