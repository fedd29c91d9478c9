"""Closed forms for meta-learning on quadratic task families.

Task ``i`` has loss ``L_i(theta) = 1/2 (theta - theta_i*)^T A_i (theta - theta_i*)`` with
``A_i`` symmetric positive definite (``hessians``, shape ``(n, d, d)``) and optimum
``theta_i*`` (``optima``, shape ``(n, d)``). Gradient descent with step ``alpha`` for ``k``
steps maps ``theta`` to ``theta_i* + M_i (theta - theta_i*)`` with
``M_i = (I - alpha A_i)^k`` (``alpha`` a scalar, or a vector of per-parameter rates, when
``I - diag(alpha) A_i`` replaces ``I - alpha A_i``). Every fixed point below is a weighted
average of the task optima,

    theta = (sum_i W_i)^-1 sum_i W_i theta_i*,

with the weights:

==========================  ================================================
centre of gravity           ``W_i = I`` (mean of the optima)
average-loss optimum        ``W_i = A_i``
MAML, k steps               ``W_i = M_i^T A_i M_i`` (``k = 1``: ``(I - aA) A (I - aA)``)
first-order MAML            ``W_i = A_i M_i``
Reptile                     ``W_i = I - M_i``
iMAML (prox weight lam)     ``W_i = B_i A_i B_i``, ``B_i = lam (A_i + lam I)^-1``
==========================  ================================================

The best scalar (or per-parameter) one-step inner rate for a fixed initialisation is also
in closed form: the post-adaptation loss is quadratic in the rate.

>>> import numpy as np, bayesmeta as bm
>>> A = np.stack([np.eye(2), 4 * np.eye(2)]); opt = np.array([[0.0, 0.0], [1.0, 1.0]])
>>> bm.meta.quadratic.average_loss_optimum(A, opt)
array([0.8, 0.8])
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

__all__ = [
    "loss",
    "task_batch",
    "meta_loss",
    "center_of_gravity",
    "average_loss_optimum",
    "weighted_optimum",
    "inner_map",
    "maml_weights",
    "maml_optimum",
    "first_order_maml_optimum",
    "reptile_optimum",
    "imaml_optimum",
    "best_inner_lr",
    "best_inner_lr_per_parameter",
]


def _check_family(hessians: Any, optima: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(hessians, dtype=float)
    t = np.asarray(optima, dtype=float)
    if t.ndim != 2:
        raise ValueError(f"optima: expected shape (num_tasks, d), got {t.shape}")
    n, d = t.shape
    if a.shape != (n, d, d):
        raise ValueError(f"hessians: expected shape ({n}, {d}, {d}) to match optima, got {a.shape}")
    for i in range(n):
        if not np.allclose(a[i], a[i].T, rtol=1e-10, atol=1e-12):
            raise ValueError(f"hessians: task {i} is not symmetric")
    return a, t


def _rate_matrix(inner_lr: Any, d: int) -> np.ndarray:
    lr = np.asarray(inner_lr, dtype=float)
    if lr.ndim == 0:
        return lr * np.eye(d)
    if lr.shape != (d,):
        raise ValueError(f"inner_lr: expected a scalar or shape ({d},), got {lr.shape}")
    return np.diag(lr)


def loss(params: Any, batch: dict) -> Any:
    """One task's loss ``1/2 (theta - theta*)^T A (theta - theta*)`` for
    ``batch = {"hessian": (d, d), "optimum": (d,)}`` (JAX-traceable).

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> batch = {"hessian": 4 * jnp.eye(1), "optimum": jnp.zeros(1)}
    >>> round(float(bm.meta.quadratic.loss(jnp.ones(1), batch)), 4)  # 1/2 * 4 * 1^2
    2.0
    """
    diff = params - batch["optimum"]
    return 0.5 * diff @ batch["hessian"] @ diff


def task_batch(hessians: Any, optima: Any, query_hessians: Any = None, query_optima: Any = None):
    """The family as a meta-learner task batch ``{"support": ..., "query": ...}``.

    Support and query are the same quadratic unless ``query_hessians``/``query_optima``
    are given (use :func:`loss` as ``loss_fn``).

    >>> import numpy as np, bayesmeta as bm
    >>> q = bm.meta.quadratic
    >>> A = np.array([[[1.0]], [[4.0]]]); opt = np.array([[0.0], [1.0]])  # two 1-D tasks
    >>> batch = q.task_batch(A, opt)
    >>> sorted(batch), batch["support"]["hessian"].shape
    (['query', 'support'], (2, 1, 1))
    """
    a, t = _check_family(hessians, optima)
    support = {"hessian": jnp.asarray(a), "optimum": jnp.asarray(t)}
    if query_hessians is None and query_optima is None:
        return {"support": support, "query": support}
    qa, qt = _check_family(
        a if query_hessians is None else query_hessians, t if query_optima is None else query_optima
    )
    if qt.shape != t.shape:
        raise ValueError(f"query_optima: expected shape {t.shape}, got {qt.shape}")
    return {"support": support, "query": {"hessian": jnp.asarray(qa), "optimum": jnp.asarray(qt)}}


def inner_map(hessians: Any, inner_lr: Any, num_steps: int) -> np.ndarray:
    """``M_i = (I - alpha A_i)^k`` for every task, shape ``(n, d, d)``.

    >>> import numpy as np, bayesmeta as bm
    >>> q = bm.meta.quadratic
    >>> A = np.array([[[1.0]], [[4.0]]]); opt = np.array([[0.0], [1.0]])  # two 1-D tasks
    >>> np.round(q.inner_map(A, 0.1, 2).ravel(), 4)  # (1 - 0.1 a)^2
    array([0.81, 0.36])
    """
    a = np.asarray(hessians, dtype=float)
    d = a.shape[-1]
    rate = _rate_matrix(inner_lr, d)
    return np.stack([np.linalg.matrix_power(np.eye(d) - rate @ ai, num_steps) for ai in a])


def weighted_optimum(weights: Any, optima: Any) -> np.ndarray:
    """``(sum_i W_i)^-1 sum_i W_i theta_i*`` for weights ``(n, d, d)`` and optima ``(n, d)``.

    >>> import numpy as np, bayesmeta as bm
    >>> bm.meta.quadratic.weighted_optimum(np.array([[[1.0]], [[3.0]]]), np.array([[0.0], [1.0]]))
    array([0.75])
    """
    w = np.asarray(weights, dtype=float)
    t = np.asarray(optima, dtype=float)
    return np.linalg.solve(w.sum(axis=0), np.einsum("nij,nj->i", w, t))


def center_of_gravity(optima: Any) -> np.ndarray:
    """The mean of the task optima: the ``theta_0`` minimising ``E ||theta* - theta_0||^2``.

    >>> import numpy as np, bayesmeta as bm
    >>> bm.meta.quadratic.center_of_gravity(np.array([[0.0], [1.0]]))
    array([0.5])
    """
    t = np.asarray(optima, dtype=float)
    if t.ndim != 2:
        raise ValueError(f"optima: expected shape (num_tasks, d), got {t.shape}")
    return t.mean(axis=0)


def average_loss_optimum(hessians: Any, optima: Any) -> np.ndarray:
    """Minimiser of the average loss: ``(sum A_i)^-1 sum A_i theta_i*``.

    >>> import numpy as np, bayesmeta as bm
    >>> q = bm.meta.quadratic
    >>> A = np.array([[[1.0]], [[4.0]]]); opt = np.array([[0.0], [1.0]])  # two 1-D tasks
    >>> q.average_loss_optimum(A, opt)  # (1 * 0 + 4 * 1) / (1 + 4)
    array([0.8])
    """
    a, t = _check_family(hessians, optima)
    return weighted_optimum(a, t)


def maml_weights(hessians: Any, inner_lr: Any, num_steps: int = 1) -> np.ndarray:
    """MAML weights ``W_i = M_i^T A_i M_i`` (``k = 1``: ``(I - aA_i) A_i (I - aA_i)``).

    >>> import numpy as np, bayesmeta as bm
    >>> q = bm.meta.quadratic
    >>> A = np.array([[[1.0]], [[4.0]]]); opt = np.array([[0.0], [1.0]])  # two 1-D tasks
    >>> np.round(q.maml_weights(A, 0.1).ravel(), 4)  # (1 - 0.1 a)^2 a
    array([0.81, 1.44])
    """
    a = np.asarray(hessians, dtype=float)
    m = inner_map(a, inner_lr, num_steps)
    return np.einsum("nji,njk,nkl->nil", m, a, m)


def maml_optimum(hessians: Any, optima: Any, inner_lr: Any, num_steps: int = 1) -> np.ndarray:
    """Minimiser of the post-adaptation loss ``sum_i L_i(theta - alpha grad ...)`` after
    ``num_steps`` inner steps: the ``W_i = M_i^T A_i M_i`` weighted average of optima.
    ``inner_lr`` may be a vector of per-parameter rates (the Meta-SGD fixed point).

    >>> import numpy as np, bayesmeta as bm
    >>> q = bm.meta.quadratic
    >>> A = np.array([[[1.0]], [[4.0]]]); opt = np.array([[0.0], [1.0]])  # two 1-D tasks
    >>> np.round(q.maml_optimum(A, opt, 0.1), 4)  # 1.44 / (0.81 + 1.44)
    array([0.64])
    """
    a, t = _check_family(hessians, optima)
    return weighted_optimum(maml_weights(a, inner_lr, num_steps), t)


def first_order_maml_optimum(
    hessians: Any, optima: Any, inner_lr: Any, num_steps: int = 1
) -> np.ndarray:
    """Fixed point of first-order MAML, where ``sum_i A_i M_i (theta - theta_i*) = 0``.

    >>> import numpy as np, bayesmeta as bm
    >>> q = bm.meta.quadratic
    >>> A = np.array([[[1.0]], [[4.0]]]); opt = np.array([[0.0], [1.0]])  # two 1-D tasks
    >>> np.round(q.first_order_maml_optimum(A, opt, 0.1), 4)  # W = a (1 - 0.1 a): 2.4 / 3.3
    array([0.7273])
    """
    a, t = _check_family(hessians, optima)
    m = inner_map(a, inner_lr, num_steps)
    return weighted_optimum(np.einsum("nij,njk->nik", a, m), t)


def reptile_optimum(hessians: Any, optima: Any, inner_lr: Any, num_steps: int) -> np.ndarray:
    """Fixed point of Reptile, where ``sum_i (theta - phi_i(theta)) = 0``.

    >>> import numpy as np, bayesmeta as bm
    >>> q = bm.meta.quadratic
    >>> A = np.array([[[1.0]], [[4.0]]]); opt = np.array([[0.0], [1.0]])  # two 1-D tasks
    >>> np.round(q.reptile_optimum(A, opt, 0.1, 1), 4)  # W = 0.1 a: 0.4 / 0.5
    array([0.8])
    """
    a, t = _check_family(hessians, optima)
    m = inner_map(a, inner_lr, num_steps)
    return weighted_optimum(np.eye(a.shape[-1])[None] - m, t)


def imaml_optimum(hessians: Any, optima: Any, prox_weight: float) -> np.ndarray:
    """Minimiser of ``sum_i L_i(phi_i(theta))`` with the exact proximal solution
    ``phi_i = argmin L_i(phi) + lam/2 ||phi - theta||^2``.

    >>> import numpy as np, bayesmeta as bm
    >>> q = bm.meta.quadratic
    >>> A = np.array([[[1.0]], [[4.0]]]); opt = np.array([[0.0], [1.0]])  # two 1-D tasks
    >>> np.round(q.imaml_optimum(A, opt, 1.0), 4)  # B = 1 / (a + 1), W = B^2 a: 0.16 / 0.41
    array([0.3902])
    """
    a, t = _check_family(hessians, optima)
    d = a.shape[-1]
    b = np.stack([prox_weight * np.linalg.inv(ai + prox_weight * np.eye(d)) for ai in a])
    return weighted_optimum(np.einsum("nji,njk,nkl->nil", b, a, b), t)


def meta_loss(params: Any, hessians: Any, optima: Any, inner_lr: Any, num_steps: int) -> float:
    """Mean post-adaptation loss ``1/n sum_i 1/2 e_i^T M_i^T A_i M_i e_i``,
    ``e_i = theta - theta_i*``.

    >>> import numpy as np, bayesmeta as bm
    >>> q = bm.meta.quadratic
    >>> A = np.array([[[1.0]], [[4.0]]]); opt = np.array([[0.0], [1.0]])  # two 1-D tasks
    >>> round(q.meta_loss(np.zeros(1), A, opt, 0.1, 1), 4)  # 1/2 * (0 + 1.44 * 1) / 2
    0.36
    """
    a, t = _check_family(hessians, optima)
    w = maml_weights(a, inner_lr, num_steps)
    e = np.asarray(params, dtype=float)[None] - t
    return float(0.5 * np.einsum("ni,nij,nj->n", e, w, e).mean())


def best_inner_lr(hessians: Any, optima: Any, params: Any) -> float:
    """The scalar one-step rate minimising the mean post-adaptation loss from ``params``.

    With ``e_i = theta - theta_i*`` the loss is
    ``1/2 sum_i (e_i^T A e_i - 2 a e_i^T A^2 e_i + a^2 e_i^T A^3 e_i)``, so
    ``a* = sum_i e_i^T A_i^2 e_i / sum_i e_i^T A_i^3 e_i``.

    >>> import numpy as np, bayesmeta as bm
    >>> q = bm.meta.quadratic
    >>> A = np.array([[[1.0]], [[4.0]]]); opt = np.array([[0.0], [1.0]])  # two 1-D tasks
    >>> round(q.best_inner_lr(A, opt, np.zeros(1)), 4)  # one step of 1/4 solves the a = 4 task
    0.25
    """
    a, t = _check_family(hessians, optima)
    e = np.asarray(params, dtype=float)[None] - t
    g = np.einsum("nij,nj->ni", a, e)  # task gradients A_i e_i
    num = np.einsum("ni,ni->", g, g)
    den = np.einsum("ni,nij,nj->", g, a, g)
    return float(num / den)


def best_inner_lr_per_parameter(hessians: Any, optima: Any, params: Any) -> np.ndarray:
    """The per-parameter one-step rates ``a`` (vector) minimising the mean post-adaptation
    loss from ``params``: with ``G_i = diag(A_i e_i)`` the loss
    ``1/2 sum_i (e_i - G_i a)^T A_i (e_i - G_i a)`` gives
    ``a* = (sum_i G_i A_i G_i)^-1 sum_i G_i A_i e_i``.

    >>> import numpy as np, bayesmeta as bm
    >>> q = bm.meta.quadratic
    >>> A = np.array([[[1.0]], [[4.0]]]); opt = np.array([[0.0], [1.0]])  # two 1-D tasks
    >>> np.round(q.best_inner_lr_per_parameter(A, opt, np.zeros(1)), 4)
    array([0.25])
    """
    a, t = _check_family(hessians, optima)
    e = np.asarray(params, dtype=float)[None] - t
    g = np.einsum("nij,nj->ni", a, e)
    lhs = np.einsum("ni,nij,nj->ij", g, a, g)
    rhs = np.einsum("ni,nij,nj->i", g, a, e)
    return np.linalg.solve(lhs, rhs)
