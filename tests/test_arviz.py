"""Tests of bayesmeta.arviz under whichever ArviZ line is installed (0.x or 1.x).

CI runs this file twice: with ArviZ 0.x (``InferenceData``) and, under Python 3.12, with
ArviZ 1.x (``DataTree``), selecting the ``arviz`` marker.
"""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from scipy import stats

from bayesmeta import arviz as bma

matplotlib.use("Agg")

pytestmark = pytest.mark.arviz

LABELS = list("ABCDEFGH")
NUM_CHAINS, NUM_DRAWS = 2, 200


def _hierarchical_draws(seed=0):
    """Synthetic draws shaped like a hierarchical fit over 8 tasks (values need not come from
    a real posterior: these tests check layout and that ArviZ sees the same numbers)."""
    rng = np.random.default_rng(seed)
    c, d, j = NUM_CHAINS, NUM_DRAWS, len(LABELS)
    mu = rng.normal(5.0, 1.0, size=(c, d))
    tau = np.exp(rng.normal(1.0, 0.3, size=(c, d)))
    theta = mu[..., None] + tau[..., None] * rng.normal(size=(c, d, j))
    beta = rng.normal(size=(c, d, j, 2)) + np.arange(2.0)
    extra = rng.normal(size=(c, d, 2, 3))  # only its first dim is named
    y = rng.normal(5.0, 10.0, size=j)
    sigma = rng.uniform(8.0, 16.0, size=j)
    # Pointwise log-likelihood of y_j ~ Normal(theta_j, sigma_j), written out.
    loglik = -0.5 * np.log(2 * np.pi * sigma**2) - 0.5 * ((y - theta) / sigma) ** 2
    num_steps = rng.choice([3, 7, 15], size=(c, d))
    sample_stats = {
        "diverging": rng.uniform(size=(c, d)) < 0.02,
        "energy": rng.normal(50.0, 3.0, size=(c, d)),
        "potential_energy": rng.normal(45.0, 3.0, size=(c, d)),
        "num_steps": num_steps,
        "accept_prob": rng.uniform(0.6, 1.0, size=(c, d)),
        "adapt_state.step_size": np.full((c, d), 0.3),
    }
    return {
        "posterior": {"mu": mu, "tau": tau, "theta": theta, "beta": beta, "extra": extra},
        "sample_stats": sample_stats,
        "log_likelihood": {"y": loglik},
        "observed_data": {"y": y},
        "constant_data": {"sigma": sigma},
        "posterior_predictive": {"y": theta + sigma * rng.normal(size=(c, d, j))},
        "prior": {
            "mu": rng.normal(0.0, 5.0, size=(1, 300)),
            "theta": rng.normal(0.0, 10.0, size=(1, 300, j)),
        },
        "prior_predictive": {"y": rng.normal(0.0, 15.0, size=(1, 300, j))},
    }


DIMS = {
    "theta": ["task"],
    "beta": ["task", "coef"],
    "extra": ["coef"],
    "y": ["task"],
    "sigma": ["task"],
}
COORDS = {"task": LABELS, "coef": ["intercept", "slope"]}
ATTRS = {"inference_library": "numpyro", "method": "nuts"}


@pytest.fixture(scope="module")
def draws():
    return _hierarchical_draws()


@pytest.fixture(scope="module")
def data(draws):
    return bma.to_arviz(
        draws["posterior"],
        dims=DIMS,
        coords=COORDS,
        attrs=ATTRS,
        **{k: v for k, v in draws.items() if k != "posterior"},
    )


def test_return_type_matches_installed_arviz_line(data):
    if bma.arviz_major() == 0:
        import arviz as az

        assert isinstance(data, az.InferenceData)
    else:
        assert bma.arviz_major() == 1
        assert isinstance(data, xr.DataTree)


