"""Exact normal-normal at scale and in any task order: the streamed quadrature equals the
in-memory one, theta moments in task blocks equal the full array, draws follow the task
labels, and a single task is solved (checked against scipy's own quadrature)."""

import math

import jax
import numpy as np
import numpyro.distributions as dist
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize, stats

import bayesmeta.exact.normal as nn
from bayesmeta import _streams


def _data(num, seed=0):
    rng = np.random.default_rng(seed)
    se = rng.uniform(0.5, 2.0, num)
    return rng.normal(1.0, 0.7, num) + se * rng.normal(size=num), se


def _fields(res):
    return (
        res.mu_mean,
        res.mu_sd,
        res.tau_mean,
        res.tau_sd,
        res.log_marginal_likelihood,
        res.theta_mean,
        res.theta_sd,
        res.tau_nodes,
        res.tau_weights,
        res._rule.edges,
    )


@pytest.mark.parametrize("loc_prior", [None, "flat"])
def test_streamed_rule_splits_the_same_panels(monkeypatch, loc_prior):
    # the reference is the in-memory adaptive rule (all per-panel errors held at once);
    # 1,000 tasks: the rule splits panels beyond the 112 it starts from
    y, se = _data(1000)
    ref = nn.solve_normal_normal(y, se, loc_prior=loc_prior, scale_prior=dist.HalfCauchy(1.0))
    monkeypatch.setattr(nn, "_STREAM_ABOVE", 0)
    monkeypatch.setattr(nn, "_TASK_BLOCK", 300)  # several task blocks, one ragged
    out = nn.solve_normal_normal(y, se, loc_prior=loc_prior, scale_prior=dist.HalfCauchy(1.0))
    assert out.num_panels == ref.num_panels > 112
    # the rule (panels, nodes, weights) and what follows from it alone: bit for bit
    for a, b in zip(_fields(ref), _fields(out), strict=True):
        if a is not ref.theta_mean and a is not ref.theta_sd:
            np.testing.assert_array_equal(a, b)
    # theta's moments are summed in other task blocks (numpy's einsum may then order the
    # additions otherwise): equal to rounding
    np.testing.assert_allclose(out.theta_mean, ref.theta_mean, rtol=1e-14)
    np.testing.assert_allclose(out.theta_sd, ref.theta_sd, rtol=1e-14)


def test_theta_moments_in_task_blocks_equal_the_full_array(monkeypatch):
    y, se = _data(30)
    res = nn.solve_normal_normal(y, se)
    full = nn._batch_moments(res._rule, y[None], se[None], conditionals=True)
    monkeypatch.setattr(nn, "_TASK_BLOCK", 1)  # blocks of a few tasks
    blocks = nn._batch_moments(res._rule, y[None], se[None], conditionals=False)
    for k in ("mu_mean", "tau_var"):
        np.testing.assert_array_equal(full[k], blocks[k])
    for k in ("theta_mean", "theta_var"):  # the same sums, in other blocks: to rounding
        np.testing.assert_allclose(full[k], blocks[k], rtol=1e-14)


@settings(max_examples=8, deadline=None)
@given(
    num=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    loc=st.sampled_from([None, "flat", 1.0]),
)
def test_reordering_tasks_only_reorders_draws(num, seed, loc):
    rng = np.random.default_rng(seed)
    y = np.round(rng.normal(0, 3, num), 1)  # rounded: ties in y are ordered by se
    se = rng.uniform(0.5, 3, num)
    labels = [f"task {i}" for i in range(num)]
    perm = rng.permutation(num)
    prior = dist.HalfNormal(2.0)
    a = nn.solve_normal_normal(y, se, loc_prior=loc, scale_prior=prior, labels=labels)
    b = nn.solve_normal_normal(
        y[perm], se[perm], loc_prior=loc, scale_prior=prior, labels=[labels[i] for i in perm]
    )
    da, db = a.sample(seed, 50), b.sample(seed, 50)
    np.testing.assert_array_equal(da["tau"], db["tau"])
    np.testing.assert_array_equal(da["mu"], db["mu"])
    np.testing.assert_array_equal(da["theta"][:, perm], db["theta"])
    np.testing.assert_array_equal(a.theta_mean[perm], b.theta_mean)


