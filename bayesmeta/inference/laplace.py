"""Nested Laplace: NUTS on the hyperparameters, each task's parameters integrated out by a
Laplace approximation (the idea of R-INLA and of Stan's embedded Laplace).

For a likelihood with a row-wise density (logistic, Poisson, binomial, Gaussian, or a
row-wise ``Custom``) under a ``Normal`` or ``MvNormal`` population, write task t's log
joint given the hyperparameters ``phi`` (population ``mu``, ``tau``, correlation, the
regression ``beta_task``, and the likelihood's shared ``beta`` / ``sigma``) as

    f_t(theta; phi) = log p(y_t | theta, phi) + log N(theta; mu_t, Sigma).

Its mode ``theta_t^(phi)`` is found by Newton's method (all tasks at once, vmapped; a fixed
budget of ``newton_steps`` damped steps, warm-started from the task's mode at pilot
hyperparameters), and

    log p(y_t | phi) ~= f_t(theta_t^; phi) + p/2 log(2 pi) - 1/2 log det(-H_t),

``H_t`` the Hessian of ``f_t`` at the mode. The mode carries a custom derivative, so the
gradient of the approximate marginal in ``phi`` is the implicit-function-theorem one at
the mode (``d theta^ / d phi = -H^-1 d grad f / d phi``), never a derivative of the
Newton iterations. ``phi`` is sampled on ``log p(phi) + sum_t log p(y_t | phi)``: by
default with independence Metropolis-Hastings (:mod:`bayesmeta.inference.independence`;
a split Student-t proposal at the mode, all proposals evaluated in batches, each
proposal's pass also drawing every ``theta_t``), or by NUTS (``hyper_sampler="nuts"``, and
the fallback when the independence sampler accepts too little). Every draw ``phi_s`` is
completed by a draw of every ``theta_t`` from its Laplace Gaussian
``N(theta_t^, -H_t^-1)``. For a Gaussian
likelihood the approximation is exact (the collapsed engine's marginal).

**Importance correction** (``importance=True``, the default): per task, the draws are
reweighted by ``w_st = exp(f_t(theta_st; phi_s)) / (q_st(theta_st) p~(y_t | phi_s))``
(the exact joint over the Laplace proposal) and resampled; ``info["laplace"]["ess"]`` is
each task's importance effective sample size.

**Trust diagnostics** (``info["laplace"]``, per task): whether Newton converged at every
hyperparameter draw (``converged``: a further Newton step below ``1e-6`` relative), the
importance ESS, and a skewness check (``skew``: the largest ``|f(m + d) - f(m - d)|``
over the principal directions ``d`` at 1.5 standard deviations of the Laplace Gaussian;
0 for a Gaussian log-density).

**When ``method="auto"`` would pick it** (for likelihoods that do not collapse exactly;
it does so only with ``AUTO_PICKS_LAPLACE`` set, off while nested Laplace measures slower
than full NUTS; the pilot's verdict is recorded either way): a pilot at plug-in
hyperparameters (the median of the per-task penalised estimates for the
mean, their DerSimonian-Laird spread, at least 0.1, for tau) must find, for every task,
(1) a finite maximum of the task's *own* likelihood (:func:`glm_mle_exists`: no
separation, no all-zero Poisson task, enough informative rows; where the task's data
alone pin nothing down the posterior of ``theta_t`` follows the prior's tails, where a
Laplace Gaussian is least trustworthy), (2) Newton converged, and (3) an importance ESS
of at least half of 256 pilot draws. Otherwise full NUTS. ``post.info["auto"]`` records
the choice and the failing tasks. The skewness is reported, not used: on well-behaved
logistic tasks of 10 to 60 rows it was 0.25 at the pilot spread, as large as on
separated ones, so it does not tell them apart.
"""

from __future__ import annotations

import math
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro

from bayesmeta import populations as pops
from bayesmeta.inference import _gaussian as gauss
from bayesmeta.inference import sharding
from bayesmeta.inference._flat import (
    MAX_DIM,
    MIN_ACCEPTANCE,
    FlatPrograms,
    check_hyper_sampler,
    independence_hyper,
)
from bayesmeta.inference.assemble import assemble
from bayesmeta.inference.collapsed import _pointwise
from bayesmeta.inference.diagnostics import FitError, check_fit
from bayesmeta.inference.nuts import (
    NUTS_OPTIONS,
    TARGET_ACCEPT_RETRY,
    CompiledNUTS,
    _check_options,
    chain_threads,
    check_bool_option,
    check_int_option,
    resolve_chain_method,
    start_target,
)
from bayesmeta.inference.registry import Engine, sampler_cli_options
from bayesmeta.info import LaplaceInfo
from bayesmeta.likelihoods import _GLM, glm_mle_exists
from bayesmeta.model import Hierarchical, _spread_estimate

__all__ = ["fit_laplace", "why_not_laplace", "LAPLACE_OPTIONS", "laplace_trust"]

