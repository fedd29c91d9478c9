"""Meta-learned features with an exact Bayesian last layer (ALPaCA, Harrison et al., 2018;
in the spirit of PACOH, Rothfuss et al., 2021).

A network's features ``phi(x)`` (``F`` of them) feed a linear last layer whose weights
have a meta-learned Gaussian prior,

    y = phi(x) . w + eps,    w ~ N(mu, L L^T),    eps ~ N(0, sigma^2),

so that each task is a Bayesian linear regression on the learned features and everything
after the features is closed-form (:mod:`bayesmeta.exact.linear`). With
``predictive="student_t"`` a task scale ``s^2 ~ InverseGamma(a, b)``, also meta-learned,
multiplies both the prior covariance and the noise variance (the normal-inverse-gamma
prior): each task then learns its own scale from its support points, and the predictive is
a Student-t with ``2a + n_support`` degrees of freedom. Use it when tasks differ in size
(amplitudes, units): a Gaussian last layer gives every task intervals of the same width
whatever its support values, too wide for small tasks and too narrow for large ones.

The features, ``mu``, ``L`` (lower-triangular, log-parameterised diagonal) and
``log sigma`` (and ``log a``, ``log b``) are meta-trained on
the exact log predictive density of each task's query points given its support points,

    log p(y_q | y_s) = log p(y_s, y_q) - log p(y_s)

(two exact log marginal likelihoods, :func:`bayesmeta.exact.linear_log_marginal`), per
query point and averaged over the meta-batch. Adapting to a new task needs no inner
gradient steps: the posterior over ``w`` is :func:`bayesmeta.exact.linear_task_posterior`
on the support features, and the predictive is Gaussian.

``feature_fn(net, x) -> (n, F)`` maps one task's inputs to features; batches are
``{"support": {"x", "y"}, "query": {"x", "y"}}`` with a leading meta-batch axis (an
optional ``"mask"`` of shape ``(n,)`` per task marks real rows; padded rows change nothing).

>>> import jax, jax.numpy as jnp, optax, bayesmeta as bm
>>> features = lambda net, x: jnp.tanh(x[:, None] * net["w"] + net["b"])  # F = 3 features
>>> learner = bm.meta.bayesian_last_layer(features, optax.adam(1e-2), num_features=3)
>>> state = learner.init({"w": jnp.ones(3), "b": jnp.zeros(3)})
>>> x = jnp.linspace(-1, 1, 8).reshape(2, 4); data = {"x": x, "y": jnp.sin(x)}
>>> state, info = jax.jit(learner.step)(state, {"support": data, "query": data})
>>> post = learner.gaussians(state, data)  # exact posterior over the last layer, per task
>>> post.mean.shape, post.cov.shape
((2, 3), (2, 3, 3))

References: Harrison, Sharma & Pavone (2018) Meta-Learning Priors for Efficient Online
Bayesian Regression (ALPaCA); Rothfuss, Fortuin, Josifoski & Krause (2021) PACOH:
Bayes-Optimal Meta-Learning with PAC-Guarantees.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bayesmeta._checks import check_seed
from bayesmeta.exact.linear import (
    GaussianPosterior,
    LinearHyper,
    LinearStats,
    NIGPosterior,
    StudentTPredictive,
    linear_log_marginal,
    linear_log_marginal_t,
    linear_quad_rows,
    linear_sufficient_stats,
    linear_task_posterior,
)
from bayesmeta.inference.assemble import assemble
from bayesmeta.info import MetaInfo as PosteriorMetaInfo
from bayesmeta.meta._compiled import compiled
from bayesmeta.meta.learners import (
    MetaInfo,
    MetaState,
    _apply_update,
    _check_int,
    _check_optimizer,
    _check_positive,
    _params_of,
    _strong,
)
from bayesmeta.meta.posterior import TaskGaussians, _check_labels, to_posterior

__all__ = [
    "LastLayerParams",
    "BayesianLastLayer",
    "bayesian_last_layer",
    "build_last_layer_loss",
    "calibrate_last_layer",
    "last_layer_hyper",
]

PyTree = Any


class LastLayerParams(NamedTuple):
    """Meta-parameters of the Bayesian last layer (``F`` features).

    Fields:
      net        # pytree: the feature network's weights
      mean       # shape=(F,): prior mean mu of the last-layer weights
      tril       # shape=(F, F): lower-triangular; the prior's Cholesky factor L has this
                 #   strict lower triangle and exp(diagonal) on its diagonal
      log_noise  # shape=(): log of the noise sd sigma
      log_concentration  # shape=() or None: log a of the task scale's InverseGamma(a, b)
                         #   (None: a Gaussian last layer with no task scale)
      log_rate           # shape=() or None: log b

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> learner = bm.meta.bayesian_last_layer(lambda n, x: x[:, None] * n, num_features=1)
    >>> p = learner.init(jnp.ones(1)).params
    >>> p.mean.shape, p.tril.shape, round(float(jnp.exp(p.log_noise)), 3)
    ((1,), (1, 1), 0.1)
    """

    net: PyTree
    mean: jax.Array
    tril: jax.Array
    log_noise: jax.Array
    log_concentration: jax.Array | None = None
    log_rate: jax.Array | None = None


class BayesianLastLayer(NamedTuple):
    """The learner: ``init``, ``step``, ``adapt`` plus batched ``gaussians``, ``predict``
    and ``posterior``.

    init(net_params_or_LastLayerParams) -> MetaState
    step(state, task_batch) -> (MetaState, MetaInfo)
    adapt(params_or_state, support) -> GaussianPosterior   (one task: mean (F,), cov (F, F))
    gaussians(params_or_state, support_batch) -> GaussianPosterior  ((T, F), (T, F, F))
    predict(params_or_state, support_batch, x_query, noise=True) -> GaussianPosterior
        (per task: mean (T, m), cov (T, m, m); with the noise sigma^2 I by default)
    With predictive="student_t", adapt and gaussians return an NIGPosterior and predict a
    StudentTPredictive (mean (T, m), scale (T, m, m), df (T,)).
    posterior(params_or_state, support_batch, *, num_draws, seed, labels) -> Posterior

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> bm.meta.bayesian_last_layer(lambda n, x: x[:, None] * n, num_features=1)._fields
    ('init', 'step', 'adapt', 'gaussians', 'predict', 'posterior')
    """

    init: Callable
    step: Callable
    adapt: Callable
    gaussians: Callable
    predict: Callable
    posterior: Callable


def last_layer_hyper(params: LastLayerParams) -> LinearHyper:
    """The prior ``N(mu, L L^T)`` and noise ``sigma`` as :class:`bayesmeta.exact.LinearHyper`.

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> p = bm.meta.LastLayerParams(None, jnp.zeros(2), jnp.array([[0.0, 0.0], [0.5, 0.0]]),
    ...                             jnp.log(0.2))
    >>> h = bm.meta.last_layer_hyper(p)
    >>> h.scale_tril.tolist(), round(float(h.noise), 3)  # exp(0) on the diagonal
    ([[1.0, 0.0], [0.5, 1.0]], 0.2)
    """
    tril = jnp.tril(params.tril, -1) + jnp.diag(jnp.exp(jnp.diagonal(params.tril)))
    return LinearHyper(params.mean, tril, jnp.exp(params.log_noise))


def _task_stats(phi: jax.Array, y: jax.Array, mask: jax.Array | None) -> LinearStats:
    """Sufficient statistics of one task (a batch of one) from its features; masked rows
    are zeroed, so they add nothing but are taken off the row count."""
    if mask is not None:
        m = mask.astype(phi.dtype)
        phi, y = phi * m[:, None], y * m
    stats = linear_sufficient_stats(phi, y, jnp.zeros(y.shape[0], jnp.int32), 1)
    if mask is not None:
        stats = stats._replace(count=jnp.sum(mask.astype(phi.dtype))[None])
    return stats


def _scale_prior(params: LastLayerParams):
    """``(a, b)`` of the task scale's InverseGamma, or None for a Gaussian last layer."""
    if params.log_concentration is None:
        return None
    return jnp.exp(params.log_concentration), jnp.exp(params.log_rate)


