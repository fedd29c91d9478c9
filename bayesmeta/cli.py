"""The ``bayesmeta`` command.

``bayesmeta fit [MODEL_FILE] [--method nuts|vi|exact|collapsed|laplace|auto] [--chains N]
[--warmup N] [--draws N] [--seed S] [--out FILE.nc] [--plot FILE.png] [--json]``
fits a gallery model file (with no file: the built-in eight schools) and prints a summary;
``--json`` prints one JSON object as the last line. Further subcommands:
``meta-analysis`` (classical random-effects estimators on a CSV) and ``study``
(the estimator study), when available.

``bayesmeta fit`` keeps JAX's persistent compilation cache in ``$BAYESMETA_CACHE_DIR``
(default ``$XDG_CACHE_HOME/bayesmeta/jax``, else ``~/.cache/bayesmeta/jax``), so a second
run in a new process loads the compiled sampler instead of compiling it; ``--no-cache`` or
``BAYESMETA_NO_CACHE=1`` turns it off. This is the command's choice: the library itself
never changes JAX's configuration.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings

import bayesmeta as bm
from bayesmeta import _cli_meta
from bayesmeta._cli_args import int_at_least as _int_at_least
from bayesmeta.arviz import plot_forest
from bayesmeta.gallery import load_options
from bayesmeta.inference import METHODS
from bayesmeta.inference.diagnostics import ess_bulk, rhat

__all__ = ["main"]

_positive_int, _nonneg_int = _int_at_least(1), _int_at_least(0)


def _default_model():
    import numpyro.distributions as dist

    model = bm.Hierarchical(
        likelihood=bm.likelihoods.NormalKnownNoise(),
        population=bm.populations.Normal(loc=dist.Normal(0.0, 5.0), scale=dist.HalfCauchy(5.0)),
    )
    return model, bm.datasets.eight_schools()


def _flatten_summary(post) -> dict:
    """``{name: {mean, sd, ess_bulk, r_hat}}`` with vector entries as ``theta[0]``, ...

    Computed from the draws with the same rank-normalised diagnostics as the fit's check,
    so the JSON does not depend on the installed ArviZ line's column names."""
    import numpy as np

    out = {}
    for name, x in post.samples.items():
        shape = x.shape[2:]
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        mean, sd = flat.mean(axis=(0, 1)), flat.reshape(-1, flat.shape[-1]).std(axis=0, ddof=1)
        ess = ess_bulk(flat) if x.shape[1] >= 4 else np.full(flat.shape[-1], np.nan)
        rh = rhat(flat) if x.shape[0] > 1 and x.shape[1] >= 4 else np.full(flat.shape[-1], np.nan)
        for i, idx in enumerate(np.ndindex(*shape) if shape else [()]):
            key = name if not shape else f"{name}[{','.join(map(str, idx))}]"
            out[key] = {
                k: (None if not math.isfinite(float(v)) else float(v))
                for k, v in (
                    ("mean", mean[i]),
                    ("sd", sd[i]),
                    ("ess_bulk", ess[i]),
                    ("r_hat", rh[i]),
                )
            }
    return out


def _print_table(post, labels: dict) -> None:
    rows = _flatten_summary(post)
    width = max(len(k) + len(labels.get(k, "")) + 3 for k in rows)
    print(f"{'parameter':<{width}} {'mean':>10} {'sd':>10} {'ess_bulk':>9} {'r_hat':>7}")
    for key, r in rows.items():
        name = key + (f" ({labels[key]})" if key in labels else "")

        def fmt(v, spec):
            return format(v, spec) if v is not None else "-"

        print(
            f"{name:<{width}} {fmt(r['mean'], '10.3f')} {fmt(r['sd'], '10.3f')} "
            f"{fmt(r['ess_bulk'], '9.0f')} {fmt(r['r_hat'], '7.3f')}"
        )


def _task_labels(post) -> dict:
    """Readable labels of vector entries from their coordinates: ``theta[3]`` is the
    task's label, ``beta[0]`` the common coefficient's name (``floor``), ``theta[3,1]``
    ``"AITKIN, floor"``."""
    import numpy as np

    out = {}
    for name, dims in post.dims.items():
        if name not in post.samples or not dims:
            continue
        shape = post.samples[name].shape[2:]
        if len(dims) != len(shape) or not all(d in post.coords for d in dims):
            continue
        coords = [list(post.coords[d]) for d in dims]
        if any(len(c) != n for c, n in zip(coords, shape, strict=True)):
            continue
        for idx in np.ndindex(*shape):
            key = f"{name}[{','.join(map(str, idx))}]"
            out[key] = ", ".join(str(c[i]) for c, i in zip(coords, idx, strict=True))
    return out


