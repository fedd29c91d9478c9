"""``fit``: one entry point to every inference engine, all returning a ``Posterior``.

========================  ===================================================================
method                    what runs
========================  ===================================================================
``"nuts"``                NumPyro NUTS on the full model, one compiled program per structure
``"vi"``                  NumPyro SVI with an automatic guide and an optax optimizer
``"exact"``               closed-form normal-normal posterior (known-noise Gaussian tasks)
``"collapsed"``           the hyperparameters alone (independence MH, or NUTS), Gaussian
                          ``theta_t`` integrated out exactly
``"laplace"``             the hyperparameters alone (independence MH, or NUTS), ``theta_t``
                          integrated out by nested Laplace
``"chees"``               many-chain HMC, warmup pooled across chains (ChEES trajectory length)
``"svi"``                 task-minibatched SVI, per-task or amortised local guides (huge T)
``"auto"``                ``"collapsed"`` when eligible, else ``"nuts"`` (the Laplace pilot's
                          verdict is recorded; see :mod:`bayesmeta.inference.laplace`)
========================  ===================================================================

The engines are records in :data:`ENGINES` (see :mod:`bayesmeta.inference.registry`): a new
method is one module defining its ``ENGINE`` plus one line below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bayesmeta._checks import check_seed
from bayesmeta.inference import (
    chees,
    collapsed,
    exact,
    laplace,
    minibatch_vi,
    nuts,
    sharding,
    vi,
)
from bayesmeta.inference.registry import Engine
from bayesmeta.model import _TaskModel
from bayesmeta.tasks import TaskSet

__all__ = ["fit", "METHODS", "ENGINES", "Engine"]

#: the registry: method name -> Engine
ENGINES: dict[str, Engine] = {
    e.name: e
    for e in (nuts.ENGINE, vi.ENGINE, exact.ENGINE, collapsed.ENGINE, laplace.ENGINE, chees.ENGINE)
}
ENGINES["svi"] = minibatch_vi.ENGINE
METHODS = (*ENGINES, "auto")


def resolve_method(method: str, model: Any, tasks: TaskSet) -> str:
    """The engine ``method`` stands for: ``"auto"`` is collapsed NUTS where the model's
    per-task parameters integrate out exactly, else full NUTS. The Laplace pilot
    (:func:`bayesmeta.inference.laplace.laplace_trust`) runs and is recorded; it would
    choose nested Laplace where it trusts it once ``AUTO_PICKS_LAPLACE`` is set, which it
    is not while nested Laplace measures slower than full NUTS."""
    return _resolve(method, model, tasks)[0]


def _resolve(method: str, model: Any, tasks: TaskSet) -> tuple[str, dict | None]:
    """``(engine name, record of the auto choice or None)``."""
    if method != "auto":
        return method, None
    if ENGINES["collapsed"].why_not(model, tasks) is None:
        return "collapsed", {"chosen": "collapsed", "why": "theta integrates out exactly"}
    why = ENGINES["laplace"].why_not(model, tasks)
    if why is not None:
        return "nuts", {"chosen": "nuts", "why": f"laplace not available: {why}"}
    trust = laplace.laplace_trust(model, tasks)
    if trust["ok"] and laplace.AUTO_PICKS_LAPLACE:
        return "laplace", {"chosen": "laplace", "why": "the Laplace pilot passed", **trust}
    if trust["ok"]:
        return "nuts", {
            "chosen": "nuts",
            "why": "the Laplace pilot passed, but nested Laplace is not yet faster than full "
            "NUTS by the margin the switch waits for "
            "(bayesmeta.inference.laplace.AUTO_PICKS_LAPLACE)",
            **trust,
        }
    failing = trust["tasks_failing"]
    shown = ", ".join(map(repr, failing[:5])) + (" ..." if len(failing) > 5 else "")
    return "nuts", {
        "chosen": "nuts",
        "why": f"the Laplace pilot failed for {len(failing)} task(s): {shown}",
        **trust,
    }


#: the engines ``method="auto"`` chooses between
_AUTO_CANDIDATES = ("collapsed", "nuts", "laplace")


def _precheck_auto(options: dict) -> None:
    """Options of ``method="auto"`` checked before the choice (whose Laplace pilot may
    compile): a name no candidate knows, or a bad value of an option every candidate
    shares (NUTS's), is a ValueError now."""
    known = set().union(*(ENGINES[n].options for n in _AUTO_CANDIDATES))
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"options: unknown option(s) {unknown} for method 'auto'; known: {sorted(known)}"
        )
    shared = {k: v for k, v in options.items() if k in ENGINES["nuts"].options}
    ENGINES["nuts"].check_options(dict(ENGINES["nuts"].options, **shared))


