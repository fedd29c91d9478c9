"""Population priors over per-task parameters: ``theta_t ~ p(theta | phi)``.

A population has hyperparameters ``phi`` (location ``mu``, scale ``tau``, and a correlation
or degrees of freedom where the family needs one). Each hyperprior is a NumPyro
distribution passed by the user, or a plain number (or numpy array) to hold that
hyperparameter fixed; a tuple or list is refused as ambiguous (``loc=(0, 5)`` is not a
``Normal(0, 5)`` prior).

Defaults (documented, weakly informative for data on the unit-to-tens scale):

=============  =========================  ====================================
family         hyperparameter             default hyperprior
=============  =========================  ====================================
all            ``mu`` (location)          ``Normal(0, 5)``
all            ``tau`` (scale, per dim)   ``HalfCauchy(5)``
MvNormal       ``corr_chol`` (Cholesky)   ``LKJCholesky(dim, concentration=2)``
StudentT       ``nu`` (degrees of freedom) ``Gamma(2, 0.1)``
=============  =========================  ====================================

Site names are ``mu``, ``tau``, ``theta`` (per task, in the ``task`` plate); ``name="b"``
prefixes them (``b_mu``, ``b_tau``, ``b_theta``).

**Task-level covariates (meta-regression).** ``task_covariates=`` makes the location a
regression on what is known about each task (the TaskSet's ``task_x``)::

    theta_t ~ p(theta | mu + B z_t, tau, ...)

``task_covariates=True`` uses every column of ``task_x``; a list of names uses those (for
every parameter of a vector ``theta``); a dict ``{parameter name: [covariate names]}``
says which covariates enter which parameter's location (e.g. uranium on the intercept
only). The free entries of ``B`` are one site, ``beta_task``, with a ``task_covariate``
dim whose coordinates are the covariate names (``"intercept:log_uranium"`` style,
parameter first, for vector ``theta``); its prior is ``coef`` (default ``Normal(0, 5)``
per entry, the scale of ``mu``'s default: weakly informative for covariates on the unit
scale, so centre and scale covariates of other magnitudes). ``mu`` stays the intercept,
the location of a task whose covariates are all 0.

**Parameterisation.** ``"centered"`` samples ``theta_t ~ N(mu, tau)`` directly;
``"noncentered"`` samples ``z_t ~ N(0, 1)`` and sets ``theta_t = mu + tau z_t``;
``"auto"`` (the default) decides *per task and per dimension* from each task's own data:
a task is centred when its data pin ``theta_t`` down well inside the population's spread,

    information_t * spread**2 > 4   (CENTRING_THRESHOLD),

and non-centred otherwise. ``information_t`` is what task t's rows say about
``theta_t`` (the likelihood's ``parameterization_evidence``): ``sum_r 1/s_r**2`` for
known noise, rows over the pooled within-task variance for learned noise, the weighted
least-squares precision for linear regression, and for the logistic, Poisson and binomial
likelihoods the observed Fisher information at the task's own penalised estimate
(vectorised Newton solves with a ``N(pooled estimate, 2.5**2)`` ridge; each coefficient's
information given the others, ridge removed; see ``glm_estimates``). ``spread`` is the
DerSimonian-Laird estimate of the between-task sd from those per-task estimates and their
variances, never a prior median. The break-even of the two forms is 1; the factor 4 keeps
doubtful tasks on the safe side, because a wrongly centred task makes a funnel and a
wrongly non-centred one only costs efficiency. Where the rule cannot judge, the task is
non-centred: no information, no spread estimate (fewer than two tasks with finite
estimates; the population's scale, if fixed, then serves as the spread), or a Newton solve
that did not converge. The eight schools (estimates spread less than their standard
errors, so the spread estimate is 0) and few-row GLM tasks come out non-centred; data-rich
tasks centred. A boolean array (True = centred, shape ``(tasks,)`` or ``(tasks, dim)``)
fixes the choice by hand, e.g. the ``suggested_parameterization`` a diverging fit reports.
Mixed choices use a per-task partially centred variable ``z_t ~ N(c_t mu, tau**c_t)``,
``theta_t = mu + tau**(1-c_t) (z_t - c_t mu)`` with ``c_t`` in {0, 1}; the latent site is
``theta_raw`` and ``theta`` is deterministic.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from bayesmeta._checks import as_real_array

__all__ = ["Population", "Normal", "MvNormal", "StudentT", "TaskRegression"]

_PARAMETERIZATIONS = ("auto", "centered", "noncentered")
#: ``parameterization="auto"`` centres a task where information * spread**2 exceeds this:
#: the break-even of the two forms is 1 (normal-normal), and a factor 4 (the task's data
#: twice as precise, in sd, as the spread) keeps the doubtful cases on the safe side, since
#: a wrongly centred task makes a funnel (divergences, bias) and a wrongly non-centred one
#: only costs some efficiency
CENTRING_THRESHOLD = 4.0


def _check_hyperprior(field: str, value: Any, positive: bool) -> Any:
    if value is None:
        return None
    if isinstance(value, tuple | list):
        # (0, 5) reads like the parameters of a prior; held fixed it would silently
        # pin the hyperparameter, so a fixed vector must be an explicit array
        example = "dist.HalfNormal(5)" if positive else "dist.Normal(0, 5)"
        raise ValueError(
            f"{field}: got a {type(value).__name__} {value!r}, which is ambiguous: for a "
            f"prior pass a NumPyro distribution (e.g. {field}={example}); to hold the "
            f"hyperparameter fixed at these values pass an array "
            f"({field}=np.array({list(value)!r}))"
        )
    if isinstance(value, dist.Distribution):
        if positive:
            support = value.support
            lower = getattr(support, "lower_bound", None)
            ok = support in (dist.constraints.positive, dist.constraints.nonnegative) or (
                lower is not None and float(np.min(lower)) >= 0
            )
            if not ok:
                raise ValueError(
                    f"{field}: the hyperprior must have positive support, "
                    f"got {type(value).__name__}"
                )
        return value
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(
            f"{field}: expected a numpyro distribution or a number, got {type(value).__name__}"
        ) from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{field}: fixed value must be finite, got {value}")
    if positive and np.any(arr <= 0):
        raise ValueError(f"{field}: fixed scale must be positive, got {value}")
    return arr


def _expand(d: dist.Distribution, shape: tuple[int, ...], field: str) -> dist.Distribution:
    """A hyperprior over an array of ``shape``: broadcast a scalar prior, keep a matching one."""
    if not shape:
        if d.batch_shape or d.event_shape:
            raise ValueError(
                f"{field}: hyperprior has shape {d.batch_shape + d.event_shape}, "
                "the parameter is a scalar"
            )
        return d
    if d.event_shape == shape:
        return d
    if d.event_shape:
        raise ValueError(f"{field}: hyperprior event shape {d.event_shape} != {shape}")
    if d.batch_shape == ():
        return d.expand(shape).to_event(len(shape))
    if d.batch_shape == shape:
        return d.to_event(len(shape))
    raise ValueError(
        f"{field}: hyperprior batch shape {d.batch_shape} does not match the "
        f"per-task parameter shape {shape}"
    )


def _fixed_shape(arr: np.ndarray, shape: tuple[int, ...], field: str) -> jnp.ndarray:
    try:
        return jnp.broadcast_to(jnp.asarray(arr), shape)
    except ValueError:
        raise ValueError(
            f"{field}: fixed value of shape {arr.shape} does not fit the "
            f"per-task parameter shape {shape}"
        ) from None


class TaskRegression(NamedTuple):
    """A population's regression on task covariates, resolved against one TaskSet.

    Fields (``m`` free coefficients, the entries of ``B``):
      labels     # (m,) str: coordinate of each entry of beta_task
      param      # (m,) int: the parameter (row of B) each entry moves (0 for scalar theta)
      column     # (m,) int: the column of ``columns`` each entry multiplies
      columns    # names of the TaskSet's task_x columns used, in order
      column_ids # their indices in the TaskSet's task_x
    """

    labels: tuple
    param: tuple
    column: tuple
    columns: tuple
    column_ids: tuple


class Population(abc.ABC):
    """Abstract base: a family of priors ``p(theta | phi)`` over one task's parameters.

    A new population must write :meth:`dist` (``p(theta | phi)`` as a NumPyro
    distribution) and :meth:`_sample_theta_reparam` (the per-task partially centred draw,
    ``centered`` a 0/1 array over tasks and dims). It may override, with these defaults:
    :meth:`_hyper_priors` (``mu`` from ``loc``, ``tau`` from ``scale``), :meth:`_hyper_shape`
    (each hyperparameter has the parameter's shape), :meth:`hyper_dims`,
    :meth:`sample_hyper` / :meth:`fixed_values` (sample the distributions, fix the
    numbers), :meth:`check_shape` (vector parameters of any length),
    :meth:`_sample_theta_noncentered` (the mixed draw with every task non-centred) and
    :meth:`centered_mask` (the ``parameterization="auto"`` rule of the module docstring).
    """

    family = "population"

    def __init__(self, dim, loc, scale, parameterization, name, task_covariates=None, coef=None):
        if dim is not None and (not isinstance(dim, int | np.integer) or dim < 1):
            raise ValueError(f"dim: must be a positive integer, got {dim!r}")
        if isinstance(parameterization, str):
            if parameterization not in _PARAMETERIZATIONS:
                raise ValueError(
                    f"parameterization: must be one of {_PARAMETERIZATIONS} or a boolean "
                    f"mask (True = centred), got {parameterization!r}"
                )
        else:
            mask = np.asarray(parameterization)
            if mask.dtype != bool or mask.ndim not in (1, 2):
                raise ValueError(
                    f"parameterization: must be one of {_PARAMETERIZATIONS} or a boolean "
                    f"mask of shape (tasks,) or (tasks, parameters), got {parameterization!r}"
                )
            parameterization = mask
        if name is not None and (not isinstance(name, str) or not name.isidentifier()):
            raise ValueError(f"name: must be an identifier, got {name!r}")
        self.dim = None if dim is None else int(dim)
        self.loc = dist.Normal(0.0, 5.0) if loc is None else _check_hyperprior("loc", loc, False)
        self.scale = (
            dist.HalfCauchy(5.0) if scale is None else _check_hyperprior("scale", scale, True)
        )
        self.parameterization = parameterization
        self.name = name
        self.task_covariates = _check_task_covariates(task_covariates)
        if coef is not None and self.task_covariates is None:
            raise ValueError(
                "coef: a prior on the task-covariate coefficients needs task_covariates="
            )
        self.coef = (
            dist.Normal(0.0, 5.0) if coef is None else _check_hyperprior("coef", coef, False)
        )
        if not isinstance(self.coef, dist.Distribution):
            raise ValueError("coef: expected a numpyro distribution (the prior of beta_task)")

    # ------------------------------------------------------------------ names
    def site(self, base: str) -> str:
        return base if self.name is None else f"{self.name}_{base}"

    @property
    def theta_site(self) -> str:
        return self.site("theta")

    def hyper_sites(self) -> list[str]:
        """Names of the sampled (not fixed) hyperparameter sites."""
        sites = [
            self.site(b)
            for b, v in self._hyper_priors().items()
            if isinstance(v, dist.Distribution)
        ]
        if self.task_covariates is not None:
            sites.append(self.site("beta_task"))
        return sites

    # ------------------------------------------------------------------ task regression
    def task_regression(self, tasks, param_names: list[str] | None) -> TaskRegression | None:
        """Resolve ``task_covariates`` against ``tasks`` (None without a regression).

        ``param_names`` are the coordinates of the per-task parameter (None: a scalar).
        Raises a ValueError naming the covariate or parameter that is not there."""
        spec = self.task_covariates
        if spec is None:
            return None
        names = getattr(tasks, "task_x_names", None)
        if getattr(tasks, "task_x", None) is None:
            raise ValueError(
                "task_covariates: the population regresses on task covariates but the "
                "TaskSet has none (build it with task_x=)"
            )
        if spec is True:
            spec = list(names)
        if isinstance(spec, list):
            targets = [None] if param_names is None else list(param_names)
            spec = {p: list(spec) for p in targets}
        elif param_names is None:
            raise ValueError(
                "task_covariates: a dict maps parameter names to covariates, but the "
                "per-task parameter is a scalar (give a list of covariate names)"
            )
        labels, param, column, columns = [], [], [], []
        for p_name, covs in spec.items():
            if p_name is None:
                p_index = 0
            elif p_name not in param_names:
                raise ValueError(
                    f"task_covariates: {p_name!r} is not a parameter of the likelihood "
                    f"(parameters: {list(param_names)})"
                )
            else:
                p_index = list(param_names).index(p_name)
            for cov in covs:
                if cov not in names:
                    raise ValueError(
                        f"task_covariates: {cov!r} is not a task covariate of the TaskSet "
                        f"(task_x_names: {list(names)})"
                    )
                if cov not in columns:
                    columns.append(cov)
                labels.append(cov if param_names is None else f"{p_name}:{cov}")
                param.append(p_index)
                column.append(columns.index(cov))
        if not labels:
            raise ValueError("task_covariates: no covariates named")
        if len(set(labels)) != len(labels):
            raise ValueError(f"task_covariates: a covariate is named twice ({labels})")
        ids = tuple(list(names).index(c) for c in columns)
        return TaskRegression(tuple(labels), tuple(param), tuple(column), tuple(columns), ids)

    def with_location(
        self, hyper: dict, regression: TaskRegression | None, task_x, one_task: bool = False
    ) -> dict:
        """``hyper`` with the per-task location ``mu + B z_t`` (shape
        ``(..., T, *param_shape)``) under the key :meth:`dist` and the draws read; ``task_x``
        is ``(T, len(regression.columns))``. Without a regression ``hyper`` is returned.

        Hyperparameters with leading (draw) dims get a task axis after them, so
        :meth:`dist` has batch shape ``(draws, T)``; ``one_task=True`` takes ``task_x`` as
        one task's row ``(len(regression.columns),)`` and gives batch shape ``(draws,)``."""
        if regression is None:
            return hyper
        if one_task:
            out = self.with_location(hyper, regression, jnp.asarray(task_x)[None])
            lead = jnp.ndim(hyper[self.site("beta_task")]) - 1
            for key in [*self._population_keys(), self._loc_key]:
                if key in out and key != self.site("mu"):
                    out[key] = jnp.squeeze(out[key], lead)
            return out
        mu = hyper[self.site("mu")]
        beta = hyper[self.site("beta_task")]  # (..., m)
        z = jnp.asarray(task_x)[..., jnp.asarray(regression.column)]  # (T, m)
        contrib = beta[..., None, :] * z  # (..., T, m)
        scalar = self._scalar_location(mu, beta)
        if scalar:
            loc = mu[..., None] + jnp.sum(contrib, axis=-1)
        else:
            p = mu.shape[-1]
            onehot = np.zeros((p, len(regression.param)))
            onehot[list(regression.param), np.arange(len(regression.param))] = 1.0
            loc = mu[..., None, :] + contrib @ jnp.asarray(onehot.T)
        out = dict(hyper, **{self._loc_key: loc})
        lead = jnp.ndim(beta) - 1  # batch dims of the hyperparameters (posterior draws)
        if lead:  # give the other hyperparameters the task axis after their batch dims
            for key in self._population_keys():
                if key in out and key != self.site("mu"):
                    out[key] = jnp.expand_dims(out[key], lead)
        return out

    def _population_keys(self) -> list[str]:
        return [self.site(b) for b in self._hyper_priors()]

    def _scalar_location(self, mu, beta) -> bool:
        return jnp.ndim(mu) == jnp.ndim(beta) - 1

    @property
    def _loc_key(self) -> str:
        return self.site("mu") + "@task"

    def _loc(self, hyper: dict):
        """The location: per task when a regression set it, else ``mu``."""
        return hyper.get(self._loc_key, hyper[self.site("mu")])

    def _hyper_priors(self) -> dict[str, Any]:
        return {"mu": self.loc, "tau": self.scale}

    def fixed_values(self, param_shape: tuple[int, ...]) -> dict[str, jnp.ndarray]:
        """The fixed (non-sampled) hyperparameters, by site name."""
        out = {}
        for base, v in self._hyper_priors().items():
            if not isinstance(v, dist.Distribution) and v is not None:
                out[self.site(base)] = _fixed_shape(v, self._hyper_shape(base, param_shape), base)
        return out

    def _hyper_shape(self, base: str, param_shape: tuple[int, ...]) -> tuple[int, ...]:
        return param_shape

    def hyper_dims(self, param_dim: str | None) -> dict[str, list[str]]:
        dims = [] if param_dim is None else [param_dim]
        out = {self.site(b): dims for b in ("mu", "tau")}
        if self.task_covariates is not None:
            out[self.site("beta_task")] = ["task_covariate"]
        return out

    def check_shape(self, param_shape: tuple[int, ...]) -> None:
        """Raise if the population's ``dim`` does not match the likelihood's parameter."""
        size = int(np.prod(param_shape)) if param_shape else 1
        if len(param_shape) > 1:
            raise ValueError(
                f"population: per-task parameters of shape {param_shape} "
                "are not supported (use a vector)"
            )
        if self.dim is not None and self.dim != size:
            raise ValueError(
                f"population: dim={self.dim} but the likelihood has {size} parameter(s) per "
                "task (model/likelihood mismatch)"
            )
        # hyperpriors and fixed values against the parameter shape, before any tracing
        field = {"mu": "loc", "tau": "scale", "nu": "df"}
        for base, v in self._hyper_priors().items():
            shape = self._hyper_shape(base, param_shape)
            name = f"{field.get(base, base)} ({self.site(base)})"
            if isinstance(v, dist.Distribution):
                _expand(v, shape, name)
            elif v is not None:
                try:
                    np.broadcast_to(np.asarray(v), shape)
                except ValueError:
                    raise ValueError(
                        f"{name}: fixed value of shape {np.shape(v)} does not fit the "
                        f"per-task parameter shape {shape}"
                    ) from None

    # ------------------------------------------------------------------ numpyro pieces
    def sample_hyper(
        self, param_shape: tuple[int, ...], regression: TaskRegression | None = None
    ) -> dict[str, jnp.ndarray]:
        """Sample (inside a NumPyro model) or fix every hyperparameter; keyed by site name.
        With a ``regression``, also its coefficients ``beta_task``."""
        out = self.fixed_values(param_shape)
        for base, prior in self._hyper_priors().items():
            if isinstance(prior, dist.Distribution):
                d = _expand(prior, self._hyper_shape(base, param_shape), base)
                out[self.site(base)] = numpyro.sample(self.site(base), d)
        if regression is not None:
            d = _expand(self.coef, (len(regression.labels),), "coef")
            out[self.site("beta_task")] = numpyro.sample(self.site("beta_task"), d)
        return out

    @abc.abstractmethod
    def dist(self, hyper: dict[str, jnp.ndarray], param_shape: tuple[int, ...]):
        """``p(theta | phi)`` as a NumPyro distribution with event shape ``param_shape``.

        Hyperparameter arrays may carry leading batch dims (e.g. posterior draws); they
        become the distribution's batch shape.
        """

    def sample_theta(self, hyper, param_shape, centered) -> jnp.ndarray:
        """Sample ``theta`` inside the ``task`` plate.

        ``centered`` is None or True (all centred), False (all non-centred: ``theta_raw``
        standard normal, ``theta`` deterministic) or an array ``(num_tasks, *param_shape)``
        of 0/1 (per-task choice; it may be a traced model input).
        """
        site = self.theta_site
        if centered is None or centered is True:
            return numpyro.sample(site, self.dist(hyper, param_shape))
        if centered is False:
            return self._sample_theta_noncentered(hyper, param_shape)
        if isinstance(centered, np.ndarray) and not isinstance(centered, jnp.ndarray):
            if np.all(centered):
                return numpyro.sample(site, self.dist(hyper, param_shape))
            if not np.any(centered):
                return self._sample_theta_noncentered(hyper, param_shape)
        return self._sample_theta_reparam(hyper, param_shape, centered)

    def _sample_theta_noncentered(self, hyper, param_shape):
        """All tasks non-centred: the mixed form at c = 0, without its arithmetic."""
        return self._sample_theta_reparam(hyper, param_shape, np.zeros((1, *param_shape), bool))

    @abc.abstractmethod
    def _sample_theta_reparam(self, hyper, param_shape, centered):
        """Sample ``theta`` with task t, dim d centred where ``centered[t, d]`` is 1."""

    def centered_mask(
        self,
        information: np.ndarray | None,
        param_shape,
        spread: np.ndarray | None = None,
        num_tasks: int | None = None,
    ) -> np.ndarray | None:
        """The per-task, per-dimension choice of centring (True = centred); see module doc.

        ``information`` is ``(num_tasks, *param_shape)`` (None: the likelihood cannot say);
        ``spread`` the between-task sd estimated from the data (None: no estimate). Where
        either is missing the rule cannot judge and every task is non-centred, unless the
        population's scale is fixed (then that scale is the spread)."""
        if isinstance(self.parameterization, np.ndarray):
            return self._user_mask(param_shape, num_tasks)
        if self.parameterization == "centered":
            return None
        if self.parameterization == "noncentered" or information is None:
            shape = (1, *param_shape) if information is None else information.shape
            return np.zeros(shape, dtype=bool)
        if spread is None:
            if isinstance(self.scale, dist.Distribution):
                return np.zeros(np.shape(information), dtype=bool)
            spread = np.broadcast_to(np.asarray(self.scale, float), param_shape)
        return np.asarray(information) * np.asarray(spread) ** 2 > CENTRING_THRESHOLD

    def _user_mask(self, param_shape, num_tasks) -> np.ndarray:
        mask = self.parameterization
        want = (num_tasks, *param_shape)
        if mask.shape == (num_tasks,) and param_shape:
            mask = np.broadcast_to(mask[:, None], want)
        if mask.shape != want:
            raise ValueError(
                f"parameterization: a per-task mask must have shape {(num_tasks,)} or {want} "
                f"(tasks x parameters), got {mask.shape}"
            )
        return mask.copy()

    def __repr__(self) -> str:
        def show(v):
            if isinstance(v, dist.Distribution):
                return type(v).__name__
            return f"fixed {np.asarray(v).tolist()}"

        hp = ", ".join(f"{k}={show(v)}" for k, v in self._hyper_priors().items())
        if self.task_covariates is not None:
            hp += f", task_covariates={self.task_covariates!r}"
        return (
            f"{type(self).__name__}(dim={self.dim}, {hp}, "
            f"parameterization={self.parameterization!r}, name={self.name!r})"
        )


def _check_task_covariates(value: Any) -> Any:
    """None, True, a list of covariate names, or a dict parameter name -> list of names."""
    if value is None or value is True:
        return value
    if value is False:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            covs = [v] if isinstance(v, str) else list(v)
            if not all(isinstance(c, str) for c in covs):
                raise ValueError(f"task_covariates: {k!r} -> expected covariate names, got {v!r}")
            out[str(k)] = covs
        return out
    try:
        covs = list(value)
    except TypeError:
        covs = None
    if covs is None or not all(isinstance(c, str) for c in covs):
        raise ValueError(
            "task_covariates: expected True, a list of task covariate names or a dict "
            f"parameter -> names, got {value!r}"
        )
    return covs


def _locscale_noncentered(std, hyper_mu, hyper_tau, param_shape, site):
    """``theta = mu + tau z`` with ``z ~ std`` (standard location-scale base)."""
    if param_shape:
        std = std.expand(param_shape).to_event(len(param_shape))
    z = numpyro.sample(f"{site}_raw", std)
    return numpyro.deterministic(site, hyper_mu + hyper_tau * z)


def _locscale_partial(base_fn, hyper_mu, hyper_tau, param_shape, centered, site):
    """Partially centred location-scale draw with per-element c in {0, 1}."""
    c = jnp.asarray(centered, dtype=jnp.result_type(float))
    tau_c = jnp.where(c > 0, hyper_tau, 1.0)
    base = base_fn(c * hyper_mu, tau_c)
    if param_shape:
        base = base.to_event(len(param_shape))
    z = numpyro.sample(f"{site}_raw", base)
    theta = jnp.where(c > 0, z, hyper_mu + hyper_tau * z)
    return numpyro.deterministic(site, theta)


class Normal(Population):
    """Independent normal population: ``theta_t[d] ~ N(mu[d], tau[d])``.

    Args:
      dim: number of parameters per task (None: taken from the likelihood).
      loc: hyperprior on ``mu`` (NumPyro distribution) or a fixed number/numpy array. A
        tuple or list is a ValueError (``loc=(0, 5)`` is ambiguous: write
        ``dist.Normal(0, 5)`` for a prior, ``np.array([0, 5])`` for fixed values).
      scale: hyperprior on ``tau`` (positive support) or a fixed positive number/numpy
        array (a tuple or list: as ``loc``).
      parameterization: ``"auto"`` (default), ``"centered"``, ``"noncentered"`` or a
        boolean mask over tasks (True = centred); see the module docstring.
      name: optional prefix for the site names.
      task_covariates: None (no regression), True (every column of the TaskSet's
        ``task_x``), a list of their names, or a dict parameter name -> names: the location
        becomes ``mu + B z_t`` (see the module docstring).
      coef: prior of the regression coefficients ``beta_task`` (default ``Normal(0, 5)``).

    >>> import numpyro.distributions as dist, bayesmeta as bm
    >>> pop = bm.populations.Normal(loc=dist.Normal(0, 5), scale=dist.HalfCauchy(5))
    """

    family = "normal"

    def __init__(
        self,
        dim=None,
        loc=None,
        scale=None,
        parameterization="auto",
        name=None,
        task_covariates=None,
        coef=None,
    ):
        super().__init__(dim, loc, scale, parameterization, name, task_covariates, coef)

    def dist(self, hyper, param_shape):
        d = dist.Normal(self._loc(hyper), hyper[self.site("tau")])
        return d.to_event(len(param_shape)) if param_shape else d

    def _sample_theta_noncentered(self, hyper, param_shape):
        return _locscale_noncentered(
            dist.Normal(0.0, 1.0),
            self._loc(hyper),
            hyper[self.site("tau")],
            param_shape,
            self.theta_site,
        )

    def _sample_theta_reparam(self, hyper, param_shape, centered):
        return _locscale_partial(
            dist.Normal,
            self._loc(hyper),
            hyper[self.site("tau")],
            param_shape,
            centered,
            self.theta_site,
        )


class StudentT(Population):
    """Heavy-tailed population: ``theta_t[d] ~ StudentT(nu, mu[d], tau[d])``.

    ``df`` is the hyperprior on the degrees of freedom ``nu`` (default ``Gamma(2, 0.1)``,
    Juárez & Steel 2010) or a fixed number. Other arguments as :class:`Normal`.
    """

    family = "studentt"

    def __init__(
        self,
        dim=None,
        loc=None,
        scale=None,
        df=None,
        parameterization="auto",
        name=None,
        task_covariates=None,
        coef=None,
    ):
        super().__init__(dim, loc, scale, parameterization, name, task_covariates, coef)
        self.df = dist.Gamma(2.0, 0.1) if df is None else _check_hyperprior("df", df, True)

    def _hyper_priors(self):
        return {"mu": self.loc, "tau": self.scale, "nu": self.df}

    def _hyper_shape(self, base, param_shape):
        return () if base == "nu" else param_shape

    def hyper_dims(self, param_dim):
        out = super().hyper_dims(param_dim)
        out[self.site("nu")] = []
        return out

    def _nu(self, hyper, param_shape):
        nu = hyper[self.site("nu")]
        return nu[..., None] if param_shape else nu

    def dist(self, hyper, param_shape):
        d = dist.StudentT(self._nu(hyper, param_shape), self._loc(hyper), hyper[self.site("tau")])
        return d.to_event(len(param_shape)) if param_shape else d

    def _sample_theta_noncentered(self, hyper, param_shape):
        nu = self._nu(hyper, param_shape)
        return _locscale_noncentered(
            dist.StudentT(nu, 0.0, 1.0),
            self._loc(hyper),
            hyper[self.site("tau")],
            param_shape,
            self.theta_site,
        )

    def _sample_theta_reparam(self, hyper, param_shape, centered):
        nu = self._nu(hyper, param_shape)
        return _locscale_partial(
            lambda m, s: dist.StudentT(nu, m, s),
            self._loc(hyper),
            hyper[self.site("tau")],
            param_shape,
            centered,
            self.theta_site,
        )


class MvNormal(Population):
    """Correlated normal population: ``theta_t ~ MvN(mu, diag(tau) R diag(tau))``.

    The correlation ``R = L L^T`` has an LKJ prior on its Cholesky factor ``L`` (site
    ``corr_chol``); ``corr`` is the LKJ concentration (default 2; 1 is uniform over
    correlation matrices) or a fixed correlation matrix.

    Args:
      dim: number of parameters per task (>= 2; None: taken from the likelihood).
      loc, scale, parameterization, name: as :class:`Normal`.
      corr: LKJ concentration (float > 0) or a fixed ``(dim, dim)`` correlation matrix.
    """

    family = "mvnormal"

    def __init__(
        self,
        dim=None,
        loc=None,
        scale=None,
        corr=2.0,
        parameterization="auto",
        name=None,
        task_covariates=None,
        coef=None,
    ):
        super().__init__(dim, loc, scale, parameterization, name, task_covariates, coef)
        try:
            corr_arr = as_real_array("corr", corr)
        except ValueError:
            raise ValueError(
                f"corr: expected an LKJ concentration (a number > 0) or a fixed correlation "
                f"matrix, got {corr!r}"
            ) from None
        if corr_arr.ndim == 0:
            if not corr_arr > 0:
                raise ValueError(f"corr: LKJ concentration must be positive, got {corr}")
            self.corr_concentration, self.corr_fixed = float(corr_arr), None
        else:
            if corr_arr.ndim != 2 or corr_arr.shape[0] != corr_arr.shape[1]:
                raise ValueError(
                    f"corr: expected a square correlation matrix, got shape {corr_arr.shape}"
                )
            if not np.allclose(np.diag(corr_arr), 1) or not np.allclose(corr_arr, corr_arr.T):
                raise ValueError("corr: a correlation matrix needs a unit diagonal and symmetry")
            try:
                chol = np.linalg.cholesky(corr_arr)
            except np.linalg.LinAlgError:
                raise ValueError("corr: the correlation matrix is not positive definite") from None
            self.corr_concentration, self.corr_fixed = None, chol

    def check_shape(self, param_shape):
        super().check_shape(param_shape)
        if len(param_shape) != 1 or param_shape[0] < 2:
            raise ValueError(
                "population: MvNormal needs a vector of >= 2 parameters per task "
                f"(the likelihood has shape {param_shape}); use Normal"
            )
        if self.corr_fixed is not None and self.corr_fixed.shape[0] != param_shape[0]:
            raise ValueError(
                f"corr: fixed matrix is {self.corr_fixed.shape}, the likelihood has "
                f"{param_shape[0]} parameters"
            )

    def hyper_sites(self):
        sites = super().hyper_sites()
        if self.corr_fixed is None:
            sites.append(self.site("corr_chol"))
        return sites

    def hyper_dims(self, param_dim):
        out = super().hyper_dims(param_dim)
        pd = param_dim or "param"
        out[self.site("corr_chol")] = [pd, f"{pd}_bis"]
        return out

    def fixed_values(self, param_shape):
        out = super().fixed_values(param_shape)
        if self.corr_fixed is not None:
            out[self.site("corr_chol")] = jnp.asarray(self.corr_fixed)
        return out

    def sample_hyper(self, param_shape, regression=None):
        out = super().sample_hyper(param_shape, regression)
        if self.corr_fixed is None:
            out[self.site("corr_chol")] = numpyro.sample(
                self.site("corr_chol"), dist.LKJCholesky(param_shape[0], self.corr_concentration)
            )
        return out

    def _population_keys(self):
        return super()._population_keys() + [self.site("corr_chol")]

    def _scale_tril(self, hyper):
        return hyper[self.site("tau")][..., :, None] * hyper[self.site("corr_chol")]

    def dist(self, hyper, param_shape):
        return dist.MultivariateNormal(self._loc(hyper), scale_tril=self._scale_tril(hyper))

    def centered_mask(self, information, param_shape, spread=None, num_tasks=None):
        mask = super().centered_mask(information, param_shape, spread, num_tasks)
        if mask is None:
            return None
        # the correlated draw centres whole vectors: a task is centred when all its
        # dimensions are well informed
        return np.broadcast_to(np.all(mask, axis=-1, keepdims=True), mask.shape)

    def _sample_theta_noncentered(self, hyper, param_shape):
        site = self.theta_site
        z = numpyro.sample(f"{site}_raw", dist.Normal(0.0, 1.0).expand(param_shape).to_event(1))
        mu, tril = self._loc(hyper), self._scale_tril(hyper)
        return numpyro.deterministic(site, mu + z @ jnp.swapaxes(tril, -1, -2))

    def _sample_theta_reparam(self, hyper, param_shape, centered):
        site = self.theta_site
        c = jnp.asarray(centered[..., 0], dtype=jnp.result_type(float))  # (T,)
        mu, tril = self._loc(hyper), self._scale_tril(hyper)
        # z is an unconstrained latent whose density is added by hand: MvN(z; mu, S) where
        # centred, N(z; 0, I) where not (theta = mu + S z)
        z = numpyro.sample(
            f"{site}_raw", dist.Normal(0.0, 1.0).expand(param_shape).to_event(1).mask(False)
        )
        lp_c = dist.MultivariateNormal(mu, scale_tril=tril).log_prob(z)
        lp_n = dist.Normal(0.0, 1.0).expand(param_shape).to_event(1).log_prob(z)
        numpyro.factor(f"{site}_raw_lp", c * lp_c + (1.0 - c) * lp_n)
        theta = jnp.where(c[:, None] > 0, z, mu + z @ jnp.swapaxes(tril, -1, -2))
        return numpyro.deterministic(site, theta)
