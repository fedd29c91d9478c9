"""Linear-Gaussian pieces shared by collapsed inference and ``adapt``: which models have
Gaussian per-task parameters that can be integrated out, their sufficient statistics, and
the population as ``(mu, L)`` with ``Sigma = L L^T``. The algebra itself is
:mod:`bayesmeta.exact.linear`; scalar parameters get an elementwise fast path."""

from __future__ import annotations

import jax.numpy as jnp

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


def residual_stats(stats: LinearStats, num_varying: int, beta=None) -> LinearStats:
    """:func:`bayesmeta.exact.linear.linear_residual_stats`: the statistics of
    ``y - X_c beta`` on the varying columns."""
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
        return linear_log_marginal(stats, hyper)
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
        return linear_task_posterior(stats, hyper)
    mean, var = scalar_posterior(stats, hyper.mu[..., 0], hyper.scale_tril[0, 0], hyper.noise**2)
    return GaussianPosterior(mean[:, None], var[:, None, None])


def scalar_posterior(stats: LinearStats, mu, tau, s2):
    """Mean and variance of scalar ``theta_t | y_t`` for every task; ``mu``, ``tau``,
    ``s2`` (the noise variance) broadcast against the tasks, e.g. ``(S, 1)`` for ``S``
    hyperparameter draws gives ``(S, T)``."""
    A, b = stats.xtx[:, 0, 0], stats.xty[..., 0]
    den = s2 + tau**2 * A
    var = tau**2 * s2 / den
    mean = mu + tau**2 * (b - A * mu) / den
    return mean, var
