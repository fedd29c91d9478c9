"""Per-task likelihoods ``p(y_t | theta_t)``, evaluated row by row in the flat layout.

Every likelihood knows the shape of one task's parameter vector (which follows the data:
an intercept plus one slope per input column for the regressions), checks the data it is
given (``validate``), samples its own nuisance parameters (a learned noise scale), and
returns a NumPyro distribution over the rows given each row's task parameters. The
pointwise log-likelihood of the ``y`` site is what ArviZ's ``loo`` uses.

======================  ============================  =================================
likelihood              per-task parameter            data
======================  ============================  =================================
``NormalKnownNoise``    mean (scalar)                 y, known noise sd per row or task
``Normal``              mean (scalar)                 y; noise sd learned, shared/per task
``LinearRegression``    (intercept, slopes...)        x (N, k), y; noise known or learned
``LogisticRegression``  (intercept, slopes...)        x (N, k) or none, y in {0, 1}
``Poisson``             log-rate (intercept, slopes)  x or none, y counts; log link
``Binomial``            logit (intercept, slopes)     x[:, 0] trials, x[:, 1:] covariates
``Custom``              any shape you declare         your ``loglik_fn(theta, x, y)``
======================  ============================  =================================

**Common and varying coefficients.** The likelihoods with a linear predictor
(``LinearRegression``, ``LogisticRegression``, ``Poisson``, ``Binomial``) take
``varying=[names]``: only those coefficients vary by task (``theta_t``, a scalar when one
varies), the others are *common*, one value for all tasks, the site ``beta`` with dim
``common`` and the prior ``common_prior`` (default ``Normal(0, 5)`` per coefficient)::

    eta_r = x_{r,V} . theta_t + x_{r,C} . beta

Coefficients are named ``intercept`` and the TaskSet's ``x`` column names
(``feature_names``; ``x0``.. when unnamed); a name that is not one of them is an error
raised by ``validate``. ``varying=None`` (the default) lets every coefficient vary.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from bayesmeta._checks import as_real_array
from bayesmeta.tasks import TaskSet

__all__ = [
    "Likelihood",
    "NormalKnownNoise",
    "Normal",
    "LinearRegression",
    "LogisticRegression",
    "Poisson",
    "Binomial",
    "Custom",
    "GLMEstimates",
]

_NOISE_MODES = ("shared", "task")


def _where(tasks: TaskSet, row: int) -> str:
    return tasks._where(row)


def _segment_sum(values: np.ndarray, tasks: TaskSet) -> np.ndarray:
    out = np.zeros((tasks.num_tasks, *values.shape[1:]))
    np.add.at(out, tasks.task_index, values)
    return out


class Likelihood(abc.ABC):
    """Abstract base of per-task likelihoods (see the module table).

    A new likelihood must write :meth:`row_dist` (the distribution of each row's ``y``
    given that row's task parameters). It may override, with these defaults:

    - :meth:`validate` (accept any data), :meth:`param_shape` (``()``, a scalar per task),
      :meth:`param_dim` (None), :meth:`data_arrays` (``y``, ``task_index``, ``x``,
      ``noise_scale`` from the TaskSet);
    - :meth:`global_priors` / :meth:`task_priors` (no nuisance parameters);
    - :meth:`information` and :meth:`rough_estimates` (None: ``parameterization="auto"``
      cannot judge and keeps the tasks non-centred), or :meth:`parameterization_evidence`
      directly (both at once);
    - :attr:`per_task_density` (False) with :meth:`task_log_density`, for likelihoods
      whose rows are not independent given ``theta`` (one log-density per task);
    - :meth:`simulate_rows` (sample ``row_dist``) for posterior predictive draws;
    - :attr:`conjugate` (False): True only when ``y`` given ``theta`` is Gaussian and linear
      in ``theta``, which lets ``exact``, ``collapsed`` and conjugate ``adapt`` integrate
      ``theta`` out;
    - :attr:`noise_mode` (None): ``"known"``, ``"shared"`` or ``"task"`` for Gaussian noise;
      :attr:`needs_noise_scale` follows from it (new rows need a known noise scale).
    """

    #: True when y given theta is Gaussian and linear in theta (exact marginals exist);
    #: read it through :attr:`conjugate`
    linear_gaussian = False

    @property
    def conjugate(self) -> bool:
        """Whether ``theta_t`` integrates out in closed form (Gaussian, linear in theta)."""
        return bool(self.linear_gaussian)

    @property
    def per_task_density(self) -> bool:
        """True when the model evaluates :meth:`task_log_density` (one value per task)
        instead of summing :meth:`row_dist` over rows."""
        return False

    @property
    def needs_noise_scale(self) -> bool:
        """True when predicting new rows needs their known noise scale."""
        return self.noise_mode == "known"

    @property
    def noise_mode(self) -> str | None:
        """How a Gaussian likelihood's noise scale is had: ``"known"`` (from the data),
        ``"shared"`` (one learned ``sigma``), ``"task"`` (one per task), or None (no noise
        scale). Settled by :meth:`validate` where it depends on the data."""
        return None

    def task_log_density(self, theta: jnp.ndarray, data: dict) -> jnp.ndarray:
        """Per-task log-likelihood ``(T,)`` for :attr:`per_task_density` likelihoods."""
        raise NotImplementedError(f"{type(self).__name__} has a row-wise likelihood")

    def simulate_rows(self, key, theta_rows: jnp.ndarray, data: dict, extras_rows: dict):
        """One draw of every row's ``y`` given the rows' parameters (predictive checks)."""
        return self.row_dist(theta_rows, data, extras_rows).sample(key)

    def validate(self, tasks: TaskSet) -> None:
        """Raise ValueError naming the field, task and row of bad data (default: accept)."""
        return None

    def param_shape(self, tasks: TaskSet) -> tuple[int, ...]:
        return ()

    def param_dim(self, tasks: TaskSet) -> tuple[str, list[str]] | None:
        """Name and coordinates of the per-task parameter dimension (None for scalars)."""
        return None

    def global_priors(self) -> dict[str, dist.Distribution]:
        """Nuisance parameters shared by all tasks, sampled outside the task plate."""
        return {}

    def task_priors(self) -> dict[str, dist.Distribution]:
        """Nuisance parameters with one value per task, sampled inside the task plate."""
        return {}

    @abc.abstractmethod
    def row_dist(self, theta_rows: jnp.ndarray, data: dict, extras_rows: dict):
        """Distribution of ``y`` row by row, batch shape ``(N,)``."""

    def information(self, tasks: TaskSet) -> np.ndarray | None:
        """Approximate Fisher information about each task's parameters, shape
        ``(num_tasks, *param_shape)``; used by ``parameterization="auto"``."""
        return None

    def rough_estimates(self, tasks: TaskSet) -> tuple[np.ndarray, np.ndarray] | None:
        """Quick per-task estimates of ``theta_t`` and their sampling variances, shapes
        ``(num_tasks, *param_shape)``, or None when there is no cheap closed form. Used by
        ``parameterization="auto"`` to gauge the spread between tasks."""
        return None

    def parameterization_evidence(self, tasks: TaskSet):
        """``(information, rough_estimates)`` for ``parameterization="auto"``: one call, so a
        likelihood that must solve for its estimates (the GLMs) solves once."""
        return self.information(tasks), self.rough_estimates(tasks)

    def data_arrays(self, tasks: TaskSet) -> dict[str, Any]:
        """Arrays the model needs, as a dict of numpy arrays (flat layout)."""
        out = {"y": tasks.y, "task_index": tasks.task_index}
        if tasks.x is not None:
            out["x"] = tasks.x
        if tasks.noise_scale is not None:
            out["noise_scale"] = tasks.noise_scale
        return out

    def sample_extras(self, num_tasks: int, task_plate) -> dict[str, jnp.ndarray]:
        """Sample the nuisance parameters inside a model (global ones outside the plate)."""
        out = {name: numpyro.sample(name, d) for name, d in self.global_priors().items()}
        if self.task_priors():
            with task_plate:
                for name, d in self.task_priors().items():
                    out[name] = numpyro.sample(name, d)
        return out

    def extras_rows(self, extras: dict, task_index: jnp.ndarray) -> dict:
        """Per-row view of the nuisance parameters."""
        out = dict(extras)
        for name in self.task_priors():
            out[name] = extras[name][..., task_index]
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# ---------------------------------------------------------------------- helpers
def _check_counts(tasks: TaskSet, field: str = "y", upper: np.ndarray | None = None) -> None:
    y = tasks.y
    bad = (y < 0) | (y != np.round(y))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{field}: counts must be non-negative integers, got {y[row]} at {_where(tasks, row)}"
        )
    if upper is not None:
        bad = y > upper
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{field}: {y[row]} successes exceed {upper[row]} trials at {_where(tasks, row)}"
            )


def _noise_prior(prior: Any) -> dist.Distribution:
    if prior is None:
        return dist.HalfNormal(5.0)
    if not isinstance(prior, dist.Distribution):
        raise ValueError(
            f"noise_prior: expected a numpyro distribution, got {type(prior).__name__}"
        )
    # sigma is a scale: a prior with mass below zero would give negative noise draws under
    # collapsed and exact algebra (which square it) and a failed start under NUTS
    support = prior.support
    lower = getattr(support, "lower_bound", None)
    ok = support in (dist.constraints.positive, dist.constraints.nonnegative) or (
        lower is not None and float(np.min(lower)) >= 0
    )
    if not ok or prior.event_shape:
        raise ValueError(
            "noise_prior: the prior on the noise scale sigma must be a scalar distribution "
            f"with positive support (e.g. dist.HalfNormal(5)), got {type(prior).__name__} "
            f"with support {support}"
        )
    return prior


class _GLM(Likelihood):
    """Shared machinery of likelihoods with a linear predictor ``eta = a + x @ b``."""

    def __init__(
        self,
        intercept: bool = True,
        x_required: bool = False,
        varying: Any = None,
        common_prior: Any = None,
    ):
        if not isinstance(intercept, bool):
            raise ValueError(f"intercept: expected True or False, got {intercept!r}")
        self.intercept = intercept
        self.x_required = x_required
        if varying is not None:
            varying = [varying] if isinstance(varying, str) else list(varying)
            if not varying or not all(isinstance(v, str) for v in varying):
                raise ValueError(
                    "varying: expected a non-empty list of coefficient names (None: all vary)"
                )
            if len(set(varying)) != len(varying):
                raise ValueError(f"varying: a coefficient is named twice ({varying})")
        self.varying = varying
        if common_prior is None:
            common_prior = dist.Normal(0.0, 5.0)
        if not isinstance(common_prior, dist.Distribution):
            raise ValueError(
                f"common_prior: expected a numpyro distribution, got {type(common_prior).__name__}"
            )
        if common_prior.event_shape:
            raise ValueError("common_prior: expected a scalar (per-coefficient) distribution")
        self.common_prior = common_prior
        # the varying / common split, resolved against the data by validate
        self._split: tuple[tuple[int, ...], tuple[int, ...], list[str]] | None = None

    def _covariates(self, x):
        return x

    def _num_covariates(self, tasks: TaskSet) -> int:
        if tasks.x is None:
            return 0
        if len(tasks.feature_shape) != 1:
            raise ValueError(
                f"x: expected a matrix of shape (N, k), got feature shape {tasks.feature_shape}"
            )
        return tasks.feature_shape[0]

    def validate(self, tasks):
        k = self._num_covariates(tasks)
        if self.x_required and tasks.x is None:
            raise ValueError(f"x: {type(self).__name__} needs inputs x")
        if k == 0 and not self.intercept:
            raise ValueError("intercept: with no covariates the model needs an intercept")
        self._split = None
        if self.varying is not None:
            names = self.coef_names(tasks)
            for v in self.varying:
                if v not in names:
                    raise ValueError(
                        f"varying: {v!r} is not a coefficient of {type(self).__name__} "
                        f"(coefficients: {names})"
                    )
            var_idx = tuple(names.index(v) for v in self.varying)
            com_idx = tuple(i for i in range(len(names)) if i not in var_idx)
            if com_idx:
                self._split = (var_idx, com_idx, [names[i] for i in com_idx])

    def coef_names(self, tasks: TaskSet) -> list[str]:
        """Names of all coefficients of the linear predictor, varying and common
        (``intercept`` and the columns of ``x``)."""
        k = self._num_covariates(tasks)
        names = getattr(tasks, "feature_names", None) or [f"x{i}" for i in range(k)]
        return (["intercept"] if self.intercept else []) + list(names[:k])

    @property
    def common_names(self) -> list[str]:
        """Names of the common (shared, not varying) coefficients, after ``validate``."""
        return [] if self._split is None else list(self._split[2])

    def param_shape(self, tasks):
        if self._split is not None:
            p = len(self._split[0])
            return () if p == 1 else (p,)
        k = self._num_covariates(tasks)
        p = k + int(self.intercept)
        return () if (p == 1 and self.intercept) else (p,)

    def param_dim(self, tasks):
        if not self.param_shape(tasks):
            return None
        names = self.coef_names(tasks)
        if self._split is not None:
            names = [names[i] for i in self._split[0]]
        return "coef", names

    def global_priors(self):
        if self._split is None:
            return {}
        return {"beta": self.common_prior.expand((len(self._split[1]),)).to_event(1)}

    def nuisance_dims(self) -> tuple[dict, dict]:
        """``(dims, coords)`` of the nuisance sites: ``beta`` over the ``common`` dim."""
        if self._split is None:
            return {}, {}
        return {"beta": ["common"]}, {"common": list(self._split[2])}

    def _full_design(self, data: dict) -> jnp.ndarray | None:
        x = data.get("x")
        cov = None if x is None else self._covariates(x)
        if cov is None or cov.shape[-1] == 0:
            return None
        if self.intercept:
            return jnp.concatenate([jnp.ones_like(cov[..., :1]), cov], axis=-1)
        return cov

    def design(self, data: dict) -> jnp.ndarray | None:
        """Rows of the design matrix of the *varying* coefficients ``(N, p)`` (None when the
        parameter is a scalar mean with no common coefficients)."""
        full = self._full_design(data)
        if full is None or self._split is None:
            return full
        return full[..., jnp.asarray(self._split[0])]

    def common_design(self, data: dict) -> jnp.ndarray | None:
        """Rows of the design matrix of the common coefficients ``(N, c)``, or None."""
        if self._split is None:
            return None
        return self._full_design(data)[..., jnp.asarray(self._split[1])]

    def _common_eta(self, data, extras_rows):
        if self._split is None:
            return 0.0
        return self.common_design(data) @ extras_rows["beta"]

    def _eta(self, theta_rows, data, extras_rows=None):
        if self._split is not None:
            xv = self.design(data)
            theta_v = theta_rows[..., None] if len(self._split[0]) == 1 else theta_rows
            return jnp.sum(xv * theta_v, axis=-1) + self._common_eta(data, extras_rows)
        x = data.get("x")
        cov = None if x is None else self._covariates(x)
        if cov is None or cov.shape[-1] == 0:
            return theta_rows
        # intercept + x @ slopes, without materialising a column of ones (measured: the
        # concatenated design costs ~10% of a logistic gradient)
        if self.intercept:
            return theta_rows[..., 0] + jnp.sum(cov * theta_rows[..., 1:], axis=-1)
        return jnp.sum(cov * theta_rows, axis=-1)

    def _dist_eta(self, eta, data, extras_rows):
        """Distribution of ``y`` given each row's linear predictor (GLMs with a design)."""
        raise NotImplementedError

    def row_dist(self, theta_rows, data, extras_rows):
        return self._dist_eta(self._eta(theta_rows, data, extras_rows), data, extras_rows)

    def task_eta(self, theta, data, rows_per_task: int):
        """Linear predictor of every row from ``theta`` ``(T, *param_shape)`` when every
        task has ``rows_per_task`` consecutive rows: one batched contraction per task
        (measured about 2x faster per logistic gradient on a CPU than expanding ``theta``
        to rows, whose gradient is a scatter-add), or None where there is no design."""
        x = data.get("x")
        cov = None if x is None else self._covariates(x)
        if cov is None or cov.shape[-1] == 0 or self._split is not None:
            return None
        num_tasks = theta.shape[0]
        blocks = cov.reshape(num_tasks, rows_per_task, cov.shape[-1])
        if self.intercept:
            eta = theta[:, None, 0] + jnp.einsum("tnk,tk->tn", blocks, theta[:, 1:])
        else:
            eta = jnp.einsum("tnk,tk->tn", blocks, theta)
        return eta.reshape(-1)

    def task_dist(self, theta, data, extras_rows, rows_per_task: int):
        """``row_dist`` from per-task ``theta`` on equal-sized tasks (None: not available)."""
        if type(self)._dist_eta is _GLM._dist_eta:
            return None
        eta = self.task_eta(theta, data, rows_per_task)
        return None if eta is None else self._dist_eta(eta, data, extras_rows)

    def _design_np(self, tasks: TaskSet, full: bool = False) -> np.ndarray:
        data = self.data_arrays(tasks)
        design = self._full_design(data) if full else self.design(data)
        if design is None:
            return np.ones((tasks.num_obs, 1))
        return np.asarray(design)

    def _information_from_weights(self, tasks, w):
        design = self._design_np(tasks)
        info = _segment_sum(w[:, None] * design**2, tasks)
        return info[:, 0] if not self.param_shape(tasks) else info


class _CanonicalGLM(_GLM):
    """GLMs with a canonical link (logistic, Poisson, binomial): the per-task evidence for
    ``parameterization="auto"`` comes from each task's own penalised fit."""

    def _mean_weight(self, eta: np.ndarray, tasks: TaskSet) -> tuple[np.ndarray, np.ndarray]:
        """Row means ``E[y | eta]`` and IRLS weights ``Var[y | eta]`` (canonical link)."""
        raise NotImplementedError

    def _start(self, tasks: TaskSet, p: int) -> np.ndarray:
        return np.zeros(p)

    def glm_estimates(self, tasks: TaskSet) -> GLMEstimates:
        """Penalised per-task maximum-likelihood estimates by Newton's method (vectorised
        over tasks), the data's information about each coefficient at the estimate, and
        whether each task's solve converged; see :class:`GLMEstimates`."""
        return _glm_estimates(self, tasks)

    def parameterization_evidence(self, tasks):
        est = self.glm_estimates(tasks)
        # a task whose solve did not converge says nothing (non-centred, no say in the spread)
        ok = est.converged[:, None]
        info = np.where(ok, est.information, 0.0)
        shape = (tasks.num_tasks, *self.param_shape(tasks))
        rough = np.where(ok, est.estimate, np.nan), np.where(ok, est.variance, np.nan)
        return info.reshape(shape), tuple(r.reshape(shape) for r in rough)

    def information(self, tasks):
        return self.parameterization_evidence(tasks)[0]

    def rough_estimates(self, tasks):
        return self.parameterization_evidence(tasks)[1]


class NormalKnownNoise(_GLM):
    """``y_r ~ N(theta_t, s_r)`` with the noise sd ``s_r`` known (meta-analysis).

    The noise scale comes from the TaskSet (``from_estimates``' standard errors, or
    ``noise_scale=`` per row), or from ``noise_scale=`` here: a scalar or one value per task.
    """

    linear_gaussian = True

    def __init__(self, noise_scale: Any = None):
        super().__init__(intercept=True)
        self.noise_scale = (
            None if noise_scale is None else as_real_array("noise_scale", noise_scale)
        )
        if self.noise_scale is not None and (
            not np.all(np.isfinite(self.noise_scale)) or np.any(self.noise_scale <= 0)
        ):
            raise ValueError(f"noise_scale: must be finite and positive, got {noise_scale}")

    def param_shape(self, tasks):
        return ()

    def param_dim(self, tasks):
        return None

    def design(self, data):
        return None

    def _row_scale(self, tasks: TaskSet) -> np.ndarray:
        if self.noise_scale is not None:
            if self.noise_scale.ndim == 0:
                return np.full(tasks.num_obs, float(self.noise_scale))
            if self.noise_scale.shape != (tasks.num_tasks,):
                raise ValueError(
                    f"noise_scale: expected a scalar or {tasks.num_tasks} values "
                    f"(one per task), got shape {self.noise_scale.shape}"
                )
            return self.noise_scale[tasks.task_index]
        if tasks.noise_scale is None:
            raise ValueError(
                "noise_scale: NormalKnownNoise needs known noise scales (build the "
                "TaskSet with from_estimates or noise_scale=, or pass noise_scale "
                "to the likelihood)"
            )
        return tasks.noise_scale

    def validate(self, tasks):
        self._row_scale(tasks)

    @property
    def noise_mode(self):
        return "known"

    def data_arrays(self, tasks):
        out = super().data_arrays(tasks)
        out["noise_scale"] = self._row_scale(tasks)
        return out

    def row_dist(self, theta_rows, data, extras_rows):
        return dist.Normal(theta_rows, data["noise_scale"])

    def information(self, tasks):
        return _segment_sum(1.0 / self._row_scale(tasks) ** 2, tasks)

    def rough_estimates(self, tasks):
        w = 1.0 / self._row_scale(tasks) ** 2
        info = _segment_sum(w, tasks)
        return _segment_sum(w * tasks.y, tasks) / info, 1.0 / info


class _NoiseMixin:
    @property
    def noise_mode(self):
        return self._resolved

    def _init_noise(self, noise, noise_prior, allow_known):
        modes = _NOISE_MODES + (("known",) if allow_known else ())
        if noise is not None and noise not in modes:
            raise ValueError(f"noise: must be one of {modes}, got {noise!r}")
        self.noise = noise
        self.noise_prior = _noise_prior(noise_prior)

    def global_priors(self):
        out = super().global_priors()
        if self._resolved == "shared":
            out["sigma"] = self.noise_prior
        return out

    def task_priors(self):
        return {"sigma": self.noise_prior} if self._resolved == "task" else {}

    def _sigma_rows(self, data, extras_rows):
        if self._resolved == "known":
            return data["noise_scale"]
        return extras_rows["sigma"]


class Normal(_NoiseMixin, _GLM):
    """``y_r ~ N(theta_t, sigma)`` with the noise sd learned.

    Args:
      noise: ``"shared"`` (one ``sigma`` for all tasks, default) or ``"task"`` (one per task).
      noise_prior: prior on ``sigma`` (default ``HalfNormal(5)``).
    """

    linear_gaussian = True

    def __init__(self, noise: str = "shared", noise_prior: Any = None):
        _GLM.__init__(self, intercept=True)
        self._init_noise(noise, noise_prior, allow_known=False)
        self._resolved = noise

    def param_shape(self, tasks):
        return ()

    def param_dim(self, tasks):
        return None

    def design(self, data):
        return None

    def row_dist(self, theta_rows, data, extras_rows):
        return dist.Normal(theta_rows, self._sigma_rows(data, extras_rows))

    def information(self, tasks):
        return tasks.counts / _rough_noise_var(tasks)

    def rough_estimates(self, tasks):
        return _segment_sum(tasks.y, tasks) / tasks.counts, 1.0 / self.information(tasks)

    def __repr__(self):
        return f"Normal(noise={self.noise!r})"


def _rough_noise_var(tasks: TaskSet) -> float:
    """Pooled within-task variance of y (overall variance if no task has two rows)."""
    counts = tasks.counts
    means = _segment_sum(tasks.y, tasks) / counts
    resid = tasks.y - means[tasks.task_index]
    dof = tasks.num_obs - tasks.num_tasks
    var = float(np.sum(resid**2) / dof) if dof > 0 else float(np.var(tasks.y))
    return var if var > 0 else 1.0


class LinearRegression(_NoiseMixin, _GLM):
    """``y_r ~ N(x_r @ b_t + a_t, sigma)``; ``theta_t = (a_t, b_t)`` (dim ``coef``).

    Args:
      intercept: include a per-task intercept (default True).
      noise: ``"known"`` (the TaskSet's ``noise_scale``), ``"shared"``, ``"task"``, or None
        (default: known when the TaskSet has noise scales, else shared).
      noise_prior: prior on a learned ``sigma`` (default ``HalfNormal(5)``).
      varying: names of the coefficients that vary by task (default all); the others are
        common, one ``beta`` for all tasks (module docstring).
      common_prior: prior of each common coefficient (default ``Normal(0, 5)``).
    """

    linear_gaussian = True

    def __init__(
        self,
        intercept: bool = True,
        noise: str | None = None,
        noise_prior: Any = None,
        varying: Any = None,
        common_prior: Any = None,
    ):
        _GLM.__init__(
            self,
            intercept=intercept,
            x_required=True,
            varying=varying,
            common_prior=common_prior,
        )
        self._init_noise(noise, noise_prior, allow_known=True)
        self._resolved = noise or "shared"

    def validate(self, tasks):
        super().validate(tasks)
        resolved = self.noise or ("known" if tasks.noise_scale is not None else "shared")
        if resolved == "known" and tasks.noise_scale is None:
            raise ValueError("noise_scale: noise='known' needs the TaskSet's noise_scale")
        self._resolved = resolved

    def _dist_eta(self, eta, data, extras_rows):
        return dist.Normal(eta, self._sigma_rows(data, extras_rows))

    def _row_weights(self, tasks):
        if tasks.noise_scale is not None and self._resolved == "known":
            return 1.0 / tasks.noise_scale**2
        return np.full(tasks.num_obs, 1.0 / _rough_noise_var(tasks))

    def information(self, tasks):
        return self._information_from_weights(tasks, self._row_weights(tasks))

    def rough_estimates(self, tasks):
        """Per-task weighted least squares (a tiny ridge keeps short tasks finite; their
        huge variances give them no say in the spread)."""
        design = self._design_np(tasks)
        w = self._row_weights(tasks)
        p = design.shape[1]
        y = tasks.y
        if self._split is not None:  # the common part held at its pooled least squares
            full = self._design_np(tasks, full=True)
            coef = np.linalg.lstsq(full * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)[0]
            com = list(self._split[1])
            y = y - full[:, com] @ coef[com]
        xtx = _segment_sum(w[:, None, None] * design[:, :, None] * design[:, None, :], tasks)
        xty = _segment_sum((w * y)[:, None] * design, tasks)
        prec = xtx + 1e-8 * np.trace(xtx, axis1=1, axis2=2)[:, None, None] * np.eye(p)
        cov = np.linalg.inv(prec + 1e-300 * np.eye(p))
        est = np.einsum("tij,tj->ti", cov, xty)
        var = np.diagonal(cov, axis1=1, axis2=2)
        if not self.param_shape(tasks):
            return est[:, 0], var[:, 0]
        return est, var

    def __repr__(self):
        return f"LinearRegression(intercept={self.intercept}, noise={self.noise!r})"


class LogisticRegression(_CanonicalGLM):
    """``y_r ~ Bernoulli(sigmoid(a_t + x_r @ b_t))`` with ``y`` in {0, 1}; ``x`` optional
    (without it the per-task parameter is one log-odds).

    Args:
      intercept: include an intercept (default True).
      varying: names of the coefficients that vary by task (default all); the others are
        common (module docstring).
      common_prior: prior of each common coefficient (default ``Normal(0, 5)``).
    """

    def validate(self, tasks):
        super().validate(tasks)
        bad = (tasks.y != 0) & (tasks.y != 1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"y: LogisticRegression needs binary y (0 or 1), got {tasks.y[row]} "
                f"at {_where(tasks, row)}"
            )

    def _dist_eta(self, eta, data, extras_rows):
        return dist.Bernoulli(logits=eta)

    def _mean_weight(self, eta, tasks):
        p = _sigmoid(eta)
        return p, p * (1.0 - p)

    def __repr__(self):
        return f"LogisticRegression(intercept={self.intercept})"


class Poisson(_CanonicalGLM):
    """``y_r ~ Poisson(exp(a_t + x_r @ b_t))`` (log link); ``x`` optional; ``varying`` and
    ``common_prior`` as :class:`LogisticRegression`."""

    def validate(self, tasks):
        super().validate(tasks)
        _check_counts(tasks)

    def _dist_eta(self, eta, data, extras_rows):
        return dist.Poisson(jnp.exp(eta))

    def _mean_weight(self, eta, tasks):
        rate = np.exp(np.clip(eta, -30.0, 30.0))
        return rate, rate

    def _start(self, tasks, p):
        start = np.zeros(p)
        if self.intercept:  # log of the overall mean count keeps the first step in range
            start[0] = np.log(np.mean(tasks.y) + 0.5)
        return start

    def __repr__(self):
        return f"Poisson(intercept={self.intercept})"


class Binomial(_CanonicalGLM):
    """``y_r ~ Binomial(n_r, sigmoid(a_t + z_r @ b_t))`` for counts out of ``n_r`` trials.

    The first input column ``x[:, 0]`` holds the trials ``n_r``; the remaining columns
    ``z_r = x[:, 1:]`` are covariates (e.g. a treatment indicator, so ``theta_t`` is
    (baseline log-odds, log odds ratio) for a two-arm trial). ``varying`` and
    ``common_prior`` as :class:`LogisticRegression`; coefficients are named from the
    covariate columns, not the trials column.
    """

    def __init__(self, intercept: bool = True, varying: Any = None, common_prior: Any = None):
        super().__init__(
            intercept=intercept, x_required=True, varying=varying, common_prior=common_prior
        )

    def _covariates(self, x):
        return x[..., 1:]

    def _num_covariates(self, tasks):
        return super()._num_covariates(tasks) - 1

    def validate(self, tasks):
        if tasks.x is None or len(tasks.feature_shape) != 1:
            raise ValueError("x: Binomial needs x with the number of trials in column 0")
        trials = tasks.x[:, 0]
        bad = (trials < 1) | (trials != np.round(trials))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"x: trials (column 0) must be positive integers, got {trials[row]} "
                f"at {_where(tasks, row)}"
            )
        super().validate(tasks)
        _check_counts(tasks, upper=trials)

    def coef_names(self, tasks):
        names = getattr(tasks, "feature_names", None)
        k = self._num_covariates(tasks)
        cov = list(names[1 : k + 1]) if names else [f"x{i + 1}" for i in range(k)]
        return (["intercept"] if self.intercept else []) + cov

    def _dist_eta(self, eta, data, extras_rows):
        return dist.Binomial(total_count=data["x"][..., 0], logits=eta)

    def simulate_rows(self, key, theta_rows, data, extras_rows):
        # NumPyro's binomial sampler looks the trial count up in a table: it must be an
        # integer array (a float count fails under float64)
        logits = self.row_dist(theta_rows, data, extras_rows).logits
        trials = jnp.asarray(data["x"][..., 0]).astype(int)  # the default integer type
        draws = dist.Binomial(total_count=trials, logits=logits).sample(key)
        return draws.astype(logits.dtype)

    def _mean_weight(self, eta, tasks):
        p, n = _sigmoid(eta), tasks.x[:, 0]
        return n * p, n * p * (1.0 - p)

    def __repr__(self):
        return f"Binomial(intercept={self.intercept})"


