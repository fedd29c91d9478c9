"""BCG vaccine trials (Colditz et al. 1994): random-effects meta-analysis of log risk ratios.

y_i ~ N(theta_i, se_i) with y the log risk ratio of trial i and se its standard error;
theta_i ~ N(mu, tau), mu ~ N(0, 2), tau ~ HalfNormal(1) (log risk ratios live on the unit
scale). exp(mu) is the average risk ratio of the vaccine; tau the spread between trials.

Run: ``bayesmeta fit models/bcg.py``
"""

import numpyro.distributions as dist

import bayesmeta as bm

model = bm.Hierarchical(
    likelihood=bm.likelihoods.NormalKnownNoise(),
    population=bm.populations.Normal(loc=dist.Normal(0.0, 2.0), scale=dist.HalfNormal(1.0)),
)


def tasks():
    return bm.datasets.bcg()
