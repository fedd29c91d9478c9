"""Meta-Thompson sampling: a bandit prior learned by bayesmeta from past bandit tasks.

A family of K-armed bandits: in every task the arm means are drawn from a population,
``logit p_k ~ N(mu_k, tau_k)`` for Bernoulli rewards, ``m_k ~ N(mu_k, tau_k)`` for
Gaussian rewards with noise sd 1. The logs of past tasks (``--pulls`` pulls of every arm
in each, an exploration phase) are fitted by ``bm.fit`` as a hierarchical model whose
per-task parameter is the vector of the K arms' log-odds (``Binomial`` likelihood on
one-hot arm columns, NUTS) or means (``LinearRegression`` with known noise, the closed
form). ``post.population()`` -- the posterior predictive of a new task's arm parameters,
a mixture over the hyperparameter draws -- is then the prior of Thompson sampling on new
tasks.

Thompson sampling runs the same way for every prior: each arm's posterior lives on a grid
of 241 points (log-odds in [-8, 8] or means in [-6, 6]) and is updated exactly on that
grid after every pull; an arm's prior is the marginal of the learned population for that
arm (a mixture of normals over the hyperparameter draws; the arms are treated as
independent a priori, which drops the weak dependence the shared hyperparameter
uncertainty induces). Three priors are compared on the same new tasks with the same
random numbers: uninformed (Beta(1, 1), i.e. uniform p, for Bernoulli; N(0, 10^2) for
Gaussian), meta-learned (from ``--past-tasks`` tasks) and oracle (the true population).
Reported: mean cumulative (pseudo-)regret ``sum_t (max_k p_k - p_{a_t})`` at the horizon
over ``--new-tasks`` tasks with 95% intervals (1.96 standard errors over tasks), and, for
the Bernoulli family, regret at the horizon against the number of past tasks used to fit
the prior.

Run: ``python examples/bandits.py`` (about a minute on a 2-core CPU); ``--quick --out DIR``
for a tiny version; ``--json`` prints a JSON summary as the last line.
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
import numpyro.distributions as dist

import bayesmeta as bm

GRID_SIZE = 241
# the true populations: arm k's log-odds (Bernoulli) or mean (Gaussian) ~ N(mu_k, tau_k)
TRUTH = {
    "bernoulli": (np.array([-1.5, -1.0, -0.5, 0.0, 0.5]), np.full(5, 0.6)),
    "gaussian": (np.array([0.0, 0.25, 0.5, 0.75, 1.0]), np.full(5, 0.3)),
}
GRIDS = {"bernoulli": (-8.0, 8.0), "gaussian": (-6.0, 6.0)}
NOISE_SD = 1.0  # Gaussian rewards


def arm_values(family, theta):
    """Expected reward of each arm from its parameter (log-odds or mean)."""
    return jax.nn.sigmoid(theta) if family == "bernoulli" else theta


def draw_tasks(rng, family, num_tasks):
    mu, tau = TRUTH[family]
    return mu + tau * rng.standard_normal((num_tasks, mu.size))


def past_task_set(rng, family, theta, pulls):
    """The logs of past tasks as a TaskSet: one row per (task, arm) with that arm's
    summary over ``pulls`` pulls (successes out of ``pulls``, or the mean reward with its
    known standard error) and a one-hot arm indicator as the inputs."""
    num_tasks, k = theta.shape
    onehot = np.tile(np.eye(k), (num_tasks, 1))
    task = np.repeat(np.arange(num_tasks), k)
    if family == "bernoulli":
        p = 1.0 / (1.0 + np.exp(-theta))
        successes = rng.binomial(pulls, p).reshape(-1)
        x = np.column_stack([np.full(num_tasks * k, float(pulls)), onehot])
        return bm.TaskSet.from_arrays(y=successes.astype(float), task=task, x=x)
    means = theta + NOISE_SD / np.sqrt(pulls) * rng.standard_normal(theta.shape)
    return bm.TaskSet.from_arrays(
        y=means.reshape(-1), task=task, x=onehot, noise_scale=NOISE_SD / np.sqrt(pulls)
    )


def fit_population(family, tasks, seed, quick):
    """Fit the hierarchical model to the past tasks; returns the Posterior."""
    population = bm.populations.Normal(loc=dist.Normal(0.0, 3.0), scale=dist.HalfNormal(2.0))
    if family == "bernoulli":
        likelihood = bm.likelihoods.Binomial(intercept=False)
    else:
        likelihood = bm.likelihoods.LinearRegression(intercept=False, noise="known")
    sizes = dict(num_chains=1, num_warmup=150, num_samples=150)
    if not quick:
        sizes = dict(num_chains=2, num_warmup=400, num_samples=400)
    model = bm.Hierarchical(likelihood, population)
    return bm.fit(model, tasks, method="nuts", seed=seed, progress_bar=False, **sizes)


def grid_log_prior(population, grid):
    """Per-arm log prior on the grid, ``(K, G)``, from a population distribution: a normal
    with per-arm loc/scale, or the learned mixture of such normals (``post.population()``),
    of which each arm's marginal is taken."""
    if isinstance(population, dist.MixtureSameFamily):
        comp = population.component_distribution.base_dist  # Normal, batch (S, K)
        logp = comp.log_prob(grid[:, None, None])  # (G, S, K)
        logp = jax.nn.logsumexp(logp, axis=1) - jnp.log(logp.shape[1])
    else:
        logp = population.log_prob(grid[:, None])  # (G, K)
    logp = logp.T
    return logp - jax.nn.logsumexp(logp, axis=1, keepdims=True)


