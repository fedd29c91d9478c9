"""Exact Bayesian linear regression tasks with a Gaussian population.

Model (task ``t`` has rows ``r`` with inputs ``x_r`` in R^p, known relative noise scales
``s_r``, default 1)::

    y_r | theta_t ~ N(x_r . theta_t, sigma**2 s_r**2)
    theta_t | mu, Sigma ~ N(mu, Sigma),     Sigma = L L^T  (L = ``scale_tril``)

Everything goes through per-task sufficient statistics (segment sums over the flat
``TaskSet`` layout, cost ``O(N p^2)``)::

    A_t = sum_r x_r x_r^T / s_r^2,   b_t = sum_r x_r y_r / s_r^2,   c_t = sum_r y_r^2 / s_r^2

and ``O(p^3)`` per task. With ``g_t = (b_t - A_t mu) / sigma^2``,
``M_t = I + L^T A_t L / sigma^2`` (Cholesky ``C_t``) and the weighted residual sum
``rr_t = (c_t - 2 mu.b_t + mu^T A_t mu) / sigma^2``:

    log p(y_t | mu, Sigma, sigma) = -1/2 [ n_t log(2 pi sigma^2) + 2 sum_r log s_r
                                           + log det M_t + rr_t - |C_t^{-1} L^T g_t|^2 ]
    theta_t | y_t ~ N(mu + L M_t^{-1} L^T g_t,  L M_t^{-1} L^T)

(the matrix determinant lemma and Woodbury's identity applied to the dense covariance
``X_t Sigma X_t^T + sigma^2 diag(s^2)``). ``L`` may be singular (a fixed direction of
``theta``). All functions are pure JAX and differentiable; :func:`fit_linear_gaussian`
maximises the summed log marginal likelihood over ``mu``, ``L`` and ``log sigma``
(EM warm start, then BFGS): type-II maximum likelihood, i.e. empirical Bayes.

With an unknown common scale (the normal-inverse-gamma conjugate prior),

    y_r | theta_t, s_t ~ N(x_r . theta_t, s_t**2 sigma**2 s_r**2)
    theta_t | s_t ~ N(mu, s_t**2 Sigma),     s_t**2 ~ InverseGamma(a, b),

each task's marginal is a multivariate Student-t with ``2a`` degrees of freedom and scale
``(b / a) (X_t Sigma X_t^T + sigma^2 diag(s^2))``, and its posterior is again
normal-inverse-gamma, ``s_t**2 | y_t ~ InverseGamma(a + n_t / 2, b + Q_t / 2)`` with
``Q_t = rr_t - |C_t^{-1} L^T g_t|^2`` and ``theta_t | s_t, y_t`` Gaussian with the mean
above and ``s_t**2`` times the covariance above (:func:`linear_log_marginal_t`,
:func:`linear_task_posterior_t`). The task's scale ``s_t`` is learned from its own data,
so a task whose values are ten times larger gets ten times wider intervals.

>>> import numpy as np, bayesmeta as bm
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(60, 2)); ids = np.repeat(np.arange(6), 10)
>>> y = (x * (1.0 + rng.normal(size=(6, 2))[ids])).sum(1) + 0.1 * rng.normal(size=60)
>>> res = bm.exact.linear_gaussian(bm.TaskSet.from_arrays(x=x, y=y, task=ids))
>>> res.task_mean.shape, res.task_cov.shape
((6, 2), (6, 2, 2))
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import solve_triangular

from bayesmeta.tasks import TaskSet

__all__ = [
    "LinearStats",
    "LinearHyper",
    "GaussianPosterior",
    "LinearGaussianResult",
    "linear_sufficient_stats",
    "linear_residual_stats",
    "linear_log_marginal",
    "linear_task_posterior",
    "NIGPosterior",
    "StudentTPredictive",
    "linear_log_marginal_t",
    "linear_task_posterior_t",
    "linear_quad_rows",
    "linear_new_task",
    "linear_predictive",
    "fit_linear_gaussian",
    "linear_gaussian",
]


class LinearStats(NamedTuple):
    """Per-task sufficient statistics of linear-Gaussian tasks (``T`` tasks, ``p`` inputs).

    xtx        # shape=(T, p, p): sum_r x_r x_r^T / s_r^2
    xty        # shape=(T, p):    sum_r x_r y_r / s_r^2
    yty        # shape=(T,):      sum_r y_r^2 / s_r^2
    count      # shape=(T,):      rows per task
    log_scale  # shape=(T,):      sum_r log s_r (0 with unit noise scales)

    >>> import jax.numpy as jnp, numpy as np, bayesmeta as bm
    >>> x, y, task = jnp.ones((3, 1)), jnp.array([1.0, 2.0, 4.0]), jnp.array([0, 0, 1])
    >>> stats = bm.exact.linear_sufficient_stats(x, y, task, 2)  # an intercept per task
    >>> isinstance(stats, bm.exact.LinearStats), stats._fields
    (True, ('xtx', 'xty', 'yty', 'count', 'log_scale'))
    """

    xtx: jnp.ndarray
    xty: jnp.ndarray
    yty: jnp.ndarray
    count: jnp.ndarray
    log_scale: jnp.ndarray


class LinearHyper(NamedTuple):
    """Population and noise hyperparameters.

    mu          # shape=(p,) or (T, p): population mean of theta (per task under a
                #   regression on task covariates)
    scale_tril  # shape=(p, p): lower-triangular L with Sigma = L L^T
    noise       # shape=():     noise sd sigma (multiplies the per-row scales s_r)

    >>> import jax.numpy as jnp, numpy as np, bayesmeta as bm
    >>> x, y, task = jnp.ones((3, 1)), jnp.array([1.0, 2.0, 4.0]), jnp.array([0, 0, 1])
    >>> stats = bm.exact.linear_sufficient_stats(x, y, task, 2)  # an intercept per task
    >>> hyper = bm.exact.LinearHyper(mu=jnp.zeros(1), scale_tril=jnp.eye(1), noise=jnp.asarray(1.0))
    >>> hyper.scale_tril.shape, float(hyper.noise)
    ((1, 1), 1.0)
    """

    mu: jnp.ndarray
    scale_tril: jnp.ndarray
    noise: jnp.ndarray

    @property
    def cov(self) -> jnp.ndarray:
        """``Sigma = L L^T``, shape ``(p, p)``."""
        return self.scale_tril @ self.scale_tril.T


class GaussianPosterior(NamedTuple):
    """A Gaussian: ``mean`` ``(..., d)`` and ``cov`` ``(..., d, d)``.

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> g = bm.exact.GaussianPosterior(mean=jnp.zeros(2), cov=jnp.eye(2))
    >>> g.mean.shape, g.cov.shape
    ((2,), (2, 2))
    """

    mean: jnp.ndarray
    cov: jnp.ndarray


def linear_sufficient_stats(
    x: Any, y: Any, task_index: Any, num_tasks: int, noise_scale: Any = None
) -> LinearStats:
    """Segment sums of ``x x^T``, ``x y``, ``y^2`` (divided by ``s^2``) per task.

    Args:
      x: ``(N, p)`` inputs.
      y: ``(N,)``.
      task_index: ``(N,)`` ints in ``[0, num_tasks)``.
      num_tasks: static number of tasks.
      noise_scale: ``(N,)`` known relative noise scales ``s_r`` or None (all ones).
    Returns:
      :class:`LinearStats`.

    >>> import jax.numpy as jnp, numpy as np, bayesmeta as bm
    >>> x, y, task = jnp.ones((3, 1)), jnp.array([1.0, 2.0, 4.0]), jnp.array([0, 0, 1])
    >>> stats = bm.exact.linear_sufficient_stats(x, y, task, 2)  # an intercept per task
    >>> np.asarray(stats.xtx).ravel().tolist(), np.asarray(stats.xty).ravel().tolist()
    ([2.0, 1.0], [3.0, 4.0])
    >>> np.asarray(stats.yty).tolist()  # 1 + 4, 16
    [5.0, 16.0]
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    idx = jnp.asarray(task_index)
    if not any(isinstance(v, jax.core.Tracer) for v in (x, y, idx, noise_scale)):
        return _numpy_stats(x, y, idx, num_tasks, noise_scale)
    if noise_scale is None:
        w = jnp.ones_like(y)
        logs = jnp.zeros_like(y)
    else:
        s = jnp.asarray(noise_scale)
        w = 1.0 / s**2
        logs = jnp.log(s)
    seg = lambda v: jax.ops.segment_sum(v, idx, num_segments=num_tasks)  # noqa: E731
    xw = x * w[:, None]
    return LinearStats(
        xtx=seg(xw[:, :, None] * x[:, None, :]),
        xty=seg(xw * y[:, None]),
        yty=seg(w * y**2),
        count=seg(jnp.ones_like(y)),
        log_scale=seg(logs),
    )


