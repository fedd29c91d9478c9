"""The cases of the peer benchmark (``benchmarks/run.py``): simulated data, the bayesmeta
model of each, and the same model written by hand (non-centred) for NumPyro.

Every MCMC case is one hierarchical GLM with ``p`` parameters per task (``p = 1``: a
scalar ``theta_t``):

    mu ~ Normal(0, loc_sd),  tau ~ scale prior,  z_t ~ N(0, I),  theta_t = mu + tau * z_t
    y_r ~ family(eta_r),     eta_r = theta_{t(r)}[0] + x_r @ theta_{t(r)}[1:]

with ``family`` one of ``"normal"`` (known noise ``se``, one estimate per task),
``"bernoulli"`` (logit link) or ``"poisson"`` (log link). A :class:`Spec` says which; the
hand-written NumPyro model (:func:`numpyro_model`) and the PyMC model of
``benchmarks/peers.py`` are built from it, on the very arrays of the case's TaskSet.

``adapt_10000`` is different: a population fitted on 50 past tasks, then the posterior of
10,000 new tasks (``Posterior.adapt``), against the same posterior computed by hand in one
vectorised JAX function (:func:`hand_adapt`). Data are simulated with numpy seed
``DATA_SEED`` whatever the sampler seed.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

import bayesmeta as bm

__all__ = [
    "CASE_NAMES",
    "DATA_SEED",
    "Case",
    "Draws",
    "Spec",
    "build_case",
    "hand_adapt",
    "numpyro_model",
]

DATA_SEED = 0
CASE_NAMES = (
    "eight_schools",
    "logistic_100",
    "logistic_1000",
    "logistic_10000",
    "normal_10000",
    "poisson_1000",
    "adapt_10000",
)
# --quick keeps the square root of every number of tasks (at least _QUICK_MIN_TASKS)
_QUICK_MIN_TASKS = 10
_ROWS_PER_TASK = 20
_LOGISTIC_MU = (-0.5, 1.0, -0.7, 0.3, 0.0)
_LOGISTIC_TAU = (0.5, 0.3, 0.6, 0.4, 0.2)
_POISSON_MU = (0.5, 0.3, -0.2)
_POISSON_TAU = (0.4, 0.2, 0.3)


class Spec(NamedTuple):
    """What a hand-written model needs to be the same model as bayesmeta's."""

    family: str  # "normal" (known se), "bernoulli" (logit) or "poisson" (log)
    num_coef: int  # p, parameters per task; 0 for a scalar theta_t
    loc_sd: float  # mu ~ Normal(0, loc_sd)
    scale_prior: str  # "halfcauchy" or "halfnormal"
    scale_sd: float  # its scale


class Case(NamedTuple):
    """One benchmark case.

    Fields:
      name          # as on the command line
      description   # one line for the table
      tasks         # the bm.TaskSet bayesmeta fits (the new tasks for adapt)
      model         # the bm.Hierarchical model
      spec          # Spec of the hand-written models; None for adapt
      data          # numpy arrays of the hand-written models: y (N,), task (N,) int or None
                    # (one estimate per task), x (N, k) or None, se (N,) or None
      num_tasks     # T
      bm_methods    # the fit methods of the bayesmeta rows (None: fit's default)
      train         # adapt only: the past tasks the population is fitted on
    """

    name: str
    description: str
    tasks: bm.TaskSet
    model: bm.Hierarchical
    spec: Spec | None
    data: dict
    num_tasks: int
    bm_methods: tuple
    train: bm.TaskSet | None = None

    @property
    def num_params(self) -> int:
        """Unconstrained parameters NUTS moves: ``mu``, ``tau`` and ``z`` (``p (T + 2)``)."""
        p = max(self.spec.num_coef, 1) if self.spec is not None else 1
        return p * (self.num_tasks + 2)


class Draws(NamedTuple):
    """What one runner returns; the harness adds diagnostics and memory.

    Fields:
      samples            # name -> (chain, draw, ...) numpy: every hyperparameter and the
                         # per-task parameters theta
      diverging          # (chain, draw) bool, or None where the method has no such thing
      n_steps            # (chain, draw) leapfrog steps per draw, or None
      first_posterior_s  # set-up: trace, compile, initialise
      sampling_s         # the rest of the run, set-up excluded
      wall_s             # end to end, as a user waits for it
      timing             # how the three times were measured
      notes              # anything else worth keeping (warm second call, methods used)
    """

    samples: dict
    diverging: np.ndarray | None
    n_steps: np.ndarray | None
    first_posterior_s: float
    sampling_s: float
    wall_s: float
    timing: str
    notes: dict


def _num_tasks(full: int, quick: bool) -> int:
    return max(_QUICK_MIN_TASKS, round(math.sqrt(full))) if quick else full


