"""NUTS and VI fits against independent answers computed in the tests."""

import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.diagnostics import effective_sample_size

import bayesmeta as bm

SCHOOL_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOL_SE = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def _log_normal(x, m, s):
    return -0.5 * ((x - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)


def eight_schools_by_quadrature():
    """Posterior means and sds of mu, tau, theta_j for y_j ~ N(theta_j, se_j),
    theta_j ~ N(mu, tau), mu ~ N(0, 5), tau ~ HalfCauchy(5), by brute-force integration on a
    2-D grid over (mu, log tau) (theta_j integrated analytically given mu, tau)."""
    mu = np.linspace(-25.0, 35.0, 1201)
    log_tau = np.linspace(-9.0, 6.0, 1501)
    tau = np.exp(log_tau)
    M, T = np.meshgrid(mu, tau, indexing="ij")
    logp = _log_normal(M, 0.0, 5.0)
    logp += np.log(2.0 / (np.pi * 5.0 * (1.0 + (T / 5.0) ** 2))) + np.log(T)  # HalfCauchy, dtau
    var = SCHOOL_SE[:, None, None] ** 2 + T[None] ** 2
    logp += np.sum(_log_normal(SCHOOL_Y[:, None, None], M[None], np.sqrt(var)), axis=0)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    out = {}
    for name, grid in (("mu", M), ("tau", T)):
        m = np.sum(w * grid)
        out[name] = (m, np.sqrt(np.sum(w * (grid - m) ** 2)))
    prec = 1.0 / SCHOOL_SE[:, None, None] ** 2 + 1.0 / T[None] ** 2
    cmean = (
        SCHOOL_Y[:, None, None] / SCHOOL_SE[:, None, None] ** 2 + M[None] / T[None] ** 2
    ) / prec
    m = np.sum(w * cmean, axis=(1, 2))
    second = np.sum(w * (1.0 / prec + cmean**2), axis=(1, 2))
    out["theta"] = (m, np.sqrt(second - m**2))
    return out


def _mcse_mean_sd(draws):
    """Monte-Carlo standard errors of the posterior mean and sd of (chain, draw, ...) draws:
    sd / sqrt(ESS) for the mean; the delta method on the second central moment for the sd."""
    flat = draws.reshape(-1, *draws.shape[2:])
    mean, sd = flat.mean(0), flat.std(0)
    ess = effective_sample_size(draws)
    sq = (draws - mean) ** 2
    ess_sq = effective_sample_size(sq)
    se_var = sq.reshape(-1, *draws.shape[2:]).std(0) / np.sqrt(ess_sq)
    return mean, sd, sd / np.sqrt(ess), se_var / (2 * sd)


def test_eight_schools_nuts_matches_quadrature(eight_schools_post):
    post = eight_schools_post
    ref = eight_schools_by_quadrature()
    assert post.info["diagnostics"]["divergences"] == 0
    for name in ("mu", "tau", "theta"):
        mean, sd, se_mean, se_sd = _mcse_mean_sd(post.samples[name])
        ref_mean, ref_sd = ref[name]
        assert np.all(np.abs(mean - ref_mean) < 4 * se_mean), (name, mean, ref_mean, se_mean)
        assert np.all(np.abs(sd - ref_sd) < 4 * se_sd), (name, sd, ref_sd, se_sd)


def test_eight_schools_default_parameterization_is_noncentred():
    from conftest import eight_schools_model

    built = eight_schools_model().build(bm.datasets.eight_schools())
    assert not np.any(built.centered)  # every school non-centred
    assert "theta_raw" in built.hidden


def test_data_rich_tasks_come_out_centred():
    # two precise tasks (se 0.5) four units apart: the spread between tasks (DL estimate
    # about 2.8) dwarfs their noise, so they are centred; the vague task (se 20) is not
    ts = bm.TaskSet.from_estimates(y=[1.0, 5.0, 3.0], se=[0.5, 0.5, 20.0])
    built = bm.Hierarchical(bm.likelihoods.NormalKnownNoise()).build(ts)
    assert built.centered.tolist() == [True, True, False]
    # the same precision with estimates that agree: no spread to speak of, all non-centred
    ts = bm.TaskSet.from_estimates(y=[1.0, 1.1, 3.0], se=[0.5, 0.5, 20.0])
    assert not bm.Hierarchical(bm.likelihoods.NormalKnownNoise()).build(ts).centered.any()


def test_hierarchical_linear_with_fixed_population_matches_conjugate_posterior():
    """Population fixed at (mu, tau): each task's posterior is the conjugate Gaussian
    N(P^-1 (S^-1 mu + X'y / s^2), P^-1), P = S^-1 + X'X / s^2, computed here directly."""
    rng = np.random.default_rng(3)
    mu, tau, noise = np.array([1.0, -0.5]), np.array([0.6, 0.3]), 0.5
    counts = [3, 5, 8, 12]
    task = np.repeat(np.arange(4), counts)
    x = rng.uniform(-2, 2, size=task.size)
    theta = mu + tau * rng.standard_normal((4, 2))
    y = theta[task, 0] + theta[task, 1] * x + noise * rng.standard_normal(task.size)
    ts = bm.TaskSet.from_arrays(y=y, x=x, task=task, noise_scale=noise)
    model = bm.Hierarchical(
        bm.likelihoods.LinearRegression(), bm.populations.Normal(loc=mu, scale=tau)
    )
    post = bm.fit(model, ts, seed=1, num_chains=4, num_warmup=500, num_samples=1000)
    assert post.dims["theta"] == ["task", "coef"]
    assert post.coords["coef"] == ["intercept", "x0"]
    draws = post.samples["theta"]
    mean, sd, se_mean, se_sd = _mcse_mean_sd(draws)
    S_inv = np.diag(1.0 / tau**2)
    for t in range(4):
        X = np.stack([np.ones(counts[t]), x[task == t]], axis=1)
        P = S_inv + X.T @ X / noise**2
        cov = np.linalg.inv(P)
        m = cov @ (S_inv @ mu + X.T @ y[task == t] / noise**2)
        assert np.all(np.abs(mean[t] - m) < 4 * se_mean[t]), (t, mean[t], m)
        assert np.all(np.abs(sd[t] - np.sqrt(np.diag(cov))) < 4 * se_sd[t])


def test_vi_recovers_logistic_population_mean():
    model, tasks = bm.load_model("models/hier_logistic.py")
    from importlib import util

    spec = util.spec_from_file_location("hl", "models/hier_logistic.py")
    mod = util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    post = bm.fit(
        model,
        tasks,
        method="vi",
        seed=0,
        num_steps=3000,
        learning_rate=0.02,
        num_samples=2000,
        warn=False,
    )
    assert post.num_chains == 1 and post.num_draws == 2000
    # The ELBO is flat after 3,000 steps, but the guide's log tau still moves about half its
    # sd over the last half of the run (tau 0.46 here, 0.48 after 30,000 steps, where the
    # criterion passes), so the run is honestly reported as not converged.
    crit = post.info["convergence"]
    assert crit["elbo_change"] < 0.01
    assert not post.info["converged"] and crit["loc_drift"] > 0.1
    assert len(post.info["elbo"]) == 3000
    mean = post.mean("mu")
    # The truth is one draw of a data set: even the exact posterior puts it within 1 sd only
    # ~68% of the time, so the check is the 2-sd (95%) band of the NUTS posterior on this
    # data set: sd (0.119, 0.114) around (-0.359, 1.001), from bm.fit(model, tasks, seed=0)
    # with defaults (0 divergences, R-hat < 1.01). VI's own sd is not the yardstick: the
    # mean-field guide on the non-centred model reports about half of it (0.063, 0.082).
    nuts_sd = np.array([0.119, 0.114])
    assert np.all(np.abs(mean - mod.TRUE_MU) < 2 * nuts_sd), (mean, mod.TRUE_MU)


@pytest.mark.slow
def test_vi_agrees_with_nuts_on_logistic():
    model, tasks = bm.load_model("models/hier_logistic.py")
    vi = bm.fit(
        model, tasks, method="vi", seed=0, num_steps=3000, learning_rate=0.02, num_samples=2000
    )
    nuts = bm.fit(model, tasks, method="nuts", seed=0)
    assert np.all(np.abs(vi.mean("mu") - nuts.mean("mu")) < 0.5 * nuts.sd("mu"))


def test_user_numpyro_model_with_task_plate():
    def my_model(y, task_index, num_tasks, noise_scale, **_):
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", dist.HalfNormal(5.0))
        with numpyro.plate("task", num_tasks):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            theta = numpyro.deterministic("theta", mu + tau * z)
        with numpyro.plate("obs", y.shape[0]):
            numpyro.sample("y", dist.Normal(theta[task_index], noise_scale), obs=y)

    post = bm.fit(
        my_model,
        bm.datasets.eight_schools(),
        num_chains=2,
        num_warmup=300,
        num_samples=300,
        warn=False,
    )
    assert post.samples["theta"].shape == (2, 300, 8)
    assert post.dims["theta"] == ["task"] and post.dims["z"] == ["task"]
    assert post.log_likelihood["y"].shape == (2, 300, 8)


def test_pooled_and_unpooled_match_conjugate_answers():
    """With a N(0, 100) prior, complete pooling has the conjugate posterior
    precision 1/100^2 + sum 1/se^2 and no pooling has 1/100^2 + 1/se_j^2 per school."""
    tasks = bm.datasets.eight_schools()
    lik = bm.likelihoods.NormalKnownNoise()
    kw = dict(num_chains=2, num_warmup=300, num_samples=1000, warn=False)
    pooled = bm.fit(bm.pooled(lik, prior=dist.Normal(0, 100)), tasks, **kw)
    unpooled = bm.fit(bm.unpooled(lik, prior=dist.Normal(0, 100)), tasks, **kw)
    assert pooled.samples["theta"].shape == (2, 1000)
    assert unpooled.samples["theta"].shape == (2, 1000, 8)
    prec = 1e-4 + np.sum(1 / SCHOOL_SE**2)
    for post, ref_mean, ref_sd in (
        (pooled, np.sum(SCHOOL_Y / SCHOOL_SE**2) / prec, 1 / np.sqrt(prec)),
        (
            unpooled,
            (SCHOOL_Y / SCHOOL_SE**2) / (1e-4 + 1 / SCHOOL_SE**2),
            1 / np.sqrt(1e-4 + 1 / SCHOOL_SE**2),
        ),
    ):
        mean, sd, se_mean, se_sd = _mcse_mean_sd(post.samples["theta"])
        assert np.all(np.abs(mean - ref_mean) < 4 * se_mean)
        assert np.all(np.abs(sd - ref_sd) < 4 * se_sd)


def test_partial_pooling_shrinks_each_school_toward_the_population_mean(eight_schools_post):
    """theta_j's mean lies between the population mean and the school's own estimate."""
    theta, mu = eight_schools_post.mean("theta"), eight_schools_post.mean("mu")
    assert np.all((theta - mu) * (SCHOOL_Y - theta) > 0)


@pytest.mark.parametrize("guide", ["normal", "lowrank", "multivariate"])
def test_vi_guides_give_one_chain_of_draws(guide):
    import optax

    post = bm.fit(
        bm.Hierarchical(bm.likelihoods.NormalKnownNoise()),
        bm.datasets.eight_schools(),
        method="vi",
        guide=guide,
        num_steps=400,
        num_samples=200,
        optimizer=optax.adam(0.02),
        warn=False,
    )
    assert post.samples["theta"].shape == (1, 200, 8)
    assert post.log_likelihood["y"].shape == (1, 200, 8)
    assert np.all(np.isfinite(post.info["elbo"]))
    # the ELBO improves over the run
    assert post.info["elbo"][-50:].mean() > post.info["elbo"][:50].mean()
