"""The recorded figures quoted in the README and the docs, regenerated.

The README and the docs quote figures that the examples and the benchmarks
recorded (`examples/results/`, `benchmarks/results/`). Each quoted block
is preceded by a marker that says where its figures are recorded, and is
regenerated from there:

- `<!-- figures: NAME MODE BACKEND [key=TEMPLATE] -->`: the next table
  quotes `examples/results/NAME.json`, `[MODE][BACKEND]["figures"]`. In a
  `| figure | value |` table the first cell names the figure. Otherwise
  `key=TEMPLATE` names each cell's figure: `{c0}`, `{c1}`, ... are the
  row's first cells, which name the row, `{column}` the column's header.
  The header, the alignment row and the naming cells are kept as written;
  each figure cell is recomputed with the decimals it shows. The first
  line after the table must give the commit in backticks, which is
  replaced by the recorded one, and name the backend.
- `<!-- serving figures: BACKEND -->`: `benchmarks.serving.format_table`
  of `benchmarks/results/serving_full_BACKEND.json`.
- `<!-- benchmark table: MODE -->`: `benchmarks.run.table_lines` of
  `benchmarks/results/MODE_{tensorflow,jax,torch}.json`; the paragraph
  after the table must name every backend and the commits its figures
  record (full runs record none).
- `<!-- drift monitor figures: BACKEND -->`: `benchmarks.drift_monitor`'s
  `format_table` of `benchmarks/results/drift_monitor_BACKEND.json`; the
  first line after the table gives its commit, as for `figures:`.

Two things are kept as written, not recomputed:

- Bold (`**0.962**`). It marks the default confidence's column (`tac`),
  in every row, whether or not it is the best there, so it does not
  depend on the figures.
- The standard deviation of a `mean ± sd` cell: the examples record the
  means only. Such a cell is checked (the mean, rounded to the digits
  shown, must be the recorded one), not rewritten, and so is the commit
  after its table: a mean rewritten beside the sd of another run would
  mislead. A difference there is reported as a problem that `--write`
  cannot fix.

Used two ways:

- As a script, over `README.md` and every `docs/**/*.md`:
  `python docs/hooks/figures.py --check` exits with status 1 and shows
  what differs from the recorded results; `--write` rewrites the files.
  `tests/test_docs_figures.py` runs the check.
- As a MkDocs hook (`hooks:` in `mkdocs.yml`): every page is regenerated
  when the site is built, so the site shows the recorded figures even
  where a page was not rewritten. Problems are logged as warnings, which
  fail `mkdocs build --strict`.
"""

import argparse
import difflib
import glob
import importlib
import json
import logging
import os
import re
import sys

HOOKS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HOOKS))
EXAMPLE_RESULTS = os.path.join(ROOT, "examples", "results")
BENCHMARK_RESULTS = os.path.join(ROOT, "benchmarks", "results")
# The backends of the benchmark table, in the order of its columns.
BENCHMARK_BACKENDS = ("tensorflow", "jax", "torch")

FIGURES_MARKER = re.compile(
    r"<!-- figures: (\S+) (\S+) (\S+)(?: key=(\S+))? -->"
)
SERVING_MARKER = re.compile(r"<!-- serving figures: (\S+) -->")
BENCHMARK_MARKER = re.compile(r"<!-- benchmark table: (\S+) -->")
DRIFT_MARKER = re.compile(r"<!-- drift monitor figures: (\S+) -->")
# A figure cell: the number, optionally bold, optionally `± sd`.
FIGURE_CELL = re.compile(r"(\**)(-?\d+(?:\.(\d+))?)(\**)((?: ±.*)?)")
# A commit as the stamps write it, in backticks.
COMMIT = re.compile(r"`[0-9a-f]{7,40}(?:\+changes)?`")

log = logging.getLogger("mkdocs.hooks.figures")


def documents(root=ROOT):
    """The documents that quote figures: `README.md` and every Markdown
    file under `docs/`, as paths relative to `root`."""
    found = glob.glob(os.path.join(root, "docs", "**", "*.md"), recursive=True)
    return ["README.md"] + sorted(os.path.relpath(path, root) for path in found)


def shown(value, text):
    """Whether the figure cell `text` shows `value`, rounded to the digits
    it shows (bold and a `± sd` part are ignored)."""
    match = FIGURE_CELL.fullmatch(text)
    if not match:
        return False
    digits = len(match.group(3) or "")
    return abs(float(match.group(2)) - value) <= 0.5 * 10**-digits + 1e-9


