"""A real fit's Posterior through ArviZ: az.summary, az.plot_forest and az.loo work on it
under the installed ArviZ line (CI runs this under ArviZ 0.x and, on Python 3.12, 1.x)."""

import arviz as az
import matplotlib
import numpy as np
import pytest

from bayesmeta import arviz as bma

matplotlib.use("Agg")
pytestmark = pytest.mark.arviz


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
    data = post.to_arviz()
    obs = data["observed_data"] if "observed_data" in bma.group_names(data) else None
    ds = obs.to_dataset() if hasattr(obs, "to_dataset") else obs
    assert ds["task"].dims == ("obs",)
    assert ds["task"].values.tolist() == ["b", "b", "a", "a"]
    assert ds["row"].values.tolist() == [10, 12, 11, 13]
    np.testing.assert_allclose(ds["y"].values, [1.0, 3.0, 2.0, 4.5])
    # each row's value is the one the caller put in that row
    for label, value in zip(ds["row"].values, ds["y"].values, strict=True):
        assert df.loc[int(label), "y"] == pytest.approx(float(value))
