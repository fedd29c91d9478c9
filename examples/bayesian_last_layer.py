"""Meta-learned features with an exact Bayesian last layer (ALPaCA) against MAML, LLAMA and
ABML on few-shot sinusoid regression: accuracy, log predictive density and calibration.

The task family and the 1-40-40 ReLU network are those of ``models/sinusoid.py`` (MAML's
benchmark). The Bayesian last layer (``bm.meta.bayesian_last_layer``) uses the network's 40
last hidden units as features and a Gaussian prior ``N(mu, L L^T)`` over the 40 output
weights, with a noise sd ``sigma``; all are meta-trained by Adam on the exact log
predictive density of each task's query points given its support points. Adapting to a
task is the exact Bayesian linear-regression posterior: no inner gradient steps.

The other three start from MAML (one inner step of size 0.01 on K support points, Adam
1e-3, meta-batches of 25 tasks, as in Finn et al., 2017), adapted by 10 gradient steps on a
held-out task. MAML itself gives a point prediction and no intervals. For LLAMA (Laplace
with Gauss-Newton curvature and the implied prior of the 10 steps, at MAML's adapted
weights) and ABML (a meta-learned diagonal Gaussian prior over all weights, its mean
starting at MAML's solution) the noise sd is set by empirical Bayes to the root of MAML's
post-adaptation query MSE on fresh meta-training tasks, and the predictive at each query
point is the distribution of 200 draws (plus the noise); their log density is that of a
Gaussian with the draws' mean and variance. The last layer's predictive is exactly
Gaussian.

"last layer (t)" adds a meta-learned task scale (``predictive="student_t"``: a
normal-inverse-gamma prior, so each task's interval widths follow its own support values,
and the predictive is a Student-t), meta-trained on each query point's own predictive
density (``objective="pointwise"``), its scale prior then refit on 200 fresh validation
tasks (``bm.meta.calibrate_last_layer``). "t + recal." is the same predictive with its
intervals bounded by the quantiles that covered on those validation tasks
(``bm.meta.recalibrate``, Kuleshov et al., 2018): post-hoc, not Bayesian.

Scores on 600 held-out tasks (100 query points each): MSE of the predictive
mean, mean log predictive density per point, and the coverage of central 50% and 90%
predictive intervals (nominal 0.50 and 0.90).

Run: ``python examples/bayesian_last_layer.py`` (K = 5 and 10; a few minutes on a laptop
CPU); ``--quick --out DIR`` for a tiny version; ``--json`` prints a JSON summary last.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from scipy import stats

import bayesmeta as bm

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ("maml", "llama", "abml", "last layer", "last layer (t)", "t + recal.")
LAST_LAYERS = ("last layer", "last layer (t)", "t + recal.")
LEVELS = (0.5, 0.9)


def load_sinusoid():
    path = os.path.join(HERE, os.pardir, "models", "sinusoid.py")
    spec = importlib.util.spec_from_file_location("bayesmeta_models_sinusoid", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_features(sin):
    """The sinusoid network's last hidden layer as features, ``(n,) -> (n, 40)``."""

    def features(net, x):
        h = x[:, None]
        for layer in net:
            h = jax.nn.relu(h @ layer["w"] + layer["b"])
        return h

    return features


def gaussian_scores(mean, var, truth):
    """Log density per point and interval coverage of Gaussian predictives ``(T, n)``."""
    sd = np.sqrt(var)
    lpd = float(np.mean(stats.norm.logpdf(truth, mean, sd)))
    cover = {}
    for level in LEVELS:
        z = stats.norm.ppf(0.5 + level / 2)
        cover[level] = float(np.mean(np.abs(truth - mean) <= z * sd))
    return lpd, cover


def student_scores(mean, scale2, df, truth):
    """Log density per point and interval coverage of Student-t predictives: location
    ``mean`` and squared scale ``scale2`` ``(T, n)``, degrees of freedom ``df`` ``(T,)``."""
    sd, df = np.sqrt(scale2), np.asarray(df)[:, None]
    lpd = float(np.mean(stats.t.logpdf(truth, df, mean, sd)))
    cover = {}
    for level in LEVELS:
        z = stats.t.ppf(0.5 + level / 2, df)
        cover[level] = float(np.mean(np.abs(truth - mean) <= z * sd))
    return lpd, cover


def draw_scores(draws, truth):
    """Scores of predictive draws ``(T, S, n)``: the moment-matched Gaussian's log density,
    and the coverage of the draws' central quantile intervals (NaN without any task)."""
    if draws.shape[0] == 0:
        return float("nan"), float("nan"), {level: float("nan") for level in LEVELS}
    mean, var = draws.mean(axis=1), draws.var(axis=1)
    lpd = float(np.mean(stats.norm.logpdf(truth, mean, np.sqrt(var))))
    cover = {}
    for level in LEVELS:
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=1)
        cover[level] = float(np.mean((truth >= lo) & (truth <= hi)))
    return float(np.mean((mean - truth) ** 2)), lpd, cover


