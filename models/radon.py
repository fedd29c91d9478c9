"""Minnesota radon (Gelman and Hill 2007, ch. 12): varying intercepts by county, a common
floor slope and soil uranium as a county-level predictor.

919 houses in 85 counties (``bm.datasets.radon()``). House i in county j:

    log_radon_i ~ N(a_j + b floor_i, sigma)       (floor: 0 basement, 1 first floor)
    a_j ~ N(mu + g log_uranium_j, tau)

``theta`` is the county intercept ``a_j``; ``beta`` (coord ``floor``) the common slope
``b``; ``beta_task`` (coord ``log_uranium``) the uranium coefficient ``g``; ``mu`` the
intercept of a county with log uranium 0. Default hyperpriors: ``mu``, ``b``, ``g`` ~
N(0, 5), ``tau`` ~ HalfCauchy(5), ``sigma`` ~ HalfNormal(5) (log radon lives on the unit
scale). The same model by REML, ``lmer(log_radon ~ floor + log_uranium + (1 | county))``
or statsmodels' ``mixedlm``, gives b = -0.640 and g = 0.695 (tests/test_radon.py).

The theta_j integrate out exactly (a Gaussian likelihood), so ``--method collapsed`` (NUTS
on the hyperparameters, the county intercepts drawn given them) is the fast way to fit it.

Run: ``bayesmeta fit models/radon.py``
"""

import bayesmeta as bm

model = bm.Hierarchical(
    likelihood=bm.likelihoods.LinearRegression(varying=["intercept"]),
    population=bm.populations.Normal(task_covariates=["log_uranium"]),
)


def tasks():
    return bm.TaskSet.from_dataframe(
        bm.datasets.radon(), task="county", y="log_radon", x=["floor"], task_x=["log_uranium"]
    )
