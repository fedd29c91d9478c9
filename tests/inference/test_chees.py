"""Many-chain ChEES-HMC (bayesmeta/inference/chees.py)."""

from __future__ import annotations

import numpy as np
import numpyro.distributions as dist
import pytest

import bayesmeta as bm
from bayesmeta.inference.chees import nested_rhat, superchains

KW = dict(num_chains=32, num_warmup=300, num_samples=50)


@pytest.fixture(scope="module")
def schools():
    pop = bm.populations.Normal(
        loc=dist.Normal(0.0, 5.0), scale=dist.HalfCauchy(5.0), parameterization="noncentered"
    )
    return bm.Hierarchical(bm.likelihoods.NormalKnownNoise(), pop)


@pytest.fixture(scope="module")
def post(schools):
    return bm.fit(schools, bm.datasets.eight_schools(), method="chees", seed=0, **KW)


def test_matches_the_exact_posterior(schools, post):
    """Reference: the exact normal-normal posterior (bm's exact engine, 8,000 i.i.d.
    draws); ChEES means within 4 Monte-Carlo SEs (from its bulk ESS) plus the exact
    draws' own error."""
    exact = bm.fit(schools, bm.datasets.eight_schools(), method="exact", num_samples=2000)
    ess = post.info["diagnostics"]["ess_bulk"]
    for name in ("mu", "tau", "theta"):
        mcse = post.sd(name) / np.sqrt(ess[name]) + exact.sd(name) / np.sqrt(8000)
        assert np.all(np.abs(post.mean(name) - exact.mean(name)) < 4 * mcse), name
        assert np.all(np.abs(post.sd(name) / exact.sd(name) - 1) < 0.15), name
    diag = post.info["diagnostics"]
    assert diag["divergences"] == 0
    assert max(diag["nested_rhat"].values()) < 1.01
    assert post.samples["theta"].shape == (32, 50, 8)
    assert post.info["adapted"]["num_superchains"] == superchains(32, None) == 8


def test_refit_reuses_the_compiled_program(schools, post):
    again = bm.fit(schools, bm.datasets.eight_schools(), method="chees", seed=0, **KW)
    assert again.info["timing"]["compiled"] is False
    np.testing.assert_array_equal(again.samples["mu"], post.samples["mu"])


def _nested_rhat_by_definition(x, k):
    """Margossian et al. (2022), eq. 3.4, written out with loops."""
    c, n = x.shape
    m = c // k
    groups = [x[i * m : (i + 1) * m] for i in range(k)]
    super_means = [g.mean() for g in groups]
    b = np.var(super_means, ddof=1)
    w = 0.0
    for g in groups:
        chain_means = g.mean(axis=1)
        w += np.var(chain_means, ddof=1) + np.mean([np.var(ch, ddof=1) for ch in g])
    return np.sqrt(1 + b / (w / k))


def test_nested_rhat_against_its_definition():
    rng = np.random.default_rng(3)
    iid = rng.normal(size=(64, 20))
    assert nested_rhat(iid, 8) == pytest.approx(_nested_rhat_by_definition(iid, 8), rel=1e-12)
    assert nested_rhat(iid, 8) < 1.01
    stuck = iid + np.repeat(rng.normal(0, 1.0, size=8), 8)[:, None]  # superchains disagree
    assert nested_rhat(stuck, 8) > 1.1


def test_options_are_checked(schools):
    tasks = bm.datasets.eight_schools()
    with pytest.raises(ValueError, match="num_chains: chees pools across chains"):
        bm.fit(schools, tasks, method="chees", num_chains=2)
    with pytest.raises(ValueError, match="num_superchains: must divide num_chains"):
        bm.fit(schools, tasks, method="chees", num_chains=12, num_superchains=5)
    with pytest.raises(ValueError, match="target_accept: must be in"):
        bm.fit(schools, tasks, method="chees", target_accept=1.5)
