"""``bayesmeta fit`` keeps JAX's persistent compilation cache, and it can be turned off.

Each check runs the command in a fresh process, as a user would."""

import json
import os
import subprocess
import sys

import pytest

ARGS = ["fit", "--chains", "2", "--warmup", "100", "--draws", "100", "--json"]


def _run(env_extra, *extra):
    env = {k: v for k, v in os.environ.items() if k != "BAYESMETA_NO_CACHE"}
    env.update(env_extra)
    proc = subprocess.run(
        [sys.executable, "-m", "bayesmeta.cli", *ARGS, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # --json: the whole of stdout is one JSON document


def _entries(path):
    return sorted(p for p in os.listdir(path)) if os.path.isdir(path) else []


def test_cli_fills_the_cache_and_a_second_run_reads_it(tmp_path):
    cache = tmp_path / "cache"
    first = _run({"BAYESMETA_CACHE_DIR": str(cache)})
    assert first["compile_cache"] == str(cache)
    written = _entries(cache)
    assert written  # the compiled sampler was stored
    second = _run({"BAYESMETA_CACHE_DIR": str(cache)})
    assert second["compile_cache"] == str(cache)
    # same programs, so nothing new was written: the second run read them back
    assert _entries(cache) == written
    assert second["parameters"]["mu"] == first["parameters"]["mu"]  # same seed, same draws


@pytest.mark.parametrize("how", ["flag", "env"])
def test_cache_can_be_turned_off(tmp_path, how):
    cache = tmp_path / "cache"
    env = {"BAYESMETA_CACHE_DIR": str(cache)}
    extra = ()
    if how == "flag":
        extra = ("--no-cache",)
    else:
        env["BAYESMETA_NO_CACHE"] = "1"
    payload = _run(env, *extra)
    assert payload["compile_cache"] is None
    assert _entries(cache) == []
