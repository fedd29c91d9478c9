"""The accelerator cases of the peer benchmark: many-chain ChEES-HMC (``method="chees"``)
against 4-chain hand-written NumPyro NUTS, measured in the same run, and a sharded
against an unsharded fit (``devices=``).

    python -m benchmarks.accelerator [--quick] [--json] [--out FILE.json] [--seed S]

Rows, per case (``eight_schools`` and ``logistic_10000`` of ``benchmarks/cases.py``):

- ``numpyro-vectorized``: the model hand-written in NumPyro (non-centred),
  ``MCMC(NUTS(model), num_chains=4, chain_method="vectorized")``, NumPyro's defaults,
  500 + 500 draws (the issue's reference setting);
- ``bayesmeta-chees``: ``bm.fit(model, tasks, method="chees", num_chains=C)`` (256 chains
  on eight schools, 128 on logistic_10000; 500 warmup, 100 draws per chain);
- a sharded case, ``logistic_1000`` with 64 chees chains: ``bayesmeta-chees`` unsharded and
  ``bayesmeta-chees-sharded`` with ``devices=len(jax.devices())``, the task axis split over
  every device there is (on one GPU a mesh of one device: the sharded code path, not a
  speed-up); the sharded row's notes hold the largest difference from the unsharded draws.

Columns as in ``benchmarks/run.py`` (the same ``_measure``: minimum bulk ESS over every
scalar of every hyperparameter and ``theta``, ESS/s over the end-to-end time including
compilation, divergences, leapfrog steps per draw), plus nested R-hat (the chees rows,
``post.info["diagnostics"]["nested_rhat"]``, largest over sites) and "x numpyro" (ESS/s
over the NumPyro row of the case). ``--quick``: the square root of every number of tasks,
8 chains x 20 draws for chees, 2 x 50 for NumPyro (a smoke test, seconds on a CPU).
Nothing is asserted. ``benchmarks/gpu.sh`` runs this on an accelerator and writes the JSON
to ``$OUT``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial

import jax
import numpy as np

import bayesmeta as bm
from benchmarks.cases import build_case
from benchmarks.run import (
    Draws,
    _add_ratios,
    _finite,
    _measure,
    _split_timing,
    _timed,
    _warm_process,
    _write_atomic,
    run_numpyro,
)

CASES = ("eight_schools", "logistic_10000")
#: chees chains per case (full run)
CHEES_CHAINS = {"eight_schools": 256, "logistic_10000": 128}
#: the sharded-against-unsharded case and its chains
SHARDED_CASE, SHARDED_CHAINS = "logistic_1000", 64


def _settings(quick: bool) -> dict:
    if quick:
        return {"numpyro": dict(chains=2, warmup=50, draws=50), "chees": dict(warmup=50, draws=20)}
    return {"numpyro": dict(chains=4, warmup=500, draws=500), "chees": dict(warmup=500, draws=100)}


def run_chees(case, chains: int, settings: dict, seed: int, devices=None) -> Draws:
    """``bm.fit(method="chees")`` with ``chains`` chains (and ``devices=``)."""
    post, wall, compile_s = _timed(
        lambda: bm.fit(
            case.model,
            case.tasks,
            method="chees",
            seed=seed,
            num_chains=chains,
            num_warmup=settings["warmup"],
            num_samples=settings["draws"],
            progress_bar=False,
            devices=devices,
        )
    )
    fp, sp, how = _split_timing(post.info, wall, compile_s)
    nested = post.info["diagnostics"].get("nested_rhat") or {}
    notes = {
        "method": "chees",
        "nested_rhat": max(nested.values()) if nested else None,
        "adapted": {k: v for k, v in post.info["adapted"].items() if np.ndim(v) == 0},
    }
    if "sharding" in post.info:
        notes["sharding"] = {
            k: post.info["sharding"][k] for k in ("num_devices", "devices", "split")
        }
    stats = post.sample_stats
    return Draws(
        dict(post.samples),
        stats.get("diverging"),
        stats.get("n_steps"),
        fp,
        sp,
        wall,
        how,
        notes,
    )


def _sharded_rows(s: dict, seed: int, quick: bool) -> list[dict]:
    """The sharded case: chees on ``SHARDED_CASE`` unsharded, then with ``devices=`` every
    device; the sharded row's notes hold the largest difference of the draws."""
    case = build_case(SHARDED_CASE, quick=quick)
    chains = 8 if quick else SHARDED_CHAINS
    kept = {}

    def keep(label, devices):
        def call():
            kept[label] = run_chees(case, chains, s["chees"], seed, devices=devices)
            return kept[label]

        return call

    rows = [
        _measure(SHARDED_CASE, "bayesmeta-chees", keep("one", None)),
        _measure(SHARDED_CASE, "bayesmeta-chees-sharded", keep("all", len(jax.devices()))),
    ]
    if len(kept) == 2:
        one, every = kept["one"].samples, kept["all"].samples
        rows[1].setdefault("notes", {})["max_abs_diff_vs_unsharded"] = max(
            float(np.max(np.abs(np.asarray(one[k]) - np.asarray(v)))) for k, v in every.items()
        )
    for r in rows:
        nested = (r.get("notes") or {}).get("nested_rhat")
        if nested is not None:
            r["nested_rhat"] = nested
    return rows


