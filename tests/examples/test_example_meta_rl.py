"""Smoke run of examples/meta_rl.py with --quick (tiny sizes)."""

import importlib.util
import json
import math
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    path = os.path.join(ROOT, "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_meta_rl_quick(tmp_path, capsys):
    summary = _load("meta_rl").main(["--quick", "--out", str(tmp_path), "--json"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["return"] == summary["return"]
    for name in ("maml", "pretrained", "random init"):
        assert set(printed["return"][name]) == {"0", "1", "3"}
        for steps in ("0", "1", "3"):
            value = printed["return"][name][steps]
            # a return is minus a sum of distances: finite and not positive
            assert math.isfinite(value) and value <= 0.0
            assert math.isfinite(printed["return_ci95"][name][steps])
    assert math.isfinite(printed["one_step_gain_vs_pretrained"])
    assert os.path.isfile(tmp_path / "meta_rl_point.png")
