"""The average-risk (pooled, "pretrained") baseline as a meta-learner.

``average_risk`` ignores the task structure: each outer step is one optimizer step on the
mean loss over the meta-batch's tasks, support and query data alike, at the parameters
themselves (no inner loop). Its fixed point is the minimiser of the average task loss,
the empirical-risk (ERM) optimum of domain generalisation and the "pretrained" network of
the MAML paper; on quadratic tasks it is
:func:`bayesmeta.meta.quadratic.average_loss_optimum`. It shares the
``(init, step, adapt)`` interface of :mod:`bayesmeta.meta.learners`, so it trains with
:func:`bayesmeta.meta.train` and fine-tunes with ``adapt`` (plain gradient descent), and
compares with MAML in one loop.

>>> import jax.numpy as jnp, optax, bayesmeta as bm
>>> loss = lambda p, b: 0.5 * jnp.sum((p - b) ** 2)  # a task's optimum is its data point
>>> data = jnp.array([[1.0], [3.0]])  # two tasks
>>> sampler = lambda key: {"support": data, "query": data}
>>> learner = bm.meta.average_risk(loss, optax.sgd(0.5))
>>> state, _ = bm.meta.train(learner, jnp.zeros(()), sampler, 50, progress_bar=False)
>>> round(float(state.params), 4)  # the mean of the two optima
2.0
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from bayesmeta.meta.learners import (
    MetaInfo,
    MetaLearner,
    MetaState,
    _check_int,
    _check_loss_fn,
    _check_optimizer,
    _check_rate,
    _check_task_batch,
    _init_fn,
    _plain_adapt,
)

__all__ = ["average_risk"]


def average_risk(
    loss_fn: Any,
    optimizer: optax.GradientTransformation | None = None,
    *,
    inner_lr: Any = 0.01,
    num_inner_steps: int = 1,
) -> MetaLearner:
    """Average-risk minimisation (pooled training, the "pretrained" baseline).

    ``step`` takes one optimizer step on
    ``L(theta) = 1/(2B) sum_b [loss_fn(theta, support_b) + loss_fn(theta, query_b)]``
    (no adaptation inside the objective); ``adapt`` fine-tunes by plain gradient descent
    like every other learner.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` for one task.
      optimizer: optax optimizer (default ``optax.adam(1e-3)``).
      inner_lr: step size of ``adapt`` (fine-tuning); not used by ``step``.
      num_inner_steps: default number of ``adapt`` steps.

    Returns:
      a :class:`~bayesmeta.meta.MetaLearner`; ``step``'s :class:`~bayesmeta.meta.MetaInfo`
      reports ``loss = loss_before`` (the pooled loss at the parameters before the step) and
      ``task_losses`` per task.

    >>> import jax.numpy as jnp, optax, bayesmeta as bm
    >>> loss = lambda p, b: 0.5 * jnp.sum((p - b) ** 2)
    >>> learner = bm.meta.average_risk(loss, optax.sgd(1.0), inner_lr=0.5)
    >>> data = jnp.array([[1.0], [3.0]])
    >>> state, info = learner.step(learner.init(jnp.zeros(())), {"support": data, "query": data})
    >>> round(float(state.params), 4), round(float(info.loss), 4)  # one step to the mean
    (2.0, 2.5)
    >>> round(float(learner.adapt(state, jnp.array([4.0]))), 4)  # 2 + 0.5 * (4 - 2)
    3.0
    """
    _check_loss_fn(loss_fn)
    optimizer = _check_optimizer(optimizer)
    _check_rate("inner_lr", inner_lr)
    _check_int("num_inner_steps", num_inner_steps, 1)

    def step(state: MetaState, task_batch: Any) -> tuple[MetaState, MetaInfo]:
        _check_task_batch(task_batch)

        def pooled(params):
            per_task = jax.vmap(loss_fn, in_axes=(None, 0))
            losses = 0.5 * (
                per_task(params, task_batch["support"]) + per_task(params, task_batch["query"])
            )
            return jnp.mean(losses), losses

        (loss, losses), grads = jax.value_and_grad(pooled, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
        return MetaState(params, opt_state, state.count + 1), MetaInfo(loss, loss, losses, norm)

    return MetaLearner(_init_fn(optimizer), step, _plain_adapt(loss_fn, inner_lr, num_inner_steps))
