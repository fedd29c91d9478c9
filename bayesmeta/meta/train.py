"""The outer loop: sample a meta-batch, take a meta-step, record the diagnostics.

>>> import jax, jax.numpy as jnp, optax, bayesmeta as bm
>>> loss = lambda p, b: jnp.mean((p - b) ** 2)
>>> def sampler(key):
...     centres = jax.random.normal(key, (8, 1))
...     data = centres + 0.1 * jax.random.normal(jax.random.fold_in(key, 1), (8, 5))
...     return {"support": data, "query": data}
>>> learner = bm.meta.maml(loss, optax.adam(1e-2), inner_lr=0.1)
>>> state, history = bm.meta.train(learner, jnp.zeros(()), sampler, 50, progress_bar=False)
>>> history["loss"].shape
(50,)
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bayesmeta._checks import check_seed
from bayesmeta.inference.diagnostics import FitWarning
from bayesmeta.meta._compiled import compiled
from bayesmeta.meta.learners import MetaState

__all__ = ["train"]


def _default_chunk(num_steps: int) -> int:
    return max(1, min(1000, math.ceil(num_steps / 100)))


# the key stream of learners whose step is stochastic (ABML): step ``s`` gets
# ``fold_in(fold_in(PRNGKey(seed), _STEP_STREAM), s)``, apart from the task stream
_STEP_STREAM = 2**31 - 1


def _step_takes_key(step: Callable) -> bool:
    """Whether ``step`` is ``step(state, task_batch, key)`` (a parameter named ``key``)."""
    try:
        return "key" in inspect.signature(step).parameters
    except (TypeError, ValueError):  # no signature to read: the deterministic form
        return False


def _chunk_runner(step_ref: Callable, sampler_ref: Callable, chunk_size: int, with_key: bool):
    """A jitted ``lax.scan`` over ``chunk_size`` outer steps. The step and the sampler are
    reached through ``step_ref()``/``sampler_ref()`` (weak references when kept), so the
    runner does not keep them alive."""

    def one_step(carry, index):
        state, base_key, first, stop = carry

        def run(state):
            count = first + index
            batch = sampler_ref()(jax.random.fold_in(base_key, count))
            if with_key:
                key = jax.random.fold_in(jax.random.fold_in(base_key, _STEP_STREAM), count)
                new_state, info = step_ref()(state, batch, key)
            else:
                new_state, info = step_ref()(state, batch)
            metrics = {k: v for k, v in info._asdict().items() if jnp.ndim(v) == 0}
            return new_state, metrics

        out_shapes = jax.eval_shape(run, state)[1]

        def skip(state):
            return state, jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), out_shapes)

        # the last chunk may run past num_steps; those steps leave the state untouched
        state, metrics = lax.cond(index < stop, run, skip, state)
        return (state, base_key, first, stop), metrics

    @jax.jit
    def run_chunk(state, base_key, start, first, stop):
        (state, _, _, _), metrics = lax.scan(
            one_step, (state, base_key, first, stop), start + jnp.arange(chunk_size)
        )
        return state, metrics

    return run_chunk


def train(
    learner: Any,
    params: Any,
    task_sampler: Callable[[jax.Array], Any],
    num_steps: int,
    *,
    seed: int = 0,
    progress_bar: bool = True,
    chunk_size: int | None = None,
) -> tuple[MetaState, dict[str, np.ndarray]]:
    """Run ``num_steps`` outer steps of ``learner``.

    Args:
      learner: a :class:`~bayesmeta.meta.MetaLearner` (anything with ``init``/``step``).
      params: initial meta-parameters, or a ``MetaState`` to continue training from.
      task_sampler: ``task_sampler(key) -> task_batch``; a JAX-traceable function (it is
        compiled together with the step). Outer step ``s`` (counted by ``state.count``,
        so a resumed run continues the stream) uses ``fold_in(PRNGKey(seed), s)``. A
        learner whose step is stochastic, ``step(state, task_batch, key)`` (ABML), gets
        its keys from a separate stream of the same seed.
      num_steps: number of outer steps.
      seed: integer seed of the task stream.
      progress_bar: show a tqdm progress bar with the running meta-loss.
      chunk_size: steps per compiled ``lax.scan`` call (default ~1% of ``num_steps``); the
        progress bar advances once per chunk. Everything compiles once: the compiled loop
        is kept while ``learner.step`` and ``task_sampler`` are alive (it holds neither),
        so a second call with the same learner and sampler does not compile.

    Returns:
      ``(state, history)``: the final ``MetaState`` and a dict of per-step numpy arrays of
      shape ``(num_steps,)``, one per scalar field of the step's info: for the
      gradient-based learners ``loss`` (query loss after adaptation), ``loss_before``
      (before adaptation) and ``grad_norm``.

    >>> import jax.numpy as jnp, optax, bayesmeta as bm
    >>> loss = lambda p, b: 0.5 * jnp.sum((p - b) ** 2)
    >>> data = jnp.array([[1.0], [3.0]])
    >>> sampler = lambda key: {"support": data, "query": data}  # the same two tasks each step
    >>> learner = bm.meta.maml(loss, optax.sgd(1.0), inner_lr=0.5)
    >>> state, history = bm.meta.train(learner, jnp.zeros(()), sampler, 60, progress_bar=False)
    >>> round(float(state.params), 3), sorted(history), history["loss"].shape
    (2.0, ['grad_norm', 'loss', 'loss_before'], (60,))
    """
    seed = check_seed(seed)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps: expected a positive integer, got {num_steps!r}")
    if not callable(task_sampler):
        raise ValueError("task_sampler: expected a callable task_sampler(key) -> task_batch")
    if not (hasattr(learner, "init") and hasattr(learner, "step")):
        raise ValueError("learner: expected a MetaLearner with init and step")
    if chunk_size is None:
        chunk_size = _default_chunk(num_steps)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
    chunk_size = min(chunk_size, num_steps)

    state = params if isinstance(params, MetaState) else learner.init(params)
    with_key = _step_takes_key(learner.step)
    # kept per (step, sampler), both held weakly: repeated calls compile once
    run_chunk = compiled(
        (learner.step, task_sampler),
        (chunk_size, with_key),
        lambda step_ref, sampler_ref: _chunk_runner(step_ref, sampler_ref, chunk_size, with_key),
    )
    base_key = jax.random.PRNGKey(seed)
    # a resumed state continues the task stream where it stopped
    first = jnp.asarray(state.count, jnp.int32)
    stop = jnp.asarray(num_steps, jnp.int32)

    from tqdm.auto import tqdm

    records: list[dict[str, np.ndarray]] = []
    with tqdm(total=num_steps, disable=not progress_bar, desc="meta-train") as bar:
        for start in range(0, num_steps, chunk_size):
            state, metrics = run_chunk(state, base_key, jnp.asarray(start, jnp.int32), first, stop)
            metrics = jax.tree.map(np.asarray, metrics)
            records.append(metrics)
            done = min(chunk_size, num_steps - start)
            bar.update(done)
            recent = metrics["loss"][:done]
            recent = recent[np.isfinite(recent)]
            bar.set_postfix(loss=f"{float(recent.mean()):.4g}" if recent.size else "nan")
    history = {k: np.concatenate([r[k] for r in records])[:num_steps] for k in records[0]}
    _warn_if_not_finite(state, history)
    return state, history


def _warn_if_not_finite(state: MetaState, history: dict[str, np.ndarray]) -> None:
    """A FitWarning naming the first outer step whose loss was not finite, and whether the
    returned meta-parameters are: training never hands back NaN without saying so."""
    loss = history.get("loss")
    bad_steps = np.flatnonzero(~np.isfinite(loss)) if loss is not None else np.array([], int)
    leaves = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    bad_params = any(
        np.issubdtype(x.dtype, np.inexact) and not np.all(np.isfinite(x)) for x in leaves
    )
    if bad_steps.size or bad_params:
        first = f"first at step {int(bad_steps[0])}, " if bad_steps.size else ""
        what = (
            "the returned meta-parameters are NOT finite"
            if bad_params
            else ("the returned meta-parameters are finite")
        )
        warnings.warn(
            f"train: {bad_steps.size} of {loss.size if loss is not None else 0} outer steps "
            f"had a non-finite loss ({first}{what}); lower the outer learning rate or clip "
            "the meta-gradient",
            FitWarning,
            stacklevel=3,
        )