def test_groups_dims_and_coords(data, draws):
    assert set(bma.group_names(data)) == {
        "posterior",
        "sample_stats",
        "log_likelihood",
        "observed_data",
        "constant_data",
        "posterior_predictive",
        "prior",
        "prior_predictive",
    }
    post = data["posterior"]
    assert list(post["task"].values) == LABELS
    assert list(post["coef"].values) == ["intercept", "slope"]
    assert post["theta"].dims == ("chain", "draw", "task")
    assert post["beta"].dims == ("chain", "draw", "task", "coef")
    # The unnamed trailing dim gets ArviZ's default name <var>_dim_<k>.
    assert post["extra"].dims[:3] == ("chain", "draw", "coef")
    assert post["extra"].dims[3].startswith("extra_dim_")
    assert data["log_likelihood"]["y"].dims == ("chain", "draw", "task")
    assert list(data["log_likelihood"]["task"].values) == LABELS
    assert data["observed_data"]["y"].dims == ("task",)
    assert data["constant_data"]["sigma"].dims == ("task",)
    assert data["posterior_predictive"]["y"].dims == ("chain", "draw", "task")
    # Values arrive unchanged.
    back = bma.posterior_group(data)
    for name, value in draws["posterior"].items():
        np.testing.assert_array_equal(back[name], value)
    np.testing.assert_array_equal(
        bma.group_arrays(data, "observed_data")["y"], draws["observed_data"]["y"]
    )


def test_attrs_on_root_and_posterior(data):
    assert data.attrs["method"] == "nuts"
    assert data["posterior"].attrs["inference_library"] == "numpyro"
    assert data["posterior"].attrs["method"] == "nuts"


def test_library_attrs_on_every_group_and_the_root(data):
    """creation_library(_version) name bayesmeta, not ArviZ (1.x writes arviz_base's own
    name and version unless told), inference_library numpyro, on both lines."""
    import numpyro

    import bayesmeta

    for node in [data] + [data[group] for group in bma.group_names(data)]:
        attrs = node.attrs
        assert attrs["creation_library"] == "bayesmeta"
        assert attrs["creation_library_version"] == bayesmeta.__version__
        assert attrs["inference_library"] == "numpyro"
        assert attrs["inference_library_version"] == numpyro.__version__


def test_prediction_groups_keep_their_own_obs_dim():
    """predictions / predictions_constant_data: their own obs size and coordinates, next to
    an observed_data with another obs size, with non-index coords on obs."""
    rng = np.random.default_rng(0)
    out = bma.to_arviz(
        {"mu": rng.normal(size=(2, 10))},
        dims={"y": ["obs"]},
        coords={"obs": [0, 1, 2]},
        observed_data={"y": np.arange(3.0)},
        predictions={"y": rng.normal(size=(2, 10, 2))},
        predictions_constant_data={"x": np.array([5.0, 6.0])},
        pred_dims={"y": ["obs"], "x": ["obs"]},
        pred_coords={"obs": [0, 1]},
        pred_obs_coords={"task": np.array(["a", "b"])},
    )
    groups = bma.group_names(out)
    assert {"predictions", "predictions_constant_data", "observed_data"} <= set(groups)
    pred = out["predictions"]["y"]
    assert pred.dims == ("chain", "draw", "obs") and pred.shape == (2, 10, 2)
    assert out["predictions"]["task"].values.tolist() == ["a", "b"]
    assert out["predictions_constant_data"]["x"].values.tolist() == [5.0, 6.0]
    assert out["observed_data"]["y"].shape == (3,)
    with pytest.raises(ValueError, match="predictions"):
        bma.to_arviz({"mu": np.zeros((2, 10))}, predictions={"y": np.zeros((1, 10, 2))})


def test_sample_stats_use_arviz_names(data, draws):
    got = bma.group_arrays(data, "sample_stats")
    raw = draws["sample_stats"]
    assert set(got) == {
        "diverging",
        "energy",
        "lp",
        "n_steps",
        "tree_depth",
        "acceptance_rate",
        "step_size",
    }
    assert got["diverging"].dtype == bool
    np.testing.assert_array_equal(got["diverging"], raw["diverging"])
    np.testing.assert_array_equal(got["lp"], -raw["potential_energy"])
    np.testing.assert_array_equal(got["n_steps"], raw["num_steps"])
    np.testing.assert_array_equal(got["acceptance_rate"], raw["accept_prob"])
    np.testing.assert_array_equal(got["step_size"], raw["adapt_state.step_size"])
    # A NUTS tree of depth d takes 2**(d-1) .. 2**d - 1 leapfrog steps: 3 -> 2, 7 -> 3, 15 -> 4.
    expected_depth = {3: 2, 7: 3, 15: 4}
    np.testing.assert_array_equal(
        got["tree_depth"], np.vectorize(expected_depth.get)(raw["num_steps"])
    )


