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


# slow: three meta-training scans and six evaluations compile (about 30 s of CPU)
@pytest.mark.slow
def test_feature_reuse_quick(tmp_path, capsys):
    summary = _load("feature_reuse").main(["--quick", "--out", str(tmp_path), "--json"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    learners = {"pretrained, head", "ANIL, head", "MAML, whole"}
    for band in ("in distribution", "shifted"):
        assert set(printed[band]) == learners
        for name in learners:
            row = printed[band][name]
            assert math.isfinite(row["mse"]) and math.isfinite(row["mse_before"])
            assert 0.0 <= row["cka"]["h2"] <= 1.0 + 1e-9
            assert set(row["weight_change"]) == {"h1", "h2", "out"}
        # the head-only learners leave the body, and so its features, exactly in place
        for name in ("pretrained, head", "ANIL, head"):
            assert printed[band][name]["weight_change"]["h1"] == 0.0
            assert printed[band][name]["weight_change"]["h2"] == 0.0
            assert printed[band][name]["cka"]["h2"] == pytest.approx(1.0, abs=1e-9)
        assert math.isfinite(printed["anil_minus_maml"][band]["mean"])
    assert printed["shifted"] == summary["shifted"]
    assert os.path.isfile(tmp_path / "feature_reuse.png")
