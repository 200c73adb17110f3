"""Freezing a wrapped base model inside one model only."""


class FrozenBaseMixin:
    """Makes a `keras.Model` that holds `base_model` count the base's
    variables as non-trainable unless `train_base` is set, without touching
    the caller's model: `base_model.trainable` and its variables' own flags
    stay as they were, so the caller can still train it on its own.

    Keras's trainers read these four properties for what to differentiate,
    update and hand to compiled steps.
    """

    @property
    def trainable_weights(self):
        return self._without_frozen(super().trainable_weights)

    @property
    def trainable_variables(self):
        return self._without_frozen(super().trainable_variables)

    @property
    def non_trainable_weights(self):
        return super().non_trainable_weights + self._frozen(
            super().trainable_weights
        )

    @property
    def non_trainable_variables(self):
        return super().non_trainable_variables + self._frozen(
            super().trainable_variables
        )

    def _frozen(self, variables):
        if self.train_base:
            return []
        base = {id(v) for v in self.base_model.weights}
        return [v for v in variables if id(v) in base]

    def _without_frozen(self, variables):
        frozen = {id(v) for v in self._frozen(variables)}
        return [v for v in variables if id(v) not in frozen]
