"""Metrics for confidence scores (pure NumPy)."""

from keras_tac.src.metrics import augrc
from keras_tac.src.metrics import aurc
from keras_tac.src.metrics import average_precision
from keras_tac.src.metrics import best_rejection_threshold
from keras_tac.src.metrics import coverage_at_risk
from keras_tac.src.metrics import detection_rate_at_eer
from keras_tac.src.metrics import e_aurc
from keras_tac.src.metrics import error_detection_metrics
from keras_tac.src.metrics import fpr_at_tpr
from keras_tac.src.metrics import ood_metrics
from keras_tac.src.metrics import rejection_value
from keras_tac.src.metrics import risk_coverage_curve
from keras_tac.src.metrics import roc_auc
from keras_tac.src.metrics import roc_curve
from keras_tac.src.metrics import selective_risk_at_coverage
from keras_tac.src.metrics import value_curve
