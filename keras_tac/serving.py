"""TF Serving's REST request and response formats for exported models."""

from keras_tac.src.serving import RequestError
from keras_tac.src.serving import decode_request
from keras_tac.src.serving import encode_response
from keras_tac.src.serving import handle
from keras_tac.src.serving import onnx_signature
from keras_tac.src.serving import predict
from keras_tac.src.serving import saved_model_signature
