"""MAML read as a posterior: the implied Gaussian prior of gradient descent, and LLAMA.

**Implied prior** (Santos, 1996; Grant et al., 2018). On a task whose negative
log-likelihood is quadratic, ``L(theta) = 1/2 (theta - theta_hat)^T H (theta - theta_hat)``,
``k`` steps of gradient descent of size ``alpha`` from ``theta_0`` give

    theta_k = theta_hat + M (theta_0 - theta_hat),   M = (I - alpha H)^k,

which is exactly the posterior mean under the Gaussian prior ``N(theta_0, Sigma)`` with
(``H = Q diag(lambda) Q^T``)

    Sigma(alpha, k) = Q diag(((1 - alpha lambda)^-k - 1) / lambda) Q^T

(``k alpha`` along directions with ``lambda = 0``), and the posterior covariance is

    C = (H + Sigma^-1)^-1 = Q diag((1 - (1 - alpha lambda)^k) / lambda) Q^T,

so that ``theta_k = theta_0 - C grad L(theta_0)``. The prior exists while
``(1 - alpha lambda)^k > 0``. Per-parameter rates ``a`` (Meta-SGD) are handled by the
change of variables ``u = diag(a)^-1/2 theta``.

**LLAMA** (Grant et al., 2018): a Laplace approximation at the adapted parameters
``phi_k``: ``N(phi_k, (H(phi_k) + P)^-1)`` with the curvature ``H`` exact (``"full"``),
its diagonal (``"diag"``) or the generalised Gauss-Newton matrix (``"ggn"``, low rank, for
networks), and the prior precision ``P`` either implied by the inner loop (above) or a fixed
``lam I`` (then the mode is reached by ``lam``-proximal inner steps, as in iMAML). On
linear-Gaussian tasks the curvature is constant and LLAMA is the exact posterior.

``loss_fn(params, batch)`` must be the task's *negative log-likelihood* (summed over
observations, constants aside): its curvature is the likelihood's precision. Every function
takes the support data of ``T`` tasks as a pytree with a leading task axis, and returns a
:class:`bayesmeta.posterior.Posterior` with a ``task`` dimension, so results overlay with
NUTS and exact posteriors.

>>> import jax.numpy as jnp, bayesmeta as bm
>>> H = jnp.diag(jnp.array([1.0, 0.0]))
>>> bm.meta.implied_prior_cov(H, 0.5, 1)  # ((1 - 0.5)^-1 - 1) / 1 = 1; k alpha = 0.5
array([[1. , 0. ],
       [0. , 0.5]])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from bayesmeta._checks import check_seed
from bayesmeta.inference.assemble import assemble
from bayesmeta.info import MetaInfo
from bayesmeta.meta._compiled import compiled
from bayesmeta.meta._inner import _check_inner_lr, inner_loop
from bayesmeta.meta.learners import _check_int, _check_loss_fn, _check_positive

__all__ = [
    "TaskGaussians",
    "implied_prior_cov",
    "implied_posterior_cov",
    "implied_prior",
    "llama_gaussians",
    "llama",
    "to_posterior",
    "linear_gaussian_nll",
]

PyTree = Any


class TaskGaussians(NamedTuple):
    """Gaussian distributions over the ``D`` flattened parameters of ``T`` tasks.

    ``cov_t = diag(s_t) (V_t diag(c_t) V_t^T + P_t diag(r_t) P_t) diag(s_t)`` with
    ``P_t = I - V_t V_t^T`` (a low-rank-plus-residual form that covers full, diagonal and
    Gauss-Newton curvature without forming ``D x D`` matrices when ``R << D``).

    Fields:
      mean      # shape=(T, D)
      eigvecs   # shape=(T, D, R): orthonormal columns V (R may be 0)
      eigvals   # shape=(T, R): c, variances along V (before scaling)
      residual  # shape=(T, D): r, variances on the complement of V (before scaling)
      scale     # shape=(T, D): s, the diagonal scaling

    >>> import jax, numpy as np, bayesmeta as bm
    >>> g = bm.meta.TaskGaussians.from_moments(np.zeros((2, 1)), np.array([[[1.0]], [[4.0]]]))
    >>> g.num_tasks, [round(float(v), 4) for v in g.variance().ravel()]
    (2, [1.0, 4.0])
    >>> g.sample(jax.random.PRNGKey(0), 3).shape  # (task, draw, parameter)
    (2, 3, 1)
    """

    mean: Any
    eigvecs: Any
    eigvals: Any
    residual: Any
    scale: Any

    @classmethod
    def from_moments(cls, mean: Any, cov: Any) -> TaskGaussians:
        """From dense means ``(T, D)`` and covariances ``(T, D, D)`` (eigen-decomposed)."""
        mean = np.asarray(mean, dtype=float)
        cov = np.asarray(cov, dtype=float)
        if mean.ndim != 2 or cov.shape != (*mean.shape, mean.shape[-1]):
            raise ValueError(
                f"cov: expected shape {(*mean.shape, mean.shape[-1])} to match "
                f"mean {mean.shape}, got {cov.shape}"
            )
        vals, vecs = np.linalg.eigh(0.5 * (cov + np.swapaxes(cov, -1, -2)))
        if np.any(vals < -1e-10 * np.abs(vals).max(initial=1.0)):
            raise ValueError("cov: not positive semi-definite")
        return cls(mean, vecs, np.clip(vals, 0.0, None), np.zeros_like(mean), np.ones_like(mean))

    @property
    def num_tasks(self) -> int:
        return int(np.shape(self.mean)[0])

    def cov(self) -> np.ndarray:
        """Dense covariances, shape ``(T, D, D)``."""
        v, c, r, s = (np.asarray(a) for a in self[1:])
        d = v.shape[1]
        proj = np.eye(d)[None] - np.einsum("tir,tjr->tij", v, v)
        inner = np.einsum("tir,tr,tjr->tij", v, c, v) + np.einsum("tij,tj,tkj->tik", proj, r, proj)
        return s[:, :, None] * inner * s[:, None, :]

    def variance(self) -> np.ndarray:
        """Marginal variances, shape ``(T, D)``."""
        v, c, r, s = (np.asarray(a) for a in self[1:])
        along = np.einsum("tir,tr->ti", v**2, c)
        if v.shape[-1] == 0:
            return s**2 * (along + r)
        w = np.einsum("tir,tjr->tij", v, v)  # projection onto span(V)
        # diag(P diag(r) P)_i = r_i - 2 W_ii r_i + sum_j W_ij^2 r_j
        across = r - 2 * np.einsum("tii->ti", w) * r + np.einsum("tij,tj->ti", w**2, r)
        return s**2 * (along + across)

    def sample(self, key: jax.Array, num_draws: int) -> jax.Array:
        """Draws of shape ``(T, num_draws, D)``."""
        return _sample_gaussians(self, key, num_draws)


def _sample_gaussians(g: TaskGaussians, key: jax.Array, num_draws: int) -> jax.Array:
    mean, v, c, r, s = (jnp.asarray(a) for a in g)
    t, d = mean.shape
    k1, k2 = jax.random.split(key)
    z1 = jax.random.normal(k1, (t, num_draws, v.shape[-1]), mean.dtype)
    z2 = jax.random.normal(k2, (t, num_draws, d), mean.dtype)
    along = jnp.einsum("tdr,tnr->tnd", v, jnp.sqrt(c)[:, None, :] * z1)
    w = jnp.sqrt(r)[:, None, :] * z2
    across = w - jnp.einsum("tdr,tnr->tnd", v, jnp.einsum("tdr,tnd->tnr", v, w))
    return mean[:, None, :] + s[:, None, :] * (along + across)


# ----------------------------------------------------------------------------- factors


def _posterior_factor(x: Any, k: int) -> Any:
    """``(1 - (1 - x)^k) / x`` (-> ``k`` as ``x -> 0``), for ``x = alpha lambda``."""
    x = jnp.asarray(x)
    small = jnp.abs(x) < 1e-6
    xs = jnp.where(small, 0.5, x)
    moderate = jnp.abs(xs) <= 0.5
    # log1p/expm1 keep the digits that 1 - (1 - x)^k would cancel when x is small
    stable = -jnp.expm1(k * jnp.log1p(-jnp.where(moderate, xs, 0.0))) / xs
    direct = (1.0 - jax.lax.integer_pow(1.0 - xs, k)) / xs
    series = k - 0.5 * k * (k - 1) * x
    return jnp.where(small, series, jnp.where(moderate, stable, direct))


def _prior_factor(x: Any, k: int) -> Any:
    """``((1 - x)^-k - 1) / x`` (-> ``k`` as ``x -> 0``)."""
    x = jnp.asarray(x)
    small = jnp.abs(x) < 1e-6
    xs = jnp.where(small, 0.5, x)
    moderate = jnp.abs(xs) <= 0.5
    stable = jnp.expm1(-k * jnp.log1p(-jnp.where(moderate, xs, 0.0))) / xs
    direct = (1.0 / jax.lax.integer_pow(1.0 - xs, k) - 1.0) / xs
    series = k + 0.5 * k * (k + 1) * x
    return jnp.where(small, series, jnp.where(moderate, stable, direct))


def _implied_valid(x: np.ndarray, k: int) -> np.ndarray:
    """Where a Gaussian prior is implied: its variance ``((1 - x)^-k - 1) / x`` must be
    positive, i.e. ``0 < (1 - x)^k < 1`` for ``x > 0`` (any ``x <= 0`` is fine)."""
    m = (1.0 - x) ** k
    # |x| below 1e-12 is a zero eigenvalue up to rounding (the limit k alpha applies)
    return (x <= 1e-12) | ((m > 0) & (m < 1))


def _flat_rates(inner_lr: Any, init: PyTree) -> np.ndarray:
    """Per-parameter rates as one flat vector in ``ravel_pytree(init)`` order."""
    _check_inner_lr(inner_lr, init)
    d = ravel_pytree(init)[0].shape[0]
    leaves = jax.tree.leaves(inner_lr)
    if len(leaves) == 1 and jnp.ndim(leaves[0]) == 0:
        return _rates_vector(leaves[0], d)
    return _rates_vector(np.asarray(ravel_pytree(inner_lr)[0]), d)


def _rates_vector(inner_lr: Any, d: int, name: str = "inner_lr") -> np.ndarray:
    lr = np.asarray(inner_lr, dtype=float)
    if lr.ndim == 0:
        lr = np.full(d, float(lr))
    if lr.shape != (d,):
        raise ValueError(f"{name}: expected a scalar or shape ({d},), got {lr.shape}")
    if not np.all(np.isfinite(lr) & (lr > 0)):
        raise ValueError(f"{name}: rates must be positive and finite")
    return lr


def implied_prior_cov(hessian: Any, inner_lr: Any, num_steps: int) -> np.ndarray:
    """Covariance ``Sigma(alpha, k)`` of the Gaussian prior implied by ``k`` gradient steps.

    Args:
      hessian: ``(..., D, D)`` symmetric curvature of the negative log-likelihood.
      inner_lr: step size ``alpha``: a scalar, or per-parameter rates ``(D,)``.
      num_steps: ``k >= 1``.

    Returns:
      ``(..., D, D)``: ``S Q diag(((1 - l)^-k - 1)/l) Q^T S`` where ``S = diag(sqrt(alpha))``
      and ``Q diag(l) Q^T = S H S`` (``k`` on ``l = 0``).

    Raises:
      ValueError: if some ``l > 0`` has ``(1 - l)^k`` outside ``(0, 1)`` (the steps
      overshoot: no Gaussian prior is implied).

    >>> import numpy as np, bayesmeta as bm
    >>> # alpha h = 0.5, k = 2: alpha ((1 - 0.5)^-2 - 1) / 0.5 = 0.25 * 6
    >>> round(float(bm.meta.implied_prior_cov(2.0 * np.eye(1), 0.25, 2)[0, 0]), 4)
    1.5
    """
    h = np.asarray(hessian, dtype=float)
    if h.ndim < 2 or h.shape[-1] != h.shape[-2]:
        raise ValueError(f"hessian: expected shape (..., D, D), got {h.shape}")
    k = _check_int("num_steps", num_steps, 1)
    s = np.sqrt(_rates_vector(inner_lr, h.shape[-1]))
    ht = s[:, None] * (0.5 * (h + np.swapaxes(h, -1, -2))) * s[None, :]
    lam, q = np.linalg.eigh(ht)
    if not np.all(_implied_valid(lam, k)):
        worst = float(lam.max())
        raise ValueError(
            f"inner_lr: alpha * curvature reaches {worst:.4g}, where (1 - alpha*lambda)^k is "
            "not in (0, 1); no Gaussian prior is implied (use a smaller inner_lr)"
        )
    f = np.asarray(_prior_factor(lam, k))
    return s[:, None] * np.einsum("...ij,...j,...kj->...ik", q, f, q) * s[None, :]


def implied_posterior_cov(hessian: Any, inner_lr: Any, num_steps: int) -> np.ndarray:
    """Posterior covariance ``(H + Sigma(alpha, k)^-1)^-1`` under the implied prior, in the
    stable form ``S Q diag((1 - (1 - l)^k)/l) Q^T S``; shapes as :func:`implied_prior_cov`.

    >>> import numpy as np, bayesmeta as bm
    >>> round(float(bm.meta.implied_posterior_cov(2.0 * np.eye(1), 0.25, 2)[0, 0]), 4)
    0.375
    >>> 1 / (2.0 + 1 / 1.5)  # (H + Sigma^-1)^-1 with Sigma = 1.5 (implied_prior_cov)
    0.375
    """
    h = np.asarray(hessian, dtype=float)
    if h.ndim < 2 or h.shape[-1] != h.shape[-2]:
        raise ValueError(f"hessian: expected shape (..., D, D), got {h.shape}")
    k = _check_int("num_steps", num_steps, 1)
    s = np.sqrt(_rates_vector(inner_lr, h.shape[-1]))
    lam, q = np.linalg.eigh(s[:, None] * (0.5 * (h + np.swapaxes(h, -1, -2))) * s[None, :])
    if not np.all(_implied_valid(lam, k)):
        raise ValueError(
            "inner_lr: (1 - alpha*lambda)^k is not in (0, 1) somewhere; no prior is implied"
        )
    f = np.asarray(_posterior_factor(lam, k))
    return s[:, None] * np.einsum("...ij,...j,...kj->...ik", q, f, q) * s[None, :]


# ----------------------------------------------------------------------------- curvature


def _flat_fns(loss_fn: Callable, init: PyTree):
    flat_init, unravel = ravel_pytree(init)

    def flat_loss(flat, batch):
        return loss_fn(unravel(flat), batch)

    return flat_init, unravel, flat_loss


def _curvature_eigen(
    mode: str,
    flat_loss: Callable,
    flat_point: jax.Array,
    batch: Any,
    s: jax.Array,
    unravel: Callable,
    predict_fn: Callable | None,
    output_loss_fn: Callable | None,
) -> tuple[jax.Array, jax.Array]:
    """Eigen-decomposition of the scaled curvature ``S H S`` at one task's point.

    Returns ``(lam, V)``: ``full``: ``(D,)``, ``(D, D)``; ``diag``: ``(D,)``, ``(D, 0)``;
    ``ggn``: ``(R,)``, ``(D, R)`` with ``R = min(num_outputs, D)``.
    """
    d = flat_point.shape[0]
    if mode == "full":
        h = jax.hessian(flat_loss)(flat_point, batch)
        h = 0.5 * (h + h.T)
        return jnp.linalg.eigh(s[:, None] * h * s[None, :])
    if mode == "diag":
        grad = jax.grad(flat_loss)

        def diag_entry(i):
            e = jax.nn.one_hot(i, d, dtype=flat_point.dtype)
            return jax.jvp(lambda f: grad(f, batch), (flat_point,), (e,))[1][i]

        h = jax.lax.map(diag_entry, jnp.arange(d))
        return s**2 * h, jnp.zeros((d, 0), flat_point.dtype)
    # generalised Gauss-Newton: J^T (d^2 loss / d out^2) J

    def outputs(flat):
        return ravel_pytree(predict_fn(unravel(flat), batch))[0]

    out = outputs(flat_point)
    _, unravel_out = ravel_pytree(predict_fn(unravel(flat_point), batch))
    jac = jax.jacfwd(outputs)(flat_point) if d < out.shape[0] else jax.jacrev(outputs)(flat_point)
    h_out = jax.hessian(lambda o: output_loss_fn(unravel_out(o), batch))(out)
    e, u = jnp.linalg.eigh(0.5 * (h_out + h_out.T))
    b = jnp.sqrt(jnp.clip(e, 0.0))[:, None] * (u.T @ jac)  # GGN = B^T B
    _, sv, vt = jnp.linalg.svd(b * s[None, :], full_matrices=False)
    return sv**2, vt.T


_HESSIAN_MODES = ("full", "diag", "ggn")


def _check_common(
    loss_fn: Callable, init: PyTree, support: Any, hessian: str, predict_fn, output_loss_fn
) -> int:
    _check_loss_fn(loss_fn)
    if hessian not in _HESSIAN_MODES:
        raise ValueError(f"hessian: expected one of {_HESSIAN_MODES}, got {hessian!r}")
    if hessian == "ggn" and (predict_fn is None or output_loss_fn is None):
        raise ValueError(
            "predict_fn: hessian='ggn' needs predict_fn(params, batch) -> outputs and "
            "output_loss_fn(outputs, batch) -> scalar (with loss_fn their composition)"
        )
    leaves = jax.tree.leaves(support)
    if not leaves or any(jnp.ndim(x) < 1 for x in leaves):
        raise ValueError("support: expected a pytree of arrays with a leading task axis")
    sizes = {jnp.shape(x)[0] for x in leaves}
    if len(sizes) != 1:
        raise ValueError(f"support: leaves disagree on the number of tasks: {sorted(sizes)}")
    if not jax.tree.leaves(init):
        raise ValueError("init: the parameter pytree has no leaves")
    return sizes.pop()


def _check_labels(labels: Sequence[str] | None, num_tasks: int) -> list[str]:
    if labels is None:
        return [str(t) for t in range(num_tasks)]
    labels = [str(x) for x in labels]
    if len(labels) != num_tasks:
        raise ValueError(f"labels: expected {num_tasks} labels (one per task), got {len(labels)}")
    return labels


def _check_output(support: Any, labels: Sequence[str] | None, num_draws: Any) -> None:
    """Check the Posterior's options before anything is computed."""
    leaves = jax.tree.leaves(support)
    if leaves and jnp.ndim(leaves[0]) >= 1:
        _check_labels(labels, jnp.shape(leaves[0])[0])
    _check_int("num_draws", num_draws, 1)


