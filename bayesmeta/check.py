"""Checks of inference: simulation-based calibration (SBC).

:func:`sbc` asks whether a method's posteriors are calibrated for a model on data shaped
like yours (Talts et al. 2018). It draws the hyperparameters ``phi``, the task parameters
``theta_t`` and then data ``y`` from ``model``'s prior, fits each simulated data set, and
records the rank of every true value among ``L`` thinned posterior draws. If the
posteriors are right, every rank is uniform on ``0..L``; a posterior that is too narrow
piles the ranks at both ends (a U), one that is too wide in the middle, a biased one at one
end. Fitting a different ``fit_model`` to data from ``model`` shows what a wrong prior
looks like.

>>> import numpyro.distributions as dist, bayesmeta as bm
>>> model = bm.Hierarchical(bm.likelihoods.NormalKnownNoise())
>>> res = bm.check.sbc(model, bm.datasets.eight_schools(), num_simulations=20,
...                    method="exact", seed=0, num_samples=100)
>>> res.ranks.shape, res.names[:2]
((20, 5), ('mu', 'tau'))

References:
  S. Talts, M. Betancourt, D. Simpson, A. Vehtari, A. Gelman (2018), "Validating Bayesian
  inference algorithms with simulation-based calibration", arXiv:1804.06788.
  T. Säilynoja, P.-C. Bürkner, A. Vehtari (2022), "Graphical test for discrete uniformity
  and its applications in goodness-of-fit evaluation and multiple sample comparison",
  Statistics and Computing 32:32.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from bayesmeta.inference import ENGINES, METHODS, fit, resolve_method
from bayesmeta.inference.diagnostics import FitWarning, ess_bulk
from bayesmeta.model import _TaskModel
from bayesmeta.tasks import TaskSet

__all__ = ["sbc", "SBCResult", "ecdf_bands"]

_MAX_SEED = 2**32


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


class SBCResult(NamedTuple):
    """What :func:`sbc` found.

    Fields:
      names          # tuple of P str: the ranked quantities (``mu``, ``tau``,
                     # ``theta[A]``, ``mu[intercept]``, ...)
      ranks          # shape=(num_simulations, P), int: rank of the true value among
                     # the L thinned posterior draws, in 0..L (ties broken at random)
      true_values    # shape=(num_simulations, P), float: the prior draws that made the data
      num_rank_draws # L: thinned posterior draws per simulation
      num_bins       # bins of the chi-squared test (each covers (L + 1) / num_bins ranks)
      p_values       # dict name -> p-value of the chi-squared test of uniform ranks
      method         # the engine that fitted (``"auto"`` resolved)
      info           # per simulation: ``seeds`` (of the fits), ``min_ess`` (smallest bulk
                     # ESS of the ranked quantities), ``compiled`` (whether the fit
                     # compiled; None where the engine does not say), ``fit_warnings``
                     # (diagnostics warnings), ``seconds``; and ``low_ess`` (how many
                     # simulations had ``min_ess < L``), ``prior_seconds``
    """

    names: tuple
    ranks: np.ndarray
    true_values: np.ndarray
    num_rank_draws: int
    num_bins: int
    p_values: dict
    method: str
    info: dict

    @property
    def num_simulations(self) -> int:
        return int(self.ranks.shape[0])

    def table(self) -> str:
        """One line per quantity: its chi-squared p-value and the mean and sd of its
        fractional rank ``r / L`` (uniform: 0.5 and 0.289)."""
        lines = [
            f"SBC of method {self.method!r}: {self.num_simulations} simulations, "
            f"L = {self.num_rank_draws}, {self.num_bins} bins"
        ]
        lines.append(f"{'quantity':<24}{'p-value':>10}{'mean rank':>11}{'sd rank':>9}")
        frac = self.ranks / self.num_rank_draws
        for j, name in enumerate(self.names):
            lines.append(
                f"{name:<24}{self.p_values[name]:>10.3g}{frac[:, j].mean():>11.3f}"
                f"{frac[:, j].std():>9.3f}"
            )
        return "\n".join(lines)

    def ecdf_difference(self) -> tuple[np.ndarray, np.ndarray]:
        """``(z, diff)``: the grid ``z_k = k / (L + 1)``, ``k = 0..L+1``, and
        ``diff[k, j] = F_j(z_k) - z_k``, the empirical CDF of the ranks of quantity ``j``
        (the fraction of ranks below ``k``) minus the uniform CDF."""
        L = self.num_rank_draws
        k = np.arange(L + 2)
        below = (self.ranks[None, :, :] < k[:, None, None]).mean(axis=1)
        z = k / (L + 1)
        return z, below - z[:, None]

    def plot(
        self, path: str | None = None, alpha: float = 0.05, names: Sequence[str] | None = None
    ):
        """The ECDF-difference plot (Säilynoja et al. 2022): per quantity, the empirical
        CDF of the fractional ranks minus the uniform CDF, inside the simultaneous
        ``1 - alpha`` band of uniform ranks (:func:`ecdf_bands`). A calibrated method
        stays inside the band; a U-shaped rank histogram (posteriors too narrow) shows as a
        dip below zero then a rise, a biased one as a one-sided bulge.

        Needs matplotlib (imported here). Returns ``path`` when given (the figure is saved
        and closed), else the matplotlib Figure.
        """
        try:
            import matplotlib

            if path is not None:
                matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("SBCResult.plot needs matplotlib: pip install matplotlib") from None
        names = list(self.names if names is None else names)
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise ValueError(f"names: {unknown} are not ranked quantities ({list(self.names)})")
        z, diff = self.ecdf_difference()
        lower, upper = ecdf_bands(self.num_simulations, self.num_rank_draws, alpha=alpha)
        ncol = min(len(names), 4)
        nrow = -(-len(names) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
        for ax in axes.ravel()[len(names) :]:
            ax.set_visible(False)
        for k, (ax, name) in enumerate(zip(axes.ravel(), names, strict=False)):
            j = self.names.index(name)
            ax.fill_between(
                z,
                lower - z,
                upper - z,
                step="post",
                color="0.85",
                label=f"{1 - alpha:.0%} simultaneous band",
            )
            ax.step(z, diff[:, j], where="post", color="C0", lw=1.5)
            ax.axhline(0.0, color="0.4", lw=0.6)
            ax.set_title(f"{name}  (p = {self.p_values[name]:.2g})", fontsize=9)
            ax.tick_params(labelsize=7)
            if k + ncol >= len(names):  # the lowest plot of its column
                ax.set_xlabel("fractional rank", fontsize=8)
            if k % ncol == 0:
                ax.set_ylabel("ECDF - uniform", fontsize=8)
        axes[0, 0].legend(fontsize=7, loc="lower left")
        fig.suptitle(
            f"SBC, method {self.method!r}: {self.num_simulations} simulations, "
            f"L = {self.num_rank_draws}",
            fontsize=10,
        )
        fig.tight_layout()
        if path is None:
            return fig
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def ecdf_bands(
    num_simulations: int,
    num_rank_draws: int,
    alpha: float = 0.05,
    num_trials: int = 4000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Simultaneous ``1 - alpha`` bands of the ECDF of ``N = num_simulations`` uniform
    ranks on ``0..L``, on the grid ``z_k = k / (L + 1)``, ``k = 0..L+1``.

    The simulation method of Säilynoja, Bürkner and Vehtari (2022, section 2.2): under
    uniformity ``N F(z_k)`` is Binomial(N, z_k) at each point. ``num_trials`` sets of N
    uniform ranks are drawn; for each, the smallest two-sided pointwise tail probability
    along the grid is kept; the ``alpha`` quantile ``gamma`` of those is the pointwise level
    at which the whole ECDF stays inside with probability ``1 - alpha``. The band is the
    Binomial ``gamma / 2`` and ``1 - gamma / 2`` quantiles over N.

    Returns ``(lower, upper)``, each ``(L + 2,)``, on the CDF scale (subtract ``z`` for the
    ECDF-difference plot).

    >>> lower, upper = ecdf_bands(50, 99)
    >>> lower.shape, bool(lower[50] < 0.5 < upper[50])
    ((101,), True)
    """
    from scipy import stats

    if not _is_int(num_simulations) or num_simulations < 1:
        raise ValueError(f"num_simulations: expected an integer >= 1, got {num_simulations!r}")
    if not _is_int(num_rank_draws) or num_rank_draws < 1:
        raise ValueError(f"num_rank_draws: expected an integer >= 1, got {num_rank_draws!r}")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha: must be in (0, 1), got {alpha!r}")
    n, L = int(num_simulations), int(num_rank_draws)
    z = np.arange(L + 2) / (L + 1)
    rng = np.random.default_rng(seed)
    ranks = rng.integers(0, L + 1, size=(int(num_trials), n))
    # counts below each grid point: cumulative histogram of the ranks
    hist = np.apply_along_axis(np.bincount, 1, ranks, minlength=L + 1)
    counts = np.concatenate([np.zeros((hist.shape[0], 1), int), np.cumsum(hist, axis=1)], axis=1)
    inner = slice(1, L + 1)  # the end points are 0 and 1 for every ECDF
    zc = z[inner]
    c = counts[:, inner]
    tail = np.minimum(stats.binom.cdf(c, n, zc), stats.binom.sf(c - 1, n, zc))
    gamma = float(np.quantile(2.0 * tail.min(axis=1), alpha))
    lower = stats.binom.ppf(gamma / 2, n, z) / n
    upper = stats.binom.ppf(1 - gamma / 2, n, z) / n
    lower[0], upper[0], lower[-1], upper[-1] = 0.0, 0.0, 1.0, 1.0
    return lower, upper


