"""A Griffe extension of the documentation build: the docstrings' ``>>>`` examples shown as
code.

The code base writes doctest examples as plain ``>>>`` lines (run by
``tests/test_doctests.py``), without an ``Examples:`` section; rendered as Markdown they
would run together as one paragraph. This wraps each run of non-blank lines that starts
with ``>>>`` (a doctest example and its expected output) in a ``pycon`` fence.
"""

import re

import griffe

_FLAGS = re.compile(r"\s*# doctest:.*$")


def _fence(text: str) -> str:
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        if not line.lstrip().startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        block = []
        while i < len(lines) and lines[i].strip():
            block.append(_FLAGS.sub("", lines[i][len(indent) :]))
            i += 1
        out += [f"{indent}```pycon", *(indent + b for b in block), f"{indent}```"]
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    """Fences the ``>>>`` examples of every docstring before it is parsed."""

    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = _fence(obj.docstring.value)
