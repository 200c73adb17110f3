"""Confidence scores from one forward pass of a TAC model's base.

Baselines (maximum softmax probability, maximum logit, energy, Mahalanobis
distance, deep k-NN) and TAC's own scores, all computed from the same base
model so that comparisons are fair. Every score is "higher = more
confident". See `keras_tac.compare_scores` for a report.
"""

from keras_tac.src.features import FeatureBatch
from keras_tac.src.features import FeatureExtractor
from keras_tac.src.scores.compute import compute_scores
from keras_tac.src.scores.compute import default_scorers
from keras_tac.src.scores.compute import fit_scorers
from keras_tac.src.scores.deep_knn import DeepKNN
from keras_tac.src.scores.logit_scores import Energy
from keras_tac.src.scores.logit_scores import MaxLogit
from keras_tac.src.scores.logit_scores import MaxSoftmaxProbability
from keras_tac.src.scores.mahalanobis import MahalanobisDistance
from keras_tac.src.scores.scorer import Scorer
from keras_tac.src.scores.scorer import load_scorer
from keras_tac.src.scores.scorer import register_scorer
from keras_tac.src.scores.tac_score import TAC_SCORES
from keras_tac.src.scores.tac_score import TACScore
