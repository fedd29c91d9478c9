"""No silent NaN: the draws-to-Posterior check, the float32-stable collapsed algebra, the
dtype-range check of the data, the estimators, hyperprior supports and predict inputs.

Each case of the reliability issue's "silent NaN" and "deep crash" findings is one test.
The suite runs in float64 (conftest); the float32 cases run under
``jax.enable_x64(False)``, the library's default dtype."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import bayesmeta as bm
from bayesmeta import estimators
from bayesmeta.inference import _gaussian as gauss
from bayesmeta.inference.assemble import assemble
from bayesmeta.inference.diagnostics import FitError, FitWarning
from bayesmeta.model import check_dtype_range

Y8 = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
S8 = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
TINY = dict(num_warmup=100, num_samples=100, num_chains=2, progress_bar=False)


def _normal_normal():
    return bm.Hierarchical(
        likelihood=bm.likelihoods.NormalKnownNoise(), population=bm.populations.Normal()
    )


def _linear_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 1))
    task = np.repeat(np.arange(6), 4)
    return x, x[:, 0] * 2.0 + rng.normal(size=24), task


# ---------------------------------------------------------------- the one assembler
def _draws(num_chains=3):
    rng = np.random.default_rng(0)
    return {"mu": rng.normal(size=(num_chains, 20)), "theta": rng.normal(size=(num_chains, 20, 4))}


_DIMS = {"mu": [], "theta": ["task"]}
_COORDS = {"task": ["a", "b", "c", "d"]}


def test_assemble_raises_when_every_chain_has_nonfinite_draws():
    draws = _draws()
    draws["theta"][:, 3, 1] = np.nan  # every chain, task 'b'
    draws["theta"][0, 0, 3] = np.inf
    with pytest.raises(FitError, match=r"theta \(task\(s\) 'b', 'd'\).*chain\(s\) 0, 1, 2"):
        assemble(draws, method="nuts", dims=_DIMS, coords=_COORDS)


def test_assemble_warns_and_marks_the_broken_chains():
    draws = _draws()
    draws["theta"][1, 5:8, 2] = np.nan
    with pytest.warns(FitWarning, match=r"theta \(task\(s\) 'c'\): 3 draw\(s\) in chain\(s\) 1"):
        post = assemble(draws, method="vi", dims=_DIMS, coords=_COORDS)
    diag = post.info["diagnostics"]
    assert diag["bad_chains"] == [1]
    assert diag["nonfinite"] == {"theta": {"count": 3, "chains": [1], "tasks": ["c"]}}
    assert any("non-finite" in p for p in diag["problems"])


def test_assemble_of_finite_draws_adds_nothing():
    post = assemble(_draws(), method="exact", dims=_DIMS, coords=_COORDS, info={"options": {}})
    assert "diagnostics" not in post.info


# ---------------------------------------------------------------- collapsed in float32
@pytest.mark.parametrize("scale", [1e-10, 1.0, 1e10])
@pytest.mark.parametrize("where", ["data", "prior"])
def test_centred_scalar_marginal_is_accurate_in_float32(scale, where):
    """The collapsed marginal and theta posterior on eight-schools data rescaled by
    ``scale``, in float32, against the float64 closed form
    ``log N(y_t | mu, se_t^2 + tau^2)`` and ``theta_t | y_t`` (normal-normal), at
    hyperparameters on the data's scale and on the prior's (mu = 1, tau = 2), where NUTS
    starts and where the uncentred sums cancelled (``A mu^2 = 1e18`` at ``se = 1e-9``)."""
    tasks = bm.TaskSet.from_estimates(y=Y8 * scale, se=S8 * scale)
    mu, tau = (7.0 * scale, 3.0 * scale) if where == "data" else (1.0, 2.0)
    with jax.enable_x64(False):
        stats = gauss.stable_task_stats(bm.likelihoods.NormalKnownNoise(), tasks)
        assert isinstance(stats, gauss.CentredStats) and stats.estimate.dtype == jnp.float32
        hyper = gauss.LinearHyper(
            jnp.asarray([mu], jnp.float32), jnp.asarray([[tau]], jnp.float32), jnp.float32(1.0)
        )
        got = np.asarray(gauss.log_marginal(stats, hyper), float)
        mean, var = gauss.scalar_posterior(stats, jnp.float32(mu), jnp.float32(tau), jnp.float32(1))
    y, v = Y8 * scale, (S8 * scale) ** 2
    ref = -0.5 * (np.log(2 * np.pi * (v + tau**2)) + (y - mu) ** 2 / (v + tau**2))
    # float32 rounding of terms as large as |log(2 pi se^2)| (46 at 1e-10)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * max(1.0, np.abs(ref).max()))
    ref_var = v * tau**2 / (v + tau**2)
    ref_mean = mu + tau**2 * (y - mu) / (v + tau**2)
    np.testing.assert_allclose(np.asarray(var, float), ref_var, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(mean, float), ref_mean, rtol=1e-5)


def test_collapsed_float32_small_scale_gives_finite_unfrozen_draws():
    """The issue's case (y, se times a tiny factor; 1,200 of 3,200 theta draws NaN in
    float32) at 1e-10, the smallest factor whose se^2 is inside float32 with margin.
    With se ~ 1e-9 and tau ~ 1 a priori there is no pooling: theta_t | y ~ N(y_t, se_t^2)
    up to a shrinkage of order se^2 / tau^2, so the draws' means lie within Monte-Carlo
    error (5 standard errors of a mean of 200 draws) of y_t. Before the fix: frozen
    chains and means off by hundreds of standard errors."""
    c = 1e-10
    tasks = bm.TaskSet.from_estimates(y=Y8 * c, se=S8 * c)
    with warnings.catch_warnings(), jax.enable_x64(False):
        warnings.simplefilter("ignore", FitWarning)
        post = bm.fit(_normal_normal(), tasks, method="collapsed", seed=0, **TINY)
    assert post.samples["theta"].dtype == np.float32
    theta = post.samples["theta"]
    assert np.all(np.isfinite(theta))
    assert post.info["diagnostics"]["bad_chains"] == []
    mean = theta.mean(axis=(0, 1))
    np.testing.assert_array_less(np.abs(mean - Y8 * c), 5 * S8 * c / np.sqrt(200))


# ---------------------------------------------------------------- the dtype's range
@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(y=Y8 * 0 + 1e300, se=S8 * 0 + 1e-300), "y"),
        (dict(y=Y8 * 1e30, se=S8 * 1e30), "y"),
        (dict(y=Y8, se=S8 * 1e-20), "se"),
        (dict(y=Y8, se=S8 * 1e25), "se"),
        (dict(y=np.r_[Y8[:7], 1e-40], se=S8), "y"),
    ],
)
def test_data_outside_float32_are_refused_before_compiling(kwargs, field):
    tasks = bm.TaskSet.from_estimates(**kwargs)
    with jax.enable_x64(False), pytest.raises(ValueError, match=rf"^{field}: .* is outside"):
        _normal_normal().build(tasks)
    with pytest.raises(ValueError, match=r"at task '\d', row \d is outside the float32"):
        check_dtype_range(tasks, np.float32)
    # the range is the run dtype's: in float64 the small scale is representable
    if field == "se" and kwargs["se"][0] < 1:
        check_dtype_range(tasks, np.float64)


def test_inputs_beyond_float32_are_refused_naming_x():
    x, y, task = _linear_data()
    tasks = bm.TaskSet.from_arrays(x=x * 1e300, y=y, task=task)
    model = bm.Hierarchical(
        likelihood=bm.likelihoods.LinearRegression(), population=bm.populations.MvNormal()
    )
    with jax.enable_x64(False), pytest.raises(ValueError, match=r"^x: 1\.\d+e\+299 at task '0'"):
        bm.fit(model, tasks, method="collapsed", seed=0, **TINY)


# ---------------------------------------------------------------- estimators
@pytest.mark.parametrize("method", estimators.TAU2_METHODS)
def test_random_effects_refuses_squares_beyond_float64(method):
    """mu = nan, se = inf came back silently for every tau^2 method."""
    with pytest.raises(ValueError, match=r"^y: task '0': y = 1e\+300"):
        estimators.random_effects([1e300, -1e300, 0.0], [1.0, 1.0, 1.0], method=method)
    with pytest.raises(ValueError, match=r"^se: task '1': se = 1e-200"):
        estimators.random_effects([1.0, 2.0, 0.0], [1.0, 1e-200, 1.0], method=method)
    # scale-equivariance: the same data at 1e50 is computed, not refused
    a = estimators.random_effects(Y8, S8, method=method)
    b = estimators.random_effects(Y8 * 1e50, S8 * 1e50, method=method)
    np.testing.assert_allclose([b.mu / 1e50, b.tau2 / 1e100], [a.mu, a.tau2], rtol=1e-9)


def test_cli_meta_analysis_exits_2_instead_of_printing_nulls(tmp_path, capsys):
    from bayesmeta.cli import main

    path = tmp_path / "huge.csv"
    path.write_text("est,se\n1e300,1\n-1e300,1\n0,1\n")
    code = main(["meta-analysis", str(path), "--estimate", "est", "--se", "se", "--json"])
    assert code == 2
    captured = capsys.readouterr()
    assert "error: y: task '1'" in captured.err and "null" not in captured.out


# ---------------------------------------------------------------- hyperprior supports
@pytest.mark.parametrize(
    "make",
    [
        lambda: bm.likelihoods.Normal(noise_prior=dist.Normal(0.0, 1.0)),
        lambda: bm.likelihoods.Normal(noise="task", noise_prior=dist.Uniform(-1.0, 1.0)),
        lambda: bm.likelihoods.LinearRegression(noise_prior=dist.Normal(0.0, 1.0)),
    ],
)
def test_noise_priors_with_negative_support_are_refused(make):
    with pytest.raises(ValueError, match="^noise_prior: .*positive support"):
        make()


@pytest.mark.parametrize("pop", [bm.populations.Normal, bm.populations.StudentT])
def test_scale_priors_with_negative_support_are_refused(pop):
    with pytest.raises(ValueError, match="^scale: the hyperprior must have positive support"):
        pop(scale=dist.Normal(0.0, 1.0))


def test_positive_noise_priors_are_accepted():
    for prior in (dist.HalfNormal(2.0), dist.Exponential(1.0), dist.Uniform(0.0, 3.0)):
        assert bm.likelihoods.Normal(noise_prior=prior).noise_prior is prior


# ---------------------------------------------------------------- predict
def test_predict_refuses_nan_inputs_naming_x_and_the_row():
    x, y, task = _linear_data()
    tasks = bm.TaskSet.from_arrays(x=x, y=y, task=task)
    model = bm.Hierarchical(
        likelihood=bm.likelihoods.LinearRegression(), population=bm.populations.MvNormal()
    )
    built = model.build(tasks)
    rng = np.random.default_rng(0)
    p = built.param_shape[0]
    draws = {
        "mu": rng.normal(size=(1, 5, p)),
        "tau": rng.random((1, 5, p)) + 0.5,
        "corr_chol": np.broadcast_to(np.eye(p), (1, 5, p, p)).copy(),
        "sigma": rng.random((1, 5)) + 0.5,
        "theta": rng.normal(size=(1, 5, tasks.num_tasks, p)),
    }
    post = assemble(draws, method="nuts", tasks=tasks, model=model, built=built)
    new_x = np.ones((3, 1))
    assert np.all(np.isfinite(post.predict(x=new_x)))
    new_x[2, 0] = np.nan
    with pytest.raises(ValueError, match="^x: non-finite value in row 2"):
        post.predict(x=new_x)
    with pytest.raises(ValueError, match="^x: non-finite value in row 2"):
        post.predict(x=new_x, task="0")


def test_nan_asked_for_by_the_caller_is_recorded_not_raised():
    """A meta-learner's on_invalid="nan" tasks: NaN confined to them is recorded; NaN in any
    other task is still the all-chains error."""
    from bayesmeta.inference.assemble import assemble
    from bayesmeta.inference.diagnostics import FitError

    x = np.zeros((1, 5, 3))
    x[:, :, 1] = np.nan
    kw = dict(method="m", dims={"theta": ["task"]}, coords={"task": ["a", "b", "c"]})
    post = assemble({"theta": x}, nan_tasks=["b"], **kw)
    assert post.info["diagnostics"]["nan_tasks"] == ["b"]
    with pytest.raises(FitError, match="task\\(s\\) 'b'"):
        assemble({"theta": x}, nan_tasks=["c"], **kw)
