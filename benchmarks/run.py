"""Peer benchmark: bayesmeta's default path against the same models hand-written in NumPyro,
and against nutpie and PyMC where they are installed, all measured in one process.

    python -m benchmarks.run [CASES...] [--json] [--quick] [--chains N] [--warmup N]
                             [--draws N] [--seed S] [--out FILE.json] [--no-peers]
    python -m benchmarks.run --markdown-from FILE.json   # README section from a saved run

Cases (default: all): eight_schools, logistic_100, logistic_1000, logistic_10000,
normal_10000, poisson_1000, adapt_10000 (see ``benchmarks/cases.py``). ``--quick`` keeps the
square root of every number of tasks (at least 10) and runs 2 chains x 200 draws (200 warmup)
unless told otherwise; the default is 4 chains x 1000 draws (1000 warmup).

Runners, per case, in this order:

- ``bayesmeta``: ``bm.fit(model, tasks, seed=, num_chains=, num_warmup=, num_samples=,
  progress_bar=False)``, every other option at its default (normal_10000 adds a row with
  ``method="auto"``, which picks collapsed NUTS there);
- ``numpyro-sequential`` and ``numpyro-vectorized``: the model hand-written in NumPyro,
  non-centred, ``MCMC(NUTS(model), chain_method=...)`` with NumPyro's defaults (target
  accept 0.8, diagonal mass matrix, ``init_to_uniform``);
- ``nutpie`` and ``pymc``: the same model in PyMC (``benchmarks/peers.py``), reported as
  "not installed" when the package is missing; ``--no-peers`` or ``BENCH_NO_PEERS=1``
  takes that path on purpose.

adapt_10000 times ``post.adapt(new_tasks)`` after a population fit (the fit is not part of
the rows) against ``jax-hand``, the same posterior computed by hand in one vectorised JAX
function; its "x numpyro" column is against that row.

Timing. *End to end* is the wall time of the whole call as a user waits for it (model
building, compilation, warmup, draws, returning numpy draws). *Time to first posterior* is
the set-up before the first draw (trace, compile, initialise) and *sampling* the rest.

- bayesmeta: the fit's own ``post.info["timing"]`` when it reports one: sampling is its
  ``sampling_s`` (the compiled sampler alone, so post-processing such as the convergence
  checks is in neither column, only in end to end), set-up is ``trace_s + compile_s``
  (or ``first_posterior_s``; see ``_split_timing``). Otherwise the seconds JAX itself
  records for tracing, lowering and compiling during the fit (``jax.monitoring`` duration
  events, top-level traces only, so nothing is counted twice) are the time to first
  posterior and the rest of the wall time is sampling. A second identical fit is not used
  to measure sampling alone: a fit through NumPyro's ``MCMC`` traces and compiles its
  sampling loop again on every run (measured: a second eight-schools fit took as long as
  the first, and a 2 + 4 draw fit as long as a 300 + 300 one).
- NumPyro, and adapt's two rows: the same JAX compile clock on one fresh run each
  (sampling then includes turning the draws into numpy arrays).
- nutpie and PyMC: see ``benchmarks/peers.py`` (compile step / PyMC's own sampling time).

Before the first case a tiny NumPyro run warms the process and the peers are imported
(JAX start-up and imports are paid by no row), and JAX's caches are cleared before every
row, so each row compiles what it runs. PyMC (pytensor) keeps its compiled C code on disk
across processes, so its time to first posterior is shorter on a second run of a case.

Diagnostics, from the draws only (warmup excluded): minimum bulk ESS and maximum R-hat
(``bayesmeta.inference.diagnostics``) over every scalar component of every hyperparameter
and of the per-task ``theta`` (``theta = mu + tau z`` for the hand-written models);
divergences; leapfrog steps per draw. ESS/s is the minimum ESS over the end-to-end time
(and over sampling alone). "x numpyro" is a row's end-to-end ESS/s over the best NumPyro
row of its case, "x nutpie" over nutpie's.

Peak memory: the process's peak resident set during the row (Linux: ``VmHWM`` of
``/proc/self/status`` after resetting it through ``/proc/self/clear_refs``); it includes
what the process already holds, so the table adds in brackets the rise over the resident
set at the row's start. Elsewhere the process-wide ``ru_maxrss`` is reported and labelled
so.

Physical limit, per MCMC case: one gradient evaluation must at least read the model's
data arrays (as bayesmeta holds them: y, x, task index, noise) and the parameter vector
(``p (T + 2)`` values in the default float dtype). This machine's memory bandwidth is
measured in the same run (best of a few timed copies of a large array, numpy and JAX on
the default device; the larger is used), which bounds the gradient evaluations per second;
bayesmeta's achieved rate is the leapfrog steps of its draws over its sampling time (warmup
steps are not counted by the fit, so also shown scaled by (warmup + draws) / draws).

Output: a Markdown table with the machine in a header and the limit lines below; with
``--json`` one JSON object as the last line of stdout; ``--out`` writes the same object
atomically. Nothing is asserted: a runner that raises gives a failed row with its error.
``main(argv)`` returns the result dict.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

import bayesmeta as bm
from bayesmeta.inference.diagnostics import ess_bulk, rhat
from benchmarks.cases import (
    CASE_NAMES,
    Case,
    Draws,
    build_case,
    hand_adapt,
    jax_data,
    numpyro_model,
    theta_from,
)
from benchmarks.peers import PEERS, peer_versions, run_peer

__all__ = ["main", "render_section", "render_table", "run_benchmark"]

FULL_SETTINGS = {"chains": 4, "warmup": 1000, "draws": 1000}
QUICK_SETTINGS = {"chains": 2, "warmup": 200, "draws": 200}
_BANDWIDTH_MIB = {False: 512, True: 128}  # size of the timed copy (full, quick)
_BANDWIDTH_REPEATS = 5
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_NUMPYRO_RUNNERS = ("numpyro-sequential", "numpyro-vectorized")
_ESS_CHUNK = 2**24  # draws x components per ESS call (bounds the float64 rank arrays)
_MAX_NOTE = 120


# ---------------------------------------------------------------------- measurement
class _CompileClock:
    """Running total of the seconds JAX spent tracing, lowering and compiling."""

    total = 0.0
    registered = False

    @classmethod
    def seconds(cls) -> float:
        if not cls.registered:
            jax.monitoring.register_event_duration_secs_listener(cls._listen)
            cls.registered = True
        return cls.total

    @classmethod
    def _listen(cls, event: str, duration: float, **kwargs) -> None:
        if event in _COMPILE_EVENTS:
            cls.total += duration


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_mib() -> float | None:
    """This process's resident set now (Linux), MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _peak_rss_mib(reset: bool) -> tuple[float, str]:
    if reset:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024.0, "row peak RSS (VmHWM)"
        except OSError:
            pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 2**20 if sys.platform == "darwin" else 2**10  # bytes on macOS, KiB on Linux
    return peak / scale, "process-wide peak RSS (ru_maxrss)"


