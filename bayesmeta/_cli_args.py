"""Argument types, help layout and exit codes shared by the ``bayesmeta`` subcommands (no
imports of the package)."""

from __future__ import annotations

import argparse

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_STATUS_HELP",
    "EXIT_USAGE",
    "HelpFormatter",
    "int_at_least",
    "plot_failure",
]

#: Exit status of the ``bayesmeta`` command: success.
EXIT_OK = 0
#: The run could not finish (e.g. a requested plot needs matplotlib); whatever could be
#: written (the summary, ``--json``, ``--out``) was written first.
EXIT_FAILURE = 1
#: Usage error: bad arguments, or input that is missing or invalid (argparse's own code).
EXIT_USAGE = 2

EXIT_STATUS_HELP = (
    "exit status: 0 ok; 2 usage error (bad arguments, missing or invalid input); "
    "1 failure (the run could not finish, e.g. --plot without matplotlib: the summary, "
    "the --json output and --out are written before the plot is tried)"
)


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: ...)`` to every option whose default is not None or False (those
    state their default in their own text)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def int_at_least(low: int):
    """An argparse type: an integer >= ``low``, with a usage error naming the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def plot_failure(command: str, err: Exception, missing: str) -> str:
    """The one line printed on stderr when ``--plot`` fails: ``missing`` (how to install
    matplotlib) when matplotlib cannot be imported, else the error's first line (a plot
    that does not fit the model)."""
    text = str(err)
    if isinstance(err, ImportError) and "matplotlib" in text:
        text = missing
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"bayesmeta {command}: error: --plot: {first}"
