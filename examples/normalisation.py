"""Few-shot feature normalisation: global statistics, per-task statistics from the support
set, or empirical-Bayes shrinkage between the two, as the number of shots and the
diversity of the tasks vary.

Task ``t`` has a feature ``x ~ N(mu_t, sigma_t^2)`` with ``mu_t ~ N(0, d^2)`` and
``log sigma_t ~ N(0, (d/2)^2)``: ``d`` is the diversity of the tasks. A new batch of 20
tasks arrives with ``K`` support points each, and every task's feature must be
standardised, ``z = (x - mu_t) / sigma_t``, with estimated constants:

- **global**: the mean and standard deviation pooled over 200 meta-training tasks
  (no variance, bias ``mu_t`` and ``sigma_t`` vs the pooled spread);
- **per task**: the support mean and standard deviation (no bias, variance ``1/K``);
- **shrunken**: random-effects BLUPs (``bm.estimators.random_effects``, REML) across the
  batch's 20 tasks, of the log support standard deviations (bias-corrected, with their
  exact sampling variance ``psi'((K-1)/2) / 4``), then of the support means (standard
  errors ``sigma_hat_t / sqrt(K)`` from the shrunken scales).

The downstream error is the exact mean squared error of the standardised query feature,
``E (z_hat - z)^2`` over ``x ~ N(mu_t, sigma_t^2)``, averaged over tasks and replications;
the error of the constants is ``(mu_hat - mu)^2 / sigma^2 + (log sigma_hat - log sigma)^2``.
A method wins a cell when its error is lowest by more than two paired standard errors
(otherwise the cell is a tie, ``=``).

Run: ``python examples/normalisation.py`` (one to two minutes on a laptop CPU);
``--quick --out DIR`` for a tiny version; ``--json`` prints a JSON summary as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from scipy import special

import bayesmeta as bm

METHODS = ("global", "per-task", "shrunken")
SHOTS = (2, 3, 5, 10, 20, 50)
DIVERSITY = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def sample_tasks(rng, num_tasks, diversity):
    mu = diversity * rng.normal(size=num_tasks)
    sigma = np.exp(0.5 * diversity * rng.normal(size=num_tasks))
    return mu, sigma


def global_statistics(rng, diversity, num_tasks=200, num_points=50):
    """Pooled mean and standard deviation over meta-training tasks."""
    mu, sigma = sample_tasks(rng, num_tasks, diversity)
    x = mu[:, None] + sigma[:, None] * rng.normal(size=(num_tasks, num_points))
    return float(x.mean()), float(x.std(ddof=1))


def log_sd_moments(shots):
    """Mean offset and variance of ``log s`` (``s`` the sample standard deviation of ``K``
    normal points) about ``log sigma``: ``(K-1) s^2 / sigma^2 ~ chi^2_{K-1}``."""
    half = (shots - 1) / 2.0
    return 0.5 * (special.digamma(half) - np.log(half)), 0.25 * special.polygamma(1, half)


def shrunken_statistics(mean, sd, shots):
    """Random-effects BLUPs (REML) of the task log standard deviations (bias-corrected, with
    their exact sampling variance), then of the task means with standard errors
    ``sigma_hat / sqrt(K)`` from the shrunken scales."""
    offset, var = log_sd_moments(shots)
    log_sd = np.log(sd) - offset
    log_scale = bm.estimators.random_effects(log_sd, np.full(sd.shape, np.sqrt(var))).blups
    scale = np.exp(np.asarray(log_scale))
    loc = bm.estimators.random_effects(mean, scale / np.sqrt(shots), method="REML").blups
    return np.asarray(loc), scale


def downstream_error(mu_hat, sigma_hat, mu, sigma):
    """Exact ``E (z_hat - z)^2`` for ``x ~ N(mu, sigma^2)``, ``z = (x - mu) / sigma``."""
    a = 1.0 / sigma_hat - 1.0 / sigma
    b = mu / sigma - mu_hat / sigma_hat
    return a**2 * (sigma**2 + mu**2) + 2 * a * b * mu + b**2


def constant_error(mu_hat, sigma_hat, mu, sigma):
    return ((mu_hat - mu) / sigma) ** 2 + (np.log(sigma_hat) - np.log(sigma)) ** 2


def run_cell(rng, shots, diversity, num_reps, num_tasks):
    """Per replication: mean downstream and constant errors of each method, ``(R, 3)``."""
    g_mean, g_sd = global_statistics(rng, diversity)
    down = np.empty((num_reps, len(METHODS)))
    const = np.empty((num_reps, len(METHODS)))
    for r in range(num_reps):
        mu, sigma = sample_tasks(rng, num_tasks, diversity)
        x = mu[:, None] + sigma[:, None] * rng.normal(size=(num_tasks, shots))
        mean, sd = x.mean(axis=1), x.std(axis=1, ddof=1)
        estimates = {
            "global": (np.full(num_tasks, g_mean), np.full(num_tasks, g_sd)),
            "per-task": (mean, sd),
            "shrunken": shrunken_statistics(mean, sd, shots),
        }
        for j, name in enumerate(METHODS):
            m_hat, s_hat = estimates[name]
            down[r, j] = downstream_error(m_hat, s_hat, mu, sigma).mean()
            const[r, j] = constant_error(m_hat, s_hat, mu, sigma).mean()
    return down, const


def winner(errors):
    """Index of the method with the lowest mean error, or -1 when the best and the
    runner-up differ by less than two paired standard errors."""
    means = errors.mean(axis=0)
    order = np.argsort(means)
    diff = errors[:, order[1]] - errors[:, order[0]]
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.inf
    return int(order[0]) if diff.mean() > 2 * se else -1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=60, help="replications per cell")
    parser.add_argument("--tasks", type=int, default=20, help="tasks per batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--out", default=".", help="directory for the figure")
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args(argv)
    shots, diversity = SHOTS, DIVERSITY
    if args.quick:
        shots, diversity, args.reps = (2, 10), (0.1, 1.0), 4
    if args.tasks < 3:
        parser.error("--tasks must be at least 3")
    start = time.time()
    rng = np.random.default_rng(args.seed)
    down = np.empty((len(shots), len(diversity), len(METHODS)))
    down_se = np.empty_like(down)
    const = np.empty_like(down)
    wins = np.empty((len(shots), len(diversity)), dtype=int)
    gain = np.empty((len(shots), len(diversity)))
    for i, k in enumerate(shots):
        for j, d in enumerate(diversity):
            dn, cn = run_cell(rng, k, d, args.reps, args.tasks)
            down[i, j], const[i, j] = dn.mean(axis=0), cn.mean(axis=0)
            down_se[i, j] = dn.std(axis=0, ddof=1) / np.sqrt(args.reps)
            wins[i, j] = winner(dn)
            gain[i, j] = min(down[i, j, 0], down[i, j, 1]) / down[i, j, 2]
    elapsed = time.time() - start

    print(
        f"Few-shot normalisation: {args.tasks} tasks per batch, {args.reps} replications per "
        f"cell ({elapsed:.0f} s)"
    )
    print("downstream error E(z_hat - z)^2 (constants error in brackets); winner by > 2 SE")
    head = "".join(f"{m:>20}" for m in METHODS)
    print(f"{'K':>3}{'d':>6}{head}{'winner':>10}{'gain':>7}")
    for i, k in enumerate(shots):
        for j, d in enumerate(diversity):
            cells = "".join(
                f"{down[i, j, m]:>10.4f} ({const[i, j, m]:.4f})" for m in range(len(METHODS))
            )
            name = "tie" if wins[i, j] < 0 else METHODS[wins[i, j]]
            print(f"{k:>3}{d:>6.2f}{cells}{name:>10}{gain[i, j]:>7.2f}")
    print("gain = min(global, per-task) / shrunken (> 1: shrinkage beats both)")
    counts = {m: int(np.sum(wins == n)) for n, m in enumerate(METHODS)}
    counts["tie"] = int(np.sum(wins < 0))
    print("cells won: " + ", ".join(f"{m} {c}" for m, c in counts.items()))

    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    ax = axes[0]
    colours = ListedColormap(["lightgrey", "tab:blue", "tab:orange", "tab:green"])
    ax.imshow(wins + 1, cmap=colours, vmin=0, vmax=3, origin="lower", aspect="auto")
    for i in range(len(shots)):
        for j in range(len(diversity)):
            label = "tie" if wins[i, j] < 0 else METHODS[wins[i, j]]
            ax.text(j, i, label, ha="center", va="center", fontsize=8)
    ax.set_title("winner (downstream error, > 2 SE)")
    ax = axes[1]
    im = ax.imshow(np.log2(gain), cmap="RdBu", vmin=-2, vmax=2, origin="lower", aspect="auto")
    for i in range(len(shots)):
        for j in range(len(diversity)):
            ax.text(j, i, f"{gain[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="log2 gain of shrinkage over the best other")
    ax.set_title("gain = min(global, per-task) / shrunken")
    for ax in axes:
        ax.set_xticks(range(len(diversity)), [f"{d:g}" for d in diversity])
        ax.set_yticks(range(len(shots)), [str(k) for k in shots])
        ax.set_xlabel("task diversity d")
        ax.set_ylabel("shots K")
    fig.tight_layout()
    path = os.path.join(args.out, "normalisation.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")

    summary = {
        "shots": list(shots),
        "diversity": list(diversity),
        "downstream": {m: down[..., n].round(6).tolist() for n, m in enumerate(METHODS)},
        "constants": {m: const[..., n].round(6).tolist() for n, m in enumerate(METHODS)},
        "winner": [["tie" if w < 0 else METHODS[w] for w in row] for row in wins],
        "gain": gain.round(4).tolist(),
        "cells_won": counts,
        "seconds": round(elapsed, 1),
    }
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
