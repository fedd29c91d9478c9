"""Input checks shared across layers (bottom layer: numpy only, nothing from ``bayesmeta``)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_estimates", "check_seed", "SEED_BOUND", "as_real_array"]

#: every integer seed of the library lies in ``0 <= seed < SEED_BOUND`` (2**32): the range
#: JAX's ``PRNGKey`` keeps distinct whether or not 64-bit mode is on (beyond it, seeds
#: wrap or collide), the same for every method
SEED_BOUND = 2**32


def check_seed(seed: Any, field: str = "seed") -> int:
    """``seed`` as a Python int: a Python or numpy integer with ``0 <= seed < 2**32``.

    Raises:
      ValueError: naming ``field`` for a non-integer (a float, a bool, a JAX key, a string)
        or an integer out of range.

    >>> check_seed(np.int64(7))
    7
    """
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool | np.bool_):
        hint = " (a JAX PRNG key: pass an integer)" if hasattr(seed, "dtype") else ""
        raise ValueError(
            f"{field}: expected an integer seed 0 <= seed < 2**32, got "
            f"{type(seed).__name__} {seed!r}{hint}"
        )
    value = int(seed)
    if not 0 <= value < SEED_BOUND:
        raise ValueError(f"{field}: must be an integer with 0 <= seed < 2**32, got {value}")
    return value


def as_real_array(field: str, value: Any) -> np.ndarray:
    """``value`` as a float array, or a ValueError naming ``field`` for input that is not
    real numbers (None, ragged lists, complex numbers: their imaginary part would be
    dropped)."""
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{field}: could not convert to a float array ({err})") from None
    if np.iscomplexobj(raw) or (
        raw.dtype == object and any(isinstance(v, complex) for v in raw.reshape(-1).tolist())
    ):
        raise ValueError(f"{field}: complex values are not supported (got dtype {raw.dtype})")
    try:
        return np.asarray(raw, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{field}: could not convert to a float array ({err})") from None


def check_estimates(y: Any, se: Any) -> tuple[np.ndarray, np.ndarray]:
    """One estimate and a finite positive standard error per task (se may be a scalar);
    the one check of (y, se) arrays, shared by :mod:`bayesmeta.estimators` and
    :mod:`bayesmeta.exact.normal`."""
    y = as_real_array("y", y)
    se = as_real_array("se", se)
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