def compile_cache_dir(no_cache: bool = False) -> str | None:
    """Where ``bayesmeta fit`` keeps compiled programs, or None when the cache is off."""
    if no_cache or os.environ.get("BAYESMETA_NO_CACHE", "").strip() not in ("", "0"):
        return None
    path = os.environ.get("BAYESMETA_CACHE_DIR")
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "bayesmeta", "jax")
    return path


def _enable_compile_cache(path: str | None) -> str | None:
    """Point JAX's persistent compilation cache at ``path`` (every program, however quick
    to compile); None when the directory cannot be made (then the run just compiles)."""
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        print(f"warning: compilation cache off: cannot create {path}: {err}", file=sys.stderr)
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _cmd_fit(args) -> int:
    cache = _enable_compile_cache(compile_cache_dir(args.no_cache))
    import numpy as np

    if args.model_file:
        try:
            model, tasks = bm.load_model(args.model_file)
            options = load_options(args.model_file)
        except ValueError as err:
            print(f"bayesmeta fit: error: {err}", file=sys.stderr)
            return 2
        name = os.path.basename(args.model_file)
    else:
        model, tasks = _default_model()
        options, name = {}, "eight schools (built in)"
    method = args.method
    engine = bm.inference.ENGINES[
        bm.inference.resolve_method(method, model, tasks)
    ]  # the registry says how --chains/--warmup/--draws become the engine's options
    if engine.cli_options is not None:
        options.update(
            engine.cli_options(
                args.chains, args.warmup, args.draws, not args.json and sys.stderr.isatty()
            )
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", bm.inference.diagnostics.FitWarning)
        try:
            post = bm.fit(model, tasks, method=method, seed=args.seed, **options)
        except ValueError as err:
            print(f"bayesmeta fit: error: {err}", file=sys.stderr)
            return 2
        except bm.inference.diagnostics.FitError as err:  # every chain non-finite
            print(f"bayesmeta fit: failed: {err}", file=sys.stderr)
            return 1
    problems = [
        str(w.message)
        for w in caught
        if issubclass(w.category, bm.inference.diagnostics.FitWarning)
    ]
    for msg in problems:
        print(f"warning: {msg}", file=sys.stderr)
    divergences = None
    if "diverging" in post.sample_stats:
        divergences = int(np.sum(post.sample_stats["diverging"]))
    if args.out:
        data = post.to_arviz()
        try:
            data.to_netcdf(args.out)
        except (ValueError, ImportError) as err:
            print(f"bayesmeta fit: error: could not write {args.out}: {err}", file=sys.stderr)
            return 2
    if args.plot:
        plot_forest(post.to_arviz(), args.plot)
    if not args.json:
        print(
            f"{name}: {tasks.num_tasks} tasks, {tasks.num_obs} rows; method {post.method}, "
            f"{post.num_chains} chain(s) x {post.num_draws} draws"
        )
        _print_table(post, _task_labels(post))
        if divergences is not None:
            print(f"divergences: {divergences}")
        if args.out:
            print(f"saved {args.out}")
        if args.plot:
            print(f"saved {args.plot}")
        return 0
    timing = post.info.get("timing", {})
    diagnostics = {
        "num_chains": post.num_chains,
        "num_draws": post.num_draws,
        "divergences": divergences,
        "warnings": problems,
    }
    if "elbo" in post.info:
        diagnostics["final_elbo"] = float(post.info["elbo"][-1])
        diagnostics["converged"] = bool(post.info["converged"])
    payload = {
        "method": post.method,
        "model": name,
        "num_tasks": tasks.num_tasks,
        "labels": list(tasks.labels),
        "parameters": _flatten_summary(post),
        "diagnostics": diagnostics,
        "timing": {k: v for k, v in timing.items() if isinstance(v, float | bool)},
        "compile_cache": cache,
    }
    print(json.dumps(payload))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bayesmeta", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a gallery model file (default: eight schools)")
    fit.add_argument("model_file", nargs="?", help="a models/NAME.py file")

    fit.add_argument("--method", default="nuts", choices=list(METHODS))
    fit.add_argument("--chains", type=_positive_int, default=4)
    fit.add_argument(
        "--warmup",
        type=_nonneg_int,
        default=1000,
        help="NUTS warmup steps (VI: optimisation steps when given)",
    )
    fit.add_argument("--draws", type=_positive_int, default=1000, help="draws per chain")
    fit.add_argument("--seed", type=_nonneg_int, default=0)
    fit.add_argument("--out", help="save the ArviZ data to this NetCDF file")
    fit.add_argument("--plot", help="save a forest plot to this PNG file")
    fit.add_argument("--json", action="store_true", help="print one JSON object last")
    fit.add_argument(
        "--no-cache",
        action="store_true",
        help="do not use the persistent compilation cache (also BAYESMETA_NO_CACHE=1)",
    )
    fit.set_defaults(func=_cmd_fit)
    _cli_meta.add_meta_analysis_parser(sub)
    _cli_meta.add_study_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) == "fit" and args.draws < 4:
        parser.error("--draws: need at least 4 draws per chain")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
