"""Hierarchical logistic regression, simulated with known truth.

30 tasks with 10 to 60 binary outcomes each: P(y = 1) = sigmoid(a_t + b_t x), with
(a_t, b_t) ~ N((-0.5, 1.0), diag(0.5, 0.4)^2). The population mean (TRUE_MU) is what a fit
should recover.

Run: ``bayesmeta fit models/hier_logistic.py --method vi``
"""

import numpy as np
import numpyro.distributions as dist

import bayesmeta as bm

TRUE_MU = np.array([-0.5, 1.0])
TRUE_TAU = np.array([0.5, 0.4])

model = bm.Hierarchical(
    likelihood=bm.likelihoods.LogisticRegression(),
    population=bm.populations.Normal(loc=dist.Normal(0.0, 2.5), scale=dist.HalfNormal(1.0)),
)


def tasks(seed: int = 1, num_tasks: int = 30):
    rng = np.random.default_rng(seed)
    theta = TRUE_MU + TRUE_TAU * rng.standard_normal((num_tasks, 2))
    counts = rng.integers(10, 61, size=num_tasks)
    task = np.repeat(np.arange(num_tasks), counts)
    x = rng.normal(0.0, 1.0, size=task.size)
    p = 1.0 / (1.0 + np.exp(-(theta[task, 0] + theta[task, 1] * x)))
    y = (rng.uniform(size=task.size) < p).astype(float)
    return bm.TaskSet.from_arrays(
        y=y, x=x, task=task, labels=[f"g{i:02d}" for i in range(num_tasks)]
    )
