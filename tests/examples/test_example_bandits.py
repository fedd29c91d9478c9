"""Smoke run of examples/bandits.py with --quick (tiny sizes)."""

import importlib.util
import json
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    path = os.path.join(ROOT, "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bandits_quick(tmp_path, capsys):
    summary = _load("bandits").main(["--quick", "--out", str(tmp_path), "--json"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["regret"] == summary["regret"]
    priors = {"uninformed", "meta-learned", "oracle"}
    for family in ("bernoulli", "gaussian"):
        assert set(printed["regret"][family]) == priors
        for name in priors:
            assert math.isfinite(printed["regret"][family][name])
            assert printed["regret"][family][name] >= 0.0  # pseudo-regret is never negative
            assert math.isfinite(printed["regret_ci95"][family][name])
    assert set(printed["sweep"]) == {"20"}
    assert os.path.isfile(tmp_path / "bandits_regret.png")
