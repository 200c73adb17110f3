"""Implementation of keras-tac. Internal: import from the public modules
(`keras_tac`, `keras_tac.layers`, ...), whose contents `api_export.py` names."""
