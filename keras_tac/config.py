"""Process-wide settings of keras-tac."""

from keras_tac.src.config import feature_cache_memory_budget
from keras_tac.src.config import jax_cpu_inference_fusion
from keras_tac.src.config import set_feature_cache_memory_budget
from keras_tac.src.config import set_jax_cpu_inference_fusion