def _sigmoid(eta: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * eta))  # no overflow for large |eta|


class GLMEstimates(NamedTuple):
    """Per-task evidence of a GLM likelihood, what ``parameterization="auto"`` reads.

    Fields (``p`` = coefficients per task):
      estimate     # (T, p) penalised maximum-likelihood estimate of each task's coefficients
      variance     # (T, p) diagonal of (H_t + P)^-1: the estimate's approximate variance
      information  # (T, p) 1 / variance - P: what the task's own rows say about each
                   # coefficient given the others (observed Fisher information, P removed)
      converged    # (T,) the Newton solve met its tolerance within the iteration budget
    """

    estimate: np.ndarray
    variance: np.ndarray
    information: np.ndarray
    converged: np.ndarray


# weak ridge of the per-task solves: a N(pooled estimate, 2.5^2) prior on each coefficient
# (the scale of Gelman et al.'s default logistic prior), which keeps separated or empty
# tasks finite without pulling informative ones
_GLM_RIDGE = 1.0 / 2.5**2
_GLM_ITERS, _GLM_TOL = 50, 1e-8


def _glm_newton(lik, tasks, design, starts, centre, ridge, offset=0.0):
    """Penalised Newton iterations for groups of consecutive rows at once (group ``g`` is
    rows ``starts[g]`` up to the next start), linear predictor ``design @ theta + offset``;
    returns ``(estimate, H + P, converged)``."""
    num, p = len(starts), design.shape[1]
    index = np.repeat(np.arange(num), np.diff(np.append(starts, len(design))))
    theta = np.broadcast_to(centre, (num, p)).copy()
    penalty = ridge * np.eye(p)
    outer = (design[:, :, None] * design[:, None, :]).reshape(len(design), p * p)

    def eta(theta):
        return np.einsum("np,np->n", design, theta[index]) + offset

    def hessian(theta):
        _, weight = lik._mean_weight(eta(theta), tasks)
        return np.add.reduceat(weight[:, None] * outer, starts, axis=0).reshape(num, p, p)

    converged = np.zeros(num, bool)
    for _ in range(_GLM_ITERS):
        mean, weight = lik._mean_weight(eta(theta), tasks)
        grad = np.add.reduceat((tasks.y - mean)[:, None] * design, starts, axis=0)
        grad -= ridge * (theta - centre)
        hess = np.add.reduceat(weight[:, None] * outer, starts, axis=0).reshape(num, p, p)
        step = np.linalg.solve(hess + penalty, grad[..., None])[..., 0]
        # damped: no coefficient moves by more than 1 in a step (a log-link rate by e)
        step /= np.maximum(1.0, np.max(np.abs(step), axis=1, keepdims=True))
        theta += step
        scale = 1.0 + np.max(np.abs(theta), axis=1)
        converged = np.max(np.abs(step), axis=1) < _GLM_TOL * scale
        if converged.all():
            break
    finite = np.all(np.isfinite(theta), axis=1)
    return theta, hessian(theta) + penalty, converged & finite


