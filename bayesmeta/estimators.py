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
                            interval for tau^2; prediction interval; BLUPs
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

References: DerSimonian & Laird (1986); Paule & Mandel (1982); Hedges & Olkin (1985);
Sidik & Jonkman (2005); Morris (1983); Knapp & Hartung (2003); Viechtbauer (2005, 2007);
Higgins & Thompson (2002); Efron & Morris (1973); metafor's ``rma.uni``.

Everything is float64 numpy, with the normal, t and chi-square distributions from
:mod:`bayesmeta._special` (scipy.special); the tau^2 estimators are vectorised over leading
batch axes.

>>> import numpy as np
>>> res = random_effects([0.1, 0.3, 0.35, 0.65], se=[0.1, 0.12, 0.1, 0.15], method="DL")
>>> round(res.tau2, 6) >= 0
True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bayesmeta._checks import check_estimates
from bayesmeta._special import chi2_cdf, chi2_ppf, chi2_sf, ndtr, ndtri, t_cdf, t_ppf, t_sf2
from bayesmeta.tasks import TaskSet

__all__ = [
    "TAU2_METHODS",
    "MetaAnalysis",
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
    return est, s, tuple(str(v) for v in labels)


def _check_level(level: float) -> float:
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
    """
    y = np.asarray(y, dtype=float)
    v = np.broadcast_to(np.asarray(se, dtype=float) ** 2, y.shape)
    if y.shape[-1] < 2:
        raise ValueError("y: tau^2 needs at least 2 tasks")
    if method not in TAU2_METHODS:
        raise ValueError(f"method: must be one of {TAU2_METHODS}, got {method!r}")
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


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class PooledEstimate:
    """One estimate of the population centre with its interval.

    Fields: ``method``, ``mu``, ``se``, ``ci_low``, ``ci_high``, ``level``, ``df`` (``inf``
    for a normal interval), ``k`` (tasks), ``weights`` (``(k,)``, summing to 1).
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
    ``level`` and ``shrinkage`` (the factor toward the common target; 0 for none)."""

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

        def clean(value):
            if isinstance(value, np.ndarray):
                return [clean(v) for v in value.tolist()]
            if isinstance(value, tuple | list):
                return [clean(v) for v in value]
            if isinstance(value, float | np.floating):
                return float(value) if math.isfinite(value) else None
            if isinstance(value, np.integer):
                return int(value)
            return value

        return {key: clean(val) for key, val in asdict(self).items()}

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
    """Each task on its own: ``y_i`` with normal interval ``y_i +- z s_i``."""
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
) -> MetaAnalysis:
    """Random-effects meta-analysis: ``y_i ~ N(theta_i, s_i^2)``, ``theta_i ~ N(mu, tau^2)``.

    Args:
      y: per-task estimates ``(k,)``, or a TaskSet (raw rows are reduced with
        ``per_task_estimates()``; estimates data give ``y`` and ``se`` directly).
      se: standard errors ``(k,)`` (not with a TaskSet).
      method: tau^2 estimator, one of ``TAU2_METHODS`` (see the module docstring).
      knapp_hartung: Knapp-Hartung / HKSJ standard error and t interval on ``k-1`` df.
      level: confidence level of every interval.
      prediction: ``"t"`` (default): prediction interval with ``t_{k-2}`` (Higgins,
        Thompson & Spiegelhalter 2009; needs ``k >= 3``, else nan); ``"z"``: metafor's
        default normal quantile.
      labels: task labels (default: the TaskSet's, or ``"0" .. "k-1"``).

    Returns:
      :class:`MetaAnalysis` (``mu``, ``se``, ``ci_low``, ``ci_high``, ``tau2``, ``i2``
      (percent), ``h2``, ``q``, ``pi_low``, ``pi_high``, ``blups``, ...).

    >>> res = random_effects([0.1, 0.3, 0.35, 0.65], [0.1, 0.12, 0.1, 0.15], method="PM")
    >>> res.pi_low < res.ci_low <= res.mu <= res.ci_high < res.pi_high
    True
    """
    if method not in TAU2_METHODS:
        raise ValueError(f"method: must be one of {TAU2_METHODS}, got {method!r}")
    if prediction not in ("t", "z"):
        raise ValueError(f"prediction: must be 't' or 'z', got {prediction!r}")
    level = _check_level(level)
    est, s, labels = _estimates(y, se, labels)
    k = est.size
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
