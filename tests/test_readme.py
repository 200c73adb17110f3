"""The README stays short and its links lead somewhere.

The long tables live in the documentation site (`docs/`, built by
`mkdocs build --strict` in `.ci/run`); the README keeps what a newcomer
needs in the first minutes: what keras-tac is, the two commands, the quick
start, one figure table and links."""

import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def read(path):
    with open(os.path.join(ROOT, path)) as file:
        return file.read()


def test_readme_is_short():
    lines = read("README.md").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines (at most 150)"


def test_readme_links_resolve():
    for target in LINK.findall(read("README.md")):
        if target.startswith(("http://", "https://")):
            continue
        path = target.split("#")[0]
        assert os.path.exists(os.path.join(ROOT, path)), (
            f"README.md links to {target!r}, which does not exist"
        )


def test_readme_gives_the_two_commands():
    readme = read("README.md")
    assert "examples/mnist_rejection.py" in readme
    assert "-c constraints.txt" in readme
    assert "python -m pytest -q" in readme


def nav_pages(entries):
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            yield from nav_pages(value)
        else:
            yield value


def test_every_page_is_in_the_site_navigation():
    # mkdocs warns (and --strict fails) on a page outside the nav; this
    # says so without a build.
    config = yaml.safe_load(read("mkdocs.yml"))
    listed = set(nav_pages(config["nav"]))
    docs = os.path.join(ROOT, "docs")
    pages = {
        os.path.relpath(os.path.join(folder, name), docs)
        for folder, _, names in os.walk(docs)
        for name in names
        if name.endswith(".md") and "hooks" not in folder
    }
    assert pages - listed == set(), (
        f"pages missing from the nav: {pages - listed}"
    )
    assert listed - pages == set(), (
        f"nav entries without a page: {listed - pages}"
    )
