"""Task-minibatched SVI for huge task collections (``method="svi"``), optionally amortised.

The target is the usual hierarchical posterior of a ``bm.Hierarchical`` model over ``N``
tasks. Each step draws a batch of ``B`` tasks (``task_batch_size``) without replacement
(a fresh random permutation of the tasks every epoch, cut into consecutive batches) and
ascends the unbiased estimate of the evidence lower bound

    ELBO_hat = log p(phi) + log|J(phi)| + H[q(phi)]
               + (N / B) sum_{t in batch} ( E_q log p(y_t | theta_t)
                                            + E_q log p(theta_t | phi) + H[q(theta_t)] ),

one reparameterised draw of ``phi`` per step shared by the batch, one draw of each
``theta_t``. Its expectation over the batch is the full ELBO estimate (every task enters a
batch with probability ``B / N``), so its gradient is unbiased (tested).

**Guide.** The global variational family is mean-field Gaussian in NumPyro's
unconstrained space of every population hyperparameter and shared likelihood parameter
(AutoNormal's family). The local family is mean-field Gaussian per task in the
*centred* space, ``q(theta_t) = N(m_t, s_t)`` per component, so ``theta_t`` and the
hyperparameters are independent under ``q`` (the centring choice of the population's
``parameterization`` does not apply to this engine).

- ``encoder=None``: ``m_t, s_t`` are free parameters kept on the host (numpy), gathered
  for the batch and updated only for the batch's tasks: ``local_steps`` Adam steps (own
  moments and step count per task, learning rate ``local_learning_rate``) on the batch's
  local ELBO, then one Adam step of the global parameters with the local ones held. The
  gradient of the global step is that of the ELBO at the batch's current local optimum.
- ``encoder="deepsets"`` (amortised): a permutation-invariant network maps a task's rows
  and the population's ``(mu_t, tau)`` to ``q(theta_t | phi)``. A shared row MLP gives
  every row a Gaussian pseudo-observation of its linear predictor ``eta_r = x_r . theta``
  (precision ``lambda_r >= 0``, target ``eta_r + d_r``), from the row's data and its
  predictor at the current mean; summed over the task's rows with the population as a
  Gaussian prior they give ``prec_t = diag(1 / tau^2) + sum_r lambda_r x_r x_r'`` and a mean
  (exact, for ``lambda = 1 / sigma^2`` and target ``y``, with linear-Gaussian rows); the
  sds are the mean-field ``1 / sqrt(diag(prec_t))``. Two such passes (the second
  re-linearised at the first's mean, as an iteratively reweighted least-squares step),
  then a task MLP of the pooled row features and ``log(rows)`` shifts the mean and the
  log sd (initialised at zero). Trained jointly with the global parameters under the
  same minibatched ELBO. ``post.adapt(new_tasks)`` then gives new tasks their posterior
  by one forward pass (:func:`adapt_encoder`). An encoder extrapolates: a new task with
  more rows, or rows unlike any fitted task's, is outside what it was trained on.

**Memory.** The data stay on the host as numpy arrays; each step gathers only the batch's
rows into a ``(B, R)`` block, ``R`` the largest task's row count, padding short tasks with
a masked copy of their first row (padding never enters a log-density). One program is
compiled per fit; device memory and the compiled program are bounded by the batch. The
host holds the data, and without an encoder the ``6 * N * P`` local parameters and Adam
moments (float32); the returned draws of every ``theta_t`` take ``N * P * num_samples``
values, so at millions of tasks ask for few ``num_samples``.

The global parameters (and the encoder) returned are the mean of the last tenth of the
iterates (Polyak averaging, which removes Adam's step-to-step jitter); a task's local
Adam rate decays as ``local_learning_rate / sqrt(1 + n / 10)`` in its own step count
``n`` (a constant rate leaves a jitter in ``m_t`` that inflates the population scale).

**Convergence** is judged as by ``method="vi"`` (:mod:`bayesmeta.inference.vi`) on the
global parameters, window means over ten windows of steps: a flat (minibatch-estimated)
ELBO, global locations and scales that stopped moving. The pointwise log-likelihood is
not computed (``post.log_likelihood`` is absent).

Supported: every row-wise likelihood with no per-task nuisance parameter (Gaussian with
known or shared noise, linear, logistic, Poisson, binomial regression, common
coefficients), ``Normal``, ``StudentT`` and ``MvNormal`` populations, task covariates,
ragged tasks.
"""

from __future__ import annotations

import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro import handlers
from numpyro.distributions.transforms import biject_to

from bayesmeta.inference.assemble import assemble
from bayesmeta.inference.diagnostics import FitWarning, user_stacklevel
from bayesmeta.inference.registry import Engine
from bayesmeta.inference.vi import _convergence
from bayesmeta.info import VIInfo
from bayesmeta.model import Hierarchical, check_dtype_range
from bayesmeta.tasks import TaskSet

__all__ = ["fit_svi", "SVI_OPTIONS", "ENCODERS", "adapt_encoder"]

ENCODERS = (None, "deepsets")
SVI_OPTIONS = {
    "task_batch_size": None,
    "num_steps": 5000,
    "learning_rate": 0.01,
    "local_steps": 5,
    "local_learning_rate": 0.1,
    "encoder": None,
    "encoder_width": 32,
    "num_samples": 1000,
    "progress_bar": None,
    "convergence_tol": 0.01,
    "param_tol": 0.1,
    "warn": True,
}
#: the batch size when ``task_batch_size=None``: all tasks up to this many
DEFAULT_BATCH = 512
_INIT_SCALE = 0.1
_NUM_WINDOWS = 10