# ---------------------------------------------------------------------- sbc


def _check_args(model, tasks_like, num_simulations, method, seed, fit_model, L, num_bins):
    for field, m in (("model", model), ("fit_model", fit_model)):
        if not isinstance(m, _TaskModel):
            raise ValueError(
                f"{field}: expected a bm.Hierarchical (or bm.pooled / bm.unpooled) model, got "
                f"{type(m).__name__}"
            )
    if not isinstance(tasks_like, TaskSet):
        raise ValueError(f"tasks_like: expected a bm.TaskSet, got {type(tasks_like).__name__}")
    if not _is_int(num_simulations) or num_simulations < 1:
        raise ValueError(f"num_simulations: expected an integer >= 1, got {num_simulations!r}")
    if method not in METHODS:
        raise ValueError(f"method: must be one of {METHODS}, got {method!r}")
    if not _is_int(seed) or not 0 <= seed < _MAX_SEED:
        raise ValueError(f"seed: expected an integer in [0, 2**32), got {seed!r}")
    if not _is_int(L) or L < 1:
        raise ValueError(f"num_rank_draws: expected an integer >= 1, got {L!r}")
    if num_bins is not None and (not _is_int(num_bins) or not 2 <= num_bins <= L + 1):
        raise ValueError(
            f"num_bins: expected None or an integer in [2, num_rank_draws + 1 = {L + 1}], got "
            f"{num_bins!r}"
        )
    if model.likelihood.per_task_density:
        raise ValueError(
            f"model: its likelihood {type(model.likelihood).__name__} gives a per-task density "
            "with no distribution of y to simulate from"
        )


