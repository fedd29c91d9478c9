"""New-task posteriors from a fitted population, without refitting it; posterior predictive.

Given hyperparameter draws ``phi_s ~ p(phi | D)`` (``s = 1..S``) and a new task's data
``y_new``, the new task's posterior is

    p(theta | y_new, D)  ∝  p(y_new | theta) · (1/S) Σ_s p(theta | phi_s).

``adapt`` computes it in one of three ways (``method=``):

``"conjugate"``
    Linear-Gaussian likelihoods (``NormalKnownNoise``, ``Normal`` with a shared noise,
    ``LinearRegression`` with known or shared noise) under a ``Normal`` or ``MvNormal``
    population. Each draw ``phi_s`` is reweighted by the new task's exact marginal
    likelihood ``w_s ∝ p(y_new | phi_s)`` (``theta`` integrated out in closed form), the
    draws are resampled by those weights, and ``theta`` is drawn from its exact Gaussian
    conditional ``p(theta | y_new, phi_s)``. Rao-Blackwellised: no Monte-Carlo error from
    ``theta`` given ``phi``.
``"importance"``
    Any likelihood: ``theta_s ~ p(theta | phi_s)`` (one draw per hyperparameter draw, so
    the proposal is :meth:`Posterior.population`) weighted by ``p(y_new | theta_s)`` and
    resampled.
``"nuts"``
    NUTS on the new task alone, on the exact target above with the mixture over the
    hyperparameter draws summed out (log-sum-exp over ``s``); shared nuisance parameters
    (a shared noise) enter the same sum.

``"auto"`` (default) uses ``"conjugate"`` when eligible, else ``"importance"``, and for any
task whose importance weights have an effective sample size below ``min_ess`` (default
``max(100, 0.05 S)``) falls back to ``"nuts"`` for that task. The choice and the ESS of each
task are in ``post.info["adapt"]``. A few observations per task keep the weights even; a
new task with much data (or one far from the population) gets NUTS.

``"encoder"`` (what ``"auto"`` uses for a posterior of ``method="svi"`` fitted with an
encoder): the trained encoder's ``q(theta | y_new, phi_s)`` per draw, by one forward pass
(:func:`bayesmeta.inference.minibatch_vi.adapt_encoder`).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from bayesmeta._checks import as_real_array
from bayesmeta._checks import check_seed as _check_seed
from bayesmeta.inference import _gaussian as gauss
from bayesmeta.inference.assemble import assemble
from bayesmeta.inference.nuts import (
    NUTS_OPTIONS,
    CompiledNUTS,
    resolve_chain_method,
    show_progress,
    start_target,
)
from bayesmeta.info import AdaptInfo
from bayesmeta.tasks import TaskSet

__all__ = ["adapt", "predict", "ADAPT_METHODS"]

ADAPT_METHODS = ("auto", "conjugate", "importance", "nuts", "encoder")


# ---------------------------------------------------------------------- seeds and keys
# Low-level functions take a JAX PRNG key, the friendly top level (``bm.fit``,
# ``Posterior.adapt``, ``Posterior.predict``) an integer seed; never both in one argument.
def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_seed(seed, where: str) -> int:
    """``seed`` as a Python int (``0 <= seed < 2**32``, as every seed of the library; see
    :func:`bayesmeta._checks.check_seed`), or a ValueError naming ``where`` (e.g. a key
    passed)."""
    if _is_int(seed):
        return _check_seed(seed, f"seed ({where})")
    raise ValueError(
        f"seed: {where} takes an integer seed, got {type(seed).__name__}"
        + (" (a JAX PRNG key: pass an integer)" if hasattr(seed, "dtype") else "")
    )


def check_key(key, where: str):
    """``key`` if it looks like a JAX PRNG key, else a ValueError naming ``where``."""
    if _is_int(key):
        raise ValueError(
            f"key: {where} takes a JAX PRNG key (jax.random.key(seed) or "
            f"jax.random.PRNGKey(seed)), got the integer {key!r}; Posterior.predict takes an "
            "integer seed="
        )
    if not hasattr(key, "dtype") or not (
        jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        or (key.dtype == jnp.uint32 and jnp.shape(key)[-1:] == (2,))
    ):
        raise ValueError(f"key: {where} takes a JAX PRNG key, got {type(key).__name__}")
    return key


# ---------------------------------------------------------------------- compiled functions
# The functions adapt compiles are kept on the model object (like full NUTS's
# ``_nuts_programs``), keyed by what they depend on besides their inputs; the data and the
# hyperparameter draws are inputs, so a second ``adapt`` on tasks of the same shapes
# compiles nothing. The last few are kept; they go when the model goes.
_PROGRAMS_ATTR = "_adapt_programs"
_PROGRAMS_PER_MODEL = 8


def _kept(model, key, build):
    """The function kept on ``model`` under ``key``, built by ``build()`` on first use."""
    store = model.__dict__.setdefault(_PROGRAMS_ATTR, OrderedDict())
    fn = store.get(key)
    if fn is None:
        fn = store[key] = build()
        while len(store) > _PROGRAMS_PER_MODEL:
            store.popitem(last=False)
    else:
        store.move_to_end(key)
    return fn


# ---------------------------------------------------------------------- conjugate path
def conjugate_eligible(model) -> bool:
    return gauss.why_not_gaussian(model) is None


def _conjugate_fn(pop, param_shape, shared, regression):
    """Jitted ``(stats, hyper, task_x) -> (log marginals (S, T), means (S, T, p),
    covs (S, T, p, p))``."""
    num_varying = int(np.prod(param_shape)) if param_shape else 1

    def terms(stats, hyper, task_x):
        noise = hyper["sigma"] if shared else None
        lh = gauss.population_hyper(pop, hyper, param_shape, noise, regression, task_x)

        def one(h, beta):
            res = gauss.residual_stats(stats, num_varying, beta)
            post_h = gauss.task_posterior(res, h)
            return gauss.log_marginal(res, h), post_h.mean, post_h.cov

        return jax.vmap(one)(lh, hyper.get("beta"))

    return jax.jit(terms)


def _conjugate_terms(post, tasks, task_x):
    """Log marginal likelihoods ``(S, T)`` and the exact conditional posteriors of every
    new task under every hyperparameter draw (means ``(S, T, p)``, covs ``(S, T, p, p)``)."""
    model = post.model
    pop, lik = model.population, model.likelihood
    shared = gauss.conjugate_noise(lik) == "shared"
    param_shape = tuple(post.param_shape)
    regression = post._regression()
    fn = _kept(
        model,
        ("conjugate", id(pop), id(lik), param_shape, shared, regression),
        lambda: _conjugate_fn(pop, param_shape, shared, regression),
    )
    return fn(gauss.task_stats(lik, tasks), post._hyper_draws(), task_x)


def _new_task_x(post, new_tasks):
    """The new tasks' covariates ``(T, q)`` in the columns the fitted regression reads (by
    name), or None when the population has no regression."""
    regression = post._regression()
    if regression is None:
        return None
    names = getattr(new_tasks, "task_x_names", None)
    missing = [c for c in regression.columns if names is None or c not in names]
    if missing:
        raise ValueError(
            f"new_tasks: the population regresses on task covariates "
            f"{list(regression.columns)}; the new TaskSet lacks {missing} (build it with "
            "task_x=)"
        )
    return jnp.asarray(new_tasks.task_x[:, [list(names).index(c) for c in regression.columns]])


# ---------------------------------------------------------------------- importance weights
def _rowwise_fn(lik):
    """Jitted ``(data, theta (S, T, ...), extras, num_tasks) -> (S, T)`` log-likelihoods."""

    def loglik(data, theta, extras, num_tasks):
        idx = data["task_index"]

        def one(theta_s, extras_s):
            if lik.per_task_density:
                return lik.task_log_density(theta_s, data)
            rows = lik.row_dist(theta_s[idx], data, lik.extras_rows(extras_s, idx))
            return jax.ops.segment_sum(rows.log_prob(data["y"]), idx, num_tasks)

        return jax.vmap(one)(theta, extras)

    return jax.jit(loglik, static_argnames="num_tasks")


def _rowwise_loglik(post, tasks, theta, extras):
    """``(S, T)`` log-likelihood of each new task under one theta per draw ``(S, T, ...)``."""
    model = post.model
    lik = model.likelihood
    fn = _kept(model, ("rowwise", id(lik)), lambda: _rowwise_fn(lik))
    data = {k: jnp.asarray(v) for k, v in lik.data_arrays(tasks).items()}
    return fn(data, theta, extras, num_tasks=int(tasks.num_tasks))


def _ess(logw):
    """Effective sample size of normalised importance weights, per column of ``(S, T)``."""
    w = jnp.exp(logw - logsumexp(logw, axis=0, keepdims=True))
    return 1.0 / jnp.sum(w**2, axis=0)


def _systematic_resample(key, logw, num):
    """Indices ``(num,)`` resampled systematically from log weights ``(S,)``."""
    w = jnp.exp(logw - logsumexp(logw))
    cdf = jnp.cumsum(w)
    u = (jax.random.uniform(key) + jnp.arange(num)) / num
    return jnp.clip(jnp.searchsorted(cdf, u * cdf[-1]), 0, logw.shape[0] - 1)


# ---------------------------------------------------------------------- NUTS fallback
def _fallback_target(lik, pop, param_shape):
    """The NumPyro model of one new task's parameters under the mixture over the
    hyperparameter draws; the task's data and the draws are its inputs (``data``,
    ``hyper``), so one compiled program serves every task of the same shape."""
    import numpyro
    import numpyro.distributions as dist

    support = dist.constraints.real_vector if param_shape else dist.constraints.real

    def target(data, hyper):
        idx = data["task_index"]
        comp = pop.dist(hyper, param_shape)  # batch (S,)
        global_extras = {k: hyper[k] for k in lik.global_priors()}
        log_num = math.log(comp.batch_shape[0])
        theta = numpyro.sample("theta", dist.ImproperUniform(support, (), param_shape))
        local = {k: numpyro.sample(k, d) for k, d in lik.task_priors().items()}

        def loglik(extras_s):
            ex = dict(extras_s, **{k: v[None] for k, v in local.items()})
            if lik.per_task_density:
                return lik.task_log_density(theta[None], data)[0]
            rows = lik.row_dist(theta[None][idx], data, lik.extras_rows(ex, idx))
            return jnp.sum(rows.log_prob(data["y"]))

        lp_theta = comp.log_prob(theta)  # (S,)
        ll = jax.vmap(loglik)(global_extras) if global_extras else loglik({})
        numpyro.factor("mixture", logsumexp(lp_theta + ll) - log_num)

    return target


def _fallback_program(post, opts) -> CompiledNUTS:
    """The compiled NUTS program of the fallback, kept on the model: compiled once per
    task shape (rows, draws) and reused for every task and every later ``adapt``."""
    model = post.model
    lik, pop = model.likelihood, model.population
    param_shape = tuple(post.param_shape)
    layout = resolve_chain_method(opts["chain_method"])
    static = tuple(
        (k, opts[k]) for k in ("num_chains", "num_warmup", "num_samples", "max_tree_depth")
    )
    key = ("nuts", id(lik), id(pop), param_shape, static, show_progress(opts), layout)
    return _kept(
        model,
        key,
        lambda: CompiledNUTS(_fallback_target(lik, pop, param_shape), opts, layout),
    )


def _nuts_one_task(program, post, tasks, t, hyper, seed, opts):
    """NUTS on one new task's parameters under the mixture over hyperparameter draws."""
    sub = tasks.subset([t])
    lik = post.model.likelihood
    data = {k: jnp.asarray(v) for k, v in lik.data_arrays(sub).items()}
    samples, extras, _ = program.run(seed, {"data": data, "hyper": hyper}, start_target(opts))
    divergences = int(np.sum(np.asarray(extras["diverging"])))
    return {k: np.asarray(v) for k, v in samples.items()}, divergences


