"""Smoke runs of the meta-learning examples with --quick (tiny sizes)."""

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


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_sinusoid_maml_quick(tmp_path, capsys):
    example = _load("sinusoid_maml")
    curves, coverage = example.main(["--quick", "--out", str(tmp_path), "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(summary["maml"]) == {"1", "5", "10"}
    assert set(summary["pretrained"]) == {"1", "5", "10"}
    for name in ("maml", "pretrained"):
        assert np.isclose(summary[name]["10"], curves[name].query_loss[10])
    assert 0.0 <= summary["abml"]["coverage90"] <= 1.0
    assert os.path.isfile(tmp_path / "sinusoid_maml_K5.png")


def test_maml_as_posterior_quick(tmp_path, capsys):
    example = _load("maml_as_posterior")
    rows = example.main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "KL(q||exact)" in out
    by_name = {r[0]: r for r in rows}
    # the reference scores zero against itself
    assert by_name["exact (true population)"][1] == pytest.approx(0.0, abs=1e-12)
    assert by_name["exact (true population)"][2] == pytest.approx(0.0, abs=1e-12)
    assert all(np.isfinite(r[1]) and 0 <= r[3] <= 1 and 0 <= r[4] <= 1 for r in rows)
    assert os.path.isfile(tmp_path / "maml_as_posterior_forest.png")
    assert os.path.isfile(tmp_path / "maml_as_posterior_coverage.png")
