import copy
import math
import warnings

import keras
import numpy as np
from keras import ops

from keras_tac.src import batch_transforms
from keras_tac.src import distribution
from keras_tac.src import feature_cache
from keras_tac.src import jax_backend
from keras_tac.src import keras_internals
from keras_tac.src import rejection
from keras_tac.src import saving
from keras_tac.src import statistics
from keras_tac.src import streaming
from keras_tac.src import tapping
from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.frozen_base import FrozenBaseMixin
from keras_tac.src.layers.combined_confidence import CombinedConfidence
from keras_tac.src.layers.tac_head import SCORES
from keras_tac.src.layers.tac_head import TACHead
from keras_tac.src.layers.tac_head import score_of
from keras_tac.src.losses.tac_loss import TACLoss
from keras_tac.src.losses.tac_loss import class_indices
from keras_tac.src.losses.tac_loss import labels_to_probabilities
from keras_tac.src.validation import model_inputs

BASE_OUTPUTS = ("auto", "logits", "probabilities")
# The model's confidence scores: keras-tac's default, then TAC's own.
MODEL_SCORES = ("combined", *SCORES)


@keras_tac_export("keras_tac.TACModel")
class TACModel(FrozenBaseMixin, keras.Model):
    """A classifier that knows when it is likely wrong: a Total Activation
    Classifier (TAC) on top of a Keras classifier.

    Taps intermediate layers of `base_model` and feeds them to a `TACHead`,
    which turns each tapped activation into a short activation profile
    (pool, project, slice, reduce), concatenates them into `z` and matches
    `z` against fixed binary class codes. Training (`fit`, objective
    `TACLoss`) pulls `z` toward the code of the input's class. At inference,
    the match between `z` and the code of the base head's prediction is a
    confidence score, used to accept, reject or defer (`calibrate`,
    `predict_with_rejection`, `export`).

    In add-on mode (`train_base=False`, the default) the base is frozen
    inside the TAC model and runs in inference mode: its weights and
    predictions stay exactly as they were (the caller's `base_model` is left
    trainable for its own use). With `train_base=True` base and TAC train
    jointly (BatchNorm in training mode), adding the base head's
    cross-entropy to the objective.

    The confidence (`score=`, higher is more confident) is by default
    keras-tac's combined confidence (`keras_tac.layers.CombinedConfidence`):
    the profile's distance to the predicted class's code, the base's log
    max softmax and the kNN distance to the training data, each
    standardised on the data given to `calibrate`, with a gate for inputs
    more novel than the training data. TAC's own scores (see
    `keras_tac.layers.class_scores`) need no statistics. Inputs holding NaN
    or infinite values are never accepted, whatever the score.

    The model's outputs (`predict`, `__call__`) are a dict with
    `"base_output"` (the base head), `"profile"`, `"distances"`,
    `"prediction"`, `"confidence"`, `"tac_prediction"`, `"tac_confidence"`
    and `"input_is_finite"` (with `score="combined"` also
    `"confidence_parts"`, its raw signals), the same in training and
    inference.

    Args:
        base_model: a built Functional or Sequential `keras.Model` whose
            single output is `(batch, num_classes)` logits or probabilities.
        tap_layers: list of layer names, paths (`"backbone/conv_2"`) or
            layers to tap, possibly inside nested sub-models; `None` taps the
            outputs of the resolution stages (see
            `keras_tac.tapping.default_tap_layers`). Defaults to `None`.
        num_slices, projection, slicing, reduction, temperature,
            trainable_temperature: the `TACHead`'s arguments (defaults `16`,
            `"large"`, `"uniform"`, `"mean"`, `10.0`, `False`).
        train_base: bool. Train the base model jointly. Defaults to `False`.
        seed: int in `[0, 2**31 - 1]`. Seed of codes, random slices,
            initializers and regularisers, the same on every backend.
            Defaults to `0`.
        score: str. The confidence score: `"combined"`, or TAC's own
            `"distance"`, `"nearest_distance"` or `"inner_product"`.
            Defaults to `"combined"`.
        cross_entropy_weight, regression_weight, code_noise: the `TACLoss`'s
            arguments (defaults `1.0`, `10.0`, `0.0`).
        base_loss_weight: float. Weight of the base head's cross-entropy in
            joint training. Defaults to `1.0`.
        mixup_alpha: float. Mixup with one `Beta(alpha, alpha)` weight per
            sample during training when positive (the reference uses 0.2 on
            CIFAR-10; see `keras_tac.src.batch_transforms`). Defaults to `0`.
        base_output: str. `"logits"`, `"probabilities"`, or `"auto"` (a
            softmax at the end of the base, nested sub-models included,
            means probabilities). Defaults to `"auto"`.
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
        projection="large",
        train_base=False,
        seed=0,
        slicing="uniform",
        reduction="mean",
        score="combined",
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
        tapping.check_base_model(base_model, train_base)
        validation.check_choice("score", score, MODEL_SCORES)
        validation.check_choice("base_output", base_output, BASE_OUTPUTS)
        validation.check_number("mixup_alpha", mixup_alpha, 0.0, math.inf)
        validation.check_number("base_loss_weight", base_loss_weight)
        self.base_model = base_model
        self.train_base = bool(train_base)
        self.seed = validation.check_seed(seed)
        self.score = score
        self.base_output = base_output
        self.base_loss_weight = float(base_loss_weight)
        self.mixup_alpha = float(mixup_alpha)
        self.base_outputs_probabilities = (
            tapping.ends_in_softmax(base_model)
            if base_output == "auto"
            else base_output == "probabilities"
        )
        self.num_classes = int(base_model.outputs[0].shape[-1])
        self.input_shapes = [tuple(t.shape) for t in base_model.inputs]
        self.head = TACHead(
            self.num_classes,
            num_slices=num_slices,
            projection=projection,
            slicing=slicing,
            reduction=reduction,
            score="distance" if score == "combined" else score,
            temperature=temperature,
            trainable_temperature=trainable_temperature,
            seed=self.seed,
            name="tac_head",
        )
        if tap_layers is None:
            tap_layers = tapping.default_tap_layers(
                base_model, min_width=self.head.block_width
            )
        taps = tapping.resolve_taps(base_model, tap_layers)
        self.tap_layers = [path for path, _ in taps]
        # Shares the base's layers and weights; not tracked, so the weights
        # are saved once, under `base_model`.
        object.__setattr__(
            self, "_tap_model", tapping.tap_model(base_model, taps)
        )
        tapping.build_head(self.head, self._tap_model, self.tap_layers)
        self.confidence_layer = None
        if score == "combined":
            self.confidence_layer = CombinedConfidence(
                self.num_classes,
                [layer.input_width for layer in self.head.profile_layers],
                name="combined_confidence",
            )
        # NaN until `calibrate` sets it: an uncalibrated model does not
        # reject silently, it refuses to decide.
        self.rejection_threshold = self.add_weight(
            name="rejection_threshold",
            shape=(),
            initializer=keras.initializers.Constant(float("nan")),
            trainable=False,
            dtype="float32",
        )
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.tac_loss = TACLoss(
            self.head.codes,
            temperature=self.head.temperature,
            cross_entropy_weight=cross_entropy_weight,
            regression_weight=regression_weight,
            code_noise=code_noise,
            seed=self.seed_generator,
        )
        self.base_accuracy_tracker = keras.metrics.Mean(name="base_accuracy")
        self.tac_accuracy_tracker = keras.metrics.Mean(name="tac_accuracy")
        self.built = True

    @property
    def tap_model(self):
        """A functional model `inputs -> [base output, *tapped tensors]`
        sharing the base's layers and weights."""
        return self._tap_model

    @property
    def codes(self):
        """The class codes, a NumPy array `(num_classes, M)` of +1/-1."""
        return ops.convert_to_numpy(self.head.codes).astype(np.int8)

    @property
    def min_hamming_distance(self):
        """Minimum number of code bits in which two classes differ."""
        from keras_tac.src import codes as codes_lib

        return codes_lib.min_hamming_distance(self.codes)

    @property
    def temperature(self):
        """The temperature variable of the TAC objective."""
        return self.head.temperature

    @property
    def threshold(self):
        """The stored rejection threshold, or `None` before `calibrate`."""
        value = float(ops.convert_to_numpy(self.rejection_threshold))
        return None if math.isnan(value) else value

    def call(self, inputs, training=False):
        train_base = bool(training) and self.train_base
        # On JAX's CPU the predict step is compiled as two programs, the
        # base with its taps and the rest (`jax_backend.TunedStep`).
        given = self.__dict__.get(jax_backend.TRACED_TAPS)
        if given is None or given is jax_backend.TAPS_ONLY:
            tapped = self._tap_model(inputs, training=train_base)
            if given is jax_backend.TAPS_ONLY:
                return list(tapped)
        else:
            tapped = given
        if not self.train_base:
            tapped = [ops.stop_gradient(tensor) for tensor in tapped]
        base_output, taps = tapped[0], tapped[1:]
        head = self.head(taps, training=training)
        prediction = ops.cast(ops.argmax(base_output, axis=-1), "int32")
        outputs = {
            "base_output": base_output,
            "profile": head["profile"],
            "distances": head["distances"],
            "prediction": prediction,
            "confidence": score_of(head["scores"], prediction),
            "tac_prediction": head["tac_prediction"],
            "tac_confidence": head["tac_confidence"],
            "input_is_finite": rejection.finite_per_sample(inputs),
        }
        if self.confidence_layer is not None:
            combined = self.confidence_layer(
                base_output,
                head["pooled"],
                outputs["confidence"],
                probabilities=self.base_outputs_probabilities,
            )
            outputs["confidence"] = combined["confidence"]
            outputs["confidence_parts"] = combined["parts"]
        keys = self.__dict__.get("_output_keys")
        if keys is not None and not training:
            # Only these leave the compiled function (`_predict_outputs`).
            outputs = {key: outputs[key] for key in keys}
        return outputs

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Configures training. The TAC objective and the metrics
        `base_accuracy` and `tac_accuracy` are built in, so `loss` and
        `metrics` must stay `None`. Other arguments go to
        `keras.Model.compile`."""
        if loss is not None:
            raise ValueError(
                "TACModel computes its own objective (`TACLoss`); expected "
                f"loss=None. Received: loss={loss!r}"
            )
        if metrics:
            raise ValueError(
                "TACModel tracks `base_accuracy` and `tac_accuracy` itself; "
                f"expected metrics=None. Received: metrics={metrics!r}"
            )
        super().compile(optimizer=optimizer, **kwargs)
        # Keras drops its compiled functions here: so does `_predict_outputs`.
        self.__dict__.pop("_keyed_predict_functions", None)

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
        loss = self.tac_loss.objective(
            probabilities, y_pred["profile"], training=training
        )
        if self.train_base:
            loss = loss + self.base_loss_weight * (
                keras.losses.categorical_crossentropy(
                    probabilities,
                    ops.cast(y_pred["base_output"], "float32"),
                    from_logits=not self.base_outputs_probabilities,
                )
            )
        if sample_weight is not None:
            loss = loss * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        loss = ops.mean(loss)
        for extra in self.losses:
            loss = loss + ops.cast(extra, "float32")
        # Under a tf.distribute strategy each replica's gradients are summed:
        # Keras's own `compute_loss` divides by the number of replicas too.
        return distribution.scale_loss(loss)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        trackers = (self.base_accuracy_tracker, self.tac_accuracy_tracker)
        self.update_accuracies(trackers, y, y_pred, sample_weight)
        return self.get_metrics_result()

    def update_accuracies(self, trackers, y, y_pred, sample_weight=None):
        """Updates `(base accuracy, TAC accuracy)` trackers on a batch."""
        batch_size = ops.shape(y_pred["profile"])[0]
        labels = class_indices(y, self.num_classes, batch_size)
        for tracker, key in zip(trackers, ("prediction", "tac_prediction")):
            correct = ops.cast(ops.equal(y_pred[key], labels), "float32")
            tracker.update_state(correct, sample_weight=sample_weight)

    def fit(
        self,
        x=None,
        y=None,
        validation_data=None,
        cache_features=None,
        augmentation=None,
        adversarial=None,
        feature_cache_dir=None,
        **kwargs,
    ):
        """Trains the TAC head (and the base, with `train_base=True`).

        Takes the arguments of `keras.Model.fit`, plus `cache_features`,
        `feature_cache_dir`, `augmentation` and `adversarial`.
        With a frozen base, no mixup and arrays as `x`, `y` and
        `validation_data`, every epoch would feed the head the same tapped
        activations: `fit` then runs the base once and trains the head on
        the pooled taps it keeps, with the same loss, metrics, callbacks
        and `History` (see `keras_tac.src.feature_cache`). The cached
        features stay in memory up to
        `keras_tac.config.feature_cache_memory_budget()`, else go to a
        temporary directory removed afterwards, or to `feature_cache_dir`.

        Args:
            cache_features: `None` (cache when valid), `True` (require it;
                an error says why it is not valid) or `False`. With `True`
                (or a `feature_cache_dir`), `x` and `validation_data` may
                also be a finite `tf.data.Dataset` or
                `keras.utils.PyDataset` of `(inputs, labels[, weights])`
                that gives the same batches at every pass (no random
                augmentation): it is read once and streamed to disk.
                Defaults to `None`.
            feature_cache_dir: a directory path, or `None`. Keeps the
                cached features there (on disk, read through memory maps:
                memory does not grow with the number of samples) and reuses
                them in later calls while they match the model (tap layers,
                base weights, tap shapes and dtypes, head configuration)
                and the data (number of samples, a hash of the inputs and
                labels); anything else, an interrupted write included, is
                rebuilt, with a message at `verbose > 0`. Implies
                `cache_features=True`. Example:
                `tac.fit(x, y, feature_cache_dir="/data/tac_cache")`.
                Defaults to `None`.
            augmentation: a layer (called with `training=True`) or callable
                applied to each batch of training inputs (not to
                `validation_data`), e.g. a `keras.layers.Pipeline` of Keras's
                random preprocessing layers; see
                `keras_tac.src.batch_transforms`. Defaults to `None`.
            adversarial: a `keras_tac.attacks.AdversarialTraining`: part
                of each training batch is replaced by attacks on the model
                as it is at that step (no feature cache; not combined with
                `augmentation` or mixup). Defaults to `None`.
            **kwargs: the arguments of `keras.Model.fit`.

        Returns:
            A `keras.callbacks.History`.
        """
        model_inputs.check_data(self, x, y, "fit")
        if isinstance(validation_data, (list, tuple)):
            model_inputs.check_data(self, *validation_data[:2], "fit")
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            # Built here, not inside Keras's first traced step: a
            # tf.function that creates variables is traced twice. In the
            # model's tf.distribute scope, if any, as Keras's fit would.
            with distribution.strategy_scope(self):
                optimizer.build(self.trainable_variables)
        _check_adversarial(
            self, adversarial, cache_features, augmentation, feature_cache_dir
        )
        if adversarial is None and feature_cache.should_cache(
            self,
            x,
            y,
            validation_data,
            cache_features,
            kwargs,
            augmentation,
            feature_cache_dir,
        ):
            history = feature_cache.fit_on_cached_features(
                self, x, y, validation_data, kwargs, feature_cache_dir
            )
        else:
            data = (x, y)
            if augmentation is not None or self.mixup_alpha > 0:
                x, y, kwargs = batch_transforms.transformed_data(
                    x,
                    y,
                    kwargs,
                    augmentation,
                    self.mixup_alpha,
                    self.num_classes,
                )
            if adversarial is not None:
                x, y, kwargs = adversarial.training_data(self, x, y, kwargs)
            history = super().fit(
                x, y, validation_data=validation_data, **kwargs
            )
            if self.confidence_layer is not None:
                self._statistics_after_fit(*data, kwargs)
        _warn_if_tac_learned_little(self, history)
        return history

    def fit_statistics(self, x, y=None, batch_size=None, verbose="auto"):
        """Fits the training statistics of the combined confidence.

        `fit` calls this on its training data; call it yourself when the
        TAC head was trained elsewhere, or with other data. One streaming
        pass: per-tap class means and a shared covariance (Mahalanobis
        novelty) and a bank of at most 4,096 training inputs' features
        (kNN distance). Refitting them invalidates the stored rejection
        threshold: `calibrate` again. Models with another `score` have no
        statistics to fit.

        Args:
            x: training inputs: arrays, or a dataset (of inputs, or of
                `(inputs, labels)`).
            y: labels of array inputs; `None` uses the base head's
                predictions as class labels. Defaults to `None`.
            batch_size, verbose: as in `predict`.
        """
        if self.confidence_layer is None:
            raise ValueError(
                f"`fit_statistics` applies to score='combined' only. This "
                f"model's score is {self.score!r}."
            )
        model_inputs.check_data(self, x, None, "fit_statistics")
        statistics.fit_statistics(self, x, y, batch_size, verbose)
        self.rejection_threshold.assign(float("nan"))

    def _statistics_after_fit(self, x, y, kwargs):
        if not (model_inputs.is_arrays(x) or hasattr(x, "element_spec")) and (
            not isinstance(x, keras.utils.PyDataset)
        ):
            warnings.warn(
                "TACModel.fit: the training data is a generator, which cannot "
                "be read twice: call `fit_statistics(x_train, y_train)` "
                "before `calibrate`.",
                stacklevel=3,
            )
            return
        statistics.fit_after_training(
            self,
            lambda: self.fit_statistics(
                x, y, batch_size=kwargs.get("batch_size"), verbose=0
            ),
        )

    def evaluate(self, x=None, y=None, **kwargs):
        model_inputs.check_data(self, x, y, "evaluate")
        x, y, kwargs = streaming.batches_for_evaluate(x, y, kwargs)
        return super().evaluate(x, y, **kwargs)

    def make_predict_function(self, force=False):
        with jax_backend.inference_compilation(self, split_at_taps=True):
            return super().make_predict_function(force=force)

    def make_test_function(self, force=False):
        with jax_backend.inference_compilation(self):
            return super().make_test_function(force=force)

    def predict(
        self, x, batch_size=None, verbose="auto", steps=None, callbacks=None
    ):
        """`keras.Model.predict`, with array inputs checked first.

        A wrong shape, dtype or an empty batch is a clear error here rather
        than deep in a backend. NaN and infinite values are allowed and
        flagged in `"input_is_finite"`. Returns the model's dict of outputs
        as NumPy arrays.
        """
        model_inputs.check_data(self, x, None, "predict", True)
        if streaming.should_stream(x):
            # One batch at a time: memory flat in the number of samples.
            x = streaming.ArrayBatches(x, batch_size=batch_size)
            batch_size = None
        with jax_backend.state_kept(self):
            return super().predict(
                x,
                batch_size=batch_size,
                verbose=verbose,
                steps=steps,
                callbacks=callbacks,
            )

    def _predict_outputs(self, x, keys, batch_size=None, verbose="auto"):
        """`predict` returning only the outputs `keys`.

        The compiled predict function then returns (and copies off the
        device, batch by batch) only those; it is kept beside Keras's own
        `predict_function` and rebuilt when that one or the settings it was
        compiled with change.
        """
        keys = tuple(keys)
        own = self.predict_function
        settings = (own, self.jit_compile, self.run_eagerly)
        settings += (self.steps_per_execution,)
        functions = self.__dict__.setdefault("_keyed_predict_functions", {})
        kept = functions.get(keys)
        self.predict_function = (
            kept[1] if kept is not None and kept[0] == settings else None
        )
        object.__setattr__(self, "_output_keys", keys)
        try:
            return self.predict(x, batch_size=batch_size, verbose=verbose)
        finally:
            functions[keys] = (settings, self.predict_function)
            self.predict_function = own
            object.__setattr__(self, "_output_keys", None)

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

        Give at most one target: `target_coverage` (accept at least this
        fraction of all inputs), `target_tpr` (of the finite inputs) or
        `target_risk` (a selective risk guaranteed with probability
        `1 - delta`, needs `y`; see `keras_tac.thresholds.risk_threshold`).
        None means `target_coverage=0.9`. The threshold is saved with the
        model and baked into exports.

        Args:
            x: held-out inputs (not the training data): arrays or a dataset.
            y: optional labels of `x`. Defaults to `None`.
            target_coverage, target_tpr: floats in `(0, 1]`, or `None`.
            target_risk, delta: floats in `(0, 1)`, or `None` (`delta`
                defaults to `0.05`).
            batch_size, verbose: as in `predict`.

        Returns:
            A dict: `"threshold"`, `"coverage"` on `x`, `"tpr"` or
            `"risk_bound"` and `"delta"` with those targets, and with `y`
            the base head's `"accuracy"` and `"selective_accuracy"`.
        """
        model_inputs.check_data(self, x, None, "calibrate", True)
        return rejection.calibrate(
            self,
            x,
            y,
            batch_size=batch_size,
            verbose=verbose,
            target_coverage=target_coverage,
            target_tpr=target_tpr,
            target_risk=target_risk,
            delta=delta,
        )

    def predict_with_rejection(
        self, x, threshold=None, batch_size=None, verbose="auto"
    ):
        """Predicts and decides, for each input, to accept or reject.

        Args:
            x: inputs, as for `predict`; samples with NaN or infinite values
                are never accepted.
            threshold: float or `None` (the threshold stored by `calibrate`).
                `inf` rejects every input, `-inf` accepts every finite one.
            batch_size, verbose: as in `predict`.

        Returns:
            A dict of NumPy arrays, one row per input: `"prediction"` (the
            base head's class), `"confidence"` (TAC's confidence in it),
            `"accepted"` (`keras_tac.rejection.accept`), `"tac_prediction"`
            and `"tac_confidence"` (TAC's nearest-code class and its score).
        """
        model_inputs.check_data(self, x, None, "predict_with_rejection", True)
        return rejection.predict_with_rejection(
            self, x, threshold, batch_size, verbose
        )

    def export(
        self, filepath, format="tf_saved_model", threshold=None, **kwargs
    ):
        """Exports the model for serving, with its rejection threshold: a
        SavedModel directory (`format="tf_saved_model"`, TensorFlow and JAX)
        or an ONNX file (`"onnx"`, PyTorch) whose signatures answer
        `predict_with_rejection` in one call. `threshold=None` bakes in the
        calibrated one; `**kwargs` are the options of
        `keras_tac.src.export.export_tac_model`."""
        from keras_tac.src import export as export_lib

        export_lib.export_tac_model(
            self, filepath, format=format, threshold=threshold, **kwargs
        )

    def get_config(self):
        config = super().get_config()
        head = self.head
        config.update(
            {
                "base_model": keras.saving.serialize_keras_object(
                    self.base_model
                ),
                "tap_layers": list(self.tap_layers),
                "num_slices": head.num_slices,
                "projection": head.projection,
                "train_base": self.train_base,
                "seed": self.seed,
                "slicing": head.slicing,
                "reduction": head.reduction,
                "score": self.score,
                "temperature": head.initial_temperature,
                "trainable_temperature": head.trainable_temperature,
                "cross_entropy_weight": self.tac_loss.cross_entropy_weight,
                "regression_weight": self.tac_loss.regression_weight,
                "base_loss_weight": self.base_loss_weight,
                "code_noise": self.tac_loss.code_noise,
                "mixup_alpha": self.mixup_alpha,
                "base_output": self.base_output,
                "format_version": saving.FORMAT_VERSION,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**saving.tac_model_arguments(config))

    def get_compile_config(self):
        return saving.compile_config_with_backend(super().get_compile_config())

    def compile_from_config(self, config):
        saving.compile_from_config_across_backends(self, config)


def _check_adversarial(
    model, adversarial, cache_features, augmentation, feature_cache_dir=None
):
    if adversarial is None:
        return
    if not hasattr(adversarial, "training_data"):
        raise ValueError(
            "Invalid `adversarial`: expected a "
            "`keras_tac.attacks.AdversarialTraining` or None. "
            f"Received: adversarial={adversarial!r}"
        )
    if cache_features or feature_cache_dir is not None:
        raise ValueError(
            "`cache_features=True` (or a `feature_cache_dir`) cannot be "
            "combined with `adversarial`: "
            "attacked inputs change at every step, so their tapped "
            "features cannot be cached."
        )
    if augmentation is not None or model.mixup_alpha > 0:
        raise ValueError(
            "`adversarial` cannot be combined with `augmentation` or "
            f"mixup (mixup_alpha={model.mixup_alpha}): pass one of them."
        )


def _warn_if_tac_learned_little(model, history):
    """Warns when TAC's own training accuracy stayed far below the base's:
    the tapped layers then carry little that TAC can read."""
    logs = getattr(history, "history", None) or {}
    if not logs.get("tac_accuracy") or not logs.get("base_accuracy"):
        return
    tac_accuracy = logs["tac_accuracy"][-1]
    base_accuracy = logs["base_accuracy"][-1]
    chance = 1.0 / model.num_classes
    # Above chance by more than half of what the base is above chance.
    if tac_accuracy - chance > 0.5 * (base_accuracy - chance):
        return
    warnings.warn(
        f"TACModel.fit: TAC's nearest-code accuracy after training is "
        f"{tac_accuracy:.1%} against the base's {base_accuracy:.1%} (chance "
        f"{chance:.1%}): TAC learned little from the taps "
        f"{model.tap_layers}. Try deeper taps (`tap_layers=`, e.g. the "
        "input of the classification head), a larger `projection` "
        "(`'large'`), more epochs or a larger learning rate.",
        stacklevel=3,
    )
