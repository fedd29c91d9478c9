"""The API reference builds: ``mkdocs build --strict`` (the ``docs`` extra) passes, with a
page per public module and the getting-started page made from the README's tour."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULE_PAGES = (
    "bayesmeta",
    "tasks",
    "populations",
    "likelihoods",
    "inference",
    "estimators",
    "exact",
    "meta",
    "datasets",
    "arviz",
    "saving",
    "plots",
    "check",
)


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    site = tmp_path / "site"
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    for page in MODULE_PAGES:
        assert (site / "api" / page / "index.html").is_file(), page
    # the reference is rendered from the docstrings
    assert 'id="bayesmeta.inference.fit"' in (site / "api" / "inference" / "index.html").read_text()
    # the getting-started page carries every subsection of the README's tour
    started = (site / "getting-started" / "index.html").read_text()
    readme = (ROOT / "README.md").read_text()
    tour = _hooks().readme_tour(readme)
    for line in tour.splitlines():
        if line.startswith("## "):
            assert line[3:].split("`")[0].strip() in started, line
    assert "bm.fit(model, tasks" in started


def test_readme_tour_is_the_section_up_to_the_next_heading():
    hooks = _hooks()
    readme = "# t\n\n## Set-up\nx\n\n## A tour\n\nintro\n\n### Fitting\ntext\n\n## Benchmarks\nno\n"
    tour = hooks.readme_tour(readme)
    assert "intro" in tour and "## Fitting\n" in tour
    assert "Benchmarks" not in tour and "Set-up" not in tour
    with pytest.raises(ValueError, match="A tour"):
        hooks.readme_tour("# t\n\n## Set-up\n")


def test_pages_of_missing_modules_say_so():
    """A page that needs a module this checkout lacks is replaced by a note (the build
    stays strict); with the module present the page is left as written."""
    hooks = _hooks()
    page = "<!-- needs: bayesmeta.no_such_module -->\n# bayesmeta.no_such_module\n\n::: x\n"
    out = hooks.on_page_markdown(page, page=None, config=None, files=None)
    assert ":::" not in out and out.startswith("# bayesmeta.no_such_module")
    assert "not part of this version" in out
    present = "<!-- needs: bayesmeta.tasks -->\n# bayesmeta.tasks\n\n::: bayesmeta.tasks\n"
    assert hooks.on_page_markdown(present, page=None, config=None, files=None) == present


def test_examples_are_fenced_and_roles_shown_as_code():
    """The docs' Griffe extension: a ``>>>`` run (example and output, up to a blank line)
    becomes one ``pycon`` block; ``:class:`~a.B``` becomes ```B```."""
    pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location(
        "docs_griffe", ROOT / "docs" / "griffe_doctest.py"
    )
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    text = "Text.\n\n  >>> f(1)  # doctest: +SKIP\n  2\n\nMore."
    assert ext._fence(text) == "Text.\n\n  ```pycon\n  >>> f(1)\n  2\n  ```\n\nMore."
    assert ext._ROLE.sub(ext._role, "a :class:`~x.y.B` and :func:`f`") == "a `B` and `f`"
