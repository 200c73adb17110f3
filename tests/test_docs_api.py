"""The API reference (docs/api/*.md, rendered by mkdocstrings) documents every
public symbol once, at its public path, and never an internal one."""

import collections
import importlib
import inspect
import pathlib
import re

import keras_tac.monitoring  # noqa: F401 (not imported by keras_tac)
import keras_tac.serve  # noqa: F401 (not imported by keras_tac: needs KServe)
from keras_tac.src.api_export import EXPORTS

API_DOCS = pathlib.Path(__file__).parent.parent / "docs" / "api"
# Public modules whose names are not all exported with `keras_tac_export`:
# their constants, and `serving`, which must import without keras-tac.
UNDECORATED_MODULES = (
    "keras_tac.datasets",
    "keras_tac.scores",
    "keras_tac.serving",
)
DIRECTIVE = re.compile(r"^:::\s*(\S+)\s*$", re.MULTILINE)


def public_paths():
    paths = set(EXPORTS)
    for module_name in UNDECORATED_MODULES:
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if not name.startswith("_") and not inspect.ismodule(value):
                paths.add(f"{module_name}.{name}")
    return paths


def resolve(path):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def documented_paths():
    return collections.Counter(
        path
        for page in sorted(API_DOCS.glob("*.md"))
        for path in DIRECTIVE.findall(page.read_text())
    )


def test_every_public_symbol_is_documented_once():
    documented = documented_paths()
    missing = sorted(public_paths() - set(documented))
    assert not missing, f"not in docs/api/*.md: {missing}"
    repeated = sorted(path for path, count in documented.items() if count > 1)
    assert not repeated, f"documented more than once: {repeated}"


def test_only_public_symbols_are_documented():
    unknown = sorted(set(documented_paths()) - public_paths())
    assert not unknown, f"not public: {unknown}"


def test_no_page_mentions_internal_modules():
    pages = sorted(API_DOCS.glob("*.md"))
    assert pages
    for page in pages:
        assert "keras_tac.src" not in page.read_text(), page.name


def test_rendered_docstrings_do_not_mention_internal_modules():
    # What mkdocstrings renders: each public symbol's docstring, and those
    # of the public methods and properties its class defines.
    for path in sorted(public_paths()):
        symbol = resolve(path)
        docstrings = {path: inspect.getdoc(symbol) if callable(symbol) else ""}
        if inspect.isclass(symbol):
            for name, member in vars(symbol).items():
                if name == "__init__" or not name.startswith("_"):
                    member = getattr(member, "fget", member)
                    docstrings[f"{path}.{name}"] = getattr(
                        member, "__doc__", None
                    )
        for where, docstring in docstrings.items():
            assert "keras_tac.src" not in (docstring or ""), where


def test_every_page_is_linked_from_the_index():
    index = (API_DOCS / "index.md").read_text()
    for page in API_DOCS.glob("*.md"):
        if page.name != "index.md":
            assert f"]({page.name})" in index, page.name
