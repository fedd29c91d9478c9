"""bayesmeta: Bayesian meta-learning on JAX and NumPyro.

Fit a population prior over many small related tasks, get honest posteriors for every
task, adapt to brand-new tasks from a few observations, and inspect it all in ArviZ.
"""

from bayesmeta import datasets, estimators, exact, likelihoods, meta, populations
from bayesmeta.gallery import load_model
from bayesmeta.inference import fit
from bayesmeta.model import Hierarchical, Pooled, Unpooled, pooled, unpooled
from bayesmeta.posterior import Posterior
from bayesmeta.tasks import PaddedTasks, TaskSet

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
    "load_model",
    "datasets",
    "estimators",
    "exact",
    "meta",
    "likelihoods",
    "populations",
]
__version__ = "0.1.0"
