"""``parameterization="auto"`` for every likelihood: per-task evidence from each task's
own data, non-centred where the rule is unsure, and the advice a funnel-shaped fit gives."""

import numpy as np
import numpyro.distributions as dist
import pytest
import scipy.optimize

import bayesmeta as bm
from bayesmeta.inference.diagnostics import FitWarning

FEW = dict(progress_bar=False)


def _glm_tasks(kind, num_tasks, rows, mu, tau, seed):
    rng = np.random.default_rng(seed)
    mu, tau = np.asarray(mu, float), np.asarray(tau, float)
    theta = mu + tau * rng.standard_normal((num_tasks, mu.size))
    k = mu.size - 1
    z = rng.standard_normal((num_tasks * rows, k))
    task = np.repeat(np.arange(num_tasks), rows)
    eta = theta[task, 0] + np.sum(z * theta[task, 1:], axis=1)
    _glm_tasks.truth = theta, np.column_stack([np.ones(task.size), z]), task, eta
    if kind == "logistic":
        y = (rng.uniform(size=task.size) < 1 / (1 + np.exp(-eta))).astype(float)
        return bm.TaskSet.from_arrays(x=z, y=y, task=task), bm.likelihoods.LogisticRegression()
    if kind == "poisson":
        y = rng.poisson(np.exp(eta)).astype(float)
        return bm.TaskSet.from_arrays(x=z, y=y, task=task), bm.likelihoods.Poisson()
    trials = rng.integers(1, 6, size=task.size).astype(float)
    y = rng.binomial(trials.astype(int), 1 / (1 + np.exp(-eta))).astype(float)
    x = np.column_stack([trials, z])
    return bm.TaskSet.from_arrays(x=x, y=y, task=task), bm.likelihoods.Binomial()


@pytest.mark.parametrize("kind", ["logistic", "poisson", "binomial"])
def test_few_row_glm_tasks_come_out_non_centred(kind):
    # 20 rows, 3 coefficients per task, population sd 0.3-0.5: each task's data say less
    # about its coefficients than the population does. (A Poisson row with mean count m
    # carries information m about the log-rate, a Bernoulli row at most 1/4: the Poisson
    # tasks get a mean count of about 0.5, else 20 rows are informative and centred.)
    intercept = -0.7 if kind == "poisson" else 0.2
    tau = np.array([0.5, 0.3, 0.4])
    tasks, lik = _glm_tasks(kind, 200, 20, [intercept, 0.5, -0.3], tau, seed=1)
    built = bm.Hierarchical(lik).build(tasks)
    if kind != "poisson":
        assert built.centered is not None and not built.centered.any()
        return
    # Poisson counts vary a lot between tasks: the few tasks whose counts run high are
    # informative. The rule is judged against an oracle: the Fisher information at the
    # true theta_t and the true spread. Every task the oracle calls uninformative
    # (information * tau^2 < 1) must be non-centred, and most tasks are.
    _, design, task, eta = _glm_tasks.truth
    weight = np.exp(eta)
    oracle = np.empty((tasks.num_tasks, 3))
    for t in range(tasks.num_tasks):
        d = design[task == t]
        h = (d * weight[task == t, None]).T @ d
        oracle[t] = 1 / np.diag(np.linalg.inv(h)) * tau**2
    assert not built.centered[oracle < 1].any()
    assert built.centered.mean() < 0.1


@pytest.mark.parametrize("kind", ["logistic", "poisson", "binomial"])
def test_data_rich_glm_tasks_come_out_centred(kind):
    # 800 rows a task and a spread of 1.5-2: every task pins its coefficients down far
    # more tightly than the population does
    tasks, lik = _glm_tasks(kind, 20, 800, [0.0, 0.5], [1.5, 2.0], seed=2)
    built = bm.Hierarchical(lik).build(tasks)
    assert built.centered.all()


def test_glm_estimates_are_the_penalised_maximum_likelihood():
    """Each task's estimate maximises its Bernoulli log-likelihood plus the documented
    N(pooled estimate, 2.5^2) penalty; checked against scipy's optimiser, task by task."""
    tasks, lik = _glm_tasks("logistic", 5, 30, [0.2, 0.5], [0.5, 0.3], seed=3)
    est = lik.glm_estimates(tasks)
    assert est.converged.all()
    x_all = np.column_stack([np.ones(tasks.num_obs), tasks.x])

    def negloglik(b, x, y, centre, ridge):
        eta = x @ b
        return -np.sum(y * eta - np.logaddexp(0, eta)) + 0.5 * ridge * np.sum((b - centre) ** 2)

    pooled = scipy.optimize.minimize(
        negloglik, np.zeros(2), args=(x_all, tasks.y, 0.0, 1e-6), method="BFGS", tol=1e-10
    ).x
    for t in range(tasks.num_tasks):
        rows = tasks.task_rows(t)
        ref = scipy.optimize.minimize(
            negloglik,
            np.zeros(2),
            args=(x_all[rows], tasks.y[rows], pooled, 1 / 2.5**2),
            method="BFGS",
            tol=1e-10,
        ).x
        np.testing.assert_allclose(est.estimate[t], ref, atol=1e-5)


