"""The formula interface (``bm.Hierarchical.from_formula``): each formula builds the same
NumPyro model as the likelihood, population and TaskSet written by hand (the same log
density at random parameter values, the same sites, dims and coordinates), the placement
rule of common / varying / task-level terms, and one named error per kind of bad input."""

import sys

import numpy as np
import numpyro.distributions as dist
import pandas as pd
import pytest
from numpyro import handlers
from numpyro.infer.util import log_density

import bayesmeta as bm

pytest.importorskip("formulae")

lk, pops = bm.likelihoods, bm.populations


# ---------------------------------------------------------------------- data
def radon_frame(seed=0, num_groups=8, num_rows=40):
    """Radon-like: counties, a within-county floor indicator, a county-level log uranium."""
    rng = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(num_groups)]
    county = np.array(names + list(rng.choice(names, num_rows - num_groups)))
    uranium = dict(zip(names, rng.normal(size=num_groups), strict=True))
    df = pd.DataFrame(
        {
            "county": county,
            "floor": rng.integers(0, 2, num_rows).astype(float),
            "log_uranium": [uranium[c] for c in county],
        },
        index=100 + np.arange(num_rows),  # errors must name these labels, not positions
    )
    df["log_radon"] = 1.0 + 0.7 * df.log_uranium - 0.6 * df.floor + rng.normal(0, 0.5, num_rows)
    return df


def seeds_frame(seed=0, num_plates=12, rows_per_plate=1):
    """Seeds-like: r germinated of n seeds per plate; seed type x1 and root extract x2 per
    plate (one row per plate, as in the classic data set), or x1 per row."""
    rng = np.random.default_rng(seed)
    plate = np.repeat([f"p{i}" for i in range(num_plates)], rows_per_plate)
    size = num_plates * rows_per_plate
    x1 = np.repeat(rng.integers(0, 2, num_plates), rows_per_plate).astype(float)
    if rows_per_plate > 1:
        x1 = rng.integers(0, 2, size).astype(float)
    x2 = np.repeat(rng.integers(0, 2, num_plates), rows_per_plate).astype(float)
    n = rng.integers(5, 40, size)
    r = rng.binomial(n, 0.4 + 0.2 * x2)
    return pd.DataFrame({"plate": plate, "r": r, "n": n, "x1": x1, "x2": x2})


def grouped_frame(seed=0, num_groups=6, rows_per_group=5):
    """Generic: groups g, a within-group x and category c, group-level u and type."""
    rng = np.random.default_rng(seed)
    num_rows = num_groups * rows_per_group
    g = np.repeat([f"g{i}" for i in range(num_groups)], rows_per_group)
    u = np.repeat(rng.normal(size=num_groups), rows_per_group)
    df = pd.DataFrame(
        {
            "g": g,
            "x": rng.normal(size=num_rows),
            "c": rng.choice(["lo", "mid", "hi"], num_rows),
            "u": u,
            "type": np.repeat(np.array(["a", "b", "c"])[np.arange(num_groups) % 3], rows_per_group),
        }
    )
    df["y"] = 0.5 + df.x - 0.3 * df.u + rng.normal(0, 0.4, num_rows)
    df["b"] = (df.y > df.y.median()).astype(int)
    df["count"] = rng.poisson(np.exp(0.3 + 0.4 * df.x))
    return df


# ---------------------------------------------------------------------- comparison
def latent_draws(built, num_draws=4):
    """Random values of every latent site of ``built``: prior draws under seeds 1.."""
    out = []
    for seed in range(1, num_draws + 1):
        trace = handlers.trace(handlers.seed(built.fn, seed)).get_trace(**built.data)
        out.append(
            {
                name: site["value"]
                for name, site in trace.items()
                if site["type"] == "sample" and not site["is_observed"]
            }
        )
    return out


def assert_same_model(model, tasks, hand_model, hand_tasks, num_draws=4):
    """Same data, sites, dims and coordinates, and the same log density at random
    parameter values (to 1e-10: the two are the same arithmetic)."""
    built, hand = model.build(tasks), hand_model.build(hand_tasks)
    assert sorted(built.data) == sorted(hand.data)
    for key in hand.data:
        np.testing.assert_array_equal(np.asarray(built.data[key]), np.asarray(hand.data[key]))
    assert built.dims == hand.dims
    assert built.coords == hand.coords
    assert built.param_shape == hand.param_shape
    draws = latent_draws(hand, num_draws)
    assert sorted(draws[0]) == sorted(latent_draws(built, 1)[0])
    for params in draws:
        lp = float(log_density(built.fn, (), built.data, params)[0])
        lp_hand = float(log_density(hand.fn, (), hand.data, params)[0])
        assert np.isfinite(lp_hand)
        np.testing.assert_allclose(lp, lp_hand, rtol=0, atol=1e-10)
    return built


