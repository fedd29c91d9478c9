"""MAML against feature reuse: frozen features with a fine-tuned head versus adapting the
whole network, in distribution and under a shift of the task family.

Tasks are sinusoids ``y = A sin(w x - phase)``, ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]``,
``x ~ U[-5, 5]``, seen through ``--shots`` support points. Meta-training draws the
frequency from the training band ``w ~ U[0.8, 1.2]``; held-out tasks come from the same
band (in distribution) and from a shifted band ``w ~ U[1.6, 2.0]`` (higher frequencies:
the features needed at test time differ from the training ones). The network is
1-40-40-1 ReLU; every learner is trained by ``bm.meta.train`` with Adam (1e-3) on
meta-batches of 25 tasks for the same number of steps:

* ``pretrained, head``: the network trained on the pooled data of all tasks (no inner
  step), then only the last layer is fine-tuned on the support points (body frozen);
* ``ANIL, head``: MAML whose inner step moves only the last layer (Raghu et al., 2020):
  a body meta-trained *for* head-only adaptation, i.e. the best case of feature reuse;
* ``MAML, whole``: MAML adapting every layer (Finn et al., 2017).

Each adapts by ``--steps`` gradient steps of size 0.01 (the inner step of meta-training,
one step, continued) on the support points; for the head-only learners the step is
capped at the stability limit of the head's quadratic loss (``1 / lambda_max`` of its
Hessian), so a frozen body with large features is not scored on a diverged head. Scored
by the mean squared error on 100 query points, with 95% intervals over tasks (1.96
standard errors). How far the adapted features moved: linear CKA
(``bm.meta.linear_cka``) between each hidden layer's activations at the query inputs
before and after adaptation (1: the features did not move), and the relative weight
change by layer (``bm.meta.relative_change``), means over tasks.

Run: ``python examples/feature_reuse.py`` (a few minutes on a 2-core CPU);
``--quick --out DIR`` for a tiny version; ``--json`` prints a JSON summary as the last line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bayesmeta as bm

BANDS = {"in distribution": (0.8, 1.2), "shifted": (1.6, 2.0)}
LAYERS = ("h1", "h2", "out")
TITLES = ("query MSE after adaptation", "linear CKA of h2, pre vs post")


def init_mlp(key, hidden=40):
    keys = jax.random.split(key, 3)
    sizes = [(1, hidden), (hidden, hidden), (hidden, 1)]
    return {
        name: {
            "w": jax.random.normal(k, shape) * jnp.sqrt(2.0 / shape[0]),
            "b": jnp.zeros(shape[1]),
        }
        for name, k, shape in zip(LAYERS, keys, sizes, strict=True)
    }


def hidden(params, x):
    """Activations of the two hidden layers at inputs ``x`` (n,): ``(h1, h2)``."""
    h1 = jax.nn.relu(x[:, None] @ params["h1"]["w"] + params["h1"]["b"])
    h2 = jax.nn.relu(h1 @ params["h2"]["w"] + params["h2"]["b"])
    return h1, h2


def mlp(params, x):
    _, h2 = hidden(params, x)
    return (h2 @ params["out"]["w"] + params["out"]["b"])[:, 0]


def mse_loss(params, batch):
    return jnp.mean((mlp(params, batch["x"]) - batch["y"]) ** 2)


def sample_tasks(key, num_tasks, num_support, num_query, band):
    k_a, k_p, k_w, k_s, k_q = jax.random.split(key, 5)
    amp = jax.random.uniform(k_a, (num_tasks, 1), minval=0.1, maxval=5.0)
    phase = jax.random.uniform(k_p, (num_tasks, 1), minval=0.0, maxval=math.pi)
    freq = jax.random.uniform(k_w, (num_tasks, 1), minval=band[0], maxval=band[1])
    xs = jax.random.uniform(k_s, (num_tasks, num_support), minval=-5.0, maxval=5.0)
    xq = jax.random.uniform(k_q, (num_tasks, num_query), minval=-5.0, maxval=5.0)
    return {
        "support": {"x": xs, "y": amp * jnp.sin(freq * xs - phase)},
        "query": {"x": xq, "y": amp * jnp.sin(freq * xq - phase)},
    }


def head_only(params, rate):
    """A per-parameter inner rate: ``rate`` on the last layer, 0 on the body."""
    return {
        name: jax.tree.map(lambda p, r=(rate if name == "out" else 0.0): jnp.full_like(p, r), layer)
        for name, layer in params.items()
    }


def head_adapt(inner_lr):
    """Fine-tune only the last layer by gradient descent on the support MSE, with the step
    capped at the head's stability limit: the head's loss is quadratic with Hessian
    ``2/K F^T F`` (``F`` the support features with a column of ones), so the step is
    ``min(inner_lr, 1 / lambda_max)`` and never diverges. Same signature as
    ``MetaLearner.adapt``."""

    def adapt(params_or_state, support, num_steps=1):
        params = getattr(params_or_state, "params", params_or_state)
        _, h2 = hidden(params, support["x"])
        feats = jnp.concatenate([h2, jnp.ones((h2.shape[0], 1))], axis=1)
        top = jnp.linalg.eigvalsh(2.0 / h2.shape[0] * feats.T @ feats)[-1]
        rate = jnp.minimum(inner_lr, 1.0 / top)

        def step(head, _):
            g = jax.grad(lambda hd: mse_loss({**params, "out": hd}, support))(head)
            return jax.tree.map(lambda p, d: p - rate * d, head, g), None

        head, _ = jax.lax.scan(step, params["out"], None, length=num_steps)
        return {**params, "out": head}

    return adapt


def pretrain_learner(optimizer, adapt):
    """Adam on the pooled support and query data of the meta-batch (no inner step)."""

    def init(params):
        return bm.meta.MetaState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    def step(state, task_batch):
        def pooled(p):
            s = jax.vmap(mse_loss, in_axes=(None, 0))(p, task_batch["support"])
            q = jax.vmap(mse_loss, in_axes=(None, 0))(p, task_batch["query"])
            return jnp.mean(s + q) / 2, (s + q) / 2

        (loss, losses), grads = jax.value_and_grad(pooled, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
        info = bm.meta.MetaInfo(loss, loss, losses, norm)
        return bm.meta.MetaState(params, opt_state, state.count + 1), info

    return bm.meta.MetaLearner(init, step, adapt)


def evaluate(adapt, params, batch, num_steps):
    """Per-task query MSE before and after ``num_steps`` adaptation steps, the adapted
    parameters and the hidden activations at the query inputs before and after."""

    @jax.jit
    def one(support, query):
        phi = adapt(params, support, num_steps=num_steps)
        return (
            mse_loss(params, query),
            mse_loss(phi, query),
            phi,
            hidden(params, query["x"]),
            hidden(phi, query["x"]),
        )

    return jax.vmap(one)(batch["support"], batch["query"])


def movement(params, phi, before, after, finite):
    """Mean linear CKA per hidden layer and mean relative weight change per layer, over
    the tasks whose adaptation stayed finite (``finite``, a boolean mask over tasks)."""
    tasks = np.flatnonzero(finite)
    cka = {
        name: float(
            np.nanmean(
                [bm.meta.linear_cka(np.asarray(b[t]), np.asarray(a[t])) for t in tasks] or [np.nan]
            )
        )
        for name, b, a in zip(("h1", "h2"), before, after, strict=True)
    }
    changes = [
        bm.meta.relative_change(params, jax.tree.map(lambda leaf, t=t: leaf[t], phi)) for t in tasks
    ] or [dict.fromkeys(LAYERS, np.nan)]
    change = {name: float(np.mean([c[name] for c in changes])) for name in LAYERS}
    return cka, change


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=10, help="K support points per task")
    parser.add_argument("--meta-iters", type=int, default=8000)
    parser.add_argument("--meta-batch", type=int, default=25)
    parser.add_argument("--inner-lr", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=10, help="adaptation steps at test time")
    parser.add_argument("--test-tasks", type=int, default=500)
    parser.add_argument("--query", type=int, default=100, help="query points per test task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--out", default=".", help="directory for the figures")
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args(argv)
    if args.quick:
        args.meta_iters, args.test_tasks, args.query, args.meta_batch = 30, 20, 20, 5
    if min(args.shots, args.meta_iters, args.meta_batch, args.steps, args.test_tasks) < 1:
        parser.error("sizes must be positive")
    if args.query < 2:
        parser.error("--query must be at least 2 (CKA needs two inputs)")
    start = time.time()
    key = jax.random.PRNGKey(args.seed)
    k_init, k_test = jax.random.split(key)
    params0 = init_mlp(k_init)
    band = BANDS["in distribution"]

    def sampler(k):
        return sample_tasks(k, args.meta_batch, args.shots, args.shots, band)

    alpha = args.inner_lr
    head_rate = head_only(params0, alpha)
    adam = optax.adam(1e-3)
    anil = bm.meta.maml(mse_loss, adam, inner_lr=head_rate, num_inner_steps=1)
    learners = {
        "pretrained, head": pretrain_learner(adam, head_adapt(alpha)),
        "ANIL, head": bm.meta.MetaLearner(anil.init, anil.step, head_adapt(alpha)),
        "MAML, whole": bm.meta.maml(mse_loss, adam, inner_lr=alpha, num_inner_steps=1),
    }
    progress = not args.quick
    states = {}
    for i, (name, learner) in enumerate(learners.items()):
        states[name], _ = bm.meta.train(
            learner, params0, sampler, args.meta_iters, seed=args.seed + i, progress_bar=progress
        )

    results = {}
    for b_index, (band_name, band) in enumerate(BANDS.items()):
        batch = sample_tasks(
            jax.random.fold_in(k_test, b_index), args.test_tasks, args.shots, args.query, band
        )
        for name, learner in learners.items():
            params = states[name].params
            before, after, phi, h_before, h_after = evaluate(
                learner.adapt, params, batch, args.steps
            )
            after = np.asarray(after, dtype=float)
            # a task whose inner steps diverged is counted, not averaged in
            finite = np.isfinite(after)
            cka, change = movement(params, phi, h_before, h_after, finite)
            kept = after[finite] if finite.any() else np.array([np.nan, np.nan])
            results[(band_name, name)] = {
                "mse_before": float(np.mean(before)),
                "mse": float(np.mean(kept)),
                "mse_ci95": float(1.96 * np.std(kept, ddof=1) / np.sqrt(kept.size)),
                "diverged": int(np.sum(~finite)),
                "cka": cka,
                "weight_change": change,
                "task_mse": after,
            }
    elapsed = time.time() - start

    print(
        f"Sinusoids, K = {args.shots} shots, meta-trained on w in {BANDS['in distribution']} "
        f"({args.meta_iters} iterations), {args.test_tasks} held-out tasks per band, "
        f"{args.steps} adaptation steps ({elapsed:.0f} s)"
    )
    print(
        f"{'band':<17}{'learner':<18}{'MSE before':>11}{'MSE after':>19}{'CKA h1':>8}"
        f"{'CKA h2':>8}" + "".join(f"{'dW ' + n:>9}" for n in LAYERS) + f"{'diverged':>9}"
    )
    for (band_name, name), r in results.items():
        print(
            f"{band_name:<17}{name:<18}{r['mse_before']:>11.3f}{r['mse']:>11.3f} +- "
            f"{r['mse_ci95']:<5.3f}{r['cka']['h1']:>8.3f}{r['cka']['h2']:>8.3f}"
            + "".join(f"{r['weight_change'][n]:>9.4f}" for n in LAYERS)
            + f"{r['diverged']:>9d}"
        )
    gaps = {}
    for band_name in BANDS:
        d = (
            results[(band_name, "ANIL, head")]["task_mse"]
            - results[(band_name, "MAML, whole")]["task_mse"]
        )
        d = d[np.isfinite(d)]
        gaps[band_name] = (float(d.mean()), float(1.96 * d.std(ddof=1) / np.sqrt(d.size)))
        print(
            f"{band_name}: ANIL head minus MAML whole, MSE after adaptation "
            f"{gaps[band_name][0]:.3f} +- {gaps[band_name][1]:.3f} (paired over tasks)"
        )

    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    names = list(learners)
    width = 0.38
    for b_index, band_name in enumerate(BANDS):
        m = [results[(band_name, n)]["mse"] for n in names]
        h = [results[(band_name, n)]["mse_ci95"] for n in names]
        pos = np.arange(len(names)) + (b_index - 0.5) * width
        axes[0].bar(pos, m, width, yerr=h, capsize=3, label=band_name)
        cka = [results[(band_name, n)]["cka"]["h2"] for n in names]
        axes[1].bar(pos, cka, width, label=band_name)
    for ax, title in zip(axes[:2], TITLES, strict=True):
        ax.set_xticks(np.arange(len(names)))
        ax.set_xticklabels(names, fontsize=8)
        ax.set_title(title)
        ax.legend(frameon=False)
    ax = axes[2]
    batch = sample_tasks(jax.random.fold_in(k_test, 99), 1, args.shots, 200, BANDS["shifted"])
    support = jax.tree.map(lambda a: a[0], batch["support"])
    xs = jnp.sort(batch["query"]["x"][0])
    order = jnp.argsort(batch["query"]["x"][0])
    ax.plot(xs, batch["query"]["y"][0][order], "k", label="truth (shifted band)")
    ax.scatter(support["x"], support["y"], c="k", zorder=5, label=f"{args.shots} shots")
    for name, learner in learners.items():
        phi = learner.adapt(states[name].params, support, num_steps=args.steps)
        ax.plot(xs, mlp(phi, xs), label=f"{name}, {args.steps} steps")
    ax.set_title("one shifted-band task")
    ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    path = os.path.join(args.out, "feature_reuse.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")

    summary = {
        band_name: {
            name: {k: v for k, v in results[(band_name, name)].items() if k != "task_mse"}
            for name in learners
        }
        for band_name in BANDS
    }
    summary["anil_minus_maml"] = {b: {"mean": g[0], "ci95": g[1]} for b, g in gaps.items()}
    summary.update(
        shots=args.shots,
        meta_iters=args.meta_iters,
        steps=args.steps,
        test_tasks=args.test_tasks,
        seconds=round(elapsed, 1),
        figure=path,
    )
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
