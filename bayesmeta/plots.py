"""Meta-analysis plots: forest, funnel and shrinkage (matplotlib, imported when used).

Each function takes a classical random-effects result (``bm.estimators.random_effects(...)``,
a :class:`~bayesmeta.estimators.MetaAnalysis`) and/or a :class:`~bayesmeta.posterior.Posterior`
of a model with one scalar effect per task (site ``theta`` with dims ``(chain, draw, task)``
and a population mean ``mu``, e.g. ``bm.fit`` of ``models/bcg.py``), draws on a new figure
(or on ``ax``), saves it to ``path`` when one is given (``bbox_inches="tight"``) and returns
the matplotlib ``Figure``.

- :func:`forest`: each task's estimate and interval, its weight (%), the pooled diamond and
  the prediction interval for a new task, like metafor's ``forest(rma(...))``; a posterior
  adds each task's partial-pooling interval, the posterior diamond of ``mu`` and the
  posterior predictive interval of a new task.
- :func:`funnel`: estimate against standard error (axis reversed, precise tasks on top) with
  the pseudo-confidence funnel ``mu +- z se`` around the pooled estimate (metafor's
  ``funnel``).
- :func:`shrinkage`: no pooling (each task's own estimate) against partial pooling (BLUP or
  posterior mean), one arrow per task toward the population mean.

matplotlib is optional: without it each function raises an ``ImportError`` whose message
is one line saying how to install it. ``python examples/meta_plots.py --out DIR`` draws
the three plots on BCG (log risk ratios) and eight schools into ``DIR``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from scipy import stats

from bayesmeta.estimators import MetaAnalysis
from bayesmeta.posterior import Posterior

__all__ = ["MATPLOTLIB_MISSING", "forest", "funnel", "shrinkage"]

#: The one-line message of the ImportError raised when matplotlib is not installed.
MATPLOTLIB_MISSING = (
    "this plot needs matplotlib, which is not installed: "
    "pip install matplotlib (or pip install 'bayesmeta[plots]')"
)

_CLASSICAL, _BAYES, _PRED = "black", "tab:blue", "tab:red"


def _pyplot():
    """``matplotlib.pyplot``, or an ImportError with :data:`MATPLOTLIB_MISSING`."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(MATPLOTLIB_MISSING) from None
    return plt


def _level(level: float | None, result) -> float:
    if level is None:
        level = result.level if result is not None else 0.95
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level: expected a probability in (0, 1), got {level!r}")
    return float(level)


def _check_inputs(result, posterior, who: str) -> None:
    if result is None and posterior is None:
        raise ValueError(f"{who}: give a random_effects result, a posterior, or both")
    if result is not None and not isinstance(result, MetaAnalysis):
        raise ValueError(
            f"result: expected bm.estimators.random_effects(...) without moderators "
            f"(a MetaAnalysis), got {type(result).__name__}"
        )
    if posterior is not None:
        if not isinstance(posterior, Posterior):
            raise ValueError(f"posterior: expected a bm.Posterior, got {type(posterior).__name__}")
        _task_draws(posterior)  # one scalar effect per task, before anything is drawn


def _task_draws(posterior: Posterior) -> np.ndarray:
    """``(num_draws, num_tasks)`` draws of each task's scalar effect ``theta``."""
    theta = posterior.samples.get("theta")
    if theta is None or theta.ndim != 3 or posterior.dims.get("theta", ["task"])[0] != "task":
        shape = None if theta is None else theta.shape
        raise ValueError(
            "posterior: needs one scalar effect per task (site 'theta' with dims "
            f"(chain, draw, task)); got theta of shape {shape}"
        )
    return theta.reshape(-1, theta.shape[-1])


def _observed(result, posterior) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Each task's own estimate and standard error (no pooling), and the task labels."""
    if result is not None:
        return np.asarray(result.y), np.asarray(result.y_se), [str(s) for s in result.labels]
    if posterior.tasks is None:
        raise ValueError("posterior: has no tasks, so there are no per-task estimates to draw")
    y, se = posterior.tasks.per_task_estimates()
    labels = [str(s) for s in (posterior.labels or posterior.tasks.labels)]
    return np.asarray(y, float), np.asarray(se, float), labels


