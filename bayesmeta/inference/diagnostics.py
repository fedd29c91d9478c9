"""Convergence diagnostics on ``(chain, draw, ...)`` arrays: rank-normalised split R-hat
and bulk ESS (Vehtari et al. 2021), broken chains (non-finite draws, frozen chains), and
the one plain warning a fit emits.

R-hat and ESS have one implementation here (:func:`_rhat_ess`), a vectorised transcription
of ArviZ's ``rhat(method="rank")`` and ``ess(method="bulk")`` (same rank normalisation with
average ranks for ties, same FFT sizes, same Geyer truncation); the tests hold it to
ArviZ within relative 1e-8 on random and pathological draws. (It replaced NumPyro's
``effective_sample_size``, whose initial monotone sequence leaves out the first pair and
whose autocorrelation time has no lower bound, so strongly anti-correlated draws gave a
negative ESS.)"""

from __future__ import annotations

import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.fft import next_fast_len as _next_fast_len

from bayesmeta._special import ndtri as _ndtri

__all__ = [
    "rhat",
    "ess_bulk",
    "e_bfmi",
    "check_fit",
    "nonfinite_draws",
    "describe_nonfinite",
    "FitWarning",
    "FitError",
]


class FitWarning(UserWarning):
    """A fit's diagnostics failed (divergences, R-hat, ESS, broken chains)."""


