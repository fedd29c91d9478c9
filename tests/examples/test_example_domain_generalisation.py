"""Smoke run of examples/domain_generalisation.py with --quick (tiny sizes)."""

import importlib.util
import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    path = os.path.join(ROOT, "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_domain_generalisation_quick(tmp_path, capsys):
    example = _load("domain_generalisation")
    result = example.main(["--quick", "--out", str(tmp_path), "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    steps = {"0", "1", "3", "5"}
    assert set(summary["quadratic"]) == {"centre of gravity", "average risk", "MAML (1 step)"}
    assert set(summary["network"]) == {"average risk", "MAML (1 step)"}
    for block in ("quadratic", "network", "network_ci95"):
        for curve in summary[block].values():
            assert set(curve) == steps and all(np.isfinite(v) for v in curve.values())
    # the trained MAML initialisation reaches the closed form of bm.meta.quadratic
    assert summary["quadratic_maml_trained_error"] == pytest.approx(0.0, abs=1e-3)
    assert summary["quadratic"] == result["quadratic"]
    assert os.path.isfile(tmp_path / "domain_generalisation.png")
