"""Fit diagnostics: rank-normalised split R-hat and bulk ESS against ArviZ's own, the
inverse normal CDF against scipy, and the single warning."""

import warnings

import numpy as np
import pytest
from scipy.special import ndtri

from bayesmeta.inference import diagnostics as diag


def _ar1(seed, shape=(4, 500, 3), rho=0.7, shift=None):
    rng = np.random.default_rng(seed)
    x = np.zeros(shape)
    noise = rng.standard_normal(shape)
    for t in range(1, shape[1]):
        x[:, t] = rho * x[:, t - 1] + noise[:, t]
    if shift is not None:
        x[0] += shift
    return x


def test_ndtri_matches_scipy():
    p = np.concatenate([np.linspace(1e-9, 1 - 1e-9, 20001), [0.02425, 0.97575]])
    assert np.max(np.abs(diag._ndtri(p) - ndtri(p)) / np.maximum(1, np.abs(ndtri(p)))) < 2e-9


@pytest.mark.arviz
def test_rhat_and_bulk_ess_match_arviz():
    import arviz as az

    x = _ar1(0)
    data = {"x": x}
    ours_r, ours_e = diag.rhat(x), diag.ess_bulk(x)
    ref_r = np.asarray(
        az.rhat(az.convert_to_dataset(data) if hasattr(az, "convert_to_dataset") else data)["x"]
    )
    ref_e = np.asarray(
        az.ess(
            az.convert_to_dataset(data) if hasattr(az, "convert_to_dataset") else data,
            method="bulk",
        )["x"]
    )
    np.testing.assert_allclose(ours_r, ref_r, rtol=1e-6)
    # same estimator (Geyer's initial monotone sequence); the autocovariances come from two
    # FFT implementations, which differ in the sixth digit
    np.testing.assert_allclose(ours_e, ref_e, rtol=1e-5)


def test_check_fit_warns_once_naming_parameters():
    good = _ar1(1, rho=0.1)
    bad = _ar1(2, shift=3.0)  # one chain stuck elsewhere
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = diag.check_fit({"mu": good, "tau": bad}, num_divergences=3)
    msgs = [str(w.message) for w in caught if issubclass(w.category, diag.FitWarning)]
    assert len(msgs) == 1
    assert "3 divergent transitions" in msgs[0] and "tau" in msgs[0] and "mu (" not in msgs[0]
    assert out["rhat"]["tau"] > 1.1


def test_blocked_diagnostics_equal_the_single_pass():
    """Many components are diagnosed in blocks on threads; the numbers are those of one
    pass over all of them."""
    from bayesmeta.inference import diagnostics as d

    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 200, 1300)).cumsum(axis=1) * 0.1
    x += rng.standard_normal(x.shape)
    blocked, single = d._rhat_ess(x), d._rhat_ess_block(x)
    np.testing.assert_array_equal(blocked[0], single[0])
    np.testing.assert_array_equal(blocked[1], single[1])


