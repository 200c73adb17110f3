"""Shared fixtures: small real data and small base models, sized so that the
whole suite runs in minutes on every backend."""

import keras
import numpy as np
import pytest
from keras import ops
from sklearn.datasets import load_digits

import keras_tac


def to_numpy(x):
    """A backend tensor (or array, or list) as a NumPy array."""
    return np.asarray(ops.convert_to_numpy(x))


def assert_allclose(actual, desired, **kwargs):
    """`np.testing.assert_allclose` on tensors of any backend."""
    np.testing.assert_allclose(to_numpy(actual), to_numpy(desired), **kwargs)


@pytest.fixture(autouse=True)
def seeded():
    # Not `clear_session()`: it costs ~0.4 s a test under torch, and no
    # test here depends on global name counters.
    keras.utils.set_random_seed(0)
    yield


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits as `((x_train, y_train), (x_test, y_test))`,
    images float32 in [0, 1] of shape (n, 8, 8, 1), labels int32."""
    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


class Batches(keras.utils.PyDataset):
    """Fixed batches of rows of arrays, made on demand: a dataset that can
    be read again, counting its batch reads in `reads`. A batch is the
    tuple of the arrays' rows, or the rows of the only array."""

    def __init__(self, *arrays, batch_size=64):
        super().__init__()
        self.arrays = arrays
        self.batch_size = batch_size
        self.reads = 0

    def __len__(self):
        return -(-len(self.arrays[0]) // self.batch_size)

    def __getitem__(self, index):
        self.reads += 1
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        items = tuple(array[rows] for array in self.arrays)
        return items if len(items) > 1 else items[0]


def make_cnn(input_shape=(8, 8, 1), num_classes=10, softmax=False, seed=0):
    """A small functional CNN with named blocks: conv_1, conv_2, features."""
    init = keras.initializers.GlorotUniform
    inputs = keras.Input(input_shape, name="image")
    h = keras.layers.Conv2D(
        16,
        3,
        padding="same",
        activation="relu",
        name="conv_1",
        kernel_initializer=init(seed),
    )(inputs)
    h = keras.layers.MaxPooling2D(name="pool_1")(h)
    h = keras.layers.Conv2D(
        32,
        3,
        padding="same",
        activation="relu",
        name="conv_2",
        kernel_initializer=init(seed + 1),
    )(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool_2")(h)
    h = keras.layers.Dense(
        32,
        activation="relu",
        name="features",
        kernel_initializer=init(seed + 2),
    )(h)
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax" if softmax else None,
        name="logits",
        kernel_initializer=init(seed + 3),
    )(h)
    return keras.Model(inputs, outputs, name="cnn")


@pytest.fixture(scope="session")
def trained_cnn_weights(digits):
    """Weights of `make_cnn()` trained briefly on the digits (shared, so
    each test need not retrain the base)."""
    keras.utils.set_random_seed(0)
    (x, y), _ = digits
    model = make_cnn()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=4, batch_size=64, verbose=0)
    return model.get_weights()