def _normal_population():
    return bm.populations.Normal(loc=dist.Normal(0.0, 5.0), scale=dist.HalfCauchy(5.0))


def _simulate_glm(num_tasks, mu, tau, family, rng):
    """Rows ``(x (N, p-1), y (N,), task (N,))`` of ``num_tasks`` tasks of 20 rows each."""
    mu, tau = np.asarray(mu), np.asarray(tau)
    theta = mu + tau * rng.standard_normal((num_tasks, mu.size))
    task = np.repeat(np.arange(num_tasks), _ROWS_PER_TASK)
    x = rng.standard_normal((task.size, mu.size - 1))
    eta = theta[task, 0] + np.sum(x * theta[task, 1:], axis=1)
    if family == "bernoulli":
        y = (rng.uniform(size=eta.shape) < 1.0 / (1.0 + np.exp(-eta))).astype(float)
    else:
        y = rng.poisson(np.exp(eta)).astype(float)
    return x, y, task


def _glm_case(name, family, num_tasks, mu, tau):
    rng = np.random.default_rng(DATA_SEED)
    x, y, task = _simulate_glm(num_tasks, mu, tau, family, rng)
    tasks = bm.TaskSet.from_arrays(x=x, y=y, task=task)
    if family == "bernoulli":
        likelihood = bm.likelihoods.LogisticRegression()
    else:
        likelihood = bm.likelihoods.Poisson()
    p = len(mu)
    model = bm.Hierarchical(
        likelihood,
        bm.populations.Normal(dim=p, loc=dist.Normal(0.0, 2.0), scale=dist.HalfNormal(1.0)),
    )
    kind = "logistic" if family == "bernoulli" else "Poisson"
    return Case(
        name=name,
        description=f"hierarchical {kind} regression, {num_tasks} tasks x 20 rows x {p - 1} "
        f"features",
        tasks=tasks,
        model=model,
        spec=Spec(family, p, 2.0, "halfnormal", 1.0),
        data={"y": tasks.y, "task": tasks.task_index, "x": tasks.x, "se": None},
        num_tasks=num_tasks,
        # fit's default (full NUTS) and nested Laplace, measured side by side
        bm_methods=(None, "laplace"),
    )


def _estimates_case(name, description, tasks, bm_methods):
    return Case(
        name=name,
        description=description,
        tasks=tasks,
        model=bm.Hierarchical(bm.likelihoods.NormalKnownNoise(), _normal_population()),
        spec=Spec("normal", 0, 5.0, "halfcauchy", 5.0),
        data={"y": tasks.y, "task": None, "x": None, "se": tasks.noise_scale},
        num_tasks=tasks.num_tasks,
        bm_methods=bm_methods,
    )


def _rows_known_noise(num_tasks, rows, rng, offset=0):
    """Tasks of ``rows`` rows, ``y ~ N(theta_t, 1)``, ``theta_t ~ N(1, 0.8)`` (the data of
    ``benchmarks/adapt_new_tasks.py``)."""
    theta = 1.0 + 0.8 * rng.standard_normal(num_tasks)
    task = np.repeat(np.arange(num_tasks), rows)
    y = theta[task] + rng.standard_normal(task.size)
    labels = [f"t{offset + i}" for i in range(num_tasks)]
    return bm.TaskSet.from_arrays(y=y, task=task, noise_scale=1.0, labels=labels)


def build_case(name: str, quick: bool = False) -> Case:
    """The case called ``name`` (one of ``CASE_NAMES``); ``quick`` shrinks every size."""
    if name == "eight_schools":
        return _estimates_case(
            name, "eight schools (8 estimates, known se)", bm.datasets.eight_schools(), (None,)
        )
    if name.startswith("logistic_"):
        num_tasks = _num_tasks(int(name.split("_")[1]), quick)
        return _glm_case(name, "bernoulli", num_tasks, _LOGISTIC_MU, _LOGISTIC_TAU)
    if name == "poisson_1000":
        return _glm_case(name, "poisson", _num_tasks(1000, quick), _POISSON_MU, _POISSON_TAU)
    if name == "normal_10000":
        num_tasks = _num_tasks(10000, quick)
        rng = np.random.default_rng(DATA_SEED)
        se = rng.uniform(0.5, 3.0, size=num_tasks)
        theta = 1.0 + 0.8 * rng.standard_normal(num_tasks)
        y = theta + se * rng.standard_normal(num_tasks)
        return _estimates_case(
            name,
            f"normal-normal, {num_tasks} estimates (se ~ U(0.5, 3))",
            bm.TaskSet.from_estimates(y=y, se=se),
            (None, "auto"),
        )
    if name == "adapt_10000":
        num_new = _num_tasks(10000, quick)
        rng = np.random.default_rng(DATA_SEED)
        train = _rows_known_noise(50, 20, rng)
        new = _rows_known_noise(num_new, 5, rng, offset=50)
        noise = np.ones(new.num_obs)
        return Case(
            name=name,
            description=f"adapt: {num_new} new tasks x 5 rows, population fitted on 50 x 20",
            tasks=new,
            model=bm.Hierarchical(bm.likelihoods.NormalKnownNoise(), _normal_population()),
            spec=None,
            data={"y": new.y, "task": new.task_index, "x": None, "se": noise},
            num_tasks=num_new,
            bm_methods=(None,),
            train=train,
        )
    raise ValueError(f"case: unknown case {name!r}; known: {', '.join(CASE_NAMES)}")


