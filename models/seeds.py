"""Seeds germination (Crowder 1978; the "Seeds" example of the BUGS manuals): a
random-effects logistic regression with plate-level fixed effects.

21 plates in a 2 x 2 factorial of seed type ``x1`` and root extract ``x2``
(``bm.datasets.seeds()``). On plate i, r_i of n_i seeds germinated:

    r_i ~ Binomial(n_i, sigmoid(a0 + a1 x1_i + a2 x2_i + a12 x1_i x2_i + b_i))
    b_i ~ N(0, sigma)

written as a varying intercept ``theta_i = a0 + b_i ~ N(mu, tau)``: ``mu`` is a0, ``tau``
is sigma, ``beta`` (coords ``x1``, ``x2``, ``x1x2``) are a1, a2, a12, common to all
plates. Weakly informative priors on the log-odds scale: mu and beta ~ N(0, 2.5),
tau ~ HalfNormal(1) (BUGS uses vague priors).

Every plate is non-centred: a plate of 4 to 81 seeds says little about its own b_i next
to a between-plate sd of about 0.3 (information x sd^2 < 4 on every plate, the rule of
``parameterization="auto"``), and a centred plate there makes a funnel in tau. Non-centred,
NUTS runs without divergences at its default settings.

Run: ``bayesmeta fit models/seeds.py``
"""

import numpyro.distributions as dist

import bayesmeta as bm

model = bm.Hierarchical(
    likelihood=bm.likelihoods.Binomial(varying=["intercept"], common_prior=dist.Normal(0.0, 2.5)),
    population=bm.populations.Normal(
        loc=dist.Normal(0.0, 2.5), scale=dist.HalfNormal(1.0), parameterization="noncentered"
    ),
)


def tasks():
    df = bm.datasets.seeds()
    df["x1x2"] = df["x1"] * df["x2"]
    return bm.TaskSet.from_dataframe(df, task="plate", y="r", x=["x1", "x2", "x1x2"], trials="n")
