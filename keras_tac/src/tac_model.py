import math

import keras
import numpy as np
from keras import ops

from keras_tac.src import calibration
from keras_tac.src import codes as codes_lib
from keras_tac.src import feature_cache
from keras_tac.src import feature_graph
from keras_tac.src import model_parts
from keras_tac.src import rejection
from keras_tac.src import saving
from keras_tac.src import statistics
from keras_tac.src import tapping
from keras_tac.src import training as training_lib
from keras_tac.src import validation
from keras_tac.src.api_export import keras_tac_export
from keras_tac.src.frozen_base import FrozenBaseMixin
from keras_tac.src.layers.calibration_record import CalibrationRecord
from keras_tac.src.layers.calibration_record import load_unset_as_sentinel
from keras_tac.src.layers.combined_confidence import CombinedConfidence
from keras_tac.src.layers.tac_head import SCORES
from keras_tac.src.layers.tac_head import TACHead
from keras_tac.src.losses.tac_loss import TACLoss
from keras_tac.src.validation import model_inputs

BASE_OUTPUTS = ("auto", "logits", "probabilities")
# The model's confidence scores: keras-tac's default, then TAC's own.
MODEL_SCORES = ("combined", *SCORES)
# `compile`'s default learning rate for an add-on head (frozen base).
ADDON_LEARNING_RATE = 1e-2