def test_ten_task_logistic_default_is_non_centred_and_does_not_diverge():
    """The defect: 10 logistic tasks (20 rows, truth tau = (0.5, 0.3)); the old rule centred
    every task (186 divergences, R-hat 1.58). Now every task is non-centred and the default
    fit (4 chains x 1000 + 1000) has no divergent transition."""
    tasks, lik = _glm_tasks("logistic", 10, 20, [0.0, 1.0], [0.5, 0.3], seed=0)
    model = bm.Hierarchical(lik)
    assert not model.build(tasks).centered.any()
    post = bm.fit(model, tasks, seed=0, warn=False, **FEW)
    diag = post.info["diagnostics"]
    assert diag["divergences"] == 0
    # the old default reached R-hat 1.58 here; tau of 10 tasks is the slowest to mix
    # (measured 1.013 for tau, < 1.006 for the rest)
    assert max(diag["rhat"].values()) < 1.05


def test_unsure_rule_stays_non_centred():
    # a custom likelihood with an information function but no way to estimate the spread
    def loglik(theta, x, y):
        return dist.Normal(theta, 1.0).log_prob(y).sum()

    tasks = bm.TaskSet.from_arrays(y=np.arange(40.0), task=np.repeat(np.arange(4), 10))
    lik = bm.likelihoods.Custom(loglik, information_fn=lambda ts: np.full(ts.num_tasks, 1e6))
    assert not bm.Hierarchical(lik).build(tasks).centered.any()
    # ... unless the population's scale is fixed: that is the spread
    fixed = bm.Hierarchical(lik, bm.populations.Normal(scale=3.0))
    assert fixed.build(tasks).centered.all()


def test_user_mask_and_its_shape_check():
    tasks = bm.datasets.eight_schools()
    mask = np.array([True, False] * 4)
    built = bm.Hierarchical(
        bm.likelihoods.NormalKnownNoise(), bm.populations.Normal(parameterization=mask)
    ).build(tasks)
    assert built.centered.tolist() == mask.tolist()
    with pytest.raises(ValueError, match=r"parameterization: a per-task mask must have shape"):
        bm.Hierarchical(
            bm.likelihoods.NormalKnownNoise(),
            bm.populations.Normal(parameterization=np.ones(3, bool)),
        ).build(tasks)
    with pytest.raises(ValueError, match=r"parameterization: must be one of"):
        bm.populations.Normal(parameterization=np.ones(3))


def test_funnel_warning_names_the_tasks_to_flip():
    """Forced centring of the eight schools (little information, small spread) diverges;
    the warning says to make the schools non-centred and gives the mask."""
    model = bm.Hierarchical(
        bm.likelihoods.NormalKnownNoise(), bm.populations.Normal(parameterization="centered")
    )
    with pytest.warns(FitWarning, match=r"make task\(s\) 'A'.* non-centred"):
        post = bm.fit(
            model,
            bm.datasets.eight_schools(),
            seed=0,
            num_chains=2,
            num_warmup=300,
            num_samples=300,
            target_accept=0.8,
            **FEW,
        )
    diag = post.info["diagnostics"]
    assert diag["divergences"] > 0
    assert not diag["suggested_parameterization"].any()


def test_spread_estimate_is_dersimonian_laird():
    """The model layer's spread estimate equals the estimators module's DL, per dimension."""
    from bayesmeta.model import _spread_estimate

    rng = np.random.default_rng(0)
    y, v = rng.normal(size=(30, 3)), rng.uniform(0.1, 2.0, size=(30, 3))
    y[:, 0] *= 3.0  # one dimension with a clear spread
    tasks = bm.TaskSet.from_estimates(y=y[:, 0], se=np.sqrt(v[:, 0]))
    got = _spread_estimate((y, v), tasks, (3,))
    ref = [
        np.sqrt(bm.estimators.tau2_estimate(y[:, d], np.sqrt(v[:, d]), method="DL"))
        for d in range(3)
    ]
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert got[0] > 0


def test_spread_estimate_around_a_task_regression_is_meta_regression_dl():
    """With task covariates in the population's mean, the spread is the residual spread:
    the estimators module's mixed-effects DL on the covariates entering each parameter."""
    from bayesmeta.model import _spread_estimate

    rng = np.random.default_rng(1)
    z = rng.normal(size=(25, 2))
    y = np.stack([2.0 * z[:, 0], 1.5 * z[:, 1]], axis=1) + 0.3 * rng.normal(size=(25, 2))
    v = rng.uniform(0.05, 0.3, size=(25, 2))
    tasks = bm.TaskSet.from_estimates(y=y[:, 0], se=np.sqrt(v[:, 0]), task_x=z)
    pop = bm.populations.MvNormal(task_covariates={"a": ["z0"], "b": ["z0", "z1"]})
    reg = pop.task_regression(tasks, ["a", "b"])
    got = _spread_estimate((y, v), tasks, (2,), reg)
    ref_a = bm.estimators.random_effects(y[:, 0], np.sqrt(v[:, 0]), mods=z[:, :1], method="DL")
    ref_b = bm.estimators.random_effects(y[:, 1], np.sqrt(v[:, 1]), mods=z, method="DL")
    np.testing.assert_allclose(got, np.sqrt([ref_a.tau2, ref_b.tau2]), rtol=1e-10)
    # without the regression the covariates' effects count as spread
    assert np.all(_spread_estimate((y, v), tasks, (2,)) > 2 * got)