def _numpy_stats(x, y, idx, num_tasks, noise_scale) -> LinearStats:
    """The statistics of concrete data, summed in float64 by ``np.bincount`` and returned
    in the dtype the JAX segment sums would have: the same numbers without a dozen eager
    JAX operations to compile (or read from the cache) in every new process."""
    dtype = jnp.promote_types(x.dtype, y.dtype)
    if noise_scale is not None:
        dtype = jnp.promote_types(dtype, jnp.asarray(noise_scale).dtype)
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.asarray(0.0).dtype
    x, y = np.asarray(x, float).reshape(len(y), -1), np.asarray(y, float)
    idx = np.asarray(idx)
    s = None if noise_scale is None else np.asarray(noise_scale, float)
    w = np.ones_like(y) if s is None else 1.0 / s**2
    logs = np.zeros_like(y) if s is None else np.log(s)
    seg = lambda v: np.bincount(idx, v, num_tasks)  # noqa: E731
    p = x.shape[1]
    xw = x * w[:, None]
    xtx = np.empty((num_tasks, p, p))
    for i in range(p):
        for j in range(i, p):
            xtx[:, i, j] = xtx[:, j, i] = seg(xw[:, i] * x[:, j])
    xty = np.stack([seg(xw[:, i] * y) for i in range(p)], axis=1)
    out = (xtx, xty, seg(w * y**2), seg(np.ones_like(y)), seg(logs))
    return LinearStats(*(jnp.asarray(v, dtype) for v in out))


def linear_residual_stats(stats: LinearStats, num_varying: int, beta=None) -> LinearStats:
    """Statistics of ``y - X_c beta`` on the varying columns, from statistics of the whole
    design ``[X_v | X_c]`` (varying columns first; ``(T, p + c, p + c)``), for common
    coefficients ``beta`` ``(..., c)`` (leading dims become leading dims of ``xty`` and
    ``yty``); ``beta`` None: no common part, ``stats`` as they are.

    ``A = X_v'X_v``, ``b = X_v'y - X_v'X_c beta``,
    ``c = y'y - 2 beta'X_c'y + beta'X_c'X_c beta`` (all weighted by ``1/s^2``).

    >>> import jax.numpy as jnp, numpy as np, bayesmeta as bm
    >>> y, task, xc = jnp.array([1.0, 2.0, 4.0]), jnp.array([0, 0, 1]), jnp.array([0.0, 1.0, 2.0])
    >>> design = jnp.stack([jnp.ones(3), xc], axis=1)  # varying intercept, then a common slope
    >>> full = bm.exact.linear_sufficient_stats(design, y, task, 2)
    >>> res = bm.exact.linear_residual_stats(full, 1, beta=jnp.array([0.5]))
    >>> direct = bm.exact.linear_sufficient_stats(jnp.ones((3, 1)), y - 0.5 * xc, task, 2)
    >>> bool(np.allclose(res.xty, direct.xty) and np.allclose(res.yty, direct.yty))
    True
    """
    if beta is None:
        return stats
    p = num_varying
    cross = stats.xtx[:, :p, p:]  # (T, p, c)
    b = stats.xty[:, :p] - jnp.einsum("tpc,...c->...tp", cross, beta)
    c = (
        stats.yty
        - 2.0 * jnp.einsum("tc,...c->...t", stats.xty[:, p:], beta)
        + jnp.einsum("...c,tcd,...d->...t", beta, stats.xtx[:, p:, p:], beta)
    )
    return LinearStats(stats.xtx[:, :p, :p], b, c, stats.count, stats.log_scale)


def _task_mu(stats: LinearStats, mu):
    """The population mean per task ``(T, p)``: ``mu`` is ``(p,)`` (one for all) or
    ``(T, p)`` (a regression on task covariates)."""
    return jnp.broadcast_to(mu, stats.xty.shape)


def _pieces(stats: LinearStats, hyper: LinearHyper):
    _, L, noise = hyper
    mu = _task_mu(stats, hyper.mu)
    s2 = noise**2
    a = stats.xtx / s2
    g = (stats.xty - jnp.einsum("tij,tj->ti", stats.xtx, mu)) / s2  # (T, p)
    p = mu.shape[-1]
    m = jnp.eye(p, dtype=a.dtype) + (L.T @ a) @ L  # I + L^T A L
    # L^T A L computed as (L^T A) L; symmetrise against rounding
    m = 0.5 * (m + jnp.swapaxes(m, -1, -2))
    chol = jnp.linalg.cholesky(m)
    ltg = g @ L  # (T, p): L^T g per task
    z = solve_triangular(chol, ltg[..., None], lower=True)[..., 0]
    return s2, g, chol, ltg, z


