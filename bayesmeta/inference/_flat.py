"""A NumPyro model's latent sites as one flat unconstrained vector, with its programs
compiled ahead of time, and the independence sampler run on it.

The collapsed and nested-Laplace engines both sample a handful of hyperparameters whose
log density is a NumPyro model (the per-task parameters integrated out). The independence
sampler (:mod:`bayesmeta.inference.independence`, NumPy only) wants that density on
``R^d``, its value and gradient at one point, and its values at a block of points at
once. :class:`FlatPrograms` gives both from the model: the sites' shapes and supports
from an abstract trace (nothing is evaluated), the map from ``R^d`` to the constrained
sites with its log-Jacobian, and every program compiled once per input signature.
:func:`independence_hyper` runs the sampler on it and applies the fallback rule that the
two engines share (``hyper_sampler="auto"``):

- at most :data:`MAX_DIM` hyperparameters (an independence proposal in more dimensions
  accepts too rarely);
- an acceptance rate of at least :data:`MIN_ACCEPTANCE` in every chain;

otherwise the engine runs NUTS on the same density.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro

from bayesmeta.inference import independence, sharding

__all__ = [
    "FlatPrograms",
    "independence_hyper",
    "check_hyper_sampler",
    "HYPER_SAMPLERS",
    "MIN_ACCEPTANCE",
    "MAX_DIM",
]

#: the values of an engine's ``hyper_sampler`` option
HYPER_SAMPLERS = ("auto", "independence", "nuts")

#: hyper_sampler="auto" keeps the independence sampler when its acceptance rate is at
#: least this in every chain, and the hyperparameters number at most MAX_DIM
MIN_ACCEPTANCE = 0.25
MAX_DIM = 40


def check_hyper_sampler(opts: dict) -> None:
    """A ValueError naming ``hyper_sampler`` unless it is one of :data:`HYPER_SAMPLERS`."""
    value = opts["hyper_sampler"]
    if not isinstance(value, str) or value not in HYPER_SAMPLERS:
        choices = ", ".join(map(repr, HYPER_SAMPLERS))
        raise ValueError(f"hyper_sampler: one of {choices}, got {value!r}")


class FlatPrograms:
    """The latent sites of NumPyro model ``fn`` (called as ``fn(**inputs)``) as one flat
    vector ``x`` in ``R^d`` (``x0``: zeros, the start of a mode search), and named
    programs of ``x`` compiled ahead of time, once per input signature (``compile_s``
    sums the time spent building them)."""

    def __init__(self, fn, inputs: dict):
        from numpyro.distributions.transforms import biject_to

        self.fn = fn
        supports = {}

        def latent(inp):
            tr = numpyro.handlers.trace(numpyro.handlers.seed(fn, 0)).get_trace(**inp)
            out = {}
            for name, site in tr.items():
                if site["type"] == "sample" and not site["is_observed"]:
                    supports[name] = site["fn"].support
                    out[name] = site["value"]
            return out

        # shapes and supports from an abstract trace: nothing is evaluated (NumPyro's own
        # initialisation would run the whole model op by op)
        shapes = jax.eval_shape(latent, inputs)
        self._layout = []
        for name, sd in shapes.items():
            transform = biject_to(supports[name])
            ushape = tuple(transform.inverse_shape(sd.shape))
            self._layout.append((name, ushape, int(np.prod(ushape, dtype=int)), transform))
        self.x0 = np.zeros(sum(size for _, _, size, _ in self._layout))
        self._fns: dict = {}
        self._exe: dict = {}
        self.compile_s = 0.0

    @property
    def dim(self) -> int:
        return int(self.x0.size)

    def constrained(self, x):
        """The constrained sites at ``x`` and the log-Jacobian of the map."""
        out, logj, at = {}, 0.0, 0
        for name, ushape, size, transform in self._layout:
            u = x[at : at + size].reshape(ushape)
            out[name] = transform(u)
            logj = logj + jnp.sum(transform.log_abs_det_jacobian(u, out[name]))
            at += size
        return out, logj

    def logp(self, x, inputs):
        """``(log density on R^d, constrained sites, the model's trace)``: NumPyro's
        potential energy, negated."""
        from numpyro.infer.util import log_density

        params, logj = self.constrained(x)
        lj, trace = log_density(self.fn, (), inputs, params)
        return lj + logj, params, trace

    def define(self, name: str, fn) -> None:
        self._fns[name] = fn

    def __call__(self, name, *args):
        sig = jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), args)
        sig = (name, jax.tree.structure(args), tuple(jax.tree.leaves(sig)), sharding.key())
        exe = self._exe.get(sig)
        if exe is None:
            t0 = time.perf_counter()
            exe = self._exe[sig] = sharding.jit(self._fns[name]).lower(*args).compile()
            self.compile_s += time.perf_counter() - t0
        return exe(*args)


def independence_hyper(progs: FlatPrograms, inputs, opts, seed, *, block, dtype, at_mode=None):
    """Independence Metropolis-Hastings on the density of ``progs``, which must define
    ``"block"`` (``(xs (block, d), key, inputs)`` to a dict with the log densities
    ``"lp"``, the constrained sites ``"params"`` and anything else the engine keeps per
    proposal) and either ``"value_and_grad"`` (the potential ``-logp`` and its gradient
    at one point) or, where a block costs little, the gradients of ``lp`` as the block's
    ``"grad"`` (then the mode search runs blocks too, and one program is compiled).
    Returns ``(samples, sampler stats, timing, why, kept)``: the sampler stats are
    ``diverging`` (all False), ``accept_prob`` and ``potential_energy`` (of each draw, as
    NumPyro's); ``kept`` holds the block's other outputs at every draw,
    ``(chain * draw, ...)``; or ``None`` for all but ``why`` when
    ``opts["hyper_sampler"]`` is ``"auto"`` and the rule of the module docstring says
    NUTS. ``at_mode(x, run_blocks, value_and_grad)``: as
    :func:`independence.sample`'s, with the block runner at hand."""
    from bayesmeta.inference.diagnostics import FitError

    t0 = time.perf_counter()
    compiled_before = progs.compile_s
    explicit = opts["hyper_sampler"] == "independence"
    d = progs.dim
    none = (None, None, None)
    if d > MAX_DIM:
        why = f"{d} hyperparameters, more than the independence sampler's {MAX_DIM}"
        if explicit:
            raise ValueError(f"hyper_sampler: 'independence' is not available: {why}")
        return *none, {"reason": why, "seconds": time.perf_counter() - t0}, None

    base = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    kept = {}

    def value_and_grad(x):
        if "value_and_grad" in progs._fns:
            v, g = progs("value_and_grad", jnp.asarray(x, dtype), inputs)
            return float(v), np.asarray(g, float)
        # one program only: the block's own gradients, at a block of copies of x
        rows = np.repeat(np.asarray(x, float)[None], block, axis=0)
        out = progs("block", jnp.asarray(rows, dtype), base, inputs)
        return -float(out["lp"][0]), -np.asarray(out["grad"][0], float)

    def run_blocks(ys):
        outs = []
        for i in range(0, len(ys), block):
            part = ys[i : i + block]
            n = len(part)
            if n < block:  # one compiled block size: pad with copies of the first row
                part = np.concatenate([part, np.repeat(part[:1], block - n, axis=0)])
            key = jax.random.fold_in(base, i // block)
            out = progs("block", jnp.asarray(part, dtype), key, inputs)
            outs.append(jax.tree.map(lambda v, n=n: np.asarray(v)[:n], out))
        return jax.tree.map(lambda *v: np.concatenate(v), *outs)

    def logp(ys, final):
        out = run_blocks(ys)
        if final:
            kept.update(out)
        return out["lp"]

    hook = None
    if at_mode is not None:

        def hook(x):
            return at_mode(x, run_blocks, value_and_grad)

    chains, thin = int(opts["num_chains"]), int(opts["thinning"])
    try:
        z, stats, info = independence.sample(
            logp,
            value_and_grad,
            progs.x0,
            chains=chains,
            draws=int(opts["num_samples"]),
            warmup=int(opts["num_warmup"]),
            seed=np.asarray(jax.random.key_data(jax.random.PRNGKey(seed))).astype(np.uint32),
            at_mode=hook,
        )
    except independence.IndependenceError as err:
        if explicit:
            raise FitError(f"the independence sampler failed: {err}") from err
        return *none, {"reason": str(err), "seconds": time.perf_counter() - t0}, None
    seconds = time.perf_counter() - t0
    acceptance = np.asarray(info["acceptance"])
    why = {
        "acceptance": acceptance.tolist(),
        "importance_ess_fraction": info["importance_ess_fraction"],
        "mode_converged": info["mode_converged"],
        "evaluations": info["evaluations"],
        "nonfinite_proposals": info["nonfinite_proposals"],
        "dim": d,
        "seconds": seconds,
    }
    if acceptance.min() < MIN_ACCEPTANCE and not explicit:
        why["reason"] = f"acceptance rate {acceptance.min():.2f} in a chain, below {MIN_ACCEPTANCE}"
        return *none, why, None
    stats = {k: v[:, ::thin] for k, v in stats.items()}
    index = stats.pop("index")  # (chain, draw): rows of the final evaluation
    shape = index.shape
    rows = index.ravel()
    at_draws = jax.tree.map(lambda v: v[rows], kept)
    samples = {k: v.reshape(*shape, *v.shape[1:]) for k, v in at_draws.pop("params").items()}
    compile_s = progs.compile_s - compiled_before
    extras = {
        "diverging": np.zeros(shape, bool),
        "accept_prob": stats["accept_prob"],
        "potential_energy": -at_draws.pop("lp").reshape(shape),
    }
    timing = {
        "trace_s": 0.0,
        "compile_s": compile_s,
        "compiled": compile_s > 0,
        "sampling_s": seconds - compile_s,
    }
    return samples, extras, timing, why, at_draws
