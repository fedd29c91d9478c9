"""Smoke run of examples/new_asset.py with --quick (tiny sizes)."""

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


def test_new_asset_quick(tmp_path, capsys):
    example = _load("new_asset")
    result = example.main(["--quick", "--out", str(tmp_path), "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["methods"]) == {"hierarchical (adapt)", "per-asset", "pooled", "oracle"}
    weeks = {str(w) for w in summary["weeks"]}
    for by_weeks in summary["methods"].values():
        assert set(by_weeks) == weeks
        for cell in by_weeks.values():
            assert all(np.isfinite(v) for v in cell.values())
            assert 0.0 <= cell["coverage90"] <= 1.0 and cell["rmse"] > 0 and cell["width90"] > 0
    # the oracle does not depend on how much of the new asset was observed
    oracle = summary["methods"]["oracle"]
    assert len({round(c["rmse"], 12) for c in oracle.values()}) == 1
    assert len(summary["population_mean"]) == 2
    assert set(summary["rmse_minus_hierarchical"]) == {"per-asset", "pooled", "oracle"}
    assert all(
        np.all(np.isfinite(v))
        for d in summary["rmse_minus_hierarchical"].values()
        for v in d.values()
    )
    assert summary["methods"] == result["methods"]
    assert os.path.isfile(tmp_path / "new_asset.png")
