"""Amortized Bayesian meta-learning (ABML; Ravi & Beatson, 2019).

A meta-learned Gaussian prior ``p(phi) = N(mu, diag(sigma^2))`` over all parameters. For
each task the variational posterior ``q = N(m, diag(s^2))`` starts at the prior and takes
``k`` gradient steps (by default the step on ``m`` is preconditioned by the prior variance)
on the task's negative ELBO on the support set,

    E_q[NLL_support(phi)] + w KL(q || p),

(reparameterised Monte Carlo, ``num_mc_samples`` draws per step). The prior is
meta-trained through those steps (second order) on

    1/B sum_b ( E_{q_b}[NLL_query_b(phi)] + w KL(q_b || p) ).

``nll_fn(params, batch)`` is one task's negative log-likelihood. The learner has the usual
``init``/``step``/``adapt`` (so :func:`bayesmeta.meta.train` runs it) plus ``gaussians`` and
``posterior`` giving each task's ``q`` as :class:`~bayesmeta.meta.TaskGaussians` or as a
``Posterior`` (method ``"abml"``). Its Monte Carlo noise comes from the keys it is given:
``step(state, task_batch, key)``, ``adapt(..., key=)`` and ``gaussians(..., key=)`` take a
JAX PRNG key (:func:`~bayesmeta.meta.train` passes one per step, from its ``seed``), and
``posterior(..., seed=)`` an integer seed.

>>> import jax, jax.numpy as jnp, optax, bayesmeta as bm
>>> nll = lambda p, b: 0.5 * jnp.sum((b - p) ** 2)
>>> learner = bm.meta.abml(nll, optax.adam(1e-2), inner_lr=0.1, num_inner_steps=3)
>>> state = learner.init(jnp.zeros(2))
>>> data = jnp.ones((4, 5, 2))
>>> state, info = learner.step(state, {"support": data, "query": data}, jax.random.key(0))
>>> info.kl.shape
()
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from bayesmeta._checks import check_seed
from bayesmeta.meta.learners import (
    MetaState,
    _apply_update,
    _check_int,
    _check_loss_fn,
    _check_optimizer,
    _check_positive,
    _check_task_batch,
    _init_fn,
    _params_of,
)
from bayesmeta.meta.posterior import TaskGaussians, to_posterior

__all__ = ["GaussianPrior", "ABMLInfo", "ABML", "abml"]

PyTree = Any


class GaussianPrior(NamedTuple):
    """A diagonal Gaussian over a parameter pytree (ABML's prior and posteriors).

    Fields:
      mean       # pytree like params
      log_scale  # pytree like params: log standard deviations

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> learner = bm.meta.abml(lambda p, y: jnp.sum((p - y) ** 2), init_scale=0.1)
    >>> prior = learner.init(jnp.zeros(2)).params
    >>> isinstance(prior, bm.meta.GaussianPrior)
    True
    >>> [round(float(s), 4) for s in jnp.exp(prior.log_scale)]  # standard deviations
    [0.1, 0.1]
    """

    mean: PyTree
    log_scale: PyTree


class ABMLInfo(NamedTuple):
    """Diagnostics of one ABML outer step (``B`` = meta-batch size).

    Fields:
      loss         # shape=(): mean outer objective (query expected NLL + w KL)
      loss_before  # shape=(): mean query NLL at the prior mean, before adaptation
      nll          # shape=(): mean expected query NLL under the adapted q
      kl           # shape=(): mean KL(q || prior)
      task_losses  # shape=(B,): outer objective per task
      grad_norm    # shape=(): norm of the meta-gradient

    >>> import bayesmeta as bm
    >>> bm.meta.ABMLInfo._fields
    ('loss', 'loss_before', 'nll', 'kl', 'task_losses', 'grad_norm')
    """

    loss: jax.Array
    loss_before: jax.Array
    nll: jax.Array
    kl: jax.Array
    task_losses: jax.Array
    grad_norm: jax.Array


class ABML(NamedTuple):
    """ABML learner: ``init``, ``step``, ``adapt`` plus ``gaussians`` and ``posterior``.

    init(params_or_prior) -> MetaState             (a GaussianPrior in ``state.params``)
    step(state, task_batch, key) -> (MetaState, ABMLInfo)
    adapt(prior_or_state, support, num_steps=None, key=...) -> GaussianPrior (one task's q)
    gaussians(prior_or_state, support_batch, num_steps=None, key=...) -> TaskGaussians
    posterior(prior_or_state, support_batch, *, num_draws, seed, ...) -> Posterior

    ``key`` is a JAX PRNG key (required: the adaptation is stochastic); ``posterior``
    takes an integer ``seed``.

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> bm.meta.abml(lambda p, y: jnp.sum((p - y) ** 2))._fields
    ('init', 'step', 'adapt', 'gaussians', 'posterior')
    """

    init: Callable
    step: Callable
    adapt: Callable
    gaussians: Callable
    posterior: Callable


def _check_key(key):
    """``key`` unless it is missing or an integer (ABML takes JAX PRNG keys, not seeds)."""
    if key is None:
        raise ValueError(
            "key: ABML's adaptation draws Monte Carlo noise; pass a JAX PRNG key "
            "(jax.random.key(seed)); bayesmeta.meta.train passes one per step"
        )
    if isinstance(key, int | np.integer) or not hasattr(key, "dtype"):
        raise ValueError(
            f"key: expected a JAX PRNG key (jax.random.key(seed)), got {type(key).__name__} "
            f"{key!r}; only ABML's posterior(..., seed=) takes an integer seed"
        )
    return key


def _kl_diag(qm, qls, pm, pls):
    """``KL(N(qm, e^{2 qls}) || N(pm, e^{2 pls}))`` summed over coordinates."""
    return jnp.sum(
        pls - qls + 0.5 * (jnp.exp(2 * qls) + jnp.square(qm - pm)) * jnp.exp(-2 * pls) - 0.5
    )


def abml(
    nll_fn: Callable[[PyTree, Any], jax.Array],
    optimizer: optax.GradientTransformation | None = None,
    *,
    inner_lr: float = 0.01,
    inner_lr_log_scale: float | None = None,
    num_inner_steps: int = 5,
    num_mc_samples: int = 1,
    init_scale: float = 0.1,
    kl_weight: float = 1.0,
    preconditioned: bool = True,
) -> ABML:
    """Build an ABML meta-learner.

    Args:
      nll_fn: one task's negative log-likelihood ``nll_fn(params, batch)``.
      optimizer: outer optax optimizer (default ``optax.adam(1e-3)``).
      inner_lr: step size of the inner variational updates of the mean.
      inner_lr_log_scale: step size for the log-scales (default ``inner_lr``); the Monte
        Carlo gradient of the log-scales is noisy, a smaller step keeps it stable.
      num_inner_steps: inner steps ``k`` at meta-training (``adapt`` may use more).
      num_mc_samples: reparameterised draws per ELBO evaluation.
      init_scale: initial prior standard deviation when ``init`` gets plain parameters.
      kl_weight: ``w`` in front of the KL terms (1 is the ELBO).
      preconditioned: scale the inner gradient of the mean by the prior variance
        ``sigma^2`` (a natural-gradient step for the KL term, whose curvature
        ``1/sigma^2`` otherwise forces ``inner_lr < 2 sigma^2``); ``False`` gives the plain
        gradient steps of the paper. Either way the fixed point is the ELBO optimum.

    The learner holds no random state: every draw of Monte Carlo noise comes from the
    ``key`` passed to ``step``, ``adapt`` and ``gaussians``.

    >>> import jax, jax.numpy as jnp, bayesmeta as bm
    >>> nll = lambda p, y: 0.5 * jnp.sum((p - y) ** 2)
    >>> learner = bm.meta.abml(nll, inner_lr=0.5, num_inner_steps=3)
    >>> state = learner.init(jnp.zeros(1))  # prior N(0, 0.1^2) on the one parameter
    >>> q = learner.adapt(state, jnp.full((4, 1), 3.0), num_steps=0, key=jax.random.key(0))
    >>> float(q.mean[0]), round(float(jnp.exp(q.log_scale[0])), 4)  # no steps: q is the prior
    (0.0, 0.1)
    >>> post = learner.posterior(state, jnp.full((2, 4, 1), 3.0), num_draws=50, seed=0)
    >>> post.method, post.samples["theta"].shape  # (chain, draw, task, parameter)
    ('abml', (1, 50, 2, 1))
    """
    _check_loss_fn(nll_fn)
    optimizer = _check_optimizer(optimizer)
    _check_positive("inner_lr", inner_lr)
    lr_log_scale = inner_lr if inner_lr_log_scale is None else inner_lr_log_scale
    _check_positive("inner_lr_log_scale", lr_log_scale)
    _check_int("num_inner_steps", num_inner_steps, 1)
    _check_int("num_mc_samples", num_mc_samples, 1)
    _check_positive("init_scale", init_scale)
    _check_positive("kl_weight", kl_weight)
    base_init = _init_fn(optimizer)

    def flat(prior: GaussianPrior):
        pm, unravel = ravel_pytree(prior.mean)
        pls, _ = ravel_pytree(prior.log_scale)
        return pm, pls, unravel

    def neg_elbo(flat_nll, qm, qls, pm, pls, batch, key):
        eps = jax.random.normal(key, (num_mc_samples, qm.shape[0]), qm.dtype)
        phi = qm + jnp.exp(qls) * eps
        nll = jnp.mean(jax.vmap(flat_nll, in_axes=(0, None))(phi, batch))
        kl = _kl_diag(qm, qls, pm, pls)
        return nll + kl_weight * kl, (nll, kl)

    def adapt_flat(flat_nll, pm, pls, batch, key, num_steps):
        def body(q, step_key):
            g_mean, g_log_scale = jax.grad(
                lambda q_: neg_elbo(flat_nll, *q_, pm, pls, batch, step_key)[0]
            )(q)
            if preconditioned:
                g_mean = g_mean * jnp.exp(2 * pls)
            return (q[0] - inner_lr * g_mean, q[1] - lr_log_scale * g_log_scale), None

        (qm, qls), _ = jax.lax.scan(body, (pm, pls), jax.random.split(key, num_steps))
        return qm, qls

    def init(params):
        if isinstance(params, GaussianPrior):
            prior = jax.tree.map(jnp.asarray, params)
            if jax.tree.structure(prior.mean) != jax.tree.structure(prior.log_scale):
                raise ValueError("params: GaussianPrior mean and log_scale differ in structure")
        else:
            mean = jax.tree.map(jnp.asarray, params)
            log_scale = jax.tree.map(
                lambda p: jnp.full(jnp.shape(p), np.log(init_scale), p.dtype), mean
            )
            prior = GaussianPrior(mean, log_scale)
        return base_init(prior)

    def step(state: MetaState, task_batch: Mapping, key: jax.Array):
        size = _check_task_batch(task_batch)
        if not isinstance(state.params, GaussianPrior):
            raise ValueError("state: ABML's state.params must be a GaussianPrior (use init)")
        keys = jax.random.split(_check_key(key), size)

        def objective(prior):
            pm, pls, unravel = flat(prior)

            def flat_nll(f, b):
                return nll_fn(unravel(f), b)

            def one(task, key):
                k_in, k_out = jax.random.split(key)
                qm, qls = adapt_flat(flat_nll, pm, pls, task["support"], k_in, num_inner_steps)
                obj, (nll, kl) = neg_elbo(flat_nll, qm, qls, pm, pls, task["query"], k_out)
                before = flat_nll(jax.lax.stop_gradient(pm), task["query"])
                return obj, (nll, kl, before)

            objs, aux = jax.vmap(one)(task_batch, keys)
            return jnp.mean(objs), (objs, aux)

        (loss, (objs, (nll, kl, before))), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        new_state, grad_norm = _apply_update(optimizer, state, grads)
        info = ABMLInfo(loss, jnp.mean(before), jnp.mean(nll), jnp.mean(kl), objs, grad_norm)
        return new_state, info

    def _prior_of(prior_or_state):
        prior = _params_of(prior_or_state)
        if not isinstance(prior, GaussianPrior):
            raise ValueError(
                f"prior_or_state: expected a GaussianPrior or its MetaState, got "
                f"{type(prior).__name__}"
            )
        return jax.tree.map(jnp.asarray, prior)

    def adapt(prior_or_state, support_batch, num_steps=None, key=None):
        prior = _prior_of(prior_or_state)
        steps = num_inner_steps if num_steps is None else _check_int("num_steps", num_steps, 0)
        key = _check_key(key)
        pm, pls, unravel = flat(prior)

        def flat_nll(f, b):
            return nll_fn(unravel(f), b)

        qm, qls = adapt_flat(flat_nll, pm, pls, support_batch, key, steps)
        return GaussianPrior(unravel(qm), unravel(qls))

    @functools.partial(jax.jit, static_argnames="num_steps")
    def _adapt_many(prior, support_batch, keys, num_steps):
        return jax.vmap(lambda b, k: adapt(prior, b, num_steps, k))(support_batch, keys)

    def gaussians(prior_or_state, support_batch, num_steps=None, key=None):
        prior = _prior_of(prior_or_state)
        leaves = jax.tree.leaves(support_batch)
        if not leaves or any(jnp.ndim(x) < 1 for x in leaves):
            raise ValueError("support_batch: expected arrays with a leading task axis")
        num_tasks = jnp.shape(leaves[0])[0]
        key = _check_key(key)
        steps = num_inner_steps if num_steps is None else _check_int("num_steps", num_steps, 0)
        qs = _adapt_many(prior, support_batch, jax.random.split(key, num_tasks), steps)
        qm = jax.vmap(lambda t: ravel_pytree(t)[0])(qs.mean)
        qls = jax.vmap(lambda t: ravel_pytree(t)[0])(qs.log_scale)
        t, d = qm.shape
        return TaskGaussians(
            np.asarray(qm),
            np.zeros((t, d, 0)),
            np.zeros((t, 0)),
            np.asarray(jnp.exp(2 * qls)),
            np.ones((t, d)),
        )

    def posterior(
        prior_or_state,
        support_batch,
        *,
        num_draws: int = 1000,
        seed: int = 0,
        labels: Sequence[str] | None = None,
        param_dim: tuple[str, Sequence[str]] | None = None,
        num_steps: int | None = None,
    ):
        seed = check_seed(seed)
        prior = _prior_of(prior_or_state)
        g = gaussians(prior, support_batch, num_steps, jax.random.PRNGKey(seed))
        return to_posterior(
            g,
            prior.mean,
            method="abml",
            num_draws=num_draws,
            seed=(seed + 1) % 2**32,
            labels=labels,
            param_dim=param_dim,
            info={"gaussians": g, "prior": jax.tree.map(np.asarray, prior)},
        )

    return ABML(init, step, adapt, gaussians, posterior)