def fit(model: Any, tasks: TaskSet, method: str = "nuts", seed: int = 0, devices=None, **options):
    """Fit ``model`` to ``tasks`` and return a :class:`~bayesmeta.posterior.Posterior`.

    Args:
      model: a ``bm.Hierarchical`` (or ``bm.pooled`` / ``bm.unpooled``) model, or a plain
        NumPyro model function: with a TaskSet it is called as ``model(y=, task_index=,
        num_tasks=, x=, noise_scale=)``; with a dict it is called with the dict's entries
        as keyword arguments (the usual NumPyro style; its task plate is the plate named
        ``"task"``; see :func:`bayesmeta.model.build_callable`).
      tasks: a ``bm.TaskSet``, or for a NumPyro model function a dict of its arguments
        (methods ``"nuts"`` and ``"vi"``).
      method: one of ``"nuts"``, ``"vi"``, ``"exact"``, ``"collapsed"``, ``"laplace"``,
        ``"chees"``, ``"svi"`` (task-minibatched, for huge collections), ``"auto"`` (any
        name in :data:`ENGINES`); ``post.info["auto"]`` records what ``"auto"`` chose and
        why.
      seed: integer seed of the run, a Python or numpy integer with ``0 <= seed < 2**32``
        (the one range of every method; a ValueError otherwise).
      devices: None (one device), a device count, a list of JAX devices or a
        ``jax.sharding.Mesh`` with a ``"task"`` axis: the task axis of the data is split
        across those devices (and, under ``jax.distributed``, across processes) for
        ``"nuts"``, ``"collapsed"``, ``"laplace"``, ``"vi"`` and ``"chees"``; the draws
        equal the one-device run's up to the order of floating-point sums.
        ``post.info["sharding"]`` records the devices and the layout; see
        :mod:`bayesmeta.inference.sharding` (and its recipe for several hosts).
      **options: the engine's options (unknown names are rejected); see ``fit_nuts``,
        ``fit_vi``, ``fit_collapsed``, ``fit_exact``, ``fit_svi``.

    >>> import numpyro.distributions as dist, bayesmeta as bm
    >>> model = bm.Hierarchical(
    ...     likelihood=bm.likelihoods.NormalKnownNoise(),
    ...     population=bm.populations.Normal(loc=dist.Normal(0, 5), scale=dist.HalfCauchy(5)),
    ... )
    >>> post = bm.fit(model, bm.datasets.eight_schools(), method="exact", seed=0)  # closed form
    >>> post.method, post.samples["theta"].shape, post.coords["task"][:2]  # (chain, draw, task)
    ('exact', (4, 1000, 8), ['A', 'B'])
    >>> post = bm.fit(model, bm.datasets.eight_schools(), method="nuts", seed=0)  # doctest: +SKIP
    """
    if method not in METHODS:
        raise ValueError(f"method: must be one of {METHODS}, got {method!r}")
    seed = check_seed(seed)
    user_style = isinstance(tasks, Mapping) and not isinstance(model, _TaskModel)
    if user_style and method == "auto":
        method = "nuts"  # the only engines that take any NumPyro model: nuts and vi
    if user_style and method not in ("nuts", "vi", "chees"):
        raise ValueError(
            f"method: a NumPyro model fitted with a dict of its arguments runs by 'nuts', "
            f"'vi' or 'chees', got {method!r}"
        )
    if not isinstance(tasks, TaskSet) and not user_style:
        raise ValueError(
            f"tasks: expected a bm.TaskSet (or, for a NumPyro model function, a dict of its "
            f"arguments), got {type(tasks).__name__}"
        )
    if not isinstance(model, _TaskModel) and not isinstance(model, Callable):
        raise ValueError(
            f"model: expected a bm.Hierarchical or a NumPyro model function, got "
            f"{type(model).__name__}"
        )
    mesh = sharding.resolve_devices(devices)
    if method == "auto":  # the pilot may compile: check what every candidate takes first
        _precheck_auto(options)
    name, auto = _resolve(method, model, tasks) if method == "auto" else (method, None)
    engine = ENGINES[name]
    unknown = sorted(set(options) - set(engine.options))
    if unknown:
        raise ValueError(
            f"options: unknown option(s) {unknown} for method {engine.name!r}; known: "
            f"{sorted(engine.options)}"
        )
    if engine.check_options is not None:  # before anything is built or compiled
        engine.check_options(dict(engine.options, **options))
    if engine.name == "collapsed":
        why = engine.why_not(model, tasks)
        if why is not None:
            raise ValueError(
                f"method: 'collapsed' needs a Gaussian likelihood with a Normal or "
                f"MvNormal population; {why}"
            )
    if mesh is not None:
        sharding.check_engine(engine.name, options)
    with sharding.using(mesh) as record:
        post = engine.fit(model, tasks, seed, **options)
    if record is not None:
        post.info.extra["sharding"] = record
    if auto is not None:
        post.info.extra["auto"] = auto
    return post