# ---------------------------------------------------------------------- same model
def test_radon_varying_intercept_uranium_in_population():
    df = radon_frame()
    model, tasks = bm.Hierarchical.from_formula(
        "log_radon ~ floor + log_uranium + (1 | county)", df
    )
    hand_tasks = bm.TaskSet.from_dataframe(
        df, task="county", y="log_radon", x=["floor"], task_x=["log_uranium"]
    )
    hand = bm.Hierarchical(
        lk.LinearRegression(varying=["intercept"]),
        pops.Normal(task_covariates=["log_uranium"]),
    )
    built = assert_same_model(model, tasks, hand, hand_tasks)
    assert isinstance(model.likelihood, lk.LinearRegression)
    assert isinstance(model.population, pops.Normal)
    assert built.param_shape == ()
    assert built.dims["beta"] == ["common"] and built.coords["common"] == ["floor"]
    assert built.dims["beta_task"] == ["task_covariate"]
    assert built.coords["task_covariate"] == ["log_uranium"]
    assert tasks.labels == hand_tasks.labels == tuple(dict.fromkeys(df.county))
    assert tasks.feature_names == ("floor",) and tasks.task_x_names == ("log_uranium",)


def test_radon_data_set_documented_example():
    """The docstring's example on the real survey (919 houses, 85 counties)."""
    df = bm.datasets.radon()
    model, tasks = bm.Hierarchical.from_formula(
        "log_radon ~ floor + log_uranium + (1 | county)", df
    )
    hand_tasks = bm.TaskSet.from_dataframe(
        df, task="county", y="log_radon", x=["floor"], task_x=["log_uranium"]
    )
    hand = bm.Hierarchical(
        lk.LinearRegression(varying=["intercept"]),
        pops.Normal(task_covariates=["log_uranium"]),
    )
    assert tasks.num_tasks == 85
    assert_same_model(model, tasks, hand, hand_tasks, num_draws=1)


def test_seeds_binomial_plate_level_terms_in_population():
    df = seeds_frame()
    model, tasks = bm.Hierarchical.from_formula(
        "p(r, n) ~ x1 * x2 + (1 | plate)", df, family="binomial"
    )
    # one row per plate: x1, x2 and x1:x2 are all plate-level
    hand_df = df.assign(**{"x1:x2": df.x1 * df.x2})
    hand_tasks = bm.TaskSet.from_dataframe(
        hand_df, task="plate", y="r", trials="n", task_x=["x1", "x2", "x1:x2"]
    )
    hand = bm.Hierarchical(lk.Binomial(), pops.Normal(task_covariates=["x1", "x2", "x1:x2"]))
    built = assert_same_model(model, tasks, hand, hand_tasks)
    assert built.coords["task_covariate"] == ["x1", "x2", "x1:x2"]
    assert "beta" not in built.dims  # no common coefficient left
    np.testing.assert_array_equal(tasks.x[:, 0], df.n)  # trials in column 0


def test_seeds_binomial_interaction_with_a_within_plate_term_is_common():
    df = seeds_frame(rows_per_plate=3)
    model, tasks = bm.Hierarchical.from_formula(
        "p(r, n) ~ x1 * x2 + (1 | plate)", df, family="binomial"
    )
    hand_df = df.assign(**{"x1:x2": df.x1 * df.x2})
    hand_tasks = bm.TaskSet.from_dataframe(
        hand_df, task="plate", y="r", trials="n", x=["x1", "x1:x2"], task_x=["x2"]
    )
    hand = bm.Hierarchical(lk.Binomial(varying=["intercept"]), pops.Normal(task_covariates=["x2"]))
    built = assert_same_model(model, tasks, hand, hand_tasks)
    assert built.coords["common"] == ["x1", "x1:x2"]
    assert built.coords["task_covariate"] == ["x2"]