# ---------------------------------------------------------------------- public
def adapt(
    post,
    new_tasks: TaskSet,
    method: str = "auto",
    seed: int = 0,
    min_ess: float | None = None,
    num_warmup: int = 500,
    progress_bar: bool = False,
):
    """Posterior of brand-new tasks under a fitted population (see the module docstring).

    Args:
      post: a Posterior of a ``bm.Hierarchical`` model.
      new_tasks: the new tasks' observations (a TaskSet of the same kind of data).
      method: ``"auto"``, ``"conjugate"``, ``"importance"``, ``"nuts"`` or ``"encoder"``.
      seed: integer seed.
      min_ess: effective-sample-size threshold below which ``"auto"`` falls back to NUTS.
      num_warmup: NUTS warmup of the fallback (its draws match the posterior's shape).

    Returns a Posterior with ``theta`` (and per-task nuisance parameters) for the new tasks,
    ``(chain, draw)`` shaped like ``post``; ``info["adapt"]`` holds, per task, the method
    used and the importance ESS.
    """

    if method not in ADAPT_METHODS:
        raise ValueError(f"method: must be one of {ADAPT_METHODS}, got {method!r}")
    seed = check_seed(seed, "adapt")
    from bayesmeta.inference import minibatch_vi

    if method == "encoder" or (method == "auto" and minibatch_vi.has_encoder(post)):
        return minibatch_vi.adapt_encoder(post, new_tasks, seed)  # one forward pass
    if min_ess is not None and (
        not isinstance(min_ess, int | float | np.integer | np.floating)
        or isinstance(min_ess, bool)
        or not min_ess >= 0
    ):
        raise ValueError(f"min_ess: expected None or a number >= 0, got {min_ess!r}")
    if not _is_int(num_warmup) or num_warmup < 0:
        raise ValueError(f"num_warmup: must be an integer >= 0, got {num_warmup!r}")
    if not isinstance(progress_bar, bool):
        raise ValueError(f"progress_bar: expected True or False, got {progress_bar!r}")
    if not isinstance(new_tasks, TaskSet):
        raise ValueError(f"new_tasks: expected a bm.TaskSet, got {type(new_tasks).__name__}")
    model = post._require_hierarchical()
    model.likelihood.validate(new_tasks)
    shape = model.likelihood.param_shape(new_tasks)
    if shape != post.param_shape:
        raise ValueError(
            f"new_tasks: the likelihood gives parameters of shape {shape} for the "
            f"new tasks but {post.param_shape} for the fitted ones (different x?)"
        )
    if method == "conjugate" and not conjugate_eligible(model):
        raise ValueError(
            "method: 'conjugate' needs a linear-Gaussian likelihood with known or "
            "shared noise and a Normal or MvNormal population"
        )
    num_chains, num_draws = post.num_chains, post.num_draws
    num = num_chains * num_draws
    if min_ess is None:
        min_ess = max(100.0, 0.05 * num)
    T = new_tasks.num_tasks
    key = jax.random.PRNGKey(seed)
    k_theta, k_res, k_draw = jax.random.split(key, 3)
    hyper = post._hyper_draws()
    task_x = _new_task_x(post, new_tasks)
    regression = post._regression()
    theta_out = np.zeros((num, T, *post.param_shape))
    local_out = {k: np.zeros((num, T)) for k in model.likelihood.task_priors()}
    used = ["nuts"] * T
    ess = np.full(T, np.nan)

    if method in ("auto", "conjugate", "importance"):
        if method != "importance" and conjugate_eligible(model):
            # (S,T), (S,T,p), (S,T,p,p)
            logw, means, covs = _conjugate_terms(post, new_tasks, task_x)
            kind = "conjugate"
        else:
            # theta_s ~ p(theta | phi_s): the population mixture as proposal
            if regression is None:
                comp = model.population.dist(hyper, post.param_shape)
                theta_prop = comp.sample(k_theta, (T,))  # (T, S, ...)
                theta_prop = jnp.moveaxis(theta_prop, 0, 1)  # (S, T, ...)
            else:  # a location per task: the draws' batch is (S, T)
                located = model.population.with_location(hyper, regression, task_x)
                theta_prop = model.population.dist(located, post.param_shape).sample(k_theta)
            extras = {k: hyper[k] for k in model.likelihood.global_priors()}
            local = {}
            for i, (name, d) in enumerate(model.likelihood.task_priors().items()):
                local[name] = d.sample(jax.random.fold_in(k_theta, i + 1), (num, T))
            logw = _rowwise_loglik(post, new_tasks, theta_prop, dict(extras, **local))
            kind = "importance"
        ess = np.asarray(_ess(logw))
        res_keys = jax.random.split(k_res, T)
        idx = jax.vmap(lambda k, lw: _systematic_resample(k, lw, num), in_axes=(0, 1))(
            res_keys, logw
        )  # (T, num)
        idx = np.asarray(idx)
        # shuffle so that consecutive draws are not sorted by weight (chains look alike):
        # one Fisher-Yates shuffle per task (numpy's permuted, linear time; a sort-based
        # JAX permutation of 10,000 tasks x 4,000 draws took seconds)
        shuffle_seed = np.asarray(jax.random.key_data(k_draw)).astype(np.uint32)
        rng = np.random.default_rng(shuffle_seed.tolist())
        idx = rng.permuted(idx, axis=1)
        if kind == "conjugate":
            p = means.shape[-1]
            tt = np.arange(T)[:, None]
            m_sel = np.asarray(means)[idx, tt]  # (T, num, p)
            z = np.asarray(jax.random.normal(jax.random.fold_in(k_draw, 7), (T, num, p)))
            if p == 1:  # scalar theta: the sd, no Cholesky of 1 x 1 matrices
                sd = np.sqrt(np.asarray(covs)[..., 0, 0])[idx, tt]  # (T, num)
                draws = m_sel + sd[..., None] * z
            else:
                chol = np.linalg.cholesky(np.asarray(covs)[idx, tt])  # (T, num, p, p)
                draws = m_sel + np.einsum("tnij,tnj->tni", chol, z)
            draws = draws[..., 0] if not post.param_shape else draws
        else:
            tt = np.arange(T)[:, None]
            draws = np.asarray(theta_prop)[idx, tt]
            for name in local_out:
                local_out[name] = np.asarray(local[name])[idx, tt].T
        theta_out = np.moveaxis(draws, 0, 1)  # (num, T, ...)
        ok = ess >= min_ess if method == "auto" else np.ones(T, bool)
        used = [kind if ok[t] else "nuts" for t in range(T)]

    nuts_tasks = [t for t in range(T) if used[t] == "nuts"]
    divergences = {}
    if nuts_tasks:
        opts = dict(
            NUTS_OPTIONS,
            num_chains=num_chains,
            num_samples=num_draws,
            num_warmup=num_warmup,
            progress_bar=progress_bar,
        )
        program = _fallback_program(post, opts)
        for t in nuts_tasks:
            hyper_t = hyper
            if regression is not None:
                hyper_t = model.population.with_location(
                    hyper, regression, task_x[t], one_task=True
                )
            samples, div = _nuts_one_task(
                program, post, new_tasks, t, hyper_t, (seed + 1 + t) % 2**32, opts
            )
            theta_out[:, t] = samples["theta"].reshape(num, *post.param_shape)
            for name in local_out:
                local_out[name][:, t] = samples[name].reshape(num)
            divergences[new_tasks.labels[t]] = div

    theta_site = model.population.theta_site
    samples = {theta_site: theta_out.reshape(num_chains, num_draws, T, *post.param_shape)}
    for name, v in local_out.items():
        samples[name] = v.reshape(num_chains, num_draws, T)
    dims = {theta_site: post.dims.get(theta_site, ["task"])}
    for name in local_out:
        dims[name] = ["task"]
    coords = {k: v for k, v in post.coords.items() if k not in ("task", "obs")}
    coords["task"] = list(new_tasks.labels)
    info = {
        "adapt": {
            "method": dict(zip(new_tasks.labels, used, strict=True)),
            "ess": dict(zip(new_tasks.labels, ess.tolist(), strict=True)),
            "min_ess": min_ess,
            "nuts_divergences": divergences,
        }
    }
    return assemble(
        samples,
        method=f"adapt[{post.method}]",
        dims=dims,
        coords=coords,
        tasks=new_tasks,
        model=model,
        info=info,
        info_type=AdaptInfo,
        param_shape=post.param_shape,
    )


