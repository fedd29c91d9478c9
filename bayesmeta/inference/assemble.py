"""One way from draws to a :class:`~bayesmeta.posterior.Posterior`, for every engine.

:func:`assemble` takes the draws (site -> ``(chain, draw, ...)``), the bound model (whose
dims, coords, parameter shape and hidden helper sites it reads, so no engine rebuilds
them by hand), the sampler statistics under NumPyro's names (renamed to ArviZ's names
here, once), the pointwise log-likelihood (or a function computing it on first use) and
the engine's info, which becomes the engine's typed record (:mod:`bayesmeta.info`).

It is also the one place where every engine's draws are checked for NaN and infinite
values (NUTS, VI, exact, collapsed, Laplace, adapt and the meta-learners all pass here).
The rule: a chain is *broken* when any of its draws of any returned site is non-finite.

- every chain broken: :class:`~bayesmeta.inference.diagnostics.FitError` is raised, naming
  the sites, the tasks and the chains; no posterior is returned;
- some chains broken: a :class:`~bayesmeta.inference.diagnostics.FitWarning` names them,
  and ``post.info["diagnostics"]`` records ``nonfinite`` (site -> count, chains, task
  labels), ``bad_chains`` (chain indices) and the problem line. The draws are kept as they
  are (drop the chains with ``bad_chains`` to use the rest).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from bayesmeta.arviz import _rename_sample_stats
from bayesmeta.inference.diagnostics import (
    FitError,
    FitWarning,
    describe_nonfinite,
    nonfinite_draws,
    user_stacklevel,
)
from bayesmeta.info import FitInfo, info_from
from bayesmeta.posterior import Posterior

__all__ = ["assemble", "arviz_stats"]


def arviz_stats(sampler_stats: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    """Sampler statistics ``(chain, draw)`` under ArviZ's names (``diverging``, ``lp``,
    ``n_steps``, ``tree_depth``, ``step_size``, ``acceptance_rate``, ``energy``)."""
    return _rename_sample_stats({k: np.asarray(v) for k, v in (sampler_stats or {}).items()})


def assemble(
    samples: Mapping[str, Any],
    *,
    method: str,
    tasks: Any = None,
    model: Any = None,
    built: Any = None,
    dims: Mapping[str, list] | None = None,
    coords: Mapping[str, list] | None = None,
    param_shape: tuple | None = None,
    sampler_stats: Mapping[str, Any] | None = None,
    log_likelihood: Mapping[str, Any] | Callable[[], dict] | None = None,
    observed_data: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
    info_type: type[FitInfo] = FitInfo,
    nan_tasks: Any = None,
) -> Posterior:
    """The Posterior of ``samples``.

    ``built`` (a :class:`~bayesmeta.model.BuiltModel`) supplies ``dims``, ``coords`` and
    ``param_shape`` and names the helper sites to drop (``theta_raw``); explicit
    ``dims``/``coords`` extend or override it. ``sampler_stats`` are NumPyro's extra fields
    (``potential_energy``, ``num_steps``, ...), renamed here for ArviZ. ``nan_tasks``: labels
    of tasks whose draws are NaN because the caller asked for it (a meta-learner's
    ``on_invalid="nan"``: no posterior is implied there); NaN confined to them is recorded
    in ``info["diagnostics"]["nan_tasks"]`` and is neither an error nor a warning.
    """
    hidden = () if built is None else tuple(built.hidden)
    draws = {k: np.asarray(v) for k, v in samples.items() if k not in hidden}
    all_dims = {} if built is None else dict(built.dims)
    all_dims.update(dims or {})
    all_coords = {} if built is None else dict(built.coords)
    all_coords.update(coords or {})
    if param_shape is None and built is not None:
        param_shape = built.param_shape
    info = _check_finite(draws, method, all_dims, all_coords, info, nan_tasks)
    return Posterior(
        draws,
        method=method,
        dims=all_dims,
        coords=all_coords,
        tasks=tasks,
        model=model,
        sample_stats=arviz_stats(sampler_stats),
        log_likelihood=log_likelihood,
        observed_data=observed_data,
        info=info_from(info, info_type),
        param_shape=param_shape,
    )


def _check_finite(draws, method, dims, coords, info, nan_tasks=None):
    """Apply the non-finite rule of this module; returns ``info`` with the findings."""
    report = nonfinite_draws(draws, dims, coords)
    if not report:
        return info
    info = dict(info or {})
    diag = dict(info.get("diagnostics") or {})
    asked = set(nan_tasks or ())
    if asked and all("tasks" in e and set(e["tasks"]) <= asked for e in report.values()):
        diag["nan_tasks"] = sorted({t for e in report.values() for t in e["tasks"]}, key=str)
        diag["nonfinite"] = report
        info["diagnostics"] = diag
        return info
    num_chains = next(np.shape(v)[0] for v in draws.values() if np.ndim(v) >= 2)
    broken = sorted({c for entry in report.values() for c in entry["chains"]})
    line = describe_nonfinite(report)
    if len(broken) == num_chains:
        raise FitError(
            f"method {method!r}: {line}; every chain is affected, so no posterior is "
            "returned. Check the data's scale and the priors, or run in float64 "
            "(jax.config.update('jax_enable_x64', True))."
        )
    if diag.get("nonfinite") != report:  # not already reported by the engine's check_fit
        diag["problems"] = [p for p in diag.get("problems", []) if not p.startswith("non-finite ")]
        diag["problems"].append(line)
        if (info.get("options") or {}).get("warn", True):
            warnings.warn(
                f"bayesmeta fit diagnostics: {line}. The posterior keeps them; "
                f"post.info['diagnostics']['bad_chains'] lists chain(s) {broken}.",
                FitWarning,
                stacklevel=user_stacklevel(),
            )
    diag["nonfinite"] = report
    diag["bad_chains"] = sorted(set(diag.get("bad_chains", [])) | set(broken))
    info["diagnostics"] = diag
    return info
