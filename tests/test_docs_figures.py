"""The figures quoted in the README and docs are the recorded ones.

A block that quotes recorded figures is preceded by a marker naming where
they are recorded (`<!-- figures: NAME MODE BACKEND [key=TEMPLATE] -->` for
`examples/results/NAME.json`, and the serving, benchmark and drift monitor
markers for `benchmarks/results/`), and `docs/hooks/figures.py` regenerates
it from there (see its docstring). Each document must be exactly what it
regenerates: a figure that drifts, and is recorded again, fails here until
`python docs/hooks/figures.py --write` rewrites the text."""

import difflib
import glob
import importlib.util
import json
import os
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_RESULTS = os.path.join(ROOT, "examples", "results")
BENCHMARK_RESULTS = os.path.join(ROOT, "benchmarks", "results")

# `docs/` is not a package: the hook is loaded from its file.
_spec = importlib.util.spec_from_file_location(
    "docs_hooks_figures", os.path.join(ROOT, "docs", "hooks", "figures.py")
)
figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(figures)

DOCUMENTS = figures.documents()


def read(document):
    with open(os.path.join(ROOT, document), encoding="utf-8") as file:
        return file.read()


def markers(pattern):
    """`[(document, groups)]` of every marker matching `pattern`."""
    return [
        (document, match.groups())
        for document in DOCUMENTS
        for match in pattern.finditer(read(document))
    ]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_documents_quote_the_recorded_figures(document):
    text = read(document)
    regenerated, problems = figures.regenerate(text)
    diff = difflib.unified_diff(
        text.splitlines(), regenerated.splitlines(), lineterm="", n=0
    )
    # What `--write` would change, then what it cannot (fix those by hand).
    assert regenerated == text and not problems, "\n".join(
        [
            f"{document} is not what its recorded results give "
            "(`python docs/hooks/figures.py --write` rewrites it):",
            *diff,
            *problems,
        ]
    )


def test_the_readme_quotes_recorded_figures():
    assert any(
        document == "README.md"
        for document, _ in markers(figures.FIGURES_MARKER)
    )


def test_markers_name_recorded_results():
    for document, (name, mode, backend, _) in markers(figures.FIGURES_MARKER):
        path = os.path.join(EXAMPLE_RESULTS, f"{name}.json")
        assert os.path.exists(path), f"{document}: no {path}"
        with open(path) as file:
            recorded = json.load(file)
        assert backend in recorded.get(mode, {}), (document, name, mode)
        assert recorded[mode][backend]["stamp"]["backend"] == backend
    for pattern, files in [
        (figures.SERVING_MARKER, "serving_full_{}.json"),
        (figures.DRIFT_MARKER, "drift_monitor_{}.json"),
        (figures.BENCHMARK_MARKER, "{}_tensorflow.json"),
    ]:
        for document, (argument,) in markers(pattern):
            path = os.path.join(BENCHMARK_RESULTS, files.format(argument))
            assert os.path.exists(path), f"{document}: no {path}"


def test_every_recorded_result_is_quoted():
    # Moving a table from one document to another must not lose it.
    quoted = {groups[0] for _, groups in markers(figures.FIGURES_MARKER)}
    for path in glob.glob(os.path.join(EXAMPLE_RESULTS, "*.json")):
        name = os.path.basename(path)[: -len(".json")]
        assert name in quoted, f"{name}.json is quoted nowhere"
    for pattern, prefix in [
        (figures.SERVING_MARKER, "serving_full_"),
        (figures.DRIFT_MARKER, "drift_monitor_"),
    ]:
        quoted = {groups[0] for _, groups in markers(pattern)}
        for path in glob.glob(os.path.join(BENCHMARK_RESULTS, f"{prefix}*")):
            backend = os.path.basename(path)[len(prefix) : -len(".json")]
            assert backend in quoted, f"{path} is quoted nowhere"
    assert ("short",) in [g for _, g in markers(figures.BENCHMARK_MARKER)]


def test_shown_rounds():
    shown = figures.shown
    assert shown(0.962882, "0.963") and shown(0.962882, "0.9629")
    assert not shown(0.962882, "0.962") and not shown(0.5, "0.6")
    assert shown(0.972, "0.972 ± 0.010") and shown(0.9946, "**0.9946**")


