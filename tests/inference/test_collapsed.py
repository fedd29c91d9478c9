"""Collapsed inference: hyperparameters by NUTS on the exact marginal likelihood, theta_t
drawn exactly; checked against the exact normal-normal answer and against full NUTS."""

import numpy as np
import numpyro.distributions as dist
import pytest
from test_fit import _mcse_mean_sd

import bayesmeta as bm
from bayesmeta.exact.linear import LinearHyper, linear_log_marginal, linear_task_posterior
from bayesmeta.inference import _gaussian as gauss


@pytest.fixture(scope="module")
def schools_collapsed():
    from conftest import eight_schools_model

    return bm.fit(
        eight_schools_model(),
        bm.datasets.eight_schools(),
        method="collapsed",
        seed=2,
        progress_bar=False,
    )


def test_collapsed_matches_exact_normal_normal(schools_collapsed):
    from conftest import eight_schools_model

    exact = bm.fit(eight_schools_model(), bm.datasets.eight_schools(), method="exact")
    ref = exact.info["exact"]
    post = schools_collapsed
    assert post.info["diagnostics"]["divergences"] == 0
    for name, ref_mean, ref_sd in (
        ("mu", ref.mu_mean, ref.mu_sd),
        ("tau", ref.tau_mean, ref.tau_sd),
        ("theta", ref.theta_mean, ref.theta_sd),
    ):
        mean, sd, se_mean, se_sd = _mcse_mean_sd(post.samples[name])
        assert np.all(np.abs(mean - ref_mean) < 4 * se_mean), (name, mean, ref_mean)
        assert np.all(np.abs(sd - ref_sd) < 4 * se_sd), (name, sd, ref_sd)


def test_collapsed_has_the_schema_of_full_nuts(schools_collapsed, eight_schools_post):
    from conftest import eight_schools_model

    a, b = schools_collapsed, eight_schools_post
    assert set(a.samples) == set(b.samples)
    assert a.dims == b.dims and a.coords == b.coords
    assert {k: v.shape for k, v in a.samples.items()} == {k: v.shape for k, v in b.samples.items()}
    assert a.log_likelihood["y"].shape == b.log_likelihood["y"].shape
    # the independence sampler (the default) has no trajectories: no step size, tree
    # depth or energy; collapsed NUTS has every field of full NUTS
    assert a.info["hyper_sampler"]["used"] == "independence"
    assert set(a.sample_stats) == {"diverging", "acceptance_rate", "lp"}
    nuts = bm.fit(
        eight_schools_model(),
        bm.datasets.eight_schools(),
        method="collapsed",
        hyper_sampler="nuts",
        num_samples=50,
        num_warmup=50,
        progress_bar=False,
    )
    assert nuts.info["hyper_sampler"] == {"used": "nuts"}
    assert set(nuts.sample_stats) == set(b.sample_stats)


def test_collapsed_agrees_with_full_nuts_on_linear_regression():
    """Shared learned noise, two coefficients per task: both fits target one posterior."""
    model, tasks = bm.load_model("models/hier_linear.py")
    kw = dict(seed=0, num_chains=2, num_warmup=500, num_samples=1000, progress_bar=False)
    col = bm.fit(model, tasks, method="collapsed", **kw)
    full = bm.fit(model, tasks, method="nuts", **kw)
    for name in ("mu", "tau", "sigma", "theta"):
        m1, _, se1, _ = _mcse_mean_sd(col.samples[name])
        m2, _, se2, _ = _mcse_mean_sd(full.samples[name])
        assert np.all(np.abs(m1 - m2) < 4 * np.sqrt(se1**2 + se2**2)), name


def test_auto_picks_collapsed_when_eligible():
    from bayesmeta.inference import ENGINES

    def _eligible_collapsed(model):  # the registry's eligibility of the collapsed engine
        return ENGINES["collapsed"].why_not(model, None)

    assert _eligible_collapsed(bm.Hierarchical(bm.likelihoods.NormalKnownNoise())) is None
    assert _eligible_collapsed(bm.Hierarchical(bm.likelihoods.LogisticRegression())) is not None
    assert _eligible_collapsed(bm.Hierarchical(bm.likelihoods.Normal(noise="task"))) is not None
    assert (
        _eligible_collapsed(
            bm.Hierarchical(bm.likelihoods.NormalKnownNoise(), bm.populations.StudentT())
        )
        is not None
    )


