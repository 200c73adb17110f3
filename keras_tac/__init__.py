"""keras-tac: Total Activation Classifiers for Keras 3.

Classifiers that know when they are likely wrong (Monteiro et al., ICLR 2023).
"""

from keras_tac import codes
from keras_tac import layers
from keras_tac import losses
from keras_tac import metrics
from keras_tac import saving
from keras_tac import scores
from keras_tac import thresholds
from keras_tac.evaluation import compare_scores
from keras_tac.evaluation import report_to_markdown
from keras_tac.evaluation import write_report
from keras_tac.tac_model import TACModel

__version__ = "0.1.0"