# The oracle of the regeneration: a hand-written record and document.
TOY_RECORD = {
    "full": {
        "tensorflow": {
            "stamp": {"commit": "abc1234", "backend": "tensorflow"},
            "figures": {
                "a/x": 0.91234,
                "a/y": 0.5,
                "b/x": 0.33333,
                "b/y": 1.0,
                "error rate": 0.1266,
            },
        }
    }
}

TOY_DOCUMENT = """\
# Toy

<!-- figures: toy full tensorflow key={c0}/{column} -->
| row | x | y |
|---|---:|---:|
| a   | **0.900** | 0.5 |
| `b` | 0.33 | 1.000 |

Recorded at commit `0000000` on tensorflow, the prose stays.

<!-- figures: toy full tensorflow -->
| figure | value |
| --- | --- |
| error rate | 0.12 |

Recorded at commit `abc1234` on tensorflow.
"""

TOY_REGENERATED = """\
# Toy

<!-- figures: toy full tensorflow key={c0}/{column} -->
| row | x | y |
|---|---:|---:|
| a   | **0.912** | 0.5 |
| `b` | 0.33 | 1.000 |

Recorded at commit `abc1234` on tensorflow, the prose stays.

<!-- figures: toy full tensorflow -->
| figure | value |
| --- | --- |
| error rate | 0.13 |

Recorded at commit `abc1234` on tensorflow.
"""


def toy_regenerate(tmp_path, text, record=TOY_RECORD):
    with open(tmp_path / "toy.json", "w") as file:
        json.dump(record, file)
    return figures.regenerate(text, examples=str(tmp_path))


def test_regenerate_rewrites_drifted_figures_and_the_commit(tmp_path):
    text, problems = toy_regenerate(tmp_path, TOY_DOCUMENT)
    assert problems == []
    assert text == TOY_REGENERATED
    # Regenerating again changes nothing.
    assert toy_regenerate(tmp_path, text) == (text, [])


def test_regenerate_checks_what_is_not_recorded(tmp_path):
    # A mean ± sd cell is kept while its mean is the recorded one; when the
    # mean moved it is reported, not rewritten (the sd is not recorded).
    table = (
        "<!-- figures: toy full tensorflow key={c0}/{column} -->\n"
        "| row | x | y |\n|---|---|---|\n| a | 0.912 ± 0.030 | {y} |\n\n"
        "Means, commit `abc1234`, tensorflow.\n"
    )
    kept = table.replace("{y}", "0.50 ± 0.01")
    assert toy_regenerate(tmp_path, kept) == (kept, [])
    moved = table.replace("{y}", "0.40 ± 0.01")
    text, problems = toy_regenerate(tmp_path, moved)
    assert text == moved and len(problems) == 1 and "a/y" in problems[0]
    # So is the commit after a table with standard deviations.
    old_commit = kept.replace("abc1234", "0000000")
    text, problems = toy_regenerate(tmp_path, old_commit)
    assert text == old_commit and "by hand" in problems[0]
    # A figure that is not recorded, and a table without its commit.
    unknown = TOY_DOCUMENT.replace("| error rate |", "| errors |")
    text, problems = toy_regenerate(tmp_path, unknown)
    assert "'errors' is not recorded" in problems[0]
    no_commit = TOY_DOCUMENT.replace("`0000000`", "0000000")
    text, problems = toy_regenerate(tmp_path, no_commit)
    assert "must give commit `abc1234`" in problems[0]


def test_the_hook_regenerates_pages():
    # What MkDocs calls for each page: a drifted figure comes out recorded.
    with open(os.path.join(EXAMPLE_RESULTS, "mnist_rejection.json")) as file:
        recorded = json.load(file)["full"]["tensorflow"]
    page = (
        "<!-- figures: mnist_rejection full tensorflow -->\n"
        "| figure | value |\n| --- | --- |\n| base accuracy | 0.100 |\n\n"
        "Commit `0000000`, tensorflow.\n"
    )
    markdown = figures.on_page_markdown(
        page,
        page=types.SimpleNamespace(file=types.SimpleNamespace(src_path="x")),
        config={},
        files=[],
    )
    value = recorded["figures"]["base accuracy"]
    assert f"| base accuracy | {value:.3f} |" in markdown
    assert f"Commit `{recorded['stamp']['commit']}`" in markdown
