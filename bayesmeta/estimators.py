"""Pooled, per-task and partially pooled estimators: the toolkit of meta-analysis.

Given one estimate ``y_i`` with known standard error ``s_i`` (variance ``v_i = s_i**2``)
per task ``i = 1..k`` (or a TaskSet, reduced with ``per_task_estimates()``):

==========================  ==============================================================
estimator                   what it computes
==========================  ==============================================================
:func:`complete_pooling`    all data as one sample: the data-weighted (inverse-variance)
                            mean; a big task dominates
:func:`no_pooling`          each task on its own: ``y_i +- z s_i``
:func:`mean_of_estimates`   the unweighted mean of per-task estimates: one task, one vote
:func:`fixed_effect`        inverse-variance mean with Q, I^2 and H^2 (Higgins-Thompson)
:func:`random_effects`      ``y_i ~ N(mu, v_i + tau^2)`` with tau^2 by DL, REML, ML, PM,
                            HE, SJ or EB; Knapp-Hartung (HKSJ) intervals; Q-profile
                            interval for tau^2; prediction interval; BLUPs. With
                            ``mods``: the mixed-effects meta-regression
                            ``y_i ~ N(x_i'b, v_i + tau^2)`` (:class:`MetaRegression`:
                            QE, QM, residual I^2 / H^2, R^2, ``predict``)
:func:`james_stein`         positive-part James-Stein shrinkage toward the fixed-effect mean
``bayesmeta.study.study``   simulation study of all of the above
==========================  ==============================================================

Formulas (``w_i = 1 / (v_i + tau^2)``, ``mu(tau^2) = sum w y / sum w``)::

    Q        = sum v_i^-1 (y_i - mu_FE)^2                 (Cochran; df = k - 1)
    DL       tau^2 = max(0, (Q - (k-1)) / (sum v^-1 - sum v^-2 / sum v^-1))
    HE       tau^2 = max(0, sum (y - ybar)^2 / (k-1) - mean(v))          (Hedges)
    SJ       tau0^2 = sum (y - ybar)^2 / k;  tau^2 = tau0^2 sum w0 (y - mu_w0)^2 / (k-1),
             w0 = 1 / (v + tau0^2)                                       (Sidik-Jonkman)
    ML       maximises -1/2 sum [log(v + tau^2) + w (y - mu)^2]
    REML     maximises the ML criterion - 1/2 log sum w
    PM       solves sum w (y - mu)^2 = k - 1 (0 when Q <= k-1)           (Paule-Mandel)
    EB       fixed point of tau^2 = sum w [k/(k-1) (y-mu)^2 - v] / sum w  (Morris; metafor's
             "EB"; in this intercept-only model its root is the PM root)
    I^2      = 100 tau^2 / (tau^2 + s^2), H^2 = (tau^2 + s^2) / s^2 with the "typical"
             within-task variance s^2 = (k-1) sum v^-1 / ((sum v^-1)^2 - sum v^-2)
             (metafor's definitions; for the fixed-effect model I^2 = 100 (Q-(k-1))/Q)
    KH       se^2 = sum w (y - mu)^2 / ((k-1) sum w), t with k-1 df (no truncation)
    Q-profile: tau^2 bounds solve sum w (y - mu)^2 = chi2_{k-1} quantiles (Viechtbauer 2007)
    PI       mu +- t_{k-2} sqrt(se^2 + tau^2) (Higgins, Thompson & Spiegelhalter 2009);
             ``prediction="z"`` gives metafor's default mu +- z sqrt(se^2 + tau^2)
    BLUP     theta_i = mu + tau^2/(tau^2+v_i) (y_i - mu), se^2 = lam v + (1-lam)^2 se(mu)^2

Meta-regression (metafor's ``rma(yi, vi, mods = ...)``; ``X = [1, mods]`` is ``(k, p)``,
``P(t) = W_t - W_t X (X'W_t X)^-1 X'W_t`` with ``W_t = diag(1/(v + t))``, ``QE(t) = y'P(t)y``)::

    b        = (X'W X)^-1 X'W y at t = tau^2, Cov(b) = (X'W X)^-1 (KH: x QE(tau^2)/(k-p))
    QE       = QE(0) on k - p df; QM = b_2' Cov(b)_22^-1 b_2 on p - 1 df (KH: F = QM/(p-1))
    DL       tau^2 = max(0, (QE - (k-p)) / tr P(0));  HE  max(0, (RSS_OLS - tr((I-H)V))/(k-p))
    SJ       tau^2 = tau0^2 QE(tau0^2) / (k-p);  PM, EB  QE(tau^2) = k - p
    ML/REML  Fisher scoring on -1/2 [sum log(v + t) + QE(t)] (REML: - 1/2 log det X'W_t X)
    I^2, H^2 as above with s^2 = (k-p) / tr P(0); R^2 = max(0, 100 (tau2_RE - tau^2)/tau2_RE)
    PI       x'b +- t_{k-p-1} sqrt(se^2 + tau^2) (Riley et al. 2011); "z": metafor's default

References: DerSimonian & Laird (1986); Paule & Mandel (1982); Hedges & Olkin (1985);
Sidik & Jonkman (2005); Morris (1983); Knapp & Hartung (2003); Viechtbauer (2005, 2007);
Higgins & Thompson (2002); Efron & Morris (1973); Raudenbush (1994, R^2); Riley, Higgins
& Deeks (2011); Viechtbauer (2010), metafor's ``rma.uni``.

Everything is float64 numpy, with the normal, t and chi-square distributions from
:mod:`bayesmeta._special` (scipy.special); the tau^2 estimators are vectorised over leading
batch axes.

>>> import numpy as np
>>> res = random_effects([0.1, 0.3, 0.35, 0.65], se=[0.1, 0.12, 0.1, 0.15], method="DL")
>>> round(res.tau2, 6) >= 0
True
>>> from bayesmeta import datasets
>>> reg = random_effects(datasets.bcg(), mods={"ablat": datasets.bcg_table()["ablat"]})
>>> [round(float(b), 4) for b in reg.coef], reg.qe_df
([0.2515, -0.0291], 11)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np

from bayesmeta._checks import as_real_array, check_estimates
from bayesmeta._special import (
    chi2_cdf,
    chi2_ppf,
    chi2_sf,
    f_sf,
    ndtr,
    ndtri,
    t_cdf,
    t_ppf,
    t_sf2,
)
from bayesmeta.tasks import TaskSet

__all__ = [
    "TAU2_METHODS",
    "MetaAnalysis",
    "MetaRegression",
    "MetaRegressionPrediction",
    "PooledEstimate",
    "PerTaskEstimates",
    "complete_pooling",
    "no_pooling",
    "mean_of_estimates",
    "fixed_effect",
    "random_effects",
    "james_stein",
    "tau2_estimate",
]

TAU2_METHODS = ("DL", "REML", "ML", "PM", "HE", "SJ", "EB")


# The old private names of the distribution functions (used by bayesmeta.study and tests).
_t_cdf, _t_sf2, _t_ppf, _ndtri = t_cdf, t_sf2, t_ppf, ndtri
_chi2_cdf, _chi2_sf, _chi2_ppf = chi2_cdf, chi2_sf, chi2_ppf


# --------------------------------------------------------------------------- input
def _estimates(
    y: Any, se: Any, labels: Any = None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(y, se, labels)`` from arrays or a TaskSet (raw rows -> per-task estimates)."""

    if isinstance(y, TaskSet):
        if se is not None:
            raise ValueError("se: give either a TaskSet or y with se, not both")
        est, s = y.per_task_estimates()
        labels = y.labels if labels is None else labels
        if len(labels) != y.num_tasks:
            raise ValueError(f"labels: {len(labels)} labels for {y.num_tasks} tasks")
        return np.asarray(est, float), np.asarray(s, float), tuple(str(v) for v in labels)
    if se is None:
        raise ValueError(
            "se: standard errors are required with array estimates (or pass a TaskSet)"
        )
    est, s = check_estimates(y, se)
    if labels is None:
        labels = [str(i) for i in range(est.size)]
    if len(labels) != est.size:
        raise ValueError(f"labels: {len(labels)} labels for {est.size} estimates")
    labels = tuple(str(v) for v in labels)
    _check_float64_range(est, s, labels)
    return est, s, labels


