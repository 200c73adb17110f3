"""Every `>>>` example in keras-tac's docstrings runs and prints what it
says, on every backend (`doctest`, with NumPy and Keras in scope).
Examples that need a trained model and data say `# doctest: +SKIP`."""

import doctest
import importlib
import pkgutil

import keras
import numpy as np
import pytest

import keras_tac
import keras_tac.src

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(
        keras_tac.src.__path__, prefix="keras_tac.src."
    )
    # Example scripts' helpers and optional-dependency code paths are not
    # library modules with examples.
    if not info.name.endswith("__init__")
)


def examples(module_name):
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [
        test
        for test in finder.find(module, module_name, globs={})
        if test.examples and test.name.startswith(module_name)
    ]


def test_there_are_examples():
    assert sum(len(examples(name)) for name in MODULES) > 40


@pytest.mark.parametrize("module_name", MODULES)
def test_examples_run(module_name):
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    module = importlib.import_module(module_name)
    for test in examples(module_name):
        test.globs = dict(vars(module), np=np, keras=keras, keras_tac=keras_tac)
        keras.utils.set_random_seed(0)
        runner.run(test, out=lambda text: None)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, _failures(module_name)


def _failures(module_name):
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    module = importlib.import_module(module_name)
    report = []
    for test in examples(module_name):
        test.globs = dict(vars(module), np=np, keras=keras, keras_tac=keras_tac)
        runner.run(test, out=report.append)
    return "".join(report)[-4000:]