def thompson(family, log_prior, theta, key, horizon):
    """Thompson sampling on ``T`` tasks at once.

    Args:
      log_prior: ``(K, G)`` log prior of each arm on the grid (the same for every task).
      theta: ``(T, K)`` true arm parameters of the tasks.
      key: PRNG key; the reward noise of task ``t`` at step ``s`` depends only on (t, s),
        so different priors see the same random numbers.

    Returns:
      ``(T, horizon)`` per-step pseudo-regret ``max_k v_k - v_{a_s}``.
    """
    lo, hi = GRIDS[family]
    return _thompson(family == "bernoulli", lo, hi, log_prior, theta, key, horizon)


@functools.partial(jax.jit, static_argnames=("horizon",))
def _thompson(bernoulli, lo, hi, log_prior, theta, key, horizon):
    # the family is a traced flag (both branches computed, one selected): both families
    # share one compilation
    grid = jnp.linspace(lo, hi, GRID_SIZE)

    def values_of(t):
        return jnp.where(bernoulli, jax.nn.sigmoid(t), t)

    values = values_of(theta)
    best = values.max(axis=1)

    def one_task(vals, best, task_key):
        def step(log_post, s):
            k_sample, k_reward = jax.random.split(jax.random.fold_in(task_key, s))
            # one draw per arm from its grid posterior (Gumbel-max), then play the best
            gumbel = jax.random.gumbel(k_sample, log_post.shape)
            draws = grid[jnp.argmax(log_post + gumbel, axis=1)]
            arm = jnp.argmax(values_of(draws))
            success = (jax.random.uniform(k_reward) < vals[arm]).astype(grid.dtype)
            loglik_bernoulli = success * jax.nn.log_sigmoid(grid) + (
                1 - success
            ) * jax.nn.log_sigmoid(-grid)
            reward = vals[arm] + NOISE_SD * jax.random.normal(k_reward)
            loglik_gaussian = -0.5 * ((reward - grid) / NOISE_SD) ** 2
            loglik = jnp.where(bernoulli, loglik_bernoulli, loglik_gaussian)
            log_post = log_post.at[arm].add(loglik)
            log_post = log_post - jax.nn.logsumexp(log_post, axis=1, keepdims=True)
            return log_post, best - vals[arm]

        _, regret = jax.lax.scan(step, log_prior, jnp.arange(horizon))
        return regret

    keys = jax.random.split(key, theta.shape[0])
    return jax.vmap(one_task)(values, best, keys)


def priors_for(family, post):
    """The three priors of Thompson sampling as distributions over an arm's parameter."""
    mu, tau = TRUTH[family]
    k = mu.size
    if family == "bernoulli":
        # Beta(1, 1) on p is the logistic density on the log-odds
        uninformed = dist.Logistic(jnp.zeros(k), jnp.ones(k))
    else:
        uninformed = dist.Normal(jnp.zeros(k), jnp.full(k, 10.0))
    out = {"uninformed": uninformed}
    if post is not None:
        out["meta-learned"] = post.population()
    out["oracle"] = dist.Normal(jnp.asarray(mu), jnp.asarray(tau))
    return out


# --quick: the grid prior as one compiled function per kind of prior (distributions are
# pytrees), instead of many small op-by-op compilations
_grid_log_prior_jit = jax.jit(grid_log_prior)


def run_priors(family, priors, theta_new, key, horizon, quick=False):
    lo, hi = GRIDS[family]
    grid = jnp.linspace(lo, hi, GRID_SIZE)
    log_prior_of = _grid_log_prior_jit if quick else grid_log_prior
    out = {}
    for name, prior in priors.items():
        regret = thompson(family, log_prior_of(prior, grid), jnp.asarray(theta_new), key, horizon)
        out[name] = np.cumsum(np.asarray(regret, dtype=float), axis=1)
    return out


