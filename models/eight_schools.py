"""Eight schools (Rubin 1981; BDA3 §5.5): coaching effects with known standard errors.

y_j ~ N(theta_j, sigma_j),  theta_j ~ N(mu, tau),  mu ~ N(0, 5),  tau ~ HalfCauchy(5).
With se >= 9 against a population scale of about 5, every school is weakly informed, so
``parameterization="auto"`` picks the non-centred form (no divergences).

Run: ``bayesmeta fit models/eight_schools.py``
"""

import numpyro.distributions as dist

import bayesmeta as bm

model = bm.Hierarchical(
    likelihood=bm.likelihoods.NormalKnownNoise(),
    population=bm.populations.Normal(loc=dist.Normal(0.0, 5.0), scale=dist.HalfCauchy(5.0)),
)


def tasks():
    return bm.datasets.eight_schools()