def _positive_int(opts, name, minimum=1):
    v = opts[name]
    if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < minimum:
        word = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name}: must be {word}, got {v!r}")


def _positive_number(opts, name):
    v = opts[name]
    if (
        not isinstance(v, float | int | np.floating | np.integer)
        or isinstance(v, bool)
        or not 0 < v < float("inf")
    ):
        raise ValueError(f"{name}: must be a finite positive number, got {v!r}")


def _check_options(opts: dict) -> None:
    """The options' types and ranges (``task_batch_size`` against the tasks in the fit)."""
    if opts["task_batch_size"] is not None:
        _positive_int(opts, "task_batch_size")
    for name in ("num_steps", "num_samples", "encoder_width"):
        _positive_int(opts, name)
    _positive_int(opts, "local_steps", minimum=0)
    if opts["num_samples"] < 4:
        raise ValueError(f"num_samples: need at least 4 draws, got {opts['num_samples']}")
    for name in ("learning_rate", "local_learning_rate", "convergence_tol", "param_tol"):
        _positive_number(opts, name)
    if opts["encoder"] not in ENCODERS:
        raise ValueError(f"encoder: must be one of {ENCODERS}, got {opts['encoder']!r}")
    if opts["encoder"] is None and opts["local_steps"] < 1:
        raise ValueError(
            "local_steps: the per-task parameters need at least one step per batch "
            f"(local_steps >= 1) without an encoder, got {opts['local_steps']}"
        )
    if opts["progress_bar"] is not None and not isinstance(opts["progress_bar"], bool):
        raise ValueError(f"progress_bar: expected None or a bool, got {opts['progress_bar']!r}")
    if not isinstance(opts["warn"], bool):
        raise ValueError(f"warn: expected a bool, got {opts['warn']!r}")


class _RowChunk:
    """Rows ``a:b`` of a TaskSet as :func:`~bayesmeta.model.check_dtype_range` reads them
    (so the check's temporaries are bounded by the chunk, not the collection)."""

    def __init__(self, tasks: TaskSet, a: int, b: int, first: bool):
        self._tasks, self._a = tasks, a
        self.y = tasks.y[a:b]
        self.x = None if tasks.x is None else tasks.x[a:b]
        self.noise_scale = None if tasks.noise_scale is None else tasks.noise_scale[a:b]
        self.num_obs = b - a
        self.is_estimates = tasks.is_estimates
        self.task_x = tasks.task_x if first else None
        self.task_x_names = getattr(tasks, "task_x_names", None)
        self.labels = tasks.labels

    def _where(self, row: int) -> str:
        return self._tasks._where(self._a + row)


def _check_range_in_chunks(tasks: TaskSet, chunk: int = 1 << 20) -> None:
    """:func:`~bayesmeta.model.check_dtype_range` over chunks of rows (same rule, same
    messages)."""
    for a in range(0, tasks.num_obs, chunk):
        check_dtype_range(_RowChunk(tasks, a, min(a + chunk, tasks.num_obs), a == 0))