LAPLACE_OPTIONS = dict(
    NUTS_OPTIONS,
    newton_steps=6,
    importance=True,
    log_likelihood=True,
    theta_batch=256,
    hyper_sampler="auto",
)
#: the rule of hyper_sampler="auto" (shared with the collapsed engine, _flat)
MIN_IMH_ACCEPTANCE = MIN_ACCEPTANCE
MAX_IMH_DIM = MAX_DIM
_IMH_BLOCK = 32
# relative change of the potential at the mode that counts as a new surface (float32
# arithmetic on a sum over 1,000 tasks carries about 1e-7 relative)
_POTENTIAL_TOL = 1e-5
_PROGRAMS_ATTR = "_laplace_programs"
# the trust rule of method="auto" (module docstring)
MIN_ESS_FRACTION = 0.5
#: whether method="auto" picks nested Laplace where the pilot trusts it. Off: measured on
#: 1,000 logistic tasks (20 rows, 4 features, 4 x 1000 draws) the independence sampler's
#: first fit reaches 18.8 ESS/s against 3.2 for full NUTS (5.9x, short of the 20x the
#: switch waits for), and the approximation puts tau 0.7-1.0 posterior sd below full NUTS
AUTO_PICKS_LAPLACE = False
PILOT_DRAWS = 256
_NEWTON_TOL = 1e-6


def why_not_laplace(model, tasks=None) -> str | None:
    """None when ``model`` can be fitted by ``method="laplace"``, else why not."""
    if not isinstance(model, Hierarchical):
        return f"the model is a {type(model).__name__}, not a bm.Hierarchical"
    if not isinstance(model.population, pops.Normal | pops.MvNormal):
        return f"the population is {type(model.population).__name__}, not Normal or MvNormal"
    lik = model.likelihood
    if lik.per_task_density:
        return f"the likelihood {type(lik).__name__} is not row-wise"
    if lik.task_priors():
        return "a per-task nuisance parameter (e.g. a per-task noise) is not integrated out"
    return None


# ---------------------------------------------------------------------- per-task pieces
def _canonical_terms(lik):
    """``(eta, data_t, extras) -> (score residual, weight)`` per row for a likelihood whose
    log-density in its linear predictor has score ``x (y - E y) / phi`` and Fisher weight
    ``Var y / phi^2`` (canonical links: logistic, Poisson, binomial; Gaussian with known or
    shared noise), else None (the Hessian then comes from autodiff)."""
    name = type(lik).__name__
    if name == "LogisticRegression":

        def terms(eta, data_t, extras):
            prob = jax.nn.sigmoid(eta)
            return data_t["y"] - prob, prob * (1.0 - prob)

    elif name == "Poisson":

        def terms(eta, data_t, extras):
            rate = jnp.exp(eta)
            return data_t["y"] - rate, rate

    elif name == "Binomial":

        def terms(eta, data_t, extras):
            prob, n = jax.nn.sigmoid(eta), data_t["x"][..., 0]
            return data_t["y"] - n * prob, n * prob * (1.0 - prob)

    elif name in ("LinearRegression", "Normal", "NormalKnownNoise") and lik.noise_mode in (
        "known",
        "shared",
    ):

        def terms(eta, data_t, extras):
            sd = data_t["noise_scale"] if lik.noise_mode == "known" else extras["sigma"]
            w = 1.0 / sd**2
            return (data_t["y"] - eta) * w, jnp.broadcast_to(w, eta.shape)

    else:
        return None
    return terms


# Per-task matrices are p x p with p a handful of coefficients: written out as elementwise
# operations they vectorise over the tasks, where batched LAPACK calls do not (measured on
# 1,000 tasks of 5 coefficients on a CPU: a batched solve 0.43 ms, the unrolled Cholesky
# solve below 0.07 ms)
_UNROLL_MAX = 8


def _chol(a):
    """Lower Cholesky factor of a symmetric positive-definite ``(p, p)``."""
    p = a.shape[-1]
    if p > _UNROLL_MAX:
        return jnp.linalg.cholesky(a)
    rows = [[None] * p for _ in range(p)]
    for j in range(p):
        diag = a[..., j, j] - sum(rows[j][k] ** 2 for k in range(j))
        rows[j][j] = jnp.sqrt(diag)
        for i in range(j + 1, p):
            off = a[..., i, j] - sum(rows[i][k] * rows[j][k] for k in range(j))
            rows[i][j] = off / rows[j][j]
    zero = jnp.zeros_like(a[..., 0, 0])
    return jnp.stack(
        [jnp.stack([rows[i][j] if j <= i else zero for j in range(p)], -1) for i in range(p)],
        -2,
    )


def _chol_solve(chol, b):
    """``(L L^T)^-1 b`` for a lower ``L`` ``(p, p)`` and ``b`` ``(p,)``."""
    p = chol.shape[-1]
    if p > _UNROLL_MAX:
        return jax.scipy.linalg.cho_solve((chol, True), b)
    y = [None] * p
    for i in range(p):
        y[i] = (b[..., i] - sum(chol[..., i, k] * y[k] for k in range(i))) / chol[..., i, i]
    x = [None] * p
    for i in reversed(range(p)):
        x[i] = (y[i] - sum(chol[..., k, i] * x[k] for k in range(i + 1, p))) / chol[..., i, i]
    return jnp.stack(x, -1)


