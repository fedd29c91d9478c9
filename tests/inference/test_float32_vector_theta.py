"""Float32-stable Gaussian algebra for vector theta (several varying coefficients) and the
scalar Chebyshev marginal built from centred statistics.

References: the marginal and the task posterior in exact rational arithmetic (Python's
``fractions``, the textbook Woodbury form of :mod:`bayesmeta.exact.linear` with no
rounding at all); a fit of data scaled by a constant against the unscaled fit
back-transformed (an exact change of variables when the priors are scaled with it); and
the simulation's true noise. The suite runs in float64 (conftest); the float32 cases run
under ``jax.enable_x64(False)``, the library's default dtype."""

import math
import warnings
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from test_fit import _mcse_mean_sd

import bayesmeta as bm
from bayesmeta.inference import _gaussian as gauss
from bayesmeta.inference.diagnostics import FitWarning

FIT = dict(num_chains=2, num_warmup=200, num_samples=200, progress_bar=False, seed=0)
SMALL = dict(FIT, num_warmup=100, num_samples=100)


def _lines(num_tasks=6, seed=0):
    """``y = a_t + b_t x + N(0, 0.5)``, 5 to 12 rows per task, x in (-2, 2)."""
    rng = np.random.default_rng(seed)
    theta = np.array([1.0, -0.5]) + np.array([0.6, 0.3]) * rng.standard_normal((num_tasks, 2))
    task = np.repeat(np.arange(num_tasks), rng.integers(5, 13, num_tasks))
    x = rng.uniform(-2.0, 2.0, task.size)
    y = theta[task, 0] + theta[task, 1] * x + 0.5 * rng.standard_normal(task.size)
    return x, y, task


def _exact(x, y, task, mu, tau, sigma):
    """Per task ``log p(y_t)``, posterior mean and covariance of (intercept, slope) under
    ``theta_t ~ N(mu, diag(tau)^2)``, ``y ~ N(a + b x, sigma^2)``: every sum, product and
    inverse in exact rationals; only the final logs and the conversion to float round."""
    mu = [Fraction(float(v)) for v in mu]
    L = [Fraction(float(v)) for v in tau]
    s2 = Fraction(float(sigma)) ** 2
    lps, means, covs = [], [], []
    for t in range(int(task.max()) + 1):
        rows = np.flatnonzero(task == t)
        X = [(Fraction(1), Fraction(float(x[i]))) for i in rows]
        Y = [Fraction(float(y[i])) for i in rows]
        A = [[sum(r[i] * r[j] for r in X) for j in range(2)] for i in range(2)]
        b = [sum(r[i] * v for r, v in zip(X, Y, strict=True)) for i in range(2)]
        c = sum(v * v for v in Y)
        M = [[int(i == j) + L[i] * A[i][j] * L[j] / s2 for j in range(2)] for i in range(2)]
        det = M[0][0] * M[1][1] - M[0][1] * M[1][0]
        Mi = [[M[1][1] / det, -M[0][1] / det], [-M[1][0] / det, M[0][0] / det]]
        g = [(b[i] - sum(A[i][j] * mu[j] for j in range(2))) / s2 for i in range(2)]
        quad = sum(L[i] * g[i] * Mi[i][j] * L[j] * g[j] for i in range(2) for j in range(2))
        muAmu = sum(mu[i] * A[i][j] * mu[j] for i in range(2) for j in range(2))
        rr = (c - 2 * sum(mu[i] * b[i] for i in range(2)) + muAmu) / s2
        log_det = math.log(det.numerator) - math.log(det.denominator)
        lps.append(
            -0.5 * (len(rows) * math.log(2 * math.pi * float(s2)) + log_det + float(rr - quad))
        )
        cov = [[L[i] * Mi[i][j] * L[j] for j in range(2)] for i in range(2)]
        means.append([float(mu[i] + sum(cov[i][j] * g[j] for j in range(2))) for i in range(2)])
        covs.append([[float(v) for v in row] for row in cov])
    return np.array(lps), np.array(means), np.array(covs)


SCALED = dict(x=lambda x: x * 1e4 + 1e4, y=lambda y: y * 1e-6)
# hyperparameters on the data's scale, on the priors' scale (where NUTS starts) and mixed
HYPER = {
    "data": ([1.5e-6, -5e-11], [6e-7, 3e-11], 5e-7),
    "prior": ([1.0, -0.5], [1.0, 1.0], 1.0),
    "mixed": ([0.0, 0.0], [1.0, 1.0], 5e-7),
}


