"""Few-shot sinusoid regression: MAML against a pretrained network, plus LLAMA and ABML
predictive intervals (the benchmark of Finn, Abbeel & Levine, 2017, Section 5.1).

Meta-training follows the paper: a 1-40-40-1 ReLU network, one inner gradient step of
size 0.01 on K support points, the meta-update on K query points, Adam (1e-3) on
meta-batches of 25 tasks. The pretrained baseline is the same network trained on the
pooled data of all tasks (same number of Adam steps), then fine-tuned by gradient descent.
Both are scored on 600 held-out tasks by the mean squared error on 100 query points after
1, 5 and 10 inner steps, with 95% intervals (1.96 standard errors over tasks).

The Bayesian readings (``bm.meta.llama``, ``bm.meta.abml``) need a likelihood. The tasks
are noiseless, so the Gaussian noise scale ``sigma`` is set by empirical Bayes to the
root of MAML's own post-adaptation query MSE on fresh meta-training tasks: the misfit the
adapted network actually has. The loss is then ``NLL = K MSE / (2 sigma^2)`` and the inner
rate ``0.01 * 2 sigma^2 / K``, i.e. the same inner steps. LLAMA is a Laplace approximation
(Gauss-Newton curvature, implied prior of the 10 inner steps) at MAML's adapted
parameters; ABML meta-learns a diagonal Gaussian prior over all weights (its mean
initialised at MAML's solution; five inner ELBO steps, the first mean step equal to MAML's).
For each, central 50% and 90% predictive intervals of ``y`` at the query points are checked
against the truth; tasks whose curvature leaves the range where the inner steps imply a
prior have no LLAMA posterior and are counted separately.

Run: ``python examples/sinusoid_maml.py --shots 5`` (minutes on a laptop CPU);
``--quick --out DIR`` for a tiny version; ``--json`` prints a JSON summary as the last line.
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

import bayesmeta.meta as meta

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS_REPORTED = (1, 5, 10)


def load_sinusoid():
    path = os.path.join(HERE, os.pardir, "models", "sinusoid.py")
    spec = importlib.util.spec_from_file_location("bayesmeta_models_sinusoid", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pretrain_learner(loss_fn, optimizer):
    """A MetaLearner that ignores the task structure: Adam on the pooled support and query
    data of the meta-batch (the 'pretrained' baseline of the MAML paper)."""

    def init(params):
        return meta.MetaState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    def step(state, task_batch):
        def pooled(p):
            losses = jax.vmap(loss_fn, in_axes=(None, 0))(p, task_batch["support"])
            losses = losses + jax.vmap(loss_fn, in_axes=(None, 0))(p, task_batch["query"])
            return jnp.mean(losses) / 2, losses / 2

        (loss, losses), grads = jax.value_and_grad(pooled, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
        return (
            meta.MetaState(params, opt_state, state.count + 1),
            meta.MetaInfo(loss, loss, losses, norm),
        )

    return meta.MetaLearner(init, step, meta.maml(loss_fn).adapt)


def train_with_validation(
    learner, params, sampler, num_steps, every, val_batch, loss_fn, inner_lr, seed, progress
):
    """Meta-train in chunks of ``every`` steps and keep the state whose mean query loss after
    10 inner steps on the validation tasks is lowest (early stopping on meta-validation)."""
    state, best, best_loss, history, trace = params, None, np.inf, [], []
    done = 0
    while done < num_steps:
        chunk = min(every, num_steps - done)
        state, hist = meta.train(
            learner,
            state,
            sampler,
            chunk,
            seed=seed,
            progress_bar=progress,
            chunk_size=min(every, 1000),
        )
        done += chunk
        history.append(hist)
        curve = meta.diagnostics.inner_loop_curve(
            loss_fn, state, val_batch, inner_lr=inner_lr, max_steps=10
        )
        val = float(curve.query_loss[10])
        trace.append((done, val))
        if np.isfinite(val) and val < best_loss:
            best, best_loss = state, val
    merged = {k: np.concatenate([h[k] for h in history]) for k in history[0]}
    return (best if best is not None else state), merged, trace


def interval_coverage(draws, truth, levels=(0.5, 0.9)):
    """Coverage and mean width of central intervals from predictive draws (tasks, S, n)."""
    out = {}
    for level in levels:
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=1)
        out[level] = (float(np.mean((truth >= lo) & (truth <= hi))), float(np.mean(hi - lo)))
    return out


@functools.partial(jax.jit, static_argnames=("mlp", "num_draws"))
def _predictive(mlp, gaussians, template, xq, sigma, key, num_draws):
    _, unravel = ravel_pytree(template)
    flat = gaussians.sample(key, num_draws)  # (T, S, D)
    f = jax.vmap(jax.vmap(lambda theta, x: mlp(unravel(theta), x), in_axes=(0, None)))(flat, xq)
    noise = sigma * jax.random.normal(jax.random.fold_in(key, 1), f.shape, f.dtype)
    return f + noise, f.mean(axis=1)


def predictive_draws(sin, gaussians, template, xq, sigma, key, num_draws):
    """Draws of y at the query inputs ``(T, S, n)`` from per-task Gaussians over the flat
    weights (plus the Gaussian noise), and the predictive mean of f ``(T, n)``."""
    g = jax.tree.map(jnp.asarray, gaussians)
    draws, mean = _predictive(sin.mlp, g, template, xq, sigma, key, num_draws)
    return np.asarray(draws), np.asarray(mean)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=5, help="K support points per task")
    parser.add_argument(
        "--meta-iters", type=int, default=70000, help="outer steps (70000 in the paper)"
    )
    parser.add_argument(
        "--val-every",
        type=int,
        default=5000,
        help="meta-validation interval (checkpoint selection)",
    )
    parser.add_argument("--val-tasks", type=int, default=1000)
    parser.add_argument("--meta-batch", type=int, default=25)
    parser.add_argument("--inner-lr", type=float, default=0.01)
    parser.add_argument("--outer-lr", type=float, default=1e-3)
    parser.add_argument(
        "--pretrained-lr",
        type=float,
        default=0.01,
        help="fine-tuning step of the pretrained network",
    )
    parser.add_argument("--test-tasks", type=int, default=600)
    parser.add_argument("--query", type=int, default=100, help="query points per test task")
    parser.add_argument("--abml-iters", type=int, default=3000)
    parser.add_argument("--abml-inner-steps", type=int, default=5)
    parser.add_argument("--draws", type=int, default=200, help="predictive draws per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--out", default="sinusoid_out", help="directory for the figures")
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.meta_iters, args.test_tasks, args.abml_iters = 200, 50, 20
        args.val_every, args.val_tasks, args.abml_inner_steps = 100, 50, 2
        args.draws, args.query = 30, 20
    if args.shots < 1:
        parser.error("--shots must be positive")
    progress = not (args.no_progress or args.quick)
    sin = load_sinusoid()
    start = time.time()
    k_shots, alpha = args.shots, args.inner_lr
    key = jax.random.PRNGKey(args.seed)
    k_init, k_test, k_sigma, k_llama, k_abml, k_val = jax.random.split(key, 6)
    params0 = sin.init_mlp(k_init)
    sampler = sin.make_sampler(args.meta_batch, k_shots)

    # --- meta-training: MAML (second order, 1 inner step) and the pretrained baseline,
    # each keeping the checkpoint with the best 10-step loss on meta-validation tasks
    val_batch, _ = sin.sample_tasks(k_val, args.val_tasks, k_shots, args.query)
    maml = meta.maml(sin.mse_loss, optax.adam(args.outer_lr), inner_lr=alpha, num_inner_steps=1)
    maml_state, maml_hist, maml_val = train_with_validation(
        maml,
        params0,
        sampler,
        args.meta_iters,
        args.val_every,
        val_batch,
        sin.mse_loss,
        alpha,
        args.seed,
        progress,
    )
    pre = pretrain_learner(sin.mse_loss, optax.adam(args.outer_lr))
    pre_state, _, pre_val = train_with_validation(
        pre,
        params0,
        sampler,
        args.meta_iters,
        args.val_every,
        val_batch,
        sin.mse_loss,
        args.pretrained_lr,
        args.seed + 1,
        progress,
    )

    # --- evaluation on held-out tasks: MSE after 0..10 inner steps
    test_batch, (amp, phase) = sin.sample_tasks(k_test, args.test_tasks, k_shots, args.query)
    max_steps = max(STEPS_REPORTED)
    curves = {
        "maml": meta.diagnostics.inner_loop_curve(
            sin.mse_loss, maml_state, test_batch, inner_lr=alpha, max_steps=max_steps
        ),
        "pretrained": meta.diagnostics.inner_loop_curve(
            sin.mse_loss, pre_state, test_batch, inner_lr=args.pretrained_lr, max_steps=max_steps
        ),
    }

    # --- empirical-Bayes noise scale from MAML's post-adaptation misfit on train tasks
    sigma_batch, _ = sin.sample_tasks(k_sigma, args.test_tasks, k_shots, args.query)
    sigma_curve = meta.diagnostics.inner_loop_curve(
        sin.mse_loss, maml_state, sigma_batch, inner_lr=alpha, max_steps=max_steps
    )
    per_task = sigma_curve.task_query_loss[:, max_steps]
    sigma = float(np.sqrt(np.mean(per_task[np.isfinite(per_task)])))
    scale = k_shots / (2 * sigma**2)  # NLL = scale * MSE on the support set

    def nll(params, batch):
        return scale * sin.mse_loss(params, batch)

    def output_nll(out, batch):
        return scale * sin.output_mse(out, batch)

    rate = alpha / scale  # the same inner steps, written on the NLL
    truth = np.asarray(test_batch["query"]["y"])
    coverage = {}

    # --- LLAMA at MAML's adapted parameters (chunks of tasks keep memory small); tasks
    # whose curvature leaves the implied prior's range (or whose inner loop diverged) have
    # no LLAMA posterior and are counted, not scored
    chunk = 100

    def score(make_gaussians, key):
        draws_all, means_all, valid_all = [], [], []
        for i in range(0, args.test_tasks, chunk):
            support = jax.tree.map(lambda a, i=i: a[i : i + chunk], test_batch["support"])
            g = make_gaussians(support, jax.random.fold_in(key, i))
            valid_all.append(np.all(np.isfinite(g.mean), axis=1))
            d, m = predictive_draws(
                sin,
                g,
                maml_state.params,
                test_batch["query"]["x"][i : i + chunk],
                sigma,
                jax.random.fold_in(key, 10**6 + i),
                args.draws,
            )
            draws_all.append(d)
            means_all.append(m)
        valid = np.concatenate(valid_all)
        draws, means = np.concatenate(draws_all)[valid], np.concatenate(means_all)[valid]
        return (
            interval_coverage(draws, truth[valid]),
            float(np.mean((means - truth[valid]) ** 2)),
            int(np.sum(~valid)),
        )

    coverage["llama"] = score(
        lambda support, key: meta.llama_gaussians(
            nll,
            maml_state.params,
            support,
            inner_lr=rate,
            num_inner_steps=max_steps,
            hessian="ggn",
            predict_fn=sin.predict,
            output_loss_fn=output_nll,
            on_invalid="nan",
        ),
        k_llama,
    )

    # --- ABML: a meta-learned diagonal Gaussian prior N(mean, s^2), the mean starting at
    # MAML's solution and s at 0.05. The inner mean steps are preconditioned by the prior
    # variance; their rate makes the first step equal MAML's (rate / s^2 * s^2 = rate), and
    # the noisy Monte Carlo log-scale steps get a smaller rate (0.2 rate / s)
    init_scale = 0.05
    abml = meta.abml(
        nll,
        optax.adam(args.outer_lr),
        inner_lr=rate / init_scale**2,
        inner_lr_log_scale=0.2 * rate / init_scale,
        num_inner_steps=args.abml_inner_steps,
        init_scale=init_scale,
    )
    abml_state, abml_hist = meta.train(
        abml, maml_state.params, sampler, args.abml_iters, seed=args.seed + 2, progress_bar=progress
    )
    coverage["abml"] = score(
        lambda support, key: abml.gaussians(abml_state, support, key=key), k_abml
    )
    elapsed = time.time() - start

    # --- report
    print(
        f"Sinusoid regression, K = {k_shots} shots, {args.meta_iters} meta-iterations, "
        f"{args.test_tasks} held-out tasks ({elapsed:.0f} s)"
    )
    maml_best = min(maml_val, key=lambda t: t[1] if np.isfinite(t[1]) else np.inf)[0]
    for name, trace in (("maml", maml_val), ("pretrained", pre_val)):
        it, val = min(trace, key=lambda t: t[1] if np.isfinite(t[1]) else np.inf)
        print(
            f"{name}: checkpoint at iteration {it} (validation MSE after 10 steps "
            f"{val:.3f}; trace " + ", ".join(f"{v:.3g}" for _, v in trace) + ")"
        )
    print(
        f"{'method':<12}"
        + "".join(f"{f'MSE after {s} step' + ('s' if s > 1 else ''):>22}" for s in STEPS_REPORTED)
        + f"{'before':>10}"
    )
    for name, curve in curves.items():
        cells = "".join(
            f"{curve.query_loss[s]:>12.3f} +- {1.96 * curve.query_loss_se[s]:<6.3f}"
            for s in STEPS_REPORTED
        )
        print(f"{name:<12}{cells}{curve.query_loss[0]:>10.3f}")
    print(
        "median over tasks: "
        + "; ".join(
            f"{name} "
            + ", ".join(f"{np.median(c.task_query_loss[:, s]):.3f}" for s in STEPS_REPORTED)
            for name, c in curves.items()
        )
    )
    print(
        f"\nPredictive intervals of y at query points (sigma = {sigma:.3f} by empirical "
        "Bayes; nominal 0.50 / 0.90)"
    )
    print(
        f"{'method':<12}{'cover 50%':>10}{'cover 90%':>10}{'width 90%':>11}{'MSE(mean)':>11}"
        f"{'no posterior':>14}"
    )
    for name, (cov, mse, invalid) in coverage.items():
        print(
            f"{name:<12}{cov[0.5][0]:>10.3f}{cov[0.9][0]:>10.3f}{cov[0.9][1]:>11.3f}"
            f"{mse:>11.3f}{invalid:>14d}"
        )

    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, curve in curves.items():
        meta.diagnostics.plot_inner_loop_curve(curve, ax=axes[0], label=name)
    axes[0].set_title(f"held-out query MSE, K = {k_shots}")
    window = max(1, min(500, len(maml_hist["loss"]) // 20))
    for field, label in (("loss", "after 1 step"), ("loss_before", "before")):
        smooth = np.convolve(maml_hist[field], np.ones(window) / window, mode="valid")
        axes[1].plot(np.arange(smooth.size) + window, smooth, label=label)
    axes[1].axvline(maml_best, color="grey", ls=":", lw=1, label="selected checkpoint")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("meta-iteration")
    axes[1].set_title(f"MAML meta-training query loss ({window}-step mean)")
    axes[1].legend(frameon=False)
    xs = jnp.linspace(-5, 5, 200)
    ax = axes[2]
    ax.plot(xs, amp[0] * jnp.sin(xs - phase[0]), "k", label="truth")
    support0 = jax.tree.map(lambda a: a[0], test_batch["support"])
    ax.scatter(support0["x"], support0["y"], c="k", zorder=5, label=f"{k_shots} shots")
    for steps in (0, 1, 10):
        phi = maml.adapt(maml_state, support0, num_steps=steps) if steps else maml_state.params
        ax.plot(xs, sin.mlp(phi, xs), label=f"MAML, {steps} steps")
    phi = pre.adapt(pre_state, support0, num_steps=10, inner_lr=args.pretrained_lr)
    ax.plot(xs, sin.mlp(phi, xs), ls="--", label="pretrained, 10 steps")
    ax.legend(frameon=False, fontsize=7)
    ax.set_title("one held-out task")
    fig.tight_layout()
    path = os.path.join(args.out, f"sinusoid_maml_K{k_shots}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")

    if args.json:
        summary = {
            name: {str(s): float(c.query_loss[s]) for s in STEPS_REPORTED}
            for name, c in curves.items()
        }
        for name, c in curves.items():
            summary[f"{name}_ci95"] = {
                str(s): float(1.96 * c.query_loss_se[s]) for s in STEPS_REPORTED
            }
        for name, c in curves.items():
            summary[f"{name}_median"] = {
                str(s): float(np.median(c.task_query_loss[:, s])) for s in STEPS_REPORTED
            }
        for name, (cov, mse, invalid) in coverage.items():
            summary[name] = {
                "coverage50": cov[0.5][0],
                "coverage90": cov[0.9][0],
                "width90": cov[0.9][1],
                "mse_mean": mse,
                "tasks_without_posterior": invalid,
            }
        summary["checkpoint"] = {
            name: min(trace, key=lambda t: t[1] if np.isfinite(t[1]) else np.inf)[0]
            for name, trace in (("maml", maml_val), ("pretrained", pre_val))
        }
        summary.update(
            shots=k_shots,
            meta_iters=args.meta_iters,
            sigma=sigma,
            test_tasks=args.test_tasks,
            seconds=round(elapsed, 1),
        )
        print(json.dumps(summary))
    return curves, coverage


if __name__ == "__main__":
    main()