def _task_numerics(
    loss_ref: Callable,
    num_steps: int,
    with_prox: bool,
    hessian: str,
    expand_at: str,
    predict_ref: Callable,
    output_loss_ref: Callable,
) -> Callable:
    """Jitted per-task numerics (adapted point, curvature eigen-pairs, gradient at the
    initialisation), vmapped over tasks. The user's functions are reached through the
    ``*_ref()`` references (weak when kept: see ``_compiled``), so that the kept program
    does not keep them alive."""

    def one_task(init, batch, rates, s, lam_prox):
        loss_fn, predict_fn, output_loss_fn = loss_ref(), predict_ref(), output_loss_ref()
        flat_init, unravel, flat_loss = _flat_fns(loss_fn, init)
        adapted, _ = inner_loop(
            flat_loss,
            flat_init,
            batch,
            inner_lr=rates,
            num_steps=num_steps,
            prox_weight=lam_prox if with_prox else None,
        )
        point = flat_init if expand_at == "init" else adapted
        lam, v = _curvature_eigen(
            hessian, flat_loss, point, batch, s, unravel, predict_fn, output_loss_fn
        )
        grad_init = jax.grad(flat_loss)(flat_init, batch)
        return adapted, lam, v, grad_init

    return jax.jit(jax.vmap(one_task, in_axes=(None, 0, None, None, None)))


