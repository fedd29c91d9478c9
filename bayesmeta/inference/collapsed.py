"""Collapsed inference: NUTS on the hyperparameters with Gaussian ``theta_t`` integrated out.

For a linear-Gaussian likelihood (``NormalKnownNoise``, ``Normal`` with a shared noise,
``LinearRegression`` with known or shared noise) under a ``Normal`` or ``MvNormal``
population, the per-task parameters integrate out in closed form:

    p(phi | y) ∝ p(phi) Π_t p(y_t | phi),   p(y_t | phi) = ∫ p(y_t | theta) N(theta | mu, Sigma)

(:mod:`bayesmeta.exact.linear`, per-task sufficient statistics, so one gradient costs
``O(T p^3)`` however many rows the tasks have). NUTS then runs on ``phi`` alone — a few
dimensions instead of ``T p`` — and each draw ``phi_s`` is completed by an exact draw of
every ``theta_t ~ p(theta_t | y_t, phi_s)``. The result has the same sites, dims and ArviZ
groups as full NUTS (``theta`` with a ``task`` dim, the pointwise log-likelihood of ``y``
given ``theta``), so the two can be compared or overlaid directly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro

from bayesmeta.inference import _gaussian as gauss
from bayesmeta.inference.nuts import NUTS_OPTIONS, _check_options, run_nuts, sample_stats_from

__all__ = ["fit_collapsed", "why_not_collapsible", "COLLAPSED_OPTIONS"]

COLLAPSED_OPTIONS = dict(NUTS_OPTIONS, log_likelihood=True, theta_batch=256)


def why_not_collapsible(model) -> str | None:
    """None when ``model`` can be fitted by ``method="collapsed"``, else why not."""
    return gauss.why_not_gaussian(model)


def _hyper_model(model, stats, param_shape):
    pop, lik = model.population, model.likelihood
    noise = gauss.conjugate_noise(lik)

    def collapsed():
        hyper = pop.sample_hyper(param_shape)
        sigma = None
        if noise == "shared":
            sigma = numpyro.sample("sigma", lik.noise_prior)
        h = gauss.population_hyper(pop, hyper, param_shape, sigma)
        numpyro.factor("y_marginal", jnp.sum(gauss.log_marginal(stats, h)))

    return collapsed


def _draw_theta(model, stats, param_shape, hyper_flat, key, batch):
    """Exact ``theta`` draws ``(S, T, *param_shape)``, one per hyperparameter draw, computed
    in batches of draws so memory stays ``O(batch T p^2)``."""
    pop, lik = model.population, model.likelihood
    shared = gauss.conjugate_noise(lik) == "shared"
    num = next(iter(hyper_flat.values())).shape[0]
    keys = jax.random.split(key, num)

    def one(h, k):
        lh = gauss.population_hyper(pop, h, param_shape, h["sigma"] if shared else None)
        post = gauss.task_posterior(stats, lh)
        z = jax.random.normal(k, post.mean.shape, post.mean.dtype)
        if not param_shape:  # scalar theta: the Cholesky factor is the sd
            return post.mean[:, 0] + jnp.sqrt(post.cov[:, 0, 0]) * z[:, 0]
        return post.mean + jnp.einsum("tij,tj->ti", jnp.linalg.cholesky(post.cov), z)

    return np.asarray(jax.lax.map(lambda a: one(*a), (hyper_flat, keys), batch_size=batch))


def fit_collapsed(model, tasks, seed: int = 0, **options):
    """Fit by collapsed NUTS; returns a :class:`~bayesmeta.posterior.Posterior`.

    Options: those of ``method="nuts"`` plus ``log_likelihood`` (compute the pointwise
    log-likelihood given ``theta``, default True) and ``theta_batch`` (draws per batch when
    completing ``theta``).
    """
    from bayesmeta.inference.diagnostics import check_fit
    from bayesmeta.posterior import Posterior

    why = why_not_collapsible(model)
    if why is not None:
        raise ValueError(f"method: 'collapsed' is not available: {why}")
    opts = dict(COLLAPSED_OPTIONS, **options)
    _check_options(opts)
    built = model.build(tasks)  # validates the data and gives dims/coords of full NUTS
    param_shape = built.param_shape
    stats = gauss.task_stats(model.likelihood, tasks)
    nuts_opts = {k: opts[k] for k in NUTS_OPTIONS}
    samples, extras, _ = run_nuts(_hyper_model(model, stats, param_shape), {}, seed, nuts_opts)
    samples = {k: np.asarray(v) for k, v in samples.items()}
    stats_out = sample_stats_from(extras)
    # convergence is judged on what NUTS sampled: every theta draw below is exact given
    # its hyperparameter draw, so theta mixes at least as well as the hyperparameters
    diag = check_fit(samples, int(np.sum(stats_out["diverging"])), warn=opts["warn"])
    chains, draws = next(iter(samples.values())).shape[:2]
    hyper_flat = {
        k: jnp.asarray(v.reshape(chains * draws, *v.shape[2:])) for k, v in samples.items()
    }
    hyper_flat.update(
        {
            k: jnp.broadcast_to(v, (chains * draws, *jnp.shape(v)))
            for k, v in model.population.fixed_values(param_shape).items()
        }
    )
    theta = _draw_theta(
        model,
        stats,
        param_shape,
        hyper_flat,
        jax.random.fold_in(jax.random.PRNGKey(seed), 1),
        int(opts["theta_batch"]),
    )
    site = model.population.theta_site
    samples[site] = theta.reshape(chains, draws, *theta.shape[1:])
    ll = {}
    if opts["log_likelihood"]:
        lik = model.likelihood
        data = built.data
        idx = data["task_index"]
        extras_flat = {k: hyper_flat[k] for k in lik.global_priors()}

        def pointwise(th, ex):
            return lik.row_dist(th[idx], data, lik.extras_rows(ex, idx)).log_prob(data["y"])

        ll_flat = jax.lax.map(
            lambda a: pointwise(*a),
            (jnp.asarray(theta), extras_flat),
            batch_size=int(opts["theta_batch"]),
        )
        ll["y"] = np.asarray(ll_flat).reshape(chains, draws, -1)
    observed = {"y": np.asarray(built.data["y"])}
    return Posterior(
        samples,
        method="collapsed",
        dims=built.dims,
        coords=built.coords,
        tasks=tasks,
        model=model,
        sample_stats=stats_out,
        log_likelihood=ll,
        observed_data=observed,
        info={"options": opts, "diagnostics": diag},
        param_shape=param_shape,
    )