# ---------------------------------------------------------------------- the problem
class _Problem:
    """Everything the steps need about one model and TaskSet, host side (numpy)."""

    def __init__(self, model, tasks: TaskSet):
        if not isinstance(model, Hierarchical):
            raise ValueError(
                f"model: method 'svi' needs a bm.Hierarchical model, got {type(model).__name__}"
            )
        if not isinstance(tasks, TaskSet):
            raise ValueError(f"tasks: expected a bm.TaskSet, got {type(tasks).__name__}")
        lik, pop = model.likelihood, model.population
        lik.validate(tasks)
        _check_range_in_chunks(tasks)
        if lik.per_task_density:
            raise ValueError(
                f"likelihood: method 'svi' needs a row-wise likelihood; "
                f"{type(lik).__name__} has a per-task density"
            )
        if lik.task_priors():
            raise ValueError(
                f"likelihood: method 'svi' does not fit per-task nuisance parameters "
                f"({sorted(lik.task_priors())}); use a shared noise (noise='shared')"
            )
        self.model, self.lik, self.pop, self.tasks = model, lik, pop, tasks
        self.param_shape = tuple(lik.param_shape(tasks))
        pop.check_shape(self.param_shape)
        self.P = int(np.prod(self.param_shape)) if self.param_shape else 1
        pd = lik.param_dim(tasks)
        self.param_dim = pd
        self.regression = pop.task_regression(tasks, None if pd is None else list(pd[1]))
        self.N = tasks.num_tasks
        self.counts = np.asarray(tasks.counts)
        self.starts = np.asarray(tasks.offsets[:-1])
        self.R = int(self.counts.max())
        arrays = {k: np.asarray(v) for k, v in lik.data_arrays(tasks).items()}
        arrays.pop("task_index", None)
        self.rows = {k: v for k, v in arrays.items() if v.ndim and v.shape[0] == tasks.num_obs}
        self.const = {k: jnp.asarray(v) for k, v in arrays.items() if k not in self.rows}
        self.task_x = None
        if self.regression is not None:
            self.task_x = np.asarray(tasks.task_x[:, list(self.regression.column_ids)], float)
        self.sites = self._global_sites()

    # -- globals
    def global_model(self):
        hyper = self.pop.sample_hyper(self.param_shape, self.regression)
        extras = {n: numpyro.sample(n, d) for n, d in self.lik.global_priors().items()}
        return hyper, extras

    def _global_sites(self):
        tr = handlers.trace(handlers.seed(self.global_model, 0)).get_trace()
        out = []
        for name, site in tr.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            shape = tuple(jnp.shape(site["value"]))
            transform = biject_to(site["fn"].support)
            out.append((name, transform, shape, tuple(transform.inverse_shape(shape))))
        return out

    def global_values(self, params, eps):
        """Constrained global values from unconstrained draws; ``(values, log|J|, entropy)``."""
        values, logdet, entropy = {}, 0.0, 0.0
        for name, transform, _, _ in self.sites:
            loc = params[f"{name}_auto_loc"]
            scale = params[f"{name}_auto_scale"]
            u = loc + scale * eps[name]
            v = transform(u)
            values[name] = v
            logdet = logdet + jnp.sum(transform.log_abs_det_jacobian(u, v))
            entropy = entropy + jnp.sum(0.5 * jnp.log(2 * jnp.pi * jnp.e) + jnp.log(scale))
        return values, logdet, entropy

    def global_logp(self, values):
        """``(log p(phi), hyper dict, extras dict)`` at constrained ``values``."""
        with handlers.trace() as tr, handlers.substitute(data=values):
            hyper, extras = self.global_model()
        lp = 0.0
        for site in tr.values():
            if site["type"] == "sample":
                lp = lp + jnp.sum(site["fn"].log_prob(site["value"]))
        return lp, hyper, extras

    # -- batches
    def gather(self, idx: np.ndarray) -> dict:
        """The rows of tasks ``idx`` as ``(B, R, ...)`` blocks and the row mask (host)."""
        r = np.arange(self.R)
        valid = r[None, :] < self.counts[idx][:, None]
        rows = self.starts[idx][:, None] + np.where(valid, r[None, :], 0)
        out = {k: v[rows] for k, v in self.rows.items()}
        out["_mask"] = valid
        if self.task_x is not None:
            out["_task_x"] = self.task_x[idx]
        return out

    def prior_loc_scale(self, hyper, task_x, draws: bool = False):
        """Population location and scale per task, ``(..., T, P)`` (``draws``: ``hyper``
        has a leading draw axis)."""
        pop = self.pop
        if self.regression is not None:
            loc = pop.with_location(hyper, self.regression, task_x)[pop._loc_key]
        else:
            loc = hyper[pop.site("mu")]
            if draws:
                loc = jnp.expand_dims(loc, 1)
        tau = hyper[pop.site("tau")]
        if draws:
            tau = jnp.expand_dims(tau, 1)
        if not self.param_shape:
            loc, tau = loc[..., None], tau[..., None]
        return loc, tau

    def local_logp(self, theta, hyper, extras, batch):
        """Per-task ``log p(y_t | theta_t) + log p(theta_t | phi)``, ``(B,)``; ``theta``
        is ``(B, P)``."""
        B = theta.shape[0]
        th = theta.reshape((B, *self.param_shape))
        h = hyper
        if self.regression is not None:
            h = self.pop.with_location(hyper, self.regression, batch["_task_x"])
        lp_prior = self.pop.dist(h, self.param_shape).log_prob(th)
        rows = {k: v.reshape(B * self.R, *v.shape[2:]) for k, v in batch.items() if k in self.rows}
        data = dict(self.const, **rows)
        data["task_index"] = jnp.repeat(jnp.arange(B), self.R)
        th_rows = jnp.repeat(th, self.R, axis=0)
        lp_rows = self.lik.row_dist(th_rows, data, dict(extras)).log_prob(data["y"])
        lp_rows = jnp.where(batch["_mask"].reshape(-1), lp_rows, 0.0).reshape(B, self.R)
        return jnp.sum(lp_rows, axis=1) + lp_prior

    def design(self, batch):
        """The batch's rows' design ``(B, R, P)`` (ones where theta is the row's mean)."""
        B = batch["_mask"].shape[0]
        rows = {k: v.reshape(B * self.R, *v.shape[2:]) for k, v in batch.items() if k in self.rows}
        d = getattr(self.lik, "design", lambda data: None)(dict(self.const, **rows))
        if d is None:
            return jnp.ones((B, self.R, self.P))
        return jnp.asarray(d).reshape(B, self.R, self.P)

    def features(self, batch):
        """Row features ``(B, R, D)`` for the encoder: every row-keyed array flattened."""
        parts = []
        for k in sorted(self.rows):
            v = batch[k]
            parts.append(v.reshape(*v.shape[:2], -1))
        return jnp.concatenate([jnp.asarray(p, jnp.result_type(float)) for p in parts], axis=-1)


# ---------------------------------------------------------------------- encoder
def _mlp_init(key, sizes, zero_last=False):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        key, sub = jax.random.split(key)
        w = jax.random.normal(sub, (a, b)) * np.sqrt(1.0 / a)
        if zero_last and i == len(sizes) - 2:
            w = jnp.zeros((a, b))
        layers.append({"w": w, "b": jnp.zeros(b)})
    return layers


def _mlp(layers, x):
    for i, layer in enumerate(layers):
        x = x @ layer["w"] + layer["b"]
        if i < len(layers) - 1:
            x = jnp.tanh(x)
    return x


