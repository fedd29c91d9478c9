"""One way from draws to a :class:`~bayesmeta.posterior.Posterior`, for every engine.

:func:`assemble` takes the draws (site -> ``(chain, draw, ...)``), the bound model (whose
dims, coords, parameter shape and hidden helper sites it reads, so no engine rebuilds
them by hand), the sampler statistics under NumPyro's names (renamed to ArviZ's names
here, once), the pointwise log-likelihood (or a function computing it on first use) and
the engine's info, which becomes the engine's typed record (:mod:`bayesmeta.info`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from bayesmeta.arviz import _rename_sample_stats
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
) -> Posterior:
    """The Posterior of ``samples``.

    ``built`` (a :class:`~bayesmeta.model.BuiltModel`) supplies ``dims``, ``coords`` and
    ``param_shape`` and names the helper sites to drop (``theta_raw``); explicit
    ``dims``/``coords`` extend or override it. ``sampler_stats`` are NumPyro's extra fields
    (``potential_energy``, ``num_steps``, ...), renamed here for ArviZ.
    """
    hidden = () if built is None else tuple(built.hidden)
    draws = {k: np.asarray(v) for k, v in samples.items() if k not in hidden}
    all_dims = {} if built is None else dict(built.dims)
    all_dims.update(dims or {})
    all_coords = {} if built is None else dict(built.coords)
    all_coords.update(coords or {})
    if param_shape is None and built is not None:
        param_shape = built.param_shape
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