def load_json(*parts):
    with open(os.path.join(*parts), encoding="utf-8") as file:
        return json.load(file)


def benchmarks_module(name):
    """`benchmarks.NAME`, the formatters of the benchmark blocks.

    Imported when a block needs it (it imports Keras), from the repository
    root: MkDocs puts only the hook's folder on the path, and only while it
    loads the hook."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    return importlib.import_module(f"benchmarks.{name}")


class Stale(Exception):
    """A quoted block that cannot be regenerated: it names a figure that
    is not recorded, lacks the line that gives its commit, or quotes a
    standard deviation (not recorded) beside a mean that moved."""


def regenerate(text, examples=EXAMPLE_RESULTS, benchmarks=BENCHMARK_RESULTS):
    """`text` with every marked block regenerated from the results.

    Args:
        text: str, a Markdown document.
        examples: str, the folder of the examples' results.
        benchmarks: str, the folder of the benchmarks' results.

    Returns:
        `(text, problems)`: the regenerated text, and a list of str, one
        per block that its results cannot give (a figure block is then kept
        as written).
    """
    lines = text.split("\n")
    problems = []
    index = 0
    while index < len(lines):
        line = lines[index]
        try:
            if match := FIGURES_MARKER.search(line):
                _figures_table(lines, index, *match.groups(), examples)
            elif match := SERVING_MARKER.search(line):
                _serving_block(lines, index, match.group(1), benchmarks)
            elif match := BENCHMARK_MARKER.search(line):
                _benchmark_table(lines, index, match.group(1), benchmarks)
            elif match := DRIFT_MARKER.search(line):
                _drift_table(lines, index, match.group(1), benchmarks)
        except (Stale, OSError, KeyError, ValueError) as error:
            problems.append(f"line {index + 1} ({line.strip()}): {error}")
        index += 1
    return "\n".join(lines), problems


def _skip_blank(lines, index):
    while index < len(lines) and not lines[index].strip():
        index += 1
    return index


def _table(lines, index):
    """`(start, end)`: the table after the marker at `index`."""
    start = end = _skip_blank(lines, index + 1)
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    if start == end:
        raise Stale("no table after the marker")
    return start, end


def _cells(line):
    """The cells of a table row, stripped."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _replace_cells(line, new):
    """`line` with its cells' text replaced by `new`, keeping the padding
    around each cell (rewriting a row changes only what changed)."""
    parts = line.split("|")
    for i, cell in enumerate(new, start=1):
        old = parts[i].strip()
        if old != cell:
            parts[i] = parts[i].replace(old, cell, 1) if old else f" {cell} "
    return "|".join(parts)


def _figure_cell(cell, value, figure):
    """The cell `cell` showing `value`, with the decimals, bold and
    `± sd` it has."""
    match = FIGURE_CELL.fullmatch(cell)
    if not match:
        raise Stale(f"{figure}: {cell!r} is not a figure")
    bold, _, decimals, closing, sd = match.groups()
    if sd:
        # The standard deviation is not recorded: the mean can only be
        # checked, a new one would stand beside the sd of another run.
        if not shown(value, cell):
            raise Stale(
                f"{figure} shows {cell}, recorded {value:.6f}; standard "
                "deviations are not recorded: update the table by hand"
            )
        return cell
    number = f"{value:.{len(decimals or '')}f}"
    return f"{bold}{number}{closing}"


def _figure_names(key, header, row):
    """`[(column index, figure)]` of the row's figure cells."""
    if key is None:
        # A `| figure | value |` table.
        return [(1, row[0].strip("`"))]
    labels = len(set(re.findall(r"\{c\d+\}", key)))
    names = {f"c{i}": row[i].strip("`*") for i in range(labels)}
    return [
        (i, key.format(column=header[i].strip("`"), **names))
        for i in range(labels, len(header))
    ]


def _figures_table(lines, index, name, mode, backend, key, examples):
    recorded = load_json(examples, f"{name}.json")[mode][backend]
    figures, commit = recorded["figures"], recorded["stamp"]["commit"]
    start, end = _table(lines, index)
    if start + 2 >= end:
        raise Stale(f"the {name} table has no rows")
    header = _cells(lines[start])
    new_lines, checked_only = {}, False
    # The header and the alignment row stay as written.
    for row_index in range(start + 2, end):
        row = _cells(lines[row_index])
        for column, figure in _figure_names(key, header, row):
            if figure not in figures:
                raise Stale(f"{figure!r} is not recorded in {name}.json")
            checked_only = checked_only or "±" in row[column]
            row[column] = _figure_cell(row[column], figures[figure], figure)
        new_lines[row_index] = _replace_cells(lines[row_index], row)
    after, line = _commit_line(lines, end, commit, backend, checked_only)
    lines[start:end] = [new_lines.get(i, lines[i]) for i in range(start, end)]
    lines[after] = line