#: passes of the encoder (each re-linearises the rows at the previous pass's mean)
ENCODER_PASSES = 2


def _encoder_init(key, D, P, width):
    k1, k2 = jax.random.split(key)
    row = _mlp_init(k1, [D + 1, width, width, 2 + width])
    row[-1]["w"] = row[-1]["w"] * 0.1  # start: small sites at the current predictor
    task = _mlp_init(k2, [width + 1, width, 2 * P], zero_last=True)
    return {"row": row, "task": task}


def _encode(enc, feats, design, mask, norm, loc, tau):
    """``q(theta_t | data_t, phi)``'s mean and sd, ``(..., B, P)``.

    ``feats`` ``(B, R, D)`` row features, ``design`` ``(B, R, P)`` the rows' design (how
    ``theta_t`` enters the row's linear predictor ``eta_r = x_r . theta_t``), ``mask``
    ``(B, R)``, ``loc``/``tau`` the population's location and scale ``(..., B, P)``
    (leading axes: hyperparameter draws). Each of :data:`ENCODER_PASSES` passes gives every
    row a Gaussian pseudo-observation of its predictor, precision ``lambda_r`` and target
    ``eta_r + d_r``, from an MLP of the row's features and its predictor ``eta_r`` at the
    current mean (the population location at first); with the population prior they make
    a Gaussian in ``theta_t``, precision ``diag(1 / tau^2) + sum_r lambda_r x_r x_r'`` (exact
    for linear-Gaussian rows: ``lambda = 1 / sigma^2``, target ``y``), whose mean is the
    next pass's mean and whose mean-field sds are ``1 / sqrt(diag(precision))``. A task
    MLP of the pooled row features and ``log(rows)`` then shifts the mean and the log sd
    (initialised at zero)."""
    z = (feats - norm[0]) / norm[1]
    m = mask.astype(z.dtype)
    prec0 = 1.0 / jnp.square(tau)
    mean = jnp.broadcast_to(loc, jnp.broadcast_shapes(loc.shape, prec0.shape))
    lead = mean.shape[:-2]
    zb = jnp.broadcast_to(z, (*lead, *z.shape))
    P = mean.shape[-1]
    eye = jnp.eye(P)
    for _ in range(ENCODER_PASSES):
        eta = jnp.einsum("...brp,...bp->...br", design, mean)
        out = _mlp(enc["row"], jnp.concatenate([zb, jnp.tanh(eta / 4.0)[..., None]], axis=-1))
        lam = jax.nn.softplus(out[..., 0]) * m
        target = eta + out[..., 1]
        prec = prec0[..., None] * eye + jnp.einsum("...br,brp,brq->...bpq", lam, design, design)
        rhs = prec0 * loc + jnp.einsum("...br,...br,brp->...bp", lam, target, design)
        mean = jnp.linalg.solve(prec, rhs[..., None])[..., 0]
    h = out[..., 2:]
    n = jnp.sum(m, axis=-1)
    pooled = jnp.sum(h * m[..., None], axis=-2) / jnp.maximum(n, 1.0)[..., None]
    logn = jnp.broadcast_to(jnp.log(jnp.maximum(n, 1.0))[..., None], (*pooled.shape[:-1], 1))
    corr = _mlp(enc["task"], jnp.concatenate([pooled, logn], axis=-1))
    diag = jnp.diagonal(prec, axis1=-2, axis2=-1)
    return mean + corr[..., :P], jnp.exp(-0.5 * jnp.log(diag) + corr[..., P:])


# ---------------------------------------------------------------------- the programs
def _softplus_inv(x):
    return float(np.log(np.expm1(x)))


def _adam(g, m, v, count, lr, b1=0.9, b2=0.999, eps=1e-8):
    """One Adam ascent step with per-row step counts ``count`` (broadcast); returns
    ``(step, m, v)``."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    c = count[..., None]
    mhat = m / (1 - b1**c)
    vhat = v / (1 - b2**c)
    return lr * mhat / (jnp.sqrt(vhat) + eps), m, v


def _batch_elbo(prob, gparams, enc, local, batch, eps_g, eps_l, scale, norm=None):
    """The minibatch ELBO estimate of the module docstring at fixed noise: ``eps_g``
    (site -> unconstrained standard normals), ``eps_l`` ``(B, P)``; ``scale`` is ``N / B``.
    ``local``: ``(m, raw s)`` of the batch's tasks, or None with an encoder ``enc``."""
    values, logdet, ent_g = prob.global_values(gparams, eps_g)
    lp_g, hyper, extras = prob.global_logp(values)
    if enc is None:
        mean, sd = local[0], jax.nn.softplus(local[1])
    else:
        loc, tau = prob.prior_loc_scale(hyper, batch.get("_task_x"))
        B = eps_l.shape[0]
        loc = jnp.broadcast_to(loc, (B, prob.P))
        tau = jnp.broadcast_to(tau, (B, prob.P))
        mean, sd = _encode(
            enc, prob.features(batch), prob.design(batch), batch["_mask"], norm, loc, tau
        )
    theta = mean + sd * eps_l
    ent_l = jnp.sum(0.5 * jnp.log(2 * jnp.pi * jnp.e) + jnp.log(sd), axis=-1)
    per_task = prob.local_logp(theta, hyper, extras, batch) + ent_l
    return lp_g + logdet + ent_g + scale * jnp.sum(per_task)


