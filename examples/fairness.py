"""Fairness across groups: demographic groups as tasks of very unequal sizes; a single
global model, a meta-learned initialisation adapted with one gradient step per group, and
bayesmeta's hierarchical Bayesian fit with group-level parameters.

Each group ``g`` has its own linear relation ``y = a_g + b_g x + noise`` (``a_g ~ N(0, 1)``,
``b_g ~ N(1, 0.5)``, noise sd 0.5, ``x ~ N(0, 1)``); the training sizes are very unequal
(``--sizes``, default 400 down to 3 rows), and every group has the same number of test rows,
so that its error is measured equally well. Compared by per-group test mean squared error:

* **global**: one least-squares line on all training rows (large groups dominate);
* **global + 1 step**: one gradient step (rate ``--alpha``) on each group's own rows from it;
* **MAML, 0 / 1 step**: an initialisation learned by ``bm.meta.maml`` over the groups (each
  meta-step splits every group's rows at random into support and query halves), before and
  after one gradient step on the group's training rows;
* **per-group least squares**: each group alone (unstable for the tiny groups);
* **hierarchical Bayes**: ``bm.fit`` of ``LinearRegression`` with group-level intercept and
  slope drawn from a correlated normal population (``MvNormal``), ``method="collapsed"``;
  predictions by the posterior mean of each group's line, with 90% posterior intervals of
  each group's coefficients and of its test error.

The disparity is the largest minus the smallest group test error. Its 95% interval comes
from a bootstrap over each group's test rows; for the Bayesian fit the posterior interval
(over parameter draws) is printed as well.

Run:  python examples/fairness.py [--quick] [--out DIR] [--json] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bayesmeta as bm

NOISE_SD = 0.5


def simulate(rng, sizes, test_size):
    """Per-group coefficients, training rows and test rows."""
    num = len(sizes)
    coef = np.stack([rng.normal(0.0, 1.0, num), rng.normal(1.0, 0.5, num)], axis=1)
    train, test = [], []
    for g, n in enumerate(sizes):
        for rows, out in ((n, train), (test_size, test)):
            x = rng.normal(size=rows)
            y = coef[g, 0] + coef[g, 1] * x + NOISE_SD * rng.normal(size=rows)
            out.append((x, y))
    return coef, train, test


def padded(groups, width):
    """Rows of every group padded to ``width``: ``x, y, w`` of shape ``(G, width)``
    (``w`` = 1 for a real row, 0 for padding)."""
    x = np.zeros((len(groups), width))
    y = np.zeros_like(x)
    w = np.zeros_like(x)
    for g, (xg, yg) in enumerate(groups):
        x[g, : xg.size], y[g, : xg.size], w[g, : xg.size] = xg, yg, 1.0
    return jnp.asarray(x), jnp.asarray(y), jnp.asarray(w)


def weighted_mse(params, batch):
    """One group's mean squared error over its rows with weight 1 (none: zero)."""
    pred = params[0] + params[1] * batch["x"]
    return jnp.sum(batch["w"] * (pred - batch["y"]) ** 2) / jnp.maximum(jnp.sum(batch["w"]), 1.0)


def make_sampler(x, y, w):
    """Every meta-batch holds all groups; each row goes to support or query at random."""

    def sampler(key):
        to_support = jax.random.bernoulli(key, 0.5, w.shape)
        ws, wq = w * to_support, w * (1 - to_support)
        return {"support": {"x": x, "y": y, "w": ws}, "query": {"x": x, "y": y, "w": wq}}

    return sampler


def group_errors(coef, test):
    """Test MSE of each group under per-group lines ``coef`` (G, 2)."""
    return np.array(
        [np.mean((c[0] + c[1] * xg - yg) ** 2) for c, (xg, yg) in zip(coef, test, strict=True)]
    )