def _gaussians(
    loss_fn: Callable,
    init: PyTree,
    support: Any,
    *,
    inner_lr: Any,
    num_inner_steps: int,
    prior_precision: Any,
    hessian: str,
    expand_at: str,
    predict_fn: Callable | None = None,
    output_loss_fn: Callable | None = None,
    on_invalid: str = "raise",
) -> tuple[TaskGaussians, np.ndarray, np.ndarray]:
    """Shared numerics of ``implied_prior`` and ``llama``: ``(gaussians, adapted, lam)``."""
    num_tasks = _check_common(loss_fn, init, support, hessian, predict_fn, output_loss_fn)
    if on_invalid not in ("raise", "nan"):
        raise ValueError(f"on_invalid: expected 'raise' or 'nan', got {on_invalid!r}")
    implied = isinstance(prior_precision, str)
    k = _check_int("num_inner_steps", num_inner_steps, 1 if implied else 0)
    init = jax.tree.map(jnp.asarray, init)
    flat_init, _ = ravel_pytree(init)
    d = flat_init.shape[0]
    if implied and prior_precision != "implied":
        raise ValueError(
            f"prior_precision: expected 'implied' or a positive number, got {prior_precision!r}"
        )
    rates = _flat_rates(inner_lr, init)
    if implied:
        s = jnp.asarray(np.sqrt(rates), flat_init.dtype)
        lam_prox = None
    else:
        _check_positive("prior_precision", prior_precision)
        if np.ndim(prior_precision) != 0:
            raise ValueError("prior_precision: expected 'implied' or a positive scalar")
        lam_prox = float(prior_precision)
        s = jnp.full((d,), 1.0 / np.sqrt(lam_prox), flat_init.dtype)

    with_prox = lam_prox is not None
    # kept while the user's functions live (held weakly): repeated calls compile once
    fn = compiled(
        (loss_fn, predict_fn, output_loss_fn),
        (k, with_prox, hessian, expand_at),
        lambda *refs: _task_numerics(refs[0], k, with_prox, hessian, expand_at, *refs[1:]),
    )
    adapted, lam, v, grad_init = fn(
        init,
        support,
        jnp.asarray(rates, flat_init.dtype),
        s,
        jnp.asarray(0.0 if lam_prox is None else lam_prox, flat_init.dtype),
    )
    lam_np = np.asarray(lam)
    if implied:
        ok = _implied_valid(lam_np, k)
        factor = lambda x: _posterior_factor(x, k)  # noqa: E731
        zero_value = float(k)
    else:
        ok = 1.0 + lam_np > 0
        factor = lambda x: 1.0 / (1.0 + x)  # noqa: E731
        zero_value = 1.0
    task_ok = np.all(ok.reshape(num_tasks, -1), axis=1) & np.all(
        np.isfinite(np.asarray(adapted)), axis=1
    )
    if not np.all(task_ok) and on_invalid == "raise":
        bad = int(np.flatnonzero(~task_ok)[0])
        raise ValueError(
            f"inner_lr: task {bad}: scaled curvature {float(lam_np[bad].max()):.4g} gives no "
            "valid Gaussian (the implied prior needs (1 - alpha*lambda)^k in (0, 1); a fixed "
            "prior needs H + lam I positive definite; the inner loop must stay finite); "
            "on_invalid='nan' marks such tasks instead"
        )
    lam = jnp.where(jnp.asarray(ok), lam, 0.0)
    c = factor(lam)
    if hessian == "full":
        residual = jnp.zeros((num_tasks, d), flat_init.dtype)
    elif hessian == "diag":
        residual, c = c, jnp.zeros((num_tasks, 0), flat_init.dtype)
    else:
        residual = jnp.full((num_tasks, d), zero_value, flat_init.dtype)
    scale = jnp.broadcast_to(s, (num_tasks, d))
    if expand_at == "init":
        # quadratic model at theta_0: mean = theta_0 - C grad L(theta_0)
        g0 = TaskGaussians(jnp.zeros((num_tasks, d)), v, c, residual, scale)
        mean = flat_init[None] - _cov_matvec(g0, grad_init)
    else:
        mean = adapted
    parts = [np.array(a) for a in (mean, v, c, residual, scale)]
    for part in parts[:4]:
        part[~task_ok] = np.nan  # tasks without a valid Gaussian (on_invalid="nan")
    return TaskGaussians(*parts), np.asarray(adapted), lam_np


