"""``Posterior``: the one output type of every method (NUTS, VI, exact, collapsed, meta-learners).

Draws are stored as numpy arrays with ``(chain, draw)`` leading dims plus named dims
(``task`` with the task labels as coordinates, and named parameter dims), so the same
ArviZ export and the same plots work whatever produced them.

>>> import bayesmeta as bm
>>> post = bm.fit(bm.Hierarchical(bm.likelihoods.NormalKnownNoise()),
...               bm.datasets.eight_schools(), num_chains=2, num_samples=200,
...               num_warmup=200)  # doctest: +SKIP
>>> post.samples["theta"].shape  # doctest: +SKIP
(2, 200, 8)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from bayesmeta import arviz as bm_arviz
from bayesmeta import saving
from bayesmeta._checks import check_seed
from bayesmeta.info import FitInfo, info_from
from bayesmeta.likelihoods import Binomial
from bayesmeta.model import Hierarchical
from bayesmeta.tasks import TaskSet

__all__ = ["Posterior", "load_posterior"]


def _row_coords(tasks: TaskSet) -> dict:
    """Each stored row's task label and the caller's label of that row."""
    labels = np.asarray(tasks.labels, dtype=object)[tasks.task_index].astype(str)
    rows = np.asarray(tasks.row_ids)
    if not np.issubdtype(rows.dtype, np.number):  # a DataFrame's non-numeric index
        rows = rows.astype(str)
    return {"task": labels, "row": rows}


class Posterior:
    """Posterior draws of a model fitted to a TaskSet.

    Args:
      samples: site name -> array ``(chain, draw, *shape)``.
      method: what produced the draws (``"nuts"``, ``"vi"``, ``"exact"``, ...).
      dims: site name -> names of the dims after ``(chain, draw)``.
      coords: dim name -> coordinate values (``"task"`` -> the task labels).
      tasks: the TaskSet the draws condition on (or the new tasks, after ``adapt``).
      model: the ``bm.Hierarchical`` (or pooled/unpooled model) when there is one.
      sample_stats: sampler statistics, each ``(chain, draw)`` (NUTS: ``diverging``, ...).
      log_likelihood: pointwise log-likelihood, each ``(chain, draw, *obs_shape)``; or a
        function of no arguments returning that dict, called on first access of
        ``post.log_likelihood`` (or by ``to_arviz``/LOO), so a fit pays for the pointwise
        values only when they are used.
      observed_data: the observed values by site name.
      info: what the engine reports besides the draws: a typed record of
        :mod:`bayesmeta.info` (a plain mapping becomes a :class:`~bayesmeta.info.FitInfo`,
        its unknown keys in ``extra``); read as ``post.info.timing`` or ``post.info["timing"]``.

    >>> import bayesmeta as bm
    >>> model = bm.Hierarchical(bm.likelihoods.NormalKnownNoise(), bm.populations.Normal())
    >>> post = bm.fit(model, bm.datasets.eight_schools(), method="exact", num_samples=100)
    >>> isinstance(post, bm.Posterior), post.dims["theta"], post.samples["mu"].shape
    (True, ['task'], (4, 100))
    >>> new = bm.TaskSet.from_estimates(y=[5.0], se=[10.0], labels=["new school"])
    >>> # a new task's posterior, without refitting (it compiles: seconds)
    >>> post.adapt(new).labels  # doctest: +SKIP
    ('new school',)
    """

    def __init__(
        self,
        samples: dict,
        *,
        method: str,
        dims: dict | None = None,
        coords: dict | None = None,
        tasks: TaskSet | None = None,
        model: Any = None,
        sample_stats: dict | None = None,
        log_likelihood: dict | Callable[[], dict] | None = None,
        observed_data: dict | None = None,
        info: dict | None = None,
        param_shape: tuple | None = None,
    ):
        if not samples:
            raise ValueError("samples: a Posterior needs at least one variable")
        self.samples = {k: np.asarray(v) for k, v in samples.items()}
        lead = {v.shape[:2] for v in self.samples.values()}
        if any(v.ndim < 2 for v in self.samples.values()) or len(lead) != 1:
            raise ValueError(
                f"samples: every variable needs the same (chain, draw) leading dims, "
                f"got {sorted(lead)}"
            )
        self.method = method
        self.dims = dict(dims or {})
        self.coords = dict(coords or {})
        self.tasks = tasks
        self.model = model
        self.sample_stats = {k: np.asarray(v) for k, v in (sample_stats or {}).items()}
        self._log_likelihood = None
        self._log_likelihood_fn = None
        if callable(log_likelihood):
            self._log_likelihood_fn = log_likelihood
        else:
            self.log_likelihood = log_likelihood
        self.observed_data = {k: np.asarray(v) for k, v in (observed_data or {}).items()}
        # a typed record per engine (bayesmeta.info), read as fields or as a mapping
        self.info = info if isinstance(info, FitInfo) else info_from(info)
        self.param_shape = param_shape

    # ------------------------------------------------------------------ basics
    @property
    def log_likelihood(self) -> dict:
        """Pointwise log-likelihood ``{site: (chain, draw, *obs_shape)}``; computed on first
        access when the method deferred it."""
        if self._log_likelihood is None:
            fn = self._log_likelihood_fn
            self.log_likelihood = fn() if fn is not None else {}
        return self._log_likelihood

    @log_likelihood.setter
    def log_likelihood(self, value: dict | None) -> None:
        self._log_likelihood = {k: np.asarray(v) for k, v in (value or {}).items()}
        self._log_likelihood_fn = None

    @property
    def num_chains(self) -> int:
        return next(iter(self.samples.values())).shape[0]

    @property
    def num_draws(self) -> int:
        return next(iter(self.samples.values())).shape[1]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.coords.get("task", ()))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.samples[name]

    def flat(self, name: str) -> np.ndarray:
        """Draws of one site with chains concatenated: ``(chain * draw, *shape)``."""
        x = self.samples[name]
        return x.reshape(-1, *x.shape[2:])

    def mean(self, name: str) -> np.ndarray:
        return self.flat(name).mean(axis=0)

    def sd(self, name: str) -> np.ndarray:
        return self.flat(name).std(axis=0, ddof=1)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{tuple(v.shape[2:])}" for k, v in self.samples.items())
        return (
            f"Posterior(method={self.method!r}, chains={self.num_chains}, "
            f"draws={self.num_draws}, {shapes})"
        )

    # ------------------------------------------------------------------ ArviZ
    def to_arviz(
        self,
        prior: bool = False,
        num_prior_draws: int = 500,
        seed: int = 0,
        *,
        posterior_predictive: bool = False,
        predictions: Any = None,
    ):
        """Export through ArviZ's own converters: ``InferenceData`` on ArviZ 0.x, a
        ``DataTree`` on ArviZ 1.x.

        Groups:

        - ``posterior``; ``sample_stats`` when the sampler has them;
        - ``observed_data``: ``y`` on dim ``obs`` (rows) or ``task`` (one estimate per
          task), with non-index coordinates ``task`` (each row's task label) and ``row``
          (the caller's row label: a position, or a DataFrame's index label) on ``obs``;
        - ``log_likelihood``: pointwise ``y``, same dims and coordinates;
        - ``constant_data``: ``task_index`` (``obs``, the position of each row's task on the
          ``task`` coordinate), ``x`` (``obs``, ``feature``; column names as coordinates),
          ``trials`` (``obs``, Binomial), ``noise_scale`` (``obs``, the known noise sd of each
          row) or ``se`` (``task``, the standard errors of a meta-analysis), ``task_x``
          (``task``, ``task_covariate``);
        - ``posterior_predictive`` (``posterior_predictive=True``): one replicate of ``y``
          per posterior draw, drawn from the model's likelihood given that draw (as
          :meth:`predict`), same dims and coordinates as ``observed_data``; needed by
          ``az.plot_ppc`` and ``az.plot_loo_pit``. Off by default: it costs one simulation
          of every row per draw (``chain x draw x obs`` values);
        - ``predictions`` and ``predictions_constant_data`` (``predictions=``): draws of
          ``y`` at new rows, dim ``obs`` (its own ``0..m-1``) with coordinates ``task`` and
          ``row``, and the new rows' ``x``/``noise_scale``/``task_index``. ``predictions`` is
          a TaskSet of query rows (their ``y`` is not used): a task whose label is one of
          this posterior's tasks (the fitted ones, or the new ones of ``post.adapt(...)``)
          is predicted from its own draws, any other label as a brand-new task from
          :meth:`population` (with the TaskSet's ``task_x`` when the population regresses
          on them). Or a dict of :meth:`predict`'s arguments (``x``, ``task``,
          ``noise_scale``, ``num_obs``, ``task_x``) for one block of rows;
        - ``prior`` (``prior=True``): prior draws of every parameter and the prior
          predictive of ``y``.

        Every group with an ``obs`` dim lists the rows in the caller's order (the order of
        the CSV file, DataFrame or arrays the TaskSet was built from), although the TaskSet
        stores them sorted by task. Attributes: ``creation_library`` ``"bayesmeta"`` with
        its version, ``inference_library`` ``"numpyro"`` with its version, ``method``.

        >>> import bayesmeta as bm
        >>> post = bm.fit(bm.Hierarchical(bm.likelihoods.NormalKnownNoise()),
        ...               bm.datasets.eight_schools(), num_chains=2, num_samples=100,
        ...               num_warmup=100)  # doctest: +SKIP
        >>> data = post.to_arviz(posterior_predictive=True)  # doctest: +SKIP
        >>> az.plot_ppc(data)  # doctest: +SKIP
        """
        order = self._row_order()

        def rows(values, axis=-1):  # stored (task-sorted) rows -> the caller's order
            values = np.asarray(values)
            return values if order is None else np.take(values, order, axis=axis)

        seed = check_seed(seed)
        prior_draws, prior_pred = None, None
        if prior:
            prior_draws, prior_pred = self._prior_draws(num_prior_draws, seed)
            if prior_pred is not None:
                prior_pred = {k: rows(v) for k, v in prior_pred.items()}
        observed = {k: rows(v) for k, v in self.observed_data.items()}
        loglik = {k: rows(v) for k, v in self.log_likelihood.items()}
        pp = None
        if posterior_predictive:
            pp = {"y": rows(self._replicate_y(seed))}
        constant, const_dims, const_coords = self._constant_data(self.tasks, rows)
        dims = dict(self.dims)
        coords = dict(self.coords)
        for name, names in const_dims.items():
            dims.setdefault(name, names)
        for dim, labels in const_coords.items():
            coords.setdefault(dim, labels)
        pred = self._predictions(predictions, seed) if predictions is not None else None
        obs_coords = self._obs_coords()
        if obs_coords is not None:
            obs_coords = {k: rows(v) for k, v in obs_coords.items()}
        return bm_arviz.to_arviz(
            self.samples,
            dims=dims,
            coords=coords,
            sample_stats=self.sample_stats or None,
            log_likelihood=loglik or None,
            observed_data=observed or None,
            posterior_predictive=pp,
            constant_data=constant or None,
            prior=prior_draws,
            prior_predictive=prior_pred,
            predictions=None if pred is None else pred["predictions"],
            predictions_constant_data=None if pred is None else pred["constant"],
            pred_dims=None if pred is None else pred["dims"],
            pred_coords=None if pred is None else pred["coords"],
            pred_obs_coords=None if pred is None else pred["obs_coords"],
            attrs={"method": self.method},
            obs_coords=obs_coords,
        )

    def _row_order(self) -> np.ndarray | None:
        """Stored-row indices in the caller's order, when ``y`` has one value per row."""
        if self.tasks is None or self.dims.get("y") != ["obs"]:
            return None
        order = self.tasks.input_order
        return None if np.array_equal(order, np.arange(order.shape[0])) else order

    def _obs_coords(self) -> dict | None:
        """The task label and the caller's row label of every stored row (``obs``)."""
        tasks = self.tasks
        if tasks is None or self.dims.get("y") != ["obs"]:
            return None
        return _row_coords(tasks)

    def _replicate_y(self, seed: int) -> np.ndarray:
        """One draw of every observed row's ``y`` per posterior draw, stored order."""
        from bayesmeta.inference.adapt import check_seed, predict

        if self.tasks is None or not hasattr(self.model, "likelihood"):
            raise ValueError(
                "posterior_predictive: needs a posterior of a bayesmeta model (this one came "
                f"from {self.method!r} with model {type(self.model).__name__})"
            )
        key = jax.random.PRNGKey(check_seed(seed, "Posterior.to_arviz"))
        y = predict(self, jax.random.fold_in(key, 1))
        observed = self.observed_data.get("y")
        if observed is not None and y.shape[2:] != observed.shape:
            raise ValueError(
                f"posterior_predictive: the likelihood simulates {y.shape[2:]} values but "
                f"observed_data['y'] has shape {observed.shape}"
            )
        return y

    def _constant_data(self, tasks: TaskSet | None, rows: Callable) -> tuple[dict, dict, dict]:
        """``constant_data`` arrays with their dims and coords (rows via ``rows``)."""
        if tasks is None:
            return {}, {}, {}
        lik = getattr(self.model, "likelihood", None)
        arrays = lik.data_arrays(tasks) if lik is not None else {}
        x = arrays.get("x", tasks.x)
        noise = arrays.get("noise_scale", tasks.noise_scale)
        out, dims, coords = {}, {}, {}
        obs_dim = self.dims.get("y", ["obs"])[0] if self.dims.get("y") else "obs"
        if tasks.is_estimates or obs_dim == "task":
            if noise is not None and np.shape(noise) == (tasks.num_tasks,):
                name = "se" if tasks.is_estimates else "noise_scale"
                out[name], dims[name] = np.asarray(noise, float), ["task"]
        else:
            out["task_index"], dims["task_index"] = rows(tasks.task_index), ["obs"]
            if x is not None:
                x = np.asarray(x, float)
                names = list(tasks.feature_names or [f"x{i}" for i in range(x.shape[1])])
                if isinstance(lik, Binomial) and x.ndim == 2:
                    out["trials"], dims["trials"] = rows(x[:, 0]), ["obs"]
                out["x"], dims["x"] = rows(x, axis=0), ["obs", "feature"]
                if x.ndim == 2 and len(names) == x.shape[1]:
                    coords["feature"] = names
            if noise is not None and np.shape(noise) == (tasks.num_obs,):
                out["noise_scale"], dims["noise_scale"] = rows(noise), ["obs"]
        if tasks.task_x is not None:
            out["task_x"], dims["task_x"] = tasks.task_x, ["task", "task_covariate"]
            coords["task_covariate"] = list(tasks.task_x_names)
        # a site of the model with the same name keeps its name; the data gives way
        clash = [k for k in out if k in self.samples or k in self.observed_data]
        for name in clash:
            out.pop(name)
            dims.pop(name)
        return out, dims, coords

    def _predictions(self, predictions: Any, seed: int) -> dict:
        """The ``predictions`` and ``predictions_constant_data`` groups (see to_arviz)."""
        from bayesmeta.inference.adapt import check_seed, predict

        key = jax.random.PRNGKey(check_seed(seed, "Posterior.to_arviz"))
        key = jax.random.fold_in(key, 2)
        known = set(self.tasks.labels) if self.tasks is not None else set()
        blocks = []  # (predict kwargs, task label, row labels)
        if isinstance(predictions, TaskSet):
            query = predictions
            for t, label in enumerate(query.labels):
                sl = query.task_rows(t)
                kwargs = {"num_obs": int(sl.stop - sl.start)}
                if query.x is not None:
                    kwargs["x"] = query.x[sl]
                if query.noise_scale is not None:
                    kwargs["noise_scale"] = query.noise_scale[sl]
                if label in known:
                    kwargs["task"] = label
                elif query.task_x is not None:
                    kwargs["task_x"] = dict(zip(query.task_x_names, query.task_x[t], strict=True))
                blocks.append((kwargs, label, query.row_ids[sl], query.row_order[sl]))
        elif isinstance(predictions, dict):
            allowed = {"x", "task", "noise_scale", "num_obs", "task_x"}
            unknown = sorted(set(predictions) - allowed)
            if unknown:
                raise ValueError(
                    f"predictions: unknown keys {unknown}; expected some of {sorted(allowed)}"
                )
            kwargs = dict(predictions)
            task = kwargs.get("task")
            label = "new" if task is None else self.tasks.labels[self.tasks._index_of(task)]
            blocks.append((kwargs, label, None, None))
        else:
            raise ValueError(
                "predictions: expected a bm.TaskSet of query rows or a dict of "
                f"Posterior.predict's arguments, got {type(predictions).__name__}"
            )
        ys, labels, row_ids, row_order, xs, noises, task_index = [], [], [], [], [], [], []
        for b, (kwargs, label, ids, positions) in enumerate(blocks):
            if kwargs.get("x") is None and kwargs.get("num_obs") is None:
                raise ValueError("predictions: give x (or num_obs for tasks without inputs)")
            y = predict(self, jax.random.fold_in(key, b), **kwargs)
            n = y.shape[2]
            ys.append(y)
            labels += [label] * n
            row_ids.append(np.arange(n) if ids is None else np.asarray(ids))
            # a dict gives one block, already in the caller's order
            row_order.append(np.arange(n) if positions is None else np.asarray(positions))
            if kwargs.get("x") is not None:
                x = np.asarray(kwargs["x"], float)
                xs.append(x[:, None] if x.ndim == 1 else x)
            if kwargs.get("noise_scale") is not None:
                noises.append(np.broadcast_to(np.asarray(kwargs["noise_scale"], float), (n,)))
            task_index += [b] * n
        order = np.argsort(np.concatenate(row_order), kind="stable")
        group = {"y": np.concatenate(ys, axis=2)[..., order]}
        constant = {"task_index": np.asarray(task_index)[order]}
        dims = {"y": ["obs"], "task_index": ["obs"]}
        coords = {"obs": list(range(len(order)))}
        if xs and len(xs) == len(blocks):
            constant["x"], dims["x"] = np.concatenate(xs)[order], ["obs", "feature"]
            names = getattr(self.tasks, "feature_names", None)
            if names is not None and len(names) == constant["x"].shape[1]:
                coords["feature"] = list(names)
        if noises and len(noises) == len(blocks):
            constant["noise_scale"], dims["noise_scale"] = np.concatenate(noises)[order], ["obs"]
        rows = np.concatenate(row_ids)[order]
        if not np.issubdtype(rows.dtype, np.number):
            rows = rows.astype(str)
        obs_coords = {"task": np.asarray(labels, dtype=object)[order].astype(str), "row": rows}
        return {
            "predictions": group,
            "constant": constant,
            "dims": dims,
            "coords": coords,
            "obs_coords": obs_coords,
        }

    def _prior_draws(self, num_draws: int, seed: int):
        from numpyro.infer import Predictive

        if self.model is None or self.tasks is None:
            raise ValueError("prior: this posterior has no model to draw prior samples from")
        built = self.model.build(self.tasks)
        data = {k: v for k, v in built.data.items() if k != "y"}
        draws = Predictive(built.fn, num_samples=num_draws)(
            jax.random.PRNGKey(seed), y=None, _prior=True, **data
        )
        draws = {k: np.asarray(v)[None] for k, v in draws.items() if k not in built.hidden}
        pred = {"y": draws.pop("y")} if "y" in draws else None
        return {k: v for k, v in draws.items() if k in self.samples}, pred

    # ------------------------------------------------------------------ saving
    def save(self, path: str) -> str:
        """Save to ``path`` (NetCDF-4, atomically) so :func:`load_posterior` rebuilds this
        Posterior whole: its draws, sampler statistics, pointwise log-likelihood, ``info``,
        and the model and data that ``population()``, ``adapt()`` and ``predict()`` need.
        ``arviz.from_netcdf(path)`` reads the same file as ArviZ data (its ``bayesmeta``
        group holds the rest; see :mod:`bayesmeta.saving`). Returns the absolute path.

        >>> import os, tempfile, bayesmeta as bm
        >>> post = bm.exact.normal_normal(bm.datasets.eight_schools(), num_samples=100)
        >>> path = post.save(os.path.join(tempfile.mkdtemp(), "fit.nc"))
        >>> back = bm.load_posterior(path)
        >>> bool((back["tau"] == post["tau"]).all()), back.labels == post.labels
        (True, True)
        """
        import warnings

        path = saving.check_writable(path)
        model = self.model
        if model is not None and not saving._picklable(model):
            warnings.warn(
                f"Posterior.save: the model ({type(model).__name__}) cannot be pickled, so the "
                "loaded posterior has no model: population(), adapt() and predict() will not "
                "work after loading",
                UserWarning,
                stacklevel=2,
            )
            model = None
        ll = self.log_likelihood
        data = self.to_arviz()
        state = {
            "method": self.method,
            "dims": self.dims,
            "coords": self.coords,
            "tasks": self.tasks,
            "model": model,
            "observed_data": self.observed_data,
            "info": _storable_info(self.info),
            "param_shape": self.param_shape,
        }
        arrays = {"posterior": self.samples}
        if self.sample_stats:
            arrays["sample_stats"] = self.sample_stats
        if ll:
            arrays["log_likelihood"] = ll
        saving.write_posterior(path, data, arrays, state)
        return path

    def summary(self, var_names: list[str] | None = None, **kwargs):
        """ArviZ's summary table (a pandas DataFrame) of the posterior group.

        Rounded as ArviZ rounds it (3 decimals, whole ESS, R-hat to 2 decimals), with
        ArviZ's interval columns ``hdi_3%``/``hdi_97%``; keyword arguments go to
        :func:`bayesmeta.arviz.summary` (``ci_prob``, ``ci_kind``, ``round_to="none"`` for
        raw numbers, ``group``).
        """

        return bm_arviz.summary(self.to_arviz(), var_names=var_names, **kwargs)

    # ------------------------------------------------------------------ new tasks
    def _hyper_draws(self) -> dict[str, jnp.ndarray]:
        """Flattened draws ``(S, ...)`` of the population hyperparameters (fixed ones
        broadcast) and of the likelihood's shared nuisance parameters."""
        model = self._require_hierarchical()
        pop = model.population
        out = {}
        num = self.num_chains * self.num_draws
        for name, value in pop.fixed_values(self.param_shape).items():
            out[name] = jnp.broadcast_to(value, (num, *jnp.shape(value)))
        for name in pop.hyper_sites():
            out[name] = jnp.asarray(self.flat(name))
        for name in model.likelihood.global_priors():
            out[name] = jnp.asarray(self.flat(name))
        return out

    def _require_hierarchical(self):

        if not isinstance(self.model, Hierarchical) or self.param_shape is None:
            raise ValueError(
                "population: needs a posterior of a bm.Hierarchical model "
                f"(this one came from {self.method!r} with model "
                f"{type(self.model).__name__})"
            )
        return self.model

    def _regression(self):
        """The population's regression on task covariates as fitted (None: none)."""
        model = self._require_hierarchical()
        pd = model.likelihood.param_dim(self.tasks)
        return model.population.task_regression(self.tasks, None if pd is None else list(pd[1]))

    def task_covariates(self, task_x: Any, where: str = "task_x") -> np.ndarray:
        """One new task's covariates as the population regression reads them:
        ``task_x`` is a dict ``name -> value`` or a sequence in the order of the fitted
        TaskSet's ``task_x_names``; returns the regression's columns ``(q,)``."""
        regression = self._regression()
        if regression is None:
            if task_x is not None:
                raise ValueError(f"{where}: the population has no regression on task covariates")
            return None
        names = list(self.tasks.task_x_names)
        if task_x is None:
            raise ValueError(
                f"{where}: the population regresses on task covariates "
                f"{list(regression.columns)}; give the new task's values"
            )
        if isinstance(task_x, dict):
            missing = [c for c in regression.columns if c not in task_x]
            if missing:
                raise ValueError(f"{where}: no value for task covariate(s) {missing}")
            unknown = [c for c in task_x if c not in names]
            if unknown:
                raise ValueError(
                    f"{where}: {unknown} are not task covariates of the fit (task_x_names: {names})"
                )
            row = np.array([float(task_x[c]) for c in regression.columns])
        else:
            full = np.asarray(task_x, dtype=float).reshape(-1)
            if full.shape != (len(names),):
                raise ValueError(
                    f"{where}: expected {len(names)} values (task_x_names: {names}), got "
                    f"shape {np.shape(task_x)}"
                )
            row = full[list(regression.column_ids)]
        if not np.all(np.isfinite(row)):
            raise ValueError(f"{where}: task covariates must be finite, got {row.tolist()}")
        return row

    def population(self, task_x: Any = None) -> dist.Distribution:
        """The learned prior of a new task's parameters: the posterior predictive
        ``p(theta_new | data) = E_{phi | data} p(theta_new | phi)``, as a NumPyro
        ``MixtureSameFamily`` over the hyperparameter draws (``sample`` and ``log_prob``).

        When the population regresses on task covariates, ``task_x`` gives the new task's
        (a dict ``name -> value``, or values in the order of ``tasks.task_x_names``): the
        prior is then centred at ``mu + B z_new``."""
        model = self._require_hierarchical()
        hyper = self._hyper_draws()
        z = self.task_covariates(task_x)
        if z is not None:
            hyper = model.population.with_location(hyper, self._regression(), z, one_task=True)
        comp = model.population.dist(hyper, self.param_shape)
        num = comp.batch_shape[0]
        mix = dist.Categorical(probs=jnp.full((num,), 1.0 / num))
        return dist.MixtureSameFamily(mix, comp)

    def adapt(self, new_tasks: TaskSet, method: str = "auto", seed: int = 0, **options):
        """Posterior of brand-new tasks from their own few observations, without refitting
        the population. See :func:`bayesmeta.inference.adapt.adapt` for the methods
        (``"auto"``, ``"conjugate"``, ``"importance"``, ``"nuts"``) and when each is used."""
        from bayesmeta.inference.adapt import adapt

        return adapt(self, new_tasks, method=method, seed=seed, **options)

    def predict(
        self,
        seed: int = 0,
        x: Any = None,
        task: Any = None,
        noise_scale: Any = None,
        num_obs: int | None = None,
        task_x: Any = None,
    ) -> np.ndarray:
        """Posterior predictive draws of ``y``, shape ``(chain, draw, n)``.

        - no ``x`` and no ``task``: replicate every observed row (``n = num_obs``);
        - ``task`` (a label or index) with ``x``: new rows of that task;
        - ``task=None`` with ``x`` (or ``num_obs`` when there are no inputs): rows of a
          brand-new task whose parameters are drawn from :meth:`population`.

        ``noise_scale`` gives the known noise sd of new rows for ``NormalKnownNoise``;
        ``task_x`` a brand-new task's covariates when the population regresses on them
        (as :meth:`population`).
        ``seed`` is an integer (a ValueError for a JAX key: the low-level
        :func:`bayesmeta.inference.adapt.predict` takes the key).
        """
        from bayesmeta.inference.adapt import _check_predict_rows, check_seed, predict

        seed = check_seed(seed, "Posterior.predict")
        _check_predict_rows(self, x, task, noise_scale, num_obs)  # before any JAX work
        key = jax.random.PRNGKey(seed)
        return predict(
            self, key, x=x, task=task, noise_scale=noise_scale, num_obs=num_obs, task_x=task_x
        )


