"""Meta-learning pitfalls, measured: inner-loop overfitting and meta-overfitting.

* :func:`inner_loop_curve`: the query loss after ``0 .. max_steps`` inner steps. A curve
  that first falls and then rises again (a U) means the inner loop overfits the support
  set; the bottom of the U is the recommended number of steps. The U is only declared when
  both the fall and the rise exceed twice the standard error of the paired per-task
  differences.
* :func:`meta_overfitting_gap`: meta-train a learner on a fixed, finite set of tasks and
  follow the post-adaptation query loss on those tasks and on held-out tasks; a growing
  gap is meta-overfitting.

Both have a ``plot_*`` companion (matplotlib is imported only there).

>>> import jax.numpy as jnp, bayesmeta as bm
>>> q = bm.meta.quadratic
>>> batch = q.task_batch(jnp.stack([jnp.eye(2)] * 3), jnp.arange(6.0).reshape(3, 2))
>>> curve = bm.meta.diagnostics.inner_loop_curve(q.loss, jnp.zeros(2), batch,
...                                               inner_lr=0.5, max_steps=4)
>>> curve.recommended_steps, curve.u_shaped
(4, False)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayesmeta._checks import check_seed
from bayesmeta.meta._compiled import compiled
from bayesmeta.meta._inner import _check_inner_lr, inner_loop
from bayesmeta.meta.learners import (
    MetaState,
    _check_int,
    _check_loss_fn,
    _check_task_batch,
    _params_of,
)
from bayesmeta.meta.train import train

__all__ = [
    "InnerLoopCurve",
    "inner_loop_curve",
    "plot_inner_loop_curve",
    "OverfittingGap",
    "meta_overfitting_gap",
    "plot_meta_overfitting_gap",
]


class InnerLoopCurve(NamedTuple):
    """Query loss against the number of inner steps.

    Fields (``S = max_steps``, ``B`` tasks):
      steps              # shape=(S+1,): 0, 1, ..., S
      query_loss         # shape=(S+1,): mean query loss over tasks
      query_loss_se      # shape=(S+1,): its standard error over tasks
      support_loss       # shape=(S+1,): mean support (inner) objective
      task_query_loss    # shape=(B, S+1)
      recommended_steps  # int: argmin of query_loss
      u_shaped           # bool: falls then rises, both by more than 2 paired SEs

    >>> import numpy as np, bayesmeta as bm
    >>> curve = bm.meta.diagnostics.InnerLoopCurve(
    ...     steps=np.arange(3), query_loss=np.array([1.0, 0.5, 0.7]),
    ...     query_loss_se=np.full(3, 0.05), support_loss=np.array([1.0, 0.4, 0.2]),
    ...     task_query_loss=np.ones((2, 3)), recommended_steps=1, u_shaped=True,
    ... )
    >>> int(np.argmin(curve.query_loss)) == curve.recommended_steps
    True
    """

    steps: np.ndarray
    query_loss: np.ndarray
    query_loss_se: np.ndarray
    support_loss: np.ndarray
    task_query_loss: np.ndarray
    recommended_steps: int
    u_shaped: bool


def _paired_se(a: np.ndarray, b: np.ndarray) -> float:
    diff = a - b
    if diff.shape[0] < 2:
        return 0.0
    return float(np.std(diff, ddof=1) / np.sqrt(diff.shape[0]))


def _curve_fn(loss_ref: Callable, max_steps: int, with_prox: bool) -> Callable:
    """The jitted curve of ``loss_ref()`` (a weak reference when kept: see ``_compiled``)."""

    def one(params, task, inner_lr, prox_weight):
        loss_fn = loss_ref()

        def track(p):
            return loss_fn(p, task["query"]), loss_fn(p, task["support"])

        _, (_, (query, support)) = inner_loop(
            loss_fn,
            params,
            task["support"],
            inner_lr=inner_lr,
            num_steps=max_steps,
            prox_weight=prox_weight if with_prox else None,
            track_fn=track,
        )
        return query, support

    return jax.jit(jax.vmap(one, in_axes=(None, 0, None, None)))


def inner_loop_curve(
    loss_fn: Callable,
    params: Any,
    task_batch: Mapping,
    *,
    inner_lr: Any,
    max_steps: int,
    prox_weight: float | None = None,
) -> InnerLoopCurve:
    """Query loss after ``0 .. max_steps`` inner steps from ``params`` (or a ``MetaState``),
    averaged over the tasks of ``task_batch`` (``{"support", "query"}`` with a leading task
    axis). ``inner_lr`` is a scalar or a per-parameter pytree; ``prox_weight`` adds iMAML's
    proximal term.

    >>> import jax.numpy as jnp, numpy as np, bayesmeta as bm
    >>> q = bm.meta.quadratic
    >>> # support optimum 2, query optimum 1: steps of 0.5 go 0 -> 1 -> 1.5 -> 1.75 -> 1.875
    >>> batch = q.task_batch(
    ...     jnp.stack([jnp.eye(1)] * 3), jnp.full((3, 1), 2.0), query_optima=jnp.full((3, 1), 1.0)
    ... )
    >>> curve = bm.meta.diagnostics.inner_loop_curve(
    ...     q.loss, jnp.zeros(1), batch, inner_lr=0.5, max_steps=4
    ... )
    >>> [round(float(v), 3) for v in curve.query_loss]
    [0.5, 0.0, 0.125, 0.281, 0.383]
    >>> curve.recommended_steps, curve.u_shaped  # more steps overfit the support set
    (1, True)
    """
    _check_loss_fn(loss_fn)
    _check_int("max_steps", max_steps, 1)
    _check_task_batch(task_batch)
    params = jax.tree.map(jnp.asarray, _params_of(params))
    _check_inner_lr(inner_lr, params)
    with_prox = prox_weight is not None
    # kept while loss_fn lives (held weakly): repeated curves of one loss compile once
    fn = compiled(
        (loss_fn,), (max_steps, with_prox), lambda ref: _curve_fn(ref, max_steps, with_prox)
    )
    query, support = fn(params, task_batch, inner_lr, prox_weight)
    query = np.asarray(query)  # (B, S+1)
    support = np.asarray(support)
    mean = query.mean(axis=0)
    se = query.std(axis=0, ddof=1) / np.sqrt(query.shape[0]) if query.shape[0] > 1 else 0 * mean
    best = int(np.argmin(mean))
    u_shaped = False
    if 0 < best < max_steps:
        fall = mean[0] - mean[best]
        rise = mean[-1] - mean[best]
        u_shaped = bool(
            fall > 2 * _paired_se(query[:, 0], query[:, best])
            and rise > 2 * _paired_se(query[:, -1], query[:, best])
        )
    return InnerLoopCurve(
        np.arange(max_steps + 1), mean, se, support.mean(axis=0), query, best, u_shaped
    )


def plot_inner_loop_curve(curve: InnerLoopCurve, ax: Any = None, label: str | None = None):
    """Mean query loss with a 95% band against the number of inner steps; marks the
    recommended number of steps. Returns the matplotlib axes.

    >>> import numpy as np, bayesmeta as bm
    >>> curve = bm.meta.diagnostics.InnerLoopCurve(
    ...     steps=np.arange(3), query_loss=np.array([1.0, 0.5, 0.7]),
    ...     query_loss_se=np.full(3, 0.05), support_loss=np.array([1.0, 0.4, 0.2]),
    ...     task_query_loss=np.ones((2, 3)), recommended_steps=1, u_shaped=True,
    ... )
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> ax = bm.meta.diagnostics.plot_inner_loop_curve(curve)
    >>> ax.get_title()
    'inner-loop curve (U-shaped); best = 1 steps'
    >>> import matplotlib.pyplot as plt; plt.close(ax.figure)
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    line = ax.plot(curve.steps, curve.query_loss, marker="o", ms=3, label=label or "query")[0]
    ax.fill_between(
        curve.steps,
        curve.query_loss - 1.96 * curve.query_loss_se,
        curve.query_loss + 1.96 * curve.query_loss_se,
        color=line.get_color(),
        alpha=0.2,
    )
    ax.plot(
        curve.steps,
        curve.support_loss,
        ls="--",
        color=line.get_color(),
        alpha=0.6,
        label=(label + " support") if label else "support",
    )
    ax.axvline(curve.recommended_steps, color="grey", ls=":", lw=1)
    ax.set_xlabel("inner steps")
    ax.set_ylabel("loss")
    title = "inner-loop curve" + (" (U-shaped)" if curve.u_shaped else "")
    ax.set_title(f"{title}; best = {curve.recommended_steps} steps")
    ax.legend(frameon=False)
    return ax


