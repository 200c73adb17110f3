"""TF Serving's REST request and response bodies for exported models, in
pure NumPy (what `keras_tac.serve` uses under KServe)."""

from keras_tac.src.serving import DEFAULT_SIGNATURE
from keras_tac.src.serving import SERVING_OUTPUTS
from keras_tac.src.serving import RequestError
from keras_tac.src.serving import Signature
from keras_tac.src.serving import declared_rows
from keras_tac.src.serving import decode_request
from keras_tac.src.serving import encode_response
from keras_tac.src.serving import onnx_signature
from keras_tac.src.serving import saved_model_signature