def _lower_solve(chol, b):
    """``L^-1 b`` for a lower ``L`` ``(p, p)`` and ``b`` ``(p,)``."""
    p = chol.shape[-1]
    if p > _UNROLL_MAX:
        return jax.scipy.linalg.solve_triangular(chol, b, lower=True)
    y = [None] * p
    for i in range(p):
        y[i] = (b[..., i] - sum(chol[..., i, k] * y[k] for k in range(i))) / chol[..., i, i]
    return jnp.stack(y, -1)


def _upper_solve(chol, z):
    """``L^-T z`` for a lower ``L``: a draw with covariance ``(L L^T)^-1`` from ``z``."""
    p = chol.shape[-1]
    if p > _UNROLL_MAX:
        return jax.scipy.linalg.solve_triangular(chol.T, z, lower=False)
    x = [None] * p
    for i in reversed(range(p)):
        x[i] = (z[..., i] - sum(chol[..., k, i] * x[k] for k in range(i + 1, p))) / chol[..., i, i]
    return jnp.stack(x, -1)


def _task_pieces(lik, pop, param_shape, regression):
    """Functions of one task (``theta`` a vector of ``p``): its log joint
    ``f(theta, extras, loc, chol, data_t)`` and its gradient and negative Hessian in
    ``theta`` (analytic for the canonical GLMs, by autodiff otherwise)."""
    p = int(np.prod(param_shape)) if param_shape else 1
    terms = _canonical_terms(lik)

    def shaped(theta):
        return theta if param_shape else theta[0]

    def design(data_t):
        x = lik.design(data_t)
        rows = data_t["y"].shape[0]
        return jnp.ones((rows, 1), data_t["y"].dtype) if x is None else x

    def eta_of(theta, extras, data_t):
        x = design(data_t)
        eta = x @ theta
        if getattr(lik, "_split", None) is not None:
            eta = eta + lik._common_eta(data_t, extras)
        return eta, x

    # a GLM's rows from their linear predictor x @ theta: jaxlib 0.10.2 miscompiled the
    # float32 row-wise form below (theta broadcast to rows, intercept + slopes summed),
    # under a vmap over hyperparameter draws of the vmap over tasks, by up to 119 nats on
    # 1,000 logistic tasks (right in float64 and on jax 0.12)
    by_eta = hasattr(lik, "_dist_eta") and type(lik)._dist_eta is not _GLM._dist_eta

    def loglik(theta, extras, data_t):
        if by_eta and lik.design(data_t) is not None:
            eta, _ = eta_of(theta, extras, data_t)
            lp = lik._dist_eta(eta, data_t, extras).log_prob(data_t["y"])
        else:
            rows = data_t["y"].shape[0]
            theta_rows = jnp.broadcast_to(shaped(theta), (rows, *param_shape))
            lp = lik.row_dist(theta_rows, data_t, extras).log_prob(data_t["y"])
        return jnp.sum(jnp.where(data_t["mask"], lp, 0.0))

    # the triangular solves written out, as the Newton solves (_UNROLL_MAX)
    def precision(chol):
        eye = jnp.eye(p, dtype=chol.dtype)
        return jnp.stack([_chol_solve(chol, eye[i]) for i in range(p)], -1)

    def logprior(theta, loc, chol):
        z = _lower_solve(chol, theta - loc)
        logdet = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(chol))))
        return -0.5 * jnp.sum(z**2) - logdet - 0.5 * p * math.log(2 * math.pi)

    def logjoint(theta, extras, loc, chol, data_t):
        return loglik(theta, extras, data_t) + logprior(theta, loc, chol)

    if terms is None:
        grad = jax.grad(logjoint)

        def neg_hess(theta, extras, loc, chol, data_t):
            return -jax.jacfwd(grad)(theta, extras, loc, chol, data_t)

        return logjoint, grad, neg_hess, p

    def grad(theta, extras, loc, chol, data_t):
        eta, x = eta_of(theta, extras, data_t)
        resid, _ = terms(eta, data_t, extras)
        resid = jnp.where(data_t["mask"], resid, 0.0)
        return resid @ x - precision(chol) @ (theta - loc)

    def neg_hess(theta, extras, loc, chol, data_t):
        eta, _ = eta_of(theta, extras, data_t)
        _, weight = terms(eta, data_t, extras)
        weight = jnp.where(data_t["mask"], weight, 0.0)
        # the rows' outer products x x^T are data, computed once (_padded_data)
        return (weight @ data_t["outer"]).reshape(p, p) + precision(chol)

    return logjoint, grad, neg_hess, p


def _newton_mode(grad, neg_hess, theta0, args, steps):
    """The mode from ``theta0``: damped Newton with a fixed budget (no coefficient moves
    by more than 2 in a step). Its derivative in ``args`` is the implicit one at the mode,
    ``d mode = (-H)^-1 d_args grad f`` (a custom VJP: one reverse pass through ``grad``
    and a p x p solve, not a derivative of the iterations)."""

    def newton(theta0, args):
        def body(_, th):
            step = _chol_solve(_chol(neg_hess(th, *args)), grad(th, *args))
            return th + step / jnp.maximum(1.0, jnp.max(jnp.abs(step)) / 2.0)

        return jax.lax.fori_loop(0, steps, body, theta0)

    @jax.custom_vjp
    def mode(theta0, args):
        return newton(theta0, args)

    def fwd(theta0, args):
        m = newton(theta0, args)
        return m, (m, args)

    def bwd(res, v):
        m, args = res
        u = _chol_solve(_chol(neg_hess(m, *args)), v)
        _, vjp = jax.vjp(lambda a: grad(m, *a), args)
        return jnp.zeros_like(m), vjp(u)[0]

    mode.defvjp(fwd, bwd)
    return mode(theta0, args)


