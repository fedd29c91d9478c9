"""Meta-learned features with an exact Bayesian last layer (ALPaCA, Harrison et al., 2018;
in the spirit of PACOH, Rothfuss et al., 2021).

A network's features ``phi(x)`` (``F`` of them) feed a linear last layer whose weights
have a meta-learned Gaussian prior,

    y = phi(x) . w + eps,    w ~ N(mu, L L^T),    eps ~ N(0, sigma^2),

so that each task is a Bayesian linear regression on the learned features and everything
after the features is closed-form (:mod:`bayesmeta.exact.linear`). The features, ``mu``,
``L`` (lower-triangular, log-parameterised diagonal) and ``log sigma`` are meta-trained on
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
    linear_log_marginal,
    linear_sufficient_stats,
    linear_task_posterior,
)
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
from bayesmeta.meta.posterior import TaskGaussians, to_posterior

__all__ = [
    "LastLayerParams",
    "BayesianLastLayer",
    "bayesian_last_layer",
    "build_last_layer_loss",
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


class BayesianLastLayer(NamedTuple):
    """The learner: ``init``, ``step``, ``adapt`` plus batched ``gaussians``, ``predict``
    and ``posterior``.

    init(net_params_or_LastLayerParams) -> MetaState
    step(state, task_batch) -> (MetaState, MetaInfo)
    adapt(params_or_state, support) -> GaussianPosterior   (one task: mean (F,), cov (F, F))
    gaussians(params_or_state, support_batch) -> GaussianPosterior  ((T, F), (T, F, F))
    predict(params_or_state, support_batch, x_query, noise=True) -> GaussianPosterior
        (per task: mean (T, m), cov (T, m, m); with the noise sigma^2 I by default)
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


def _add(a: LinearStats, b: LinearStats) -> LinearStats:
    return LinearStats(*(x + y for x, y in zip(a, b, strict=True)))


def build_last_layer_loss(
    feature_fn: Callable[[PyTree, Any], jax.Array],
) -> Callable[[LastLayerParams, Mapping], tuple[jax.Array, jax.Array]]:
    """The meta-objective: minus the exact log predictive density per query point.

    Returns ``meta_loss(params, task_batch) -> (mean_loss, task_losses)`` with

        task_loss_b = -(log p(y_q | y_s)) / n_q = -(log p(y_s, y_q) - log p(y_s)) / n_q

    under the linear-Gaussian last layer on the features ``feature_fn(params.net, x)``,
    differentiable in every field of ``params``.

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

    def task_loss(params, task):
        hyper = last_layer_hyper(params)
        s, q = task["support"], task["query"]
        stats_s = _task_stats(feature_fn(params.net, s["x"]), s["y"], s.get("mask"))
        stats_q = _task_stats(feature_fn(params.net, q["x"]), q["y"], q.get("mask"))
        joint = linear_log_marginal(_add(stats_s, stats_q), hyper)[0]
        marginal = linear_log_marginal(stats_s, hyper)[0]
        return -(joint - marginal) / stats_q.count[0]

    def meta_loss(params, task_batch):
        losses = jax.vmap(task_loss, in_axes=(None, 0))(params, task_batch)
        return jnp.mean(losses), losses

    return meta_loss


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
) -> BayesianLastLayer:
    """Meta-learned features with an exact Bayesian linear last layer (ALPaCA).

    Args:
      feature_fn: ``feature_fn(net, x) -> (n, F)``: one task's features.
      optimizer: outer optax optimizer (default ``optax.adam(1e-3)``).
      num_features: ``F``, the number of features (the last layer's size).
      prior_scale: initial prior sd of every last-layer weight (``L = prior_scale I``)
        when ``init`` gets the network's weights alone; the prior mean starts at zero.
      noise: initial noise sd ``sigma``.

    Returns:
      a :class:`BayesianLastLayer`. ``step`` maximises the exact log predictive density of
      the query points given the support points (see the module doc); its ``MetaInfo``
      reports ``loss`` (minus the mean log predictive density per query point, given the
      support) and ``loss_before`` (the same without the support: the prior predictive).
      Adaptation is exact and closed-form; ``posterior`` returns a ``Posterior`` (method
      ``"bayesian_last_layer"``, site ``"w"`` with dims ``["task", "feature"]``) whose
      ``info`` holds the ``gaussians``, the ``prior`` (a ``LinearHyper``) and ``noise``.

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
    meta_loss = build_last_layer_loss(feature_fn)
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
            params = LastLayerParams(
                params,
                jnp.zeros((f,), dtype),
                jnp.diag(jnp.full((f,), math.log(prior_scale), dtype)),
                jnp.asarray(math.log(noise), dtype),
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
        stats = _task_stats(feature_fn(params.net, support["x"]), support["y"], support.get("mask"))
        post = linear_task_posterior(stats, last_layer_hyper(params))
        return GaussianPosterior(post.mean[0], post.cov[0])

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
            stats = _task_stats(phi, support["y"], support.get("mask"))
            post = linear_task_posterior(stats, last_layer_hyper(params))
            return GaussianPosterior(post.mean[0], post.cov[0])

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
        g = TaskGaussians.from_moments(np.asarray(post.mean), np.asarray(post.cov))
        hyper = jax.tree.map(np.asarray, last_layer_hyper(params))
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

    return BayesianLastLayer(init, step, adapt, gaussians, predict, posterior)
