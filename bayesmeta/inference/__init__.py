"""``fit``: one entry point to every inference engine, all returning a ``Posterior``.

========================  ===================================================================
method                    what runs
========================  ===================================================================
``"nuts"``                NumPyro NUTS on the full model (chains vectorised on one device)
``"vi"``                  NumPyro SVI with an automatic guide and an optax optimizer
``"exact"``               closed-form normal-normal posterior (known-noise Gaussian tasks)
``"collapsed"``           NUTS on the hyperparameters with Gaussian ``theta_t`` integrated out
``"auto"``                ``"collapsed"`` when eligible, else ``"nuts"``
========================  ===================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bayesmeta.inference.nuts import NUTS_OPTIONS, fit_nuts
from bayesmeta.inference.vi import VI_OPTIONS, fit_vi
from bayesmeta.model import _TaskModel, build_callable
from bayesmeta.tasks import TaskSet

__all__ = ["fit", "METHODS"]

METHODS = ("nuts", "vi", "exact", "collapsed", "auto")


def _options_for(method: str) -> dict:
    if method == "nuts":
        return NUTS_OPTIONS
    if method == "vi":
        return VI_OPTIONS
    if method == "collapsed":
        from bayesmeta.inference.collapsed import COLLAPSED_OPTIONS

        return COLLAPSED_OPTIONS
    if method == "exact":
        from bayesmeta.exact.normal import EXACT_OPTIONS

        return EXACT_OPTIONS
    raise AssertionError(method)


def _eligible_collapsed(model: Any) -> str | None:
    try:
        from bayesmeta.inference.collapsed import why_not_collapsible
    except ImportError:
        return "collapsed inference is not available"
    return why_not_collapsible(model)


def fit(model: Any, tasks: TaskSet, method: str = "nuts", seed: int = 0, **options):
    """Fit ``model`` to ``tasks`` and return a :class:`~bayesmeta.posterior.Posterior`.

    Args:
      model: a ``bm.Hierarchical`` (or ``bm.pooled`` / ``bm.unpooled``) model, or a plain
        NumPyro model called as ``model(y=, task_index=, num_tasks=, x=, noise_scale=)``.
      tasks: a ``bm.TaskSet``.
      method: one of ``"nuts"``, ``"vi"``, ``"exact"``, ``"collapsed"``, ``"auto"``.
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
    if method == "auto":
        method = "collapsed" if _eligible_collapsed(model) is None else "nuts"
    allowed = _options_for(method)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"options: unknown option(s) {unknown} for method {method!r}; known: {sorted(allowed)}"
        )
    if method == "exact":
        from bayesmeta.exact.normal import fit_exact

        return fit_exact(model, tasks, seed=seed, **options)
    if method == "collapsed":
        from bayesmeta.inference.collapsed import fit_collapsed

        why = _eligible_collapsed(model)
        if why is not None:
            raise ValueError(
                f"method: 'collapsed' needs a Gaussian likelihood with a Normal or "
                f"MvNormal population; {why}"
            )
        return fit_collapsed(model, tasks, seed=seed, **options)
    if isinstance(model, _TaskModel):
        built, owner = model.build(tasks), model
    else:
        built, owner = build_callable(model, tasks), None
    engine = fit_nuts if method == "nuts" else fit_vi
    return engine(built, tasks, seed, model=owner, **options)
