"""``method="exact"``: the closed-form normal-normal posterior as an engine, and the
friendly :func:`normal_normal` that returns it as a ``Posterior``.

The mathematics lives in :mod:`bayesmeta.exact.normal` (marginal posterior of ``tau`` by
adaptive quadrature, ``mu`` and ``theta`` analytically, exact i.i.d. draws); this module
turns its result into a :class:`~bayesmeta.posterior.Posterior` with the same sites, dims
and groups as every other engine. ``bm.exact.normal_normal`` and ``bm.exact.fit_exact``
are these functions (re-exported by the top-level package, so that ``bayesmeta.exact``
itself never imports the posterior layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import numpyro.distributions as dist

from bayesmeta._checks import check_seed
from bayesmeta.exact.normal import (
    _DEFAULT_QUANTILES,
    _LOG_2PI,
    NormalNormalResult,
    _loc_prior,
    _tau_prior,
    solve_normal_normal,
)
from bayesmeta.inference.assemble import assemble
from bayesmeta.inference.nuts import check_int_option
from bayesmeta.inference.registry import Engine
from bayesmeta.info import ExactInfo
from bayesmeta.tasks import TaskSet

__all__ = ["ENGINE", "EXACT_OPTIONS", "fit_exact", "normal_normal", "why_not_exact"]

EXACT_OPTIONS = {
    "num_chains": 4,
    "num_samples": 1000,
    "quantiles": _DEFAULT_QUANTILES,
    "rtol": 1e-11,
    "max_panels": 5000,
}


def check_exact_options(opts: dict) -> None:
    """The options of ``method="exact"`` (merged with the defaults), checked before any
    work: ``num_chains``, ``num_samples`` and ``max_panels`` integers >= 1 (not ``2.5``
    or ``"2"``), ``quantiles`` levels in (0, 1), ``rtol`` in (0, 1)."""
    for name in ("num_chains", "num_samples", "max_panels"):
        check_int_option(opts, name)
    try:
        levels = np.asarray(opts["quantiles"], dtype=float).reshape(-1)
    except (TypeError, ValueError):
        levels = None
    if levels is None or isinstance(opts["quantiles"], str) or levels.size == 0:
        raise ValueError(
            f"quantiles: expected a sequence of levels in (0, 1), got {opts['quantiles']!r}"
        )
    if not np.all((levels > 0) & (levels < 1)):
        raise ValueError(f"quantiles: levels must lie strictly between 0 and 1, got {levels}")
    rtol = opts["rtol"]
    if (
        not isinstance(rtol, float | int | np.floating | np.integer)
        or isinstance(rtol, bool)
        or not 0 < rtol < 1
    ):
        raise ValueError(f"rtol: must be a number in (0, 1), got {rtol!r}")


def _check_seed_or_key(seed: Any) -> Any:
    """An integer seed in the library's range (:func:`bayesmeta._checks.check_seed`), or a
    JAX PRNG key passed through."""
    if hasattr(seed, "dtype") and not isinstance(seed, np.integer) and np.ndim(seed) > 0:
        return seed
    return check_seed(seed)


def _reduce_rows(tasks: Any, row_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-task inverse-variance mean and its se: the sufficient statistic of theta_t."""
    t = tasks.task_index
    w = 1.0 / row_scale**2
    sw = np.bincount(t, weights=w, minlength=tasks.num_tasks)
    est = np.bincount(t, weights=w * tasks.y, minlength=tasks.num_tasks) / sw
    return est, 1.0 / np.sqrt(sw)


