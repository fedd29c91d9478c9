"""NUTS through NumPyro, chains vectorised on one device by default."""

from __future__ import annotations

import sys

import jax
import numpy as np
from numpyro.infer import MCMC, NUTS, log_likelihood

from bayesmeta.inference.diagnostics import check_fit

__all__ = ["fit_nuts", "NUTS_OPTIONS"]

NUTS_OPTIONS = {
    "num_chains": 4,
    "num_warmup": 1000,
    "num_samples": 1000,
    "target_accept": 0.9,
    "max_tree_depth": 10,
    "dense_mass": False,
    "progress_bar": None,
    "chain_method": "vectorized",
    "thinning": 1,
    "init_strategy": None,
    "warn": True,
}
_CHAIN_METHODS = ("vectorized", "parallel", "sequential")
# the sampler statistics every NUTS fit keeps (NumPyro's names; renamed for ArviZ)
SAMPLE_FIELDS = (
    "diverging",
    "energy",
    "num_steps",
    "accept_prob",
    "adapt_state.step_size",
    "potential_energy",
)


def _check_options(opts: dict) -> None:
    for name in ("num_chains", "num_warmup", "num_samples", "max_tree_depth", "thinning"):
        v = opts[name]
        low = 0 if name == "num_warmup" else 1
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < low:
            raise ValueError(f"{name}: must be an integer >= {low}, got {v!r}")
    if opts["num_samples"] < 4:
        raise ValueError(f"num_samples: need at least 4 draws per chain, got {opts['num_samples']}")
    ta = opts["target_accept"]
    if not isinstance(ta, float | int) or not 0.0 < float(ta) < 1.0:
        raise ValueError(f"target_accept: must be in (0, 1), got {ta!r}")
    if opts["chain_method"] not in _CHAIN_METHODS:
        raise ValueError(
            f"chain_method: must be one of {_CHAIN_METHODS}, got {opts['chain_method']!r}"
        )
    if not isinstance(opts["dense_mass"], bool | list | tuple):
        raise ValueError(
            f"dense_mass: expected a bool or a list of site groups, got {opts['dense_mass']!r}"
        )


def show_progress(opts: dict) -> bool:
    """Whether a fit shows a progress bar: ``progress_bar``, or None for an interactive
    terminal."""
    progress = opts["progress_bar"]
    return sys.stderr.isatty() if progress is None else bool(progress)


def make_mcmc(fn, opts: dict) -> MCMC:
    """A NumPyro ``MCMC`` running NUTS on the model ``fn`` with options ``opts``."""
    kernel_kw = dict(
        target_accept_prob=float(opts["target_accept"]),
        max_tree_depth=int(opts["max_tree_depth"]),
        dense_mass=opts["dense_mass"],
    )
    if opts["init_strategy"] is not None:
        kernel_kw["init_strategy"] = opts["init_strategy"]
    return MCMC(
        NUTS(fn, **kernel_kw),
        num_warmup=int(opts["num_warmup"]),
        num_samples=int(opts["num_samples"]),
        num_chains=int(opts["num_chains"]),
        chain_method=opts["chain_method"],
        progress_bar=show_progress(opts),
        thinning=int(opts["thinning"]),
    )


def run_nuts(fn, data: dict, seed: int, opts: dict, extra_fields=()):
    """Run NumPyro NUTS on ``fn(**data)``; returns ``(samples by chain, extra fields, mcmc)``."""
    mcmc = make_mcmc(fn, opts)
    mcmc.run(
        jax.random.PRNGKey(seed),
        extra_fields=(*SAMPLE_FIELDS, *extra_fields),
        **data,
    )
    samples = mcmc.get_samples(group_by_chain=True)
    extras = mcmc.get_extra_fields(group_by_chain=True)
    return samples, extras, mcmc


def sample_stats_from(extras: dict) -> dict:
    """NumPyro's extra fields under ArviZ's names (the one renaming lives in
    ``bayesmeta.arviz``), each ``(chain, draw)``."""
    from bayesmeta.arviz import _rename_sample_stats

    return _rename_sample_stats({k: np.asarray(v) for k, v in extras.items()})


def fit_nuts(built, tasks, seed: int, model=None, **options):
    """Fit a built model by NUTS and return a :class:`~bayesmeta.posterior.Posterior`.

    Options (defaults in ``NUTS_OPTIONS``): ``num_chains``, ``num_warmup``, ``num_samples``,
    ``target_accept``, ``max_tree_depth``, ``dense_mass``, ``progress_bar`` (None: shown when
    the terminal is interactive), ``chain_method`` (``"vectorized"`` on one device by
    default), ``thinning``, ``init_strategy``, ``warn`` (the diagnostics warning).
    """
    from bayesmeta.posterior import Posterior

    opts = dict(NUTS_OPTIONS, **options)
    _check_options(opts)
    samples, extras, _ = run_nuts(built.fn, built.data, seed, opts)
    return posterior_from_draws(
        built,
        tasks,
        model,
        samples,
        sample_stats_from(extras),
        method="nuts",
        warn=opts["warn"],
        info={"options": opts},
        posterior_cls=Posterior,
    )


def posterior_from_draws(
    built, tasks, model, samples, sample_stats, method, warn, info, posterior_cls
):
    """Drop helper sites, add the pointwise log-likelihood, check convergence."""
    samples = {k: np.asarray(v) for k, v in samples.items()}
    chains, draws = next(iter(samples.values())).shape[:2]
    flat = {k: v.reshape(chains * draws, *v.shape[2:]) for k, v in samples.items()}
    samples = {k: v for k, v in samples.items() if k not in built.hidden}

    def pointwise():  # deferred: computed when post.log_likelihood is first used
        ll = log_likelihood(built.fn, flat, batch_ndims=1, **built.data)
        return {k: np.asarray(v).reshape(chains, draws, *np.shape(v)[1:]) for k, v in ll.items()}

    divergences = None
    if sample_stats and "diverging" in sample_stats:
        divergences = int(np.sum(sample_stats["diverging"]))
    diag = check_fit(samples, divergences, warn=warn)
    observed = {"y": np.asarray(built.data["y"])} if "y" in built.data else {}
    if built.obs_dim == "task" and observed:
        first = {k: v[:1] for k, v in flat.items()}
        ll_shape = {
            k: np.shape(v)[1:]
            for k, v in log_likelihood(built.fn, first, batch_ndims=1, **built.data).items()
        }
        if "y" in ll_shape and observed["y"].shape != ll_shape["y"]:
            observed = {}
    return posterior_cls(
        samples,
        method=method,
        dims=built.dims,
        coords=built.coords,
        tasks=tasks,
        model=model,
        sample_stats=sample_stats,
        log_likelihood=pointwise,
        observed_data=observed,
        info=dict(info, diagnostics=diag),
        param_shape=built.param_shape,
    )