def test_correlated_intercept_and_slope_is_mvnormal():
    df = grouped_frame()
    model, tasks = bm.Hierarchical.from_formula("y ~ x + (1 + x | g)", df)
    hand_tasks = bm.TaskSet.from_dataframe(df, task="g", y="y", x=["x"])
    hand = bm.Hierarchical(lk.LinearRegression(), pops.MvNormal())
    built = assert_same_model(model, tasks, hand, hand_tasks)
    assert isinstance(model.population, pops.MvNormal)
    assert built.dims["theta"] == ["task", "coef"]
    assert built.coords["coef"] == ["intercept", "x"]
    assert built.dims["corr_chol"] == ["coef", "coef_bis"]
    # (x | g) is the same, and a varying slope has a learned mean either way
    for formula in ("y ~ x + (x | g)", "y ~ (1 + x | g)"):
        other, other_tasks = bm.Hierarchical.from_formula(formula, df)
        assert_same_model(other, other_tasks, hand, hand_tasks, num_draws=1)


def test_correlated_with_task_level_term_uses_the_dict_form():
    df = radon_frame()
    model, tasks = bm.Hierarchical.from_formula(
        "log_radon ~ floor + log_uranium + (1 + floor | county)", df
    )
    hand_tasks = bm.TaskSet.from_dataframe(
        df, task="county", y="log_radon", x=["floor"], task_x=["log_uranium"]
    )
    hand = bm.Hierarchical(
        lk.LinearRegression(), pops.MvNormal(task_covariates={"intercept": ["log_uranium"]})
    )
    built = assert_same_model(model, tasks, hand, hand_tasks)
    assert model.population.task_covariates == {"intercept": ["log_uranium"]}
    assert built.coords["task_covariate"] == ["intercept:log_uranium"]


def test_varying_slope_only_keeps_task_level_terms_common():
    df = grouped_frame()
    model, tasks = bm.Hierarchical.from_formula("y ~ x + u + (0 + x | g)", df)
    hand_tasks = bm.TaskSet.from_dataframe(df, task="g", y="y", x=["x", "u"])
    hand = bm.Hierarchical(lk.LinearRegression(varying=["x"]), pops.Normal())
    built = assert_same_model(model, tasks, hand, hand_tasks)
    assert model.population.task_covariates is None
    assert built.param_shape == ()
    assert built.coords["common"] == ["intercept", "u"]


def test_intercept_only_gaussian_is_normal():
    df = grouped_frame()
    model, tasks = bm.Hierarchical.from_formula("y ~ (1 | g)", df)
    hand_tasks = bm.TaskSet.from_dataframe(df, task="g", y="y")
    assert isinstance(model.likelihood, lk.Normal)
    assert_same_model(model, tasks, bm.Hierarchical(lk.Normal(), pops.Normal()), hand_tasks)
    # a task-level term alone leaves the likelihood intercept-only too
    model, tasks = bm.Hierarchical.from_formula("y ~ u + (1 | g)", df)
    hand_tasks = bm.TaskSet.from_dataframe(df, task="g", y="y", task_x=["u"])
    hand = bm.Hierarchical(lk.Normal(), pops.Normal(task_covariates=["u"]))
    assert_same_model(model, tasks, hand, hand_tasks)


def test_bernoulli_matches_hand_built():
    df = grouped_frame()
    model, tasks = bm.Hierarchical.from_formula("b ~ x + u + (1 | g)", df, family="bernoulli")
    hand_tasks = bm.TaskSet.from_dataframe(df, task="g", y="b", x=["x"], task_x=["u"])
    hand = bm.Hierarchical(
        lk.LogisticRegression(varying=["intercept"]), pops.Normal(task_covariates=["u"])
    )
    assert isinstance(model.likelihood, lk.LogisticRegression)
    assert_same_model(model, tasks, hand, hand_tasks)
    # without covariates: a varying log-odds
    model, tasks = bm.Hierarchical.from_formula("b ~ (1 | g)", df, family="bernoulli")
    hand_tasks = bm.TaskSet.from_dataframe(df, task="g", y="b")
    assert_same_model(
        model, tasks, bm.Hierarchical(lk.LogisticRegression(), pops.Normal()), hand_tasks
    )


def test_poisson_matches_hand_built():
    df = grouped_frame()
    model, tasks = bm.Hierarchical.from_formula("count ~ x + (1 + x | g)", df, family="poisson")
    hand_tasks = bm.TaskSet.from_dataframe(df, task="g", y="count", x=["x"])
    hand = bm.Hierarchical(lk.Poisson(), pops.MvNormal())
    assert isinstance(model.likelihood, lk.Poisson)
    assert_same_model(model, tasks, hand, hand_tasks)
    model, tasks = bm.Hierarchical.from_formula("count ~ (1 | g)", df, family="poisson")
    hand_tasks = bm.TaskSet.from_dataframe(df, task="g", y="count")
    assert_same_model(model, tasks, bm.Hierarchical(lk.Poisson(), pops.Normal()), hand_tasks)


