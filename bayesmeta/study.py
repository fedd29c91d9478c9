"""Simulation study: pooled, per-task and partially pooled estimators side by side.

Each replication draws a collection of ``num_tasks`` tasks from a task universe
``theta_t ~ N(mu, tau^2)``; ordinary tasks have ``num_obs`` observations
``y ~ N(theta_t, noise^2)``, one *dominant* task has ``imbalance`` times as many. The
per-task mean has known standard error ``noise / sqrt(n_t)``. Every estimator of the centre
``mu`` and of every ``theta_t`` is scored over replications (vectorised: one numpy pass per
estimator), with the exact Bayes posterior (flat prior on ``mu``, proper prior on ``tau``,
computed by ``bayesmeta.exact``) as the yardstick.

Columns for the centre ``mu``:

- ``bias``, ``rmse``: of the estimate around ``mu``;
- ``coverage``, ``width``: of its nominal ``level`` interval;
- ``pull``: least-squares slope of ``estimate - mu`` on ``theta_dominant - mu`` across
  replications, i.e. the weight the estimate gives the dominant task (1/num_tasks is one
  task, one vote);
- ``dist2_tasks``: mean over tasks of ``(theta_t - estimate)^2`` within a collection,
  averaged over replications; the mean of the task optima minimises it in every replication
  (the "centre of the task universe");
- ``dist2_new``: expected squared distance to a new task's optimum, ``tau^2 + (estimate -
  mu)^2``; the universe mean ``mu`` minimises it.

For the ``theta_t``: ``bias``, ``rmse`` (all tasks), ``rmse_small`` (ordinary tasks),
``rmse_dominant``, ``coverage`` and ``width``.

>>> from bayesmeta.study import study
>>> table = study(num_reps=50, seed=0)  # doctest: +SKIP
>>> print(table)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bayesmeta import estimators as est
from bayesmeta._checks import check_seed
from bayesmeta.exact import normal as _nn

__all__ = ["StudyTable", "study"]


@dataclass(frozen=True)
class StudyTable:
    """Result of :func:`study`.

    Fields:
      settings     dict of the simulation settings
      mu_rows      list of dicts, one per estimator of mu (keys: estimator, bias, rmse,
                   coverage, width, pull, dist2_tasks, dist2_new)
      theta_rows   list of dicts, one per estimator of theta_t (keys: estimator, bias, rmse,
                   rmse_small, rmse_dominant, coverage, width)
      draws        small arrays kept for the figure: ``dominant`` (theta_dom - mu),
                   ``pooled`` and ``mean`` (estimate - mu) per replication
    """

    settings: dict
    mu_rows: list
    theta_rows: list
    draws: dict = field(repr=False)

    def row(self, estimator: str, part: str = "mu") -> dict:
        """The row of one estimator (``part`` = "mu" or "theta")."""
        rows = self.mu_rows if part == "mu" else self.theta_rows
        for r in rows:
            if r["estimator"] == estimator:
                return r
        raise ValueError(
            f"estimator: no {part} row named {estimator!r}; have {[r['estimator'] for r in rows]}"
        )

    def claims(self) -> dict:
        """The four claims, each as ``(holds, numbers)``.

        - pooled_pulled: the pooled estimate gives the dominant task more weight than one
          vote, and more than the mean of estimates does;
        - mean_robust: the mean of per-task estimates has lower RMSE for mu than the pooled
          estimate;
        - partial_pooling_best: exact Bayes (when computed) and the REML BLUPs have lower
          RMSE for theta_t than no pooling and than complete pooling;
        - centre_of_universe: the mean of the collection's task optima has the smallest
          within-collection squared distance of every row, and the universe's mean of task
          optima ``mu`` the smallest expected squared distance to a new task.
        """
        pooled, mean = self.row("pooled (all rows)"), self.row("mean of estimates")
        k = self.settings["num_tasks"]
        blup = self.row("BLUP (REML)", "theta")
        bayes = blup if not self.settings["exact"] else self.row("exact Bayes", "theta")
        nopool, full = self.row("no pooling", "theta"), self.row("complete pooling", "theta")
        centre = self.row("oracle: mean of task optima")
        universe = self.row("oracle: universe mean mu")
        others = [r["dist2_tasks"] for r in self.mu_rows if r is not centre]
        others_new = [r["dist2_new"] for r in self.mu_rows if r is not universe]
        return {
            "pooled_pulled": (
                pooled["pull"] > 1.0 / k and pooled["pull"] > mean["pull"],
                {"pull_pooled": pooled["pull"], "pull_mean": mean["pull"], "one_vote": 1.0 / k},
            ),
            "mean_robust": (
                mean["rmse"] < pooled["rmse"],
                {"rmse_mean": mean["rmse"], "rmse_pooled": pooled["rmse"]},
            ),
            "partial_pooling_best": (
                max(bayes["rmse"], blup["rmse"]) < min(nopool["rmse"], full["rmse"]),
                {
                    "rmse_bayes": bayes["rmse"],
                    "rmse_blup": blup["rmse"],
                    "rmse_no_pooling": nopool["rmse"],
                    "rmse_complete_pooling": full["rmse"],
                },
            ),
            "centre_of_universe": (
                centre["dist2_tasks"] < min(others) and universe["dist2_new"] < min(others_new),
                {
                    "dist2_tasks_mean_of_optima": centre["dist2_tasks"],
                    "dist2_tasks_next_best": min(others),
                    "dist2_new_universe_mean": universe["dist2_new"],
                    "dist2_new_next_best": min(others_new),
                },
            ),
        }

    def to_dict(self) -> dict:
        """Settings, rows and claims as plain Python types (``json.dumps``-ready)."""

        def clean(v):
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [clean(x) for x in v]
            if isinstance(v, bool | np.bool_):
                return bool(v)
            if isinstance(v, float | np.floating):
                return float(v) if math.isfinite(v) else None
            if isinstance(v, np.integer):
                return int(v)
            return v

        return clean(
            {
                "settings": self.settings,
                "mu": self.mu_rows,
                "theta": self.theta_rows,
                "claims": self.claims(),
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def __str__(self) -> str:
        s = self.settings
        head = (
            f"Estimator study: {s['num_tasks']} tasks, tau = {s['tau']:g}, noise = "
            f"{s['noise']:g}, {s['num_obs']} obs per task, dominant task x"
            f"{s['imbalance']:g}, {s['num_reps']} replications, level {s['level']:g}"
        )
        lines = [
            head,
            "",
            "Centre mu:",
            f"{'estimator':<30} {'bias':>8} {'rmse':>8} {'cover':>7} {'width':>8} "
            f"{'pull':>7} {'dist2_tasks':>12} {'dist2_new':>10}",
        ]
        for r in self.mu_rows:
            lines.append(
                f"{r['estimator']:<30} {r['bias']:8.4f} {r['rmse']:8.4f} "
                f"{_pct(r['coverage']):>7} {_num(r['width']):>8} {r['pull']:7.3f} "
                f"{r['dist2_tasks']:12.4f} {r['dist2_new']:10.4f}"
            )
        lines += [
            "",
            "Per-task theta_t:",
            f"{'estimator':<30} {'bias':>8} {'rmse':>8} {'rmse_small':>10} "
            f"{'rmse_dom':>9} {'cover':>7} {'width':>8}",
        ]
        for r in self.theta_rows:
            lines.append(
                f"{r['estimator']:<30} {r['bias']:8.4f} {r['rmse']:8.4f} "
                f"{r['rmse_small']:10.4f} {r['rmse_dominant']:9.4f} "
                f"{_pct(r['coverage']):>7} {_num(r['width']):>8}"
            )
        lines += ["", "Claims:"]
        for name, (holds, numbers) in self.claims().items():
            nums = ", ".join(f"{k} = {v:.4g}" for k, v in numbers.items())
            lines.append(f"  {name:<22} {'holds' if holds else 'FAILS'}  ({nums})")
        return "\n".join(lines)

    def plot(self, path: str) -> str:
        """Save a three-panel figure (RMSE for mu with the pull, RMSE for theta, and the
        pooled versus mean estimate against the dominant task's offset) to ``path``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(16, 5))
        ax = axes[0]
        names = [r["estimator"] for r in self.mu_rows]
        ax.barh(names, [r["rmse"] for r in self.mu_rows], color="tab:blue")
        for i, r in enumerate(self.mu_rows):
            ax.text(r["rmse"], i, f" pull {r['pull']:.2f}", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("RMSE of the centre mu")
        ax.set_title("Estimating the centre")
        ax = axes[1]
        names = [r["estimator"] for r in self.theta_rows]
        ax.barh(names, [r["rmse"] for r in self.theta_rows], color="tab:green")
        ax.invert_yaxis()
        ax.set_xlabel("RMSE of theta_t (all tasks)")
        ax.set_title("Estimating each task")
        ax = axes[2]
        d = self.draws
        ax.scatter(d["dominant"], d["pooled"], s=6, alpha=0.5, label="pooled (all rows)")
        ax.scatter(d["dominant"], d["mean"], s=6, alpha=0.5, label="mean of estimates")
        lim = np.max(np.abs(d["dominant"])) if d["dominant"].size else 1.0
        grid = np.linspace(-lim, lim, 2)
        ax.plot(grid, grid, "k:", lw=1, label="follows the dominant task")
        ax.set_xlabel("theta_dominant - mu")
        ax.set_ylabel("estimate - mu")
        ax.set_title("Pull of the dominant task")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:.1f}%"


def _num(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.4f}"


def _mu_row(name, estimate, lo, hi, mu, tau, theta, dominant):
    err = estimate - mu
    off = dominant - mu
    cover = np.mean((lo <= mu) & (mu <= hi)) if lo is not None else math.nan
    width = np.mean(hi - lo) if lo is not None else math.nan
    return {
        "estimator": name,
        "bias": float(np.mean(err)),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "coverage": float(cover),
        "width": float(width),
        "pull": float(np.sum(err * off) / np.sum(off**2)) if np.any(off != 0) else math.nan,
        "dist2_tasks": float(np.mean((theta - estimate[:, None]) ** 2)),
        "dist2_new": float(tau**2 + np.mean(err**2)),
    }


def _theta_row(name, estimate, lo, hi, theta):
    err = estimate - theta
    cover = np.mean((lo <= theta) & (theta <= hi)) if lo is not None else math.nan
    width = np.mean(hi - lo) if lo is not None else math.nan
    return {
        "estimator": name,
        "bias": float(np.mean(err)),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "rmse_small": float(np.sqrt(np.mean(err[:, 1:] ** 2))),
        "rmse_dominant": float(np.sqrt(np.mean(err[:, 0] ** 2))),
        "coverage": float(cover),
        "width": float(width),
    }


def study(
    num_tasks: int = 8,
    tau: float = 0.5,
    noise: float = 1.0,
    num_obs: int = 5,
    imbalance: float = 20.0,
    num_reps: int = 400,
    seed: int = 0,
    mu: float = 0.0,
    level: float = 0.95,
    scale_prior: Any = None,
    exact: bool = True,
) -> StudyTable:
    """Simulate task collections and score every estimator of ``mu`` and of ``theta_t``.

    Args:
      num_tasks: tasks per collection (>= 4, for James-Stein).
      tau: between-task sd of the task optima (heterogeneity; 0 allowed).
      noise: within-task observation sd.
      num_obs: observations in each ordinary task (>= 2).
      imbalance: the dominant task (task 0) has ``round(imbalance * num_obs)`` observations.
      num_reps: replications.
      seed: integer seed (numpy).
      mu: centre of the task universe.
      level: nominal level of every interval.
      scale_prior: prior on tau for the exact Bayes yardstick (flat prior on mu); default
        ``HalfCauchy(noise)``; anything :func:`bayesmeta.exact.solve_normal_normal` takes.
      exact: include the exact Bayes rows (the slowest part: one to two seconds per 100
        replications of 8 tasks on one core).

    Returns:
      :class:`StudyTable` (print it; ``.plot(path)``; ``.claims()``; ``.to_json()``).
    """
    seed = check_seed(seed)
    num_tasks, num_obs, num_reps = int(num_tasks), int(num_obs), int(num_reps)
    if num_tasks < 4:
        raise ValueError(f"num_tasks: must be >= 4, got {num_tasks}")
    if num_obs < 2:
        raise ValueError(f"num_obs: must be >= 2, got {num_obs}")
    if num_reps < 2:
        raise ValueError(f"num_reps: must be >= 2, got {num_reps}")
    for name, value in (("tau", tau), ("noise", noise), ("imbalance", imbalance)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name}: must be finite and >= 0, got {value}")
    if noise <= 0:
        raise ValueError(f"noise: must be positive, got {noise}")
    n_dom = max(1, int(round(imbalance * num_obs)))
    if n_dom < 2:
        raise ValueError(f"imbalance: the dominant task needs >= 2 observations, got {n_dom}")
    level = est._check_level(level)
    rng = np.random.default_rng(int(seed))
    counts = np.full(num_tasks, num_obs)
    counts[0] = n_dom
    theta = mu + tau * rng.standard_normal((num_reps, num_tasks))
    se = noise / np.sqrt(counts)
    ybar = theta + se * rng.standard_normal((num_reps, num_tasks))
    s2 = noise**2 * rng.chisquare(counts - 1, size=(num_reps, num_tasks)) / (counts - 1)
    v = np.broadcast_to(se**2, ybar.shape)
    z = float(est._ndtri(0.5 + level / 2))
    total = counts.sum()
    dominant = theta[:, 0]

    mu_rows, theta_rows = [], []
    # complete pooling: all rows as one sample
    pooled = ybar @ counts / total
    ss = np.sum((counts - 1) * s2, axis=1) + np.sum(counts * (ybar - pooled[:, None]) ** 2, axis=1)
    naive_se = np.sqrt(ss / (total - 1) / total)
    mu_rows.append(
        _mu_row(
            "pooled (all rows)",
            pooled,
            pooled - z * naive_se,
            pooled + z * naive_se,
            mu,
            tau,
            theta,
            dominant,
        )
    )
    fe_se = noise / math.sqrt(total)
    mu_rows.append(
        _mu_row(
            "fixed effect (inverse var.)",
            pooled,
            pooled - z * fe_se,
            pooled + z * fe_se,
            mu,
            tau,
            theta,
            dominant,
        )
    )
    mean = ybar.mean(axis=1)
    mean_se = ybar.std(axis=1, ddof=1) / math.sqrt(num_tasks)
    t1 = est._t_ppf(0.5 + level / 2, num_tasks - 1)
    mu_rows.append(
        _mu_row(
            "mean of estimates",
            mean,
            mean - t1 * mean_se,
            mean + t1 * mean_se,
            mu,
            tau,
            theta,
            dominant,
        )
    )
    fits = {}
    for method in ("DL", "REML", "PM"):
        fits[method] = est._re_batch(ybar, v, method, False, level)
        f = fits[method]
        mu_rows.append(
            _mu_row(
                f"random effects ({method})",
                f["mu"],
                f["ci_low"],
                f["ci_high"],
                mu,
                tau,
                theta,
                dominant,
            )
        )
    kh = est._re_batch(ybar, v, "REML", True, level, tau2=fits["REML"]["tau2"])
    mu_rows.append(
        _mu_row(
            "random effects (REML, HKSJ)",
            kh["mu"],
            kh["ci_low"],
            kh["ci_high"],
            mu,
            tau,
            theta,
            dominant,
        )
    )

    theta_rows.append(_theta_row("no pooling", ybar, ybar - z * se, ybar + z * se, theta))
    full = np.broadcast_to(pooled[:, None], theta.shape)
    theta_rows.append(
        _theta_row(
            "complete pooling",
            full,
            full - z * naive_se[:, None],
            full + z * naive_se[:, None],
            theta,
        )
    )
    for method in ("DL", "REML"):
        f = fits[method]
        theta_rows.append(
            _theta_row(
                f"BLUP ({method})",
                f["blups"],
                f["blups"] - z * f["blup_se"],
                f["blups"] + z * f["blup_se"],
                theta,
            )
        )
    _, js = est._james_stein_batch(ybar, v)
    theta_rows.append(_theta_row("James-Stein", js, None, None, theta))

    if exact:
        prior = scale_prior if scale_prior is not None else _halfcauchy(noise)
        rule, _, _ = _nn._batch_rule(
            ybar,
            np.broadcast_to(se, ybar.shape).copy(),
            loc_prior="flat",
            scale_prior=prior,
            rtol=1e-8,
        )
        mom = _nn._batch_moments(rule, ybar, np.broadcast_to(se, ybar.shape), prune=1e-14)
        a = (1 - level) / 2
        mu_mix = _nn.NormalMixture(mom["weights"], mom["mhat"], np.sqrt(mom["vmu"]))
        lo, hi = mu_mix.quantile(a), mu_mix.quantile(1 - a)
        mu_rows.append(_mu_row("exact Bayes", mom["mu_mean"], lo, hi, mu, tau, theta, dominant))
        th_mix = _nn.NormalMixture(
            mom["weights"][:, None, :],
            np.moveaxis(mom["theta_cond_mean"], 1, 2),
            np.sqrt(np.moveaxis(mom["theta_cond_var"], 1, 2)),
        )
        theta_rows.append(
            _theta_row(
                "exact Bayes", mom["theta_mean"], th_mix.quantile(a), th_mix.quantile(1 - a), theta
            )
        )
    centre = theta.mean(axis=1)
    mu_rows.append(
        _mu_row("oracle: mean of task optima", centre, None, None, mu, tau, theta, dominant)
    )
    mu_rows.append(
        _mu_row(
            "oracle: universe mean mu",
            np.full(num_reps, float(mu)),
            None,
            None,
            mu,
            tau,
            theta,
            dominant,
        )
    )
    settings = dict(
        num_tasks=num_tasks,
        tau=float(tau),
        noise=float(noise),
        num_obs=num_obs,
        imbalance=float(imbalance),
        dominant_obs=n_dom,
        num_reps=num_reps,
        seed=int(seed),
        mu=float(mu),
        level=level,
        exact=bool(exact),
    )
    keep = min(num_reps, 400)
    draws = {
        "dominant": dominant[:keep] - mu,
        "pooled": pooled[:keep] - mu,
        "mean": mean[:keep] - mu,
    }
    return StudyTable(settings, mu_rows, theta_rows, draws)


def _halfcauchy(scale: float):
    import numpyro.distributions as dist

    return dist.HalfCauchy(float(scale))