def mean_ci(cum):
    """Mean over tasks and the 95% half-width (1.96 standard errors)."""
    return cum.mean(axis=0), 1.96 * cum.std(axis=0, ddof=1) / np.sqrt(cum.shape[0])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--past-tasks", type=int, default=200)
    parser.add_argument("--pulls", type=int, default=10, help="pulls of each arm per past task")
    parser.add_argument("--new-tasks", type=int, default=500)
    parser.add_argument("--horizon", type=int, default=300)
    parser.add_argument(
        "--sweep", default="5,20,50,200", help="past-task counts for the regret curve"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--out", default=".", help="directory for the figures")
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args(argv)
    if args.quick:
        args.past_tasks, args.new_tasks, args.horizon, args.sweep = 20, 50, 50, "20"
    sweep = sorted({int(s) for s in args.sweep.split(",") if s} | {args.past_tasks})
    if min(sweep) < 2 or min(args.pulls, args.new_tasks, args.horizon) < 1:
        parser.error("--sweep/--past-tasks >= 2 and --pulls/--new-tasks/--horizon >= 1")
    start = time.time()
    rng = np.random.default_rng(args.seed)
    key = jax.random.PRNGKey(args.seed)

    results, sweeps, fits = {}, {}, {}
    for f_index, family in enumerate(("bernoulli", "gaussian")):
        theta_past = draw_tasks(rng, family, max(sweep))
        logs = past_task_set(rng, family, theta_past, args.pulls)
        theta_new = draw_tasks(rng, family, args.new_tasks)
        k_family = jax.random.fold_in(key, f_index)
        counts = sweep if family == "bernoulli" else [args.past_tasks]
        curves_by_count = {}
        for count in counts:
            sub = logs.subset(list(range(count))) if count < max(sweep) else logs
            post = fit_population(family, sub, args.seed, args.quick)
            curves_by_count[count] = run_priors(
                family, priors_for(family, post), theta_new, k_family, args.horizon, args.quick
            )
            if count == args.past_tasks:
                fits[family] = post
        results[family] = curves_by_count[args.past_tasks]
        sweeps[family] = {
            c: {n: mean_ci(v[:, -1:]) for n, v in cv.items()} for c, cv in curves_by_count.items()
        }
    elapsed = time.time() - start

    # --- report
    print(
        f"Thompson sampling on {args.new_tasks} new 5-armed tasks, horizon {args.horizon}; "
        f"prior learned from {args.past_tasks} past tasks x {args.pulls} pulls per arm "
        f"({elapsed:.0f} s)"
    )
    print(f"{'family':<11}{'prior':<14}{'regret at horizon':>22}{'at H/10':>16}")
    summary = {"regret": {}, "regret_ci95": {}, "sweep": {}}
    for family, curves in results.items():
        summary["regret"][family], summary["regret_ci95"][family] = {}, {}
        for name, cum in curves.items():
            m, h = mean_ci(cum)
            tenth = max(1, args.horizon // 10) - 1
            print(
                f"{family:<11}{name:<14}{m[-1]:>13.2f} +- {h[-1]:<5.2f}"
                f"{m[tenth]:>9.2f} +- {h[tenth]:<4.2f}"
            )
            summary["regret"][family][name] = float(m[-1])
            summary["regret_ci95"][family][name] = float(h[-1])
    for family, post in fits.items():
        mu, tau = TRUTH[family]
        print(
            f"{family} population fit: mu = {np.round(post.mean('mu'), 2).tolist()} "
            f"(true {mu.tolist()}), tau = {np.round(post.mean('tau'), 2).tolist()} "
            f"(true {tau.tolist()})"
        )
    print(f"\nBernoulli regret at horizon {args.horizon} vs past tasks used to learn the prior")
    print(f"{'past tasks':>10}" + "".join(f"{n:>22}" for n in results["bernoulli"]))
    for count, row in sweeps["bernoulli"].items():
        cells = "".join(f"{m[0]:>14.2f} +- {h[0]:<5.2f}" for m, h in row.values())
        print(f"{count:>10}{cells}")
        summary["sweep"][str(count)] = {n: float(m[0]) for n, (m, _) in row.items()}

    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = np.arange(1, args.horizon + 1)
    for ax, (family, curves) in zip(axes[:2], results.items(), strict=True):
        for name, cum in curves.items():
            m, h = mean_ci(cum)
            ax.plot(steps, m, label=name)
            ax.fill_between(steps, m - h, m + h, alpha=0.25)
        ax.set_xlabel("pull")
        ax.set_ylabel("cumulative regret")
        ax.set_title(f"{family} bandits, {args.new_tasks} new tasks (95% bands)")
        ax.legend(frameon=False)
    ax = axes[2]
    counts = list(sweeps["bernoulli"])
    for name in results["bernoulli"]:
        m = np.array([sweeps["bernoulli"][c][name][0][0] for c in counts])
        h = np.array([sweeps["bernoulli"][c][name][1][0] for c in counts])
        ax.errorbar(counts, m, yerr=h, marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("past tasks used to learn the prior")
    ax.set_ylabel(f"regret at horizon {args.horizon}")
    ax.set_title("Bernoulli: regret vs past tasks")
    ax.legend(frameon=False)
    fig.tight_layout()
    path = os.path.join(args.out, "bandits_regret.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")

    summary.update(
        past_tasks=args.past_tasks,
        new_tasks=args.new_tasks,
        horizon=args.horizon,
        seconds=round(elapsed, 1),
        figure=path,
    )
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
