"""Vectorised chains: draws per second as the number of NUTS chains grows, bayesmeta
against the same model hand-written in NumPyro, measured in the same run.

    python benchmarks/many_chains.py [--chains 4 32 256] [--warmup 300] [--draws 300]

Model: the hierarchical linear regression gallery file (20 ragged tasks, shared noise).
Wall time includes compilation. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

import bayesmeta as bm
from bayesmeta.inference.diagnostics import ess_bulk


def _hand(x, y, task, num_tasks):
    mu = numpyro.sample("mu", dist.Normal(0.0, 3.0).expand([2]).to_event(1))
    tau = numpyro.sample("tau", dist.HalfNormal(2.0).expand([2]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(5.0))
    with numpyro.plate("task", num_tasks):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    theta = mu + tau * z
    with numpyro.plate("obs", y.shape[0]):
        numpyro.sample("y", dist.Normal(theta[task, 0] + theta[task, 1] * x, sigma), obs=y)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chains", type=int, nargs="+", default=[4, 32, 256])
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--draws", type=int, default=300)
    args = p.parse_args()
    model, tasks = bm.load_model("models/hier_linear.py")
    print(f"backend {jax.default_backend()}; {tasks.num_tasks} tasks, {tasks.num_obs} rows")
    print(f"{'chains':>7} {'bayesmeta s':>12} {'ESS/s':>9} {'numpyro s':>10} {'ESS/s':>9}")
    for chains in args.chains:
        t0 = time.perf_counter()
        post = bm.fit(
            model,
            tasks,
            seed=0,
            num_chains=chains,
            num_warmup=args.warmup,
            num_samples=args.draws,
            progress_bar=False,
            warn=False,
        )
        ours = time.perf_counter() - t0
        ess_ours = float(ess_bulk(post.samples["mu"]).min())
        t0 = time.perf_counter()
        mcmc = MCMC(
            NUTS(_hand, target_accept_prob=0.9),
            num_warmup=args.warmup,
            num_samples=args.draws,
            num_chains=chains,
            chain_method="vectorized",
            progress_bar=False,
        )
        mcmc.run(
            jax.random.PRNGKey(0),
            x=jnp.asarray(tasks.x[:, 0]),
            y=jnp.asarray(tasks.y),
            task=jnp.asarray(tasks.task_index),
            num_tasks=tasks.num_tasks,
        )
        samples = mcmc.get_samples(group_by_chain=True)
        jax.block_until_ready(samples)
        hand = time.perf_counter() - t0
        ess_hand = float(ess_bulk(samples["mu"]).min())
        print(
            f"{chains:7d} {ours:12.2f} {ess_ours / ours:9.1f} {hand:10.2f} {ess_hand / hand:9.1f}"
        )


if __name__ == "__main__":
    main()