def _laplace_task(pieces, steps, theta0, extras, loc, chol, data_t):
    """``(log marginal, mode, -Hessian, relative size of a further Newton step)``."""
    logjoint, grad, neg_hess, p = pieces
    args = (extras, loc, chol, data_t)
    mode = _newton_mode(grad, neg_hess, theta0, args, steps)
    nh = neg_hess(mode, *args)
    nh = 0.5 * (nh + nh.T)
    chol_h = _chol(nh)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol_h)))
    lm = logjoint(mode, *args) + 0.5 * p * math.log(2 * math.pi) - 0.5 * logdet
    step = _chol_solve(chol_h, jax.lax.stop_gradient(grad(mode, *args)))
    rel = jnp.max(jnp.abs(jax.lax.stop_gradient(step))) / (
        1.0 + jnp.max(jnp.abs(jax.lax.stop_gradient(mode)))
    )
    return lm, mode, nh, rel


def _population_pieces(pop, hyper, param_shape, regression, task_x, num_tasks):
    """Per-task location ``(T, p)`` and the Cholesky factor ``(p, p)`` of Sigma."""
    h = gauss.population_hyper(pop, hyper, param_shape, None, regression, task_x)
    loc = jnp.broadcast_to(h.mu, (num_tasks, h.mu.shape[-1]))
    return loc, h.scale_tril


def _all_tasks(lik, pop, param_shape, regression, steps):
    pieces = _task_pieces(lik, pop, param_shape, regression)
    one = partial(_laplace_task, pieces, steps)
    return jax.vmap(one, in_axes=(0, None, 0, None, 0)), pieces[0]


def _hyper_model(model, param_shape, regression, steps, record=False):
    """NumPyro model of the hyperparameters with every theta_t Laplace-integrated;
    called as ``fn(data=padded per-task data, start=(T, p), task_x=...)``. With
    ``record``, every task's Laplace pieces are kept as deterministic sites (``_lm``,
    ``_mode``, ``_neg_h``, ``_rel``, ``_loc``, ``_chol``) for the independence sampler."""
    pop, lik = model.population, model.likelihood
    vmapped, _ = _all_tasks(lik, pop, param_shape, regression, steps)

    def laplace_model(data, start, task_x=None):
        hyper = pop.sample_hyper(param_shape, regression)
        extras = {name: numpyro.sample(name, d) for name, d in lik.global_priors().items()}
        num_tasks = start.shape[0]
        loc, chol = _population_pieces(pop, hyper, param_shape, regression, task_x, num_tasks)
        lm, mode, neg_h, rel = vmapped(start, extras, loc, chol, data)
        if record:
            for name, value in (
                ("_lm", lm),
                ("_mode", mode),
                ("_neg_h", neg_h),
                ("_rel", rel),
                ("_loc", loc),
                ("_chol", chol),
            ):
                numpyro.deterministic(name, value)
        numpyro.factor("y_laplace", jnp.sum(lm))

    return laplace_model


def _padded_data(lik, tasks) -> dict:
    """Per-task padded arrays ``(T, M, ...)`` with a row mask: what one task's log
    likelihood reads."""
    pad = tasks.padded()
    flat = lik.data_arrays(tasks)
    t, pos = tasks.task_index, np.arange(tasks.num_obs) - tasks.offsets[tasks.task_index]
    out = {"y": jnp.asarray(pad.y), "mask": jnp.asarray(pad.mask)}
    for name in ("x", "noise_scale"):
        if name in flat:
            arr = np.asarray(flat[name], float)
            fill = 1.0 if name == "noise_scale" else 0.0
            full = np.full((tasks.num_tasks, pad.y.shape[1], *arr.shape[1:]), fill)
            full[t, pos] = arr
            out[name] = jnp.asarray(full)
    design = lik.design({k: jnp.asarray(v) for k, v in flat.items()})
    x = np.ones((tasks.num_obs, 1)) if design is None else np.asarray(design)
    outer = np.zeros((tasks.num_tasks, pad.y.shape[1], x.shape[1] ** 2))
    outer[t, pos] = (x[:, :, None] * x[:, None, :]).reshape(tasks.num_obs, -1)
    out["outer"] = jnp.asarray(outer)
    return out


def _start(lik, tasks, param_shape) -> np.ndarray:
    """Starting points of the Newton solves: each task's penalised estimate where the
    likelihood has them (the GLMs), else zeros; ``(T, p)``."""
    p = int(np.prod(param_shape)) if param_shape else 1
    est = getattr(lik, "glm_estimates", None)
    if est is not None:
        e = est(tasks)
        start = np.where(e.converged[:, None], e.estimate, 0.0)
        return start.reshape(tasks.num_tasks, p)
    rough = lik.rough_estimates(tasks)
    if rough is not None:
        r = np.asarray(rough[0], float).reshape(tasks.num_tasks, p)
        return np.where(np.isfinite(r), r, 0.0)
    return np.zeros((tasks.num_tasks, p))