def _check_float64_range(est: np.ndarray, s: np.ndarray, labels: tuple[str, ...]) -> None:
    """Every estimator squares the standard errors (variances, weights ``1/se^2`` and sums
    of their squares) and the standardised deviations ``(y_i - y_j) / se``; where one of
    those squares leaves the float64 range the result would be NaN or infinite, so it is
    refused here, naming the field and the task. (The estimators are scale-equivariant:
    rescaling ``y`` and ``se`` by one factor rescales ``mu``, ``se`` by it and ``tau2`` by
    its square.)"""
    tiny, big = np.finfo(float).tiny, np.finfo(float).max
    with np.errstate(over="ignore", under="ignore"):
        var = s**2
        bad = ~((var**2 >= tiny) & (var**2 <= big))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"se: task {labels[i]!r}: se = {s[i]:.3g}; the weights 1/se^2 and their "
                "squares (in the tau^2 estimators) would leave the float64 range (se must "
                "lie within 1e-77 to 1e77); rescale y and se by a common factor"
            )
        spread = np.max(est) - np.min(est)
        dev = np.where(np.isfinite(spread), spread, np.inf) / s
        bad = ~np.isfinite(dev**2 * est.size) | ~np.isfinite(spread**2 * est.size)
    if bad.any():
        i = int(np.argmax(np.abs(est - np.median(est))))
        raise ValueError(
            f"y: task {labels[i]!r}: y = {est[i]:.3g}; the estimates span {spread:.3g}, "
            f"which is {np.max(dev):.3g} standard errors, and its square (in the Q statistic "
            "and the tau^2 estimators) overflows float64; rescale y and se by a common "
            "factor or check the data"
        )


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, int | float | np.integer | np.floating):
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: must lie in (0, 1), got {level}")
    return level


# --------------------------------------------------------------------------- tau^2 (batched)
def _wmean(y, w):
    return np.sum(w * y, axis=-1) / np.sum(w, axis=-1)


def _qgen(y, v, tau2):
    """Generalised Q: ``sum w (y - mu_w)^2`` with ``w = 1/(v + tau2)``; batched."""
    w = 1.0 / (v + tau2[..., None])
    mu = _wmean(y, w)
    return np.sum(w * (y - mu[..., None]) ** 2, axis=-1)


def _cochran_q(y, v):
    return _qgen(y, v, np.zeros(y.shape[:-1]))


def _tau2_dl(y, v):
    k = y.shape[-1]
    w = 1.0 / v
    c = np.sum(w, axis=-1) - np.sum(w**2, axis=-1) / np.sum(w, axis=-1)
    return np.maximum(0.0, (_cochran_q(y, v) - (k - 1)) / c)


def _tau2_he(y, v):
    k = y.shape[-1]
    ss = np.sum((y - y.mean(axis=-1, keepdims=True)) ** 2, axis=-1)
    return np.maximum(0.0, ss / (k - 1) - v.mean(axis=-1))


def _tau2_sj(y, v):
    k = y.shape[-1]
    tau0 = np.sum((y - y.mean(axis=-1, keepdims=True)) ** 2, axis=-1) / k
    return tau0 * _qgen(y, v, tau0) / (k - 1)


def _solve_decreasing(fn, target, lo, hi, iters=200):
    """Batched bisection for ``fn(x) = target`` with ``fn`` decreasing on ``[lo, hi]``."""
    lo, hi = np.array(lo, dtype=float), np.array(hi, dtype=float)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        above = fn(mid) > target
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
        if np.all(hi - lo <= 1e-15 * np.maximum(hi, 1e-300)):
            break
    return 0.5 * (lo + hi)


def _tau2_pm(y, v):
    k = y.shape[-1]
    q0 = _cochran_q(y, v)
    ss = np.sum((y - y.mean(axis=-1, keepdims=True)) ** 2, axis=-1)
    # Q(tau2) <= ss / tau2, so Q(ss / (k-1)) <= k - 1: a valid upper bracket
    hi = np.maximum(ss / (k - 1), 1e-300)
    root = _solve_decreasing(lambda t: _qgen(y, v, t), k - 1.0, np.zeros_like(hi), hi)
    return np.where(q0 <= k - 1, 0.0, root)


def _loglik(y, v, tau2, reml):
    w = 1.0 / (v + tau2[..., None])
    mu = _wmean(y, w)
    out = -0.5 * np.sum(np.log(v + tau2[..., None]) + w * (y - mu[..., None]) ** 2, axis=-1)
    if reml:
        out = out - 0.5 * np.log(np.sum(w, axis=-1))
    return out


def _tau2_ml(y, v, reml, max_iter=1000, tol=1e-13):
    """Fisher scoring from the DL estimate, truncated at 0, with step halving whenever the
    (restricted) log-likelihood would decrease."""
    tau2 = _tau2_dl(y, v)
    ll = _loglik(y, v, tau2, reml)
    scale = np.maximum(np.mean(v, axis=-1), 1e-300)
    for _ in range(max_iter):
        w = 1.0 / (v + tau2[..., None])
        sw, sw2 = np.sum(w, axis=-1), np.sum(w**2, axis=-1)
        mu = np.sum(w * y, axis=-1) / sw
        r2 = (y - mu[..., None]) ** 2
        if reml:
            trp = sw - sw2 / sw
            score = 0.5 * (np.sum(w**2 * r2, axis=-1) - trp)
            info = 0.5 * (sw2 - 2 * np.sum(w**3, axis=-1) / sw + sw2**2 / sw**2)
        else:
            score = 0.5 * (np.sum(w**2 * r2, axis=-1) - sw)
            info = 0.5 * sw2
        step = score / info
        new = np.maximum(0.0, tau2 + step)
        new_ll = _loglik(y, v, new, reml)
        for _ in range(60):
            worse = new_ll < ll - 1e-15 * np.abs(ll)
            if not worse.any():
                break
            step = np.where(worse, 0.5 * step, step)
            new = np.where(worse, np.maximum(0.0, tau2 + step), new)
            new_ll = np.where(worse, _loglik(y, v, new, reml), new_ll)
        done = np.abs(new - tau2) <= tol * np.maximum(new, scale)
        tau2, ll = new, new_ll
        if done.all():
            break
    return tau2


def _tau2_eb(y, v, max_iter=10000, tol=1e-13):
    """Morris's empirical Bayes fixed-point iteration (metafor ``method="EB"``), from DL."""
    k = y.shape[-1]
    tau2 = _tau2_dl(y, v)
    scale = np.maximum(np.mean(v, axis=-1), 1e-300)
    for _ in range(max_iter):
        w = 1.0 / (v + tau2[..., None])
        mu = _wmean(y, w)
        new = np.sum(w * (k / (k - 1) * (y - mu[..., None]) ** 2 - v), axis=-1) / np.sum(w, axis=-1)
        new = np.maximum(0.0, new)
        done = np.abs(new - tau2) <= tol * np.maximum(new, scale)
        tau2 = new
        if done.all():
            break
    return tau2


def _tau2(y, v, method):
    if method == "DL":
        return _tau2_dl(y, v)
    if method == "HE":
        return _tau2_he(y, v)
    if method == "SJ":
        return _tau2_sj(y, v)
    if method == "PM":
        return _tau2_pm(y, v)
    if method == "EB":
        return _tau2_eb(y, v)
    if method in ("ML", "REML"):
        return _tau2_ml(y, v, reml=method == "REML")
    raise ValueError(f"method: must be one of {TAU2_METHODS}, got {method!r}")


def tau2_estimate(y: Any, se: Any, method: str = "REML") -> np.ndarray:
    """Between-task variance ``tau^2`` by ``method`` (see the module table), batched.

    ``y``, ``se``: arrays ``(..., k)`` (leading axes are independent meta-analyses, e.g.
    simulation replications); returns ``(...)``.

    >>> import bayesmeta as bm
    >>> # DerSimonian-Laird: (Q - (k - 1)) / (sum w - sum w^2 / sum w) = (8 - 2) / (3 - 1)
    >>> round(float(bm.estimators.tau2_estimate([0.0, 2.0, 4.0], [1.0] * 3, method="DL")), 4)
    3.0
    """
    if method not in TAU2_METHODS:
        raise ValueError(f"method: must be one of {TAU2_METHODS}, got {method!r}")
    y, se = as_real_array("y", y), as_real_array("se", se)
    if y.ndim == 0 or y.shape[-1] < 2:
        raise ValueError(f"y: tau^2 needs at least 2 tasks, got shape {y.shape}")
    try:
        se = np.broadcast_to(se, y.shape)
    except ValueError:
        raise ValueError(f"se: shape {se.shape} does not fit y's {y.shape}") from None
    bad = ~np.isfinite(y)
    if bad.any():
        where = np.unravel_index(int(np.flatnonzero(bad)[0]), y.shape)
        raise ValueError(f"y: non-finite value at index {tuple(map(int, where))}")
    bad = ~(np.isfinite(se) & (se > 0))
    if bad.any():
        where = np.unravel_index(int(np.flatnonzero(bad)[0]), y.shape)
        raise ValueError(
            f"se: must be finite and positive, got {se[where]} at index {tuple(map(int, where))}"
        )
    v = se**2
    return _tau2(y, v, method)


