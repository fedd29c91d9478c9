"""Variational inference through NumPyro SVI with an automatic guide and an optax optimizer.

Guides: ``"normal"`` (mean-field, ``AutoNormal``), ``"lowrank"``
(``AutoLowRankMultivariateNormal``), ``"multivariate"`` (``AutoMultivariateNormal``).
The ELBO trace is kept in ``post.info["elbo"]`` (one value per step, higher is better).
Guide draws come back as one chain.

**Convergence** (``post.info["converged"]``, the values in ``post.info["convergence"]``).
The steps are run in ten windows of ``w = num_steps // 10`` steps, and the guide's
parameters are averaged over each window (averaging removes the optimizer's step-to-step
jitter). The fit counts as converged when all three hold:

1. the ELBO is flat: the mean ELBO of the last window differs from that of the window
   before by less than ``convergence_tol`` (default 0.01) relative
   (``|E_10 - E_9| / max(|E_10|, 1)``);
2. the guide's locations are still: over the last half of the steps (window 6 against
   window 10), no location of the guide (in the unconstrained space NumPyro optimises)
   moved by more than ``param_tol`` (default 0.1) of the guide's own sd there;
3. the guide's scales are still: no sd of the guide changed by more than ``param_tol``
   on the log scale (about 10%) over the same half.

The ELBO alone is not enough: a large ELBO changes little in relative terms while a
hierarchical scale is still drifting. On a linear regression with a varying slope (30
tasks, tests/inference/test_vi.py) 3,000 steps leave the ELBO flat to 0.5% with
``tau = (2.0, 2.1)``, against ``(0.39, 0.08)`` after 15,000 steps and NUTS's
``(0.42, 0.09)``; (2) catches it (the locations moved 2.2 sd over the last half).
Averaging in windows keeps Adam's jitter out, so a guide that has stopped moving passes:
the same fit after 60,000 steps moved less than 0.1 sd.
"""

from __future__ import annotations

import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import (
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)

from bayesmeta.inference import sharding
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
    "param_tol": 0.1,
    "warn": True,
    "checkpoint": None,
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
    for name in ("convergence_tol", "param_tol"):
        v = opts[name]
        if not isinstance(v, float | int) or isinstance(v, bool) or not v > 0:
            raise ValueError(f"{name}: must be a positive number, got {v!r}")
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


NUM_WINDOWS = 10


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


def _programs(model, built, opts: dict):
    """``(svi, window, draw, compiled)``: the SVI object, its compiled window of steps
    ``window(state, data, length) -> (state, window mean of the params, losses)`` and the
    compiled guide draws ``draw(key, params, data) -> (guide draws, model replayed on
    them)``, kept on ``model`` per structure and options, so a refit of the same model on
    new data of the same shapes (a simulation study, calibration runs) compiles nothing;
    ``compiled`` says whether this fit built them."""
    program_key = _svi_key(built, opts)
    store = None if model is None else model.__dict__.setdefault("_vi_programs", {})
    if store is not None and program_key is not None and program_key in store:
        return (*store[program_key], False)
    guide = GUIDES[opts["guide"]](built.fn)
    optimizer = opts["optimizer"] or optax.adam(float(opts["learning_rate"]))
    loss = Trace_ELBO(num_particles=int(opts["num_particles"]))
    svi = SVI(built.fn, guide, optimizer, loss=loss)

    def window(state, data, length):
        zero = jax.tree.map(jnp.zeros_like, svi.get_params(state))

        def body(carry, _):
            state, acc = carry
            state, loss = svi.update(state, **data)
            return (state, jax.tree.map(jnp.add, acc, svi.get_params(state))), loss

        (state, acc), losses = jax.lax.scan(body, (state, zero), None, length=length)
        return state, jax.tree.map(lambda a: a / length, acc), losses

    num_samples = int(opts["num_samples"])
    sites = [k for k in built.dims if k != "y"]

    @jax.jit
    def draw(key, params, data):
        latent = Predictive(guide, params=params, num_samples=num_samples)(key, **data)
        replay = Predictive(built.fn, posterior_samples=latent, return_sites=sites)(key, **data)
        return latent, replay

    programs = (svi, jax.jit(window, static_argnums=2), draw)
    if store is not None and program_key is not None:
        store[program_key] = programs
    return (*programs, True)