def linear_log_marginal(stats: LinearStats, hyper: LinearHyper) -> jnp.ndarray:
    """Exact ``log p(y_t | mu, Sigma, sigma)`` per task, shape ``(T,)`` (see module doc).

    Differentiable in ``hyper`` (and in the statistics).

    >>> import jax.numpy as jnp, numpy as np, bayesmeta as bm
    >>> x, y, task = jnp.ones((3, 1)), jnp.array([1.0, 2.0, 4.0]), jnp.array([0, 0, 1])
    >>> stats = bm.exact.linear_sufficient_stats(x, y, task, 2)  # an intercept per task
    >>> hyper = bm.exact.LinearHyper(mu=jnp.zeros(1), scale_tril=jnp.eye(1), noise=jnp.asarray(1.0))
    >>> from scipy import stats as st
    >>> lp = np.asarray(bm.exact.linear_log_marginal(stats, hyper))
    >>> ref = [st.multivariate_normal([0, 0], np.eye(2) + 1).logpdf([1, 2]),  # X Sigma X' + I
    ...        st.norm(0, np.sqrt(2)).logpdf(4)]
    >>> bool(np.allclose(lp, ref, rtol=1e-5))
    True
    """
    s2, rr, zz, logdet = _marginal_terms(stats, hyper)
    return -0.5 * (
        stats.count * jnp.log(2.0 * jnp.pi * s2) + 2.0 * stats.log_scale + logdet + rr - zz
    )


def _marginal_terms(stats: LinearStats, hyper: LinearHyper):
    """``sigma^2``, ``rr_t``, ``|C_t^{-1} L^T g_t|^2`` and ``log det M_t`` per task: the
    pieces of both marginals (module doc), combined by each in its own order."""
    mu = _task_mu(stats, hyper.mu)
    s2, _, chol, _, z = _pieces(stats, hyper)
    rr = (
        stats.yty
        - 2.0 * jnp.sum(stats.xty * mu, axis=-1)
        + jnp.einsum("ti,tij,tj->t", mu, stats.xtx, mu)
    ) / s2
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    return s2, rr, jnp.sum(z**2, axis=-1), logdet


def _quad_logdet(stats: LinearStats, hyper: LinearHyper):
    """``Q_t = r_t^T K_t^{-1} r_t`` and ``log det K_t`` per task, where ``r_t`` is the
    residual from the population mean and ``K_t = X_t Sigma X_t^T + sigma^2 diag(s^2)``."""
    s2, rr, zz, logdet = _marginal_terms(stats, hyper)
    return rr - zz, logdet + stats.count * jnp.log(s2) + 2.0 * stats.log_scale


def linear_task_posterior(stats: LinearStats, hyper: LinearHyper) -> GaussianPosterior:
    """Exact ``theta_t | y_t, mu, Sigma, sigma`` for every task: mean ``(T, p)``, cov
    ``(T, p, p)``; ``cov = L M^{-1} L^T``, ``mean = mu + cov g`` (module doc).

    >>> import jax.numpy as jnp, numpy as np, bayesmeta as bm
    >>> x, y, task = jnp.ones((3, 1)), jnp.array([1.0, 2.0, 4.0]), jnp.array([0, 0, 1])
    >>> stats = bm.exact.linear_sufficient_stats(x, y, task, 2)  # an intercept per task
    >>> hyper = bm.exact.LinearHyper(mu=jnp.zeros(1), scale_tril=jnp.eye(1), noise=jnp.asarray(1.0))
    >>> post = bm.exact.linear_task_posterior(stats, hyper)
    >>> [round(float(v), 4) for v in post.mean.ravel()]  # N(0, 1) prior: sum y / (n + 1)
    [1.0, 2.0]
    >>> [round(float(v), 4) for v in post.cov.ravel()]  # 1 / (n + 1)
    [0.3333, 0.5]
    """
    L = hyper.scale_tril
    _, _, chol, _, z = _pieces(stats, hyper)
    w = solve_triangular(jnp.swapaxes(chol, -1, -2), z[..., None], lower=False)[..., 0]
    mean = _task_mu(stats, hyper.mu) + w @ L.T
    v = solve_triangular(chol, jnp.broadcast_to(L.T, chol.shape), lower=True)  # C^{-1} L^T
    cov = jnp.swapaxes(v, -1, -2) @ v
    return GaussianPosterior(mean, cov)


class NIGPosterior(NamedTuple):
    """A normal-inverse-gamma: ``s^2 ~ InverseGamma(concentration, rate)`` and
    ``theta | s^2 ~ N(mean, s^2 cov)``; marginally ``theta`` is a multivariate Student-t
    with ``2 concentration`` degrees of freedom and scale ``(rate / concentration) cov``.

    mean           # shape=(..., d)
    cov            # shape=(..., d, d): the covariance per unit s^2
    concentration  # shape=(...,)
    rate           # shape=(...,)

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> g = bm.exact.NIGPosterior(jnp.zeros(2), jnp.eye(2), jnp.asarray(3.0), jnp.asarray(1.5))
    >>> g.marginal().df.tolist(), g.marginal().scale.tolist()  # 2a, (b / a) cov
    (6.0, [[0.5, 0.0], [0.0, 0.5]])
    """

    mean: jnp.ndarray
    cov: jnp.ndarray
    concentration: jnp.ndarray
    rate: jnp.ndarray

    def marginal(self) -> StudentTPredictive:
        """The marginal of ``theta``: a :class:`StudentTPredictive`."""
        ratio = jnp.asarray(self.rate) / jnp.asarray(self.concentration)
        return StudentTPredictive(
            self.mean, ratio[..., None, None] * self.cov, 2.0 * jnp.asarray(self.concentration)
        )


class StudentTPredictive(NamedTuple):
    """A multivariate Student-t: location ``mean`` ``(..., m)``, scale matrix ``scale``
    ``(..., m, m)`` and degrees of freedom ``df`` ``(...,)``. Each coordinate is a
    univariate t with ``df`` degrees of freedom, location ``mean[i]`` and scale
    ``sqrt(scale[i, i])``; the covariance is ``df / (df - 2) scale`` when ``df > 2``.

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> t = bm.exact.StudentTPredictive(jnp.zeros(1), jnp.eye(1), jnp.asarray(4.0))
    >>> t.df.tolist()
    4.0
    """

    mean: jnp.ndarray
    scale: jnp.ndarray
    df: jnp.ndarray


def _check_nig(concentration, rate):
    for name, value in (("concentration", concentration), ("rate", rate)):
        if isinstance(value, jax.core.Tracer):
            continue
        v = np.asarray(value)
        if v.ndim != 0 or not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name}: expected a positive finite scalar, got {value!r}")