# ---------------------------------------------------------------- agreement with ArviZ
def _arviz_rhat_ess(x):
    """ArviZ's own numbers: ``az.rhat(method="rank")`` and ``az.ess(method="bulk")``."""
    import arviz as az

    data = {"x": x}
    if hasattr(az, "convert_to_dataset"):
        data = az.convert_to_dataset(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns on one chain / constant draws
        r = np.asarray(az.rhat(data, method="rank")["x"])
        e = np.asarray(az.ess(data, method="bulk")["x"])
    return r, e


def _ar(seed, shape, phi):
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(shape)
    x = np.empty(shape)
    x[:, 0] = noise[:, 0]
    for t in range(1, shape[1]):
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    return x


@pytest.mark.arviz
def test_rhat_and_ess_equal_arviz_on_random_chains():
    """AR(1) chains from strongly anti-correlated to nearly a random walk, several shapes
    (one chain, odd draw counts, 8 draws), with and without a shifted chain: the one
    implementation equals ArviZ's to rounding (the same algorithm, vectorised)."""
    checked = 0
    for seed in range(3):
        for shape in [(4, 100, 3), (1, 57, 2), (2, 9, 4), (3, 301, 2), (4, 8, 1)]:
            for phi in [-0.95, -0.6, 0.0, 0.5, 0.99]:
                x = _ar(seed, shape, phi)
                if seed == 1:
                    x[0] += 2.0
                ours = diag._rhat_ess(x)
                ref = _arviz_rhat_ess(x)
                np.testing.assert_allclose(ours[0], ref[0], rtol=1e-8, equal_nan=True)
                np.testing.assert_allclose(ours[1], ref[1], rtol=1e-8, equal_nan=True)
                checked += 1
    assert checked == 75


@pytest.mark.arviz
def test_rhat_and_ess_equal_arviz_on_pathological_chains():
    rng = np.random.default_rng(0)
    cases = {
        "constant": np.ones((4, 100, 2)),
        "near-constant": 1.0 + 1e-12 * rng.standard_normal((4, 100, 2)),
        "ties (discrete)": rng.integers(0, 3, (4, 100, 2)).astype(float),
        "one chain": rng.standard_normal((1, 100, 2)),
        "very autocorrelated": np.cumsum(rng.standard_normal((4, 200, 2)), axis=1),
        "alternating": np.tile([1.0, -1.0], (4, 50))[..., None] + 0.01 * rng.random((4, 100, 1)),
    }
    for name, x in cases.items():
        ours, ref = diag._rhat_ess(x), _arviz_rhat_ess(x)
        np.testing.assert_allclose(ours[0], ref[0], rtol=1e-8, equal_nan=True, err_msg=name)
        np.testing.assert_allclose(ours[1], ref[1], rtol=1e-8, equal_nan=True, err_msg=name)
        assert np.all(np.isnan(ours[1]) | (ours[1] > 0)), name
    # chains each constant at a different value: R-hat is huge in both, ESS equal
    x = np.repeat(np.arange(4.0)[:, None, None], 100, axis=1)
    ours, ref = diag._rhat_ess(x), _arviz_rhat_ess(x)
    assert ours[0] > 1e6 and ref[0] > 1e6
    np.testing.assert_allclose(ours[1], ref[1], rtol=1e-8)
    # a NaN draw makes that component NaN (ArviZ's rule) and leaves the others alone
    x = rng.standard_normal((4, 100, 2))
    x[2, 5, 1] = np.nan
    r, e = diag._rhat_ess(x)
    assert np.isnan(r[1]) and np.isnan(e[1]) and np.isfinite(r[0]) and np.isfinite(e[0])
    np.testing.assert_allclose(e[0], _arviz_rhat_ess(x[..., :1])[1][0], rtol=1e-8)


@pytest.mark.arviz
def test_anticorrelated_chains_get_arviz_ess_not_a_negative_one():
    """The negative ESS (-10,995 on a 10,000-task theta) came from NumPyro's
    effective_sample_size: its monotone sequence leaves out the first pair and its
    autocorrelation time has no floor, so an anti-correlated component (lag-1
    autocorrelation below -1/2) gets tau < 0. Those draws reproduce it; ours is ArviZ's."""
    from numpyro.diagnostics import effective_sample_size

    x = _ar(0, (4, 500, 1), -0.9)
    old = effective_sample_size(diag._split(diag._rank_normalize(x)))  # the old path
    assert old[0] < 0  # the bug, reproduced
    ours, ref = diag.ess_bulk(x), _arviz_rhat_ess(x)[1]
    assert ours[0] > 0
    np.testing.assert_allclose(ours, ref, rtol=1e-8)


# ---------------------------------------------------------------- broken chains
def _fit_problems(samples, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = diag.check_fit(samples, 0, **kw)
    msgs = [str(w.message) for w in caught if issubclass(w.category, diag.FitWarning)]
    return out, msgs


def test_check_fit_reports_all_nan_draws():
    out, msgs = _fit_problems({"mu": np.full((2, 100), np.nan), "tau": _ar1(0, (2, 100))})
    assert out["nonfinite"]["mu"] == {"count": 200, "chains": [0, 1]}
    assert out["bad_chains"] == [0, 1]
    assert len(msgs) == 1 and "non-finite" in msgs[0] and "mu" in msgs[0]


def test_check_fit_reports_a_third_nan_draws_naming_the_tasks():
    theta = _ar1(1, (3, 100, 4))
    theta[1, :, 2] = np.nan  # one chain, one task
    out, msgs = _fit_problems(
        {"theta": theta}, dims={"theta": ["task"]}, coords={"task": ["a", "b", "c", "d"]}
    )
    assert out["nonfinite"]["theta"] == {"count": 100, "chains": [1], "tasks": ["c"]}
    assert out["bad_chains"] == [1]
    assert "theta (task(s) 'c')" in msgs[0] and "chain(s) 1" in msgs[0]
    # the finite components are still diagnosed
    assert np.isfinite(out["rhat"]["theta"]) and np.isfinite(out["ess_bulk"]["theta"])


def test_check_fit_reports_frozen_chains_but_not_fixed_entries():
    mu = _ar1(2, (4, 200), rho=0.1)
    mu[3] = mu[3, 0]  # chain 3 never leaves its first value
    corr = np.ones((4, 200, 2))  # a fixed diagonal: constant everywhere, at one value
    corr[..., 1] = _ar1(3, (4, 200), rho=0.1)
    out, msgs = _fit_problems({"mu": mu, "corr": corr})
    assert out["frozen"] == {"mu": [3]} and out["bad_chains"] == [3]
    assert "frozen chain(s)" in msgs[0] and "mu in chain(s) 3" in msgs[0]
    # every chain stuck at its own starting value (a sampler that never moved)
    stuck = np.repeat(np.array([0.1, 0.5, 2.0, 3.0])[:, None], 100, axis=1)
    out, _ = _fit_problems({"tau": stuck})
    assert out["frozen"] == {"tau": [0, 1, 2, 3]}
    assert any("R-hat" in p for p in out["problems"])


def test_check_fit_of_healthy_chains_reports_no_broken_chain():
    out, msgs = _fit_problems({"mu": _ar1(4, (4, 400), rho=0.1)})
    assert out["bad_chains"] == [] and "nonfinite" not in out and "frozen" not in out
    assert msgs == []
