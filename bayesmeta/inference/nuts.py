"""NUTS through NumPyro, compiled as one program per model structure.

Full NUTS runs as a single compiled XLA program: finding the starting points, warmup,
drawing and the map from the unconstrained space to the model's sites (``theta`` from
``theta_raw``) all happen inside it, and the data are its inputs. The program is kept on
the model object, keyed by the model's structure (shapes, parameterisation mode, options),
so a second ``fit`` of the same model to data of the same shapes runs it without tracing
or compiling again (``post.info["timing"]["compiled"]`` says which happened).

**Chain layout** (``chain_method="auto"``, the default): on a CPU the chains run one after
another inside the program (``"sequential"``): each chain's trajectories end on their
own, whereas vectorised chains wait in every step for the longest trajectory of any chain
and a CPU has no idle vector lanes to fill. On a GPU or TPU the chains are vectorised
(``"vectorized"``), which fills the device. ``"parallel"`` (one chain per host device,
through ``numpyro.infer.MCMC``) is used only when asked for.

**Chain threads** (``chain_threads=None``, the default): sequential chains are spread over
threads, one per usable CPU core (``os.sched_getaffinity``) and at most one per chain.
Each thread runs whole chains, one after another, through the same one-chain executable,
so every chain is bit for bit what it would be in one program on one thread: chain ``i``
depends only on the ``i``-th key split from the seed. An integer fixes the number of
threads (``1``: all chains in one program, on the calling thread). Threads are used only
unsharded (no ``devices=``) and without ``checkpoint``. On 10,000 normal-normal tasks on
a 2-core CPU, 4 chains x 300 + 300 iterations sampled in 11.0 s on two threads against
23.3 s on one.

**Step size target** (``target_accept="auto"``, the default): warmup aims at an
acceptance of 0.8 (NumPyro's and Stan's default), and only when that run diverges is it run
again, with the same compiled program, at 0.95; ``info["target_accept"]`` records what the
returned draws used and ``info["retried"]`` the first run's divergences. A number fixes the
target.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from operator import attrgetter

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import (
    MCMC,
    NUTS,
    init_to_feasible,
    init_to_mean,
    init_to_median,
    init_to_sample,
    init_to_uniform,
    log_likelihood,
)

from bayesmeta.inference import sharding
from bayesmeta.inference.assemble import assemble
from bayesmeta.inference.diagnostics import check_fit, usable_cores
from bayesmeta.inference.registry import Engine, sampler_cli_options
from bayesmeta.info import FitInfo, NUTSInfo
from bayesmeta.model import _TaskModel, build_callable
from bayesmeta.tasks import TaskSet

__all__ = ["fit_nuts", "NUTS_OPTIONS", "CompiledNUTS"]

NUTS_OPTIONS = {
    "num_chains": 4,
    "num_warmup": 1000,
    "num_samples": 1000,
    "target_accept": "auto",
    "max_tree_depth": 10,
    "dense_mass": False,
    "progress_bar": None,
    "chain_method": "auto",
    "chain_threads": None,
    "thinning": 1,
    "init_strategy": None,
    "warn": True,
    "checkpoint": None,
    "checkpoint_every": 100,
}
#: the acceptance target of ``target_accept="auto"``, and the one of its rerun after divergences
TARGET_ACCEPT, TARGET_ACCEPT_RETRY = 0.8, 0.95
_CHAIN_METHODS = ("auto", "vectorized", "parallel", "sequential")
# the sampler statistics every NUTS fit keeps (NumPyro's names; renamed for ArviZ)
SAMPLE_FIELDS = (
    "diverging",
    "energy",
    "num_steps",
    "accept_prob",
    "adapt_state.step_size",
    "potential_energy",
)


#: ``init_strategy=`` by name: NumPyro's initialisation strategies (a callable such as
#: ``numpyro.infer.init_to_value(values=...)`` is passed through as it is)
INIT_STRATEGIES = {
    "median": init_to_median,
    "mean": init_to_mean,
    "uniform": init_to_uniform,
    "sample": init_to_sample,
    "feasible": init_to_feasible,
}


def init_strategy(value):
    """The NumPyro init strategy ``init_strategy=`` stands for: None (NumPyro's default,
    ``init_to_uniform``), a name in :data:`INIT_STRATEGIES` or a callable (one of
    ``numpyro.infer``'s ``init_to_*``); a ValueError otherwise."""
    if value is None or (callable(value) and not isinstance(value, type)):
        return value
    if isinstance(value, str) and value in INIT_STRATEGIES:
        return INIT_STRATEGIES[value]
    raise ValueError(
        f"init_strategy: expected None, one of {sorted(INIT_STRATEGIES)} or a NumPyro init "
        f"strategy function (e.g. numpyro.infer.init_to_median), got {value!r}"
    )


def _check_options(opts: dict) -> None:
    for name in ("num_chains", "num_warmup", "num_samples", "max_tree_depth", "thinning"):
        check_int_option(opts, name, 0 if name == "num_warmup" else 1)
    if opts["num_samples"] < 4:
        raise ValueError(f"num_samples: need at least 4 draws per chain, got {opts['num_samples']}")
    ta = opts["target_accept"]
    if ta != "auto" and (
        not isinstance(ta, float | int) or isinstance(ta, bool) or not 0.0 < float(ta) < 1.0
    ):
        raise ValueError(f"target_accept: must be in (0, 1) or 'auto', got {ta!r}")
    if opts["chain_method"] not in _CHAIN_METHODS:
        raise ValueError(
            f"chain_method: must be one of {_CHAIN_METHODS}, got {opts['chain_method']!r}"
        )
    threads = opts.get("chain_threads")  # not an option of collapsed NUTS
    if threads is not None and (
        not isinstance(threads, int | np.integer) or isinstance(threads, bool) or threads < 1
    ):
        raise ValueError(f"chain_threads: expected None or an integer >= 1, got {threads!r}")
    every = opts["checkpoint_every"]
    if not isinstance(every, int | np.integer) or isinstance(every, bool) or every < 1:
        raise ValueError(f"checkpoint_every: must be an integer >= 1, got {every!r}")
    if opts["checkpoint"] is not None and opts["chain_method"] == "parallel":
        raise ValueError("checkpoint: not available with chain_method='parallel'")
    if not isinstance(opts["dense_mass"], bool | list | tuple):
        raise ValueError(
            f"dense_mass: expected a bool or a list of site groups, got {opts['dense_mass']!r}"
        )
    init_strategy(opts["init_strategy"])
    if opts["progress_bar"] is not None and not isinstance(opts["progress_bar"], bool):
        raise ValueError(f"progress_bar: expected None or a bool, got {opts['progress_bar']!r}")
    check_bool_option(opts, "warn")


def check_int_option(opts: dict, name: str, low: int = 1) -> None:
    """``opts[name]`` is a Python or numpy integer ``>= low`` (not a bool, a float or a
    string), or a ValueError naming the option."""
    v = opts[name]
    if not isinstance(v, int | np.integer) or isinstance(v, bool | np.bool_) or v < low:
        raise ValueError(f"{name}: must be an integer >= {low}, got {v!r}")


def check_bool_option(opts: dict, name: str) -> None:
    """``opts[name]`` is a bool, or a ValueError naming the option."""
    if not isinstance(opts[name], bool | np.bool_):
        raise ValueError(f"{name}: expected True or False, got {opts[name]!r}")


def show_progress(opts: dict) -> bool:
    """Whether a fit shows a progress bar: ``progress_bar``, or None for an interactive
    terminal."""
    progress = opts["progress_bar"]
    return sys.stderr.isatty() if progress is None else bool(progress)


def resolve_chain_method(method: str) -> str:
    """The chain layout ``chain_method="auto"`` stands for on the default device (see the
    module docstring)."""
    if method != "auto":
        return method
    return "sequential" if jax.default_backend() == "cpu" else "vectorized"


def chain_threads(opts: dict, layout: str) -> int:
    """How many threads run the chains (see "Chain threads" in the module docstring)."""
    chains = int(opts["num_chains"])
    if layout != "sequential" or sharding.active() is not None or chains == 1:
        return 1
    threads = opts["chain_threads"]
    return min(chains, usable_cores() if threads is None else int(threads))


def start_target(opts: dict) -> float:
    """The acceptance target of the first run."""
    ta = opts["target_accept"]
    return TARGET_ACCEPT if ta == "auto" else float(ta)


def make_mcmc(fn, opts: dict) -> MCMC:
    """A NumPyro ``MCMC`` running NUTS on the model ``fn`` with options ``opts``."""
    kernel_kw = dict(
        target_accept_prob=start_target(opts),
        max_tree_depth=int(opts["max_tree_depth"]),
        dense_mass=opts["dense_mass"],
    )
    if opts["init_strategy"] is not None:
        kernel_kw["init_strategy"] = init_strategy(opts["init_strategy"])
    return MCMC(
        NUTS(fn, **kernel_kw),
        num_warmup=int(opts["num_warmup"]),
        num_samples=int(opts["num_samples"]),
        num_chains=int(opts["num_chains"]),
        chain_method=resolve_chain_method(opts["chain_method"]),
        progress_bar=show_progress(opts),
        thinning=int(opts["thinning"]),
    )


def run_nuts(fn, data: dict, seed: int, opts: dict, extra_fields=()):
    """Run NumPyro NUTS on ``fn(**data)``; returns ``(samples by chain, extra fields, mcmc)``."""
    mcmc = make_mcmc(fn, opts)
    mcmc.run(
        jax.random.PRNGKey(seed),
        extra_fields=(*SAMPLE_FIELDS, *extra_fields),
        **data,
    )
    samples = mcmc.get_samples(group_by_chain=True)
    extras = mcmc.get_extra_fields(group_by_chain=True)
    return samples, extras, mcmc


class CompiledNUTS:
    """Full NUTS on one model structure as one compiled program, run again on new data.

    The program takes the chain keys, the model's data and the acceptance target as
    inputs: it finds each chain's starting point, runs warmup and draws in one scan (one
    copy of the NUTS kernel in the program; draws are written to a buffer, so memory is
    that of the kept draws), and maps the draws to the model's sites. Executables are kept
    per input signature; :attr:`compiles` counts how many were built.
    """

    def __init__(self, model_fn, opts: dict, layout: str):
        if layout not in ("vectorized", "sequential"):
            raise ValueError(f"layout: 'vectorized' or 'sequential', got {layout!r}")
        self.model_fn, self.opts, self.layout = model_fn, dict(opts), layout
        self.progress = show_progress(opts)
        self._executables: dict = {}
        self._bar = None
        self.compiles = 0

    def run(
        self, seed: int, data: dict, target_accept: float, threads: int = 1
    ) -> tuple[dict, dict, dict]:
        """``(draws by site (chain, draw, ...), sampler statistics, timing)``, the chains
        run on ``threads`` threads (see :func:`chain_threads`; ``timing["threads"]``)."""
        chains = int(self.opts["num_chains"])
        keys = jax.random.split(jax.random.PRNGKey(seed), chains)
        self._keys = keys
        target = jnp.asarray(target_accept, dtype=jnp.result_type(float))
        keys, target = sharding.place((keys, target), note=False)
        timing = {"trace_s": 0.0, "compile_s": 0.0, "compiled": False, "threads": threads}
        if threads > 1:  # one chain per call, as many calls at a time as threads
            keys = np.asarray(keys)
            exe = self._executable((keys[:1], data, target), timing)
        else:
            exe = self._executable((keys, data, target), timing)
        t0 = time.perf_counter()
        if self.progress:
            from tqdm.auto import tqdm

            total = chains * (int(self.opts["num_warmup"]) + int(self.opts["num_samples"]))
            self._bar = tqdm(total=total, desc="NUTS", unit="it")
        try:
            if threads > 1:

                def one(i):
                    return jax.block_until_ready(exe(keys[i : i + 1], data, target))

                with ThreadPoolExecutor(threads, thread_name_prefix="bayesmeta-chain") as pool:
                    outs = list(pool.map(one, range(chains)))
                z, fields = jax.tree.map(
                    lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *outs
                )
            else:
                z, fields = jax.block_until_ready(exe(keys, data, target))
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        timing["sampling_s"] = time.perf_counter() - t0
        return z, dict(zip(SAMPLE_FIELDS, fields, strict=True)), timing

    def _executable(self, args, timing: dict):
        """The executable for ``args``' signature, compiled (and counted in ``timing``) on
        first use."""
        sig = jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), args)
        sig = (jax.tree.structure(args), tuple(jax.tree.leaves(sig)), sharding.key())
        exe = self._executables.get(sig)
        if exe is None:
            t0 = time.perf_counter()
            lowered = sharding.jit(self._program).lower(*args)
            t1 = time.perf_counter()
            exe = lowered.compile()
            t2 = time.perf_counter()
            self._executables[sig] = exe
            self.compiles += 1
            timing.update(trace_s=t1 - t0, compile_s=t2 - t1, compiled=True)
        return exe

    def run_checkpointed(
        self,
        seed: int,
        data: dict,
        target_accept: float,
        path: str,
        every: int,
        fp: dict,
        note: dict | None = None,
    ) -> tuple[dict, dict, dict]:
        """As :meth:`run`, in programs of ``every`` iterations, with the sampler state and
        the kept draws saved to ``path`` after each (see
        :mod:`bayesmeta.inference.checkpoint`); a checkpoint with the same fingerprint
        ``fp`` and the same target is resumed (one with another target, the run before an
        ``"auto"`` target's rerun, is replaced). ``note`` is stored with it.
        ``timing["resumed_at"]`` is the iteration it resumed from (0: a fresh start)."""
        from bayesmeta.inference import checkpoint as ck

        o = self.opts
        warmup, iters, thin = int(o["num_warmup"]), int(o["num_samples"]), int(o["thinning"])
        total = warmup + iters
        chains = int(o["num_chains"])
        keys = jax.random.split(jax.random.PRNGKey(seed), chains)
        target = jnp.asarray(target_accept, dtype=jnp.result_type(float))
        timing = {"trace_s": 0.0, "compile_s": 0.0, "compiled": False, "sampling_s": 0.0}
        cached = self._checkpoint_cache_size()
        init = self._jitted("init", self._init_program)
        shapes = jax.eval_shape(init, keys, data, target)
        state_def = jax.tree.structure(shapes)
        z_def = jax.tree.structure(shapes.z)
        found = ck.load(path, fp)
        if found is not None and found[0].get("target") != float(target_accept):
            found = None
        t0 = time.perf_counter()
        if found is None:
            done, zs, fs = 0, None, None
            state = init(keys, data, target)
        else:
            meta, arrays = found
            done = int(meta["done"])
            state = jax.tree.unflatten(
                state_def, [jnp.asarray(arrays[f"s{i}"]) for i in range(state_def.num_leaves)]
            )
            zs = [arrays[f"z{i}"] for i in range(z_def.num_leaves)]
            fs = [arrays[f"f{i}"] for i in range(len(SAMPLE_FIELDS))]
        timing["resumed_at"] = done
        while done < total:
            n = min(int(every), total - done)
            chunk = self._jitted(("chunk", n), partial(self._chunk_program, n))
            state, (z, fields) = jax.block_until_ready(chunk(keys, state, data, target))
            i = np.arange(done, done + n)
            keep = (i >= warmup) & ((i - warmup) % thin == 0)
            z_new = [np.asarray(x)[:, keep] for x in jax.tree.leaves(z)]
            f_new = [np.asarray(x)[:, keep] for x in fields]
            zs = (
                z_new
                if zs is None
                else [np.concatenate(p, axis=1) for p in zip(zs, z_new, strict=True)]
            )
            fs = (
                f_new
                if fs is None
                else [np.concatenate(p, axis=1) for p in zip(fs, f_new, strict=True)]
            )
            done += n
            arrays = {f"s{k}": np.asarray(v) for k, v in enumerate(jax.tree.leaves(state))}
            arrays.update({f"z{k}": v for k, v in enumerate(zs)})
            arrays.update({f"f{k}": v for k, v in enumerate(fs)})
            meta = {"fingerprint": fp, "done": done, "total": total, "target": float(target_accept)}
            ck.save(path, dict(meta, **(note or {})), arrays)
        post = self._jitted("post", self._postprocess_program)
        z = jax.tree.unflatten(z_def, [jnp.asarray(x) for x in zs])
        sites = jax.block_until_ready(post(keys, z, data, target))
        # compiled on first use inside the loop: sampling_s includes any compilation here
        timing["sampling_s"] = time.perf_counter() - t0
        timing["compiled"] = self._checkpoint_cache_size() > cached
        return sites, dict(zip(SAMPLE_FIELDS, fs, strict=True)), timing

    def _jitted(self, name, fn):
        store = self.__dict__.setdefault("_checkpoint_fns", {})
        if name not in store:
            store[name] = jax.jit(fn)
        return store[name]

    def _checkpoint_cache_size(self) -> int:
        return sum(f._cache_size() for f in self.__dict__.get("_checkpoint_fns", {}).values())

    def _init_program(self, keys, data, target):
        warmup = int(self.opts["num_warmup"])
        if self.layout == "vectorized":
            return self._kernel(target).init(keys, warmup, None, (), data)
        return jax.lax.map(lambda k: self._kernel(target).init(k, warmup, None, (), data), keys)

    def _ready_kernel(self, key, target, data):
        # the kernel's sampling function is set up by init; its result is not used
        kernel = self._kernel(target)
        kernel.init(key, int(self.opts["num_warmup"]), None, (), data)
        return kernel

    def _chunk_program(self, n, keys, state, data, target):
        """``n`` iterations of every chain from ``state``: ``(state, (z, fields))``, the
        draws ``(chain, n, ...)``."""
        fields_of = attrgetter(*SAMPLE_FIELDS)

        def steps(kernel, s):
            def step(s, _):
                s = kernel.sample(s, (), data)
                return s, (s.z, fields_of(s))

            return jax.lax.scan(step, s, None, length=n)

        if self.layout == "vectorized":
            s, out = steps(self._ready_kernel(keys, target, data), state)
            return s, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), out)
        return jax.lax.map(
            lambda a: steps(self._ready_kernel(a[0], target, data), a[1]), (keys, state)
        )

    def _postprocess_program(self, keys, z, data, target):
        key = keys if self.layout == "vectorized" else keys[0]
        post = self._ready_kernel(key, target, data).postprocess_fn((), data)
        return jax.vmap(jax.vmap(post))(z)

    def _tick(self, n) -> None:
        if self._bar is not None:
            self._bar.update(int(n) * (1 if self.layout == "sequential" else len(self._keys)))

    def _kernel(self, target):
        o = self.opts
        kw = dict(
            target_accept_prob=target,
            max_tree_depth=int(o["max_tree_depth"]),
            dense_mass=o["dense_mass"],
        )
        if o["init_strategy"] is not None:
            kw["init_strategy"] = init_strategy(o["init_strategy"])
        return NUTS(self.model_fn, **kw)

    def _program(self, keys, data, target):
        o = self.opts
        warmup, iters = int(o["num_warmup"]), int(o["num_samples"])
        thin = int(o["thinning"])
        kept = iters // thin
        fields_of = attrgetter(*SAMPLE_FIELDS)

        def chain_loop(kernel, state, batch):
            # slot of iteration i: the (i - warmup) // thin-th kept draw, or a spare
            # slot (index kept) for warmup and thinned-out iterations
            def slot(i):
                j = i - warmup
                keep = (j >= 0) & (j % thin == 0)
                return jnp.where(keep, j // thin, kept)

            def buffer(x):
                return jnp.zeros((kept + 1, *jnp.shape(x)), jnp.result_type(x))

            bufs = jax.tree.map(buffer, (state.z, fields_of(state)))

            def step(carry, i):
                s, b = carry
                s = kernel.sample(s, (), data)
                if self.progress:
                    every = max(1, (warmup + iters) // 100)
                    jax.lax.cond(
                        (i + 1) % every == 0,
                        lambda: jax.debug.callback(self._tick, every, ordered=False),
                        lambda: None,
                    )
                k = slot(i)
                b = jax.tree.map(
                    lambda buf, v: jax.lax.dynamic_update_index_in_dim(buf, v, k, 0),
                    b,
                    (s.z, fields_of(s)),
                )
                return (s, b), None

            (_, bufs), _ = jax.lax.scan(step, (state, bufs), jnp.arange(warmup + iters))
            z, fields = jax.tree.map(lambda x: x[:kept], bufs)
            post = kernel.postprocess_fn((), data)
            to_site = jax.vmap(jax.vmap(post)) if batch else jax.vmap(post)
            return to_site(z), fields

        if self.layout == "vectorized":
            kernel = self._kernel(target)
            state = kernel.init(keys, warmup, None, (), data)
            z, fields = chain_loop(kernel, state, batch=True)
            # (draw, chain) -> (chain, draw)
            return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), (z, fields))

        def one(key):
            kernel = self._kernel(target)
            state = kernel.init(key, warmup, None, (), data)
            return chain_loop(kernel, state, batch=False)

        return jax.lax.map(one, keys)


