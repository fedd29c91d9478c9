"""Smoke run of examples/bayesian_last_layer.py with --quick (tiny sizes)."""

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


def test_bayesian_last_layer_quick(tmp_path, capsys):
    example = _load("bayesian_last_layer")
    result = example.main(["--quick", "--out", str(tmp_path), "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["K5_maml"]) == {"mse"} and np.isfinite(summary["K5_maml"]["mse"])
    last = summary["K5_last_layer"]
    assert set(last) == {"mse", "log_pred", "coverage50", "coverage90", "tasks_without_posterior"}
    assert np.isfinite(last["mse"]) and np.isfinite(last["log_pred"])
    assert 0.0 <= last["coverage50"] <= last["coverage90"] <= 1.0
    assert last == result["K5_last_layer"]
    for name in ("K5_last_layer_(t)", "K5_t_+_recal."):  # the Student-t layer, recalibrated
        row = summary[name]
        assert np.isfinite(row["mse"]) and np.isfinite(row["log_pred"])
        assert 0.0 <= row["coverage50"] <= row["coverage90"] <= 1.0
    assert os.path.isfile(tmp_path / "bayesian_last_layer.png")
