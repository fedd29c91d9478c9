"""Exact normal-normal posterior against an independent brute-force 2-d quadrature.

The reference integrates p(mu, tau | y) on a tensor grid of composite Gauss-Legendre rules
(mu on a wide finite interval, tau through tau = s tan(pi v / 2), a different map from the
library's), with the likelihood prod_t N(y_t | mu, sqrt(se_t^2 + tau^2)) and the priors
evaluated by scipy.stats; theta_t | mu, tau is the textbook normal conditional. The grid is
checked to be converged to ~1e-10 by halving its panels.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import stats

import bayesmeta.exact.normal as nn
from bayesmeta.exact import (
    NormalMixture,
    fit_exact,
    log_marginal_normal_normal,
    log_marginal_tau,
    mu_conditional,
    normal_normal,
    solve_normal_normal,
    theta_conditional,
)
from bayesmeta.tasks import TaskSet

# Eight schools: Rubin (1981); Gelman et al., BDA3 Section 5.5 (shared/DATA.md).
Y8 = np.array([28.0, 8, -3, 7, -1, 1, 18, 12])
SE8 = np.array([15.0, 10, 16, 11, 9, 11, 10, 18])


def _composite_gl(a, b, num_panels, order=20):
    x, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(a, b, num_panels + 1)
    half = 0.5 * np.diff(edges)
    mid = 0.5 * (edges[:-1] + edges[1:])
    return (mid[:, None] + half[:, None] * x).ravel(), (half[:, None] * w).ravel()


def brute_force(
    y,
    se,
    log_prior_mu,
    log_prior_tau,
    mu_range,
    tau_scale=10.0,
    tau_range=None,
    num_mu=120,
    num_tau=60,
):
    """Moments of mu, tau, theta and log p(y) on a 2-d Gauss-Legendre tensor grid (tau on
    (0, inf) through tau = tau_scale tan(pi v / 2), or on a bounded ``tau_range``)."""
    if tau_range is None:
        v, wv = _composite_gl(0.0, 1.0, num_tau)
        tau = tau_scale * np.tan(0.5 * np.pi * v)
        wt = wv * tau_scale * 0.5 * np.pi / np.cos(0.5 * np.pi * v) ** 2
    else:
        tau, wt = _composite_gl(tau_range[0], tau_range[1], num_tau)
    mu, wm = _composite_gl(mu_range[0], mu_range[1], num_mu)
    logp = log_prior_tau(tau)[:, None] + log_prior_mu(mu)[None, :]
    for yt, st in zip(y, se, strict=True):
        logp = logp + stats.norm.logpdf(yt, mu[None, :], np.sqrt(st**2 + tau**2)[:, None])
    off = logp.max()
    p = np.exp(logp - off) * wt[:, None] * wm[None, :]
    z = p.sum()
    p = p / z
    out = {"log_evidence": off + np.log(z)}
    out["mu_mean"] = np.sum(p * mu[None, :])
    out["mu_sd"] = np.sqrt(np.sum(p * (mu[None, :] - out["mu_mean"]) ** 2))
    out["tau_mean"] = np.sum(p * tau[:, None])
    out["tau_sd"] = np.sqrt(np.sum(p * (tau[:, None] - out["tau_mean"]) ** 2))
    tm, ts = [], []
    for yt, st in zip(y, se, strict=True):
        b = st**2 / (st**2 + tau**2)
        cmean = b[:, None] * mu[None, :] + (1 - b[:, None]) * yt
        cvar = ((1 - b) * st**2)[:, None]
        m = np.sum(p * cmean)
        tm.append(m)
        ts.append(np.sqrt(np.sum(p * (cvar + (cmean - m) ** 2))))
    out["theta_mean"], out["theta_sd"] = np.array(tm), np.array(ts)
    out["grid"] = (tau, mu, p)
    return out


def _compare(res, ref, rtol):
    for name in ("mu_mean", "mu_sd", "tau_mean", "tau_sd"):
        np.testing.assert_allclose(getattr(res, name), ref[name], rtol=rtol, err_msg=name)
    np.testing.assert_allclose(res.theta_mean, ref["theta_mean"], rtol=rtol)
    np.testing.assert_allclose(res.theta_sd, ref["theta_sd"], rtol=rtol)


def _halfcauchy(scale):
    return lambda t: stats.halfcauchy.logpdf(t, scale=scale)


@pytest.fixture(scope="module")
def schools_wide():
    """Eight schools with mu ~ N(0, 5), tau ~ Uniform(2, 40): tau stays away from 0, so the
    brute-force mu grid resolves N(. | mu, tau) and the theta | mu, tau steps in mu."""
    res = solve_normal_normal(
        Y8, SE8, loc_prior=dist.Normal(0.0, 5.0), scale_prior=dist.Uniform(2.0, 40.0)
    )
    ref = brute_force(
        Y8,
        SE8,
        lambda m: stats.norm.logpdf(m, 0, 5),
        lambda t: stats.uniform.logpdf(t, 2, 38),
        (-60.0, 60.0),
        tau_range=(2.0, 40.0),
    )
    return res, ref


@pytest.fixture(scope="module")
def schools_normal():
    """Eight schools with mu ~ N(0, 5), tau ~ HalfCauchy(5)."""
    res = solve_normal_normal(
        Y8, SE8, loc_prior=dist.Normal(0.0, 5.0), scale_prior=dist.HalfCauchy(5.0)
    )
    ref = brute_force(
        Y8, SE8, lambda m: stats.norm.logpdf(m, 0, 5), _halfcauchy(5.0), (-60.0, 60.0)
    )
    return res, ref


# --------------------------------------------------------------------------- building blocks
def test_kronrod_rule_is_exact_to_degree_22():
    for k in range(23):
        exact = (1 - (-1) ** (k + 1)) / (k + 1)
        assert abs(np.sum(nn._KRONROD_W * nn._KRONROD_X**k) - exact) < 1e-15
    # the embedded 7-point Gauss rule is exact to degree 13 but not 14
    for k in range(14):
        exact = (1 - (-1) ** (k + 1)) / (k + 1)
        assert abs(np.sum(nn._GAUSS_W * nn._KRONROD_X**k) - exact) < 1e-15
    assert abs(np.sum(nn._GAUSS_W * nn._KRONROD_X**14) - 2 / 15) > 1e-6


def test_ndtr_and_ndtri_match_scipy():
    # relative error grows like eps * x**2 in the far lower tail (rounding of -x / sqrt(2))
    x = np.concatenate([np.linspace(-37, 8, 2001), [0.0]])
    ref = stats.norm.cdf(x)
    assert np.all(np.abs(nn._ndtr(x) - ref) <= 5e-16 * (1 + x**2) * ref)
    assert nn._ndtr(0.0) == 0.5
    p = np.concatenate(
        [
            10.0 ** -np.arange(1, 300, 7),
            np.linspace(0.001, 0.999, 999),
            1 - 10.0 ** -np.arange(1, 15),
        ]
    )
    np.testing.assert_allclose(nn._ndtri(p), stats.norm.ppf(p), rtol=1e-12, atol=1e-13)
    assert nn._ndtri(np.array([0.0, 1.0])).tolist() == [-np.inf, np.inf]


def test_normal_mixture_against_direct_sums():
    w = np.array([0.2, 0.5, 0.3])
    m = np.array([-1.0, 0.5, 4.0])
    s = np.array([0.5, 2.0, 1.0])
    mix = NormalMixture(w, m, s)
    x = np.linspace(-6, 9, 31)
    dens = np.sum(w * stats.norm.pdf(x[:, None], m, s), axis=1)
    cdf = np.sum(w * stats.norm.cdf(x[:, None], m, s), axis=1)
    np.testing.assert_allclose(np.exp(mix.log_prob(x)), dens, rtol=1e-13)
    np.testing.assert_allclose(mix.cdf(x), cdf, rtol=1e-13, atol=1e-16)
    q = np.array([1e-6, 0.025, 0.3, 0.5, 0.9, 0.975, 1 - 1e-9])
    np.testing.assert_allclose(mix.cdf(mix.quantile(q)), q, rtol=1e-11)
    np.testing.assert_allclose(mix.mean, np.sum(w * m), rtol=1e-15)
    np.testing.assert_allclose(
        mix.variance, np.sum(w * (s**2 + m**2)) - np.sum(w * m) ** 2, rtol=1e-13
    )
    draws = mix.sample(0, 40000)
    assert abs(draws.mean() - mix.mean) < 4 * mix.stddev / np.sqrt(40000)
    # batched: a (2,) batch with shared weights
    mix2 = NormalMixture(w, np.stack([m, m + 1]), s)
    np.testing.assert_allclose(
        mix2.quantile(0.5), [mix.quantile(0.5), mix.quantile(0.5) + 1], rtol=1e-12
    )


# --------------------------------------------------------------------------- brute force
def test_brute_force_reference_is_converged():
    coarse = brute_force(
        Y8,
        SE8,
        lambda m: stats.norm.logpdf(m, 0, 5),
        _halfcauchy(5.0),
        (-60.0, 60.0),
        num_mu=60,
        num_tau=30,
    )
    fine = brute_force(
        Y8, SE8, lambda m: stats.norm.logpdf(m, 0, 5), _halfcauchy(5.0), (-60.0, 60.0)
    )
    for name in ("mu_mean", "mu_sd", "tau_mean", "tau_sd", "log_evidence"):
        np.testing.assert_allclose(coarse[name], fine[name], rtol=1e-10)
    np.testing.assert_allclose(coarse["theta_sd"], fine["theta_sd"], rtol=1e-10)


def test_eight_schools_normal_mu_halfcauchy_tau(schools_normal):
    res, ref = schools_normal
    assert res.converged
    _compare(res, ref, rtol=1e-8)
    np.testing.assert_allclose(res.log_marginal_likelihood, ref["log_evidence"], rtol=1e-10)


def test_eight_schools_flat_mu_proper_tau_priors():
    # BDA3 uses flat mu; tau gets a proper prior: Uniform(0, 50) (bounded map) and
    # HalfCauchy(25) (unbounded map).
    flat = lambda m: np.zeros_like(m)  # noqa: E731
    res = solve_normal_normal(Y8, SE8, loc_prior="flat", scale_prior=dist.Uniform(0.0, 50.0))
    ref = brute_force(
        Y8,
        SE8,
        flat,
        lambda t: stats.uniform.logpdf(t, 0, 50),
        (-250, 250),
        tau_range=(0.0, 50.0),
        num_mu=100,
        num_tau=30,
    )
    _compare(res, ref, rtol=1e-8)
    res = solve_normal_normal(Y8, SE8, loc_prior="flat", scale_prior=dist.HalfCauchy(25.0))
    ref = brute_force(
        Y8, SE8, flat, _halfcauchy(25.0), (-400, 400), tau_scale=20.0, num_mu=100, num_tau=40
    )
    _compare(res, ref, rtol=1e-8)


@pytest.mark.parametrize(
    "prior, scipy_logpdf",
    [
        (dist.HalfNormal(8.0), lambda t: stats.halfnorm.logpdf(t, scale=8.0)),
        (dist.Exponential(0.2), lambda t: stats.expon.logpdf(t, scale=5.0)),
        (dist.Gamma(2.0, 0.3), lambda t: stats.gamma.logpdf(t, 2.0, scale=1 / 0.3)),
        (dist.InverseGamma(3.0, 10.0), lambda t: stats.invgamma.logpdf(t, 3.0, scale=10.0)),
        (dist.LogNormal(1.0, 0.8), lambda t: stats.lognorm.logpdf(t, 0.8, scale=np.e)),
        # not in the float64 table: evaluated through numpyro's own log_prob
        (
            dist.TruncatedNormal(4.0, 3.0, low=0.0),
            lambda t: stats.truncnorm.logpdf(t, -4 / 3, np.inf, loc=4.0, scale=3.0),
        ),
        # a user log-density: half Student-t with 3 degrees of freedom and scale 5
        (
            lambda t: np.log(2.0) + stats.t.logpdf(t, 3, scale=5.0),
            lambda t: np.log(2.0) + stats.t.logpdf(t, 3, scale=5.0),
        ),
    ],
)
def test_other_tau_priors(prior, scipy_logpdf):
    res = solve_normal_normal(Y8, SE8, loc_prior=dist.Normal(2.0, 10.0), scale_prior=prior)
    ref = brute_force(
        Y8, SE8, lambda m: stats.norm.logpdf(m, 2, 10), scipy_logpdf, (-100.0, 100.0), num_mu=80
    )
    _compare(res, ref, rtol=1e-8)


def test_tau_distribution_functions(schools_normal):
    res, ref = schools_normal
    q = np.array([0.01, 0.025, 0.5, 0.9, 0.999])
    np.testing.assert_allclose(res.tau_cdf(res.tau_quantile(q)), q, rtol=1e-10)
    # CDF against Gauss-Legendre integration of the exact density on [0, t]
    for t in (0.5, 3.0, 20.0):
        x, w = _composite_gl(0.0, t, 20)
        np.testing.assert_allclose(res.tau_cdf(t), np.sum(w * res.tau_pdf(x)), rtol=1e-9)
    # the density against the brute-force marginal of tau (mu integrated on the grid)
    tau, mu, _ = ref["grid"]
    t = np.array([0.7, 4.0, 15.0])
    mu_x, mu_w = _composite_gl(-60, 60, 120)
    lp = stats.norm.logpdf(mu_x, 0, 5)[None, :] + _halfcauchy(5.0)(t)[:, None]
    for yt, st in zip(Y8, SE8, strict=True):
        lp = lp + stats.norm.logpdf(yt, mu_x[None, :], np.sqrt(st**2 + t**2)[:, None])
    marg = np.sum(np.exp(lp) * mu_w, axis=1) / np.exp(ref["log_evidence"])
    np.testing.assert_allclose(res.tau_pdf(t), marg, rtol=1e-9)
    assert res.tau_quantiles.shape == res.quantile_levels.shape
    grid, dens = res.tau_density_grid(num=50)
    assert grid.shape == dens.shape == (50,) and np.all(dens > 0)
    np.testing.assert_allclose(grid[-1], res.tau_quantile(0.999), rtol=1e-14)


def test_quantiles_of_mu_and_theta_invert_brute_force_cdf(schools_wide):
    res, ref = schools_wide
    tau, mu, p = ref["grid"]
    # P(theta_t <= q) = E[Phi((q - cond mean) / cond sd)] over the (mu, tau) grid
    t = 0
    b = SE8[t] ** 2 / (SE8[t] ** 2 + tau**2)
    cmean = b[:, None] * mu[None, :] + (1 - b[:, None]) * Y8[t]
    csd = np.sqrt((1 - b) * SE8[t] ** 2)[:, None]
    for level, qv in zip(res.quantile_levels, res.theta_quantiles[t], strict=True):
        np.testing.assert_allclose(np.sum(p * stats.norm.cdf((qv - cmean) / csd)), level, rtol=1e-8)
    # P(mu <= q) = E[Phi((q - E[mu|tau]) / sd(mu|tau))]: mu | tau from the normal-prior
    # formula, evaluated independently here
    w = 1 / (SE8[None, :] ** 2 + tau[:, None] ** 2)
    prec = w.sum(axis=1) + 1 / 25
    mhat = (w * Y8).sum(axis=1) / prec
    ptau = p.sum(axis=1)
    for level, qv in zip(res.quantile_levels, res.mu_quantiles, strict=True):
        np.testing.assert_allclose(
            np.sum(ptau * stats.norm.cdf((qv - mhat) * np.sqrt(prec))), level, rtol=1e-8
        )


def test_predictive_against_brute_force(schools_wide):
    res, ref = schools_wide
    tau, mu, p = ref["grid"]
    x = np.array([-20.0, 0.0, 7.0, 30.0])
    pred = res.predictive()
    dens = [np.sum(p * stats.norm.pdf(v, mu[None, :], tau[:, None])) for v in x]
    np.testing.assert_allclose(np.exp(pred.log_prob(x)), dens, rtol=1e-8)
    obs = res.predictive(se=12.0)
    dens = [np.sum(p * stats.norm.pdf(v, mu[None, :], np.sqrt(tau**2 + 144)[:, None])) for v in x]
    np.testing.assert_allclose(np.exp(obs.log_prob(x)), dens, rtol=1e-8)
    np.testing.assert_allclose(pred.mean, ref["mu_mean"], rtol=1e-8)
    np.testing.assert_allclose(
        obs.variance, ref["mu_sd"] ** 2 + ref["tau_sd"] ** 2 + ref["tau_mean"] ** 2 + 144, rtol=1e-8
    )
    np.testing.assert_allclose(res.mu_marginal().stddev, ref["mu_sd"], rtol=1e-8)
    np.testing.assert_allclose(res.theta_marginal().mean, ref["theta_mean"], rtol=1e-8)


def test_exact_draws_match_exact_moments(schools_normal):
    res, _ = schools_normal
    n = 20000
    d = res.sample(3, n)
    assert d["theta"].shape == (n, 8) and d["tau"].min() > 0
    for name, mean, sd in (("mu", res.mu_mean, res.mu_sd), ("tau", res.tau_mean, res.tau_sd)):
        assert abs(d[name].mean() - mean) < 4 * sd / np.sqrt(n), name
    z = (d["theta"].mean(axis=0) - res.theta_mean) / (res.theta_sd / np.sqrt(n))
    assert np.all(np.abs(z) < 4.5)
    # the empirical CDF of tau at exact quantiles (binomial standard error)
    for q, qv in zip(res.quantile_levels, res.tau_quantiles, strict=True):
        assert abs(np.mean(d["tau"] <= qv) - q) < 4 * np.sqrt(q * (1 - q) / n)
    # deterministic in the seed; a JAX key works too
    np.testing.assert_array_equal(res.sample(3, 5)["mu"], res.sample(3, 5)["mu"])
    assert res.sample(jax.random.PRNGKey(1), 5)["theta"].shape == (5, 8)


def test_many_tasks_narrow_posterior():
    rng = np.random.default_rng(1)
    num = 400
    se = rng.uniform(0.5, 2.0, num)
    y = 1.0 + 0.8 * rng.standard_normal(num) + se * rng.standard_normal(num)
    res = solve_normal_normal(y, se, loc_prior="flat", scale_prior=dist.HalfNormal(3.0))
    # brute force on a zoomed box of +-12 posterior sds around the exact means
    box_tau = (max(res.tau_mean - 12 * res.tau_sd, 0.0), res.tau_mean + 12 * res.tau_sd)
    mu_box = (res.mu_mean - 12 * res.mu_sd, res.mu_mean + 12 * res.mu_sd)
    tau, wt = _composite_gl(*box_tau, 20)
    mu, wm = _composite_gl(*mu_box, 20)
    logp = stats.halfnorm.logpdf(tau, scale=3.0)[:, None] + np.zeros(mu.size)[None, :]
    for yt, st in zip(y, se, strict=True):
        logp = logp + stats.norm.logpdf(yt, mu[None, :], np.sqrt(st**2 + tau**2)[:, None])
    p = np.exp(logp - logp.max()) * wt[:, None] * wm[None, :]
    p /= p.sum()
    np.testing.assert_allclose(res.tau_mean, np.sum(p * tau[:, None]), rtol=1e-8)
    np.testing.assert_allclose(res.mu_mean, np.sum(p * mu[None, :]), rtol=1e-8)
    np.testing.assert_allclose(
        res.tau_sd, np.sqrt(np.sum(p * (tau[:, None] - res.tau_mean) ** 2)), rtol=1e-6
    )


# --------------------------------------------------------------------------- limits
def test_tau_to_zero_is_complete_pooling():
    w = 1 / SE8**2
    pooled, pooled_se = np.sum(w * Y8) / w.sum(), 1 / np.sqrt(w.sum())
    res = solve_normal_normal(Y8, SE8, loc_prior="flat", scale_prior=dist.Uniform(0.0, 1e-6))
    np.testing.assert_allclose(res.mu_mean, pooled, rtol=1e-9)
    np.testing.assert_allclose(res.mu_sd, pooled_se, rtol=1e-9)
    np.testing.assert_allclose(res.theta_mean, pooled, rtol=1e-9)
    np.testing.assert_allclose(res.theta_sd, pooled_se, rtol=1e-9)
    fixed = solve_normal_normal(Y8, SE8, loc_prior="flat", scale_prior=0.0)
    np.testing.assert_allclose(fixed.theta_mean, pooled, rtol=1e-14)
    assert fixed.tau_mean == 0.0 and fixed.tau_fixed


def test_tau_to_infinity_is_no_pooling():
    res = solve_normal_normal(Y8, SE8, loc_prior="flat", scale_prior=1e7)
    np.testing.assert_allclose(res.theta_mean, Y8, rtol=1e-9)
    np.testing.assert_allclose(res.theta_sd, SE8, rtol=1e-9)
    np.testing.assert_allclose(res.theta_quantiles[:, 3], Y8, rtol=1e-9)
    res = solve_normal_normal(
        Y8, SE8, loc_prior=dist.Normal(0, 5), scale_prior=dist.Uniform(1e6, 2e6)
    )
    np.testing.assert_allclose(res.theta_mean, Y8, rtol=1e-9)
    np.testing.assert_allclose(res.theta_sd, SE8, rtol=1e-9)


def test_fixed_mu_and_fixed_tau_closed_form():
    res = solve_normal_normal(Y8, SE8, loc_prior=3.0, scale_prior=6.0)
    b = SE8**2 / (SE8**2 + 36)
    np.testing.assert_allclose(res.theta_mean, b * 3 + (1 - b) * Y8, rtol=1e-14)
    np.testing.assert_allclose(res.theta_sd, np.sqrt((1 - b) * SE8**2), rtol=1e-14)
    np.testing.assert_allclose(
        res.log_marginal_likelihood,
        stats.norm.logpdf(Y8, 3.0, np.sqrt(SE8**2 + 36)).sum(),
        rtol=1e-14,
    )


# --------------------------------------------------------------------------- JAX pieces
def test_jax_marginals_and_conditionals():
    val = log_marginal_normal_normal(Y8, SE8, 2.0, 4.0)
    np.testing.assert_allclose(
        val, stats.norm.logpdf(Y8, 2.0, np.sqrt(SE8**2 + 16)).sum(), rtol=1e-13
    )
    batch = log_marginal_normal_normal(Y8, SE8, jnp.array([0.0, 2.0]), jnp.array([1.0, 4.0]))
    np.testing.assert_allclose(batch[1], val, rtol=1e-14)
    # mu integrated out numerically (Gauss-Legendre) for both prior kinds
    mu, wm = _composite_gl(-80, 80, 80)
    lik = np.exp(np.array([stats.norm.logpdf(Y8, m, np.sqrt(SE8**2 + 16)).sum() for m in mu]))
    np.testing.assert_allclose(
        np.exp(log_marginal_tau(Y8, SE8, 4.0, 1.0, 5.0)),
        np.sum(wm * lik * stats.norm.pdf(mu, 1.0, 5.0)),
        rtol=1e-11,
    )
    np.testing.assert_allclose(np.exp(log_marginal_tau(Y8, SE8, 4.0)), np.sum(wm * lik), rtol=1e-11)
    m, s = mu_conditional(Y8, SE8, 4.0, 1.0, 5.0)
    post = wm * lik * stats.norm.pdf(mu, 1.0, 5.0)
    post /= post.sum()
    np.testing.assert_allclose(m, np.sum(post * mu), rtol=1e-11)
    np.testing.assert_allclose(s, np.sqrt(np.sum(post * (mu - m) ** 2)), rtol=1e-10)
    # theta | mu, tau: precision-weighted normal
    tm, ts = theta_conditional(Y8, SE8, 2.0, 4.0)
    prec = 1 / SE8**2 + 1 / 16
    np.testing.assert_allclose(tm, (Y8 / SE8**2 + 2.0 / 16) / prec, rtol=1e-14)
    np.testing.assert_allclose(ts, 1 / np.sqrt(prec), rtol=1e-14)
    tm0, ts0 = theta_conditional(Y8, SE8, 2.0, 0.0)
    np.testing.assert_allclose(tm0, 2.0)
    np.testing.assert_allclose(ts0, 0.0)


def test_jax_marginal_gradients_match_finite_differences():
    f = lambda mu, tau: log_marginal_normal_normal(Y8, SE8, mu, tau)  # noqa: E731
    g = jax.grad(f, argnums=(0, 1))(2.0, 4.0)
    h = 1e-6
    np.testing.assert_allclose(g[0], (f(2 + h, 4.0) - f(2 - h, 4.0)) / (2 * h), rtol=1e-7)
    np.testing.assert_allclose(g[1], (f(2.0, 4 + h) - f(2.0, 4 - h)) / (2 * h), rtol=1e-7)
    f2 = lambda tau: log_marginal_tau(Y8, SE8, tau, 0.0, 5.0)  # noqa: E731
    np.testing.assert_allclose(jax.grad(f2)(4.0), (f2(4 + h) - f2(4 - h)) / (2 * h), rtol=1e-7)


def test_log_marginal_tau_agrees_with_solver():
    # log p(y) with tau fixed equals the JAX marginal at that tau
    res = solve_normal_normal(Y8, SE8, loc_prior=dist.Normal(1.0, 5.0), scale_prior=4.0)
    np.testing.assert_allclose(
        res.log_marginal_likelihood, log_marginal_tau(Y8, SE8, 4.0, 1.0, 5.0), rtol=1e-13
    )


# --------------------------------------------------------------------------- Posterior
def test_normal_normal_posterior_schema(schools_normal):
    res, _ = schools_normal
    tasks = TaskSet.from_estimates(Y8, SE8, labels=list("ABCDEFGH"))
    post = normal_normal(
        tasks, dist.Normal(0.0, 5.0), dist.HalfCauchy(5.0), num_samples=250, num_chains=2, seed=1
    )
    assert post.method == "exact"
    assert post.samples["theta"].shape == (2, 250, 8)
    assert post.samples["mu"].shape == (2, 250) and post.samples["tau"].shape == (2, 250)
    assert post.dims["theta"] == ["task"] and post.coords["task"] == list("ABCDEFGH")
    ll = post.log_likelihood["y"]
    np.testing.assert_allclose(ll, stats.norm.logpdf(Y8, post.samples["theta"], SE8), rtol=1e-12)
    np.testing.assert_array_equal(post.observed_data["y"], Y8)
    ex = post.info["exact"]
    np.testing.assert_allclose(ex.mu_mean, res.mu_mean, rtol=1e-12)
    assert ex.labels == tuple("ABCDEFGH")


@pytest.mark.arviz
def test_normal_normal_arviz_export():
    from bayesmeta import arviz as bm_arviz

    post = normal_normal(
        TaskSet.from_estimates(Y8, SE8, labels=list("ABCDEFGH")), num_samples=50, num_chains=2
    )
    data = post.to_arviz()
    assert {"posterior", "log_likelihood", "observed_data"} <= set(bm_arviz.group_names(data))
    theta = bm_arviz.group_arrays(data)["theta"]
    assert theta.shape == (2, 50, 8)


def test_raw_rows_reduce_to_sufficient_statistics():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(4), [3, 1, 5, 2])
    scale = rng.uniform(0.5, 2.0, ids.size)
    y = rng.normal(size=ids.size) + ids
    rows = TaskSet.from_arrays(y=y, task=ids, noise_scale=scale)
    post = normal_normal(rows, "flat", dist.HalfNormal(2.0), num_samples=20, num_chains=1)
    w = 1 / scale**2
    est = np.bincount(ids, w * y) / np.bincount(ids, w)
    se = 1 / np.sqrt(np.bincount(ids, w))
    direct = solve_normal_normal(est, se, loc_prior="flat", scale_prior=dist.HalfNormal(2.0))
    np.testing.assert_allclose(post.info["exact"].theta_mean, direct.theta_mean, rtol=1e-12)
    ll = post.log_likelihood["y"]
    assert ll.shape == (1, 20, ids.size) and post.dims["y"] == ["obs"]
    theta = post.samples["theta"][..., rows.task_index]
    np.testing.assert_allclose(ll, stats.norm.logpdf(rows.y, theta, rows.noise_scale), rtol=1e-12)


def test_fit_exact_eligibility():
    from bayesmeta import likelihoods as lk
    from bayesmeta import populations as pops
    from bayesmeta.model import Hierarchical

    tasks = TaskSet.from_estimates(Y8, SE8)
    model = Hierarchical(
        lk.NormalKnownNoise(), pops.Normal(loc=dist.Normal(0, 5), scale=dist.HalfCauchy(5))
    )
    post = fit_exact(model, tasks, seed=0, num_samples=10, num_chains=2)
    assert post.samples["theta"].shape == (2, 10, 8) and post.model is model
    fixed = Hierarchical(lk.NormalKnownNoise(), pops.Normal(loc=1.0, scale=dist.HalfNormal(3)))
    post = fit_exact(fixed, tasks, seed=0, num_samples=10, num_chains=1)
    assert "mu" not in post.samples and "tau" in post.samples
    with pytest.raises(ValueError, match="StudentT"):
        fit_exact(Hierarchical(lk.NormalKnownNoise(), pops.StudentT()), tasks)
    with pytest.raises(ValueError, match="Cauchy"):
        fit_exact(Hierarchical(lk.NormalKnownNoise(), pops.Normal(loc=dist.Cauchy(0, 1))), tasks)
    with pytest.raises(ValueError, match="unknown option"):
        fit_exact(model, tasks, num_warmup=5)


def test_bad_input_is_rejected_before_work():
    with pytest.raises(ValueError, match="se: must be finite and positive.*task 2"):
        solve_normal_normal([1.0, 2.0, 3.0], [1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="loc_prior"):
        solve_normal_normal(Y8, SE8, loc_prior=dist.Cauchy(0.0, 1.0))
    with pytest.raises(ValueError, match="scale_prior"):
        solve_normal_normal(Y8, SE8, scale_prior=dist.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="scale_prior"):
        solve_normal_normal(Y8, SE8, scale_prior=-1.0)
    with pytest.raises(ValueError, match="noise_scale"):
        normal_normal(TaskSet.from_arrays(y=np.ones(4), task=np.array([0, 0, 1, 1])))
    with pytest.raises(ValueError, match="labels"):
        solve_normal_normal(Y8, SE8, labels=["a"])
