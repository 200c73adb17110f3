"""Runs the code of the documentation pages that show how to use TAC.

Each page's ```python blocks run in order, in one namespace, as a reader
would paste them into one session. Conventions, in the pages:

- A ```python block whose first line is a comment starting with
  `# not run` is shown but not run (it needs a package or a download
  that the tests do not have). Any other ```python block runs.
- A ```text block right after a ```python block (only blank lines
  between them) is that block's expected output: what it prints must
  equal it, line by line, trailing spaces aside. A block without one
  should print nothing.

The pages assert what they show (`assert ...` in the code itself), so a
page that runs but no longer does what it says fails here too, as does a
block that makes keras-tac warn (a reader would see the warning). Keep
each page quick: tiny models and few epochs, since JAX compiles every new
model (each page runs in under 20 s on 2 idle CPU cores; no time limit is
asserted, as the shared machine's load varies too much).
"""

import contextlib
import io
import pathlib
import re
import warnings

import keras
import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
PAGES = ("add_tac.md", "taps.md")
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)


def page_blocks(text):
    """`[(code, expected_output or None)]` of a page's runnable blocks."""
    fences = list(FENCE.finditer(text))
    blocks = []
    for index, fence in enumerate(fences):
        language, body = fence.group(1), fence.group(2)
        if language != "python":
            continue
        if body.lstrip().lower().startswith("# not run"):
            continue
        expected = None
        following = fences[index + 1] if index + 1 < len(fences) else None
        if (
            following is not None
            and following.group(1) == "text"
            and not text[fence.end() : following.start()].strip()
        ):
            expected = following.group(2)
        blocks.append((body, expected))
    return blocks


def lines(output):
    return [line.rstrip() for line in output.strip("\n").splitlines()]


def test_conventions_are_read():
    text = (
        "```python\nprint(1)\n```\n\n```text\n1\n```\n"
        "```python\n# not run: needs keras-hub\nimport keras_hub\n```\n"
        "```python title='x.py'\nx = 2\n```\nprose\n```text\n2\n```\n"
    )
    assert page_blocks(text) == [("print(1)\n", "1\n"), ("x = 2\n", None)]


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_and_prints_what_it_shows(page):
    blocks = page_blocks((DOCS / page).read_text())
    assert blocks, f"no python blocks in docs/{page}"
    keras.backend.clear_session()
    namespace = {"__name__": f"docs_{page.replace('.', '_')}"}
    for number, (code, expected) in enumerate(blocks, start=1):
        stdout = io.StringIO()
        with (
            contextlib.redirect_stdout(stdout),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            exec(
                compile(code, f"docs/{page}, block {number}", "exec"), namespace
            )
        # A reader would see these: keras-tac's advice (an under-trained
        # head, a Lambda ending...) or a warning about the page's own code.
        advice = [
            str(w.message)
            for w in caught
            if issubclass(w.category, UserWarning)
            and ("keras_tac" in w.filename or w.filename.startswith("docs/"))
        ]
        assert not advice, f"docs/{page}, block {number} warns: {advice}"
        printed = lines(stdout.getvalue())
        want = lines(expected) if expected is not None else []
        assert printed == want, (
            f"docs/{page}, block {number} printed {printed}, the page shows "
            f"{want}"
        )
