"""The figures quoted in the README and docs are the recorded ones.

A table that quotes recorded figures is preceded by a marker naming where
they are recorded, `<!-- figures: NAME MODE BACKEND -->` (the figures of
`examples/results/NAME.json` under `MODE`, `BACKEND`), and followed by a
line that gives their commit and backend. Every row of a `| figure |
value |` table must be a recorded figure, shown rounded; for a table with
one row per scenario and one column per score, `key=TEMPLATE` in the
marker says how a cell's figure is named (`{c0}`, `{c1}`, ... are the
row's first cells, which name it, and `{column}` the column's header).
So a figure that drifts, and is recorded again, fails here until the text
says the same."""

import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = re.compile(r"<!-- figures: (\S+) (\S+) (\S+)(?: key=(\S+))? -->")
DOCUMENTS = ["README.md"] + [
    os.path.join("docs", name)
    for name in sorted(os.listdir(os.path.join(ROOT, "docs")))
    if name.endswith(".md")
]


def quoted_tables(text):
    """`(name, mode, backend, key, rows, line after the table)` per
    marker; `rows` are the table's rows as lists of cells, header first."""
    lines = text.splitlines()
    tables = []
    for index, line in enumerate(lines):
        match = MARKER.search(line)
        if not match:
            continue
        rows, end = [], index + 1
        while end < len(lines) and not lines[end].strip():
            end += 1
        while end < len(lines) and lines[end].startswith("|"):
            cells = [cell.strip() for cell in lines[end].strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):
                rows.append(cells)
            end += 1
        while end < len(lines) and not lines[end].strip():
            end += 1
        after = lines[end] if end < len(lines) else ""
        tables.append((*match.groups(), rows, after))
    return tables


def shown(value, text):
    """Whether `text` is `value` rounded to the digits `text` shows."""
    number = re.fullmatch(r"\**(-?\d+(?:\.(\d+))?)\**(?: ±.*)?", text)
    assert number, f"not a figure: {text!r}"
    digits = len(number.group(2) or "")
    return abs(float(number.group(1)) - value) <= 0.5 * 10**-digits + 1e-9


def all_tables():
    for document in DOCUMENTS:
        with open(os.path.join(ROOT, document)) as file:
            for table in quoted_tables(file.read()):
                yield document, table


def test_the_readme_quotes_recorded_figures():
    assert any(document == "README.md" for document, _ in all_tables())


@pytest.mark.parametrize(
    "document, table",
    list(all_tables()),
    ids=lambda value: value if isinstance(value, str) else value[0],
)
def test_quoted_figures_are_the_recorded_ones(document, table):
    name, mode, backend, key, rows, after = table
    with open(os.path.join(ROOT, "examples", "results", f"{name}.json")) as f:
        recorded = json.load(f)[mode][backend]
    figures, stamp = recorded["figures"], recorded["stamp"]
    header, body = rows[0], rows[1:]
    assert body, f"{document}: empty table after the {name} marker"
    for row in body:
        if key is None:
            figure, value = row[0].strip("`"), row[1]
            assert figure in figures, f"{document}: {figure!r} not recorded"
            assert shown(figures[figure], value), (
                f"{document}: {figure} shows {value}, recorded "
                f"{figures[figure]:.6f} at {stamp['commit']}"
            )
            continue
        labels = len(set(re.findall(r"\{c\d+\}", key)))
        names = {f"c{i}": row[i].strip("`*") for i in range(labels)}
        for column, value in zip(header[labels:], row[labels:]):
            figure = key.format(column=column.strip("`"), **names)
            assert figure in figures, f"{document}: {figure!r} not recorded"
            assert shown(figures[figure], value), (
                f"{document}: {figure} shows {value}, recorded "
                f"{figures[figure]:.6f} at {stamp['commit']}"
            )
    # The line after the table says where the figures come from.
    assert f"`{stamp['commit']}`" in after and backend in after.lower(), (
        f"{document}: the line after the {name} table must give commit "
        f"`{stamp['commit']}` and backend {backend}: {after!r}"
    )


