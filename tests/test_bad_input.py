"""Every constructor and option rejects bad input before compiling, naming field, task, row."""

import numpy as np
import numpyro.distributions as dist
import pytest

import bayesmeta as bm
from bayesmeta.cli import main


def _schools():
    return bm.datasets.eight_schools()


def _normal_model():
    return bm.Hierarchical(bm.likelihoods.NormalKnownNoise())


def test_nan_y_names_field_task_and_row():
    with pytest.raises(ValueError, match=r"y: non-finite value nan at task 'b', row 2"):
        bm.TaskSet.from_arrays(y=[1.0, 2.0, np.nan], task=["a", "a", "b"])


def test_infinite_x_names_field_task_and_row():
    with pytest.raises(ValueError, match=r"x: non-finite value at task 'a', row 1"):
        bm.TaskSet.from_arrays(y=[1.0, 2.0, 3.0], x=[0.0, np.inf, 1.0], task=["a", "a", "b"])


def test_infinite_estimate():
    with pytest.raises(ValueError, match=r"y: non-finite value inf at task 'B', row 1"):
        bm.TaskSet.from_estimates(y=[1.0, np.inf], se=[1.0, 1.0], labels=["A", "B"])


def test_mismatched_lengths_of_y_and_task():
    with pytest.raises(ValueError, match=r"task: expected 3 task ids"):
        bm.TaskSet.from_arrays(y=[1.0, 2.0, 3.0], task=[0, 1])


def test_mismatched_lengths_of_x_and_y():
    with pytest.raises(ValueError, match=r"x: expected 3 rows"):
        bm.TaskSet.from_arrays(y=[1.0, 2.0, 3.0], x=[1.0, 2.0], task=[0, 0, 1])


def test_mismatched_lengths_in_from_tasks():
    with pytest.raises(ValueError, match=r"x: task 'second' has 2 rows of x but 3 of y"):
        bm.TaskSet.from_tasks(
            [([1.0], [1.0]), ([1.0, 2.0], [1.0, 2.0, 3.0])], labels=["first", "second"]
        )


def test_mismatched_lengths_of_estimates_and_se():
    with pytest.raises(ValueError, match=r"se: 2 standard errors for 3 estimates"):
        bm.TaskSet.from_estimates(y=[1.0, 2.0, 3.0], se=[1.0, 1.0])


def test_empty_task():
    with pytest.raises(ValueError, match=r"task 'empty': the task is empty"):
        bm.TaskSet.from_tasks([[1.0, 2.0], []], labels=["full", "empty"])


def test_empty_task_from_labels():
    with pytest.raises(ValueError, match=r"task 'c': the task is empty"):
        bm.TaskSet.from_arrays(y=[1.0, 2.0], task=[0, 1], labels=["a", "b", "c"])


def test_non_positive_standard_error():
    with pytest.raises(ValueError, match=r"se: must be positive, got 0.0 at task 'B', row 1"):
        bm.TaskSet.from_estimates(y=[1.0, 2.0], se=[1.0, 0.0], labels=["A", "B"])


def test_negative_noise_scale():
    with pytest.raises(
        ValueError,
        match=r"noise_scale: must be positive, got -1.0 at task "
        r"'a', row 1",
    ):
        bm.TaskSet.from_arrays(y=[1.0, 2.0], task=["a", "a"], noise_scale=[1.0, -1.0])


def test_non_numeric_csv_cell_names_column_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("g,y\na,1.0\nb,oops\n")
    with pytest.raises(
        ValueError,
        match=r"y: column 'y' has 'oops', not a number, at task "
        r"'b', line 3",
    ):
        bm.TaskSet.from_csv(str(path), task="g", y="y")


def test_missing_csv_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("g,y\na,1.0\n")
    with pytest.raises(ValueError, match=r"x: column 'z' not in"):
        bm.TaskSet.from_csv(str(path), task="g", y="y", x=["z"])


def test_unknown_method():
    with pytest.raises(ValueError, match=r"method: must be one of"):
        bm.fit(_normal_model(), _schools(), method="hmc")


def test_unknown_option():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['num_draws'\]"):
        bm.fit(_normal_model(), _schools(), num_draws=10)