def _eti(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    tail = (1.0 - level) / 2.0
    return np.quantile(draws, tail, axis=0), np.quantile(draws, 1.0 - tail, axis=0)


def _population_mean(posterior: Posterior) -> np.ndarray:
    if "mu" not in posterior.samples or posterior.samples["mu"].ndim != 2:
        raise ValueError("posterior: needs a scalar population mean (site 'mu')")
    return posterior.flat("mu")


def _predictive_draws(posterior: Posterior, seed: int) -> np.ndarray | None:
    """Draws of a new task's effect from the learned population, ``posterior.population()``
    (None when the posterior has no population to draw from)."""
    import jax

    try:
        pop = posterior.population()
    except ValueError:
        return None
    # the population is an equal-weight mixture over the hyperparameter draws: drawing every
    # component a few times is a draw from the mixture, without sampling the categorical
    num = posterior.num_chains * posterior.num_draws
    reps = max(1, -(-4000 // num))
    draws = pop.component_distribution.sample(jax.random.PRNGKey(seed), (reps,))
    return np.asarray(draws).reshape(-1)


def _same_tasks(result, labels: list[str], posterior: Posterior) -> None:
    theta = _task_draws(posterior)
    if theta.shape[1] != len(labels):
        raise ValueError(
            f"posterior: has {theta.shape[1]} tasks but the result has {len(labels)}; "
            "they must describe the same tasks"
        )


def _new_figure(ax, height: float, width: float = 9.0):
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(width, height))
    return ax.figure, ax


def _finish(fig, path) -> Any:
    if path is not None:
        fig.savefig(path, bbox_inches="tight", dpi=120)
    return fig


def _interval_text(est: float, low: float, high: float) -> str:
    return f"{est:6.2f} [{low:6.2f}, {high:6.2f}]"


def forest(
    result: MetaAnalysis | None = None,
    posterior: Posterior | None = None,
    *,
    level: float | None = None,
    xlabel: str = "estimate",
    refline: float | None = 0.0,
    title: str | None = None,
    seed: int = 0,
    path: str | os.PathLike | None = None,
    ax=None,
):
    """Meta-analysis forest plot (metafor's ``forest``), as a matplotlib Figure.

    One row per task: its own estimate with the ``level`` confidence interval
    ``y_i +- z s_i`` (square sized by its weight), the weight in percent and the numbers
    on the right; below, the pooled estimate as a diamond spanning its confidence interval
    and the prediction interval for a new task's effect (a bar with end ticks).

    With a ``posterior`` (one scalar ``theta`` per task and a population mean ``mu``), each
    task also gets its partial-pooling interval (blue, just below its row: the equal-tailed
    ``level`` posterior interval of ``theta_i``), and two rows show the posterior of ``mu``
    (diamond) and the posterior predictive interval of a new task's effect (from
    ``posterior.population()``). Without a ``result`` the weights are the inverse-variance
    weights ``1 / (s_i^2 + tau^2)`` at the posterior mean of ``tau^2``, normalised to 100%.

    Args:
      result: ``bm.estimators.random_effects(y, se, ...)`` (no moderators).
      posterior: a ``bm.Posterior`` of the same tasks, in the same order.
      level: interval level (default: the result's level, else 0.95).
      xlabel: label of the effect axis (e.g. ``"log risk ratio"``).
      refline: where to draw the dotted no-effect line (None: none).
      title: figure title.
      seed: seed of the predictive draws of a new task.
      path: also save the figure here.
      ax: draw on this matplotlib Axes instead of a new figure.

    Returns:
      The matplotlib Figure.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> import bayesmeta as bm
    >>> res = bm.estimators.random_effects(bm.datasets.bcg())
    >>> fig = bm.plots.forest(res, xlabel="log risk ratio")
    >>> [t.get_text() for t in fig.axes[0].get_yticklabels()][-2:]
    ['RE model (REML)', '95% prediction interval']

    With a posterior of the same tasks (e.g. ``post = bm.fit(*bm.load_model("models/bcg.py"))``),
    ``bm.plots.forest(res, post, path="forest.png")`` draws both side by side.
    """
    _check_inputs(result, posterior, "forest")
    level = _level(level, result)
    y, se, labels = _observed(result, posterior)
    if posterior is not None:
        _same_tasks(result, labels, posterior)
    k, z = len(y), stats.norm.ppf(0.5 + level / 2)
    if result is not None:
        weights = 100 * np.asarray(result.weights)
    else:
        tau2 = float(np.mean(posterior.flat("tau") ** 2)) if "tau" in posterior.samples else 0.0
        w = 1.0 / (se**2 + tau2)
        weights = 100 * w / w.sum()
    summary_rows = (result is not None) + (posterior is not None)
    fig, ax = _new_figure(ax, 1.2 + 0.38 * (k + 2.5 * summary_rows) * (1.4 if posterior else 1))
    spacing = 1.5 if posterior is not None else 1.0
    rows = spacing * (k - np.arange(k))  # first task on top
    low, high = y - z * se, y + z * se
    ax.hlines(rows, low, high, color=_CLASSICAL, lw=1.2)
    sizes = 25 + 175 * weights / weights.max()
    ax.scatter(y, rows, s=sizes, marker="s", color=_CLASSICAL, zorder=3, label="own estimate")
    right = []  # (row, text, colour) for the numbers column
    for i in range(k):
        right.append(
            (rows[i], f"{weights[i]:5.1f}%   {_interval_text(y[i], low[i], high[i])}", _CLASSICAL)
        )
    xs = [low, high]
    if posterior is not None:
        theta = _task_draws(posterior)
        t_mean, (t_low, t_high) = theta.mean(axis=0), _eti(theta, level)
        prow = rows - 0.5
        ax.hlines(prow, t_low, t_high, color=_BAYES, lw=1.2)
        ax.scatter(t_mean, prow, s=18, color=_BAYES, zorder=3, label="partial pooling (posterior)")
        for i in range(k):
            right.append(
                (prow[i], f"{'':6}   {_interval_text(t_mean[i], t_low[i], t_high[i])}", _BAYES)
            )
    ticks, ticklabels = list(rows), list(labels)
    next_row = -0.5

    def diamond(row, est, lo, hi, colour, name):
        ax.fill([lo, est, hi, est], [row, row + 0.35, row, row - 0.35], color=colour, zorder=3)
        ticks.append(row)
        ticklabels.append(name)
        right.append(
            (
                row,
                f"{'100.0%' if colour == _CLASSICAL else '':>6}   {_interval_text(est, lo, hi)}",
                colour,
            )
        )

    def prediction(row, lo, hi, colour, name):
        ax.hlines(row, lo, hi, color=colour, lw=1.5, linestyles="-")
        ax.vlines([lo, hi], row - 0.18, row + 0.18, color=colour, lw=1.5)
        ticks.append(row)
        ticklabels.append(name)
        right.append((row, f"{'':6}   {'':6} [{lo:6.2f}, {hi:6.2f}]", colour))

    pct = f"{100 * level:g}%"
    if result is not None:
        next_row -= 1.0
        diamond(
            next_row,
            result.mu,
            result.ci_low,
            result.ci_high,
            _CLASSICAL,
            f"RE model ({result.method})",
        )
        xs += [np.array([result.ci_low, result.ci_high])]
        if np.isfinite(result.pi_low) and np.isfinite(result.pi_high):
            next_row -= 1.0
            prediction(next_row, result.pi_low, result.pi_high, _PRED, f"{pct} prediction interval")
            xs += [np.array([result.pi_low, result.pi_high])]
    if posterior is not None:
        mu = _population_mean(posterior)
        m_low, m_high = _eti(mu[:, None], level)
        next_row -= 1.0
        diamond(
            next_row, float(mu.mean()), float(m_low[0]), float(m_high[0]), _BAYES, "posterior of mu"
        )
        new = _predictive_draws(posterior, seed)
        if new is not None:
            n_low, n_high = _eti(new[:, None], level)
            next_row -= 1.0
            prediction(
                next_row, float(n_low[0]), float(n_high[0]), _BAYES, f"{pct} posterior predictive"
            )
            xs += [np.array([n_low[0], n_high[0]])]
    ax.axhline(0.0, color="0.6", lw=0.8)
    if refline is not None:
        ax.axvline(refline, color="0.4", lw=0.8, ls=":")
    ax.set_yticks(ticks, ticklabels)
    ax.set_ylim(next_row - 0.8, rows[0] + 0.8)
    lo_all, hi_all = float(np.min(np.concatenate(xs))), float(np.max(np.concatenate(xs)))
    pad = 0.05 * (hi_all - lo_all or 1.0)
    ax.set_xlim(lo_all - pad, hi_all + pad)
    ax.set_xlabel(xlabel)
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    head = f"{'weight':>6}   {'estimate [' + pct + ' interval]':>22}"
    ax.text(
        1.02,
        1.0,
        head,
        transform=ax.transAxes,
        ha="left",
        va="bottom",
        family="monospace",
        fontsize=8,
    )
    trans = ax.get_yaxis_transform()
    for row, text, colour in right:
        ax.text(
            1.02,
            row,
            text,
            transform=trans,
            ha="left",
            va="center",
            family="monospace",
            fontsize=8,
            color=colour,
        )
    if posterior is not None:
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False, fontsize=8)
    if title:
        ax.set_title(title, pad=24 if posterior is not None else 6)
    return _finish(fig, path)


def funnel(
    result: MetaAnalysis | None = None,
    posterior: Posterior | None = None,
    *,
    level: float | None = None,
    xlabel: str = "estimate",
    annotate: bool = False,
    title: str | None = None,
    path: str | os.PathLike | None = None,
    ax=None,
):
    """Funnel plot (metafor's ``funnel``): each task's estimate against its standard error.

    The standard-error axis is reversed (precise tasks at the top). The pseudo-confidence
    funnel ``mu +- z s`` (``z`` the normal quantile of ``level``) is drawn around the pooled
    estimate ``mu``: the random-effects estimate of ``result``, else the posterior mean of
    ``mu``; with both, the posterior mean is a dashed blue line. Without publication bias or
    heterogeneity about ``level`` of the tasks fall inside the funnel; asymmetry hints at
    small-study effects.

    Args:
      result: ``bm.estimators.random_effects(y, se, ...)`` (no moderators).
      posterior: a ``bm.Posterior`` of the same tasks (used for the tasks' own estimates
        when there is no result, and for the posterior mean of ``mu``).
      level: funnel level (default: the result's level, else 0.95).
      xlabel: label of the effect axis.
      annotate: write each task's label next to its point.
      title: figure title.
      path: also save the figure here.
      ax: draw on this matplotlib Axes instead of a new figure.

    Returns:
      The matplotlib Figure.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> import bayesmeta as bm
    >>> res = bm.estimators.random_effects(bm.datasets.eight_schools())
    >>> fig = bm.plots.funnel(res, xlabel="effect (points)", annotate=True)
    >>> fig.axes[0].get_ylabel()
    'standard error'
    """
    _check_inputs(result, posterior, "funnel")
    level = _level(level, result)
    y, se, labels = _observed(result, posterior)
    z = stats.norm.ppf(0.5 + level / 2)
    mu_post = None
    if posterior is not None:
        _same_tasks(result, labels, posterior)
        mu_post = float(_population_mean(posterior).mean())
    centre = float(result.mu) if result is not None else mu_post
    fig, ax = _new_figure(ax, 5.0, 6.5)
    top = 1.08 * float(se.max())
    s = np.array([0.0, top])
    ax.fill_betweenx(s, centre - z * s, centre + z * s, color="0.93", zorder=0)
    ax.plot(centre - z * s, s, color="0.3", lw=0.9, ls="--")
    ax.plot(centre + z * s, s, color="0.3", lw=0.9, ls="--", label=f"{100 * level:g}% pseudo-CI")
    name = f"RE estimate ({result.method})" if result is not None else "posterior mean of mu"
    ax.vlines(
        centre, 0, top, color=_CLASSICAL if result is not None else _BAYES, lw=1.2, label=name
    )
    if result is not None and mu_post is not None:
        ax.vlines(mu_post, 0, top, color=_BAYES, lw=1.2, ls="--", label="posterior mean of mu")
    ax.scatter(y, se, color=_CLASSICAL, zorder=3, s=25)
    if annotate:
        for xi, si, lab in zip(y, se, labels, strict=True):
            ax.annotate(lab, (xi, si), xytext=(4, 2), textcoords="offset points", fontsize=7)
    ax.set_ylim(top, 0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("standard error")
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, frameon=False, fontsize=8)
    if title:
        ax.set_title(title, pad=24)
    return _finish(fig, path)


def shrinkage(
    result: MetaAnalysis | None = None,
    posterior: Posterior | None = None,
    *,
    xlabel: str = "estimate",
    title: str | None = None,
    path: str | os.PathLike | None = None,
    ax=None,
):
    """Shrinkage plot: no pooling against partial pooling, one arrow per task.

    Each task has a row: an open circle at its own estimate ``y_i`` (no pooling), a filled
    dot at its partially pooled estimate and an arrow from the first to the second, which
    points toward the population mean (dashed vertical line). The partially pooled estimate
    is the posterior mean of ``theta_i`` when a ``posterior`` is given (population mean: the
    posterior mean of ``mu``), else the result's BLUP (population mean: its ``mu``). Tasks
    with large standard errors move furthest.

    Args:
      result: ``bm.estimators.random_effects(y, se, ...)`` (no moderators).
      posterior: a ``bm.Posterior`` of the same tasks (one scalar ``theta`` per task).
      xlabel: label of the effect axis.
      title: figure title.
      path: also save the figure here.
      ax: draw on this matplotlib Axes instead of a new figure.

    Returns:
      The matplotlib Figure.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> import bayesmeta as bm
    >>> res = bm.estimators.random_effects(bm.datasets.eight_schools())
    >>> fig = bm.plots.shrinkage(res)
    >>> len(fig.axes[0].get_yticklabels())  # one row per school
    8
    """
    _check_inputs(result, posterior, "shrinkage")
    y, se, labels = _observed(result, posterior)
    if posterior is not None:
        _same_tasks(result, labels, posterior)
        pooled = _task_draws(posterior).mean(axis=0)
        centre, how = float(_population_mean(posterior).mean()), "posterior mean"
    else:
        pooled, centre = np.asarray(result.blups), float(result.mu)
        how = f"BLUP ({result.method})"
    k = len(y)
    fig, ax = _new_figure(ax, 1.0 + 0.4 * k, 7.0)
    rows = k - np.arange(k)
    ax.axvline(centre, color=_PRED, lw=1.0, ls="--", label=f"population mean {centre:.2f}")
    for i in range(k):
        ax.annotate(
            "",
            xy=(pooled[i], rows[i]),
            xytext=(y[i], rows[i]),
            arrowprops={"arrowstyle": "->", "color": "0.35", "lw": 1.0, "shrinkA": 4, "shrinkB": 3},
        )
    ax.scatter(
        y,
        rows,
        facecolors="white",
        edgecolors=_CLASSICAL,
        s=40,
        zorder=3,
        label="no pooling (own estimate)",
    )
    ax.scatter(pooled, rows, color=_BAYES, s=30, zorder=3, label=f"partial pooling ({how})")
    ax.set_yticks(rows, labels)
    ax.set_ylim(0.3, k + 0.7)
    span = np.concatenate([y, pooled])
    pad = 0.06 * (span.max() - span.min() or 1.0)
    ax.set_xlim(span.min() - pad, span.max() + pad)
    ax.set_xlabel(xlabel)
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, frameon=False, fontsize=8)
    if title:
        ax.set_title(title, pad=24)
    return _finish(fig, path)