@functools.partial(jax.jit, static_argnames=("mlp", "num_draws"))
def _weight_draws(mlp, gaussians, template, xq, sigma, key, num_draws):
    _, unravel = ravel_pytree(template)
    flat = gaussians.sample(key, num_draws)  # (T, S, D)
    f = jax.vmap(jax.vmap(lambda theta, x: mlp(unravel(theta), x), in_axes=(0, None)))(flat, xq)
    return f + sigma * jax.random.normal(jax.random.fold_in(key, 1), f.shape, f.dtype)


def train_last_layer(sin, params0, sampler, args, seed, progress, **options):
    """A Bayesian last layer on the network's last hidden units, meta-trained by Adam."""
    learner = bm.meta.bayesian_last_layer(
        make_features(sin), optax.adam(1e-3), num_features=sin.HIDDEN[-1], noise=0.1, **options
    )
    state, _ = bm.meta.train(
        learner,
        learner.init(params0[:-1]),
        sampler,
        args.meta_iters,
        seed=seed,
        progress_bar=progress,
    )
    return learner, state


def t_marginals(learner, params_or_state, tasks):
    """Each query point's Student-t predictive: location and scale ``(T, n)``, and the
    degrees of freedom ``(T, 1)``."""
    pred = learner.predict(params_or_state, tasks["support"], tasks["query"]["x"])
    scale2 = np.asarray(jnp.diagonal(pred.scale, axis1=-2, axis2=-1))
    return np.asarray(pred.mean), np.sqrt(scale2), np.asarray(pred.df)[:, None]


