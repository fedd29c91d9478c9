"""Smoke run of examples/learned_optimizer.py with --quick (tiny sizes)."""

import importlib.util
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    path = os.path.join(ROOT, "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_learned_optimizer_quick(tmp_path, capsys):
    example = _load("learned_optimizer")
    result = example.main(["--quick", "--out", str(tmp_path), "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["ill_conditioned"]) == {"gd", "momentum", "adam", "maml init + gd", "l2o"}
    for scores in summary["ill_conditioned"].values():
        assert set(scores) == {"step5", "step10"}
        assert all(np.isfinite(v) for v in scores.values())
    assert summary["ill_conditioned"] == result["ill_conditioned"]
    assert os.path.isfile(tmp_path / "learned_optimizer.png")