def test_collapsed_rejects_ineligible_models():
    ts = bm.TaskSet.from_arrays(y=[0.0, 1.0, 1.0], x=[0.0, 1.0, 2.0], task=[0, 0, 1])
    with pytest.raises(
        ValueError,
        match="'collapsed' needs a Gaussian likelihood.*LogisticRegression is not Gaussian",
    ):
        bm.fit(bm.Hierarchical(bm.likelihoods.LogisticRegression()), ts, method="collapsed")


def test_scalar_fast_path_equals_the_general_algebra():
    rng = np.random.default_rng(0)
    task = np.repeat(np.arange(5), [1, 2, 3, 4, 5])
    ts = bm.TaskSet.from_arrays(
        y=rng.normal(size=15), task=task, noise_scale=rng.uniform(0.5, 2, 15)
    )
    stats = gauss.task_stats(bm.likelihoods.NormalKnownNoise(), ts)
    hyper = LinearHyper(np.array([0.3]), np.array([[0.7]]), np.array(1.3))
    np.testing.assert_allclose(
        gauss.log_marginal(stats, hyper), linear_log_marginal(stats, hyper), rtol=1e-12
    )
    a, b = gauss.task_posterior(stats, hyper), linear_task_posterior(stats, hyper)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12)
    np.testing.assert_allclose(a.cov, b.cov, rtol=1e-12)


def test_mvnormal_population_collapses():
    model, tasks = bm.load_model("models/hier_linear.py")
    mv = bm.Hierarchical(
        model.likelihood,
        bm.populations.MvNormal(loc=dist.Normal(0.0, 3.0), scale=dist.HalfNormal(2.0)),
    )
    post = bm.fit(
        mv,
        tasks,
        method="collapsed",
        num_chains=2,
        num_warmup=300,
        num_samples=300,
        progress_bar=False,
        warn=False,
    )
    assert post.samples["corr_chol"].shape == (2, 300, 2, 2)
    assert post.samples["theta"].shape == (2, 300, 20, 2)


def _short_opts(**kw):
    from bayesmeta.inference.nuts import NUTS_OPTIONS

    return dict(NUTS_OPTIONS, num_warmup=20, num_samples=20, progress_bar=False, **kw)


@pytest.mark.parametrize("chains", [1, 3])
def test_compiled_collapsed_loop_equals_numpyro_mcmc(chains):
    """The compiled loop kept for refits runs the same NUTS kernel with the same keys as
    numpyro.infer.MCMC (vectorised chains): equal draws and statistics up to float64
    rounding (a different fusion of the same arithmetic)."""
    from conftest import eight_schools_model

    from bayesmeta.inference import collapsed as col
    from bayesmeta.inference.nuts import run_nuts

    model = eight_schools_model()
    stats = gauss.task_stats(model.likelihood, bm.datasets.eight_schools())
    opts = _short_opts(num_chains=chains)
    ref, ref_extra, _ = run_nuts(col._hyper_model(model, ()), {"stats": stats}, 5, opts)
    got, got_extra = col._CompiledNUTS(col._hyper_model(model, ()), opts).run(5, {"stats": stats})
    for k in ref:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(ref[k]), rtol=1e-8, atol=1e-10)
    for k in ref_extra:
        np.testing.assert_allclose(
            np.asarray(got_extra[k], float), np.asarray(ref_extra[k], float), rtol=1e-8, atol=1e-10
        )


