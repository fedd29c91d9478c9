"""Peer samplers of the benchmark: nutpie (on a PyMC model) and PyMC's own NUTS.

Neither is a dependency of bayesmeta, of its tests or of the rest of the benchmark: they
are imported here only, inside the runners, so a missing package gives a "not installed"
row. ``disabled=True`` (``--no-peers`` or ``BENCH_NO_PEERS=1``) takes the same path, as if
neither were installed.

The PyMC model is the hand-written NumPyro model of ``benchmarks/cases.py`` (non-centred,
the same priors) on the same arrays, in PyMC's default float64. Samplers run with their
own defaults (nutpie: its mass-matrix adaptation, target accept 0.8; PyMC: jitter+adapt_diag
initialisation, target accept 0.8); only the numbers of chains, warmup and draws, and the
seed are set, plus what keeps the measurement in this process: ``save_warmup=False`` for
nutpie (the warmup draws are not kept, as in the other runners) and ``cores=1`` for PyMC
(chains in this process, one after another, so that its peak memory is measured).

Timing. nutpie: time to first posterior = building the PyMC model + ``compile_pymc_model``
(numba compilation); sampling = the ``nutpie.sample`` call. PyMC: sampling = PyMC's own
``sampling_time`` (its sampling loop, recorded in ``sample_stats.attrs``); time to first
posterior = the rest of model building and ``pm.sample`` (compilation, initialisation).
End to end includes turning the draws into numpy arrays.
"""

from __future__ import annotations

import importlib
import time

import numpy as np

from benchmarks.cases import Case, Draws, Spec, theta_from

__all__ = ["PEERS", "peer_versions", "pymc_model", "run_peer"]

PEERS = ("nutpie", "pymc")


def _import(name: str, disabled: bool):
    if disabled:
        raise ImportError(f"{name}: peers disabled (--no-peers / BENCH_NO_PEERS=1)")
    return importlib.import_module(name)


def peer_versions(disabled: bool) -> dict[str, str]:
    """Installed versions of the peers (``"not installed"`` where import fails)."""
    out = {}
    for name in (*PEERS, "pytensor"):
        try:
            out[name] = str(_import(name, disabled).__version__)
        except ImportError:
            out[name] = "not installed"
    return out


def pymc_model(spec: Spec, data: dict, num_tasks: int):
    """The case's model in PyMC (non-centred, as ``benchmarks.cases.numpyro_model``)."""
    pm = _import("pymc", False)
    shape = (spec.num_coef,) if spec.num_coef else None
    with pm.Model() as model:
        mu = pm.Normal("mu", 0.0, spec.loc_sd, shape=shape)
        if spec.scale_prior == "halfcauchy":
            tau = pm.HalfCauchy("tau", beta=spec.scale_sd, shape=shape)
        else:
            tau = pm.HalfNormal("tau", sigma=spec.scale_sd, shape=shape)
        z = pm.Normal("z", 0.0, 1.0, shape=(num_tasks, *(shape or ())))
        theta = mu + tau * z
        rows = theta if data["task"] is None else theta[np.asarray(data["task"])]
        x = data["x"]
        eta = rows if x is None else rows[:, 0] + (np.asarray(x) * rows[:, 1:]).sum(axis=-1)
        y = np.asarray(data["y"])
        if spec.family == "normal":
            pm.Normal("y", eta, sigma=np.asarray(data["se"]), observed=y)
        elif spec.family == "bernoulli":
            pm.Bernoulli("y", logit_p=eta, observed=y)
        else:
            pm.Poisson("y", mu=pm.math.exp(eta), observed=y)
    return model


def _draws_from(idata) -> tuple[dict, np.ndarray, np.ndarray]:
    post = idata.posterior
    mu, tau, z = (np.asarray(post[k].values) for k in ("mu", "tau", "z"))
    samples = {"mu": mu, "tau": tau, "theta": theta_from(mu, tau, z)}
    stats = idata.sample_stats
    return samples, np.asarray(stats["diverging"].values), np.asarray(stats["n_steps"].values)


def _run_nutpie(case: Case, chains, warmup, draws, seed, disabled) -> Draws:
    nutpie = _import("nutpie", disabled)
    _import("pymc", disabled)
    t0 = time.perf_counter()
    compiled = nutpie.compile_pymc_model(pymc_model(case.spec, case.data, case.num_tasks))
    t1 = time.perf_counter()
    idata = nutpie.sample(
        compiled,
        draws=draws,
        tune=warmup,
        chains=chains,
        seed=seed,
        progress_bar=False,
        save_warmup=False,
    )
    t2 = time.perf_counter()
    samples, diverging, n_steps = _draws_from(idata)
    wall = time.perf_counter() - t0
    return Draws(
        samples,
        diverging,
        n_steps,
        first_posterior_s=t1 - t0,
        sampling_s=t2 - t1,
        wall_s=wall,
        timing="first posterior: model build + compile_pymc_model; sampling: nutpie.sample",
        notes={"backend": "numba"},
    )


def _run_pymc(case: Case, chains, warmup, draws, seed, disabled) -> Draws:
    pm = _import("pymc", disabled)
    t0 = time.perf_counter()
    with pymc_model(case.spec, case.data, case.num_tasks):
        idata = pm.sample(
            draws=draws,
            tune=warmup,
            chains=chains,
            cores=1,
            random_seed=seed,
            progressbar=False,
            compute_convergence_checks=False,
        )
    t1 = time.perf_counter()
    samples, diverging, n_steps = _draws_from(idata)
    wall = time.perf_counter() - t0
    sampling = float(idata.sample_stats.attrs["sampling_time"])
    return Draws(
        samples,
        diverging,
        n_steps,
        first_posterior_s=(t1 - t0) - sampling,
        sampling_s=sampling,
        wall_s=wall,
        timing="sampling: PyMC's sampling_time; first posterior: the rest of pm.sample",
        notes={"cores": 1},
    )


def run_peer(name: str, case: Case, chains, warmup, draws, seed, disabled=False) -> Draws:
    """Run peer ``name`` (``"nutpie"`` or ``"pymc"``) on ``case``; ImportError when the
    peer is not installed (or ``disabled``)."""
    runner = {"nutpie": _run_nutpie, "pymc": _run_pymc}[name]
    return runner(case, chains, warmup, draws, seed, disabled)