def _cov_matvec(g: TaskGaussians, x: jax.Array) -> jax.Array:
    """``cov_t @ x_t`` for ``x`` of shape ``(T, D)``."""
    y = g.scale * x
    along = jnp.einsum("tdr,tr->td", g.eigvecs, g.eigvals * jnp.einsum("tdr,td->tr", g.eigvecs, y))
    w = y - jnp.einsum("tdr,tr->td", g.eigvecs, jnp.einsum("tdr,td->tr", g.eigvecs, y))
    w = g.residual * w
    across = w - jnp.einsum("tdr,tr->td", g.eigvecs, jnp.einsum("tdr,td->tr", g.eigvecs, w))
    return g.scale * (along + across)


# ----------------------------------------------------------------------------- public


def implied_prior(
    loss_fn: Callable,
    init: PyTree,
    support: Any,
    *,
    inner_lr: Any,
    num_inner_steps: int,
    num_draws: int = 1000,
    seed: int = 0,
    labels: Sequence[str] | None = None,
    param_dim: tuple[str, Sequence[str]] | None = None,
    on_invalid: str = "raise",
):
    """Posterior of each task under the Gaussian prior implied by MAML's inner loop.

    The task's negative log-likelihood ``loss_fn`` is expanded to second order at
    ``init`` (exact for linear-Gaussian tasks); with ``H``, ``g`` its Hessian and gradient
    there, the prior is ``N(init, Sigma(alpha, k))`` (:func:`implied_prior_cov`) and the
    posterior ``N(init - C g, C)``, ``C = (H + Sigma^-1)^-1``. Its mean equals the result
    of ``k`` gradient steps, which is stored next to it for comparison.

    Args:
      loss_fn: one task's negative log-likelihood ``loss_fn(params, batch)``.
      init: the initialisation ``theta_0`` (any pytree; e.g. a trained MAML's params).
      support: the tasks' support data, leaves with a leading task axis ``T``.
      inner_lr: ``alpha`` (scalar or per-parameter pytree); num_inner_steps: ``k``.
      num_draws, seed: draws per task of the returned Posterior.
      labels: task labels (default ``"0", "1", ...``).
      param_dim: ``(dim_name, coord_values)`` naming the parameter axis of a 1-D ``init``.
      on_invalid: ``"raise"`` or ``"nan"`` for tasks where no prior is implied (see
        :func:`llama`).

    Returns:
      a ``Posterior`` (method ``"implied_prior"``) whose ``info`` holds ``gaussians``
      (:class:`TaskGaussians`), ``adapted`` (``(T, D)``, the ``k``-step iterates),
      ``prior_cov`` (``(T, D, D)``) and ``hessian`` (``(T, D, D)``).

    >>> import jax.numpy as jnp, numpy as np, bayesmeta as bm
    >>> nll = lambda p, y: 0.5 * jnp.sum((p - y) ** 2)  # curvature 2: two rows per task
    >>> support = jnp.array([[0.0, 2.0], [2.0, 4.0]])  # two tasks, row means 1 and 3
    >>> post = bm.meta.implied_prior(
    ...     nll, jnp.zeros(()), support, inner_lr=0.25, num_inner_steps=2, num_draws=100
    ... )
    >>> # two steps go 1 - (1 - 0.25 * 2)^2 = 3/4 of the way to each task's row mean
    >>> [round(float(v), 4) for v in post.info["adapted"].ravel()]
    [0.75, 2.25]
    >>> [round(float(v), 4) for v in post.info["gaussians"].mean.ravel()]  # = the posterior means
    [0.75, 2.25]
    >>> [round(float(v), 4) for v in post.info["prior_cov"].ravel()]
    [1.5, 1.5]
    >>> post.samples["theta"].shape  # (chain, draw, task)
    (1, 100, 2)
    """
    seed = check_seed(seed)
    _check_output(support, labels, num_draws)
    g, adapted, _ = _gaussians(
        loss_fn,
        init,
        support,
        inner_lr=inner_lr,
        num_inner_steps=num_inner_steps,
        prior_precision="implied",
        hessian="full",
        expand_at="init",
        on_invalid=on_invalid,
    )
    flat_init, unravel, flat_loss = _flat_fns(loss_fn, jax.tree.map(jnp.asarray, init))
    hess = np.asarray(
        jax.jit(jax.vmap(jax.hessian(flat_loss), in_axes=(None, 0)))(flat_init, support)
    )
    rates = _flat_rates(inner_lr, jax.tree.map(jnp.asarray, init))
    valid = np.all(np.isfinite(g.mean), axis=1)
    prior_cov = np.full(hess.shape, np.nan)
    if np.any(valid):
        prior_cov[valid] = implied_prior_cov(hess[valid], rates, num_inner_steps)
    info = {"gaussians": g, "adapted": adapted, "prior_cov": prior_cov, "hessian": hess}
    return to_posterior(
        g,
        init,
        method="implied_prior",
        num_draws=num_draws,
        seed=seed,
        labels=labels,
        param_dim=param_dim,
        info=info,
    )


