"""The one inner loop every meta-learner shares, plus small pytree utilities.

The inner loop runs ``num_steps`` steps of (optionally proximal) gradient descent on one
task's support loss as a ``lax.scan``:

    phi_0 = theta,   phi_{j+1} = phi_j - alpha * (grad L(phi_j) + lam * (phi_j - anchor))

with ``alpha`` a scalar or a pytree of per-parameter rates (Meta-SGD) and ``lam`` the
proximal weight of iMAML (``None`` for plain gradient descent). With
``first_order=True`` the inner gradients are treated as constants when differentiating
through the loop (first-order MAML).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__: list[str] = []  # private module

PyTree = Any


def _tree_sqnorm(tree: PyTree) -> jax.Array:
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree))


def _tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _is_per_parameter(inner_lr: PyTree) -> bool:
    """False for a scalar rate (broadcast to every parameter), True for a pytree of rates."""
    leaves = jax.tree.leaves(inner_lr)
    return not (len(leaves) == 1 and jnp.ndim(leaves[0]) == 0)


def _check_inner_lr(inner_lr: PyTree, params: PyTree) -> None:
    """ValueError unless ``inner_lr`` is a scalar or a pytree matching ``params``."""
    leaves = jax.tree.leaves(inner_lr)
    if len(leaves) == 1 and jnp.ndim(leaves[0]) == 0:
        return
    if jax.tree.structure(inner_lr) != jax.tree.structure(params):
        raise ValueError(
            "inner_lr: expected a scalar or a pytree with the structure of params "
            f"({jax.tree.structure(params)}), got {jax.tree.structure(inner_lr)}"
        )
    for lr, p in zip(leaves, jax.tree.leaves(params), strict=True):
        if jnp.shape(lr) != jnp.shape(p):
            raise ValueError(
                f"inner_lr: per-parameter rate of shape {jnp.shape(lr)} does not match the "
                f"parameter of shape {jnp.shape(p)}"
            )


def _sgd_update(params: PyTree, grads: PyTree, inner_lr: PyTree) -> PyTree:
    if _is_per_parameter(inner_lr):
        return jax.tree.map(lambda p, g, a: p - a * g, params, grads, inner_lr)
    return jax.tree.map(lambda p, g: p - inner_lr * g, params, grads)


def inner_loop(
    loss_fn: Callable[[PyTree, Any], jax.Array],
    params: PyTree,
    batch: Any,
    *,
    inner_lr: PyTree,
    num_steps: int,
    first_order: bool = False,
    prox_weight: float | jax.Array | None = None,
    anchor: PyTree | None = None,
    track_fn: Callable[[PyTree], Any] | None = None,
) -> tuple[PyTree, Any]:
    """Run ``num_steps`` inner gradient steps from ``params`` on one task.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` for one task.
      params: starting point ``theta`` (any pytree).
      batch: the task's support data, as ``loss_fn`` expects it.
      inner_lr: scalar, or pytree of per-parameter rates shaped like ``params``.
      num_steps: number of steps (a Python int; the scan length).
      first_order: stop gradients through the inner gradients (first-order MAML).
      prox_weight: ``lam`` of the proximal term ``lam/2 ||phi - anchor||^2`` (iMAML).
      anchor: centre of the proximal term; defaults to ``params``.
      track_fn: optional ``track_fn(phi) -> pytree`` evaluated at every iterate
        ``phi_0 .. phi_{num_steps}`` (for inner-loop curves).

    Returns:
      ``(phi, trace)`` where ``phi`` is the adapted pytree and ``trace`` is the support
      objective at ``phi_0 .. phi_{num_steps-1}`` (shape ``(num_steps,)``), or, with
      ``track_fn``, the pair ``(support_losses, tracked)`` with ``tracked`` stacked over
      ``num_steps + 1`` iterates.
    """
    if anchor is None:
        anchor = params

    def objective(p):
        value = loss_fn(p, batch)
        if prox_weight is not None:
            diff = jax.tree.map(lambda a, b: a - b, p, anchor)
            value = value + 0.5 * prox_weight * _tree_sqnorm(diff)
        return value

    def body(p, _):
        value, grads = jax.value_and_grad(objective)(p)
        if first_order:
            grads = lax.stop_gradient(grads)
        new_p = _sgd_update(p, grads, inner_lr)
        if track_fn is None:
            return new_p, value
        return new_p, (value, track_fn(p))

    final, trace = lax.scan(body, params, None, length=num_steps)
    if track_fn is None:
        return final, trace
    losses, tracked = trace
    last = track_fn(final)
    tracked = jax.tree.map(lambda t, l: jnp.concatenate([t, l[None]], axis=0), tracked, last)
    return final, (losses, tracked)


def cg_solve(matvec: Callable[[jax.Array], jax.Array], b: jax.Array, num_iters: int) -> jax.Array:
    """Conjugate gradients for ``A x = b`` (``A`` symmetric positive definite) with a fixed
    number of iterations, written as a ``lax.scan`` so it vmaps and differentiates cleanly.

    ``matvec(v) = A v`` on flat vectors ``(D,)``. Exact after ``D`` iterations in exact
    arithmetic; once the residual vanishes the remaining iterations leave ``x`` unchanged.
    """

    def body(carry, _):
        x, r, p, rr = carry
        ap = matvec(p)
        pap = jnp.vdot(p, ap)
        ok = pap > 0
        step = jnp.where(ok, rr / jnp.where(ok, pap, 1.0), 0.0)
        x = x + step * p
        r = r - step * ap
        rr_new = jnp.vdot(r, r)
        ok_r = rr > 0
        beta = jnp.where(ok_r, rr_new / jnp.where(ok_r, rr, 1.0), 0.0)
        p = r + beta * p
        return (x, r, p, rr_new), None

    x0 = jnp.zeros_like(b)
    (x, _, _, _), _ = lax.scan(body, (x0, b, b, jnp.vdot(b, b)), None, length=num_iters)
    return x