def _log_marginal(phi, y, mask, params: LastLayerParams) -> jax.Array:
    """One task's exact log marginal likelihood (a scalar); with a task scale, its residual
    quadratic form comes from the rows (:func:`bayesmeta.exact.linear_quad_rows`)."""
    hyper, prior = last_layer_hyper(params), _scale_prior(params)
    stats = _task_stats(phi, y, mask)
    if prior is None:
        return linear_log_marginal(stats, hyper)[0]
    mean = linear_task_posterior(stats, hyper).mean[0]
    quad = linear_quad_rows(phi, y, mean, hyper, mask)
    return linear_log_marginal_t(stats, hyper, *prior, quad=quad[None])[0]


def _task_posterior(phi, y, mask, params: LastLayerParams):
    """One task's exact posterior: a GaussianPosterior, or an NIGPosterior with a task scale."""
    hyper, prior = last_layer_hyper(params), _scale_prior(params)
    stats = _task_stats(phi, y, mask)
    post = linear_task_posterior(stats, hyper)
    if prior is None:
        return GaussianPosterior(post.mean[0], post.cov[0])
    quad = linear_quad_rows(phi, y, post.mean[0], hyper, mask)
    a, b = prior
    count = stats.count[0]
    return NIGPosterior(post.mean[0], post.cov[0], a + 0.5 * count, b + 0.5 * quad)