def llama_gaussians(
    loss_fn: Callable,
    init: PyTree,
    support: Any,
    *,
    inner_lr: Any,
    num_inner_steps: int,
    prior_precision: str | float = "implied",
    hessian: str = "full",
    predict_fn: Callable | None = None,
    output_loss_fn: Callable | None = None,
    on_invalid: str = "raise",
) -> TaskGaussians:
    """The LLAMA Gaussians without drawing samples (see :func:`llama`); for large models
    use ``hessian="ggn"`` (rank at most the number of outputs) or ``"diag"``.

    >>> import jax.numpy as jnp, numpy as np, bayesmeta as bm
    >>> nll = lambda p, y: 0.5 * jnp.sum((p - y) ** 2)  # curvature 2: two rows per task
    >>> support = jnp.array([[0.0, 2.0], [2.0, 4.0]])  # two tasks, row means 1 and 3
    >>> g = bm.meta.llama_gaussians(nll, jnp.zeros(()), support, inner_lr=0.25, num_inner_steps=2)
    >>> [round(float(v), 4) for v in g.mean.ravel()]
    [0.75, 2.25]
    >>> [round(float(v), 4) for v in g.variance().ravel()]
    [0.375, 0.375]
    """
    g, _, _ = _gaussians(
        loss_fn,
        init,
        support,
        inner_lr=inner_lr,
        num_inner_steps=num_inner_steps,
        prior_precision=prior_precision,
        hessian=hessian,
        expand_at="adapted",
        predict_fn=predict_fn,
        output_loss_fn=output_loss_fn,
        on_invalid=on_invalid,
    )
    return g