def bootstrap_errors(coef, test, rng, num):
    """Bootstrap draws ``(num, G)`` of every group's test MSE (test rows resampled)."""
    out = np.empty((num, len(test)))
    for g, (xg, yg) in enumerate(test):
        sq = (coef[g, 0] + coef[g, 1] * xg - yg) ** 2
        idx = rng.integers(0, sq.size, size=(num, sq.size))
        out[:, g] = sq[idx].mean(axis=1)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="400,200,100,50,20,10,5,3", help="training rows")
    parser.add_argument("--test-size", type=int, default=300, help="test rows per group")
    parser.add_argument("--alpha", type=float, default=0.3, help="adaptation step size")
    parser.add_argument("--meta-iters", type=int, default=2000)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--draws", type=int, default=1000, help="posterior draws per chain")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--out", default=".", help="directory for the figure")
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if len(sizes) < 2 or min(sizes) < 1:
        parser.error("--sizes: at least two groups, each with at least one row")
    fit_options = dict(num_chains=args.chains, num_warmup=500, num_samples=args.draws)
    if args.quick:
        args.test_size, args.meta_iters, args.bootstrap = 50, 50, 200
        fit_options = dict(num_chains=1, num_warmup=100, num_samples=100)
    start = time.time()
    rng = np.random.default_rng(args.seed)
    coef_true, train, test = simulate(rng, sizes, args.test_size)
    num_groups = len(sizes)
    labels = [f"group {g} (n={n})" for g, n in enumerate(sizes)]
    x, y, w = padded(train, max(sizes))

    # ---- a single global model: least squares on the pooled rows
    x_all = np.concatenate([xg for xg, _ in train])
    y_all = np.concatenate([yg for _, yg in train])
    design = np.stack([np.ones_like(x_all), x_all], axis=1)
    global_coef = np.linalg.lstsq(design, y_all, rcond=None)[0]

    # ---- one gradient step per group, from the global model and from a MAML init
    data = {"x": x, "y": y, "w": w}
    one_step = jax.jit(
        jax.vmap(lambda p, b: p - args.alpha * jax.grad(weighted_mse)(p, b), in_axes=(None, 0))
    )
    learner = bm.meta.maml(weighted_mse, optax.adam(0.01), inner_lr=args.alpha)
    state, _ = bm.meta.train(
        learner,
        jnp.zeros(2),
        make_sampler(x, y, w),
        args.meta_iters,
        seed=args.seed,
        progress_bar=False,
    )
    maml_init = np.asarray(state.params)

    # ---- per-group least squares (a tiny ridge keeps a 1- or 2-row group finite)
    per_group = np.stack(
        [
            np.linalg.solve(
                np.stack([np.ones_like(xg), xg], 1).T @ np.stack([np.ones_like(xg), xg], 1)
                + 1e-6 * np.eye(2),
                np.stack([np.ones_like(xg), xg], 1).T @ yg,
            )
            for xg, yg in train
        ]
    )

    # ---- hierarchical Bayes: group-level (intercept, slope) from an MvNormal population
    tasks = bm.TaskSet.from_arrays(
        y=y_all,
        x=x_all,
        task=np.concatenate([np.full(n, g) for g, n in enumerate(sizes)]),
        labels=labels,
    )
    model = bm.Hierarchical(
        bm.likelihoods.LinearRegression(noise="shared"), bm.populations.MvNormal()
    )
    post = bm.fit(
        model, tasks, method="collapsed", seed=args.seed, progress_bar=False, **fit_options
    )
    theta = post.flat("theta")  # (draws, G, 2)
    hb_coef = theta.mean(axis=0)
    hb_low, hb_high = np.quantile(theta, [0.05, 0.95], axis=0)

    preds = {
        "global": np.broadcast_to(global_coef, (num_groups, 2)),
        "global + 1 step": np.asarray(one_step(jnp.asarray(global_coef), data)),
        "MAML, 0 steps": np.broadcast_to(maml_init, (num_groups, 2)),
        "MAML, 1 step": np.asarray(one_step(jnp.asarray(maml_init), data)),
        "per-group LS": per_group,
        "hierarchical Bayes": hb_coef,
    }
    errors = {name: group_errors(c, test) for name, c in preds.items()}
    boot = {name: bootstrap_errors(c, test, rng, args.bootstrap) for name, c in preds.items()}
    # the posterior over each group's test error, through the draws of its line
    xs, ys, ws = padded(test, args.test_size)
    xs, ys = np.asarray(xs), np.asarray(ys)
    sq = (theta[:, :, :1] + theta[:, :, 1:] * xs[None] - ys[None]) ** 2  # (draws, G, n)
    hb_err_draws = sq.mean(axis=2)
    elapsed = time.time() - start

    # ---- report
    print(
        f"Fairness: {num_groups} groups with {sizes} training rows and {args.test_size} test "
        f"rows each; noise sd {NOISE_SD} (the smallest achievable MSE is {NOISE_SD**2:.2f}); "
        f"one step of size {args.alpha}; {elapsed:.0f} s"
    )
    print("Per-group test MSE")
    short = {
        "global": "global",
        "global + 1 step": "glob+1",
        "MAML, 0 steps": "MAML+0",
        "MAML, 1 step": "MAML+1",
        "per-group LS": "own LS",
        "hierarchical Bayes": "HB",
    }
    print(
        f"{'group':<18}{'a_g':>7}{'b_g':>7}"
        + "".join(f"{short[k]:>9}" for k in preds)
        + f"{'HB a_g 90% interval':>22}{'HB MSE 90% interval':>22}"
    )
    for g in range(num_groups):
        cells = "".join(f"{errors[k][g]:>9.3f}" for k in preds)
        lo, hi = np.quantile(hb_err_draws[:, g], [0.05, 0.95])
        print(
            f"{labels[g]:<18}{coef_true[g, 0]:>7.2f}{coef_true[g, 1]:>7.2f}{cells}"
            f"{f'[{hb_low[g, 0]:.2f}, {hb_high[g, 0]:.2f}]':>22}{f'[{lo:.3f}, {hi:.3f}]':>22}"
        )
    print(f"\n{'model':<22}{'mean MSE':>10}{'worst':>8}{'disparity':>11}{'95% bootstrap':>20}")
    summary = {"groups": labels, "sizes": sizes, "models": {}}
    for name in preds:
        err = errors[name]
        disp = err.max() - err.min()
        d_boot = boot[name].max(axis=1) - boot[name].min(axis=1)
        lo, hi = np.quantile(d_boot, [0.025, 0.975])
        print(
            f"{name:<22}{err.mean():>10.3f}{err.max():>8.3f}{disp:>11.3f}"
            f"{f'[{lo:.3f}, {hi:.3f}]':>20}"
        )
        summary["models"][name] = {
            "group_mse": [float(e) for e in err],
            "mean_mse": float(err.mean()),
            "worst_mse": float(err.max()),
            "disparity": float(disp),
            "disparity_ci95": [float(lo), float(hi)],
        }
    hb_disp = hb_err_draws.max(axis=1) - hb_err_draws.min(axis=1)
    d_lo, d_hi = np.quantile(hb_disp, [0.05, 0.95])
    print(
        f"hierarchical Bayes disparity, posterior over the group lines: median "
        f"{np.median(hb_disp):.3f}, 90% interval [{d_lo:.3f}, {d_hi:.3f}]"
    )
    summary["hb_disparity_posterior90"] = [float(d_lo), float(d_hi)]
    summary["hb_intercept_interval90"] = [
        [float(a), float(b)] for a, b in zip(hb_low[:, 0], hb_high[:, 0], strict=True)
    ]

    # ---- figure
    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    ax = axes[0]
    pos = np.arange(num_groups)
    width = 0.8 / len(preds)
    for i, name in enumerate(preds):
        lo, hi = np.quantile(boot[name], [0.025, 0.975], axis=0)
        ax.bar(
            pos + i * width,
            errors[name],
            width,
            label=name,
            yerr=[errors[name] - lo, hi - errors[name]],
            capsize=2,
        )
    ax.axhline(NOISE_SD**2, color="k", lw=0.8, ls=":")
    ax.set_xticks(pos + 0.4 - width / 2, [f"n={n}" for n in sizes])
    ax.set_yscale("log")
    ax.set_ylabel("test MSE (95% bootstrap)")
    ax.set_title("per-group error")
    ax.legend(frameon=False, fontsize=7)
    ax = axes[1]
    names = list(preds)
    disp = [summary["models"][k]["disparity"] for k in names]
    ci = np.array([summary["models"][k]["disparity_ci95"] for k in names])
    ax.barh(
        names,
        disp,
        xerr=[np.array(disp) - ci[:, 0], ci[:, 1] - np.array(disp)],
        capsize=3,
        color=[f"C{i}" for i in range(len(names))],
    )
    ax.set_xscale("log")
    ax.set_xlabel("disparity: max - min group MSE")
    ax.set_title("disparity (95% bootstrap)")
    ax = axes[2]
    ax.errorbar(
        pos,
        hb_coef[:, 0],
        yerr=[hb_coef[:, 0] - hb_low[:, 0], hb_high[:, 0] - hb_coef[:, 0]],
        fmt="o",
        capsize=3,
        label="hierarchical Bayes (90%)",
    )
    ax.scatter(pos + 0.15, per_group[:, 0].clip(-5, 5), marker="x", label="per-group LS")
    ax.scatter(pos, coef_true[:, 0], marker="_", s=300, c="k", label="truth")
    ax.axhline(global_coef[0], color="grey", ls="--", lw=1, label="global")
    ax.set_xticks(pos, [f"n={n}" for n in sizes])
    ax.set_ylabel("group intercept a_g")
    ax.set_title("group intercepts: posterior intervals")
    ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    path = os.path.join(args.out, "fairness.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")
    summary.update(figures=[path], seconds=round(elapsed, 1))
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
