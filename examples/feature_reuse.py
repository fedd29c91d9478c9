"""MAML against feature reuse: frozen features with a fine-tuned head versus adapting the
whole network, in distribution and under a growing shift of the task family.

Tasks are sinusoids ``y = A sin(x - phase)``, ``A ~ U[0.1, 5]``, ``x ~ U[-5, 5]``, seen
through ``--shots`` support points. Meta-training draws the phase from a narrow band
``phase ~ U[0, 0.5]``; held-out tasks draw it from the shifted band ``U[d, d + 0.5]`` for
each shift ``d`` of ``--shifts`` (``d = 0``: in distribution). A phase shift is a shift of
the input, ``sin(x - d - phase)``: the whole network reaches it by moving its first-layer
biases (``b1 -> b1 - d W1``, a direction the gradient of the support loss points along),
while a frozen body only offers the features that its narrow training family needed.
The network is 1-40-40-1 ReLU; every learner is trained by ``bm.meta.train`` with Adam
(1e-3) on meta-batches of 25 tasks for the same number of steps:

* ``pretrained, head``: the network trained on the pooled data of all tasks (no inner
  step), then only the last layer is fine-tuned on the support points (body frozen);
* ``ANIL, head``: MAML whose inner step moves only the last layer (Raghu et al., 2020):
  a body meta-trained *for* head-only adaptation, i.e. the best case of feature reuse;
* ``MAML, whole``: MAML adapting every layer (Finn et al., 2017), inner step 0.01.

At test time each adapts by ``--steps`` plain gradient steps on the support points; the
step size is chosen per learner and per shift on separate meta-validation tasks of the
same band (never on the test tasks) from a small grid (whole network: 0.001, 0.003, 0.01;
head: 0.01, 0.1, 1, each capped at the stability limit ``1 / lambda_max`` of the head's
quadratic loss, so a frozen body is never scored on a diverged head). Scored by the mean
squared error on ``--query`` query points, with 95% intervals over tasks (1.96 standard
errors), and by the share of the pre-adaptation error that adaptation removed. How far
the adapted features moved: linear CKA (``bm.meta.linear_cka``) between each hidden
layer's activations at the query inputs before and after adaptation (1: the features did
not move), and the relative weight change by layer (``bm.meta.relative_change``), means
over tasks.

What to expect: a pooled (not meta-trained) body gives the head almost nothing to adapt
with at any shift; ANIL's meta-trained body is best in distribution but its frozen
features break at mid shifts (d about 1 to 1.5), where the whole-network adaptation
still removes most of the error. Near ``d = pi`` the shifted family is the negated
training family (``sin(x - pi - phase) = -sin(x - phase)``), which the head reaches by a
sign flip, so the frozen meta-trained features recover there; the sweep shows both.

Run: ``python examples/feature_reuse.py`` (a few minutes on a 2-core CPU);
``--quick --out DIR`` for a tiny version; ``--json`` prints a JSON summary as the last line.
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

TRAIN_PHASE = (0.0, 0.5)
LAYERS = ("h1", "h2", "out")
WHOLE_RATES = (0.001, 0.003, 0.01)
HEAD_RATES = (0.01, 0.1, 1.0)


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
    """Sinusoid tasks ``A sin(x - phase)`` with ``phase ~ U[band]``."""
    k_a, k_p, k_s, k_q = jax.random.split(key, 4)
    amp = jax.random.uniform(k_a, (num_tasks, 1), minval=0.1, maxval=5.0)
    phase = jax.random.uniform(k_p, (num_tasks, 1), minval=band[0], maxval=band[1])
    xs = jax.random.uniform(k_s, (num_tasks, num_support), minval=-5.0, maxval=5.0)
    xq = jax.random.uniform(k_q, (num_tasks, num_query), minval=-5.0, maxval=5.0)
    return {
        "support": {"x": xs, "y": amp * jnp.sin(xs - phase)},
        "query": {"x": xq, "y": amp * jnp.sin(xq - phase)},
    }


def head_only(params, rate):
    """A per-parameter inner rate: ``rate`` on the last layer, 0 on the body."""
    return {
        name: jax.tree.map(lambda p, r=(rate if name == "out" else 0.0): jnp.full_like(p, r), layer)
        for name, layer in params.items()
    }


def head_steps(params, support, num_steps, inner_lr):
    """Fine-tune only the last layer by gradient descent on the support MSE, with the step
    capped at the head's stability limit: the head's loss is quadratic with Hessian
    ``2/K F^T F`` (``F`` the support features with a column of ones), so the step is
    ``min(inner_lr, 1 / lambda_max)`` and never diverges."""
    _, h2 = hidden(params, support["x"])
    feats = jnp.concatenate([h2, jnp.ones((h2.shape[0], 1))], axis=1)
    top = jnp.linalg.eigvalsh(2.0 / h2.shape[0] * feats.T @ feats)[-1]
    rate = jnp.minimum(inner_lr, 1.0 / top)

    def step(head, _):
        g = jax.grad(lambda hd: mse_loss({**params, "out": hd}, support))(head)
        return jax.tree.map(lambda p, d: p - rate * d, head, g), None

    head, _ = jax.lax.scan(step, params["out"], None, length=num_steps)
    return {**params, "out": head}


def whole_steps(params, support, num_steps, inner_lr):
    """Plain gradient descent on every layer (MAML's inner step, continued)."""

    def step(p, _):
        g = jax.grad(mse_loss)(p, support)
        return jax.tree.map(lambda a, d: a - inner_lr * d, p, g), None

    return jax.lax.scan(step, params, None, length=num_steps)[0]


def head_adapt(inner_lr):
    """``head_steps`` with the signature of ``MetaLearner.adapt``."""

    def adapt(params_or_state, support, num_steps=1):
        params = getattr(params_or_state, "params", params_or_state)
        return head_steps(params, support, num_steps, inner_lr)

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


def make_evaluate(steps_fn, num_steps):
    """A jitted evaluation over a batch of tasks, the step size an argument (one compile):
    per-task query MSE before and after ``num_steps`` adaptation steps, the adapted
    parameters and the hidden activations at the query inputs before and after."""

    def one(params, support, query, rate):
        phi = steps_fn(params, support, num_steps, rate)
        return (
            mse_loss(params, query),
            mse_loss(phi, query),
            phi,
            hidden(params, query["x"]),
            hidden(phi, query["x"]),
        )

    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, None)))


