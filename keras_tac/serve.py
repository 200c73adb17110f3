"""A KServe model server for an exported `TACModel`.

    python -m keras_tac.serve --model PATH --name mnist_tac --http-port 8080

Needs `pip install keras-tac[serve]`. See docs/export.md.
"""

from keras_tac.src.model_server import BatchTooLarge
from keras_tac.src.model_server import TACServingModel
from keras_tac.src.model_server import load_signatures
from keras_tac.src.model_server import main
from keras_tac.src.model_server import serve_models

if __name__ == "__main__":
    main()
