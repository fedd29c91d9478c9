"""BCG vaccine trials (Colditz et al. 1994): meta-regression of the log risk ratios on
absolute latitude.

y_i ~ N(theta_i, se_i) with y the log risk ratio of trial i and se its standard error;
theta_i ~ N(mu + b ablat_i, tau), with ablat the trial's absolute latitude in degrees
(13 to 55; ``bm.datasets.bcg()`` carries it as a task covariate). mu ~ N(0, 2),
tau ~ HalfNormal(1), b (``beta_task``, coord ``ablat``) ~ N(0, 5). The vaccine works
better far from the equator: b < 0. ``ablat`` enters raw, not centred, so ``mu`` and ``b``
compare with metafor's ``rma(yi, vi, mods = ~ ablat)`` (REML: intercept 0.2515, ablat
-0.0291); ``mu`` is then the log risk ratio at the equator. (Centring ablat at its mean,
33.5, gains NUTS about 1.5x in effective sample size for ``mu`` and ``b`` and nothing for
``tau``, the slowest; not worth the change of meaning.)

Every trial is non-centred. Latitude explains most of the spread between trials, and the
posterior of the residual ``tau`` reaches down to 0, where a centred large trial (TPT
Madras, Comstock et al 1974) makes a funnel: ``parameterization="auto"`` centres the
large trials and leaves a few divergences even at target acceptance 0.95; non-centred
NUTS runs without any at its default settings.

Run: ``bayesmeta fit models/bcg_latitude.py``
"""

import numpyro.distributions as dist

import bayesmeta as bm

model = bm.Hierarchical(
    likelihood=bm.likelihoods.NormalKnownNoise(),
    population=bm.populations.Normal(
        loc=dist.Normal(0.0, 2.0),
        scale=dist.HalfNormal(1.0),
        task_covariates=["ablat"],
        parameterization="noncentered",
    ),
)


def tasks():
    return bm.datasets.bcg()
