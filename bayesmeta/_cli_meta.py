"""The ``meta-analysis`` and ``study`` subcommands of the ``bayesmeta`` command.

``bayesmeta meta-analysis CSV --estimate COL (--se COL | --variance COL) [--label COL]
[--mods COL [COL ...]] [--method REML] [--knapp-hartung] [--level 0.95] [--prediction t|z]
[--plot FILE.png [--plot-kind forest|funnel|shrinkage]] [--json]``
runs a random-effects meta-analysis of one estimate per row; ``--dataset bcg``
(or ``eight_schools``) uses a built-in data set instead of a CSV. With ``--mods`` it is a
mixed-effects meta-regression on those moderator columns (of the CSV, or of the BCG table:
``--dataset bcg --mods ablat year``), printed like metafor's ``rma(..., mods = )``. ``--plot``
draws ``bm.plots.forest`` (default), ``funnel`` or ``shrinkage`` of the result (not with
``--mods``).

``bayesmeta study [--num-tasks 8] [--tau 0.5] [--noise 1] [--num-obs 5] [--imbalance 20]
[--num-reps 400] [--seed 0] [--no-exact] [--quick] [--plot FILE.png] [--json]`` runs the
estimator study (``bayesmeta.study``).

With ``--json`` the only output on stdout is one JSON document (the result's fields:
estimates, ``ci_low``/``ci_high`` and ``pi_low``/``pi_high`` at ``level``, per-task
``labels``, ...); messages go to stderr. ``--plot`` is drawn after the output: without
matplotlib it prints one line on stderr and the command exits 1 (see ``bayesmeta.cli``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys

from bayesmeta import datasets, estimators, plots
from bayesmeta._cli_args import EXIT_FAILURE, EXIT_STATUS_HELP, HelpFormatter, plot_failure
from bayesmeta._cli_args import int_at_least as _int_at_least
from bayesmeta.estimators import TAU2_METHODS
from bayesmeta.study import study
from bayesmeta.tasks import _check_csv_header, _check_csv_row

__all__ = [
    "add_meta_analysis_parser",
    "add_study_parser",
    "read_estimates_csv",
    "read_moderators_csv",
]


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _nonneg_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _level(text: str) -> float:
    value = _float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {value}")
    return value


def _number(raw: str, col: str, line: int, path: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"column {col!r}, line {line} of {path}: {raw!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"column {col!r}, line {line} of {path}: {raw!r} is not finite")
    return value


def read_estimates_csv(
    path: str,
    estimate: str,
    se: str | None = None,
    variance: str | None = None,
    label: str | None = None,
):
    """Read one estimate and its standard error (or variance) per row of a CSV with a header.

    Returns ``(y, se, labels)`` (lists). Raises ValueError naming the column and the line
    (the header is line 1) of the first problem.
    """
    if (se is None) == (variance is None):
        raise ValueError("--se/--variance: give exactly one of them")
    try:
        fh = open(path, newline="")
    except OSError as err:
        raise ValueError(f"{path}: cannot open ({err.strerror})") from None
    with fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        _check_csv_header(path, header)
        for flag, col in (
            ("--estimate", estimate),
            ("--se", se),
            ("--variance", variance),
            ("--label", label),
        ):
            if col is not None and col not in header:
                raise ValueError(
                    f"{flag}: column {col!r} not in {path} (columns: {', '.join(header) or 'none'})"
                )
        ys, ses, labels = [], [], []
        for line, row in enumerate(reader, start=2):
            _check_csv_row(path, header, row, reader.line_num)

            def number(col: str, _row=row, _line=line) -> float:
                return _number((_row.get(col) or "").strip(), col, _line, path)

            y = number(estimate)
            if se is not None:
                s = number(se)
                if s <= 0:
                    raise ValueError(
                        f"column {se!r}, line {line} of {path}: standard error {s} must be positive"
                    )
            else:
                var = number(variance)
                if var <= 0:
                    raise ValueError(
                        f"column {variance!r}, line {line} of {path}: variance "
                        f"{var} must be positive"
                    )
                s = math.sqrt(var)
            ys.append(y)
            ses.append(s)
            labels.append(row[label].strip() if label is not None else str(line - 1))
    if len(ys) < 2:
        raise ValueError(f"{path}: a meta-analysis needs at least 2 data rows, got {len(ys)}")
    return ys, ses, labels


def read_moderators_csv(path: str, columns: list[str]) -> dict[str, list[float]]:
    """The moderator ``columns`` of a CSV with a header, as a dict name -> values (one per
    data row, in the order of :func:`read_estimates_csv`). Raises ValueError naming the
    column (and the line, the header being line 1) of the first problem."""
    if len(set(columns)) != len(columns):
        dup = next(c for c in columns if columns.count(c) > 1)
        raise ValueError(f"--mods: column {dup!r} given twice")
    try:
        fh = open(path, newline="")
    except OSError as err:
        raise ValueError(f"{path}: cannot open ({err.strerror})") from None
    with fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        _check_csv_header(path, header)
        for col in columns:
            if col not in header:
                raise ValueError(
                    f"--mods: column {col!r} not in {path} (columns: {', '.join(header) or 'none'})"
                )
        out: dict[str, list[float]] = {col: [] for col in columns}
        for line, row in enumerate(reader, start=2):
            for col in columns:
                out[col].append(_number((row.get(col) or "").strip(), col, line, path))
    return out


def _dataset_moderators(name: str, columns: list[str]) -> dict[str, list[float]]:
    """Moderator columns of a built-in data set, by column name (BCG: ``bcg_table()``)."""
    if len(set(columns)) != len(columns):
        dup = next(c for c in columns if columns.count(c) > 1)
        raise ValueError(f"--mods: column {dup!r} given twice")
    if name != "bcg":
        raise ValueError(f"--mods: the {name} data set has no moderator columns")
    table = datasets.bcg_table()
    numeric = [col for col, values in table.items() if values.dtype.kind in "iuf"]
    for col in columns:
        if col not in numeric:
            raise ValueError(
                f"--mods: column {col!r} not in the bcg data set (columns: {', '.join(numeric)})"
            )
    return {col: table[col].astype(float).tolist() for col in columns}


def _error(command: str, message: str) -> int:
    print(f"bayesmeta {command}: error: {message}", file=sys.stderr)
    return 2


def _draw(command: str, draw, path: str, to_stderr: bool) -> int:
    """Run ``draw()`` (which saves a figure to ``path``) last: a missing matplotlib or a plot
    that cannot be drawn is one line on stderr and exit 1."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # the command only writes files
        import matplotlib.pyplot as plt

        fig = draw()
    except (ImportError, ValueError) as err:
        print(plot_failure(command, err, plots.MATPLOTLIB_MISSING), file=sys.stderr)
        return EXIT_FAILURE
    if fig is not None and not isinstance(fig, str):
        plt.close(fig)
    print(f"figure saved to {path}", file=sys.stderr if to_stderr else sys.stdout)
    return 0


