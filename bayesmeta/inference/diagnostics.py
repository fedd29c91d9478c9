"""Convergence diagnostics on ``(chain, draw, ...)`` arrays: rank-normalised split R-hat
and bulk ESS (Vehtari et al. 2021), and the one plain warning a fit emits."""

from __future__ import annotations

import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

from bayesmeta._special import ndtri as _ndtri

__all__ = ["rhat", "ess_bulk", "e_bfmi", "check_fit", "FitWarning"]


class FitWarning(UserWarning):
    """A fit's diagnostics failed (divergences, R-hat, ESS)."""


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside bayesmeta
    (engines sit at different depths below ``bm.fit``)."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        _PACKAGE_DIR + os.sep
    ):
        frame, level = frame.f_back, level + 1
    return level


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


# components per block when many parameters are diagnosed at once: the blocks run on
# threads (numpy's sort and the FFTs release the GIL), so every core works on them
_BLOCK = 512


def _rhat_ess(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank-normalised split R-hat (max of bulk and tail) and bulk ESS, sharing the
    rank normalisation of the draws."""
    x = np.asarray(x, dtype=float)
    if x.shape[1] < 4:
        nan = np.full(x.shape[2:], np.nan)
        return nan, nan
    if x.ndim == 3 and x.shape[2] > _BLOCK and (os.cpu_count() or 1) > 1:
        blocks = [x[..., i : i + _BLOCK] for i in range(0, x.shape[2], _BLOCK)]
        with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
            parts = list(pool.map(_rhat_ess_block, blocks))
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))
    return _rhat_ess_block(x)


def _rhat_ess_block(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def e_bfmi(energy: np.ndarray) -> np.ndarray:
    """Energy Bayesian fraction of missing information per chain (Betancourt 2016) from the
    Hamiltonian energy ``(chain, draw)``; below 0.3 the momentum resampling explores the
    energy poorly (typically a funnel)."""
    e = np.asarray(energy, float)
    num = np.sum(np.diff(e, axis=1) ** 2, axis=1)
    den = np.sum((e - e.mean(axis=1, keepdims=True)) ** 2, axis=1)
    return num / np.where(den > 0, den, np.nan)


def check_fit(
    samples: dict,
    num_divergences: int | None,
    rhat_max: float = 1.01,
    ess_per_chain_min: float = 100.0,
    warn: bool = True,
    energy: np.ndarray | None = None,
    advice: str | None = None,
) -> dict:
    """Compute per-parameter R-hat / bulk ESS (and E-BFMI from ``energy``), and warn once
    if anything fails; ``advice`` (what to change, e.g. which tasks' parameterisation to
    flip) ends the warning when divergences or a low E-BFMI point at a funnel.

    Returns ``{"divergences", "rhat": {name: max}, "ess_bulk": {name: min}, "e_bfmi",
    "problems": [...]}``.
    """
    out = {"divergences": num_divergences, "rhat": {}, "ess_bulk": {}, "problems": []}
    low_bfmi = False
    if energy is not None and np.shape(energy)[1] >= 4:
        bfmi = e_bfmi(energy)
        out["e_bfmi"] = [float(b) for b in bfmi]
        if np.any(bfmi < 0.3):
            low_bfmi = True
            out["problems"].append(
                "E-BFMI below 0.3 in chain(s) "
                + ", ".join(str(i) for i in np.flatnonzero(bfmi < 0.3))
            )
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
    funnel = bool(num_divergences) or low_bfmi
    if funnel and advice:
        out["advice"] = advice
    if warn and out["problems"]:
        tail = (
            f" {advice}"
            if funnel and advice
            else " Consider more warmup/draws, a higher target_accept, or another parameterization."
        )
        warnings.warn(
            "bayesmeta fit diagnostics: " + "; ".join(out["problems"]) + "." + tail,
            FitWarning,
            stacklevel=user_stacklevel(),
        )
    return out
