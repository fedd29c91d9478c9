"""Build hooks of the documentation site (mkdocs ``hooks:``; no plugin to install).

- ``getting-started.md`` is made from the README: the marker line ``<!-- README tour -->``
  is replaced by the README's "A tour" section (its heading through the line before the
  next level-2 heading), so the page and the README never disagree.
- A page whose front line is ``<!-- needs: bayesmeta.NAME -->`` documents a module that
  may not exist yet in this checkout; without it the page says so instead of failing
  ``mkdocs build --strict``.
"""

import pathlib
import re

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_TOUR_MARKER = "<!-- README tour -->"
_NEEDS = re.compile(r"<!-- needs: ([\w.]+) -->")


def readme_tour(readme: str) -> str:
    """The "## A tour" section of the README text, its subsections included."""
    match = re.search(r"^## A tour\n(.*?)(?=^## )", readme, flags=re.S | re.M)
    if match is None:
        raise ValueError("README.md: no '## A tour' section followed by another '## ' heading")
    # one level down: the page's own title is the level-1 heading
    return re.sub(r"^(#{3,}) ", lambda m: m.group(1)[1:] + " ", match.group(1), flags=re.M)


def _module_present(name: str) -> bool:
    parts = name.split(".")
    # read from the source tree, as the reference is (nothing is imported)
    return (
        _ROOT.joinpath(*parts).with_suffix(".py").is_file()
        or _ROOT.joinpath(*parts, "__init__.py").is_file()
    )


def on_page_markdown(markdown, page, config, files):
    if _TOUR_MARKER in markdown:
        readme = (_ROOT / "README.md").read_text(encoding="utf-8")
        markdown = markdown.replace(_TOUR_MARKER, readme_tour(readme))
    needs = _NEEDS.search(markdown)
    if needs and not _module_present(needs.group(1)):
        title = markdown.splitlines()[1] if markdown.startswith("<!--") else ""
        markdown = f"{title}\n\n`{needs.group(1)}` is not part of this version of bayesmeta yet.\n"
    return markdown