# ---------------------------------------------------------------------- draws of theta
def _draw_theta(logjoint, key, lm, mode, neg_h, extras, loc, chol, data):
    """One draw of every theta_t from its Laplace Gaussian ``N(mode, (-H)^-1)`` and its
    log importance weight ``f(theta) - log q(theta) - log p~(y_t | phi)``."""
    chol_h = jax.vmap(_chol)(neg_h)  # (T, p, p): -H = C C^T
    z = jax.random.normal(key, mode.shape, mode.dtype)
    # theta = mode + C^-T z has covariance (-H)^-1
    theta = mode + jax.vmap(_upper_solve)(chol_h, z)
    logq = (
        -0.5 * jnp.sum(z**2, -1)
        + jnp.sum(jnp.log(jnp.diagonal(chol_h, axis1=-2, axis2=-1)), -1)
        - 0.5 * mode.shape[-1] * math.log(2 * math.pi)
    )
    f = jax.vmap(logjoint, in_axes=(0, None, 0, None, 0))(theta, extras, loc, chol, data)
    return theta, f - logq - lm


@partial(jax.jit, static_argnames=("lik", "pop", "param_shape", "regression", "steps", "batch"))
def _complete(
    lik, pop, param_shape, regression, steps, batch, hyper_flat, data, start, task_x, key
):
    """For every hyperparameter draw: the Laplace Gaussians of all tasks, one draw of each
    theta_t, its log importance weight, the Newton convergence and the skewness."""
    vmapped, logjoint = _all_tasks(lik, pop, param_shape, regression, steps)
    extras_names = list(lik.global_priors())
    num = next(iter(hyper_flat.values())).shape[0]
    num_tasks = start.shape[0]
    keys = jax.random.split(key, num)

    def one(args):
        hyper, k = args
        extras = {n: hyper[n] for n in extras_names}
        loc, chol = _population_pieces(pop, hyper, param_shape, regression, task_x, num_tasks)
        lm, mode, neg_h, rel = vmapped(start, extras, loc, chol, data)
        theta, logw = _draw_theta(logjoint, k, lm, mode, neg_h, extras, loc, chol, data)
        return theta, logw, rel

    return jax.lax.map(one, (hyper_flat, keys), batch_size=batch)


def _skewness(logjoint, mode, neg_h, extras, loc, chol, data, scale=1.5):
    """Largest ``|f(m + d) - f(m - d)|`` over principal directions at ``scale`` sd."""
    vals, vecs = jnp.linalg.eigh(jnp.linalg.inv(neg_h))  # (T, p), (T, p, p)
    d = scale * jnp.swapaxes(vecs, -1, -2) * jnp.sqrt(jnp.maximum(vals, 0.0))[..., None]

    def per_task(m, dirs, loc_t, data_t):
        fp = jax.vmap(lambda v: logjoint(m + v, extras, loc_t, chol, data_t))(dirs)
        fm = jax.vmap(lambda v: logjoint(m - v, extras, loc_t, chol, data_t))(dirs)
        return jnp.max(jnp.abs(fp - fm))

    return jax.vmap(per_task)(mode, d, loc, data)


def _ess_of(logw):
    w = jnp.exp(logw - jax.scipy.special.logsumexp(logw, axis=0, keepdims=True))
    return 1.0 / jnp.sum(w**2, axis=0)


def _pilot(model, tasks, built, data):
    """Laplace of every task at plug-in hyperparameters: the median of the per-task
    penalised estimates for the mean (per-task locations are not used), their
    DerSimonian-Laird spread (at least 0.1) for tau, a pooled least-squares ``beta`` and
    the sd of ``y`` for a learned ``sigma``; 25 Newton steps from the estimates."""
    lik, pop = model.likelihood, model.population
    param_shape = tuple(built.param_shape)
    p = int(np.prod(param_shape)) if param_shape else 1
    est = getattr(lik, "glm_estimates", None)
    start = _start(lik, tasks, param_shape)
    if est is not None:
        e = est(tasks)
        rough, newton_ok = (e.estimate, e.variance), e.converged
    else:
        rough, newton_ok = lik.rough_estimates(tasks), np.ones(tasks.num_tasks, bool)
    spread = _spread_estimate(rough, tasks, (p,)) if rough is not None else None
    tau = np.maximum(0.1, np.full(p, 1.0) if spread is None else np.asarray(spread).ravel())
    loc = jnp.broadcast_to(jnp.asarray(np.median(start, axis=0)), (tasks.num_tasks, p))
    chol = jnp.diag(jnp.asarray(tau))
    extras = {}
    full = lik.global_priors()
    if "beta" in full:
        full_design = lik._design_np(tasks, full=True)
        coef = np.linalg.lstsq(full_design, tasks.y, rcond=None)[0]
        extras["beta"] = jnp.asarray(coef[list(lik._split[1])])
    if "sigma" in full:
        extras["sigma"] = jnp.asarray(np.sqrt(max(np.var(tasks.y), 1e-12)))
    vmapped, logjoint = _all_tasks(lik, pop, param_shape, None, 25)
    lm, mode, neg_h, rel = jax.jit(vmapped)(jnp.asarray(start), extras, loc, chol, data)
    return {
        "mode": mode,
        "neg_h": neg_h,
        "rel": rel,
        "extras": extras,
        "loc": loc,
        "chol": chol,
        "logjoint": logjoint,
        "newton_ok": newton_ok,
    }


