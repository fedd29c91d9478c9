"""Input checks shared across layers (bottom layer: numpy only, nothing from ``bayesmeta``)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_estimates"]


def check_estimates(y: Any, se: Any) -> tuple[np.ndarray, np.ndarray]:
    """One estimate and a finite positive standard error per task (se may be a scalar);
    the one check of (y, se) arrays, shared by :mod:`bayesmeta.estimators` and
    :mod:`bayesmeta.exact.normal`."""
    try:
        y = np.asarray(y, dtype=float)
        se = np.asarray(se, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"y/se: could not convert to float arrays ({err})") from None
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"y: expected a non-empty 1-d array of estimates, got shape {y.shape}")
    if se.ndim == 0:
        se = np.full(y.shape, float(se))
    if se.shape != y.shape:
        raise ValueError(f"se: shape {se.shape} does not match y's {y.shape}")
    bad = ~np.isfinite(y)
    if bad.any():
        raise ValueError(f"y: non-finite value at task {int(np.flatnonzero(bad)[0])}")
    bad = ~(np.isfinite(se) & (se > 0))
    if bad.any():
        t = int(np.flatnonzero(bad)[0])
        raise ValueError(f"se: must be finite and positive, got {se[t]} at task {t}")
    return y, se
