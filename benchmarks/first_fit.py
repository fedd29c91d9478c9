"""Time to the first posterior in a new process, with an empty and with a warm persistent
compilation cache, for one benchmark case fitted by several methods.

    python -m benchmarks.first_fit [--case normal_10000] [--methods collapsed nuts]
                                   [--repeats 2] [--chains 4] [--warmup 1000]
                                   [--draws 1000] [--seed 0] [--quick] [--json]

Each (method, repeat) gets its own empty cache directory; a child process fits once
(cold: every program compiled and written to the cache), then a second child fits the
same data again (warm: the programs read back). A child's clock starts after its imports
and the case's data are ready and stops when ``bm.fit`` returns its posterior, every
site's draws included (the pointwise log-likelihood is deferred to first use by every
method). The minimum bulk ESS is then computed over every scalar component of every site
(hyperparameters and each task's parameters; not timed). Ratios are end-to-end ESS per
second against the first method listed after the first (``nuts`` by default, bayesmeta's
full NUTS), cold against cold and warm against warm, from the medians. The children turn
the cache on themselves (``jax.config``), as a user's script would; the library never
does. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _child(args) -> None:
    import jax

    jax.config.update("jax_compilation_cache_dir", args.cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    import numpy as np

    import bayesmeta as bm
    from benchmarks.cases import build_case
    from benchmarks.run import _diagnose

    case = build_case(args.case, quick=args.quick)
    kw = dict(
        num_chains=args.chains,
        num_warmup=args.warmup,
        num_samples=args.draws,
        progress_bar=False,
        warn=False,
    )
    t0 = time.perf_counter()
    post = bm.fit(case.model, case.tasks, method=args.child, seed=args.seed, **kw)
    samples = {k: np.asarray(v) for k, v in post.samples.items()}
    wall = time.perf_counter() - t0
    diag = _diagnose(samples)
    info = post.info.get("hyper_sampler") or {}
    print(
        json.dumps(
            {
                "wall_s": wall,
                "min_ess": diag["min_ess"],
                "min_ess_param": diag["min_ess_param"],
                "max_rhat": diag["max_rhat"],
                "sampler": info.get("used", post.method),
            }
        )
    )


def _run(args, method: str, cache: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.first_fit", "--child", method, "--cache", cache]
    cmd += ["--case", args.case, "--chains", str(args.chains), "--warmup", str(args.warmup)]
    cmd += ["--draws", str(args.draws), "--seed", str(args.seed)]
    cmd += ["--quick"] if args.quick else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        raise RuntimeError(f"{method}: {proc.stderr.strip().splitlines()[-1]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["ess_per_s"] = row["min_ess"] / row["wall_s"]
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="normal_10000")
    parser.add_argument("--methods", nargs="+", default=["collapsed", "nuts"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="the case's --quick size")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return {}
    rows = {m: {"cold": [], "warm": []} for m in args.methods}
    for method in args.methods:
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                for state in ("cold", "warm"):
                    rows[method][state].append(_run(args, method, cache))
                    print(f"[first_fit] {method} {state}: {rows[method][state][-1]}", flush=True)
    ref = args.methods[1] if len(args.methods) > 1 else None

    def med(method, state, key):
        return statistics.median(r[key] for r in rows[method][state])

    print(
        f"\n{args.case}, {args.chains} chains x {args.draws} draws ({args.warmup} warmup), "
        f"{args.repeats} new-process pairs per method\n"
    )
    print("| method | cache | fit s | min ESS | max R-hat | ESS/s | x " + (ref or "-") + " |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for method in args.methods:
        for state in ("cold", "warm"):
            walls = [r["wall_s"] for r in rows[method][state]]
            eps = med(method, state, "ess_per_s")
            ratio = f"{eps / med(ref, state, 'ess_per_s'):.1f}x" if ref else "—"
            print(
                f"| {method} [{rows[method][state][0]['sampler']}] | {state} | "
                f"{min(walls):.2f}–{max(walls):.2f} | {med(method, state, 'min_ess'):.0f} | "
                f"{med(method, state, 'max_rhat'):.3f} | {eps:.0f} | {ratio} |"
            )
    result = {"args": vars(args), "rows": rows}
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
