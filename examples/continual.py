"""Continual learning: learn task A, then task B, measure how much of A is forgotten, then
re-acquire A from a few shots, starting from a meta-learned initialisation (MAML, Reptile),
a plain pre-trained one (average risk over the task family) or from scratch.

Tasks are sinusoids ``y = a sin(x - p)`` (``a`` in [0.1, 5], ``p`` in [0, pi], ``x`` in
[-5, 5]), the family of Finn et al. (2017), fitted by a 1-32-32-1 tanh network. Three
initialisations are learned on the family with the same number of Adam steps
(``bm.meta.maml`` with one inner step, ``bm.meta.reptile`` with five, and
``bm.meta.average_risk``, the pooled "pre-trained" network); a fourth is the random
initialisation itself. For each of many (A, B) pairs of fresh tasks, a learner starting
from each initialisation

1. learns A: ``--learn-steps`` gradient steps (rate ``--learn-lr``) on A's 50 training points;
2. learns B the same way, from where it stopped: the rise of A's query loss is the forgetting;
3. re-acquires A from ``k`` fresh shots of A, by gradient steps of size ``--inner-lr``
   either from where it stopped after B ("continual") or restarting from its
   initialisation ("reset").

Query losses are mean squared errors on 100 query points of A, averaged over pairs with
95% intervals (1.96 standard errors over pairs). The figure plots A's re-acquired query
loss against the number of shots (at ``--steps`` steps) and against steps (at
``--shots`` shots).

Run:  python examples/continual.py [--quick] [--out DIR] [--json] [--seed S]
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

SHOTS = (1, 2, 5, 10, 20)
STEPS_REPORTED = (0, 1, 5, 10, 20)


def init_mlp(key, sizes=(1, 32, 32, 1)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (m, n)) * jnp.sqrt(1.0 / m), "b": jnp.zeros(n)}
        for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def mlp(params, x):
    h = x[:, None]
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["w"] + layer["b"])
    return (h @ params[-1]["w"] + params[-1]["b"])[:, 0]


def mse_loss(params, batch):
    return jnp.mean((mlp(params, batch["x"]) - batch["y"]) ** 2)


def sample_tasks(key, num, num_points):
    """``num`` sinusoid tasks with ``num_points`` points each: ``(x, y)`` of shape
    ``(num, num_points)``."""
    ka, kp, kx = jax.random.split(key, 3)
    amp = jax.random.uniform(ka, (num, 1), minval=0.1, maxval=5.0)
    phase = jax.random.uniform(kp, (num, 1), minval=0.0, maxval=jnp.pi)
    x = jax.random.uniform(kx, (num, num_points), minval=-5.0, maxval=5.0)
    return x, amp * jnp.sin(x - phase)


def make_sampler(meta_batch, shots):
    def sampler(key):
        x, y = sample_tasks(key, meta_batch, 2 * shots)
        return {
            "support": {"x": x[:, :shots], "y": y[:, :shots]},
            "query": {"x": x[:, shots:], "y": y[:, shots:]},
        }

    return sampler


def weighted_mse(params, batch):
    """Mean squared error over the points with weight 1 (``batch["w"]``: 1 or 0), so that
    supports of every size share one shape, and one compiled program."""
    err = (mlp(params, batch["x"]) - batch["y"]) ** 2
    return jnp.sum(batch["w"] * err) / jnp.sum(batch["w"])


def _descent_curve(params, support, query, lr, num_steps):
    """Query loss after 0..num_steps gradient steps on ``support`` from ``params``."""

    def body(p, _):
        grads = jax.grad(weighted_mse)(p, support)
        new = jax.tree.map(lambda a, g: a - lr * g, p, grads)
        return new, mse_loss(new, query)

    _, losses = jax.lax.scan(body, params, None, length=num_steps)
    return jnp.concatenate([mse_loss(params, query)[None], losses])


# params and tasks carry a leading pair axis; the supports of all k a leading shots axis
descent_curves = jax.jit(
    jax.vmap(
        jax.vmap(_descent_curve, in_axes=(0, 0, 0, None, None)), in_axes=(None, 0, None, None, None)
    ),
    static_argnums=(4,),
)
batched_query_loss = jax.jit(jax.vmap(mse_loss))


def mean_ci(values, axis=0):
    values = np.asarray(values)
    return values.mean(axis), 1.96 * values.std(axis, ddof=1) / np.sqrt(values.shape[axis])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meta-iters", type=int, default=10000)
    parser.add_argument("--meta-batch", type=int, default=10)
    parser.add_argument("--meta-shots", type=int, default=10, help="K at meta-training")
    parser.add_argument("--inner-lr", type=float, default=0.01)
    parser.add_argument("--pairs", type=int, default=300, help="(A, B) task pairs")
    parser.add_argument("--learn-steps", type=int, default=200)
    parser.add_argument("--learn-lr", type=float, default=0.02)
    parser.add_argument("--shots", type=int, default=10, help="shots of the steps curve")
    parser.add_argument("--steps", type=int, default=10, help="steps of the shots curve")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--out", default=".", help="directory for the figure")
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args(argv)
    if args.quick:
        args.meta_iters, args.pairs, args.learn_steps = 20, 16, 10
    max_steps = max(max(STEPS_REPORTED), args.steps)
    start = time.time()
    key = jax.random.PRNGKey(args.seed)
    k_init, k_a, k_b = jax.random.split(key, 3)

    # ---- initialisations learned on the task family (same Adam steps each)
    # in --quick the set-up is compiled whole (a few compiles instead of one per eager op)
    init, sample = init_mlp, sample_tasks
    if args.quick:
        init, sample = jax.jit(init_mlp), jax.jit(sample_tasks, static_argnums=(1, 2))
    params0 = init(k_init)
    sampler = make_sampler(args.meta_batch, args.meta_shots)
    learners = {
        "MAML": bm.meta.maml(mse_loss, optax.adam(1e-3), inner_lr=args.inner_lr),
        "Reptile": bm.meta.reptile(
            mse_loss, optax.adam(1e-3), inner_lr=args.inner_lr, num_inner_steps=5
        ),
        "pre-trained": bm.meta.average_risk(mse_loss, optax.adam(1e-3), inner_lr=args.inner_lr),
    }
    inits = {}
    for i, (name, learner) in enumerate(learners.items()):
        state, _ = bm.meta.train(
            learner, params0, sampler, args.meta_iters, seed=args.seed + i, progress_bar=False
        )
        inits[name] = state.params
    inits["scratch"] = params0
    trained_s = time.time() - start

    # ---- the (A, B) pairs: for A, 50 training, 100 query and 20 more points (the shots
    # of re-acquisition, nested across k); for B, 50 training points
    n, kmax = args.pairs, max(SHOTS)
    ax_, ay_ = sample(k_a, n, 150 + kmax)
    bx_, by_ = sample(k_b, n, 50)
    train_a = {"x": ax_[:, :50], "y": ay_[:, :50]}
    query_a = {"x": ax_[:, 50:150], "y": ay_[:, 50:150]}
    shots_a = {"x": ax_[:, 150:], "y": ay_[:, 150:]}
    train_b = {"x": bx_, "y": by_}

    adapt = learners["MAML"].adapt  # plain gradient descent on one task's loss

    @jax.jit
    def learn(params, data):
        return jax.vmap(
            lambda p, b: adapt(p, b, num_steps=args.learn_steps, inner_lr=args.learn_lr)
        )(params, data)

    # the k-shot supports as weights over the 20 shots: (len(SHOTS), pairs, 20)
    weights = jnp.stack([jnp.broadcast_to(jnp.arange(kmax) < k, (n, kmax)) for k in SHOTS])
    supports = {
        "x": jnp.broadcast_to(shots_a["x"], weights.shape),
        "y": jnp.broadcast_to(shots_a["y"], weights.shape),
        "w": weights.astype(shots_a["x"].dtype),
    }
    results = {}
    for name, theta0 in inits.items():
        stacked = jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *a.shape)), theta0)
        after_a = learn(stacked, train_a)
        after_b = learn(after_a, train_b)
        res = {
            "after_a": np.asarray(batched_query_loss(after_a, query_a)),
            "after_b": np.asarray(batched_query_loss(after_b, query_a)),
        }
        for mode, start_params in (("continual", after_b), ("reset", stacked)):
            curves = np.asarray(
                descent_curves(start_params, supports, query_a, args.inner_lr, max_steps)
            )
            res[mode] = dict(zip(SHOTS, curves, strict=True))  # k -> (pairs, steps + 1)
        results[name] = res
    elapsed = time.time() - start

    # ---- report
    print(
        f"Continual learning on sinusoids: {args.pairs} (A, B) pairs, each task learned by "
        f"{args.learn_steps} steps of size {args.learn_lr} on 50 points; initialisations "
        f"from {args.meta_iters} Adam steps ({trained_s:.0f} s; {elapsed:.0f} s in all)"
    )
    print(
        f"Query MSE on A, mean +- 95% interval over pairs; re-acquisition of A after "
        f"{args.steps} steps of size {args.inner_lr} from k shots"
    )
    print(
        f"{'init':<12}{'mode':<10}{'A after A':>16}{'A after B':>16}{'forgetting':>16}"
        + "".join(f"{f'k={k}':>9}" for k in SHOTS)
    )
    summary = {"shots": list(SHOTS), "steps": list(STEPS_REPORTED), "inits": {}}
    for name, res in results.items():
        m_a, c_a = mean_ci(res["after_a"])
        m_b, c_b = mean_ci(res["after_b"])
        m_f, c_f = mean_ci(res["after_b"] - res["after_a"])
        entry = {
            "loss_a_after_a": float(m_a),
            "loss_a_after_b": float(m_b),
            "forgetting": float(m_f),
            "forgetting_ci95": float(c_f),
        }
        for mode in ("continual", "reset"):
            cells = "".join(f"{res[mode][k][:, args.steps].mean():>9.3f}" for k in SHOTS)
            lead = (
                f"{m_a:>8.3f} +- {c_a:<4.2f}{m_b:>8.3f} +- {c_b:<4.2f}{m_f:>8.3f} +- {c_f:<4.2f}"
                if mode == "continual"
                else " " * 48
            )
            print(f"{name:<12}{mode:<10}{lead}{cells}")
            curve_m, curve_c = mean_ci(res[mode][args.shots])
            entry[mode] = {
                "by_shots": {str(k): float(res[mode][k][:, args.steps].mean()) for k in SHOTS},
                "by_steps": {str(s): float(curve_m[s]) for s in STEPS_REPORTED},
                "by_steps_ci95": {str(s): float(curve_c[s]) for s in STEPS_REPORTED},
            }
        summary["inits"][name] = entry
    print(f"\nRe-acquisition of A from k = {args.shots} shots against steps (query MSE)")
    print(f"{'init':<12}{'mode':<10}" + "".join(f"{f'{s} steps':>16}" for s in STEPS_REPORTED))
    for name, res in results.items():
        for mode in ("continual", "reset"):
            curve_m, curve_c = mean_ci(res[mode][args.shots])
            cells = "".join(f"{curve_m[s]:>8.3f} +- {curve_c[s]:<4.2f}" for s in STEPS_REPORTED)
            print(f"{name:<12}{mode:<10}{cells}")

    # ---- figure
    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = dict(zip(results, ("C0", "C1", "C2", "C3"), strict=True))
    names = list(results)
    m_f = [mean_ci(results[k]["after_b"] - results[k]["after_a"]) for k in names]
    axes[0].bar(
        names,
        [m for m, _ in m_f],
        yerr=[c for _, c in m_f],
        capsize=4,
        color=[colours[k] for k in names],
    )
    axes[0].set_ylabel("rise of A's query MSE after learning B")
    axes[0].set_title("forgetting of A")
    for name, res in results.items():
        for mode, ls in (("continual", "-"), ("reset", "--")):
            by_k = [res[mode][k][:, args.steps].mean() for k in SHOTS]
            axes[1].plot(SHOTS, by_k, ls, marker="o", color=colours[name], label=f"{name}, {mode}")
            curve_m, curve_c = mean_ci(res[mode][args.shots])
            axes[2].plot(
                np.arange(max_steps + 1), curve_m, ls, color=colours[name], label=f"{name}, {mode}"
            )
            axes[2].fill_between(
                np.arange(max_steps + 1),
                curve_m - curve_c,
                curve_m + curve_c,
                color=colours[name],
                alpha=0.12,
            )
    axes[1].set_xscale("log")
    axes[1].set_xlabel("shots of A")
    axes[1].set_ylabel(f"query MSE of A after {args.steps} steps")
    axes[1].set_title("re-acquisition against shots")
    axes[1].legend(frameon=False, fontsize=7)
    axes[2].set_xlabel("gradient steps")
    axes[2].set_ylabel(f"query MSE of A, k = {args.shots}")
    axes[2].set_title("re-acquisition against steps (95% bands)")
    axes[2].legend(frameon=False, fontsize=7)
    for ax in axes[1:]:
        ax.set_yscale("log")
    fig.tight_layout()
    path = os.path.join(args.out, "continual.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")
    summary.update(pairs=args.pairs, figures=[path], seconds=round(elapsed, 1))
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
