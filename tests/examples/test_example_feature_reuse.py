"""Smoke run of examples/feature_reuse.py with --quick (tiny sizes)."""

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


# about 17 s of CPU (three meta-training scans and two evaluations compile); in the default
# suite all the same, since the issue asks that every example be smoke-run there
def test_feature_reuse_quick(tmp_path, capsys):
    summary = _load("feature_reuse").main(["--quick", "--out", str(tmp_path), "--json"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    learners = {"pretrained, head", "ANIL, head", "MAML, whole"}
    assert printed["shifts"] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert set(printed["sweep"]) == {"0", "0.5", "1", "1.5", "2", "2.5"}
    assert printed["in distribution"] == printed["sweep"]["0"]
    assert printed["shifted"] == printed["sweep"]["1"]
    for band in printed["sweep"].values():
        assert set(band) == learners
        for name in learners:
            row = band[name]
            assert math.isfinite(row["mse"]) and math.isfinite(row["mse_before"])
            assert math.isfinite(row["mse_ci95"]) and math.isfinite(row["removed"])
            assert row["removed"] == pytest.approx(1 - row["mse"] / row["mse_before"])
            assert row["diverged"] == 0
            assert 0.0 <= row["cka"]["h2"] <= 1.0 + 1e-9
            assert set(row["weight_change"]) == {"h1", "h2", "out"}
        # the step size comes from each learner's own grid
        assert band["MAML, whole"]["rate"] in (0.001, 0.003, 0.01)
        # the head-only learners leave the body, and so its features, exactly in place
        for name in ("pretrained, head", "ANIL, head"):
            assert band[name]["rate"] in (0.01, 0.1, 1.0)
            assert band[name]["weight_change"]["h1"] == 0.0
            assert band[name]["weight_change"]["h2"] == 0.0
            assert band[name]["cka"]["h2"] == pytest.approx(1.0, abs=1e-9)
        # the whole-network adaptation moves the body
        assert band["MAML, whole"]["weight_change"]["h1"] > 0.0
    for gaps in printed["minus_maml"].values():
        assert set(gaps) == {"pretrained, head", "ANIL, head"}
        assert all(math.isfinite(g["mean"]) and math.isfinite(g["ci95"]) for g in gaps.values())
    for band in ("in distribution", "shifted"):
        assert math.isfinite(printed["anil_minus_maml"][band]["mean"])
    assert printed["anil_minus_maml"]["shifted"] == printed["minus_maml"]["1"]["ANIL, head"]
    assert printed["shifted"] == summary["shifted"]
    assert os.path.isfile(tmp_path / "feature_reuse.png")
