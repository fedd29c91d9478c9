"""The built-in data sets: shapes, names, types, and values against the published tables.

The exact values below are copied from the tables the data sets were typed from (the
sources named in ``bayesmeta.datasets``): eight schools from BDA3 Table 5.2, BCG from
metafor's ``dat.bcg`` (Colditz et al. 1994), seeds from Crowder (1978) Table 3; radon's
from the first and last lines of ``bayesmeta/data/radon.csv``.
"""

import csv
from importlib import resources

import numpy as np
import pandas as pd
import pytest

import bayesmeta as bm
from bayesmeta import datasets


# ----------------------------------------------------------------------------- radon
@pytest.fixture(scope="module")
def radon():
    return datasets.radon()


def test_radon_shape_and_columns(radon):
    assert isinstance(radon, pd.DataFrame)
    assert list(radon.columns) == ["county", "floor", "log_radon", "log_uranium"]
    assert radon.shape == (919, 4)  # 919 houses
    assert radon["county"].nunique() == 85  # in 85 counties
    assert radon["floor"].dtype == np.int64
    assert radon["log_radon"].dtype == np.float64 and radon["log_uranium"].dtype == np.float64
    assert set(radon["floor"]) == {0, 1}
    sizes = radon.groupby("county").size()
    assert sizes.min() == 1 and sizes.max() == 116  # DATA.md: 1 to 116 houses per county
    assert sizes.idxmax() == "STLOUIS"


def test_radon_uranium_is_a_county_level_predictor(radon):
    assert radon.groupby("county")["log_uranium"].nunique().max() == 1


