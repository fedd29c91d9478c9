"""The radon varying-intercept model (models/radon.py) against REML and against itself.

    log_radon_i ~ N(a_county + b floor_i, sigma),   a_j ~ N(mu + g log_uranium_j, tau)

- Collapsed NUTS (the county intercepts integrated out) against statsmodels' MixedLM REML
  fit of ``log_radon ~ floor + log_uranium + (1 | county)``: the posterior means of b
  (``beta``, coord ``floor``) and g (``beta_task``, coord ``log_uranium``), and of mu,
  sigma and tau, within 2 posterior sd of the REML estimates. The priors are weak next to
  919 houses, so the posterior mean sits near the REML estimate.
- Full NUTS against collapsed NUTS on the same model: the same posterior, so every mean
  agrees within 4 Monte-Carlo standard errors of the difference,
  ``sqrt(mcse_nuts**2 + mcse_collapsed**2)`` (MCSE of the mean from ArviZ).
"""

import numpy as np
import pytest
import statsmodels.formula.api as smf

import bayesmeta as bm
from bayesmeta.arviz import summary

# 2 chains x 500 warmup x 500 draws: ESS in the hundreds for every parameter, so 4 MCSE is
# a few hundredths of a posterior sd
DRAWS = {"num_chains": 2, "num_warmup": 500, "num_samples": 500, "progress_bar": False}
# the largest counties, a one-house county, the lowest- and highest-uranium counties
COUNTIES = ["STLOUIS", "HENNEPIN", "MAHNOMEN", "KOOCHICHING", "ROCK"]

# The REML optimum, independently of statsmodels: the profile REML log-likelihood of
# lambda = tau^2 / sigma^2 maximised in one dimension (-1029.8223 at the optimum):
#
#   y = df.log_radon.to_numpy(); X = np.column_stack([np.ones(919), df.floor, df.log_uranium])
#   Z = (df.county.to_numpy()[:, None] == np.unique(df.county)[None, :]).astype(float)
#   def reml(lr):
#       L = np.linalg.cholesky(np.eye(919) + np.exp(lr) * Z @ Z.T)
#       Xi, yi = np.linalg.solve(L, X), np.linalg.solve(L, y)
#       A = Xi.T @ Xi; b = np.linalg.solve(A, Xi.T @ yi); r = yi - Xi @ b; s2 = r @ r / 916
#       ll = -0.5 * (916 * np.log(s2) + 2 * np.log(np.diag(L)).sum()
#                    + np.linalg.slogdet(A)[1] + 916 * (1 + np.log(2 * np.pi)))
#       return ll, b, s2
#   lr = scipy.optimize.minimize_scalar(lambda v: -reml(v)[0], bounds=(-10, 2),
#                                       method="bounded", options={"xatol": 1e-10}).x
#
# gives b = (1.496157, -0.638778, 0.697499), sigma^2 = 0.530651, tau^2 = 0.021805.
REML = {"Intercept": 1.496157, "floor": -0.638778, "log_uranium": 0.697499}
REML_SIGMA2, REML_TAU2 = 0.530651, 0.021805


@pytest.fixture(scope="module")
def radon():
    model, tasks = bm.load_model("models/radon.py")
    return model, tasks, bm.datasets.radon()


@pytest.fixture(scope="module")
def collapsed_post(radon):
    model, tasks, _ = radon
    return bm.fit(model, tasks, method="collapsed", seed=1, **DRAWS)


@pytest.fixture(scope="module")
def mixedlm(radon):
    df = radon[2]
    # statsmodels' default optimiser (BFGS, then L-BFGS on failure) stops short of this
    # optimum with a ConvergenceWarning (floor -0.640264, log_uranium 0.695197, REML
    # log-likelihood -1029.8397 < -1029.8223); Powell reaches it without warnings
    fit = smf.mixedlm("log_radon ~ floor + log_uranium", df, groups=df["county"]).fit(
        reml=True, method="powell"
    )
    assert fit.converged
    return fit


def _means(post, var_names):
    table = summary(post.to_arviz(), var_names=var_names, round_to="none")
    return table["mean"], table["mcse_mean"], table["sd"]


def test_mixedlm_reference_is_the_reml_optimum(mixedlm):
    for name, value in REML.items():
        assert mixedlm.fe_params[name] == pytest.approx(value, abs=1e-4)
    assert mixedlm.scale == pytest.approx(REML_SIGMA2, abs=1e-4)
    assert float(mixedlm.cov_re.iloc[0, 0]) == pytest.approx(REML_TAU2, abs=1e-4)


def test_radon_collapsed_matches_mixedlm(collapsed_post, mixedlm):
    post = collapsed_post
    assert post.coords["common"] == ["floor"]
    assert post.coords["task_covariate"] == ["log_uranium"]
    mean, _, sd = _means(post, ["beta", "beta_task", "mu", "sigma", "tau"])
    reference = {
        "beta[floor]": mixedlm.fe_params["floor"],
        "beta_task[log_uranium]": mixedlm.fe_params["log_uranium"],
        "mu": mixedlm.fe_params["Intercept"],
        "sigma": np.sqrt(mixedlm.scale),
        "tau": np.sqrt(float(mixedlm.cov_re.iloc[0, 0])),
    }
    for key, ref in reference.items():
        assert abs(mean[key] - ref) < 2.0 * sd[key], (key, mean[key], ref, sd[key])
    # the floor effect and the uranium effect are far from 0: the check has a sign
    assert mean["beta[floor]"] < -4 * sd["beta[floor]"]
    assert mean["beta_task[log_uranium]"] > 4 * sd["beta_task[log_uranium]"]


def test_radon_nuts_matches_collapsed(radon, collapsed_post):
    model, tasks, _ = radon
    nuts_post = bm.fit(model, tasks, method="nuts", seed=2, **DRAWS)
    var_names = ["mu", "tau", "sigma", "beta", "beta_task", "theta"]
    m_nuts, se_nuts, _ = _means(nuts_post, var_names)
    m_coll, se_coll, _ = _means(collapsed_post, var_names)
    keys = ["mu", "tau", "sigma", "beta[floor]", "beta_task[log_uranium]"]
    keys += [f"theta[{c}]" for c in COUNTIES]
    for key in keys:
        mcse = np.hypot(se_nuts[key], se_coll[key])
        assert abs(m_nuts[key] - m_coll[key]) < 4.0 * mcse, (key, m_nuts[key], m_coll[key], mcse)