@pytest.mark.parametrize("where", sorted(HYPER))
def test_centred_vector_algebra_is_accurate_in_float32(where):
    """x times 1e4 plus 1e4, y times 1e-6 (intercept and slope varying): the float32
    centred marginal and posterior against the exact rational values. The raw Woodbury
    form is off by more than its own size at the priors' scale (``rr - |z|^2``, two
    numbers of 1e20, cancel), which is the failure this fixes."""
    x, y, task = _lines()
    x, y = SCALED["x"](x), SCALED["y"](y)
    mu, tau, sigma = (np.asarray(v, float) for v in HYPER[where])
    lp_ref, mean_ref, cov_ref = _exact(x, y, task, mu, tau, sigma)
    ts = bm.TaskSet.from_arrays(x=x, y=y, task=task)
    lik = bm.likelihoods.LinearRegression()
    with jax.enable_x64(False):
        stats = gauss.stable_task_stats(lik, ts)
        assert isinstance(stats, gauss.CentredStats) and stats.estimate.dtype == jnp.float32
        h = gauss.LinearHyper(
            jnp.asarray(mu, jnp.float32),
            jnp.asarray(np.diag(tau), jnp.float32),
            jnp.asarray(sigma, jnp.float32),
        )
        lp = np.asarray(gauss.log_marginal(stats, h), float)
        post = gauss.task_posterior(stats, h)
        raw_lp = np.asarray(gauss.log_marginal(gauss.task_stats(lik, ts), h), float)
    sd = np.sqrt(np.einsum("tii->ti", cov_ref))
    # float32 resolves about 6e-8 relative: a few roundings of the largest term
    np.testing.assert_allclose(lp, lp_ref, rtol=2e-6)
    np.testing.assert_array_less(np.abs(np.asarray(post.mean, float) - mean_ref), 1e-4 * sd)
    rel_cov = np.abs(np.asarray(post.cov, float) - cov_ref) / (sd[:, :, None] * sd[:, None, :])
    np.testing.assert_array_less(rel_cov, 1e-4)
    if where == "prior":
        assert np.max(np.abs(raw_lp - lp_ref) / np.abs(lp_ref)) > 0.1


