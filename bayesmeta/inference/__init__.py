"""``fit``: one entry point to every inference engine, all returning a ``Posterior``.

========================  ===================================================================
method                    what runs
========================  ===================================================================
``"nuts"``                NumPyro NUTS on the full model, one compiled program per structure
``"vi"``                  NumPyro SVI with an automatic guide and an optax optimizer
``"exact"``               closed-form normal-normal posterior (known-noise Gaussian tasks)
``"collapsed"``           NUTS on the hyperparameters with Gaussian ``theta_t`` integrated out
``"auto"``                ``"collapsed"`` when eligible, else ``"nuts"``
========================  ===================================================================

The engines are records in :data:`ENGINES` (see :mod:`bayesmeta.inference.registry`): a new
method is one module defining its ``ENGINE`` plus one line below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bayesmeta.inference import collapsed, exact, nuts, vi
from bayesmeta.inference.registry import Engine
from bayesmeta.model import _TaskModel
from bayesmeta.tasks import TaskSet

__all__ = ["fit", "METHODS", "ENGINES", "Engine"]

#: the registry: method name -> Engine
ENGINES: dict[str, Engine] = {
    e.name: e for e in (nuts.ENGINE, vi.ENGINE, exact.ENGINE, collapsed.ENGINE)
}
METHODS = (*ENGINES, "auto")


def resolve_method(method: str, model: Any, tasks: TaskSet) -> str:
    """The engine ``method`` stands for: ``"auto"`` is collapsed NUTS where the model's
    per-task parameters integrate out exactly, else full NUTS."""
    if method != "auto":
        return method
    return "collapsed" if ENGINES["collapsed"].why_not(model, tasks) is None else "nuts"


def fit(model: Any, tasks: TaskSet, method: str = "nuts", seed: int = 0, **options):
    """Fit ``model`` to ``tasks`` and return a :class:`~bayesmeta.posterior.Posterior`.

    Args:
      model: a ``bm.Hierarchical`` (or ``bm.pooled`` / ``bm.unpooled``) model, or a plain
        NumPyro model called as ``model(y=, task_index=, num_tasks=, x=, noise_scale=)``.
      tasks: a ``bm.TaskSet``.
      method: one of ``"nuts"``, ``"vi"``, ``"exact"``, ``"collapsed"``, ``"auto"``
        (any name in :data:`ENGINES`).
      seed: integer seed of the run.
      **options: the engine's options (unknown names are rejected); see ``fit_nuts``,
        ``fit_vi``, ``fit_collapsed``, ``fit_exact``.
    """
    if method not in METHODS:
        raise ValueError(f"method: must be one of {METHODS}, got {method!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    if not isinstance(tasks, TaskSet):
        raise ValueError(f"tasks: expected a bm.TaskSet, got {type(tasks).__name__}")
    if not isinstance(model, _TaskModel) and not isinstance(model, Callable):
        raise ValueError(
            f"model: expected a bm.Hierarchical or a NumPyro model function, got "
            f"{type(model).__name__}"
        )
    engine = ENGINES[resolve_method(method, model, tasks)]
    unknown = sorted(set(options) - set(engine.options))
    if unknown:
        raise ValueError(
            f"options: unknown option(s) {unknown} for method {engine.name!r}; known: "
            f"{sorted(engine.options)}"
        )
    if engine.name == "collapsed":
        why = engine.why_not(model, tasks)
        if why is not None:
            raise ValueError(
                f"method: 'collapsed' needs a Gaussian likelihood with a Normal or "
                f"MvNormal population; {why}"
            )
    return engine.fit(model, tasks, seed, **options)
