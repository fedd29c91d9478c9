"""Smoke run of examples/fairness.py with --quick (tiny sizes)."""

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


def test_fairness_quick(tmp_path, capsys):
    example = _load("fairness")
    result = example.main(["--quick", "--out", str(tmp_path), "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    models = {
        "global",
        "global + 1 step",
        "MAML, 0 steps",
        "MAML, 1 step",
        "per-group LS",
        "hierarchical Bayes",
    }
    assert set(summary["models"]) == models
    num_groups = len(summary["sizes"])
    for entry in summary["models"].values():
        mse = np.array(entry["group_mse"])
        assert mse.shape == (num_groups,) and np.all(np.isfinite(mse)) and np.all(mse > 0)
        # the disparity is the spread of the group errors, its interval around it
        assert np.isclose(entry["disparity"], mse.max() - mse.min())
        lo, hi = entry["disparity_ci95"]
        assert np.isfinite(lo) and lo <= hi
    lo, hi = summary["hb_disparity_posterior90"]
    assert 0 <= lo <= hi
    assert len(summary["hb_intercept_interval90"]) == num_groups
    assert summary["models"] == result["models"]
    assert os.path.isfile(tmp_path / "fairness.png")