def laplace_trust(model, tasks) -> dict:
    """The pilot of ``method="auto"`` (module docstring): per task, whether its own
    likelihood has a finite maximum, Newton's convergence, the skewness and the importance
    ESS of ``PILOT_DRAWS`` draws at the plug-in hyperparameters of :func:`_pilot`; ``ok``
    when every task passes."""
    lik = model.likelihood
    built = model.build(tasks)
    data = _padded_data(lik, tasks)
    pilot = _pilot(model, tasks, built, data)
    mode, neg_h, rel = pilot["mode"], pilot["neg_h"], pilot["rel"]
    extras, loc, chol, logjoint = pilot["extras"], pilot["loc"], pilot["chol"], pilot["logjoint"]
    newton_ok = pilot["newton_ok"]
    skew = np.asarray(_skewness(logjoint, mode, neg_h, extras, loc, chol, data))
    chol_h = jnp.linalg.cholesky(neg_h)
    z = jax.random.normal(jax.random.PRNGKey(0), (PILOT_DRAWS, *mode.shape))
    dev = jax.vmap(
        lambda zz: jax.scipy.linalg.solve_triangular(
            jnp.swapaxes(chol_h, -1, -2), zz[..., None], lower=False
        )[..., 0]
    )(z)
    theta = mode[None] + dev
    logq = -0.5 * jnp.sum(z**2, -1)
    f = jax.vmap(
        lambda th: jax.vmap(logjoint, in_axes=(0, None, 0, None, 0))(th, extras, loc, chol, data)
    )(theta)
    ess = np.asarray(_ess_of(f - logq)) / PILOT_DRAWS
    converged = newton_ok & (np.asarray(rel) < _NEWTON_TOL)
    own_max = (
        glm_mle_exists(lik, tasks)
        if hasattr(lik, "_mean_weight")
        else np.ones(tasks.num_tasks, bool)
    )
    per_task_ok = converged & own_max & (ess >= MIN_ESS_FRACTION)
    bad = [tasks.labels[i] for i in np.flatnonzero(~per_task_ok)]
    return {
        "ok": bool(per_task_ok.all()),
        "tasks_failing": bad,
        "converged": converged,
        "own_maximum": own_max,
        "skew": skew,
        "ess_fraction": ess,
    }


# ---------------------------------------------------------------------- the engine
def check_laplace_options(opts: dict) -> None:
    """The options of ``method="laplace"`` (merged with the defaults), checked before
    anything is built: those of NUTS plus ``newton_steps`` and ``theta_batch`` (integers
    >= 1), ``importance`` and ``log_likelihood`` (bools)."""
    _check_options(opts)
    steps = opts["newton_steps"]
    if not isinstance(steps, int | np.integer) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"newton_steps: must be a positive integer, got {steps!r}")
    check_int_option(opts, "theta_batch")
    check_hyper_sampler(opts)
    check_bool_option(opts, "importance")
    check_bool_option(opts, "log_likelihood")


def _independence_programs(model, param_shape, regression, steps, inputs):
    """The compiled pieces of the independence sampler for one model structure
    (:class:`~bayesmeta.inference._flat.FlatPrograms` over the flattened unconstrained
    hyperparameters): the potential's value and gradient at one point, and for a block of
    ``_IMH_BLOCK`` proposals their log densities together with every task's Laplace mode,
    one draw of every theta_t from its Laplace Gaussian and that draw's log importance
    weight (the completion fused into the same pass, so the Laplace solves are not
    repeated)."""
    lik, pop = model.likelihood, model.population
    progs = FlatPrograms(_hyper_model(model, param_shape, regression, steps, record=True), inputs)
    logjoint = _task_pieces(lik, pop, param_shape, regression)[0]
    extras_names = list(lik.global_priors())

    def potential(x, inputs):
        return -progs.logp(x, inputs)[0]

    def one(x, key, inputs):
        # the model's recorded Laplace pieces at x
        lp, params, trace = progs.logp(x, inputs)
        pc = {k: trace[k]["value"] for k in ("_lm", "_mode", "_neg_h", "_rel", "_loc", "_chol")}
        extras = {n: params[n] for n in extras_names}
        theta, logw = _draw_theta(
            logjoint,
            key,
            pc["_lm"],
            pc["_mode"],
            pc["_neg_h"],
            extras,
            pc["_loc"],
            pc["_chol"],
            inputs["data"],
        )
        return dict(lp=lp, mode=pc["_mode"], theta=theta, logw=logw, rel=pc["_rel"], params=params)

    def block(xs, key, inputs):
        keys = jax.random.split(key, xs.shape[0])
        return jax.vmap(one, in_axes=(0, 0, None))(xs, keys, inputs)

    progs.define("value_and_grad", jax.value_and_grad(potential))
    progs.define("block", block)
    return progs


