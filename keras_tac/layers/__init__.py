"""Keras layers that compute activation profiles, match them to codes and
turn them into confidences."""

from keras_tac.src.layers.activation_profile import ActivationProfile
from keras_tac.src.layers.calibration_record import CalibrationRecord
from keras_tac.src.layers.code_matching import CodeMatching
from keras_tac.src.layers.code_matching import code_distances
from keras_tac.src.layers.combined_confidence import CombinedConfidence
from keras_tac.src.layers.combined_confidence import knn_distance
from keras_tac.src.layers.combined_confidence import mahalanobis_novelty
from keras_tac.src.layers.slice_reduce import SliceReduce
from keras_tac.src.layers.slice_reduce import slice_indices
from keras_tac.src.layers.tac_head import TACHead
from keras_tac.src.layers.tac_head import class_scores
from keras_tac.src.layers.tac_head import score_of
from keras_tac.src.layers.tap_pooling import TapPooling
from keras_tac.src.layers.tap_projection import TapProjection
