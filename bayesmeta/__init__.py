"""bayesmeta: Bayesian meta-learning on JAX and NumPyro.

Fit a population prior over many small related tasks, get honest posteriors for every
task, adapt to brand-new tasks from a few observations, and inspect it all in ArviZ.
"""

from bayesmeta import check, datasets, estimators, exact, likelihoods, meta, plots, populations
from bayesmeta.gallery import load_model
from bayesmeta.inference import fit
from bayesmeta.model import Hierarchical, Pooled, Unpooled, pooled, unpooled
from bayesmeta.posterior import Posterior, load_posterior
from bayesmeta.tasks import PaddedTasks, TaskSet

# the friendly exact solvers return a Posterior, so they live with the exact engine; they
# are published as bm.exact.* here, above both layers
from bayesmeta.inference import exact as _exact_engine  # noqa: E402  (isort: skip)

for _name in ("EXACT_OPTIONS", "fit_exact", "normal_normal", "why_not_exact"):
    setattr(exact, _name, getattr(_exact_engine, _name))
del _name

__all__ = [
    "TaskSet",
    "PaddedTasks",
    "Hierarchical",
    "Pooled",
    "Unpooled",
    "pooled",
    "unpooled",
    "fit",
    "Posterior",
    "load_posterior",
    "load_model",
    "check",
    "datasets",
    "estimators",
    "exact",
    "meta",
    "likelihoods",
    "populations",
    "plots",
]
from bayesmeta._version import __version__  # noqa: E402, F401  (bm.__version__)
