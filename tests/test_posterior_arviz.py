"""A real fit's Posterior through ArviZ: az.summary, az.plot_forest and az.loo work on it
under the installed ArviZ line (CI runs this under ArviZ 0.x and, on Python 3.12, 1.x)."""

import arviz as az
import matplotlib
import numpy as np
import pytest
import scipy.stats

from bayesmeta import arviz as bma

matplotlib.use("Agg")
pytestmark = pytest.mark.arviz


def _ds(data, group):
    """One group as an xarray Dataset (InferenceData on 0.x, DataTree node on 1.x)."""
    node = data[group]
    return node.to_dataset() if hasattr(node, "to_dataset") else node


def test_groups_dims_and_task_coords(eight_schools_post):
    data = eight_schools_post.to_arviz(prior=True, num_prior_draws=200)
    groups = set(bma.group_names(data))
    assert {"posterior", "sample_stats", "observed_data", "log_likelihood", "prior"} <= groups
    theta = data["posterior"]["theta"]
    assert theta.dims == ("chain", "draw", "task")
    assert list(theta.coords["task"].values) == list("ABCDEFGH")
    assert data["log_likelihood"]["y"].dims == ("chain", "draw", "task")
    assert int(data["sample_stats"]["diverging"].sum()) == 0
    prior = bma.group_arrays(data, "prior")
    assert prior["theta"].shape == (1, 200, 8) and "theta_raw" not in prior
    # the prior of tau is HalfCauchy(5): its median is 5
    assert abs(np.median(prior["tau"]) - 5.0) < 2.0


def test_az_summary_on_a_fit(eight_schools_post):
    table = az.summary(eight_schools_post.to_arviz())
    assert "theta[A]" in table.index or "theta[0]" in table.index
    ours = eight_schools_post.summary(round_to="none")
    assert ours.loc["mu", "mean"] == pytest.approx(eight_schools_post.mean("mu"), rel=1e-9)
    assert ours.loc["theta[H]", "sd"] == pytest.approx(eight_schools_post.sd("theta")[7], rel=1e-9)


def test_az_plot_forest_on_a_fit(eight_schools_post, tmp_path):
    path = tmp_path / "forest.png"
    az.plot_forest(eight_schools_post.to_arviz(), var_names=["theta"])
    fig = bma.plot_forest(eight_schools_post.to_arviz(), str(path), var_names=["theta"])
    assert fig is not None and path.stat().st_size > 1000


def test_az_loo_on_a_fit(eight_schools_post):
    data = eight_schools_post.to_arviz()
    result = az.loo(data)
    ours = bma.loo(data)
    # elpd_loo is a sum of 8 pointwise values; each is at most the full-posterior lppd term
    ll = eight_schools_post.log_likelihood["y"].reshape(-1, 8)
    lppd = np.sum(np.log(np.mean(np.exp(ll), axis=0)))
    assert ours["elpd"] <= lppd
    assert ours["n_data_points"] == 8
    # ArviZ 0.x: a pandas Series with elpd_loo; ArviZ 1.x: an ELPDData with elpd
    elpd = result.elpd_loo if hasattr(result, "elpd_loo") else result.elpd
    assert float(elpd) == pytest.approx(ours["elpd"], rel=1e-9)


