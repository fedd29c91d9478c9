"""The ``>>>`` examples in the docstrings run as written (``doctest``, ELLIPSIS and
NORMALIZE_WHITESPACE), module by module.

The examples print rounded values, so they pass with float64 on (as in this test suite)
and off (as in a user's session)."""

import doctest
import importlib
import pkgutil

import pytest

import bayesmeta

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _public_modules():
    names = ["bayesmeta"]
    for info in pkgutil.walk_packages(bayesmeta.__path__, prefix="bayesmeta."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


MODULES = _public_modules()
# the modules whose examples go through ArviZ (run again under ArviZ 1.x with -m arviz)
ARVIZ_MODULES = ("bayesmeta.arviz", "bayesmeta.posterior", "bayesmeta.saving")


@pytest.mark.parametrize(
    "name",
    [pytest.param(m, marks=pytest.mark.arviz) if m in ARVIZ_MODULES else m for m in MODULES],
)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