def _draw_eps(prob, key, B):
    keys = jax.random.split(key, len(prob.sites) + 1)
    eps_g = {
        name: jax.random.normal(k, ushape)
        for (name, _, _, ushape), k in zip(prob.sites, keys[:-1], strict=True)
    }
    return eps_g, jax.random.normal(keys[-1], (B, prob.P))


def batch_scale(num_tasks: int, batch_size: int) -> float:
    """The weight ``N / B`` of a batch's per-task terms in the ELBO estimate (a task is
    in a uniform batch of ``B`` of ``N`` with probability ``B / N``).

    >>> batch_scale(1000, 250)
    4.0
    """
    return num_tasks / batch_size


def _make_step(prob, B, opts, norm):
    """The one compiled step: ``local_steps`` Adam steps of the batch's local parameters,
    then one Adam step of the global (and encoder) parameters."""
    scale = batch_scale(prob.N, B)
    lr_g = float(opts["learning_rate"])
    lr_l = float(opts["local_learning_rate"])
    K = int(opts["local_steps"]) if opts["encoder"] is None else 0

    def elbo(gp, enc, local, batch, key):
        eps_g, eps_l = _draw_eps(prob, key, B)
        return _batch_elbo(
            prob, _constrain_scales(gp), enc, local, batch, eps_g, eps_l, scale, norm
        )

    def step(glob, gstate, local, lstate, batch, key, acc):
        gp, enc = glob
        keys = jax.random.split(key, K + 1)
        if K:

            def local_step(carry, k):
                loc, lst = carry
                g = jax.grad(lambda lc: elbo(gp, None, lc, batch, k))(loc)
                m, v, c = lst
                c = c + 1.0
                # Robbins-Monro decay in the task's own step count: a constant rate leaves
                # Adam's jitter in m_t, which inflates the population scale
                rate = lr_l * jax.lax.rsqrt(1.0 + c / 10.0)[:, None]
                out, new_m, new_v = [], [], []
                for i in range(2):
                    d, mi, vi = _adam(g[i] / scale, m[i], v[i], c, rate)
                    out.append(loc[i] + d)
                    new_m.append(mi)
                    new_v.append(vi)
                return (tuple(out), (tuple(new_m), tuple(new_v), c)), None

            (local, lstate), _ = jax.lax.scan(local_step, (local, lstate), keys[:K])
        value, g = jax.value_and_grad(lambda gl: elbo(gl[0], gl[1], local, batch, keys[K]))(
            (gp, enc)
        )
        m, v, c = gstate
        c = c + 1.0
        m = jax.tree.map(lambda mi, gi: 0.9 * mi + 0.1 * gi, m, g)
        v = jax.tree.map(lambda vi, gi: 0.999 * vi + 0.001 * gi * gi, v, g)
        glob = jax.tree.map(
            lambda p, mi, vi: (
                p + lr_g * (mi / (1 - 0.9**c)) / (jnp.sqrt(vi / (1 - 0.999**c)) + 1e-8)
            ),
            (gp, enc),
            m,
            v,
        )
        shown = (_constrain_scales(glob[0]), glob[1])
        acc = jax.tree.map(jnp.add, acc, shown)
        return glob, (m, v, c), local, lstate, value, acc

    return jax.jit(step)


def _strong(tree):
    """``tree`` with every leaf a committed (not weakly typed) array of the float dtype,
    so the compiled step sees the same types at every call (no recompilation)."""
    dtype = jnp.result_type(float)
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, dtype)), tree)


def _init_globals(prob):
    gp = {}
    for name, _, _, ushape in prob.sites:
        gp[f"{name}_auto_loc"] = jnp.zeros(ushape)
        gp[f"{name}_auto_scale_raw"] = jnp.full(ushape, _softplus_inv(_INIT_SCALE))
    return gp


def _constrain_scales(gp):
    out = {}
    for k, v in gp.items():
        if k.endswith("_auto_scale_raw"):
            out[k[: -len("_raw")]] = jax.nn.softplus(v)
        else:
            out[k] = v
    return out


def _feature_norm(prob, rng):
    """Mean and sd of the encoder's row features over (at most) 100,000 rows."""
    num_obs = prob.tasks.num_obs
    take = np.sort(rng.choice(num_obs, min(num_obs, 100_000), replace=False))
    parts = [prob.rows[k][take].reshape(len(take), -1) for k in sorted(prob.rows)]
    f = np.concatenate(parts, axis=-1).astype(float)
    sd = f.std(axis=0)
    return (jnp.asarray(f.mean(axis=0)), jnp.asarray(np.where(sd > 0, sd, 1.0)))


