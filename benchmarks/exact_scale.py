"""Exact normal-normal inference at scale: wall time and the posterior of mu and tau for
T tasks (one size per process, so that peak memory can be read per size).

    /usr/bin/time -v python benchmarks/exact_scale.py --tasks 1000000 --draws 10

Data: ``se ~ U(0.5, 2)``, ``y ~ N(0, sqrt(1 + se**2))`` (true mu = 0, tau = 1), drawn with
``numpy.random.default_rng(0)``; model ``bm.Hierarchical(bm.likelihoods.NormalKnownNoise())``
(normal-normal, default population: mu ~ N(0, 5), tau ~ HalfCauchy(5)), ``method="exact"``,
4 chains of ``--draws`` draws. Peak memory is read by the caller (``/usr/bin/time -v``:
"Maximum resident set size"). Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import bayesmeta as bm


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    se = rng.uniform(0.5, 2.0, args.tasks)
    y = rng.normal(0.0, np.sqrt(1.0 + se**2))
    tasks = bm.TaskSet.from_estimates(y=y, se=se)
    start = time.perf_counter()
    post = bm.fit(
        bm.Hierarchical(bm.likelihoods.NormalKnownNoise()),
        tasks,
        method="exact",
        num_samples=args.draws,
        num_chains=args.chains,
        seed=args.seed,
    )
    wall = time.perf_counter() - start
    res = post.info.exact
    out = {
        "tasks": args.tasks,
        "draws": args.chains * args.draws,
        "wall_s": round(wall, 2),
        "mu_mean": float(res.mu_mean),
        "tau_mean": float(res.tau_mean),
        "mu_draws_mean": float(np.mean(post.samples["mu"])),
        "tau_draws_mean": float(np.mean(post.samples["tau"])),
        "num_panels": int(res.num_panels),
        "converged": bool(res.converged),
    }
    print(f"{'tasks':>9} {'draws':>6} {'wall s':>8} {'E[mu|y]':>10} {'E[tau|y]':>10} {'panels':>7}")
    print(
        f"{out['tasks']:>9} {out['draws']:>6} {out['wall_s']:>8.2f} {out['mu_mean']:>10.5f}"
        f" {out['tau_mean']:>10.5f} {out['num_panels']:>7}"
    )
    if args.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
