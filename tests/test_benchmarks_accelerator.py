"""``benchmarks/gpu.sh`` and ``benchmarks/accelerator.py`` on a CPU: the script starts, finds
the project without installing it, and (slow) runs its ``--quick`` path to a JSON file in
``$OUT``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bayesmeta as bm

ROOT = Path(bm.__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.sh"


def _run(tmp_path, *args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(OUT=str(tmp_path), PYTHON=sys.executable)  # the test's own interpreter
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(tmp_path),
    )


def test_gpu_script_starts_and_reaches_the_harness(tmp_path):
    proc = _run(tmp_path, "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "jax " in proc.stdout and "numpyro " in proc.stdout  # the environment line
    assert "usage:" in proc.stdout and "--quick" in proc.stdout  # benchmarks.accelerator
    assert (tmp_path / "accelerator.log").exists()


@pytest.mark.slow
def test_gpu_script_quick_path_writes_its_json_to_out(tmp_path):
    proc = _run(tmp_path, "--quick", "--cases", "eight_schools")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "accelerator.json").read_text())
    runners = {(r["case"], r["runner"]): r for r in result["rows"]}
    assert set(runners) == {
        ("eight_schools", "numpyro-vectorized"),
        ("eight_schools", "bayesmeta-chees"),
        ("logistic_1000", "bayesmeta-chees"),
        ("logistic_1000", "bayesmeta-chees-sharded"),
    }
    for row in result["rows"]:
        assert row["status"] == "ok", row
        assert row["min_ess"] > 0 and row["wall_s"] > 0
    sharded = runners[("logistic_1000", "bayesmeta-chees-sharded")]
    assert sharded["notes"]["max_abs_diff_vs_unsharded"] < 1e-6
    assert sharded["notes"]["sharding"]["split"]
    assert runners[("eight_schools", "bayesmeta-chees")]["nested_rhat"] is not None