def test_draws_follow_labels_not_positions():
    y, se = _data(5)
    a = nn.solve_normal_normal(y, se, labels=list("abcde")).sample(1, 400)["theta"]
    b = nn.solve_normal_normal(y, se, labels=list("abcdz")).sample(1, 400)["theta"]
    # same data, same seed: the tasks that kept their label keep their draws exactly...
    np.testing.assert_array_equal(a[:, :4], b[:, :4])
    # ... the relabelled one gets a new stream (same distribution, other numbers)
    assert not np.allclose(a[:, 4], b[:, 4])
    # the per-task normals are independent standard normals (moments within 4 Monte-Carlo
    # standard errors: mean 1/sqrt(n), variance sqrt(2/n), correlation 1/sqrt(n))
    n = 20000
    hashes = _streams.label_hashes([f"t{i}" for i in range(6)])
    z = _streams.task_normals_f64(jax.random.PRNGKey(3), hashes, n)
    assert z.shape == (n, 6) and z.dtype == np.float64
    assert np.all(np.abs(z.mean(axis=0)) < 4 / math.sqrt(n))
    assert np.all(np.abs(z.var(axis=0) - 1) < 4 * math.sqrt(2 / n))
    assert np.max(np.abs(np.corrcoef(z.T)[np.triu_indices(6, 1)])) < 4 / math.sqrt(n)
    assert stats.kstest(z[:, 0], "norm").pvalue > 1e-3


def test_single_task_against_scipy():
    # one task, mu ~ N(0, 5), tau ~ HalfCauchy(5): p(tau | y) ~ tau**-3 has no variance;
    # the reference integrates p(tau | y) = HalfCauchy(tau) N(y | 0, 25 + s^2 + tau^2)
    # with scipy.integrate.quad, independently of the library (tau_mean = 5.1059076732)
    y, s = 1.5, 1.0
    res = nn.solve_normal_normal([y], [s])

    def dens(t):
        return stats.halfcauchy(scale=5).pdf(t) * stats.norm(0, math.sqrt(25 + s**2 + t**2)).pdf(y)

    def q(f):  # [0, 50] directly, the heavy tail [50, inf) as t = 1/x
        kw = dict(epsabs=0, epsrel=1e-13, limit=500)
        head = integrate.quad(lambda t: f(t) * dens(t), 0, 50, **kw)[0]
        tail = integrate.quad(lambda x: f(1 / x) * dens(1 / x) / x**2, 0, 1 / 50, **kw)[0]
        return head + tail

    z = q(lambda t: 1.0)
    shrink_mu = lambda t: 25.0 / (25.0 + s**2 + t**2)  # noqa: E731  E[mu | tau, y] / y
    mu_mean = q(lambda t: shrink_mu(t) * y) / z
    # E[theta | tau, y] = B E[mu | tau] + (1 - B) y, B = s^2 / (s^2 + tau^2)
    theta_mean = q(lambda t: y - s**2 / (s**2 + t**2) * (y - shrink_mu(t) * y)) / z
    tau_mean = q(lambda t: t) / z
    median = optimize.brentq(
        lambda m: integrate.quad(dens, 0, m, epsrel=1e-12)[0] / z - 0.5, 1e-6, 1e3, xtol=1e-13
    )
    assert res.converged
    np.testing.assert_allclose(res.mu_mean, mu_mean, rtol=1e-8)
    np.testing.assert_allclose(res.theta_mean[0], theta_mean, rtol=1e-8)
    np.testing.assert_allclose(res.tau_mean, tau_mean, rtol=1e-8)
    np.testing.assert_allclose(res.tau_quantile(0.5), median, rtol=1e-8)
    assert res.tau_sd == np.inf  # E[tau^2] diverges: reported, not hidden
    assert np.isfinite(res.mu_sd) and np.isfinite(res.theta_sd[0])
    draws = res.sample(0, 20000)
    assert np.all(np.isfinite(draws["theta"]))
    # inverse-CDF draws of tau: the median within Monte-Carlo error (binomial, 4 sd)
    assert abs(np.mean(draws["tau"] < median) - 0.5) < 4 * 0.5 / math.sqrt(20000)