def _pointwise_log_density(post, phi_q, y_q, params):
    """``log p(y_qi | y_s)`` per query point under the posterior ``post`` (Gaussian or
    Student-t marginals of the predictive)."""
    mean = phi_q @ post.mean
    var = jnp.einsum("mf,fg,mg->m", phi_q, post.cov, phi_q) + jnp.exp(2 * params.log_noise)
    if isinstance(post, NIGPosterior):
        df = 2.0 * post.concentration
        scale2 = var * post.rate / post.concentration
        z2 = (y_q - mean) ** 2 / scale2
        return (
            jax.scipy.special.gammaln(0.5 * (df + 1))
            - jax.scipy.special.gammaln(0.5 * df)
            - 0.5 * jnp.log(jnp.pi * df * scale2)
            - 0.5 * (df + 1) * jnp.log1p(z2 / df)
        )
    return -0.5 * (jnp.log(2 * jnp.pi * var) + (y_q - mean) ** 2 / var)


def build_last_layer_loss(
    feature_fn: Callable[[PyTree, Any], jax.Array],
    objective: str = "joint",
) -> Callable[[LastLayerParams, Mapping], tuple[jax.Array, jax.Array]]:
    """The meta-objective: minus the exact log predictive density per query point.

    Returns ``meta_loss(params, task_batch) -> (mean_loss, task_losses)`` with

        task_loss_b = -(log p(y_q | y_s)) / n_q = -(log p(y_s, y_q) - log p(y_s)) / n_q

    (``objective="joint"``), or with ``objective="pointwise"`` the mean of the query
    points' own log predictive densities, ``-(1/n_q) sum_i log p(y_qi | y_s)``: the proper
    scoring rule for each point's predictive marginal, which is what interval coverage
    measures (the joint rewards the correlation between query points as well).

    under the linear-Gaussian last layer on the features ``feature_fn(params.net, x)``
    (or its Student-t form when ``params`` carry a task-scale prior), differentiable in
    every field of ``params``.

    >>> import jax, jax.numpy as jnp, numpy as np, bayesmeta as bm
    >>> from scipy import stats
    >>> feats = lambda net, x: jnp.ones((x.shape[0], 1))  # an intercept: y ~ N(w, sigma^2)
    >>> p = bm.meta.LastLayerParams(None, jnp.zeros(1), jnp.zeros((1, 1)), jnp.log(1.0))
    >>> one = {"x": jnp.zeros((1, 1)), "y": jnp.array([[2.0]])}
    >>> meta_loss = jax.jit(bm.meta.build_last_layer_loss(feats))
    >>> loss, _ = meta_loss(p, {"support": one, "query": one})
    >>> # w | y_s ~ N(1, 1/2), so y_q | y_s ~ N(1, 3/2)
    >>> bool(np.isclose(float(loss), -stats.norm(1, np.sqrt(1.5)).logpdf(2.0), rtol=1e-5))
    True
    """

    if objective not in ("joint", "pointwise"):
        raise ValueError(f"objective: expected 'joint' or 'pointwise', got {objective!r}")

    def task_loss(params, task):
        s, q = task["support"], task["query"]
        phi_s, phi_q = feature_fn(params.net, s["x"]), feature_fn(params.net, q["x"])
        ms, mq = s.get("mask"), q.get("mask")
        count_q = q["y"].shape[0] if mq is None else jnp.sum(mq.astype(phi_q.dtype))
        if objective == "pointwise":
            post = _task_posterior(phi_s, s["y"], ms, params)
            lp = _pointwise_log_density(post, phi_q, q["y"], params)
            lp = lp if mq is None else jnp.where(mq, lp, 0.0)
            return -jnp.sum(lp) / count_q
        cat = lambda a, b: jnp.concatenate([a, b], axis=0)  # noqa: E731
        joint_mask = None
        if ms is not None or mq is not None:
            ones = lambda n: jnp.ones(n, bool)  # noqa: E731
            joint_mask = cat(
                ones(s["y"].shape[0]) if ms is None else ms,
                ones(q["y"].shape[0]) if mq is None else mq,
            )
        joint = _log_marginal(cat(phi_s, phi_q), cat(s["y"], q["y"]), joint_mask, params)
        marginal = _log_marginal(phi_s, s["y"], ms, params)
        return -(joint - marginal) / count_q

    def meta_loss(params, task_batch):
        # a loop over the meta-batch, not vmap: vmap batches the Cholesky factorisations,
        # and jaxlib 0.10's batched LAPACK kernels can deadlock when two run at once
        # (seen in every default run of examples/bayesian_last_layer.py on jaxlib 0.10.2)
        losses = jax.lax.map(lambda task: task_loss(params, task), task_batch)
        return jnp.mean(losses), losses

    return meta_loss


