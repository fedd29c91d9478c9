"""Adaptive Gauss-Kronrod quadrature on panels of a mapped interval (numpy, float64): the
one-dimensional integrals behind the exact normal-normal posterior."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Gauss-Kronrod 7-15 on [-1, 1] (QUADPACK's qk15 abscissae and weights); the 7-point Gauss
# weights come from numpy's Gauss-Legendre rule. Exactness of the Kronrod rule up to degree 22
# is checked in the tests.
_XK = np.array(
    [
        0.991455371120812639206854697526329,
        0.949107912342758524526189684047851,
        0.864864423359769072789712788640926,
        0.741531185599394439863864773280788,
        0.586087235467691130294144845693013,
        0.405845151377397166906606412076961,
        0.207784955007898467600689403773245,
        0.0,
    ]
)
_WK = np.array(
    [
        0.022935322010529224963732008058970,
        0.063092092629978553290700663189204,
        0.104790010322250183839876322541518,
        0.140653259715525918745189590510238,
        0.169004726639267902826583426598550,
        0.190350578064785409913256402421014,
        0.204432940075298892414161999234649,
        0.209482141084727828012999174891714,
    ]
)
_KRONROD_X = np.concatenate([-_XK[:-1], [0.0], _XK[:-1][::-1]])
_KRONROD_W = np.concatenate([_WK[:-1], [_WK[-1]], _WK[:-1][::-1]])
_GAUSS_W = np.zeros(15)
_GAUSS_W[1::2] = np.polynomial.legendre.leggauss(7)[1]


@dataclass(frozen=True)
class _Map:
    """``tau = lower + c u / (1 - u)`` (unbounded) or ``lower + (upper - lower) u``."""

    lower: float
    upper: float
    scale: float

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.upper)

    def tau(self, u: np.ndarray) -> np.ndarray:
        if self.bounded:
            return self.lower + (self.upper - self.lower) * u
        return self.lower + self.scale * u / (1.0 - u)

    def jac(self, u: np.ndarray) -> np.ndarray:
        if self.bounded:
            return np.full(np.shape(u), self.upper - self.lower)
        return self.scale / (1.0 - u) ** 2

    def u(self, tau: np.ndarray) -> np.ndarray:
        tau = np.asarray(tau, dtype=float)
        if self.bounded:
            return np.clip((tau - self.lower) / (self.upper - self.lower), 0.0, 1.0)
        d = np.maximum(tau - self.lower, 0.0)
        with np.errstate(invalid="ignore"):
            out = d / (d + self.scale)
        return np.where(np.isinf(d), 1.0, out)


# The rounding floor. ``log p(tau, y)`` is a sum over every task, so its float64 rounding
# grows with the number of tasks (about 1e-11 relative at 300,000 tasks); below that level
# the |K15 - G7| estimates are rounding noise, and bisecting further doubles the panels
# without lowering the error. As QUADPACK's roundoff detection does, the rule stops when
# the worst error ratio (summed error over ``rtol`` times the absolute integral, the worst
# component) has failed to halve in ``_STALL_ROUNDS`` consecutive rounds while within
# ``_FLOOR_LIMIT`` of the target: it is then accepted as converged at the floor, and the
# relative error reached (the ratio times ``rtol``) is reported. A rule still further from
# its target keeps refining, up to ``max_panels``.
_STALL_ROUNDS = 3
_FLOOR_LIMIT = 1e3


def _stalled(history: list[float]) -> bool:
    """Whether the worst error ratios of the last rounds (``history``, one per round)
    show the rounding floor: ``_STALL_ROUNDS`` rounds in a row without halving, all
    within ``_FLOOR_LIMIT`` of the target."""
    if len(history) <= _STALL_ROUNDS:
        return False
    last = history[-_STALL_ROUNDS - 1 :]
    return max(last) <= _FLOOR_LIMIT and all(
        new > 0.5 * old for old, new in zip(last[:-1], last[1:], strict=True)
    )


def _worst(total_err, tol) -> float:
    return max(float(np.max(e / t)) for e, t in zip(total_err, tol, strict=True))


def _panel_nodes(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    half = 0.5 * (b - a)
    mid = 0.5 * (a + b)
    return mid[:, None] + half[:, None] * _KRONROD_X, half


def _panel_integrals(fn, a, b, width):
    """Kronrod integral, error estimate and Kronrod integral of ``|f|`` per panel.

    ``width`` is the number of integrand components per node; panels are processed in chunks
    so a temporary never holds much more than ``4e6`` doubles."""
    nodes, half = _panel_nodes(a, b)
    chunk = max(1, int(4_000_000 // (15 * max(1, width))))
    kron, err, absk = [], [], []
    for start in range(0, len(a), chunk):
        sl = slice(start, start + chunk)
        vals = fn(nodes[sl].reshape(-1))  # (p*15, *M)
        vals = vals.reshape(-1, 15, *vals.shape[1:])
        h = half[sl].reshape(-1, *([1] * (vals.ndim - 2)))
        k = h * np.einsum("k,pk...->p...", _KRONROD_W, vals)
        g = h * np.einsum("k,pk...->p...", _GAUSS_W, vals)
        kron.append(k)
        err.append(np.abs(k - g))
        absk.append(h * np.einsum("k,pk...->p...", _KRONROD_W, np.abs(vals)))
    return np.concatenate(kron), np.concatenate(err), np.concatenate(absk)


def _adaptive(fn, edges: np.ndarray, rtol: float, max_panels: int, width: int):
    """Globally adaptive Gauss-Kronrod 7-15 for a vector integrand on [0, 1].

    ``fn(u: (n,)) -> (n, *M)``. A panel's error is ``|K15 - G7|`` (conservative); panels are
    bisected while some component's summed error exceeds ``rtol`` times the integral of its
    absolute value, or until the rounding floor (see ``_stalled``). Returns the final
    (sorted) edges, whether it converged, and the relative error reached (the worst
    component's summed error over its absolute integral).
    """
    a, b = edges[:-1], edges[1:]
    kron, err, absk = _panel_integrals(fn, a, b, width)
    converged = False
    history: list[float] = []
    for _ in range(200):
        total_err = err.sum(axis=0)
        tol = rtol * absk.sum(axis=0) + 1e-300
        history.append(_worst([total_err], [tol]))
        if np.all(total_err <= tol) or _stalled(history):
            converged = True
            break
        num = len(a)
        score = (err / tol).reshape(num, -1).max(axis=1)
        split = score > 0.5 / num
        split[np.argmax(score)] = True
        if num + split.sum() > max_panels:
            break
        mid = 0.5 * (a[split] + b[split])
        na = np.concatenate([a[split], mid])
        nb = np.concatenate([mid, b[split]])
        k2, e2, ab2 = _panel_integrals(fn, na, nb, width)
        keep = ~split
        a = np.concatenate([a[keep], na])
        b = np.concatenate([b[keep], nb])
        kron = np.concatenate([kron[keep], k2])
        err = np.concatenate([err[keep], e2])
        absk = np.concatenate([absk[keep], ab2])
    order = np.argsort(a)
    return np.concatenate([a[order], [b[order][-1]]]), converged, history[-1] * rtol


def _panel_err_abs(vals: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-panel ``|K15 - G7|`` and Kronrod integral of ``|f|`` from ``vals`` ``(p, 15, *M)``
    (the same arithmetic as :func:`_panel_integrals`)."""
    h = half.reshape(-1, *([1] * (vals.ndim - 2)))
    k = h * np.einsum("k,pk...->p...", _KRONROD_W, vals)
    g = h * np.einsum("k,pk...->p...", _GAUSS_W, vals)
    return np.abs(k - g), h * np.einsum("k,pk...->p...", _KRONROD_W, np.abs(vals))


def _adaptive_streamed(fn_blocks, edges: np.ndarray, rtol: float, max_panels: int, chunk: int):
    """:func:`_adaptive` in memory ``O(components + panels)`` instead of their product.

    ``fn_blocks(u: (n,))`` yields the integrand's components in blocks, arrays
    ``(n, *M_b)`` whose union is the components of :func:`_adaptive`'s ``fn``. Nothing per
    panel and component is kept. The first rounds stream over all panels (``chunk`` at a
    time) twice: once for the summed error and absolute integral of every component (added
    panel by panel in the order :func:`_adaptive` sums them), once for each panel's score
    against the tolerances. Then only the panels a round changes are evaluated: the summed
    errors and integrals are updated (minus the split panels, plus their halves), and each
    panel keeps bounds on its score that follow the tolerances from round to round (a
    score against ``tol`` times ``tol / tol_new`` bounds the score against ``tol_new``); a
    panel is evaluated again only when its bounds straddle the splitting threshold. The
    panels it splits are those of :func:`_adaptive` up to rounding in the updated sums
    (relative ``1e-16`` of the first round's errors, against a tolerance ``rtol``); each
    panel costs about one integrand evaluation when it is made and one when it is split,
    plus two full sweeps at the start. It stops at the rounding floor as :func:`_adaptive`
    does, and returns the same three values.
    """
    a, b = edges[:-1], edges[1:]
    converged = False

    def sweep(a, b, tol=None, totals=None, sign=1.0):
        """Scores of the panels against ``tol`` (when given); adds (``sign``) each panel's
        errors and absolute integrals to ``totals`` (when given), panel by panel in order."""
        nodes, half = _panel_nodes(a, b)
        score = np.full(len(a), -np.inf)
        for start in range(0, len(a), chunk):
            sl = slice(start, start + chunk)
            for i, vals in enumerate(fn_blocks(nodes[sl].reshape(-1))):
                vals = vals.reshape(-1, 15, *vals.shape[1:])
                if not vals.any():  # zero errors and integrals (what the arithmetic gives)
                    err = absk = np.zeros((vals.shape[0], *vals.shape[2:]))
                    if tol is not None:
                        score[sl] = np.maximum(score[sl], 0.0)
                else:
                    err, absk = _panel_err_abs(vals, half[sl])
                    if tol is not None:
                        ratio = (err / tol[i]).reshape(len(err), -1).max(axis=1)
                        score[sl] = np.maximum(score[sl], ratio)
                if totals is None:
                    continue
                total_err, total_abs = totals
                first = 0
                if len(total_err) <= i:
                    total_err.append(err[0].copy())
                    total_abs.append(absk[0].copy())
                    first = 1
                for p in range(first, len(err)):  # sequential, as ndarray.sum(axis=0)
                    if err is absk:  # zeros: adding them changes nothing
                        break
                    if sign > 0:
                        total_err[i] += err[p]
                        total_abs[i] += absk[p]
                    else:
                        total_err[i] -= err[p]
                        total_abs[i] -= absk[p]
        return score

    total_err, total_abs = [], []
    sweep(a, b, totals=(total_err, total_abs))
    tol = [rtol * s + 1e-300 for s in total_abs]
    lo = hi = None  # bounds on every panel's score against ``tol``
    margin = 1e-12  # covers the rounding of a score and of the ratios of tolerances
    history: list[float] = []
    for _ in range(200):
        history.append(_worst(total_err, tol))
        if all(np.all(e <= t) for e, t in zip(total_err, tol, strict=True)) or _stalled(history):
            converged = True
            break
        num = len(a)
        threshold = 0.5 / num
        if lo is None:
            lo = sweep(a, b, tol)
            hi = lo.copy()
        else:
            redo = (lo <= threshold) & (hi > threshold)
            if redo.any():
                lo[redo] = hi[redo] = sweep(a[redo], b[redo], tol)
        split = lo > threshold
        if not split.any():  # the panel of largest score, as np.argmax picks it
            redo = (hi >= lo.max()) & (lo < hi)
            if redo.any():
                lo[redo] = hi[redo] = sweep(a[redo], b[redo], tol)
            exact = lo == hi
            split[np.argmax(np.where(exact, lo, -np.inf))] = True
        if num + split.sum() > max_panels:
            break
        mid = 0.5 * (a[split] + b[split])
        keep = ~split
        sweep(a[split], b[split], totals=(total_err, total_abs), sign=-1.0)
        na = np.concatenate([a[split], mid])
        nb = np.concatenate([mid, b[split]])
        new_score = sweep(na, nb, tol, totals=(total_err, total_abs))
        a = np.concatenate([a[keep], na])
        b = np.concatenate([b[keep], nb])
        new_tol = [rtol * s + 1e-300 for s in total_abs]
        ratios = [t / n for t, n in zip(tol, new_tol, strict=True)]
        r_lo = min(float(r.min()) for r in ratios) * (1.0 - margin)
        r_hi = max(float(r.max()) for r in ratios) * (1.0 + margin)
        lo = np.concatenate([lo[keep], new_score]) * r_lo
        hi = np.concatenate([hi[keep], new_score]) * r_hi
        tol = new_tol
    order = np.argsort(a)
    return np.concatenate([a[order], [b[order][-1]]]), converged, history[-1] * rtol
