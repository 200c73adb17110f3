"""The accept rule and the rejection threshold check."""

from keras_tac.src.rejection import accept
from keras_tac.src.rejection import check_threshold
