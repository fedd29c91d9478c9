"""Many-chain HMC with pooled adaptation: ``method="chees"`` (ChEES-HMC).

Hundreds to thousands of chains run in lock step (vectorised), and their warmup is pooled:
one step size, one trajectory length and one diagonal mass matrix, estimated from all
chains at once, so a short sampling phase per chain is enough (Hoffman, Radul & Sountsov
2021, "An adaptive MCMC scheme for setting trajectory lengths in Hamiltonian Monte
Carlo"). Every chain takes the same number of leapfrog steps in an iteration, so no chain
waits for another's longer NUTS tree, which is what makes naive many-chain NUTS slow.

Per iteration: the trajectory length ``T`` is jittered, ``T_i = u_i T`` with ``u_i`` from
the van der Corput (base-2 Halton) sequence, giving ``ceil(T_i / eps)`` leapfrog steps
(at most ``max_leapfrog``); fresh momenta; one Metropolis correction per chain.

Warmup (all three pooled across chains):

- step size: dual averaging (Hoffman & Gelman 2014) on the *harmonic mean* over chains of
  the acceptance probabilities, aimed at ``target_accept`` (default 0.8: the harmonic mean
  is dragged down by the worst chains, so this keeps every chain's steps stable and
  divergences at zero);
- trajectory length: Adam (learning rate 0.025, no momentum) on the ChEES criterion's
  gradient in ``log T`` (the change in the chains' squared distance from their mean, in
  the whitened coordinates, weighted by acceptance);
- mass matrix: the cross-chain variance of the positions, as an exponential moving
  average, from the 20th percent of warmup on.

Chains come in ``num_superchains`` groups that start from the same point, which is what
nested R-hat (Margossian, Hoffman, Sountsov et al. 2022) needs to judge many short chains:
``post.info["diagnostics"]["nested_rhat"]`` holds its maximum per site (below 1.01 is the
criterion). On a GPU with a tiny model (fewer than ``2**14`` chains x parameters) the fit
warns that the host CPU may be faster.
"""

from __future__ import annotations

import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer.util import initialize_model

from bayesmeta.inference import sharding
from bayesmeta.inference.diagnostics import FitWarning, user_stacklevel
from bayesmeta.inference.nuts import bind, posterior_from_draws
from bayesmeta.inference.registry import Engine, sampler_cli_options
from bayesmeta.info import NUTSInfo

__all__ = ["fit_chees", "CHEES_OPTIONS", "nested_rhat"]

CHEES_OPTIONS = {
    "num_chains": 64,
    "num_superchains": None,
    "num_warmup": 500,
    "num_samples": 100,
    "target_accept": 0.8,
    "max_leapfrog": 256,
    "progress_bar": None,
    "warn": True,
}
_DIVERGENCE = 1000.0  # energy error beyond which a transition counts as divergent
_TINY_FOR_GPU = 2**14


def _check_options(opts: dict) -> None:
    for name in ("num_chains", "num_warmup", "num_samples", "max_leapfrog"):
        v = opts[name]
        low = 0 if name == "num_warmup" else 1
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < low:
            raise ValueError(f"{name}: must be an integer >= {low}, got {v!r}")
    if opts["num_samples"] < 4:
        raise ValueError(f"num_samples: need at least 4 draws per chain, got {opts['num_samples']}")
    if opts["num_chains"] < 4:
        raise ValueError(
            f"num_chains: chees pools across chains; need at least 4, got {opts['num_chains']}"
        )
    k = opts["num_superchains"]
    if k is not None:
        if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 2:
            raise ValueError(f"num_superchains: must be an integer >= 2, got {k!r}")
        if opts["num_chains"] % k:
            raise ValueError(
                f"num_superchains: must divide num_chains ({opts['num_chains']}), got {k}"
            )
    ta = opts["target_accept"]
    if not isinstance(ta, float | int) or isinstance(ta, bool) or not 0.0 < float(ta) < 1.0:
        raise ValueError(f"target_accept: must be in (0, 1), got {ta!r}")
    if opts["progress_bar"] is not None and not isinstance(opts["progress_bar"], bool):
        raise ValueError(f"progress_bar: must be True, False or None, got {opts['progress_bar']!r}")
    if not isinstance(opts["warn"], bool):
        raise ValueError(f"warn: must be True or False, got {opts['warn']!r}")