def _glm_estimates(lik, tasks) -> GLMEstimates:
    """Pooled fit first (one group), then every task's penalised fit centred on it. With
    common coefficients the pooled fit is on the whole design and the per-task fits are on
    the varying columns, the common part held at its pooled estimate (an offset)."""
    full = lik._design_np(tasks, full=True)
    start = lik._start(tasks, full.shape[1])
    pooled, _, _ = _glm_newton(lik, tasks, full, np.zeros(1, int), start, 1e-6)
    centre = pooled[0] if np.all(np.isfinite(pooled)) else start
    offset = 0.0
    design = full
    if lik._split is not None:
        var_idx, com_idx = (list(i) for i in lik._split[:2])
        design = full[:, var_idx]
        offset = full[:, com_idx] @ centre[com_idx]
        centre = centre[var_idx]
    est, prec, converged = _glm_newton(
        lik, tasks, design, tasks.offsets[:-1], centre, _GLM_RIDGE, offset
    )
    var = np.diagonal(np.linalg.inv(prec), axis1=1, axis2=2)
    info = np.maximum(1.0 / var - _GLM_RIDGE, 0.0)
    return GLMEstimates(est, var, info, converged)


def glm_mle_exists(lik, tasks, min_information: float = 1e-2) -> np.ndarray:
    """Whether each task's *own* likelihood has a finite, well-curved maximum (``(T,)``
    bool), for the canonical GLMs: Newton's method with a negligible ridge (1e-8) from the
    pooled fit must converge to a point where the smallest eigenvalue of the task's
    observed information ``X' W X`` exceeds ``min_information``. Separated logistic or
    binomial tasks, all-zero Poisson tasks and tasks with fewer informative rows than
    coefficients fail: their estimate runs off towards infinity, where the weights and so
    the information vanish (measured: below 3e-4 for separated and two-row logistic tasks,
    above 0.12 for tasks of 10 to 60 rows with a standard-normal covariate)."""
    full = lik._design_np(tasks, full=True)
    start = lik._start(tasks, full.shape[1])
    pooled, _, _ = _glm_newton(lik, tasks, full, np.zeros(1, int), start, 1e-6)
    centre = pooled[0] if np.all(np.isfinite(pooled)) else start
    offset, design = 0.0, full
    if lik._split is not None:
        var_idx, com_idx = (list(i) for i in lik._split[:2])
        design = full[:, var_idx]
        offset = full[:, com_idx] @ centre[com_idx]
        centre = centre[var_idx]
    est, prec, converged = _glm_newton(lik, tasks, design, tasks.offsets[:-1], centre, 1e-8, offset)
    info = prec - 1e-8 * np.eye(prec.shape[-1])
    smallest = np.linalg.eigvalsh(info)[:, 0]
    return converged & np.all(np.isfinite(est), axis=1) & (smallest > min_information)


