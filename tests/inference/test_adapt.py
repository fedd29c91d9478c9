"""New-task posteriors (adapt), the population predictive, and predict."""

import jax
import numpy as np
import pytest
from conftest import COMPILES
from test_fit import SCHOOL_SE, SCHOOL_Y, _log_normal

import bayesmeta as bm


def new_school_by_quadrature(y_new, se_new):
    """Posterior mean and sd of a ninth school's theta given all nine estimates, by brute
    force over (mu, log tau) with theta_new | mu, tau conjugate (same priors as the fit)."""
    mu = np.linspace(-25.0, 45.0, 1401)
    tau = np.exp(np.linspace(-9.0, 6.0, 1501))
    M, T = np.meshgrid(mu, tau, indexing="ij")
    y = np.append(SCHOOL_Y, y_new)
    se = np.append(SCHOOL_SE, se_new)
    logp = _log_normal(M, 0.0, 5.0) + np.log(2.0 / (np.pi * 5.0 * (1.0 + (T / 5.0) ** 2)))
    logp += np.log(T)
    logp += np.sum(
        _log_normal(y[:, None, None], M[None], np.sqrt(se[:, None, None] ** 2 + T[None] ** 2)),
        axis=0,
    )
    w = np.exp(logp - logp.max())
    w /= w.sum()
    prec = 1.0 / se_new**2 + 1.0 / T**2
    cmean = (y_new / se_new**2 + M / T**2) / prec
    m = np.sum(w * cmean)
    return m, np.sqrt(np.sum(w * (1.0 / prec + cmean**2)) - m**2)


@pytest.fixture(scope="module")
def adapted(eight_schools_post):
    new = bm.TaskSet.from_estimates(y=[5.0, 40.0], se=[10.0, 2.0], labels=["near", "far"])
    return eight_schools_post.adapt(new, seed=0), new


def _check_against_quadrature(draws, ess, y_new, se_new):
    ref_mean, ref_sd = new_school_by_quadrature(y_new, se_new)
    mean, sd = draws.mean(), draws.std()
    se_mean = sd / np.sqrt(ess)
    assert abs(mean - ref_mean) < 4 * se_mean, (mean, ref_mean, se_mean)
    # sd of a near-normal posterior: MCSE ~ sd / sqrt(2 ESS)
    assert abs(sd - ref_sd) < 4 * sd / np.sqrt(2 * ess), (sd, ref_sd)


def test_adapt_conjugate_matches_quadrature(adapted, eight_schools_post):
    post, new = adapted
    info = post.info["adapt"]
    assert info["method"]["near"] == "conjugate"
    # Monte-Carlo error is bounded by both the importance ESS and the fit's own ESS
    ess = min(info["ess"]["near"], eight_schools_post.info["diagnostics"]["ess_bulk"]["tau"])
    _check_against_quadrature(post.samples["theta"][..., 0].ravel(), ess, 5.0, 10.0)
    assert post.labels == ("near", "far")
    assert post.samples["theta"].shape[:2] == eight_schools_post.samples["mu"].shape[:2]


def test_adapt_falls_back_to_nuts_for_a_surprising_task(adapted, eight_schools_post):
    post, _ = adapted
    info = post.info["adapt"]
    assert info["ess"]["far"] < info["min_ess"]
    assert info["method"]["far"] == "nuts"
    draws = post.samples["theta"][..., 1]
    from numpyro.diagnostics import effective_sample_size

    ess = float(effective_sample_size(draws))
    _check_against_quadrature(draws.ravel(), ess, 40.0, 2.0)


def test_adapt_importance_agrees_with_conjugate(eight_schools_post):
    new = bm.TaskSet.from_estimates(y=[5.0], se=[10.0], labels=["near"])
    imp = eight_schools_post.adapt(new, method="importance", seed=1)
    assert imp.info["adapt"]["method"]["near"] == "importance"
    ess = min(
        imp.info["adapt"]["ess"]["near"], eight_schools_post.info["diagnostics"]["ess_bulk"]["tau"]
    )
    _check_against_quadrature(imp.samples["theta"].ravel(), ess, 5.0, 10.0)


