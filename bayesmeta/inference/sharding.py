"""Sharding the task axis across devices and processes (``bm.fit(..., devices=...)``).

``devices`` is an integer (the first ``n`` of ``jax.devices()``), a list of JAX devices,
or a ``jax.sharding.Mesh`` with an axis named ``"task"``. The engines' data are placed
with ``NamedSharding(mesh, PartitionSpec("task"))`` on their task axis and the compiled
program is partitioned by XLA's GSPMD, which inserts the collectives (the sums over
tasks of the log-density and its gradient); the draws come back replicated, so every
process can read them. Nothing else changes: the same program, seed and options, so the
draws equal the single-device run's up to the order of the floating-point sums: in
float64, within ``1e-12`` after 20 NUTS warmup iterations on 4 host devices (tested to
``rtol=1e-6``). A Markov chain amplifies any last-bit change, as it would that of a
reordered sum on one device: the same ragged model differed by ``2e-2`` after 60
iterations, and in float32 eight schools parts after about 50; the draws are then other
draws of the same posterior, not the same ones.

**Layout.** An array is split along its first axis in equal contiguous blocks, one per
device, when that axis is the task axis (length ``num_tasks``: per-task data, the
collapsed engine's sufficient statistics, nested Laplace's padded per-task rows) or the
row axis (length ``num_obs``); any other array, and one whose length the device count
does not divide, is replicated (``info["sharding"]["replicated"]`` lists them). The rows
of a TaskSet are sorted by task, so when every task has the same number of rows and the
device count divides the number of tasks, each device holds whole tasks and their rows;
with ragged tasks a task may straddle two devices' row blocks, and its partial sums are
combined by the compiler's collectives (correct, one more reduction). The per-task
latent arrays (``theta_raw`` and its momentum) follow the data's sharding through the
compiler's propagation.

**Engines.** ``"nuts"`` (the compiled program; ``chain_method="parallel"`` and
``checkpoint`` are refused with devices), ``"collapsed"``, ``"laplace"``, ``"vi"`` and
``"chees"`` shard; ``"exact"`` refuses ``devices`` (a ValueError).

**Past one machine** (one command per host): every host runs the same script, which
first calls ``jax.distributed.initialize`` (on CPUs also
``jax.config.update("jax_cpu_collectives_implementation", "gloo")``), then
``bm.fit(model, tasks, devices=len(jax.devices()))``: ``jax.devices()`` lists every
process's devices, and each process places only its own block of the tasks on its own
devices (``jax.make_array_from_callback``) before all of them run the one partitioned
program. For two hosts::

    # host 0                                   # host 1
    python fit.py --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0
    python fit.py --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 1

    # fit.py
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id)
    post = bm.fit(model, tasks, method="collapsed", devices=len(jax.devices()))

Every process reads the same TaskSet (its labels and sizes define the model) and gets
the same Posterior. Across processes the compiled-program paths run sharded: full NUTS
(``chain_method`` "sequential" or "vectorized"), collapsed NUTS (with its compiled loop:
no progress bar, ``thinning=1``) and ChEES; ``"vi"`` and ``"laplace"`` shard across the
devices of one process only (a ValueError across processes).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["resolve_devices", "SHARDED_ENGINES", "MULTI_PROCESS_ENGINES", "describe"]

#: the engines that take ``devices=``
SHARDED_ENGINES = ("nuts", "collapsed", "laplace", "vi", "chees")
#: the engines whose sharded run also spans processes (``jax.distributed``)
MULTI_PROCESS_ENGINES = ("nuts", "collapsed", "chees")
#: the mesh axis the task axis is split over
AXIS = "task"

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("bayesmeta_mesh", default=None)


def resolve_devices(devices: Any) -> Mesh | None:
    """The 1-D mesh ``devices=`` stands for (None: no sharding), or a ValueError naming
    ``devices``: a count below 1 or above ``len(jax.devices())``, a list with something
    other than a JAX device or a device twice, a Mesh without a ``"task"`` axis.

    >>> resolve_devices(None) is None
    True
    >>> dict(resolve_devices(1).shape)  # a 1-D mesh over the first device
    {'task': 1}
    """
    if devices is None:
        return None
    available = jax.devices()
    if isinstance(devices, Mesh):
        if AXIS not in devices.axis_names:
            raise ValueError(
                f"devices: a Mesh needs an axis named {AXIS!r} (the task axis), got axes "
                f"{devices.axis_names}"
            )
        return devices
    if isinstance(devices, bool | str | bytes) or (
        not isinstance(devices, int | np.integer) and not isinstance(devices, Sequence)
    ):
        raise ValueError(
            f"devices: expected None, a device count, a list of JAX devices or a "
            f"jax.sharding.Mesh, got {type(devices).__name__}"
        )
    if isinstance(devices, int | np.integer):
        n = int(devices)
        if not 1 <= n <= len(available):
            raise ValueError(
                f"devices: asked for {n} device(s), but {len(available)} exist "
                f"(jax.devices(); on a CPU, more come from "
                f"XLA_FLAGS=--xla_force_host_platform_device_count=N set before JAX starts)"
            )
        chosen = available[:n]
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("devices: the list of devices is empty")
        for i, d in enumerate(chosen):
            if not isinstance(d, jax.Device):
                raise ValueError(
                    f"devices: entry {i} is not a JAX device (jax.devices()), got "
                    f"{type(d).__name__}"
                )
        ids = [d.id for d in chosen]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"devices: device id(s) {dup} appear more than once")
        unknown = [d for d in chosen if d not in available]
        if unknown:
            raise ValueError(f"devices: {unknown[0]} is not among jax.devices()")
    return Mesh(np.array(chosen), (AXIS,))


@contextlib.contextmanager
def using(mesh: Mesh | None) -> Iterator[dict | None]:
    """The engines shard on ``mesh`` inside this block (no-op for None); yields the record
    of ``post.info["sharding"]`` (see :func:`describe`), filled as the engine places its
    data."""
    record = None if mesh is None else describe(mesh)
    token = _ACTIVE.set(None if mesh is None else (mesh, record))
    try:
        yield record
    finally:
        _ACTIVE.reset(token)


def active() -> Mesh | None:
    """The mesh of the fit in progress, or None."""
    got = _ACTIVE.get()
    return None if got is None else got[0]


def key() -> Any:
    """What a compiled executable depends on of the sharding (None: unsharded)."""
    mesh = active()
    if mesh is None:
        return None
    return (tuple(d.id for d in mesh.devices.flat), mesh.axis_names)


def _size(mesh: Mesh) -> int:
    return int(mesh.shape[AXIS])


def _place_leaf(x, spec: PartitionSpec, mesh: Mesh):
    if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding):
        if x.sharding.mesh == mesh:  # placed already
            return x
    host = np.asarray(x)
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def place(
    tree: Any, num_tasks: int | None = None, num_obs: int | None = None, note: bool = True
) -> Any:
    """``tree`` with its arrays on the active mesh: split along the first axis when that
    is the task axis (length ``num_tasks``) or the row axis (``num_obs``) and the device
    count divides it, replicated otherwise; unchanged when no mesh is active. Each
    process supplies only the blocks of its own devices. ``note``: list the arrays in
    ``info["sharding"]`` (False for keys and scalars)."""
    mesh = active()
    if mesh is None:
        return tree
    n = _size(mesh)
    lengths = {v for v in (num_tasks, num_obs) if v is not None}

    record = _ACTIVE.get()[1]

    def one(path, x):
        if x is None or isinstance(x, bool | int | float | str):
            return x
        shape = np.shape(x)
        split = bool(shape) and shape[0] in lengths and shape[0] % n == 0
        name = jax.tree_util.keystr(path)
        if note and name not in record["split"] + record["replicated"]:
            record["split" if split else "replicated"].append(name)
        spec = PartitionSpec(AXIS) if split else PartitionSpec()
        return _place_leaf(x, spec, mesh)

    return jax.tree_util.tree_map_with_path(one, tree)


def replicated() -> NamedSharding | None:
    """The replicated sharding of the active mesh (None: no mesh)."""
    mesh = active()
    return None if mesh is None else NamedSharding(mesh, PartitionSpec())


def jit(fn, **kwargs):
    """``jax.jit(fn)``, with replicated outputs when a mesh is active (so that every
    process holds the whole result and ``np.asarray`` reads it)."""
    rep = replicated()
    if rep is not None:
        kwargs.setdefault("out_shardings", rep)
    return jax.jit(fn, **kwargs)


def gather(tree: Any) -> Any:
    """``tree`` replicated on every device of the active mesh (unchanged without one)."""
    rep = replicated()
    if rep is None:
        return tree
    return jax.jit(lambda t: t, out_shardings=rep)(tree)


def describe(mesh: Mesh) -> dict:
    """A fresh record of ``post.info["sharding"]``: the devices, the number of processes,
    and (filled by :func:`place`) the data arrays split over the task axis and those
    replicated."""
    return {
        "devices": [str(d) for d in mesh.devices.flat],
        "num_devices": _size(mesh),
        "axis": AXIS,
        "process_count": jax.process_count(),
        "split": [],
        "replicated": [],
    }


def check_engine(name: str, options: dict) -> None:
    """ValueError naming ``devices`` (or the clashing option) where ``method=name`` with
    these options cannot shard; called before anything is built."""
    if name not in SHARDED_ENGINES:
        raise ValueError(
            f"devices: method {name!r} does not shard across devices; the methods that do "
            f"are {SHARDED_ENGINES}"
        )
    if name in ("nuts", "collapsed", "laplace") and options.get("chain_method") == "parallel":
        raise ValueError(
            "chain_method: 'parallel' (one chain per device) cannot be combined with "
            "devices= (the task axis split across devices)"
        )
    if name == "nuts" and options.get("checkpoint") is not None:
        raise ValueError("checkpoint: not available with devices= (sharded NUTS)")
    if name == "vi" and options.get("checkpoint") is not None:
        raise ValueError("checkpoint: not available with devices= (sharded VI)")
    if (
        jax.process_count() > 1
        and name == "collapsed"
        and (options.get("thinning", 1) != 1 or options.get("progress_bar"))
    ):
        raise ValueError(
            "devices: collapsed NUTS across processes runs its compiled loop only: "
            "thinning=1 and no progress bar"
        )
    if jax.process_count() > 1 and name not in MULTI_PROCESS_ENGINES:
        raise ValueError(
            f"devices: method {name!r} shards across the devices of one process only; "
            f"across {jax.process_count()} processes use one of {MULTI_PROCESS_ENGINES}"
        )


def place_built(built: Any) -> Any:
    """``built`` (a :class:`~bayesmeta.model.BuiltModel`) with its data placed by
    :func:`place` (task axis: the ``task`` coordinate; rows: the ``obs`` coordinate);
    ``built`` itself when no mesh is active."""
    if active() is None:
        return built
    num_tasks = len(built.coords["task"]) if "task" in built.coords else None
    num_obs = len(built.coords["obs"]) if "obs" in built.coords else None
    return built._replace(data=place(built.data, num_tasks, num_obs))
