"""Collapsed NUTS versus full NUTS on a normal-normal collection of many tasks, with
hand-written NumPyro equivalents of both measured in the same run.

    python benchmarks/collapsed_vs_nuts.py [--tasks 10000] [--chains 4] [--warmup 500]
                                           [--draws 500] [--seed 0] [--json]

Reports wall time (compile included), the minimum bulk ESS over (mu, tau) and ESS per
second for: bayesmeta collapsed, bayesmeta full NUTS, hand-written NumPyro full NUTS
(non-centred) and hand-written NumPyro marginal NUTS (theta integrated out by hand); then
the ratio collapsed / full NUTS. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

import bayesmeta as bm
from bayesmeta.inference.diagnostics import ess_bulk


def simulate(num_tasks: int, seed: int):
    rng = np.random.default_rng(seed)
    se = rng.uniform(0.5, 3.0, size=num_tasks)
    theta = 1.0 + 0.8 * rng.standard_normal(num_tasks)
    y = theta + se * rng.standard_normal(num_tasks)
    return y, se


def _hand_full(y, se):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("task", y.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu + tau * z, se), obs=y)


def _hand_marginal(y, se):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("task", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, jnp.sqrt(se**2 + tau**2)), obs=y)


def _min_ess(samples):
    return float(min(np.min(ess_bulk(np.asarray(samples[k]))) for k in ("mu", "tau")))


def run(args):
    y, se = simulate(args.tasks, args.seed)
    tasks = bm.TaskSet.from_estimates(y=y, se=se)
    model = bm.Hierarchical(
        bm.likelihoods.NormalKnownNoise(),
        bm.populations.Normal(loc=dist.Normal(0.0, 5.0), scale=dist.HalfCauchy(5.0)),
    )
    opts = dict(
        num_chains=args.chains,
        num_warmup=args.warmup,
        num_samples=args.draws,
        progress_bar=False,
        warn=False,
    )
    rows = {}
    for name, method in (("bayesmeta collapsed", "collapsed"), ("bayesmeta nuts", "nuts")):
        t0 = time.perf_counter()
        post = bm.fit(model, tasks, method=method, seed=args.seed, **opts)
        wall = time.perf_counter() - t0
        rows[name] = (wall, _min_ess(post.samples))
    for name, fn in (
        ("numpyro full (hand)", _hand_full),
        ("numpyro marginal (hand)", _hand_marginal),
    ):
        t0 = time.perf_counter()
        mcmc = MCMC(
            NUTS(fn, target_accept_prob=0.9),
            num_warmup=args.warmup,
            num_samples=args.draws,
            num_chains=args.chains,
            chain_method="vectorized",
            progress_bar=False,
        )
        mcmc.run(jax.random.PRNGKey(args.seed), y=jnp.asarray(y), se=jnp.asarray(se))
        samples = mcmc.get_samples(group_by_chain=True)
        jax.block_until_ready(samples)
        wall = time.perf_counter() - t0
        rows[name] = (wall, _min_ess(samples))
    table = {k: {"wall_s": w, "min_ess": e, "ess_per_s": e / w} for k, (w, e) in rows.items()}
    ratio = table["bayesmeta collapsed"]["ess_per_s"] / table["bayesmeta nuts"]["ess_per_s"]
    print(
        f"{args.tasks} normal-normal tasks, {args.chains} chains x {args.draws} draws "
        f"({args.warmup} warmup), backend {jax.default_backend()}"
    )
    print(f"{'fit':<26} {'wall s':>9} {'min ESS':>9} {'ESS/s':>10}")
    for k, r in table.items():
        print(f"{k:<26} {r['wall_s']:9.2f} {r['min_ess']:9.0f} {r['ess_per_s']:10.2f}")
    print(f"collapsed / full NUTS, ESS per second: {ratio:.1f}x")
    hand = table["numpyro marginal (hand)"]["ess_per_s"]
    print(
        f"bayesmeta collapsed / hand-written NumPyro marginal: "
        f"{table['bayesmeta collapsed']['ess_per_s'] / hand:.2f}x"
    )
    print(
        f"bayesmeta nuts / hand-written NumPyro full: "
        f"{table['bayesmeta nuts']['ess_per_s'] / table['numpyro full (hand)']['ess_per_s']:.2f}x"
    )
    if args.json:
        print(json.dumps({"tasks": args.tasks, "results": table, "ratio_collapsed_vs_nuts": ratio}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=10000)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--draws", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    run(p.parse_args())


if __name__ == "__main__":
    main()