def _posterior(
    result: NormalNormalResult,
    tasks: Any,
    row_scale: np.ndarray,
    seed: Any,
    num_chains: int,
    num_samples: int,
    model: Any = None,
    sites: tuple[str, str, str] = ("mu", "tau", "theta"),
    info: dict | None = None,
):
    num_chains, num_samples = int(num_chains), int(num_samples)
    if num_chains < 1 or num_samples < 1:
        raise ValueError(f"num_chains/num_samples: must be >= 1, got {num_chains}, {num_samples}")
    draws = result.sample(seed, num_chains * num_samples)
    mu_site, tau_site, theta_site = sites
    samples = {}
    if result._loc.kind != "fixed":
        samples[mu_site] = draws["mu"].reshape(num_chains, num_samples)
    if not result.tau_fixed:
        samples[tau_site] = draws["tau"].reshape(num_chains, num_samples)
    theta = draws["theta"].reshape(num_chains, num_samples, -1)
    samples[theta_site] = theta
    obs_dim = "task" if tasks.is_estimates else "obs"
    ll = partial(_pointwise, theta, tasks.task_index, tasks.y, row_scale)
    if model is not None:  # the bound model's own dims and coords
        built = model.build(tasks)
        dims = coords = None
    else:  # the friendly solver on bare estimates: the same names, made here
        built = None
        dims = {mu_site: [], tau_site: [], theta_site: ["task"], "y": [obs_dim]}
        coords = {"task": list(tasks.labels)}
        if obs_dim == "obs":
            coords["obs"] = list(range(tasks.num_obs))
    return assemble(
        samples,
        method="exact",
        tasks=tasks,
        model=model,
        built=built,
        dims=dims,
        coords=coords,
        param_shape=(),
        log_likelihood=ll,
        observed_data={"y": tasks.y.copy()},
        info=dict(info or {}, exact=result),
        info_type=ExactInfo,
    )


