"""Variational inference through NumPyro SVI with an automatic guide and an optax optimizer.

Guides: ``"normal"`` (mean-field, ``AutoNormal``), ``"lowrank"``
(``AutoLowRankMultivariateNormal``), ``"multivariate"`` (``AutoMultivariateNormal``).
The ELBO trace is kept in ``post.info["elbo"]`` (one value per step, higher is better);
convergence is judged on the relative change of the smoothed ELBO over the last tenth of
the steps and reported in ``post.info["converged"]``. Guide draws come back as one chain.
"""

from __future__ import annotations

import sys
import warnings

import jax
import numpy as np
import optax
from numpyro.infer import SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import (
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)

from bayesmeta.inference.diagnostics import FitWarning, user_stacklevel
from bayesmeta.inference.nuts import bind, posterior_from_draws
from bayesmeta.inference.registry import Engine
from bayesmeta.info import VIInfo

__all__ = ["fit_vi", "VI_OPTIONS", "GUIDES"]

GUIDES = {
    "normal": AutoNormal,
    "lowrank": AutoLowRankMultivariateNormal,
    "multivariate": AutoMultivariateNormal,
}
VI_OPTIONS = {
    "guide": "normal",
    "optimizer": None,
    "learning_rate": 0.01,
    "num_steps": 5000,
    "num_samples": 1000,
    "num_particles": 1,
    "progress_bar": None,
    "convergence_tol": 0.01,
    "warn": True,
}


def _check_options(opts: dict) -> None:
    if opts["guide"] not in GUIDES:
        raise ValueError(f"guide: must be one of {sorted(GUIDES)}, got {opts['guide']!r}")
    for name in ("num_steps", "num_samples", "num_particles"):
        v = opts[name]
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: must be a positive integer, got {v!r}")
    if opts["num_samples"] < 4:
        raise ValueError(f"num_samples: need at least 4 draws, got {opts['num_samples']}")
    lr = opts["learning_rate"]
    if (
        not isinstance(lr, float | int | np.floating | np.integer)
        or isinstance(lr, bool)
        or not 0 < lr < float("inf")
    ):
        raise ValueError(f"learning_rate: must be a finite positive number, got {lr!r}")
    tol = opts["convergence_tol"]
    if (
        not isinstance(tol, float | int | np.floating | np.integer)
        or isinstance(tol, bool)
        or not tol > 0
    ):
        raise ValueError(f"convergence_tol: must be a positive number, got {tol!r}")
    if opts["progress_bar"] is not None and not isinstance(opts["progress_bar"], bool):
        raise ValueError(f"progress_bar: expected None or a bool, got {opts['progress_bar']!r}")
    if not isinstance(opts["warn"], bool):
        raise ValueError(f"warn: expected a bool, got {opts['warn']!r}")
    opt = opts["optimizer"]
    if opt is not None and not isinstance(opt, optax.GradientTransformation):
        raise ValueError(
            f"optimizer: expected an optax.GradientTransformation, got {type(opt).__name__}"
        )


def _converged(elbo: np.ndarray, tol: float) -> tuple[bool, float]:
    """Relative change of the mean ELBO between the last two tenths of the run."""
    n = len(elbo)
    w = max(n // 10, 1)
    if n < 2 * w or n < 20:
        return False, float("nan")
    last, prev = np.mean(elbo[-w:]), np.mean(elbo[-2 * w : -w])
    scale = max(abs(last), 1.0)
    change = abs(last - prev) / scale
    return bool(change < tol), float(change)


def fit_vi(built, tasks, seed: int, model=None, **options):
    """Fit a built model by SVI; returns a one-chain :class:`~bayesmeta.posterior.Posterior`.

    Options (defaults in ``VI_OPTIONS``): ``guide``, ``optimizer`` (any optax transformation;
    default ``optax.adam(learning_rate)``), ``learning_rate``, ``num_steps``, ``num_samples``
    (guide draws), ``num_particles`` (ELBO Monte-Carlo particles), ``progress_bar``,
    ``convergence_tol``, ``warn``.
    """

    opts = dict(VI_OPTIONS, **options)
    _check_options(opts)
    progress = opts["progress_bar"]
    if progress is None:
        progress = sys.stderr.isatty()
    guide = GUIDES[opts["guide"]](built.fn)
    optimizer = opts["optimizer"] or optax.adam(float(opts["learning_rate"]))
    svi = SVI(built.fn, guide, optimizer, loss=Trace_ELBO(num_particles=int(opts["num_particles"])))
    key_fit, key_draw = jax.random.split(jax.random.PRNGKey(seed))
    result = svi.run(key_fit, int(opts["num_steps"]), progress_bar=bool(progress), **built.data)
    elbo = -np.asarray(result.losses)
    if not np.all(np.isfinite(elbo[-max(len(elbo) // 10, 1) :])):
        raise FloatingPointError(
            "vi: the ELBO became non-finite; lower learning_rate or check the model's priors"
        )
    converged, change = _converged(elbo, float(opts["convergence_tol"]))
    if opts["warn"] and not converged:
        warnings.warn(
            f"bayesmeta fit diagnostics: VI did not converge (relative ELBO change "
            f"{change:.3g} over the last tenth of {opts['num_steps']} steps); raise "
            "num_steps or adjust learning_rate.",
            FitWarning,
            stacklevel=user_stacklevel(),
        )
    draws = Predictive(guide, params=result.params, num_samples=int(opts["num_samples"]))(
        key_draw, **built.data
    )
    # deterministic sites (theta from theta_raw) come from replaying the model on guide draws
    latent = dict(draws)
    replay = Predictive(
        built.fn, posterior_samples=latent, return_sites=[k for k in built.dims if k != "y"]
    )(key_draw, **built.data)
    samples = {k: np.asarray(v)[None] for k, v in replay.items() if k != "y"}
    for k, v in latent.items():
        samples.setdefault(k, np.asarray(v)[None])
    info = {
        "options": opts,
        "elbo": elbo,
        "converged": converged,
        "elbo_change": change,
        "guide_params": result.params,
    }
    return posterior_from_draws(
        built,
        tasks,
        model,
        samples,
        None,
        method="vi",
        warn=False,
        info=info,
        info_type=VIInfo,
    )


def _fit_engine(model, tasks, seed: int, **options):
    built, owner = bind(model, tasks)
    return fit_vi(built, tasks, seed, model=owner, **options)


def _cli_options(chains: int, warmup: int, draws: int, progress: bool) -> dict:
    # draws for every chain the command asked for; --warmup, when given, is the step count
    opts = dict(num_samples=draws * chains, progress_bar=progress)
    if warmup != 1000:
        opts["num_steps"] = warmup
    return opts


ENGINE = Engine(
    name="vi",
    summary="SVI with an automatic guide and an optax optimizer",
    options=VI_OPTIONS,
    fit=_fit_engine,
    cli_options=_cli_options,
    check_options=_check_options,
)
