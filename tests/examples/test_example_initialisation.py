"""Smoke run of examples/initialisation.py with --quick, and its measurements on
hand-built networks."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    path = os.path.join(ROOT, "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_initialisation_quick(tmp_path, capsys):
    example = _load("initialisation")
    result = example.main(["--quick", "--out", str(tmp_path), "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["inits"]) == set(result["inits"]) == {"xavier", "he", "maml"}
    for row in summary["inits"].values():
        assert len(row["scale"]) == 3 and all(np.isfinite(row["scale"]))
        assert 0 <= row["saturated"] <= 1
        assert np.isfinite(row["loss_after"]) and np.isfinite(row["best_sweep_query"])
        assert len(row["diverged"]) == len(summary["rates"])
        assert all(0 <= d <= 1 for d in row["diverged"])
    assert os.path.isfile(tmp_path / "initialisation.png")


def test_initialisation_measurements():
    example = _load("initialisation")
    # a unit-weight layer: std(W) sqrt(fan_in) = sqrt(4) * 1 = 2 for a +-1 (4, 2) matrix
    w = jnp.array([[1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]])
    assert example.weight_scale([(w, jnp.zeros(2))]) == [2.0]
    # saturation: |tanh'(z)| = 1 - tanh(z)^2 < 0.1 iff |z| > atanh(sqrt(0.9)) = 1.818...
    params = [(jnp.array([[1.0]]), jnp.zeros(1))] * 3  # two hidden layers and the output
    x = jnp.array([0.0, 1.0, 2.0, 3.0])
    # layer 1: z = x -> 2 of 4 saturated; layer 2: z = tanh(x) < 1 -> none
    assert example.saturation(params, x) == 2 / 8
    # divergence: a rate far above 2 / curvature blows the support loss up
    tasks = example.sample_tasks(jax.random.PRNGKey(0), 4, 5)
    net = example.init_params(jax.random.PRNGKey(1), (1, 4, 4, 1), "xavier")
    diverged, _ = example.stability(net, tasks, (1e-4, 100.0))
    assert diverged == [0.0, 1.0]