def _default_bins(num_simulations: int, L: int) -> int:
    """The largest divisor of ``L + 1`` (so every bin covers as many ranks) that is at most
    20 and leaves at least 5 expected simulations per bin (2 at the least)."""
    cap = max(2, min(20, num_simulations // 5))
    divisors = [b for b in range(2, cap + 1) if (L + 1) % b == 0]
    return divisors[-1] if divisors else min(cap, L + 1)


def _total_draws(engine, options: dict) -> int:
    opts = dict(engine.options, **options)
    samples = opts.get("num_samples", 1)
    chains = opts.get("num_chains", 1)
    thin = opts.get("thinning", 1)
    try:
        return int(chains) * (int(samples) // max(int(thin), 1))
    except (TypeError, ValueError):
        return -1  # the engine's own check names the bad option


def _check_fit_options(engine, fit_options: dict, L: int) -> None:
    unknown = sorted(set(fit_options) - set(engine.options))
    if unknown:
        raise ValueError(
            f"fit_options: unknown option(s) {unknown} for method {engine.name!r}; known: "
            f"{sorted(engine.options)}"
        )
    total = _total_draws(engine, fit_options)
    if 0 <= total < L:
        raise ValueError(
            f"num_rank_draws: {L} is more than the {total} posterior draws of each fit; "
            "lower it or raise num_samples"
        )


def _task_selection(task_params, tasks: TaskSet) -> list[int]:
    if _is_int(task_params):
        if task_params < 0:
            raise ValueError(f"task_params: expected a count >= 0, got {task_params!r}")
        return list(range(min(int(task_params), tasks.num_tasks)))
    if isinstance(task_params, str) or not isinstance(task_params, Sequence):
        raise ValueError(
            "task_params: expected a count or a sequence of task labels / indices, got "
            f"{task_params!r}"
        )
    idx = []
    for t in task_params:
        try:
            idx.append(tasks._index_of(t))
        except ValueError as err:
            raise ValueError(f"task_params: {err}") from None
    if len(set(idx)) != len(idx):
        raise ValueError("task_params: a task is named twice")
    return idx


def _components(site, shape, dims, coords, task_ids):
    """``[(name, index)]`` of the ranked scalar components of one site of shape ``shape``."""
    names = list(dims.get(site, []))[: len(shape)]
    names += [None] * (len(shape) - len(names))
    axes = []
    for axis, (dim, size) in enumerate(zip(names, shape, strict=True)):
        ids = task_ids if (dim == "task" and axis == 0) else range(size)
        labels = coords.get(dim) if dim is not None else None
        axes.append([(i, str(labels[i]) if labels is not None else str(i)) for i in ids])
    out = [((), site)] if not axes else []
    if axes:
        for combo in np.ndindex(*[len(a) for a in axes]):
            picked = [axes[a][c] for a, c in enumerate(combo)]
            index = tuple(p[0] for p in picked)
            out.append((index, f"{site}[{', '.join(p[1] for p in picked)}]"))
    return out


def sbc(
    model: Any,
    tasks_like: TaskSet,
    num_simulations: int = 100,
    method: str = "nuts",
    seed: int = 0,
    fit_model: Any = None,
    *,
    num_rank_draws: int = 99,
    num_bins: int | None = None,
    task_params: int | Sequence = 3,
    **fit_options: Any,
) -> SBCResult:
    """Simulation-based calibration of ``method`` on ``model`` (Talts et al. 2018).

    For each of ``num_simulations`` simulations: the hyperparameters, every task's
    parameters and new responses ``y`` are drawn from ``model``'s prior (NumPyro
    ``Predictive`` on the model built for ``tasks_like``); the data keep ``tasks_like``'s
    tasks, rows, inputs ``x``, noise scales / standard errors and trials, only ``y`` is
    replaced (:meth:`TaskSet.with_y`); ``fit_model`` is fitted by ``bm.fit(fit_model,
    data, method, seed=..., **fit_options)``; and the rank of each true value among
    ``L = num_rank_draws`` posterior draws is recorded.

    Ranked: every scalar component of every sampled site without a ``task`` dim (the
    population hyperparameters, a likelihood's shared noise), and of the sites with one
    (``theta``) the tasks in ``task_params``: a count (the first ones, default 3) or a
    sequence of labels or indices.

    Thinning: the ``L`` draws are spread evenly over all draws of all chains (a stride of
    about ``num_chains * num_samples / L``). Ranks are uniform only if those draws are
    roughly independent, so aim for a bulk ESS of at least ``L`` per fit;
    ``info["min_ess"]`` holds the smallest ESS of the ranked quantities per simulation and
    ``info["low_ess"]`` how many fell below ``L``. Exact and VI draws are independent.

    The p-value per quantity is the chi-squared test (``scipy.stats.chisquare``) of the
    ranks binned into ``num_bins`` equal bins (default: the largest divisor of ``L + 1``
    up to 20 that leaves at least 5 simulations per bin). With P quantities and several
    methods, expect some small p-values by chance: judge them together (a Bonferroni bound
    ``min p < alpha / P``) and with :meth:`SBCResult.plot`.

    Compiled programs are reused: every simulation fits the same ``fit_model`` object on
    data of one shape, so NUTS, collapsed NUTS and VI compile once (``info["compiled"]``).
    With a population's ``parameterization="auto"`` the centring follows each data set, and
    each form it takes (all centred, all non-centred, mixed) compiles once; a fixed
    ``parameterization="noncentered"`` (or ``"centered"``) compiles once in all.
    Progress bars are off unless ``progress_bar`` is given. Diagnostics warnings of the
    individual fits are counted (``info["fit_warnings"]``) and summarised in one
    ``FitWarning``.

    Args:
      model: the ``bm.Hierarchical`` (or pooled / unpooled) model whose prior makes the
        data; its likelihood must have a distribution of ``y``.
      tasks_like: a ``bm.TaskSet`` whose layout the simulated data copy.
      num_simulations: number of simulated data sets (an integer >= 1).
      method: the ``bm.fit`` method (``"auto"`` is resolved once, on ``tasks_like``).
      seed: integer in ``[0, 2**32)``; the prior draws, the fits' seeds and the tie breaks
        follow from it.
      fit_model: the model fitted (default ``model``); a different one (a wrong prior)
        shows how a mis-specified analysis fails the check. It must have the ranked sites.
      num_rank_draws: L, posterior draws per rank (ranks lie in ``0..L``); at most the
        fit's number of draws.
      num_bins: bins of the chi-squared test, in ``[2, L + 1]``.
      task_params: which tasks' parameters are ranked.
      **fit_options: options of the engine (``num_samples``, ``num_chains``, ...).

    Returns:
      an :class:`SBCResult` (ranks, p-values, a table and the ECDF-difference plot).

    Raises:
      ValueError: for bad arguments, before anything is drawn or compiled.
      FloatingPointError: when a fit returns non-finite draws of a ranked quantity (the
        simulation and the quantity are named).
    """
    fit_model = model if fit_model is None else fit_model
    L = num_rank_draws
    _check_args(model, tasks_like, num_simulations, method, seed, fit_model, L, num_bins)
    task_ids = _task_selection(task_params, tasks_like)
    # the engine's options first (plain Python checks), then the models and data
    if method != "auto":
        _check_fit_options(ENGINES[method], fit_options, L)
    built = model.build(tasks_like)
    try:
        fit_built = fit_model.build(tasks_like)
    except ValueError as err:
        raise ValueError(f"fit_model: {err}") from None
    engine_name = resolve_method(method, fit_model, tasks_like)
    engine = ENGINES[engine_name]
    if method == "auto":
        _check_fit_options(engine, fit_options, L)
    why = engine.why_not(fit_model, tasks_like)
    if why is not None:
        raise ValueError(f"method: {engine_name!r} cannot fit fit_model: {why}")
    if "progress_bar" in engine.options:
        fit_options.setdefault("progress_bar", False)
    num_bins = _default_bins(num_simulations, L) if num_bins is None else int(num_bins)

    from numpyro.infer import Predictive

    t0 = time.perf_counter()
    data = {k: v for k, v in built.data.items() if k != "y"}
    # vectorised and run op by op: no program to compile per call (the ops are cached)
    prior = Predictive(built.fn, num_samples=int(num_simulations), parallel=True)(
        jax.random.PRNGKey(int(seed)), y=None, _prior=True, **data
    )
    prior = {k: np.asarray(v) for k, v in prior.items()}
    prior_seconds = time.perf_counter() - t0
    sites = [k for k in prior if k != "y" and k not in built.hidden and k in built.dims]
    # a hyperparameter fit_model fixes (a number, not a prior) keeps its dims but is no site
    fixed = set(model.hyper_sites()) - set(fit_model.hyper_sites())
    missing = [k for k in sites if k not in fit_built.dims or k in fixed]
    if missing:
        raise ValueError(
            f"fit_model: it has no site(s) {missing} that model draws; SBC ranks the same "
            "quantities in both"
        )
    ranked = []  # (site, index, name)
    for site in sites:
        for index, name in _components(
            site, prior[site].shape[1:], built.dims, built.coords, task_ids
        ):
            ranked.append((site, index, name))
    if not ranked:
        raise ValueError("model: no sampled quantity to rank")
    names = tuple(r[2] for r in ranked)
    y_sim = prior["y"].reshape(int(num_simulations), -1)
    bad = ~np.isfinite(y_sim).all(axis=1)
    if bad.any():
        raise FloatingPointError(
            f"sbc: the prior of model drew non-finite y in simulation {int(np.flatnonzero(bad)[0])}"
            " (a prior too wide for the dtype?)"
        )
    truth = np.stack([prior[s][(slice(None), *i)] for s, i, _ in ranked], axis=1)

    rng = np.random.default_rng(int(seed))
    fit_seeds = rng.integers(0, 2**31 - 1, size=int(num_simulations))
    ranks = np.zeros((int(num_simulations), len(ranked)), dtype=int)
    min_ess = np.zeros(int(num_simulations))
    compiled, fit_warnings, seconds = [], np.zeros(int(num_simulations), int), []
    first_warning = None
    for i in range(int(num_simulations)):
        tasks_i = tasks_like.with_y(y_sim[i])
        t1 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            post = fit(fit_model, tasks_i, engine_name, seed=int(fit_seeds[i]), **fit_options)
        seconds.append(time.perf_counter() - t1)
        for w in caught:
            if issubclass(w.category, FitWarning):
                fit_warnings[i] += 1
                first_warning = first_warning or str(w.message)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        compiled.append(_compiled(post))
        absent = sorted({s for s, _, _ in ranked} - set(post.samples))
        if absent:
            raise ValueError(f"fit_model: its posterior has no draws of {absent} to rank")
        draws = np.stack(
            [post.samples[s][(slice(None), slice(None), *idx)] for s, idx, _ in ranked], axis=-1
        )  # (chain, draw, P)
        finite = np.isfinite(draws).all(axis=(0, 1))
        if not finite.all():
            bad_name = names[int(np.argmin(finite))]
            raise FloatingPointError(
                f"sbc: simulation {i}: the {engine_name} posterior of {bad_name} has "
                "non-finite draws"
            )
        chains, num = draws.shape[:2]
        if chains * num < L:
            raise ValueError(
                f"num_rank_draws: {L} is more than the {chains * num} draws of the fit"
            )
        with np.errstate(invalid="ignore", divide="ignore"):
            ess = ess_bulk(draws) if num >= 4 else np.full(len(ranked), np.nan)
        min_ess[i] = float(np.nanmin(ess)) if np.isfinite(ess).any() else np.nan
        flat = draws.reshape(chains * num, -1)
        keep = np.round(np.linspace(0, chains * num - 1, L)).astype(int)
        thinned = flat[keep]
        less = (thinned < truth[i]).sum(axis=0)
        ties = (thinned == truth[i]).sum(axis=0)
        ranks[i] = less + rng.integers(0, ties + 1)
    from scipy import stats

    bins = ranks * num_bins // (L + 1)
    p_values = {}
    for j, name in enumerate(names):
        counts = np.bincount(bins[:, j], minlength=num_bins)
        p_values[name] = float(stats.chisquare(counts).pvalue)
    warned = int((fit_warnings > 0).sum())
    if warned:
        warnings.warn(
            f"bayesmeta sbc: {warned} of {num_simulations} fits warned about their "
            f"diagnostics (first: {first_warning})",
            FitWarning,
            stacklevel=2,
        )
    info = {
        "seeds": fit_seeds,
        "min_ess": min_ess,
        "low_ess": int(np.sum(min_ess < L)),
        "compiled": compiled,
        "fit_warnings": fit_warnings,
        "seconds": np.asarray(seconds),
        "prior_seconds": prior_seconds,
    }
    return SBCResult(names, ranks, truth, int(L), int(num_bins), p_values, engine_name, info)


def _compiled(post) -> bool | None:
    """Whether a fit compiled its program (None: the engine does not say)."""
    timing = post.info.get("timing")
    if isinstance(timing, dict) and "compiled" in timing:
        return bool(timing["compiled"])
    flag = post.info.get("compiled")
    if flag in ("new", "reused"):
        return flag == "new"
    return None