def _check_predict_rows(post, x, task, noise_scale, num_obs):
    """``(x as a float array or None, task index or None, number of new rows or None)``:
    the new rows of :func:`predict` checked before anything is traced, a ValueError
    naming the field otherwise (x of the wrong width, an unknown task, a bad count)."""
    if getattr(post, "model", None) is None or not hasattr(post.model, "likelihood"):
        raise ValueError("predict: needs a posterior of a bayesmeta model")
    if x is None and task is None and num_obs is None:
        return None, None, None
    feature_shape = None if post.tasks is None else post.tasks.feature_shape
    n = None
    if x is not None:
        x = as_real_array("x", x)
        if x.ndim == 0:
            raise ValueError(f"x: expected rows of inputs, got the scalar {x.item()!r}")
        if x.ndim == 1 and feature_shape != (1,) and feature_shape:
            raise ValueError(
                f"x: the model was fitted with {feature_shape[0]} input column(s); give x "
                f"as an (n, {feature_shape[0]}) array, got shape {x.shape}"
            )
        if x.ndim == 1:
            x = x[:, None]
        if not feature_shape:
            raise ValueError(
                "x: the fitted tasks have no inputs; predict new rows with num_obs= instead"
            )
        if x.shape[1:] != tuple(feature_shape):
            raise ValueError(
                f"x: expected rows of {tuple(feature_shape)} input(s), as the fitted tasks, "
                f"got shape {x.shape} ({x.shape[1:]} per row)"
            )
        n = x.shape[0]
        if n == 0:
            raise ValueError("x: no rows given")
        bad = ~np.isfinite(x.reshape(n, -1)).all(axis=1)
        if bad.any():  # NaN inputs would give NaN draws, silently
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"x: non-finite value in row {row} of the new inputs")
    elif num_obs is not None:
        if not _is_int(num_obs) or num_obs < 1:
            raise ValueError(f"num_obs: must be an integer >= 1, got {num_obs!r}")
        n = int(num_obs)
    else:
        raise ValueError("predict: give x (or num_obs for tasks without inputs)")
    if noise_scale is not None:
        ns = as_real_array("noise_scale", noise_scale)
        if ns.ndim > 1 or (ns.ndim == 1 and ns.shape[0] not in (1, n)):
            raise ValueError(
                f"noise_scale: expected a scalar or {n} values (one per new row), got shape "
                f"{ns.shape}"
            )
        bad = ~(np.isfinite(ns) & (ns > 0)).reshape(-1)
        if np.any(bad):
            value = ns.reshape(-1)[bad][0]
            raise ValueError(f"noise_scale: must be finite and positive, got {value}")
    elif getattr(getattr(post.model, "likelihood", None), "needs_noise_scale", False):
        raise ValueError(
            "noise_scale: predicting new rows of a known-noise likelihood needs their noise_scale"
        )
    t = None if task is None else post.tasks._index_of(task)
    return x, t, n