def _program_key(built, opts: dict, layout: str):
    """What the compiled program depends on besides its inputs (None: not reusable)."""
    if built.structure is None:
        return None
    static = tuple(
        (k, opts[k])
        for k in ("num_chains", "num_warmup", "num_samples", "max_tree_depth", "thinning")
    ) + (("progress", show_progress(opts)),)
    dense = opts["dense_mass"]
    dense = tuple(map(tuple, dense)) if isinstance(dense, list | tuple) else dense
    key = (built.structure, static, dense, opts["init_strategy"], layout)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _runner(program, built, model, seed: int, opts: dict, layout: str, info: dict):
    """``(run(target) -> (draws, fields, timing), resume the rerun?)``: the program's run,
    checkpointed when ``opts["checkpoint"]`` is a path (``info["checkpoint"]`` says where)."""
    path = opts["checkpoint"]
    if path is None:
        threads = chain_threads(opts, layout)
        return (lambda target: program.run(seed, built.data, target, threads)), False
    from bayesmeta.inference import checkpoint as ck

    path = ck.check_path(path)
    static = ("num_chains", "num_warmup", "num_samples", "thinning", "max_tree_depth")
    fp = ck.fingerprint(
        seed=seed,
        model=repr(model),
        structure=built.structure,
        options=(
            {k: opts[k] for k in static},
            opts["dense_mass"],
            opts["init_strategy"],
            opts["target_accept"],
            layout,
        ),
        data=built.data,
    )
    every = int(opts["checkpoint_every"])
    info["checkpoint"] = {"path": path, "every": every}
    found = ck.load(path, fp)
    skip_first = (
        found is not None
        and opts["target_accept"] == "auto"
        and found[0].get("target") == TARGET_ACCEPT_RETRY
    )
    if skip_first:
        info["retried"] = found[0].get("retried")

    def run(target):
        note = {"retried": info["retried"]} if "retried" in info else None
        return program.run_checkpointed(seed, built.data, target, path, every, fp, note)

    return run, skip_first


