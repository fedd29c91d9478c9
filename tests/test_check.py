"""Simulation-based calibration (bm.check.sbc).

The model is the eight schools' (``mu ~ N(0, 5)``, ``tau ~ HalfCauchy(5)``, the schools'
standard errors) with a fixed non-centred parameterisation, so each engine compiles once
for all simulated data sets. Calibrated methods must give uniform ranks. Each test has 5
ranked quantities (mu, tau, theta of schools A-C); a method passes when its smallest
chi-squared p-value is above 0.001 (the Bonferroni bound of a 0.5% family-wise error per
method; 2% over the four methods). The ranks are deterministic given the seed; the seeds
0-7 all pass (see the report of the change that added this file).
"""

import importlib.util
import json
import pathlib
import sys

import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import stats

import bayesmeta as bm
from tests.conftest import COMPILES

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "calibration.py"
ALPHA = 0.001  # per-method bound on the smallest of 5 p-values (see the module docstring)


def _model(scale=None, parameterization="noncentered"):
    return bm.Hierarchical(
        bm.likelihoods.NormalKnownNoise(),
        bm.populations.Normal(
            loc=dist.Normal(0.0, 5.0),
            scale=dist.HalfCauchy(5.0) if scale is None else scale,
            parameterization=parameterization,
        ),
    )


TASKS = bm.datasets.eight_schools()
KNOWN = bm.likelihoods.NormalKnownNoise()
MCMC = dict(num_chains=1, num_warmup=300, num_samples=400)


# ---------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_simulations=0), "num_simulations"),
        (dict(num_simulations=2.5), "num_simulations"),
        (dict(num_simulations=True), "num_simulations"),
        (dict(method="hmc"), "method"),
        (dict(seed=-1), "seed"),
        (dict(seed="0"), "seed"),
        (dict(seed=2**32), "seed"),
        (dict(num_rank_draws=0), "num_rank_draws"),
        (dict(num_rank_draws=500), "num_rank_draws"),  # more than the 400 draws of a fit
        (dict(num_bins=1), "num_bins"),
        (dict(num_bins=101), "num_bins"),
        (dict(task_params=["Z"]), "task_params"),
        (dict(task_params=-1), "task_params"),
        (dict(tasks_like=np.zeros(8)), "tasks_like"),
        (dict(fit_model="model"), "fit_model"),
        (dict(num_warmups=10), "fit_options"),
        (dict(method="vi", num_chains=2), "fit_options"),
        (dict(fit_model=bm.pooled(bm.likelihoods.NormalKnownNoise())), "fit_model"),
        (
            dict(method="collapsed", fit_model=bm.Hierarchical(KNOWN, bm.populations.StudentT())),
            "method",
        ),
    ],
)
def test_sbc_rejects_bad_arguments_before_compiling(kwargs, field):
    args = dict(
        model=_model(),
        tasks_like=TASKS,
        num_simulations=5,
        method="exact",
        num_samples=100,
        num_chains=4,
    )
    args.update(kwargs)
    if args["method"] == "vi":
        args.pop("num_samples")
    # building a model converts its data to device arrays (tiny XLA programs, cached per
    # process); build once first so the count sees what sbc itself would compile
    if isinstance(args.get("fit_model"), bm.Hierarchical | bm.Pooled):
        args["fit_model"].build(TASKS)
    COMPILES.count, COMPILES.active = 0, True
    try:
        with pytest.raises(ValueError, match=field):
            bm.check.sbc(**args)
    finally:
        COMPILES.active = False
    assert COMPILES.count == 0


def test_sbc_rejects_a_fit_model_without_the_ranked_sites():
    fixed_tau = bm.Hierarchical(
        bm.likelihoods.NormalKnownNoise(), bm.populations.Normal(loc=dist.Normal(0, 5), scale=3.0)
    )
    with pytest.raises(ValueError, match=r"fit_model: .*\['tau'\]"):
        bm.check.sbc(_model(), TASKS, num_simulations=3, method="exact", fit_model=fixed_tau)
    logistic = bm.Hierarchical(bm.likelihoods.LogisticRegression())
    with pytest.raises(ValueError, match="fit_model: y: .*binary"):
        bm.check.sbc(_model(), TASKS, num_simulations=3, method="nuts", fit_model=logistic)


# ---------------------------------------------------------------------- the ECDF band


def test_ecdf_bands_hold_uniform_ranks_with_the_stated_probability():
    """The simultaneous 95% band contains the whole ECDF of N uniform ranks in about 95%
    of fresh sets (drawn independently of the band's own simulation): the defining
    property (Säilynoja et al. 2022). 2000 sets: MC se 0.5%; the ranks are discrete, so
    coverage may exceed 95% a little, never fall short by more than 3 MC se."""
    n, L = 30, 99
    lower, upper = bm.check.ecdf_bands(n, L, alpha=0.05)
    ranks = np.random.default_rng(123).integers(0, L + 1, size=(2000, n))
    k = np.arange(L + 2)
    ecdf = (ranks[:, :, None] < k).mean(axis=1)
    inside = np.all((ecdf >= lower - 1e-12) & (ecdf <= upper + 1e-12), axis=1).mean()
    assert 0.95 - 3 * 0.005 <= inside <= 0.975
    # and a simultaneous band is wider than the pointwise 95% binomial interval
    z = k / (L + 1)
    assert np.all(lower[1:-1] <= stats.binom.ppf(0.025, n, z[1:-1]) / n)


# ---------------------------------------------------------------------- calibrated methods