def _pointwise(theta, task_index, y, row_scale) -> dict:
    """``log N(y_r | theta_t, s_r)`` for every draw ``(chain, draw, N)``, computed on first
    use (``post.log_likelihood``, LOO) a few draws at a time, so a fit itself holds no
    ``draws x rows`` temporaries."""
    chains, draws = theta.shape[:2]
    flat = theta.reshape(chains * draws, -1)
    out = np.empty((chains * draws, y.size))
    log_scale = np.log(row_scale)
    step = max(1, 4_000_000 // max(1, y.size))
    for start in range(0, flat.shape[0], step):
        sl = slice(start, start + step)
        z = (y - flat[sl][:, task_index]) / row_scale
        out[sl] = -0.5 * (z**2 + _LOG_2PI) - log_scale
    return {"y": out.reshape(chains, draws, -1)}


def _task_arrays(tasks: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(tasks, TaskSet):
        raise ValueError(f"tasks: expected a bm.TaskSet, got {type(tasks).__name__}")
    if tasks.noise_scale is None:
        raise ValueError(
            "noise_scale: the normal-normal model needs known noise scales (build "
            "the TaskSet with from_estimates, or with noise_scale=)"
        )
    est, se = _reduce_rows(tasks, tasks.noise_scale)
    return est, se, tasks.noise_scale


def normal_normal(
    tasks: Any,
    loc_prior: Any = None,
    scale_prior: Any = None,
    *,
    num_samples: int = 1000,
    num_chains: int = 4,
    seed: Any = 0,
    quantiles: Sequence[float] = _DEFAULT_QUANTILES,
    tau_range: tuple[float, float] | None = None,
    rtol: float = 1e-11,
    max_panels: int = 5000,
):
    """Exact posterior of ``y_t ~ N(theta_t, s_t)``, ``theta_t ~ N(mu, tau)`` as a Posterior.

    Args:
      tasks: a ``bm.TaskSet`` with known noise: ``from_estimates`` (one estimate and se per
        task) or raw rows with ``noise_scale``, which are reduced to each task's
        inverse-variance mean and its standard error (a sufficient statistic for
        ``theta_t``). Inputs ``x`` are ignored.
      loc_prior, scale_prior, quantiles, tau_range, rtol, max_panels: as in
        :func:`solve_normal_normal` (defaults ``mu ~ N(0, 5)``, ``tau ~ HalfCauchy(5)``, the
        defaults of ``bm.populations.Normal``).
      num_samples, num_chains: exact i.i.d. draws, arranged ``(chain, draw)``.
      seed: an integer seed (``0 <= seed < 2**32``, numpy integers too) or a JAX PRNG key
        for the draws.

    Returns:
      a ``bm.posterior.Posterior`` (``method="exact"``) with draws of ``mu`` ``[]``, ``tau``
      ``[]`` and ``theta`` ``["task"]``, the pointwise log-likelihood of every row of ``y``,
      the observed ``y``, and the :class:`NormalNormalResult` in ``info["exact"]`` (exact
      moments, quantiles, the tau rule and density, predictive distributions, log p(y)).
      A fixed ``mu`` or ``tau`` is not a sampled site, as in the NUTS output.

    >>> import bayesmeta as bm, numpyro.distributions as dist
    >>> post = normal_normal(bm.datasets.eight_schools(), scale_prior=dist.HalfCauchy(5))
    >>> post.samples["theta"].shape
    (4, 1000, 8)
    """
    seed = _check_seed_or_key(seed)
    check_exact_options(
        dict(
            num_chains=num_chains,
            num_samples=num_samples,
            quantiles=quantiles,
            rtol=rtol,
            max_panels=max_panels,
        )
    )
    est, se, row_scale = _task_arrays(tasks)
    result = solve_normal_normal(
        est,
        se,
        loc_prior=loc_prior,
        scale_prior=scale_prior,
        labels=tasks.labels,
        quantiles=quantiles,
        tau_range=tau_range,
        rtol=rtol,
        max_panels=max_panels,
    )
    return _posterior(result, tasks, row_scale, seed, num_chains, num_samples)


def why_not_exact(model: Any) -> str | None:
    """``None`` when ``model`` is a normal-normal hierarchical model that
    :func:`fit_exact` can solve, else the reason it cannot.

    >>> import bayesmeta as bm
    >>> model = bm.Hierarchical(bm.likelihoods.NormalKnownNoise(), bm.populations.Normal())
    >>> bm.exact.why_not_exact(model) is None
    True
    >>> bad = bm.Hierarchical(bm.likelihoods.NormalKnownNoise(), bm.populations.StudentT())
    >>> isinstance(bm.exact.why_not_exact(bad), str)  # the reason, in words
    True
    """
    if type(model).__name__ != "Hierarchical" or not hasattr(model, "population"):
        return f"the model is a {type(model).__name__}, not a bm.Hierarchical"
    lik = type(model.likelihood).__name__
    if lik != "NormalKnownNoise":
        return f"the likelihood is {lik}, not NormalKnownNoise (known-noise Gaussian)"
    pop = model.population
    if type(pop).__name__ != "Normal":
        return f"the population is {type(pop).__name__}, not Normal"
    if getattr(pop, "dim", None) not in (None, 1):
        return f"the population has dim={pop.dim}; exact needs one scalar parameter per task"
    if getattr(pop, "task_covariates", None) is not None:
        return (
            "the population regresses on task covariates; exact covers one mean for all "
            "tasks (use method='collapsed', or bm.estimators.random_effects(..., mods=))"
        )
    loc = pop.loc
    if hasattr(loc, "log_prob") and type(loc).__name__ not in ("Normal", "ImproperUniform"):
        return (
            f"the prior on mu is {type(loc).__name__}; exact integrates mu analytically and "
            "needs a Normal prior, a flat (ImproperUniform) prior or a fixed value"
        )
    if type(loc).__name__ == "ImproperUniform" and (
        loc.support is not _real_constraint() or tuple(loc.batch_shape) or tuple(loc.event_shape)
    ):
        return "the flat prior on mu must be a scalar ImproperUniform over the real line"
    try:
        _loc_prior("flat" if type(loc).__name__ == "ImproperUniform" else loc)
        _tau_prior(pop.scale, None)
    except ValueError as err:
        return str(err)
    return None


def _real_constraint():
    return dist.constraints.real


def fit_exact(model: Any, tasks: Any, seed: Any = 0, **options):
    """``bm.fit(model, tasks, method="exact")``: the exact normal-normal posterior.

    Eligible models (see :func:`why_not_exact`): ``bm.Hierarchical`` with a
    ``NormalKnownNoise`` likelihood and a ``bm.populations.Normal`` population of dimension
    1 whose ``loc`` is a ``Normal``, ``ImproperUniform`` or fixed number and whose ``scale``
    is any proper prior with non-negative support or a fixed number. Options
    (``EXACT_OPTIONS``): ``num_chains`` (4), ``num_samples`` (1000 per chain), ``quantiles``,
    ``rtol``, ``max_panels``. Site names follow the population (``mu``, ``tau``, ``theta``,
    or their prefixed names).

    Scale: memory grows as tasks + quadrature nodes; beyond the float64 ``theta`` draws
    themselves (``chains x draws x tasks x 8`` bytes, the request) a fit holds ``O(tasks)``
    plus a few fixed ``4e6``-double buffers. The pointwise log-likelihood (as large as the
    draws) is computed on first use of ``post.log_likelihood`` (``to_arviz``, LOO).

    Reproducibility: ``theta`` draws of each task come from a stream keyed by the seed and
    the task's label, and sums over tasks run in a canonical order, so reordering the tasks
    only reorders the draws, bit for bit; the same seed gives the same draws in every
    process. ``mu`` and ``tau`` draws do not depend on the task order either.

    A posterior moment that does not exist (one task under a HalfCauchy prior: ``p(tau | y)
    ~ tau**-3`` has no variance) is reported as ``inf`` in ``info.exact`` (``tau_sd``);
    the draws are exact all the same.

    Raises:
      ValueError: naming why the model is not eligible, or an unknown option.

    >>> import bayesmeta as bm
    >>> model = bm.Hierarchical(bm.likelihoods.NormalKnownNoise(), bm.populations.Normal())
    >>> post = bm.exact.fit_exact(model, bm.datasets.eight_schools(), num_chains=1, num_samples=200)
    >>> post.method, post.samples["theta"].shape  # the same as bm.fit(..., method="exact")
    ('exact', (1, 200, 8))
    """
    why = why_not_exact(model)
    if why is not None:
        raise ValueError(
            f"method: 'exact' needs a normal-normal model (NormalKnownNoise "
            f"likelihood, Normal population); {why}"
        )
    unknown = sorted(set(options) - set(EXACT_OPTIONS))
    if unknown:
        raise ValueError(
            f"options: unknown option(s) {unknown} for method 'exact'; known: "
            f"{sorted(EXACT_OPTIONS)}"
        )
    opts = dict(EXACT_OPTIONS, **options)
    check_exact_options(opts)
    seed = _check_seed_or_key(seed)
    model.likelihood.validate(tasks)
    row_scale = np.asarray(model.likelihood.data_arrays(tasks)["noise_scale"], dtype=float)
    est, se = _reduce_rows(tasks, row_scale)
    pop = model.population
    loc = "flat" if type(pop.loc).__name__ == "ImproperUniform" else pop.loc
    result = solve_normal_normal(
        est,
        se,
        loc_prior=loc,
        scale_prior=pop.scale,
        labels=tasks.labels,
        quantiles=opts["quantiles"],
        rtol=opts["rtol"],
        max_panels=opts["max_panels"],
    )
    sites = (pop.site("mu"), pop.site("tau"), pop.theta_site)
    return _posterior(
        result,
        tasks,
        row_scale,
        seed,
        opts["num_chains"],
        opts["num_samples"],
        model=model,
        sites=sites,
        info={"options": opts},
    )


def _cli_options(chains: int, warmup: int, draws: int, progress: bool) -> dict:
    return dict(num_chains=chains, num_samples=draws)


ENGINE = Engine(
    name="exact",
    summary="closed-form normal-normal posterior (known-noise Gaussian tasks)",
    options=EXACT_OPTIONS,
    fit=fit_exact,
    why_not=lambda model, tasks: why_not_exact(model),
    cli_options=_cli_options,
    check_options=check_exact_options,
)
