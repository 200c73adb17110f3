"""Argument and input checks, with messages that name what was expected and
what came.

`checks` (re-exported here) is pure NumPy; `model_inputs` checks model
inputs against a base model and needs Keras."""

from keras_tac.src.validation.checks import MAX_SEED
from keras_tac.src.validation.checks import check_choice
from keras_tac.src.validation.checks import check_class_indices
from keras_tac.src.validation.checks import check_fraction
from keras_tac.src.validation.checks import check_labels
from keras_tac.src.validation.checks import check_number
from keras_tac.src.validation.checks import check_positive_int
from keras_tac.src.validation.checks import check_seed
from keras_tac.src.validation.checks import is_array_like