def _assert_result_shape(res, num, method, bins=4):
    assert res.names == ("mu", "tau", "theta[A]", "theta[B]", "theta[C]")
    assert res.ranks.shape == res.true_values.shape == (num, 5)
    assert res.ranks.min() >= 0 and res.ranks.max() <= res.num_rank_draws == 99
    # default bins: the largest divisor of L + 1 = 100 with >= 5 simulations per bin
    assert res.method == method and res.num_bins == bins
    # the chi-squared p-value is scipy's on the binned ranks
    counts = np.bincount(res.ranks[:, 1] * bins // 100, minlength=bins)
    assert res.p_values["tau"] == pytest.approx(stats.chisquare(counts).pvalue)


def test_sbc_exact_is_calibrated_and_detects_a_too_narrow_tau_prior():
    model = _model()
    res = bm.check.sbc(
        model, TASKS, num_simulations=30, method="exact", seed=0, num_chains=1, num_samples=400
    )
    _assert_result_shape(res, 30, "exact", bins=5)
    assert min(res.p_values.values()) > ALPHA, res.table()
    assert res.info["low_ess"] == 0  # exact draws are independent
    # the same data fitted under tau ~ HalfNormal(0.5): the true tau lies above nearly
    # every posterior draw (measured p ~ 1e-13 for 20 simulations, seeds 0-7 below 1e-8)
    wrong = _model(scale=dist.HalfNormal(0.5))
    bad = bm.check.sbc(
        model,
        TASKS,
        num_simulations=30,
        method="exact",
        seed=0,
        fit_model=wrong,
        num_chains=1,
        num_samples=400,
    )
    assert bad.p_values["tau"] < 1e-6
    assert np.mean(bad.ranks[:, 1] / 99) > 0.9
    # the prior draws (hence the data) are the same for both fits
    np.testing.assert_array_equal(bad.true_values, res.true_values)


def test_sbc_collapsed_is_calibrated_and_compiles_once():
    res = bm.check.sbc(_model(), TASKS, num_simulations=20, method="collapsed", seed=0, **MCMC)
    _assert_result_shape(res, 20, "collapsed")
    assert min(res.p_values.values()) > ALPHA, res.table()
    assert sum(res.info["compiled"][1:]) == 0  # every refit reused the compiled sampler


def test_sbc_nuts_is_calibrated_and_compiles_once():
    res = bm.check.sbc(_model(), TASKS, num_simulations=20, method="nuts", seed=0, **MCMC)
    _assert_result_shape(res, 20, "nuts")
    assert min(res.p_values.values()) > ALPHA, res.table()
    assert res.info["compiled"][1:] == [False] * 19


def test_sbc_vi_compiles_once_and_detects_its_too_narrow_tau():
    """FINDING: mean-field VI (AutoNormal) is miscalibrated for tau: its posterior of tau
    is too narrow, so the true tau falls in the tails (U-shaped ranks, sd of the
    fractional ranks 0.37 against 0.289 for uniform ranks). mu and theta pass. Measured
    with 60 simulations, seeds 0-5: tau p = 5e-6, 1.2e-3, 9.5e-4, 8.9e-3, 7.9e-11, 4.5e-5
    (all below 0.01, 4 of 6 below 0.001), smallest other p 0.0055; with 200 simulations
    (the slow test) tau p = 9e-17."""
    res = bm.check.sbc(
        _model(), TASKS, num_simulations=60, method="vi", seed=0, num_steps=1500, num_samples=400
    )
    _assert_result_shape(res, 60, "vi", bins=10)
    assert res.info["compiled"][1:] == [False] * 59
    assert res.p_values["tau"] < 1e-3, res.table()
    assert res.ranks[:, 1].std() / 99 > 0.32  # over-dispersed ranks: too narrow
    others = [p for name, p in res.p_values.items() if name != "tau"]
    assert min(others) > ALPHA, res.table()


# ---------------------------------------------------------------------- the plot


def test_sbc_plot_writes_a_png_and_needs_matplotlib(tmp_path, monkeypatch):
    res = bm.check.sbc(
        _model(),
        TASKS,
        num_simulations=10,
        method="exact",
        seed=1,
        num_chains=1,
        num_samples=200,
        task_params=["B"],
    )
    assert res.names == ("mu", "tau", "theta[B]")
    path = res.plot(str(tmp_path / "sbc.png"))
    assert pathlib.Path(path).stat().st_size > 10_000
    z, diff = res.ecdf_difference()
    assert diff.shape == (101, 3) and np.all(diff[[0, -1]] == 0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="needs matplotlib"):
        res.plot()


def test_calibration_example_quick(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("calibration", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(["--quick", "--methods", "exact", "--out", str(tmp_path), "--json"])
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert set(summary["p_values"]) == {"exact", "misspecified"}
    assert (tmp_path / "sbc_exact.png").is_file()
    assert (tmp_path / "sbc_misspecified.png").is_file()


# ---------------------------------------------------------------------- slow


@pytest.mark.slow
@pytest.mark.parametrize("method", ["exact", "collapsed", "nuts", "vi"])
def test_sbc_many_simulations(method):
    opts = {
        "exact": dict(num_chains=1, num_samples=400),
        "vi": dict(num_steps=2000, num_samples=400),
    }.get(method, dict(num_chains=1, num_warmup=400, num_samples=400))
    res = bm.check.sbc(_model(), TASKS, num_simulations=200, method=method, seed=0, **opts)
    assert res.num_bins == 20
    if method == "vi":
        # the finding of the fast VI test, with 200 simulations: measured tau p 9e-17
        assert res.p_values["tau"] < 1e-8, res.table()
        others = [p for name, p in res.p_values.items() if name != "tau"]
        assert min(others) > ALPHA, res.table()
    else:
        assert min(res.p_values.values()) > ALPHA, res.table()