def _re_batch(y, v, method, knapp_hartung, level, prediction="t", tau2=None):
    """The random-effects fit for ``(..., k)`` arrays: a dict of arrays."""
    k = y.shape[-1]
    if tau2 is None:
        tau2 = _tau2(y, v, method)
    w = 1.0 / (v + tau2[..., None])
    sw = np.sum(w, axis=-1)
    mu = np.sum(w * y, axis=-1) / sw
    alpha = 1.0 - level
    if knapp_hartung:
        qkh = np.sum(w * (y - mu[..., None]) ** 2, axis=-1) / (k - 1)
        se = np.sqrt(qkh / sw)
        df = k - 1
        crit = t_ppf(1 - alpha / 2, df)
    else:
        se = np.sqrt(1.0 / sw)
        df = math.inf
        crit = float(ndtri(1 - alpha / 2))
    if prediction == "t":
        pi_df = k - 2
        pi_crit = t_ppf(1 - alpha / 2, pi_df) if pi_df >= 1 else math.nan
    else:
        pi_df = math.inf
        pi_crit = float(ndtri(1 - alpha / 2))
    half_pi = pi_crit * np.sqrt(se**2 + tau2)
    lam = tau2[..., None] / (tau2[..., None] + v)
    blups = lam * y + (1 - lam) * mu[..., None]
    blup_se = np.sqrt(lam * v + (1 - lam) ** 2 * se[..., None] ** 2)
    return dict(
        tau2=tau2,
        mu=mu,
        se=se,
        df=df,
        crit=crit,
        ci_low=mu - crit * se,
        ci_high=mu + crit * se,
        pi_low=mu - half_pi,
        pi_high=mu + half_pi,
        pi_df=pi_df,
        blups=blups,
        blup_se=blup_se,
        weights=w / sw[..., None],
    )


def _typical_variance(v):
    w = 1.0 / v
    k = v.shape[-1]
    return (k - 1) * np.sum(w, axis=-1) / (np.sum(w, axis=-1) ** 2 - np.sum(w**2, axis=-1))


def _q_profile(y, v, level):
    """Q-profile interval for tau^2 (Viechtbauer 2007) for one meta-analysis."""
    k = y.shape[-1]
    alpha = 1 - level
    ss = float(np.sum((y - y.mean()) ** 2))
    q0 = float(_cochran_q(y, v))
    out = []
    for target in (chi2_ppf(1 - alpha / 2, k - 1), chi2_ppf(alpha / 2, k - 1)):
        if q0 <= target:
            out.append(0.0)
            continue
        hi = max(ss / target, 1e-300)
        while float(_qgen(y, v, np.asarray(hi))) > target:
            hi *= 2.0
        out.append(float(_solve_decreasing(lambda t: _qgen(y, v, t), target, 0.0, hi)))
    return out[0], out[1]


# --------------------------------------------------------------------------- meta-regression
class _WLS(NamedTuple):
    """The weighted least-squares fit of ``y`` on ``x`` with ``w = 1 / (v + tau2)``."""

    w: np.ndarray  # shape=(k,): the weights 1 / (v + tau2)
    beta: np.ndarray  # shape=(p,): (X'WX)^-1 X'W y
    cov: np.ndarray  # shape=(p, p): (X'WX)^-1
    resid: np.ndarray  # shape=(k,): y - X beta
    q: float  # y'Py = sum w (y - X beta)^2 (QE at tau2 = 0)
    pmat: np.ndarray  # shape=(k, k): P = W - W X (X'WX)^-1 X'W
    logdet: float  # log det(X'WX)


def _wls(y, v, x, tau2) -> _WLS:
    # QR of sqrt(W) X = Q R: (X'WX)^-1 = R^-1 R^-T and W X (X'WX)^-1 X'W = D Q Q' D with
    # D = diag(sqrt(w)), without forming X'WX (moderators such as a year are badly scaled)
    w = 1.0 / (v + tau2)
    sw = np.sqrt(w)
    qmat, rmat = np.linalg.qr(sw[:, None] * x)
    rinv = np.linalg.inv(rmat)
    beta = rinv @ (qmat.T @ (sw * y))
    resid = y - x @ beta
    dq = sw[:, None] * qmat
    return _WLS(
        w=w,
        beta=beta,
        cov=rinv @ rinv.T,
        resid=resid,
        q=float(np.sum(w * resid**2)),
        pmat=np.diag(w) - dq @ dq.T,
        logdet=float(2.0 * np.sum(np.log(np.abs(np.diag(rmat))))),
    )


def _mr_qe(y, v, x, tau2) -> float:
    return _wls(y, v, x, tau2).q


def _mr_loglik(y, v, x, tau2, reml) -> float:
    fit = _wls(y, v, x, tau2)
    out = -0.5 * (float(np.sum(np.log(v + tau2))) + fit.q)
    return out - 0.5 * fit.logdet if reml else out


def _mr_tau2_dl(y, v, x) -> float:
    fit = _wls(y, v, x, 0.0)
    k, p = x.shape
    return max(0.0, (fit.q - (k - p)) / float(np.trace(fit.pmat)))


def _mr_tau2_he(y, v, x) -> float:
    # ordinary least squares: RSS = y'(I - H)y, E[RSS] = tr((I - H) V) + (k - p) tau^2
    k, p = x.shape
    ols = _wls(y, np.ones(k), x, 0.0)
    # with unit weights pmat = I - H, and tr((I - H) V) = sum (1 - h_ii) v_i
    return max(0.0, (ols.q - float(np.sum(np.diag(ols.pmat) * v))) / (k - p))


def _mr_tau2_sj(y, v, x) -> float:
    k, p = x.shape
    tau0 = float(np.sum((y - y.mean()) ** 2)) / k
    return tau0 * _mr_qe(y, v, x, tau0) / (k - p)


def _mr_tau2_qe_root(y, v, x) -> float:
    """The root of ``QE(tau2) = k - p`` (0 when ``QE(0) <= k - p``): Paule-Mandel, and the
    fixed point of Morris's empirical Bayes iteration."""
    k, p = x.shape
    if _mr_qe(y, v, x, 0.0) <= k - p:
        return 0.0
    # QE(t) <= sum (y - X b_OLS)^2 / t, so QE(RSS_OLS / (k - p)) <= k - p: an upper bracket
    rss = _mr_qe(y, np.ones(k), x, 0.0)
    hi = max(rss / (k - p), 1e-300)
    return float(_solve_decreasing(lambda t: _mr_qe(y, v, x, float(t)), k - p, 0.0, hi))


def _mr_tau2_ml(y, v, x, reml, max_iter=1000, tol=1e-13) -> float:
    """Fisher scoring from the DL estimate, truncated at 0, with step halving whenever the
    (restricted) log-likelihood would decrease; tau^2 = 0 wins if its likelihood is higher."""
    tau2 = _mr_tau2_dl(y, v, x)
    fit = _wls(y, v, x, tau2)
    ll = _mr_loglik(y, v, x, tau2, reml)
    scale = max(float(np.mean(v)), 1e-300)
    for _ in range(max_iter):
        py = fit.w * fit.resid  # P y
        if reml:
            step = (py @ py - np.trace(fit.pmat)) / np.sum(fit.pmat**2)
        else:
            step = (py @ py - np.sum(fit.w)) / np.sum(fit.w**2)
        new = max(0.0, tau2 + float(step))
        new_ll = _mr_loglik(y, v, x, new, reml)
        for _ in range(60):
            # a decrease within rounding is no overshoot: near the maximum the likelihood
            # is flat to ~1e-16 relative, and halving there would stop the iteration early
            if new_ll >= ll - 1e-12 * max(1.0, abs(ll)):
                break
            step = 0.5 * step
            new = max(0.0, tau2 + float(step))
            new_ll = _mr_loglik(y, v, x, new, reml)
        done = abs(new - tau2) <= tol * max(new, scale)
        tau2, ll = new, new_ll
        fit = _wls(y, v, x, tau2)
        if done:
            break
    if tau2 > 0.0 and _mr_loglik(y, v, x, 0.0, reml) > ll:
        tau2 = 0.0
    return tau2


def _mr_tau2(y, v, x, method) -> float:
    """Residual tau^2 of the meta-regression ``y ~ N(X b, v + tau^2)`` by ``method``."""
    if method == "DL":
        return _mr_tau2_dl(y, v, x)
    if method == "HE":
        return _mr_tau2_he(y, v, x)
    if method == "SJ":
        return _mr_tau2_sj(y, v, x)
    if method in ("PM", "EB"):
        return _mr_tau2_qe_root(y, v, x)
    if method in ("ML", "REML"):
        return _mr_tau2_ml(y, v, x, reml=method == "REML")
    raise ValueError(f"method: {method!r} is not defined for meta-regression")