def run_shots(sin, args, k_shots, key, progress):
    """Train every method at ``k_shots`` support points and score it on held-out tasks."""
    k_init, k_test, k_sigma, k_abml, k_draw = jax.random.split(key, 5)
    params0 = sin.init_mlp(k_init)
    sampler = sin.make_sampler(args.meta_batch, k_shots)
    test, _ = sin.sample_tasks(k_test, args.test_tasks, k_shots, args.query)
    truth = np.asarray(test["query"]["y"])
    scores, timings = {}, {}

    # --- MAML and its 10-step adaptation (a point prediction)
    t0 = time.time()
    maml = bm.meta.maml(sin.mse_loss, optax.adam(1e-3), inner_lr=0.01, num_inner_steps=1)
    maml_state, _ = bm.meta.train(
        maml, params0, sampler, args.meta_iters, seed=args.seed, progress_bar=progress
    )
    curve = bm.meta.diagnostics.inner_loop_curve(
        sin.mse_loss, maml_state, test, inner_lr=0.01, max_steps=10
    )
    scores["maml"] = (float(curve.query_loss[10]), None, None)
    timings["maml"] = time.time() - t0

    # --- the empirical-Bayes noise sd for LLAMA and ABML (MAML's misfit on fresh tasks)
    fresh, _ = sin.sample_tasks(k_sigma, args.test_tasks, k_shots, args.query)
    misfit = bm.meta.diagnostics.inner_loop_curve(
        sin.mse_loss, maml_state, fresh, inner_lr=0.01, max_steps=10
    ).task_query_loss[:, 10]
    sigma = float(np.sqrt(np.mean(misfit[np.isfinite(misfit)])))
    scale = k_shots / (2 * sigma**2)  # NLL = scale * MSE on the support set
    rate = 0.01 / scale  # the same inner steps, written on the NLL

    def nll(params, batch):
        return scale * sin.mse_loss(params, batch)

    def output_nll(out, batch):
        return scale * sin.output_mse(out, batch)

    def score_gaussians(make, key):
        draws, valid = [], []
        for i in range(0, args.test_tasks, 100):
            support = jax.tree.map(lambda a, i=i: a[i : i + 100], test["support"])
            g = make(support, jax.random.fold_in(key, i))
            valid.append(np.all(np.isfinite(g.mean), axis=1))
            g = jax.tree.map(jnp.asarray, g)
            xq = test["query"]["x"][i : i + 100]
            d = _weight_draws(
                sin.mlp,
                g,
                maml_state.params,
                xq,
                sigma,
                jax.random.fold_in(key, 10**6 + i),
                args.draws,
            )
            draws.append(np.asarray(d))
        valid = np.concatenate(valid)
        mse, lpd, cover = draw_scores(np.concatenate(draws)[valid], truth[valid])
        return mse, lpd, cover, int(np.sum(~valid))

    # --- LLAMA at MAML's adapted weights (tasks outside the implied prior's range have none)
    t0 = time.time()
    scores["llama"] = score_gaussians(
        lambda support, key: bm.meta.llama_gaussians(
            nll,
            maml_state.params,
            support,
            inner_lr=rate,
            num_inner_steps=10,
            hessian="ggn",
            predict_fn=sin.predict,
            output_loss_fn=output_nll,
            on_invalid="nan",
        ),
        k_draw,
    )
    timings["llama"] = time.time() - t0

    # --- ABML from MAML's solution (as in examples/sinusoid_maml.py)
    t0 = time.time()
    init_scale = 0.05
    abml = bm.meta.abml(
        nll,
        optax.adam(1e-3),
        inner_lr=rate / init_scale**2,
        inner_lr_log_scale=0.2 * rate / init_scale,
        num_inner_steps=5,
        init_scale=init_scale,
    )
    abml_state, _ = bm.meta.train(
        abml, maml_state.params, sampler, args.abml_iters, seed=args.seed + 2, progress_bar=progress
    )
    scores["abml"] = score_gaussians(
        lambda support, key: abml.gaussians(abml_state, support, key=key),
        jax.random.fold_in(k_abml, 1),
    )
    timings["abml"] = time.time() - t0 + timings["maml"]
    timings["llama"] += timings["maml"]

    # --- the Bayesian last layer: features and prior meta-trained on the exact predictive
    t0 = time.time()
    learner, state = train_last_layer(sin, params0, sampler, args, args.seed + 3, progress)
    pred = learner.predict(state, test["support"], test["query"]["x"])
    mean = np.asarray(pred.mean)
    var = np.asarray(jnp.diagonal(pred.cov, axis1=-2, axis2=-1))
    lpd, cover = gaussian_scores(mean, var, truth)
    scores["last layer"] = (float(np.mean((mean - truth) ** 2)), lpd, cover, 0)
    timings["last layer"] = time.time() - t0

    # --- the same with a meta-learned task scale (normal-inverse-gamma, Student-t
    # predictive), meta-trained on each query point's own predictive density
    t0 = time.time()
    student, student_state = train_last_layer(
        sin,
        params0,
        sampler,
        args,
        args.seed + 4,
        progress,
        predictive="student_t",
        objective="pointwise",
    )
    # its widths refit on fresh validation tasks (never the test tasks): InverseGamma(a, b)
    val, _ = sin.sample_tasks(jax.random.fold_in(key, 7), args.val_tasks, k_shots, args.query)
    raw = student_state.params
    refit = bm.meta.calibrate_last_layer(make_features(sin), raw, val)
    student_state = student_state._replace(params=refit)
    mean, sd, df = t_marginals(student, student_state, test)
    lpd, cover = student_scores(mean, sd**2, df[:, 0], truth)
    scores["last layer (t)"] = (float(np.mean((mean - truth) ** 2)), lpd, cover, 0)
    # quantile recalibration from the validation tasks' PIT values (Kuleshov et al., 2018):
    # the same predictive, its intervals bounded by the quantiles that covered on validation
    vmean, vsd, vdf = t_marginals(student, student_state, val)
    recal = bm.meta.recalibrate(stats.t.cdf(np.asarray(val["query"]["y"]), vdf, vmean, vsd))
    cover_recal = {}
    for level in LEVELS:
        lo, hi = (stats.t.ppf(q, df, mean, sd) for q in recal.interval(level))
        cover_recal[level] = float(np.mean((truth >= lo) & (truth <= hi)))
    scores["t + recal."] = (scores["last layer (t)"][0], lpd, cover_recal, 0)
    timings["last layer (t)"] = time.time() - t0
    timings["t + recal."] = timings["last layer (t)"]
    p = student_state.params
    scale_prior = (float(jnp.exp(p.log_concentration)), float(jnp.exp(p.log_rate)))
    # the same before the refit, for the record
    mean, sd, df = t_marginals(student, raw, test)
    _, cover_raw = student_scores(mean, sd**2, df[:, 0], truth)
    scale_prior_raw = (float(jnp.exp(raw.log_concentration)), float(jnp.exp(raw.log_rate)))
    # the same adaptation as a Posterior over the last-layer weights (ArviZ-ready)
    first = jax.tree.map(lambda a: a[:3], test["support"])
    post = learner.posterior(state, first, num_draws=200, seed=args.seed)
    noise = float(post.info["noise"])
    extras = {"sigma_eb": sigma, "noise_last_layer": noise, "posterior": post}
    extras.update(
        noise_t=float(jnp.exp(p.log_noise)),
        scale_prior=scale_prior,
        scale_prior_raw=scale_prior_raw,
        cover_raw=cover_raw,
    )
    return scores, timings, extras


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--meta-iters", type=int, default=10000, help="MAML and last-layer steps")
    parser.add_argument("--abml-iters", type=int, default=1000)
    parser.add_argument("--meta-batch", type=int, default=25)
    parser.add_argument("--test-tasks", type=int, default=600)
    parser.add_argument("--query", type=int, default=100, help="query points per test task")
    parser.add_argument(
        "--val-tasks", type=int, default=200, help="validation tasks for the t layer's widths"
    )
    parser.add_argument("--draws", type=int, default=200, help="predictive draws per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--out", default=".", help="directory for the figure")
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.shots, args.meta_iters, args.abml_iters = [5], 10, 2
        args.meta_batch, args.test_tasks, args.query, args.draws = 4, 6, 10, 20
        args.val_tasks = 4
    if min(args.shots) < 1:
        parser.error("--shots must be positive")
    progress = not (args.no_progress or args.quick)
    sin = load_sinusoid()
    start = time.time()
    results, extras = {}, {}
    for k in args.shots:
        key = jax.random.fold_in(jax.random.PRNGKey(args.seed), k)
        results[k], _, extras[k] = run_shots(sin, args, k, key, progress)
    elapsed = time.time() - start

    print(
        f"Sinusoid regression, {args.meta_iters} meta-iterations, {args.test_tasks} held-out "
        f"tasks x {args.query} query points ({elapsed:.0f} s)"
    )
    print(
        f"{'K':>3} {'method':<12}{'MSE':>9}{'log pred':>10}{'cover 50%':>11}{'cover 90%':>11}"
        f"{'no posterior':>14}"
    )
    for k, rows in results.items():
        for method in METHODS:
            mse, lpd, cover, *rest = rows[method]
            if lpd is None:
                print(f"{k:>3} {method:<12}{mse:>9.3f}{'-':>10}{'-':>11}{'-':>11}{'-':>14}")
                continue
            print(
                f"{k:>3} {method:<12}{mse:>9.3f}{lpd:>10.3f}{cover[0.5]:>11.3f}"
                f"{cover[0.9]:>11.3f}{rest[0]:>14d}"
            )
        e = extras[k]
        print(
            f"    noise sd: empirical Bayes for LLAMA/ABML {e['sigma_eb']:.3f}, learned by the "
            f"last layer {e['noise_last_layer']:.3f}; last-layer posterior w "
            f"{e['posterior'].samples['w'].shape} dims {e['posterior'].dims['w']}"
        )
        a, b = e["scale_prior"]
        a0, b0 = e["scale_prior_raw"]
        c = e["cover_raw"]
        print(
            f"    last layer (t): noise sd {e['noise_t']:.4f} per unit task scale, task scale "
            f"s^2 ~ InverseGamma({a:.2f}, {b:.4f}) after the refit on {args.val_tasks} "
            f"validation tasks; InverseGamma({a0:.2f}, {b0:.4f}) as meta-trained, with coverage "
            f"{c[0.5]:.3f} / {c[0.9]:.3f}"
        )
    for k, rows in results.items():
        for method in LAST_LAYERS:
            c = rows[method][2]
            gap = max(abs(c[0.5] - 0.5), abs(c[0.9] - 0.9))
            print(
                f"K = {k}: {method} coverage within {100 * gap:.1f} points of nominal "
                f"({'within' if gap <= 0.03 else 'NOT within'} 3 points)"
            )
    print("MAML gives no intervals")

    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / (len(METHODS) - 1)
    for ax, level in zip(axes, LEVELS, strict=True):
        for j, method in enumerate(METHODS[1:]):
            values = [results[k][method][2][level] for k in results]
            ax.bar(np.arange(len(results)) + j * width, values, width, label=method)
        ax.axhline(level, color="k", ls="--", lw=1, label="nominal")
        ax.set_xticks(np.arange(len(results)) + width * (len(METHODS) - 2) / 2)
        ax.set_xticklabels([f"K = {k}" for k in results])
        ax.set_ylim(0, 1)
        ax.set_title(f"coverage of central {int(100 * level)}% predictive intervals")
        ax.legend(frameon=False, fontsize=8, loc="lower right")
    fig.tight_layout()
    path = os.path.join(args.out, "bayesian_last_layer.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")

    summary = {}
    for k, rows in results.items():
        for method in METHODS:
            mse, lpd, cover, *rest = rows[method]
            entry = {"mse": mse}
            if lpd is not None:
                entry.update(
                    log_pred=lpd,
                    coverage50=cover[0.5],
                    coverage90=cover[0.9],
                    tasks_without_posterior=rest[0],
                )
            summary[f"K{k}_{method.replace(' ', '_')}"] = entry
    summary.update(
        shots=list(results),
        meta_iters=args.meta_iters,
        test_tasks=args.test_tasks,
        seconds=round(elapsed, 1),
    )
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
