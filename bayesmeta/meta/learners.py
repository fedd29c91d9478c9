"""Gradient-based meta-learners: MAML, first-order MAML, Reptile, iMAML and Meta-SGD.

Every learner is a :class:`MetaLearner`, a NamedTuple of three pure functions in the style
of optax and blackjax:

    state = learner.init(params)                     # MetaState
    state, info = learner.step(state, task_batch)    # one outer (meta) update; MetaInfo
    phi = learner.adapt(state, support, num_steps=5) # adapt to one task's support data

``loss_fn(params, batch) -> scalar`` is written for *one* task; ``task_batch`` is a pytree
``{"support": S, "query": Q}`` whose leaves carry a leading meta-batch axis ``B`` (tasks
are ``vmap``-ed). All learners share one inner loop (``_inner.inner_loop``, a
``lax.scan``). Each has a low-level ``build_*_step`` taking its hyperparameters at call
time, so that they can be learned too (see :mod:`bayesmeta.meta.hypergrad`). Nothing is
jitted here: wrap ``step`` in ``jax.jit`` (``bayesmeta.meta.train`` does).

Meta-gradients, for task losses ``L^s`` (support) and ``L^q`` (query) and inner map
``phi(theta)`` (``k`` steps of size ``alpha`` on ``L^s`` from ``theta``):

* MAML: ``d/dtheta L^q(phi(theta))`` through the whole inner loop (second order).
* first-order MAML: the same with ``d phi / d theta`` replaced by ``I``.
* Reptile: ``theta - phi(theta)`` used as a gradient (Nichol et al., 2018).
* iMAML: ``phi = argmin L^s(phi) + lam/2 ||phi - theta||^2`` (approximately, by the inner
  loop); gradient ``(I + H/lam)^-1 grad L^q(phi)`` with ``H`` the support Hessian at
  ``phi``, solved by conjugate gradients with Hessian-vector products (Rajeswaran et al.,
  2019).
* Meta-SGD: MAML with per-parameter inner rates ``alpha`` learned with ``theta``
  (Li et al., 2017).

>>> import jax.numpy as jnp, optax, bayesmeta as bm
>>> loss = lambda p, b: jnp.mean((p * b["x"] - b["y"]) ** 2)
>>> learner = bm.meta.maml(loss, optax.sgd(0.1), inner_lr=0.1, num_inner_steps=1)
>>> data = {"x": jnp.ones((4, 3)), "y": jnp.arange(12.0).reshape(4, 3)}
>>> state, info = learner.step(learner.init(jnp.zeros(())), {"support": data, "query": data})
>>> info.loss.shape
()

References: Finn, Abbeel & Levine (2017) Model-Agnostic Meta-Learning; Nichol, Achiam &
Schulman (2018) On First-Order Meta-Learning Algorithms; Rajeswaran, Finn, Kakade & Levine
(2019) Meta-Learning with Implicit Gradients; Li, Zhou, Chen & Li (2017) Meta-SGD.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from bayesmeta.meta._inner import _check_inner_lr, _tree_sqnorm, cg_solve, inner_loop

__all__ = [
    "MetaLearner",
    "MetaState",
    "MetaInfo",
    "MetaSGDParams",
    "maml",
    "reptile",
    "imaml",
    "meta_sgd",
    "build_maml_loss",
    "build_maml_step",
    "build_reptile_step",
    "build_imaml_step",
    "build_meta_sgd_step",
]

PyTree = Any
LossFn = Callable[[PyTree, Any], jax.Array]


class MetaState(NamedTuple):
    """Outer-loop state of a meta-learner (carried from step to step).

    Fields:
      params     # pytree: the meta-parameters (initialisation theta_0; MetaSGDParams for
                 #   Meta-SGD; a GaussianPrior for ABML)
      opt_state  # the outer optax optimizer's state
      count      # shape=(), int32: number of outer steps taken

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> state = bm.meta.maml(lambda p, b: jnp.sum((p - b) ** 2)).init(jnp.zeros(2))
    >>> state.params.shape, int(state.count)
    ((2,), 0)
    """

    params: PyTree
    opt_state: PyTree
    count: jax.Array


class MetaInfo(NamedTuple):
    """Diagnostics of one outer step (never carried forward).

    Fields (``B`` = meta-batch size):
      loss         # shape=(): mean query loss after adaptation
      loss_before  # shape=(): mean query loss at the meta-parameters, before adaptation
      task_losses  # shape=(B,): query loss after adaptation, per task
      grad_norm    # shape=(): Euclidean norm of the meta-gradient

    >>> import bayesmeta as bm
    >>> bm.meta.MetaInfo._fields
    ('loss', 'loss_before', 'task_losses', 'grad_norm')
    """

    loss: jax.Array
    loss_before: jax.Array
    task_losses: jax.Array
    grad_norm: jax.Array


class MetaLearner(NamedTuple):
    """A meta-learner: three pure functions.

    init(params) -> MetaState
    step(state, task_batch) -> (MetaState, MetaInfo)
    adapt(params_or_state, support_batch, num_steps=None) -> adapted parameters

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> learner = bm.meta.reptile(lambda p, b: jnp.sum((p - b) ** 2))
    >>> isinstance(learner, bm.meta.MetaLearner), learner._fields
    (True, ('init', 'step', 'adapt'))
    """

    init: Callable[..., MetaState]
    step: Callable[..., tuple[MetaState, Any]]
    adapt: Callable[..., PyTree]


class MetaSGDParams(NamedTuple):
    """Meta-parameters of Meta-SGD.

    Fields:
      init      # pytree like params: the initialisation theta_0
      inner_lr  # pytree like params: per-parameter inner learning rates alpha

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> learner = bm.meta.meta_sgd(lambda p, b: jnp.sum((p - b) ** 2), inner_lr=0.1)
    >>> state = learner.init(jnp.zeros(2))
    >>> isinstance(state.params, bm.meta.MetaSGDParams)
    True
    >>> [round(float(r), 4) for r in state.params.inner_lr]  # every rate starts at inner_lr
    [0.1, 0.1]
    """

    init: PyTree
    inner_lr: PyTree


# ----------------------------------------------------------------------------- checks


def _check_loss_fn(loss_fn: Any) -> None:
    if not callable(loss_fn):
        raise ValueError(f"loss_fn: expected a callable loss_fn(params, batch), got {loss_fn!r}")


def _check_optimizer(optimizer: Any) -> optax.GradientTransformation:
    if optimizer is None:
        return optax.adam(1e-3)
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise ValueError(
            f"optimizer: expected an optax GradientTransformation, got {type(optimizer).__name__}"
        )
    return optimizer


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


def _check_positive(name: str, value: Any) -> None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")


def _check_rate(name: str, value: Any) -> None:
    leaves = jax.tree.leaves(value)
    if len(leaves) == 1 and jnp.ndim(leaves[0]) == 0:
        _check_positive(name, leaves[0])


def _check_task_batch(
    task_batch: Any,
    name: str = "task_batch",
    parts: tuple[str, str] = ("support", "query"),
    expected: str = "keys 'support' and 'query' (each a pytree with a leading meta-batch axis)",
) -> int:
    """ValueError unless ``task_batch`` is a mapping holding ``parts`` (by default
    ``{"support": ..., "query": ...}``) with a common leading meta-batch axis; returns the
    meta-batch size. ``expected`` describes the keys in the message."""
    if not isinstance(task_batch, Mapping) or not set(parts) <= set(task_batch):
        got = sorted(task_batch) if isinstance(task_batch, Mapping) else type(task_batch).__name__
        raise ValueError(f"{name}: expected a mapping with {expected}, got {got}")
    sizes = set()
    for part in parts:
        leaves = jax.tree.leaves(task_batch[part])
        if not leaves:
            raise ValueError(f"{name}['{part}']: has no array leaves")
        for leaf in leaves:
            if jnp.ndim(leaf) < 1:
                raise ValueError(
                    f"{name}['{part}']: every leaf needs a leading meta-batch axis, got a scalar"
                )
            sizes.add(jnp.shape(leaf)[0])
    if len(sizes) != 1:
        raise ValueError(
            f"{name}: leaves disagree on the meta-batch size (leading axis): {sorted(sizes)}"
        )
    size = sizes.pop()
    if size < 1:
        raise ValueError(f"{name}: the meta-batch is empty")
    return size


def _strong(tree: PyTree) -> PyTree:
    """Arrays with concrete (not weak) dtypes, so a carried state keeps one type signature
    and a jitted step never retraces (``jnp.asarray(0.1)`` is weakly typed)."""
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), tree)


def _params_of(params_or_state: Any) -> PyTree:
    return params_or_state.params if isinstance(params_or_state, MetaState) else params_or_state


def _num_steps(num_steps: Any, default: int) -> int:
    if num_steps is None:
        return default
    return _check_int("num_steps", num_steps, 0)


# ----------------------------------------------------------------------------- shared


def _init_fn(optimizer: optax.GradientTransformation) -> Callable[[PyTree], MetaState]:
    def init(params: PyTree) -> MetaState:
        if isinstance(params, MetaState):
            raise ValueError("params: got a MetaState; pass the meta-parameters themselves")
        params = _strong(params)
        return MetaState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    return init


def _apply_update(
    optimizer: optax.GradientTransformation, state: MetaState, grads: PyTree
) -> tuple[MetaState, jax.Array]:
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # keep the dtypes of the carried state fixed (so a jitted step never retraces)
    params = jax.tree.map(lambda new, old: new.astype(old.dtype), params, state.params)
    return MetaState(params, opt_state, state.count + 1), jnp.sqrt(_tree_sqnorm(grads))


def _query_losses(loss_fn: LossFn, params: PyTree, task_batch: Mapping) -> jax.Array:
    return jax.vmap(loss_fn, in_axes=(None, 0))(params, task_batch["query"])


def _finish_step(optimizer, loss_fn, state, task_batch, grads, loss, task_losses, init=None):
    """The tail every learner's step shares: query loss before adapting (at ``init``, the
    initialisation inside ``state.params``, default all of it), the outer update, the Info."""
    init = state.params if init is None else init
    before = jnp.mean(_query_losses(loss_fn, init, task_batch))
    new_state, grad_norm = _apply_update(optimizer, state, grads)
    return new_state, MetaInfo(loss, before, task_losses, grad_norm)


# ----------------------------------------------------------------------------- MAML


def build_maml_loss(
    loss_fn: LossFn, *, num_inner_steps: int, first_order: bool = False
) -> Callable[[PyTree, Mapping, PyTree], tuple[jax.Array, jax.Array]]:
    """The MAML meta-objective as a function of the meta-parameters and the inner rate.

    Returns ``meta_loss(params, task_batch, inner_lr) -> (mean_loss, task_losses)`` with

        mean_loss = 1/B sum_b L^q_b(phi_b),   phi_b = k inner steps of size inner_lr on L^s_b

    differentiable in ``params`` and ``inner_lr`` (scalar or per-parameter pytree).

    >>> import jax.numpy as jnp, optax, bayesmeta as bm
    >>> loss = lambda p, b: 0.5 * jnp.sum((p - b) ** 2)  # a task's optimum is its data point
    >>> data = jnp.array([[1.0], [3.0]])  # two tasks, one point each
    >>> batch = {"support": data, "query": data}
    >>> meta_loss = bm.meta.build_maml_loss(loss, num_inner_steps=1)
    >>> mean, per_task = meta_loss(jnp.zeros(()), batch, 0.5)  # 1/2 (1 - 0.5)^2 b^2
    >>> round(float(mean), 4), [round(float(v), 4) for v in per_task]
    (0.625, [0.125, 1.125])
    """
    _check_loss_fn(loss_fn)
    _check_int("num_inner_steps", num_inner_steps, 0)

    def task_loss(params, inner_lr, task):
        adapted, _ = inner_loop(
            loss_fn,
            params,
            task["support"],
            inner_lr=inner_lr,
            num_steps=num_inner_steps,
            first_order=first_order,
        )
        return loss_fn(adapted, task["query"])

    def meta_loss(params, task_batch, inner_lr):
        losses = jax.vmap(task_loss, in_axes=(None, None, 0))(params, inner_lr, task_batch)
        return jnp.mean(losses), losses

    return meta_loss


def build_maml_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    num_inner_steps: int,
    first_order: bool = False,
) -> Callable[[MetaState, Mapping, PyTree], tuple[MetaState, MetaInfo]]:
    """Low-level MAML step ``step(state, task_batch, inner_lr) -> (state, info)``.

    The meta-gradient is ``grad_theta 1/B sum_b L^q_b(phi_b(theta))`` through the
    ``lax.scan`` inner loop (second order), or first order with ``first_order=True``.

    >>> import jax.numpy as jnp, optax, bayesmeta as bm
    >>> loss = lambda p, b: 0.5 * jnp.sum((p - b) ** 2)  # a task's optimum is its data point
    >>> data = jnp.array([[1.0], [3.0]])  # two tasks, one point each
    >>> batch = {"support": data, "query": data}
    >>> opt = optax.sgd(1.0)
    >>> step = bm.meta.build_maml_step(loss, opt, num_inner_steps=1)
    >>> p = jnp.zeros(())
    >>> state = bm.meta.MetaState(p, opt.init(p), jnp.zeros((), jnp.int32))
    >>> state, info = step(state, batch, 0.5)  # the rate is an argument: it can be learned
    >>> round(float(state.params), 4)  # gradient -(1 - 0.5)^2 mean(b) = -0.5
    0.5
    """
    meta_loss = build_maml_loss(loss_fn, num_inner_steps=num_inner_steps, first_order=first_order)

    def step(state: MetaState, task_batch: Mapping, inner_lr: PyTree):
        _check_task_batch(task_batch)
        _check_inner_lr(inner_lr, state.params)
        (loss, task_losses), grads = jax.value_and_grad(meta_loss, has_aux=True)(
            state.params, task_batch, inner_lr
        )
        return _finish_step(optimizer, loss_fn, state, task_batch, grads, loss, task_losses)

    return step


def _plain_adapt(loss_fn: LossFn, inner_lr: PyTree, num_inner_steps: int) -> Callable:
    def adapt(params_or_state, support_batch, num_steps=None, inner_lr=inner_lr):
        params = _params_of(params_or_state)
        _check_inner_lr(inner_lr, params)
        phi, _ = inner_loop(
            loss_fn,
            params,
            support_batch,
            inner_lr=inner_lr,
            num_steps=_num_steps(num_steps, num_inner_steps),
        )
        return phi

    return adapt


def maml(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation | None = None,
    *,
    inner_lr: float | PyTree = 0.01,
    num_inner_steps: int = 1,
    first_order: bool = False,
) -> MetaLearner:
    """Model-Agnostic Meta-Learning (Finn et al., 2017).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` for one task.
      optimizer: outer optax optimizer (default ``optax.adam(1e-3)``, as in the paper).
      inner_lr: inner step size ``alpha`` (scalar, or a fixed per-parameter pytree).
      num_inner_steps: inner gradient steps ``k`` at meta-training (``adapt`` may use more).
      first_order: drop second-order terms (first-order MAML).

    Returns:
      a :class:`MetaLearner`; ``step`` takes ``task_batch = {"support", "query"}`` with a
      leading meta-batch axis; ``adapt(params_or_state, support, num_steps=None)`` runs
      ``num_steps`` (default ``num_inner_steps``) steps on one task.

    >>> import jax.numpy as jnp, optax, bayesmeta as bm
    >>> loss = lambda p, b: 0.5 * jnp.sum((p - b) ** 2)  # a task's optimum is its data point
    >>> data = jnp.array([[1.0], [3.0]])  # two tasks, one point each
    >>> batch = {"support": data, "query": data}
    >>> learner = bm.meta.maml(loss, optax.sgd(1.0), inner_lr=0.5, num_inner_steps=1)
    >>> state, info = learner.step(learner.init(jnp.zeros(())), batch)
    >>> round(float(state.params), 4)  # meta-gradient -(1 - 0.5)^2 mean(b) = -0.5
    0.5
    >>> round(float(info.loss_before), 4), round(float(info.loss), 4)  # before, after adapting
    (2.5, 0.625)
    >>> round(float(learner.adapt(state, jnp.array([5.0]))), 4)  # 0.5 + 0.5 * (5 - 0.5)
    2.75
    >>> fo = bm.meta.maml(loss, optax.sgd(1.0), inner_lr=0.5, first_order=True)
    >>> round(float(fo.step(fo.init(jnp.zeros(())), batch)[0].params), 4)  # -(1 - 0.5) mean(b)
    1.0
    """
    _check_loss_fn(loss_fn)
    optimizer = _check_optimizer(optimizer)
    _check_int("num_inner_steps", num_inner_steps, 1)
    _check_rate("inner_lr", inner_lr)
    low = build_maml_step(
        loss_fn, optimizer, num_inner_steps=num_inner_steps, first_order=bool(first_order)
    )

    def step(state, task_batch):
        return low(state, task_batch, inner_lr)

    return MetaLearner(_init_fn(optimizer), step, _plain_adapt(loss_fn, inner_lr, num_inner_steps))


# ----------------------------------------------------------------------------- Reptile


def build_reptile_step(
    loss_fn: LossFn, optimizer: optax.GradientTransformation, *, num_inner_steps: int
) -> Callable[[MetaState, Mapping, PyTree], tuple[MetaState, MetaInfo]]:
    """Low-level Reptile step ``step(state, task_batch, inner_lr) -> (state, info)``.

    The outer "gradient" is ``1/B sum_b (theta - phi_b)`` with ``phi_b`` reached by
    ``num_inner_steps`` steps on task ``b``'s support loss; with ``optax.sgd(eps)`` this is
    Reptile's interpolation ``theta <- theta + eps (mean phi - theta)``.

    >>> import jax.numpy as jnp, optax, bayesmeta as bm
    >>> loss = lambda p, b: 0.5 * jnp.sum((p - b) ** 2)  # a task's optimum is its data point
    >>> data = jnp.array([[1.0], [3.0]])  # two tasks, one point each
    >>> batch = {"support": data, "query": data}
    >>> opt = optax.sgd(1.0)
    >>> step = bm.meta.build_reptile_step(loss, opt, num_inner_steps=2)
    >>> p = jnp.zeros(())
    >>> state, info = step(bm.meta.MetaState(p, opt.init(p), jnp.zeros((), jnp.int32)), batch, 0.5)
    >>> round(float(state.params), 4)  # mean(phi) = (1 - 0.5^2) mean(b)
    1.5
    """
    _check_loss_fn(loss_fn)
    _check_int("num_inner_steps", num_inner_steps, 1)

    def task_direction(params, inner_lr, task):
        phi, _ = inner_loop(
            loss_fn, params, task["support"], inner_lr=inner_lr, num_steps=num_inner_steps
        )
        direction = jax.tree.map(lambda a, b: a - b, params, phi)
        return direction, loss_fn(phi, task["query"])

    def step(state: MetaState, task_batch: Mapping, inner_lr: PyTree):
        _check_task_batch(task_batch)
        _check_inner_lr(inner_lr, state.params)
        directions, task_losses = jax.vmap(task_direction, in_axes=(None, None, 0))(
            state.params, inner_lr, task_batch
        )
        grads = jax.tree.map(lambda d: jnp.mean(d, axis=0), directions)
        return _finish_step(
            optimizer, loss_fn, state, task_batch, grads, jnp.mean(task_losses), task_losses
        )

    return step


def reptile(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation | None = None,
    *,
    inner_lr: float | PyTree = 0.01,
    num_inner_steps: int = 5,
) -> MetaLearner:
    """Reptile (Nichol et al., 2018): move the initialisation towards adapted parameters.

    ``optimizer`` defaults to ``optax.sgd(0.1)`` (outer step ``eps = 0.1``). The inner loop
    runs on each task's support set; the query set is only used to report losses.

    >>> import jax.numpy as jnp, optax, bayesmeta as bm
    >>> loss = lambda p, b: 0.5 * jnp.sum((p - b) ** 2)  # a task's optimum is its data point
    >>> data = jnp.array([[1.0], [3.0]])  # two tasks, one point each
    >>> batch = {"support": data, "query": data}
    >>> learner = bm.meta.reptile(loss, optax.sgd(1.0), inner_lr=0.5, num_inner_steps=2)
    >>> state, info = learner.step(learner.init(jnp.zeros(())), batch)
    >>> round(float(state.params), 4)  # theta + 1.0 * (mean(phi) - theta), phi = (1 - 0.5^2) b
    1.5
    """
    _check_loss_fn(loss_fn)
    optimizer = optax.sgd(0.1) if optimizer is None else _check_optimizer(optimizer)
    _check_int("num_inner_steps", num_inner_steps, 1)
    _check_rate("inner_lr", inner_lr)
    low = build_reptile_step(loss_fn, optimizer, num_inner_steps=num_inner_steps)

    def step(state, task_batch):
        return low(state, task_batch, inner_lr)

    return MetaLearner(_init_fn(optimizer), step, _plain_adapt(loss_fn, inner_lr, num_inner_steps))


# ----------------------------------------------------------------------------- iMAML


def _implicit_task_grad(
    loss_fn: LossFn,
    params: PyTree,
    task: Mapping,
    inner_lr: PyTree,
    prox_weight: jax.Array,
    num_inner_steps: int,
    num_cg_iters: int,
) -> tuple[PyTree, jax.Array]:
    phi, _ = inner_loop(
        loss_fn,
        params,
        task["support"],
        inner_lr=inner_lr,
        num_steps=num_inner_steps,
        prox_weight=prox_weight,
    )
    phi = jax.lax.stop_gradient(phi)
    query_loss, g_query = jax.value_and_grad(loss_fn)(phi, task["query"])
    flat_phi, unravel = ravel_pytree(phi)
    flat_g, _ = ravel_pytree(g_query)

    def support_grad(flat):
        return ravel_pytree(jax.grad(loss_fn)(unravel(flat), task["support"]))[0]

    def matvec(v):
        hv = jax.jvp(support_grad, (flat_phi,), (v,))[1]
        return v + hv / prox_weight

    solution = cg_solve(matvec, flat_g, num_cg_iters)
    return unravel(solution), query_loss


def build_imaml_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    num_inner_steps: int,
    num_cg_iters: int = 5,
) -> Callable[..., tuple[MetaState, MetaInfo]]:
    """Low-level iMAML step ``step(state, task_batch, inner_lr, prox_weight)``.

    Inner problem ``min_phi L^s(phi) + lam/2 ||phi - theta||^2`` solved approximately by
    ``num_inner_steps`` proximal gradient steps; implicit meta-gradient
    ``(I + H^s(phi)/lam)^-1 grad L^q(phi)`` by ``num_cg_iters`` conjugate-gradient
    iterations with Hessian-vector products (``lam`` = ``prox_weight``).

    >>> import jax.numpy as jnp, optax, bayesmeta as bm
    >>> loss = lambda p, b: 0.5 * jnp.sum((p - b) ** 2)  # a task's optimum is its data point
    >>> data = jnp.array([[1.0], [3.0]])  # two tasks, one point each
    >>> batch = {"support": data, "query": data}
    >>> opt = optax.sgd(1.0)
    >>> step = bm.meta.build_imaml_step(loss, opt, num_inner_steps=1, num_cg_iters=1)
    >>> p = jnp.zeros(())
    >>> state = bm.meta.MetaState(p, opt.init(p), jnp.zeros((), jnp.int32))
    >>> state, info = step(state, batch, 0.5, 1.0)  # inner_lr, prox_weight at call time
    >>> round(float(state.params), 4)
    0.5
    """
    _check_loss_fn(loss_fn)
    _check_int("num_inner_steps", num_inner_steps, 1)
    _check_int("num_cg_iters", num_cg_iters, 1)

    def step(state: MetaState, task_batch: Mapping, inner_lr: PyTree, prox_weight: Any):
        _check_task_batch(task_batch)
        _check_inner_lr(inner_lr, state.params)
        grads, task_losses = jax.vmap(
            lambda task: _implicit_task_grad(
                loss_fn,
                state.params,
                task,
                inner_lr,
                prox_weight,
                num_inner_steps,
                num_cg_iters,
            )
        )(task_batch)
        grads = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
        return _finish_step(
            optimizer, loss_fn, state, task_batch, grads, jnp.mean(task_losses), task_losses
        )

    return step


def imaml(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation | None = None,
    *,
    inner_lr: float | PyTree = 0.01,
    num_inner_steps: int = 10,
    prox_weight: float = 1.0,
    num_cg_iters: int = 5,
) -> MetaLearner:
    """Implicit MAML (Rajeswaran et al., 2019).

    ``prox_weight`` is ``lam``, the precision of the Gaussian prior ``N(theta, I/lam)``
    that the proximal term encodes. ``adapt`` runs the same proximal inner loop.

    >>> import jax.numpy as jnp, optax, bayesmeta as bm
    >>> loss = lambda p, b: 0.5 * jnp.sum((p - b) ** 2)  # a task's optimum is its data point
    >>> data = jnp.array([[1.0], [3.0]])  # two tasks, one point each
    >>> batch = {"support": data, "query": data}
    >>> learner = bm.meta.imaml(
    ...     loss, optax.sgd(1.0), inner_lr=0.5, num_inner_steps=1, prox_weight=1.0
    ... )
    >>> state, info = learner.step(learner.init(jnp.zeros(())), batch)
    >>> # phi = b / 2 (exact after one step at this rate); gradient (1 + 1)^-1 (phi - b) = -b / 4
    >>> round(float(state.params), 4)
    0.5
    >>> round(float(learner.adapt(state, jnp.array([4.5]))), 4)  # (4.5 + 0.5) / 2
    2.5
    """
    _check_loss_fn(loss_fn)
    optimizer = _check_optimizer(optimizer)
    _check_int("num_inner_steps", num_inner_steps, 1)
    _check_rate("inner_lr", inner_lr)
    _check_positive("prox_weight", prox_weight)
    low = build_imaml_step(
        loss_fn, optimizer, num_inner_steps=num_inner_steps, num_cg_iters=num_cg_iters
    )

    def step(state, task_batch):
        return low(state, task_batch, inner_lr, prox_weight)

    def adapt(params_or_state, support_batch, num_steps=None, inner_lr=inner_lr):
        params = _params_of(params_or_state)
        _check_inner_lr(inner_lr, params)
        phi, _ = inner_loop(
            loss_fn,
            params,
            support_batch,
            inner_lr=inner_lr,
            num_steps=_num_steps(num_steps, num_inner_steps),
            prox_weight=prox_weight,
        )
        return phi

    return MetaLearner(_init_fn(optimizer), step, adapt)


# ----------------------------------------------------------------------------- Meta-SGD


def build_meta_sgd_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    num_inner_steps: int,
    first_order: bool = False,
) -> Callable[[MetaState, Mapping], tuple[MetaState, MetaInfo]]:
    """Low-level Meta-SGD step: MAML's meta-objective differentiated with respect to both
    the initialisation and the per-parameter inner rates (``state.params`` is a
    :class:`MetaSGDParams`).

    >>> import jax.numpy as jnp, optax, bayesmeta as bm
    >>> loss = lambda p, b: 0.5 * jnp.sum((p - b) ** 2)  # a task's optimum is its data point
    >>> data = jnp.array([[1.0], [3.0]])  # two tasks, one point each
    >>> batch = {"support": data, "query": data}
    >>> opt = optax.sgd(0.1)
    >>> step = bm.meta.build_meta_sgd_step(loss, opt, num_inner_steps=1)
    >>> p = bm.meta.MetaSGDParams(jnp.zeros(()), jnp.asarray(0.5))
    >>> state, info = step(bm.meta.MetaState(p, opt.init(p), jnp.zeros((), jnp.int32)), batch)
    >>> round(float(state.params.init), 4), round(float(state.params.inner_lr), 4)
    (0.05, 0.75)
    """
    meta_loss = build_maml_loss(loss_fn, num_inner_steps=num_inner_steps, first_order=first_order)

    def objective(mp: MetaSGDParams, task_batch):
        return meta_loss(mp.init, task_batch, mp.inner_lr)

    def step(state: MetaState, task_batch: Mapping):
        _check_task_batch(task_batch)
        (loss, task_losses), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params, task_batch
        )
        return _finish_step(
            optimizer, loss_fn, state, task_batch, grads, loss, task_losses, state.params.init
        )

    return step


def meta_sgd(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation | None = None,
    *,
    inner_lr: float = 0.01,
    num_inner_steps: int = 1,
    first_order: bool = False,
) -> MetaLearner:
    """Meta-SGD (Li et al., 2017): learn the initialisation and per-parameter inner rates.

    ``init(params)`` starts every rate at ``inner_lr`` (or takes a :class:`MetaSGDParams`
    to start from given rates); ``adapt`` uses the learned rates.

    >>> import jax.numpy as jnp, optax, bayesmeta as bm
    >>> loss = lambda p, b: 0.5 * jnp.sum((p - b) ** 2)  # a task's optimum is its data point
    >>> data = jnp.array([[1.0], [3.0]])  # two tasks, one point each
    >>> batch = {"support": data, "query": data}
    >>> learner = bm.meta.meta_sgd(loss, optax.sgd(0.1), inner_lr=0.5)
    >>> state, info = learner.step(learner.init(jnp.zeros(())), batch)
    >>> # d/dtheta = -(1 - a)^2 mean(b) = -0.5; d/da = -(1 - a) mean(b^2) = -2.5
    >>> round(float(state.params.init), 4), round(float(state.params.inner_lr), 4)
    (0.05, 0.75)
    >>> round(float(learner.adapt(state, jnp.array([4.05]))), 4)  # 0.05 + 0.75 * 4
    3.05
    """
    _check_loss_fn(loss_fn)
    optimizer = _check_optimizer(optimizer)
    _check_int("num_inner_steps", num_inner_steps, 1)
    _check_positive("inner_lr", inner_lr)
    low = build_meta_sgd_step(
        loss_fn, optimizer, num_inner_steps=num_inner_steps, first_order=bool(first_order)
    )
    base_init = _init_fn(optimizer)

    def init(params):
        if not isinstance(params, MetaSGDParams):
            params = _strong(params)
            rates = jax.tree.map(lambda p: jnp.full(jnp.shape(p), inner_lr, p.dtype), params)
            params = MetaSGDParams(params, rates)
        _check_inner_lr(params.inner_lr, params.init)
        return base_init(params)

    def adapt(params_or_state, support_batch, num_steps=None):
        mp = _params_of(params_or_state)
        if not isinstance(mp, MetaSGDParams):
            raise ValueError(
                "params_or_state: Meta-SGD adapts from a MetaSGDParams (or its MetaState), got "
                f"{type(mp).__name__}"
            )
        phi, _ = inner_loop(
            loss_fn,
            mp.init,
            support_batch,
            inner_lr=mp.inner_lr,
            num_steps=_num_steps(num_steps, num_inner_steps),
        )
        return phi

    return MetaLearner(init, low, adapt)