def superchains(num_chains: int, requested: int | None) -> int:
    """The number of superchains: as asked, else the largest of 2, 4, 8, 16 that leaves at
    least 4 chains in each and divides ``num_chains``."""
    if requested is not None:
        return int(requested)
    best = 1
    for k in (2, 4, 8, 16):
        if num_chains % k == 0 and num_chains // k >= 4:
            best = k
    return max(best, 2) if num_chains % 2 == 0 else 1


def _halton(i):
    """The ``i``-th (from 1) element of the base-2 van der Corput sequence, in (0, 1)."""
    n = jnp.asarray(i, jnp.uint32)
    u = jnp.zeros((), jnp.result_type(float))
    f = 0.5
    for _ in range(24):
        u = u + f * (n & 1).astype(u.dtype)
        n = n >> 1
        f = f / 2
    return u


def nested_rhat(x: np.ndarray, num_superchains: int) -> np.ndarray:
    """Nested R-hat of draws ``x`` ``(chain, draw, ...)`` whose chains form
    ``num_superchains`` consecutive groups (Margossian et al. 2022, eq. 3.4):
    ``sqrt(1 + B / W)``, ``B`` the variance of the superchain means and ``W`` the mean
    within-superchain variance (between its chains plus within them)."""
    x = np.asarray(x, float)
    c, n = x.shape[:2]
    k = int(num_superchains)
    m = c // k
    xs = x.reshape(k, m, n, *x.shape[2:])
    chain_mean = xs.mean(axis=2)  # (k, m, ...)
    super_mean = chain_mean.mean(axis=1)  # (k, ...)
    b = super_mean.var(axis=0, ddof=1) if k > 1 else np.zeros(super_mean.shape[1:])
    between_chains = chain_mean.var(axis=1, ddof=1) if m > 1 else 0.0
    within = xs.var(axis=2, ddof=1).mean(axis=1) if n > 1 else 0.0
    w = np.mean(between_chains + within, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(1.0 + b / w)


class _Program:
    """The compiled ChEES program of one model structure (kept on the model object)."""

    def __init__(self, fn, opts: dict, num_super: int):
        self.fn, self.opts, self.num_super = fn, dict(opts), num_super
        self._exe = {}
        self.compiles = 0

    def run(self, seed: int, data: dict):
        key = sharding.place(jax.random.PRNGKey(seed), note=False)
        sig = tuple((k, jnp.shape(v), jnp.result_type(v)) for k, v in sorted(data.items()))
        sig = (sig, sharding.key())
        timing = {"trace_s": 0.0, "compile_s": 0.0, "compiled": False}
        exe = self._exe.get(sig)
        if exe is None:
            t0 = time.perf_counter()
            lowered = sharding.jit(self._program).lower(key, data)
            t1 = time.perf_counter()
            exe = lowered.compile()
            timing.update(trace_s=t1 - t0, compile_s=time.perf_counter() - t1, compiled=True)
            self._exe[sig] = exe
            self.compiles += 1
        t0 = time.perf_counter()
        out = jax.block_until_ready(exe(key, data))
        timing["sampling_s"] = time.perf_counter() - t0
        return out, timing

    def _program(self, key, data):
        o = self.opts
        chains, warmup, draws = int(o["num_chains"]), int(o["num_warmup"]), int(o["num_samples"])
        max_steps, target = int(o["max_leapfrog"]), float(o["target_accept"])
        k = self.num_super
        key_init, key_run = jax.random.split(key)
        info = initialize_model(
            jax.random.split(key_init, k), self.fn, model_kwargs=data, dynamic_args=False
        )
        params = jax.tree.map(lambda v: jnp.repeat(v, chains // k, axis=0), info.param_info.z)
        one = jax.tree.map(lambda v: v[0], params)
        flat0, unravel = ravel_pytree(one)
        dim = flat0.shape[0]
        dtype = flat0.dtype
        potential_fn, postprocess_fn = info.potential_fn, info.postprocess_fn

        def potential(x):
            return potential_fn(unravel(x))

        value_grad = jax.vmap(jax.value_and_grad(potential))
        x0 = jax.vmap(lambda p: ravel_pytree(p)[0])(params)
        u0, g0 = value_grad(x0)

        def leapfrog(x, p, g, eps, inv_mass, steps):
            def body(_, s):
                x, p, g = s
                p = p - 0.5 * eps * g
                x = x + eps * inv_mass * p
                u, g = value_grad(x)
                p = p - 0.5 * eps * g
                return x, p, g

            x, p, g = jax.lax.fori_loop(0, steps, body, (x, p, g))
            u, _ = value_grad(x)
            return x, p, g, u

        def transition(state, i, eps, traj, inv_mass, key):
            x, u, g = state
            kp, ka = jax.random.split(key)
            jitter = _halton(i + 1)
            steps = jnp.clip(jnp.ceil(jitter * traj / eps), 1, max_steps).astype(jnp.int32)
            p = jax.random.normal(kp, x.shape, dtype) / jnp.sqrt(inv_mass)
            xn, pn, gn, un = leapfrog(x, p, g, eps, inv_mass, steps)
            h0 = u + 0.5 * jnp.sum(inv_mass * p**2, axis=-1)
            h1 = un + 0.5 * jnp.sum(inv_mass * pn**2, axis=-1)
            delta = h1 - h0
            bad = ~jnp.isfinite(delta)
            divergent = bad | (delta > _DIVERGENCE)
            accept_prob = jnp.where(bad, 0.0, jnp.minimum(1.0, jnp.exp(-delta)))
            accept = jax.random.uniform(ka, accept_prob.shape, dtype) < accept_prob
            pick = accept[:, None]
            new = (
                jnp.where(pick, xn, x),
                jnp.where(accept, un, u),
                jnp.where(pick, gn, g),
            )
            proposal = (x, xn, pn, jitter)
            return new, accept_prob, divergent, steps, proposal

        # ------------------------------------------------------------------ warmup
        eps0 = jnp.asarray(0.1, dtype)
        da0 = (jnp.log(10 * eps0), jnp.zeros((), dtype), jnp.zeros((), dtype))  # mu, hbar, bar

        def warm_step(carry, i):
            state, log_eps, da, log_t, adam, log_t_bar, inv_mass, mean_ema, var_ema, key = carry
            key, sub = jax.random.split(key)
            eps, traj = jnp.exp(log_eps), jnp.exp(log_t)
            state, a, div, steps, (x_old, xn, pn, jitter) = transition(
                state, i, eps, traj, inv_mass, sub
            )
            # step size: dual averaging on the harmonic mean of the acceptance probabilities
            hm = 1.0 / jnp.mean(1.0 / jnp.maximum(a, 1e-10))
            t = i + 1.0
            mu, hbar, bar = da
            hbar = (1 - 1 / (t + 10)) * hbar + (target - hm) / (t + 10)
            log_eps = mu - jnp.sqrt(t) / 0.05 * hbar
            w = t**-0.75
            bar = w * log_eps + (1 - w) * bar
            # trajectory length: Adam on the ChEES gradient in log T (whitened coordinates)
            scale = 1.0 / jnp.sqrt(inv_mass)
            xo, xp, vel = x_old * scale, xn * scale, pn * inv_mass * scale
            co = xo - jnp.mean(xo, axis=0)
            cp = xp - jnp.mean(xp, axis=0)
            diff = jnp.sum(cp**2, axis=-1) - jnp.sum(co**2, axis=-1)
            grads = jitter * traj * diff * jnp.sum(cp * vel, axis=-1)
            weights = jnp.where(div, 0.0, a)
            grad = jnp.sum(weights * grads) / jnp.maximum(jnp.sum(weights), 1e-10)
            grad = jnp.where(jnp.isfinite(grad), grad, 0.0)
            m_, v_ = adam
            v_ = 0.95 * v_ + 0.05 * grad**2
            log_t = log_t + 0.025 * grad / (jnp.sqrt(v_ / (1 - 0.95**t)) + 1e-8)
            log_t = jnp.clip(log_t, jnp.log(eps), jnp.log(eps * max_steps))
            log_t_bar = w * log_t + (1 - w) * log_t_bar
            # mass matrix: the cross-chain variance, smoothed, from 20% of warmup on
            x = state[0]
            mean_ema = 0.9 * mean_ema + 0.1 * jnp.mean(x, axis=0)
            var_ema = 0.9 * var_ema + 0.1 * jnp.var(x, axis=0)
            late = i >= warmup // 5
            inv_mass = jnp.where(late, jnp.clip(var_ema, 1e-6, 1e6), inv_mass)
            carry = (
                state,
                log_eps,
                (mu, hbar, bar),
                log_t,
                (m_, v_),
                log_t_bar,
                inv_mass,
                mean_ema,
                var_ema,
                key,
            )
            return carry, (div, steps)

        ones = jnp.ones((dim,), dtype)
        carry = (
            (x0, u0, g0),
            jnp.log(eps0),
            da0,
            jnp.log(jnp.asarray(0.5, dtype)),
            (jnp.zeros((), dtype), jnp.zeros((), dtype)),
            jnp.log(jnp.asarray(0.5, dtype)),
            ones,
            jnp.mean(x0, axis=0),
            ones,
            key_run,
        )
        carry, (warm_div, warm_steps) = jax.lax.scan(
            warm_step, carry, jnp.arange(warmup, dtype=jnp.int32)
        )
        state, _, da, _, _, log_t_bar, inv_mass, _, _, key = carry
        eps = jnp.exp(da[2]) if warmup else eps0
        traj = jnp.exp(log_t_bar) if warmup else jnp.asarray(0.5, dtype)

        # ------------------------------------------------------------------ sampling
        def draw_step(carry, i):
            state, key = carry
            key, sub = jax.random.split(key)
            state, a, div, steps, _ = transition(state, i, eps, traj, inv_mass, sub)
            return (state, key), (state[0], state[1], a, div, jnp.broadcast_to(steps, a.shape))

        _, (xs, us, accs, divs, steps) = jax.lax.scan(
            draw_step, (state, key), warmup + jnp.arange(draws, dtype=jnp.int32)
        )
        xs = jnp.swapaxes(xs, 0, 1)  # (chain, draw, dim)
        sites = jax.vmap(jax.vmap(lambda v: postprocess_fn(unravel(v))))(xs)
        fields = {
            "diverging": jnp.swapaxes(divs, 0, 1),
            "potential_energy": jnp.swapaxes(us, 0, 1),
            "accept_prob": jnp.swapaxes(accs, 0, 1),
            "num_steps": jnp.swapaxes(steps, 0, 1),
        }
        adapted = {
            "step_size": eps,
            "trajectory_length": traj,
            "warmup_divergences": jnp.sum(warm_div),
            "inverse_mass": inv_mass,
        }
        return sites, fields, adapted


def _program_for(model, built, opts: dict, num_super: int) -> _Program:
    static = tuple(
        (k, opts[k])
        for k in ("num_chains", "num_warmup", "num_samples", "target_accept", "max_leapfrog")
    )
    key = None if built.structure is None else (built.structure, static, num_super)
    store = None if model is None else model.__dict__.setdefault("_chees_programs", {})
    if store is not None and key is not None and key in store:
        return store[key]
    program = _Program(built.fn, opts, num_super)
    if store is not None and key is not None:
        store[key] = program
    return program


def fit_chees(built, tasks, seed: int, model=None, **options):
    """Fit a built model by many-chain ChEES-HMC; returns a Posterior with one entry per
    chain (``num_chains`` x ``num_samples`` draws).

    Options (defaults in ``CHEES_OPTIONS``): ``num_chains`` (64), ``num_superchains``
    (None: see :func:`superchains`), ``num_warmup`` (500), ``num_samples`` (100 per
    chain), ``target_accept`` (0.8, on the harmonic mean over chains), ``max_leapfrog``
    (256 steps per trajectory at most), ``progress_bar`` (ignored: one compiled program),
    ``warn``. ``post.info["adapted"]`` holds the pooled step size, trajectory length and
    warmup divergences; ``info["diagnostics"]["nested_rhat"]`` the nested R-hat by site.
    """
    t_start = time.perf_counter()
    opts = dict(CHEES_OPTIONS, **options)
    _check_options(opts)
    chains = int(opts["num_chains"])
    num_super = superchains(chains, opts["num_superchains"])
    if jax.default_backend() != "cpu" and opts["warn"]:
        size = chains * sum(int(np.prod(np.shape(v))) for v in built.data.values())
        if size < _TINY_FOR_GPU:
            warnings.warn(
                f"chees: the model is tiny for an accelerator ({chains} chains on "
                f"{size // chains} data values); the host CPU may well be faster "
                "(jax.default_device(jax.devices('cpu')[0]))",
                FitWarning,
                stacklevel=user_stacklevel(),
            )
    program = _program_for(model, built, opts, num_super)
    (sites, fields, adapted), timing = program.run(seed, sharding.place_built(built).data)
    samples = {k: np.asarray(v) for k, v in sites.items()}
    extras = {k: np.asarray(v) for k, v in fields.items()}
    adapted = {k: np.asarray(v).tolist() for k, v in adapted.items() if k != "inverse_mass"}
    info = {
        "options": opts,
        "chain_method": "vectorized",
        "timing": timing,
        "target_accept": float(opts["target_accept"]),
    }
    info["adapted"] = dict(adapted, num_superchains=num_super)
    total_ess = 400.0
    post = posterior_from_draws(
        built,
        tasks,
        model,
        samples,
        extras,
        method="chees",
        warn=False,
        info=info,
        info_type=NUTSInfo,
        # many short chains: split R-hat over 4 x draws is noisy there, so the R-hat
        # criterion is nested R-hat below (split R-hat is still reported)
        check_kw={"ess_per_chain_min": total_ess / chains, "rhat_max": float("inf")},
    )
    diag = post.info["diagnostics"]
    nested = {}
    for name, x in post.samples.items():
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        varying = np.ptp(flat.reshape(-1, flat.shape[-1]), axis=0) > 0
        if num_super >= 2 and varying.any():
            nested[name] = float(np.nanmax(nested_rhat(flat[..., varying], num_super)))
    diag["nested_rhat"] = nested
    bad = [f"{k} ({v:.3f})" for k, v in nested.items() if not v < 1.01]
    if bad:
        diag["problems"].append("nested R-hat >= 1.01 for " + ", ".join(bad))
    if opts["warn"] and diag["problems"]:
        warnings.warn(
            "bayesmeta fit diagnostics: " + "; ".join(diag["problems"]) + ". Consider more "
            "warmup or more chains.",
            FitWarning,
            stacklevel=user_stacklevel(),
        )
    post.info["timing"]["first_posterior_s"] = time.perf_counter() - t_start
    return post


def _fit_engine(model, tasks, seed: int, **options):
    built, owner = bind(model, tasks)
    return fit_chees(built, tasks, seed, model=owner, **options)


def _cli_options(chains: int, warmup: int, draws: int, progress: bool) -> dict:
    opts = sampler_cli_options(chains, warmup, draws, progress)
    opts["num_chains"] = max(int(chains), 4)
    return opts


ENGINE = Engine(
    name="chees",
    summary="many-chain HMC with pooled ChEES adaptation (jittered trajectory length)",
    options=CHEES_OPTIONS,
    fit=_fit_engine,
    cli_options=_cli_options,
    check_options=_check_options,
)