def test_population_is_the_hyperparameter_mixture(eight_schools_post):
    """log_prob of the learned prior equals the average of N(theta | mu_s, tau_s)."""
    pop = eight_schools_post.population()
    mu, tau = eight_schools_post.flat("mu"), eight_schools_post.flat("tau")
    for theta in (-10.0, 0.0, 7.5):
        dens = np.mean(np.exp(_log_normal(theta, mu, tau)))
        assert float(pop.log_prob(theta)) == pytest.approx(np.log(dens), rel=1e-10)
    import jax

    draws = np.asarray(pop.sample(jax.random.PRNGKey(0), (20000,)))
    # mean of the mixture = mean of mu draws
    assert abs(draws.mean() - mu.mean()) < 4 * draws.std() / np.sqrt(20000) + 4 * mu.std() / 40


def test_predict_shapes_and_moments(eight_schools_post):
    post = eight_schools_post
    rep = post.predict(0)
    assert rep.shape == (4, 1000, 8)
    # replicated school A: mean of theta_A, variance var(theta_A) + se_A^2
    a = rep[..., 0].ravel()
    th = post.flat("theta")[:, 0]
    assert abs(a.mean() - th.mean()) < 4 * np.sqrt(th.var() + 225) / np.sqrt(1000)
    new = post.predict(1, num_obs=3, noise_scale=1.0)
    assert new.shape == (4, 1000, 3)
    one = post.predict(2, task="G", num_obs=2, noise_scale=0.5)
    assert one.shape == (4, 1000, 2)
    with pytest.raises(ValueError, match="noise_scale"):
        post.predict(0, num_obs=3)


def test_adapt_rejects_bad_input(eight_schools_post):
    with pytest.raises(ValueError, match="method: must be one of"):
        eight_schools_post.adapt(bm.datasets.eight_schools(), method="magic")
    with pytest.raises(ValueError, match="new_tasks: expected a bm.TaskSet"):
        eight_schools_post.adapt([1.0, 2.0])


COUNTER = COMPILES  # conftest's one listener


def _compiles(fn):
    """``(result, number of XLA compilations while running fn())``."""
    COUNTER.count, COUNTER.active = 0, True
    try:
        out = fn()
    finally:
        COUNTER.active = False
    return out, COUNTER.count


def test_second_adapt_of_the_same_shapes_compiles_nothing(eight_schools_post):
    """adapt compiles its per-task functions once per model (kept on the model object, the
    data inputs of them), and the NUTS fallback once for all tasks of one shape, so a
    second adapt on new tasks of the same shapes runs without compiling."""
    from bayesmeta.inference.nuts import CompiledNUTS

    post = eight_schools_post
    labels = ["near", "far", "farther"]
    first = bm.TaskSet.from_estimates(y=[5.0, 40.0, -35.0], se=[10.0, 2.0, 2.0], labels=labels)
    second = bm.TaskSet.from_estimates(y=[2.0, 45.0, -40.0], se=[9.0, 2.0, 2.5], labels=labels)
    a = post.adapt(first, seed=0)
    expected = {"near": "conjugate", "far": "nuts", "farther": "nuts"}
    assert a.info["adapt"]["method"] == expected
    programs = [p for p in post.model._adapt_programs.values() if isinstance(p, CompiledNUTS)]
    assert len(programs) == 1 and programs[0].compiles == 1  # one compile for both tasks
    b, count = _compiles(lambda: post.adapt(second, seed=1))
    assert count == 0
    assert b.info["adapt"]["method"] == expected
    assert programs[0].compiles == 1
    # the compiled functions ran on the second tasks' data
    assert abs(b.samples["theta"][..., 2].mean() - a.samples["theta"][..., 2].mean()) > 2.0
    post.adapt(first, method="importance", seed=0)
    imp, count = _compiles(lambda: post.adapt(second, method="importance", seed=1))
    assert count == 0 and imp.info["adapt"]["method"]["near"] == "importance"


def test_predict_takes_a_seed_and_the_low_level_predict_a_key(eight_schools_post):
    from bayesmeta.inference.adapt import predict

    post = eight_schools_post
    by_seed = post.predict(seed=3, num_obs=2, noise_scale=1.0)
    np.testing.assert_array_equal(by_seed, post.predict(3, num_obs=2, noise_scale=1.0))
    by_key = predict(post, jax.random.PRNGKey(3), num_obs=2, noise_scale=1.0)
    np.testing.assert_array_equal(by_seed, by_key)
    with pytest.raises(ValueError, match="seed: Posterior.predict takes an integer seed"):
        post.predict(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="key: .* takes a JAX PRNG key"):
        predict(post, 0)
    with pytest.raises(ValueError, match="seed: adapt takes an integer seed"):
        post.adapt(bm.TaskSet.from_estimates(y=[1.0], se=[1.0]), seed=jax.random.PRNGKey(0))