# The forward pass is keras_tac.src.feature_graph, training
# keras_tac.src.training.
@keras_tac_export("keras_tac.TACModel")
class TACModel(FrozenBaseMixin, keras.Model):
    """A classifier that knows when it is likely wrong: a Total Activation
    Classifier (TAC) on top of a Keras classifier.

    Composes, over `base_model`, a `TACHead` (tapped activations pooled,
    projected, sliced and reduced into a profile `z`, matched against fixed
    binary class codes), a confidence layer (`CombinedConfidence` by
    default) scoring the base head's prediction, and a `TACLoss` that pulls
    `z` toward the code of the input's class in `fit`. `calibrate` stores a
    rejection threshold that `predict_with_rejection` and `export` decide
    with; non-finite inputs are never accepted.

    The outputs (`predict`, `__call__`) are a dict: `"base_output"`,
    `"profile"`, `"distances"`, `"prediction"`, `"confidence"`,
    `"tac_prediction"`, `"tac_confidence"`, `"input_is_finite"` and, with
    the combined confidence, `"confidence_parts"` (its raw signals).

    Args:
        base_model: a built Functional or Sequential `keras.Model` whose
            single output is `(batch, num_classes)` logits or probabilities.
        tap_layers: list of layer names, paths (`"backbone/conv_2"`) or
            layers to tap; `None` taps the outputs of the resolution stages
            (`keras_tac.tapping.default_tap_layers`). Defaults to `None`.
        head: a `keras_tac.layers.TACHead`, or `None` to build it from the
            flat arguments. Default `None`.
        confidence: a `keras_tac.layers.CombinedConfidence` (needs
            `score="combined"`), or `None` to build it from the flat
            arguments. Default `None`.
        loss: a `keras_tac.losses.TACLoss` (bound to the head's codes), or
            `None` to build it from the flat arguments. Default `None`.
        score: str. `"combined"`, or TAC's own `"distance"`,
            `"nearest_distance"` or `"inner_product"`. Defaults to
            `"combined"`.
        num_slices: the `TACHead`'s argument. Defaults to `16`.
        projection: the `TACHead`'s argument. Defaults to `"large"`.
        slicing: the `TACHead`'s argument. Defaults to `"uniform"`.
        reduction: the `TACHead`'s argument. Defaults to `"mean"`.
        temperature: the `TACHead`'s argument. Defaults to `10.0`.
        trainable_temperature: the `TACHead`'s argument. Defaults to
            `False`.
        cross_entropy_weight: the `TACLoss`'s argument. Defaults to `1.0`.
        regression_weight: the `TACLoss`'s argument. Defaults to `10.0`.
        code_noise: the `TACLoss`'s argument. Defaults to `0.0`.
        train_base: bool. `False`: the base is frozen and runs in inference
            mode (the caller's model is left trainable); `True`: it trains
            jointly, adding its cross-entropy times `base_loss_weight`
            (default `1.0`). Defaults to `False`.
        seed: int in `[0, 2**31 - 1]`, or `None` (the given head's seed,
            else `0`). Seeds codes, slices, initializers and noise alike on
            every backend. Defaults to `None`.
        mixup_alpha: float. Mixup with `Beta(alpha, alpha)` weights in
            training when positive. Defaults to `0`.
        base_output: `"logits"`, `"probabilities"` or `"auto"` (a final
            softmax means probabilities; a final `Lambda`, or a custom
            layer without an `activation`, is taken for logits with a
            warning). Defaults to `"auto"`.
        **kwargs: `keras.Model` arguments such as `name`.

    Example:

    >>> import keras, numpy as np
    >>> base = keras.Sequential([keras.Input((8, 8, 1)),
    ...     keras.layers.Conv2D(16, 3, activation="relu", name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(),
    ...     keras.layers.Dense(16, activation="relu", name="features"),
    ...     keras.layers.Dense(3)])
    >>> tac = TACModel(base, tap_layers=["conv", "features"], num_slices=4)
    >>> tac.codes.shape
    (3, 8)
    >>> tac.compile()
    >>> x = np.random.rand(32, 8, 8, 1).astype("float32")
    >>> y = np.random.randint(0, 3, size=32)
    >>> _ = tac.fit(x, y, epochs=1, verbose=0)
    >>> _ = tac.calibrate(x, target_coverage=0.9, verbose=0)
    >>> out = tac.predict_with_rejection(x, verbose=0)
    >>> sorted(out)  # doctest: +NORMALIZE_WHITESPACE
    ['accepted', 'confidence', 'p_value', 'prediction', 'tac_confidence',
     'tac_prediction']

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
        seed=None,
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
        head=None,
        confidence=None,
        loss=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        tapping.check_base_model(base_model, train_base)
        validation.check_choice("score", score, MODEL_SCORES)
        validation.check_choice("base_output", base_output, BASE_OUTPUTS)
        validation.check_number("mixup_alpha", mixup_alpha, 0.0, math.inf)
        validation.check_number("base_loss_weight", base_loss_weight)
        self.base_model = base_model
        self.num_classes = int(base_model.outputs[0].shape[-1])
        self.input_shapes = [tuple(t.shape) for t in base_model.inputs]
        self.train_base = bool(train_base)
        self.score = score
        self.seed = model_parts.model_seed(seed, head)
        self.base_output = base_output
        self.base_outputs_probabilities = (
            tapping.ends_in_softmax(base_model)
            if base_output == "auto"
            else base_output == "probabilities"
        )
        self.base_loss_weight = float(base_loss_weight)
        self.mixup_alpha = float(mixup_alpha)
        self.head = model_parts.head(
            head,
            self.num_classes,
            score,
            self.seed,
            num_slices=num_slices,
            projection=projection,
            slicing=slicing,
            reduction=reduction,
            temperature=temperature,
            trainable_temperature=trainable_temperature,
        )
        self.tap_layers = model_parts.built_taps(self, tap_layers)
        self.confidence_layer = model_parts.confidence_layer(
            confidence, score, self.num_classes, self.head
        )
        self.rejection_threshold = rejection.threshold_variable(self)
        self.calibration_record = CalibrationRecord(
            self.num_classes, name="calibration_record"
        )
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.tac_loss = model_parts.loss(
            loss,
            self.head,
            self.seed_generator,
            cross_entropy_weight=cross_entropy_weight,
            regression_weight=regression_weight,
            code_noise=code_noise,
        )
        self.base_accuracy_tracker = keras.metrics.Mean(name="base_accuracy")
        self.tac_accuracy_tracker = keras.metrics.Mean(name="tac_accuracy")
        self.built = True

    @property
    def tap_model(self):
        """A functional model `inputs -> [base output, *tapped tensors]`
        sharing the base's layers and weights."""
        return feature_graph.tap_model(self)

    @property
    def codes(self):
        """The class codes, a NumPy array `(num_classes, M)` of +1/-1."""
        return ops.convert_to_numpy(self.head.codes).astype(np.int8)

    @property
    def min_hamming_distance(self):
        """Minimum number of code bits in which two classes differ."""
        return codes_lib.min_hamming_distance(self.codes)

    @property
    def temperature(self):
        """The temperature variable of the TAC objective."""
        return self.head.temperature

    @property
    def threshold(self):
        """The stored rejection threshold, or `None` before `calibrate`."""
        return rejection.stored_threshold(self)

    @property
    def class_thresholds(self):
        """The stored per-class thresholds (NumPy `(num_classes,)`), or
        `None` unless calibrated with `per_class=True`."""
        return self.calibration_record.per_class

    def call(self, inputs, training=False):
        model_inputs.check_tensors(self, inputs)
        base_output, pooled = feature_graph.pooled_taps(self, inputs, training)
        outputs = feature_graph.head_outputs(
            self, base_output, pooled, training
        )
        del outputs["pooled"], outputs["scores"]
        outputs["input_is_finite"] = rejection.finite_per_sample(inputs)
        return outputs

    def compile(self, optimizer=None, loss=None, metrics=None, **kwargs):
        """`keras.Model.compile` with TAC's defaults: the objective
        (`TACLoss`) and the metrics `base_accuracy` and `tac_accuracy` are
        built in, so `loss` and `metrics` stay `None`.

        `optimizer=None` (the default) is Adam at a learning rate of
        `1e-2` for an add-on head (`train_base=False`: the head is small
        and converges in far fewer steps than at Keras's `1e-3`; measured
        in docs/architectures.md, "Small data"), and Keras's Adam (`1e-3`)
        when the base trains too. Any optimizer or name is used as given.
        """
        if loss is not None or metrics:
            raise ValueError(
                "TACModel computes its own objective (`TACLoss`) and metrics "
                "(`base_accuracy`, `tac_accuracy`); expected loss=None and "
                f"metrics=None. Received: loss={loss!r}, metrics={metrics!r}"
            )
        if optimizer is None:
            optimizer = keras.optimizers.Adam(
                ADDON_LEARNING_RATE if not self.train_base else 1e-3
            )
        super().compile(optimizer=optimizer, **kwargs)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if y_pred is None:
            y_pred = self(x, training=training)
        return training_lib.objective(self, y, y_pred, sample_weight, training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        trackers = (self.base_accuracy_tracker, self.tac_accuracy_tracker)
        training_lib.update_accuracies(
            trackers, self.num_classes, y, y_pred, sample_weight
        )
        return self.get_metrics_result()

    def fit(self, x=None, y=None, **kwargs):
        """`keras.Model.fit` for the TAC head (and the base, with
        `train_base=True`), then the combined confidence's statistics.

        Without `epochs` (or with `epochs="auto"`), the head trains until
        its loss stops improving (the validation loss, with validation
        data), within a budget of at least 2,000 optimizer steps: on
        small data an epoch is a few steps, and one number of epochs
        does not fit all. Without validation data, and with a frozen
        base right on 99% of the training data, it stops sooner once TAC
        is right there as often as the base (trained on, the head
        overfits small sets). An
        explicit `epochs` keeps Keras's meaning.
        `fit` warns when the head ends under-trained: still improving, or
        less accurate than the base on the training data.

        Args:
            x: training inputs (arrays, a `tf.data.Dataset`, a
                `keras.utils.PyDataset` or a generator), as for Keras.
            y: integer class labels when `x` is an array.
            **kwargs: Keras's `fit` arguments (`epochs`, `batch_size`,
                `validation_data`, `callbacks`, ...) and keras-tac's own:
                `cache_features` (`None`: train the head on pooled taps
                computed once when the base is frozen and the batches
                repeat; `True`: require it, also for a finite dataset;
                `False`: never), `feature_cache_dir` (keep and reuse the
                cache in this directory), `augmentation` (a layer or
                callable applied to each training batch) and `adversarial`
                (a `keras_tac.attacks.AdversarialTraining`).

        Returns:
            Keras's `History`.

        Example:

        >>> tac = keras_tac.TACModel(base)  # doctest: +SKIP
        >>> tac.compile()  # doctest: +SKIP
        >>> history = tac.fit(x_train, y_train)  # doctest: +SKIP
        """
        # Documented in full at keras_tac.src.training.fit (the budget
        # without `epochs`: keras_tac.src.training_budget).
        return training_lib.fit(self, super().fit, x, y, **kwargs)

    def jax_state_sync(self):
        # While a cached-feature `fit` trains the head, its trainer holds
        # the JAX state that Keras's callbacks read through this.
        trainer = feature_cache.active_trainer(self)
        (trainer if trainer is not None else super()).jax_state_sync()

    def fit_statistics(self, x, y=None, batch_size=None, verbose="auto"):
        """Fits the combined confidence's training statistics (class means
        and covariance per tap, a kNN bank of at most 4,096 inputs) in one
        pass over `x` (arrays or a dataset; `y=None` uses the base head's
        predictions). `fit` calls it; refitting invalidates the threshold.
        """
        if self.confidence_layer is None:
            raise ValueError(
                f"`fit_statistics` applies to score='combined' only. This "
                f"model's score is {self.score!r}."
            )
        statistics.fit_statistics(self, x, y, batch_size, verbose)
        rejection.clear_threshold(self)
        self.calibration_record.set_class_thresholds(None)
        self.calibration_record.set_reference_scores([])

    def calibrate(
        self,
        x,
        y=None,
        target_coverage=None,
        batch_size=None,
        verbose="auto",
        **targets,
    ):
        """Picks and stores the rejection threshold(s) on held-out data.

        `predict_with_rejection`, `save` and `export` use what this stores:
        the threshold (or one per predicted class) and the held-out
        confidences behind the `"p_value"` output. What each target
        promises, and under which assumption, is in
        `keras_tac.thresholds`.

        Args:
            x: held-out inputs, not used for training (arrays, a
                `tf.data.Dataset` or a `keras.utils.PyDataset`).
            y: their integer labels, or `None`. Needed for `target_risk`;
                with labels, the summary also gives the accuracy.
            target_coverage: float in (0, 1]. Accept at least this
                fraction of `x`; with `delta`, a coverage that holds on
                future inputs with probability `1 - delta`. Defaults to
                0.9 when no other target is given.
            batch_size: int. Batch size of the inference pass.
            verbose: Keras's progress-bar setting.
            **targets: `target_tpr` (accept at least this fraction of the
                finite inputs), `target_risk` (the error rate among
                accepted future inputs is at most this, with probability
                `1 - delta`; with `target_coverage` too, both hold at
                once), `delta` (default 0.05), `method` (`"ltt"`,
                Learn-then-Test, the default; or `"sgr"`) and `per_class`
                (`True`: one threshold per predicted class).

        Returns:
            A dict: `"threshold"` (`None` with `per_class=True`) and
            `"class_thresholds"`, `"coverage"` on `x`, and where they
            apply `"tpr"`, `"delta"`, `"method"`, `"risk_bound"`,
            `"num_tuning"`, `"accuracy"`, `"selective_accuracy"`,
            `"knn_error_auroc"` and `"knn_weight"` (with labels, the kNN
            distance is left out of the default confidence when it ranks
            the base's errors with an AUROC of 0.6 or less).

        Raises:
            ValueError: bad targets, labels missing for `target_risk`, or
                targets that `x` cannot meet (the message names how many
                calibration inputs would be needed).

        Example:

        >>> summary = tac.calibrate(  # doctest: +SKIP
        ...     x_val, y_val, target_risk=0.01, delta=0.1
        ... )
        """
        # Documented in full at keras_tac.src.calibration.calibrate.
        return calibration.calibrate(
            self, x, y, batch_size, verbose, target_coverage, **targets
        )

    def predict_with_rejection(
        self, x, threshold=None, batch_size=None, verbose="auto"
    ):
        """Predicts and decides, for each input, to accept or reject:
        `"prediction"`, `"confidence"`, `"accepted"`, `"tac_prediction"`,
        `"tac_confidence"` and `"p_value"` (conformal, against the held-out
        confidences of `calibrate`), NumPy arrays with a row per input.
        `threshold=None` uses the calibrated one(s); non-finite inputs are
        never accepted (`keras_tac.rejection.accept`)."""
        return rejection.predict_with_rejection(
            self, x, threshold, batch_size, verbose
        )

    def export(
        self, filepath, format="tf_saved_model", threshold=None, **kwargs
    ):
        """Exports the model for serving with its rejection threshold: a
        SavedModel (TensorFlow, JAX) or an ONNX file (PyTorch) answering
        `predict_with_rejection`.
        """
        # Documented in full at keras_tac.src.export.export_tac_model.
        from keras_tac.src import export as export_lib

        export_lib.export_tac_model(
            self, filepath, format=format, threshold=threshold, **kwargs
        )

    def load_own_variables(self, store):
        # The NaN "unset" threshold of files of keras-tac 0.3 or earlier
        # loads as `UNSET_THRESHOLD` (keras_tac.src.layers.calibration_record).
        load_unset_as_sentinel(self, store, [self.rejection_threshold])

    def get_config(self):
        config = super().get_config()
        config.update(saving.tac_model_config(self))
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**saving.tac_model_arguments(config))

    def get_compile_config(self):
        return saving.compile_config_with_backend(super().get_compile_config())

    def compile_from_config(self, config):
        saving.compile_from_config_across_backends(self, config)
