"""How honest is VI's hyperparameter uncertainty? Minibatched SVI (per-task and amortised
guides) and full-batch SVI against NUTS on the same hierarchical logistic data.

    python benchmarks/vi_honesty.py [--tasks 200] [--steps 2000] [--json]

Data: the scale benchmark's (``benchmarks/vi_scale.py``): 20 rows x 4 features per task,
population ``Normal(dim=5)``. For every hyperparameter component it prints each method's
posterior mean and sd, the sd ratio to NUTS and the mean's distance from NUTS's in NUTS
sds. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import bayesmeta as bm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vi_scale import simulate  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--draws", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    tasks, _ = simulate(args.tasks, args.seed)
    model = bm.Hierarchical(bm.likelihoods.LogisticRegression(), bm.populations.Normal(dim=5))
    runs = {
        "nuts": dict(method="nuts", num_chains=2, num_warmup=500, num_samples=args.draws),
        "svi": dict(method="svi", task_batch_size=args.batch, num_steps=args.steps),
        "svi+encoder": dict(
            method="svi", encoder="deepsets", task_batch_size=args.batch, num_steps=args.steps
        ),
        "vi (full batch)": dict(method="vi", num_steps=args.steps),
    }
    out = {}
    for name, kw in runs.items():
        if kw["method"] != "nuts":
            kw["num_samples"] = 1000
        t0 = time.perf_counter()
        post = bm.fit(model, tasks, seed=args.seed, warn=False, progress_bar=False, **kw)
        secs = time.perf_counter() - t0
        out[name] = {"seconds": secs}
        for site in ("mu", "tau"):
            d = np.asarray(post.samples[site]).reshape(-1, 5)
            out[name][site] = (d.mean(0).tolist(), d.std(0).tolist())
    ref = out["nuts"]
    print(
        f"{args.tasks} tasks; wall seconds: "
        + ", ".join(f"{k} {v['seconds']:.0f}" for k, v in out.items())
    )
    print(f"{'method':>16} {'site':>5} {'sd / NUTS sd':>32}   {'(mean - NUTS) / NUTS sd':>34}")
    for name, r in out.items():
        if name == "nuts":
            continue
        for site in ("mu", "tau"):
            ratio = np.asarray(r[site][1]) / np.asarray(ref[site][1])
            shift = (np.asarray(r[site][0]) - ref[site][0]) / np.asarray(ref[site][1])
            r[f"{site}_sd_ratio"], r[f"{site}_shift"] = ratio.tolist(), shift.tolist()
            print(
                f"{name:>16} {site:>5} "
                + " ".join(f"{v:5.2f}" for v in ratio)
                + "   "
                + " ".join(f"{v:+6.2f}" for v in shift)
            )
    if args.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
