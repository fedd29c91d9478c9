"""Populations: the mixed (per-task) parameterisation is an exact change of variables of the
centred model, the learned-prior mixture, defaults and hyperprior shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.infer.util import log_density

import bayesmeta as bm


def _tasks():
    # 4 tasks of 3 rows with x: the regression gives a 2-vector per task
    rng = np.random.default_rng(0)
    task = np.repeat(np.arange(4), 3)
    return bm.TaskSet.from_arrays(
        y=rng.normal(size=12),
        x=rng.normal(size=12),
        task=task,
        noise_scale=np.r_[np.full(6, 0.05), np.full(6, 50.0)],
    )


@pytest.mark.parametrize("family", ["normal", "studentt", "mvnormal"])
def test_mixed_parameterisation_is_a_change_of_variables(family):
    """log p_mixed(phi, z) = log p_centred(phi, theta(z)) + sum over non-centred tasks of
    log |d theta / d z| (= sum log tau, plus sum log diag L for MvNormal)."""
    tasks = _tasks()
    pop = {
        "normal": bm.populations.Normal,
        "studentt": bm.populations.StudentT,
        "mvnormal": bm.populations.MvNormal,
    }[family]
    lik = bm.likelihoods.LinearRegression()
    mixed = bm.Hierarchical(lik, pop(scale=dist.HalfNormal(1.0))).build(tasks)
    centred = bm.Hierarchical(
        lik, pop(scale=dist.HalfNormal(1.0), parameterization="centered")
    ).build(tasks)
    c = mixed.centered
    assert c[:2].all() and not c[2:].any()  # precise tasks centred, noisy ones not
    key = jax.random.PRNGKey(1)
    mu, tau = jnp.array([0.3, -0.2]), jnp.array([0.7, 1.3])
    z = jax.random.normal(key, (4, 2))
    params = {"mu": mu, "tau": tau, "theta_raw": z}
    corr = jnp.eye(2)
    if family == "studentt":
        params["nu"] = jnp.array(4.5)
    if family == "mvnormal":
        corr = jnp.array([[1.0, 0.0], [0.6, 0.8]])
        params["corr_chol"] = corr
    lp_mixed, trace = log_density(mixed.fn, (), mixed.data, params)
    theta = trace["theta"]["value"]
    scale_tril = tau[:, None] * corr
    expect = jnp.where(jnp.asarray(c), z, mu + z @ scale_tril.T)
    np.testing.assert_allclose(theta, expect, rtol=1e-12)
    cparams = {k: v for k, v in params.items() if k != "theta_raw"}
    cparams["theta"] = theta
    lp_centred, _ = log_density(centred.fn, (), centred.data, cparams)
    num_nc = int((~c[:, 0]).sum())
    log_jac = num_nc * float(jnp.sum(jnp.log(jnp.diag(scale_tril))))
    assert float(lp_mixed) == pytest.approx(float(lp_centred) + log_jac, rel=1e-10)


def test_default_hyperpriors_are_documented_ones():
    pop = bm.populations.Normal()
    assert isinstance(pop.loc, dist.Normal) and float(pop.loc.scale) == 5.0
    assert isinstance(pop.scale, dist.HalfCauchy) and float(pop.scale.scale) == 5.0
    assert isinstance(bm.populations.StudentT().df, dist.Gamma)


def test_name_prefixes_site_names():
    built = bm.Hierarchical(
        bm.likelihoods.NormalKnownNoise(), bm.populations.Normal(name="school")
    ).build(bm.datasets.eight_schools())
    assert {"school_mu", "school_tau", "school_theta"} <= set(built.dims)


def test_fixed_hyperparameters_are_not_sampled():
    pop = bm.populations.Normal(loc=0.0, scale=2.0)
    assert pop.hyper_sites() == []
    assert float(pop.fixed_values(())["tau"]) == 2.0


def test_studentt_population_fits():
    model = bm.Hierarchical(
        bm.likelihoods.NormalKnownNoise(), bm.populations.StudentT(scale=dist.HalfNormal(5.0))
    )
    post = bm.fit(
        model, bm.datasets.eight_schools(), method="vi", num_steps=500, num_samples=100, warn=False
    )
    assert post.samples["nu"].shape == (1, 100)
    pop = post.population()
    assert np.isfinite(float(pop.log_prob(3.0)))


# ---------------------------------------------------------------------- task regression
def _covariate_tasks():
    return bm.TaskSet.from_arrays(
        y=np.arange(6.0),
        task=[0, 0, 1, 1, 2, 2],
        x=np.arange(6.0),
        x_names=["floor"],
        task_x={"u": [1.0, 1.0, 2.0, 2.0, 3.0, 3.0], "v": [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]},
    )


def test_task_regression_resolves_names():
    tasks = _covariate_tasks()
    pop = bm.populations.Normal(task_covariates=True)
    reg = pop.task_regression(tasks, None)
    assert reg.labels == ("u", "v") and reg.param == (0, 0)
    pop = bm.populations.MvNormal(task_covariates={"intercept": ["v"], "floor": ["u", "v"]})
    reg = pop.task_regression(tasks, ["intercept", "floor"])
    assert reg.labels == ("intercept:v", "floor:u", "floor:v")
    assert reg.param == (0, 1, 1) and reg.columns == ("v", "u") and reg.column_ids == (1, 0)


def test_task_regression_location_is_mu_plus_b_z():
    tasks = _covariate_tasks()
    pop = bm.populations.MvNormal(task_covariates={"floor": ["u"]})
    reg = pop.task_regression(tasks, ["intercept", "floor"])
    z = tasks.task_x[:, list(reg.column_ids)]
    hyper = {"mu": jnp.array([1.0, -2.0]), "beta_task": jnp.array([0.5])}
    loc = pop._loc(pop.with_location(hyper, reg, z))
    expect = np.array([[1.0, -2.0 + 0.5 * u] for u in (1.0, 2.0, 3.0)])
    np.testing.assert_allclose(loc, expect)
    # draws of the hyperparameters (leading dim) keep the task axis after theirs
    hyper_s = {"mu": jnp.zeros((4, 2)), "beta_task": jnp.ones((4, 1)), "tau": jnp.ones((4, 2))}
    out = pop.with_location(hyper_s, reg, z)
    assert out["mu@task"].shape == (4, 3, 2) and out["tau"].shape == (4, 1, 2)
    one = pop.with_location(hyper_s, reg, z[1], one_task=True)
    assert one["mu@task"].shape == (4, 2) and one["tau"].shape == (4, 2)


def test_task_regression_bad_input():
    tasks = _covariate_tasks()
    with pytest.raises(ValueError, match=r"'w' is not a task covariate .*\['u', 'v'\]"):
        bm.populations.Normal(task_covariates=["w"]).task_regression(tasks, None)
    with pytest.raises(ValueError, match="'slope' is not a parameter"):
        bm.populations.Normal(task_covariates={"slope": ["u"]}).task_regression(
            tasks, ["intercept", "floor"]
        )
    no_x = bm.TaskSet.from_arrays(y=np.arange(4.0), task=[0, 0, 1, 1])
    with pytest.raises(ValueError, match="the TaskSet has none"):
        bm.populations.Normal(task_covariates=True).task_regression(no_x, None)
    with pytest.raises(ValueError, match="coef: a prior .* needs task_covariates"):
        bm.populations.Normal(coef=dist.Normal(0, 1))
    with pytest.raises(ValueError, match="task_covariates: expected True"):
        bm.populations.Normal(task_covariates=3)
    # checked when the model is built, before anything compiles
    model = bm.Hierarchical(bm.likelihoods.Normal(), bm.populations.Normal(task_covariates=["w"]))
    with pytest.raises(ValueError, match="'w' is not a task covariate"):
        bm.fit(model, tasks, method="nuts")
