"""Convergence diagnostics on ``(chain, draw, ...)`` arrays: rank-normalised split R-hat
and bulk ESS (Vehtari et al. 2021), and the one plain warning a fit emits."""

from __future__ import annotations

import warnings

import numpy as np
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

__all__ = ["rhat", "ess_bulk", "check_fit", "FitWarning"]


class FitWarning(UserWarning):
    """A fit's diagnostics failed (divergences, R-hat, ESS)."""


_ACKLAM_A = (
    -3.969683028665376e01,
    2.209460984245205e02,
    -2.759285104469687e02,
    1.383577518672690e02,
    -3.066479806614716e01,
    2.506628277459239e00,
)
_ACKLAM_B = (
    -5.447609879822406e01,
    1.615858368580409e02,
    -1.556989798598866e02,
    6.680131188771972e01,
    -1.328068155288572e01,
)
_ACKLAM_C = (
    -7.784894002430293e-03,
    -3.223964580411365e-01,
    -2.400758277161838e00,
    -2.549732539343734e00,
    4.374664141464968e00,
    2.938163982698783e00,
)
_ACKLAM_D = (
    7.784695709041462e-03,
    3.224671290700398e-01,
    2.445134137142996e00,
    3.754408661907416e00,
)


def _ndtri(p: np.ndarray) -> np.ndarray:
    """Inverse standard-normal CDF for ``0 < p < 1`` in numpy (Acklam's rational
    approximation, relative error < 1.2e-9): ample for rank normalisation, and fast on the
    ``(draws, parameters)`` arrays of a fit with many tasks."""
    p = np.asarray(p, dtype=float)
    a, b, c, d = _ACKLAM_A, _ACKLAM_B, _ACKLAM_C, _ACKLAM_D
    out = np.empty_like(p)
    lo, hi = p < 0.02425, p > 1 - 0.02425
    mid = ~(lo | hi)
    q = p[mid] - 0.5
    r = q * q
    out[mid] = (
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
        * q
        / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    )
    for mask, sign, tail in ((lo, 1.0, p[lo]), (hi, -1.0, 1 - p[hi])):
        q = np.sqrt(-2 * np.log(tail))
        out[mask] = sign * (
            (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5])
            / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
        )
    return out


def _rank_normalize(x: np.ndarray) -> np.ndarray:
    """Rank-normalise over all chains and draws (axis 0 and 1), per component.

    The normal scores of the ranks 1..n are computed once and scattered by each
    component's sort order (components laid out contiguously for the sort)."""
    c, d = x.shape[:2]
    n = c * d
    flat = np.ascontiguousarray(x.reshape(n, -1).T)  # (components, n)
    order = np.argsort(flat, axis=1)
    scores = _ndtri((np.arange(1.0, n + 1.0) - 0.375) / (n + 0.25))
    z = np.empty(flat.shape)
    np.put_along_axis(z, order, np.broadcast_to(scores, flat.shape), axis=1)
    return z.T.reshape(x.shape)


def _split(x: np.ndarray) -> np.ndarray:
    d = x.shape[1] // 2
    return np.concatenate([x[:, :d], x[:, x.shape[1] - d :]], axis=0)


def _rhat_ess(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank-normalised split R-hat (max of bulk and tail) and bulk ESS, sharing the
    rank normalisation of the draws."""
    x = np.asarray(x, dtype=float)
    if x.shape[1] < 4:
        nan = np.full(x.shape[2:], np.nan)
        return nan, nan
    z = _rank_normalize(x)
    bulk = split_gelman_rubin(z)
    folded = np.abs(x - np.median(x.reshape(-1, *x.shape[2:]), axis=0))
    tail = split_gelman_rubin(_rank_normalize(folded))
    return np.maximum(bulk, tail), effective_sample_size(_split(z))


def rhat(x: np.ndarray) -> np.ndarray:
    """Rank-normalised split R-hat of draws ``(chain, draw, ...)`` (max of bulk and tail)."""
    return _rhat_ess(x)[0]


def ess_bulk(x: np.ndarray) -> np.ndarray:
    """Bulk effective sample size of draws ``(chain, draw, ...)``."""
    x = np.asarray(x, dtype=float)
    if x.shape[1] < 4:
        return np.full(x.shape[2:], np.nan)
    return effective_sample_size(_split(_rank_normalize(x)))


def check_fit(
    samples: dict,
    num_divergences: int | None,
    rhat_max: float = 1.01,
    ess_per_chain_min: float = 100.0,
    warn: bool = True,
) -> dict:
    """Compute per-parameter R-hat / bulk ESS, and warn once if anything fails.

    Returns ``{"divergences", "rhat": {name: max}, "ess_bulk": {name: min}, "problems": [...]}``.
    """
    out = {"divergences": num_divergences, "rhat": {}, "ess_bulk": {}, "problems": []}
    bad_rhat, bad_ess = [], []
    for name, x in samples.items():
        x = np.asarray(x)
        if x.ndim < 2 or x.shape[1] < 4:
            continue
        # components that never vary (a fixed correlation diagonal) carry no information
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        varying = np.ptp(flat.reshape(-1, flat.shape[-1]), axis=0) > 0
        if not varying.any():
            continue
        flat = flat[..., varying]
        r_all, e_all = _rhat_ess(flat)
        r, e = float(np.nanmax(r_all)), float(np.nanmin(e_all))
        out["rhat"][name], out["ess_bulk"][name] = r, e
        if x.shape[0] > 1 and r > rhat_max:
            bad_rhat.append(f"{name} ({r:.3f})")
        if e < ess_per_chain_min * x.shape[0]:
            bad_ess.append(f"{name} ({e:.0f})")
    if num_divergences:
        out["problems"].append(f"{num_divergences} divergent transitions")
    if bad_rhat:
        out["problems"].append(f"split R-hat > {rhat_max} for " + ", ".join(bad_rhat))
    if bad_ess:
        num_chains = next(iter(samples.values())).shape[0]
        out["problems"].append(
            f"bulk ESS < {ess_per_chain_min:.0f} per chain (< {ess_per_chain_min * num_chains:.0f})"
            " for " + ", ".join(bad_ess)
        )
    if warn and out["problems"]:
        warnings.warn(
            "bayesmeta fit diagnostics: "
            + "; ".join(out["problems"])
            + ". Consider more warmup/draws, a higher target_accept, or another "
            "parameterization.",
            FitWarning,
            stacklevel=5,
        )
    return out
