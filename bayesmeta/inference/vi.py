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
    if not isinstance(lr, float | int) or not lr > 0:
        raise ValueError(f"learning_rate: must be positive, got {lr!r}")
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
    key_fit, key_draw = jax.random.split(jax.random.PRNGKey(seed))
    draw, params, losses, compiled = _run_svi(model, built, opts, bool(progress), key_fit)
    elbo = -np.asarray(losses)
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
    # deterministic sites (theta from theta_raw) come from replaying the model on guide draws
    latent, replay = draw(key_draw, params, built.data)
    samples = {k: np.asarray(v)[None] for k, v in replay.items() if k != "y"}
    for k, v in latent.items():
        samples.setdefault(k, np.asarray(v)[None])
    info = {
        "options": opts,
        "elbo": elbo,
        "converged": converged,
        "elbo_change": change,
        "guide_params": params,
        "timing": {"compiled": compiled},
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


def _svi_key(built, opts: dict):
    """What the compiled optimisation depends on besides its inputs (None: not reusable,
    e.g. a user's optimizer object)."""
    if built.structure is None or opts["optimizer"] is not None:
        return None
    key = (
        built.structure,
        opts["guide"],
        float(opts["learning_rate"]),
        int(opts["num_steps"]),
        int(opts["num_particles"]),
        int(opts["num_samples"]),
    )
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _run_svi(model, built, opts: dict, progress: bool, key):
    """``(draw, params, losses, compiled)``, ``draw(key, params, data) -> (guide draws,
    model replayed on them)``. Without a progress bar the optimisation loop and the
    draws are compiled programs kept on ``model`` per structure and options, so a refit of the
    same model on new data of the same shapes (a simulation study, calibration runs)
    reuses it; ``compiled`` says whether this fit compiled it."""
    program_key = None if progress else _svi_key(built, opts)
    store = None if model is None else model.__dict__.setdefault("_vi_programs", {})
    if store is not None and program_key is not None and program_key in store:
        svi, run, draw = store[program_key]
        compiled = False
    else:
        guide = GUIDES[opts["guide"]](built.fn)
        optimizer = opts["optimizer"] or optax.adam(float(opts["learning_rate"]))
        loss = Trace_ELBO(num_particles=int(opts["num_particles"]))
        svi = SVI(built.fn, guide, optimizer, loss=loss)
        num_steps = int(opts["num_steps"])

        @jax.jit
        def run(state, data):
            def step(s, _):
                return svi.update(s, **data)

            return jax.lax.scan(step, state, None, length=num_steps)

        num_samples = int(opts["num_samples"])
        sites = [k for k in built.dims if k != "y"]

        @jax.jit
        def draw(key, params, data):
            latent = Predictive(guide, params=params, num_samples=num_samples)(key, **data)
            replay = Predictive(built.fn, posterior_samples=latent, return_sites=sites)(key, **data)
            return latent, replay

        compiled = True
        if store is not None and program_key is not None:
            store[program_key] = (svi, run, draw)
    if progress:
        result = svi.run(key, int(opts["num_steps"]), progress_bar=True, **built.data)
        return draw, result.params, result.losses, True
    state = svi.init(key, **built.data)
    state, losses = run(state, built.data)
    return draw, svi.get_params(state), losses, compiled


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
)
