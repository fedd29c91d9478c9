"""Hierarchical linear regression, simulated with known truth.

Each of 20 tasks has 4 to 30 rows of y = a_t + b_t x + noise (sd 0.5), with
(a_t, b_t) ~ N((1.0, -0.5), diag(0.6, 0.3)^2). The model learns the population
(mu, tau) and every task's line; ragged task sizes exercise the flat layout.

Run: ``bayesmeta fit models/hier_linear.py``
"""

import numpy as np
import numpyro.distributions as dist

import bayesmeta as bm

TRUE_MU = np.array([1.0, -0.5])
TRUE_TAU = np.array([0.6, 0.3])
NOISE = 0.5

model = bm.Hierarchical(
    likelihood=bm.likelihoods.LinearRegression(),
    population=bm.populations.Normal(loc=dist.Normal(0.0, 3.0), scale=dist.HalfNormal(2.0)),
)


def tasks(seed: int = 0, num_tasks: int = 20):
    rng = np.random.default_rng(seed)
    theta = TRUE_MU + TRUE_TAU * rng.standard_normal((num_tasks, 2))
    counts = rng.integers(4, 31, size=num_tasks)
    task = np.repeat(np.arange(num_tasks), counts)
    x = rng.uniform(-2.0, 2.0, size=task.size)
    y = theta[task, 0] + theta[task, 1] * x + NOISE * rng.standard_normal(task.size)
    return bm.TaskSet.from_arrays(
        y=y, x=x, task=task, labels=[f"t{i:02d}" for i in range(num_tasks)]
    )
