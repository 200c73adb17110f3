"""What a served model decides, for Prometheus, and a drift alarm on its
p-values (NumPy; `ServingMetrics` needs prometheus_client)."""

from keras_tac.src.monitoring import ConformalTestMartingale
from keras_tac.src.monitoring import ServingMetrics