def test_bad_option_value():
    with pytest.raises(ValueError, match=r"target_accept: must be in \(0, 1\)"):
        bm.fit(_normal_model(), _schools(), target_accept=1.5)
    with pytest.raises(ValueError, match=r"num_chains: must be an integer >= 1"):
        bm.fit(_normal_model(), _schools(), num_chains=0)
    with pytest.raises(ValueError, match=r"guide: must be one of"):
        bm.fit(_normal_model(), _schools(), method="vi", guide="flow")


def test_unknown_population_parameterization():
    with pytest.raises(ValueError, match=r"parameterization: must be one of"):
        bm.populations.Normal(parameterization="sideways")


def test_scale_hyperprior_must_be_positive():
    with pytest.raises(ValueError, match=r"scale: the hyperprior must have positive support"):
        bm.populations.Normal(scale=dist.Normal(0.0, 1.0))


def test_logistic_on_non_binary_y_names_task_and_row():
    ts = bm.TaskSet.from_arrays(y=[0.0, 1.0, 2.0], x=[0.1, 0.2, 0.3], task=["a", "b", "b"])
    model = bm.Hierarchical(bm.likelihoods.LogisticRegression())
    with pytest.raises(
        ValueError,
        match=r"y: LogisticRegression needs binary y .* got 2.0 at "
        r"task 'b', row 2",
    ):
        bm.fit(model, ts)


def test_poisson_on_negative_counts():
    ts = bm.TaskSet.from_arrays(y=[1.0, -1.0], task=["a", "b"])
    with pytest.raises(
        ValueError,
        match=r"y: counts must be non-negative integers, got -1.0 at "
        r"task 'b', row 1",
    ):
        bm.fit(bm.Hierarchical(bm.likelihoods.Poisson()), ts)


def test_binomial_successes_above_trials():
    ts = bm.TaskSet.from_arrays(
        y=[3.0, 9.0], x=np.array([[5.0, 1.0], [8.0, 0.0]]), task=["t1", "t1"]
    )
    with pytest.raises(
        ValueError,
        match=r"y: 9.0 successes exceed 8.0 trials at task 't1', "
        r"row 1",
    ):
        bm.fit(bm.Hierarchical(bm.likelihoods.Binomial()), ts)


def test_population_dim_mismatch_with_likelihood():
    ts = bm.TaskSet.from_arrays(y=[1.0, 2.0, 3.0], x=[0.0, 1.0, 2.0], task=[0, 0, 1])
    model = bm.Hierarchical(bm.likelihoods.LinearRegression(), bm.populations.Normal(dim=3))
    with pytest.raises(ValueError, match=r"dim=3 but the likelihood has 2 parameter"):
        bm.fit(model, ts)


def test_mvnormal_on_scalar_parameter():
    model = bm.Hierarchical(bm.likelihoods.NormalKnownNoise(), bm.populations.MvNormal())
    with pytest.raises(ValueError, match=r"MvNormal needs a vector"):
        bm.fit(model, _schools())


def test_known_noise_likelihood_without_noise():
    ts = bm.TaskSet.from_arrays(y=[1.0, 2.0], task=[0, 1])
    with pytest.raises(ValueError, match=r"noise_scale: NormalKnownNoise needs known noise"):
        bm.fit(_normal_model(), ts)


def test_regression_without_inputs():
    ts = bm.TaskSet.from_arrays(y=[1.0, 2.0], task=[0, 1])
    with pytest.raises(ValueError, match=r"x: LinearRegression needs inputs x"):
        bm.fit(bm.Hierarchical(bm.likelihoods.LinearRegression()), ts)


def test_split_shots_needs_enough_rows():
    ts = bm.TaskSet.from_arrays(y=np.arange(5.0), task=[0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"num_support: task '1' has 2 rows, needs more than 2"):
        ts.split_shots(0, num_support=2)


def test_cli_usage_errors(capsys):
    with pytest.raises(SystemExit) as err:
        main(["fit", "--method", "hmc"])
    assert err.value.code == 2
    assert "invalid choice: 'hmc'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", "--chains", "0"])
    assert "--chains: must be >= 1" in capsys.readouterr().err


def test_cli_missing_model_file(capsys):
    assert main(["fit", "no/such/model.py"]) == 2
    assert "does not exist" in capsys.readouterr().err
