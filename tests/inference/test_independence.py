"""The independence Metropolis-Hastings sampler (bayesmeta.inference.independence) on
targets whose moments are known in closed form."""

import math

import numpy as np
import pytest
from scipy import special, stats

from bayesmeta.inference import independence as imh


def _skewed():
    """x0 = log of a Gamma(3, 1) draw, x1 | x0 ~ N(0.5 x0, 0.3^2): a skewed, correlated
    2-D density. Exact moments: E log G = digamma(3), Var log G = trigamma(3)."""
    a = 3.0

    def logp(xs, final=False):
        x0, x1 = xs[:, 0], xs[:, 1]
        lg = a * x0 - np.exp(x0) - special.gammaln(a)
        return lg + stats.norm.logpdf(x1, 0.5 * x0, 0.3)

    def value_and_grad(x):
        x0, x1 = x
        v = -(a * x0 - math.exp(x0)) + 0.5 * ((x1 - 0.5 * x0) / 0.3) ** 2
        g0 = -(a - math.exp(x0)) - 0.5 * (x1 - 0.5 * x0) / 0.09
        g1 = (x1 - 0.5 * x0) / 0.09
        return v, np.array([g0, g1])

    mean0, var0 = special.digamma(a), special.polygamma(1, a)
    mean = np.array([mean0, 0.5 * mean0])
    sd = np.sqrt([var0, 0.25 * var0 + 0.09])
    return logp, value_and_grad, mean, sd


def _mcse(z):
    """Batch-means standard error of each coordinate's mean over chains x draws."""
    chains, draws, _ = z.shape
    b = draws // 20
    means = z[:, : 20 * b].reshape(chains, 20, b, -1).mean(axis=2).reshape(-1, z.shape[-1])
    return means.std(axis=0, ddof=1) / math.sqrt(means.shape[0])


def test_recovers_the_exact_moments_of_a_skewed_density():
    logp, vg, mean, sd = _skewed()
    z, st, info = imh.sample(logp, vg, np.zeros(2), chains=4, draws=2000, warmup=1000, seed=0)
    assert z.shape == (4, 2000, 2) and st["accept_prob"].shape == (4, 2000)
    flat = z.reshape(-1, 2)
    se = _mcse(z)
    assert np.all(np.abs(flat.mean(axis=0) - mean) < 4 * se), (flat.mean(0), mean, se)
    # the sd: within 5% (about 4 of its own Monte-Carlo errors at this ESS)
    np.testing.assert_allclose(flat.std(axis=0), sd, rtol=0.05)
    # the split scales see the skew: the long left side of log G is the wider one
    q = info["proposal"]
    assert info["acceptance"].min() > 0.5
    assert np.max(q["lower"] / q["upper"]) > 1.2 or np.max(q["upper"] / q["lower"]) > 1.2


def test_draws_index_the_final_evaluation():
    logp, vg, _, _ = _skewed()
    seen = {}

    def logp_kept(xs, final):
        if final:
            seen["xs"] = xs.copy()
        return logp(xs)

    z, st, _ = imh.sample(logp_kept, vg, np.zeros(2), chains=2, draws=300, warmup=200, seed=1)
    np.testing.assert_array_equal(seen["xs"][st["index"]], z)
    # a rejection repeats the row before it
    rejected = ~st["accepted"][:, 1:]
    assert np.all(st["index"][:, 1:][rejected] == st["index"][:, :-1][rejected])


def test_the_split_t_density_is_normalised_and_matches_its_draws():
    rng = np.random.default_rng(0)
    axes = np.array([[1.0, 0.0], [0.6, 0.5]])
    q = imh.Proposal(np.array([0.3, -0.2]), axes, np.array([1.8, 0.7]), np.array([0.6, 1.3]), 7.0)
    # E_q[p / q] = 1 for a normalised p (a standard bivariate normal)
    x = q.draw(rng, 400_000)
    p = stats.multivariate_normal(np.zeros(2), np.eye(2)).logpdf(x)
    ratio = np.exp(p - q.logpdf(x))
    assert abs(ratio.mean() - 1.0) < 4 * ratio.std() / math.sqrt(len(x))
    # mean of u_i: (upper - lower) E|v_i| / 2, with E|v_i| that of a t_7 coordinate
    e_abs = 2 * math.sqrt(7) * math.gamma(4) / (math.sqrt(math.pi) * math.gamma(3.5) * 6)
    u = q.whiten(x)
    np.testing.assert_allclose(u.mean(axis=0), 0.5 * (q.upper - q.lower) * e_abs, atol=0.01)


def test_at_mode_restarts_the_search_until_the_surface_stops_moving():
    logp, vg, _, _ = _skewed()
    calls = []

    def at_mode(x):
        calls.append(x.copy())
        return len(calls) < 3  # "moved" twice

    _, _, info = imh.sample(
        logp, vg, np.zeros(2), chains=1, draws=50, warmup=50, seed=0, at_mode=at_mode
    )
    assert len(calls) == 3 and info["mode_searches"] == 3


def test_no_curvature_is_an_independence_error():
    def logp(xs, final=False):
        return np.zeros(len(xs))

    def flat(x):
        return 0.0, np.zeros_like(x)

    with pytest.raises(imh.IndependenceError, match="no positive curvature"):
        imh.sample(logp, flat, np.zeros(2), chains=1, draws=10, warmup=10, seed=0)
