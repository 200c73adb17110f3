"""Internal: see the public `keras_tac.layers`."""
