"""``NormalMixture``: an equally weighted mixture of normals (numpy, float64), the exact
marginal of a task's parameter when its conditional is normal given hyperparameters that
are drawn or integrated on a grid."""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from bayesmeta._special import logsumexp as _logsumexp
from bayesmeta._special import ndtr as _ndtr
from bayesmeta._special import ndtri as _ndtri

__all__ = ["NormalMixture"]

_LOG_2PI = math.log(2.0 * math.pi)


def _numpy_rng(seed: Any) -> np.random.Generator:
    """A numpy Generator from an int seed or a JAX PRNG key (deterministic in both)."""
    if isinstance(seed, int | np.integer):
        return np.random.default_rng(int(seed))
    try:
        import jax

        data = (
            np.asarray(jax.random.key_data(seed))
            if jnp.issubdtype(jnp.asarray(seed).dtype, jax.dtypes.prng_key)
            else np.asarray(seed)
        )
    except (TypeError, AttributeError):
        data = np.asarray(seed)
    return np.random.default_rng([int(v) for v in np.ravel(data).astype(np.uint64)])


class NormalMixture:
    """A finite mixture of normals, ``sum_j w_j N(m_j, s_j**2)``, batched.

    ``weights``, ``means``, ``scales`` broadcast to a common shape ``(*batch_shape, J)``: the
    last axis indexes components; weights are renormalised to sum to one over it. All
    methods are float64 numpy.

    >>> mix = NormalMixture([0.5, 0.5], [-1.0, 1.0], [1.0, 1.0])
    >>> float(mix.mean), round(float(mix.cdf(0.0)), 12)
    (0.0, 0.5)
    """

    def __init__(self, weights: Any, means: Any, scales: Any):
        w, m, s = np.broadcast_arrays(
            np.asarray(weights, float), np.asarray(means, float), np.asarray(scales, float)
        )
        if w.ndim == 0:
            raise ValueError("weights: need a component axis (last axis)")
        if np.any(w < 0) or np.any(s < 0):
            raise ValueError("weights/scales: must be non-negative")
        total = w.sum(axis=-1, keepdims=True)
        if np.any(total <= 0):
            raise ValueError("weights: every mixture needs positive total weight")
        self.weights = w / total
        self.means = m
        self.scales = s

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return self.weights.shape[:-1]

    @property
    def mean(self) -> np.ndarray:
        """Mixture mean, shape ``batch_shape``."""
        return np.sum(self.weights * self.means, axis=-1)

    @property
    def variance(self) -> np.ndarray:
        """Mixture variance (law of total variance), shape ``batch_shape``."""
        mu = self.mean[..., None]
        return np.sum(self.weights * (self.scales**2 + (self.means - mu) ** 2), axis=-1)

    @property
    def stddev(self) -> np.ndarray:
        return np.sqrt(self.variance)

    def _z(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=float)[..., None]
        return (x - self.means) / np.maximum(self.scales, 1e-300)

    def log_prob(self, x: Any) -> np.ndarray:
        """Log density at ``x`` (broadcast against ``batch_shape``)."""
        z = self._z(x)
        s = np.maximum(self.scales, 1e-300)
        with np.errstate(divide="ignore", over="ignore"):
            lw = np.log(self.weights)
            return _logsumexp(lw - 0.5 * z * z - np.log(s) - 0.5 * _LOG_2PI, axis=-1)

    def cdf(self, x: Any) -> np.ndarray:
        """Cumulative distribution at ``x`` (broadcast against ``batch_shape``)."""
        return np.sum(self.weights * _ndtr(self._z(x)), axis=-1)

    def quantile(self, q: Any, tol: float = 1e-13, max_iter: int = 200) -> np.ndarray:
        """Inverse CDF at probability ``q`` in (0, 1) (broadcast against ``batch_shape``).

        Safeguarded Newton inside the bracket ``[min_j Q_j(q), max_j Q_j(q)]`` of component
        quantiles (the mixture quantile always lies in it).
        """
        q = np.asarray(q, dtype=float)
        if np.any((q <= 0) | (q >= 1)):
            raise ValueError("q: probabilities must lie strictly between 0 and 1")
        shape = np.broadcast_shapes(q.shape, self.batch_shape)
        if shape == ():
            return self.quantile(q.reshape(1), tol, max_iter)[0]
        qq = np.broadcast_to(q, shape)
        zq = _ndtri(qq)[..., None]
        comp = self.means + self.scales * zq
        live = self.weights > 0
        lo = np.min(np.where(live, comp, np.inf), axis=-1)
        hi = np.max(np.where(live, comp, -np.inf), axis=-1)
        x = np.clip(self.mean + self.stddev * zq[..., 0], lo, hi)
        todo = hi - lo > tol * np.maximum(np.abs(lo) + np.abs(hi), 1e-300)
        x = np.where(todo, x, 0.5 * (lo + hi))
        for _ in range(max_iter):
            if not todo.any():
                break
            idx = np.nonzero(todo)
            sub = self._take(shape, idx)
            xs, qs, los, his = x[idx], qq[idx], lo[idx], hi[idx]
            f = sub.cdf(xs) - qs
            los = np.where(f < 0, xs, los)
            his = np.where(f >= 0, xs, his)
            dens = np.exp(sub.log_prob(xs))
            with np.errstate(divide="ignore", invalid="ignore"):
                newton = xs - f / dens
            bad = ~np.isfinite(newton) | (newton < los) | (newton > his)
            hit = np.abs(f) <= 4e-16 * np.minimum(qs, 1 - qs)  # already at the root
            x_new = np.where(hit, xs, np.where(bad, 0.5 * (los + his), newton))
            step = np.abs(x_new - xs)
            x[idx], lo[idx], hi[idx] = x_new, los, his
            small = tol * np.maximum(np.abs(x_new), 1e-300)
            todo[idx] = ~(hit | (~bad & (step <= small)) | (his - los <= small))
        return x

    def _take(self, shape: tuple, idx: tuple) -> NormalMixture:
        """The sub-mixtures at positions ``idx`` (index arrays) of the batch broadcast to
        ``shape``."""
        w = np.broadcast_to(self.weights, shape + self.weights.shape[-1:])
        m = np.broadcast_to(self.means, w.shape)
        s = np.broadcast_to(self.scales, w.shape)
        out = NormalMixture.__new__(NormalMixture)
        out.weights, out.means, out.scales = w[idx], m[idx], s[idx]
        return out

    def interval(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Central interval ``(quantile((1-level)/2), quantile((1+level)/2))``."""
        a = (1.0 - float(level)) / 2.0
        return self.quantile(a), self.quantile(1.0 - a)

    def sample(self, seed: Any, num: int) -> np.ndarray:
        """``num`` i.i.d. draws, shape ``(num, *batch_shape)``; ``seed`` an int or a JAX key."""
        rng = _numpy_rng(seed)
        cw = np.cumsum(self.weights, axis=-1)
        u = rng.uniform(size=(int(num), *self.batch_shape, 1))
        idx = np.minimum(np.sum(u > cw, axis=-1), self.weights.shape[-1] - 1)
        m = np.take_along_axis(
            np.broadcast_to(self.means, (int(num), *self.means.shape)), idx[..., None], axis=-1
        )[..., 0]
        s = np.take_along_axis(
            np.broadcast_to(self.scales, (int(num), *self.scales.shape)), idx[..., None], axis=-1
        )[..., 0]
        return m + s * rng.standard_normal(m.shape)

    def __repr__(self) -> str:
        return (
            f"NormalMixture(batch_shape={self.batch_shape}, "
            f"num_components={self.weights.shape[-1]})"
        )
