"""Fixed binary class codes (pure NumPy)."""

from keras_tac.src.codes import class_codes
from keras_tac.src.codes import hadamard_codes
from keras_tac.src.codes import hadamard_matrix
from keras_tac.src.codes import hadamard_order
from keras_tac.src.codes import min_hamming_distance
from keras_tac.src.codes import random_codes