def llama(
    loss_fn: Callable,
    init: PyTree,
    support: Any,
    *,
    inner_lr: Any,
    num_inner_steps: int,
    prior_precision: str | float = "implied",
    hessian: str = "full",
    predict_fn: Callable | None = None,
    output_loss_fn: Callable | None = None,
    on_invalid: str = "raise",
    num_draws: int = 1000,
    seed: int = 0,
    labels: Sequence[str] | None = None,
    param_dim: tuple[str, Sequence[str]] | None = None,
):
    """Laplace approximation at the adapted parameters (LLAMA, Grant et al., 2018).

    For each task, adapt ``init`` by ``num_inner_steps`` steps (plain gradient descent on
    ``loss_fn`` when ``prior_precision="implied"``; proximal steps on
    ``loss_fn + lam/2 ||phi - init||^2`` for a numeric ``lam``), then return
    ``N(phi_k, (H(phi_k) + P)^-1)`` with ``P`` the implied prior precision or ``lam I``.

    Args:
      loss_fn: one task's negative log-likelihood ``loss_fn(params, batch)``.
      init: the initialisation (any pytree).
      support: support data with a leading task axis.
      inner_lr, num_inner_steps: the inner loop (``inner_lr`` scalar or per-parameter).
      prior_precision: ``"implied"`` or a positive ``lam``.
      hessian: ``"full"``, ``"diag"`` or ``"ggn"`` (needs ``predict_fn(params, batch)``
        and ``output_loss_fn(outputs, batch)`` with ``loss_fn`` their composition).
      on_invalid: ``"raise"`` (default) a ValueError naming the first task without a valid
        Gaussian (curvature beyond the implied prior's range, or a diverged inner loop), or
        ``"nan"`` to give such tasks NaN means and covariances.
      num_draws, seed, labels, param_dim: as :func:`implied_prior`.

    Returns:
      a ``Posterior`` (method ``"llama"``) with ``info["gaussians"]``.

    >>> import jax.numpy as jnp, numpy as np, bayesmeta as bm
    >>> nll = lambda p, y: 0.5 * jnp.sum((p - y) ** 2)  # curvature 2: two rows per task
    >>> support = jnp.array([[0.0, 2.0], [2.0, 4.0]])  # two tasks, row means 1 and 3
    >>> # proximal steps for lam = 1: argmin nll + 1/2 phi^2 = 2/3 of the row mean, variance 1/3
    >>> post = bm.meta.llama(
    ...     nll, jnp.zeros(()), support, inner_lr=1 / 3, num_inner_steps=1, prior_precision=1.0
    ... )
    >>> g = post.info["gaussians"]
    >>> [round(float(v), 4) for v in g.mean.ravel()]
    [0.6667, 2.0]
    >>> [round(float(v), 4) for v in g.variance().ravel()]
    [0.3333, 0.3333]
    """
    seed = check_seed(seed)
    _check_output(support, labels, num_draws)
    g = llama_gaussians(
        loss_fn,
        init,
        support,
        inner_lr=inner_lr,
        num_inner_steps=num_inner_steps,
        prior_precision=prior_precision,
        hessian=hessian,
        predict_fn=predict_fn,
        output_loss_fn=output_loss_fn,
        on_invalid=on_invalid,
    )
    return to_posterior(
        g,
        init,
        method="llama",
        num_draws=num_draws,
        seed=seed,
        labels=labels,
        param_dim=param_dim,
        info={"gaussians": g},
    )