def compiled_program(model, built, opts: dict, layout: str) -> CompiledNUTS:
    """The compiled NUTS program for ``built``, kept on ``model`` (when it is a bayesmeta
    model) so that refits of the same structure reuse it."""
    key = _program_key(built, opts, layout)
    store = None if model is None else model.__dict__.setdefault("_nuts_programs", {})
    if store is not None and key is not None and key in store:
        return store[key]
    program = CompiledNUTS(built.fn, opts, layout)
    if store is not None and key is not None:
        store[key] = program
    return program


def fit_nuts(built, tasks, seed: int, model=None, **options):
    """Fit a built model by NUTS and return a :class:`~bayesmeta.posterior.Posterior`.

    Options (defaults in ``NUTS_OPTIONS``): ``num_chains``, ``num_warmup``,
    ``num_samples``, ``target_accept`` (``"auto"``: 0.8, rerun at 0.95 only after
    divergences; or a number), ``max_tree_depth``, ``dense_mass``, ``progress_bar`` (None:
    shown when the terminal is interactive), ``chain_method`` (``"auto"``: sequential on a
    CPU, vectorised on an accelerator; see the module docstring), ``chain_threads`` (None:
    sequential chains on one thread per usable core; an integer fixes it; see the module
    docstring), ``thinning``,
    ``init_strategy`` (None: NumPyro's default; a name in :data:`INIT_STRATEGIES`,
    ``"median"``, ``"mean"``, ``"uniform"``, ``"sample"``, ``"feasible"``, or a NumPyro
    ``init_to_*`` function), ``warn`` (the diagnostics warning), ``checkpoint`` (a file path:
    the sampler state and the draws so far are saved there every ``checkpoint_every``
    iterations, atomically; the same fit called again with the same path resumes from the
    last checkpoint, warmup included, and returns all the draws; see
    :mod:`bayesmeta.inference.checkpoint`).

    ``info["timing"]`` holds ``trace_s`` and ``compile_s`` (zero when the program was
    reused), ``sampling_s`` (the compiled program: initialisation, warmup, draws),
    ``first_posterior_s`` (wall time from the call to the returned posterior) and
    ``compiled`` (whether this fit compiled).
    """

    t_start = time.perf_counter()
    opts = dict(NUTS_OPTIONS, **options)
    _check_options(opts)
    layout = resolve_chain_method(opts["chain_method"])
    target = start_target(opts)
    info = {"options": opts, "chain_method": layout, "target_accept": target}
    if layout == "parallel":
        t0 = time.perf_counter()
        samples, extras, _ = run_nuts(built.fn, built.data, seed, opts)
        timing = {"sampling_s": time.perf_counter() - t0, "compiled": True}
    else:
        program = compiled_program(model, built, opts, layout)
        placed = sharding.place_built(built)  # the data split over devices (devices=)
        run, skip_first = _runner(program, placed, model, seed, opts, layout, info)
        if skip_first:  # a checkpoint of the rerun at the higher target: resume that
            target = info["target_accept"] = TARGET_ACCEPT_RETRY
        samples, extras, timing = run(target)
        divergences = int(np.sum(np.asarray(extras["diverging"])))
        if opts["target_accept"] == "auto" and divergences and not skip_first:
            info["retried"] = {"target_accept": target, "divergences": divergences}
            target = TARGET_ACCEPT_RETRY
            samples, extras, again = run(target)
            timing["sampling_s"] += again["sampling_s"]
            timing["resumed_at"] = again.get("resumed_at")
            info["target_accept"] = target
    info["timing"] = timing
    post = posterior_from_draws(
        built,
        tasks,
        model,
        samples,
        extras,
        method="nuts",
        warn=opts["warn"],
        info=info,
        info_type=NUTSInfo,
    )
    post.info["timing"]["first_posterior_s"] = time.perf_counter() - t_start
    return post


