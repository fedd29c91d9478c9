"""A new financial asset: fit a population of return dynamics on many assets, then forecast
a brand-new asset from a few weeks of its data with ``post.adapt()``.

Simulated daily returns (in %) of asset ``i`` follow an AR(1) mean with GARCH(1,1)
volatility, every parameter drawn from a population:

    r_t = c_i + phi_i r_{t-1} + sigma_t z_t,   z_t ~ N(0, 1)
    sigma_t^2 = omega_i + a_i (r_{t-1} - c_i - phi_i r_{t-2})^2 + b_i sigma_{t-1}^2

with ``phi_i ~ N(0.1, 0.15)``, ``c_i ~ N(0.03, 0.03)``, a long-run daily volatility
``exp(N(log 1.5, 0.4))`` %, ``a_i ~ U(0.03, 0.12)`` and persistence ``a_i + b_i ~ U(0.90, 0.98)``.

What is modelled, and what is simplified: the volatility is not modelled as a latent
process; returns are scaled by a volatility proxy known at forecast time, the RiskMetrics
EWMA ``v_t^2 = 0.94 v_{t-1}^2 + 0.06 r_{t-1}^2`` (started at the median variance of the
training assets). The model of the scaled returns ``y_t = r_t / v_t`` on
``x_t = r_{t-1} / v_t`` is a per-asset linear regression ``y_t = alpha_i + phi_i x_t + e_t``,
``e_t ~ N(0, sigma)`` with one shared ``sigma`` (about 1 when the proxy tracks the
volatility), ``(alpha_i, phi_i)`` drawn from a correlated normal population
(``bm.likelihoods.LinearRegression`` + ``bm.populations.MvNormal``, ``method="collapsed"``).
The AR coefficient is then the same as in the returns, and the intercept is the mean in
units of the volatility (a simplification: ``c_i / v_t`` is taken as constant).

A new asset observed for ``w`` weeks (5 days each) gets its posterior from
``post.adapt(new_tasks)`` (exact, conjugate for this model); each of the next 20 days is
forecast one step ahead (the lagged return and the proxy are known), with the posterior
predictive mean and central 90% interval (from the draws of ``alpha, phi, sigma``) times
``v_t``. Compared with:

* **per-asset**: least squares on the new asset's own scaled data, with the classical
  Student-t prediction interval (``n - 2`` degrees of freedom);
* **pooled**: one least-squares line and noise sd on all training assets' scaled data;
* **oracle**: the true ``c_i``, ``phi_i`` and GARCH ``sigma_t`` (the best achievable).

Scores over the new assets: root mean squared one-step error (in %) and the coverage of
the 90% intervals, with 95% intervals over assets.

Run:  python examples/new_asset.py [--quick] [--out DIR] [--json] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from scipy import stats

import bayesmeta as bm

LAMBDA = 0.94
HORIZON = 20
DAYS_PER_WEEK = 5


def simulate(rng, num_assets, num_days, burn=200):
    """Returns ``(num_assets, num_days)``, true GARCH sd ``sigma_t`` and the parameters."""
    phi = rng.normal(0.1, 0.15, num_assets).clip(-0.8, 0.8)
    c = rng.normal(0.03, 0.03, num_assets)
    vol = np.exp(rng.normal(np.log(1.5), 0.4, num_assets))
    a = rng.uniform(0.03, 0.12, num_assets)
    b = rng.uniform(0.90, 0.98, num_assets) - a
    omega = vol**2 * (1 - a - b)
    total = num_days + burn
    r = np.zeros((num_assets, total))
    sig = np.zeros_like(r)
    sig2, eps, prev = vol**2, np.zeros(num_assets), np.zeros(num_assets)
    for t in range(total):
        sig2 = omega + a * eps**2 + b * sig2
        eps = np.sqrt(sig2) * rng.normal(size=num_assets)
        r[:, t] = c + phi * prev + eps
        sig[:, t] = np.sqrt(sig2)
        prev = r[:, t]
    return r[:, burn:], sig[:, burn:], {"phi": phi, "c": c}


def ewma_proxy(r, start_var):
    """``v_t`` from returns before ``t``: ``v_t^2 = L v_{t-1}^2 + (1 - L) r_{t-1}^2``."""
    v2 = np.empty_like(r)
    v2[:, 0] = start_var
    for t in range(1, r.shape[1]):
        v2[:, t] = LAMBDA * v2[:, t - 1] + (1 - LAMBDA) * r[:, t - 1] ** 2
    return np.sqrt(v2)


def scaled(r, v):
    """Rows ``(y_t, x_t) = (r_t / v_t, r_{t-1} / v_t)`` for ``t >= 1``: ``(A, T - 1)`` each."""
    return r[:, 1:] / v[:, 1:], r[:, :-1] / v[:, 1:]


def ols(x, y):
    design = np.stack([np.ones_like(x), x], axis=-1)
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    resid = y - design @ coef
    return coef, design, resid


def mean_ci(per_asset):
    per_asset = np.asarray(per_asset)
    return float(per_asset.mean()), float(1.96 * per_asset.std(ddof=1) / np.sqrt(per_asset.size))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-assets", type=int, default=100)
    parser.add_argument("--train-days", type=int, default=250)
    parser.add_argument("--new-assets", type=int, default=200)
    parser.add_argument("--weeks", default="1,2,4,8,13", help="observed weeks of a new asset")
    parser.add_argument("--draws", type=int, default=1000, help="posterior draws per chain")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--out", default=".", help="directory for the figure")
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args(argv)
    weeks = [int(w) for w in args.weeks.split(",") if w]
    if not weeks or min(weeks) < 1:
        parser.error("--weeks: positive integers")
    fit_options = dict(num_chains=args.chains, num_warmup=500, num_samples=args.draws)
    if args.quick:
        args.train_assets, args.train_days, args.new_assets = 20, 60, 20
        weeks = [1, 4]
        fit_options = dict(num_chains=1, num_warmup=100, num_samples=200)
    start = time.time()
    rng = np.random.default_rng(args.seed)

    # ---- the population, fitted on the training assets
    r_tr, _, _ = simulate(rng, args.train_assets, args.train_days)
    start_var = float(np.median(r_tr.var(axis=1)))
    y_tr, x_tr = scaled(r_tr, ewma_proxy(r_tr, start_var))
    num_rows = y_tr.shape[1]
    tasks = bm.TaskSet.from_arrays(
        y=y_tr.ravel(), x=x_tr.ravel(), task=np.repeat(np.arange(args.train_assets), num_rows)
    )
    model = bm.Hierarchical(
        bm.likelihoods.LinearRegression(noise="shared"), bm.populations.MvNormal()
    )
    post = bm.fit(
        model, tasks, method="collapsed", seed=args.seed, progress_bar=False, **fit_options
    )
    pooled_coef, _, pooled_resid = ols(x_tr.ravel(), y_tr.ravel())
    pooled_sd = float(pooled_resid.std(ddof=2))
    fit_s = time.time() - start

    # ---- new assets: the last w weeks before a 20-day evaluation window
    max_obs = DAYS_PER_WEEK * max(weeks)
    r_new, sig_new, par = simulate(rng, args.new_assets, max_obs + 1 + HORIZON)
    z90 = stats.norm.ppf(0.95)
    oracle_mean = par["c"][:, None] + par["phi"][:, None] * r_new[:, max_obs : max_obs + HORIZON]
    truth = r_new[:, max_obs + 1 :]
    oracle_sd = sig_new[:, max_obs + 1 :]
    oracle = {
        "rmse": np.sqrt(np.mean((oracle_mean - truth) ** 2, axis=1)),
        "cover": np.mean(np.abs(truth - oracle_mean) <= z90 * oracle_sd, axis=1),
        "width": np.mean(2 * z90 * oracle_sd, axis=1),
    }
    results = {"hierarchical (adapt)": {}, "per-asset": {}, "pooled": {}, "oracle": {}}
    for w in weeks:
        n_obs = DAYS_PER_WEEK * w
        seg = r_new[:, max_obs - n_obs :]  # observed days, then the evaluation window
        v_seg = ewma_proxy(seg, start_var)
        y_new, x_new = scaled(seg, v_seg)  # row j is day j + 1 of the segment
        v_eval = v_seg[:, n_obs + 1 :]  # the proxy on the evaluation days
        y_obs, x_obs = y_new[:, :n_obs], x_new[:, :n_obs]
        x_eval = x_new[:, n_obs:]
        new_tasks = bm.TaskSet.from_arrays(
            y=y_obs.ravel(),
            x=x_obs.ravel(),
            task=np.repeat(np.arange(args.new_assets), n_obs),
            labels=[f"new {i}" for i in range(args.new_assets)],
        )
        post_new = post.adapt(new_tasks, seed=args.seed + w)
        theta = post_new.flat("theta")  # (draws, assets, 2)
        sigma = post_new.flat("sigma") if "sigma" in post_new.samples else post.flat("sigma")
        draws = theta[:, :, None, 0] + theta[:, :, None, 1] * x_eval[None]
        draws = draws + sigma[:, None, None] * rng.normal(size=draws.shape)
        lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
        point = draws.mean(axis=0)
        scored = {"hierarchical (adapt)": (point, lo, hi)}
        # per-asset least squares with a Student-t prediction interval
        point_pa, lo_pa, hi_pa = (np.empty_like(x_eval) for _ in range(3))
        for i in range(args.new_assets):
            coef, design, resid = ols(x_obs[i], y_obs[i])
            dof = max(n_obs - 2, 1)
            s = np.sqrt(np.sum(resid**2) / dof) if n_obs > 2 else np.abs(y_obs[i]).max()
            xtx_inv = np.linalg.pinv(design.T @ design)
            new_design = np.stack([np.ones(HORIZON), x_eval[i]], axis=1)
            se = s * np.sqrt(1 + np.einsum("ij,jk,ik->i", new_design, xtx_inv, new_design))
            point_pa[i] = new_design @ coef
            half = stats.t.ppf(0.95, dof) * se
            lo_pa[i], hi_pa[i] = point_pa[i] - half, point_pa[i] + half
        scored["per-asset"] = (point_pa, lo_pa, hi_pa)
        point_po = pooled_coef[0] + pooled_coef[1] * x_eval
        scored["pooled"] = (point_po, point_po - z90 * pooled_sd, point_po + z90 * pooled_sd)
        for name, (pt, low, high) in scored.items():
            pt, low, high = pt * v_eval, low * v_eval, high * v_eval  # back to returns
            results[name][w] = {
                "rmse": np.sqrt(np.mean((pt - truth) ** 2, axis=1)),
                "cover": np.mean((truth >= low) & (truth <= high), axis=1),
                "width": np.mean(high - low, axis=1),
            }
        results["oracle"][w] = oracle
    elapsed = time.time() - start

    # ---- report
    print(
        f"New asset: population fitted on {args.train_assets} assets x {args.train_days} days "
        f"({fit_s:.0f} s); {args.new_assets} new assets, one-step forecasts of the next "
        f"{HORIZON} days ({elapsed:.0f} s in all)"
    )
    hyper = {k: [round(float(v), 3) for v in post.mean(k)] for k in ("mu", "tau")}
    print(
        f"population of (alpha, phi): mean {hyper['mu']}, sd "
        f"{hyper['tau']}; shared sigma {float(post.mean('sigma')):.3f}; "
        f"pooled line {[round(float(v), 3) for v in pooled_coef]}, sd {pooled_sd:.3f}"
    )
    print(f"{'method':<22}{'weeks':>6}{'RMSE (%)':>18}{'cover 90%':>18}{'width 90%':>11}")
    summary = {"weeks": weeks, "methods": {}, "population_mean": hyper["mu"]}
    for name, by_w in results.items():
        summary["methods"][name] = {}
        for w in weeks:
            res = by_w[w]
            rm, rc = mean_ci(res["rmse"])
            cm, cc = mean_ci(res["cover"])
            wm, _ = mean_ci(res["width"])
            print(f"{name:<22}{w:>6}{rm:>10.3f} +- {rc:<5.3f}{cm:>10.3f} +- {cc:<5.3f}{wm:>11.3f}")
            summary["methods"][name][str(w)] = {
                "rmse": rm,
                "rmse_ci95": rc,
                "coverage90": cm,
                "coverage90_ci95": cc,
                "width90": wm,
            }

    # paired over assets: the spread of volatilities across assets cancels
    print("RMSE of each method minus the hierarchical one, paired over assets (95% interval)")
    summary["rmse_minus_hierarchical"] = {}
    for name in ("per-asset", "pooled", "oracle"):
        cells, summary["rmse_minus_hierarchical"][name] = [], {}
        for w in weeks:
            d, c = mean_ci(results[name][w]["rmse"] - results["hierarchical (adapt)"][w]["rmse"])
            cells.append(f"{w} wk {d:+.4f} +- {c:.4f}")
            summary["rmse_minus_hierarchical"][name][str(w)] = [d, c]
        print(f"  {name:<10}" + "; ".join(cells))

    # ---- figure
    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, by_w in summary["methods"].items():
        ls = ":" if name == "oracle" else "-"
        for ax, field in zip(axes[:2], ("rmse", "coverage90"), strict=True):
            m = [by_w[str(w)][field] for w in weeks]
            c = [by_w[str(w)][f"{field}_ci95"] for w in weeks]
            ax.errorbar(weeks, m, yerr=c, marker="o", ls=ls, capsize=3, label=name)
        axes[2].plot(weeks, [by_w[str(w)]["width90"] for w in weeks], marker="o", ls=ls, label=name)
    axes[0].set_ylabel("RMSE of one-step forecasts (%)")
    axes[1].axhline(0.9, color="k", lw=0.8)
    axes[1].set_ylabel("coverage of 90% intervals")
    axes[2].set_ylabel("mean width of 90% intervals (%)")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(weeks, [str(w) for w in weeks])
        ax.set_xlabel("observed weeks of the new asset")
    axes[0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    path = os.path.join(args.out, "new_asset.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")
    summary.update(figures=[path], seconds=round(elapsed, 1))
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
