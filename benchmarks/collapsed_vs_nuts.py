"""Collapsed NUTS versus full NUTS on a normal-normal collection of many tasks, with
hand-written NumPyro equivalents of both measured in the same run.

    python benchmarks/collapsed_vs_nuts.py [--tasks 10000] [--chains 4] [--warmup 1000]
                                           [--draws 1000] [--seed 0] [--json]

Reports wall time, the minimum bulk ESS over (mu, tau), ESS per second and leapfrog
steps (gradient evaluations) per ESS for: bayesmeta collapsed, first fit (compile
included) and refit of the same model on a second simulated data set of the same shape
(the compiled sampler is reused); bayesmeta full NUTS (compile included); hand-written
NumPyro full NUTS (non-centred) and hand-written NumPyro marginal NUTS (theta integrated
out by hand); and the set-up of full NUTS (trace, compile, initialise), timed as the same
fit with 2 + 4 draws. Every wall time includes what the fit returns: draws of theta for all
tasks (exact completion for collapsed); the pointwise log-likelihood is deferred to first
use by both bayesmeta methods. Then the ratios collapsed / full NUTS: first fit against
full NUTS (both compiling), refit against full NUTS, and refit against full NUTS without
its set-up (the steady state of both). Nothing here is asserted.
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


def _timed_fit(model, tasks, method, seed, opts):
    t0 = time.perf_counter()
    post = bm.fit(model, tasks, method=method, seed=seed, **opts)
    wall = time.perf_counter() - t0
    grads = int(np.sum(post.sample_stats["n_steps"]))  # leapfrog steps while drawing
    return wall, _min_ess(post.samples), grads


def run(args):
    y, se = simulate(args.tasks, args.seed)
    tasks = bm.TaskSet.from_estimates(y=y, se=se)
    # a second data set of the same shape, for the refit that reuses the compiled sampler
    y2, se2 = simulate(args.tasks, args.seed + 1)
    tasks2 = bm.TaskSet.from_estimates(y=y2, se=se2)
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
    # full NUTS first: it pays the process's one-time JAX start-up, not collapsed
    rows["bayesmeta nuts"] = _timed_fit(model, tasks, "nuts", args.seed, opts)
    # full NUTS's set-up (trace, compile, initialise): the same fit with 2 + 4 draws. Its
    # wall time is an upper bound of the set-up, so the steady-state ESS/s of full NUTS
    # below errs in its favour
    t0 = time.perf_counter()
    bm.fit(model, tasks, method="nuts", seed=args.seed, **dict(opts, num_warmup=2, num_samples=4))
    full_setup = time.perf_counter() - t0
    rows["bayesmeta collapsed (first fit)"] = _timed_fit(model, tasks, "collapsed", args.seed, opts)
    rows["bayesmeta collapsed (refit)"] = _timed_fit(model, tasks2, "collapsed", args.seed, opts)
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
        mcmc.run(
            jax.random.PRNGKey(args.seed),
            y=jnp.asarray(y),
            se=jnp.asarray(se),
            extra_fields=("num_steps",),
        )
        samples = mcmc.get_samples(group_by_chain=True)
        jax.block_until_ready(samples)
        wall = time.perf_counter() - t0
        grads = int(np.sum(mcmc.get_extra_fields()["num_steps"]))
        rows[name] = (wall, _min_ess(samples), grads)
    table = {
        k: {"wall_s": w, "min_ess": e, "ess_per_s": e / w, "grads_per_ess": g / e}
        for k, (w, e, g) in rows.items()
    }
    full = table["bayesmeta nuts"]
    full_steady = full["min_ess"] / (full["wall_s"] - full_setup)
    first = table["bayesmeta collapsed (first fit)"]["ess_per_s"]
    refit = table["bayesmeta collapsed (refit)"]["ess_per_s"]
    ratios = {
        "first fit / full NUTS": first / full["ess_per_s"],
        "refit / full NUTS": refit / full["ess_per_s"],
        "refit / full NUTS without its set-up": refit / full_steady,
        "gradients per ESS, full NUTS / collapsed": full["grads_per_ess"]
        / table["bayesmeta collapsed (first fit)"]["grads_per_ess"],
    }
    print(
        f"{args.tasks} normal-normal tasks, {args.chains} chains x {args.draws} draws "
        f"({args.warmup} warmup), backend {jax.default_backend()}"
    )
    print(f"{'fit':<34} {'wall s':>8} {'min ESS':>8} {'ESS/s':>9} {'grads/ESS':>10}")
    for k, r in table.items():
        print(
            f"{k:<34} {r['wall_s']:8.2f} {r['min_ess']:8.0f} {r['ess_per_s']:9.1f} "
            f"{r['grads_per_ess']:10.1f}"
        )
    print(f"full NUTS set-up (a 2 + 4 draw fit): {full_setup:.2f} s")
    for k, v in ratios.items():
        print(f"collapsed {k}: {v:.1f}x")
    hand = table["numpyro marginal (hand)"]["ess_per_s"]
    print(f"bayesmeta collapsed refit / hand-written NumPyro marginal: {refit / hand:.2f}x")
    print(
        f"bayesmeta nuts / hand-written NumPyro full: "
        f"{full['ess_per_s'] / table['numpyro full (hand)']['ess_per_s']:.2f}x"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "tasks": args.tasks,
                    "backend": jax.default_backend(),
                    "results": table,
                    "full_nuts_setup_s": full_setup,
                    "ratios": ratios,
                }
            )
        )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=10000)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    run(p.parse_args())


if __name__ == "__main__":
    main()
