"""The interface every confidence scorer follows, and saving/loading."""

import json

import keras
import numpy as np

from keras_tac.src.api_export import keras_tac_export

_REGISTRY = {}


def to_scores(tensor):
    """A backend tensor of scores as a float64 NumPy array (what
    `Scorer.score_batch` returns)."""
    return np.asarray(keras.ops.convert_to_numpy(tensor), dtype=np.float64)


@keras_tac_export("keras_tac.scores.register_scorer")
def register_scorer(cls):
    """Class decorator: lets `load_scorer` rebuild `cls` by name."""
    _REGISTRY[cls.__name__] = cls
    return cls


@keras_tac_export("keras_tac.scores.Scorer")
class Scorer:
    """Base class of confidence scorers: one float per input, higher = more
    confident (more likely correct, more likely in-distribution).

    A scorer reads a `FeatureBatch` (one forward pass of the tapped base)
    in `score_batch`. Scorers with `needs_fit = True` first see the fit
    data (the training data of the base model) batch by batch through
    `update`, then `finalize`, so they never hold every activation.
    `keras_tac.scores.fit_scorers` and `compute_scores` drive these passes.

    Fitted state saves to and loads from a `.npz` file (`save`, `load`,
    `keras_tac.scores.load_scorer`): the constructor arguments as JSON
    plus the fitted arrays.

    Args:
        name: str or `None`. Key of the scorer in reports. Defaults to the
            class's `default_name`.
    """

    default_name = "score"
    needs_fit = False

    def __init__(self, name=None):
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(
                "Invalid `name`: expected a non-empty string. "
                f"Received: name={name!r}"
            )
        self.name = name or self.default_name

    @property
    def fitted(self):
        """Whether the scorer can score (always True without a fit)."""
        return True

    def reset(self):
        """Forgets a previous fit, ready for `update` calls."""

    def update(self, features, labels):
        """Accumulates one batch of fit data (`FeatureBatch`, int labels)."""

    def finalize(self):
        """Turns the accumulated statistics into the fitted state."""

    def score_batch(self, features):
        """Scores of one `FeatureBatch`: a float array `(batch,)`."""
        raise NotImplementedError

    def check_fitted(self, when="first"):
        """Raises a `ValueError` if the scorer needs a fit it has not had.

        Args:
            when: str. Ends the message: when to call `fit_scorers`.
        """
        if self.needs_fit and not self.fitted:
            raise ValueError(
                f"Scorer {self.name!r} is not fitted: call "
                "`keras_tac.scores.fit_scorers(tac, x_fit, y_fit, [scorer])` "
                f"{when}."
            )

    def no_fit_data(self):
        """The error `finalize` raises when `update` was never called."""
        return ValueError(
            f"Scorer {self.name!r} saw no fit data: call `update` with at "
            "least one batch before `finalize`."
        )

    def get_config(self):
        """Constructor arguments, JSON-serialisable."""
        return {"name": self.name}

    def get_state(self):
        """Fitted arrays, as a dict of NumPy arrays."""
        return {}

    def set_state(self, state):
        """Restores fitted arrays from `get_state`."""

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def save(self, path):
        """Saves the configuration and fitted state to a `.npz` file.

        Args:
            path: str or path-like, ending in `.npz`.
        """
        path = str(path)
        if not path.endswith(".npz"):
            raise ValueError(
                "Invalid `path`: expected a file name ending in `.npz`. "
                f"Received: path={path!r}"
            )
        self.check_fitted("before saving")
        header = json.dumps(
            {"class_name": type(self).__name__, "config": self.get_config()}
        )
        arrays = {
            f"state/{key}": value for key, value in self.get_state().items()
        }
        np.savez(path, __header__=np.array(header), **arrays)

    @classmethod
    def load(cls, path):
        """Loads a scorer saved with `save`; checks it is a `cls`."""
        scorer = load_scorer(path)
        if not isinstance(scorer, cls):
            raise TypeError(
                f"Expected a saved {cls.__name__}. Received a "
                f"{type(scorer).__name__} in {str(path)!r}"
            )
        return scorer

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


@keras_tac_export("keras_tac.scores.load_scorer")
def load_scorer(path):
    """Loads any scorer saved with `Scorer.save`.

    Args:
        path: str or path-like of a `.npz` file.

    Returns:
        The scorer, fitted as it was saved.
    """
    with np.load(str(path), allow_pickle=False) as data:
        if "__header__" not in data:
            raise ValueError(
                f"{str(path)!r} is not a saved keras_tac scorer: it has no "
                "`__header__` entry."
            )
        header = json.loads(str(data["__header__"]))
        state = {
            key[len("state/") :]: data[key]
            for key in data.files
            if key.startswith("state/")
        }
    class_name = header["class_name"]
    if class_name not in _REGISTRY:
        raise ValueError(
            f"Unknown scorer class {class_name!r} in {str(path)!r}. "
            f"Expected one of {sorted(_REGISTRY)}"
        )
    scorer = _REGISTRY[class_name].from_config(header["config"])
    scorer.set_state(state)
    return scorer