class _RowLogDensity(dist.Distribution):
    """A distribution whose log_prob of the observed rows is given (custom likelihoods)."""

    support = dist.constraints.real

    def __init__(self, log_density):
        self._log_density = log_density
        super().__init__(batch_shape=jnp.shape(log_density))

    def log_prob(self, value):
        return self._log_density

    def sample(self, key, sample_shape=()):
        raise NotImplementedError("Custom likelihoods cannot simulate data; pass sample_fn=")


class Custom(Likelihood):
    """A likelihood from your own ``loglik_fn(theta, x, y)``, written for one task.

    Args:
      loglik_fn: ``(theta, x, y) -> scalar`` log-likelihood of one task's rows (``x`` is
        None when the TaskSet has no inputs). It must be written with ``jax.numpy``.
      param_shape: shape of one task's parameter (default ``()``).
      rowwise: True (default) when the rows are independent given ``theta`` so the
        log-likelihood is a sum over rows: then it is evaluated one row at a time (each call
        sees one-row arrays), which keeps the flat layout and gives pointwise values per row.
        False evaluates whole tasks on the padded view: ``loglik_fn(theta, x, y, mask)``
        must then ignore rows where ``mask`` is False; pointwise values are per task.
      sample_fn: optional ``(key, theta, x) -> y`` for one row, used by ``predict``.
      information_fn: optional ``(tasks) -> (num_tasks, *param_shape)`` Fisher information
        for ``parameterization="auto"`` (without it, auto means non-centred).
    """

    def __init__(
        self,
        loglik_fn: Callable,
        param_shape: tuple[int, ...] = (),
        rowwise: bool = True,
        sample_fn: Callable | None = None,
        information_fn: Callable | None = None,
        param_names: list[str] | None = None,
    ):
        if not callable(loglik_fn):
            raise ValueError("loglik_fn: expected a callable (theta, x, y) -> log-likelihood")
        self.loglik_fn = loglik_fn
        try:
            self._param_shape = tuple(int(s) for s in param_shape)
        except TypeError:
            raise ValueError(
                f"param_shape: expected a tuple of ints, got {param_shape!r}"
            ) from None
        if len(self._param_shape) > 1:
            raise ValueError("param_shape: at most one dimension is supported")
        self.rowwise = bool(rowwise)
        self.sample_fn = sample_fn
        self.information_fn = information_fn
        self.param_names = param_names

    def param_shape(self, tasks):
        return self._param_shape

    def param_dim(self, tasks):
        if not self._param_shape:
            return None
        names = self.param_names or [f"p{i}" for i in range(self._param_shape[0])]
        if len(names) != self._param_shape[0]:
            raise ValueError(f"param_names: {len(names)} names for shape {self._param_shape}")
        return "param", list(names)

    def data_arrays(self, tasks):
        out = super().data_arrays(tasks)
        if not self.rowwise:
            pad = tasks.padded()
            out["pad_y"], out["pad_mask"] = pad.y, pad.mask
            if pad.x is not None:
                out["pad_x"] = pad.x
        return out

    def validate(self, tasks):
        theta = jnp.zeros(self._param_shape)
        x, y = tasks.task_data(0)
        try:
            if self.rowwise:
                val = jax.eval_shape(self.loglik_fn, theta, None if x is None else x[:1], y[:1])
            else:
                mask = np.ones(len(y), bool)
                val = jax.eval_shape(self.loglik_fn, theta, x, y, mask)
        except Exception as err:  # report the user's function failing with our context
            raise ValueError(f"loglik_fn: failed on task {tasks.labels[0]!r}: {err}") from err
        if val.shape != ():
            raise ValueError(f"loglik_fn: must return a scalar, got shape {val.shape}")

    @property
    def per_task_density(self):
        return not self.rowwise

    def simulate_rows(self, key, theta_rows, data, extras_rows):
        if self.sample_fn is None:
            raise ValueError("predict: a Custom likelihood needs sample_fn= to simulate data")
        xs = data.get("x")
        keys = jax.random.split(key, theta_rows.shape[0])
        return jax.vmap(self.sample_fn, in_axes=(0, 0, None if xs is None else 0))(
            keys, theta_rows, xs
        )

    def row_dist(self, theta_rows, data, extras_rows):
        if self.rowwise:
            x = data.get("x")

            def one(theta, x_r, y_r):
                return self.loglik_fn(theta, None if x_r is None else x_r[None], y_r[None])

            in_x = None if x is None else 0
            lp = jax.vmap(one, in_axes=(0, in_x, 0))(theta_rows, x, data["y"])
            return _RowLogDensity(lp)
        raise AssertionError("per-task custom likelihoods are evaluated by task_log_density")

    def task_log_density(self, theta, data):
        """Per-task log-likelihood on the padded view (``rowwise=False``), shape (T,)."""
        x = data.get("pad_x")
        in_x = None if x is None else 0
        return jax.vmap(self.loglik_fn, in_axes=(0, in_x, 0, 0))(
            theta, x, data["pad_y"], data["pad_mask"]
        )

    def information(self, tasks):
        return None if self.information_fn is None else np.asarray(self.information_fn(tasks))

    def __repr__(self):
        return (
            f"Custom({getattr(self.loglik_fn, '__name__', 'loglik_fn')}, "
            f"param_shape={self._param_shape}, rowwise={self.rowwise})"
        )
