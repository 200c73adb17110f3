"""Deep k-nearest-neighbour score on normalised penultimate features."""

import keras
import numpy as np

from keras_tac.src import confidence_ops
from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.scores.scorer import Scorer
from keras_tac.src.scores.scorer import register_scorer
from keras_tac.src.scores.scorer import to_scores


@register_scorer
@keras_tac_export("keras_tac.scores.DeepKNN")
class DeepKNN(Scorer):
    """Negative distance to the k-th nearest fit input (Sun et al., 2022).

    Features are the pooled activations of one tap (by default the last
    tap, which with the default taps is the input of the base head, the
    penultimate layer), L2-normalised. The fit pass stores the normalised
    features of the fit inputs (the bank; optionally a random subset); the
    score is `-||u - u_(k)||_2`, with `u_(k)` the k-th nearest bank vector
    (`-keras_tac.layers.knn_distance`, the function the combined confidence
    uses, in float32). Higher = more confident. Labels are not used.

    Args:
        k: int. Which neighbour. Defaults to `10`.
        tap: int. Index of the tap in `tac.tap_layers`. Defaults to `-1`.
        max_bank_size: int or `None`. Keep at most this many fit inputs,
            drawn at random with `seed`. Defaults to `None` (all).
        seed: int. Seed of that draw. Defaults to `0`.
        name: str. Key in reports. Defaults to `"knn"`.

    Example:

    >>> DeepKNN(k=5).needs_fit
    True
    """

    default_name = "knn"
    needs_fit = True

    def __init__(self, k=10, tap=-1, max_bank_size=None, seed=0, name=None):
        super().__init__(name=name)
        validation.check_positive_int("k", k)
        if max_bank_size is not None:
            validation.check_positive_int("max_bank_size", max_bank_size)
        if isinstance(tap, bool) or not isinstance(tap, int):
            raise ValueError(
                f"Invalid `tap`: expected an int index. Received: tap={tap!r}"
            )
        self.k = k
        self.tap = tap
        self.max_bank_size = max_bank_size
        self.seed = seed
        self.bank = None
        self._bank_tensor = None
        self._bank_source = None
        self.reset()

    @property
    def fitted(self):
        return self.bank is not None

    def reset(self):
        self._parts = []
        # Set by `expect`: the bank's rows, drawn before the data comes.
        self._chosen = None
        self._slots = None
        self._bank = None
        self._seen = 0
        self._expected = None

    def expect(self, num_inputs):
        """Announces how many inputs the next `update` calls bring in all.

        With a `max_bank_size` smaller than that, the rows of the bank are
        drawn now, as `finalize` would draw them, and `update` keeps only
        those: memory in `max_bank_size`, not in the number of inputs, and
        the same bank.

        Args:
            num_inputs: int. The total number of inputs to come.
        """
        self.reset()
        if self.max_bank_size is None or num_inputs <= self.max_bank_size:
            return
        rng = np.random.default_rng(self.seed)
        choice = rng.choice(num_inputs, self.max_bank_size, replace=False)
        # Sorted input indices, and each one's row in the bank.
        self._slots = np.argsort(choice)
        self._chosen = choice[self._slots]
        self._expected = int(num_inputs)

    def _pooled(self, features):
        try:
            return features.pooled[self.tap]
        except IndexError:
            raise ValueError(
                f"Invalid `tap`: the TAC model has {len(features.pooled)} "
                f"taps. Received: tap={self.tap}"
            ) from None

    def _normalised(self, features):
        vectors = confidence_ops.l2_normalize(self._pooled(features))
        return keras.ops.convert_to_numpy(vectors)

    def update(self, features, labels):
        vectors = self._normalised(features)
        if self._chosen is None:
            self._parts.append(vectors)
            return
        if self._bank is None:
            self._bank = np.empty(
                (len(self._chosen), vectors.shape[1]), np.float32
            )
        start = self._seen
        low, high = np.searchsorted(self._chosen, [start, start + len(vectors)])
        self._bank[self._slots[low:high]] = vectors[
            self._chosen[low:high] - start
        ]
        self._seen += len(vectors)

    def finalize(self):
        if self._chosen is not None:
            if self._seen != self._expected:
                raise ValueError(
                    f"Scorer {self.name!r} expected {self._expected} fit "
                    f"inputs (`expect`) but received {self._seen}."
                )
            self.bank = self._bank
            self.reset()
            return
        if not self._parts:
            raise self.no_fit_data()
        bank = np.concatenate(self._parts)
        if self.max_bank_size is not None and len(bank) > self.max_bank_size:
            rng = np.random.default_rng(self.seed)
            bank = bank[
                rng.choice(len(bank), self.max_bank_size, replace=False)
            ]
        if len(bank) < self.k:
            raise ValueError(
                f"Invalid `k`: the bank holds {len(bank)} fit inputs, fewer "
                f"than k={self.k}. Use more fit data or a smaller `k`."
            )
        self.bank = bank
        self.reset()

    def score_batch(self, features):
        self.check_fitted()
        queries = self._pooled(features)
        if queries.shape[1] != self.bank.shape[1]:
            raise ValueError(
                f"Scorer {self.name!r} was fitted on features of width "
                f"{self.bank.shape[1]} but received width {queries.shape[1]}: "
                "was it fitted for another model?"
            )
        if self._bank_tensor is None or self._bank_source is not self.bank:
            # Converted once, not once per batch.
            self._bank_tensor = keras.ops.convert_to_tensor(self.bank)
            self._bank_source = self.bank
        distance = confidence_ops.knn_distance(
            queries, self._bank_tensor, self.k
        )
        return -to_scores(distance)

    def get_config(self):
        return {
            "name": self.name,
            "k": self.k,
            "tap": self.tap,
            "max_bank_size": self.max_bank_size,
            "seed": self.seed,
        }

    def get_state(self):
        return {} if self.bank is None else {"bank": self.bank}

    def set_state(self, state):
        if "bank" in state:
            self.bank = np.asarray(state["bank"], dtype=np.float32)