def measure_bandwidth(mib: int, repeats: int = _BANDWIDTH_REPEATS) -> dict:
    """Memory bandwidth in GB/s: best of ``repeats`` copies of a ``mib`` MiB array, counted
    as read + write, by numpy and by JAX on its default device."""
    out = {"size_mib": mib, "repeats": repeats}
    src = np.ones(mib * 2**20 // 8)
    dst = np.empty_like(src)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    out["numpy_copy_GBps"] = 2 * src.nbytes / best / 1e9
    del src, dst
    x = jnp.ones(mib * 2**20 // 4, dtype=jnp.float32)
    bump = jax.jit(lambda a: a + 1.0)
    bump(x).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        bump(x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    out["jax_copy_GBps"] = 2 * x.nbytes / best / 1e9
    del x
    if jax.default_backend() == "cpu":
        out["GBps"] = max(out["numpy_copy_GBps"], out["jax_copy_GBps"])
    else:
        out["GBps"] = out["jax_copy_GBps"]  # the gradient reads device memory
    return out


def _diagnose(samples: dict) -> dict:
    """Minimum bulk ESS and maximum R-hat over every scalar component of every site."""
    min_ess, max_rhat, worst = math.inf, -math.inf, None
    for name, x in samples.items():
        x = np.asarray(x)
        chains, draws = x.shape[:2]
        flat = x.reshape(chains, draws, -1)
        step = max(1, _ESS_CHUNK // (chains * draws))
        for lo in range(0, flat.shape[-1], step):
            part = flat[..., lo : lo + step]
            e, r = np.asarray(ess_bulk(part)), np.asarray(rhat(part))
            if np.isfinite(e).any() and np.nanmin(e) < min_ess:
                min_ess, worst = float(np.nanmin(e)), name
            if np.isfinite(r).any():
                max_rhat = max(max_rhat, float(np.nanmax(r)))
    return {
        "min_ess": None if worst is None else min_ess,
        "min_ess_param": worst,
        "max_rhat": None if max_rhat == -math.inf else max_rhat,
    }


def _warm_process(seed: int) -> None:
    """A tiny NumPyro run, so that JAX's one-time start-up is paid by no row."""

    def model():
        numpyro.sample("a", dist.Normal(0.0, 1.0))

    mcmc = MCMC(NUTS(model), num_warmup=5, num_samples=5, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed))
    jax.block_until_ready(mcmc.get_samples())


# ---------------------------------------------------------------------- runners
def _timed(call: Callable) -> tuple[object, float, float]:
    """``(result, wall seconds, JAX compile seconds)`` of ``call()``."""
    c0 = _CompileClock.seconds()
    t0 = time.perf_counter()
    result = call()
    wall = time.perf_counter() - t0
    return result, wall, _CompileClock.seconds() - c0


_COMPILE_TIMING = "first posterior: JAX trace/lower/compile seconds; sampling: the rest"


def _split_timing(info: dict, wall: float, compile_s: float) -> tuple[float, float, str]:
    """``(time to first posterior, sampling, how)`` of a bayesmeta call: from its own
    ``info["timing"]`` when it reports one, else from the JAX compile clock.

    The set-up is ``trace_s + compile_s`` when the fit reports those; otherwise its
    ``first_posterior_s``, less ``sampling_s`` when the two together exceed the call's wall
    time (then ``first_posterior_s`` is the whole call, not the set-up)."""
    timing = info.get("timing") if isinstance(info, Mapping) else None
    if isinstance(timing, dict) and "sampling_s" in timing:
        sampling = float(timing["sampling_s"])
        if "trace_s" in timing and "compile_s" in timing:
            setup = float(timing["trace_s"]) + float(timing["compile_s"])
            return setup, sampling, "post.info['timing']: trace_s + compile_s, sampling_s"
        if "first_posterior_s" in timing:
            setup = float(timing["first_posterior_s"])
            how = "post.info['timing']: first_posterior_s, sampling_s"
            if setup + sampling > 1.01 * wall:
                setup -= sampling
                how = "post.info['timing']: first_posterior_s - sampling_s, sampling_s"
            return setup, sampling, how
    return compile_s, wall - compile_s, _COMPILE_TIMING


def run_bayesmeta(case: Case, method: str | None, settings: dict, seed: int) -> Draws:
    """``bm.fit`` at its defaults (``method=None``: fit's default method)."""
    extra = {} if method is None else {"method": method}
    post, wall, compile_s = _timed(
        lambda: bm.fit(
            case.model,
            case.tasks,
            seed=seed,
            num_chains=settings["chains"],
            num_warmup=settings["warmup"],
            num_samples=settings["draws"],
            progress_bar=False,
            **extra,
        )
    )
    fp, sp, how = _split_timing(post.info, wall, compile_s)
    stats = post.sample_stats
    notes = {"method": post.method, "JAX compile s": round(compile_s, 3)}
    for key in ("target_accept", "chain_method", "retried", "compiled", "timing"):
        if key in post.info:
            notes[key] = post.info[key]
    problems = post.info.get("diagnostics", {}).get("problems")
    if problems:
        notes["fit problems"] = "; ".join(problems)
    return Draws(
        dict(post.samples),
        stats.get("diverging"),
        stats.get("n_steps"),
        fp,
        sp,
        wall,
        how,
        notes,
    )


def run_numpyro(case: Case, chain_method: str, settings: dict, seed: int) -> Draws:
    """The hand-written model through ``MCMC(NUTS(model))`` at NumPyro's defaults."""
    fn = numpyro_model(case.spec)

    def call():
        data = jax_data(case.data)
        mcmc = MCMC(
            NUTS(fn),
            num_warmup=settings["warmup"],
            num_samples=settings["draws"],
            num_chains=settings["chains"],
            chain_method=chain_method,
            progress_bar=False,
        )
        mcmc.run(
            jax.random.PRNGKey(seed),
            extra_fields=("num_steps",),
            num_tasks=case.num_tasks,
            **data,
        )
        samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
        extras = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
        return samples, extras

    (samples, extras), wall, compile_s = _timed(call)
    draws = {
        "mu": samples["mu"],
        "tau": samples["tau"],
        "theta": theta_from(samples["mu"], samples["tau"], samples["z"]),
    }
    return Draws(
        draws,
        extras["diverging"],
        extras["num_steps"],
        compile_s,
        wall - compile_s,
        wall,
        _COMPILE_TIMING,
        {"chain_method": chain_method},
    )


def _fit_population(case: Case, settings: dict, seed: int):
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = bm.fit(
            case.model,
            case.train,
            seed=seed,
            num_chains=settings["chains"],
            num_warmup=settings["warmup"],
            num_samples=settings["draws"],
            progress_bar=False,
        )
    return post, time.perf_counter() - t0


def run_bayesmeta_adapt(case: Case, post, seed: int) -> Draws:
    """``post.adapt(new_tasks)`` at its defaults, then once more warm (a note)."""
    adapted, wall, compile_s = _timed(lambda: post.adapt(case.tasks, seed=seed))
    _, warm, _ = _timed(lambda: post.adapt(case.tasks, seed=seed))
    fp, sp, how = _split_timing(adapted.info, wall, compile_s)
    methods = Counter(adapted.info.get("adapt", {}).get("method", {}).values())
    notes = {"warm call s": round(warm, 3), "methods": dict(methods)}
    return Draws({"theta": adapted.samples["theta"]}, None, None, fp, sp, wall, how, notes)


def run_hand_adapt(case: Case, post, seed: int) -> Draws:
    """The same new-task posterior by ``benchmarks.cases.hand_adapt``, then once more warm."""

    def call():
        mu = jnp.asarray(post.flat("mu"))
        tau = jnp.asarray(post.flat("tau"))
        data = jax_data(case.data)
        theta = hand_adapt(
            jax.random.PRNGKey(seed),
            mu,
            tau,
            data["y"],
            data["se"],
            data["task"],
            num_tasks=case.num_tasks,
        )
        return np.asarray(theta)

    theta, wall, compile_s = _timed(call)
    _, warm, _ = _timed(call)
    theta = theta.reshape(post.num_chains, post.num_draws, case.num_tasks)
    notes = {"warm call s": round(warm, 3), "methods": {"conjugate": case.num_tasks}}
    return Draws(
        {"theta": theta}, None, None, compile_s, wall - compile_s, wall, _COMPILE_TIMING, notes
    )


# ---------------------------------------------------------------------- rows
def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_NOTE else text[: _MAX_NOTE - 3] + "..."


def _measure(case_name: str, runner: str, call: Callable[[], Draws], peer: bool = False) -> dict:
    """Run one row: reset the peak-memory mark, run, then diagnose the draws."""
    row = {"case": case_name, "runner": runner, "status": "ok"}
    gc.collect()
    jax.clear_caches()
    reset = _reset_peak_rss()
    row["rss_start_mib"] = _rss_mib()
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            draws = call()
    except ImportError as err:
        if peer:
            row.update(status="not installed", error=_short(err))
            return row
        row.update(status="failed", error=_short(f"{type(err).__name__}: {err}"))
        return row
    except Exception as err:  # a failed runner is a row, never the end of the run
        row.update(status="failed", error=_short(f"{type(err).__name__}: {err}"))
        row["peak_mib"], row["peak_label"] = _peak_rss_mib(reset)
        return row
    row["peak_mib"], row["peak_label"] = _peak_rss_mib(reset)
    messages = sorted({_short(f"{w.category.__name__}: {w.message}") for w in seen})
    if messages:
        row["warnings"] = messages
    first = next(iter(draws.samples.values()))
    row.update(
        chains=int(first.shape[0]),
        draws=int(first.shape[1]),
        first_posterior_s=draws.first_posterior_s,
        sampling_s=draws.sampling_s,
        wall_s=draws.wall_s,
        timing=draws.timing,
        notes=draws.notes,
    )
    row.update(_diagnose(draws.samples))
    if draws.diverging is not None:
        row["divergences"] = int(np.sum(draws.diverging))
    if draws.n_steps is not None:
        row["steps_per_draw"] = float(np.mean(draws.n_steps))
        row["grad_evals"] = int(np.sum(draws.n_steps))
    if row["min_ess"] is not None:
        row["ess_per_s"] = row["min_ess"] / draws.wall_s
        if draws.sampling_s > 0:
            row["ess_per_s_sampling"] = row["min_ess"] / draws.sampling_s
    return row


def _add_ratios(rows: list[dict], reference_runners: tuple[str, ...]) -> None:
    ok = [r for r in rows if r["status"] == "ok" and r.get("ess_per_s")]
    ref = max((r["ess_per_s"] for r in ok if r["runner"] in reference_runners), default=None)
    nutpie = next((r["ess_per_s"] for r in ok if r["runner"] == "nutpie"), None)
    for r in ok:
        if ref:
            r["x_numpyro"] = r["ess_per_s"] / ref
        if nutpie:
            r["x_nutpie"] = r["ess_per_s"] / nutpie


def _limit(case: Case, rows: list[dict], bandwidth: dict, settings: dict) -> dict:
    """Bytes one gradient evaluation must read, and bayesmeta's rate against that bound."""
    data = case.model.build(case.tasks).data
    data_bytes = int(sum(np.asarray(v).nbytes for v in data.values()))
    itemsize = jnp.zeros(()).dtype.itemsize
    param_bytes = case.num_params * itemsize
    total = data_bytes + param_bytes
    limit = bandwidth["GBps"] * 1e9 / total
    out = {
        "case": case.name,
        "data_arrays": sorted(data),
        "data_bytes": data_bytes,
        "num_params": case.num_params,
        "param_dtype": str(jnp.zeros(()).dtype),
        "bytes_per_grad": total,
        "bandwidth_GBps": bandwidth["GBps"],
        "grads_per_s_limit": limit,
        "bayesmeta": [],
    }
    scale = (settings["warmup"] + settings["draws"]) / settings["draws"]
    for r in rows:
        if not r["runner"].startswith("bayesmeta") or r["status"] != "ok":
            continue
        if not r.get("grad_evals") or r["sampling_s"] <= 0:
            continue
        rate = r["grad_evals"] / r["sampling_s"]
        out["bayesmeta"].append(
            {
                "runner": r["runner"],
                "method": r["notes"].get("method"),
                "grads_per_s": rate,
                "grads_per_s_with_warmup": rate * scale,
                "fraction": rate / limit,
                "fraction_with_warmup": rate * scale / limit,
            }
        )
    return out


def _run_case(
    case: Case, settings: dict, seed: int, no_peers: bool, skip: frozenset = frozenset()
) -> list[dict]:
    rows = []
    if case.train is not None:  # adapt: fit the population once, outside the rows
        try:
            post, fit_s = _fit_population(case, settings, seed)
        except Exception as err:
            msg = _short(f"population fit: {type(err).__name__}: {err}")
            return [
                {"case": case.name, "runner": name, "status": "failed", "error": msg}
                for name in ("bayesmeta", "jax-hand")
            ]
        rows.append(_measure(case.name, "bayesmeta", lambda: run_bayesmeta_adapt(case, post, seed)))
        rows.append(_measure(case.name, "jax-hand", lambda: run_hand_adapt(case, post, seed)))
        for r in rows:
            r.setdefault("notes", {})["population fit s"] = round(fit_s, 3)
        _add_ratios(rows, ("jax-hand",))
        return rows
    for method in case.bm_methods:
        name = "bayesmeta" if method is None else f"bayesmeta {method}"
        rows.append(
            _measure(case.name, name, lambda m=method: run_bayesmeta(case, m, settings, seed))
        )
    for chain_method in ("sequential", "vectorized"):
        if f"numpyro-{chain_method}" in skip:
            continue
        rows.append(
            _measure(
                case.name,
                f"numpyro-{chain_method}",
                lambda c=chain_method: run_numpyro(case, c, settings, seed),
            )
        )
    for peer in PEERS:
        if peer in skip:
            continue
        rows.append(
            _measure(
                case.name,
                peer,
                lambda p=peer: run_peer(
                    p,
                    case,
                    settings["chains"],
                    settings["warmup"],
                    settings["draws"],
                    seed,
                    disabled=no_peers,
                ),
                peer=True,
            )
        )
    _add_ratios(rows, _NUMPYRO_RUNNERS)
    return rows


def _machine(no_peers: bool) -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    versions = {
        "python": platform.python_version(),
        "bayesmeta": bm.__version__,
        "jax": jax.__version__,
        "numpyro": numpyro.__version__,
        "numpy": np.__version__,
    }
    with contextlib.suppress(ImportError):
        import jaxlib

        versions["jaxlib"] = jaxlib.__version__
    versions.update(peer_versions(no_peers))
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "versions": versions,
    }


def _finite(obj):
    """The result with NaN and infinities as None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


MAIN_JOB = "main_job"


def measure_main_job(repeats: int = 3) -> dict:
    """Wall time of the README's main job, ``bayesmeta fit`` (eight schools, defaults), in
    a fresh process: once with an empty compilation cache (cold), then again with the
    cache that run filled (warm); ``repeats`` pairs, each with its own cache directory."""
    import subprocess
    import tempfile

    exe = os.path.join(os.path.dirname(sys.executable), "bayesmeta")
    cmd = [exe, "fit"] if os.path.exists(exe) else [sys.executable, "-m", "bayesmeta.cli", "fit"]
    cold, warm = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            env = {k: v for k, v in os.environ.items() if k != "BAYESMETA_NO_CACHE"}
            env["BAYESMETA_CACHE_DIR"] = cache
            for out in (cold, warm):
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                out.append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    return {"error": _short(proc.stderr.strip().splitlines()[-1])}
    return {"command": " ".join(["bayesmeta", "fit"]), "cold_s": cold, "warm_s": warm}


def run_benchmark(
    cases: list[str],
    settings: dict,
    seed: int,
    quick: bool,
    no_peers: bool,
    argv=None,
    skip: frozenset = frozenset(),
) -> dict:
    """Run ``cases`` and return the result dict (machine, settings, bandwidth, rows, limits)."""
    t_start = time.perf_counter()
    started = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    _CompileClock.seconds()  # listen from now on
    _warm_process(seed)
    machine = _machine(no_peers)  # imports the peers, so that no row pays for it
    bandwidth = measure_bandwidth(_BANDWIDTH_MIB[quick])
    rows, limits, descriptions = [], [], {}
    main_job = None
    for name in cases:
        if name == MAIN_JOB:
            main_job = measure_main_job()
            print(f"[benchmark] {name} done", file=sys.stderr, flush=True)
            continue
        try:
            case = build_case(name, quick=quick)
        except Exception as err:
            rows.append(
                {
                    "case": name,
                    "runner": "case",
                    "status": "failed",
                    "error": _short(f"{type(err).__name__}: {err}"),
                }
            )
            continue
        descriptions[name] = case.description
        case_rows = _run_case(case, settings, seed, no_peers, skip)
        rows.extend(case_rows)
        if case.spec is not None:
            try:
                limits.append(_limit(case, case_rows, bandwidth, settings))
            except Exception as err:
                limits.append({"case": name, "error": _short(f"{type(err).__name__}: {err}")})
        print(f"[benchmark] {name} done", file=sys.stderr, flush=True)
    result = {
        "benchmark": "bayesmeta peer benchmark",
        "started": started,
        "argv": list(argv) if argv is not None else None,
        "machine": machine,
        "settings": dict(settings, seed=seed, quick=quick, no_peers=no_peers, skip=sorted(skip)),
        "cases": descriptions,
        "bandwidth": bandwidth,
        "rows": rows,
        "limits": limits,
        "main_job": main_job,
        "total_s": time.perf_counter() - t_start,
    }
    return _finite(result)


# ---------------------------------------------------------------------- rendering
_COLUMNS = (
    ("case", "case"),
    ("runner", "runner"),
    ("first_posterior_s", "first post. s"),
    ("sampling_s", "sampling s"),
    ("wall_s", "wall s"),
    ("min_ess", "min ESS"),
    ("ess_per_s", "ESS/s"),
    ("ess_per_s_sampling", "ESS/s sampling"),
    ("divergences", "div."),
    ("max_rhat", "max R-hat"),
    ("steps_per_draw", "steps/draw"),
    ("peak_mib", "peak MiB (+row)"),
    ("x_numpyro", "x numpyro"),
    ("x_nutpie", "x nutpie"),
)


def _fmt(key: str, value) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if key in ("divergences",):
        return str(int(value))
    if key == "max_rhat":
        return f"{value:.3f}"
    if key.startswith("x_"):
        return f"{value:.2f}x"
    if key in ("min_ess", "peak_mib"):
        return f"{value:.0f}"
    if key == "steps_per_draw":
        return f"{value:.1f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _runner_label(row: dict) -> str:
    method = (row.get("notes") or {}).get("method")
    label = row["runner"]
    return f"{label} [{method}]" if method and label.startswith("bayesmeta") else label


def render_table(result: dict) -> str:
    """The rows as one Markdown table, with a status note for rows that did not run."""
    head = "| " + " | ".join(title for _, title in _COLUMNS) + " | note |"
    rule = "|" + "|".join("---" if k in ("case", "runner") else "---:" for k, _ in _COLUMNS)
    lines = [head, rule + "|---|"]
    for row in result["rows"]:
        cells = []
        for key, _ in _COLUMNS:
            value = _runner_label(row) if key == "runner" else row.get(key)
            if key == "divergences" and value is None and row["status"] == "ok":
                value = "n/a"
            cell = _fmt(key, value)
            if key == "peak_mib" and value is not None and row.get("rss_start_mib"):
                cell += f" (+{max(0.0, value - row['rss_start_mib']):.0f})"
            cells.append(cell)
        note = row["status"] if row["status"] != "ok" else ""
        if row["status"] == "failed":
            note = f"failed: {row.get('error', '')}"
        elif row["status"] == "not installed" and "peers disabled" in row.get("error", ""):
            note = "not installed (peers disabled)"
        notes = row.get("notes") or {}
        if row["status"] == "ok":
            parts = []
            if isinstance(notes.get("retried"), dict):
                r = notes["retried"]
                parts.append(
                    f"{r.get('divergences')} divergences at target {r.get('target_accept')}, "
                    f"rerun at {notes.get('target_accept')}"
                )
            if notes.get("fit problems"):
                parts.append(notes["fit problems"])
            note = _short("; ".join(parts))
        note = note.replace("|", "\\|")  # an error message must not split the row
        lines.append("| " + " | ".join(cells) + f" | {note} |")
    return "\n".join(lines)


def _limit_line(lim: dict) -> str:
    if "error" in lim:
        return f"- {lim['case']}: limit not computed ({lim['error']})"
    kib = lim["bytes_per_grad"] / 1024
    line = (
        f"- {lim['case']}: one gradient reads at least {kib:,.1f} KiB "
        f"({', '.join(lim['data_arrays'])} and {lim['num_params']:,} {lim['param_dtype']} "
        f"parameters); at {lim['bandwidth_GBps']:.1f} GB/s that is at most "
        f"{lim['grads_per_s_limit']:,.0f} gradients/s"
    )
    parts = []
    for b in lim["bayesmeta"]:
        parts.append(
            f"bayesmeta [{b['method']}] {b['grads_per_s']:,.0f}/s = {100 * b['fraction']:.2g}% "
            f"({b['grads_per_s_with_warmup']:,.0f}/s = "
            f"{100 * b['fraction_with_warmup']:.2g}% counting warmup)"
        )
    if parts:
        line += "; " + "; ".join(parts)
    if any(b["method"] == "collapsed" for b in lim["bayesmeta"]):
        line += " (collapsed NUTS reads a fixed-size marginal, not the tasks)"
    return line


def _header(result: dict) -> list[str]:
    m, s, bw = result["machine"], result["settings"], result["bandwidth"]
    v = m["versions"]
    order = ("python", "bayesmeta", "jax", "jaxlib", "numpyro", "numpy", "nutpie", "pymc")
    versions = ", ".join(f"{k} {v[k]}" for k in order if k in v)
    usable = f" ({m['cpus_usable']} usable)" if m.get("cpus_usable") else ""
    return [
        f"Machine: {m['platform']}, {m['processor']}, {m['cpu_count']} CPUs{usable}; "
        f"JAX backend {m['jax_backend']}. Versions: {versions}.",
        f"Settings: {s['chains']} chains x {s['draws']} draws ({s['warmup']} warmup), seed "
        f"{s['seed']}{', --quick sizes' if s['quick'] else ''}; run {result['started']}, "
        f"{result['total_s']:.0f} s in all. Memory bandwidth {bw['GBps']:.1f} GB/s (best "
        f"copy of {bw['size_mib']} MiB: numpy {bw['numpy_copy_GBps']:.1f}, JAX "
        f"{bw['jax_copy_GBps']:.1f} GB/s).",
    ]


def _report(result: dict) -> list[str]:
    lines = [*_header(result), "", render_table(result), ""]
    if result["cases"]:
        lines.append("Cases: " + "; ".join(f"{k}: {v}" for k, v in result["cases"].items()) + ".")
    if result["limits"]:
        lines += ["", "Physical limit (memory bandwidth / bytes one gradient must read):"]
        lines += [_limit_line(lim) for lim in result["limits"]]
    job = result.get("main_job")
    if job:
        if "error" in job:
            lines += ["", f"Main job (`bayesmeta fit`): failed: {job['error']}"]
        else:

            def span(xs):
                return f"{min(xs):.2f}–{max(xs):.2f} s"

            lines += [
                "",
                f"Main job (`{job['command']}`, eight schools, a fresh process each, "
                f"{len(job['cold_s'])} runs): {span(job['cold_s'])} with an empty compilation "
                f"cache, {span(job['warm_s'])} with the cache the first run filled.",
            ]
    return lines


def render_section(result: dict) -> str:
    """A README-ready Markdown section of a saved run (``--markdown-from FILE.json``)."""
    lines = [
        "## Benchmarks",
        "",
        "bayesmeta's default `bm.fit` against the same models hand-written in NumPyro "
        "(non-centred, NumPyro's defaults) and, where installed, nutpie and PyMC, all in one "
        "process. ESS is the minimum bulk ESS over every hyperparameter and every task's "
        'parameters; ESS/s counts the whole call, compilation included; "x numpyro" is '
        "ESS/s against the better NumPyro row. How each number is measured: "
        "`benchmarks/run.py`.",
        "",
        *_report(result),
        "",
        "Regenerate with `python -m benchmarks.run --json --out bench.json` and then "
        "`python -m benchmarks.run --markdown-from bench.json`.",
    ]
    return "\n".join(lines) + "\n"


def _write_atomic(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bench-", suffix=".json.tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # as an ordinary file, not mkstemp's 0600
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "cases", nargs="*", metavar="CASE", help=f"any of {', '.join((*CASE_NAMES, MAIN_JOB))}"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON (last line)")
    p.add_argument("--quick", action="store_true", help="small sizes and few draws")
    p.add_argument("--chains", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--draws", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="FILE.json", help="write the JSON result here (atomically)")
    p.add_argument(
        "--no-peers", action="store_true", help="run as if nutpie and PyMC were not installed"
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="RUNNER",
        help="leave out a peer runner (numpyro-sequential, numpyro-vectorized, nutpie, pymc)",
    )
    p.add_argument("--markdown-from", metavar="FILE.json", help="render a saved run and exit")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point; returns the result dict (or the loaded one with
    ``--markdown-from``)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.markdown_from:
        with open(args.markdown_from) as f:
            result = json.load(f)
        print(render_section(result), end="")
        return result
    unknown = [c for c in args.cases if c not in (*CASE_NAMES, MAIN_JOB)]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(CASE_NAMES)}")
    settings = dict(QUICK_SETTINGS if args.quick else FULL_SETTINGS)
    for key in settings:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    no_peers = args.no_peers or os.environ.get("BENCH_NO_PEERS", "") not in ("", "0")
    cases = list(dict.fromkeys(args.cases)) or [*CASE_NAMES, MAIN_JOB]
    result = run_benchmark(
        cases,
        settings,
        args.seed,
        args.quick,
        no_peers,
        argv=sys.argv[1:] if argv is None else argv,
        skip=frozenset(args.skip),
    )
    print("\n".join(_report(result)))
    text = json.dumps(result)
    if args.out:
        _write_atomic(args.out, text + "\n")
    if args.json:
        print(text)
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