def _hdi_reference(x, prob):
    """Shortest interval holding floor(prob * n) + 1 sorted draws (Chen and Shao 1999), the
    rule ArviZ documents for ``hdi`` on unimodal draws."""
    x = np.sort(x.ravel())
    n = x.size
    inc = int(np.floor(prob * n))
    widths = x[inc:] - x[: n - inc]
    i = int(np.argmin(widths))
    return x[i], x[i + inc]


def test_summary_matches_numpy(data, draws):
    df = bma.summary(data, var_names=["mu", "theta", "beta"], round_to="none")
    assert list(df.columns) == list(bma.SUMMARY_COLUMNS)
    assert df.attrs == {"ci_prob": 0.94, "ci_kind": "hdi", "ci_columns": ("hdi_3%", "hdi_97%")}
    post = draws["posterior"]
    rows = {"mu": post["mu"]}
    rows.update({f"theta[{lab}]": post["theta"][..., j] for j, lab in enumerate(LABELS)})
    rows.update(
        {
            f"beta[{lab}, {coef}]": post["beta"][..., j, k]
            for j, lab in enumerate(LABELS)
            for k, coef in enumerate(COORDS["coef"])
        }
    )
    assert set(df.index) == set(rows)
    for row, x in rows.items():
        np.testing.assert_allclose(df.loc[row, "mean"], x.mean(), rtol=1e-12)
        np.testing.assert_allclose(df.loc[row, "sd"], x.std(ddof=1), rtol=1e-12)
        low, high = _hdi_reference(x, 0.94)
        assert df.loc[row, "hdi_3%"] == pytest.approx(low, rel=1e-12)
        assert df.loc[row, "hdi_97%"] == pytest.approx(high, rel=1e-12)
    assert np.all(df["ess_bulk"] > 0) and np.all(df["ess_tail"] > 0)
    assert np.all(np.isfinite(df["r_hat"]))


def test_summary_eti_is_the_quantile_interval(data, draws):
    df = bma.summary(data, var_names=["tau"], ci_kind="eti", ci_prob=0.8, round_to="none")
    tau = draws["posterior"]["tau"].ravel()
    # Equal-tailed 80% interval: 10% and 90% sample quantiles (numpy's default interpolation).
    np.testing.assert_allclose(
        df.loc["tau", ["eti_10%", "eti_90%"]].to_numpy(float),
        np.quantile(tau, [0.1, 0.9]),
        rtol=1e-12,
    )
    np.testing.assert_allclose(df.loc["tau", "mean"], tau.mean(), rtol=1e-12)


def test_summary_rounds_as_arviz_0x_does(data):
    raw = bma.summary(data, var_names=["mu", "tau"], round_to="none")
    table = bma.summary(data, var_names=["mu", "tau"])
    # ArviZ 0.x's az.summary default: 3 decimals, whole ESS, R-hat to 2 decimals
    expected = raw.round({c: 0 if c.startswith("ess") else 2 if c == "r_hat" else 3 for c in raw})
    np.testing.assert_array_equal(table.to_numpy(), expected.to_numpy())
    assert not np.array_equal(table.to_numpy(), raw.to_numpy())
    np.testing.assert_array_equal(
        bma.summary(data, var_names=["mu"], round_to=1).to_numpy(),
        raw.loc[["mu"]].round(1).to_numpy(),
    )