def linear_log_marginal_t(
    stats: LinearStats, hyper: LinearHyper, concentration: Any, rate: Any, quad: Any = None
) -> jnp.ndarray:
    """Exact ``log p(y_t | mu, Sigma, sigma, a, b)`` per task, shape ``(T,)``, when a task
    scale ``s_t^2 ~ InverseGamma(a, b)`` multiplies both ``Sigma`` and the noise variance
    (module doc): a multivariate Student-t with ``2a`` degrees of freedom. Differentiable
    in every argument.

    ``quad``: the per-task ``Q_t`` if the caller has it in a stabler form. From the
    sufficient statistics ``Q_t`` is a difference of two large terms when the noise is
    small against the data, so in float32 it can lose every digit (it is clipped at 0);
    with the rows at hand, ``Q_t = |y_t - X_t m_t|^2 / sigma^2 + (m_t - mu)^T Sigma^{-1}
    (m_t - mu)`` at the posterior mean ``m_t`` is a sum of non-negative terms
    (:func:`linear_quad_rows`).

    >>> import jax.numpy as jnp, numpy as np, bayesmeta as bm
    >>> from scipy import stats as st
    >>> x, y, task = jnp.ones((2, 1)), jnp.array([1.0, 2.0]), jnp.array([0, 0])
    >>> stats = bm.exact.linear_sufficient_stats(x, y, task, 1)
    >>> hyper = bm.exact.LinearHyper(mu=jnp.zeros(1), scale_tril=jnp.eye(1), noise=jnp.asarray(1.0))
    >>> lp = float(bm.exact.linear_log_marginal_t(stats, hyper, 3.0, 1.5)[0])
    >>> ref = st.multivariate_t([0, 0], 0.5 * (np.eye(2) + 1), df=6).logpdf([1, 2])
    >>> bool(np.isclose(lp, ref, rtol=1e-5))
    True
    """
    _check_nig(concentration, rate)
    a = jnp.asarray(concentration, stats.xty.dtype)
    b = jnp.asarray(rate, stats.xty.dtype)
    q, logdet = _quad_logdet(stats, hyper)
    quad = jnp.maximum(q, 0.0) if quad is None else quad
    n = stats.count
    return (
        jax.scipy.special.gammaln(a + 0.5 * n)
        - jax.scipy.special.gammaln(a)
        - 0.5 * n * jnp.log(2.0 * jnp.pi * b)
        - 0.5 * logdet
        - (a + 0.5 * n) * jnp.log1p(0.5 * quad / b)
    )


def linear_task_posterior_t(
    stats: LinearStats, hyper: LinearHyper, concentration: Any, rate: Any
) -> NIGPosterior:
    """Exact normal-inverse-gamma posterior of every task (module doc): ``s_t^2 | y_t ~
    InverseGamma(a + n_t / 2, b + Q_t / 2)`` and ``theta_t | s_t^2, y_t ~ N(mean, s_t^2
    cov)``, with ``mean`` and ``cov`` those of :func:`linear_task_posterior`.

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> x, y, task = jnp.ones((2, 1)), jnp.array([1.0, 3.0]), jnp.array([0, 0])
    >>> stats = bm.exact.linear_sufficient_stats(x, y, task, 1)
    >>> hyper = bm.exact.LinearHyper(mu=jnp.zeros(1), scale_tril=jnp.eye(1), noise=jnp.asarray(1.0))
    >>> post = bm.exact.linear_task_posterior_t(stats, hyper, 2.0, 1.0)
    >>> [round(float(v), 4) for v in (post.mean[0, 0], post.cov[0, 0, 0], post.concentration[0])]
    [1.3333, 0.3333, 3.0]
    >>> round(float(post.rate[0]), 4)  # b + Q / 2, Q = y^T (I + 1 1^T)^{-1} y = 10 - 16 / 3
    3.3333
    """
    _check_nig(concentration, rate)
    a = jnp.asarray(concentration, stats.xty.dtype)
    b = jnp.asarray(rate, stats.xty.dtype)
    quad = jnp.maximum(_quad_logdet(stats, hyper)[0], 0.0)
    post = linear_task_posterior(stats, hyper)
    return NIGPosterior(post.mean, post.cov, a + 0.5 * stats.count, b + 0.5 * quad)


def linear_quad_rows(x: Any, y: Any, mean: Any, hyper: LinearHyper, mask: Any = None):
    """``Q = |y - x m|^2 / sigma^2 + (m - mu)^T Sigma^{-1} (m - mu)`` for one task's rows
    ``x`` ``(n, p)``, ``y`` ``(n,)`` at its posterior mean ``m`` ``(p,)`` (unit noise
    scales; ``mask`` ``(n,)`` drops padded rows): the residual quadratic form of
    :func:`linear_log_marginal_t` as a sum of non-negative terms, stable in float32.
    Needs an invertible ``L``.

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> x, y, task = jnp.ones((2, 1)), jnp.array([1.0, 3.0]), jnp.array([0, 0])
    >>> stats = bm.exact.linear_sufficient_stats(x, y, task, 1)
    >>> hyper = bm.exact.LinearHyper(mu=jnp.zeros(1), scale_tril=jnp.eye(1), noise=jnp.asarray(1.0))
    >>> m = bm.exact.linear_task_posterior(stats, hyper).mean[0]
    >>> round(float(bm.exact.linear_quad_rows(x, y, m, hyper)), 4)  # 10 - 16 / 3
    4.6667
    """
    r = jnp.asarray(y) - jnp.asarray(x) @ mean
    if mask is not None:
        r = r * jnp.asarray(mask, r.dtype)
    u = solve_triangular(hyper.scale_tril, mean - hyper.mu, lower=True)
    return jnp.sum(r**2) / hyper.noise**2 + jnp.sum(u**2)