def _moderators(mods, mod_names, y, labels, k) -> tuple[np.ndarray, tuple[str, ...]]:
    """The ``(k, q)`` moderator matrix and its column names from ``mods`` (an array, a dict
    name -> column, or a list of the names of a TaskSet's task covariates)."""
    if hasattr(mods, "columns") and not isinstance(mods, np.ndarray):
        mods = {str(col): np.asarray(mods[col]) for col in mods.columns}  # a DataFrame
    if isinstance(mods, dict):
        if mod_names is not None:
            raise ValueError("mod_names: not with a dict of moderators (its keys are the names)")
        names = [str(name) for name in mods]
        columns = list(mods.values())
    elif isinstance(mods, list | tuple) and mods and all(isinstance(m, str) for m in mods):
        task_x = getattr(y, "task_x", None) if isinstance(y, TaskSet) else None
        if task_x is None:
            raise ValueError(
                "mods: column names need a TaskSet with task covariates (task_x); "
                "pass the moderator values instead"
            )
        task_x = np.asarray(task_x, dtype=float).reshape(k, -1)
        have = getattr(y, "task_x_names", None)
        have = [f"z{j}" for j in range(task_x.shape[1])] if have is None else list(have)
        for name in mods:
            if name not in have:
                raise ValueError(
                    f"mods: column {name!r} not among the task covariates "
                    f"(columns: {', '.join(have) or 'none'})"
                )
        if mod_names is not None:
            raise ValueError("mod_names: not with column names in mods (they are the names)")
        names = list(mods)
        columns = [task_x[:, have.index(name)] for name in mods]
    else:
        try:
            z = np.asarray(mods, dtype=float)
        except (TypeError, ValueError) as err:
            raise ValueError(f"mods: could not convert to a float array ({err})") from None
        if z.ndim == 1:
            z = z[:, None]
        if z.ndim != 2 or z.shape[1] == 0:
            raise ValueError(f"mods: expected shape (k,) or (k, q), got {np.shape(mods)}")
        if z.shape[0] != k:
            raise ValueError(f"mods: {z.shape[0]} rows for {k} tasks")
        names = (
            [f"mod{j}" for j in range(z.shape[1])]
            if mod_names is None
            else [str(n) for n in mod_names]
        )
        if len(names) != z.shape[1]:
            raise ValueError(f"mod_names: {len(names)} names for {z.shape[1]} moderator columns")
        columns = list(z.T)
    if not columns:
        raise ValueError("mods: no moderator columns given")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"mods: column {dup!r} given twice")
    if "intrcpt" in names:
        raise ValueError("mods: 'intrcpt' is reserved for the intercept (added automatically)")
    out = np.empty((k, len(columns)))
    for j, (name, col) in enumerate(zip(names, columns, strict=True)):
        try:
            col = np.asarray(col, dtype=float)
        except (TypeError, ValueError) as err:
            raise ValueError(f"mods: column {name!r} is not numeric ({err})") from None
        if col.ndim != 1 or col.shape[0] != k:
            raise ValueError(
                f"mods: column {name!r} has shape {col.shape}; expected ({k},), one per task"
            )
        bad = ~np.isfinite(col)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"mods: column {name!r} has the non-finite value {col[row]} at task "
                f"{labels[row]!r} (row {row})"
            )
        out[:, j] = col
    return out, tuple(names)


def _design(z, names, k) -> np.ndarray:
    """``[1, z]`` after checking that it has full column rank and ``k > p``."""
    x = np.column_stack([np.ones(k), z])
    p = x.shape[1]
    for j, name in enumerate(names):
        if np.ptp(z[:, j]) == 0:
            raise ValueError(
                f"mods: column {name!r} is constant ({z[0, j]:g}), which is collinear with "
                "the intercept (added automatically)"
            )
    if k <= p:
        raise ValueError(
            f"mods: {k} tasks for {p} coefficients (intercept + {p - 1} moderators); "
            "a meta-regression needs more tasks than coefficients"
        )
    # rank on unit-norm columns, so that a moderator's units do not decide
    unit = x / np.linalg.norm(x, axis=0)
    for j in range(2, p + 1):
        if np.linalg.matrix_rank(unit[:, :j]) < j:
            before = ", ".join(repr(n) for n in names[: j - 2])
            raise ValueError(
                f"mods: column {names[j - 2]!r} is a linear combination of the intercept"
                + (f" and {before}" if before else "")
                + "; the design is rank-deficient"
            )
    return x


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class PooledEstimate:
    """One estimate of the population centre with its interval.

    Fields: ``method``, ``mu``, ``se``, ``ci_low``, ``ci_high``, ``level``, ``df`` (``inf``
    for a normal interval), ``k`` (tasks), ``weights`` (``(k,)``, summing to 1).

    >>> import bayesmeta as bm
    >>> res = bm.estimators.complete_pooling([1.0, 3.0], [1.0, 3.0])
    >>> isinstance(res, bm.estimators.PooledEstimate), [round(float(w), 4) for w in res.weights]
    (True, [0.9, 0.1])
    """

    method: str
    mu: float
    se: float
    ci_low: float
    ci_high: float
    level: float
    df: float
    k: int
    weights: np.ndarray = field(repr=False)

    def __str__(self) -> str:
        pct = f"{100 * self.level:g}%"
        return (
            f"{self.method} (k = {self.k}): mu = {self.mu:.4f} (se {self.se:.4f}), "
            f"{pct} CI [{self.ci_low:.4f}, {self.ci_high:.4f}]"
        )