def _storable_info(info: FitInfo) -> FitInfo:
    """A copy of ``info`` without what cannot be pickled (a result holding a prior's
    closure); the names of the fields left out are listed in ``extra["not_saved"]``."""
    import dataclasses

    changes, dropped = {}, []
    for f in dataclasses.fields(info):
        if f.name == "extra":
            continue
        value = getattr(info, f.name)
        if value is not None and not saving._picklable(value):
            changes[f.name] = None
            dropped.append(f.name)
    extra = {}
    for k, v in info.extra.items():
        if saving._picklable(v):
            extra[k] = v
        else:
            dropped.append(k)
    if dropped:
        extra["not_saved"] = dropped
    return dataclasses.replace(info, **changes, extra=extra)


def load_posterior(path: str) -> Posterior:
    """The :class:`Posterior` saved at ``path`` by :meth:`Posterior.save` (or by
    ``bayesmeta fit --out``), equal to the saved one array for array.

    Raises:
      ValueError: the file does not exist, is truncated or damaged, was not written by
        ``Posterior.save`` (read plain ArviZ files with ``arviz.from_netcdf``), or is in
        another format version than this bayesmeta reads.

    >>> import os, tempfile, numpy as np, bayesmeta as bm
    >>> model = bm.Hierarchical(bm.likelihoods.NormalKnownNoise(), bm.populations.Normal())
    >>> post = bm.fit(model, bm.datasets.eight_schools(), method="exact", num_samples=50)
    >>> path = os.path.join(tempfile.mkdtemp(), "fit.nc")
    >>> _ = post.save(path)
    >>> again = bm.load_posterior(path)
    >>> again.method, bool(np.array_equal(again.samples["theta"], post.samples["theta"]))
    ('exact', True)
    """
    record, arrays = saving.read_posterior(path)
    return Posterior(
        arrays["posterior"],
        method=record["method"],
        dims=record["dims"],
        coords=record["coords"],
        tasks=record["tasks"],
        model=record["model"],
        sample_stats=arrays.get("sample_stats"),
        log_likelihood=arrays.get("log_likelihood"),
        observed_data=record["observed_data"],
        info=record["info"],
        param_shape=record["param_shape"],
    )
