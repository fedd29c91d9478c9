"""``bm.fit(..., devices=...)``: the task axis split across devices and across processes.

The test process has started JAX with one CPU device, so the sharded fits run in fresh
processes: one with four host devices (``--xla_force_host_platform_device_count=4``)
that fits every sharding engine with and without ``devices=4``, and two that join one
``jax.distributed`` run over the loopback address (CPU collectives by gloo), compared
with the same fit in this process. Everything runs in float64 (as the test suite does):
the sharded program sums in another order, so the draws differ in the last bits, and
float64 keeps that far below the tolerance over these short chains. Longer chains
amplify it, as a Markov chain does any last-bit change (measured on the ragged model
below: 2e-13 after 20 warmup iterations, 2e-2 after 60; in float32 eight schools parts
after ~50), so the MCMC fits here keep 20 warmup iterations and 10 draws."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import bayesmeta as bm
from tests.conftest import eight_schools_model

ROOT = str(Path(bm.__file__).resolve().parent.parent)
#: the sharded draws equal the unsharded ones to this relative tolerance (float64)
RTOL, ATOL = 1e-6, 1e-8

_COMMON = """
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
"""

_FOUR_DEVICES = (
    _COMMON
    + """
import numpy as np, numpyro.distributions as dist, bayesmeta as bm
assert len(jax.devices()) == 4, jax.devices()
schools = bm.datasets.eight_schools()  # 8 tasks: two whole tasks per device
model = bm.Hierarchical(
    bm.likelihoods.NormalKnownNoise(),
    bm.populations.Normal(loc=dist.Normal(0.0, 5.0), scale=dist.HalfCauchy(5.0)),
)
# ragged: 4 tasks of 2, 4, 3 and 3 rows, 12 rows in blocks of 3 (tasks straddle devices)
rng = np.random.default_rng(0)
task = np.repeat(np.arange(4), [2, 4, 3, 3])
ragged = bm.TaskSet.from_arrays(y=rng.normal(task * 0.5, 1.0), task=task)
ragged_model = bm.Hierarchical(bm.likelihoods.Normal())
mcmc = dict(num_chains=2, num_warmup=20, num_samples=10, warn=False, progress_bar=False)
cases = [
    ("nuts", ragged_model, ragged, mcmc),
    ("collapsed", model, schools, mcmc),
    ("laplace", model, schools, dict(mcmc, num_chains=1)),
    ("vi", model, schools, dict(num_steps=200, num_samples=20, warn=False)),
]
out = {}
for method, m, tasks, kw in cases:
    one = bm.fit(m, tasks, method=method, seed=5, **kw)
    four = bm.fit(m, tasks, method=method, seed=5, devices=4, **kw)
    out[method] = {
        "one": {k: np.asarray(v).tolist() for k, v in one.samples.items()},
        "four": {k: np.asarray(v).tolist() for k, v in four.samples.items()},
        "sharding": four.info["sharding"],
        "unsharded_info": "sharding" in one.info,
    }
print("RESULT " + json.dumps(out))
"""
)

_DISTRIBUTED = (
    _COMMON
    + """
pid, port = int(sys.argv[1]), sys.argv[2]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid
)
import numpy as np, bayesmeta as bm
from tests.conftest import eight_schools_model
assert len(jax.devices()) == 2 and len(jax.local_devices()) == 1
out = {}
for method, kw in CASES:
    post = bm.fit(eight_schools_model(), bm.datasets.eight_schools(), method=method,
                  seed=3, devices=len(jax.devices()), **kw)
    out[method] = {"samples": {k: np.asarray(v).tolist() for k, v in post.samples.items()},
                   "sharding": post.info["sharding"]}
print("RESULT " + json.dumps(out))
"""
)

#: the fits of the two-process run: (method, options), tiny chains
_DIST_CASES = [
    ("collapsed", dict(num_chains=1, num_warmup=30, num_samples=10, warn=False)),
    ("nuts", dict(num_chains=1, num_warmup=30, num_samples=10, warn=False)),
]


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def _result(stdout: str) -> dict:
    line = next(ln for ln in reversed(stdout.splitlines()) if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _same(a: dict, b: dict, what: str) -> None:
    assert sorted(a) == sorted(b), what
    for k in a:
        np.testing.assert_allclose(
            np.asarray(b[k]), np.asarray(a[k]), rtol=RTOL, atol=ATOL, err_msg=f"{what}: {k}"
        )


def test_four_devices_equal_one_device_for_every_sharding_engine(tmp_path):
    script = tmp_path / "four.py"
    script.write_text(_FOUR_DEVICES)
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = _result(proc.stdout)
    assert sorted(out) == ["collapsed", "laplace", "nuts", "vi"]
    for method, got in out.items():
        _same(got["one"], got["four"], method)
        rec = got["sharding"]
        assert rec["num_devices"] == 4 and rec["process_count"] == 1, method
        assert len(set(rec["devices"])) == 4, rec["devices"]
        assert rec["split"], f"{method}: nothing was split over the task axis"
        assert not got["unsharded_info"], method
    # what was split: the rows of the ragged NUTS data, the collapsed statistics, the
    # Laplace per-task padded rows
    assert "['y']" in out["nuts"]["sharding"]["split"]
    assert any(s.startswith("['stats']") for s in out["collapsed"]["sharding"]["split"])
    assert "['start']" in out["laplace"]["sharding"]["split"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_under_jax_distributed_equal_one_process(tmp_path):
    script = tmp_path / "dist.py"
    script.write_text(_DISTRIBUTED.replace("CASES", repr(_DIST_CASES)))
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), port],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for i in range(2)
    ]
    # the one-process reference, here (one device), while the two run
    ref = {
        m: bm.fit(eight_schools_model(), bm.datasets.eight_schools(), method=m, seed=3, **kw)
        for m, kw in _DIST_CASES
    }
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=600)
            assert p.returncode == 0, stderr[-3000:]
            outs.append(_result(stdout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for pid, out in enumerate(outs):
        for method, _ in _DIST_CASES:
            want = {k: np.asarray(v) for k, v in ref[method].samples.items()}
            _same(want, out[method]["samples"], f"process {pid}, {method}")
            rec = out[method]["sharding"]
            assert rec["process_count"] == 2 and rec["num_devices"] == 2
            assert rec["split"]


def test_devices_is_checked_before_anything_compiles():
    model, tasks = eight_schools_model(), bm.datasets.eight_schools()
    [dev] = jax.devices()[:1]
    cases = [
        (0, "devices: asked for 0"),
        (len(jax.devices()) + 1, "devices: asked for"),
        ([dev, dev], "appear more than once"),
        (["cpu:0"], "entry 0 is not a JAX device"),
        ([], "empty"),
        ("4", "expected None, a device count"),
        (True, "expected None, a device count"),
        (jax.sharding.Mesh(np.array([dev]), ("x",)), "axis named 'task'"),
    ]
    for devices, msg in cases:
        with pytest.raises(ValueError, match=msg):
            bm.fit(model, tasks, method="nuts", devices=devices)
    with pytest.raises(ValueError, match="devices: method 'exact' does not shard"):
        bm.fit(model, tasks, method="exact", devices=1)
    with pytest.raises(ValueError, match="chain_method: 'parallel'"):
        bm.fit(model, tasks, method="nuts", devices=1, chain_method="parallel")
    with pytest.raises(ValueError, match="checkpoint: not available with devices"):
        bm.fit(model, tasks, method="nuts", devices=1, checkpoint="x.ckpt")