@dataclass(frozen=True)
class PerTaskEstimates:
    """One estimate per task: ``labels``, ``estimate``, ``se``, ``ci_low``, ``ci_high``
    (each ``(k,)``; ``nan`` where an estimator has no standard error), ``method``,
    ``level`` and ``shrinkage`` (the factor toward the common target; 0 for none).

    >>> import bayesmeta as bm
    >>> res = bm.estimators.no_pooling([1.0, 3.0], [1.0, 2.0], labels=["a", "b"])
    >>> isinstance(res, bm.estimators.PerTaskEstimates), list(res.labels), res.estimate.tolist()
    (True, ['a', 'b'], [1.0, 3.0])
    """

    method: str
    labels: tuple[str, ...]
    estimate: np.ndarray
    se: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    level: float
    shrinkage: float | np.ndarray = 0.0

    def __str__(self) -> str:
        lines = [
            f"{self.method} (k = {len(self.labels)})",
            f"{'task':>16} {'estimate':>10} {'se':>10} {'ci_low':>10} {'ci_high':>10}",
        ]
        for i, lab in enumerate(self.labels):
            lines.append(
                f"{lab[:16]:>16} {self.estimate[i]:10.4f} {self.se[i]:10.4f} "
                f"{self.ci_low[i]:10.4f} {self.ci_high[i]:10.4f}"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class MetaAnalysis:
    """A fixed- or random-effects meta-analysis (field names follow metafor's output).

    Fields:
      method            "FE" or the tau^2 estimator ("DL", "REML", ...)
      k                 number of tasks
      mu, se            pooled estimate and its standard error (Knapp-Hartung when chosen)
      z, p              test statistic of mu = 0 and its two-sided p-value (t with ``df``)
      ci_low, ci_high   confidence interval at ``level``
      df                ``inf`` (normal) or ``k - 1`` (Knapp-Hartung)
      tau2, tau         between-task variance and sd; ``tau2_ci`` its Q-profile interval
      i2, h2            I^2 (percent) and H^2
      q, q_df, q_p      Cochran's Q, its df and p-value
      pi_low, pi_high   prediction interval for a new task's theta; ``pi_df`` its t df
      blups, blup_se    per-task shrunken estimates (best linear unbiased predictions)
      weights           (k,) weights of the tasks in mu, summing to 1
      y, y_se           (k,) the per-task estimates and standard errors analysed
      labels, level, knapp_hartung, prediction

    >>> import bayesmeta as bm
    >>> res = bm.estimators.random_effects(bm.datasets.bcg(), method="DL")
    >>> isinstance(res, bm.estimators.MetaAnalysis), res.method, res.k
    (True, 'DL', 13)
    """

    method: str
    k: int
    mu: float
    se: float
    z: float
    p: float
    ci_low: float
    ci_high: float
    df: float
    tau2: float
    tau: float
    tau2_ci: tuple[float, float]
    i2: float
    h2: float
    q: float
    q_df: int
    q_p: float
    pi_low: float
    pi_high: float
    pi_df: float
    blups: np.ndarray
    blup_se: np.ndarray
    weights: np.ndarray
    y: np.ndarray
    y_se: np.ndarray
    labels: tuple[str, ...]
    level: float
    knapp_hartung: bool
    prediction: str

    def to_dict(self) -> dict:
        """Plain Python types (arrays -> lists; inf/nan -> None), ready for ``json.dumps``."""
        return {key: _plain(val) for key, val in asdict(self).items()}

    def __str__(self) -> str:
        pct = f"{100 * self.level:g}%"
        kind = (
            "Fixed-effect model"
            if self.method == "FE"
            else f"Random-effects model (tau^2 estimator: {self.method})"
        )
        ci_kind = "t" if math.isfinite(self.df) else "z"
        lines = [f"{kind}, k = {self.k}", ""]
        if self.method != "FE":
            lines += [
                f"tau^2 = {self.tau2:.4f} ({pct} Q-profile CI [{self.tau2_ci[0]:.4f}, "
                f"{self.tau2_ci[1]:.4f}]), tau = {self.tau:.4f}"
            ]
        lines += [
            f"I^2 = {self.i2:.2f}%, H^2 = {self.h2:.2f}",
            f"Q(df = {self.q_df}) = {self.q:.4f}, p = {_fmt_p(self.q_p)}",
            "",
            f"{'estimate':>10} {'se':>10} {ci_kind + 'val':>10} {'pval':>10} "
            f"{'ci_low':>10} {'ci_high':>10}",
            f"{self.mu:10.4f} {self.se:10.4f} {self.z:10.4f} {_fmt_p(self.p):>10} "
            f"{self.ci_low:10.4f} {self.ci_high:10.4f}",
        ]
        if self.knapp_hartung:
            lines.append(f"(Knapp-Hartung intervals, t with {self.df:g} df)")
        if self.method != "FE":
            dist = f"t, {self.pi_df:g} df" if self.prediction == "t" else "z"
            lines.append(
                f"{pct} prediction interval for a new task: [{self.pi_low:.4f}, "
                f"{self.pi_high:.4f}] ({dist})"
            )
        lines += ["", f"{'task':>24} {'estimate':>10} {'weight %':>9} {'blup':>10} {'blup_se':>9}"]
        for i, lab in enumerate(self.labels):
            lines.append(
                f"{lab[:24]:>24} {self.y[i]:10.4f} {100 * self.weights[i]:9.2f} "
                f"{self.blups[i]:10.4f} {self.blup_se[i]:9.4f}"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class MetaRegressionPrediction:
    """Predictions of a :class:`MetaRegression` at new moderator values.

    Fields: ``x`` (``(m, p)`` design rows, the intercept column first), ``pred``, ``se``,
    ``ci_low``, ``ci_high`` (confidence interval of ``x'b``), ``pi_low``, ``pi_high``
    (prediction interval of a new task's effect, ``pred +- crit sqrt(se^2 + tau^2)``), each
    ``(m,)``; ``level``, ``df`` (of the confidence interval), ``pi_df`` (of the prediction
    interval; ``inf`` for z) and ``coef_names``.

    >>> import bayesmeta as bm
    >>> res = bm.estimators.random_effects(bm.datasets.bcg(), mods=["ablat"])
    >>> pred = res.predict({"ablat": [10.0, 50.0]})
    >>> isinstance(pred, bm.estimators.MetaRegressionPrediction), pred.pred.shape
    (True, (2,))
    """

    x: np.ndarray
    pred: np.ndarray
    se: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    pi_low: np.ndarray
    pi_high: np.ndarray
    level: float
    df: float
    pi_df: float
    coef_names: tuple[str, ...]

    def to_dict(self) -> dict:
        """Plain Python types (arrays -> lists; inf/nan -> None), ready for ``json.dumps``."""
        return {key: _plain(val) for key, val in asdict(self).items()}

    def __str__(self) -> str:
        names = self.coef_names[1:]
        head = [*names, "pred", "se", "ci.lb", "ci.ub", "pi.lb", "pi.ub"]
        rows = [
            [f"{v:g}" for v in self.x[i, 1:]]
            + [
                f"{val:.4f}"
                for val in (
                    self.pred[i],
                    self.se[i],
                    self.ci_low[i],
                    self.ci_high[i],
                    self.pi_low[i],
                    self.pi_high[i],
                )
            ]
            for i in range(self.pred.shape[0])
        ]
        return _table(head, rows, [str(i + 1) for i in range(len(rows))])


@dataclass(frozen=True)
class MetaRegression:
    """A mixed-effects meta-regression ``y_i ~ N(x_i'b, v_i + tau^2)`` (field names follow
    metafor's ``rma(yi, vi, mods = ...)`` output; printing gives metafor's table).

    Fields:
      method              the tau^2 estimator ("DL", "REML", ...)
      k, num_coef         numbers of tasks and of coefficients ``p`` (intercept + moderators)
      coef_names          ``("intrcpt", *moderator names)``
      coef, se            (p,) estimates and standard errors (Knapp-Hartung when chosen)
      z, p                (p,) Wald statistics and two-sided p-values (t with ``df``)
      ci_low, ci_high     (p,) confidence intervals at ``level``
      df                  ``inf`` (normal) or ``k - p`` (Knapp-Hartung)
      vcov                (p, p) covariance matrix of ``coef``
      tau2, tau           residual between-task variance and sd
      tau2_se             se of ``tau2`` from the Fisher information (ML, REML; else nan)
      i2, h2              residual I^2 (percent) and H^2
      r2                  percent of the heterogeneity accounted for by the moderators;
                          ``tau2_re`` is tau^2 of the model without them (same method)
      qe, qe_df, qe_p     test for residual heterogeneity (chi-square on ``k - p`` df)
      qm, qm_df, qm_p     omnibus test of the moderators: chi-square on ``qm_df = p - 1``;
                          with Knapp-Hartung ``qm`` is F on (``qm_df``, ``qm_df2``) df
      qm_df2              ``k - p`` with Knapp-Hartung, else ``inf``
      pi_df               df of the prediction intervals of :meth:`predict` (``inf``: z)
      x                   (k, p) design matrix (the intercept column first)
      y, y_se             (k,) the per-task estimates and standard errors analysed
      labels, level, knapp_hartung, prediction

    >>> import numpy as np, bayesmeta as bm
    >>> res = bm.estimators.random_effects(bm.datasets.bcg(), mods=["ablat"])  # REML
    >>> res.coef_names, [round(float(c), 4) for c in res.coef]  # metafor: 0.2515, -0.0291
    (('intrcpt', 'ablat'), [0.2515, -0.0291])
    """

    method: str
    k: int
    num_coef: int
    coef_names: tuple[str, ...]
    coef: np.ndarray
    se: np.ndarray
    z: np.ndarray
    p: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    df: float
    vcov: np.ndarray
    tau2: float
    tau: float
    tau2_se: float
    i2: float
    h2: float
    r2: float
    tau2_re: float
    qe: float
    qe_df: int
    qe_p: float
    qm: float
    qm_df: int
    qm_df2: float
    qm_p: float
    pi_df: float
    x: np.ndarray
    y: np.ndarray
    y_se: np.ndarray
    labels: tuple[str, ...]
    level: float
    knapp_hartung: bool
    prediction: str

    def predict(self, new_mods: Any) -> MetaRegressionPrediction:
        """Predicted effect ``x'b`` at new moderator values, with intervals.

        ``new_mods``: a dict name -> values, or an array ``(m, q)``; with one moderator
        also a scalar or ``(m,)``, with ``q`` moderators also ``(q,)`` (one point). The
        intercept column is added. The confidence interval is ``pred +- crit se`` (z, or t
        on ``k - p`` df with Knapp-Hartung); the prediction interval is ``pred +- c
        sqrt(se^2 + tau^2)`` with ``c`` from t on ``k - p - 1`` df for ``prediction="t"``
        (Riley et al. 2011; metafor's ``predtype="Riley"``; nan when ``k - p - 1 < 1``) or
        the normal quantile for ``prediction="z"`` (metafor's default).
        """
        x = _new_design(new_mods, self.coef_names[1:])
        alpha = 1.0 - self.level
        crit = (
            t_ppf(1 - alpha / 2, self.df) if math.isfinite(self.df) else float(ndtri(1 - alpha / 2))
        )
        pred = x @ self.coef
        se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", x, self.vcov, x), 0.0))
        pi_crit = _pi_crit(self.pi_df, alpha)
        half_pi = pi_crit * np.sqrt(se**2 + self.tau2)
        return MetaRegressionPrediction(
            x=x,
            pred=pred,
            se=se,
            ci_low=pred - crit * se,
            ci_high=pred + crit * se,
            pi_low=pred - half_pi,
            pi_high=pred + half_pi,
            level=self.level,
            df=self.df,
            pi_df=self.pi_df,
            coef_names=self.coef_names,
        )

    def to_dict(self) -> dict:
        """Plain Python types (arrays -> lists; inf/nan -> None), ready for ``json.dumps``."""
        return {key: _plain(val) for key, val in asdict(self).items()}

    def __str__(self) -> str:
        kh = self.knapp_hartung
        tau2 = f"{self.tau2:.4f}"
        if math.isfinite(self.tau2_se):
            tau2 += f" (SE = {self.tau2_se:.4f})"
        stats = [
            ("tau^2 (estimated amount of residual heterogeneity):", tau2),
            ("tau (square root of estimated tau^2 value):", f"{self.tau:.4f}"),
            ("I^2 (residual heterogeneity / unaccounted variability):", f"{self.i2:.2f}%"),
            ("H^2 (unaccounted variability / sampling variability):", f"{self.h2:.2f}"),
            ("R^2 (amount of heterogeneity accounted for):", f"{self.r2:.2f}%"),
        ]
        width = max(len(label) for label, _ in stats) + 1
        if kh:
            qm = f"F(df1 = {self.qm_df}, df2 = {self.qm_df2:g}) = {self.qm:.4f}"
        else:
            qm = f"QM(df = {self.qm_df}) = {self.qm:.4f}"
        lines = [
            f"Mixed-Effects Model (k = {self.k}; tau^2 estimator: {self.method})",
            "",
            *(label.ljust(width) + value for label, value in stats),
            "",
            "Test for Residual Heterogeneity:",
            f"QE(df = {self.qe_df}) = {self.qe:.4f}, p-val {_fmt_pval(self.qe_p)}",
            "",
            f"Test of Moderators (coefficients 2:{self.num_coef}):",
            f"{qm}, p-val {_fmt_pval(self.qm_p)}",
            "",
            "Model Results:",
            "",
        ]
        head = ["estimate", "se", "tval" if kh else "zval", *(["df"] if kh else [])]
        head += ["pval", "ci.lb", "ci.ub", ""]
        rows = []
        for j in range(self.num_coef):
            row = [f"{self.coef[j]:.4f}", f"{self.se[j]:.4f}", f"{self.z[j]:.4f}"]
            row += [f"{self.df:g}"] if kh else []
            row += [_fmt_p(self.p[j]), f"{self.ci_low[j]:.4f}", f"{self.ci_high[j]:.4f}"]
            rows.append([*row, _stars(self.p[j]).ljust(3)])
        lines.append(_table(head, rows, list(self.coef_names)))
        lines += [
            "",
            "---",
            "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1",
        ]
        if self.level != 0.95:
            lines.append(f"(ci.lb, ci.ub: {100 * self.level:g}% confidence intervals)")
        return "\n".join(lines)


def _pi_crit(pi_df: float, alpha: float) -> float:
    if math.isnan(pi_df):
        return math.nan
    return t_ppf(1 - alpha / 2, pi_df) if math.isfinite(pi_df) else float(ndtri(1 - alpha / 2))


def _new_design(new_mods: Any, names: tuple[str, ...]) -> np.ndarray:
    """``[1, z]`` for :meth:`MetaRegression.predict`, ``(m, p)``."""
    q = len(names)
    if isinstance(new_mods, dict):
        unknown = [str(n) for n in new_mods if n not in names]
        missing = [n for n in names if n not in new_mods]
        if unknown or missing:
            raise ValueError(
                f"new_mods: the moderators are {', '.join(names)}"
                + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                + (f"; missing: {', '.join(missing)}" if missing else "")
            )
        try:
            cols = [np.atleast_1d(np.asarray(new_mods[n], dtype=float)) for n in names]
            z = np.column_stack(np.broadcast_arrays(*cols))
        except (TypeError, ValueError) as err:
            raise ValueError(f"new_mods: could not form the moderator columns ({err})") from None
    else:
        try:
            z = np.asarray(new_mods, dtype=float)
        except (TypeError, ValueError) as err:
            raise ValueError(f"new_mods: could not convert to a float array ({err})") from None
        if z.ndim == 0 and q == 1:
            z = z.reshape(1, 1)
        elif z.ndim == 1 and q == 1:
            z = z[:, None]
        elif z.ndim == 1 and z.size == q:
            z = z[None, :]
        if z.ndim != 2 or z.shape[1] != q:
            raise ValueError(
                f"new_mods: expected shape (m, {q}) for the moderators {', '.join(names)}, "
                f"got {np.shape(new_mods)}"
            )
    bad = ~np.isfinite(z)
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise ValueError(f"new_mods: non-finite value at row {row}, column {names[col]!r}")
    return np.column_stack([np.ones(z.shape[0]), z])


def _table(head: list[str], rows: list[list[str]], row_names: list[str]) -> str:
    """A right-aligned text table with left-aligned row names, two spaces between columns
    (R's ``print.data.frame(..., print.gap = 2)``)."""
    widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(head)]
    name_width = max(len(n) for n in row_names)
    out = [" " * name_width + "".join("  " + h.rjust(w) for h, w in zip(head, widths, strict=True))]
    for name, row in zip(row_names, rows, strict=True):
        cells = "".join("  " + c.rjust(w) for c, w in zip(row, widths, strict=True))
        out.append(name.ljust(name_width) + cells)
    return "\n".join(line.rstrip() for line in out)


def _stars(p: float) -> str:
    if not math.isfinite(p):
        return ""
    for cut, mark in ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, ".")):
        if p <= cut:
            return mark
    return ""


