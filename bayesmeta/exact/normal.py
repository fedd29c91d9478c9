"""Exact posterior of the normal-normal hierarchical model with known noise.

Model (one scalar parameter per task, known standard errors ``s_t``)::

    y_t | theta_t   ~ N(theta_t, s_t**2)                 t = 1..T
    theta_t | mu, tau ~ N(mu, tau**2)
    mu  ~ N(m0, s0**2)  |  flat  |  fixed
    tau ~ p(tau)        (any proper prior, a user log-density, or fixed)

Integrating ``theta_t`` gives ``y_t | mu, tau ~ N(mu, v_t)`` with ``v_t = s_t**2 + tau**2``.
With ``w_t = 1 / v_t`` and a normal prior on ``mu``, ``mu | tau, y`` is normal with
precision ``P = 1/s0**2 + sum w_t`` and mean ``m = (m0/s0**2 + sum w_t y_t) / P`` (drop the
``s0`` terms for a flat prior), and

    log p(y | tau) = -1/2 [ sum log(2 pi v_t) + log s0**2 + log P
                            + sum w_t (y_t - m)**2 + (m - m0)**2 / s0**2 ]

(flat prior: ``-1/2 [sum log(2 pi v_t) - log(2 pi) + log P + sum w_t (y_t - m)**2]``, a
density relative to Lebesgue measure on ``mu``). The posterior of ``tau`` is therefore
one-dimensional, ``p(tau | y) ∝ p(tau) p(y | tau)``; it is integrated by globally adaptive
Gauss-Kronrod (7-15) quadrature on a map of the support of ``tau`` onto ``(0, 1)``
(``tau = c u / (1 - u)`` for an unbounded support, linear for a bounded one), refining until
the normalising constant and the first two posterior moments of ``tau``, ``mu`` and every
``theta_t`` have estimated relative error below ``rtol``. The result is a positive rule
``{(tau_j, w_j)}`` with ``E[f | y] = sum_j w_j E[f | tau_j, y]``, and given ``tau``
everything is Gaussian:

    theta_t | tau, y ~ N(B_t m + (1 - B_t) y_t, (1 - B_t) s_t**2 + B_t**2 / P),
    B_t = s_t**2 / (s_t**2 + tau**2).

So marginal posteriors of ``mu`` and ``theta_t`` and the predictive distributions are
mixtures of normals (:class:`NormalMixture`), the cumulative distribution of ``tau`` is a
piecewise polynomial (exact integral of the degree-14 interpolant on each Kronrod panel), and
exact i.i.d. draws follow by inverse CDF for ``tau`` then ``mu | tau`` then
``theta | mu, tau``.

The JAX functions :func:`log_marginal_normal_normal`, :func:`log_marginal_tau`,
:func:`mu_conditional` and :func:`theta_conditional` are the differentiable pieces that a
collapsed sampler needs (``theta`` or ``(theta, mu)`` integrated out).

>>> import numpy as np, bayesmeta as bm, numpyro.distributions as dist
>>> y = np.array([28., 8, -3, 7, -1, 1, 18, 12]); se = np.array([15., 10, 16, 11, 9, 11, 10, 18])
>>> res = bm.exact.solve_normal_normal(y, se, loc_prior=dist.Normal(0, 5),
...                                    scale_prior=dist.HalfCauchy(5))
>>> round(res.mu_mean, 3), round(res.tau_mean, 3)
(4.397, 3.598)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import jax.numpy as jnp
import numpy as np
from numpy.polynomial import legendre as _leg

from bayesmeta import _streams
from bayesmeta._checks import check_estimates as _check_estimates

# Special functions in float64 numpy (the library keeps JAX's dtype choice alone, and the
# quadrature needs double precision whatever JAX is configured to do).
from bayesmeta._special import logsumexp as _logsumexp  # noqa: F401  (old private name)
from bayesmeta._special import ndtr as _ndtr  # noqa: F401  (old private name)
from bayesmeta._special import ndtri as _ndtri  # noqa: F401  (old private name)
from bayesmeta.exact.mixture import NormalMixture, _numpy_rng
from bayesmeta.exact.quadrature import (
    _GAUSS_W,  # noqa: F401  (read by the tests through this module)
    _KRONROD_W,
    _KRONROD_X,
    _adaptive,
    _adaptive_streamed,
    _Map,
    _panel_integrals,  # noqa: F401
    _panel_nodes,
)

__all__ = [
    "NormalMixture",
    "NormalNormalResult",
    "solve_normal_normal",
    "log_marginal_normal_normal",
    "log_marginal_tau",
    "mu_conditional",
    "theta_conditional",
]

_LOG_2PI = math.log(2.0 * math.pi)
_DEFAULT_QUANTILES = (0.025, 0.05, 0.25, 0.5, 0.75, 0.95, 0.975)


# --------------------------------------------------------------------------- JAX pieces
def log_marginal_normal_normal(y: Any, se: Any, mu: Any, tau: Any) -> jnp.ndarray:
    """``sum_t log N(y_t | mu, sqrt(se_t**2 + tau**2))``: ``theta`` integrated out.

    Shapes: ``y``, ``se`` ``(..., T)``; ``mu``, ``tau`` scalars or arrays of the leading
    batch shape ``(...)`` (e.g. a vector of draws). Returns shape ``(...)``. Differentiable
    in every argument (JAX).

    >>> round(float(log_marginal_normal_normal(jnp.array([0.0]), jnp.array([1.0]), 0.0, 0.0)), 6)
    -0.918939
    """
    y = jnp.asarray(y)
    se = jnp.asarray(se)
    mu = jnp.asarray(mu)[..., None]
    tau = jnp.asarray(tau)[..., None]
    var = se**2 + tau**2
    return jnp.sum(-0.5 * (jnp.log(2.0 * jnp.pi * var) + (y - mu) ** 2 / var), axis=-1)


def _mu_pieces(y, se, tau, loc_mean, loc_sd):
    var = se**2 + tau**2
    w = 1.0 / var
    prec = jnp.sum(w, axis=-1)
    num = jnp.sum(w * y, axis=-1)
    if loc_sd is not None:
        prec = prec + 1.0 / loc_sd**2
        num = num + loc_mean / loc_sd**2
    mean = num / prec
    return var, w, prec, mean


def log_marginal_tau(
    y: Any, se: Any, tau: Any, loc_mean: Any = None, loc_sd: Any = None
) -> jnp.ndarray:
    """``log p(y | tau)`` with both ``theta`` and ``mu`` integrated out (JAX).

    ``mu ~ N(loc_mean, loc_sd**2)``, or flat when ``loc_sd`` is None (then the value is a
    density relative to Lebesgue measure on ``mu``). Shapes: ``y``, ``se`` ``(T,)``; ``tau``
    scalar or ``(...)``; returns ``(...)``. See the module docstring for the formula.

    >>> import jax.numpy as jnp, numpy as np, bayesmeta as bm
    >>> from scipy import stats
    >>> y, se = jnp.array([0.5, -1.0]), jnp.array([1.0, 2.0])
    >>> lp = bm.exact.log_marginal_tau(y, se, 0.5, loc_mean=0.0, loc_sd=1.0)
    >>> cov = np.diag([1.25, 4.25]) + 1.0  # diag(se^2 + tau^2) + loc_sd^2: mu integrated out
    >>> bool(np.isclose(float(lp), stats.multivariate_normal([0, 0], cov).logpdf(y), rtol=1e-5))
    True
    """
    y = jnp.asarray(y)
    se = jnp.asarray(se)
    tau = jnp.asarray(tau)[..., None]
    var, w, prec, mean = _mu_pieces(y, se, tau, loc_mean, loc_sd)
    quad = jnp.sum(w * (y - mean[..., None]) ** 2, axis=-1)
    out = -0.5 * (jnp.sum(jnp.log(2.0 * jnp.pi * var), axis=-1) + jnp.log(prec) + quad)
    if loc_sd is None:
        return out + 0.5 * jnp.log(2.0 * jnp.pi)
    return out - 0.5 * ((mean - loc_mean) ** 2 / loc_sd**2 + 2.0 * jnp.log(loc_sd))


def mu_conditional(
    y: Any, se: Any, tau: Any, loc_mean: Any = None, loc_sd: Any = None
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mean and sd of ``mu | tau, y`` (JAX): precision ``1/loc_sd**2 + sum 1/(se**2+tau**2)``.

    Shapes as :func:`log_marginal_tau`; returns two arrays of shape ``(...)``.

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> m, s = bm.exact.mu_conditional(jnp.array([1.0, 3.0]), jnp.array([1.0, 1.0]), 1.0)
    >>> round(float(m), 4), round(float(s), 4)  # flat prior: precision 2 / (1 + 1) = 1
    (2.0, 1.0)
    """
    y = jnp.asarray(y)
    se = jnp.asarray(se)
    tau = jnp.asarray(tau)[..., None]
    _, _, prec, mean = _mu_pieces(y, se, tau, loc_mean, loc_sd)
    return mean, 1.0 / jnp.sqrt(prec)


