"""Smoke run of examples/normalisation.py with --quick, and its shrinkage step against the
random-effects estimator written out by hand."""

import importlib.util
import json
import os

import numpy as np
from scipy import special

import bayesmeta as bm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    path = os.path.join(ROOT, "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_normalisation_quick(tmp_path, capsys):
    example = _load("normalisation")
    result = example.main(["--quick", "--out", str(tmp_path), "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["shots"] == result["shots"] == [2, 10]
    for key in ("downstream", "constants"):
        assert set(summary[key]) == {"global", "per-task", "shrunken"}
        values = np.array(list(summary[key].values()))
        assert values.shape == (3, 2, 2) and np.all(np.isfinite(values)) and np.all(values > 0)
    assert np.all(np.isfinite(summary["gain"]))
    assert sum(summary["cells_won"].values()) == 4
    assert os.path.isfile(tmp_path / "normalisation.png")


def test_normalisation_pieces():
    example = _load("normalisation")
    # exact E (z_hat - z)^2 against Monte Carlo draws of x ~ N(mu, sigma^2)
    rng = np.random.default_rng(1)
    mu, sigma, mu_hat, sigma_hat = 0.7, 1.3, 0.2, 0.9
    x = mu + sigma * rng.normal(size=400_000)
    mc = np.mean(((x - mu_hat) / sigma_hat - (x - mu) / sigma) ** 2)
    exact = example.downstream_error(mu_hat, sigma_hat, mu, sigma)
    assert abs(exact - mc) < 4 * np.std(((x - mu_hat) / sigma_hat - (x - mu) / sigma) ** 2) / 632
    # log s moments against simulation: (K-1) s^2 / sigma^2 ~ chi^2_{K-1}
    k = 4
    s = rng.normal(size=(200_000, k)).std(axis=1, ddof=1)
    offset, var = example.log_sd_moments(k)
    assert abs(np.log(s).mean() - offset) < 0.01 and abs(np.log(s).var() - var) < 0.01
    assert np.isclose(var, special.polygamma(1, 1.5) / 4)
    # the shrunken means are random-effects BLUPs: lam y + (1 - lam) mu, lam = tau2/(tau2+v)
    mean, sd = rng.normal(size=12), np.exp(0.3 * rng.normal(size=12))
    loc, scale = example.shrunken_statistics(mean, sd, 5)
    v = (scale / np.sqrt(5)) ** 2
    fit = bm.estimators.random_effects(mean, np.sqrt(v), method="REML")
    lam = fit.tau2 / (fit.tau2 + v)
    np.testing.assert_allclose(loc, lam * mean + (1 - lam) * fit.mu, rtol=1e-10)
    assert np.all(np.abs(loc - fit.mu) <= np.abs(mean - fit.mu) + 1e-12)  # shrunk to mu