def calibrated_tac(digits, trained_cnn_weights):
    """A TACModel on the trained CNN, fit for one epoch and calibrated
    (80% coverage on the first 150 test digits): what the export and
    serving tests ship."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, _) = digits
    base = make_cnn()
    base.set_weights(trained_cnn_weights)
    tac = keras_tac.TACModel(base)
    tac.compile(optimizer=keras.optimizers.Adam(1e-2))
    tac.fit(x_train[:256], y_train[:256], batch_size=64, epochs=1, verbose=0)
    tac.calibrate(x_test[:150], target_coverage=0.8, verbose=0)
    return tac


@pytest.fixture
def trained_cnn(trained_cnn_weights):
    """A fresh `make_cnn()` with the shared trained weights."""
    model = make_cnn()
    model.set_weights(trained_cnn_weights)
    return model


def assert_promises_hold(stdout, at_least):
    """An example's run printed that all of its promises (at least
    `at_least` of them, so that an example checking nothing fails) hold
    against the baselines of the same run (`examples/figures.py`)."""
    import re

    assert "BROKEN" not in stdout, stdout[-3000:]
    found = re.search(r"All (\d+) promises hold\.", stdout)
    assert found, stdout[-3000:]
    assert int(found.group(1)) >= at_least, found.group(0)


FLOAT32_EPS = float(np.finfo(np.float32).eps)


def assert_close_at_scale(actual, desired, terms, err_msg=""):
    """`actual` equals `desired` up to float32 round-off at the values'
    scale: `|actual - desired| <= terms * eps32 * max|desired|`.

    `terms` is the number of float32 roundings that can add up along the
    computation (the fan-ins of the layers on its longest path, plus the
    reductions after them). Two runs of the same computation on another
    CPU, batch size or compiler sum in another order (oneDNN and XLA pick
    kernels per shape and machine, Winograd convolutions among them), so
    each rounding may differ, relative to the magnitude of the values that
    are summed, not to each output element: a bound relative to the
    element (rtol) fails on outputs near zero.
    """
    actual = np.asarray(to_numpy(actual), np.float64)
    desired = np.asarray(to_numpy(desired), np.float64)
    scale = float(np.abs(desired).max()) if desired.size else 0.0
    atol = terms * FLOAT32_EPS * max(scale, np.finfo(np.float32).tiny)
    np.testing.assert_allclose(
        actual, desired, rtol=0.0, atol=atol, err_msg=err_msg
    )


# The slowest tests of the default run on JAX (the slowest backend), each
# 2.5 s or more on 2 CPU cores (pytest --durations=0), mostly compiling
# models of their own: they run with the slow tests (`pytest -m slow`, in
# `.ci/run`), so that the README's test command takes under 4 minutes per
# backend. Node ids without parameters mark every parametrization.
SLOW_IN_DEFAULT_RUN = {
    "tests/test_evaluation.py::TestCompareScores::test_label_rule",
    "tests/test_recipes.py::TestWideResNet::"
    "test_strided_convolution_pads_both_sides",
    "tests/test_rejection.py::TestRejectionOutputs::test_only_the_keys_leave",
    "tests/test_scores.py::TestFitAndSave::test_fit_scorers_label_rule",
    "tests/test_tapping.py::TestDefaultTaps::"
    "test_small_resnet_fills_with_whole_blocks",
    "tests/test_attacks.py::test_matches_foolbox_linf_pgd",
    "tests/test_attacks.py::TestAdversarialTraining::"
    "test_addon_leaves_the_base_bit_identical",
    "tests/test_attacks.py::TestAdversarialTraining::"
    "test_joint_training_trains_the_base",
    "tests/test_attacks.py::TestPGD::test_differentiable_outputs_match_the_model",
    "tests/test_docstrings.py::test_examples_run[keras_tac.src.recipes.recipe]",
    "tests/test_evaluation.py::TestCompareScores::"
    "test_several_ood_sets_and_fitted_scorers",
    "tests/test_evaluation.py::TestReport::test_write_report",
    "tests/test_hostile_inputs.py::TestHostileInputs::"
    "test_extreme_scales_fall_far_below_the_threshold",
    "tests/test_mixed_precision.py::test_train_and_predict",
    "tests/test_recipes.py::TestMnistAugmentation::test_seeded",
    "tests/test_recipes.py::TestMnistAugmentation::"
    "test_crop_box_area_and_ratio",
    "tests/test_recipes.py::TestReferenceRandAugment::"
    "test_operations_against_pil",
    "tests/test_recipes.py::TestReferenceRandAugment::"
    "test_probability_zero_is_identity",
    "tests/test_recipes.py::TestWideResNet::test_structure_of_a_small_one",
    "tests/test_recipes.py::TestWideResNet::"
    "test_add_on_runs_the_base_in_inference_mode",
    "tests/test_rejection.py::TestRejectionOutputs::"
    "test_same_values_as_the_full_predict",
    "tests/test_rejection.py::TestServingAgrees::"
    "test_predict_with_rejection_and_serving_outputs",
    "tests/test_saving.py::TestLegacyFiles::test_loads_with_the_outputs_it_gave",
    "tests/test_scores.py::TestFitAndSave::test_datasets_stream_as_arrays",
    "tests/test_scores.py::TestFitAndSave::test_fit_scorers_on_a_model",
    "tests/test_scores.py::TestFeaturesAndStatelessScores::"
    "test_tac_scores_match_the_model",
    "tests/test_scores.py::TestFeaturesAndStatelessScores::"
    "test_batches_stream_in_order",
    "tests/test_scores.py::TestFeaturesAndStatelessScores::"
    "test_probability_outputs",
    "tests/test_tac_model.py::TestConstruction::test_class_count_extremes[1000]",
    "tests/test_tac_model.py::TestForward::test_outputs_do_not_depend_on_training",
    "tests/test_tac_model.py::TestSaving::test_keras_round_trip",
    "tests/test_batch_transforms.py::TestFit::"
    "test_fit_with_mixup_on_uint8_trains_on_mixed_batches",
    "tests/test_disk_cache.py::TestRebuild::test_changed_data[labels]",
    "tests/test_disk_cache.py::TestRebuild::test_changed_data[fewer]",
    "tests/test_docstrings.py::test_examples_run"
    "[keras_tac.src.recipes.augmentation]",
    "tests/test_docstrings.py::test_examples_run"
    "[keras_tac.src.recipes.lenet_tac]",
    "tests/test_docstrings.py::test_examples_run"
    "[keras_tac.src.recipes.wide_resnet]",
    "tests/test_evaluation.py::TestCompareScores::test_contract_and_values",
    "tests/test_evaluation.py::TestCompareScores::"
    "test_without_fit_data_fitted_scores_are_left_out",
    "tests/test_examples.py::test_saved_model_loads_and_predicts",
    "tests/test_export.py::TestExportOptions::"
    "test_multiple_inputs_and_explicit_threshold",
    "tests/test_feature_cache.py::TestCachedFeatureTraining::test_jit_compile",
    "tests/test_feature_cache.py::TestCachedFeatureTraining::"
    "test_validation_split_on_disk",
    "tests/test_recipes.py::TestReferenceCifar10::test_settings",
    "tests/test_recipes.py::TestReferenceMnist::"
    "test_short_fit_with_the_augmentation_applied",
    "tests/test_recipes.py::TestReferenceRandAugment::"
    "test_output_range_and_config",
    "tests/test_rejection.py::TestRejectionOutputs::"
    "test_graph_model_kept_between_calls",
    "tests/test_scores.py::TestFeaturesAndStatelessScores::"
    "test_logit_scores_against_numpy",
    "tests/test_tac_model.py::TestLabels::test_whole_float_labels_match_integers",
    "tests/test_tac_model.py::TestRegularisers::test_trainable_temperature_trains",
    "tests/test_tapping.py::TestDefaultTaps::test_resnet50_stage_outputs",
    "tests/test_tapping.py::TestDefaultTaps::test_transformer_block_outputs",
    "tests/test_thresholds.py::TestCalibrate::"
    "test_combined_confidence_is_calibrated_on_the_data",
    "tests/test_thresholds.py::TestCalibrate::test_target_risk_and_save_load",
}


def pytest_collection_modifyitems(config, items):
    known = set()
    for item in items:
        node = item.nodeid
        for name in (node, node.split("[")[0]):
            if name in SLOW_IN_DEFAULT_RUN:
                item.add_marker(pytest.mark.slow)
                known.add(name)
    # A renamed test must not leave the default run by accident; only
    # checked when the whole suite is collected.
    if len(items) > 500:
        missing = SLOW_IN_DEFAULT_RUN - known
        assert not missing, f"SLOW_IN_DEFAULT_RUN names no test: {missing}"
