"""Hypergradients: derivatives of a post-adaptation loss with respect to the inner
learning rate, and of a bi-level objective through the implicit function theorem.

For ``k`` inner steps of size ``alpha`` (scalar or per-parameter) from ``theta``,

    F(alpha) = 1/B sum_b L^q_b(phi_b(alpha)),   phi_b = GD_k(theta; L^s_b, alpha),

and ``dF/dalpha`` is obtained by differentiating through the ``lax.scan`` inner loop.
:func:`learn_inner_lr` descends it (the learned rate matches the closed-form best rate of
:func:`bayesmeta.meta.quadratic.best_inner_lr` on quadratic families).

>>> import jax.numpy as jnp, bayesmeta as bm
>>> q = bm.meta.quadratic
>>> batch = q.task_batch(jnp.stack([jnp.eye(2), 3 * jnp.eye(2)]), jnp.ones((2, 2)))
>>> g = bm.meta.inner_lr_hypergradient(q.loss, jnp.zeros(2), 0.1, batch, num_inner_steps=1)
>>> bool(g < 0)  # a larger rate would help here
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from bayesmeta._checks import check_seed
from bayesmeta.meta._inner import _check_inner_lr, _tree_sqnorm, cg_solve, inner_loop
from bayesmeta.meta.learners import (
    MetaInfo,
    MetaLearner,
    MetaState,
    _check_int,
    _check_loss_fn,
    _check_optimizer,
    _check_positive,
    _check_task_batch,
    _init_fn,
    _params_of,
    _query_losses,
    build_maml_loss,
)
from bayesmeta.meta.train import train

__all__ = [
    "post_adaptation_loss",
    "inner_lr_hypergradient",
    "inner_lr_learner",
    "learn_inner_lr",
    "implicit_hypergradient",
    "unrolled_hypergradient",
]

PyTree = Any


def post_adaptation_loss(
    loss_fn: Callable,
    params: PyTree,
    inner_lr: PyTree,
    task_batch: Mapping,
    *,
    num_inner_steps: int,
) -> jax.Array:
    """Mean query loss after ``num_inner_steps`` inner steps of size ``inner_lr``.

    >>> import jax.numpy as jnp, optax, bayesmeta as bm
    >>> loss = lambda p, b: 0.5 * jnp.sum((p - b) ** 2)  # a task's optimum is its data point
    >>> data = jnp.array([[1.0], [3.0]])  # two tasks, one point each
    >>> batch = {"support": data, "query": data}
    >>> f = bm.meta.post_adaptation_loss(loss, jnp.zeros(()), 0.5, batch, num_inner_steps=1)
    >>> round(float(f), 4)  # mean of 1/2 (1 - 0.5)^2 b^2
    0.625
    """
    _check_task_batch(task_batch)
    _check_inner_lr(inner_lr, params)
    meta_loss = build_maml_loss(loss_fn, num_inner_steps=num_inner_steps)
    return meta_loss(params, task_batch, inner_lr)[0]


def inner_lr_hypergradient(
    loss_fn: Callable,
    params: PyTree,
    inner_lr: PyTree,
    task_batch: Mapping,
    *,
    num_inner_steps: int,
) -> PyTree:
    """``d/d alpha`` of :func:`post_adaptation_loss` (same structure as ``inner_lr``).

    >>> import jax.numpy as jnp, optax, bayesmeta as bm
    >>> loss = lambda p, b: 0.5 * jnp.sum((p - b) ** 2)  # a task's optimum is its data point
    >>> data = jnp.array([[1.0], [3.0]])  # two tasks, one point each
    >>> batch = {"support": data, "query": data}
    >>> g = bm.meta.inner_lr_hypergradient(loss, jnp.zeros(()), 0.5, batch, num_inner_steps=1)
    >>> round(float(g), 4)  # d/da of 1/2 (1 - a)^2 mean(b^2) = -(1 - a) * 5
    -2.5
    """
    inner_lr = jax.tree.map(jnp.asarray, inner_lr)
    return jax.grad(
        lambda lr: post_adaptation_loss(
            loss_fn, params, lr, task_batch, num_inner_steps=num_inner_steps
        )
    )(inner_lr)


def inner_lr_learner(
    loss_fn: Callable,
    params: PyTree,
    optimizer: optax.GradientTransformation | None = None,
    *,
    num_inner_steps: int = 1,
) -> MetaLearner:
    """A :class:`MetaLearner` whose meta-parameter is the inner learning rate itself (a
    scalar or a per-parameter pytree), with the initialisation ``params`` held fixed.

    ``step`` descends the hypergradient of the post-adaptation loss; ``adapt(state,
    support)`` adapts ``params`` with the learned rate. Train it with
    :func:`bayesmeta.meta.train`, passing the initial rate as the parameters.

    >>> import jax.numpy as jnp, optax, bayesmeta as bm
    >>> loss = lambda p, b: 0.5 * jnp.sum((p - b) ** 2)  # a task's optimum is its data point
    >>> data = jnp.array([[1.0], [3.0]])  # two tasks, one point each
    >>> batch = {"support": data, "query": data}
    >>> learner = bm.meta.inner_lr_learner(loss, jnp.zeros(()), optax.sgd(0.1))
    >>> state, info = learner.step(learner.init(jnp.asarray(0.5)), batch)
    >>> round(float(state.params), 4)  # 0.5 - 0.1 * (-2.5)
    0.75
    """
    _check_loss_fn(loss_fn)
    optimizer = _check_optimizer(optimizer)
    _check_int("num_inner_steps", num_inner_steps, 1)
    meta_loss = build_maml_loss(loss_fn, num_inner_steps=num_inner_steps)
    params = jax.tree.map(jnp.asarray, params)

    def step(state: MetaState, task_batch: Mapping):
        _check_task_batch(task_batch)
        _check_inner_lr(state.params, params)
        (loss, task_losses), grads = jax.value_and_grad(
            lambda lr: meta_loss(params, task_batch, lr), has_aux=True
        )(state.params)
        before = jnp.mean(_query_losses(loss_fn, params, task_batch))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_lr = optax.apply_updates(state.params, updates)
        new_lr = jax.tree.map(lambda n, o: n.astype(o.dtype), new_lr, state.params)
        info = MetaInfo(loss, before, task_losses, jnp.sqrt(_tree_sqnorm(grads)))
        return MetaState(new_lr, opt_state, state.count + 1), info

    def adapt(lr_or_state, support_batch, num_steps=None):
        lr = _params_of(lr_or_state)
        steps = num_inner_steps if num_steps is None else _check_int("num_steps", num_steps, 0)
        return inner_loop(loss_fn, params, support_batch, inner_lr=lr, num_steps=steps)[0]

    return MetaLearner(_init_fn(optimizer), step, adapt)


def learn_inner_lr(
    loss_fn: Callable,
    params: PyTree,
    tasks: Mapping | Callable[[jax.Array], Mapping],
    *,
    init_lr: PyTree,
    num_inner_steps: int = 1,
    optimizer: optax.GradientTransformation | None = None,
    num_steps: int = 500,
    seed: int = 0,
    progress_bar: bool = False,
) -> tuple[PyTree, dict]:
    """Learn the inner learning rate by hypergradient descent, ``params`` fixed.

    Args:
      loss_fn: one task's loss.
      params: the (fixed) initialisation the inner loop starts from.
      tasks: a fixed task batch (full-batch descent) or a sampler ``key -> task_batch``.
      init_lr: starting rate: a scalar, or a pytree like ``params`` (per-parameter).
      num_inner_steps, optimizer, num_steps, seed, progress_bar: as in
        :func:`bayesmeta.meta.train` (optimizer default ``optax.adam(1e-3)``).

    Returns:
      ``(inner_lr, history)``.

    >>> import jax.numpy as jnp, optax, bayesmeta as bm
    >>> loss = lambda p, b: 0.5 * jnp.sum((p - b) ** 2)  # a task's optimum is its data point
    >>> data = jnp.array([[1.0], [3.0]])  # two tasks, one point each
    >>> batch = {"support": data, "query": data}
    >>> lr, history = bm.meta.learn_inner_lr(
    ...     loss, jnp.zeros(()), batch, init_lr=0.5, optimizer=optax.sgd(0.1), num_steps=40
    ... )
    >>> round(float(lr), 4)  # one step of size 1 lands on every task's optimum
    1.0
    """

    seed = check_seed(seed)
    if isinstance(tasks, Mapping):
        _check_task_batch(tasks, "tasks")
        fixed = tasks

        def sampler(key):
            return fixed
    elif callable(tasks):
        sampler = tasks
    else:
        raise ValueError("tasks: expected a task batch or a sampler key -> task_batch")
    init_lr = jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.result_type(float)), init_lr)
    _check_inner_lr(init_lr, params)
    learner = inner_lr_learner(loss_fn, params, optimizer, num_inner_steps=num_inner_steps)
    state, history = train(
        learner, init_lr, sampler, num_steps, seed=seed, progress_bar=progress_bar
    )
    return state.params, history


def implicit_hypergradient(
    inner_loss: Callable[[PyTree, PyTree], jax.Array],
    outer_loss: Callable[[PyTree, PyTree], jax.Array],
    solution: PyTree,
    hyperparams: PyTree,
    *,
    num_cg_iters: int = 20,
) -> PyTree:
    """Gradient of ``F(h) = outer_loss(w*(h), h)`` where ``w*(h) = argmin_w inner_loss(w, h)``.

    By the implicit function theorem (``G`` = inner, ``F`` = outer, at ``w = w*``):

        dF/dh = d_h F - (d_h d_w G)^T [d_w d_w G]^-1 d_w F,

    with the linear solve done by conjugate gradients on Hessian-vector products (the inner
    Hessian must be positive definite at ``solution``, which should be a minimiser).

    Args:
      inner_loss: ``G(w, h) -> scalar``.
      outer_loss: ``F(w, h) -> scalar``.
      solution: ``w*`` (any pytree), e.g. from an inner optimisation.
      hyperparams: ``h`` (any pytree).
      num_cg_iters: conjugate-gradient iterations (exact after ``dim(w)`` of them).

    Returns:
      a pytree like ``hyperparams``.

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> inner = lambda w, h: 0.5 * (w - 1.0) ** 2 + 0.5 * h * w**2  # w*(h) = 1 / (1 + h)
    >>> outer = lambda w, h: 0.5 * w**2
    >>> g = bm.meta.implicit_hypergradient(inner, outer, jnp.asarray(0.5), jnp.asarray(1.0))
    >>> round(float(g), 4)  # d/dh 1 / (2 (1 + h)^2) = -1 / (1 + h)^3 at h = 1
    -0.125
    """
    _check_int("num_cg_iters", num_cg_iters, 1)
    solution = jax.lax.stop_gradient(solution)
    flat_w, unravel = ravel_pytree(solution)
    grad_w_f, grad_h_f = jax.grad(outer_loss, argnums=(0, 1))(solution, hyperparams)
    flat_gw, _ = ravel_pytree(grad_w_f)

    def grad_w_g(flat, h):
        return ravel_pytree(jax.grad(inner_loss)(unravel(flat), h))[0]

    def hvp(v):
        return jax.jvp(lambda f: grad_w_g(f, hyperparams), (flat_w,), (v,))[1]

    v = cg_solve(hvp, flat_gw, num_cg_iters)
    cross = jax.grad(lambda h: jnp.vdot(grad_w_g(flat_w, h), v))(hyperparams)
    return jax.tree.map(lambda a, b: a - b, grad_h_f, cross)


def unrolled_hypergradient(
    inner_loss: Callable[[PyTree, PyTree], jax.Array],
    outer_loss: Callable[[PyTree, PyTree], jax.Array],
    init: PyTree,
    hyperparams: PyTree,
    *,
    num_steps: int,
    step_size: float,
) -> tuple[PyTree, PyTree]:
    """Gradient of ``F(h) = outer_loss(w_T(h), h)`` where ``w_T(h)`` is ``num_steps``
    gradient-descent steps of size ``step_size`` on ``inner_loss(., h)`` from ``init``,
    differentiated through the inner loop (a ``lax.scan``, reverse mode).

    The counterpart of :func:`implicit_hypergradient`: both agree when the inner loop has
    converged to the minimiser (memory grows with ``num_steps``; the implicit one does not).

    Args:
      inner_loss: ``G(w, h) -> scalar``.
      outer_loss: ``F(w, h) -> scalar``.
      init: ``w_0`` (any pytree), not differentiated.
      hyperparams: ``h`` (any pytree).
      num_steps: inner gradient steps ``T >= 1``.
      step_size: inner step size (positive; may be traced, e.g. under ``jax.jit``).

    Returns:
      ``(grad, w_T)``: a pytree like ``hyperparams`` and the final inner iterate.

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> inner = lambda w, h: 0.5 * (w - 1.0) ** 2 + 0.5 * h * w**2  # w*(h) = 1 / (1 + h)
    >>> outer = lambda w, h: 0.5 * w**2
    >>> g, w = bm.meta.unrolled_hypergradient(
    ...     inner, outer, jnp.asarray(0.0), jnp.asarray(1.0), num_steps=60, step_size=0.5
    ... )
    >>> round(float(g), 4), round(float(w), 4)  # as implicit_hypergradient: -1 / (1 + h)^3
    (-0.125, 0.5)
    """
    _check_int("num_steps", num_steps, 1)
    if not isinstance(step_size, jax.core.Tracer):  # a traced rate is checked by its caller
        _check_positive("step_size", step_size)
    init = jax.lax.stop_gradient(jax.tree.map(jnp.asarray, init))

    def objective(h):
        w, _ = inner_loop(inner_loss, init, h, inner_lr=step_size, num_steps=num_steps)
        return outer_loss(w, h), w

    grad, w = jax.grad(objective, has_aux=True)(hyperparams)
    return grad, w
