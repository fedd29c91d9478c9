"""Task-minibatched SVI as the number of tasks grows: time, peak memory, recovery.

    python benchmarks/vi_scale.py [--tasks 10000 100000 1000000] [--encoder deepsets|none]
                                  [--steps 800] [--batch 512] [--draws 4] [--width 16] [--json]

Model: hierarchical logistic regression, 20 rows x 4 features per task, population
``Normal(dim=5)`` (intercept and 4 slopes), simulated with ``mu = (-0.5, 1, -1, 0.5, 0)``,
``tau = (0.5, 0.4, 0.3, 0.6, 0.2)``. Each size runs in a fresh subprocess, which reports:

- ``data_mb``: the bytes of the TaskSet's arrays (``y``, ``x``, ``task_index``);
- ``fit_s``: wall time of ``bm.fit`` from the call to the returned posterior
  (validation, compilation, the steps and the draws);
- ``rss_before_mb``: resident memory after the data were made, before the fit;
- ``peak_fit_mb``: the peak resident memory during the fit (the kernel's high-water mark,
  reset just before the fit; ``resource.getrusage`` gives the child's overall peak,
  ``peak_child_mb``); ``beyond_mb = peak_fit_mb - rss_before_mb`` is what the fit added,
  of which ``draws_mb`` are the returned draws of every task's theta (``N x 5 x draws``);
- ``mu``, ``mu_sd``: the population mean's posterior mean and sd, and ``z = (mean -
  truth) / sd`` per component.

Nothing here is asserted; the numbers go in the issue note.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MU = [-0.5, 1.0, -1.0, 0.5, 0.0]
TAU = [0.5, 0.4, 0.3, 0.6, 0.2]


def _rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def simulate(num_tasks: int, seed: int = 0, rows: int = 20):
    """The benchmark's TaskSet and the true population mean."""
    import numpy as np

    import bayesmeta as bm

    rng = np.random.default_rng(seed)
    mu, tau = np.asarray(MU), np.asarray(TAU)
    theta = mu + tau * rng.standard_normal((num_tasks, 5))
    x = rng.standard_normal((num_tasks, rows, 4))
    eta = theta[:, None, 0] + np.einsum("trk,tk->tr", x, theta[:, 1:])
    y = (rng.random((num_tasks, rows)) < 1.0 / (1.0 + np.exp(-eta))).astype(float)
    del eta, theta
    task = np.repeat(np.arange(num_tasks), rows)
    tasks = bm.TaskSet.from_arrays(
        y=y.reshape(-1), task=task, x=x.reshape(-1, 4), labels=[str(i) for i in range(num_tasks)]
    )
    return tasks, mu


def child(num_tasks, encoder, steps, batch, draws, seed, width=32):
    import bayesmeta as bm

    tasks, mu = simulate(num_tasks, seed)
    data_mb = sum(a.nbytes for a in (tasks.y, tasks.x, tasks.task_index)) / 2**20
    model = bm.Hierarchical(bm.likelihoods.LogisticRegression(), bm.populations.Normal(dim=5))
    rss_before = _rss_mb()
    try:  # reset the high-water mark so the peak below is the fit's
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    t0 = time.perf_counter()
    post = bm.fit(
        model,
        tasks,
        method="svi",
        seed=seed,
        encoder=encoder,
        task_batch_size=batch,
        num_steps=steps,
        num_samples=draws,
        encoder_width=width,
        warn=False,
        progress_bar=False,
    )
    fit_s = time.perf_counter() - t0
    peak_fit = _rss_mb("VmHWM")
    peak_child = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    m = post.samples["mu"].reshape(-1, 5)
    mean, sd = m.mean(0), m.std(0)
    return {
        "tasks": num_tasks,
        "encoder": encoder or "none",
        "data_mb": data_mb,
        "fit_s": fit_s,
        "compile_s": post.info.extra["svi"]["compile_s"],
        "steps_s": post.info.extra["svi"]["fit_s"],
        "rss_before_mb": rss_before,
        "peak_fit_mb": peak_fit if reset else float("nan"),
        "beyond_mb": (peak_fit - rss_before) if reset else float("nan"),
        "peak_child_mb": peak_child,
        "draws_mb": post.samples["theta"].nbytes / 2**20,
        "mu": mean.tolist(),
        "mu_sd": sd.tolist(),
        "z": ((mean - mu) / sd).tolist(),
        "tau": post.samples["tau"].reshape(-1, 5).mean(0).tolist(),
        "converged": bool(post.info.converged),
        "epochs": post.info.extra["svi"]["epochs"],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--encoder", default="deepsets", choices=["deepsets", "none"])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--width", type=int, default=16, help="the encoder's hidden width")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    encoder = None if args.encoder == "none" else args.encoder
    if args.child is not None:
        out = child(args.child, encoder, args.steps, args.batch, args.draws, args.seed, args.width)
        print(json.dumps(out))
        return out
    rows = []
    head = (
        f"{'tasks':>9} {'data MB':>8} {'fit s':>7} {'compile':>8} {'before MB':>9} "
        f"{'peak MB':>8} {'beyond':>7} {'draws MB':>8}  max|z| mu   z per component"
    )
    print(f"encoder {args.encoder} (width {args.width}); {args.steps} steps of {args.batch} tasks")
    print(head)
    for n in args.tasks:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", str(n)]
        cmd += ["--encoder", args.encoder, "--steps", str(args.steps)]
        cmd += ["--batch", str(args.batch), "--draws", str(args.draws), "--seed", str(args.seed)]
        cmd += ["--width", str(args.width)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            print(f"{n:>9} failed: {res.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(r)
        z = r["z"]
        print(
            f"{n:>9} {r['data_mb']:>8.0f} {r['fit_s']:>7.1f} {r['compile_s']:>8.1f} "
            f"{r['rss_before_mb']:>9.0f} {r['peak_fit_mb']:>8.0f} {r['beyond_mb']:>7.0f} "
            f"{r['draws_mb']:>8.0f}  {max(abs(v) for v in z):>8.2f}   "
            + " ".join(f"{v:+.2f}" for v in z)
        )
    if args.json:
        print(json.dumps({"encoder": args.encoder, "rows": rows}))
    return rows


if __name__ == "__main__":
    main()