def test_summary_of_prior_group(data, draws):
    df = bma.summary(data, var_names=["mu"], group="prior", round_to="none")
    np.testing.assert_allclose(df.loc["mu", "mean"], draws["prior"]["mu"].mean(), rtol=1e-12)
    assert np.isnan(df.loc["mu", "r_hat"])  # one prior chain: R-hat is undefined


def test_az_summary_itself_sees_the_same_numbers(data, draws):
    import arviz as az

    df = az.summary(data, var_names=["theta"], round_to="none")
    np.testing.assert_allclose(
        df["mean"].to_numpy(float), draws["posterior"]["theta"].mean(axis=(0, 1)), rtol=1e-12
    )


def _rhat_reference(x):
    """Rank-normalised split R-hat, max of bulk and folded (tail) versions, written out from
    Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021), Bayesian Analysis 16(2), eqs. 1-4
    and section 4.1. ``x`` is (chain, draw) with an even number of draws."""

    def split(a):
        half = a.shape[1] // 2
        return np.concatenate([a[:, :half], a[:, half:]], axis=0)

    def z_scale(a):
        ranks = stats.rankdata(a, method="average").reshape(a.shape)
        return stats.norm.ppf((ranks - 3 / 8) / (a.size + 1 / 4))

    def basic(a):
        n = a.shape[1]
        between = n * a.mean(axis=1).var(ddof=1)
        within = a.var(axis=1, ddof=1).mean()
        return np.sqrt(((n - 1) / n * within + between / n) / within)

    bulk = basic(z_scale(split(x)))
    tail = basic(z_scale(split(np.abs(x - np.median(x)))))
    return max(bulk, tail)


def test_ess_rhat_against_written_out_rhat():
    rng = np.random.default_rng(3)
    mixed = rng.normal(size=(4, 300))
    stuck = rng.normal(size=(4, 300)) + np.array([0.0, 0.0, 0.0, 1.5])[:, None]
    vector = rng.normal(size=(4, 300, 3))
    out = bma.ess_rhat({"mixed": mixed, "stuck": stuck, "vector": vector})
    assert set(out) == {"ess_bulk", "ess_tail", "r_hat"}
    assert out["r_hat"]["mixed"] == pytest.approx(_rhat_reference(mixed), rel=1e-10)
    assert out["r_hat"]["stuck"] == pytest.approx(_rhat_reference(stuck), rel=1e-10)
    assert out["r_hat"]["stuck"] > 1.1  # a chain shifted by 1.5 sd is flagged
    assert out["r_hat"]["vector"].shape == (3,)
    for k in range(3):
        assert out["r_hat"]["vector"][k] == pytest.approx(
            _rhat_reference(vector[..., k]), rel=1e-10
        )
    assert out["ess_bulk"]["vector"].shape == (3,)
    assert out["ess_bulk"]["stuck"] < out["ess_bulk"]["mixed"]


def test_ess_rhat_single_chain_gives_nan_rhat():
    out = bma.ess_rhat({"a": np.random.default_rng(0).normal(size=(1, 100, 2))})
    assert out["r_hat"]["a"].shape == (2,) and np.all(np.isnan(out["r_hat"]["a"]))
    assert np.all(out["ess_bulk"]["a"] > 0)


def _text_in_figure(fig):
    texts = []
    for ax in fig.axes:
        texts += [t.get_text() for t in ax.texts]
        texts += [t.get_text() for t in ax.get_yticklabels() + ax.get_xticklabels()]
    return " ".join(texts)


def test_plot_forest_direct_and_wrapped(data, tmp_path):
    import arviz as az

    if bma.arviz_major() == 0:
        axes = az.plot_forest(data, var_names=["theta"], combined=True)
        fig = np.ravel(axes)[0].figure
    else:
        fig = az.plot_forest(data, var_names=["theta"], backend="matplotlib").get_viz("figure")
    fig.savefig(tmp_path / "direct.png")
    plt.close(fig)
    assert (tmp_path / "direct.png").stat().st_size > 1000

    fig = bma.plot_forest(
        {"nuts": data, "other": data}, tmp_path / "overlay.png", var_names=["mu", "theta"]
    )
    text = _text_in_figure(fig)
    plt.close(fig)
    assert (tmp_path / "overlay.png").stat().st_size > 1000
    for label in LABELS:  # the task labels reach the plot
        assert label in text

    fig = bma.plot_forest(data, tmp_path / "single.png", var_names="theta")
    text = _text_in_figure(fig)
    plt.close(fig)
    assert (tmp_path / "single.png").stat().st_size > 1000
    for label in LABELS:
        assert label in text
    with pytest.raises(ValueError, match="data"):
        bma.plot_forest({"nuts": data, "bad": {"mu": np.zeros((1, 3))}})