class OverfittingGap(NamedTuple):
    """Post-adaptation query loss on meta-train and held-out tasks during meta-training.

    Fields (``E`` evaluations):
      steps       # shape=(E,): outer steps taken at each evaluation
      train_loss  # shape=(E,): mean over the meta-train tasks
      test_loss   # shape=(E,): mean over the held-out tasks
      train_se    # shape=(E,)
      test_se     # shape=(E,)
      gap         # shape=(E,): test_loss - train_loss
      state       # the final MetaState

    >>> import numpy as np, bayesmeta as bm
    >>> gap = bm.meta.diagnostics.OverfittingGap(
    ...     steps=np.array([0, 10, 20]), train_loss=np.array([1.0, 0.4, 0.2]),
    ...     test_loss=np.array([1.0, 0.6, 0.7]), train_se=np.full(3, 0.05),
    ...     test_se=np.full(3, 0.05), gap=np.array([0.0, 0.2, 0.5]), state=None,
    ... )
    >>> np.allclose(gap.gap, gap.test_loss - gap.train_loss)
    True
    """

    steps: np.ndarray
    train_loss: np.ndarray
    test_loss: np.ndarray
    train_se: np.ndarray
    test_se: np.ndarray
    gap: np.ndarray
    state: Any


def meta_overfitting_gap(
    learner: Any,
    loss_fn: Callable,
    params: Any,
    train_tasks: Mapping,
    test_tasks: Mapping,
    *,
    num_steps: int,
    meta_batch_size: int,
    eval_every: int,
    seed: int = 0,
    progress_bar: bool = False,
) -> OverfittingGap:
    """Meta-train ``learner`` on the finite pool ``train_tasks`` (meta-batches drawn
    without replacement within a batch) and evaluate ``loss_fn(learner.adapt(params,
    support), query)`` on every meta-train and held-out task every ``eval_every`` steps.

    ``train_tasks``/``test_tasks`` are task batches (``{"support", "query"}``, leading task
    axis). ``learner.adapt`` must return parameters (MAML, Reptile, iMAML, Meta-SGD).

    >>> import jax.numpy as jnp, optax, bayesmeta as bm
    >>> q = bm.meta.quadratic
    >>> train_tasks = q.task_batch(jnp.stack([jnp.eye(1)] * 4), jnp.arange(4.0).reshape(4, 1))
    >>> held_out = q.task_batch(jnp.stack([jnp.eye(1)] * 2), jnp.array([[0.5], [2.5]]))
    >>> learner = bm.meta.maml(q.loss, optax.sgd(0.5), inner_lr=0.5)
    >>> gap = bm.meta.diagnostics.meta_overfitting_gap(
    ...     learner, q.loss, jnp.zeros(1), train_tasks, held_out,
    ...     num_steps=20, meta_batch_size=2, eval_every=10,
    ... )
    >>> gap.steps.tolist(), bool(gap.test_loss[-1] < gap.test_loss[0])
    ([0, 10, 20], True)
    """

    seed = check_seed(seed)
    _check_loss_fn(loss_fn)
    num_train = _check_task_batch(train_tasks, "train_tasks")
    _check_task_batch(test_tasks, "test_tasks")
    _check_int("num_steps", num_steps, 1)
    _check_int("eval_every", eval_every, 1)
    _check_int("meta_batch_size", meta_batch_size, 1)
    if meta_batch_size > num_train:
        raise ValueError(
            f"meta_batch_size: {meta_batch_size} exceeds the {num_train} meta-train tasks"
        )

    def sampler(key):
        idx = jax.random.choice(key, num_train, (meta_batch_size,), replace=False)
        return jax.tree.map(lambda x: x[idx], train_tasks)

    @jax.jit
    def evaluate(state, tasks):
        p = _params_of(state)
        return jax.vmap(lambda t: loss_fn(learner.adapt(p, t["support"]), t["query"]))(tasks)

    state = params if isinstance(params, MetaState) else learner.init(params)
    steps, tr, te, tr_se, te_se = [], [], [], [], []

    def record(state):
        a = np.asarray(evaluate(state, train_tasks))
        b = np.asarray(evaluate(state, test_tasks))
        steps.append(int(state.count))
        tr.append(a.mean())
        te.append(b.mean())
        tr_se.append(a.std(ddof=1) / np.sqrt(a.size) if a.size > 1 else 0.0)
        te_se.append(b.std(ddof=1) / np.sqrt(b.size) if b.size > 1 else 0.0)

    record(state)
    done = 0
    while done < num_steps:
        chunk = min(eval_every, num_steps - done)
        state, _ = train(
            learner,
            state,
            sampler,
            chunk,
            seed=seed,
            progress_bar=progress_bar,
            chunk_size=eval_every,
        )
        done += chunk
        record(state)
    tr_a, te_a = np.asarray(tr), np.asarray(te)
    return OverfittingGap(
        np.asarray(steps), tr_a, te_a, np.asarray(tr_se), np.asarray(te_se), te_a - tr_a, state
    )