# ----------------------------------------------------------------------------- export


def _site_names(template: PyTree) -> list[tuple[str, tuple[int, ...]]]:
    leaves_with_paths, _ = jax.tree_util.tree_flatten_with_path(template)
    if len(leaves_with_paths) == 1 and not leaves_with_paths[0][0]:
        return [("theta", tuple(np.shape(leaves_with_paths[0][1])))]
    out = []
    for path, leaf in leaves_with_paths:
        parts = []
        for entry in path:
            for attr in ("key", "name", "idx"):
                if hasattr(entry, attr):
                    parts.append(str(getattr(entry, attr)))
                    break
        out.append(("_".join(parts) or "theta", tuple(np.shape(leaf))))
    return out


def to_posterior(
    gaussians: TaskGaussians,
    template: PyTree,
    *,
    method: str,
    num_draws: int = 1000,
    seed: int = 0,
    labels: Sequence[str] | None = None,
    param_dim: tuple[str, Sequence[str]] | None = None,
    info: dict | None = None,
):
    """Draw from per-task Gaussians and package the draws as a ``Posterior``.

    Sites follow the parameter pytree ``template``: a single array is the site ``theta``
    with dims ``["task", "theta_dim"]`` (or ``param_dim``'s name and coordinates); a dict
    or other container gives one site per leaf, named by its path (``"w1"``,
    ``"layer_0_b"``) with dims ``["task", "<name>_dim"]`` (1-D) or
    ``["task", "<name>_dim_0", ...]``. Draws have shape ``(1, num_draws, T, *leaf)``.

    >>> import jax.numpy as jnp, numpy as np, bayesmeta as bm
    >>> g = bm.meta.TaskGaussians.from_moments(np.zeros((3, 2)), np.stack([np.eye(2)] * 3))
    >>> post = bm.meta.to_posterior(g, jnp.zeros(2), method="custom", num_draws=10)
    >>> post.samples["theta"].shape, post.dims["theta"]
    ((1, 10, 3, 2), ['task', 'theta_dim'])
    """

    seed = check_seed(seed)
    _check_int("num_draws", num_draws, 1)
    num_tasks = gaussians.num_tasks
    labels = _check_labels(labels, num_tasks)
    draws = np.asarray(gaussians.sample(jax.random.PRNGKey(seed), num_draws))  # (T, S, D)
    sites = _site_names(template)
    samples, dims, coords = {}, {}, {"task": labels}
    offset = 0
    for name, shape in sites:
        size = int(np.prod(shape, dtype=int))
        block = draws[:, :, offset : offset + size].reshape(num_tasks, num_draws, *shape)
        offset += size
        samples[name] = np.moveaxis(block, 1, 0)[None]  # (1, S, T, *shape)
        if len(shape) == 0:
            dims[name] = ["task"]
        elif len(shape) == 1:
            dim = f"{name}_dim"
            if param_dim is not None and len(sites) == 1:
                dim, values = param_dim[0], list(param_dim[1])
                if len(values) != shape[0]:
                    raise ValueError(
                        f"param_dim: {len(values)} coordinate values for a parameter of "
                        f"size {shape[0]}"
                    )
                coords[dim] = values
            dims[name] = ["task", dim]
        else:
            dims[name] = ["task"] + [f"{name}_dim_{i}" for i in range(len(shape))]
    # tasks without a Gaussian (on_invalid="nan": no prior implied there) draw NaN on purpose
    invalid = ~np.all(np.isfinite(np.asarray(gaussians.mean).reshape(num_tasks, -1)), axis=1)
    return assemble(
        samples,
        method=method,
        dims=dims,
        coords=coords,
        info=info,
        info_type=MetaInfo,
        nan_tasks=[labels[i] for i in np.flatnonzero(invalid)],
    )


def linear_gaussian_nll(params: Any, batch: dict) -> Any:
    """Negative log-likelihood (constants dropped) of one linear-Gaussian task,
    ``sum_n mask_n (y_n - x_n . theta)^2 / (2 sigma_n^2)``, for
    ``batch = {"x": (n, d), "y": (n,), "noise_scale": (n,) or scalar, "mask": (n,)}``
    (``mask`` optional: padded rows contribute nothing).

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> batch = {"x": jnp.eye(2), "y": jnp.array([1.0, 0.0]), "noise_scale": 1.0}
    >>> round(float(bm.meta.linear_gaussian_nll(jnp.array([1.0, 2.0]), batch)), 4)  # 1/2 * 2^2
    2.0
    """
    resid = batch["y"] - batch["x"] @ params
    terms = 0.5 * jnp.square(resid / batch["noise_scale"])
    if "mask" in batch:
        terms = jnp.where(batch["mask"], terms, 0.0)
    return jnp.sum(terms)
