"""The ``bayesmeta`` command.

``bayesmeta fit [MODEL_FILE] [--method nuts|vi|exact|collapsed|laplace|auto] [--chains N]
[--warmup N] [--draws N] [--seed S] [--hyper-sampler auto|independence|nuts] [--ci-prob 0.94]
[--out FILE.nc] [--checkpoint FILE.npz]
[--checkpoint-every N] [--plot FILE.png
[--plot-kind auto|forest|funnel|shrinkage|arviz]] [--json]`` fits a gallery model file (with
no file: the built-in eight schools) and prints a summary table (mean, sd, the ``--ci-prob``
highest density interval, bulk ESS, R-hat; vector entries with their task labels). Further
subcommands: ``meta-analysis`` (classical random-effects estimators on a CSV or a built-in
data set) and ``study`` (the estimator study); ``bayesmeta --version`` prints the version.

``--json`` (every subcommand) prints exactly one JSON document on stdout and nothing else;
warnings and messages go to stderr. ``fit --json`` carries, per parameter entry, ``mean``,
``sd``, the interval bounds named as ArviZ names them (``hdi_3%``/``hdi_97%`` at the default
``--ci-prob 0.94``), ``ess_bulk``, ``r_hat`` and, for a vector entry, its ``label`` (the task
label; ``"AITKIN, floor"`` for a task and coefficient).

``--out FILE.nc`` writes ``Posterior.save``'s format (``bm.load_posterior`` reloads it
whole; ``arviz.from_netcdf`` reads it as ArviZ data). ``--checkpoint FILE`` makes a NUTS fit
resumable: its state and draws are saved every ``--checkpoint-every`` iterations, and
rerunning the same command resumes. All output paths are checked before the fit starts.

``--plot FILE`` draws a plot after everything else is written; ``fit --plot-kind auto``
draws the meta-analysis forest plot (``bm.plots.forest``) when the model has one scalar
effect per task and ArviZ's forest plot of all parameters otherwise. matplotlib is
optional: without it the plot step prints one line on stderr and the command exits 1.

Exit status: 0 ok; 2 usage error (bad arguments, missing or invalid input); 1 failure (the
run could not finish, e.g. ``--plot`` without matplotlib; the summary, the ``--json`` output
and ``--out`` are written before the plot is tried).

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
from bayesmeta._cli_args import EXIT_FAILURE, EXIT_STATUS_HELP, HelpFormatter, plot_failure
from bayesmeta._cli_args import int_at_least as _int_at_least
from bayesmeta.arviz import interval_columns, plot_forest
from bayesmeta.gallery import load_options
from bayesmeta.inference import METHODS
from bayesmeta.inference._flat import HYPER_SAMPLERS
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


def _hdi(draws, prob: float):
    """Highest density interval of each column of ``draws`` ``(n, m)``: the shortest window
    holding ``floor(prob * n)`` sorted draws (the rule of ArviZ's ``hdi``)."""
    import numpy as np

    x = np.sort(draws, axis=0)
    n = x.shape[0]
    inc = min(max(int(np.floor(prob * n)), 1), n - 1)
    widths = x[inc:] - x[: n - inc]
    i = np.argmin(widths, axis=0)
    cols = np.arange(x.shape[1])
    return x[i, cols], x[i + inc, cols]


def _flatten_summary(post, ci_prob: float = 0.94, labels: dict | None = None) -> dict:
    """``{name: {mean, sd, hdi_3%, hdi_97%, ess_bulk, r_hat[, label]}}`` with vector entries
    as ``theta[0]``, ...; the interval keys follow ``ci_prob`` (``interval_columns``) and
    ``label`` is the entry's label from ``labels`` (see ``_task_labels``) when it has one.

    Computed from the draws with the same rank-normalised diagnostics as the fit's check,
    so the JSON does not depend on the installed ArviZ line's column names."""
    import numpy as np

    low_name, high_name = interval_columns(ci_prob)
    labels = labels or {}
    out = {}
    for name, x in post.samples.items():
        shape = x.shape[2:]
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        pooled = flat.reshape(-1, flat.shape[-1])
        mean, sd = flat.mean(axis=(0, 1)), pooled.std(axis=0, ddof=1)
        low, high = _hdi(pooled, ci_prob)
        ess = ess_bulk(flat) if x.shape[1] >= 4 else np.full(flat.shape[-1], np.nan)
        rh = rhat(flat) if x.shape[0] > 1 and x.shape[1] >= 4 else np.full(flat.shape[-1], np.nan)
        for i, idx in enumerate(np.ndindex(*shape) if shape else [()]):
            key = name if not shape else f"{name}[{','.join(map(str, idx))}]"
            out[key] = {
                k: (None if not math.isfinite(float(v)) else float(v))
                for k, v in (
                    ("mean", mean[i]),
                    ("sd", sd[i]),
                    (low_name, low[i]),
                    (high_name, high[i]),
                    ("ess_bulk", ess[i]),
                    ("r_hat", rh[i]),
                )
            }
            if key in labels:
                out[key]["label"] = labels[key]
    return out


def _print_table(post, labels: dict, ci_prob: float = 0.94) -> None:
    rows = _flatten_summary(post, ci_prob)
    low_name, high_name = interval_columns(ci_prob)
    width = max(len(k) + len(labels.get(k, "")) + 3 for k in rows)
    print(
        f"{'parameter':<{width}} {'mean':>10} {'sd':>10} {low_name:>10} {high_name:>10} "
        f"{'ess_bulk':>9} {'r_hat':>7}"
    )
    for key, r in rows.items():
        name = key + (f" ({labels[key]})" if key in labels else "")

        def fmt(v, spec):
            return format(v, spec) if v is not None else "-"

        print(
            f"{name:<{width}} {fmt(r['mean'], '10.3f')} {fmt(r['sd'], '10.3f')} "
            f"{fmt(r[low_name], '10.3f')} {fmt(r[high_name], '10.3f')} "
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


def _check_outputs(args) -> str | None:
    """The first problem with an output path (``--out``, ``--plot``, ``--checkpoint``),
    found before the fit starts; None when all can be written."""
    from bayesmeta.saving import check_writable

    for flag in ("out", "plot", "checkpoint"):
        path = getattr(args, flag, None)
        if path:
            try:
                check_writable(path, f"--{flag}")
            except ValueError as err:
                return str(err)
    return None


def _cmd_fit(args) -> int:
    problem = _check_outputs(args)
    if problem:
        print(f"bayesmeta fit: error: {problem}", file=sys.stderr)
        return 2
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
    if args.hyper_sampler is not None:
        if "hyper_sampler" not in engine.options:
            print(
                f"bayesmeta fit: error: --hyper-sampler: method {engine.name!r} samples no "
                "hyperparameters on their own (methods collapsed and laplace do)",
                file=sys.stderr,
            )
            return 2
        options["hyper_sampler"] = args.hyper_sampler
    if args.checkpoint:
        if "checkpoint" not in engine.options:
            print(
                f"bayesmeta fit: error: --checkpoint: method {engine.name!r} does not write "
                "checkpoints (methods nuts and vi do)",
                file=sys.stderr,
            )
            return 2
        options["checkpoint"] = args.checkpoint
        if "checkpoint_every" in engine.options:  # VI saves after each of its ten windows
            options["checkpoint_every"] = args.checkpoint_every
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
        try:
            post.save(args.out)
        except (ValueError, ImportError, OSError) as err:
            print(f"bayesmeta fit: error: could not write {args.out}: {err}", file=sys.stderr)
            return 2
    if not args.json:
        print(
            f"{name}: {tasks.num_tasks} tasks, {tasks.num_obs} rows; method {post.method}, "
            f"{post.num_chains} chain(s) x {post.num_draws} draws"
        )
        _print_table(post, _task_labels(post), args.ci_prob)
        if divergences is not None:
            print(f"divergences: {divergences}")
        if args.out:
            print(f"saved {args.out}")
        return _fit_plot(post, args)
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
        "ci_prob": args.ci_prob,
        "parameters": _flatten_summary(post, args.ci_prob, _task_labels(post)),
        "diagnostics": diagnostics,
        "timing": {k: v for k, v in timing.items() if isinstance(v, float | bool)},
        "compile_cache": cache,
    }
    if "hyper_sampler" in post.info:
        payload["hyper_sampler"] = post.info["hyper_sampler"].get("used")
    if "checkpoint" in post.info:
        payload["checkpoint"] = dict(post.info["checkpoint"], resumed_at=timing.get("resumed_at"))
    print(json.dumps(payload))
    return _fit_plot(post, args)


#: ``fit --plot-kind`` choices; ``auto`` picks ``forest`` or ``arviz`` (see _plot_kind).
PLOT_KINDS = ("auto", "forest", "funnel", "shrinkage", "arviz")


def _plot_kind(post, kind: str) -> str:
    """``auto``: the meta-analysis forest plot when the posterior has one scalar effect per
    task (``theta`` over ``task``, a scalar ``mu``) and per-task estimates to draw, else
    ArviZ's forest plot of every parameter."""
    if kind != "auto":
        return kind
    theta, mu = post.samples.get("theta"), post.samples.get("mu")
    if (
        theta is None
        or theta.ndim != 3
        or post.dims.get("theta") != ["task"]
        or mu is None
        or mu.ndim != 2
        or post.tasks is None
    ):
        return "arviz"
    try:
        post.tasks.per_task_estimates()
    except ValueError:
        return "arviz"
    return "forest"


def _fit_plot(post, args) -> int:
    """Draw ``--plot`` last, after the table, the JSON and ``--out`` are written; a missing
    matplotlib or a plot that does not fit the model is one line on stderr and exit 1."""
    if not args.plot:
        return 0
    kind = _plot_kind(post, args.plot_kind)
    try:
        import matplotlib

        matplotlib.use("Agg")  # the command only writes files
        import matplotlib.pyplot as plt

        if kind == "arviz":
            fig = plot_forest(post.to_arviz(), args.plot)
        else:
            fig = getattr(bm.plots, kind)(posterior=post, path=args.plot)
    except (ImportError, ValueError) as err:
        print(plot_failure("fit", err, bm.plots.MATPLOTLIB_MISSING), file=sys.stderr)
        return EXIT_FAILURE
    plt.close(fig)
    print(f"saved {args.plot} ({kind} plot)", file=sys.stderr if args.json else sys.stdout)
    return 0


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayesmeta",
        description="Bayesian meta-learning and meta-analysis on JAX and NumPyro: fit a "
        "hierarchical model to many small related tasks (fit), run a classical "
        "random-effects meta-analysis (meta-analysis), or the estimator study (study). "
        "Run 'bayesmeta COMMAND --help' for a command's options.",
        epilog="--json prints exactly one JSON document on stdout (messages go to stderr). "
        + EXIT_STATUS_HELP
        + ".",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bayesmeta {bm.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fit = sub.add_parser(
        "fit",
        help="fit a gallery model file (default: eight schools)",
        description="Fit a gallery model file (a models/NAME.py defining a model and its "
        "tasks; with no file, the built-in eight schools) and print a summary table with "
        "task labels.",
        epilog=EXIT_STATUS_HELP + ".",
        formatter_class=HelpFormatter,
    )
    fit.add_argument("model_file", nargs="?", help="a models/NAME.py file (default: eight schools)")

    fit.add_argument("--method", default="nuts", choices=list(METHODS), help="inference method")
    fit.add_argument("--chains", type=_positive_int, default=4, help="chains")
    fit.add_argument(
        "--warmup",
        type=_nonneg_int,
        default=1000,
        help="NUTS warmup steps (VI: optimisation steps when given)",
    )
    fit.add_argument("--draws", type=_positive_int, default=1000, help="draws per chain")
    fit.add_argument("--seed", type=_nonneg_int, default=0, help="random seed")
    fit.add_argument(
        "--ci-prob",
        type=_probability,
        default=0.94,
        help="probability of the highest density interval in the table and the JSON",
    )
    fit.add_argument(
        "--out",
        help="save the posterior to this NetCDF file (bm.load_posterior reloads it whole; "
        "arviz.from_netcdf reads it as ArviZ data)",
    )
    fit.add_argument(
        "--hyper-sampler",
        choices=HYPER_SAMPLERS,
        help="collapsed, laplace: how the hyperparameters are sampled (default auto: "
        "independence Metropolis-Hastings, falling back to NUTS; the JSON says which ran)",
    )
    fit.add_argument(
        "--checkpoint",
        help="NUTS, VI: save the sampler or optimiser state and the draws to this file as "
        "the fit goes; rerunning the same command resumes from it",
    )
    fit.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=100,
        help="iterations between checkpoints",
    )
    fit.add_argument(
        "--plot", metavar="FILE.png", help="save a plot to this file, after the summary"
    )
    fit.add_argument(
        "--plot-kind",
        default="auto",
        choices=PLOT_KINDS,
        help="forest, funnel, shrinkage: the meta-analysis plots of bm.plots (one scalar "
        "effect per task); arviz: ArviZ's forest plot of every parameter; auto: forest "
        "when the model has one scalar effect per task, else arviz",
    )
    fit.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout, nothing else"
    )
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
