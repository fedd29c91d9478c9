"""Quantile recalibration of predictive distributions on held-out tasks (Kuleshov, Fenner
& Ermon, 2018, "Accurate uncertainties for deep learning using calibrated regression").

A predictive CDF ``F`` is calibrated when its probability integral transform
``u = F(y)`` is uniform. On validation tasks (fresh ones, never the test tasks) the PIT
values of the observed points estimate the map ``R(p) = P(u <= p)``; the recalibrated
predictive is ``R(F(y))``, and its central ``level`` interval is

    [F^{-1}(R^{-1}((1 - level) / 2)),  F^{-1}(R^{-1}((1 + level) / 2))]

where ``R^{-1}`` is the empirical quantile function of the validation PIT values. The
model's predictive keeps its location and shape; only which of its quantiles bound an
interval changes. Coverage on new tasks from the same family is then nominal up to the
validation sample's error (points within a task are correlated, so count tasks, not
points, when judging that error).

>>> import numpy as np, bayesmeta as bm
>>> from scipy import stats
>>> rng = np.random.default_rng(0)
>>> y_val = 2.0 * rng.normal(size=4000)  # the model says N(0, 1); the truth is N(0, 2^2)
>>> recal = bm.meta.recalibrate(stats.norm.cdf(y_val))
>>> lo, hi = recal.interval(0.5)  # which predictive quantiles bound a 50% interval
>>> y_test = 2.0 * rng.normal(size=4000)
>>> cover = np.mean((y_test >= stats.norm.ppf(lo)) & (y_test <= stats.norm.ppf(hi)))
>>> bool(abs(cover - 0.5) < 0.03), bool(stats.norm.ppf(hi) > 1.2)  # 2 x 0.674 = 1.35
(True, True)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["Recalibration", "recalibrate"]


class Recalibration(NamedTuple):
    """The empirical PIT distribution of validation points.

    pit  # shape=(n,): sorted PIT values F(y) in [0, 1] of the validation points

    ``interval(level) -> (lo, hi)``: predictive probabilities whose quantiles bound the
    recalibrated central ``level`` interval. ``cdf(u)``: ``R(u)``, the recalibrated
    probability of a PIT value ``u``.
    """

    pit: np.ndarray

    def cdf(self, u: Any) -> np.ndarray:
        """``R(u)``: the fraction of validation PIT values at or below ``u``."""
        return np.searchsorted(self.pit, np.asarray(u), side="right") / self.pit.size

    def interval(self, level: float) -> tuple[float, float]:
        """``(R^{-1}((1 - level) / 2), R^{-1}((1 + level) / 2))`` (empirical quantiles)."""
        if not 0.0 < float(level) < 1.0:
            raise ValueError(f"level: expected a probability in (0, 1), got {level!r}")
        lo, hi = np.quantile(self.pit, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
        return float(lo), float(hi)


def recalibrate(pit: Any) -> Recalibration:
    """Fit a :class:`Recalibration` to the PIT values ``F(y)`` of validation points (any
    shape; flattened). ValueError unless they are finite and in ``[0, 1]``, at least 10.

    >>> import numpy as np, bayesmeta as bm
    >>> lo, hi = bm.meta.recalibrate(np.linspace(0, 1, 101)).interval(0.9)
    >>> round(lo, 6), round(hi, 6)  # uniform PIT values: a calibrated model, unchanged
    (0.05, 0.95)
    """
    u = np.asarray(pit, dtype=np.float64).ravel()
    if u.size < 10:
        raise ValueError(f"pit: need at least 10 validation PIT values, got {u.size}")
    bad = ~np.isfinite(u) | (u < 0.0) | (u > 1.0)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"pit: value {u[i]!r} at position {i} is not a probability in [0, 1]")
    return Recalibration(np.sort(u))