class FitError(RuntimeError):
    """A fit produced no usable posterior (every chain holds non-finite draws)."""


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
    """Rank-normalise ``(chain, draw, components)`` over all chains and draws, per
    component: average ranks for ties (as ``scipy.stats.rankdata(method="average")``), then
    the normal scores ``ndtri((rank - 3/8) / (n + 1/4))`` (Blom 1958), as ArviZ does.

    Components are laid out contiguously for one sort; ties (a frozen chain, a discrete
    parameter) share the mean of their ranks."""
    c, d = x.shape[:2]
    n = c * d
    flat = np.ascontiguousarray(x.reshape(n, -1).T)  # (components, n)
    order = np.argsort(flat, axis=1)
    ordered = np.take_along_axis(flat, order, axis=1)
    ranks = np.broadcast_to(np.arange(1.0, n + 1.0), flat.shape)
    starts = np.ones(flat.shape, bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    if not starts.all():
        idx = np.arange(n)
        first = np.maximum.accumulate(np.where(starts, idx, 0), axis=1)
        ends = np.ones(flat.shape, bool)
        ends[:, :-1] = starts[:, 1:]
        last = np.minimum.accumulate(np.where(ends, idx, n - 1)[:, ::-1], axis=1)[:, ::-1]
        ranks = (first + last) / 2.0 + 1.0
    z = np.empty(flat.shape)
    np.put_along_axis(z, order, _ndtri((ranks - 0.375) / (n + 0.25)), axis=1)
    return z.T.reshape(x.shape)


def _split(x: np.ndarray) -> np.ndarray:
    """Split every chain into halves (dropping the middle draw of an odd count)."""
    d = x.shape[1] // 2
    return np.concatenate([x[:, :d], x[:, x.shape[1] - d :]], axis=0)


def _rhat_plain(z: np.ndarray) -> np.ndarray:
    """Gelman-Rubin R-hat of ``(chain, draw, components)`` (no splitting)."""
    n = z.shape[1]
    between = n * np.var(z.mean(axis=1), axis=0, ddof=1)
    within = np.var(z, axis=1, ddof=1).mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt((between / within + n - 1) / n)


def _ess_plain(z: np.ndarray) -> np.ndarray:
    """ESS of ``(chain, draw, components)`` by Geyer's initial positive and initial
    monotone sequences, as Stan and ArviZ compute it (Vehtari et al. 2021, eq. 10).

    ArviZ walks the autocorrelations one pair at a time; here every lag is computed at once
    and the walk is replaced by its closed form: the sum runs over the pairs
    ``P_k = rho_2k + rho_2k+1`` before the first non-positive one (at most
    ``(draws - 3) // 2`` of them), each pair capped by the smallest earlier pair, plus the
    even autocorrelation where the walk stopped; the autocorrelation time is bounded below
    by ``1 / log10(chains * draws)``, so the ESS is positive and at most
    ``chains * draws * log10(chains * draws)``."""
    m, n = z.shape[:2]
    total = m * n
    comps = z.shape[2]
    constant = (z.max(axis=(0, 1)) - z.min(axis=(0, 1))) < np.finfo(float).resolution
    centred = z - z.mean(axis=1, keepdims=True)
    size = _next_fast_len(2 * n, real=True)
    spec = np.fft.rfft(centred, n=size, axis=1)
    acov = np.fft.irfft(spec * np.conjugate(spec), n=size, axis=1)[:, :n] / n
    mean_var = acov[:, 0].mean(axis=0) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if m > 1:
        var_plus = var_plus + np.var(z.mean(axis=1), axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = 1.0 - (mean_var - acov.mean(axis=0)) / var_plus  # (lag, components)
    rho[0] = 1.0
    k_max = max((n - 3) // 2, 0)
    pairs = rho[0 : 2 * k_max + 1 : 2] + rho[1 : 2 * k_max + 2 : 2]  # P_0 .. P_kmax
    cols = np.arange(comps)
    # the walk's last pair L: the first k >= 1 with P_k <= 0, else k_max; none if P_0 <= 0
    nonpos = pairs[1:] <= 0
    if k_max == 0:
        stop = np.zeros(comps, dtype=int)
    else:
        stop = np.where(nonpos.any(axis=0), np.argmax(nonpos, axis=0) + 1, k_max)
    stop = np.where(pairs[0] > 0, stop, 0)
    capped = np.minimum.accumulate(pairs, axis=0)
    summed = np.where(np.arange(k_max + 1)[:, None] < stop, capped, 0.0).sum(axis=0)
    even = rho[np.minimum(2 * stop, n - 1), cols]
    odd = rho[np.minimum(2 * stop + 1, n - 1), cols]
    last = np.where(stop == 0, 1.0, np.where((even + odd >= 0) | (even > 0), even, 0.0))
    tau = np.maximum(-1.0 + 2.0 * summed + last, 1.0 / np.log10(total))
    ess = total / tau
    ess = np.where(np.isnan(rho).any(axis=0), np.nan, ess)
    return np.where(constant, float(total), ess)


# components per block when many parameters are diagnosed at once: the blocks run on
# threads (numpy's sort and the FFTs release the GIL), so every core works on them
_BLOCK = 512


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, where the OS has one):
    the thread count of the blocked convergence checks and of full NUTS's chains."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _rhat_ess(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank-normalised split R-hat (max of bulk and tail) and bulk ESS of
    ``(chain, draw, ...)`` draws, per component (the trailing shape).

    The one implementation behind :func:`rhat`, :func:`ess_bulk` and :func:`check_fit`; it
    follows ArviZ (``az.rhat(method="rank")``, ``az.ess(method="bulk")``) step by step and
    agrees with it to rounding (relative 1e-8 in the tests; the FFT sizes are ArviZ's).
    Components with a NaN draw get NaN (as in ArviZ); fewer than 4 draws give NaN; a single
    chain gives R-hat NaN (ArviZ's rule: two chains at least) and a bulk ESS."""
    x = np.asarray(x, dtype=float)
    tail = x.shape[2:]
    if x.ndim < 2 or x.shape[1] < 4:
        nan = np.full(tail, np.nan)
        return nan, nan.copy()
    x = x.reshape(*x.shape[:2], -1)
    if x.shape[2] > _BLOCK and usable_cores() > 1:
        blocks = [x[..., i : i + _BLOCK] for i in range(0, x.shape[2], _BLOCK)]
        with ThreadPoolExecutor(max_workers=usable_cores()) as pool:
            parts = list(pool.map(_rhat_ess_block, blocks))
        r, e = (np.concatenate(p) for p in zip(*parts, strict=True))
    else:
        r, e = _rhat_ess_block(x)
    return r.reshape(tail), e.reshape(tail)


def _rhat_ess_block(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float).reshape(*x.shape[:2], -1)
    has_nan = np.isnan(x).any(axis=(0, 1))
    x = np.where(has_nan, 0.0, x)  # NaN components are masked out below
    split = _split(x)
    z = _rank_normalize(split)
    median = np.median(split.reshape(-1, split.shape[2]), axis=0)
    folded = _rank_normalize(np.abs(split - median))
    with np.errstate(invalid="ignore"):
        rhat_ = np.fmax(_rhat_plain(z), _rhat_plain(folded))
    if x.shape[0] < 2:
        rhat_ = np.full(rhat_.shape, np.nan)
    ess = _ess_plain(z)
    return np.where(has_nan, np.nan, rhat_), np.where(has_nan, np.nan, ess)


def rhat(x: np.ndarray) -> np.ndarray:
    """Rank-normalised split R-hat of draws ``(chain, draw, ...)`` (max of bulk and tail;
    Vehtari et al. 2021), per component; equal to ``arviz.rhat(method="rank")`` to
    rounding. NaN with one chain, fewer than 4 draws, a NaN draw, or a component that is
    constant in every chain (no variance to compare).

    >>> x = np.random.default_rng(0).normal(size=(4, 100))
    >>> bool(rhat(x) < 1.05)
    True
    """
    return _rhat_ess(x)[0]


def ess_bulk(x: np.ndarray) -> np.ndarray:
    """Bulk effective sample size of draws ``(chain, draw, ...)``, per component; equal to
    ``arviz.ess(method="bulk")`` to rounding. Always positive (at most
    ``n * log10(n)`` for ``n`` draws in all); NaN with fewer than 4 draws or a NaN draw.

    >>> x = np.random.default_rng(0).normal(size=(4, 100))
    >>> 200 < float(ess_bulk(x)) < 600
    True
    """
    return _rhat_ess(x)[1]


def e_bfmi(energy: np.ndarray) -> np.ndarray:
    """Energy Bayesian fraction of missing information per chain (Betancourt 2016) from the
    Hamiltonian energy ``(chain, draw)``; below 0.3 the momentum resampling explores the
    energy poorly (typically a funnel)."""
    e = np.asarray(energy, float)
    num = np.sum(np.diff(e, axis=1) ** 2, axis=1)
    den = np.sum((e - e.mean(axis=1, keepdims=True)) ** 2, axis=1)
    return num / np.where(den > 0, den, np.nan)


def _task_axis(name: str, shape: tuple, dims, coords) -> tuple[int, list] | None:
    """``(axis in the trailing shape, task labels)`` of site ``name``, if it has a task dim."""
    site_dims = list((dims or {}).get(name) or [])
    if "task" not in site_dims or "task" not in (coords or {}):
        return None
    axis = site_dims.index("task")
    labels = list(coords["task"])
    if axis >= len(shape) or shape[axis] != len(labels):
        return None
    return axis, labels


def _shown(items: list, limit: int = 8) -> str:
    text = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def nonfinite_draws(
    samples: dict, dims: dict | None = None, coords: dict | None = None
) -> dict[str, dict]:
    """The sites of ``samples`` (``(chain, draw, ...)`` arrays) holding NaN or infinite
    draws: ``{site: {"count": draws, "chains": [chain indices], "tasks": [task labels]}}``
    (``tasks`` only for a site with a ``task`` dim in ``dims`` and labels in ``coords``).

    >>> x = np.zeros((2, 5, 3)); x[1, 2, 0] = np.nan
    >>> nonfinite_draws({"theta": x}, {"theta": ["task"]}, {"task": ["a", "b", "c"]})
    {'theta': {'count': 1, 'chains': [1], 'tasks': ['a']}}
    """
    out = {}
    for name, x in samples.items():
        x = np.asarray(x)
        if x.ndim < 2 or not np.issubdtype(x.dtype, np.inexact):
            continue
        bad = ~np.isfinite(x)
        if not bad.any():
            continue
        entry = {
            "count": int(bad.sum()),
            "chains": [int(c) for c in np.flatnonzero(bad.reshape(x.shape[0], -1).any(axis=1))],
        }
        where = _task_axis(name, x.shape[2:], dims, coords)
        if where is not None:
            axis, labels = where
            per_task = np.moveaxis(bad, 2 + axis, 0).reshape(len(labels), -1).any(axis=1)
            entry["tasks"] = [labels[i] for i in np.flatnonzero(per_task)]
        out[name] = entry
    return out


def describe_nonfinite(report: dict[str, dict]) -> str:
    """One problem line for :func:`nonfinite_draws`'s report, naming sites, tasks, chains."""
    parts = []
    for name, entry in report.items():
        tasks = f" (task(s) {_shown(entry['tasks'])})" if entry.get("tasks") else ""
        parts.append(
            f"{name}{tasks}: {entry['count']} draw(s) in chain(s) {_shown(entry['chains'])}"
        )
    return "non-finite (NaN or infinite) draws in " + "; ".join(parts)


def _frozen_chains(flat: np.ndarray) -> list[int]:
    """Chains of ``(chain, draw, components)`` finite draws in which some component never
    changes while it does change elsewhere (a chain stuck at one value, typically its
    initial value). Components constant in every draw of every chain at one value (a fixed
    entry, such as a correlation diagonal) are structure, not a frozen chain."""
    fixed = np.ptp(flat.reshape(-1, flat.shape[-1]), axis=0) == 0
    still = np.ptp(flat, axis=1) == 0  # (chain, components)
    return [int(c) for c in np.flatnonzero((still & ~fixed).any(axis=1))]


def check_fit(
    samples: dict,
    num_divergences: int | None,
    rhat_max: float = 1.01,
    ess_per_chain_min: float = 100.0,
    warn: bool = True,
    energy: np.ndarray | None = None,
    advice: str | None = None,
    dims: dict | None = None,
    coords: dict | None = None,
) -> dict:
    """Compute per-parameter R-hat / bulk ESS (and E-BFMI from ``energy``), and warn once
    if anything fails; ``advice`` (what to change, e.g. which tasks' parameterisation to
    flip) ends the warning when divergences or a low E-BFMI point at a funnel.

    Broken chains are problems too, never dropped: NaN or infinite draws (the site, its
    tasks when ``dims``/``coords`` name a ``task`` dim, and the chains), frozen chains (a
    component that never moves in a chain while it moves elsewhere, e.g. a sampler stuck
    at its initial values) and an ESS that cannot be computed. R-hat and ESS are taken over
    the finite components; the chains concerned are listed in ``bad_chains``.

    Returns ``{"divergences", "rhat": {name: max}, "ess_bulk": {name: min}, "e_bfmi",
    "problems": [...], "bad_chains": [...]}``, with ``"nonfinite"`` (as
    :func:`nonfinite_draws`) and ``"frozen"`` (``{name: [chains]}``) when there are any.

    >>> x = np.random.default_rng(0).normal(size=(2, 200))
    >>> x[1] = 0.5  # chain 1 never moves
    >>> check_fit({"mu": x}, 0, warn=False)["bad_chains"]
    [1]
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
    nonfinite = nonfinite_draws(samples, dims, coords)
    bad_rhat, bad_ess, no_ess, frozen = [], [], [], {}
    for name, x in samples.items():
        x = np.asarray(x)
        if x.ndim < 2 or x.shape[1] < 4:
            continue
        flat = x.reshape(x.shape[0], x.shape[1], -1).astype(float)
        finite = np.isfinite(flat).all(axis=(0, 1))
        flat = flat[..., finite]
        if flat.shape[-1] == 0:
            continue
        stuck = _frozen_chains(flat)
        if stuck:
            frozen[name] = stuck
        # components that never vary (a fixed correlation diagonal) carry no information
        varying = np.ptp(flat.reshape(-1, flat.shape[-1]), axis=0) > 0
        if not varying.any():
            continue
        flat = flat[..., varying]
        r_all, e_all = _rhat_ess(flat)
        if np.isnan(e_all).any() or np.any(e_all <= 0):
            no_ess.append(name)
        if x.shape[0] > 1 and np.isfinite(r_all).any():
            r = float(np.nanmax(np.where(np.isnan(r_all), -np.inf, r_all)))
            out["rhat"][name] = r
            if r > rhat_max:
                bad_rhat.append(f"{name} ({r:.3f})")
        if np.isfinite(e_all).any():
            e = float(np.nanmin(e_all))
            out["ess_bulk"][name] = e
            if e < ess_per_chain_min * x.shape[0]:
                bad_ess.append(f"{name} ({e:.0f})")
    if nonfinite:
        out["nonfinite"] = nonfinite
        out["problems"].append(describe_nonfinite(nonfinite))
    if frozen:
        out["frozen"] = frozen
        out["problems"].append(
            "frozen chain(s) (a parameter never moves, e.g. stuck at its initial value): "
            + "; ".join(f"{name} in chain(s) {_shown(c)}" for name, c in frozen.items())
        )
    if no_ess:
        out["problems"].append("bulk ESS could not be computed for " + ", ".join(no_ess))
    out["bad_chains"] = sorted(
        {c for entry in nonfinite.values() for c in entry["chains"]}
        | {c for chains in frozen.values() for c in chains}
    )
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
