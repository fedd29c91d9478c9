"""The estimator study: the example script's claims checked on its printed numbers, and the
batched exact-Bayes yardstick checked against the one-collection solver."""

import importlib.util
import pathlib

import numpy as np
import numpyro.distributions as dist
import pytest

from bayesmeta.exact import normal as nn
from bayesmeta.study import study

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "estimator_study.py"


def _parse_rows(text: str, header: str, num_values: int) -> dict:
    """Rows after ``header`` (until a blank line): name (first 30 characters) -> numbers."""
    lines = text.splitlines()
    start = lines.index(header) + 2  # skip the column header
    rows = {}
    for line in lines[start:]:
        if not line.strip():
            break
        name, values = line[:30].strip(), line[30:].split()
        assert len(values) == num_values, line
        rows[name] = [float("nan") if v == "-" else float(v.rstrip("%")) for v in values]
    return rows


@pytest.fixture(scope="module")
def example_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    spec = importlib.util.spec_from_file_location("estimator_study", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert module.main(["--quick", "--out", str(out)]) == 0
    return buf.getvalue(), out


def test_example_runs_and_saves_figure(example_output):
    text, out = example_output
    png = out / "estimator_study.png"
    assert png.exists() and png.stat().st_size > 10_000
    assert "100 replications" in text


def test_claims_hold_on_the_printed_numbers(example_output):
    text, _ = example_output
    mu = _parse_rows(text, "Centre mu:", 7)  # bias rmse cover width pull dist2_tasks dist2_new
    theta = _parse_rows(text, "Per-task theta_t:", 6)  # bias rmse small dom cover width
    num_tasks = 8
    pooled, mean = mu["pooled (all rows)"], mu["mean of estimates"]
    # 1. the pooled estimate follows the dominant task: its weight on it (the "pull") is far
    # above one vote and near its share of the data, 100 / (100 + 7 * 5) = 0.74
    assert pooled[4] > 0.5 > 1 / num_tasks
    assert abs(mean[4] - 1 / num_tasks) < 0.1
    # 2. the mean of per-task estimates is robust to it: lower RMSE, near-nominal coverage
    assert mean[1] < pooled[1]
    assert pooled[2] < 60.0 < 85.0 < mean[2]
    # 3. partial pooling has the lowest risk for every theta_t
    partial = [
        theta[name][1] for name in ("BLUP (DL)", "BLUP (REML)", "James-Stein", "exact Bayes")
    ]
    assert max(partial) < min(theta["no pooling"][1], theta["complete pooling"][1])
    # 4. centre of the task universe: the mean of the task optima is the closest point to the
    # collection's tasks, and the universe mean mu (tau^2 = 0.25) to a new task
    d2 = {name: row[5] for name, row in mu.items()}
    assert d2["oracle: mean of task optima"] == min(d2.values())
    assert sorted(d2.values())[0] < sorted(d2.values())[1]
    d2new = {name: row[6] for name, row in mu.items()}
    assert d2new["oracle: universe mean mu"] == min(d2new.values()) == 0.25
    assert all(v > 0.25 for k, v in d2new.items() if k != "oracle: universe mean mu")
    assert text.count(" holds ") == 4


def test_without_heterogeneity_pooling_wins():
    # the claims are about heterogeneous tasks: with tau = 0 the data-weighted pooled
    # estimate is the efficient one and beats the unweighted mean
    table = study(tau=0.0, num_reps=200, seed=1, exact=False)
    assert table.row("pooled (all rows)")["rmse"] < table.row("mean of estimates")["rmse"]
    assert table.row("no pooling", "theta")["rmse"] > table.row("complete pooling", "theta")["rmse"]


def test_seeded_and_validated():
    a = study(num_reps=20, seed=3, exact=False)
    b = study(num_reps=20, seed=3, exact=False)
    assert a.mu_rows == b.mu_rows
    with pytest.raises(ValueError, match="num_tasks"):
        study(num_tasks=3)
    with pytest.raises(ValueError, match="tau"):
        study(tau=-1.0)


def test_batched_exact_rule_matches_single_solver():
    rng = np.random.default_rng(0)
    se = np.array([0.2, 0.45, 0.45, 0.45, 0.45, 0.45])
    y = 0.5 * rng.standard_normal((3, 6)) + se * rng.standard_normal((3, 6))
    prior = dist.HalfCauchy(1.0)
    rule, _, _ = nn._batch_rule(
        y, np.broadcast_to(se, y.shape).copy(), loc_prior="flat", scale_prior=prior, rtol=1e-10
    )
    mom = nn._batch_moments(rule, y, np.broadcast_to(se, y.shape))
    for r in range(3):
        single = nn.solve_normal_normal(y[r], se, loc_prior="flat", scale_prior=prior)
        np.testing.assert_allclose(mom["mu_mean"][r], single.mu_mean, rtol=1e-8)
        np.testing.assert_allclose(np.sqrt(mom["mu_var"][r]), single.mu_sd, rtol=1e-8)
        np.testing.assert_allclose(mom["theta_mean"][r], single.theta_mean, rtol=1e-8)
        np.testing.assert_allclose(np.sqrt(mom["theta_var"][r]), single.theta_sd, rtol=1e-8)