def test_categorical_terms_carry_formulae_names():
    df = grouped_frame()
    model, tasks = bm.Hierarchical.from_formula("y ~ x + c + type + (1 | g)", df)
    # c varies within groups: common dummies; type is one per group: task-level dummies
    assert tasks.feature_names == ("x", "c[lo]", "c[mid]")
    assert tasks.task_x_names == ("type[b]", "type[c]")
    hand_df = df.assign(
        **{
            "c[lo]": (df.c == "lo") * 1.0,
            "c[mid]": (df.c == "mid") * 1.0,
            "type[b]": (df.type == "b") * 1.0,
            "type[c]": (df.type == "c") * 1.0,
        }
    )
    hand_tasks = bm.TaskSet.from_dataframe(
        hand_df, task="g", y="y", x=["x", "c[lo]", "c[mid]"], task_x=["type[b]", "type[c]"]
    )
    hand = bm.Hierarchical(
        lk.LinearRegression(varying=["intercept"]),
        pops.Normal(task_covariates=["type[b]", "type[c]"]),
    )
    assert_same_model(model, tasks, hand, hand_tasks, num_draws=2)


def test_options_pass_through():
    df = radon_frame()
    options = dict(
        population={"parameterization": "centered", "loc": dist.Normal(1.0, 2.0)},
        common_prior=dist.Normal(0.0, 1.0),
        noise_prior=dist.HalfNormal(1.0),
        coef=dist.Normal(0.0, 0.5),
    )
    model, tasks = bm.Hierarchical.from_formula(
        "log_radon ~ floor + log_uranium + (1 | county)", df, **options
    )
    hand_tasks = bm.TaskSet.from_dataframe(
        df, task="county", y="log_radon", x=["floor"], task_x=["log_uranium"]
    )
    hand = bm.Hierarchical(
        lk.LinearRegression(
            varying=["intercept"],
            common_prior=dist.Normal(0.0, 1.0),
            noise_prior=dist.HalfNormal(1.0),
        ),
        pops.Normal(
            task_covariates=["log_uranium"],
            parameterization="centered",
            loc=dist.Normal(1.0, 2.0),
            coef=dist.Normal(0.0, 0.5),
        ),
    )
    built = assert_same_model(model, tasks, hand, hand_tasks)
    assert built.centered is None  # all centred
    # and the defaults differ from these priors (the comparison above is not vacuous)
    default, default_tasks = bm.Hierarchical.from_formula(
        "log_radon ~ floor + log_uranium + (1 | county)",
        df,
        population={"parameterization": "centered"},
    )
    params = latent_draws(built, 1)[0]
    plain = default.build(default_tasks)
    assert float(log_density(plain.fn, (), plain.data, params)[0]) != pytest.approx(
        float(log_density(built.fn, (), built.data, params)[0])
    )


# ---------------------------------------------------------------------- placement rule
@pytest.mark.parametrize(
    "formula, varying, common, task_covariates",
    [
        (
            "log_radon ~ floor + log_uranium + (1 | county)",
            ["intercept"],
            ["floor"],
            ["log_uranium"],
        ),
        (
            "log_radon ~ floor * log_uranium + (1 | county)",
            ["intercept"],
            ["floor", "floor:log_uranium"],  # the interaction varies within counties
            ["log_uranium"],
        ),
        (
            "log_radon ~ floor * log_uranium + (1 + floor | county)",
            ["intercept", "floor"],
            ["floor:log_uranium"],
            {"intercept": ["log_uranium"]},
        ),
        (
            "log_radon ~ floor + log_uranium + (0 + floor | county)",
            ["floor"],
            ["intercept", "log_uranium"],  # no varying intercept to move it to
            None,
        ),
        ("log_radon ~ 0 + floor + (1 | county)", ["intercept"], ["floor"], None),
        (
            "log_radon ~ floor + log_uranium:u2 + (1 | county)",
            ["intercept"],
            ["floor"],
            ["log_uranium:u2"],  # an interaction of two county-level terms: county-level
        ),
    ],
)
def test_placement_rule(formula, varying, common, task_covariates):
    df = radon_frame()
    df["u2"] = df.groupby("county").log_uranium.transform(lambda s: s**2)
    model, tasks = bm.Hierarchical.from_formula(formula, df)
    built = model.build(tasks)
    coef = built.coords.get("coef", ["intercept"] if "intercept" in varying else varying)
    assert coef == varying
    assert built.coords.get("common", []) == common
    assert model.population.task_covariates == task_covariates


