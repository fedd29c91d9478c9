"""Independence Metropolis-Hastings for a handful of expensive, nearly Gaussian parameters.

The hyperparameters of a nested-Laplace fit are few (a population mean and scale per
coefficient, a correlation, a few shared coefficients), their posterior is close to
Gaussian once there are many tasks, and every evaluation of their log density is costly:
it solves every task's Newton problem. NUTS spends many such evaluations, with gradients,
per draw, and one after another. An independence sampler proposes from one fixed
distribution, so every proposal can be evaluated before any decision is taken, in large
batches and without gradients; the Markov chain is then a cheap scan of accept/reject
decisions (Tierney 1994; Mengersen & Tweedie 1996, who show the chain is uniformly
ergodic when the weights ``pi / q`` are bounded, hence heavy-tailed proposals).

:func:`sample` does four things:

1. **Mode**: L-BFGS (``scipy.optimize.minimize``) on the potential ``-log pi`` with its
   exact gradient.
2. **Scale**: the Hessian at the mode by central differences of the gradient (step
   ``1e-2`` in every coordinate, a fixed stencil), symmetrised, its eigenvalues floored
   at ``1e-8`` of the largest.
3. **Warmup**: ``rounds`` rounds of proposals from a multivariate Student-t (``df``
   degrees of freedom, default 10) at the current location and scale; after each, the
   location and scale move to the importance-weighted mean and covariance of the round's
   proposals (when the round's importance ESS is at least ``4 d``; otherwise the proposal
   is kept). The last round's draws, importance-resampled, are the chains' starting
   points.
4. **Draws**: each chain makes ``draws`` proposals; from state ``x`` a proposal ``y`` is
   accepted with probability ``min(1, w(y) / w(x))``, ``w = pi / q``. The draws are exact
   Markov-chain draws of ``pi``; their autocorrelation (repeats after rejections) is what
   the R-hat and ESS of the fit measure.

A proposal whose log density is not finite is rejected; one whose density the proposal
underrates by far shows up as a low acceptance rate and a low importance ESS, both
returned (``info``) so that a caller can fall back to a gradient-based sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import optimize, special

__all__ = ["sample", "Proposal", "IndependenceError", "t_logpdf", "DEFAULT_DF"]

DEFAULT_DF = 10.0
_FD_STEP = 1e-2
_MAX_SEARCHES = 5
_PROFILE = 2.0
_MAX_SIDE = 5.0


class Proposal:
    """A split Student-t: ``x = loc + A u`` with ``u_i = s_i v_i``, ``v`` a standard
    multivariate t with ``df`` degrees of freedom and ``s_i`` the scale of axis ``i`` on
    the side of ``v_i``'s sign (``lower`` below 0, ``upper`` above). The sign-preserving,
    piecewise linear map makes ``q(x) = t(v) / (|det A| prod s_i)``."""

    def __init__(self, loc, axes, lower, upper, df):
        self.loc, self.axes, self.df = np.asarray(loc, float), np.asarray(axes, float), df
        self.lower, self.upper = np.asarray(lower, float), np.asarray(upper, float)
        self._logdet = float(np.linalg.slogdet(self.axes)[1])

    def draw(self, rng, n):
        d = self.loc.shape[0]
        v = rng.standard_normal((n, d)) * np.sqrt(self.df / rng.chisquare(self.df, n))[:, None]
        u = np.where(v < 0, self.lower * v, self.upper * v)
        return self.loc + u @ self.axes.T

    def whiten(self, x):
        return np.linalg.solve(self.axes, (np.asarray(x, float) - self.loc).T).T

    def logpdf(self, x):
        u = self.whiten(x)
        scale = np.where(u < 0, self.lower, self.upper)
        return t_logpdf(u / scale, self.df) - np.sum(np.log(scale), axis=1) - self._logdet


class IndependenceError(ValueError):
    """The sampler cannot run on this target: no curvature at the mode, or no proposal
    with a finite density."""


def t_logpdf(v: np.ndarray, df: float) -> np.ndarray:
    """Log density of the standard multivariate Student-t (identity scale, ``df`` degrees
    of freedom) at the rows of ``v`` ``(n, d)``."""
    d = v.shape[1]
    return (
        special.gammaln(0.5 * (df + d))
        - special.gammaln(0.5 * df)
        - 0.5 * d * math.log(df * math.pi)
        - 0.5 * (df + d) * np.log1p(np.sum(v**2, axis=1) / df)
    )


def _mode(value_and_grad, x0, maxiter):
    def fun(x):
        v, g = value_and_grad(x)
        v = float(v)
        if not math.isfinite(v):
            return math.inf, np.zeros_like(x)
        return v, np.asarray(g, float)

    res = optimize.minimize(
        fun, np.asarray(x0, float), jac=True, method="L-BFGS-B", options={"maxiter": int(maxiter)}
    )
    return np.asarray(res.x, float), bool(res.success), int(res.nfev), str(res.message)


def _hessian(value_and_grad, x):
    d = x.shape[0]
    h = np.zeros((d, d))
    for i in range(d):
        e = np.zeros(d)
        e[i] = _FD_STEP
        gp = np.asarray(value_and_grad(x + e)[1], float)
        gm = np.asarray(value_and_grad(x - e)[1], float)
        h[:, i] = (gp - gm) / (2 * _FD_STEP)
    h = 0.5 * (h + h.T)
    vals, vecs = np.linalg.eigh(h)
    if not np.all(np.isfinite(vals)) or vals.max() <= 0:
        return None
    vals = np.maximum(vals, 1e-8 * vals.max())
    return (vecs / vals) @ vecs.T  # covariance: the inverse Hessian


def _weights(logw):
    logw = np.where(np.isfinite(logw), logw, -np.inf)
    if not np.isfinite(logw).any():
        return None, 0.0
    w = np.exp(logw - logw.max())
    w /= w.sum()
    return w, float(1.0 / np.sum(w**2))


def sample(
    logp: Callable[[np.ndarray], np.ndarray],
    value_and_grad: Callable[[np.ndarray], tuple],
    x0: np.ndarray,
    *,
    chains: int,
    draws: int,
    warmup: int,
    seed,
    df: float = DEFAULT_DF,
    rounds: int = 2,
    maxiter: int = 200,
    at_mode: Callable[[np.ndarray], None] | None = None,
) -> tuple[np.ndarray, dict, dict]:
    """Independence Metropolis-Hastings draws of the density ``exp(logp)`` on R^d.

    ``logp(xs, final)`` maps points ``(n, d)`` to their log densities ``(n,)`` (up to a
    constant; non-finite for a point outside the support); ``final`` is True for the one
    call on the chains' starts and every sampling proposal, whose rows ``stats["index"]``
    refers to; ``value_and_grad`` maps one point to the
    potential ``-logp`` and its gradient. ``warmup`` proposals in all are spent on the
    adaptation (module docstring). Returns ``(z (chains, draws, d), stats, info)``:
    ``stats`` has ``accept_prob`` and ``accepted`` per draw, ``info`` the mode search,
    the proposal, the acceptance rate per chain and the sampling proposals' importance
    ESS fraction. ``at_mode(mode)``, when given, is called each time a mode is found and
    before anything else is evaluated: a caller may re-centre a warm start there, and
    returns True when that changed the potential, which starts another search from the
    mode (at most ``_MAX_SEARCHES`` in all). Raises
    ValueError when no mode or no curvature is found, or when no
    proposal has a finite density."""
    rng = np.random.default_rng(seed)
    mode, ok, nfev, message = _mode(value_and_grad, x0, maxiter)
    searches = 1
    # the caller may re-centre its warm starts at the mode, which moves the potential a
    # little; search again from there until it stops moving
    while at_mode is not None and at_mode(mode) and searches < _MAX_SEARCHES:
        mode, ok, more, message = _mode(value_and_grad, mode, maxiter)
        nfev += more
        searches += 1
    cov = _hessian(value_and_grad, mode)
    d = mode.shape[0]
    if cov is None:
        raise IndependenceError(
            "the potential has no positive curvature at its mode (L-BFGS: " + message + ")"
        )
    vals, vecs = np.linalg.eigh(cov)
    axes = vecs * np.sqrt(np.maximum(vals, 0.0))  # x = mode + axes u: u ~ N(0, I) locally
    # the two sides of every principal axis: the scale at which the log density has
    # fallen by as much as a Gaussian's at _PROFILE sd (the asymmetric scales of R-INLA's
    # hyperparameter integration, Rue, Martino & Chopin 2009, section 6.5)
    pts = mode + _PROFILE * np.concatenate([axes.T, -axes.T])
    drop = float(-value_and_grad(mode)[0]) - np.asarray(logp(pts, final=False), float)
    with np.errstate(divide="ignore", invalid="ignore"):
        side = np.sqrt(0.5 * _PROFILE**2 / drop)
    side = np.clip(np.where(np.isfinite(side), side, _MAX_SIDE), 1.0 / _MAX_SIDE, _MAX_SIDE)
    q = Proposal(mode, axes, side[d:], side[:d], df)
    per_round = max(int(warmup) // max(int(rounds), 1), 0)
    history = []
    last = None
    for _ in range(int(rounds) if per_round else 0):
        y = q.draw(rng, per_round)
        logw = np.asarray(logp(y, final=False), float) - q.logpdf(y)
        w, ess = _weights(logw)
        history.append({"ess": ess, "proposals": per_round})
        if w is None:
            continue
        last = (y, w)
        if ess >= 4 * d:
            # each side's scale from the weighted half second moment of its axis (that of
            # a split t is scale^2 df / (df - 2))
            u = q.whiten(y)
            neg = u < 0
            shrink = (df - 2.0) / df if df > 2 else 1.0
            lower = np.sqrt(shrink * (w @ (u**2 * neg)) / np.maximum(w @ neg, 1e-12))
            upper = np.sqrt(shrink * (w @ (u**2 * ~neg)) / np.maximum(w @ ~neg, 1e-12))
            ok_l, ok_u = np.isfinite(lower) & (lower > 0), np.isfinite(upper) & (upper > 0)
            q = Proposal(
                mode,
                axes,
                np.clip(np.where(ok_l, lower, q.lower), 1.0 / _MAX_SIDE, _MAX_SIDE),
                np.clip(np.where(ok_u, upper, q.upper), 1.0 / _MAX_SIDE, _MAX_SIDE),
                df,
            )
    n = int(chains) * int(draws)
    y = q.draw(rng, n)
    # starting points: importance-resampled from the last warmup round, else the mode
    if last is not None:
        ys, ws = last
        starts = ys[rng.choice(len(ws), size=int(chains), p=ws)]
    else:
        starts = np.repeat(mode[None], int(chains), axis=0)
    # one last evaluation of the starts and the proposals (final=True: the caller may
    # keep what it computed with them; ``index`` says which row each draw is)
    every = np.concatenate([starts, y])
    lp_all = np.asarray(logp(every, final=True), float)
    logw_all = np.where(np.isfinite(lp_all), lp_all - q.logpdf(every), -np.inf)
    lp, logw0 = lp_all[int(chains) :], logw_all[: int(chains)]
    logw = logw_all[int(chains) :]
    if not np.isfinite(logw).any():
        raise IndependenceError("no proposal of the independence sampler has a finite density")
    y = y.reshape(int(chains), int(draws), d)
    logw = logw.reshape(int(chains), int(draws))
    u = np.log(rng.uniform(size=logw.shape))
    z = np.empty_like(y)
    index = np.empty(logw.shape, int)
    accept_prob = np.empty(logw.shape)
    accepted = np.zeros(logw.shape, bool)
    for c in range(int(chains)):
        x, wx, at = starts[c], logw0[c], c
        for i in range(int(draws)):
            ratio = (
                logw[c, i] - wx
                if np.isfinite(wx)
                else (0.0 if np.isfinite(logw[c, i]) else -np.inf)
            )
            accept_prob[c, i] = math.exp(min(0.0, ratio)) if np.isfinite(ratio) else 0.0
            if u[c, i] < ratio:
                x, wx, at = y[c, i], logw[c, i], int(chains) + c * int(draws) + i
                accepted[c, i] = True
            z[c, i] = x
            index[c, i] = at
    _, ess = _weights(logw.ravel())
    info = {
        "mode": mode,
        "mode_converged": ok,
        "mode_searches": searches,
        "evaluations": {
            "mode": nfev,
            "hessian": 2 * d,
            "profile": 2 * d,
            "warmup": per_round * len(history),
            "draws": n + int(chains),
        },
        "proposal": {
            "df": float(df),
            "loc": q.loc,
            "axes": q.axes,
            "lower": q.lower,
            "upper": q.upper,
        },
        "warmup_rounds": history,
        "acceptance": accepted.mean(axis=1),
        "importance_ess_fraction": ess / n,
        "nonfinite_proposals": int(np.sum(~np.isfinite(lp))),
        "dim": d,
    }
    return z, {"accept_prob": accept_prob, "accepted": accepted, "index": index}, info