def plot_meta_overfitting_gap(gap: OverfittingGap, ax: Any = None):
    """Meta-train and held-out post-adaptation loss (95% bands) over outer steps.

    >>> import numpy as np, bayesmeta as bm
    >>> gap = bm.meta.diagnostics.OverfittingGap(
    ...     steps=np.array([0, 10, 20]), train_loss=np.array([1.0, 0.4, 0.2]),
    ...     test_loss=np.array([1.0, 0.6, 0.7]), train_se=np.full(3, 0.05),
    ...     test_se=np.full(3, 0.05), gap=np.array([0.0, 0.2, 0.5]), state=None,
    ... )
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> ax = bm.meta.diagnostics.plot_meta_overfitting_gap(gap)
    >>> ax.get_xlabel(), len(ax.get_lines())
    ('outer steps', 2)
    >>> import matplotlib.pyplot as plt; plt.close(ax.figure)
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    for loss, se, name in (
        (gap.train_loss, gap.train_se, "meta-train tasks"),
        (gap.test_loss, gap.test_se, "held-out tasks"),
    ):
        line = ax.plot(gap.steps, loss, marker="o", ms=3, label=name)[0]
        ax.fill_between(
            gap.steps, loss - 1.96 * se, loss + 1.96 * se, color=line.get_color(), alpha=0.2
        )
    ax.set_xlabel("outer steps")
    ax.set_ylabel("post-adaptation query loss")
    ax.set_title("meta-overfitting gap")
    ax.legend(frameon=False)
    return ax