def theta_conditional(y: Any, se: Any, mu: Any, tau: Any) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mean and sd of ``theta_t | mu, tau, y_t`` (JAX), the exact per-task posterior.

    ``mean = B mu + (1 - B) y`` and ``sd = se tau / sqrt(se**2 + tau**2)`` with
    ``B = se**2 / (se**2 + tau**2)``. Shapes: ``y``, ``se`` ``(T,)``; ``mu``, ``tau`` scalars
    or ``(...)``; returns two arrays ``(..., T)``. ``tau = 0`` gives ``theta = mu``.

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> m, s = bm.exact.theta_conditional(jnp.array([2.0]), jnp.array([1.0]), 0.0, 1.0)
    >>> round(float(m[0]), 4), round(float(s[0]), 4)  # B = 1/2: halfway to mu; sd 1/sqrt(2)
    (1.0, 0.7071)
    """
    y = jnp.asarray(y)
    se = jnp.asarray(se)
    mu = jnp.asarray(mu)[..., None]
    tau = jnp.asarray(tau)[..., None]
    var = se**2 + tau**2
    shrink = se**2 / var
    return shrink * mu + (1.0 - shrink) * y, se * tau / jnp.sqrt(var)


# --------------------------------------------------------------------------- priors
@dataclass(frozen=True)
class _LocPrior:
    kind: str  # "normal" | "flat" | "fixed"
    mean: float = 0.0
    sd: float = 0.0

    def describe(self) -> str:
        if self.kind == "normal":
            return f"Normal({self.mean:g}, {self.sd:g})"
        if self.kind == "fixed":
            return f"fixed at {self.mean:g}"
        return "flat"


def _loc_prior(prior: Any) -> _LocPrior:
    if prior is None:
        return _LocPrior("normal", 0.0, 5.0)
    if isinstance(prior, str):
        if prior.lower() == "flat":
            return _LocPrior("flat")
        raise ValueError(f"loc_prior: unknown string {prior!r} (use 'flat')")
    if type(prior).__name__ == "Normal" and hasattr(prior, "loc") and hasattr(prior, "scale"):
        loc = np.asarray(prior.loc, dtype=float)
        scale = np.asarray(prior.scale, dtype=float)
        if loc.shape != () or scale.shape != ():
            raise ValueError("loc_prior: the Normal prior on mu must be scalar")
        if not (
            math.isfinite(float(loc)) and math.isfinite(float(scale)) and float(scale) ** 2 > 0
        ):
            raise ValueError(
                f"loc_prior: the Normal prior on mu needs a finite mean and a finite sd whose "
                f"square is positive, got Normal({float(loc)}, {float(scale)})"
            )
        return _LocPrior("normal", float(loc), float(scale))
    if hasattr(prior, "log_prob"):
        raise ValueError(
            f"loc_prior: {type(prior).__name__} is not supported; mu is integrated analytically,"
            " so its prior must be a numpyro Normal, 'flat', or a fixed number"
        )
    try:
        value = float(np.asarray(prior, dtype=float))
    except (TypeError, ValueError):
        raise ValueError(
            f"loc_prior: expected a numpyro Normal, 'flat' or a number, got {type(prior).__name__}"
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"loc_prior: fixed mu must be finite, got {value}")
    return _LocPrior("fixed", value)


def _halfcauchy(scale):
    return lambda t: math.log(2.0 / (math.pi * scale)) - np.log1p((t / scale) ** 2)


def _halfnormal(scale):
    return lambda t: 0.5 * math.log(2.0 / math.pi) - math.log(scale) - 0.5 * (t / scale) ** 2


def _exponential(rate):
    return lambda t: math.log(rate) - rate * t


def _gamma(a, b):
    c = a * math.log(b) - math.lgamma(a)
    return lambda t: c + (a - 1.0) * np.log(t) - b * t


def _inverse_gamma(a, b):
    c = a * math.log(b) - math.lgamma(a)
    return lambda t: c - (a + 1.0) * np.log(t) - b / t


def _lognormal(loc, scale):
    c = -math.log(scale) - 0.5 * _LOG_2PI
    return lambda t: c - np.log(t) - 0.5 * ((np.log(t) - loc) / scale) ** 2


def _half_student_t(df, scale):
    c = (
        math.log(2.0)
        + math.lgamma(0.5 * (df + 1))
        - math.lgamma(0.5 * df)
        - 0.5 * math.log(df * math.pi)
        - math.log(scale)
    )
    return lambda t: c - 0.5 * (df + 1) * np.log1p((t / scale) ** 2 / df)


@dataclass(frozen=True)
class _TauPrior:
    kind: str  # "fixed" | "density"
    value: float = 0.0
    logpdf: Callable[[np.ndarray], np.ndarray] | None = None
    lower: float = 0.0
    upper: float = math.inf
    name: str = ""


def _param(d: Any, name: str) -> float:
    arr = np.asarray(getattr(d, name), dtype=float)
    if arr.shape != ():
        raise ValueError(f"scale_prior: {type(d).__name__}.{name} must be a scalar")
    if not math.isfinite(float(arr)):
        raise ValueError(f"scale_prior: {type(d).__name__}.{name} must be finite, got {float(arr)}")
    return float(arr)


def _tau_prior(prior: Any, tau_range: tuple[float, float] | None) -> _TauPrior:
    if prior is None:
        return _tau_prior(_numpyro_halfcauchy(5.0), tau_range)
    if hasattr(prior, "log_prob") and hasattr(prior, "support"):
        if tuple(getattr(prior, "batch_shape", ())) or tuple(getattr(prior, "event_shape", ())):
            raise ValueError(
                f"scale_prior: {type(prior).__name__} must be a scalar "
                "distribution (no batch or event shape)"
            )
        name = type(prior).__name__
        if getattr(prior.support, "lower_bound", None) is None:
            raise ValueError(
                f"scale_prior: {name} has support {prior.support}; tau is a scale "
                "and needs a prior on [0, inf) or an interval in it"
            )
        lower = float(np.asarray(prior.support.lower_bound))
        upper = float(np.asarray(getattr(prior.support, "upper_bound", math.inf)))
        if lower < 0:
            raise ValueError(f"scale_prior: {name} has support below 0; tau is a scale")
        known = {
            "HalfCauchy": lambda d: _halfcauchy(_param(d, "scale")),
            "HalfNormal": lambda d: _halfnormal(_param(d, "scale")),
            "Exponential": lambda d: _exponential(_param(d, "rate")),
            "Gamma": lambda d: _gamma(_param(d, "concentration"), _param(d, "rate")),
            "InverseGamma": lambda d: _inverse_gamma(_param(d, "concentration"), _param(d, "rate")),
            "LogNormal": lambda d: _lognormal(_param(d, "loc"), _param(d, "scale")),
            "HalfStudentT": lambda d: _half_student_t(_param(d, "df"), _param(d, "scale")),
        }
        if name == "Uniform":
            lower, upper = _param(prior, "low"), _param(prior, "high")
            if lower < 0 or not upper > lower:
                raise ValueError(
                    f"scale_prior: Uniform({lower}, {upper}) must satisfy 0 <= low < high"
                )
            const = -math.log(upper - lower)
            logpdf = lambda t: np.full(np.shape(t), const)  # noqa: E731
        elif name in known:
            logpdf = known[name](prior)
        else:
            # any other numpyro distribution: its own log_prob, evaluated through JAX (float64
            # only when JAX's x64 mode is on), compiled once for fixed-size padded chunks
            logpdf = _chunked_log_prob(prior)
        if tau_range is not None:
            lower, upper = max(lower, float(tau_range[0])), min(upper, float(tau_range[1]))
        return _TauPrior("density", logpdf=logpdf, lower=lower, upper=upper, name=name)
    if callable(prior):
        lower, upper = (0.0, math.inf) if tau_range is None else map(float, tau_range)
        if lower < 0 or not upper > lower:
            raise ValueError(f"tau_range: must satisfy 0 <= low < high, got {tau_range}")

        def logpdf(t, _f=prior):
            return np.asarray(_f(t), dtype=float) * np.ones(np.shape(t))

        return _TauPrior(
            "density",
            logpdf=logpdf,
            lower=lower,
            upper=upper,
            name=getattr(prior, "__name__", "log-density"),
        )
    try:
        value = float(np.asarray(prior, dtype=float))
    except (TypeError, ValueError):
        raise ValueError(
            "scale_prior: expected a numpyro distribution on tau, a callable "
            f"log-density or a fixed number, got {type(prior).__name__}"
        ) from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"scale_prior: a fixed tau must be finite and >= 0, got {value}")
    return _TauPrior("fixed", value=value, name=f"fixed at {value:g}")


def _chunked_log_prob(d: Any, chunk: int = 2048) -> Callable[[np.ndarray], np.ndarray]:
    import jax

    fn = jax.jit(d.log_prob)

    def logpdf(t):
        t = np.asarray(t, dtype=float)
        flat = t.reshape(-1)
        out = np.empty(flat.shape)
        for start in range(0, flat.size, chunk):
            part = flat[start : start + chunk]
            padded = np.concatenate(
                [part, np.full(chunk - part.size, part[0] if part.size else 1.0)]
            )
            out[start : start + part.size] = np.asarray(fn(jnp.asarray(padded)))[: part.size]
        return out.reshape(t.shape)

    return logpdf


def _numpyro_halfcauchy(scale: float):
    import numpyro.distributions as dist

    return dist.HalfCauchy(scale)


# --------------------------------------------------------------------------- conditionals
def _conditionals(
    y: np.ndarray, se: np.ndarray, tau: np.ndarray, loc: _LocPrior
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``log p(y | tau)``, ``E[mu | tau, y]``, ``Var[mu | tau, y]`` in float64 numpy.

    ``y``, ``se``: ``(R, T)``; ``tau``: ``(R, J)`` or ``(J,)``. Returns three ``(R, J)``.
    Chunked over ``J`` to bound memory at about ``4e6`` doubles per temporary.
    """
    num_rep, num_tasks = y.shape
    tau = np.broadcast_to(np.asarray(tau, dtype=float), (num_rep, np.shape(tau)[-1]))
    num_nodes = tau.shape[1]
    chunk = max(1, int(4_000_000 // max(1, num_rep * num_tasks)))
    logm = np.empty((num_rep, num_nodes))
    mhat = np.empty((num_rep, num_nodes))
    vmu = np.empty((num_rep, num_nodes))
    y3 = y[:, None, :]
    s2 = (se**2)[:, None, :]
    for start in range(0, num_nodes, chunk):
        sl = slice(start, start + chunk)
        var = s2 + tau[:, sl, None] ** 2
        w = 1.0 / var
        logdet = np.sum(np.log(var), axis=-1) + num_tasks * _LOG_2PI
        if loc.kind == "fixed":
            r = y3 - loc.mean
            logm[:, sl] = -0.5 * (logdet + np.sum(w * r * r, axis=-1))
            mhat[:, sl] = loc.mean
            vmu[:, sl] = 0.0
            continue
        prec = np.sum(w, axis=-1)
        num = np.sum(w * y3, axis=-1)
        if loc.kind == "normal":
            prec = prec + 1.0 / loc.sd**2
            num = num + loc.mean / loc.sd**2
        m = num / prec
        r = y3 - m[..., None]
        quad = np.sum(w * r * r, axis=-1)
        if loc.kind == "normal":
            extra = (m - loc.mean) ** 2 / loc.sd**2 + 2.0 * math.log(loc.sd)
        else:
            extra = -_LOG_2PI
        logm[:, sl] = -0.5 * (logdet + np.log(prec) + quad + extra)
        mhat[:, sl] = m
        vmu[:, sl] = 1.0 / prec
    return logm, mhat, vmu


def _theta_moments_given_tau(y, se, tau, mhat, vmu):
    """Mean and variance of ``theta_t | tau, y``: ``(R, J, T)`` each."""
    s2 = (se**2)[:, None, :]
    shrink = s2 / (s2 + tau[..., None] ** 2)
    mean = shrink * mhat[..., None] + (1.0 - shrink) * y[:, None, :]
    var = (1.0 - shrink) * s2 + shrink**2 * vmu[..., None]
    return mean, var


@dataclass
class _Rule:
    """A posterior quadrature rule for tau, shared across ``R`` data sets."""

    map: _Map
    edges: np.ndarray  # (P + 1,) panel edges in u
    u: np.ndarray  # (P, 15)
    tau: np.ndarray  # (J,) = (P * 15,)
    weights: np.ndarray  # (R, J) normalised posterior weights
    logd: np.ndarray  # (R, J) log prior + log p(y | tau) at the nodes
    mhat: np.ndarray  # (R, J)
    vmu: np.ndarray  # (R, J)
    log_evidence: np.ndarray  # (R,)
    converged: bool
    density_u: np.ndarray = field(default=None)  # (R, P, 15) normalised density in u
    divergent: np.ndarray | None = field(default=None)  # (R, 5) moments that do not exist
    reached_rtol: float = 0.0  # the relative error the adaptive rule reached (0: no rule)


def _log_post(y, se, loc, prior, mp, u):
    """``log p(tau) + log p(y | tau)`` at ``u`` nodes; ``u`` shape (J,) or (R, J)."""
    tau = mp.tau(u)
    logm, mhat, vmu = _conditionals(y, se, tau, loc)
    with np.errstate(divide="ignore", invalid="ignore"):
        lp = prior.logpdf(tau)
    lp = np.where(np.isnan(lp), -np.inf, lp)
    return lp + logm, mhat, vmu


def _find_offsets(y, se, loc, prior, mp) -> tuple[np.ndarray, list[float]]:
    """Per data set, the maximum log posterior density (an offset against overflow) and
    extra panel edges around narrow interior peaks (zoomed grid search in u)."""
    num_rep = y.shape[0]
    grid = (np.arange(256) + 0.5) / 256
    logd, _, _ = _log_post(y, se, loc, prior, mp, grid)
    jac = np.log(mp.jac(grid))
    best = np.argmax(logd + jac, axis=1)
    center = grid[best]
    offset = np.max(logd, axis=1)
    half = np.full(num_rep, 2.0 / 256)
    for _ in range(5):
        local = np.clip(center[:, None] + half[:, None] * np.linspace(-1, 1, 33), 1e-15, 1 - 1e-15)
        ld, _, _ = _log_post(y, se, loc, prior, mp, local)
        offset = np.maximum(offset, np.max(ld, axis=1))
        val = ld + np.log(mp.jac(local))
        k = np.argmax(val, axis=1)
        center = local[np.arange(num_rep), k]
        half = half / 8.0
    # curvature of the u-density at the mode -> local sd; add edges for narrow interior peaks
    h = np.maximum(half * 4.0, 1e-12)
    pts = np.clip(center[:, None] + h[:, None] * np.array([-1.0, 0.0, 1.0]), 1e-15, 1 - 1e-15)
    ld, _, _ = _log_post(y, se, loc, prior, mp, pts)
    val = ld + np.log(mp.jac(pts))
    curv = (val[:, 0] - 2 * val[:, 1] + val[:, 2]) / h**2
    extra: list[float] = []
    for r in range(num_rep):
        if np.isfinite(curv[r]) and curv[r] < 0:
            sd = 1.0 / math.sqrt(-curv[r])
            if 6 * sd < 1.0 / 64 and 1e-12 < center[r] < 1 - 1e-12:
                extra.extend([center[r] - 6 * sd, center[r], center[r] + 6 * sd])
    return offset, extra


def _initial_edges(extra: Sequence[float]) -> np.ndarray:
    geometric = 2.0 ** -np.arange(6, 46)
    edges = np.concatenate(
        [np.linspace(0.0, 1.0, 33), geometric, 1.0 - geometric, np.asarray(extra, dtype=float)]
    )
    edges = np.unique(np.clip(edges, 0.0, 1.0))
    keep = np.concatenate([[True], np.diff(edges) > 1e-15])
    return edges[keep]


def _integrand(y, se, loc, prior, mp, offset, u, with_theta, keep=None):
    """Components whose integrals drive the adaptivity: ``(n, R, K)`` with
    ``K = 5 (+ 2 T)``: density, tau, tau^2, mu first and second moments (and theta's).
    ``keep`` ``(R, 5)`` zeroes the moments that do not exist (see :func:`_divergent`)."""
    logd, mhat, vmu = _log_post(y, se, loc, prior, mp, u)
    dens = np.exp(logd - offset[:, None]) * mp.jac(u)  # (R, n)
    tau = mp.tau(u)
    tau_b = np.broadcast_to(tau, dens.shape)
    comps = [dens, dens * tau_b, dens * tau_b**2, dens * mhat, dens * (mhat**2 + vmu)]
    out = np.stack(comps, axis=-1)  # (R, n, 5)
    if keep is not None:
        out = np.where(keep[:, None, :], out, 0.0)
    if with_theta:
        tm, tv = _theta_moments_given_tau(y, se, tau_b, mhat, vmu)  # (R, n, T)
        out = np.concatenate([out, dens[..., None] * tm, dens[..., None] * (tm**2 + tv)], axis=-1)
    return np.moveaxis(out, 1, 0)  # (n, R, K)


def _integrand_blocks(y, se, loc, prior, mp, offset, u, with_theta, block, keep=None, post=None):
    """The components of :func:`_integrand` in blocks, ``(n, R, K_b)`` each: first the five
    shared ones, then theta's first and second moments for ``block`` tasks at a time, so
    nothing of size nodes x tasks is built. ``post``: :func:`_log_post` at ``u`` when
    already known. Where the density is zero at every node (far from the posterior's
    mass, where ``exp`` underflows) theta's blocks are zeros, without their arithmetic."""
    logd, mhat, vmu = _log_post(y, se, loc, prior, mp, u) if post is None else post
    dens = np.exp(logd - offset[:, None]) * mp.jac(u)  # (R, n)
    tau = mp.tau(u)
    tau_b = np.broadcast_to(tau, dens.shape)
    comps = [dens, dens * tau_b, dens * tau_b**2, dens * mhat, dens * (mhat**2 + vmu)]
    out = np.stack(comps, axis=-1)
    if keep is not None:
        out = np.where(keep[:, None, :], out, 0.0)
    yield np.moveaxis(out, 1, 0)
    if not with_theta:
        return
    zero = not np.any(dens)
    for start in range(0, y.shape[1], block):
        sl = slice(start, start + block)
        if zero:
            width = len(range(start, min(start + block, y.shape[1])))
            yield np.zeros((len(u), y.shape[0], width))
            yield np.zeros((len(u), y.shape[0], width))
            continue
        tm, tv = _theta_moments_given_tau(y[:, sl], se[:, sl], tau_b, mhat, vmu)
        yield np.moveaxis(dens[..., None] * tm, 1, 0)
        yield np.moveaxis(dens[..., None] * (tm**2 + tv), 1, 0)


# Above this many panel-components the adaptive rule streams over panels and task blocks
# (memory O(tasks + nodes)) instead of holding per-panel errors of every component (memory
# O(tasks x panels)); both split the same panels. A module constant so tests can lower it.
_STREAM_ABOVE = 2**23
_TASK_BLOCK = 2**15


def _divergent(y, se, loc, prior, mp, offset) -> np.ndarray:
    """``(R, 5)``: which of the posterior moments behind :func:`_integrand`'s first five
    components (1, tau, tau^2, mu, mu^2 + Var) do not exist. For ``tau -> inf`` an integrand
    behaves as ``(1 - u)**beta`` in ``u``; it is integrable for ``beta > -1``. ``beta`` is
    read off two points far in the tail (``1 - u = 2**-30, 2**-40``), where the tails of
    every supported prior times ``p(y | tau) ~ tau**-T`` are powers of ``tau`` or lighter.
    A single task under a HalfCauchy prior, for instance, has ``p(tau | y) ~ tau**-3``: no
    variance. Such a moment is left out of the adaptivity (it would refine towards
    ``u = 1`` without end) and reported as infinite."""
    out = np.zeros((y.shape[0], 5), dtype=bool)
    if mp.bounded:
        return out
    u = 1.0 - np.array([2.0**-30, 2.0**-40])
    with np.errstate(all="ignore"):
        vals = np.abs(_integrand(y, se, loc, prior, mp, offset, u, False))  # (2, R, 5)
        beta = np.log(vals[1] / vals[0]) / math.log(2.0**-10)
    tail = (vals[1] > 0) & np.isfinite(beta) & (beta <= -0.95)
    out[:, 1:] = tail[:, 1:]
    return out


def _default_scale(y: np.ndarray, se: np.ndarray) -> float:
    c = max(float(np.median(se)), float(np.std(y))) if y.size else 1.0
    return c if c > 0 and math.isfinite(c) else 1.0


def _build_rule(y, se, loc, prior, rtol, max_panels, with_theta=True, keep_density=False):
    """The adaptive posterior rule for ``R`` data sets at once (``y``, ``se`` ``(R, T)``)."""
    mp = _Map(prior.lower, prior.upper, _default_scale(y, se))
    offset, extra = _find_offsets(y, se, loc, prior, mp)
    if not np.all(np.isfinite(offset)):
        r = int(np.flatnonzero(~np.isfinite(offset))[0])
        raise ValueError(
            f"scale_prior: the posterior of tau is zero everywhere (data set {r});"
            " check the prior's support"
        )

    divergent = _divergent(y, se, loc, prior, mp, offset)
    keep = ~divergent if divergent.any() else None

    def fn(u):
        return _integrand(y, se, loc, prior, mp, offset, u, with_theta, keep)

    width = y.shape[0] * (5 + (2 * y.shape[1] if with_theta else 0))
    initial = _initial_edges(extra)
    if width * len(initial) > _STREAM_ABOVE:
        block = min(y.shape[1], _TASK_BLOCK)
        cache: dict[float, np.ndarray] = {}  # u -> (logd, mhat, vmu) (R, 3): O(nodes)

        def fn_blocks(u):
            # log p(tau, y) and mu's moments, a sum over every task, once per node: the
            # streamed rule evaluates a panel again when it re-scores or splits it
            missing = [i for i, v in enumerate(u.tolist()) if v not in cache]
            if missing:
                got = np.stack(_log_post(y, se, loc, prior, mp, u[missing]), axis=-1)
                for i, col in zip(missing, np.moveaxis(got, 1, 0), strict=True):
                    cache[float(u[i])] = col
            cols = np.stack([cache[v] for v in u.tolist()], axis=1)  # (R, n, 3)
            post = (cols[..., 0], cols[..., 1], cols[..., 2])
            return _integrand_blocks(
                y, se, loc, prior, mp, offset, u, with_theta, block, keep, post
            )

        chunk = max(1, 2_000_000 // (15 * y.shape[0] * (5 + 2 * block)))
        edges, converged, reached = _adaptive_streamed(fn_blocks, initial, rtol, max_panels, chunk)
    else:
        cache = None
        edges, converged, reached = _adaptive(fn, initial, rtol, max_panels, width)
    nodes, half = _panel_nodes(edges[:-1], edges[1:])
    u = nodes.reshape(-1)
    if cache is not None and all(v in cache for v in u.tolist()):
        cols = np.stack([cache[v] for v in u.tolist()], axis=1)
        logd, mhat, vmu = cols[..., 0], cols[..., 1], cols[..., 2]
    else:
        logd, mhat, vmu = _log_post(y, se, loc, prior, mp, u)
    base = (half[:, None] * _KRONROD_W).reshape(-1) * mp.jac(u)
    with np.errstate(under="ignore"):
        dens = np.exp(logd - offset[:, None]) * base
    z = dens.sum(axis=1)
    if not np.all(z > 0) or not np.all(np.isfinite(z)):
        raise ValueError(
            "scale_prior: the posterior of tau could not be normalised "
            "(is the prior proper and the posterior finite?)"
        )
    weights = dens / z[:, None]
    density_u = None
    if keep_density:
        density_u = (np.exp(logd - offset[:, None]) * mp.jac(u) / z[:, None]).reshape(
            y.shape[0], len(half), 15
        )
    return _Rule(
        mp,
        edges,
        nodes,
        mp.tau(u),
        weights,
        logd,
        mhat,
        vmu,
        offset + np.log(z),
        converged,
        density_u,
        divergent if divergent.any() else None,
        reached,
    )


def _fixed_rule(y, se, loc, prior) -> _Rule:
    tau = np.array([prior.value])
    logm, mhat, vmu = _conditionals(y, se, tau, loc)
    ones = np.ones((y.shape[0], 1))
    return _Rule(
        _Map(prior.value, prior.value, 1.0),
        np.array([0.0, 1.0]),
        np.zeros((1, 1)),
        tau,
        ones,
        logm,
        mhat,
        vmu,
        logm[:, 0],
        True,
        None,
    )


def _batch_rule(
    y,
    se,
    loc_prior=None,
    scale_prior=None,
    *,
    rtol=1e-10,
    max_panels=5000,
    with_theta=True,
    tau_range=None,
) -> tuple[_Rule, _LocPrior, _TauPrior]:
    """Posterior rules for a batch of data sets ``y``, ``se`` of shape ``(R, T)`` sharing the
    priors (used by the estimator study to vectorise over replications)."""
    loc = _loc_prior(loc_prior)
    prior = _tau_prior(scale_prior, tau_range)
    if prior.kind == "fixed":
        return _fixed_rule(y, se, loc, prior), loc, prior
    return _build_rule(y, se, loc, prior, rtol, max_panels, with_theta), loc, prior


def _batch_moments(
    rule: _Rule, y: np.ndarray, se: np.ndarray, prune: float = 1e-17, conditionals: bool = True
):
    """Posterior means and variances of mu, tau and theta for every data set in a rule.

    Returns a dict of arrays: ``mu_mean`` ``(R,)``, ``mu_var``, ``tau_mean``, ``tau_var``,
    ``theta_mean`` ``(R, T)``, ``theta_var``; plus the pruned mixture pieces ``weights``
    ``(R, J')``, ``tau`` ``(J',)``, ``mhat``/``vmu`` ``(R, J')``, and with ``conditionals``
    the ``(R, J', T)`` conditional moments of theta (``theta_cond_mean``/``_var``). Without
    them theta's moments are computed ``_TASK_BLOCK`` tasks at a time (memory
    ``O(J' + T)``; each task's numbers are the same arithmetic either way).
    """
    # a node is dropped when it adds nothing to the normaliser nor to tau's first two
    # moments (far in a heavy tail a tiny weight still carries a large tau)
    keep = np.max(rule.weights * (1.0 + rule.tau) ** 2, axis=0) > prune
    w = rule.weights[:, keep]
    w = w / w.sum(axis=1, keepdims=True)
    tau = rule.tau[keep]
    mhat, vmu = rule.mhat[:, keep], rule.vmu[:, keep]
    mu_mean = np.sum(w * mhat, axis=1)
    mu_var = np.sum(w * (vmu + (mhat - mu_mean[:, None]) ** 2), axis=1)
    tau_mean = w @ tau
    tau_var = np.sum(w * (tau[None, :] - tau_mean[:, None]) ** 2, axis=1)
    if rule.divergent is not None:  # moments that do not exist (heavy tails of tau)
        div = rule.divergent
        tau_mean = np.where(div[:, 1], np.inf, tau_mean)
        tau_var = np.where(div[:, 1] | div[:, 2], np.inf, tau_var)
        mu_var = np.where(div[:, 4], np.inf, mu_var)
    tau_b = np.broadcast_to(tau, w.shape)
    if conditionals:
        tm, tv = _theta_moments_given_tau(y, se, tau_b, mhat, vmu)  # (R, J', T)
        theta_mean = np.einsum("rj,rjt->rt", w, tm)
        theta_var = np.einsum("rj,rjt->rt", w, tv + (tm - theta_mean[:, None, :]) ** 2)
        extra = dict(theta_cond_mean=tm, theta_cond_var=tv)
    else:  # the same moments in blocks of tasks: memory bounded by the block, not J' x T
        theta_mean, theta_var, extra = np.empty(y.shape), np.empty(y.shape), {}
        block = max(1, _TASK_BLOCK * 256 // max(1, w.size))
        for start in range(0, y.shape[1], block):
            sl = slice(start, start + block)
            tm, tv = _theta_moments_given_tau(y[:, sl], se[:, sl], tau_b, mhat, vmu)
            theta_mean[:, sl] = np.einsum("rj,rjt->rt", w, tm)
            theta_var[:, sl] = np.einsum("rj,rjt->rt", w, tv + (tm - theta_mean[:, None, sl]) ** 2)
    return dict(
        mu_mean=mu_mean,
        mu_var=mu_var,
        tau_mean=tau_mean,
        tau_var=tau_var,
        theta_mean=theta_mean,
        theta_var=theta_var,
        weights=w,
        tau=tau,
        mhat=mhat,
        vmu=vmu,
        **extra,
    )


# --------------------------------------------------------------------------- result
@dataclass(frozen=True, eq=False)
class NormalNormalResult:
    """The exact posterior of the normal-normal model for one collection of tasks.

    Fields (``T`` tasks, ``Q`` quantile levels, ``J`` quadrature nodes):
      labels                  tuple of ``T`` task labels
      y, se                   ``(T,)`` the per-task estimates and standard errors used
      loc_prior, scale_prior  str descriptions of the priors
      tau_nodes, tau_weights  ``(J,)`` the posterior rule for tau: ``E[f(tau) | y] =
                              sum_j tau_weights[j] f(tau_nodes[j])`` (weights sum to 1)
      mu_cond_mean, mu_cond_sd  ``(J,)`` ``mu | tau_j, y`` (normal)
      mu_mean, mu_sd, tau_mean, tau_sd   posterior means and sds (floats; ``inf`` where
                              the moment does not exist, e.g. ``tau_sd`` for one task under
                              a HalfCauchy prior, whose posterior tail is ``tau**-3``)
      theta_mean, theta_sd    ``(T,)``
      quantile_levels         ``(Q,)``
      mu_quantiles, tau_quantiles  ``(Q,)``; theta_quantiles ``(T, Q)`` (a cached property:
                              computed on first use, seconds for 10,000 tasks)
      log_marginal_likelihood  ``log p(y)`` (with a flat prior on mu: relative to Lebesgue
                               measure on mu, so only differences between tau priors mean
                               anything)
      num_panels, converged   quadrature diagnostics
      reached_rtol            the relative error the adaptive rule reached: at most
                              ``rtol``, or above it at the rounding floor of
                              ``log p(tau, y)`` (a sum over every task, about 1e-11
                              relative at 300,000 tasks), where the rule stops and counts
                              as converged (see :mod:`bayesmeta.exact.quadrature`); 0 for
                              a fixed tau

    Methods give the marginal posteriors as :class:`NormalMixture` (``mu_marginal``,
    ``theta_marginal``), the predictive of a new task's ``theta`` and of a new observation
    (``predictive``), the exact density, CDF and quantiles of ``tau`` and exact i.i.d. draws
    (``sample``).

    >>> import numpy as np, bayesmeta as bm
    >>> res = bm.exact.solve_normal_normal([1.0, 3.0], 1.0, loc_prior="flat", scale_prior=1.0)
    >>> round(res.mu_mean, 4), round(res.mu_sd, 4)  # tau held at 1: mu | y ~ N(2, 1)
    (2.0, 1.0)
    >>> np.round(res.theta_mean, 4).tolist()  # halfway between each estimate and mu
    [1.5, 2.5]
    """

    labels: tuple[str, ...]
    y: np.ndarray
    se: np.ndarray
    loc_prior: str
    scale_prior: str
    tau_nodes: np.ndarray
    tau_weights: np.ndarray
    mu_cond_mean: np.ndarray
    mu_cond_sd: np.ndarray
    mu_mean: float
    mu_sd: float
    tau_mean: float
    tau_sd: float
    theta_mean: np.ndarray
    theta_sd: np.ndarray
    quantile_levels: np.ndarray
    mu_quantiles: np.ndarray
    tau_quantiles: np.ndarray
    log_marginal_likelihood: float
    num_panels: int
    converged: bool
    reached_rtol: float
    _loc: _LocPrior = field(repr=False)
    _prior: _TauPrior = field(repr=False)
    _rule: _Rule = field(repr=False)
    _cdf_coef: np.ndarray | None = field(repr=False)  # (16, P) antiderivative in Legendre basis
    _cdf_cum: np.ndarray | None = field(repr=False)  # (P + 1,)

    @cached_property
    def theta_quantiles(self) -> np.ndarray:
        """Posterior quantiles of every ``theta_t`` at ``quantile_levels``: ``(T, Q)``."""
        mix = self.theta_marginal()
        keep = self.tau_weights > 1e-15
        # batch (T, 1) so that the Q levels broadcast to (T, Q)
        mix = NormalMixture(
            self.tau_weights[keep], mix.means[:, None, keep], mix.scales[:, None, keep]
        )
        return mix.quantile(self.quantile_levels)

    # ------------------------------------------------------------------ tau
    @property
    def tau_fixed(self) -> bool:
        return self._prior.kind == "fixed"

    def tau_pdf(self, tau: Any) -> np.ndarray:
        """Exact posterior density of tau (normalised with the quadrature's constant)."""
        if self.tau_fixed:
            raise ValueError("tau: fixed, it has no density")
        t = np.asarray(tau, dtype=float)
        flat = t.reshape(-1)
        inside = (flat > self._prior.lower) & (flat < self._prior.upper)
        out = np.zeros(flat.shape)
        if inside.any():
            logm, _, _ = _conditionals(self.y[None], self.se[None], flat[inside], self._loc)
            with np.errstate(divide="ignore", invalid="ignore"):
                lp = self._prior.logpdf(flat[inside])
            out[inside] = np.exp(lp + logm[0] - self.log_marginal_likelihood)
        return out.reshape(t.shape)

    def tau_density_grid(
        self, num: int = 200, upper: float = 0.999
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(grid, density)`` of the posterior of tau on ``num`` points from the lower end
        of its support to its ``upper`` posterior quantile (for plotting)."""
        if self.tau_fixed:
            raise ValueError("tau: fixed, it has no density")
        grid = np.linspace(self._prior.lower, float(self.tau_quantile(upper)), int(num))
        inner = grid.copy()
        inner[0] = grid[0] + 1e-9 * (grid[1] - grid[0])  # the density at the open end
        return grid, self.tau_pdf(inner)

    def tau_cdf(self, tau: Any) -> np.ndarray:
        """Posterior CDF of tau: exact integral of the per-panel degree-14 interpolant."""
        t = np.asarray(tau, dtype=float)
        if self.tau_fixed:
            return (t >= self._prior.value).astype(float)
        u = self._rule.map.u(t).reshape(-1)
        edges = self._rule.edges
        p = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, len(edges) - 2)
        h = edges[p + 1] - edges[p]
        s = np.clip(2.0 * (u - edges[p]) / h - 1.0, -1.0, 1.0)
        part = 0.5 * h * _leg.legval(s, self._cdf_coef[:, p], tensor=False)
        out = np.clip(self._cdf_cum[p] + part, 0.0, 1.0)
        out = np.where(u <= 0, 0.0, np.where(u >= 1, 1.0, out))
        return out.reshape(t.shape)

    def tau_quantile(self, q: Any) -> np.ndarray:
        """Inverse posterior CDF of tau (bisection on the piecewise polynomial CDF)."""
        q = np.asarray(q, dtype=float)
        if np.any((q < 0) | (q > 1)):
            raise ValueError("q: probabilities must lie in [0, 1]")
        if self.tau_fixed:
            return np.full(q.shape, self._prior.value)
        flat = q.reshape(-1)
        cum = self._cdf_cum
        edges = self._rule.edges
        p = np.clip(np.searchsorted(cum, flat, side="right") - 1, 0, len(edges) - 2)
        # skip empty panels at the right end (a quantile of 1 lands in the last non-empty one)
        h = edges[p + 1] - edges[p]
        target = (flat - cum[p]) / (0.5 * h)
        coef = self._cdf_coef[:, p]
        lo = np.full(flat.shape, -1.0)
        hi = np.ones(flat.shape)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            below = _leg.legval(mid, coef, tensor=False) < target
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
        u = edges[p] + 0.5 * (0.5 * (lo + hi) + 1.0) * h
        return self._rule.map.tau(u).reshape(q.shape)

    # ------------------------------------------------------------------ mixtures
    def mu_marginal(self) -> NormalMixture:
        """``p(mu | y)`` as a mixture of normals (batch shape ``()``)."""
        return NormalMixture(self.tau_weights, self.mu_cond_mean, self.mu_cond_sd)

    def theta_marginal(self) -> NormalMixture:
        """``p(theta_t | y)`` for every task: a mixture with batch shape ``(T,)``."""
        tau = self.tau_nodes[None, :]
        s2 = self.se[:, None] ** 2
        shrink = s2 / (s2 + tau**2)
        mean = shrink * self.mu_cond_mean + (1.0 - shrink) * self.y[:, None]
        var = (1.0 - shrink) * s2 + shrink**2 * self.mu_cond_sd**2
        return NormalMixture(self.tau_weights, mean, np.sqrt(var))

    def predictive(self, se: float | None = None) -> NormalMixture:
        """Posterior predictive of a new task's ``theta`` (``se=None``) or of a new
        observation of it with standard error ``se``: mixture over ``tau_j`` of
        ``N(E[mu | tau_j], Var[mu | tau_j] + tau_j**2 (+ se**2))``."""
        var = self.mu_cond_sd**2 + self.tau_nodes**2
        if se is not None:
            se = float(se)
            if not (math.isfinite(se) and se >= 0):
                raise ValueError(f"se: must be finite and >= 0, got {se}")
            var = var + se**2
        return NormalMixture(self.tau_weights, self.mu_cond_mean, np.sqrt(var))

    # ------------------------------------------------------------------ draws
    def sample(self, seed: Any, num: int) -> dict[str, np.ndarray]:
        """Exact i.i.d. posterior draws: ``{"mu": (num,), "tau": (num,), "theta": (num, T)}``.

        ``tau`` by inverse CDF, then ``mu | tau, y`` and ``theta | mu, tau, y`` (normal).
        ``seed``: an int or a JAX PRNG key. The normals behind each task's ``theta`` come
        from that task's own stream, keyed by the seed and its label (a stable hash, see
        :mod:`bayesmeta._streams`): the same seed and labels give the same draws in any
        order of the tasks. ``theta`` is filled a block of tasks at a time, so memory
        beyond the returned ``(num, T)`` array stays about ``4e6`` doubles.
        """
        num = int(num)
        if num < 1:
            raise ValueError(f"num: must be >= 1, got {num}")
        rng = _numpy_rng(seed)
        if self.tau_fixed:
            tau = np.full(num, self._prior.value)
        else:
            tau = self.tau_quantile(rng.uniform(size=num))
        ys, ses = _canonical(self.y, self.se)
        _, mhat, vmu = _conditionals(ys[None], ses[None], tau, self._loc)
        mu = mhat[0] + np.sqrt(vmu[0]) * rng.standard_normal(num)
        theta_key = _streams.seed_key(rng)
        hashes = self._label_hashes
        num_tasks = self.y.size
        theta = np.empty((num, num_tasks))
        block = 1 << max(0, (4_000_000 // (6 * num)).bit_length() - 1)  # a power of two
        for start in range(0, num_tasks, block):
            sl = slice(start, start + block)
            mean, sd = _theta_given_mu_tau(self.y[sl], self.se[sl], mu, tau)
            z = _streams.task_normals_f64(theta_key, hashes[sl], num)
            theta[:, sl] = mean + sd * z
        return {"mu": mu, "tau": tau, "theta": theta}

    @cached_property
    def _label_hashes(self) -> np.ndarray:
        return _streams.label_hashes(self.labels)

    def summary(self) -> str:
        """A readable table of posterior means, sds and central 95% intervals."""
        levels = list(np.round(self.quantile_levels, 6))
        lo_i = levels.index(0.025) if 0.025 in levels else 0
        hi_i = levels.index(0.975) if 0.975 in levels else len(levels) - 1
        lines = [
            f"Exact normal-normal posterior: mu ~ {self.loc_prior}, tau ~ "
            f"{self.scale_prior}; log p(y) = {self.log_marginal_likelihood:.6f}",
            f"{'':>12} {'mean':>11} {'sd':>11} "
            f"{f'q{levels[lo_i]:g}':>11} {f'q{levels[hi_i]:g}':>11}",
        ]
        rows = [
            ("mu", self.mu_mean, self.mu_sd, self.mu_quantiles),
            ("tau", self.tau_mean, self.tau_sd, self.tau_quantiles),
        ]
        rows += [
            (f"theta[{lab}]", self.theta_mean[t], self.theta_sd[t], self.theta_quantiles[t])
            for t, lab in enumerate(self.labels)
        ]
        for name, m, s, q in rows:
            lines.append(f"{name[:12]:>12} {m:11.4f} {s:11.4f} {q[lo_i]:11.4f} {q[hi_i]:11.4f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _canonical(y: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``y`` and ``se`` sorted by estimate, then se: sums over tasks in this order do not
    depend on the order the tasks came in."""
    order = np.lexsort((se, y))
    return y[order], se[order]


def _theta_given_mu_tau(y, se, mu, tau):
    """Numpy twin of :func:`theta_conditional`: ``(num, T)`` mean and sd."""
    s2 = se[None, :] ** 2
    t2 = np.asarray(tau, dtype=float)[:, None] ** 2
    var = s2 + t2
    shrink = s2 / var
    mean = shrink * np.asarray(mu, dtype=float)[:, None] + (1.0 - shrink) * y[None, :]
    sd = np.sqrt(s2 * t2 / var)
    return mean, sd


def solve_normal_normal(
    y: Any,
    se: Any,
    *,
    loc_prior: Any = None,
    scale_prior: Any = None,
    labels: Sequence[str] | None = None,
    quantiles: Sequence[float] = _DEFAULT_QUANTILES,
    tau_range: tuple[float, float] | None = None,
    rtol: float = 1e-11,
    max_panels: int = 5000,
) -> NormalNormalResult:
    """Exact posterior of the normal-normal model from per-task estimates (arrays in).

    Args:
      y, se: ``(T,)`` estimates and their known standard errors (``se`` may be a scalar).
      loc_prior: prior on ``mu``: a numpyro ``Normal`` (default ``Normal(0, 5)``), the string
        ``"flat"``, or a number to hold ``mu`` fixed.
      scale_prior: prior on ``tau``: a scalar numpyro distribution with non-negative support
        (``HalfCauchy``, ``HalfNormal``, ``Exponential``, ``Uniform``, ``Gamma``,
        ``InverseGamma``, ``LogNormal`` are evaluated in float64 numpy; others through their
        own ``log_prob``), a callable ``log p(tau)`` on numpy arrays (support ``tau_range``,
        default ``(0, inf)``; the posterior must be proper), or a number ``>= 0`` to hold
        ``tau`` fixed. Default ``HalfCauchy(5)``.
      labels: task labels (default ``"0" .. "T-1"``).
      quantiles: the probability levels reported in ``*_quantiles``.
      tau_range: restrict ``tau`` to an interval (intersected with the prior's support).
      rtol: relative tolerance of the adaptive quadrature (normaliser and the first two
        moments of tau, mu and every theta); with very many tasks the rounding of
        ``log p(tau, y)`` can sit above it, and the rule stops at that floor
        (``reached_rtol`` says what it reached).
      max_panels: cap on quadrature panels (``converged`` is False when reached).

    Returns:
      :class:`NormalNormalResult`.

    >>> import numpyro.distributions as dist
    >>> res = solve_normal_normal([1.0, -1.0], [1.0, 1.0], loc_prior="flat",
    ...                           scale_prior=dist.HalfNormal(1.0))
    >>> abs(res.mu_mean) < 1e-12
    True
    """
    y, se = _check_estimates(y, se)
    if labels is None:
        labels = [str(i) for i in range(y.size)]
    labels = tuple(str(label) for label in labels)
    if len(labels) != y.size:
        raise ValueError(f"labels: {len(labels)} labels for {y.size} tasks")
    levels = np.asarray(quantiles, dtype=float).reshape(-1)
    if np.any((levels <= 0) | (levels >= 1)):
        raise ValueError("quantiles: levels must lie strictly between 0 and 1")
    if not 0 < rtol < 1:
        raise ValueError(f"rtol: must be in (0, 1), got {rtol}")
    loc = _loc_prior(loc_prior)
    prior = _tau_prior(scale_prior, tau_range)
    y2, se2 = y[None], se[None]
    # the rule sums over tasks in a canonical order (sorted by estimate, then se), so that it
    # is the same, bit for bit, in any order of the tasks
    ys, ses = _canonical(y, se)
    if prior.kind == "fixed":
        rule = _fixed_rule(ys[None], ses[None], loc, prior)
        coef = cum = None
    else:
        rule = _build_rule(
            ys[None], ses[None], loc, prior, rtol, max_panels, with_theta=True, keep_density=True
        )
        if not rule.converged:
            import warnings

            warnings.warn(
                "normal_normal: adaptive quadrature reached max_panels before "
                f"reaching rtol={rtol} (relative error {rule.reached_rtol:.1e}); results may "
                "be inaccurate",
                stacklevel=2,
            )
        # per-panel Legendre interpolant of the u-density, integrated from the panel's left end
        xs = _KRONROD_X
        dens = rule.density_u[0]  # (P, 15)
        coef_f = _leg.legfit(xs, dens.T, 14)  # (15, P)
        coef = _leg.legint(coef_f, lbnd=-1, axis=0)  # (16, P)
        h = np.diff(rule.edges)
        mass = 0.5 * h * _leg.legval(1.0, coef)
        cum = np.concatenate([[0.0], np.cumsum(mass)])
        coef = coef / cum[-1]
        cum = cum / cum[-1]
    mom = _batch_moments(rule, y2, se2, conditionals=False)
    mu_mix = NormalMixture(mom["weights"][0], mom["mhat"][0], np.sqrt(mom["vmu"][0]))
    mu_q = mu_mix.quantile(levels) if loc.kind != "fixed" else np.full(levels.shape, loc.mean)
    result = NormalNormalResult(
        labels=labels,
        y=y,
        se=se,
        loc_prior=loc.describe(),
        scale_prior=prior.name,
        tau_nodes=mom["tau"],
        tau_weights=mom["weights"][0],
        mu_cond_mean=mom["mhat"][0],
        mu_cond_sd=np.sqrt(mom["vmu"][0]),
        mu_mean=float(mom["mu_mean"][0]),
        mu_sd=float(np.sqrt(mom["mu_var"][0])),
        tau_mean=float(mom["tau_mean"][0]),
        tau_sd=float(np.sqrt(mom["tau_var"][0])),
        theta_mean=mom["theta_mean"][0],
        theta_sd=np.sqrt(mom["theta_var"][0]),
        quantile_levels=levels,
        mu_quantiles=mu_q,
        tau_quantiles=np.zeros(levels.shape),
        log_marginal_likelihood=float(rule.log_evidence[0]),
        num_panels=len(rule.edges) - 1,
        converged=bool(rule.converged),
        reached_rtol=float(rule.reached_rtol),
        _loc=loc,
        _prior=prior,
        _rule=rule,
        _cdf_coef=coef,
        _cdf_cum=cum,
    )
    object.__setattr__(result, "tau_quantiles", result.tau_quantile(levels))
    return result
