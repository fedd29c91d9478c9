"""Meta-reinforcement learning: policy-gradient MAML on 2-D point navigation.

The task family of Finn, Abbeel & Levine (2017, Section 5.3): a point agent starts at the
origin, moves by its action (clipped to [-0.1, 0.1] per coordinate) for ``--horizon``
steps, and is rewarded by minus its distance to a goal drawn uniformly from
[-0.5, 0.5]^2, which it does not observe. The policy is Gaussian: the mean is a small
tanh network of the position (2-32-32-2), the log standard deviation a learned vector.

One adaptation step is a REINFORCE step: ``--rollouts`` trajectories under the current
policy, reward-to-go minus a per-time-step batch-mean baseline, divided by its standard
deviation, and the differentiable
surrogate ``-mean sum_t log pi(a_t | s_t) * advantage_t`` (trajectories held fixed), whose
gradient is the policy gradient. The trajectories are generated *inside* the loss from
the task's noise, so a task's loss at any parameters is the surrogate on that policy's own
(on-policy) rollouts, and ``bm.meta.maml`` differentiates the post-step surrogate through
the inner step (the original MAML estimator: the sampling distribution's own dependence
on the parameters is dropped, as in the paper's implementation).

Compared, each adapted the same way (0, 1 and 3 steps of the same size, fresh rollouts
at every step) on held-out goals: MAML's initialisation, a policy pretrained on all goals
(the same surrogate averaged over tasks, no inner step) and the random initialisation.
Scored by the mean return of fresh rollouts after adaptation, with 95% intervals over
goals (1.96 standard errors).

Run: ``python examples/meta_rl.py`` (a couple of minutes on a 2-core CPU);
``--quick --out DIR`` for a tiny version; ``--json`` prints a JSON summary as the last line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bayesmeta as bm

STEPS_REPORTED = (0, 1, 3)
MAX_ACTION = 0.1


def init_policy(key, hidden=32):
    k1, k2, k3 = jax.random.split(key, 3)

    def dense(k, n_in, n_out):
        w = jax.random.normal(k, (n_in, n_out)) * jnp.sqrt(1.0 / n_in)
        return {"w": w, "b": jnp.zeros(n_out)}

    return {
        "h1": dense(k1, 2, hidden),
        "h2": dense(k2, hidden, hidden),
        "out": jax.tree.map(lambda a: 0.1 * a, dense(k3, hidden, 2)),
        "log_std": jnp.full(2, jnp.log(0.1)),
    }


def policy_mean(params, state):
    h = jnp.tanh(state @ params["h1"]["w"] + params["h1"]["b"])
    h = jnp.tanh(h @ params["h2"]["w"] + params["h2"]["b"])
    return h @ params["out"]["w"] + params["out"]["b"]


def rollout(params, goal, noise):
    """One trajectory from the origin; ``noise`` ``(H, 2)`` standard normals. Returns the
    states ``(H, 2)``, actions ``(H, 2)`` and rewards ``(H,)``."""

    def step(state, eps):
        action = policy_mean(params, state) + jnp.exp(params["log_std"]) * eps
        nxt = state + jnp.clip(action, -MAX_ACTION, MAX_ACTION)
        return nxt, (state, action, -jnp.linalg.norm(nxt - goal))

    _, (states, actions, rewards) = jax.lax.scan(step, jnp.zeros(2), noise)
    return states, actions, rewards


def returns(params, batch):
    """Undiscounted return of each of a task's rollouts, ``(R,)``."""
    _, _, rewards = jax.vmap(rollout, in_axes=(None, None, 0))(
        params, batch["goal"], batch["noise"]
    )
    return rewards.sum(axis=1)


def surrogate_loss(params, batch):
    """The REINFORCE surrogate of one task (``batch = {"goal": (2,), "noise": (R, H, 2)}``):
    trajectories sampled on-policy from ``batch["noise"]`` and then held fixed."""
    states, actions, rewards = jax.vmap(rollout, in_axes=(None, None, 0))(
        jax.lax.stop_gradient(params), batch["goal"], batch["noise"]
    )
    to_go = jnp.cumsum(rewards[:, ::-1], axis=1)[:, ::-1]
    advantage = to_go - to_go.mean(axis=0, keepdims=True)
    advantage = advantage / (jnp.std(advantage) + 1e-6)  # the step is scale-free
    mean = jax.vmap(jax.vmap(policy_mean, in_axes=(None, 0)), in_axes=(None, 0))(params, states)
    std = jnp.exp(params["log_std"])
    logp = jnp.sum(-0.5 * ((actions - mean) / std) ** 2 - params["log_std"], axis=-1)
    return -jnp.mean(jnp.sum(logp * advantage, axis=1))