def movement(params, phi, before, after, finite):
    """Mean linear CKA per hidden layer and mean relative weight change per layer, over
    the tasks whose adaptation stayed finite (``finite``, a boolean mask over tasks)."""
    tasks = np.flatnonzero(finite)
    params, phi = jax.device_get(params), jax.device_get(phi)
    before, after = np.asarray(before), np.asarray(after)
    cka = {
        name: float(
            np.nanmean([bm.meta.linear_cka(before[i][t], after[i][t]) for t in tasks] or [np.nan])
        )
        for i, name in enumerate(("h1", "h2"))
    }
    changes = [
        bm.meta.relative_change(params, jax.tree.map(lambda leaf, t=t: leaf[t], phi)) for t in tasks
    ] or [dict.fromkeys(LAYERS, np.nan)]
    change = {name: float(np.mean([c[name] for c in changes])) for name in LAYERS}
    return cka, change


def _mean_ci(values):
    values = values[np.isfinite(values)]
    if values.size < 2:
        return float("nan"), float("nan")
    return float(values.mean()), float(1.96 * values.std(ddof=1) / np.sqrt(values.size))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=10, help="K support points per task")
    parser.add_argument("--meta-iters", type=int, default=8000)
    parser.add_argument("--meta-batch", type=int, default=25)
    parser.add_argument("--inner-lr", type=float, default=0.01, help="meta-training inner step")
    parser.add_argument("--steps", type=int, default=10, help="adaptation steps at test time")
    parser.add_argument("--shifts", default="0,0.5,1,1.5,2,2.5", help="phase shifts d")
    parser.add_argument("--shift", type=float, default=1.0, help="the headline shift")
    parser.add_argument("--test-tasks", type=int, default=500)
    parser.add_argument("--val-tasks", type=int, default=200, help="to choose the step size")
    parser.add_argument("--query", type=int, default=100, help="query points per test task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--out", default=".", help="directory for the figures")
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args(argv)
    if args.quick:
        args.meta_iters, args.test_tasks, args.val_tasks = 30, 20, 20
        args.query, args.meta_batch = 20, 5
    try:
        shifts = sorted({float(d) for d in args.shifts.split(",")} | {0.0, args.shift})
    except ValueError:
        parser.error("--shifts must be comma-separated numbers")
    if min(args.shots, args.meta_iters, args.meta_batch, args.steps, args.test_tasks) < 1:
        parser.error("sizes must be positive")
    if args.val_tasks < 1:
        parser.error("--val-tasks must be positive")
    if args.query < 2:
        parser.error("--query must be at least 2 (CKA needs two inputs)")
    start = time.time()
    key = jax.random.PRNGKey(args.seed)
    k_init, k_test = jax.random.split(key)
    # in --quick the set-up is compiled whole (a few compiles instead of one per eager op)
    init, sample = init_mlp, sample_tasks
    if args.quick:
        init, sample = jax.jit(init_mlp), jax.jit(sample_tasks, static_argnums=(1, 2, 3))
    params0 = init(k_init)

    def sampler(k):
        return sample_tasks(k, args.meta_batch, args.shots, args.shots, TRAIN_PHASE)

    alpha = args.inner_lr
    adam = optax.adam(1e-3)
    anil = bm.meta.maml(mse_loss, adam, inner_lr=head_only(params0, alpha), num_inner_steps=1)
    learners = {
        "pretrained, head": pretrain_learner(adam, head_adapt(alpha)),
        "ANIL, head": bm.meta.MetaLearner(anil.init, anil.step, head_adapt(alpha)),
        "MAML, whole": bm.meta.maml(mse_loss, adam, inner_lr=alpha, num_inner_steps=1),
    }
    head_eval = make_evaluate(head_steps, args.steps)
    whole_eval = make_evaluate(whole_steps, args.steps)
    evals = {"pretrained, head": head_eval, "ANIL, head": head_eval, "MAML, whole": whole_eval}
    grids = {"pretrained, head": HEAD_RATES, "ANIL, head": HEAD_RATES, "MAML, whole": WHOLE_RATES}
    progress = not args.quick
    states = {}
    for i, (name, learner) in enumerate(learners.items()):
        states[name], _ = bm.meta.train(
            learner, params0, sampler, args.meta_iters, seed=args.seed + i, progress_bar=progress
        )

    results, examples = {}, {}
    n_val, n_test = args.val_tasks, args.test_tasks
    test = slice(n_val, None)
    for s_index, shift in enumerate(shifts):
        band = (TRAIN_PHASE[0] + shift, TRAIN_PHASE[1] + shift)
        # validation and test tasks in one batch (one compile); the rate is chosen on the
        # first n_val tasks and scored on the other n_test
        batch = sample(
            jax.random.fold_in(k_test, s_index), n_val + n_test, args.shots, args.query, band
        )
        for name in learners:
            params = states[name].params
            best = None
            for rate in grids[name]:
                out = evals[name](params, batch["support"], batch["query"], rate)
                val = np.asarray(out[1][:n_val], dtype=float)
                score = float(np.mean(val)) if np.all(np.isfinite(val)) else np.inf
                if best is None or score < best[0]:
                    best = (score, rate, out)
            _, rate, (before, after, phi, h_before, h_after) = best
            before = np.asarray(before[test], dtype=float)
            after = np.asarray(after[test], dtype=float)
            phi = jax.tree.map(lambda leaf: leaf[test], phi)
            h_before = [h[test] for h in h_before]
            h_after = [h[test] for h in h_after]
            # a task whose inner steps diverged is counted, not averaged in
            finite = np.isfinite(after)
            cka, change = movement(params, phi, h_before, h_after, finite)
            mse, ci = _mean_ci(after)
            results[(shift, name)] = {
                "rate": rate,
                "mse_before": float(np.mean(before)),
                "mse": mse,
                "mse_ci95": ci,
                "removed": float(1.0 - mse / np.mean(before)),
                "diverged": int(np.sum(~finite)),
                "cka": cka,
                "weight_change": change,
                "task_mse": after,
            }
            if shift == args.shift:
                examples[name] = jax.tree.map(lambda leaf: leaf[0], phi)
        if shift == args.shift:
            example_task = jax.tree.map(lambda a: a[n_val], batch)
    elapsed = time.time() - start

    print(
        f"Sinusoids A sin(x - phase), K = {args.shots} shots, meta-trained on phase in "
        f"{TRAIN_PHASE} ({args.meta_iters} iterations), tested on phase in [d, d + 0.5]; "
        f"{args.test_tasks} test tasks per shift, {args.steps} adaptation steps, step size "
        f"chosen on {args.val_tasks} validation tasks ({elapsed:.0f} s)"
    )
    print(
        f"{'d':>4} {'learner':<18}{'rate':>7}{'MSE before':>11}{'MSE after':>19}{'removed':>8}"
        f"{'CKA h1':>8}{'CKA h2':>8}" + "".join(f"{'dW ' + n:>9}" for n in LAYERS) + f"{'div':>5}"
    )
    for (shift, name), r in results.items():
        print(
            f"{shift:>4.1f} {name:<18}{r['rate']:>7.3f}{r['mse_before']:>11.3f}{r['mse']:>11.3f}"
            f" +- {r['mse_ci95']:<5.3f}{r['removed']:>7.0%}{r['cka']['h1']:>8.3f}"
            f"{r['cka']['h2']:>8.3f}"
            + "".join(f"{r['weight_change'][n]:>9.4f}" for n in LAYERS)
            + f"{r['diverged']:>5d}"
        )
    gaps = {}
    for shift in shifts:
        maml_mse = results[(shift, "MAML, whole")]["task_mse"]
        gaps[shift] = {
            name: _mean_ci(results[(shift, name)]["task_mse"] - maml_mse)
            for name in ("pretrained, head", "ANIL, head")
        }
        print(
            f"d = {shift:.1f}: minus MAML whole (paired over tasks): ANIL head "
            f"{gaps[shift]['ANIL, head'][0]:.3f} +- {gaps[shift]['ANIL, head'][1]:.3f}, "
            f"pretrained head {gaps[shift]['pretrained, head'][0]:.3f} +- "
            f"{gaps[shift]['pretrained, head'][1]:.3f}"
        )

    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name in learners:
        m = np.array([results[(d, name)]["mse"] for d in shifts])
        h = np.array([results[(d, name)]["mse_ci95"] for d in shifts])
        (line,) = axes[0].plot(shifts, m, "o-", label=f"{name}, after")
        axes[0].fill_between(shifts, m - h, m + h, color=line.get_color(), alpha=0.2)
        b = [results[(d, name)]["mse_before"] for d in shifts]
        axes[0].plot(shifts, b, ":", color=line.get_color(), label=f"{name}, before")
        axes[1].plot(shifts, [results[(d, name)]["removed"] for d in shifts], "o-", label=name)
    axes[0].set_title(f"query MSE, {args.steps} steps (band: 95%)")
    axes[1].set_title("share of the pre-adaptation error removed")
    for ax in axes[:2]:
        ax.set_xlabel("phase shift d of the test band")
        ax.legend(frameon=False, fontsize=7)
    ax = axes[2]
    xs = jnp.linspace(-5.0, 5.0, 200)
    query, support = example_task["query"], example_task["support"]
    order = np.argsort(np.asarray(query["x"]))
    ax.plot(np.asarray(query["x"])[order], np.asarray(query["y"])[order], "k", label="truth")
    ax.scatter(support["x"], support["y"], c="k", zorder=5, label=f"{args.shots} shots")
    for name, phi in examples.items():
        ax.plot(xs, mlp(phi, xs), label=f"{name}, {args.steps} steps")
    ax.set_title(f"one test task at shift d = {args.shift:g}")
    ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    path = os.path.join(args.out, "feature_reuse.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")

    def rows(shift):
        return {
            name: {k: v for k, v in results[(shift, name)].items() if k != "task_mse"}
            for name in learners
        }

    summary = {
        "in distribution": rows(0.0),
        "shifted": rows(args.shift),
        "sweep": {f"{d:g}": rows(d) for d in shifts},
        "minus_maml": {
            f"{d:g}": {n: {"mean": g[0], "ci95": g[1]} for n, g in gaps[d].items()} for d in shifts
        },
    }
    summary["anil_minus_maml"] = {
        "in distribution": summary["minus_maml"]["0"]["ANIL, head"],
        "shifted": summary["minus_maml"][f"{args.shift:g}"]["ANIL, head"],
    }
    summary.update(
        shots=args.shots,
        meta_iters=args.meta_iters,
        steps=args.steps,
        shift=args.shift,
        shifts=shifts,
        test_tasks=args.test_tasks,
        seconds=round(elapsed, 1),
        figure=path,
    )
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