def calibrate_last_layer(
    feature_fn: Callable[[PyTree, Any], jax.Array],
    params: Any,
    task_batch: Mapping,
    *,
    objective: str = "pointwise",
    max_iter: int = 200,
) -> LastLayerParams:
    """Refit the scale of a meta-trained last layer on held-out validation tasks.

    Meta-training moves the features faster than the widths: the predictive of a model
    trained for a fixed budget tends to be wider than its current accuracy warrants. This
    refits, on ``task_batch`` (fresh tasks, never the test tasks), only the numbers that set
    every task's interval widths and tails, by maximising the exact predictive density of
    the query points given the support points (:func:`build_last_layer_loss` with
    ``objective``), with the features and the shape of the prior held fixed:

    * with a task-scale prior (``predictive="student_t"``), its ``InverseGamma(a, b)``
      (``log_concentration`` and ``log_rate``): ``b / a`` sets the widths, ``a`` the tails;
    * a Gaussian last layer gets one common scale ``c`` multiplying ``L`` and ``sigma``.

    Returns new :class:`LastLayerParams` (a MetaState's params are taken as they are).
    Exact gradients, L-BFGS (scipy) on one or two unconstrained numbers.

    >>> import jax.numpy as jnp, numpy as np, bayesmeta as bm
    >>> feats = lambda net, x: jnp.ones((x.shape[0], 1))  # y ~ N(w, sigma^2), w ~ N(0, 1)
    >>> p = bm.meta.LastLayerParams(None, jnp.zeros(1), jnp.zeros((1, 1)), jnp.log(1.0))
    >>> rng = np.random.default_rng(0)
    >>> y = 3.0 * rng.normal(size=(400, 1)) + 3.0 * rng.normal(size=(400, 2))  # 3x too small
    >>> part = lambda a: {"x": jnp.zeros_like(a), "y": jnp.asarray(a)}
    >>> batch = {"support": part(y[:, :1]), "query": part(y[:, 1:])}
    >>> q = bm.meta.calibrate_last_layer(feats, p, batch)
    >>> bool(abs(float(jnp.exp(q.log_noise)) - 3.0) < 0.3)  # the common scale found: about 3
    True
    """
    import scipy.optimize

    params = _params_of(params)
    if not isinstance(params, LastLayerParams):
        raise ValueError(f"params: expected LastLayerParams, got {type(params).__name__}")
    _check_batch(task_batch)
    _check_int("max_iter", max_iter, 1)
    meta_loss = build_last_layer_loss(feature_fn, objective)
    student = params.log_concentration is not None

    def rebuild(u):
        if student:
            return params._replace(log_concentration=u[0], log_rate=u[1])
        strict, log_diag = jnp.tril(params.tril, -1), jnp.diagonal(params.tril)
        return params._replace(  # L -> c L and sigma -> c sigma, c = exp(u)
            tril=strict * jnp.exp(u[0]) + jnp.diag(log_diag + u[0]),
            log_noise=params.log_noise + u[0],
        )

    dtype = jnp.result_type(params.log_noise)
    fn = jax.jit(jax.value_and_grad(lambda u: meta_loss(rebuild(u), task_batch)[0]))

    def scipy_fn(u):
        value, grad = fn(jnp.asarray(u, dtype))
        return float(value), np.asarray(grad, np.float64)

    u0 = (
        np.array([float(params.log_concentration), float(params.log_rate)])
        if student
        else np.zeros(1)
    )
    res = scipy.optimize.minimize(  # log-scale bounds keep a, b and c in float range
        scipy_fn,
        u0,
        jac=True,
        method="L-BFGS-B",
        bounds=[(-20.0, 20.0)] * u0.size,
        options={"maxiter": max_iter},
    )
    if not np.all(np.isfinite(res.x)):
        raise FloatingPointError("calibrate_last_layer: the refit scale is not finite")
    return rebuild(jnp.asarray(res.x, dtype))