def _cmd_meta_analysis(args) -> int:

    try:
        if args.plot and args.mods is not None:
            raise ValueError("--plot: the plots draw a meta-analysis without --mods")
        if args.dataset is not None:
            if args.csv is not None:
                raise ValueError("CSV/--dataset: give one of them, not both")

            tasks = getattr(datasets, args.dataset)()
            y, se = tasks.per_task_estimates()
            labels = list(tasks.labels)
            mods = None if args.mods is None else _dataset_moderators(args.dataset, args.mods)
        else:
            if args.csv is None or args.estimate is None:
                raise ValueError("CSV and --estimate are required (or use --dataset)")
            y, se, labels = read_estimates_csv(
                args.csv, args.estimate, args.se, args.variance, args.label
            )
            mods = None if args.mods is None else read_moderators_csv(args.csv, args.mods)
        res = estimators.random_effects(
            y,
            se,
            method=args.method,
            knapp_hartung=args.knapp_hartung,
            level=args.level,
            prediction=args.prediction,
            labels=labels,
            mods=mods,
        )
    except ValueError as err:
        return _error("meta-analysis", str(err))
    if args.json:
        payload = dict(res.to_dict(), command="meta-analysis")
        print(json.dumps(payload))
    else:
        print(res)
    if not args.plot:
        return 0
    plot = getattr(plots, args.plot_kind)
    return _draw("meta-analysis", lambda: plot(res, path=args.plot), args.plot, args.json)