# ---------------------------------------------------------------------- hand-written NumPyro
def _scale_prior(spec: Spec):
    if spec.scale_prior == "halfcauchy":
        return dist.HalfCauchy(spec.scale_sd)
    return dist.HalfNormal(spec.scale_sd)


def numpyro_model(spec: Spec):
    """The case's model hand-written in NumPyro, non-centred:
    ``model(y, task, num_tasks, x=None, se=None)``. Latent sites ``mu``, ``tau``, ``z``."""
    shape = (spec.num_coef,) if spec.num_coef else ()

    def event(d):
        return d.expand(shape).to_event(1) if shape else d

    def model(y, task, num_tasks, x=None, se=None):
        mu = numpyro.sample("mu", event(dist.Normal(0.0, spec.loc_sd)))
        tau = numpyro.sample("tau", event(_scale_prior(spec)))
        with numpyro.plate("task", num_tasks):
            z = numpyro.sample("z", event(dist.Normal(0.0, 1.0)))
        theta = mu + tau * z
        rows = theta if task is None else theta[task]
        eta = rows if x is None else rows[:, 0] + jnp.sum(x * rows[:, 1:], axis=-1)
        with numpyro.plate("obs", y.shape[0]):
            if spec.family == "normal":
                numpyro.sample("y", dist.Normal(eta, se), obs=y)
            elif spec.family == "bernoulli":
                numpyro.sample("y", dist.Bernoulli(logits=eta), obs=y)
            else:
                numpyro.sample("y", dist.Poisson(jnp.exp(eta)), obs=y)

    return model


def theta_from(mu: np.ndarray, tau: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``theta = mu + tau * z`` per draw: mu, tau ``(chain, draw, *p)``, z ``(chain, draw, T,
    *p)``."""
    return np.expand_dims(mu, 2) + np.expand_dims(tau, 2) * z


def jax_data(data: dict) -> dict[str, Any]:
    """The hand-written models' keyword data as JAX arrays (the default float dtype)."""
    out = {}
    for k, v in data.items():
        if v is not None:
            out[k] = jnp.asarray(v, jnp.int32 if k == "task" else None)
        else:
            out[k] = None
    return out


# ---------------------------------------------------------------------- hand-written adapt
@partial(jax.jit, static_argnames="num_tasks")
def hand_adapt(key, mu, tau, y, noise, task, num_tasks):
    """New tasks' posterior under hyperparameter draws, in one vectorised function.

    For each draw ``phi_s = (mu_s, tau_s)`` and new task ``t`` with known-noise rows, the
    sufficient statistics ``n_t = sum 1/s_r^2`` and ``ybar_t = sum (y_r/s_r^2) / n_t`` give
    the marginal ``ybar_t ~ N(mu_s, tau_s^2 + 1/n_t)``; draws ``s`` are resampled per task
    (multinomially) by those weights and ``theta_t`` is drawn from its exact conditional
    ``N((mu_s/tau_s^2 + n_t ybar_t) / prec, 1/prec)``, ``prec = 1/tau_s^2 + n_t``.

    Shapes: mu, tau ``(S,)``; y, noise, task ``(N,)``. Returns theta ``(S, T)``.
    """
    w_rows = 1.0 / noise**2
    n = jax.ops.segment_sum(w_rows, task, num_tasks)
    ybar = jax.ops.segment_sum(w_rows * y, task, num_tasks) / n
    var = tau[:, None] ** 2 + 1.0 / n  # (S, T)
    logw = -0.5 * ((ybar - mu[:, None]) ** 2 / var + jnp.log(var))
    cdf = jnp.cumsum(jnp.exp(logw - jnp.max(logw, axis=0)), axis=0)  # (S, T)
    k_res, k_draw = jax.random.split(key)
    u = jax.random.uniform(k_res, logw.shape) * cdf[-1]
    idx = jax.vmap(jnp.searchsorted, in_axes=(1, 1), out_axes=1)(cdf, u)
    idx = jnp.minimum(idx, mu.shape[0] - 1)
    m, t2 = mu[idx], tau[idx] ** 2
    prec = 1.0 / t2 + n
    mean = (m / t2 + n * ybar) / prec
    return mean + jax.random.normal(k_draw, logw.shape) / jnp.sqrt(prec)