# ----------------------------------------------------------------------------- checks


def _check_part(part: Any, name: str, leading: bool) -> int | None:
    """ValueError unless ``part`` is ``{"x", "y"[, "mask"]}`` with matching row counts;
    returns the number of tasks (``leading``) or None."""
    if not isinstance(part, Mapping) or not {"x", "y"} <= set(part):
        got = sorted(part) if isinstance(part, Mapping) else type(part).__name__
        raise ValueError(f"{name}: expected a mapping with keys 'x' and 'y', got {got}")
    y = part["y"]
    lead = 1 if leading else 0
    if jnp.ndim(y) != 1 + lead:
        want = "(tasks, n)" if leading else "(n,)"
        raise ValueError(f"{name}['y']: expected shape {want}, got {jnp.shape(y)}")
    if not jnp.issubdtype(jnp.result_type(y), jnp.floating):
        raise ValueError(f"{name}['y']: expected floating point, got {jnp.result_type(y)}")
    for field in ("x", "mask"):
        if field in part and jnp.shape(part[field])[: 1 + lead] != jnp.shape(y):
            raise ValueError(
                f"{name}['{field}']: leading shape {jnp.shape(part[field])[: 1 + lead]} does "
                f"not match y {jnp.shape(y)}"
            )
    values = None if isinstance(y, jax.core.Tracer) else np.asarray(y)
    if values is not None and not np.all(np.isfinite(values)):
        index = np.argwhere(~np.isfinite(values))[0]
        where = f"task {int(index[0])}, row {int(index[1])}" if leading else f"row {int(index[0])}"
        raise ValueError(f"{name}['y']: not finite at {where}")
    if jnp.shape(y)[lead] < 1:
        raise ValueError(f"{name}: no rows")
    return int(jnp.shape(y)[0]) if leading else None


def _check_batch(task_batch: Any) -> int:
    if not isinstance(task_batch, Mapping) or not {"support", "query"} <= set(task_batch):
        got = sorted(task_batch) if isinstance(task_batch, Mapping) else type(task_batch).__name__
        raise ValueError(f"task_batch: expected keys 'support' and 'query', got {got}")
    sizes = {
        _check_part(task_batch[part], f"task_batch['{part}']", True)
        for part in ("support", "query")
    }
    if len(sizes) != 1:
        raise ValueError(f"task_batch: support and query disagree on the number of tasks {sizes}")
    return sizes.pop()


# ----------------------------------------------------------------------------- learner