def _exact_loo_data(seed=1):
    """Exact posterior draws of y_i ~ N(theta, sigma^2), theta ~ N(m0, s0^2), with the
    exact leave-one-out predictive densities (conjugate normal, BDA3 section 2.5):
    theta | y_{-i} ~ N(m_{-i}, v_{-i}) and y_i | y_{-i} ~ N(m_{-i}, v_{-i} + sigma^2)."""
    rng = np.random.default_rng(seed)
    n, sigma, m0, s0 = 20, 1.0, 0.0, 3.0
    y = rng.normal(1.0, sigma, size=n)
    precision = 1 / s0**2 + n / sigma**2
    mean = (m0 / s0**2 + y.sum() / sigma**2) / precision
    theta = rng.normal(mean, precision**-0.5, size=(4, 500))
    loglik = stats.norm.logpdf(y, theta[..., None], sigma)
    precision_loo = 1 / s0**2 + (n - 1) / sigma**2
    mean_loo = (m0 / s0**2 + (y.sum() - y) / sigma**2) / precision_loo
    exact_i = stats.norm.logpdf(y, mean_loo, np.sqrt(1 / precision_loo + sigma**2))
    data = bma.to_arviz(
        {"theta": theta},
        log_likelihood={"y": loglik},
        observed_data={"y": y},
        dims={"y": ["obs"]},
    )
    return data, loglik, exact_i


def test_loo_matches_exact_leave_one_out():
    import arviz as az

    data, loglik, exact_i = _exact_loo_data()
    out = bma.loo(data)
    # Monte Carlo SE of plain importance sampling on these iid draws, by the delta method:
    # elpd_i = -log mean_s w_si with w_si = 1 / p(y_i | theta_s) (Gelfand 1996); PSIS is at
    # least as precise when the Pareto k are small.
    draws = loglik.reshape(-1, loglik.shape[-1])
    w = np.exp(-(draws - draws.max(axis=0)))
    rel = w / w.mean(axis=0)
    mcse_i = rel.std(axis=0, ddof=1) / np.sqrt(draws.shape[0])
    mcse_total = rel.sum(axis=1).std(ddof=1) / np.sqrt(draws.shape[0])
    assert np.all(out["pareto_k"] < out["good_k"])
    assert out["n_data_points"] == 20 and out["n_samples"] == 2000
    assert abs(out["elpd"] - exact_i.sum()) < 4 * mcse_total
    np.testing.assert_array_less(np.abs(out["elpd_i"] - exact_i), 4 * mcse_i)
    # The tolerance is far below the size of a wrong answer, e.g. the log predictive density
    # of the full posterior (no leave-one-out, here about 15 MCSE away), so the check can fail.
    lppd = np.log(np.exp(draws).mean(axis=0)).sum()
    assert lppd - exact_i.sum() > 10 * mcse_total

    # az.loo called directly reports the same numbers.
    direct = az.loo(data, pointwise=True)
    elpd = direct["elpd_loo"] if bma.arviz_major() == 0 else direct.elpd
    assert float(elpd) == pytest.approx(out["elpd"], rel=1e-12)


def test_loo_on_per_task_log_likelihood(data):
    out = bma.loo(data)
    assert out["n_data_points"] == len(LABELS)
    assert out["elpd_i"].shape == (len(LABELS),)
    assert out["elpd"] == pytest.approx(out["elpd_i"].sum(), rel=1e-12)


def test_loo_needs_log_likelihood():
    data = bma.to_arviz({"mu": np.zeros((1, 10))})
    with pytest.raises(ValueError, match="log_likelihood"):
        bma.loo(data)