def _commit_line(lines, end, commit, backend, checked_only=False):
    """`(index, line)`: the first line after the block, which gives the
    block's commit and backend, with the recorded commit."""
    index = _skip_blank(lines, end)
    line = lines[index] if index < len(lines) else ""
    if not COMMIT.search(line) or backend.lower() not in line.lower():
        raise Stale(
            f"the line after the table must give commit `{commit}` and "
            f"backend {backend}: {line!r}"
        )
    new = COMMIT.sub(f"`{commit}`", line)
    if checked_only and new != line:
        raise Stale(
            f"recorded at `{commit}`, not at the commit given after the "
            "table; standard deviations are not recorded: update the table "
            "by hand"
        )
    return index, new


def _replace_block(lines, index, block):
    """Replaces what follows the marker at `index` by `block`, as many
    paragraphs (blank-line separated) as `block` has, after one blank line.
    Returns the index of the line after the block."""
    count = len(block.split("\n\n"))
    end = index + 1
    for _ in range(count):
        end = _skip_blank(lines, end)
        while end < len(lines) and lines[end].strip():
            end += 1
    new = ["", *block.split("\n")]
    lines[index + 1 : end] = new
    return index + 1 + len(new)


def _serving_block(lines, index, backend, benchmarks):
    format_table = benchmarks_module("serving").format_table
    result = load_json(benchmarks, f"serving_full_{backend}.json")
    if result["machine"]["backend"] != backend:
        raise Stale(f"serving_full_{backend}.json is not of {backend}")
    _replace_block(lines, index, format_table(result))


def _benchmark_table(lines, index, mode, benchmarks):
    run = benchmarks_module("run")
    results = {
        backend: load_json(benchmarks, f"{mode}_{backend}.json")
        for backend in BENCHMARK_BACKENDS
    }
    end = _replace_block(lines, index, "\n".join(run.table_lines(results)))
    # The paragraph after the table explains its commits (several per
    # backend, some of a working tree): it is checked, not written. Full
    # runs record no commit; their paragraph names the backends only.
    start = end = _skip_blank(lines, end)
    while end < len(lines) and lines[end].strip():
        end += 1
    after = " ".join(lines[start:end])
    for backend, commits in run.commits(results).items():
        missing = [c for c in commits if f"`{c}`" not in after]
        if backend not in after or missing:
            raise Stale(
                f"the paragraph after the {mode} benchmark table must name "
                f"{backend} and its commits {commits}"
            )


def _drift_table(lines, index, backend, benchmarks):
    format_table = benchmarks_module("drift_monitor").format_table
    result = load_json(benchmarks, f"drift_monitor_{backend}.json")
    if result["mode"] != "full" or result["backend"] != backend:
        raise Stale(f"drift_monitor_{backend}.json is not a full {backend} run")
    end = _replace_block(lines, index, format_table(result))
    after, line = _commit_line(lines, end, result["commit"], backend)
    lines[after] = line


def on_page_markdown(markdown, page, config, files, **kwargs):
    """MkDocs hook: the page with its quoted figures regenerated."""
    markdown, problems = regenerate(markdown)
    for problem in problems:
        log.warning(f"{page.file.src_path}: {problem}")
    return markdown


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--check",
        action="store_true",
        help="show what differs from the recorded results; exit 1 if any",
    )
    action.add_argument(
        "--write", action="store_true", help="rewrite the documents"
    )
    args = parser.parse_args(argv)
    failed = False
    for document in documents():
        path = os.path.join(ROOT, document)
        with open(path, encoding="utf-8") as file:
            text = file.read()
        new, problems = regenerate(text)
        for problem in problems:
            print(f"{document}: {problem}")
        failed = failed or bool(problems)
        if new == text:
            continue
        if args.write:
            with open(path, "w", encoding="utf-8") as file:
                file.write(new)
            print(f"{document}: rewritten")
            continue
        failed = True
        diff = difflib.unified_diff(
            text.splitlines(),
            new.splitlines(),
            f"{document} (as written)",
            f"{document} (recorded)",
            n=0,
            lineterm="",
        )
        print("\n".join(diff))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