def test_centred_vector_stats_equal_the_raw_algebra_in_float64():
    """On well-scaled data in float64 the centred and the raw forms are the same numbers
    (to rounding), and the task posterior's covariance is the raw one."""
    x, y, task = _lines(num_tasks=8, seed=1)
    ts = bm.TaskSet.from_arrays(x=x, y=y, task=task, noise_scale=np.linspace(0.5, 2, x.size))
    lik = bm.likelihoods.LinearRegression(noise="known")
    stats, raw = gauss.stable_task_stats(lik, ts), gauss.task_stats(lik, ts)
    assert isinstance(stats, gauss.CentredStats)
    h = gauss.LinearHyper(jnp.array([0.3, -0.2]), jnp.array([[0.7, 0.0], [0.2, 0.4]]), 1.3)
    np.testing.assert_allclose(gauss.log_marginal(stats, h), gauss.log_marginal(raw, h), rtol=1e-12)
    a, b = gauss.task_posterior(stats, h), gauss.task_posterior(raw, h)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(a.cov, b.cov, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("case", ["few_rows", "collinear"])
def test_vector_tasks_without_a_least_squares_estimate_keep_the_raw_form(case):
    x, y, task = _lines()
    if case == "few_rows":  # task 0 keeps one row: fewer rows than coefficients
        drop = np.flatnonzero(task == 0)[1:]
        x, y, task = np.delete(x, drop), np.delete(y, drop), np.delete(task, drop)
    else:  # task 2's x constant: its slope and intercept are not separately identified
        x = np.where(task == 2, 1.5, x)
    stats = gauss.stable_task_stats(
        bm.likelihoods.LinearRegression(), bm.TaskSet.from_arrays(x=x, y=y, task=task)
    )
    assert isinstance(stats, gauss.LinearStats)


@pytest.mark.slow
def test_collapsed_vector_float32_on_scaled_data_is_the_back_transformed_fit():
    """y times 1e-6 with every prior scale times 1e-6 is the same model in other units:
    the posterior of (mu, tau, sigma) is that of the unscaled data times 1e-6 exactly.
    The float32 fit of the scaled data (1e-6-sized numbers everywhere) against the float64
    fit of the unscaled data, within 4 combined Monte-Carlo standard errors."""
    x, y, task = _lines(num_tasks=12, seed=2)

    def model(c):
        return bm.Hierarchical(
            bm.likelihoods.LinearRegression(noise_prior=dist.HalfNormal(2.0 * c)),
            bm.populations.Normal(loc=dist.Normal(0.0, 3.0 * c), scale=dist.HalfNormal(2.0 * c)),
        )

    ref = bm.fit(model(1.0), bm.TaskSet.from_arrays(x=x, y=y, task=task), method="collapsed", **FIT)
    with jax.enable_x64(False):
        ts = bm.TaskSet.from_arrays(x=x, y=y * 1e-6, task=task)
        got = bm.fit(model(1e-6), ts, method="collapsed", **FIT)
    assert got.samples["theta"].dtype == np.float32
    assert np.all(np.isfinite(got.samples["theta"]))
    for name in ("mu", "tau", "sigma", "theta"):
        m1, _, se1, _ = _mcse_mean_sd(np.asarray(got.samples[name], float) * 1e6)
        m2, _, se2, _ = _mcse_mean_sd(ref.samples[name])
        assert np.all(np.abs(m1 - m2) < 4 * np.sqrt(se1**2 + se2**2)), name


@pytest.mark.slow
def test_collapsed_vector_float32_on_offset_and_scaled_data():
    """x times 1e4 plus 1e4, y times 1e-6 under unit-scale priors in float32: finite
    draws, no broken chain, and the noise found (the true sigma is 0.5e-6; 200 draws of
    a posterior whose sd is about 6% of it). Before the fix the raw statistics gave
    sigma about 1.5, the prior's scale, without any error."""
    x, y, task = _lines(num_tasks=12, seed=2)
    model = bm.Hierarchical(
        bm.likelihoods.LinearRegression(),
        bm.populations.Normal(loc=dist.Normal(0.0, 3.0), scale=dist.HalfNormal(2.0)),
    )
    with warnings.catch_warnings(), jax.enable_x64(False):
        warnings.simplefilter("ignore", FitWarning)  # the slope's tau is barely identified
        ts = bm.TaskSet.from_arrays(x=SCALED["x"](x), y=SCALED["y"](y), task=task)
        post = bm.fit(model, ts, method="collapsed", **SMALL)
    assert np.all(np.isfinite(post.samples["theta"]))
    assert post.info["diagnostics"]["bad_chains"] == []
    sigma = float(np.mean(post.samples["sigma"]))
    assert 0.7 * 0.5e-6 < sigma < 1.3 * 0.5e-6


def test_chebyshev_marginal_uses_the_centred_statistics_in_float32():
    """Scalar theta, shared noise, 300 tasks of y = 1e4 + theta_t + noise: the Chebyshev
    form (``marginal="auto"`` picks it above 256 tasks) built in float32 against the
    float64 direct sum over tasks. From the raw sums, ``c - b^2 / A`` (1e11 - 1e11 in
    float32) left the residual sum of squares, and so sigma's likelihood, wrong by
    thousands."""
    from bayesmeta.inference import collapsed as col
    from bayesmeta.inference._scalar_marginal import scalar_log_marginal_sum

    rng = np.random.default_rng(3)
    task = np.repeat(np.arange(300), rng.integers(2, 8, 300))
    y = 1e4 + rng.normal(size=300)[task] + 0.5 * rng.normal(size=task.size)
    ts = bm.TaskSet.from_arrays(y=y, task=task)
    lik = bm.likelihoods.Normal()
    points = [(1e4, 1.0, 0.25), (1e4 + 0.3, 0.5, 0.3), (0.0, 1.0, 1.0)]
    with jax.enable_x64(False):
        stats = gauss.stable_task_stats(lik, ts)
        form, info = col._marginal_form(stats, (), "chebyshev")
        got = [float(scalar_log_marginal_sum(form, *map(jnp.float32, pt))) for pt in points]
    assert info["form"] == "chebyshev"
    ref_stats = gauss.stable_task_stats(lik, ts)  # float64 (conftest)
    for pt, value in zip(points, got, strict=True):
        pt = [float(np.float32(v)) for v in pt]  # the float32 inputs (1e4 + 0.3 rounds)
        h = gauss.LinearHyper(jnp.array([pt[0]]), jnp.array([[pt[1]]]), jnp.sqrt(pt[2]))
        ref = float(jnp.sum(gauss.log_marginal(ref_stats, h)))
        # float32 rounding of the sum's largest terms (|ref| up to 1e11 at mu = 0)
        assert abs(value - ref) <= 1e-5 * abs(ref) + 1e-2, (pt, value, ref)