def make_sampler(meta_batch, rollouts, horizon):
    def sample(key):
        k_goal, k_s, k_q = jax.random.split(key, 3)
        goal = jax.random.uniform(k_goal, (meta_batch, 2), minval=-0.5, maxval=0.5)
        shape = (meta_batch, rollouts, horizon, 2)
        return {
            "support": {"goal": goal, "noise": jax.random.normal(k_s, shape)},
            "query": {"goal": goal, "noise": jax.random.normal(k_q, shape)},
        }

    return sample


def pretrain_learner(optimizer, inner_lr):
    """Policy gradient on all goals pooled (no inner step), as a MetaLearner whose adapt is
    the same REINFORCE step as MAML's."""

    def init(params):
        return bm.meta.MetaState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    def step(state, task_batch):
        def pooled(p):
            losses = jax.vmap(surrogate_loss, in_axes=(None, 0))(p, task_batch["support"])
            return jnp.mean(losses), losses

        (loss, losses), grads = jax.value_and_grad(pooled, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
        info = bm.meta.MetaInfo(loss, loss, losses, norm)
        return bm.meta.MetaState(params, opt_state, state.count + 1), info

    return bm.meta.MetaLearner(init, step, bm.meta.maml(surrogate_loss, inner_lr=inner_lr).adapt)


def evaluate(learner, params, goals, key, rollouts, horizon, max_steps, shared=False):
    """Mean return ``(num_goals, max_steps + 1)`` after 0..max_steps REINFORCE steps, each
    step on fresh rollouts of the current policy, scored on fresh rollouts.

    ``shared=True`` compiles once for all starts (``params`` is an argument of the compiled
    function); the default compiles per start with ``params`` as constants, which differs
    from the shared one only by float32 round-off."""
    keys = jax.random.split(key, goals.shape[0])
    if shared:
        run = _shared_evaluator(learner.adapt, rollouts, horizon, max_steps)
        return np.asarray(run(_strong(params), goals, keys))
    one_goal = _one_goal(learner.adapt, rollouts, horizon, max_steps)
    return np.asarray(jax.vmap(jax.jit(functools.partial(one_goal, params)))(goals, keys))


def _strong(params):
    """The same arrays without weak types (the initial ``log_std`` is weakly typed, trained
    parameters are not): one compilation serves both."""
    return jax.tree.map(lambda a: a.astype(a.dtype), params)


@functools.cache
def _one_goal(adapt, rollouts, horizon, max_steps):
    def one_goal(params, goal, k):
        keys = jax.random.split(k, max_steps + 1)
        shape = (rollouts, horizon, 2)
        p, out = params, []
        for s in range(max_steps + 1):
            k_score, k_adapt = jax.random.split(keys[s])
            out.append(
                returns(p, {"goal": goal, "noise": jax.random.normal(k_score, shape)}).mean()
            )
            support = {"goal": goal, "noise": jax.random.normal(k_adapt, shape)}
            p = adapt(p, support, num_steps=1)
        return jnp.stack(out)

    return one_goal


@functools.cache
def _shared_evaluator(adapt, rollouts, horizon, max_steps):
    """The evaluation of ``_one_goal`` with its steps in a ``lax.scan`` (compiled once,
    not unrolled) and the start ``params`` as an argument."""

    def one_goal(params, goal, k):
        shape = (rollouts, horizon, 2)

        def body(p, key):
            k_score, k_adapt = jax.random.split(key)
            score = returns(p, {"goal": goal, "noise": jax.random.normal(k_score, shape)})
            support = {"goal": goal, "noise": jax.random.normal(k_adapt, shape)}
            return adapt(p, support, num_steps=1), score.mean()

        _, out = jax.lax.scan(body, params, jax.random.split(k, max_steps + 1))
        return out

    return jax.jit(jax.vmap(one_goal, in_axes=(None, 0, 0)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-iters", type=int, default=1500)
    parser.add_argument("--meta-batch", type=int, default=20)
    parser.add_argument("--rollouts", type=int, default=20, help="trajectories per step")
    parser.add_argument("--horizon", type=int, default=20)
    parser.add_argument("--inner-lr", type=float, default=0.003)
    parser.add_argument("--outer-lr", type=float, default=3e-3)
    parser.add_argument("--test-goals", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--out", default=".", help="directory for the figures")
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args(argv)
    if args.quick:
        args.meta_iters, args.meta_batch, args.rollouts = 20, 4, 5
        args.horizon, args.test_goals = 10, 20
    if min(args.meta_iters, args.meta_batch, args.rollouts, args.horizon, args.test_goals) < 1:
        parser.error("sizes must be positive")
    start = time.time()
    key = jax.random.PRNGKey(args.seed)
    k_init, k_goals, k_eval = jax.random.split(key, 3)
    params0 = init_policy(k_init)
    sampler = make_sampler(args.meta_batch, args.rollouts, args.horizon)
    progress = not args.quick
    maml = bm.meta.maml(
        surrogate_loss, optax.adam(args.outer_lr), inner_lr=args.inner_lr, num_inner_steps=1
    )
    maml_state, maml_hist = bm.meta.train(
        maml, params0, sampler, args.meta_iters, seed=args.seed, progress_bar=progress
    )
    pre = pretrain_learner(optax.adam(args.outer_lr), args.inner_lr)
    pre_state, _ = bm.meta.train(
        pre, params0, sampler, args.meta_iters, seed=args.seed + 1, progress_bar=progress
    )
    goals = jax.random.uniform(k_goals, (args.test_goals, 2), minval=-0.5, maxval=0.5)
    max_steps = max(STEPS_REPORTED)
    starts = {"maml": maml_state.params, "pretrained": pre_state.params, "random init": params0}
    scores = {
        name: evaluate(
            maml, p, goals, k_eval, args.rollouts, args.horizon, max_steps, shared=args.quick
        )
        for name, p in starts.items()
    }
    elapsed = time.time() - start

    print(
        f"2-D point navigation, horizon {args.horizon}, {args.rollouts} rollouts per step, "
        f"{args.meta_iters} meta-iterations, {args.test_goals} held-out goals ({elapsed:.0f} s)"
    )
    print(f"{'start':<13}" + "".join(f"{f'return after {s} step(s)':>26}" for s in STEPS_REPORTED))
    summary = {"return": {}, "return_ci95": {}}
    for name, sc in scores.items():
        m = sc.mean(axis=0)
        h = 1.96 * sc.std(axis=0, ddof=1) / np.sqrt(sc.shape[0])
        print(f"{name:<13}" + "".join(f"{m[s]:>18.3f} +- {h[s]:<5.3f}" for s in STEPS_REPORTED))
        summary["return"][name] = {str(s): float(m[s]) for s in STEPS_REPORTED}
        summary["return_ci95"][name] = {str(s): float(h[s]) for s in STEPS_REPORTED}
    gain = scores["maml"][:, 1] - scores["pretrained"][:, 1]
    print(
        f"one-step return, MAML minus pretrained: {gain.mean():.3f} +- "
        f"{1.96 * gain.std(ddof=1) / np.sqrt(gain.size):.3f} (paired over goals)"
    )

    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    ax = axes[0]
    for name, sc in scores.items():
        m = sc.mean(axis=0)
        h = 1.96 * sc.std(axis=0, ddof=1) / np.sqrt(sc.shape[0])
        ax.errorbar(np.arange(max_steps + 1), m, yerr=h, marker="o", capsize=3, label=name)
    ax.set_xlabel("policy-gradient adaptation steps")
    ax.set_ylabel("mean return on held-out goals")
    ax.set_title("2-D navigation: return after adaptation (95% CI)")
    ax.legend(frameon=False)
    ax = axes[1]
    goal = goals[0]
    noise = jax.random.normal(jax.random.fold_in(k_eval, 7), (args.rollouts, args.horizon, 2))
    adapt_once = jax.jit(functools.partial(maml.adapt, num_steps=1))  # one compile each
    mean_path = jax.jit(rollout)
    for (name, p), color in zip(starts.items(), ("C0", "C1", "C2"), strict=True):
        for steps, ls in ((0, ":"), (1, "-")):
            q = _strong(p) if steps == 0 else adapt_once(_strong(p), {"goal": goal, "noise": noise})
            states, _, _ = mean_path(q, goal, jnp.zeros((args.horizon, 2)))
            path = np.asarray(states)
            ax.plot(path[:, 0], path[:, 1], ls=ls, color=color, label=f"{name}, {steps} step")
    ax.scatter([goal[0]], [goal[1]], marker="*", s=200, c="k", label="goal", zorder=5)
    ax.set_xlim(-0.6, 0.6)
    ax.set_ylim(-0.6, 0.6)
    ax.set_aspect("equal")
    ax.set_title("mean-action paths, one held-out goal")
    ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    path = os.path.join(args.out, "meta_rl_point.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")

    summary.update(
        meta_iters=args.meta_iters,
        test_goals=args.test_goals,
        horizon=args.horizon,
        one_step_gain_vs_pretrained=float(gain.mean()),
        maml_final_train_loss=float(np.nanmean(maml_hist["loss"][-50:])),
        seconds=round(elapsed, 1),
        figure=path,
    )
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
