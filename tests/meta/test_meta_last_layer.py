"""The Bayesian last layer (bm.meta.bayesian_last_layer): exact adaptation against
bm.exact.linear_task_posterior and a dense closed form, the meta-objective against
scipy's multivariate normal, the meta-gradient against finite differences, the ArviZ
export, padding, no retracing and bad input. float64 throughout (tests/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import bayesmeta as bm
import bayesmeta.meta as meta

F = 3


def _features(net, x):
    """A tiny network: 1 -> F tanh features."""
    return jnp.tanh(x[:, None] * net["w"] + net["b"])


def _net():
    return {"w": jnp.array([0.8, -1.3, 0.4]), "b": jnp.array([0.1, 0.5, -0.7])}


def _params():
    tril = jnp.array([[0.2, 0.0, 0.0], [0.3, -0.4, 0.0], [-0.1, 0.2, 0.1]])
    return meta.LastLayerParams(_net(), jnp.array([0.5, -0.2, 0.3]), tril, jnp.log(0.3))


def _tasks(seed=0, num_tasks=3, ns=4, nq=5):
    rng = np.random.default_rng(seed)

    def part(n):
        x = rng.uniform(-2, 2, size=(num_tasks, n))
        amp = rng.uniform(0.5, 2.0, size=(num_tasks, 1))
        return {
            "x": jnp.asarray(x),
            "y": jnp.asarray(amp * np.sin(x) + 0.1 * rng.normal(size=x.shape)),
        }

    return {"support": part(ns), "query": part(nq)}


def _learner(opt=None):
    return meta.bayesian_last_layer(
        _features, optax.sgd(1.0) if opt is None else opt, num_features=F
    )


def _dense_posterior(params, x, y):
    """The textbook Bayesian linear regression posterior, in numpy (independent)."""
    hyper = meta.last_layer_hyper(params)
    phi = np.asarray(_features(params.net, x))
    prior_cov = np.asarray(hyper.scale_tril @ hyper.scale_tril.T)
    s2 = float(hyper.noise) ** 2
    prec = np.linalg.inv(prior_cov) + phi.T @ phi / s2
    cov = np.linalg.inv(prec)
    mean = cov @ (np.linalg.solve(prior_cov, np.asarray(hyper.mu)) + phi.T @ np.asarray(y) / s2)
    return mean, cov


def test_adaptation_equals_the_exact_linear_posterior_on_the_features():
    learner = _learner()
    params = _params()
    batch = _tasks()
    g = learner.gaussians(params, batch["support"])
    # bm.exact on the learned features, all tasks in the flat layout
    x, y = batch["support"]["x"], batch["support"]["y"]
    phi = jax.vmap(_features, in_axes=(None, 0))(params.net, x).reshape(-1, F)
    task = np.repeat(np.arange(x.shape[0]), x.shape[1])
    st = bm.exact.linear_sufficient_stats(phi, y.reshape(-1), task, x.shape[0])
    exact = bm.exact.linear_task_posterior(st, meta.last_layer_hyper(params))
    np.testing.assert_allclose(g.mean, exact.mean, rtol=1e-10)
    np.testing.assert_allclose(g.cov, exact.cov, rtol=1e-10, atol=1e-14)
    for t in range(x.shape[0]):
        mean, cov = _dense_posterior(params, x[t], y[t])
        np.testing.assert_allclose(g.mean[t], mean, rtol=1e-8)
        np.testing.assert_allclose(g.cov[t], cov, rtol=1e-8)
        one = learner.adapt(params, {"x": x[t], "y": y[t]})
        np.testing.assert_allclose(one.mean, mean, rtol=1e-8)


def test_meta_loss_and_predictive_match_scipy():
    learner = _learner()
    params = _params()
    batch = _tasks()
    loss, task_losses = meta.build_last_layer_loss(_features)(params, batch)
    pred = learner.predict(params, batch["support"], batch["query"]["x"])
    sigma = float(jnp.exp(params.log_noise))
    for t in range(3):
        mean, cov = _dense_posterior(params, batch["support"]["x"][t], batch["support"]["y"][t])
        phi_q = np.asarray(_features(params.net, batch["query"]["x"][t]))
        pm, pc = phi_q @ mean, phi_q @ cov @ phi_q.T + sigma**2 * np.eye(phi_q.shape[0])
        ref = -stats.multivariate_normal(pm, pc).logpdf(np.asarray(batch["query"]["y"][t])) / 5
        np.testing.assert_allclose(float(task_losses[t]), ref, rtol=1e-9)
        np.testing.assert_allclose(pred.mean[t], pm, rtol=1e-9)
        np.testing.assert_allclose(pred.cov[t], pc, rtol=1e-9)
    np.testing.assert_allclose(float(loss), float(np.mean(task_losses)), rtol=1e-12)
    bare = learner.predict(params, batch["support"], batch["query"]["x"], noise=False)
    np.testing.assert_allclose(
        pred.cov - bare.cov, sigma**2 * np.eye(5)[None].repeat(3, 0), atol=1e-12
    )


@pytest.mark.parametrize("student", [False, True])
def test_meta_gradient_matches_central_finite_differences(student):
    learner = _student_learner() if student else _learner()
    params = _student_params() if student else _params()
    batch = _tasks()
    state = learner.init(params)
    step = jax.jit(learner.step)
    new, info = step(state, batch)
    grad = jax.tree.map(lambda a, b: a - b, params, new.params)  # sgd(1.0): minus the gradient
    flat_grad, unravel = jax.flatten_util.ravel_pytree(grad)
    flat = jax.flatten_util.ravel_pytree(params)[0]
    meta_loss = jax.jit(lambda f: meta.build_last_layer_loss(_features)(unravel(f), batch)[0])
    np.testing.assert_allclose(float(meta_loss(flat)), float(info.loss), rtol=1e-12)
    eps = 1e-6
    fd = np.array(
        [
            (meta_loss(flat + eps * e) - meta_loss(flat - eps * e)) / (2 * eps)
            for e in np.eye(flat.size)
        ]
    )
    # every coordinate: the network, the prior mean, the Cholesky factor, the noise
    np.testing.assert_allclose(flat_grad, fd, rtol=1e-6, atol=1e-8)
    assert np.all(np.abs(fd[: 2 * F]) > 1e-6)  # the features' weights do get a gradient
    if student:  # log a and log b (the last two coordinates) are learned
        assert abs(fd[-1]) > 1e-4 and abs(fd[-2]) > 1e-4


def test_loss_before_is_the_prior_predictive():
    learner = _learner()
    params = _params()
    batch = _tasks()
    _, info = jax.jit(learner.step)(learner.init(params), batch)
    hyper = meta.last_layer_hyper(params)
    prior_cov = np.asarray(hyper.scale_tril @ hyper.scale_tril.T)
    refs = []
    for t in range(3):
        phi = np.asarray(_features(params.net, batch["query"]["x"][t]))
        cov = phi @ prior_cov @ phi.T + float(hyper.noise) ** 2 * np.eye(5)
        refs.append(
            -stats.multivariate_normal(phi @ np.asarray(hyper.mu), cov).logpdf(
                np.asarray(batch["query"]["y"][t])
            )
            / 5
        )
    np.testing.assert_allclose(float(info.loss_before), np.mean(refs), rtol=1e-9)


def test_padding_changes_nothing():
    learner = _learner()
    params = _params()
    batch = _tasks()
    pad = lambda a: jnp.concatenate([a, jnp.full((3, 2), 7.0)], axis=1)  # noqa: E731
    mask = jnp.concatenate([jnp.ones((3, 4), bool), jnp.zeros((3, 2), bool)], axis=1)
    support = {"x": pad(batch["support"]["x"]), "y": pad(batch["support"]["y"]), "mask": mask}
    padded = {"support": support, "query": batch["query"]}
    loss_fn = meta.build_last_layer_loss(_features)
    np.testing.assert_allclose(loss_fn(params, padded)[1], loss_fn(params, batch)[1], rtol=1e-12)
    np.testing.assert_allclose(
        learner.gaussians(params, support).mean,
        learner.gaussians(params, batch["support"]).mean,
        rtol=1e-12,
    )


def test_meta_training_raises_the_predictive_density():
    # tasks y = a sin(x): the features can learn sin; 150 Adam steps on one fixed batch
    learner = _learner(optax.adam(3e-2))
    state = learner.init(_net())
    batch = _tasks(1, num_tasks=8)
    step = jax.jit(learner.step)
    state, first = step(state, batch)
    for _ in range(150):
        state, info = step(state, batch)
    assert float(info.loss) < float(first.loss) - 0.5


@pytest.mark.arviz
def test_posterior_exports_to_arviz_with_a_task_dim():
    from bayesmeta.arviz import posterior_group

    learner = _learner()
    params = _params()
    batch = _tasks()
    post = learner.posterior(
        params, batch["support"], num_draws=400, seed=1, labels=["a", "b", "c"]
    )
    assert post.method == "bayesian_last_layer"
    assert post.dims["w"] == ["task", "feature"]
    data = post.to_arviz()
    group = posterior_group(data)
    assert group["w"].shape == (1, 400, 3, F)
    assert list(data.posterior["w"].dims) == ["chain", "draw", "task", "feature"]
    assert list(data.posterior["task"].values) == ["a", "b", "c"]
    exact = learner.gaussians(params, batch["support"])
    # draws agree with the exact posterior mean within 4 Monte Carlo standard errors
    sd = np.sqrt(np.diagonal(np.asarray(exact.cov), axis1=-2, axis2=-1))
    err = np.abs(group["w"][0].mean(0) - np.asarray(exact.mean)) / (sd / np.sqrt(400))
    assert np.all(err < 4.0)
    assert float(post.info["noise"]) == pytest.approx(0.3)


def test_jitted_step_traces_once():
    calls = {"features": 0}

    def features(net, x):
        calls["features"] += 1
        return _features(net, x)

    learner = meta.bayesian_last_layer(features, optax.adam(1e-2), num_features=F)
    step = jax.jit(learner.step)
    state = learner.init(_net())
    state, _ = step(state, _tasks(0))
    after = calls["features"]
    for seed in range(1, 4):
        state, info = step(state, _tasks(seed))
    assert calls["features"] == after and int(state.count) == 4
    learner.gaussians(state, _tasks(0)["support"])
    n = calls["features"]
    learner.gaussians(state, _tasks(1)["support"])
    assert calls["features"] == n  # the compiled adaptation is kept


def test_bad_inputs_before_compiling():
    learner = _learner()
    params = _params()
    batch = _tasks()
    with pytest.raises(ValueError, match="feature_fn"):
        meta.bayesian_last_layer("phi", num_features=2)
    with pytest.raises(ValueError, match="num_features"):
        meta.bayesian_last_layer(_features, num_features=0)
    with pytest.raises(ValueError, match="noise"):
        meta.bayesian_last_layer(_features, num_features=F, noise=0.0)
    with pytest.raises(ValueError, match="feature_fn: returned shape"):
        meta.bayesian_last_layer(_features, num_features=4).gaussians(
            meta.LastLayerParams(_net(), jnp.zeros(4), jnp.zeros((4, 4)), jnp.asarray(0.0)),
            batch["support"],
        )
    with pytest.raises(ValueError, match="must have shapes"):
        learner.init(
            meta.LastLayerParams(_net(), jnp.zeros(2), jnp.zeros((3, 3)), jnp.asarray(0.0))
        )
    with pytest.raises(ValueError, match="'support' and 'query'"):
        learner.step(learner.init(params), {"support": batch["support"]})
    bad = {"x": batch["support"]["x"], "y": batch["support"]["y"].at[1, 2].set(jnp.nan)}
    with pytest.raises(ValueError, match=r"task 1, row 2"):
        learner.step(learner.init(params), {"support": bad, "query": batch["query"]})
    with pytest.raises(ValueError, match="number of tasks"):
        learner.step(
            learner.init(params), {"support": _tasks(0, 2)["support"], "query": batch["query"]}
        )
    with pytest.raises(ValueError, match=r"\['x'\]"):
        learner.gaussians(params, {"x": batch["support"]["x"][:, :2], "y": batch["support"]["y"]})
    with pytest.raises(ValueError, match="closed form"):
        learner.adapt(params, {"x": jnp.zeros(2), "y": jnp.zeros(2)}, num_steps=5)
    with pytest.raises(ValueError, match="LastLayerParams"):
        learner.gaussians(_net(), batch["support"])
    with pytest.raises(ValueError, match="x_query"):
        learner.predict(params, batch["support"], batch["query"]["x"][:2])


# ---------------------------------------------------- predictive="student_t" (task scale)
A, B = 2.5, 0.4  # the task scale's InverseGamma(a, b)


def _student_params():
    p = _params()
    return p._replace(log_concentration=jnp.log(A), log_rate=jnp.log(B))


def _student_learner(opt=None):
    return meta.bayesian_last_layer(
        _features, optax.sgd(1.0) if opt is None else opt, num_features=F, predictive="student_t"
    )


def _dense_nig(params, x, y):
    """The textbook normal-inverse-gamma update in numpy (independent of bm.exact)."""
    mean, cov = _dense_posterior(params, x, y)  # theta | s^2 = 1, y
    hyper = meta.last_layer_hyper(params)
    phi = np.asarray(_features(params.net, x))
    k = phi @ np.asarray(hyper.cov) @ phi.T + float(hyper.noise) ** 2 * np.eye(len(y))
    r = np.asarray(y) - phi @ np.asarray(hyper.mu)
    return mean, cov, A + len(y) / 2, B + 0.5 * r @ np.linalg.solve(k, r)


def test_student_adaptation_equals_the_exact_nig_posterior_on_the_features():
    learner = _student_learner()
    params = _student_params()
    batch = _tasks()
    nig = learner.gaussians(params, batch["support"])
    assert isinstance(nig, bm.exact.NIGPosterior)
    x, y = batch["support"]["x"], batch["support"]["y"]
    phi = jax.vmap(_features, in_axes=(None, 0))(params.net, x).reshape(-1, F)
    task = np.repeat(np.arange(x.shape[0]), x.shape[1])
    st = bm.exact.linear_sufficient_stats(phi, y.reshape(-1), task, x.shape[0])
    exact = bm.exact.linear_task_posterior_t(st, meta.last_layer_hyper(params), A, B)
    for got, want in zip(nig, exact, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)
    for t in range(x.shape[0]):
        mean, cov, a, b = _dense_nig(params, x[t], y[t])
        np.testing.assert_allclose(nig.mean[t], mean, rtol=1e-8)
        np.testing.assert_allclose(nig.cov[t], cov, rtol=1e-8)
        np.testing.assert_allclose([nig.concentration[t], nig.rate[t]], [a, b], rtol=1e-9)
        one = learner.adapt(params, {"x": x[t], "y": y[t]})
        np.testing.assert_allclose(one.rate, b, rtol=1e-9)


def test_student_meta_loss_and_predictive_match_scipy_multivariate_t():
    learner = _student_learner()
    params = _student_params()
    batch = _tasks()
    _, task_losses = meta.build_last_layer_loss(_features)(params, batch)
    pred = learner.predict(params, batch["support"], batch["query"]["x"])
    assert isinstance(pred, bm.exact.StudentTPredictive)
    sigma = float(jnp.exp(params.log_noise))
    for t in range(3):
        mean, cov, a, b = _dense_nig(params, batch["support"]["x"][t], batch["support"]["y"][t])
        phi_q = np.asarray(_features(params.net, batch["query"]["x"][t]))
        pm = phi_q @ mean
        shape = (b / a) * (phi_q @ cov @ phi_q.T + sigma**2 * np.eye(phi_q.shape[0]))
        ref = stats.multivariate_t(pm, shape, df=2 * a)
        yq = np.asarray(batch["query"]["y"][t])
        np.testing.assert_allclose(float(task_losses[t]), -ref.logpdf(yq) / 5, rtol=1e-9)
        np.testing.assert_allclose(pred.mean[t], pm, rtol=1e-9)
        np.testing.assert_allclose(pred.scale[t], shape, rtol=1e-9)
        np.testing.assert_allclose(pred.df[t], 2 * a, rtol=1e-12)


def test_student_draws_follow_the_nig_and_export_noise():
    learner = _student_learner()
    params = _student_params()
    batch = _tasks()
    n = 4000
    post = learner.posterior(params, batch["support"], num_draws=n, seed=2)
    assert post.dims == {"w": ["task", "feature"], "noise": ["task"]}
    nig = learner.gaussians(params, batch["support"])
    marg = nig.marginal()
    w = post.samples["w"][0]  # (S, T, F)
    var = np.asarray(marg.df / (marg.df - 2))[:, None] * np.diagonal(marg.scale, axis1=-2, axis2=-1)
    err = np.abs(w.mean(0) - np.asarray(marg.mean)) / np.sqrt(var / n)
    assert np.all(err < 4.0)
    # E[s^2] = b / (a - 1) for the InverseGamma: the noise site is s sigma
    s2 = (post.samples["noise"][0] / float(jnp.exp(params.log_noise))) ** 2
    want = np.asarray(nig.rate / (nig.concentration - 1))
    sd = np.sqrt(np.asarray(nig.rate**2 / ((nig.concentration - 1) ** 2 * (nig.concentration - 2))))
    assert np.all(np.abs(s2.mean(0) - want) < 5 * sd / np.sqrt(n))
    assert post.info["scale_prior"] == pytest.approx((A, B))


def test_student_training_learns_task_scales_and_bad_options_fail_early():
    learner = _student_learner(optax.adam(3e-2))
    state = learner.init(_net())
    p = state.params
    assert float(jnp.exp(p.log_concentration)) == pytest.approx(2.0)
    assert float(jnp.exp(p.log_rate)) == pytest.approx(2.0)
    batch = _tasks(1, num_tasks=8)
    step = jax.jit(learner.step)
    state, first = step(state, batch)
    for _ in range(150):
        state, info = step(state, batch)
    assert float(info.loss) < float(first.loss) - 0.5
    with pytest.raises(ValueError, match="predictive"):
        meta.bayesian_last_layer(_features, num_features=F, predictive="cauchy")
    with pytest.raises(ValueError, match="concentration"):
        meta.bayesian_last_layer(_features, num_features=F, predictive="student_t", concentration=0)
    with pytest.raises(ValueError, match="log_concentration and log_rate"):
        learner.init(_params())  # Gaussian params for a Student-t learner
    with pytest.raises(ValueError, match="log_concentration and log_rate"):
        _learner().init(_student_params())


def test_calibrate_refits_the_scale_prior_to_a_stationary_point():
    params = _student_params()
    val = _tasks(5, num_tasks=12)
    loss = meta.build_last_layer_loss(_features, "pointwise")
    refit = meta.calibrate_last_layer(_features, params, val)
    # only the scale prior moved
    np.testing.assert_array_equal(refit.tril, params.tril)
    np.testing.assert_array_equal(refit.log_noise, params.log_noise)
    assert float(loss(refit, val)[0]) < float(loss(params, val)[0])
    grad = jax.grad(lambda p: loss(p, val)[0])(refit)
    np.testing.assert_allclose([grad.log_concentration, grad.log_rate], 0.0, atol=1e-5)
    # a Gaussian layer: one common scale c on L and sigma, also at a stationary point
    gauss = meta.calibrate_last_layer(_features, _params(), val)
    c = float(jnp.exp(gauss.log_noise - _params().log_noise))
    np.testing.assert_allclose(
        np.asarray(meta.last_layer_hyper(gauss).scale_tril),
        c * np.asarray(meta.last_layer_hyper(_params()).scale_tril),
        rtol=1e-10,
    )
    with pytest.raises(ValueError, match="LastLayerParams"):
        meta.calibrate_last_layer(_features, _net(), val)


@pytest.mark.parametrize("student", [False, True])
def test_pointwise_objective_is_each_query_points_own_predictive_density(student):
    """objective="pointwise": minus the mean of scipy's univariate t (or normal) log density
    of each query point, with the dense posterior's per-point location and scale."""
    params = _student_params() if student else _params()
    batch = _tasks()
    _, task_losses = meta.build_last_layer_loss(_features, "pointwise")(params, batch)
    sigma = float(jnp.exp(params.log_noise))
    for t in range(3):
        x_s, y_s = batch["support"]["x"][t], batch["support"]["y"][t]
        phi_q = np.asarray(_features(params.net, batch["query"]["x"][t]))
        yq = np.asarray(batch["query"]["y"][t])
        if student:
            mean, cov, a, b = _dense_nig(params, x_s, y_s)
            var = (b / a) * (np.einsum("mf,fg,mg->m", phi_q, cov, phi_q) + sigma**2)
            ref = stats.t.logpdf(yq, 2 * a, phi_q @ mean, np.sqrt(var))
        else:
            mean, cov = _dense_posterior(params, x_s, y_s)
            var = np.einsum("mf,fg,mg->m", phi_q, cov, phi_q) + sigma**2
            ref = stats.norm.logpdf(yq, phi_q @ mean, np.sqrt(var))
        np.testing.assert_allclose(float(task_losses[t]), -np.mean(ref), rtol=1e-9)
    with pytest.raises(ValueError, match="objective"):
        meta.build_last_layer_loss(_features, "marginal")