def _independence_hyper(model, store, key, regression, inputs, opts, seed):
    """Independence Metropolis-Hastings on the hyperparameters' Laplace marginal
    (:func:`~bayesmeta.inference._flat.independence_hyper`): ``(samples, sampler stats,
    timing, why)``, or ``(None, None, None, why)`` when ``hyper_sampler="auto"`` should
    use NUTS instead (too many hyperparameters, no curvature at the mode, or an
    acceptance rate below ``MIN_IMH_ACCEPTANCE`` in some chain); ``why`` records the
    sampler's diagnostics and, under ``"completion"``, every draw's theta, importance
    log-weight and Newton residual. ``inputs["start"]`` becomes every task's mode at the
    hyperparameters' mode, the warm start of the proposals' Newton solves and of the
    theta completion."""
    param_shape, _, steps = key
    progs = store.get((*key, "independence"))
    if progs is None:
        progs = store[(*key, "independence")] = _independence_programs(
            model, param_shape, regression, steps, inputs
        )

    def at_mode(x, run_blocks, value_and_grad):
        # the potential's Newton solves start from every task's mode at x, where they
        # converge in a step or two near x; changed when that moved the potential at x
        before = value_and_grad(x)[0]
        out = run_blocks(np.asarray(x)[None])
        settled = np.asarray(out["rel"][0]) < _NEWTON_TOL
        inputs["start"] = jnp.where(jnp.asarray(settled)[:, None], out["mode"][0], inputs["start"])
        after = value_and_grad(x)[0]
        return abs(after - before) > _POTENTIAL_TOL * max(1.0, abs(after))

    try:
        samples, extras, timing, why, kept = independence_hyper(
            progs,
            inputs,
            opts,
            seed,
            block=_IMH_BLOCK,
            dtype=inputs["start"].dtype,
            at_mode=at_mode,
        )
    except FitError as err:
        raise FitError(f"laplace: {err}") from err
    if samples is not None:
        # theta_t of each draw: the draw from its Laplace Gaussian made with that proposal
        why["completion"] = {k: kept[k] for k in ("theta", "logw", "rel")}
    return samples, extras, timing, why


def _nuts_hyper(model, store, key, regression, inputs, nuts_opts, layout, seed):
    """NUTS on the hyperparameters' Laplace marginal (one compiled program per model
    structure, as full NUTS): ``(samples, sampler stats, timing, info)``."""
    param_shape, _, steps = key
    key = (
        *key,
        layout,
        tuple(
            (k, v)
            for k, v in sorted(nuts_opts.items())
            if k not in ("progress_bar", "chain_threads")
        ),
    )
    program = store.get(key)
    if program is None:
        fn = _hyper_model(model, param_shape, regression, steps)
        program = store[key] = CompiledNUTS(fn, nuts_opts, layout)
    target = start_target(nuts_opts)
    threads = chain_threads(nuts_opts, layout)
    samples, extras, timing = program.run(seed, inputs, target, threads)
    info = {"target_accept": target}
    divergences = int(np.sum(np.asarray(extras["diverging"])))
    if nuts_opts["target_accept"] == "auto" and divergences:
        info["retried"] = {"target_accept": target, "divergences": divergences}
        target = TARGET_ACCEPT_RETRY
        samples, extras, again = program.run(seed, inputs, target, threads)
        timing["sampling_s"] += again["sampling_s"]
        info["target_accept"] = target
    return samples, extras, timing, info


