"""A Griffe extension of the documentation build: the docstrings' ``>>>`` examples shown as
code.

The code base writes doctest examples as plain ``>>>`` lines (run by
``tests/test_doctests.py``), without an ``Examples:`` section; rendered as Markdown they
would run together as one paragraph. This wraps each run of non-blank lines that starts
with ``>>>`` (a doctest example and its expected output) in a ``pycon`` fence, and shows
the reST cross-reference roles the docstrings use (``:class:`X```, ``:func:`~a.b```) as
code (``X``, ``b``), as Sphinx would.
"""

import re

import griffe

_FLAGS = re.compile(r"\s*# doctest:.*$")
_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|obj|exc):`(~?)([^`]+)`")


def _role(match: re.Match) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


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
    """Fences the ``>>>`` examples of every docstring, and rewrites its reST roles, before
    it is parsed."""

    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is None:
            return
        text = _ROLE.sub(_role, obj.docstring.value)
        obj.docstring.value = _fence(text) if ">>>" in text else text
