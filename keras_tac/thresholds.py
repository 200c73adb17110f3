"""Rejection thresholds chosen on held-out data (pure NumPy)."""

from keras_tac.src.thresholds import benjamini_hochberg
from keras_tac.src.thresholds import conformal_p_values
from keras_tac.src.thresholds import coverage_threshold
from keras_tac.src.thresholds import risk_threshold
from keras_tac.src.thresholds import risk_upper_bound
from keras_tac.src.thresholds import tpr_threshold