def test_observed_rows_map_back_to_their_task_and_row():
    """observed_data keeps each row's task label and the caller's row (a DataFrame's
    index label), as non-index coordinates on obs, under ArviZ 0.x and 1.x."""
    import pandas as pd

    import bayesmeta as bm

    df = pd.DataFrame(
        {"g": ["b", "a", "b", "a"], "y": [1.0, 2.0, 3.0, 4.5]}, index=[10, 11, 12, 13]
    )
    tasks = bm.TaskSet.from_dataframe(df, task="g", y="y")
    post = bm.fit(
        bm.Hierarchical(bm.likelihoods.Normal()),
        tasks,
        num_warmup=20,
        num_samples=20,
        num_chains=1,
    )
    data = post.to_arviz(posterior_predictive=True)
    ds = _ds(data, "observed_data")
    assert ds["task"].dims == ("obs",)
    # the caller's order (the frame's rows), not the task-sorted storage order
    assert ds["task"].values.tolist() == ["b", "a", "b", "a"]
    assert ds["row"].values.tolist() == [10, 11, 12, 13]
    np.testing.assert_allclose(ds["y"].values, [1.0, 2.0, 3.0, 4.5])
    # each row's value is the one the caller put in that row
    for label, value in zip(ds["row"].values, ds["y"].values, strict=True):
        assert df.loc[int(label), "y"] == pytest.approx(float(value))
    # the pointwise log-likelihood follows the same order: recomputed with scipy from the
    # draws of each row's task mean and the shared sigma
    theta = post.samples["theta"]  # (chain, draw, task) in label order b, a
    sigma = post.samples["sigma"]
    task_pos = {label: i for i, label in enumerate(post.labels)}
    ll = _ds(data, "log_likelihood")["y"].values
    for r, (label, value) in enumerate(zip(ds["task"].values, ds["y"].values, strict=True)):
        want = scipy.stats.norm.logpdf(value, theta[..., task_pos[label]], sigma)
        np.testing.assert_allclose(ll[..., r], want, rtol=1e-6)
    for group in ("log_likelihood", "posterior_predictive", "constant_data"):
        other = _ds(data, group)
        assert other["task"].values.tolist() == ["b", "a", "b", "a"], group
        assert other["row"].values.tolist() == [10, 11, 12, 13], group
    const = _ds(data, "constant_data")
    # task_index points into the task coordinate (labels in order of first appearance)
    assert const["task_index"].values.tolist() == [0, 1, 0, 1]
    assert list(data["posterior"]["theta"].coords["task"].values) == ["b", "a"]


# --------------------------------------------------------------------------- groups
# Posteriors with draws chosen by hand (no sampler), so that the predictive draws have
# a known distribution: every draw has the same task parameters, and each row's
# predictive mean is the likelihood's mean at those parameters.
X_ROWS = np.array([0.5, -1.0, 1.5, 0.0, -0.5, 1.0])  # the caller's rows, tasks interleaved
TASK_ROWS = np.array(["q", "p", "q", "r", "p", "q"])
THETA = {"q": (0.3, 0.8), "p": (-0.4, 0.2), "r": (0.1, -0.6)}  # (intercept, slope)
NUM_DRAWS = 4000


