"""Collapsed inference: the hyperparameters sampled alone, Gaussian ``theta_t`` integrated out.

For a linear-Gaussian likelihood (``NormalKnownNoise``, ``Normal`` with a shared noise,
``LinearRegression`` with known or shared noise) under a ``Normal`` or ``MvNormal``
population, the per-task parameters integrate out in closed form:

    p(phi | y) ∝ p(phi) Π_t p(y_t | phi),   p(y_t | phi) = ∫ p(y_t | theta) N(theta | mu, Sigma)

(:mod:`bayesmeta.exact.linear`, per-task sufficient statistics, so one gradient costs
``O(T p^3)`` however many rows the tasks have). A sampler then runs on ``phi`` alone — a
few dimensions instead of ``T p`` — and each draw ``phi_s`` is completed by an exact draw
of every ``theta_t ~ p(theta_t | y_t, phi_s)``. The sampler (``hyper_sampler``) is by
default independence Metropolis-Hastings (:mod:`bayesmeta.inference.independence`, run
through :mod:`bayesmeta.inference._flat`): a split Student-t proposal at the marginal's
mode, every proposal evaluated in compiled blocks, falling back to NUTS on the same
marginal by the rule of :mod:`~bayesmeta.inference._flat` (more than 40
hyperparameters, or a chain accepting fewer than a quarter of its proposals);
``hyper_sampler="nuts"`` forces NUTS. The result has the same sites, dims and ArviZ
groups as full NUTS (``theta`` with a ``task`` dim, the pointwise log-likelihood of ``y``
given ``theta``), so the two can be compared or overlaid directly.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from functools import partial
from operator import attrgetter

import jax
import jax.numpy as jnp
import numpy as np
import numpyro

from bayesmeta import _streams
from bayesmeta.inference import _gaussian as gauss
from bayesmeta.inference import sharding
from bayesmeta.inference._flat import FlatPrograms, check_hyper_sampler, independence_hyper
from bayesmeta.inference._scalar_marginal import (
    ScalarMarginal,
    scalar_log_marginal_sum,
    scalar_marginal,
)
from bayesmeta.inference.assemble import assemble
from bayesmeta.inference.diagnostics import check_fit
from bayesmeta.inference.nuts import (
    NUTS_OPTIONS,
    SAMPLE_FIELDS,
    _check_options,
    check_bool_option,
    check_int_option,
    make_mcmc,
    run_nuts,
    show_progress,
)
from bayesmeta.inference.registry import Engine, sampler_cli_options
from bayesmeta.info import CollapsedInfo

__all__ = ["fit_collapsed", "why_not_collapsible", "COLLAPSED_OPTIONS", "clear_compiled"]

COLLAPSED_OPTIONS = dict(
    {k: v for k, v in NUTS_OPTIONS.items() if k != "chain_threads"},  # chains vectorised
    log_likelihood=True,
    theta_batch=256,
    marginal="auto",
    hyper_sampler="auto",
)
_MARGINALS = ("auto", "direct", "chebyshev")
# proposals per compiled block of the independence sampler: its marginal's cost is fixed
# for the Chebyshev form; for the direct sum, a block holds at most _BLOCK_ELEMENTS
# per-task terms
_IMH_BLOCK = 256
_BLOCK_ELEMENTS = 1 << 21
# below this many tasks a direct sum is as cheap as the Chebyshev form
_CHEBYSHEV_MIN_TASKS = 256

# Compiled collapsed samplers are kept on the model object itself (like full NUTS's
# ``_nuts_programs``), most recently used last: (param_shape, data shapes, NUTS options)
# -> _CompiledNUTS, the last few per model. They go when the model goes: the only
# module-level record is a weak set of the models holding some, for clear_compiled().
_PROGRAMS_ATTR = "_collapsed_programs"
_PROGRAMS_PER_MODEL = 8
_HOLDERS: weakref.WeakSet = weakref.WeakSet()


def clear_compiled(model=None) -> None:
    """Forget the compiled collapsed samplers kept on ``model`` for its refits, or, with
    no ``model``, those of every model object still alive.

    The samplers live on the model object (``model._collapsed_programs``), so they are
    freed with it; clearing is needed only to force a fresh compile."""
    models = list(_HOLDERS) if model is None else [model]
    for m in models:
        m.__dict__.pop(_PROGRAMS_ATTR, None)
        _HOLDERS.discard(m)


def check_collapsed_options(opts: dict) -> None:
    """The options of ``method="collapsed"`` (merged with the defaults), checked before
    anything is built: those of NUTS plus ``theta_batch`` (an integer >= 1),
    ``log_likelihood`` (a bool) and ``marginal``."""
    _check_options(opts)
    check_int_option(opts, "theta_batch")
    check_bool_option(opts, "log_likelihood")
    if opts["marginal"] not in _MARGINALS:
        raise ValueError(f"marginal: must be one of {_MARGINALS}, got {opts['marginal']!r}")
    check_hyper_sampler(opts)


def why_not_collapsible(model) -> str | None:
    """None when ``model`` can be fitted by ``method="collapsed"``, else why not."""
    return gauss.why_not_gaussian(model)


def _hyper_model(model, param_shape, regression=None):
    """The NumPyro model of the hyperparameters, the likelihood's shared parameters (a
    learned noise ``sigma``, common coefficients ``beta``) and the population regression's
    ``beta_task``, with every ``theta_t`` integrated out; called as
    ``collapsed(stats, task_x)``."""
    pop, lik = model.population, model.likelihood
    noise = gauss.conjugate_noise(lik)
    num_varying = int(np.prod(param_shape)) if param_shape else 1

    def collapsed(stats, task_x=None):
        hyper = pop.sample_hyper(param_shape, regression)
        extras = {name: numpyro.sample(name, d) for name, d in lik.global_priors().items()}
        sigma = extras.get("sigma") if noise == "shared" else None
        h = gauss.population_hyper(pop, hyper, param_shape, sigma, regression, task_x)
        if isinstance(stats, ScalarMarginal):
            lp = scalar_log_marginal_sum(stats, h.mu[0], h.scale_tril[0, 0], h.noise**2)
        else:
            res = gauss.residual_stats(stats, num_varying, extras.get("beta"))
            lp = jnp.sum(gauss.log_marginal(res, h))
        numpyro.factor("y_marginal", lp)

    return collapsed


class _CompiledNUTS:
    """NUTS on the collapsed model, compiled once and run again on new data.

    One jitted program finds the starting point, runs warmup and draws (chains vectorised)
    and maps the draws to the constrained sites; the data and the key are its arguments,
    so later runs on data of the same shapes only run it. Key handling matches
    ``numpyro.infer.MCMC`` with ``chain_method="vectorized"``, so the draws equal those of
    :func:`run_nuts` for the same seed (tested)."""

    FIELDS = SAMPLE_FIELDS  # collected in this order by the loop below

    def __init__(self, model_fn, opts):
        self.model_fn, self.opts = model_fn, opts
        self.program = sharding.jit(self._program)  # replicated draws under devices=

    def run(self, seed: int, model_kwargs: dict):
        chains = int(self.opts["num_chains"])
        key = jax.random.PRNGKey(seed)
        if chains > 1:
            key = jax.random.split(key, chains)
        z, fields = self.program(sharding.place(key, note=False), model_kwargs)
        if chains == 1:  # unbatched kernel: add the chain dim
            z, fields = jax.tree.map(lambda x: x[None], (z, fields))
        return z, dict(zip(self.FIELDS, fields, strict=True))

    def _program(self, key, model_kwargs):
        # traced once per compile: the kernel built here lives only in the trace
        warmup, draws = int(self.opts["num_warmup"]), int(self.opts["num_samples"])
        chains = int(self.opts["num_chains"])
        kwargs = dict(model_kwargs)
        kernel = make_mcmc(self.model_fn, self.opts).sampler
        state = kernel.init(key, warmup, None, (), kwargs)
        fields_of = attrgetter(*self.FIELDS)

        def step(s, _):
            s = kernel.sample(s, (), kwargs)
            return s, (s.z, fields_of(s))

        # one scan over warmup and draws: the kernel is compiled once, not twice
        _, out = jax.lax.scan(step, state, None, length=warmup + draws)
        z, fields = jax.tree.map(lambda x: x[warmup:], out)
        post = kernel.postprocess_fn((), kwargs)
        to_site = jax.vmap(post) if chains == 1 else jax.vmap(jax.vmap(post))
        # (draw, chain) -> (chain, draw)
        swap = (lambda x: x) if chains == 1 else (lambda x: jnp.swapaxes(x, 0, 1))
        return jax.tree.map(swap, to_site(z)), jax.tree.map(swap, fields)


def _marginal_form(stats, param_shape, choice: str, mixed: bool = False):
    """What NUTS evaluates the marginal from: the per-task statistics (a sum over tasks per
    step) or, for scalar ``theta``, their checked Chebyshev form (a cost independent of
    the number of tasks); and a description for ``info["marginal"]``. ``mixed``: the
    model has common coefficients or a population regression (a per-task mean), which
    the Chebyshev form does not cover."""
    if choice not in _MARGINALS:
        raise ValueError(f"marginal: must be one of {_MARGINALS}, got {choice!r}")
    num_tasks = stats.count.shape[0]
    if choice == "direct" or (choice == "auto" and num_tasks < _CHEBYSHEV_MIN_TASKS):
        return stats, {"form": "direct"}
    if param_shape != () or mixed:
        if choice == "chebyshev":
            why = "scalar theta" if param_shape != () else "no common coefficients or "
            raise ValueError(
                f"marginal: 'chebyshev' needs scalar theta with one population mean for all "
                f"tasks and no common coefficients (shape {param_shape}, mixed={mixed}; {why})"
            )
        return stats, {"form": "direct"}
    centred = {}
    if isinstance(stats, gauss.CentredStats):  # no c - b^2 / A: see scalar_marginal
        centred = dict(ybar=stats.estimate, within=stats.within)
    form, info = scalar_marginal(
        stats.xtx[:, 0, 0], stats.xty[:, 0], stats.yty, stats.count, stats.log_scale, **centred
    )
    if form is None:
        if choice == "chebyshev":
            raise ValueError(f"marginal: 'chebyshev' is not accurate here: {info['why']}")
        return stats, info
    return form, info


def _sampler(model, param_shape, model_kwargs, nuts_opts, structure=None, regression=None):
    """The compiled collapsed sampler for ``model``, kept on the model object per data
    shapes, model structure and options (the last few); ``(sampler, reused)``, or
    ``(None, False)`` where the NUTS options ask for what the compiled loop does not do
    (a progress bar, thinning, parallel chains)."""
    if (
        show_progress(nuts_opts)
        or nuts_opts["thinning"] != 1
        or nuts_opts["chain_method"] != "vectorized"
    ):
        return None, False
    leaves = jax.tree.leaves(model_kwargs)
    shapes = tuple((tuple(x.shape), str(x.dtype)) for x in leaves)
    key = (param_shape, shapes, structure, tuple(sorted(nuts_opts.items())), sharding.key())
    return _kept(
        model, key, lambda: _CompiledNUTS(_hyper_model(model, param_shape, regression), nuts_opts)
    )


def _kept(model, key, build):
    """``(program, reused)``: the program kept on ``model`` under ``key`` (the last
    ``_PROGRAMS_PER_MODEL``, most recently used last), or a new one from ``build()``,
    kept unless ``key`` is unhashable (e.g. a custom init strategy: no reuse)."""
    store = model.__dict__.setdefault(_PROGRAMS_ATTR, OrderedDict())
    try:
        _HOLDERS.add(model)
    except TypeError:  # not weakly referenceable: clear_compiled(model) still works
        pass
    try:
        hit = store.get(key)
    except TypeError:
        return build(), False
    if hit is not None:
        store.move_to_end(key)
        return hit, True
    program = store[key] = build()
    while len(store) > _PROGRAMS_PER_MODEL:
        store.popitem(last=False)
    return program, False


def _independence(model, param_shape, model_kwargs, structure, regression, opts, seed):
    """Independence Metropolis-Hastings on the collapsed marginal
    (:func:`~bayesmeta.inference._flat.independence_hyper`: a split Student-t proposal at
    the mode, every proposal evaluated in compiled blocks): ``(samples, sampler stats,
    timing, why, reused)``, the first three None where ``hyper_sampler="auto"`` falls
    back to NUTS. The programs are kept on the model object with the NUTS samplers."""

    def build():
        progs = FlatPrograms(_hyper_model(model, param_shape, regression), model_kwargs)

        def block(xs, key, inputs):
            # the marginal costs little: one program gives the proposals' densities and
            # the mode search's gradients alike
            def one(x):
                (lp, params), grad = jax.value_and_grad(
                    lambda x: progs.logp(x, inputs)[:2], has_aux=True
                )(x)
                return lp, params, grad

            lp, params, grad = jax.vmap(one)(xs)
            return {"lp": lp, "params": params, "grad": grad}

        progs.define("block", block)
        return progs

    progs, _ = _kept(model, ("independence", param_shape, structure, sharding.key()), build)
    block_size = _IMH_BLOCK
    stats = model_kwargs["stats"]
    if not isinstance(stats, ScalarMarginal):  # the direct sum holds (block, T, p, p) terms
        p = int(np.prod(param_shape)) if param_shape else 1
        while block_size > 8 and block_size * stats.count.shape[0] * p * p > _BLOCK_ELEMENTS:
            block_size //= 2
    dtype = jnp.asarray(0.0).dtype  # float64 under jax_enable_x64, else float32
    compiled = progs.compile_s
    samples, extras, timing, why, _ = independence_hyper(
        progs, model_kwargs, opts, seed, block=block_size, dtype=dtype
    )
    return samples, extras, timing, why, progs.compile_s == compiled


def _task_major(param_shape, hyper) -> bool:
    """Whether :func:`_draw_theta` returns ``(T, S)``: scalar theta, no common
    coefficients (elementwise in (task, draw), in the per-task streams' own order)."""
    return not param_shape and "beta" not in hyper


@partial(jax.jit, static_argnames=("pop", "shared", "param_shape", "batch", "regression"))
def _draw_theta(
    pop, shared, param_shape, stats, hyper_flat, key, batch, regression, task_x, hashes
):
    """Exact ``theta`` draws ``(S, T, *param_shape)``, one per hyperparameter draw (and
    common-coefficient draw ``beta``, when the likelihood has them). Scalar ``theta`` is
    elementwise; vector ``theta`` goes through Cholesky factors in batches of ``batch``
    draws so memory stays ``O(batch T p^2)``. Scalar ``theta`` without common coefficients
    comes task-major, ``(T, S)``, which the caller views in draw order. The normals of
    task ``t`` come from its own
    stream, keyed by its label's hash (``hashes`` ``(T, 2)``, :mod:`bayesmeta._streams`),
    so reordering tasks reorders the draws given the same hyperparameter draws."""
    noise = hyper_flat["sigma"] if shared else None
    h = gauss.population_hyper(pop, hyper_flat, param_shape, noise, regression, task_x)
    num, T = h.mu.shape[0], stats.count.shape[0]
    p = int(np.prod(param_shape)) if param_shape else 1
    beta = hyper_flat.get("beta")
    if _task_major(param_shape, hyper_flat):
        # theta_t | y_t, mu, tau, sigma: elementwise for all (t, s), laid out task-major
        # like the per-task streams (T, S), so that nothing is transposed here; the
        # caller's (S, T) view of it is a transpose without a copy
        mu = h.mu[..., 0]
        mu = mu[None, :] if mu.ndim == 1 else mu.T
        tau, s2 = h.scale_tril[:, 0, 0][None, :], (h.noise**2)[None, :]
        columns = jax.tree.map(lambda a: a[:, None], stats)
        mean, var = gauss.scalar_posterior(columns, mu, tau, s2)
        z = _streams.task_normals(key, hashes, (num,), mean.dtype, task_major=True)
        return mean + jnp.sqrt(var) * z
    if not param_shape:  # as above, with common coefficients: (S, T)
        mu = h.mu[..., 0]
        mu = mu[:, None] if mu.ndim == 1 else mu
        tau, s2 = h.scale_tril[:, 0, :1], h.noise[:, None] ** 2
        mean, var = gauss.scalar_posterior(gauss.residual_stats(stats, p, beta), mu, tau, s2)
        return mean + jnp.sqrt(var) * _streams.task_normals(key, hashes, (num,), mean.dtype)
    z = _streams.task_normals(key, hashes, (num, h.mu.shape[-1]), h.mu.dtype)

    def one(args):
        hs, zs, bs = args
        post = gauss.task_posterior(gauss.residual_stats(stats, p, bs), hs)
        return post.mean + jnp.einsum("tij,tj->ti", jnp.linalg.cholesky(post.cov), zs)

    theta = jax.lax.map(one, (h, z, beta), batch_size=batch)
    return theta.reshape(num, T, *param_shape)


def fit_collapsed(model, tasks, seed: int = 0, **options):
    """Fit by collapsed inference; returns a :class:`~bayesmeta.posterior.Posterior`.

    Options: those of ``method="nuts"`` (used when NUTS runs) plus ``hyper_sampler``
    (``"auto"``, the default: independence Metropolis-Hastings on the exact marginal,
    falling back to NUTS by the rule of the module docstring; ``"independence"`` or
    ``"nuts"`` to force one; ``info["hyper_sampler"]`` records which ran, its acceptance
    rate per chain and any reason to fall back), ``log_likelihood`` (provide the pointwise
    log-likelihood given ``theta``, computed on first use; default True),
    ``theta_batch`` (draws per batch when completing vector ``theta``) and ``marginal``:

    - ``"auto"`` (default): for scalar ``theta`` and at least 256 tasks, the sampler
      evaluates the summed marginal from its Chebyshev form in ``tau^2 / sigma^2`` (see
      :mod:`bayesmeta.inference._scalar_marginal`), built once and checked against the
      direct sums to 1e-12 relative, so a step costs the same for 10,000 tasks as for 10;
      otherwise, or when the check fails, by summing over tasks;
    - ``"direct"``: always sum over tasks;
    - ``"chebyshev"``: the Chebyshev form, or a ValueError saying why it is not available.

    ``info["marginal"]`` says which form ran (with the degree and the checked error).

    The compiled sampler is kept on the model object (for its last few data shapes and
    options; :func:`clear_compiled` forgets them) and reused when the same model object is
    fitted again to data of the same shapes with the same options: the data are inputs of
    the compiled program, never constants in it, so a refit — a simulation study,
    calibration runs — skips compilation. ``info["compiled"]`` says whether this fit
    compiled (``"new"``) or reused (``"reused"``) the sampler.
    """

    why = why_not_collapsible(model)
    if why is not None:
        raise ValueError(f"method: 'collapsed' is not available: {why}")
    opts = dict(COLLAPSED_OPTIONS, **options)
    check_collapsed_options(opts)
    built = model.build(tasks)  # validates the data and gives dims/coords of full NUTS
    param_shape = built.param_shape
    stats = gauss.stable_task_stats(model.likelihood, tasks)
    regression, task_x = built.regression, built.data.get("task_x")
    mixed = regression is not None or "beta" in model.likelihood.global_priors()
    nuts_opts = {k: opts[k] for k in NUTS_OPTIONS if k in opts}
    # a few hyperparameters only: vectorised chains cost nothing here and keep the
    # compiled loop (the CPU rule of full NUTS is about long per-task trajectories)
    if nuts_opts["chain_method"] == "auto":
        nuts_opts["chain_method"] = "vectorized"
    marginal, marginal_info = _marginal_form(stats, param_shape, opts["marginal"], mixed)
    # split over devices along the task axis (devices=)
    model_kwargs = sharding.place({"stats": marginal, "task_x": task_x}, tasks.num_tasks)
    samples, hyper_info = None, {"used": "nuts"}
    if opts["hyper_sampler"] != "nuts":
        samples, extras, _, why, reused = _independence(
            model, param_shape, model_kwargs, built.structure, regression, opts, seed
        )
        hyper_info = dict(why, used="independence" if samples is not None else "nuts")
    if samples is None:
        sampler, reused = _sampler(
            model, param_shape, model_kwargs, nuts_opts, built.structure, regression
        )
        if sampler is None:
            samples, extras, _ = run_nuts(
                _hyper_model(model, param_shape, regression), model_kwargs, seed, nuts_opts
            )
        else:
            samples, extras = sampler.run(seed, model_kwargs)
    samples = {k: np.asarray(v) for k, v in samples.items()}
    extras = {k: np.asarray(v) for k, v in extras.items()}
    # convergence is judged on what NUTS sampled: every theta draw below is exact given
    # its hyperparameter draw, so theta mixes at least as well as the hyperparameters
    diag = check_fit(
        samples,
        int(np.sum(extras["diverging"])),
        warn=opts["warn"],
        energy=extras.get("energy"),
    )
    chains, draws = next(iter(samples.values())).shape[:2]
    hyper_flat = {
        k: jnp.asarray(v.reshape(chains * draws, *v.shape[2:])) for k, v in samples.items()
    }
    hyper_flat.update(
        {
            k: jnp.broadcast_to(v, (chains * draws, *jnp.shape(v)))
            for k, v in model.population.fixed_values(param_shape).items()
        }
    )
    per_task = sharding.place(
        (stats, task_x, _streams.label_hashes(tasks.labels)), tasks.num_tasks, note=False
    )
    key_theta = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    hyper_in, key_theta = sharding.place((hyper_flat, key_theta), note=False)
    theta = _draw_theta(
        model.population,
        gauss.conjugate_noise(model.likelihood) == "shared",
        tuple(param_shape),
        per_task[0],
        hyper_in,
        key_theta,
        int(opts["theta_batch"]),
        regression,
        per_task[1],
        jnp.asarray(per_task[2]),
    )
    theta = np.asarray(sharding.gather(theta))  # every process holds all tasks' draws
    if _task_major(param_shape, hyper_in):  # a view in draw order, not a copy
        theta = theta.T
    site = model.population.theta_site
    samples[site] = theta.reshape(chains, draws, *theta.shape[1:])
    log_lik = None
    if opts["log_likelihood"]:
        log_lik = partial(_pointwise, model.likelihood, built.data, samples[site], hyper_flat)
    observed = {"y": np.asarray(built.data["y"])}
    return assemble(
        samples,
        method="collapsed",
        tasks=tasks,
        model=model,
        built=built,
        sampler_stats=extras,
        log_likelihood=log_lik,
        observed_data=observed,
        info={
            "options": opts,
            "diagnostics": diag,
            "compiled": "reused" if reused else "new",
            "marginal": marginal_info,
            "hyper_sampler": hyper_info,
        },
        info_type=CollapsedInfo,
    )


def _pointwise(lik, data, theta, hyper_flat, batch: int = 256) -> dict:
    """Pointwise ``log p(y_r | theta_t, sigma)`` for every draw, ``(chain, draw, N)``."""
    chains, draws = theta.shape[:2]
    idx = data["task_index"]
    extras_flat = {k: hyper_flat[k] for k in lik.global_priors()}

    def one(args):
        th, ex = args
        return lik.row_dist(th[idx], data, lik.extras_rows(ex, idx)).log_prob(data["y"])

    flat = jnp.asarray(theta.reshape(chains * draws, *theta.shape[2:]))
    ll = jax.lax.map(one, (flat, extras_flat), batch_size=batch)
    return {"y": np.asarray(ll).reshape(chains, draws, -1)}


ENGINE = Engine(
    name="collapsed",
    summary="the hyperparameters sampled alone, Gaussian theta_t integrated out exactly",
    options=COLLAPSED_OPTIONS,
    fit=fit_collapsed,
    why_not=lambda model, tasks: why_not_collapsible(model),
    cli_options=sampler_cli_options,
    check_options=check_collapsed_options,
)
