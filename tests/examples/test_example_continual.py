"""Smoke run of examples/continual.py with --quick (tiny sizes)."""

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


def test_continual_quick(tmp_path, capsys):
    example = _load("continual")
    result = example.main(["--quick", "--out", str(tmp_path), "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["inits"]) == {"MAML", "Reptile", "pre-trained", "scratch"}
    for entry in summary["inits"].values():
        for field in ("loss_a_after_a", "loss_a_after_b", "forgetting", "forgetting_ci95"):
            assert np.isfinite(entry[field])
        # forgetting is the rise of A's loss from after A to after B
        assert np.isclose(entry["forgetting"], entry["loss_a_after_b"] - entry["loss_a_after_a"])
        for mode in ("continual", "reset"):
            assert set(entry[mode]["by_shots"]) == {"1", "2", "5", "10", "20"}
            assert set(entry[mode]["by_steps"]) == {"0", "1", "5", "10", "20"}
            assert all(np.isfinite(v) for v in entry[mode]["by_shots"].values())
            assert all(np.isfinite(v) for v in entry[mode]["by_steps"].values())
        # zero re-acquisition steps from the post-B weights is the loss of A after B
        assert np.isclose(entry["continual"]["by_steps"]["0"], entry["loss_a_after_b"], rtol=1e-5)
    assert summary["inits"] == result["inits"]
    assert os.path.isfile(tmp_path / "continual.png")
