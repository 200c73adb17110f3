import copy
import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_tac.src import codes as codes_lib
from keras_tac.src import feature_cache
from keras_tac.src import jax_backend
from keras_tac.src import streaming
from keras_tac.src import tapping
from keras_tac.src import thresholds as thresholds_lib
from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.layers.activation_profile import ActivationProfile
from keras_tac.src.layers.code_matching import CodeMatching
from keras_tac.src.layers.tap_projection import PROJECTION_DEPTHS
from keras_tac.src.losses.tac_loss import MAX_TEMPERATURE
from keras_tac.src.losses.tac_loss import MIN_TEMPERATURE
from keras_tac.src.losses.tac_loss import labels_to_probabilities
from keras_tac.src.losses.tac_loss import loss_from_probabilities
from keras_tac.src.losses.tac_loss import static_rank
from keras_tac.src.validation import model_inputs

SCORES = ("distance", "nearest_distance", "inner_product")
BASE_OUTPUTS = ("auto", "logits", "probabilities")
REJECTION_KEYS = (
    "prediction",
    "confidence",
    "accepted",
    "tac_prediction",
    "tac_confidence",
)


@keras_tac_export("keras_tac.TACModel")
class TACModel(keras.Model):
    """A classifier that knows when it is likely wrong: Total Activation
    Classifier (TAC) on top of a Keras classifier.

    Taps intermediate layers of `base_model`, turns each tapped activation
    into a short activation profile (`ActivationProfile`: pool, project,
    slice, reduce), concatenates the profiles into `z` and trains the
    projections so that `z` matches a fixed binary code of the input's class
    (`tac_loss`). At inference the match between `z` and the code of the base
    head's prediction is a confidence score, used to accept, reject or defer.

    In add-on mode (`train_base=False`, the default) the base model is frozen:
    its weights and predictions stay exactly as they were. With
    `train_base=True` base and TAC train jointly (BatchNorm in training mode),
    adding the base head's cross-entropy to the objective.

    Confidence scores (`score=`; higher is more confident), with
    `d_k = ||z - c_k||_1 / M`:

    - `"distance"` (default): `-d_pred`, the negative distance of the profile
      to the predicted class's code. It stays low for garbage inputs, whose
      profiles land far from every code.
    - `"nearest_distance"`: `-min_k d_k`, the distance to the nearest code.
    - `"inner_product"`: `<z, c_pred>`, the reference's score. Unbounded, so
      an input with a large profile (e.g. noise) can look very confident.

    Inputs holding NaN or infinite values are never accepted, whatever the
    score. With the two distance scores, inputs of extreme magnitude (say
    `1e6 * x`) are not accepted either: a ReLU base scales its activations,
    hence the profile, with the input, and the distance to every code
    grows with the profile. `"inner_product"` grows with it instead and
    accepts them. (A base that normalises each input is blind to the scale,
    and so is TAC.)

    The model's outputs (`predict`, `__call__`) are a dict with
    `"base_output"` (the base head), `"profile"`, `"distances"`,
    `"prediction"`, `"confidence"`, `"tac_prediction"`, `"tac_confidence"` and
    `"input_is_finite"`.

    Args:
        base_model: a built `keras.Model` (Functional or Sequential) whose
            single output is `(batch, num_classes)` logits or probabilities.
        tap_layers: list of layer names, paths (`"backbone/conv_2"`) or
            layers to tap, possibly inside nested sub-models; `None` taps the
            last layer of each resolution stage, at most 4 (see
            `keras_tac.tapping.default_tap_layers`). Defaults to `None`.
        num_slices: int. Cap on slices (code bits) per tap. The block width
            is the smallest power of two above `num_classes` (Hadamard codes)
            or, if that exceeds the cap, the cap (random unique codes).
            Defaults to `16`.
        projection: str. `"none"`, `"small"`, `"large"` or `"very_large"`.
            Defaults to `"small"`.
        train_base: bool. Train the base model jointly. Defaults to `False`.
        seed: int in `[0, 2**31 - 1]`. Seed of codes, random slices,
            initializers and regularisers; the codes and slices are the
            same on every backend. Defaults to `0`.
        slicing: str. `"uniform"` or `"random"`. Defaults to `"uniform"`.
        reduction: str. `"mean"` or `"median"`. Defaults to `"mean"`.
        score: str. Default confidence score, one of `"distance"`,
            `"nearest_distance"`, `"inner_product"`. Defaults to
            `"distance"`.
        temperature: float in `[1e-4, 50]`. Defaults to `10.0`.
        trainable_temperature: bool. Train the temperature too (clamped).
            Defaults to `False`, as the reference in effect does.
        cross_entropy_weight: float. Defaults to `1.0`.
        regression_weight: float. Defaults to `10.0`.
        base_loss_weight: float. Weight of the base head's cross-entropy in
            joint training. Defaults to `1.0`.
        code_noise: float in `[0, 1)`. Probability of flipping each code
            entry in the cross-entropy term during training. Defaults to `0`.
        mixup_alpha: float. Mixup with `Beta(alpha, alpha)` during training
            when positive (the reference uses 0.2 on CIFAR-10). Defaults to
            `0`.
        base_output: str. `"logits"`, `"probabilities"`, or `"auto"` (read
            from the output layer's activation). Defaults to `"auto"`.
        **kwargs: `keras.Model` arguments such as `name`.

    Example:

    >>> import keras, numpy as np
    >>> inputs = keras.Input((8, 8, 1))
    >>> h = keras.layers.Conv2D(16, 3, activation="relu", name="conv")(inputs)
    >>> h = keras.layers.GlobalAveragePooling2D()(h)
    >>> h = keras.layers.Dense(16, activation="relu", name="features")(h)
    >>> base = keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))
    >>> tac = TACModel(base, tap_layers=["conv", "features"], num_slices=4)
    >>> tac.codes.shape
    (3, 8)
    >>> tac.compile(optimizer="adam")
    >>> x = np.random.rand(32, 8, 8, 1).astype("float32")
    >>> y = np.random.randint(0, 3, size=32)
    >>> _ = tac.fit(x, y, epochs=1, verbose=0)
    >>> _ = tac.calibrate(x, target_coverage=0.9, verbose=0)
    >>> out = tac.predict_with_rejection(x, verbose=0)
    >>> sorted(out)
    ['accepted', 'confidence', 'prediction', 'tac_confidence', 'tac_prediction']

    Reference:
        [Monteiro et al., 2023](https://arxiv.org/abs/2208.14488)
    """

    def __init__(
        self,
        base_model,
        tap_layers=None,
        num_slices=16,
        projection="small",
        train_base=False,
        seed=0,
        slicing="uniform",
        reduction="mean",
        score="distance",
        temperature=10.0,
        trainable_temperature=False,
        cross_entropy_weight=1.0,
        regression_weight=10.0,
        base_loss_weight=1.0,
        code_noise=0.0,
        mixup_alpha=0.0,
        base_output="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_base_model(base_model)
        _check_choice("projection", projection, tuple(PROJECTION_DEPTHS))
        _check_choice("score", score, SCORES)
        _check_choice("base_output", base_output, BASE_OUTPUTS)
        validation.check_number(
            "temperature", temperature, MIN_TEMPERATURE, MAX_TEMPERATURE
        )
        validation.check_number("code_noise", code_noise, 0.0, 0.999)
        validation.check_number("mixup_alpha", mixup_alpha, 0.0, math.inf)
        for name, value in (
            ("cross_entropy_weight", cross_entropy_weight),
            ("regression_weight", regression_weight),
            ("base_loss_weight", base_loss_weight),
        ):
            validation.check_number(name, value, 0.0, math.inf)
        seed = validation.check_seed(seed)
        if train_base and not base_model.trainable:
            raise ValueError(
                "`train_base=True` but `base_model.trainable` is False. Set "
                "`base_model.trainable = True` or use `train_base=False`."
            )
        self.base_model = base_model
        self.train_base = bool(train_base)
        self.num_slices = num_slices
        self.projection = projection
        self.seed = seed
        self.slicing = slicing
        self.reduction = reduction
        self.score = score
        self.initial_temperature = float(temperature)
        self.trainable_temperature = bool(trainable_temperature)
        self.cross_entropy_weight = float(cross_entropy_weight)
        self.regression_weight = float(regression_weight)
        self.base_loss_weight = float(base_loss_weight)
        self.code_noise = float(code_noise)
        self.mixup_alpha = float(mixup_alpha)
        self.base_output = base_output
        self.base_outputs_probabilities = (
            _ends_in_softmax(base_model)
            if base_output == "auto"
            else base_output == "probabilities"
        )
        if not self.train_base:
            base_model.trainable = False

        if tap_layers is None:
            tap_layers = tapping.default_tap_layers(base_model)
        taps = tapping.resolve_taps(base_model, tap_layers)
        self.tap_layers = [path for path, _ in taps]
        # Shares the base's layers and weights; not tracked, so weights are
        # saved once, under `base_model`.
        object.__setattr__(
            self, "_tap_model", tapping.tap_model(base_model, taps)
        )
        self.num_classes = int(base_model.outputs[0].shape[-1])
        self.input_shapes = [tuple(t.shape) for t in base_model.inputs]

        codes, block_width = codes_lib.class_codes(
            self.num_classes, len(taps), max_block_width=num_slices, seed=seed
        )
        tap_shapes = [tuple(t.shape) for t in self._tap_model.outputs[1:]]
        for (path, _), shape in zip(taps, tap_shapes):
            if len(shape) < 2 or not shape[-1] or shape[-1] < block_width:
                raise ValueError(
                    f"Invalid `num_slices`: tap {path!r} has width "
                    f"{shape[-1]} (output shape {shape}) but each tap needs "
                    f"{block_width} slices (code bits) for {self.num_classes} "
                    f"classes with num_slices={num_slices}. Tap a wider layer "
                    "or lower `num_slices`."
                )
        self.block_width = block_width
        self.profile_layers = []
        for index, shape in enumerate(tap_shapes):
            layer = ActivationProfile(
                num_slices=block_width,
                projection=projection,
                slicing=slicing,
                reduction=reduction,
                seed=(seed + index) % (validation.MAX_SEED + 1),
                name=f"profile_{index}",
            )
            layer.build(shape)
            self.profile_layers.append(layer)
        self.code_matching = CodeMatching(codes, name="code_matching")
        self.temperature = self.add_weight(
            name="temperature",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_temperature),
            trainable=self.trainable_temperature,
            dtype="float32",
        )
        # NaN until `calibrate` sets it: an uncalibrated model rejects nothing
        # silently, it refuses to decide.
        self.rejection_threshold = self.add_weight(
            name="rejection_threshold",
            shape=(),
            initializer=keras.initializers.Constant(float("nan")),
            trainable=False,
            dtype="float32",
        )
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.base_accuracy_tracker = keras.metrics.Mean(name="base_accuracy")
        self.tac_accuracy_tracker = keras.metrics.Mean(name="tac_accuracy")
        self.built = True

    # ------------------------------------------------------------------
    # Properties
    # ------------------------------------------------------------------
    @property
    def codes(self):
        """The class codes, a NumPy array `(num_classes, M)` of +1/-1."""
        codes = ops.convert_to_numpy(self.code_matching.codes)
        return codes.astype(np.int8)

    @property
    def min_hamming_distance(self):
        """Minimum number of code bits in which two classes differ."""
        return codes_lib.min_hamming_distance(self.codes)

    @property
    def threshold(self):
        """The stored rejection threshold, or `None` before `calibrate`."""
        value = float(ops.convert_to_numpy(self.rejection_threshold))
        return None if math.isnan(value) else value

    # ------------------------------------------------------------------
    # Forward pass
    # ------------------------------------------------------------------
    def call(self, inputs, training=False):
        outputs = {}
        cached = feature_cache.is_cached_features(inputs)
        if cached:
            # Pooled taps cached by `fit` (see `keras_tac.feature_cache`):
            # pooling is the identity on them, the base is not run.
            base_output, taps = feature_cache.unpack_cached_features(
                inputs, len(self.profile_layers)
            )
        else:
            if training and self.mixup_alpha > 0:
                inputs, mix_weight, permutation = self._mix(inputs)
                outputs["mixup_weight"] = mix_weight
                outputs["mixup_permutation"] = permutation
            tapped = self._tap_model(
                inputs, training=bool(training) and self.train_base
            )
            base_output, taps = tapped[0], tapped[1:]
        profile = ops.concatenate(
            [
                ops.cast(layer(tap, training=training), "float32")
                for layer, tap in zip(self.profile_layers, taps)
            ],
            axis=-1,
        )
        prediction = ops.cast(ops.argmax(base_output, axis=-1), "int32")
        tac_prediction = self.code_matching.nearest_codes(profile)
        outputs.update(
            {
                "base_output": base_output,
                "profile": profile,
                "prediction": prediction,
                "tac_prediction": tac_prediction,
            }
        )
        if training:
            # What the loss and the metrics read; distances and scores
            # would cost each (eager) training step two dozen more ops.
            return outputs
        distances = self.code_matching(profile)
        outputs.update(
            {
                "distances": distances,
                "confidence": self._score(profile, distances, prediction),
                "tac_confidence": self._score(
                    profile, distances, tac_prediction
                ),
                "input_is_finite": (
                    ops.ones((ops.shape(base_output)[0],), "bool")
                    if cached
                    else _finite_per_sample(inputs)
                ),
            }
        )
        return outputs

    def _score(self, profile, distances, predicted, score=None):
        score = score or self.score
        if score == "nearest_distance":
            return -ops.min(distances, axis=-1)
        if score == "inner_product":
            matches = self.code_matching.inner_products(profile)
        else:
            matches = -distances
        # A masked sum, not `take_along_axis`: torch.export (ONNX export)
        # fixes the batch size of `torch.take_along_dim`.
        chosen = ops.equal(
            ops.expand_dims(ops.cast(predicted, "int32"), axis=-1),
            ops.arange(ops.shape(matches)[-1], dtype="int32"),
        )
        return ops.sum(ops.where(chosen, matches, 0.0), axis=-1)

    def _mix(self, inputs):
        first = keras.tree.flatten(inputs)[0]
        batch_size = ops.shape(first)[0]
        mix_weight = keras.random.beta(
            (), self.mixup_alpha, self.mixup_alpha, seed=self.seed_generator
        )
        permutation = keras.random.shuffle(
            ops.arange(batch_size), seed=self.seed_generator
        )

        def mix(x):
            weight = ops.cast(mix_weight, x.dtype)
            return weight * x + (1 - weight) * ops.take(x, permutation, axis=0)

        mixed = keras.tree.map_structure(mix, inputs)
        mix_weight = ops.broadcast_to(
            ops.cast(mix_weight, "float32"), (batch_size,)
        )
        return mixed, mix_weight, permutation

    # ------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------
    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Configures training. The TAC objective and the metrics
        `base_accuracy` and `tac_accuracy` are built in, so `loss` and
        `metrics` must stay `None`. Other arguments go to
        `keras.Model.compile`."""
        if loss is not None:
            raise ValueError(
                "TACModel computes its own objective (see `tac_loss`); "
                f"expected loss=None. Received: loss={loss!r}"
            )
        if metrics:
            raise ValueError(
                "TACModel tracks `base_accuracy` and `tac_accuracy` itself; "
                f"expected metrics=None. Received: metrics={metrics!r}"
            )
        super().compile(optimizer=optimizer, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            config = dict(config, backend=keras.backend.backend())
        return config

    def compile_from_config(self, config):
        config = dict(config)
        if config.pop("backend", None) != keras.backend.backend():
            # `jit_compile` is XLA on TensorFlow and JAX but torch.compile
            # on PyTorch (minutes for a first predict), and False from
            # PyTorch makes JAX run op by op: use the loading backend's
            # default instead of the saving backend's.
            config.pop("jit_compile", None)
        optimizer = config.pop("optimizer", None)
        if isinstance(optimizer, dict):
            # By class name, not module: a model saved under one backend
            # records that backend's optimizer module (e.g. torch_adam).
            optimizer = keras.optimizers.deserialize(
                {
                    "class_name": optimizer["class_name"],
                    "config": optimizer["config"],
                }
            )
        config = keras.saving.deserialize_keras_object(config)
        self.compile(optimizer=optimizer or "adam", **config)
        if hasattr(self, "optimizer") and self.built:
            self.optimizer.build(self.trainable_variables)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if y is None:
            raise ValueError(
                "TACModel needs class labels to train: pass `y` (integer "
                "labels) to `fit`/`evaluate`, or a dataset of (x, y) pairs."
            )
        if y_pred is None:
            y_pred = self(x, training=training)
        probabilities = labels_to_probabilities(
            y, self.num_classes, batch_size=ops.shape(y_pred["profile"])[0]
        )
        if "mixup_weight" in y_pred:
            weight = ops.expand_dims(y_pred["mixup_weight"], axis=-1)
            shuffled = ops.take(
                probabilities, y_pred["mixup_permutation"], axis=0
            )
            probabilities = weight * probabilities + (1 - weight) * shuffled
        loss = loss_from_probabilities(
            probabilities,
            y_pred["profile"],
            ops.cast(self.code_matching.codes, "float32"),
            temperature=self.temperature,
            cross_entropy_weight=self.cross_entropy_weight,
            regression_weight=self.regression_weight,
            code_noise=self.code_noise if training else 0.0,
            seed=self.seed_generator,
        )
        if self.train_base:
            base_loss = keras.losses.categorical_crossentropy(
                probabilities,
                ops.cast(y_pred["base_output"], "float32"),
                from_logits=not self.base_outputs_probabilities,
            )
            loss = loss + self.base_loss_weight * base_loss
        if sample_weight is not None:
            loss = loss * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        loss = ops.mean(loss)
        for extra in self.losses:
            loss = loss + ops.cast(extra, "float32")
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # `compute_loss` has checked the labels (invalid ones make the
        # loss NaN); here they only need to be class indices.
        rank = static_rank(y)
        if rank is None:
            batch_size = ops.shape(y_pred["profile"])[0]
            labels = ops.argmax(
                labels_to_probabilities(
                    y, self.num_classes, batch_size=batch_size
                ),
                axis=-1,
            )
        elif rank == 2 and y.shape[-1] == self.num_classes > 1:
            labels = ops.argmax(y, axis=-1)
        else:
            labels = ops.reshape(y, (-1,))
        labels = ops.cast(labels, "int32")
        for tracker, key in (
            (self.base_accuracy_tracker, "prediction"),
            (self.tac_accuracy_tracker, "tac_prediction"),
        ):
            correct = ops.cast(ops.equal(y_pred[key], labels), "float32")
            tracker.update_state(correct, sample_weight=sample_weight)
        return self.get_metrics_result()

    def fit(
        self,
        x=None,
        y=None,
        validation_data=None,
        cache_features=None,
        **kwargs,
    ):
        """Trains the TAC add-on (and the base, with `train_base=True`).

        Takes the arguments of `keras.Model.fit`, plus `cache_features`.

        With a frozen base (`train_base=False`), `mixup_alpha=0` and NumPy
        arrays (or tensors) as `x` and `y`, every epoch would feed the
        profile layers the same tapped activations. `fit` then runs the
        base model once over `x` (and array `validation_data`), keeps each
        tap's pooled activations and the base head's output (in memory, or
        in a temporary memory-mapped file above
        `keras_tac.feature_cache.MEMORY_BUDGET_BYTES`) and trains the same
        profile layers on them: the loss, metrics, callbacks and `History`
        are those of the ordinary path, at a fraction of the cost. It says
        so in one log line. Datasets and generators, which may augment at
        random, take the ordinary path.

        Args:
            cache_features: `None`, `True` or `False`. `None` caches when
                it is valid (above), `True` requires it (an error says why
                it is not valid), `False` re-runs the base each step.
                Defaults to `None`.
            **kwargs: the arguments of `keras.Model.fit`.

        Returns:
            A `keras.callbacks.History`.
        """
        self._check_data(x, y, "fit")
        if (
            isinstance(validation_data, (list, tuple))
            and len(validation_data) >= 2
        ):
            self._check_data(validation_data[0], validation_data[1], "fit")
        if cache_features not in (None, True, False):
            raise ValueError(
                "Invalid `cache_features`: expected None, True or False. "
                f"Received: cache_features={cache_features!r}"
            )
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            # Keras builds a TensorFlow model's optimizer inside the traced
            # training step, and a tf.function that creates variables is
            # traced twice: built here, the first epoch traces once.
            optimizer.build(self.trainable_variables)
        if cache_features is not False:
            reason = feature_cache.reason_not_to_cache(self, x, y, kwargs)
            if reason is None:
                return feature_cache.fit_on_cached_features(
                    self, super().fit, x, y, validation_data, kwargs
                )
            if cache_features:
                raise ValueError(
                    "`cache_features=True` but cached-feature training is "
                    f"not valid here: {reason}."
                )
        return super().fit(x, y, validation_data=validation_data, **kwargs)

    def evaluate(self, x=None, y=None, **kwargs):
        self._check_data(x, y, "evaluate")
        if streaming.should_stream(x) and not kwargs.get(
            "_use_cached_eval_dataset"
        ):
            # One batch at a time: memory flat in the number of samples.
            x = streaming.ArrayBatches(
                x,
                y,
                kwargs.pop("sample_weight", None),
                kwargs.pop("batch_size", None),
            )
            y = None
        return super().evaluate(x, y, **kwargs)

    def make_predict_function(self, force=False):
        # Inference only: on JAX's CPU backend, compiler options that keep
        # the tapped network fused (see `keras_tac.jax_backend`).
        with jax_backend.inference_compilation():
            return super().make_predict_function(force=force)

    def make_test_function(self, force=False):
        with jax_backend.inference_compilation():
            return super().make_test_function(force=force)

    def predict(
        self, x, batch_size=None, verbose="auto", steps=None, callbacks=None
    ):
        """`keras.Model.predict`, with array inputs checked first.

        A wrong shape, dtype or an empty batch is a clear error here rather
        than deep in a backend (or, on PyTorch, a silent broadcast). NaN
        and infinite values are allowed and flagged in `"input_is_finite"`.
        Returns the model's dict of outputs as NumPy arrays.
        """
        self._check_data(x, None, "predict", allow_non_finite=True)
        if streaming.should_stream(x):
            # One batch at a time: memory flat in the number of samples.
            x, batch_size = (
                streaming.ArrayBatches(x, batch_size=batch_size),
                None,
            )
        with jax_backend.state_kept(self):
            return super().predict(
                x,
                batch_size=batch_size,
                verbose=verbose,
                steps=steps,
                callbacks=callbacks,
            )

    # ------------------------------------------------------------------
    # Rejection
    # ------------------------------------------------------------------
    def calibrate(
        self,
        x,
        y=None,
        target_coverage=None,
        batch_size=None,
        verbose="auto",
        target_tpr=None,
        target_risk=None,
        delta=None,
    ):
        """Picks and stores the rejection threshold on held-out data.

        Give at most one target (none means `target_coverage=0.9`); the
        threshold `t` accepts an input when its confidence is `>= t`.
        Inputs with non-finite values are never accepted. The maths lives
        in `keras_tac.thresholds`.

        - `target_coverage`: the largest threshold that accepts at least
          this fraction of all calibration inputs (non-finite ones count
          in the total).
        - `target_tpr`: the largest threshold that accepts at least this
          fraction of the finite calibration inputs, read as
          in-distribution data: the true positive rate of OOD detection
          with in-distribution as the positive class (`0.95` is the
          operating point of the FPR-at-95%-TPR metric).
        - `target_risk` (needs `y`): selection with guaranteed risk
          (Geifman & El-Yaniv, 2017). The largest coverage whose error rate
          on accepted inputs is, with probability at least `1 - delta` over
          the draw of the calibration set, at most `target_risk` on new
          data from the same distribution. Raises if no threshold can give
          that guarantee (too few calibration inputs or too low a target).

        The threshold is stored in the model, saved with it and baked into
        exports.

        Args:
            x: held-out inputs (not the training data).
            y: optional integer labels, to report the accuracy on accepted
                inputs; required with `target_risk`.
            target_coverage: float in `(0, 1]`. Fraction of inputs to accept.
                Defaults to `None` (`0.9` if no other target is given).
            batch_size: int or `None`. Defaults to `None` (32).
            verbose: progress bar setting, as in `predict`. Defaults to
                `"auto"`.
            target_tpr: float in `(0, 1]`. Fraction of in-distribution
                inputs to accept. Defaults to `None`.
            target_risk: float in `(0, 1)`. Guaranteed upper bound on the
                error rate of accepted inputs. Defaults to `None`.
            delta: float in `(0, 1)`. Probability that the `target_risk`
                guarantee fails. Only with `target_risk`. Defaults to `None`
                (`0.05`).

        Returns:
            A dict with `"threshold"`, `"coverage"` (achieved on `x`), with
            `target_tpr` also `"tpr"`, with `target_risk` also
            `"risk_bound"` (the `1 - delta` upper bound) and `"delta"`, and,
            when `y` is given, `"accuracy"` and `"selective_accuracy"` of the
            base head (on all and on accepted inputs).
        """
        kind, target, delta = _calibration_target(
            target_coverage, target_tpr, target_risk, delta
        )
        if kind == "risk" and y is None:
            raise ValueError(
                "`target_risk` needs labels: pass `y` (integer labels of the "
                "calibration inputs) to `calibrate`. Received: y=None"
            )
        num_samples = self._check_data(
            x, None, "calibrate", allow_non_finite=True
        )
        if y is not None and num_samples is not None:
            y = validation.check_labels(
                y, self.num_classes, num_samples, "calibrate"
            )
        outputs = self.predict(x, batch_size=batch_size, verbose=verbose)
        confidence = outputs["confidence"]
        valid = outputs["input_is_finite"] & np.isfinite(confidence)
        if not valid.any():
            raise ValueError(
                "Cannot calibrate: no calibration input gave a finite "
                "confidence (all inputs are non-finite)."
            )
        correct = None
        if y is not None:
            labels = y.argmax(axis=1) if y.ndim == 2 else y
            correct = outputs["prediction"] == labels
        threshold, extra = _calibration_threshold(
            kind, target, delta, np.where(valid, confidence, np.nan), correct
        )
        self.rejection_threshold.assign(threshold)
        accepted = valid & (confidence >= threshold)
        summary = {"threshold": threshold, "coverage": float(accepted.mean())}
        if kind == "tpr":
            summary["tpr"] = float(accepted[valid].mean())
        summary.update(extra)
        if correct is not None:
            summary["accuracy"] = float(correct.mean())
            summary["selective_accuracy"] = float(correct[accepted].mean())
        return summary

    def predict_with_rejection(
        self, x, threshold=None, batch_size=None, verbose="auto"
    ):
        """Predicts and decides, for each input, to accept or reject.

        Args:
            x: inputs, as for `predict`. Samples holding NaN or infinite
                values are allowed and are never accepted.
            threshold: float or `None`. Overrides the threshold stored by
                `calibrate` (a NumPy scalar or 0-d array is fine; `inf`
                rejects every input, `-inf` accepts every finite one; NaN
                is an error). Defaults to `None`.
            batch_size: int or `None`. Defaults to `None` (32).
            verbose: progress bar setting, as in `predict`. Defaults to
                `"auto"`.

        Returns:
            A dict of NumPy arrays with one row per input:
            `"prediction"` (int32, the base head's class), `"confidence"`
            (float32, TAC's confidence in it; higher is more confident),
            `"accepted"` (bool, `confidence >= threshold` and finite input),
            `"tac_prediction"` (int32, TAC's nearest-code class) and
            `"tac_confidence"` (float32, the confidence in that class).
        """
        if threshold is None:
            threshold = self.threshold
            if threshold is None:
                raise ValueError(
                    "No rejection threshold: call `calibrate(x_val, y_val)` "
                    "first, or pass `threshold=`."
                )
        else:
            threshold = _check_threshold(threshold)
        self._check_data(
            x, None, "predict_with_rejection", allow_non_finite=True
        )
        outputs = self.predict(x, batch_size=batch_size, verbose=verbose)
        confidence = outputs["confidence"]
        with np.errstate(invalid="ignore", over="ignore"):
            accepted = (
                outputs["input_is_finite"]
                & np.isfinite(confidence)
                & (confidence >= threshold)
            )
        result = {
            key: outputs[key] for key in REJECTION_KEYS if key != "accepted"
        }
        result["accepted"] = accepted
        return {key: result[key] for key in REJECTION_KEYS}

    def export(
        self,
        filepath,
        format="tf_saved_model",
        threshold=None,
        verbose=None,
        **kwargs,
    ):
        """Exports the model for serving, with its rejection threshold.

        Like `keras.Model.export`, but the artifact answers the
        `predict_with_rejection` question in one call. Its inputs are the
        base model's inputs (any batch size, named after them) and its
        outputs, one row per input:

        - `"prediction"` (int32), `"confidence"` (float32), `"accepted"`
          (bool), `"tac_prediction"` (int32), `"tac_confidence"`
          (float32), as `predict_with_rejection` returns them; an input
          with a NaN or infinite value is never accepted (its predictions
          are then unspecified);
        - `"probabilities"` (float32, `(batch, num_classes)`): the softmax
          of the base head's logits, or the head's output as it is when the
          head ends in a softmax (`base_outputs_probabilities`).

        `format="tf_saved_model"` (TensorFlow and JAX backends) writes a
        SavedModel for TF Serving with the signatures `"serving_default"`
        (also `"serve"`; threshold baked in) and `"serve_with_threshold"`
        (an extra input `"threshold"`, float32 of shape `(batch,)`, one
        threshold per input). `format="onnx"` (PyTorch backend) writes one
        ONNX graph, the baked-in-threshold signature, with a dynamic batch
        axis; on PyTorch, `"tf_saved_model"` raises (Keras needs torch_xla
        for it). See `keras_tac.serving` for TF Serving's REST request and
        response formats.

        Args:
            filepath: str or `pathlib.Path`. A directory for
                `"tf_saved_model"`, a file such as `"tac.onnx"` for
                `"onnx"`.
            format: str. `"tf_saved_model"` or `"onnx"`. Defaults to
                `"tf_saved_model"`.
            threshold: float or `None`. The threshold to bake in; `None`
                uses the one stored by `calibrate` and raises if there is
                none. Defaults to `None`.
            verbose: bool or `None`. Print the signatures or the exporter's
                progress. Defaults to `None` (`True`).
            **kwargs: backend options: `jax2tf_kwargs` and `is_static`
                (JAX, as in `keras.export.ExportArchive.add_endpoint`),
                `opset_version` (ONNX).

        Example:

        ```python
        tac.calibrate(x_val, y_val, target_coverage=0.9)
        tac.export("tac_savedmodel/1")  # TF Serving: MODEL_BASE/VERSION
        served = tf.saved_model.load("tac_savedmodel/1")
        out = served.signatures["serving_default"](image=x)
        out["accepted"]
        ```
        """
        from keras_tac.src import export as export_lib

        export_lib.export_tac_model(
            self,
            filepath,
            format=format,
            threshold=threshold,
            verbose=verbose,
            **kwargs,
        )

    def _check_data(self, x, y, where, allow_non_finite=False):
        """Validates arrays up front; datasets by their element spec."""
        if x is None:
            raise ValueError(
                f"`{where}` expected inputs `x` (arrays, or a dataset). "
                "Received: x=None"
            )
        spec = getattr(x, "element_spec", None)
        if spec is not None:
            self._check_element_spec(spec, where)
            return None
        if not model_inputs.is_arrays(x) or feature_cache.is_cached_features(x):
            return None
        num_samples = model_inputs.check_inputs(
            x,
            self.input_shapes,
            where,
            allow_non_finite=allow_non_finite,
            input_names=_input_names(self.base_model),
        )
        if where in ("fit", "evaluate"):
            validation.check_labels(y, self.num_classes, num_samples, where)
        return num_samples

    def _check_element_spec(self, spec, where):
        inputs = spec[0] if isinstance(spec, tuple) else spec
        if isinstance(inputs, dict):
            names = _input_names(self.base_model)
            if sorted(inputs) != sorted(names):
                raise ValueError(
                    f"`{where}` expected dataset inputs with the keys "
                    f"{sorted(names)} (the base model's input names). "
                    f"Received keys {sorted(inputs)}"
                )
            inputs = [inputs[name] for name in names]
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if len(inputs) == len(self.input_shapes):
            for input_spec, expected in zip(inputs, self.input_shapes):
                shape = getattr(input_spec, "shape", None)
                if shape is None or shape.rank is None:
                    continue
                shape = tuple(shape)
                if len(shape) != len(expected) or any(
                    want is not None and got is not None and want != got
                    for want, got in zip(expected[1:], shape[1:])
                ):
                    raise ValueError(
                        f"Invalid dataset for `{where}`: expected batches of "
                        f"inputs of shape {expected} (None = any size). "
                        f"Received element spec shape {shape}"
                    )
        if not isinstance(spec, tuple) or len(spec) < 2:
            if where in ("fit", "evaluate"):
                raise ValueError(
                    f"`{where}` expected a dataset of (inputs, labels) pairs. "
                    f"Received a dataset with element spec {spec}"
                )
            return
        labels = spec[1]
        dtype = getattr(labels, "dtype", None)
        if dtype is not None and not (dtype.is_integer or dtype.is_floating):
            raise TypeError(
                f"`{where}` expected integer labels. Received dtype {dtype}"
            )
        shape = getattr(labels, "shape", None)
        if shape is not None and dtype.is_floating:
            if len(shape) != 2 or shape[-1] != self.num_classes:
                raise TypeError(
                    f"`{where}` expected integer labels, or class "
                    f"probabilities of shape (batch, {self.num_classes}). "
                    f"Received labels of dtype {dtype} and shape {shape}"
                )

    # ------------------------------------------------------------------
    # Serialization
    # ------------------------------------------------------------------
    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "base_model": keras.saving.serialize_keras_object(self.base_model),
            "tap_layers": list(self.tap_layers),
            "num_slices": self.num_slices,
            "projection": self.projection,
            "train_base": self.train_base,
            "seed": self.seed,
            "slicing": self.slicing,
            "reduction": self.reduction,
            "score": self.score,
            "temperature": self.initial_temperature,
            "trainable_temperature": self.trainable_temperature,
            "cross_entropy_weight": self.cross_entropy_weight,
            "regression_weight": self.regression_weight,
            "base_loss_weight": self.base_loss_weight,
            "code_noise": self.code_noise,
            "mixup_alpha": self.mixup_alpha,
            "base_output": self.base_output,
        }

    @classmethod
    def from_config(cls, config):
        # Keras's deserialization consumes nested dicts: keep the caller's.
        config = copy.deepcopy(config)
        config["base_model"] = keras.saving.deserialize_keras_object(
            config["base_model"]
        )
        return cls(**config)


def _check_base_model(base_model):
    if not isinstance(base_model, keras.Model):
        raise TypeError(
            "Invalid `base_model`: expected a built keras.Model (Functional "
            f"or Sequential). Received: {type(base_model).__name__}"
        )
    if not getattr(base_model, "built", False) or not getattr(
        base_model, "inputs", None
    ):
        raise ValueError(
            f"Invalid `base_model`: model {base_model.name!r} is not built (it "
            "has no symbolic inputs). Start it with `keras.Input(shape)` or "
            "call `base_model.build(input_shape)` first."
        )
    if not (
        isinstance(base_model, keras.Sequential)
        or hasattr(base_model, "_run_through_graph")
    ):
        raise TypeError(
            "Invalid `base_model`: expected a Functional or Sequential model, "
            "whose layers can be tapped. Received a subclassed model "
            f"{type(base_model).__name__}"
        )
    outputs = base_model.outputs
    if (
        len(outputs) != 1
        or len(outputs[0].shape) != 2
        or outputs[0].shape[-1] < 2
    ):
        raise ValueError(
            "Invalid `base_model`: expected a classifier with one output of "
            "shape (batch, num_classes >= 2). Received output shapes "
            f"{[tuple(o.shape) for o in outputs]}"
        )


def _calibration_target(target_coverage, target_tpr, target_risk, delta):
    """Validates `calibrate`'s targets: returns `(kind, target, delta)`."""
    given = {
        name: value
        for name, value in (
            ("target_coverage", target_coverage),
            ("target_tpr", target_tpr),
            ("target_risk", target_risk),
        )
        if value is not None
    }
    if len(given) > 1:
        raise ValueError(
            "`calibrate` expected at most one of `target_coverage`, "
            f"`target_tpr`, `target_risk`. Received: {given}"
        )
    if delta is not None and target_risk is None:
        raise ValueError(
            "`delta` only applies with `target_risk`. Received: "
            f"delta={delta!r} and target_risk=None"
        )
    if target_risk is not None:
        validation.check_fraction("target_risk", target_risk, closed=False)
        delta = 0.05 if delta is None else delta
        validation.check_fraction("delta", delta, closed=False)
        return "risk", float(target_risk), float(delta)
    if target_tpr is not None:
        validation.check_fraction("target_tpr", target_tpr)
        return "tpr", float(target_tpr), None
    if target_coverage is None:
        target_coverage = 0.9
    validation.check_fraction("target_coverage", target_coverage)
    return "coverage", float(target_coverage), None


def _calibration_threshold(kind, target, delta, confidence, correct):
    """The threshold for a target, and extra entries for the summary.
    `confidence` holds NaN for inputs that are never accepted."""
    if kind == "coverage":
        return thresholds_lib.coverage_threshold(confidence, target), {}
    if kind == "tpr":
        return thresholds_lib.tpr_threshold(confidence, target), {}
    result = thresholds_lib.risk_threshold(
        confidence, correct, target, delta=delta
    )
    if not result["feasible"]:
        raise ValueError(
            f"Cannot guarantee target_risk={target} with delta={delta} on "
            f"{len(confidence)} calibration inputs: no threshold has an "
            "upper risk bound that low. Use more calibration data, a larger "
            "`target_risk` or a larger `delta`."
        )
    return result["threshold"], {
        "risk_bound": result["risk_bound"],
        "delta": delta,
    }


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(
            f"Invalid `{name}`: expected one of {list(choices)}. "
            f"Received: {name}={value!r}"
        )


def _ends_in_softmax(model):
    layer = tapping._output_layer(model)
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return activation is keras.activations.softmax or (
        isinstance(activation, str) and activation == "softmax"
    )


def _finite_per_sample(inputs):
    finite = None
    for tensor in keras.tree.flatten(inputs):
        if not _is_floating(tensor):
            continue
        flags = ops.isfinite(tensor)
        if len(flags.shape) > 1:
            flags = ops.all(flags, axis=tuple(range(1, len(flags.shape))))
        finite = flags if finite is None else ops.logical_and(finite, flags)
    if finite is None:
        first = keras.tree.flatten(inputs)[0]
        finite = ops.ones((ops.shape(first)[0],), dtype="bool")
    return finite


def _is_floating(tensor):
    return "float" in str(getattr(tensor, "dtype", "float"))


def _input_names(model):
    """The names by which a dict of inputs is matched to `model.inputs`."""
    try:
        structure = model.input
    except (AttributeError, ValueError):
        # Sequential models may have `inputs` but no `input` structure.
        structure = None
    if isinstance(structure, dict):
        return sorted(structure)
    return [tensor.name for tensor in model.inputs]


def _check_threshold(threshold):
    if np.ndim(threshold) == 0 and isinstance(threshold, np.ndarray):
        threshold = threshold.item()
    if (
        isinstance(threshold, (bool, np.bool_))
        or not isinstance(threshold, numbers.Real)
        or math.isnan(threshold)
    ):
        raise ValueError(
            "Invalid `threshold`: expected a number (not NaN). "
            f"Received: threshold={threshold!r}"
        )
    return float(threshold)
