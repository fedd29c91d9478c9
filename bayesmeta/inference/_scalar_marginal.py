"""The summed marginal likelihood of scalar-``theta`` Gaussian tasks at a cost independent of
the number of tasks.

For scalar ``theta_t ~ N(mu, tau^2)`` and Gaussian rows with noise ``sigma * s_r``, task
``t`` enters the marginal only through ``A_t = sum x^2/s^2`` and ``ybar_t = sum x y/s^2 / A_t``
(plus data-only constants), and the hyperparameters enter through ``mu``, ``sigma`` and
``lam = tau^2 / sigma^2``::

    -2 log p(y | mu, tau, sigma) = N log(2 pi sigma^2) + 2 sum log s + SSE / sigma^2
                                   + sum_t log(1 + lam A_t)
                                   + sum_t A_t (ybar_t - mu)^2 / (sigma^2 (1 + lam A_t))

With ``u = lam / (lam + kappa)`` in ``[0, 1)`` and ``a_t = kappa A_t - 1`` this is, exactly,

    sum_t log(1 + lam A_t) = G(u) - T' log(1 - u),   G(u) = sum_t log(1 + u a_t)
    sum_t A_t d_t^k / (1 + lam A_t) = (1 - u) F_k(u),  F_k(u) = sum_t A_t d_t^k / (1 + u a_t)

(``d_t = ybar_t - y0`` centred at the precision-weighted mean ``y0``, ``T'`` the tasks with
``A_t > 0``). ``G`` and ``F_0, F_1, F_2`` are smooth on the whole of ``[0, 1]``: their
singularities sit at ``u = -1/a_t``, outside the interval. So each has a rapidly
converging Chebyshev series, which :func:`scalar_marginal` computes once (cost
``O(n T)``) and *checks* against the direct sums at the points between the interpolation
nodes, doubling the degree until the error is below ``tol`` relative to the sum of the
absolute terms (the rounding level of the direct sum itself at ``tol = 1e-12`` in
float64). Each evaluation then costs ``O(n)`` instead of ``O(T)``: NUTS on the
hyperparameters of 10,000 or 1,000,000 tasks costs the same per step. Where no degree up
to ``max_degree`` passes the check (task precisions spread over many orders of
magnitude), :func:`scalar_marginal` returns None and the caller sums over tasks.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

__all__ = ["ScalarMarginal", "scalar_marginal", "scalar_log_marginal_sum"]


class ScalarMarginal(NamedTuple):
    """Chebyshev form of the summed scalar-``theta`` marginal (see the module docstring),
    one series per group of tasks whose precisions ``A_t`` lie within a factor
    ``group_ratio`` of each other (``G`` groups, degree ``n``).

    coef       # shape=(G, n + 1, 4): coefficients of G, F_0, F_1, F_2 in x = 2u - 1
    kappa      # shape=(G,): the scale of lam in u = lam / (lam + kappa), per group
    informative  # shape=(G,): tasks with A_t > 0 in each group
    y0         # centring of ybar
    count      # rows in all tasks
    log_scale  # sum of log s_r over all rows
    sse        # within-task residual sum of squares (in units of sigma^2)
    """

    coef: jnp.ndarray
    kappa: jnp.ndarray
    informative: jnp.ndarray
    y0: jnp.ndarray
    count: jnp.ndarray
    log_scale: jnp.ndarray
    sse: jnp.ndarray


def _direct(u: np.ndarray, a: np.ndarray, w: np.ndarray, block: int = 32):
    """``G, F_0, F_1, F_2`` at each ``u`` by summing over tasks; also the sums of the
    absolute terms (the scale their rounding error is relative to). ``w`` is ``(3, T)``:
    ``A d^0, A d^1, A d^2``."""
    vals = np.empty((u.size, 4))
    scale = np.empty((u.size, 4))
    for i in range(0, u.size, block):
        den = 1.0 + u[i : i + block, None] * a[None, :]
        g = np.log(den)
        vals[i : i + block, 0] = g.sum(1)
        scale[i : i + block, 0] = np.abs(g).sum(1) + 1.0
        inv = 1.0 / den
        vals[i : i + block, 1:] = inv @ w.T
        scale[i : i + block, 1:] = inv @ np.abs(w).T
    return vals, scale


def _chebyshev_coefficients(values: np.ndarray) -> np.ndarray:
    """Coefficients ``c_k`` with ``f(x) = sum_k c_k T_k(x)`` interpolating ``values`` at the
    Chebyshev–Lobatto points ``x_j = cos(pi j / n)``, ``j = 0..n`` (the DCT-I)."""
    n = values.shape[0] - 1
    j = np.arange(n + 1)
    weights = np.ones(n + 1)
    weights[0] = weights[-1] = 0.5
    basis = np.cos(np.pi * np.outer(j, j) / n)  # [k, j]
    coef = (2.0 / n) * basis @ (weights[:, None] * values)
    coef[0] *= 0.5
    coef[-1] *= 0.5
    return coef


def _group_series(A: np.ndarray, w: np.ndarray, tol: float, max_degree: int):
    """``(kappa, coef, worst)`` of one group, the lowest degree (16, 32, ...) whose check
    between the nodes meets ``tol``; ``coef`` None when none up to ``max_degree`` does."""
    kappa = 1.0 / np.sqrt(A.min() * A.max())
    a = kappa * A - 1.0
    n, worst = 16, np.inf
    while n <= max_degree:
        x = np.cos(np.pi * np.arange(n + 1) / n)
        coef = _chebyshev_coefficients(_direct((x + 1.0) / 2.0, a, w)[0])
        xm = np.cos(np.pi * (np.arange(n) + 0.5) / n)  # where interpolation error peaks
        exact, scale = _direct((xm + 1.0) / 2.0, a, w)
        approx = np.polynomial.chebyshev.chebval(xm, coef).T
        worst = float(np.max(np.abs(approx - exact) / scale))
        if worst <= tol:
            return kappa, coef, worst
        n *= 2
    return kappa, None, worst


def _clenshaw(coef, x):
    """``sum_k coef[..., k, :] T_k(x)`` (``x`` broadcast against ``coef[..., 0, :]``),
    unrolled (the degree is small and fixed), so it fuses into one kernel and
    differentiates everywhere on [-1, 1]."""
    b1 = jnp.zeros_like(coef[..., 0, :] * x)
    b2 = b1
    for k in range(coef.shape[-2] - 1, 0, -1):
        b1, b2 = coef[..., k, :] + 2.0 * x * b1 - b2, b1
    return coef[..., 0, :] + x * b1 - b2


def scalar_marginal(
    A,
    b,
    c,
    count,
    log_scale,
    tol: float = 1e-12,
    max_degree: int = 256,
    group_ratio: float = 30.0,
    ybar=None,
    within=None,
) -> tuple[ScalarMarginal | None, dict]:
    """Build the Chebyshev form from per-task statistics (``A``, ``b = A ybar``,
    ``c = sum y^2/s^2``, rows and ``sum log s`` per task). Tasks are grouped so that
    precisions within a group differ by at most ``group_ratio``; each group gets its own
    series. Returns ``(form, info)``; ``form`` is None when some group meets ``tol`` at no
    degree up to ``max_degree``. ``info`` has the groups, the degree and the largest
    relative error found by the check.

    ``ybar`` and ``within`` (each task's own estimate ``b / A`` and its residual sum of
    squares ``sum (y - x ybar)^2 / s^2``, e.g. the centred statistics of
    :func:`bayesmeta.inference._gaussian.stable_task_stats`) replace ``b / A`` and
    ``c - b^2 / A`` when given: the latter difference cancels for data with a large offset
    (``y = 1e4 + noise`` in float32 leaves no digit of it)."""
    A, b, c = (np.asarray(v, dtype=np.float64) for v in (A, b, c))
    inf = A > 0
    if not np.any(inf):
        return None, {"form": "direct", "why": "no task carries information about theta"}
    Ai = A[inf]
    if ybar is None:
        ybar = b[inf] / Ai
        sse = float(np.sum(np.maximum(c[inf] - b[inf] * ybar, 0.0)) + np.sum(c[~inf]))
        y0 = float(np.sum(b[inf]) / np.sum(Ai))
    else:
        ybar = np.asarray(ybar, dtype=np.float64)[inf]
        sse = float(np.sum(np.asarray(within, dtype=np.float64)))
        y0 = float(np.sum(Ai * ybar) / np.sum(Ai))
    d = ybar - y0
    order = np.argsort(Ai)
    Ai, d = Ai[order], d[order]
    starts = [0]
    for i in range(1, Ai.size):
        if Ai[i] > group_ratio * Ai[starts[-1]]:
            starts.append(i)
    bounds = list(zip(starts, starts[1:] + [Ai.size], strict=True))
    kappas, coefs, worst = [], [], 0.0
    for lo, hi in bounds:
        Ag, dg = Ai[lo:hi], d[lo:hi]
        kappa, coef, err = _group_series(Ag, np.stack([Ag, Ag * dg, Ag * dg * dg]), tol, max_degree)
        worst = max(worst, err)
        if coef is None:
            return None, {
                "form": "direct",
                "why": f"Chebyshev degree {max_degree} reached relative error {err:.1e} "
                f"> {tol:.0e} for tasks with precisions {Ag.min():.3g}..{Ag.max():.3g}",
            }
        kappas.append(kappa)
        coefs.append(coef)
    n = max(cf.shape[0] for cf in coefs)
    padded = np.zeros((len(coefs), n, 4))  # higher coefficients of a lower degree are 0
    for g, cf in enumerate(coefs):
        padded[g, : cf.shape[0]] = cf
    form = ScalarMarginal(
        jnp.asarray(padded),
        jnp.asarray(np.array(kappas)),
        jnp.asarray(np.array([hi - lo for lo, hi in bounds], dtype=np.float64)),
        *(jnp.asarray(v) for v in (y0, float(np.sum(count)), float(np.sum(log_scale)), sse)),
    )
    info = {"form": "chebyshev", "groups": len(coefs), "degree": n - 1, "max_rel_error": worst}
    return form, info


def scalar_log_marginal_sum(form: ScalarMarginal, mu, tau, s2) -> jnp.ndarray:
    """``sum_t log p(y_t | mu, tau, sigma)`` from the Chebyshev form (``s2 = sigma^2``)."""
    lam = tau**2 / s2
    kappa = form.kappa.astype(jnp.result_type(lam))
    u = lam / (lam + kappa)  # (G,)
    one_minus_u = kappa / (lam + kappa)
    vals = _clenshaw(form.coef.astype(u.dtype), (2.0 * u - 1.0)[:, None])  # (G, 4)
    m = mu - form.y0
    log_det = jnp.sum(vals[:, 0] - form.informative * jnp.log(one_minus_u))
    quad = jnp.sum(one_minus_u * (m * m * vals[:, 1] - 2.0 * m * vals[:, 2] + vals[:, 3]))
    return -0.5 * (
        form.count * jnp.log(2.0 * jnp.pi * s2)
        + 2.0 * form.log_scale
        + form.sse / s2
        + log_det
        + quad / s2
    )