def run_accelerator(quick: bool = False, seed: int = 0, cases=CASES) -> dict:
    """Every row of every case; returns ``{"machine", "settings", "rows"}``."""
    s = _settings(quick)
    _warm_process(seed)
    rows = []
    for name in cases:
        case = build_case(name, quick=quick)
        chains = 8 if quick else CHEES_CHAINS[name]
        case_rows = [
            _measure(
                name,
                "numpyro-vectorized",
                partial(run_numpyro, case, "vectorized", s["numpyro"], seed),
            ),
            _measure(name, "bayesmeta-chees", partial(run_chees, case, chains, s["chees"], seed)),
        ]
        _add_ratios(case_rows, ("numpyro-vectorized",))
        for r in case_rows:
            nested = (r.get("notes") or {}).get("nested_rhat")
            if nested is not None:
                r["nested_rhat"] = nested
        rows.extend(case_rows)
    rows.extend(_sharded_rows(s, seed, quick))
    machine = {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
        "bayesmeta": bm.__version__,
    }
    return {"machine": machine, "settings": s, "quick": quick, "rows": rows}


def render(result: dict) -> str:
    """The result as a Markdown table."""
    m = result["machine"]
    lines = [
        f"backend {m['backend']} ({', '.join(m['devices'])}); jax {m['jax']}",
        "",
        "| case | runner | chains x draws | wall s | min ESS | ESS/s | x numpyro | divergences "
        "| nested R-hat | max R-hat | steps/draw |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v, fmt="{:.3g}"):
        return "-" if v is None else fmt.format(v)

    for r in result["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['case']} | {r['runner']} | {r['status']}: {r.get('error', '')} |")
            continue
        lines.append(
            f"| {r['case']} | {r['runner']} | {r['chains']} x {r['draws']} | {f(r['wall_s'])} "
            f"| {f(r.get('min_ess'), '{:.0f}')} | {f(r.get('ess_per_s'))} "
            f"| {f(r.get('x_numpyro'), '{:.1f}')} | {r.get('divergences', '-')} "
            f"| {f(r.get('nested_rhat'), '{:.4f}')} | {f(r.get('max_rhat'), '{:.4f}')} "
            f"| {f(r.get('steps_per_draw'), '{:.1f}')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    p.add_argument("--json", action="store_true", help="print the result as JSON (last line)")
    p.add_argument("--out", metavar="FILE.json", help="write the JSON result here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    result = run_accelerator(args.quick, args.seed, tuple(args.cases))
    result["total_s"] = time.perf_counter() - t0
    result = _finite(result)
    print(render(result))
    text = json.dumps(result, default=str)
    if args.out:
        _write_atomic(args.out, text + "\n")
    if args.json:
        print(text)
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