def bayesian_last_layer(
    feature_fn: Callable[[PyTree, Any], jax.Array],
    optimizer: optax.GradientTransformation | None = None,
    *,
    num_features: int,
    prior_scale: float = 1.0,
    noise: float = 0.1,
    predictive: str = "gaussian",
    concentration: float = 2.0,
    objective: str = "joint",
) -> BayesianLastLayer:
    """Meta-learned features with an exact Bayesian linear last layer (ALPaCA).

    Args:
      feature_fn: ``feature_fn(net, x) -> (n, F)``: one task's features.
      optimizer: outer optax optimizer (default ``optax.adam(1e-3)``).
      num_features: ``F``, the number of features (the last layer's size).
      prior_scale: initial prior sd of every last-layer weight (``L = prior_scale I``)
        when ``init`` gets the network's weights alone; the prior mean starts at zero.
      noise: initial noise sd ``sigma``.
      predictive: ``"gaussian"`` (ALPaCA: known scale, Gaussian predictive) or
        ``"student_t"`` (a meta-learned task scale ``s^2 ~ InverseGamma(a, b)`` multiplying
        the prior covariance and the noise variance; Student-t predictive; module doc).
      concentration: initial ``a`` of the task scale's prior (``"student_t"``); ``b``
        starts at ``a``, so that ``s^2`` starts near 1.
      objective: ``"joint"`` (the query points' joint predictive density, ALPaCA) or
        ``"pointwise"`` (each query point's own; see :func:`build_last_layer_loss`).

    Returns:
      a :class:`BayesianLastLayer`. ``step`` maximises the exact log predictive density of
      the query points given the support points (see the module doc); its ``MetaInfo``
      reports ``loss`` (minus the mean log predictive density per query point, given the
      support) and ``loss_before`` (the same without the support: the prior predictive).
      Adaptation is exact and closed-form; ``posterior`` returns a ``Posterior`` (method
      ``"bayesian_last_layer"``, site ``"w"`` with dims ``["task", "feature"]``) whose
      ``info`` holds the ``gaussians``, the ``prior`` (a ``LinearHyper``) and ``noise``.
      With ``"student_t"`` the draws are exact draws of each task's normal-inverse-gamma
      (sites ``"w"`` and ``"noise"``, the task's noise sd ``s sigma``, dims ``["task"]``),
      and ``info`` holds the ``nig`` posteriors and the ``scale_prior`` ``(a, b)``.

    >>> import jax.numpy as jnp, optax, bayesmeta as bm
    >>> feats = lambda net, x: jnp.stack([jnp.ones_like(x), net * x], axis=-1)  # [1, a x]
    >>> learner = bm.meta.bayesian_last_layer(feats, optax.adam(1e-2), num_features=2)
    >>> state = learner.init(jnp.asarray(1.0))
    >>> support = {"x": jnp.array([[0.0, 1.0]]), "y": jnp.array([[1.0, 3.0]])}
    >>> pred = learner.predict(state, support, jnp.array([[2.0]]))
    >>> pred.mean.shape, pred.cov.shape  # one task, one query point
    ((1, 1), (1, 1, 1))
    >>> post = learner.posterior(state, support, num_draws=100, seed=0)
    >>> post.samples["w"].shape, post.dims["w"]
    ((1, 100, 1, 2), ['task', 'feature'])
    """
    if not callable(feature_fn):
        raise ValueError(f"feature_fn: expected a callable feature_fn(net, x), got {feature_fn!r}")
    optimizer = _check_optimizer(optimizer)
    _check_int("num_features", num_features, 1)
    _check_positive("prior_scale", prior_scale)
    _check_positive("noise", noise)
    _check_positive("concentration", concentration)
    if predictive not in ("gaussian", "student_t"):
        raise ValueError(f"predictive: expected 'gaussian' or 'student_t', got {predictive!r}")
    student = predictive == "student_t"
    meta_loss = build_last_layer_loss(feature_fn, objective)
    f = num_features

    def _params(params_or_state) -> LastLayerParams:
        p = _params_of(params_or_state)
        if not isinstance(p, LastLayerParams):
            raise ValueError(
                f"params_or_state: expected LastLayerParams or their MetaState, got "
                f"{type(p).__name__}"
            )
        return p

    def init(params):
        if isinstance(params, MetaState):
            raise ValueError("params: got a MetaState; pass the meta-parameters themselves")
        if not isinstance(params, LastLayerParams):
            leaves = jax.tree.leaves(params)
            dtype = leaves[0].dtype if leaves else jnp.float32
            if not jnp.issubdtype(dtype, jnp.floating):
                dtype = jnp.float32
            log_a = jnp.asarray(math.log(concentration), dtype) if student else None
            params = LastLayerParams(
                params,
                jnp.zeros((f,), dtype),
                jnp.diag(jnp.full((f,), math.log(prior_scale), dtype)),
                jnp.asarray(math.log(noise), dtype),
                log_a,
                log_a,
            )
        if jnp.shape(params.mean) != (f,) or jnp.shape(params.tril) != (f, f):
            raise ValueError(
                f"params: mean {jnp.shape(params.mean)} and tril {jnp.shape(params.tril)} "
                f"must have shapes ({f},) and ({f}, {f}) (num_features={f})"
            )
        if jnp.ndim(params.log_noise) != 0:
            raise ValueError(
                f"params.log_noise: expected a scalar, got {jnp.shape(params.log_noise)}"
            )
        has_prior = (params.log_concentration is not None, params.log_rate is not None)
        if has_prior != (student, student):
            raise ValueError(
                f"params: log_concentration and log_rate must both be "
                f"{'scalars' if student else 'None'} for predictive={predictive!r}"
            )
        for name in ("log_concentration", "log_rate") if student else ():
            if jnp.ndim(getattr(params, name)) != 0:
                raise ValueError(
                    f"params.{name}: expected a scalar, got {jnp.shape(getattr(params, name))}"
                )
        params = _strong(params)
        return MetaState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    def _check_features(params, x, out=None):
        if out is None:
            out = jax.eval_shape(lambda n, x: feature_fn(n, x), params.net, x)
        n = jnp.shape(x)[0]
        if jnp.shape(out) != (n, f):
            raise ValueError(
                f"feature_fn: returned shape {jnp.shape(out)} for {n} inputs, expected ({n}, {f}) "
                f"(num_features={f})"
            )

    def step(state: MetaState, task_batch: Mapping):
        _check_batch(task_batch)
        params = _params(state)
        _check_features(params, jax.tree.map(lambda a: a[0], task_batch["support"]["x"]))
        (loss, losses), grads = jax.value_and_grad(meta_loss, has_aux=True)(params, task_batch)
        empty = {
            "x": task_batch["support"]["x"][:, :0],
            "y": task_batch["support"]["y"][:, :0],
        }
        # the prior predictive of the query points (no support rows): the loss before
        before, _ = meta_loss(params, {"support": empty, "query": task_batch["query"]})
        new_state, grad_norm = _apply_update(optimizer, state, grads)
        return new_state, MetaInfo(loss, before, losses, grad_norm)

    def _posterior_one(params, support):
        phi = feature_fn(params.net, support["x"])
        return _task_posterior(phi, support["y"], support.get("mask"), params)

    def adapt(params_or_state, support, num_steps=None):
        if num_steps is not None:
            raise ValueError("num_steps: the last layer adapts in closed form (no inner steps)")
        params = _params(params_or_state)
        _check_part(support, "support", False)
        _check_features(params, support["x"])
        return _posterior_one(params, support)

    def _build_many(fn_ref):
        def one(params, support):
            phi = fn_ref()(params.net, support["x"])
            _check_features(params, support["x"], phi)  # while tracing: before compiling
            return _task_posterior(phi, support["y"], support.get("mask"), params)

        @jax.jit
        def many(params, support_batch):
            return jax.vmap(one, in_axes=(None, 0))(params, support_batch)

        @jax.jit
        def predictive(params, support_batch, x_query, with_noise):
            posts = jax.vmap(one, in_axes=(None, 0))(params, support_batch)
            phi = jax.vmap(lambda x: fn_ref()(params.net, x))(x_query)  # (T, m, F)
            _check_features(params, x_query[0], phi[0])
            mean = jnp.einsum("tmf,tf->tm", phi, posts.mean)
            cov = jnp.einsum("tmf,tfg,tng->tmn", phi, posts.cov, phi)
            sigma2 = jnp.exp(2 * params.log_noise)
            cov = cov + with_noise * sigma2 * jnp.eye(phi.shape[1], dtype=cov.dtype)
            if isinstance(posts, NIGPosterior):
                ratio = posts.rate / posts.concentration
                return StudentTPredictive(
                    mean, ratio[:, None, None] * cov, 2.0 * posts.concentration
                )
            return GaussianPosterior(mean, cov)

        return many, predictive

    def _compiled_fns():
        return compiled((feature_fn,), ("bayesian_last_layer", f), _build_many)

    def gaussians(params_or_state, support_batch):
        params = _params(params_or_state)
        _check_part(support_batch, "support_batch", True)
        return _compiled_fns()[0](params, support_batch)

    def predict(params_or_state, support_batch, x_query, noise=True):
        params = _params(params_or_state)
        num_tasks = _check_part(support_batch, "support_batch", True)
        if jnp.ndim(x_query) < 1 or jnp.shape(x_query)[0] != num_tasks:
            raise ValueError(
                f"x_query: expected a leading task axis of {num_tasks}, got shape "
                f"{jnp.shape(x_query)}"
            )
        return _compiled_fns()[1](
            params, support_batch, jnp.asarray(x_query), jnp.asarray(float(bool(noise)))
        )

    def posterior(
        params_or_state,
        support_batch,
        *,
        num_draws: int = 1000,
        seed: int = 0,
        labels: Sequence[str] | None = None,
    ):
        seed = check_seed(seed)
        params = _params(params_or_state)
        post = gaussians(params, support_batch)
        hyper = jax.tree.map(np.asarray, last_layer_hyper(params))
        if isinstance(post, NIGPosterior):
            return _student_posterior(params, post, hyper, num_draws, seed, labels)
        g = TaskGaussians.from_moments(np.asarray(post.mean), np.asarray(post.cov))
        return to_posterior(
            g,
            {"w": jnp.zeros(f)},
            method="bayesian_last_layer",
            num_draws=num_draws,
            seed=seed,
            labels=labels,
            param_dim=("feature", list(range(f))),
            info={"gaussians": g, "prior": hyper, "noise": float(hyper.noise)},
        )

    def _student_posterior(params, post, hyper, num_draws, seed, labels):
        """Exact draws from each task's normal-inverse-gamma: ``s^2`` from its
        InverseGamma, then ``w | s^2`` Gaussian; sites ``w`` and ``noise`` (``s sigma``)."""
        _check_int("num_draws", num_draws, 1)
        num_tasks = int(post.mean.shape[0])
        labels = _check_labels(labels, num_tasks)
        k_s, k_w = jax.random.split(jax.random.PRNGKey(seed))
        a, b = np.asarray(post.concentration), np.asarray(post.rate)
        gam = np.asarray(jax.random.gamma(k_s, jnp.asarray(a)[:, None], (num_tasks, num_draws)))
        s2 = b[:, None] / gam  # (T, S): InverseGamma(a, b)
        g = TaskGaussians.from_moments(np.asarray(post.mean), np.asarray(post.cov))
        eps = np.asarray(g.sample(k_w, num_draws)) - np.asarray(post.mean)[:, None]  # (T, S, F)
        w = np.asarray(post.mean)[:, None] + np.sqrt(s2)[..., None] * eps
        noise = np.sqrt(s2) * float(hyper.noise)
        return assemble(
            {"w": np.moveaxis(w, 1, 0)[None], "noise": noise.T[None]},
            method="bayesian_last_layer",
            dims={"w": ["task", "feature"], "noise": ["task"]},
            coords={"task": labels, "feature": list(range(f))},
            info={
                "nig": jax.tree.map(np.asarray, post),
                "prior": hyper,
                "scale_prior": tuple(float(v) for v in _scale_prior(params)),
                "noise": float(hyper.noise),
            },
            info_type=PosteriorMetaInfo,
        )

    return BayesianLastLayer(init, step, adapt, gaussians, predict, posterior)