def add_meta_analysis_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``meta-analysis`` on an argparse subparsers object; ``func`` is set."""

    p = subparsers.add_parser(
        "meta-analysis",
        help="random-effects meta-analysis of one estimate and standard error per CSV row",
        description="Random-effects meta-analysis (DerSimonian-Laird, REML, ML, Paule-Mandel,"
        " Hedges, Sidik-Jonkman, empirical Bayes) with Q, I^2, H^2, a Q-profile "
        "interval for tau^2, a prediction interval and per-task BLUPs; with --mods, a "
        "mixed-effects meta-regression (QE, QM, residual I^2 and H^2, R^2).",
        epilog=EXIT_STATUS_HELP + ".",
        formatter_class=HelpFormatter,
    )
    p.add_argument("csv", nargs="?", help="CSV file with a header row")
    p.add_argument("--estimate", help="column of the per-task estimates")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--se", help="column of their standard errors")
    group.add_argument("--variance", help="column of their sampling variances")
    p.add_argument("--label", help="column of task labels (default: row numbers)")
    p.add_argument(
        "--mods",
        nargs="+",
        metavar="COL",
        help="moderator columns for a meta-regression (of the CSV, or of --dataset bcg: "
        "ablat, year, ...)",
    )
    p.add_argument(
        "--dataset",
        choices=["bcg", "eight_schools"],
        help="use a built-in data set instead of a CSV",
    )
    p.add_argument(
        "--method",
        default="REML",
        choices=list(TAU2_METHODS),
        help="tau^2 estimator",
    )
    p.add_argument(
        "--knapp-hartung",
        action="store_true",
        help="Knapp-Hartung (HKSJ) standard error and t interval",
    )
    p.add_argument("--level", type=_level, default=0.95, help="level of every interval")
    p.add_argument(
        "--prediction",
        choices=["t", "z"],
        default="t",
        help="prediction interval with t on k-2 df or z",
    )
    p.add_argument("--plot", metavar="FILE.png", help="save a plot to this file, after the output")
    p.add_argument(
        "--plot-kind",
        default="forest",
        choices=["forest", "funnel", "shrinkage"],
        help="which plot of bm.plots --plot draws",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout, nothing else"
    )
    p.set_defaults(func=_cmd_meta_analysis)
    return p


def _cmd_study(args) -> int:

    reps = 100 if args.quick and args.num_reps is None else (args.num_reps or 400)
    try:
        table = study(
            num_tasks=args.num_tasks,
            tau=args.tau,
            noise=args.noise,
            num_obs=args.num_obs,
            imbalance=args.imbalance,
            num_reps=reps,
            seed=args.seed,
            level=args.level,
            exact=not args.no_exact,
        )
    except ValueError as err:
        return _error("study", str(err))
    if args.json:
        print(json.dumps(dict(table.to_dict(), command="study")))
    else:
        print(table)
    if not args.plot:
        return 0
    return _draw("study", lambda: table.plot(args.plot), args.plot, args.json)


def add_study_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``study`` on an argparse subparsers object; ``func`` is set."""
    p = subparsers.add_parser(
        "study",
        help="simulation study of pooled, per-task and partially pooled estimators",
        description="Simulate task collections (one dominant task with many times the data) "
        "and report bias, RMSE and coverage of every estimator of the centre and "
        "of each task, with the exact Bayes posterior as the yardstick.",
        epilog=EXIT_STATUS_HELP + ".",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--num-tasks", type=_int_at_least(4), default=8, help="tasks per collection")
    p.add_argument("--tau", type=_nonneg_float, default=0.5, help="between-task sd")
    p.add_argument("--noise", type=_nonneg_float, default=1.0, help="within-task sd")
    p.add_argument(
        "--num-obs", type=_int_at_least(2), default=5, help="observations per ordinary task"
    )
    p.add_argument(
        "--imbalance",
        type=_nonneg_float,
        default=20.0,
        help="the dominant task has this many times the observations",
    )
    p.add_argument(
        "--num-reps",
        type=_int_at_least(2),
        default=None,
        help="replications (default 400; 100 with --quick)",
    )
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed")
    p.add_argument("--level", type=_level, default=0.95, help="level of the intervals")
    p.add_argument("--no-exact", action="store_true", help="skip the exact Bayes rows")
    p.add_argument("--quick", action="store_true", help="100 replications")
    p.add_argument("--plot", help="save the figure to this PNG file")
    p.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout, nothing else"
    )
    p.set_defaults(func=_cmd_study)
    return p