def linear_new_task(
    hyper: LinearHyper, x: Any, y: Any, noise_scale: Any = None
) -> GaussianPosterior:
    """Exact posterior of a brand-new task's ``theta`` from its data ``x`` ``(n, p)``,
    ``y`` ``(n,)`` under the population ``hyper``: mean ``(p,)``, cov ``(p, p)``.
    With ``n = 0`` rows it is the population itself.

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> hyper = bm.exact.LinearHyper(mu=jnp.zeros(1), scale_tril=jnp.eye(1), noise=jnp.asarray(1.0))
    >>> post = bm.exact.linear_new_task(hyper, jnp.ones((2, 1)), jnp.array([1.0, 2.0]))
    >>> round(float(post.mean[0]), 4), round(float(post.cov[0, 0]), 4)  # 3 / 3, 1 / 3
    (1.0, 0.3333)
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x/y: expected x of shape (n, p) and y of shape (n,), got {x.shape} and {y.shape}"
        )
    if x.shape[1] != hyper.mu.shape[-1]:
        raise ValueError(f"x: {x.shape[1]} input columns, the population has {hyper.mu.shape[-1]}")
    return _new_task(hyper, x, y, noise_scale)


@jax.jit
def _new_task(hyper, x, y, noise_scale):
    stats = linear_sufficient_stats(x, y, jnp.zeros(y.shape[0], dtype=jnp.int32), 1, noise_scale)
    post = linear_task_posterior(stats, hyper)
    return GaussianPosterior(post.mean[0], post.cov[0])


def linear_predictive(
    posterior: GaussianPosterior, x_new: Any, noise: Any = None, noise_scale: Any = None
) -> GaussianPosterior:
    """Predictive at new inputs ``x_new`` ``(m, p)`` from a Gaussian over ``theta``:
    ``N(x_new mean, x_new cov x_new^T)`` for the regression function, plus
    ``noise**2 diag(noise_scale**2)`` for new observations when ``noise`` is given.
    Returns mean ``(m,)`` and cov ``(m, m)``.

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> theta = bm.exact.GaussianPosterior(mean=jnp.array([1.0]), cov=jnp.array([[0.5]]))
    >>> pred = bm.exact.linear_predictive(theta, jnp.array([[1.0], [2.0]]), noise=1.0)
    >>> [round(float(v), 4) for v in pred.mean], [round(float(v), 4) for v in pred.cov.ravel()]
    ([1.0, 2.0], [1.5, 1.0, 1.0, 3.0])
    """
    x_new = jnp.asarray(x_new)
    if x_new.ndim != 2 or x_new.shape[1] != posterior.mean.shape[-1]:
        raise ValueError(
            f"x_new: expected shape (m, {posterior.mean.shape[-1]}), got {x_new.shape}"
        )
    return _predictive(posterior, x_new, noise, noise_scale)


@jax.jit
def _predictive(posterior, x_new, noise, noise_scale):
    mean = x_new @ posterior.mean
    cov = x_new @ posterior.cov @ x_new.T
    if noise is not None:
        s = jnp.ones(x_new.shape[0]) if noise_scale is None else jnp.asarray(noise_scale)
        cov = cov + jnp.diag((jnp.asarray(noise) * s) ** 2)
    return GaussianPosterior(mean, cov)


# --------------------------------------------------------------------------- type-II ML
def _tril_index(p: int):
    return np.tril_indices(p)


def _unpack(params, fixed, p):
    rows, cols = _tril_index(p)
    mu = fixed["mu"] if "mu" in fixed else params["mu"]
    if "scale_tril" in fixed:
        L = fixed["scale_tril"]
    else:
        L = jnp.zeros((p, p), dtype=params["tril"].dtype).at[rows, cols].set(params["tril"])
    noise = fixed["noise"] if "noise" in fixed else jnp.exp(params["log_noise"])
    return LinearHyper(mu, L, noise)


def _em_step(stats: LinearStats, hyper: LinearHyper, free: tuple[str, ...]) -> LinearHyper:
    """One EM update of the free hyperparameters (closed form M-step)."""
    post = linear_task_posterior(stats, hyper)
    m, v = post.mean, post.cov
    mu = jnp.mean(m, axis=0) if "mu" in free else hyper.mu
    L = hyper.scale_tril
    if "scale_tril" in free:
        d = m - mu
        cov = jnp.mean(d[:, :, None] * d[:, None, :] + v, axis=0)
        p = cov.shape[0]
        L = jnp.linalg.cholesky(cov + 1e-12 * jnp.trace(cov) / p * jnp.eye(p, dtype=cov.dtype))
    noise = hyper.noise
    if "noise" in free:
        resid = (
            stats.yty
            - 2.0 * jnp.sum(m * stats.xty, axis=-1)
            + jnp.einsum("ti,tij,tj->t", m, stats.xtx, m)
            + jnp.einsum("tij,tji->t", stats.xtx, v)
        )
        noise = jnp.sqrt(jnp.sum(resid) / jnp.sum(stats.count))
    return LinearHyper(mu, L, noise)


def fit_linear_gaussian(
    stats: LinearStats,
    *,
    mu: Any = None,
    scale_tril: Any = None,
    noise: Any = None,
    init: LinearHyper | None = None,
    num_em_steps: int = 30,
    max_iter: int = 1000,
    tol: float | None = None,
) -> tuple[LinearHyper, dict]:
    """Type-II maximum likelihood (empirical Bayes) of ``mu``, ``Sigma = L L^T``, ``sigma``.

    Maximises ``sum_t log p(y_t | mu, L, sigma)`` (:func:`linear_log_marginal`) over the
    hyperparameters not given (a given ``mu``, ``scale_tril`` or ``noise`` is held fixed):
    ``num_em_steps`` EM iterations as a warm start, then BFGS (Armijo backtracking) on
    ``(mu, the lower triangle of L, log sigma)`` until the gradient of the mean
    log-likelihood per row has norm below ``tol`` (default ``1e-9`` in float64, ``1e-4`` in
    float32) or ``max_iter``. ``L``'s diagonal is left unconstrained, so a singular
    ``Sigma`` on the boundary is reachable.

    Returns:
      ``(hyper, info)``: the :class:`LinearHyper` at the optimum (``L`` with a non-negative
      diagonal), and ``info`` with ``log_marginal_likelihood``, ``num_iterations``,
      ``grad_norm``, ``converged`` and ``fitted`` (names of the fitted hyperparameters).

    >>> import jax.numpy as jnp, numpy as np, bayesmeta as bm
    >>> x, y, task = jnp.ones((3, 1)), jnp.array([1.0, 2.0, 4.0]), jnp.array([0, 0, 1])
    >>> stats = bm.exact.linear_sufficient_stats(x, y, task, 2)  # an intercept per task
    >>> hyper, info = bm.exact.fit_linear_gaussian(stats, scale_tril=jnp.eye(1), noise=1.0)
    >>> # Sigma and sigma held: mu is the GLS mean sum 1'V_t^-1 y_t / sum 1'V_t^-1 1 = 18/7
    >>> round(float(hyper.mu[0]), 3), info["fitted"]
    (2.571, ('mu',))
    """
    p = stats.xty.shape[-1]
    dtype = stats.xty.dtype
    if tol is None:
        tol = 1e-9 if dtype == jnp.float64 else 1e-4
    fixed = {}
    if mu is not None:
        fixed["mu"] = jnp.broadcast_to(jnp.asarray(mu, dtype), (p,))
    if scale_tril is not None:
        fixed["scale_tril"] = jnp.asarray(scale_tril, dtype)
    if noise is not None:
        fixed["noise"] = jnp.asarray(noise, dtype)
    free = tuple(k for k in ("mu", "scale_tril", "noise") if k not in fixed)
    if init is not None:
        init = LinearHyper(
            jnp.asarray(init.mu, dtype),
            jnp.asarray(init.scale_tril, dtype),
            jnp.asarray(init.noise, dtype),
        )
    hyper, value, num_iter, grad_norm = _fit(
        stats, init, fixed, free, int(num_em_steps), int(max_iter), jnp.asarray(tol, dtype)
    )
    grad_norm = float(grad_norm)
    info = {
        "log_marginal_likelihood": value,
        "num_iterations": int(num_iter),
        "grad_norm": grad_norm,
        "converged": bool(grad_norm <= tol),
        "fitted": free,
    }
    return hyper, info


def _default_init(stats: LinearStats) -> LinearHyper:
    """Pooled least squares for mu and sigma, and Sigma = (max(|beta|, sd))^2 I."""
    p = stats.xty.shape[-1]
    dtype = stats.xty.dtype
    total = jnp.sum(stats.xtx, axis=0)
    ridge = 1e-8 * jnp.trace(total) / p * jnp.eye(p, dtype=dtype)
    beta = jnp.linalg.solve(total + ridge, jnp.sum(stats.xty, axis=0))
    rss = jnp.sum(stats.yty) - 2 * beta @ jnp.sum(stats.xty, axis=0) + beta @ total @ beta
    sd = jnp.sqrt(jnp.maximum(rss / jnp.sum(stats.count), 1e-12))
    return LinearHyper(beta, jnp.eye(p, dtype=dtype) * jnp.maximum(jnp.linalg.norm(beta), sd), sd)


@partial(jax.jit, static_argnames=("free", "num_em_steps", "max_iter"))
def _fit(stats, init, fixed, free, num_em_steps, max_iter, tol):
    """EM warm start, then BFGS; one compiled program per (free set, shapes)."""
    p = stats.xty.shape[-1]
    if init is None:
        init = _default_init(stats)
    hyper = LinearHyper(
        fixed.get("mu", init.mu),
        fixed.get("scale_tril", init.scale_tril),
        fixed.get("noise", init.noise),
    )
    if not free:
        return hyper, jnp.sum(linear_log_marginal(stats, hyper)), 0, jnp.zeros((), tol.dtype)
    if num_em_steps > 0:
        hyper = jax.lax.fori_loop(0, num_em_steps, lambda i, h: _em_step(stats, h, free), hyper)
    rows, cols = _tril_index(p)
    params = {}
    if "mu" in free:
        params["mu"] = hyper.mu
    if "scale_tril" in free:
        params["tril"] = hyper.scale_tril[rows, cols]
    if "noise" in free:
        params["log_noise"] = jnp.log(hyper.noise)
    flat, unravel = ravel_pytree(params)
    n_rows = jnp.sum(stats.count)

    def loss(v, stats, fixed):
        return -jnp.sum(linear_log_marginal(stats, _unpack(unravel(v), fixed, p))) / n_rows

    x, _, g, num_iter = _bfgs(loss, flat, (stats, fixed), max_iter, tol)
    hyper = _unpack(unravel(x), fixed, p)
    # canonical Cholesky factor: flip column signs so the diagonal is non-negative
    sign = jnp.where(jnp.diagonal(hyper.scale_tril) < 0, -1.0, 1.0).astype(x.dtype)
    hyper = LinearHyper(hyper.mu, hyper.scale_tril * sign[None, :], hyper.noise)
    return hyper, jnp.sum(linear_log_marginal(stats, hyper)), num_iter, jnp.sqrt(g @ g)


def _bfgs(fun, x0, args, max_iter, tol):
    """Minimise ``fun(x, *args)`` over a flat vector: BFGS with a dense inverse-Hessian
    approximation and Armijo backtracking, until ``|grad| <= tol`` or ``max_iter``.
    Returns ``(x, f, grad, num_iterations)``."""
    value_and_grad = jax.value_and_grad(fun)
    n = x0.shape[0]
    eye = jnp.eye(n, dtype=x0.dtype)
    f0, g0 = value_and_grad(x0, *args)

    def cond(c):
        x, f, g, h, it, fails = c
        return (it < max_iter) & (jnp.sqrt(g @ g) > tol) & (fails < 3)

    def body(c):
        x, f, g, h, it, fails = c
        d = -h @ g
        d = jnp.where(g @ d < 0, d, -g)  # not a descent direction: steepest descent
        slope = g @ d

        def ls_cond(state):
            t, ft = state
            return ~(ft <= f + 1e-4 * t * slope) & (t > 1e-20)

        def ls_body(state):
            t = 0.5 * state[0]
            return t, fun(x + t * d, *args)

        t, ft = jax.lax.while_loop(ls_cond, ls_body, (jnp.asarray(1.0, x.dtype), fun(x + d, *args)))
        ok = ft <= f + 1e-4 * t * slope
        step = t * d
        x_new = jnp.where(ok, x + step, x)
        f_new, g_new = value_and_grad(x_new, *args)
        y = g_new - g
        sy = step @ y
        rho = 1.0 / jnp.where(sy > 0, sy, 1.0)
        # first step: scale the initial approximation (Nocedal & Wright eq. 6.20)
        h0 = jnp.where(it == 0, eye * sy / jnp.where(sy > 0, y @ y, 1.0), h)
        left = eye - rho * jnp.outer(step, y)
        h_bfgs = left @ h0 @ left.T + rho * jnp.outer(step, step)
        h_new = jnp.where(ok & (sy > 0), h_bfgs, jnp.where(ok, h, eye))
        return x_new, f_new, g_new, h_new, it + 1, jnp.where(ok, 0, fails + 1)

    x, f, g, _, it, _ = jax.lax.while_loop(cond, body, (x0, f0, g0, eye, 0, 0))
    return x, f, g, it


@jax.jit
def _posterior_and_marginal(stats, hyper):
    return linear_task_posterior(stats, hyper), linear_log_marginal(stats, hyper)


# --------------------------------------------------------------------------- friendly API
class LinearGaussianResult(NamedTuple):
    """Exact linear-Gaussian tasks under a (given or type-II ML) population.

    hyper                    LinearHyper: mu (p,), scale_tril (p, p), noise ()
    cov                      # shape=(p, p): Sigma = L L^T
    task_mean                # shape=(T, p): E[theta_t | y]
    task_cov                 # shape=(T, p, p): Cov[theta_t | y]
    log_marginal_likelihood  # shape=(): sum_t log p(y_t | hyper)
    log_marginal_per_task    # shape=(T,)
    labels                   tuple of T task labels
    info                     dict: fitted names, num_iterations, grad_norm, converged
    beta                     # shape=(c,) or None: the common coefficients (generalised
                             #   least squares at the fitted variances)
    beta_task                # shape=(p, q) or None: B of the population mean mu + B z_t
    task_location            # shape=(T, p): the population mean of each task

    >>> import numpy as np, bayesmeta as bm
    >>> tasks = bm.TaskSet.from_arrays(x=np.ones((3, 1)), y=[1.0, 2.0, 4.0], task=[0, 0, 1])
    >>> res = bm.exact.linear_gaussian(tasks, mu=[0.0], cov=[[1.0]], noise=1.0)
    >>> isinstance(res, bm.exact.LinearGaussianResult), res.task_mean.shape, res.labels
    (True, (2, 1), ('0', '1'))
    """

    hyper: LinearHyper
    cov: jnp.ndarray
    task_mean: jnp.ndarray
    task_cov: jnp.ndarray
    log_marginal_likelihood: jnp.ndarray
    log_marginal_per_task: jnp.ndarray
    labels: tuple
    info: dict
    beta: Any = None
    beta_task: Any = None
    task_location: Any = None

    def new_task(self, x: Any, y: Any, noise_scale: Any = None) -> GaussianPosterior:
        """Exact posterior of a brand-new task's ``theta`` given its ``x`` ``(n, p)``,
        ``y`` ``(n,)``."""
        return linear_new_task(self.hyper, x, y, noise_scale)

    def predict(self, x_new: Any, task: Any = None, observation: bool = True) -> GaussianPosterior:
        """Predictive at ``x_new`` ``(m, p)`` for a fitted task (label or index) or, with
        ``task=None``, for a brand-new task with no data (the population). With
        ``observation=True`` the noise ``sigma**2`` is added (unit row scales)."""
        if task is None:
            post = GaussianPosterior(self.hyper.mu, self.cov)
        else:
            t = self.labels.index(str(task)) if isinstance(task, str) else int(task)
            if not 0 <= t < len(self.labels):
                raise ValueError(f"task: index {t} out of range 0..{len(self.labels) - 1}")
            post = GaussianPosterior(self.task_mean[t], self.task_cov[t])
        return linear_predictive(post, x_new, self.hyper.noise if observation else None)


def _as_hyper_part(name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    try:
        arr = np.broadcast_to(arr, shape)
    except ValueError:
        raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: must be finite")
    return arr


def linear_gaussian(
    tasks: Any,
    *,
    mu: Any = None,
    cov: Any = None,
    scale_tril: Any = None,
    noise: Any = None,
    num_em_steps: int = 30,
    max_iter: int = 1000,
    tol: float | None = None,
    common: Any = None,
    task_covariates: Any = None,
) -> LinearGaussianResult:
    """Exact posteriors of linear-regression tasks, with empirical Bayes for what is unknown.

    **Mixed models.** ``common`` names columns of ``x`` (indices, or names when the
    TaskSet has ``feature_names``) whose coefficients ``beta`` are shared by all tasks, and
    ``task_covariates`` (True, or names of the TaskSet's ``task_x`` columns) makes the
    population mean a regression ``mu + B z_t``. Given the variances the model is linear
    in ``gamma = (mu, B, beta)``: ``y_t ~ N(H_t gamma, V_t)`` with
    ``V_t = X_t Sigma X_t' + sigma^2 S_t``, so ``gamma`` is profiled out by generalised
    least squares (``sum_t H_t' V_t^-1 H_t gamma = sum_t H_t' V_t^-1 y_t``, through the
    per-task statistics and Woodbury's identity) and BFGS maximises the profile
    likelihood over ``L`` and ``log sigma`` (type-II maximum likelihood of everything,
    like ``lme4``'s ``REML = FALSE``). The task posteriors are then the exact ones given
    the estimates (the BLUPs). ``mu`` cannot be fixed in this form.

    Args:
      tasks: a ``bm.TaskSet`` with inputs ``x`` ``(N, p)`` (include a column of ones for an
        intercept) and responses ``y``; known per-row ``noise_scale`` s_r, if present, are
        relative scales (``noise`` then defaults to 1: the noise is fully known).
      mu: population mean ``(p,)``, or None to fit it.
      cov / scale_tril: population covariance ``(p, p)`` (or its Cholesky factor), or None
        to fit it.
      noise: noise sd sigma, or None to fit it (default fixed at 1 when the TaskSet has
        known noise scales).
      num_em_steps, max_iter, tol: see :func:`fit_linear_gaussian`.

    Returns:
      :class:`LinearGaussianResult`.

    >>> import numpy as np, bayesmeta as bm
    >>> tasks = bm.TaskSet.from_arrays(x=np.ones((3, 1)), y=[1.0, 2.0, 4.0], task=[0, 0, 1])
    >>> res = bm.exact.linear_gaussian(tasks, mu=[0.0], cov=[[1.0]], noise=1.0)  # all given
    >>> [round(float(v), 4) for v in res.task_mean.ravel()]  # N(0, 1) prior: sum y / (n + 1)
    [1.0, 2.0]
    >>> [round(float(v), 4) for v in res.task_cov.ravel()]
    [0.3333, 0.5]
    """

    if not isinstance(tasks, TaskSet):
        raise ValueError(f"tasks: expected a bm.TaskSet, got {type(tasks).__name__}")
    if tasks.x is None:
        raise ValueError("x: linear_gaussian needs inputs x of shape (N, p) in the TaskSet")
    if tasks.x.ndim != 2:
        raise ValueError(f"x: expected shape (N, p), got {tasks.x.shape}")
    p = tasks.x.shape[1]
    if common is not None:  # Sigma is over the varying columns only
        p = len(_mixed_columns(tasks, common)[0])
    if cov is not None and scale_tril is not None:
        raise ValueError("cov/scale_tril: give at most one of them")
    fixed_mu = None if mu is None else _as_hyper_part("mu", mu, (p,))
    fixed_l = None
    if cov is not None:
        c = _as_hyper_part("cov", cov, (p, p))
        if not np.allclose(c, c.T) or np.min(np.linalg.eigvalsh(c)) < -1e-12 * np.abs(c).max():
            raise ValueError("cov: must be symmetric positive semi-definite")
        vals, vecs = np.linalg.eigh(c)
        root = vecs * np.sqrt(np.clip(vals, 0, None))
        fixed_l = np.linalg.qr(root.T, mode="r").T  # lower-triangular L with L L^T = cov
    elif scale_tril is not None:
        fixed_l = np.tril(_as_hyper_part("scale_tril", scale_tril, (p, p)))
    if noise is None and tasks.noise_scale is not None:
        noise = 1.0
    if noise is not None:
        noise = float(noise)
        if not (np.isfinite(noise) and noise > 0):
            raise ValueError(f"noise: must be finite and positive, got {noise}")
    if common is not None or task_covariates is not None:
        return _linear_gaussian_mixed(
            tasks, cov, scale_tril, fixed_l, noise, mu, common, task_covariates, max_iter, tol
        )
    stats = linear_sufficient_stats(
        tasks.x, tasks.y, tasks.task_index, tasks.num_tasks, tasks.noise_scale
    )
    hyper, info = fit_linear_gaussian(
        stats,
        mu=fixed_mu,
        scale_tril=fixed_l,
        noise=noise,
        num_em_steps=num_em_steps,
        max_iter=max_iter,
        tol=tol,
    )
    post, per_task = _posterior_and_marginal(stats, hyper)
    return LinearGaussianResult(
        hyper=hyper,
        cov=hyper.cov,
        task_mean=post.mean,
        task_cov=post.cov,
        log_marginal_likelihood=jnp.sum(per_task),
        log_marginal_per_task=per_task,
        labels=tuple(tasks.labels),
        info=info,
    )


# --------------------------------------------------------------------------- mixed models
def _mixed_columns(tasks: TaskSet, common: Any) -> tuple[list[int], list[int]]:
    """Indices of the varying and the common columns of ``x``."""
    k = tasks.x.shape[1]
    names = list(tasks.feature_names or [])
    items = [common] if isinstance(common, str | int | np.integer) else list(common or [])
    com = []
    for item in items:
        if isinstance(item, str):
            if item not in names:
                raise ValueError(
                    f"common: {item!r} is not a column of x (x columns: {names or list(range(k))})"
                )
            com.append(names.index(item))
        else:
            if not 0 <= int(item) < k:
                raise ValueError(f"common: column {item} out of range 0..{k - 1}")
            com.append(int(item))
    if len(set(com)) != len(com):
        raise ValueError(f"common: a column is named twice ({items})")
    var = [j for j in range(k) if j not in com]
    if not var:
        raise ValueError("common: every column is common; at least one must vary by task")
    return var, com


def _mixed_task_x(tasks: TaskSet, task_covariates: Any) -> np.ndarray:
    if task_covariates is None:
        return np.zeros((tasks.num_tasks, 0))
    if tasks.task_x is None:
        raise ValueError("task_covariates: the TaskSet has no task_x")
    names = list(tasks.task_x_names)
    wanted = names if task_covariates is True else list(task_covariates)
    for name in wanted:
        if name not in names:
            raise ValueError(f"task_covariates: {name!r} is not a task covariate ({names})")
    return tasks.task_x[:, [names.index(n) for n in wanted]]


def _mixed_design_map(z, p, c):
    """``J_t`` ``(T, p + c, p + p q + c)``: the full coefficient vector of task t from
    ``gamma = (mu, vec B (row-major, p x q), beta)``."""
    T, q = z.shape
    J = jnp.zeros((T, p + c, p + p * q + c), dtype=z.dtype)
    J = J.at[:, :p, :p].set(jnp.eye(p, dtype=z.dtype))
    for i in range(p):
        J = J.at[:, i, p + i * q : p + (i + 1) * q].set(z)
    if c:
        J = J.at[:, p:, p + p * q :].set(jnp.eye(c, dtype=z.dtype))
    return J


def _mixed_gls(stats: LinearStats, J, p: int, L, noise):
    """Generalised least squares of ``gamma`` for given ``L`` and ``sigma``."""
    s2 = noise**2
    Q, q = stats.xtx, stats.xty  # whole design, varying columns first
    a = Q[:, :p, :p] / s2
    m = jnp.eye(p, dtype=a.dtype) + (L.T @ a) @ L
    m = 0.5 * (m + jnp.swapaxes(m, -1, -2))
    chol = jnp.linalg.cholesky(m)
    qv = jnp.einsum("tij,jk->tik", Q[:, :, :p], L)  # (T, P, p): X'X_v L
    w = solve_triangular(chol, jnp.swapaxes(qv, -1, -2), lower=True)  # C^-1 L'X_v'X
    K = Q / s2 - jnp.swapaxes(w, -1, -2) @ w / s2**2
    wy = solve_triangular(chol, jnp.einsum("ij,ti->tj", L, q[:, :p])[..., None], lower=True)
    k = q / s2 - (jnp.swapaxes(w, -1, -2) @ wy)[..., 0] / s2**2
    lhs = jnp.einsum("tai,tab,tbj->ij", J, K, J)
    rhs = jnp.einsum("tai,ta->i", J, k)
    return jnp.linalg.solve(lhs, rhs)


def _mixed_pieces(stats, J, z, p, c, L, noise):
    gamma = _mixed_gls(stats, J, p, L, noise)
    q = z.shape[1]
    mu, B = gamma[:p], gamma[p : p + p * q].reshape(p, q)
    beta = gamma[p + p * q :] if c else None
    loc = mu + z @ B.T  # (T, p)
    res = linear_residual_stats(stats, p, beta)
    return gamma, LinearHyper(loc, L, noise), res


@partial(jax.jit, static_argnames=("p", "c", "max_iter", "fit_l", "fit_noise"))
def _fit_mixed(stats, J, z, p, c, L0, noise0, max_iter, tol, fit_l, fit_noise):
    rows, cols = _tril_index(p)
    params = {}
    if fit_l:
        params["tril"] = L0[rows, cols]
    if fit_noise:
        params["log_noise"] = jnp.log(noise0)
    n_rows = jnp.sum(stats.count)

    def unpack(params):
        L = L0
        if fit_l:
            L = jnp.zeros((p, p), dtype=L0.dtype).at[rows, cols].set(params["tril"])
        noise = jnp.exp(params["log_noise"]) if fit_noise else noise0
        return L, noise

    def total(L, noise):
        _, hyper, res = _mixed_pieces(stats, J, z, p, c, L, noise)
        return jnp.sum(linear_log_marginal(res, hyper))

    num_iter, grad_norm = 0, jnp.zeros((), L0.dtype)
    L, noise = L0, noise0
    if params:
        flat, unravel = ravel_pytree(params)

        def loss(v):
            return -total(*unpack(unravel(v))) / n_rows

        x, _, g, num_iter = _bfgs(loss, flat, (), max_iter, tol)
        L, noise = unpack(unravel(x))
        grad_norm = jnp.sqrt(g @ g)
    sign = jnp.where(jnp.diagonal(L) < 0, -1.0, 1.0).astype(L.dtype)
    L = L * sign[None, :]
    gamma, hyper, res = _mixed_pieces(stats, J, z, p, c, L, noise)
    post = linear_task_posterior(res, hyper)
    return gamma, hyper, post, linear_log_marginal(res, hyper), num_iter, grad_norm


def _linear_gaussian_mixed(
    tasks, cov, scale_tril, fixed_l, noise, mu, common, task_covariates, max_iter, tol
):
    if mu is not None:
        raise ValueError("mu: cannot be fixed together with common= or task_covariates=")
    var, com = _mixed_columns(tasks, common)
    z = jnp.asarray(_mixed_task_x(tasks, task_covariates))
    p, c = len(var), len(com)
    x = tasks.x[:, var + com]
    stats = linear_sufficient_stats(
        x, tasks.y, tasks.task_index, tasks.num_tasks, tasks.noise_scale
    )
    dtype = stats.xty.dtype
    if tol is None:
        tol = 1e-9 if dtype == jnp.float64 else 1e-4
    # start: pooled least squares for sigma, the spread of per-task fits for L
    init = _default_init(
        LinearStats(stats.xtx[:, :p, :p], stats.xty[:, :p], stats.yty, stats.count, stats.log_scale)
    )
    L0 = jnp.asarray(fixed_l, dtype) if fixed_l is not None else init.scale_tril
    noise0 = jnp.asarray(noise if noise is not None else init.noise, dtype)
    J = _mixed_design_map(z.astype(dtype), p, c)
    gamma, hyper, post, per_task, num_iter, grad_norm = _fit_mixed(
        stats,
        J,
        z.astype(dtype),
        p,
        c,
        L0,
        noise0,
        int(max_iter),
        jnp.asarray(tol, dtype),
        fixed_l is None,
        noise is None,
    )
    q = z.shape[1]
    free = tuple(n for n, on in (("scale_tril", fixed_l is None), ("noise", noise is None)) if on)
    info = {
        "log_marginal_likelihood": jnp.sum(per_task),
        "num_iterations": int(num_iter),
        "grad_norm": float(grad_norm),
        "converged": bool(float(grad_norm) <= float(tol)),
        "fitted": ("mu", "beta_task", "beta", *free),
        "varying_columns": var,
        "common_columns": com,
    }
    mu_hat = gamma[:p]
    return LinearGaussianResult(
        hyper=LinearHyper(mu_hat, hyper.scale_tril, hyper.noise),
        cov=hyper.scale_tril @ hyper.scale_tril.T,
        task_mean=post.mean,
        task_cov=post.cov,
        log_marginal_likelihood=jnp.sum(per_task),
        log_marginal_per_task=per_task,
        labels=tuple(tasks.labels),
        info=info,
        beta=gamma[p + p * q :] if c else None,
        beta_task=gamma[p : p + p * q].reshape(p, q) if q else None,
        task_location=hyper.mu,
    )