def test_names_from_the_callers_scope():
    df = grouped_frame()

    def double(v):
        return 2.0 * v

    model, tasks = bm.Hierarchical.from_formula("y ~ double(x) + np.exp(u) + (1 | g)", df)
    assert tasks.feature_names == ("double(x)",)
    assert tasks.task_x_names == ("np.exp(u)",)
    np.testing.assert_allclose(tasks.x[:, 0], 2.0 * df.x.to_numpy())


# ---------------------------------------------------------------------- bad input
def test_unknown_column():
    df = radon_frame()
    with pytest.raises(ValueError, match="column 'basement' is not in the data frame"):
        bm.Hierarchical.from_formula("log_radon ~ floor + basement + (1 | county)", df)
    with pytest.raises(ValueError, match="column 'state' is not in the data frame"):
        bm.Hierarchical.from_formula("log_radon ~ floor + (1 | state)", df)
    with pytest.raises(ValueError, match="column 'radon' is not in the data frame"):
        bm.Hierarchical.from_formula("radon ~ floor + (1 | county)", df)
    # formulae's own KeyError (an unknown function) comes back as a ValueError naming it
    with pytest.raises(ValueError, match="'nosuchfn' is neither a column"):
        bm.Hierarchical.from_formula("log_radon ~ nosuchfn(floor) + (1 | county)", df)


@pytest.mark.parametrize(
    "formula, match",
    [
        ("log_radon ~ floor", "no group-specific term"),
        ("log_radon ~ floor + (1 | county) + (1 | floor)", "several grouping factors"),
        ("log_radon ~ floor + (1 | county / floor)", "several grouping factors"),
        ("log_radon ~ floor + (1 | county:floor)", "must be one column"),
    ],
)
def test_one_grouping_factor_only(formula, match):
    with pytest.raises(ValueError, match=match):
        bm.Hierarchical.from_formula(formula, radon_frame())


def test_grouping_factor_with_one_level():
    df = radon_frame().assign(county="c0")
    with pytest.raises(ValueError, match="county: the grouping factor has one level \\('c0'\\)"):
        bm.Hierarchical.from_formula("log_radon ~ floor + (1 | county)", df)


def test_missing_values_name_column_group_and_row():
    df = radon_frame()
    bad = df.copy()
    bad.loc[107, "floor"] = np.nan
    group = bad.loc[107, "county"]
    with pytest.raises(
        ValueError, match=f"floor: missing value \\(NaN\\) at group '{group}' of 'county', row 107"
    ):
        bm.Hierarchical.from_formula("log_radon ~ floor + (1 | county)", bad)
    bad = df.copy()
    bad.loc[103, "log_radon"] = np.nan
    with pytest.raises(ValueError, match="log_radon: missing value .* row 103"):
        bm.Hierarchical.from_formula("log_radon ~ floor + (1 | county)", bad)
    bad = df.copy()
    bad.loc[111, "county"] = None
    with pytest.raises(ValueError, match="county: the grouping factor has a missing .* row 111"):
        bm.Hierarchical.from_formula("log_radon ~ floor + (1 | county)", bad)
    # a column the formula does not use may have gaps
    bm.Hierarchical.from_formula("log_radon ~ floor + (1 | county)", df.assign(other=np.nan))


@pytest.mark.parametrize(
    "column, value, match",
    [
        ("n", 10.5, "n = 'n': trials must be positive integers, got 10.5"),
        ("n", -3, "n = 'n': trials must be positive integers, got -3"),
        ("r", -1, "r = 'r': successes must be non-negative integers, got -1"),
        ("r", 2.5, "r = 'r': successes must be non-negative integers, got 2.5"),
        ("r", 1000, "1000 successes \\(r = 'r'\\) exceed 30 trials \\(n = 'n'\\)"),
    ],
)
def test_binomial_counts_name_row_and_group(column, value, match):
    df = seeds_frame()
    df["n"] = 30
    df[column] = df[column].astype(float)
    df.loc[4, column] = value
    with pytest.raises(ValueError, match=f"{match} at group 'p4' of 'plate', row 4"):
        bm.Hierarchical.from_formula("p(r, n) ~ x1 + (1 | plate)", df, family="binomial")