@pytest.mark.parametrize("sampler", ["independence", "nuts"])
def test_refit_reuses_the_compiled_sampler_with_the_new_data(sampler):
    """A second fit of the same model object on new data of the same shapes reuses the
    compiled sampler, and its draws are those of a fresh compile on the new data: the data
    are inputs of the compiled program, not constants baked into it. Both samplers of
    the hyperparameters (the independence sampler's programs, collapsed NUTS's loop)."""
    from conftest import eight_schools_model

    from bayesmeta.inference import collapsed as col

    model = eight_schools_model()
    first = bm.datasets.eight_schools()
    y = np.asarray(first.y) + 7.0  # same shapes, other values
    second = bm.TaskSet.from_estimates(y=y, se=np.asarray(first.noise_scale))
    kw = dict(
        method="collapsed",
        seed=3,
        num_warmup=30,
        num_samples=30,
        progress_bar=False,
        warn=False,
        hyper_sampler=sampler,
    )
    col.clear_compiled()
    a = bm.fit(model, first, **kw)
    assert a.info["hyper_sampler"]["used"] == sampler
    b = bm.fit(model, second, **kw)
    assert (a.info["compiled"], b.info["compiled"]) == ("new", "reused")
    col.clear_compiled()
    c = bm.fit(model, second, **kw)
    assert c.info["compiled"] == "new"
    for k in ("mu", "tau", "theta"):
        np.testing.assert_array_equal(b.samples[k], c.samples[k])
    assert not np.allclose(a.samples["mu"], b.samples["mu"])
    # another model object (even an equal one) compiles its own
    assert bm.fit(eight_schools_model(), second, **kw).info["compiled"] == "new"


def test_compiled_samplers_live_on_the_model_and_go_with_it():
    """The compiled samplers are kept on the model object (the last few per model), not in
    a module-level cache: a model that is no longer used is freed with its samplers, and
    clear_compiled(model) forgets one model's samplers only."""
    import gc
    import weakref

    from conftest import eight_schools_model

    from bayesmeta.inference import collapsed as col

    # the sizes of the refit test above: the same program (read back from the session's
    # compilation cache, as it is a new model object)
    kw = dict(
        method="collapsed", seed=1, num_warmup=30, num_samples=30, progress_bar=False, warn=False
    )
    data = bm.datasets.eight_schools()
    model, other = eight_schools_model(), eight_schools_model()
    bm.fit(model, data, **kw)
    assert bm.fit(other, data, **kw).info["compiled"] == "new"
    assert len(model._collapsed_programs) == len(other._collapsed_programs) == 1
    col.clear_compiled(other)
    assert "_collapsed_programs" not in other.__dict__
    assert bm.fit(model, data, **kw).info["compiled"] == "reused"
    # bounded: at most 8 (shapes, options) per model, the most recently used kept
    stats = gauss.task_stats(model.likelihood, data)
    opts = dict(_short_opts(), chain_method="vectorized")
    for draws in range(4, 14):
        col._sampler(model, (), stats, dict(opts, num_samples=draws))
    assert len(model._collapsed_programs) == 8
    assert col._sampler(model, (), stats, dict(opts, num_samples=13))[1] is True
    assert col._sampler(model, (), stats, dict(opts, num_samples=4))[1] is False
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # nothing but the caller held the model (and its samplers)


def test_log_likelihood_is_computed_on_first_use(schools_collapsed):
    calls = []

    def pointwise():
        calls.append(1)
        return {"y": np.zeros((1, 4, 3))}

    post = bm.Posterior({"mu": np.zeros((1, 4))}, method="test", log_likelihood=pointwise)
    assert calls == []
    assert post.log_likelihood["y"].shape == (1, 4, 3)
    assert post.log_likelihood["y"].shape == (1, 4, 3)
    assert calls == [1]
    # the collapsed fit's deferred values are the row log-densities given theta
    ll = schools_collapsed.log_likelihood["y"]
    data = bm.datasets.eight_schools()
    th = schools_collapsed.samples["theta"]
    se = np.asarray(data.noise_scale)
    ref = -0.5 * np.log(2 * np.pi * se**2) - 0.5 * ((np.asarray(data.y) - th) / se) ** 2
    np.testing.assert_allclose(ll, ref, rtol=1e-10)