def _run_windows(svi, window, key, num_steps: int, data: dict, progress: bool, checkpoint=None):
    """Run SVI for ``num_steps`` steps in windows of ``num_steps // 10`` (any remainder
    first); returns ``(params, losses (num_steps,), window means of the params, width,
    the window it resumed after)``. ``checkpoint``: ``(path, fingerprint)``; the optimiser
    state, the losses and the window means are saved after every window (atomically), and
    a checkpoint of the same fit is resumed."""
    width = max(num_steps // NUM_WINDOWS, 1)
    num_windows = num_steps // width
    rest = num_steps - num_windows * width
    state = svi.init(key, **data)
    losses, means = [], []
    lengths = ([rest] if rest else []) + [width] * num_windows
    start = 0
    if checkpoint is not None:
        from bayesmeta.inference import checkpoint as ck

        path, fp = checkpoint
        leaves, state_def = jax.tree.flatten(state)
        mean_def = jax.tree.structure(svi.get_params(state))
        found = ck.load(path, fp)
        if found is not None:
            meta, arrays = found
            start = int(meta["windows"])
            state = jax.tree.unflatten(
                state_def, [jnp.asarray(arrays[f"s{i}"]) for i in range(len(leaves))]
            )
            losses = [arrays[f"loss{i}"] for i in range(start)]
            n_leaves = mean_def.num_leaves
            means = [
                jax.tree.unflatten(mean_def, [arrays[f"mean{j}_{i}"] for i in range(n_leaves)])
                for j in range(int(meta["means"]))
            ]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, desc="vi", initial=sum(lengths[:start]))
    for w, length in enumerate(lengths):
        if w < start:
            continue
        state, mean, loss = window(state, data, length)
        losses.append(np.asarray(loss))
        if length == width:
            means.append(jax.tree.map(np.asarray, mean))
        if checkpoint is not None:
            arrays = {f"s{i}": np.asarray(v) for i, v in enumerate(jax.tree.leaves(state))}
            arrays.update({f"loss{i}": v for i, v in enumerate(losses)})
            for j, m in enumerate(means):
                arrays.update({f"mean{j}_{i}": v for i, v in enumerate(jax.tree.leaves(m))})
            meta = {"fingerprint": fp, "windows": w + 1, "means": len(means)}
            ck.save(path, dict(meta, done=sum(lengths[: w + 1]), total=num_steps), arrays)
        if bar is not None:
            bar.update(length)
            bar.set_postfix_str(f"loss {float(np.mean(losses[-1])):.4g}", refresh=False)
    if bar is not None:
        bar.close()
    return svi.get_params(state), np.concatenate(losses), means, width, start


