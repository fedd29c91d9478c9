"""Smoke run of examples/adversarial.py with --quick, and its PGD attack against the exact
worst case of a linear model."""

import importlib.util
import json
import os

import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    path = os.path.join(ROOT, "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_adversarial_quick(tmp_path, capsys):
    example = _load("adversarial")
    result = example.main(["--quick", "--out", str(tmp_path), "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    names = {"zero", "clean MAML", "adversarial MAML", "adversarial Meta-SGD"}
    assert set(summary["robust"]) == set(summary["clean"]) == set(summary["steps_to_target"])
    assert set(summary["robust"]) == names
    assert summary["targets"] == result["targets"] == [0.58, 0.6, 0.65]
    for name, hits in summary["steps_to_target"].items():
        for target, hit in hits.items():
            robust = np.array(summary["robust"][name])
            if hit is None:
                assert np.all(robust < float(target))
            else:
                assert robust[hit] >= float(target) and np.all(robust[:hit] < float(target))
    for name in names:
        clean, robust = np.array(summary["clean"][name]), np.array(summary["robust"][name])
        assert clean.shape == robust.shape == (6,)
        assert np.all((0 <= robust) & (robust <= clean + 1e-12) & (clean <= 1))
    assert os.path.isfile(tmp_path / "adversarial.png")


def test_pgd_finds_the_linear_worst_case():
    example = _load("adversarial")
    # for a linear model the L-inf worst case is delta = -eps y sign(w), margin reduced by
    # eps ||w||_1; PGD (steps of 2.5 eps / P, projected) reaches it
    params = {"w": jnp.array([1.0, -0.5, 0.25, 0.0, 2.0, -1.0]), "b": jnp.asarray(0.3)}
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 6)))
    y = jnp.array([1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0])
    eps = 0.2
    adv = example.pgd(params, x, y, eps, 5)
    exact = x - eps * y[:, None] * jnp.sign(params["w"])
    np.testing.assert_allclose(np.asarray(adv)[:, params["w"] != 0], exact[:, params["w"] != 0])
    assert float(jnp.max(jnp.abs(adv - x))) <= eps + 1e-12
    # eps = 0 leaves the (support) inputs unchanged
    np.testing.assert_array_equal(np.asarray(example.pgd(params, x, y, 0.0, 5)), np.asarray(x))