def test_prior_round_trip(data, draws):
    back = bma.group_arrays(data, "prior")
    assert set(back) == {"mu", "theta"}
    for name, value in draws["prior"].items():
        np.testing.assert_array_equal(back[name], value)
    assert data["prior"]["theta"].dims == ("chain", "draw", "task")
    assert list(data["prior"]["task"].values) == LABELS
    assert dict(data["prior"].sizes)["chain"] == 1
    np.testing.assert_array_equal(
        bma.group_arrays(data, "prior_predictive")["y"], draws["prior_predictive"]["y"]
    )
    assert data["prior_predictive"]["y"].dims == ("chain", "draw", "task")


def test_multivariate_observation_event_dims_dropped_for_log_likelihood():
    rng = np.random.default_rng(0)
    data = bma.to_arviz(
        {"mu": rng.normal(size=(2, 10, 2))},
        log_likelihood={"y": rng.normal(size=(2, 10, 5))},
        observed_data={"y": rng.normal(size=(5, 2))},
        dims={"y": ["obs", "coord"], "mu": ["coord"]},
    )
    assert data["observed_data"]["y"].dims == ("obs", "coord")
    assert data["log_likelihood"]["y"].dims == ("chain", "draw", "obs")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"posterior": {}}, "posterior: no variables"),
        ({"posterior": {"mu": np.zeros(5)}}, r"posterior\['mu'\]"),
        ({"posterior": {"mu": np.zeros((2, 5)), "tau": np.zeros((2, 4))}}, r"posterior\['tau'\]"),
        ({"sample_stats": {"diverging": np.zeros((2, 4), bool)}}, r"sample_stats\['diverging'\]"),
        ({"log_likelihood": {"y": np.zeros((1, 5, 3))}}, r"log_likelihood\['y'\]"),
        (
            {"prior": {"mu": np.zeros((1, 9))}, "prior_predictive": {"y": np.zeros((1, 8, 3))}},
            r"prior_predictive\['y'\]",
        ),
        (
            {
                "posterior": {"theta": np.zeros((2, 5, 3))},
                "dims": {"theta": ["task"]},
                "coords": {"task": ["a", "b"]},
            },
            r"coords\['task'\]",
        ),
        (
            {"posterior": {"theta": np.zeros((2, 5, 3))}, "dims": {"theta": ["task", "k"]}},
            r"dims\['theta'\]",
        ),
        (
            {"posterior": {"theta": np.zeros((2, 5, 3))}, "dims": {"theta": ["chain"]}},
            r"dims\['theta'\]",
        ),
        (
            {
                "posterior": {"a": np.zeros((2, 5, 3)), "b": np.zeros((2, 5, 4))},
                "dims": {"a": ["task"], "b": ["task"]},
            },
            "dim 'task'",
        ),
        ({"sample_stats": {"num_steps": np.zeros((2, 5))}}, r"sample_stats\['num_steps'\]"),
        (
            {"sample_stats": {"potential_energy": np.zeros((2, 5)), "lp": np.zeros((2, 5))}},
            r"sample_stats\['potential_energy'\]",
        ),
        ({"coords": {"task": ["a", "a"]}}, r"coords\['task'\]"),
    ],
)
def test_bad_input_raises_value_error_naming_field(kwargs, match):
    kwargs = {"posterior": {"mu": np.zeros((2, 5))}, **kwargs}
    posterior = kwargs.pop("posterior")
    with pytest.raises(ValueError, match=match):
        bma.to_arviz(posterior, **kwargs)


def test_summary_rejects_bad_options(data):
    with pytest.raises(ValueError, match="ci_kind"):
        bma.summary(data, ci_kind="central")
    with pytest.raises(ValueError, match="ci_prob"):
        bma.summary(data, ci_prob=1.5)
    with pytest.raises(ValueError, match="group"):
        bma.summary(data, group="predictions")
    with pytest.raises(ValueError, match="round_to"):
        bma.summary(data, round_to="auto")
