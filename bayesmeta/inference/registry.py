"""The engine registry: one record per inference method, read by ``bm.fit`` and the CLI.

An :class:`Engine` says what a method is called, which options it takes (with their
defaults), when it cannot fit a model (``why_not``), how it fits (``fit``), and how the
command line's ``--chains/--warmup/--draws`` become its options (``cli_options``).
Adding a method is one new module in ``bayesmeta/inference/`` that defines its ``ENGINE``
and one line in :data:`bayesmeta.inference.ENGINES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

__all__ = ["Engine", "always"]


def always(model: Any, tasks: Any) -> str | None:
    """``why_not`` of an engine that fits every model."""
    return None


class Engine(NamedTuple):
    """One inference method.

    Fields:
      name        # the ``method=`` string
      summary     # one line for tables and ``--help``
      options     # option name -> default; ``bm.fit`` rejects any other name
      fit         # (model, tasks, seed, **options) -> Posterior; validates its options
      why_not     # (model, tasks) -> None when the engine can fit the model, else why not
      cli_options # (chains, warmup, draws, progress) -> options for ``bayesmeta fit``
      check_options # (options merged with the defaults) -> None, a ValueError naming the
                    # option; ``bm.fit`` calls it before anything is built or compiled
    """

    name: str
    summary: str
    options: Mapping[str, Any]
    fit: Callable[..., Any]
    why_not: Callable[[Any, Any], str | None] = always
    cli_options: Callable[[int, int, int, bool], dict] | None = None
    check_options: Callable[[dict], None] | None = None


def sampler_cli_options(chains: int, warmup: int, draws: int, progress: bool) -> dict:
    """The CLI's options for an MCMC engine (NUTS, collapsed NUTS)."""
    return dict(num_chains=chains, num_warmup=warmup, num_samples=draws, progress_bar=progress)
