"""Linear-Gaussian pieces shared by collapsed inference and ``adapt``: which models have
Gaussian per-task parameters that can be integrated out, their sufficient statistics, and
the population as ``(mu, L)`` with ``Sigma = L L^T``. The algebra itself is
:mod:`bayesmeta.exact.linear`; scalar parameters get an elementwise fast path.

Numerical stability (float32). The textbook form of the marginal,
``(c - 2 mu b + mu^2 A) - tau^2 (b - A mu)^2 / (1 + tau^2 A)`` with ``A = sum x^2 / s^2``,
subtracts two numbers of size ``A mu^2``; in float32 with small standard errors
(``A = 1e18`` at ``se = 1e-9``) the difference is rounding noise, NUTS freezes and the
``theta`` draws are wrong or NaN. For scalar ``theta`` (one varying column, no common
coefficients) :func:`stable_task_stats` therefore *centres* the statistics: it accumulates
in float64 numpy, outside the traced code, each task's estimate ``b / A``, its variance
``1 / A`` and its within-task residual ``sum (y - x b / A)^2 / s^2``, and
:func:`log_marginal` and :func:`scalar_posterior` use the equivalent form
``(estimate - mu)^2 / (sigma^2 / A + tau^2) + log(sigma^2 / A + tau^2) - log(sigma^2 / A)``,
which has no cancellation and no product ``tau^2 A`` that could overflow.

Vector ``theta`` (``p`` varying coefficients, no common coefficients) is centred the same
way when every task's ``A_t`` is of full rank: each task's least-squares estimate
``e_t = A_t^{-1} b_t``, its unit-noise covariance ``P_t = A_t^{-1}`` (and ``log det P_t``)
and the within-task residual ``sum (y - x e_t)^2 / s^2`` are computed in float64 numpy,
each from the rows (``x`` columns scaled to unit size and the task's ``x`` mean taken out
before the solve, then transformed back exactly), and the marginal is
``N(e_t | mu, sigma^2 P_t + Sigma)`` times the residual's term: no difference of two large
sums (the raw form's ``rr - |z|^2`` cancels as soon as the data outweigh the prior; for
``x`` times 1e4 plus 1e4 and ``y`` times 1e-6 it lost every digit even in float64). The
posterior mean is the weighted form ``S V^{-1} mu + Sigma V^{-1} e_t`` (``S = sigma^2
P_t``, ``V = S + Sigma``), whose two terms never cancel; the covariance keeps the
Woodbury form ``L M^{-1} L^T`` (a product, no cancellation). A task with fewer rows than
coefficients, collinear columns, or a model with common coefficients keeps the raw sums
and the Woodbury form of :mod:`bayesmeta.exact.linear`; where the prior's scale and the
data's differ by more than float32 resolves (about 1e7) the draws come out non-finite and
the fit raises :class:`~bayesmeta.inference.diagnostics.FitError` (see
:mod:`bayesmeta.inference.assemble`): rescale the data or enable float64.
Data whose magnitudes leave the dtype's range are refused before this point
(:meth:`bayesmeta.model.Hierarchical.build`)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from bayesmeta import populations as pops
from bayesmeta.exact.linear import (
    GaussianPosterior,
    LinearHyper,
    LinearStats,
    linear_log_marginal,
    linear_residual_stats,
    linear_sufficient_stats,
    linear_task_posterior,
)
from bayesmeta.model import Hierarchical


def conjugate_noise(likelihood) -> str | None:
    """How a linear-Gaussian likelihood's noise is known: ``"known"``, ``"shared"``
    (one learned ``sigma``) or None (not linear-Gaussian, or a per-task noise)."""
    if not likelihood.conjugate:
        return None
    mode = likelihood.noise_mode
    return mode if mode in ("known", "shared") else None


def why_not_gaussian(model) -> str | None:
    """None when ``theta_t`` can be integrated out exactly, else the reason."""

    if not isinstance(model, Hierarchical):
        return f"the model is a {type(model).__name__}, not a bm.Hierarchical"
    if not isinstance(model.population, pops.Normal | pops.MvNormal):
        return f"the population is {type(model.population).__name__}, not Normal or MvNormal"
    if not model.likelihood.conjugate:
        return f"the likelihood {type(model.likelihood).__name__} is not Gaussian"
    if conjugate_noise(model.likelihood) is None:
        return "a per-task learned noise scale cannot be integrated out"
    return None


def task_stats(likelihood, tasks) -> LinearStats:
    """Per-task sufficient statistics; rows are weighted by ``1/s_r**2`` for known noise.

    With common coefficients the statistics are of the whole design, the varying columns
    first and then the common ones (``(T, p + c, p + c)``): :func:`residual_stats` takes
    out the common part for given coefficients."""
    data = {k: jnp.asarray(v) for k, v in likelihood.data_arrays(tasks).items()}
    design = likelihood.design(data)
    x = jnp.ones((tasks.num_obs, 1)) if design is None else design
    common = getattr(likelihood, "common_design", lambda d: None)(data)
    if common is not None:
        x = jnp.concatenate([x, common], axis=-1)
    scale = data["noise_scale"] if conjugate_noise(likelihood) == "known" else None
    return linear_sufficient_stats(x, data["y"], data["task_index"], tasks.num_tasks, scale)


class CentredStats(NamedTuple):
    """Sufficient statistics of scalar-``theta`` tasks, centred for stability (see the
    module docstring); read as :class:`LinearStats` through the same attribute names.

    raw       # LinearStats of the tasks
    estimate  # shape=(T,): b / A, each task's own estimate of theta (0 where A = 0)
    variance  # shape=(T,): 1 / A, its variance for unit noise (1 where A = 0)
    within    # shape=(T,): sum_r (y_r - x_r estimate)^2 / s_r^2 (= c where A = 0)
    informed  # shape=(T,): A > 0 (a task whose rows carry information on theta)
    """

    raw: LinearStats
    estimate: jnp.ndarray
    variance: jnp.ndarray
    within: jnp.ndarray
    informed: jnp.ndarray
    # vector theta (p > 1): estimate (T, p), variance (T, p, p) = A^{-1}, informed all
    # True, and log det A^{-1} (T,); None for scalar theta
    log_det_variance: jnp.ndarray | None = None

    xtx = property(lambda self: self.raw.xtx)
    xty = property(lambda self: self.raw.xty)
    yty = property(lambda self: self.raw.yty)
    count = property(lambda self: self.raw.count)
    log_scale = property(lambda self: self.raw.log_scale)


def stable_task_stats(likelihood, tasks) -> LinearStats | CentredStats:
    """:func:`task_stats`, accumulated in float64 and centred (:class:`CentredStats`) when
    ``theta`` is scalar and there are no common coefficients; the raw statistics
    otherwise."""
    raw = task_stats(likelihood, tasks)
    data = likelihood.data_arrays(tasks)
    if getattr(likelihood, "common_design", lambda d: None)(data) is not None:
        return raw
    design = likelihood.design({k: jnp.asarray(v) for k, v in data.items()})
    y = np.asarray(tasks.y, float)
    x = np.ones((y.size, 1)) if design is None else np.asarray(design, float)
    x = x.reshape(y.size, -1)
    known = conjugate_noise(likelihood) == "known"
    w = 1.0 / np.asarray(tasks.noise_scale, float) ** 2 if known else np.ones_like(y)
    idx, num = np.asarray(tasks.task_index), tasks.num_tasks
    dtype = raw.yty.dtype
    if x.shape[1] != 1:
        return _centred_vector(raw, x, y, w, idx, num, dtype)
    x = x[:, 0]
    info = np.bincount(idx, w * x * x, num)
    informed = info > 0
    safe = np.where(informed, info, 1.0)
    estimate = np.where(informed, np.bincount(idx, w * x * y, num) / safe, 0.0)
    within = np.bincount(idx, w * (y - x * estimate[idx]) ** 2, num)
    return CentredStats(
        raw,
        jnp.asarray(estimate, dtype),
        jnp.asarray(1.0 / safe, dtype),
        jnp.asarray(within, dtype),
        jnp.asarray(informed),
    )


# a task's scaled, centred cross-product matrix must have a reciprocal condition number
# above this for its least-squares estimate to be used (float64 keeps about 1e-16)
_MIN_RCOND = 1e-10


def _centred_vector(raw, x, y, w, idx, num, dtype):
    """:class:`CentredStats` of vector ``theta`` (see the module docstring), or ``raw`` when
    some task has fewer rows than coefficients or an ``A_t`` too badly conditioned to solve
    in float64 (reciprocal condition number of its scaled form below ``_MIN_RCOND``).

    In float64 numpy: the columns of ``x`` are divided by their root mean square over all
    rows (``D``, undone exactly at the end); each task's cross products are accumulated
    from deviations about its weighted means of ``x`` and ``y`` plus the means' own term
    (the same sums, without a large offset inside a sum of squares); the normal equations
    are solved through the eigen-decomposition of their correlation form; the residual
    sum of squares is summed from the rows."""
    p = x.shape[1]
    d = np.sqrt(np.mean(x * x, axis=0))
    d = np.where(d > 0, d, 1.0)
    xs = x / d
    order = np.argsort(idx, kind="stable")
    xs, ys, ws, ids = xs[order], y[order], w[order], idx[order]
    starts = np.searchsorted(ids, np.arange(num))
    seg = lambda v: np.add.reduceat(v, starts, axis=0) if v.shape[0] else v  # noqa: E731
    counts = np.bincount(ids, minlength=num)
    if np.any(counts < p):
        return raw
    # the task's weighted means of the scaled columns and of y: the products below are of
    # deviations from them (no large offset enters a sum of squares)
    sw = seg(ws)
    xm = seg(ws[:, None] * xs) / sw[:, None]  # (T, p)
    ym = seg(ws * ys) / sw
    xc = xs - xm[ids]
    yc = ys - ym[ids]
    # A_s = sum w xs xs^T = sum w xc xc^T + sw xm xm^T (exact: xc has weighted mean 0)
    a = seg(ws[:, None, None] * xc[:, :, None] * xc[:, None, :])
    a = a + sw[:, None, None] * xm[:, :, None] * xm[:, None, :]
    bvec = seg(ws[:, None] * xc * yc[:, None]) + (sw * ym)[:, None] * xm
    diag = np.sqrt(np.einsum("tii->ti", a))
    if not np.all(diag > 0):
        return raw
    corr = a / (diag[:, :, None] * diag[:, None, :])
    vals, vecs = np.linalg.eigh(corr)
    if not np.all(vals[:, 0] > _MIN_RCOND * vals[:, -1]):
        return raw
    inv_corr = np.einsum("tij,tj,tkj->tik", vecs, 1.0 / vals, vecs)
    inv_a = inv_corr / (diag[:, :, None] * diag[:, None, :])  # (D^-1 A D^-1)^-1
    v = np.einsum("tij,tj->ti", inv_a, bvec)
    estimate = v / d
    variance = inv_a / (d[:, None] * d[None, :])[None]
    log_det = -np.sum(np.log(vals), axis=1) - 2.0 * np.sum(np.log(diag), axis=1)
    log_det = log_det - 2.0 * np.sum(np.log(d))
    resid = ys - np.einsum("rp,rp->r", xs, v[ids])
    within = np.bincount(ids, ws * resid**2, num)
    return CentredStats(
        raw,
        jnp.asarray(estimate, dtype),
        jnp.asarray(variance, dtype),
        jnp.asarray(within, dtype),
        jnp.ones(num, dtype=bool),
        jnp.asarray(log_det, dtype),
    )


def _vector_pieces(stats: CentredStats, hyper: LinearHyper):
    """``V = sigma^2 P + L L^T`` per task, its Cholesky factor, ``e - mu`` and ``s2``."""
    L = hyper.scale_tril
    mu = jnp.broadcast_to(hyper.mu, stats.estimate.shape)
    s2 = hyper.noise**2
    sig = L @ L.T
    v = s2 * stats.variance + sig
    v = 0.5 * (v + jnp.swapaxes(v, -1, -2))
    chol = jnp.linalg.cholesky(v)
    return s2, sig, mu, chol


def _vector_log_marginal(stats: CentredStats, hyper: LinearHyper) -> jnp.ndarray:
    """``log N(e_t | mu, sigma^2 P_t + Sigma)`` plus the residual's and the constants'
    terms: the centred form of :func:`bayesmeta.exact.linear.linear_log_marginal`."""
    s2, _, mu, chol = _vector_pieces(stats, hyper)
    p = mu.shape[-1]
    r = solve_triangular(chol, (stats.estimate - mu)[..., None], lower=True)[..., 0]
    logdet_v = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    return -0.5 * (
        stats.count * jnp.log(2.0 * jnp.pi * s2)
        + 2.0 * stats.log_scale
        + stats.within / s2
        + jnp.sum(r**2, axis=-1)
        + logdet_v
        - p * jnp.log(s2)
        - stats.log_det_variance
    )


def _vector_task_posterior(stats: CentredStats, hyper: LinearHyper) -> GaussianPosterior:
    """``theta_t | y_t``: mean ``S V^{-1} mu + Sigma V^{-1} e`` (no cancellation), covariance
    ``L M^{-1} L^T`` with ``M = I + L^T P^{-1} L / sigma^2`` (a product of factors)."""
    s2, sig, mu, chol = _vector_pieces(stats, hyper)

    def solve(rhs):  # V^{-1} rhs, rhs (T, p)
        z = solve_triangular(chol, rhs[..., None], lower=True)
        return solve_triangular(jnp.swapaxes(chol, -1, -2), z, lower=False)[..., 0]

    s = s2 * stats.variance
    mean = jnp.einsum("tij,tj->ti", s, solve(mu)) + solve(stats.estimate) @ sig.T
    # cov = Sigma - Sigma V^{-1} Sigma = L (I - L^T V^{-1} L) L^T = L M^{-1} L^T; with
    # K = C^{-1} L (C the Cholesky factor of V): M^{-1} = I - K^T K, formed as the inverse
    # of M = I + L^T A L / s2 where A = P^{-1} is taken from the raw statistics
    L = hyper.scale_tril
    a = stats.raw.xtx
    m = jnp.eye(L.shape[-1], dtype=a.dtype) + (L.T @ a) @ L / s2
    m = 0.5 * (m + jnp.swapaxes(m, -1, -2))
    cm = jnp.linalg.cholesky(m)
    w = solve_triangular(cm, jnp.broadcast_to(L.T, cm.shape), lower=True)  # C_M^{-1} L^T
    cov = jnp.swapaxes(w, -1, -2) @ w
    return GaussianPosterior(mean, cov)


def residual_stats(stats: LinearStats, num_varying: int, beta=None) -> LinearStats:
    """:func:`bayesmeta.exact.linear.linear_residual_stats`: the statistics of
    ``y - X_c beta`` on the varying columns (centred statistics pass through unchanged:
    they exist only without common coefficients)."""
    if isinstance(stats, CentredStats):
        return stats
    return linear_residual_stats(stats, num_varying, beta)


def population_hyper(
    population, hyper: dict, param_shape, noise=None, regression=None, task_x=None
) -> LinearHyper:
    """``LinearHyper(mu (..., p), L (..., p, p), noise)`` of a Normal/MvNormal population
    (``noise`` 1 for known noise); under a ``regression`` on the task covariates ``task_x``
    the mean is per task, ``(..., T, p)``."""
    mu = hyper[population.site("mu")]
    tau = hyper[population.site("tau")]
    if regression is not None:
        mu = population._loc(population.with_location(hyper, regression, task_x))
    if not param_shape:
        mu, tau = mu[..., None], tau[..., None]
    if isinstance(population, pops.MvNormal):
        L = tau[..., :, None] * hyper[population.site("corr_chol")]
    else:
        L = tau[..., :, None] * jnp.eye(tau.shape[-1], dtype=tau.dtype)
    if noise is None:
        noise = jnp.ones(tau.shape[:-1], dtype=tau.dtype)
    return LinearHyper(mu, L, noise)


def log_marginal(stats: LinearStats, hyper: LinearHyper) -> jnp.ndarray:
    """``log p(y_t | mu, Sigma, sigma)`` per task ``(T,)``; elementwise when ``p = 1``."""
    if hyper.mu.shape[-1] != 1:
        if isinstance(stats, CentredStats):
            return _vector_log_marginal(stats, hyper)
        return linear_log_marginal(stats, hyper)
    if isinstance(stats, CentredStats):
        mu, tau, s2 = hyper.mu[..., 0], hyper.scale_tril[0, 0], hyper.noise**2
        sv = s2 * stats.variance
        total = sv + tau**2
        # the standardised deviation first: its square stays in range where (est - mu)^2
        # and tau^2 / sigma^2 A would not
        z = (stats.estimate - mu) / jnp.sqrt(total)
        spread = jnp.where(stats.informed, jnp.log(total) - jnp.log(sv) + z**2, 0.0)
        return -0.5 * (
            stats.count * jnp.log(2.0 * jnp.pi * s2)
            + 2.0 * stats.log_scale
            + stats.within / s2
            + spread
        )
    A, b, c = stats.xtx[:, 0, 0], stats.xty[..., 0], stats.yty
    mu, tau, s2 = hyper.mu[..., 0], hyper.scale_tril[0, 0], hyper.noise**2
    g = (b - A * mu) / s2
    m = 1.0 + tau**2 * A / s2
    rr = (c - 2.0 * mu * b + mu**2 * A) / s2
    return -0.5 * (
        stats.count * jnp.log(2.0 * jnp.pi * s2)
        + 2.0 * stats.log_scale
        + jnp.log(m)
        + rr
        - (tau * g) ** 2 / m
    )


def task_posterior(stats: LinearStats, hyper: LinearHyper) -> GaussianPosterior:
    """``theta_t | y_t, hyper``: mean ``(T, p)``, cov ``(T, p, p)``; elementwise when p = 1."""
    if hyper.mu.shape[-1] != 1:
        if isinstance(stats, CentredStats):
            return _vector_task_posterior(stats, hyper)
        return linear_task_posterior(stats, hyper)
    mean, var = scalar_posterior(stats, hyper.mu[..., 0], hyper.scale_tril[0, 0], hyper.noise**2)
    return GaussianPosterior(mean[:, None], var[:, None, None])


def scalar_posterior(stats: LinearStats, mu, tau, s2):
    """Mean and variance of scalar ``theta_t | y_t`` for every task; ``mu``, ``tau``,
    ``s2`` (the noise variance) broadcast against the tasks, e.g. ``(S, 1)`` for ``S``
    hyperparameter draws gives ``(S, T)``."""
    if isinstance(stats, CentredStats):
        sv = s2 * stats.variance
        total = sv + tau**2
        var = jnp.where(stats.informed, tau**2 * (sv / total), tau**2)
        # the weighted mean with both weights formed directly: mu + tau^2 (est - mu) / total
        # cancels when one weight is near 1 and the far value is much larger
        mean = jnp.where(stats.informed, mu * (sv / total) + stats.estimate * (tau**2 / total), mu)
        return mean, var
    A, b = stats.xtx[:, 0, 0], stats.xty[..., 0]
    den = s2 + tau**2 * A
    var = tau**2 * s2 / den
    mean = mu + tau**2 * (b - A * mu) / den
    return mean, var
