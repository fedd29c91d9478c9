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
from bayesmeta._checks import check_seed
from bayesmeta.info import FitInfo, info_from
from bayesmeta.model import Hierarchical
from bayesmeta.tasks import TaskSet

__all__ = ["Posterior"]


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
    def to_arviz(self, prior: bool = False, num_prior_draws: int = 500, seed: int = 0):
        """Export through ArviZ's own converters: ``InferenceData`` on ArviZ 0.x, a
        ``DataTree`` on ArviZ 1.x. Groups: posterior, sample_stats (when the sampler has
        them), observed_data, log_likelihood (pointwise) and, with ``prior=True``, prior
        draws of every parameter (and the prior predictive of ``y``)."""

        seed = check_seed(seed)
        prior_draws, prior_pred = None, None
        if prior:
            prior_draws, prior_pred = self._prior_draws(num_prior_draws, seed)
        return bm_arviz.to_arviz(
            self.samples,
            dims=self.dims,
            coords=self.coords,
            sample_stats=self.sample_stats or None,
            log_likelihood=self.log_likelihood or None,
            observed_data=self.observed_data or None,
            prior=prior_draws,
            prior_predictive=prior_pred,
            attrs={
                "inference_library": "numpyro",
                "creation_library": "bayesmeta",
                "method": self.method,
            },
            obs_coords=self._obs_coords(),
        )

    def _obs_coords(self) -> dict | None:
        """The task label and the caller's row number of every observed row (``obs``)."""
        tasks = self.tasks
        if tasks is None or self.dims.get("y") != ["obs"]:
            return None
        labels = np.asarray(tasks.labels, dtype=object)[tasks.task_index].astype(str)
        rows = np.asarray(tasks.row_ids)
        if not np.issubdtype(rows.dtype, np.number):  # a DataFrame's non-numeric index
            rows = rows.astype(str)
        return {"task": labels, "row": rows}

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

    def summary(self, var_names: list[str] | None = None, **kwargs):
        """ArviZ's summary table (a pandas DataFrame) of the posterior group."""

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
