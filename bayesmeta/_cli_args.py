"""Argument types shared by the ``bayesmeta`` subcommands (no imports of the package)."""

from __future__ import annotations

import argparse

__all__ = ["int_at_least"]


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