def test_chebyshev_marginal_equals_the_sum_over_tasks():
    """The Chebyshev form of the scalar marginal against the direct sum over tasks, value
    and gradient in (mu, tau, sigma^2), from tau = 0 to tau = 1e6: several rows per task,
    unequal noise scales, data far from 0 and a task without information (A = 0)."""
    import jax
    import jax.numpy as jnp

    from bayesmeta.inference._scalar_marginal import scalar_log_marginal_sum, scalar_marginal

    rng = np.random.default_rng(4)
    task = np.repeat(np.arange(300), rng.integers(1, 6, 300))
    n = task.size
    x = rng.normal(size=(n, 1))
    x[task == 7] = 0.0  # task 7 says nothing about its theta
    y = 50.0 + 2.0 * rng.normal(size=300)[task] * x[:, 0] + rng.normal(size=n)
    ts = bm.TaskSet.from_arrays(x=x, y=y, task=task, noise_scale=rng.uniform(0.3, 3.0, n))
    stats = gauss.task_stats(bm.likelihoods.LinearRegression(intercept=False), ts)
    assert float(stats.xtx[7, 0, 0]) == 0.0
    form, info = scalar_marginal(
        stats.xtx[:, 0, 0], stats.xty[:, 0], stats.yty, stats.count, stats.log_scale
    )
    assert info["form"] == "chebyshev" and info["max_rel_error"] <= 1e-12

    def direct(mu, tau, s2):
        h = LinearHyper(jnp.atleast_1d(mu), jnp.reshape(tau, (1, 1)), jnp.sqrt(s2))
        return jnp.sum(gauss.log_marginal(stats, h))

    def cheb(mu, tau, s2):
        return scalar_log_marginal_sum(form, mu, tau, s2)

    for mu, tau, s2 in [
        (0.0, 0.0, 1.0),
        (49.0, 1e-4, 0.5),
        (51.0, 2.0, 1.7),
        (-3.0, 40.0, 3.0),
        (50.0, 1e6, 0.9),
    ]:
        a = jax.value_and_grad(direct, (0, 1, 2))(mu, tau, s2)
        b = jax.value_and_grad(cheb, (0, 1, 2))(mu, tau, s2)
        np.testing.assert_allclose(float(b[0]), float(a[0]), rtol=1e-11)
        scale = np.max(np.abs(a[1])) + 1.0
        np.testing.assert_allclose(np.array(b[1]), np.array(a[1]), atol=1e-7 * scale)


def test_chebyshev_refuses_precisions_it_cannot_resolve():
    from bayesmeta.inference import collapsed as col
    from bayesmeta.inference._scalar_marginal import scalar_marginal

    # precisions over 12 orders of magnitude: grouping (a factor 30 per group) resolves
    # them; one group over the whole range cannot be resolved at degree 32
    A = np.logspace(-6, 6, 400)
    args = (A, A * 0.3, A * 0.1, np.ones(400), np.zeros(400))
    form, info = scalar_marginal(*args)
    assert form is not None and info["groups"] >= 8 and info["max_rel_error"] <= 1e-12
    form, info = scalar_marginal(*args, max_degree=32, group_ratio=1e12)
    assert form is None and "degree 32" in info["why"]
    stats = gauss.task_stats(bm.likelihoods.NormalKnownNoise(), bm.datasets.eight_schools())
    with pytest.raises(ValueError, match="marginal: 'chebyshev' needs scalar theta"):
        col._marginal_form(stats, (2,), "chebyshev")
    with pytest.raises(ValueError, match="marginal: must be one of"):
        col._marginal_form(stats, (), "fast")


def test_collapsed_chebyshev_matches_exact_on_eight_schools():
    from conftest import eight_schools_model

    data = bm.datasets.eight_schools()
    post = bm.fit(
        eight_schools_model(),
        data,
        method="collapsed",
        marginal="chebyshev",
        seed=4,
        progress_bar=False,
    )
    assert post.info["marginal"]["form"] == "chebyshev"
    ref = bm.fit(eight_schools_model(), data, method="exact").info["exact"]
    for name, ref_mean, ref_sd in (
        ("mu", ref.mu_mean, ref.mu_sd),
        ("tau", ref.tau_mean, ref.tau_sd),
    ):
        mean, sd, se_mean, se_sd = _mcse_mean_sd(post.samples[name])
        assert abs(mean - ref_mean) < 4 * se_mean, (name, mean, ref_mean)
        assert abs(sd - ref_sd) < 4 * se_sd, (name, sd, ref_sd)