def _loc_sd(params: dict, guide: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The guide's unconstrained locations and sds, ``{name: (loc, sd)}`` flattened."""
    if guide == "normal":
        out = {}
        for name in sorted(params):
            if name.endswith("_auto_loc"):
                site = name[: -len("_auto_loc")]
                loc = np.ravel(params[name])
                out[site] = (loc, np.ravel(params[f"{site}_auto_scale"]))
        return out
    loc = np.ravel(params["auto_loc"])
    if guide == "lowrank":
        factor = np.asarray(params["auto_cov_factor"])
        var = np.sum(factor**2, axis=-1) + np.asarray(params["auto_scale"]) ** 2
    else:
        var = np.sum(np.asarray(params["auto_scale_tril"]) ** 2, axis=-1)
    return {"auto": (loc, np.sqrt(var))}


def _convergence(
    elbo: np.ndarray, means: list, width: int, guide: str, tol: float, param_tol: float
) -> dict:
    """The three-part criterion of the module docstring, with its values."""
    out = {
        "converged": False,
        "elbo_change": float("nan"),
        "loc_drift": float("nan"),
        "scale_drift": float("nan"),
        "worst": None,
        "convergence_tol": tol,
        "param_tol": param_tol,
        "window": width,
    }
    if len(means) < 4 or len(elbo) < 20:
        return out
    last, prev = np.mean(elbo[-width:]), np.mean(elbo[-2 * width : -width])
    out["elbo_change"] = float(abs(last - prev) / max(abs(last), 1.0))
    half = len(means) // 2
    now, then = _loc_sd(means[-1], guide), _loc_sd(means[half], guide)
    loc_drift, scale_drift, worst, largest = 0.0, 0.0, None, -1.0
    for name, (loc, sd) in now.items():
        loc0, sd0 = then[name]
        sd_now, sd_then = np.maximum(sd, 1e-12), np.maximum(sd0, 1e-12)
        moved = np.abs(loc - loc0) / sd_now
        rescaled = np.abs(np.log(sd_now / sd_then))
        for value, kind in ((moved, "location"), (rescaled, "scale")):
            if value.size and float(np.max(value)) > largest:
                largest = float(np.max(value))
                worst = f"{name}[{int(np.argmax(value))}] {kind}"
        loc_drift = max(loc_drift, float(np.max(moved, initial=0.0)))
        scale_drift = max(scale_drift, float(np.max(rescaled, initial=0.0)))
    out.update(
        loc_drift=loc_drift,
        scale_drift=scale_drift,
        worst=worst,
        compared_steps=(int(len(elbo) - (len(means) - half) * width), int(len(elbo))),
    )
    out["converged"] = bool(
        out["elbo_change"] < tol and loc_drift < param_tol and scale_drift < param_tol
    )
    return out


def fit_vi(built, tasks, seed: int, model=None, **options):
    """Fit a built model by SVI; returns a one-chain :class:`~bayesmeta.posterior.Posterior`.

    Options (defaults in ``VI_OPTIONS``): ``guide``, ``optimizer`` (any optax transformation;
    default ``optax.adam(learning_rate)``), ``learning_rate``, ``num_steps``, ``num_samples``
    (guide draws), ``num_particles`` (ELBO Monte-Carlo particles), ``progress_bar``,
    ``convergence_tol``, ``param_tol`` (the convergence criterion of the module docstring),
    ``warn``, ``checkpoint`` (a file path: the optimiser state, the ELBO trace and the window
    means are saved there after each of the ten windows, atomically; the same fit called
    again with the same path resumes after the last saved window;
    ``info["timing"]["resumed_at"]`` is that window).
    """

    opts = dict(VI_OPTIONS, **options)
    _check_options(opts)
    progress = opts["progress_bar"]
    if progress is None:
        progress = sys.stderr.isatty()
    svi, window, draw, compiled = _programs(model, built, opts)
    key_fit, key_draw = jax.random.split(jax.random.PRNGKey(seed))
    checkpoint = None
    if opts["checkpoint"] is not None:
        from bayesmeta.inference import checkpoint as ck

        path = ck.check_path(opts["checkpoint"])
        fp = ck.fingerprint(
            seed=seed,
            model=repr(model),
            structure=built.structure,
            options=tuple(
                (k, repr(opts[k]))
                for k in ("guide", "optimizer", "learning_rate", "num_steps", "num_particles")
            ),
            data=built.data,
        )
        checkpoint = (path, fp)
    data = sharding.place_built(built).data  # split over devices (devices=)
    params, losses, means, width, resumed = _run_windows(
        svi, window, key_fit, int(opts["num_steps"]), data, bool(progress), checkpoint
    )
    elbo = -losses
    if not np.all(np.isfinite(elbo[-max(len(elbo) // 10, 1) :])):
        raise FloatingPointError(
            "vi: the ELBO became non-finite; lower learning_rate or check the model's priors"
        )
    crit = _convergence(
        elbo, means, width, opts["guide"], float(opts["convergence_tol"]), float(opts["param_tol"])
    )
    converged, change = crit["converged"], crit["elbo_change"]
    if opts["warn"] and not converged:
        warnings.warn(
            f"bayesmeta fit diagnostics: VI did not converge after {opts['num_steps']} steps "
            f"(relative ELBO change {change:.3g}, tolerance {crit['convergence_tol']:g}; "
            f"over the last half the guide's locations moved {crit['loc_drift']:.3g} sd and "
            f"its log sds {crit['scale_drift']:.3g}, tolerance {crit['param_tol']:g}; most: "
            f"{crit['worst']}); raise num_steps or adjust learning_rate.",
            FitWarning,
            stacklevel=user_stacklevel(),
        )
    # deterministic sites (theta from theta_raw) come from replaying the model on guide draws
    latent, replay = draw(key_draw, params, data)
    samples = {k: np.asarray(v)[None] for k, v in replay.items() if k != "y"}
    for k, v in latent.items():
        samples.setdefault(k, np.asarray(v)[None])
    info = {
        "options": opts,
        "elbo": elbo,
        "converged": converged,
        "elbo_change": change,
        "convergence": crit,
        "guide_params": params,
        "timing": {"compiled": compiled},
    }
    if checkpoint is not None:
        info["checkpoint"] = {"path": checkpoint[0], "every": width}
        info["timing"]["resumed_at"] = resumed
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