def parameterization_advice(built, tasks, model, samples):
    """``(advice, suggested mask)``: which tasks to flip, judged with the fitted spread. A
    task is better centred where its information times the squared posterior median of
    ``tau`` exceeds 1 (the break-even of the two forms), non-centred below. ``(None,
    None)`` when nothing is to be flipped or the model has no such choice."""
    pop = getattr(model, "population", None)
    if pop is None or built.information is None:
        return None, None
    tau_site, fixed = pop.site("tau"), pop.fixed_values(built.param_shape)
    if tau_site in samples:
        tau = np.median(np.asarray(samples[tau_site]).reshape(-1, *built.param_shape), axis=0)
    elif tau_site in fixed:
        tau = np.asarray(fixed[tau_site])
    else:
        return None, None
    num_tasks = built.information.shape[0]
    better = (np.asarray(built.information, float) * np.asarray(tau, float) ** 2 > 1.0).reshape(
        num_tasks, -1
    )
    now = np.ones_like(better) if built.centered is None else np.asarray(built.centered, bool)
    now = np.broadcast_to(now.reshape(now.shape[0], -1), better.shape)
    to_nc = np.flatnonzero(np.any(now & ~better, axis=1))
    to_c = np.flatnonzero(np.all(~now & better, axis=1))
    if to_nc.size == 0 and to_c.size == 0:
        return None, None
    labels = list(tasks.labels)

    def name(idx):
        shown = ", ".join(repr(labels[i]) for i in idx[:8])
        return shown + (f" and {idx.size - 8} more" if idx.size > 8 else "")

    parts = ([f"make task(s) {name(to_nc)} non-centred"] if to_nc.size else []) + (
        [f"centre task(s) {name(to_c)}"] if to_c.size else []
    )
    mask = better.reshape(num_tasks, *built.param_shape)
    advice = (
        "At the fitted spread (posterior median of tau) the parameterisation is the likely "
        "cause: " + " and ".join(parts) + f". Refit with {type(pop).__name__}(..., "
        "parameterization=post.info['diagnostics']['suggested_parameterization']) "
        "(a per-task boolean mask, True = centred)."
    )
    return advice, mask


