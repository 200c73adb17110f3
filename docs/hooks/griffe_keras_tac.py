"""A griffe extension for the API reference (mkdocstrings' `extensions:` in
mkdocs.yml; not an MkDocs hook). It changes what is rendered, never the
docstrings or the code.

- Examples: keras-tac's docstrings end with Keras's

      Example:

      >>> hadamard_matrix(2).tolist()
      [[1, 1], [1, -1]]

  (unindented doctests, run by tests/test_docstrings.py), which the Google
  parser does not read as a section: the doctests would render as nested
  block quotes. Each such block, up to the next unindented `Title:` line
  (e.g. `Reference:`) or the end, is rewritten as a Google `Examples:`
  section, whose `>>>` lines render as Python code (without the
  `# doctest:` flags).
- Defaults: a parameter whose default is an internal module constant
  (`http_port=DEFAULT_HTTP_PORT`, `pgd_lib.DEFAULT_CONFIDENCE_WEIGHT`)
  shows the constant's value (`http_port=8080`) rather than a name that
  the public API does not have.
"""

import re

import griffe

INTERNAL = "keras_tac.src."

# "Example:" on its own line, then everything up to the next unindented
# section or admonition title ("Reference:") or the end of the docstring.
_EXAMPLE = re.compile(
    r"^Example:[ \t]*\n(?P<body>.*?)(?=^[A-Z][\w ]*:[ \t]*$|\Z)",
    re.MULTILINE | re.DOTALL,
)


def _as_examples_section(match):
    body = match.group("body").strip("\n")
    indented = "\n".join(
        f"    {line}" if line.strip() else "" for line in body.split("\n")
    )
    return f"Examples:\n{indented}\n\n"


class KerasTacDocs(griffe.Extension):
    """Renders `Example:` doctests as code and internal defaults as values."""

    def on_object(self, *, obj, loader, **kwargs):
        docstring = obj.docstring
        if docstring is not None and "Example:" in docstring.value:
            docstring.value = _EXAMPLE.sub(
                _as_examples_section, docstring.value
            ).rstrip("\n")
        if obj.is_function:
            for parameter in obj.parameters:
                parameter.default = _public_default(
                    parameter.default, loader.modules_collection
                )


def _public_default(default, collection):
    if not isinstance(default, (griffe.ExprName, griffe.ExprAttribute)):
        return default
    path = default.canonical_path
    if not path.startswith(INTERNAL):
        return default
    try:
        constant = collection.get_member(path)
    except (KeyError, ValueError, AttributeError):
        return default
    if getattr(constant, "is_attribute", False) and constant.value is not None:
        return str(constant.value)
    return default
