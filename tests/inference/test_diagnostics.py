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