def test_auto_uses_chebyshev_for_many_tasks_and_follows_the_direct_sampler():
    """With 400 tasks ``auto`` takes the Chebyshev form; its potential equals the direct
    one to ~1e-13, so with the same seed the two samplers take the same path: short float64
    runs agree draw for draw."""
    rng = np.random.default_rng(5)
    se = rng.uniform(0.5, 3.0, 400)
    ts = bm.TaskSet.from_estimates(
        y=1.0 + 0.8 * rng.normal(size=400) + se * rng.normal(size=400), se=se
    )
    from conftest import eight_schools_model

    model = eight_schools_model()
    kw = dict(
        method="collapsed", seed=6, num_warmup=30, num_samples=30, progress_bar=False, warn=False
    )
    cheb = bm.fit(model, ts, **kw)
    direct = bm.fit(model, ts, marginal="direct", **kw)
    assert cheb.info["marginal"]["form"] == "chebyshev"
    assert direct.info["marginal"]["form"] == "direct"
    for k in ("mu", "tau"):
        np.testing.assert_allclose(cheb.samples[k], direct.samples[k], rtol=1e-6)


def test_theta_completion_draws_follow_task_labels():
    # given the same hyperparameter draws, reordering the tasks reorders every theta draw
    # bit for bit: each task's normals come from a stream keyed by its label
    import jax
    import jax.numpy as jnp

    from bayesmeta import _streams
    from bayesmeta.inference.collapsed import _draw_theta

    rng = np.random.default_rng(4)
    y, se = rng.normal(size=9), rng.uniform(0.5, 2.0, 9)
    labels = [f"trial {i}" for i in range(9)]
    perm = rng.permutation(9)
    model = bm.Hierarchical(bm.likelihoods.NormalKnownNoise())
    hyper = {"mu": jnp.asarray(rng.normal(size=50)), "tau": jnp.asarray(rng.uniform(0.1, 3, 50))}

    def draws(order):
        ts = bm.TaskSet.from_estimates(y=y[order], se=se[order], labels=[labels[i] for i in order])
        stats = gauss.task_stats(model.likelihood, ts)
        hashes = jnp.asarray(_streams.label_hashes(ts.labels))
        key = jax.random.PRNGKey(7)
        args = (model.population, False, (), stats, hyper, key, 16, None, None, hashes)
        return np.asarray(_draw_theta(*args))

    a, b = draws(np.arange(9)), draws(perm)
    assert a.shape == (9, 50)  # scalar theta comes task-major
    np.testing.assert_array_equal(a[perm], b)


def test_task_statistics_of_concrete_data_equal_the_jax_segment_sums():
    """linear_sufficient_stats sums concrete data with numpy (float64 bincounts): the same
    statistics as its JAX segment sums (the reference, run under jit), for a design of
    three columns and known noise scales, with a task that has no rows."""
    import jax

    from bayesmeta.exact import linear

    rng = np.random.default_rng(3)
    n, num = 60, 7
    x, y = rng.normal(size=(n, 3)), rng.normal(size=n)
    idx = rng.integers(0, num - 1, size=n)  # task 6 gets no rows
    scale = rng.uniform(0.5, 2.0, n)
    got = linear.linear_sufficient_stats(x, y, idx, num, scale)
    traced = jax.jit(linear.linear_sufficient_stats, static_argnums=3)
    ref = traced(x, y, idx, num, scale)
    for field in ("xtx", "xty", "yty", "count", "log_scale"):
        a, b = np.asarray(getattr(got, field)), np.asarray(getattr(ref, field))
        assert a.shape == b.shape and a.dtype == b.dtype, field
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=field)
    assert np.asarray(got.count)[6] == 0
