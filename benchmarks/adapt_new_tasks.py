"""How long ``Posterior.adapt`` takes for many brand-new tasks, against the alternative it
replaces: refitting a hand-written NumPyro model on the old and new tasks together.

    python benchmarks/adapt_new_tasks.py [--new-tasks 1000] [--shots 5] [--seed 0]

The population is fitted once (collapsed NUTS on 50 training tasks of 20 rows, known
noise 1); then ``adapt`` gives 1,000 new tasks with ``--shots`` rows each their posterior.
Timings include compilation; the second ``adapt`` call shows the warm cost. Nothing here
is asserted.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

import bayesmeta as bm


def simulate(num_tasks, rows, seed, offset=0):
    rng = np.random.default_rng(seed)
    theta = 1.0 + 0.8 * rng.standard_normal(num_tasks)
    task = np.repeat(np.arange(num_tasks), rows)
    y = theta[task] + rng.standard_normal(task.size)
    return bm.TaskSet.from_arrays(
        y=y, task=task, noise_scale=1.0, labels=[f"t{offset + i}" for i in range(num_tasks)]
    )


def _hand_refit(y, task, num_tasks):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("task", num_tasks):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal((mu + tau * z)[task], 1.0), obs=y)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--new-tasks", type=int, default=1000)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    train = simulate(50, 20, args.seed)
    new = simulate(args.new_tasks, args.shots, args.seed + 1, offset=50)
    model = bm.Hierarchical(
        bm.likelihoods.NormalKnownNoise(),
        bm.populations.Normal(loc=dist.Normal(0.0, 5.0), scale=dist.HalfCauchy(5.0)),
    )
    t0 = time.perf_counter()
    post = bm.fit(model, train, method="collapsed", seed=args.seed, progress_bar=False)
    fit_s = time.perf_counter() - t0
    times = []
    for rep in range(2):
        t0 = time.perf_counter()
        adapted = post.adapt(new, seed=rep)
        jax.block_until_ready(adapted.samples["theta"])
        times.append(time.perf_counter() - t0)
    methods = adapted.info["adapt"]["method"].values()
    used = {m: sum(1 for x in methods if x == m) for m in set(methods)}
    # the alternative: refit everything, old and new tasks, with hand-written NumPyro NUTS
    y = np.concatenate([train.y, new.y])
    task = np.concatenate([train.task_index, new.task_index + train.num_tasks])
    t0 = time.perf_counter()
    mcmc = MCMC(
        NUTS(_hand_refit, target_accept_prob=0.9),
        num_warmup=1000,
        num_samples=1000,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(
        jax.random.PRNGKey(0),
        y=jnp.asarray(y),
        task=jnp.asarray(task),
        num_tasks=train.num_tasks + new.num_tasks,
    )
    jax.block_until_ready(mcmc.get_samples())
    refit_s = time.perf_counter() - t0
    print(f"backend {jax.default_backend()}; population fit (collapsed, 50 tasks): {fit_s:.2f} s")
    print(
        f"adapt {args.new_tasks} new tasks x {args.shots} rows, {post.num_chains}x"
        f"{post.num_draws} draws: first call {times[0]:.2f} s, second {times[1]:.2f} s "
        f"({1e3 * times[1] / args.new_tasks:.2f} ms per task); methods {used}"
    )
    print(
        f"refit with hand-written NumPyro NUTS on all {train.num_tasks + new.num_tasks} "
        f"tasks: {refit_s:.2f} s  -> adapt (warm) is {refit_s / times[1]:.0f}x faster"
    )


if __name__ == "__main__":
    main()