def predict(
    post, key, x=None, task=None, noise_scale=None, num_obs=None, task_x=None
) -> np.ndarray:
    """Posterior predictive draws ``(chain, draw, n)`` (see :meth:`Posterior.predict`,
    which takes an integer seed); ``key`` is a JAX PRNG key."""
    key = check_key(key, "bayesmeta.inference.adapt.predict")
    model = post.model
    if model is None or not hasattr(model, "likelihood"):
        raise ValueError("predict: needs a posterior of a bayesmeta model")
    lik = model.likelihood
    if getattr(lik, "sample_fn", True) is None:  # fail before any compiling
        raise ValueError("predict: a Custom likelihood needs sample_fn= to simulate data")
    missing = [k for k in lik.global_priors() if k not in post.samples]
    if missing:
        raise ValueError(
            f"predict: this posterior has no draws of the likelihood's shared {missing} (a "
            "posterior from adapt() does not carry them); predict from the fitted posterior"
        )
    x, t, n = _check_predict_rows(post, x, task, noise_scale, num_obs)
    num = post.num_chains * post.num_draws
    theta_site = getattr(model, "theta_site", "theta")
    shared = {k: jnp.asarray(post.flat(k)) for k in lik.global_priors()}
    local_names = list(lik.task_priors())
    k_theta, k_y = jax.random.split(key)
    if x is None and task is None and num_obs is None:
        # replicate every observed row
        data = {k: jnp.asarray(v) for k, v in lik.data_arrays(post.tasks).items()}
        idx = data["task_index"]
        theta = jnp.asarray(post.flat(theta_site))
        theta_rows = theta if theta.ndim - 1 == len(post.param_shape or ()) else theta[:, idx]
        local = {k: jnp.asarray(post.flat(k)) for k in local_names}
    else:
        idx = jnp.zeros(n, dtype=jnp.int32)
        data = {"task_index": idx}
        if x is not None:
            data["x"] = jnp.asarray(x)
        if noise_scale is not None:
            scale = np.broadcast_to(np.asarray(noise_scale, float), (n,))
            bad = ~(np.isfinite(scale) & (scale > 0))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"noise_scale: must be finite and positive, got {scale[row]} in row {row}"
                )
            data["noise_scale"] = jnp.asarray(scale)
        elif lik.needs_noise_scale:
            raise ValueError(
                "noise_scale: predicting new rows of a known-noise likelihood "
                "needs their noise_scale"
            )
        if task is None:
            # a brand-new task: one theta per hyperparameter draw from the population
            theta = post.population(task_x).component_distribution.sample(k_theta)
            local = {
                k: d.sample(jax.random.fold_in(k_theta, i + 1), (num, 1))
                for i, (k, d) in enumerate(lik.task_priors().items())
            }
        else:
            theta = jnp.asarray(post.flat(theta_site))[:, t]
            local = {k: jnp.asarray(post.flat(k))[:, t : t + 1] for k in local_names}
        theta_rows = jnp.broadcast_to(theta[:, None], (num, n, *theta.shape[1:]))
    extras = dict(shared, **local)
    keys = jax.random.split(k_y, num)

    def one(k, th, ex):
        return lik.simulate_rows(k, th, data, lik.extras_rows(ex, idx))

    out = jax.vmap(one)(keys, theta_rows, extras)
    return np.asarray(out).reshape(post.num_chains, post.num_draws, -1)