def fit_svi(model, tasks: TaskSet, seed: int = 0, **options):
    """Fit a ``bm.Hierarchical`` model by task-minibatched SVI (module docstring); returns a
    one-chain :class:`~bayesmeta.posterior.Posterior` with draws of the hyperparameters
    and of every task's ``theta``.

    Options (defaults in ``SVI_OPTIONS``):
      task_batch_size: tasks per step ``B`` (default ``min(num_tasks, 512)``); at most
        the number of tasks (a ValueError otherwise: a batch draws tasks without
        replacement). ``B = num_tasks`` is full-batch SVI.
      num_steps: global steps (default 5000); an epoch is ``ceil(num_tasks / B)`` steps.
      learning_rate: Adam's rate for the global (and encoder) parameters (0.01).
      local_steps: Adam steps of the batch's per-task parameters per step (5; without an
        encoder only).
      local_learning_rate: their Adam rate (0.1).
      encoder: None (free per-task parameters) or ``"deepsets"`` (amortised).
      encoder_width: hidden width of the encoder's networks (32).
      num_samples: guide draws returned (1000).
      progress_bar, convergence_tol, param_tol, warn: as for ``method="vi"``.

    ``post.info``: ``elbo`` (the minibatch ELBO estimate per step), ``converged``,
    ``convergence`` (as ``method="vi"``, on the global parameters), ``guide_params`` (the
    global guide's ``*_auto_loc`` / ``*_auto_scale``); ``info["svi"]`` the batch size,
    rows per task in a batch, epochs, wall times (``compile_s``, ``fit_s``, ``draw_s``);
    ``info["encoder"]`` the trained encoder (what :func:`adapt_encoder` uses).

    >>> import numpy as np, bayesmeta as bm
    >>> rng = np.random.default_rng(0)
    >>> y = rng.normal(rng.normal(1.0, 0.5, 40).repeat(5), 1.0)
    >>> tasks = bm.TaskSet.from_arrays(y=y, task=np.arange(40).repeat(5), noise_scale=1.0)
    >>> model = bm.Hierarchical(bm.likelihoods.NormalKnownNoise())
    >>> post = bm.fit(model, tasks, method="svi", task_batch_size=10, num_steps=100,
    ...               num_samples=100, warn=False)
    >>> post.samples["theta"].shape  # (chain, draw, task)
    (1, 100, 40)
    """
    opts = dict(SVI_OPTIONS, **options)
    _check_options(opts)
    prob = _Problem(model, tasks)
    N = prob.N
    B = opts["task_batch_size"]
    if B is None:
        B = min(N, DEFAULT_BATCH)
    if B > N:
        raise ValueError(
            f"task_batch_size: {B} is more than the {N} tasks (a batch draws tasks without "
            f"replacement; use task_batch_size={N} for full-batch SVI)"
        )
    B = int(B)
    progress = opts["progress_bar"]
    if progress is None:
        progress = sys.stderr.isatty()
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    key, k_enc, k_draw = jax.random.split(key, 3)
    use_enc = opts["encoder"] is not None
    norm, enc = None, None
    if use_enc:
        norm = _feature_norm(prob, rng)
        enc = _encoder_init(k_enc, int(norm[0].shape[0]), prob.P, int(opts["encoder_width"]))
    gp = _init_globals(prob)
    # the global step works on the raw scales; convergence reads the softplus
    glob = _strong((gp, enc))
    zeros = jax.tree.map(jnp.zeros_like, glob)
    gstate = _strong((zeros, zeros, 0.0))
    f32 = np.float32
    P = prob.P
    if use_enc:
        local_m = local_s = mom = None
    else:
        local_m = np.zeros((N, P), f32)
        local_s = np.full((N, P), _softplus_inv(_INIT_SCALE), f32)
        mom = np.zeros((4, N, P), f32)  # Adam moments of (m, raw s): first m, s; second m, s
        count = np.zeros(N, f32)
    step = _make_step(prob, B, opts, norm)

    def wrapped(glob, gstate, idx, batch, key, acc):
        if use_enc:
            local, lstate = None, None
        else:
            local = (jnp.asarray(local_m[idx]), jnp.asarray(local_s[idx]))
            mm = mom[:, idx]
            lstate = ((mm[0], mm[1]), (mm[2], mm[3]), jnp.asarray(count[idx]))
        glob, gstate, local, lstate, value, acc = step(glob, gstate, local, lstate, batch, key, acc)
        if not use_enc:
            local_m[idx] = np.asarray(local[0])
            local_s[idx] = np.asarray(local[1])
            (m0, m1), (v0, v1), c = lstate
            mom[0, idx], mom[1, idx] = np.asarray(m0), np.asarray(m1)
            mom[2, idx], mom[3, idx] = np.asarray(v0), np.asarray(v1)
            count[idx] = np.asarray(c)
        return glob, gstate, value, acc

    num_steps = int(opts["num_steps"])
    width = max(num_steps // _NUM_WINDOWS, 1)
    trace, means, last = [], [], None
    zero_acc = _strong(jax.tree.map(jnp.zeros_like, (_constrain_scales(gp), enc)))
    acc = zero_acc
    perm, pos = rng.permutation(N), 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, desc="svi")
    t0 = time.perf_counter()
    compile_s = None
    first_window = num_steps - (num_steps // width) * width
    for i in range(num_steps):
        if pos + B > N:
            perm, pos = rng.permutation(N), 0
        idx = perm[pos : pos + B]
        pos += B
        batch = {k: jnp.asarray(v) for k, v in prob.gather(idx).items()}
        key, sub = jax.random.split(key)
        glob, gstate, value, acc = wrapped(glob, gstate, idx, batch, sub, acc)
        trace.append(value)
        if compile_s is None:
            compile_s = time.perf_counter() - t0
        if i < first_window:
            acc = zero_acc
        elif (i + 1 - first_window) % width == 0:
            last = jax.tree.map(lambda a: np.asarray(a) / width, acc)
            means.append(last[0])
            acc = zero_acc
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    elbo = np.asarray(jax.device_get(trace), float)
    fit_s = time.perf_counter() - t0
    tail = elbo[-max(num_steps // 10, 1) :]
    if not np.all(np.isfinite(tail)):
        raise FloatingPointError(
            "svi: the ELBO became non-finite; lower learning_rate / local_learning_rate or "
            "check the model's priors"
        )
    crit = _convergence(
        elbo, means, width, "normal", float(opts["convergence_tol"]), float(opts["param_tol"])
    )
    if opts["warn"] and not crit["converged"]:
        warnings.warn(
            f"bayesmeta fit diagnostics: SVI did not converge after {num_steps} steps "
            f"(relative change of the minibatch ELBO {crit['elbo_change']:.3g}, tolerance "
            f"{crit['convergence_tol']:g}; over the last half the global locations moved "
            f"{crit['loc_drift']:.3g} sd and their log sds {crit['scale_drift']:.3g}, "
            f"tolerance {crit['param_tol']:g}; most: {crit['worst']}); raise num_steps or "
            "adjust learning_rate.",
            FitWarning,
            stacklevel=user_stacklevel(),
        )
    t1 = time.perf_counter()
    # the returned guide is the mean of the last window of iterates (Polyak averaging)
    guide, enc_final = last
    S = int(opts["num_samples"])
    values = _global_draws(prob, guide, k_draw, S)
    hyper, extras = _hyper_from_values(prob, values)
    encoder = None
    if use_enc:
        encoder = {
            "params": enc_final,
            "norm": tuple(np.asarray(a) for a in norm),
            "width": int(opts["encoder_width"]),
            "batch": B,
        }
        theta = _encoder_draws(prob, encoder, hyper, np.arange(N), rng)
    else:
        theta = _local_draws(local_m, jax.nn.softplus(local_s), S, rng)
    draw_s = time.perf_counter() - t1
    samples = {k: np.asarray(v)[None] for k, v in values.items()}
    samples[prob.pop.theta_site] = theta.reshape(1, S, N, *prob.param_shape)
    info = {
        "options": opts,
        "elbo": elbo,
        "converged": crit["converged"],
        "elbo_change": crit["elbo_change"],
        "convergence": crit,
        "guide_params": guide,
        "svi": {
            "task_batch_size": B,
            "rows_per_task": prob.R,
            "epochs": num_steps * B / N,
            "averaged_steps": width,
            "local": "centered mean-field Gaussian"
            + (" from the deepsets encoder" if use_enc else " per task"),
            "compile_s": compile_s,
            "fit_s": fit_s,
            "draw_s": draw_s,
        },
        "timing": {"compiled": True},
    }
    if encoder is not None:
        info["encoder"] = encoder
    dims, coords = _dims_coords(prob)
    return assemble(
        samples,
        method="svi",
        tasks=tasks,
        model=model,
        dims=dims,
        coords=coords,
        param_shape=prob.param_shape,
        info=info,
        info_type=VIInfo,
    )


def _global_draws(prob, guide, key, S):
    """``S`` draws of every global site (constrained) from the global guide."""
    out = {}
    keys = jax.random.split(key, max(len(prob.sites), 1))
    for (name, transform, _, ushape), k in zip(prob.sites, keys, strict=False):
        u = guide[f"{name}_auto_loc"] + guide[f"{name}_auto_scale"] * jax.random.normal(
            k, (S, *ushape)
        )
        out[name] = np.asarray(transform(u))
    return out


def _hyper_from_values(prob, values):
    """The population's hyper dict and the likelihood's extras from draws ``(S, ...)``."""
    hyper = {k: jnp.asarray(v) for k, v in values.items()}
    S = next(iter(values.values())).shape[0] if values else 1
    for name, v in prob.pop.fixed_values(prob.param_shape).items():
        hyper[name] = jnp.broadcast_to(v, (S, *jnp.shape(v)))
    extras = {n: hyper[n] for n in prob.lik.global_priors()}
    return hyper, extras


def _local_draws(m, s, S, rng, chunk=65536):
    """``(S, N, P)`` float32 draws ``m + s * eps`` in chunks of tasks."""
    N, P = m.shape
    out = np.empty((S, N, P), np.float32)
    s = np.asarray(s)
    for a in range(0, N, chunk):
        b = min(a + chunk, N)
        eps = rng.standard_normal((S, b - a, P), dtype=np.float32)
        out[:, a:b] = m[a:b] + s[a:b] * eps
    return out


def _encoder_draws(prob, encoder, hyper, idx, rng, budget=16384):
    """``(S, T, P)`` draws of ``theta`` for tasks ``idx``: per hyperparameter draw ``s``,
    ``theta ~ q(theta_t | data_t, phi_s)`` from the encoder, in batches of tasks of one
    compiled size (``budget`` task-draws per batch)."""
    params = jax.tree.map(jnp.asarray, encoder["params"])
    norm = tuple(jnp.asarray(a) for a in encoder["norm"])
    S = next(iter(hyper.values())).shape[0]
    bt = max(1, min(len(idx), budget // S))

    @jax.jit
    def run(batch, hyper):
        loc, tau = prob.prior_loc_scale(hyper, batch.get("_task_x"), draws=True)
        loc = jnp.broadcast_to(loc, (S, bt, prob.P))
        tau = jnp.broadcast_to(tau, (S, bt, prob.P))
        return _encode(
            params, prob.features(batch), prob.design(batch), batch["_mask"], norm, loc, tau
        )

    out = np.empty((S, len(idx), prob.P), np.float32)
    for a in range(0, len(idx), bt):
        chunk = idx[a : a + bt]
        pad = np.concatenate([chunk, np.repeat(chunk[:1], bt - len(chunk))])
        batch = {k: jnp.asarray(v) for k, v in prob.gather(pad).items()}
        mean, sd = run(batch, hyper)
        k = len(chunk)
        eps = rng.standard_normal((S, k, prob.P), dtype=np.float32)
        out[:, a : a + k] = np.asarray(mean)[:, :k] + np.asarray(sd)[:, :k] * eps
    return out


def _dims_coords(prob):
    """The posterior's dims and coords (as :meth:`Hierarchical.build` names them)."""
    pd = prob.param_dim
    param_dim = None if pd is None else pd[0]
    dims = {prob.pop.theta_site: ["task"] + ([param_dim] if param_dim else [])}
    dims.update(prob.pop.hyper_dims(param_dim))
    for name in prob.lik.global_priors():
        dims[name] = []
    nuisance_dims, nuisance_coords = getattr(prob.lik, "nuisance_dims", lambda: ({}, {}))()
    dims.update(nuisance_dims)
    coords = {"task": list(prob.tasks.labels)}
    coords.update(nuisance_coords)
    if prob.regression is not None:
        coords["task_covariate"] = list(prob.regression.labels)
    if pd is not None:
        coords[pd[0]] = list(pd[1])
        from bayesmeta import populations as pops

        if isinstance(prob.pop, pops.MvNormal):
            coords[f"{pd[0]}_bis"] = list(pd[1])
    return dims, coords


def has_encoder(post) -> bool:
    """Whether ``post`` came from ``method="svi"`` with an encoder."""
    return post.method == "svi" and "encoder" in post.info.extra


def adapt_encoder(post, new_tasks: TaskSet, seed: int = 0):
    """New tasks' approximate posterior from an amortised SVI fit by one forward pass.

    For each hyperparameter draw ``phi_s`` of ``post`` the trained encoder gives
    ``q(theta | y_new, phi_s)`` (module docstring), and ``theta`` is drawn from it: the
    same computation that gave the fitted tasks their draws, with no optimisation. The
    result has ``post``'s ``(chain, draw)`` shape and ``info["adapt"]`` records
    ``method="encoder"``. ``post.adapt(new_tasks)`` calls this for such a posterior.

    >>> import numpy as np, bayesmeta as bm
    >>> rng = np.random.default_rng(0)
    >>> y = rng.normal(rng.normal(1.0, 0.5, 40).repeat(5), 1.0)
    >>> tasks = bm.TaskSet.from_arrays(y=y, task=np.arange(40).repeat(5), noise_scale=1.0)
    >>> model = bm.Hierarchical(bm.likelihoods.NormalKnownNoise())
    >>> post = bm.fit(model, tasks, method="svi", encoder="deepsets", task_batch_size=10,
    ...               num_steps=100, num_samples=100, warn=False)  # doctest: +SKIP
    >>> new = bm.TaskSet.from_arrays(y=[2.0, 2.5], task=[0, 0], noise_scale=1.0)
    >>> post.adapt(new).samples["theta"].shape  # doctest: +SKIP
    (1, 100, 1)
    """
    from bayesmeta.info import AdaptInfo

    if not has_encoder(post):
        raise ValueError(
            "method: 'encoder' needs a posterior of method='svi' fitted with encoder='deepsets'"
        )
    if not isinstance(new_tasks, TaskSet):
        raise ValueError(f"new_tasks: expected a bm.TaskSet, got {type(new_tasks).__name__}")
    prob = _Problem(post.model, new_tasks)
    if prob.param_shape != tuple(post.param_shape):
        raise ValueError(
            f"new_tasks: the likelihood gives parameters of shape {prob.param_shape} for the "
            f"new tasks but {tuple(post.param_shape)} for the fitted ones (different x?)"
        )
    encoder = post.info.extra["encoder"]
    if sorted(prob.rows) != sorted(_Problem(post.model, post.tasks).rows):
        raise ValueError("new_tasks: the new tasks' fields differ from the fitted tasks'")
    hyper = {k: jnp.asarray(v) for k, v in post._hyper_draws().items()}
    S = post.num_chains * post.num_draws
    rng = np.random.default_rng(seed)
    theta = _encoder_draws(prob, encoder, hyper, np.arange(prob.N), rng)
    shape = (post.num_chains, post.num_draws, prob.N, *prob.param_shape)
    dims, coords = _dims_coords(prob)
    site = prob.pop.theta_site
    del S
    return assemble(
        {site: theta.reshape(shape)},
        method="adapt",
        tasks=new_tasks,
        model=post.model,
        dims={site: dims[site]},
        coords=coords,
        param_shape=prob.param_shape,
        info={"adapt": {"method": ["encoder"] * prob.N}},
        info_type=AdaptInfo,
    )


def _fit_engine(model, tasks, seed: int, **options):
    return fit_svi(model, tasks, seed, **options)


ENGINE = Engine(
    name="svi",
    summary="task-minibatched SVI (per-task or amortised local guides), data on the host",
    options=SVI_OPTIONS,
    fit=_fit_engine,
    check_options=_check_options,
)