def fit_laplace(model, tasks, seed: int = 0, **options):
    """Fit by nested Laplace; returns a :class:`~bayesmeta.posterior.Posterior`.

    Options: those of ``method="nuts"`` plus ``hyper_sampler`` (``"auto"``, the default:
    independence Metropolis-Hastings on the hyperparameters' Laplace marginal,
    :func:`_independence_hyper`, falling back to NUTS as it says; ``"independence"`` or
    ``"nuts"`` to force one; ``info["hyper_sampler"]`` records which ran and why),
    ``newton_steps`` (damped Newton steps per
    task per evaluation, default 6, from the pilot's modes), ``importance`` (per-task
    importance resampling of the theta draws, default True), ``log_likelihood`` (the
    pointwise log-likelihood on first use) and ``theta_batch`` (hyperparameter draws per
    batch when completing theta).
    ``info["laplace"]`` holds the per-task diagnostics (module docstring) and
    ``info["timing"]`` the compile and sampling times."""
    t_start = time.perf_counter()
    why = why_not_laplace(model, tasks)
    if why is not None:
        raise ValueError(f"method: 'laplace' is not available: {why}")
    opts = dict(LAPLACE_OPTIONS, **options)
    check_laplace_options(opts)
    steps = int(opts["newton_steps"])
    built = model.build(tasks)
    param_shape = tuple(built.param_shape)
    lik, pop = model.likelihood, model.population
    regression, task_x = built.regression, built.data.get("task_x")
    data = _padded_data(lik, tasks)
    # warm starts: each task's mode at the pilot hyperparameters (its own penalised
    # estimate where that pilot solve did not settle)
    pilot = _pilot(model, tasks, built, data)
    settled = np.asarray(pilot["rel"]) < _NEWTON_TOL
    start = jnp.asarray(
        np.where(settled[:, None], np.asarray(pilot["mode"]), _start(lik, tasks, param_shape))
    )
    nuts_opts = {k: opts[k] for k in NUTS_OPTIONS}
    layout = resolve_chain_method(nuts_opts["chain_method"])
    if layout == "parallel":
        raise ValueError("chain_method: 'parallel' is not available for method='laplace'")
    store = model.__dict__.setdefault(_PROGRAMS_ATTR, {})
    # split over devices along the task axis (devices=)
    inputs = sharding.place({"data": data, "start": start, "task_x": task_x}, tasks.num_tasks)
    info = {"options": opts, "chain_method": layout}
    samples = None
    if opts["hyper_sampler"] in ("auto", "independence"):
        samples, extras, timing, why = _independence_hyper(
            model, store, (param_shape, built.structure, steps), regression, inputs, opts, seed
        )
        info["hyper_sampler"] = dict(why, used="independence" if samples is not None else "nuts")
    if samples is None:
        samples, extras, timing, info_nuts = _nuts_hyper(
            model,
            store,
            (param_shape, built.structure, steps),
            regression,
            inputs,
            nuts_opts,
            layout,
            seed,
        )
        info.update(info_nuts)
        if "hyper_sampler" in info:
            timing["independence_s"] = info["hyper_sampler"].get("seconds", 0.0)
        else:
            info["hyper_sampler"] = {"used": "nuts"}
    samples = {k: np.asarray(v) for k, v in samples.items()}
    extras = {k: np.asarray(v) for k, v in extras.items()}
    diag = check_fit(
        samples,
        int(np.sum(extras["diverging"])),
        warn=opts["warn"],
        energy=extras.get("energy"),
    )
    chains, draws = next(iter(samples.values())).shape[:2]
    num = chains * draws
    hyper_flat = {k: jnp.asarray(v.reshape(num, *v.shape[2:])) for k, v in samples.items()}
    for k, v in pop.fixed_values(param_shape).items():
        hyper_flat[k] = jnp.broadcast_to(v, (num, *jnp.shape(v)))
    t0 = time.perf_counter()
    completion = info["hyper_sampler"].pop("completion", None)
    if completion is not None:
        # made in the independence sampler's own pass over its proposals
        theta, logw, rel = completion["theta"], completion["logw"], completion["rel"]
    else:
        theta, logw, rel = _complete(
            lik,
            pop,
            param_shape,
            regression,
            steps,
            int(opts["theta_batch"]),
            hyper_flat,
            inputs["data"],
            inputs["start"],
            inputs["task_x"],
            jax.random.fold_in(jax.random.PRNGKey(seed), 1),
        )
    theta, logw, rel = np.asarray(theta), np.asarray(logw), np.asarray(rel)  # (S, T, p)
    ess = np.asarray(_ess_of(jnp.asarray(logw)))
    converged = np.all(rel < _NEWTON_TOL, axis=0)
    if opts["importance"]:
        rng = np.random.default_rng(
            np.asarray(jax.random.key_data(jax.random.PRNGKey(seed))).astype(np.uint32).tolist()
        )
        w = np.exp(logw - logw.max(axis=0, keepdims=True))
        w /= w.sum(axis=0, keepdims=True)
        idx = np.stack([_systematic(rng, w[:, t], num) for t in range(theta.shape[1])], axis=1)
        idx = rng.permuted(idx, axis=0)
        theta = theta[idx, np.arange(theta.shape[1])[None, :]]
    timing["theta_s"] = time.perf_counter() - t0
    site = pop.theta_site
    samples[site] = theta.reshape(chains, draws, theta.shape[1], *param_shape)
    labels = list(tasks.labels)
    info["laplace"] = {
        "newton_steps": steps,
        "importance": bool(opts["importance"]),
        "ess": dict(zip(labels, ess.tolist(), strict=True)),
        "converged": dict(zip(labels, converged.tolist(), strict=True)),
        "min_ess": float(ess.min()),
        "all_converged": bool(converged.all()),
    }
    if not converged.all() and opts["warn"]:
        import warnings

        from bayesmeta.inference.diagnostics import FitWarning

        bad = [labels[i] for i in np.flatnonzero(~converged)[:8]]
        warnings.warn(
            f"laplace: Newton did not converge within {steps} steps for task(s) {bad} at "
            "some hyperparameter draws; raise newton_steps or use method='nuts'",
            FitWarning,
            stacklevel=3,
        )
    info["diagnostics"] = diag
    log_lik = None
    if opts["log_likelihood"]:
        log_lik = partial(_pointwise, lik, built.data, samples[site], hyper_flat)
    post = assemble(
        samples,
        method="laplace",
        tasks=tasks,
        model=model,
        built=built,
        sampler_stats=extras,
        log_likelihood=log_lik,
        observed_data={"y": np.asarray(built.data["y"])},
        info=dict(info, timing=timing),
        info_type=LaplaceInfo,
    )
    post.info["timing"]["first_posterior_s"] = time.perf_counter() - t_start
    return post


def _systematic(rng, w, num):
    cdf = np.cumsum(w)
    u = (rng.uniform() + np.arange(num)) / num
    return np.clip(np.searchsorted(cdf, u * cdf[-1]), 0, len(w) - 1)


ENGINE = Engine(
    name="laplace",
    summary="nested Laplace: theta_t integrated out, the hyperparameters sampled on the marginal",
    options=LAPLACE_OPTIONS,
    fit=fit_laplace,
    why_not=why_not_laplace,
    cli_options=sampler_cli_options,
    check_options=check_laplace_options,
)
