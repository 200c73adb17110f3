"""Internal: see the public `keras_tac.scores`."""