def test_radon_values_are_the_stored_decimals(radon):
    # the first and last rows of data/radon.csv: "1",1,"AITKIN",0.832909122935104,
    # -0.6890475953545 and "927",0,"YELLOWMEDICINE",1.09861228866811,0.355286981163884
    first, last = radon.iloc[0], radon.iloc[-1]
    assert (first["county"], first["floor"]) == ("AITKIN", 1)
    assert first["log_radon"] == 0.832909122935104
    assert first["log_uranium"] == -0.6890475953545
    assert (last["county"], last["floor"]) == ("YELLOWMEDICINE", 0)
    assert last["log_radon"] == 1.09861228866811
    assert last["log_uranium"] == 0.355286981163884
    # every value is the nearest double of its decimal in the file (Python's float())
    source = resources.files("bayesmeta").joinpath("data", "radon.csv")
    with source.open("r", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 919
    for col in ("log_radon", "log_uranium"):
        np.testing.assert_array_equal(radon[col].to_numpy(), [float(r[col]) for r in rows])
    assert radon["county"].tolist() == [r["county"] for r in rows]


def test_radon_as_tasks(radon):
    tasks = bm.TaskSet.from_dataframe(
        radon, task="county", y="log_radon", x=["floor"], task_x=["log_uranium"]
    )
    assert tasks.num_tasks == 85 and tasks.num_obs == 919
    assert tasks.task_x_names == ("log_uranium",) and tasks.task_x.shape == (85, 1)
    assert tasks.feature_names == ("floor",)
    assert tasks.labels[0] == "AITKIN" and tasks.task_x[0, 0] == -0.6890475953545


# ----------------------------------------------------------------------------- seeds
def test_seeds_table():
    df = datasets.seeds()
    assert list(df.columns) == ["plate", "r", "n", "x1", "x2"]
    assert df.shape == (21, 5)
    assert all(df[c].dtype == np.int64 for c in df.columns)
    assert df["plate"].tolist() == list(range(1, 22))
    # Crowder (1978) Table 3, as in DATA.md: plates 1, 6, 12, 16 and 21
    rows = df.set_index("plate").loc[[1, 6, 12, 16, 21]]
    assert rows.to_numpy().tolist() == [
        [10, 39, 0, 0],
        [5, 6, 0, 1],
        [8, 16, 1, 0],
        [0, 4, 1, 0],
        [3, 7, 1, 1],
    ]
    assert df["r"].sum() == 424 and df["n"].sum() == 831
    assert (df["r"] <= df["n"]).all()
    # the 2 x 2 factorial: 5, 6, 5 and 5 plates
    cells = df.groupby(["x1", "x2"]).size().to_dict()
    assert cells == {(0, 0): 5, (0, 1): 6, (1, 0): 5, (1, 1): 5}


# ----------------------------------------------------------------------------- eight schools
def test_eight_schools_forms():
    tasks = datasets.eight_schools()
    assert isinstance(tasks, bm.TaskSet) and tasks.is_estimates
    df = datasets.eight_schools(as_frame=True)
    assert list(df.columns) == ["school", "y", "se"]
    # BDA3 Table 5.2
    assert df["school"].tolist() == list("ABCDEFGH")
    assert df["y"].tolist() == [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
    assert df["se"].tolist() == [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]
    np.testing.assert_array_equal(tasks.y, df["y"].to_numpy())
    np.testing.assert_array_equal(tasks.noise_scale, df["se"].to_numpy())
    assert tasks.labels == tuple(df["school"])


# ----------------------------------------------------------------------------- BCG
def test_bcg_frame():
    df = datasets.bcg(as_frame=True)
    assert list(df.columns) == [*datasets.BCG_COLUMNS, "yi", "vi"]
    assert df.shape == (13, 10)
    # metafor's dat.bcg: trials 1, 8 and 13
    expected = {
        0: (1, "Aronson", 1948, 4, 119, 11, 128, 44),
        7: (8, "TPT Madras", 1980, 505, 87886, 499, 87892, 13),
        12: (13, "Comstock et al", 1976, 27, 16886, 29, 17825, 33),
    }
    for row, values in expected.items():
        assert tuple(df.iloc[row][list(datasets.BCG_COLUMNS)]) == values
    # log risk ratio and its variance, by hand for trial 1 (4/123 vs 11/139); metafor's
    # escalc(measure = "RR") gives yi = -0.8893, vi = 0.3256
    assert df["yi"][0] == pytest.approx(np.log((4 / 123) / (11 / 139)), rel=1e-14)
    assert df["vi"][0] == pytest.approx(1 / 4 - 1 / 123 + 1 / 11 - 1 / 139, rel=1e-14)
    assert round(df["yi"][0], 4) == -0.8893 and round(df["vi"][0], 4) == 0.3256


def test_bcg_estimates_carry_task_covariates():
    tasks = datasets.bcg()
    df = datasets.bcg(as_frame=True)
    assert tasks.num_tasks == 13 and tasks.is_estimates
    assert tasks.task_x_names == ("ablat", "year")
    assert tasks.task_x.shape == (13, 2)
    # DATA.md's table: ablat and year of every trial
    ablat = [44, 55, 42, 52, 13, 44, 19, 13, 27, 42, 18, 33, 33]
    year = [1948, 1949, 1960, 1977, 1973, 1953, 1973, 1980, 1968, 1961, 1974, 1969, 1976]
    np.testing.assert_array_equal(tasks.task_x[:, 0], ablat)
    np.testing.assert_array_equal(tasks.task_x[:, 1], year)
    np.testing.assert_allclose(tasks.y, df["yi"], rtol=1e-14)
    np.testing.assert_allclose(tasks.noise_scale, np.sqrt(df["vi"]), rtol=1e-14)
    assert tasks.labels[0] == "Aronson (1948)"


def test_bcg_counts_carry_task_covariates_and_names():
    tasks = datasets.bcg(kind="counts")
    assert tasks.num_tasks == 13 and tasks.num_obs == 26
    assert tasks.feature_names == ("trials", "vaccinated")
    assert tasks.task_x_names == ("ablat", "year")
    np.testing.assert_array_equal(tasks.task_x, datasets.bcg().task_x)
    # trial 1 (Aronson): vaccinated 4 of 123, control 11 of 139
    np.testing.assert_array_equal(tasks.y[:2], [4, 11])
    np.testing.assert_array_equal(tasks.x[:2], [[123, 1], [139, 0]])
    lik = bm.likelihoods.Binomial()
    assert lik.coef_names(tasks) == ["intercept", "vaccinated"]


def test_bcg_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="kind: must be 'logrr' or 'counts'"):
        datasets.bcg(kind="or")


def test_public_names():
    assert set(datasets.__all__) == {
        "eight_schools",
        "bcg",
        "bcg_table",
        "BCG_COLUMNS",
        "radon",
        "seeds",
    }