def _fmt_pval(p: float) -> str:
    """metafor's ``p-val = 0.0012`` / ``p-val < .0001``."""
    if not math.isfinite(p):
        return "= nan"
    return "< .0001" if p < 1e-4 else f"= {p:.4f}"


def _plain(value):
    """``value`` in plain Python types for JSON: arrays -> lists, inf/nan -> None."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "nan"
    return "<.0001" if p < 1e-4 else f"{p:.4f}"


# --------------------------------------------------------------------------- estimators
def complete_pooling(y: Any, se: Any = None, level: float = 0.95) -> PooledEstimate:
    """All data as one sample: the data-weighted mean.

    With estimates (arrays or ``from_estimates``) this is the inverse-variance mean
    ``sum y/s^2 / sum 1/s^2`` with se ``1/sqrt(sum 1/s^2)`` (each task's data weighted by its
    amount). With a TaskSet of raw rows it is the mean of all rows; its se treats the rows as
    one i.i.d. sample (``sd(all rows) / sqrt(N)``) or, with known noise scales, uses them
    (inverse-variance over rows). Heterogeneity between tasks is ignored, so the interval is
    too narrow when tasks differ; a large task dominates.

    >>> import bayesmeta as bm
    >>> res = bm.estimators.complete_pooling([1.0, 3.0], [1.0, 1.0])
    >>> round(res.mu, 4), round(res.se, 4)  # inverse-variance mean, 1 / sqrt(2)
    (2.0, 0.7071)
    """

    level = _check_level(level)
    z = float(ndtri(0.5 + level / 2))
    if isinstance(y, TaskSet) and not y.is_estimates:
        if se is not None:
            raise ValueError("se: give either a TaskSet or y with se, not both")
        rows = y
        counts = rows.counts.astype(float)
        if rows.noise_scale is not None:
            w = 1.0 / rows.noise_scale**2
            mu = float(np.sum(w * rows.y) / np.sum(w))
            s = float(1.0 / np.sqrt(np.sum(w)))
            weights = np.bincount(rows.task_index, weights=w, minlength=rows.num_tasks)
        else:
            if rows.num_obs < 2:
                raise ValueError("y: complete pooling of raw rows needs at least 2 rows")
            mu = float(np.mean(rows.y))
            s = float(np.std(rows.y, ddof=1) / np.sqrt(rows.num_obs))
            weights = counts
        return PooledEstimate(
            "complete pooling",
            mu,
            s,
            mu - z * s,
            mu + z * s,
            level,
            math.inf,
            rows.num_tasks,
            weights / weights.sum(),
        )
    est, s, _ = _estimates(y, se)
    w = 1.0 / s**2
    mu = float(np.sum(w * est) / np.sum(w))
    sd = float(1.0 / np.sqrt(np.sum(w)))
    return PooledEstimate(
        "complete pooling", mu, sd, mu - z * sd, mu + z * sd, level, math.inf, est.size, w / w.sum()
    )


def no_pooling(y: Any, se: Any = None, level: float = 0.95, labels: Any = None) -> PerTaskEstimates:
    """Each task on its own: ``y_i`` with normal interval ``y_i +- z s_i``.

    >>> import bayesmeta as bm
    >>> res = bm.estimators.no_pooling([1.0, 3.0], [1.0, 2.0])
    >>> [round(float(v), 2) for v in res.ci_low]  # y - 1.96 se
    [-0.96, -0.92]
    """
    level = _check_level(level)
    est, s, labels = _estimates(y, se, labels)
    z = float(ndtri(0.5 + level / 2))
    return PerTaskEstimates("no pooling", labels, est, s, est - z * s, est + z * s, level, 0.0)


def mean_of_estimates(y: Any, se: Any = None, level: float = 0.95) -> PooledEstimate:
    """The unweighted mean of per-task estimates: every task gets one vote.

    ``mu = mean(y)``; its se is ``sd(y) / sqrt(k)`` (the spread of the estimates themselves,
    which contains both within-task noise and between-task heterogeneity), with a t interval
    on ``k - 1`` df. ``se`` is needed only to accept the same inputs as the other
    estimators (and to reduce a TaskSet). Needs ``k >= 2``.

    >>> import bayesmeta as bm
    >>> res = bm.estimators.mean_of_estimates([1.0, 3.0, 8.0], [1.0, 1.0, 1.0])
    >>> round(res.mu, 4), round(res.se, 4)  # mean 4, sd(y) / sqrt(3) = sqrt(13 / 3)
    (4.0, 2.0817)
    """
    level = _check_level(level)
    est, _, _ = _estimates(y, se)
    k = est.size
    if k < 2:
        raise ValueError("y: the mean of estimates needs at least 2 tasks")
    mu = float(est.mean())
    s = float(est.std(ddof=1) / math.sqrt(k))
    t = t_ppf(0.5 + level / 2, k - 1)
    return PooledEstimate(
        "mean of estimates",
        mu,
        s,
        mu - t * s,
        mu + t * s,
        level,
        float(k - 1),
        k,
        np.full(k, 1.0 / k),
    )


def fixed_effect(y: Any, se: Any = None, level: float = 0.95, labels: Any = None) -> MetaAnalysis:
    """Fixed-effect (common-effect) inverse-variance meta-analysis with Q, I^2, H^2.

    ``I^2 = 100 max(0, (Q - (k-1)) / Q)`` and ``H^2 = Q / (k-1)`` (Higgins & Thompson 2002).

    >>> import bayesmeta as bm
    >>> res = bm.estimators.fixed_effect([0.0, 2.0, 4.0], [1.0, 1.0, 1.0])
    >>> round(res.mu, 4), round(res.q, 4), round(res.i2, 4), round(res.h2, 4)  # Q = 4 + 0 + 4
    (2.0, 8.0, 75.0, 4.0)
    """
    level = _check_level(level)
    est, s, labels = _estimates(y, se, labels)
    k = est.size
    if k < 2:
        raise ValueError("y: a meta-analysis needs at least 2 tasks")
    v = s**2
    fit = _re_batch(est, v, "FE", False, level, prediction="z", tau2=np.asarray(0.0))
    q = float(_cochran_q(est, v))
    i2 = 100.0 * max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
    zval = float(fit["mu"] / fit["se"])
    res = MetaAnalysis(
        method="FE",
        k=k,
        mu=float(fit["mu"]),
        se=float(fit["se"]),
        z=zval,
        p=float(2 * ndtr(-abs(zval))),
        ci_low=float(fit["ci_low"]),
        ci_high=float(fit["ci_high"]),
        df=math.inf,
        tau2=0.0,
        tau=0.0,
        tau2_ci=(0.0, 0.0),
        i2=i2,
        h2=q / (k - 1),
        q=q,
        q_df=k - 1,
        q_p=chi2_sf(q, k - 1),
        pi_low=float(fit["ci_low"]),
        pi_high=float(fit["ci_high"]),
        pi_df=math.inf,
        blups=est.copy(),
        blup_se=s.copy(),
        weights=fit["weights"],
        y=est,
        y_se=s,
        labels=labels,
        level=level,
        knapp_hartung=False,
        prediction="z",
    )
    return res


def random_effects(
    y: Any,
    se: Any = None,
    method: str = "REML",
    knapp_hartung: bool = False,
    level: float = 0.95,
    prediction: str = "t",
    labels: Any = None,
    mods: Any = None,
    mod_names: Any = None,
) -> MetaAnalysis | MetaRegression:
    """Random-effects meta-analysis: ``y_i ~ N(theta_i, s_i^2)``, ``theta_i ~ N(mu, tau^2)``;
    with ``mods``, the mixed-effects meta-regression ``theta_i ~ N(x_i'b, tau^2)``.

    Args:
      y: per-task estimates ``(k,)``, or a TaskSet (raw rows are reduced with
        ``per_task_estimates()``; estimates data give ``y`` and ``se`` directly).
      se: standard errors ``(k,)`` (not with a TaskSet).
      method: tau^2 estimator, one of ``TAU2_METHODS`` (see the module docstring).
      knapp_hartung: Knapp-Hartung / HKSJ standard error and t interval on ``k-1`` df
        (``k-p`` df with moderators, and an F test of the moderators).
      level: confidence level of every interval.
      prediction: ``"t"`` (default): prediction interval with ``t_{k-2}`` (Higgins,
        Thompson & Spiegelhalter 2009; needs ``k >= 3``, else nan), ``t_{k-p-1}`` with
        moderators (Riley et al. 2011); ``"z"``: metafor's default normal quantile.
      labels: task labels (default: the TaskSet's, or ``"0" .. "k-1"``).
      mods: moderators (task-level covariates) for a meta-regression: an array ``(k,)``
        or ``(k, q)``, a dict name -> column ``(k,)`` (or a pandas DataFrame, by its
        columns), or, with a TaskSet that carries
        task covariates (``task_x``), a list of their names (``task_x_names``). An
        intercept column is added; a constant or linearly dependent column is an error,
        and ``k`` must exceed ``p = q + 1``.
      mod_names: names of the columns of an array ``mods`` (default ``mod0 ..``).

    Returns:
      :class:`MetaAnalysis` (``mu``, ``se``, ``ci_low``, ``ci_high``, ``tau2``, ``i2``
      (percent), ``h2``, ``q``, ``pi_low``, ``pi_high``, ``blups``, ...); with ``mods``, a
      :class:`MetaRegression` (``coef``, ``se``, ``z``, ``p``, ``tau2``, ``qe``, ``qm``,
      ``i2``, ``h2``, ``r2``, ``predict()``, ...), printed like metafor.

    Meta-regression (``X = [1, mods]`` is ``(k, p)``, ``W = diag(1/v)``, ``W_tau =
    diag(1/(v + tau^2))``, ``P(tau^2) = W_tau - W_tau X (X'W_tau X)^-1 X'W_tau``)::

        b        = (X'W_tau X)^-1 X'W_tau y,   Cov(b) = (X'W_tau X)^-1
        QE(t)    = y'P(t)y;  QE = QE(0) on k - p df (residual heterogeneity)
        DL       tau^2 = max(0, (QE - (k-p)) / tr P(0))
        HE       tau^2 = max(0, (y'(I-H)y - tr((I-H)V)) / (k-p)),  H = X (X'X)^-1 X'
        SJ       tau0^2 = sum (y - ybar)^2 / k;  tau^2 = tau0^2 QE(tau0^2) / (k-p)
        PM, EB   QE(tau^2) = k - p (0 when QE <= k-p; the fixed point of metafor's EB)
        ML       maximises -1/2 [sum log(v + tau^2) + QE(tau^2)]
        REML     maximises the ML criterion - 1/2 log det(X'W_tau X)
        KH       Cov(b) scaled by QE(tau^2) / (k-p); t on k-p df
        QM       b_2' Cov(b)_22^-1 b_2 ~ chi2(p-1) (b_2: the moderators); KH: QM/(p-1)
                 ~ F(p-1, k-p)
        I^2      = 100 tau^2 / (s^2 + tau^2), H^2 = 1 + tau^2 / s^2, s^2 = (k-p) / tr P(0)
        R^2      = max(0, 100 (tau2_RE - tau^2) / tau2_RE), tau2_RE without moderators
                   (0 when tau2_RE = 0)

    >>> res = random_effects([0.1, 0.3, 0.35, 0.65], [0.1, 0.12, 0.1, 0.15], method="PM")
    >>> res.pi_low < res.ci_low <= res.mu <= res.ci_high < res.pi_high
    True
    >>> reg = random_effects(
    ...     [0.1, 0.3, 0.35, 0.65, 0.5], [0.1, 0.12, 0.1, 0.15, 0.1],
    ...     mods={"dose": [1.0, 2.0, 3.0, 4.0, 3.5]}, method="DL",
    ... )
    >>> reg.coef_names
    ('intrcpt', 'dose')
    >>> pred = reg.predict({"dose": [0.0]})
    >>> bool(np.isclose(pred.pred[0], reg.coef[0]))
    True
    """
    if method not in TAU2_METHODS:
        raise ValueError(f"method: must be one of {TAU2_METHODS}, got {method!r}")
    if prediction not in ("t", "z"):
        raise ValueError(f"prediction: must be 't' or 'z', got {prediction!r}")
    level = _check_level(level)
    est, s, labels = _estimates(y, se, labels)
    k = est.size
    if mods is not None:
        z, names = _moderators(mods, mod_names, y, labels, k)
        return _meta_regression(
            est, s, labels, z, names, method, bool(knapp_hartung), level, prediction
        )
    if mod_names is not None:
        raise ValueError("mod_names: given without mods")
    if k < 2:
        raise ValueError("y: a random-effects meta-analysis needs at least 2 tasks")
    v = s**2
    fit = _re_batch(est, v, method, bool(knapp_hartung), level, prediction)
    tau2 = float(fit["tau2"])
    q = float(_cochran_q(est, v))
    s2 = float(_typical_variance(v))
    zval = float(fit["mu"] / fit["se"]) if fit["se"] > 0 else math.nan
    pval = t_sf2(zval, fit["df"]) if math.isfinite(zval) else math.nan
    res = MetaAnalysis(
        method=method,
        k=k,
        mu=float(fit["mu"]),
        se=float(fit["se"]),
        z=zval,
        p=pval,
        ci_low=float(fit["ci_low"]),
        ci_high=float(fit["ci_high"]),
        df=float(fit["df"]),
        tau2=tau2,
        tau=math.sqrt(tau2),
        tau2_ci=_q_profile(est, v, level),
        i2=100.0 * tau2 / (tau2 + s2),
        h2=(tau2 + s2) / s2,
        q=q,
        q_df=k - 1,
        q_p=chi2_sf(q, k - 1),
        pi_low=float(fit["pi_low"]),
        pi_high=float(fit["pi_high"]),
        pi_df=float(fit["pi_df"]),
        blups=fit["blups"],
        blup_se=fit["blup_se"],
        weights=fit["weights"],
        y=est,
        y_se=s,
        labels=labels,
        level=level,
        knapp_hartung=bool(knapp_hartung),
        prediction=prediction,
    )
    _check_finite_result(res, ("mu", "se", "tau2", "q", "i2"), method)
    return res


def _check_finite_result(res: Any, fields: tuple[str, ...], method: str) -> None:
    """No NaN or infinite estimate is returned silently: a ValueError names the field."""
    for name in fields:
        value = np.asarray(getattr(res, name), float)
        if not np.all(np.isfinite(value)):
            raise ValueError(
                f"{name}: the {method} estimate is not finite ({value}); the data are "
                "numerically degenerate (check the scale of y and se)"
            )


def _meta_regression(est, s, labels, z, names, method, knapp_hartung, level, prediction):
    """The mixed-effects meta-regression of ``est`` on ``[1, z]``: a :class:`MetaRegression`."""
    k = est.size
    x = _design(z, names, k)
    p = x.shape[1]
    v = s**2
    tau2 = _mr_tau2(est, v, x, method)
    fit = _wls(est, v, x, tau2)
    alpha = 1.0 - level
    cov = fit.cov
    if knapp_hartung:
        # metafor's test="knha": the covariance scaled by QE(tau2) / (k - p), not truncated
        s2w = fit.q / (k - p) if fit.q > np.finfo(float).eps else 0.0
        cov = s2w * cov
        df = float(k - p)
        crit = t_ppf(1 - alpha / 2, df)
    else:
        df = math.inf
        crit = float(ndtri(1 - alpha / 2))
    se = np.sqrt(np.diag(cov))
    with np.errstate(divide="ignore", invalid="ignore"):
        zval = np.where(se > 0, fit.beta / np.where(se > 0, se, 1.0), np.nan)
    pval = np.where(np.isfinite(zval), t_sf2(np.nan_to_num(zval), df), np.nan)
    m = p - 1
    b2 = fit.beta[1:]
    if np.all(np.diag(cov)[1:] > 0):
        qm = float(b2 @ np.linalg.solve(cov[1:, 1:], b2))
    else:
        qm = math.nan
    if knapp_hartung:
        qm = qm / m
        qm_df2 = float(k - p)
        # F survival function P(F(m, k-p) > qm); bayesmeta._special has no F distribution
        qm_p = float(f_sf(qm, m, k - p)) if math.isfinite(qm) else math.nan
    else:
        qm_df2 = math.inf
        qm_p = chi2_sf(qm, m) if math.isfinite(qm) else math.nan
    fit0 = _wls(est, v, x, 0.0)
    s2 = (k - p) / float(np.trace(fit0.pmat))  # the typical within-task variance
    tau2_re = float(_tau2(est, v, method))
    if method == "ML":
        tau2_se = math.sqrt(2.0 / float(np.sum(fit.w**2)))
    elif method == "REML":
        tau2_se = math.sqrt(2.0 / float(np.sum(fit.pmat**2)))
    else:
        tau2_se = math.nan
    if prediction == "t":
        pi_df = float(k - p - 1) if k - p - 1 >= 1 else math.nan
    else:
        pi_df = math.inf
    res = MetaRegression(
        method=method,
        k=k,
        num_coef=p,
        coef_names=("intrcpt", *names),
        coef=fit.beta,
        se=se,
        z=zval,
        p=pval,
        ci_low=fit.beta - crit * se,
        ci_high=fit.beta + crit * se,
        df=df,
        vcov=cov,
        tau2=tau2,
        tau=math.sqrt(tau2),
        tau2_se=tau2_se,
        i2=100.0 * tau2 / (s2 + tau2),
        h2=1.0 + tau2 / s2,
        r2=max(0.0, 100.0 * (tau2_re - tau2) / tau2_re) if tau2_re > 0 else 0.0,
        tau2_re=tau2_re,
        qe=fit0.q,
        qe_df=k - p,
        qe_p=chi2_sf(fit0.q, k - p),
        qm=qm,
        qm_df=m,
        qm_df2=qm_df2,
        qm_p=qm_p,
        pi_df=pi_df,
        x=x,
        y=est,
        y_se=s,
        labels=labels,
        level=level,
        knapp_hartung=bool(knapp_hartung),
        prediction=prediction,
    )
    _check_finite_result(res, ("coef", "se", "tau2", "qe"), method)
    return res


def james_stein(
    y: Any, se: Any = None, level: float = 0.95, labels: Any = None
) -> PerTaskEstimates:
    """Positive-part James-Stein estimates of every ``theta_i``.

    Shrinks toward the fixed-effect mean ``m`` by the factor ``B = min(1, (k-3)/Q)`` with
    Cochran's ``Q = sum (y_i - m)^2 / s_i^2``: ``theta_i = m + (1 - B)(y_i - m)``. With
    equal standard errors this is the classic Efron-Morris form
    ``ybar + (1 - (k-3) s^2 / sum (y - ybar)^2)_+ (y - ybar)``. Needs ``k >= 4``. The
    estimator has no simple standard error: ``se`` and the interval fields are nan.

    >>> import bayesmeta as bm
    >>> res = bm.estimators.james_stein([0.0, 1.0, 2.0, 7.0], [1.0] * 4)
    >>> # m = 2.5, Q = 29, B = (4 - 3) / 29: theta = 2.5 + (28 / 29) (y - 2.5)
    >>> [round(float(v), 4) for v in res.estimate]
    [0.0862, 1.0517, 2.0172, 6.8448]
    """
    level = _check_level(level)
    est, s, labels = _estimates(y, se, labels)
    k = est.size
    if k < 4:
        raise ValueError("y: James-Stein shrinkage needs at least 4 tasks")
    shrink, theta = _james_stein_batch(est, s**2)
    nan = np.full(k, np.nan)
    return PerTaskEstimates(
        "James-Stein", labels, theta, nan, nan, nan.copy(), level, float(shrink)
    )


def _james_stein_batch(y, v):
    k = y.shape[-1]
    w = 1.0 / v
    m = _wmean(y, w)
    q = np.sum(w * (y - m[..., None]) ** 2, axis=-1)
    shrink = np.minimum(1.0, (k - 3) / np.maximum(q, 1e-300))
    return shrink, m[..., None] + (1.0 - shrink[..., None]) * (y - m[..., None])