def test_shown_rounds():
    assert shown(0.962882, "0.963") and shown(0.962882, "0.9629")
    assert not shown(0.962882, "0.962") and not shown(0.5, "0.6")
    assert shown(0.972, "0.972 ± 0.010") and shown(0.9946, "**0.9946**")


SERVING_MARKER = re.compile(r"<!-- serving figures: (\S+) -->")


@pytest.mark.parametrize("document", ["docs/export.md", "README.md"])
def test_serving_figures_are_the_recorded_ones(document):
    # Timings are not reproducible: the quoted tables must be exactly what
    # `python -m benchmarks.serving` printed for its recorded results.
    from benchmarks.serving import format_table

    with open(os.path.join(ROOT, document)) as file:
        text = file.read()
    backends = SERVING_MARKER.findall(text)
    if document == "docs/export.md":
        assert sorted(backends) == ["jax", "tensorflow", "torch"]
    assert backends, f"{document} quotes no serving figures"
    for backend in backends:
        path = os.path.join(
            ROOT, "benchmarks", "results", f"serving_full_{backend}.json"
        )
        with open(path) as file:
            result = json.load(file)
        assert result["machine"]["backend"] == backend
        block = format_table(result)
        assert f"<!-- serving figures: {backend} -->\n\n{block}\n" in text, (
            f"{document}: the {backend} serving table is not the one "
            f"recorded in {path}"
        )


BENCHMARK_MARKER = "<!-- benchmark table: short -->"


def test_benchmark_table_is_the_recorded_one():
    # The README's performance table is `benchmarks.run`'s table of the
    # recorded short results, line for line, and the paragraph after it
    # names the commit of every figure in it, and the backends.
    from benchmarks import run

    results = {}
    for backend in ("tensorflow", "jax", "torch"):
        path = os.path.join(
            ROOT, "benchmarks", "results", f"short_{backend}.json"
        )
        with open(path) as file:
            results[backend] = json.load(file)
    with open(os.path.join(ROOT, "README.md")) as file:
        lines = file.read().splitlines()
    start = lines.index(BENCHMARK_MARKER) + 1
    while not lines[start].strip():
        start += 1
    end = start
    while lines[end].startswith("|"):
        end += 1
    assert lines[start:end] == run.table_lines(results)
    # The paragraph after the table.
    while not lines[end].strip():
        end += 1
    after = []
    while end < len(lines) and lines[end].strip():
        after.append(lines[end])
        end += 1
    after = " ".join(after)
    for backend, backend_commits in run.commits(results).items():
        assert backend_commits, f"{backend}: no figure records its commit"
        assert backend in after, (backend, after)
        for commit in backend_commits:
            assert f"`{commit}`" in after, (backend, commit, after)


DRIFT_MARKER = "<!-- drift monitor figures: jax -->"


@pytest.mark.parametrize("document", ["docs/export.md", "README.md"])
def test_drift_monitor_figures_are_the_recorded_ones(document):
    # The document quotes `python -m benchmarks.drift_monitor`'s table of
    # its recorded full run, and the line after it names that run's commit.
    from benchmarks.drift_monitor import format_table

    path = os.path.join(ROOT, "benchmarks", "results", "drift_monitor_jax.json")
    with open(path) as file:
        result = json.load(file)
    assert result["mode"] == "full" and result["backend"] == "jax"
    with open(os.path.join(ROOT, document)) as file:
        text = file.read()
    block = f"{DRIFT_MARKER}\n\n{format_table(result)}\n\n"
    assert block in text, (
        f"{document}: the drift monitor table is not the one recorded in {path}"
    )
    after = text.split(block, 1)[1].split("\n\n", 1)[0]
    assert f"`{result['commit']}`" in after and "JAX" in after, after