def posterior_from_draws(
    built, tasks, model, samples, extras, method, warn, info, info_type=FitInfo, check_kw=None
):
    """Check convergence on the draws of a full-model sampler (NUTS, VI), defer the
    pointwise log-likelihood, and assemble the Posterior (``extras``: NumPyro's names)."""
    samples = {k: np.asarray(v) for k, v in samples.items()}
    if not isinstance(tasks, TaskSet):  # a user's model fitted with a dict of its arguments
        tasks = None
    chains, draws = next(iter(samples.values())).shape[:2]
    flat = {k: v.reshape(chains * draws, *v.shape[2:]) for k, v in samples.items()}
    shown = {k: v for k, v in samples.items() if k not in built.hidden}

    def pointwise():  # deferred: computed when post.log_likelihood is first used
        ll = log_likelihood(built.fn, flat, batch_ndims=1, **built.data)
        return {k: np.asarray(v).reshape(chains, draws, *np.shape(v)[1:]) for k, v in ll.items()}

    extras = {k: np.asarray(v) for k, v in (extras or {}).items()}
    divergences = int(np.sum(extras["diverging"])) if "diverging" in extras else None
    advice, suggested = parameterization_advice(built, tasks, model, shown)
    diag = check_fit(
        shown,
        divergences,
        warn=warn,
        energy=extras.get("energy"),
        advice=advice,
        dims=built.dims,
        coords=built.coords,
        **(check_kw or {}),
    )
    if "advice" in diag:
        diag["suggested_parameterization"] = suggested
    if built.observed is not None:
        observed = dict(built.observed)
    else:
        observed = {"y": np.asarray(built.data["y"])} if "y" in built.data else {}
    if built.obs_dim == "task" and observed:
        first = {k: v[:1] for k, v in flat.items()}
        ll_shape = {
            k: np.shape(v)[1:]
            for k, v in log_likelihood(built.fn, first, batch_ndims=1, **built.data).items()
        }
        if "y" in ll_shape and observed["y"].shape != ll_shape["y"]:
            observed = {}
    return assemble(
        samples,
        method=method,
        tasks=tasks,
        model=model,
        built=built,
        sampler_stats=extras,
        log_likelihood=pointwise,
        observed_data=observed,
        info=dict(info, diagnostics=diag),
        info_type=info_type,
    )


def bind(model, tasks):
    """``(built model, owner)`` for the full-model engines: a bayesmeta model builds
    itself (and owns the compiled programs); a NumPyro callable is wrapped, owned by none."""
    if isinstance(model, _TaskModel):
        return model.build(tasks), model
    return build_callable(model, tasks), None


def _fit_engine(model, tasks, seed: int, **options):
    built, owner = bind(model, tasks)
    return fit_nuts(built, tasks, seed, model=owner, **options)


ENGINE = Engine(
    name="nuts",
    summary="NUTS on the full model, one compiled program per model structure",
    options=NUTS_OPTIONS,
    fit=_fit_engine,
    cli_options=sampler_cli_options,
    check_options=_check_options,
)