def test_binomial_needs_a_proportion_response():
    df = seeds_frame()
    with pytest.raises(ValueError, match="family='binomial' needs the response written p"):
        bm.Hierarchical.from_formula("r ~ x1 + (1 | plate)", df, family="binomial")
    with pytest.raises(ValueError, match="p\\(r, n\\) response is for family='binomial'"):
        bm.Hierarchical.from_formula("p(r, n) ~ x1 + (1 | plate)", df)


def test_bernoulli_response_must_be_binary():
    df = grouped_frame()
    df.loc[7, "b"] = 2
    with pytest.raises(
        ValueError, match="b: family='bernoulli' needs a 0/1 response, got 2.* group 'g1' .* row 7"
    ):
        bm.Hierarchical.from_formula("b ~ x + (1 | g)", df, family="bernoulli")


def test_poisson_response_must_be_counts():
    df = grouped_frame()
    df.loc[3, "count"] = -1
    with pytest.raises(ValueError, match="count: family='poisson' needs .* group 'g0' .* row 3"):
        bm.Hierarchical.from_formula("count ~ x + (1 | g)", df, family="poisson")


def test_unknown_family_and_options():
    df = grouped_frame()
    with pytest.raises(ValueError, match="family: must be one of .*'gaussian'.*'poisson'"):
        bm.Hierarchical.from_formula("y ~ x + (1 | g)", df, family="gamma")
    with pytest.raises(ValueError, match="options: unknown \\['prior'\\]"):
        bm.Hierarchical.from_formula("y ~ x + (1 | g)", df, prior=dist.Normal(0, 1))
    with pytest.raises(ValueError, match="noise_prior: only for family='gaussian'"):
        bm.Hierarchical.from_formula(
            "b ~ x + (1 | g)", df, family="bernoulli", noise_prior=dist.HalfNormal(1.0)
        )
    with pytest.raises(ValueError, match="common_prior: the formula has no common"):
        bm.Hierarchical.from_formula("y ~ x + (1 + x | g)", df, common_prior=dist.Normal(0, 1))
    with pytest.raises(ValueError, match="coef: the formula has no task-level terms"):
        bm.Hierarchical.from_formula("y ~ x + (1 | g)", df, coef=dist.Normal(0, 1))
    with pytest.raises(ValueError, match="task_covariates is set by the formula"):
        bm.Hierarchical.from_formula("y ~ x + (1 | g)", df, population={"task_covariates": ["u"]})
    with pytest.raises(ValueError, match="population: Normal .*corr"):
        bm.Hierarchical.from_formula("y ~ x + (1 | g)", df, population={"corr": 2.0})


def test_missing_formulae_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "formulae", None)  # import formulae now fails
    with pytest.raises(ImportError, match='pip install "bayesmeta\\[formula\\]"'):
        bm.Hierarchical.from_formula("y ~ x + (1 | g)", grouped_frame())


def test_collinear_terms_are_named():
    df = grouped_frame()
    # a varying dummy set has its own means: a common intercept beside it is one too many
    with pytest.raises(ValueError, match="design column 'c\\[mid\\]' is a linear combination"):
        bm.Hierarchical.from_formula("y ~ (0 + c | g)", df)
    bm.Hierarchical.from_formula("y ~ 0 + (0 + c | g)", df)
    with pytest.raises(ValueError, match="task-level column 'type\\[c\\]' is a linear"):
        bm.Hierarchical.from_formula("y ~ x + 0 + type + (1 | g)", df)
    with pytest.raises(ValueError, match="design column 'z' is all zeros"):
        bm.Hierarchical.from_formula("y ~ 0 + z + (0 + x | g)", df.assign(z=0.0))


def test_group_values_that_print_alike():
    df = grouped_frame()
    df["g"] = [1] * 15 + ["1"] * 15
    with pytest.raises(ValueError, match="g: two values of the grouping factor print the same"):
        bm.Hierarchical.from_formula("y ~ x + (1 | g)", df)


def test_non_finite_design_value_names_column_group_and_row():
    df = grouped_frame()
    df.loc[8, "x"] = 0.0
    # numpy's own divide-by-zero warning is the user's transform, not the check under test
    with np.errstate(divide="ignore"):
        with pytest.raises(
            ValueError,
            match="np.log\\(x\\): non-finite design value \\(-inf\\) at group 'g1' of 'g', row 8",
        ):
            bm.Hierarchical.from_formula("y ~ np.log(x) + (1 | g)", df.assign(x=df.x.abs()))