def _hand_posterior(likelihood, y, x=None, noise_scale=None, extra=None):
    """A Posterior of ``likelihood`` on the rows above with fixed task parameters."""
    import bayesmeta as bm
    from bayesmeta.inference.assemble import assemble

    tasks = bm.TaskSet.from_arrays(y=y, task=TASK_ROWS, x=x, noise_scale=noise_scale)
    model = bm.Hierarchical(likelihood)
    built = model.build(tasks)
    theta = np.array([THETA[label] for label in tasks.labels])  # label order q, p, r
    if built.param_shape == ():
        theta = theta[:, 0]
    samples = {
        "theta": np.broadcast_to(theta, (2, NUM_DRAWS // 2, *theta.shape)).copy(),
        "mu": np.zeros((2, NUM_DRAWS // 2, *built.param_shape)),
        "tau": np.ones((2, NUM_DRAWS // 2, *built.param_shape)),
    }
    samples.update(extra or {})
    return assemble(
        samples,
        method="nuts",
        tasks=tasks,
        model=model,
        built=built,
        observed_data={"y": np.asarray(built.data["y"])},
    )


def _row_means(kind):
    """Each row's predictive mean at THETA, in the caller's order (numpy, by hand)."""
    a = np.array([THETA[t][0] for t in TASK_ROWS])
    b = np.array([THETA[t][1] for t in TASK_ROWS])
    eta = a + b * X_ROWS
    if kind == "normal_known":
        return a
    if kind == "linear":
        return eta
    if kind == "logistic":
        return 1 / (1 + np.exp(-eta))
    if kind == "poisson":
        return np.exp(eta)
    if kind == "binomial":  # 5 trials, x in column 1
        return 5 / (1 + np.exp(-eta))
    raise AssertionError(kind)


def _likelihood_case(kind):
    import bayesmeta as bm

    n = len(X_ROWS)
    if kind == "normal_known":
        return bm.likelihoods.NormalKnownNoise(), {"noise_scale": np.full(n, 0.5)}, {}
    if kind == "linear":
        sigma = {"sigma": np.full((2, NUM_DRAWS // 2), 0.5)}
        return bm.likelihoods.LinearRegression(), {"x": X_ROWS}, sigma
    if kind == "logistic":
        return bm.likelihoods.LogisticRegression(), {"x": X_ROWS}, {}
    if kind == "poisson":
        return bm.likelihoods.Poisson(), {"x": X_ROWS}, {}
    if kind == "binomial":
        x = np.stack([np.full(n, 5.0), X_ROWS], axis=1)
        return bm.likelihoods.Binomial(), {"x": x}, {}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["normal_known", "linear", "logistic", "poisson", "binomial"])
def test_posterior_predictive_every_likelihood(kind):
    """posterior_predictive: one replicate of every row per draw, in the caller's row order,
    drawn from the likelihood at that draw: the mean over 4,000 draws at fixed task
    parameters is each row's likelihood mean (written out in numpy), within 4 MCSE."""
    likelihood, data, extra = _likelihood_case(kind)
    y = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 1.0])  # valid for every likelihood
    post = _hand_posterior(likelihood, y, extra=extra, **data)
    out = post.to_arviz(posterior_predictive=True)
    pp = _ds(out, "posterior_predictive")["y"]
    obs = _ds(out, "observed_data")["y"]
    assert pp.dims == ("chain", "draw", "obs") and pp.shape == (2, NUM_DRAWS // 2, 6)
    assert obs.dims == ("obs",)
    np.testing.assert_array_equal(obs.values, y)  # the caller's order
    assert pp["task"].values.tolist() == TASK_ROWS.tolist()
    draws = pp.values.reshape(-1, 6)
    mcse = draws.std(axis=0, ddof=1) / np.sqrt(draws.shape[0])
    want = _row_means(kind)
    assert np.all(np.abs(draws.mean(axis=0) - want) < 4 * mcse + 1e-12), (draws.mean(0), want)
    if kind in ("logistic", "binomial", "poisson"):
        assert np.all(draws == np.round(draws)) and np.all(draws >= 0)
    const = _ds(out, "constant_data")
    assert const["task_index"].values.tolist() == [0, 1, 0, 2, 1, 0]
    if "x" in data:
        x = np.asarray(data["x"])
        np.testing.assert_allclose(const["x"].values, x[:, None] if x.ndim == 1 else x)
    if kind == "binomial":
        np.testing.assert_allclose(const["trials"].values, 5.0)
    if kind == "normal_known":
        np.testing.assert_allclose(const["noise_scale"].values, 0.5)


def test_predictions_for_known_and_brand_new_tasks():
    """predictions: rows of a known task come from that task's draws, rows of an unknown
    label from the population (here mu = 0, tau = 1 for both coefficients, so the
    intercept-only row x = 0 has predictive mean 0 and sd sqrt(1 + 0.5^2) for y)."""
    import bayesmeta as bm

    likelihood, data, extra = _likelihood_case("linear")
    post = _hand_posterior(likelihood, np.zeros(6), extra=extra, **data)
    query = bm.TaskSet.from_arrays(
        y=np.zeros(4), task=["new", "p", "new", "q"], x=[0.0, 2.0, 0.0, -1.0]
    )
    out = post.to_arviz(predictions=query)
    pred = _ds(out, "predictions")["y"]
    const = _ds(out, "predictions_constant_data")
    assert pred.dims == ("chain", "draw", "obs") and pred.shape[-1] == 4
    assert pred["task"].values.tolist() == ["new", "p", "new", "q"]  # the query's order
    np.testing.assert_allclose(const["x"].values[:, 0], [0.0, 2.0, 0.0, -1.0])
    draws = pred.values.reshape(-1, 4)
    mcse = draws.std(axis=0, ddof=1) / np.sqrt(draws.shape[0])
    want = np.array([0.0, -0.4 + 0.2 * 2, 0.0, 0.3 - 0.8])
    assert np.all(np.abs(draws.mean(axis=0) - want) < 4 * mcse), draws.mean(axis=0)
    # a known task's rows: sd 0.5 (sigma) around its line; a brand-new task's: sqrt(1.25)
    sd = draws.std(axis=0, ddof=1)
    assert abs(sd[1] - 0.5) < 0.05 and abs(sd[0] - np.sqrt(1.25)) < 0.1, sd
    # the observed data keep their own obs dim
    assert _ds(out, "observed_data").sizes["obs"] == 6
    # a dict of predict's arguments: one block of rows of one task
    out = post.to_arviz(predictions={"x": [1.0, 2.0], "task": "r"})
    pred = _ds(out, "predictions")["y"]
    assert pred["task"].values.tolist() == ["r", "r"]
    with pytest.raises(ValueError, match="predictions: unknown keys"):
        post.to_arviz(predictions={"xx": [1.0]})


def test_posterior_predictive_needs_a_bayesmeta_model():
    from bayesmeta.posterior import Posterior

    post = Posterior({"mu": np.zeros((1, 5))}, method="nuts")
    with pytest.raises(ValueError, match="posterior_predictive: needs a posterior"):
        post.to_arviz(posterior_predictive=True)


def test_attrs_name_bayesmeta_and_numpyro(eight_schools_post):
    import numpyro

    import bayesmeta as bm

    data = eight_schools_post.to_arviz(posterior_predictive=True)
    for group in ["posterior", "observed_data", "posterior_predictive", "constant_data"]:
        attrs = _ds(data, group).attrs
        assert attrs["creation_library"] == "bayesmeta", group
        assert attrs["creation_library_version"] == bm.__version__, group
        assert attrs["inference_library"] == "numpyro", group
        assert attrs["inference_library_version"] == numpyro.__version__, group
    root = data.attrs
    assert root["creation_library_version"] == bm.__version__
    assert root["method"] == "nuts"


# --------------------------------------------------------------------------- ArviZ's tools
def _figure(result):
    """The matplotlib Figure of an ArviZ plot: axes (0.x) or a PlotCollection (1.x)."""
    if hasattr(result, "get_viz"):
        return result.get_viz("figure")
    return np.ravel(result)[0].figure


def _plot_ppc(data):
    if bma.arviz_major() == 0:
        return _figure(az.plot_ppc(data, num_pp_samples=50))
    return _figure(az.plot_ppc_dist(data, num_samples=50, backend="matplotlib"))


def test_plot_ppc_on_eight_schools(eight_schools_post, tmp_path):
    data = eight_schools_post.to_arviz(posterior_predictive=True)
    ds = _ds(data, "constant_data")
    np.testing.assert_allclose(ds["se"].values, [15, 10, 16, 11, 9, 11, 10, 18])
    fig = _plot_ppc(data)
    fig.savefig(tmp_path / "ppc.png")
    assert (tmp_path / "ppc.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def linear_fits():
    """Two tiny NUTS fits of one simulated regression collection (rows in interleaved order):
    varying slopes, and a pooled-slope model, for az.compare."""
    import bayesmeta as bm

    rng = np.random.default_rng(3)
    num_tasks, n = 6, 60
    task = rng.integers(0, num_tasks, size=n)
    slopes = 1.0 + 0.8 * rng.standard_normal(num_tasks)
    x = rng.normal(size=n)
    y = 0.5 + slopes[task] * x + 0.3 * rng.standard_normal(n)
    tasks = bm.TaskSet.from_arrays(y=y, x=x, task=task)
    draws = {"num_chains": 2, "num_warmup": 150, "num_samples": 150, "progress_bar": False}
    draws["warn"] = False  # a short run; the diagnostics are not what is tested here
    varying = bm.fit(bm.Hierarchical(bm.likelihoods.LinearRegression()), tasks, **draws)
    common = bm.Hierarchical(bm.likelihoods.LinearRegression(varying=["intercept"]))
    return varying, bm.fit(common, tasks, **draws), y


def test_plot_loo_pit_and_compare_on_fits(linear_fits, tmp_path):
    varying, common, y = linear_fits
    data_v = varying.to_arviz(posterior_predictive=True)
    data_c = common.to_arviz(posterior_predictive=True)
    np.testing.assert_allclose(_ds(data_v, "observed_data")["y"].values, y)  # caller's order
    if bma.arviz_major() == 0:
        fig = _figure(az.plot_loo_pit(data_v, y="y"))
    else:
        fig = _figure(az.plot_loo_pit(data_v, backend="matplotlib"))
    fig.savefig(tmp_path / "loo_pit.png")
    assert (tmp_path / "loo_pit.png").stat().st_size > 1000
    table = az.compare({"varying": data_v, "common": data_c})
    assert set(table.index) == {"varying", "common"}
    # the slopes do vary (sd 0.8 against noise 0.3): the varying-slope model ranks first
    assert table.index[0] == "varying"
    assert _plot_ppc(data_v) is not None


def test_adapt_then_predictions_group(eight_schools_post):
    """post.adapt(new_tasks), then predictions at new rows of those tasks as ArviZ groups."""
    import bayesmeta as bm

    new = bm.TaskSet.from_estimates([25.0, -5.0], [5.0, 8.0], labels=["n1", "n2"])
    adapted = eight_schools_post.adapt(new)
    query = bm.TaskSet.from_arrays(
        y=np.zeros(3), task=["n2", "n1", "n2"], noise_scale=[1.0, 1.0, 2.0]
    )
    data = adapted.to_arviz(predictions=query, posterior_predictive=True)
    pred = _ds(data, "predictions")["y"]
    assert pred["task"].values.tolist() == ["n2", "n1", "n2"]
    np.testing.assert_allclose(_ds(data, "predictions_constant_data")["noise_scale"], [1, 1, 2])
    assert _ds(data, "posterior_predictive")["y"].shape[-1] == 2
    # a new row's predictive mean is its task's mean (theta from adapt), within 4 MCSE
    theta = adapted.samples["theta"].reshape(-1, 2)
    draws = pred.values.reshape(-1, 3)
    for col, t in ((0, 1), (1, 0), (2, 1)):
        mcse = draws[:, col].std(ddof=1) / np.sqrt(draws.shape[0])
        assert abs(draws[:, col].mean() - theta[:, t].mean()) < 4 * mcse, col


def test_plot_ppc_on_radon(tmp_path):
    """The radon varying-intercept model (models/radon.py), a tiny collapsed fit: all the
    groups, rows in the data frame's order, and az.plot_ppc."""
    import bayesmeta as bm

    model, tasks = bm.load_model("models/radon.py")
    post = bm.fit(
        model,
        tasks,
        method="collapsed",
        seed=1,
        num_chains=2,
        num_warmup=100,
        num_samples=100,
        progress_bar=False,
        warn=False,
    )
    data = post.to_arviz(posterior_predictive=True)
    df = bm.datasets.radon()
    obs = _ds(data, "observed_data")
    np.testing.assert_allclose(obs["y"].values, df["log_radon"].to_numpy())
    assert obs["task"].values.tolist() == df["county"].astype(str).tolist()
    const = _ds(data, "constant_data")
    np.testing.assert_allclose(const["x"].sel(feature="floor").values, df["floor"].to_numpy())
    assert "task_x" in const and const["task_x"].dims == ("task", "task_covariate")
    fig = _plot_ppc(data)
    fig.savefig(tmp_path / "radon_ppc.png")
    assert (tmp_path / "radon_ppc.png").stat().st_size > 1000
