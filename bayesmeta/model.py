"""Models: a likelihood plus a population prior, built into a NumPyro model for a TaskSet.

``Hierarchical(likelihood, population)`` is partial pooling: ``theta_t ~ p(theta | phi)``
with ``phi`` learned. ``pooled(likelihood)`` shares one ``theta`` across all tasks (complete
pooling) and ``unpooled(likelihood)`` gives every task its own ``theta_t`` under a fixed
prior (no pooling). All three build to the same :class:`BuiltModel`, whose ``fn`` is a plain
NumPyro model you can hand to any NumPyro tool:

>>> import bayesmeta as bm
>>> tasks = bm.datasets.eight_schools()
>>> built = bm.Hierarchical(bm.likelihoods.NormalKnownNoise()).build(tasks)
>>> sorted(built.dims)
['mu', 'tau', 'theta', 'y']

The model's data are keyword arguments (``built.data``); the observed site is ``y`` in
an ``obs`` plate over rows (a ``task`` plate for one-estimate-per-task data) and per-task
parameters live in the ``task`` plate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from bayesmeta import likelihoods as lk
from bayesmeta import populations as pops
from bayesmeta.tasks import TaskSet

__all__ = [
    "Hierarchical",
    "Pooled",
    "Unpooled",
    "pooled",
    "unpooled",
    "BuiltModel",
    "check_dtype_range",
]


class BuiltModel(NamedTuple):
    """A model bound to one TaskSet's shapes.

    Fields:
      fn          # NumPyro model; call as fn(**data)
      data        # dict of arrays (flat layout) the model is conditioned on
      dims        # site name -> dim names after (chain, draw)
      coords      # dim name -> coordinate labels
      param_shape # shape of one task's parameter
      centered    # bool array (num_tasks, *param_shape) or None (all centred)
      obs_dim     # name of the dim of the observed site y ("obs" or "task")
      hidden      # latent site names not worth reporting (reparameterisation helpers)
      structure   # hashable key of everything fn depends on besides data (None: unknown);
                  # equal keys mean one compiled program serves both
      information # (num_tasks, *param_shape) what each task's data say about theta_t (the
                  # evidence of parameterization="auto"), or None
      regression  # the population's TaskRegression on task covariates, or None
      observed    # observed site name -> values of a user's NumPyro model; None: ``y``
    """

    fn: Callable
    data: dict
    dims: dict
    coords: dict
    param_shape: tuple
    centered: Any
    obs_dim: str
    hidden: tuple
    structure: Any = None
    information: Any = None
    regression: Any = None
    observed: Any = None  # observed site -> values, for a user's model (None: data["y"])


def _check_likelihood(likelihood: Any) -> lk.Likelihood:
    if not isinstance(likelihood, lk.Likelihood):
        raise ValueError(
            f"likelihood: expected a bm.likelihoods object, got {type(likelihood).__name__}"
        )
    return likelihood


def _check_tasks(tasks: Any) -> TaskSet:
    if not isinstance(tasks, TaskSet):
        raise ValueError(f"tasks: expected a bm.TaskSet, got {type(tasks).__name__}")
    return tasks


def check_dtype_range(tasks: TaskSet, dtype: Any = None) -> None:
    """Refuse data the model cannot represent in the dtype it will run in (float32 unless
    JAX's x64 mode is on), naming the field, the task and the row.

    The rule, per value ``v`` (``tiny``/``max``: the dtype's smallest normal and largest
    number):

    - ``y``, ``x``, ``task_x``: ``|v| <= sqrt(max)`` (the log-densities square residuals and
      the Gaussian algebra sums ``x x^T``, ``y^2``), and a nonzero ``|v| >= tiny`` (it would
      flush to zero);
    - ``se`` / ``noise_scale``: ``sqrt(tiny) <= v <= sqrt(max)``, since the algebra uses
      the variance ``v^2`` and the precision ``1 / v^2``.

    In float32 that is ``|y|, |x| <= 1.8e19`` and ``1.1e-19 <= se <= 1.8e19``; in float64
    ``1.3e154`` and ``1.5e-154``. Rescale the data (a meta-analysis is scale-equivariant)
    or enable float64 (``jax.config.update("jax_enable_x64", True)``) otherwise.

    >>> import bayesmeta as bm
    >>> tasks = bm.TaskSet.from_estimates(y=[1.0, 2.0], se=[1e-25, 1.0])
    >>> check_dtype_range(tasks, "float32")  # what a model running in float32 can hold
    Traceback (most recent call last):
    ...
    ValueError: se: 1e-25 at task '0', row 0 is outside the float32 range of a scale ...
    """
    dt = np.dtype(jnp.asarray(1.0).dtype if dtype is None else dtype)
    fi = np.finfo(dt)
    tiny, big = float(fi.tiny), float(fi.max)
    root_tiny, root_big = np.sqrt(tiny), np.sqrt(big)
    hint = "rescale the data" + ("" if dt == np.float64 else " or enable float64 (jax_enable_x64)")
    fields = [("y", tasks.y)]
    if tasks.x is not None:
        fields.append(("x", np.asarray(tasks.x, float).reshape(tasks.num_obs, -1)))
    for name, arr in fields:
        arr = np.asarray(arr, float)
        mag = np.abs(arr.reshape(tasks.num_obs, -1))
        bad = (mag > root_big) | ((mag > 0) & (mag < tiny))
        if bad.any():
            row = int(np.flatnonzero(bad.any(axis=1))[0])
            value = arr.reshape(tasks.num_obs, -1)[row][bad[row]][0]
            raise ValueError(
                f"{name}: {value:.3g} at {tasks._where(row)} is outside the {dt.name} range "
                f"the model runs in (|{name}| <= {root_big:.2g}, as it is squared, and nonzero "
                f"values >= {tiny:.2g}); {hint}"
            )
    if tasks.noise_scale is not None:
        field = "se" if tasks.is_estimates else "noise_scale"
        s = np.asarray(tasks.noise_scale, float)
        bad = (s < root_tiny) | (s > root_big)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{field}: {s[row]:.3g} at {tasks._where(row)} is outside the {dt.name} range "
                f"of a scale ({root_tiny:.2g} to {root_big:.2g}, as its square, the variance, "
                f"must be a normal {dt.name} number); {hint}"
            )
    if tasks.task_x is not None:
        mag = np.abs(np.asarray(tasks.task_x, float))
        bad = (mag > root_big) | ((mag > 0) & (mag < tiny))
        if bad.any():
            t, j = (int(i[0]) for i in np.nonzero(bad))
            raise ValueError(
                f"task_x: column {tasks.task_x_names[j]!r} has {tasks.task_x[t, j]:.3g} at task "
                f"{tasks.labels[t]!r}, outside the {dt.name} range the model runs in "
                f"(|v| <= {root_big:.2g}, nonzero |v| >= {tiny:.2g}); {hint}"
            )


class _TaskModel:
    """Shared skeleton: sample what ``theta`` depends on, then the rows of ``y``."""

    likelihood: lk.Likelihood
    theta_site = "theta"

    def hyper_sites(self) -> list[str]:
        return []

    def __getstate__(self) -> dict:
        # compiled programs (``_nuts_programs``, ...) are caches of this process: a pickled
        # model (Posterior.save) leaves them out and compiles again where it is used
        return {k: v for k, v in self.__dict__.items() if not k.endswith("_programs")}

    def _theta(self, num_tasks, param_shape, centered, task_plate, data, regression=None):
        raise NotImplementedError

    def _regression(self, tasks, param_names):
        """The population's regression on task covariates, resolved (None: none)."""
        return None

    def _theta_dims(self, param_dim):
        raise NotImplementedError

    def _extra_dims(self, param_dim) -> dict:
        return {}

    def _centered(self, tasks, param_shape, regression=None):
        """``(centring mask or None, information or None)``."""
        return None, None

    def build(self, tasks: TaskSet) -> BuiltModel:
        """Validate ``tasks`` against the likelihood and return the bound NumPyro model."""
        tasks = _check_tasks(tasks)
        likelihood = self.likelihood
        likelihood.validate(tasks)
        check_dtype_range(tasks)
        param_shape = likelihood.param_shape(tasks)
        self._check_shape(param_shape)
        pd = likelihood.param_dim(tasks)
        param_dim = None if pd is None else pd[0]
        regression = self._regression(tasks, None if pd is None else list(pd[1]))
        centered, information = self._centered(tasks, param_shape, regression)
        num_tasks, num_obs = tasks.num_tasks, tasks.num_obs
        per_task = likelihood.per_task_density
        obs_dim = "task" if (tasks.is_estimates or per_task) else "obs"
        # the centring is a model input where it is mixed, so a refit with another mask
        # reuses the compiled program; all-centred and all-non-centred are structural
        mode = _centering_mode(centered)
        counts = tasks.counts
        # equal-sized tasks (rows are task-sorted) expand theta to rows by a broadcast,
        # whose gradient is a reduction, not the scatter-add of a gather
        rows_per_task = int(counts[0]) if np.all(counts == counts[0]) else None

        def to_rows(theta, task_index):
            if rows_per_task is not None:
                shape = (num_tasks, rows_per_task, *theta.shape[1:])
                return jnp.broadcast_to(theta[:, None], shape).reshape(num_obs, *theta.shape[1:])
            return jnp.take(theta, task_index, axis=0, indices_are_sorted=True)

        def model(y=None, task_index=None, _prior=False, _centered=None, **data):
            data = dict(data, y=y, task_index=task_index)
            task_plate = numpyro.plate("task", num_tasks)
            c = None if _prior else (_centered if mode == "mixed" else mode)
            theta = self._theta(num_tasks, param_shape, c, task_plate, data, regression)
            extras = likelihood.sample_extras(num_tasks, task_plate)
            if per_task:
                with task_plate:
                    numpyro.sample(
                        "y",
                        lk._RowLogDensity(
                            likelihood.task_log_density(
                                jnp.broadcast_to(theta, (num_tasks, *param_shape)), data
                            )
                        ),
                        obs=None if y is None else jnp.zeros(num_tasks),
                    )
                return
            extras_rows = likelihood.extras_rows(extras, task_index)
            per_row = theta.ndim == len(param_shape)  # one theta for all (pooled)
            d = None
            if rows_per_task is not None and not per_row and hasattr(likelihood, "task_dist"):
                d = likelihood.task_dist(theta, data, extras_rows, rows_per_task)
            if d is None:
                d = likelihood.row_dist(
                    theta if per_row else to_rows(theta, task_index), data, extras_rows
                )
            with numpyro.plate(obs_dim, num_obs):
                numpyro.sample("y", d, obs=y)

        dims = {self.theta_site: self._theta_dims(param_dim), "y": [obs_dim]}
        dims.update(self._extra_dims(param_dim))
        for name in likelihood.global_priors():
            dims[name] = []
        for name in likelihood.task_priors():
            dims[name] = ["task"]
        nuisance_dims, nuisance_coords = getattr(likelihood, "nuisance_dims", lambda: ({}, {}))()
        dims.update(nuisance_dims)
        coords = {"task": list(tasks.labels)}
        coords.update(nuisance_coords)
        if regression is not None:
            coords["task_covariate"] = list(regression.labels)
        if obs_dim == "obs":
            coords["obs"] = list(range(num_obs))
        if pd is not None:
            coords[pd[0]] = list(pd[1])
            if isinstance(getattr(self, "population", None), pops.MvNormal):
                coords[f"{pd[0]}_bis"] = list(pd[1])
        data = {k: jnp.asarray(v) for k, v in likelihood.data_arrays(tasks).items()}
        if regression is not None:
            data["task_x"] = jnp.asarray(tasks.task_x[:, list(regression.column_ids)])
        if mode == "mixed":
            data["_centered"] = jnp.asarray(centered, dtype=jnp.result_type(float))
        hidden = (f"{self.theta_site}_raw",)
        structure = (
            num_tasks,
            num_obs,
            tuple(param_shape),
            obs_dim,
            mode,
            rows_per_task,
            likelihood.noise_mode,
            None if regression is None else tuple(regression),
            tuple(getattr(likelihood, "common_names", ())),
        )
        return BuiltModel(
            model,
            data,
            dims,
            coords,
            param_shape,
            centered,
            obs_dim,
            hidden,
            structure,
            information,
            regression,
        )

    def _check_shape(self, param_shape):
        pass


class Hierarchical(_TaskModel):
    """Partial pooling: ``y_t ~ likelihood(theta_t)``, ``theta_t ~ population(phi)``.

    Args:
      likelihood: a ``bm.likelihoods`` object (its parameter shape follows the data).
      population: a ``bm.populations`` object (default ``Normal()`` with its default
        hyperpriors ``mu ~ N(0, 5)``, ``tau ~ HalfCauchy(5)``).

    >>> import numpyro.distributions as dist, bayesmeta as bm
    >>> model = bm.Hierarchical(
    ...     likelihood=bm.likelihoods.NormalKnownNoise(),
    ...     population=bm.populations.Normal(loc=dist.Normal(0, 5), scale=dist.HalfCauchy(5)))
    """

    def __init__(self, likelihood: lk.Likelihood, population: pops.Population | None = None):
        self.likelihood = _check_likelihood(likelihood)
        if population is None:
            population = pops.Normal()
        if not isinstance(population, pops.Population):
            raise ValueError(
                f"population: expected a bm.populations object, got {type(population).__name__}"
            )
        self.population = population
        self.theta_site = population.theta_site

    def hyper_sites(self):
        return self.population.hyper_sites()

    def _check_shape(self, param_shape):
        self.population.check_shape(param_shape)

    def _regression(self, tasks, param_names):
        return self.population.task_regression(tasks, param_names)

    def _centered(self, tasks, param_shape, regression=None):
        info, rough = self.likelihood.parameterization_evidence(tasks)
        if info is not None:
            info = np.asarray(info, float).reshape((tasks.num_tasks, *param_shape))
        spread = _spread_estimate(rough, tasks, param_shape, regression)
        mask = self.population.centered_mask(info, param_shape, spread, tasks.num_tasks)
        if mask is not None and mask.shape[0] == 1 and tasks.num_tasks > 1:
            mask = np.broadcast_to(mask, (tasks.num_tasks, *param_shape))
        return mask, info

    def _theta(self, num_tasks, param_shape, centered, task_plate, data, regression=None):
        pop = self.population
        hyper = pop.sample_hyper(param_shape, regression)
        if regression is not None:
            hyper = pop.with_location(hyper, regression, data["task_x"])
        with task_plate:
            return self.population.sample_theta(hyper, param_shape, centered)

    def _theta_dims(self, param_dim):
        return ["task"] + ([param_dim] if param_dim else [])

    def _extra_dims(self, param_dim):
        return self.population.hyper_dims(param_dim)

    @classmethod
    def from_formula(cls, formula: str, data: Any, family: str = "gaussian", **options):
        """``(model, tasks)`` from a mixed-model formula and a pandas DataFrame, e.g.
        ``"log_radon ~ floor + log_uranium + (1 | county)"``. Needs the optional
        ``formulae`` package (``pip install "bayesmeta[formula]"``), which reads the
        formula (Bambi's syntax: ``x1 * x2``, categorical dummies, ``p(r, n)``).

        Rules (the full statement is the docstring of :mod:`bayesmeta._formula`):

        1. Exactly one grouping factor ``g``, whose groups are the tasks: ``(1 | g)`` a
           varying intercept (``Normal`` population), ``(1 + x | g)`` / ``(x | g)``
           correlated varying intercept and slope (``MvNormal``), ``(0 + x | g)`` a
           varying slope only. Several grouping factors, nested or crossed terms: a
           ValueError.
        2. A term that is also group-specific is varying (its population mean plays the
           common coefficient; a varying term always has a learned mean). Of the other
           common terms, one whose design columns are constant within every group enters
           the population regression of the varying intercept (``task_covariates``,
           ``{"intercept": [...]}`` when ``theta`` is a vector; without a varying
           intercept it stays common); the rest are common coefficients of the
           likelihood (site ``beta``, dim ``common``). For
           ``log_radon ~ floor + log_uranium + (1 | county)``: a varying intercept per
           county, a common ``floor``, and ``log_uranium`` in the population regression.
        3. ``family``: ``"gaussian"`` (``LinearRegression`` with a learned shared noise;
           ``likelihoods.Normal()`` for an intercept-only design), ``"bernoulli"``
           (``LogisticRegression``, 0/1 response), ``"binomial"`` (response ``p(r, n)``,
           ``Binomial``), ``"poisson"`` (``Poisson``).
        4. Coefficients and task covariates carry formulae's column names (``x1:x2``,
           ``c[b]``); the TaskSet comes from ``TaskSet.from_dataframe``.
        5. Bad input is a ValueError naming the column and, where it applies, the group
           and the row: an unknown column, a missing value in a used column, a grouping
           factor with one level, bad ``p(r, n)`` counts (non-integer, negative,
           ``r > n``), a bernoulli response that is not 0/1, collinear design columns.

        ``options``: ``population=`` (a dict of keyword arguments for the population:
        ``loc``, ``scale``, ``parameterization``, ...), ``common_prior=``,
        ``noise_prior=`` (gaussian) and ``coef=`` (the task-regression prior), passed
        through."""
        from bayesmeta._formula import parse_formula

        likelihood, population, tasks = parse_formula(formula, data, family, **options)
        return cls(likelihood, population), tasks

    def numpyro_model(self, tasks: TaskSet) -> tuple[Callable, dict]:
        """``(fn, data)``: the plain NumPyro model and its keyword data, ``fn(**data)``."""
        built = self.build(tasks)
        return built.fn, built.data

    def __repr__(self):
        return f"Hierarchical(likelihood={self.likelihood!r}, population={self.population!r})"


def _centering_mode(centered) -> Any:
    """None (all centred), False (all non-centred) or "mixed" for a centring mask."""
    if centered is None or np.all(centered):
        return None
    if not np.any(centered):
        return False
    return "mixed"


def _spread_estimate(rough, tasks, param_shape, regression=None) -> np.ndarray | None:
    """DerSimonian-Laird estimate of the between-task sd of each parameter from the
    likelihood's rough per-task estimates (None when it has none or fewer than two tasks
    have finite estimates: then the rule cannot judge and stays non-centred).

    DL (the method-of-moments estimator of ``bm.estimators.tau2_estimate(method="DL")``,
    written out here so the model layer needs nothing above it), for parameter ``d`` with
    design ``Z_d`` (a column of ones, plus the task covariates that enter ``d``'s location
    when the population has a regression), ``W = diag(1 / v)``:
    ``tau^2 = max(0, (Q_E - (k - q)) / (tr W - tr[(Z'WZ)^-1 Z'W^2 Z]))`` with the residual
    ``Q_E = y'Wy - y'WZ(Z'WZ)^-1 Z'Wy`` (Cochran's Q without covariates)."""
    if rough is None or tasks.num_tasks < 2:
        return None
    est, var = (np.asarray(a, float).reshape(tasks.num_tasks, -1) for a in rough)
    ok = np.all(np.isfinite(est), axis=1) & np.all(np.isfinite(var) & (var > 0), axis=1)
    tau2 = np.zeros(est.shape[1])
    for d in range(est.shape[1]):
        cols = [np.ones(tasks.num_tasks)]
        if regression is not None:
            z = tasks.task_x[:, list(regression.column_ids)]
            cols += [
                z[:, c] for p, c in zip(regression.param, regression.column, strict=True) if p == d
            ]
        design = np.stack(cols, axis=1)[ok]
        if ok.sum() <= design.shape[1]:
            return None
        y, w = est[ok, d], 1.0 / var[ok, d]
        zw = design * w[:, None]
        try:
            inv = np.linalg.inv(design.T @ zw)
        except np.linalg.LinAlgError:
            return None
        coef = inv @ (zw.T @ y)
        q = np.sum(w * (y - design @ coef) ** 2)
        denom = np.sum(w) - np.trace(inv @ (zw.T @ zw))
        tau2[d] = max(0.0, (q - (len(y) - design.shape[1])) / denom) if denom > 0 else 0.0
    return np.sqrt(tau2).reshape(param_shape)


def _check_prior(prior: Any) -> dist.Distribution:
    if prior is None:
        return dist.Normal(0.0, 10.0)
    if not isinstance(prior, dist.Distribution):
        raise ValueError(f"prior: expected a numpyro distribution, got {type(prior).__name__}")
    return prior


def _expand_prior(prior, param_shape):
    return pops._expand(prior, param_shape, "prior")


class Pooled(_TaskModel):
    """Complete pooling: one ``theta`` shared by every task, prior ``prior``
    (default ``Normal(0, 10)`` per component).

    >>> import bayesmeta as bm
    >>> model = bm.Pooled(bm.likelihoods.NormalKnownNoise())
    >>> model.hyper_sites()  # one theta for every task
    ['theta']
    """

    def __init__(self, likelihood: lk.Likelihood, prior: dist.Distribution | None = None):
        self.likelihood = _check_likelihood(likelihood)
        self.prior = _check_prior(prior)

    def hyper_sites(self):
        return ["theta"]

    def _theta(self, num_tasks, param_shape, centered, task_plate, data, regression=None):
        return numpyro.sample("theta", _expand_prior(self.prior, param_shape))

    def _theta_dims(self, param_dim):
        return [param_dim] if param_dim else []

    def __repr__(self):
        return f"Pooled(likelihood={self.likelihood!r})"


class Unpooled(_TaskModel):
    """No pooling: ``theta_t ~ prior`` independently per task (default ``Normal(0, 10)``).

    >>> import bayesmeta as bm
    >>> model = bm.Unpooled(bm.likelihoods.NormalKnownNoise())
    >>> model.hyper_sites()  # no population: nothing shared between tasks
    []
    """

    def __init__(self, likelihood: lk.Likelihood, prior: dist.Distribution | None = None):
        self.likelihood = _check_likelihood(likelihood)
        self.prior = _check_prior(prior)

    def _theta(self, num_tasks, param_shape, centered, task_plate, data, regression=None):
        with task_plate:
            return numpyro.sample("theta", _expand_prior(self.prior, param_shape))

    def _theta_dims(self, param_dim):
        return ["task"] + ([param_dim] if param_dim else [])

    def __repr__(self):
        return f"Unpooled(likelihood={self.likelihood!r})"


def pooled(likelihood: lk.Likelihood, prior: dist.Distribution | None = None) -> Pooled:
    """Complete pooling of ``likelihood`` (see :class:`Pooled`).

    >>> import bayesmeta as bm
    >>> isinstance(bm.pooled(bm.likelihoods.NormalKnownNoise()), bm.Pooled)
    True
    """
    return Pooled(likelihood, prior)


def unpooled(likelihood: lk.Likelihood, prior: dist.Distribution | None = None) -> Unpooled:
    """No pooling of ``likelihood`` (see :class:`Unpooled`).

    >>> import bayesmeta as bm
    >>> isinstance(bm.unpooled(bm.likelihoods.NormalKnownNoise()), bm.Unpooled)
    True
    """
    return Unpooled(likelihood, prior)


#: plate names read as the task plate of a user's NumPyro model (see build_callable)
TASK_PLATES = ("task", "tasks")


def _site_dims(
    trace, plate_dims: dict[str, str], task_size: int | None = None
) -> dict[str, list[str]]:
    """Dim names of every sample/deterministic site of ``trace``: the plate's name (renamed
    by ``plate_dims``) on the axis a plate indexes, ``{site}_dim_{i}`` elsewhere. A
    deterministic site has no event shape to count from, so its plate axis is the one
    whose length is the plate's size (the leftmost such). A deterministic site outside
    every plate whose leading axis has length ``task_size`` (the task plate's size, when no
    other plate has it) gets ``task`` there."""
    dims = {}
    for name, site in trace.items():
        if site["type"] not in ("sample", "deterministic"):
            continue
        shape = jnp.shape(site["value"])
        names = [f"{name}_dim_{i}" for i in range(len(shape))]
        event_dim = len(site["fn"].event_shape) if site["type"] == "sample" else None
        for frame in site.get("cond_indep_stack", []):
            dim_name = plate_dims.get(frame.name, frame.name)
            if event_dim is not None:
                pos = len(shape) - event_dim + frame.dim
            else:
                hits = [i for i, n in enumerate(shape) if n == frame.size]
                pos = hits[0] if hits else -1
            if 0 <= pos < len(shape) and shape[pos] == frame.size:
                names[pos] = dim_name
        # a per-task deterministic computed outside the plate (theta = mu + tau * z): its
        # leading axis is the task axis when only the task plate has that size
        if (
            site["type"] == "deterministic"
            and task_size is not None
            and shape
            and shape[0] == task_size
            and "task" not in names
            and not site.get("cond_indep_stack")
        ):
            names[0] = "task"
        dims[name] = names
    return dims


def _plates(trace) -> dict[str, int]:
    out = {}
    for site in trace.values():
        for frame in site.get("cond_indep_stack", []):
            out[frame.name] = frame.size
    return out


def build_callable(fn: Callable, tasks: Any) -> BuiltModel:
    """Wrap a user's NumPyro model for ``fit``.

    Two calling styles:

    - ``tasks`` a :class:`~bayesmeta.tasks.TaskSet`: the model is called with keyword
      arguments ``y``, ``task_index`` (the task of each row), ``num_tasks``, and ``x`` /
      ``noise_scale`` when the TaskSet has them.
    - ``tasks`` a dict of the model's own keyword arguments (the usual NumPyro style,
      ``def model(x, group, y=None)`` fitted with ``{"x": x, "group": g, "y": y}``): the
      model is called with exactly those; its observed sites are the ones given ``obs``.

    Per-task sites live in a ``numpyro.plate("task", ...)`` (or ``"tasks"``); that plate
    is the ``task`` dim of the posterior (with labels ``0..T-1`` in the dict style, the
    TaskSet's labels otherwise), other plates keep their names, and vector-valued per-task
    sites (deterministic ones included) get the plate's dim on the right axis.
    """
    from numpyro import handlers

    if isinstance(tasks, Mapping):
        return _build_user_style(fn, dict(tasks))
    tasks = _check_tasks(tasks)
    check_dtype_range(tasks)
    data = {"y": tasks.y, "task_index": tasks.task_index}
    if tasks.x is not None:
        data["x"] = tasks.x
    if tasks.noise_scale is not None:
        data["noise_scale"] = tasks.noise_scale
    data = {k: jnp.asarray(v) for k, v in data.items()}

    def model(**kw):
        kw.pop("_prior", None)
        return fn(num_tasks=tasks.num_tasks, **kw)

    try:
        trace = handlers.trace(handlers.seed(model, 0)).get_trace(**data)
    except TypeError as err:
        raise ValueError(
            f"model: a NumPyro model passed to fit with a TaskSet is called as model(y=, "
            f"task_index=, num_tasks=, x=, noise_scale=); calling it failed: {err}. A model "
            "in the usual NumPyro style can be fitted with a dict of its arguments instead: "
            "bm.fit(model, {'x': x, 'y': y, ...})"
        ) from err
    sizes = [n for p, n in _plates(trace).items() if p not in TASK_PLATES]
    dims = _site_dims(trace, {}, None if tasks.num_tasks in sizes else tasks.num_tasks)
    coords = {"task": list(tasks.labels), "obs": list(range(tasks.num_obs))}
    return BuiltModel(model, data, dims, coords, (), None, "obs", ())


def _build_user_style(fn: Callable, kwargs: dict) -> BuiltModel:
    from numpyro import handlers

    for name in kwargs:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"data: keys must be the model's argument names, got {name!r}")
    data = {}
    for name, value in kwargs.items():
        if value is None or isinstance(value, bool | int | float | str):
            data[name] = value
            continue
        try:
            arr = np.asarray(value)
        except Exception as err:  # noqa: BLE001 (any conversion failure is a usage error)
            raise ValueError(f"data['{name}']: could not convert to an array ({err})") from None
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"data['{name}']: expected numbers, got dtype {arr.dtype}")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            row = int(np.flatnonzero(~np.isfinite(arr.reshape(arr.shape[0], -1)).any(1))[0])
            raise ValueError(f"data['{name}']: non-finite value at row {row}")
        data[name] = jnp.asarray(arr)
    arrays = {k: v for k, v in data.items() if isinstance(v, jnp.ndarray)}
    static = {k: v for k, v in data.items() if k not in arrays}

    def model(**kw):
        kw.pop("_prior", None)
        return fn(**static, **kw)

    try:
        trace = handlers.trace(handlers.seed(model, 0)).get_trace(**arrays)
    except TypeError as err:
        raise ValueError(
            f"model: calling the model with the data's arguments {sorted(data)} failed: {err}"
        ) from err
    observed = {k: s for k, s in trace.items() if s["type"] == "sample" and s["is_observed"]}
    if not observed:
        raise ValueError(
            "model: no observed site (numpyro.sample(..., obs=...)) when called with the "
            f"data's arguments {sorted(data)}"
        )
    plates = _plates(trace)
    task_plate = next((p for p in TASK_PLATES if p in plates), None)
    if task_plate is None:
        raise ValueError(
            f"model: found no task plate: name the plate over tasks 'task' "
            f"(numpyro.plate('task', num_tasks)); the model's plates are {sorted(plates)}"
        )
    same_size = [p for p, n in plates.items() if n == plates[task_plate] and p != task_plate]
    dims = _site_dims(trace, {task_plate: "task"}, None if same_size else plates[task_plate])
    coords = {"task": list(range(plates[task_plate]))}
    for name, size in plates.items():
        if name != task_plate:
            coords[name] = list(range(size))
    obs_name = next(iter(observed))
    obs_dims = dims.get(obs_name) or []
    obs_dim = obs_dims[0] if obs_dims else "obs"
    built = BuiltModel(model, arrays, dims, coords, (), None, obs_dim, ())
    return built._replace(observed={k: np.asarray(s["value"]) for k, s in observed.items()})
