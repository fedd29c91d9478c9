"""TaskSet: constructors, layout, splits, padding (property tests)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bayesmeta as bm


def test_from_arrays_sorts_rows_by_task_and_keeps_first_appearance_order():
    ts = bm.TaskSet.from_arrays(
        y=[1.0, 2.0, 3.0, 4.0], task=["b", "a", "b", "c"], x=[10.0, 20.0, 30.0, 40.0]
    )
    assert ts.labels == ("b", "a", "c")
    assert ts.counts.tolist() == [2, 1, 1]
    assert ts.y.tolist() == [1.0, 3.0, 2.0, 4.0]
    assert ts.x[:, 0].tolist() == [10.0, 30.0, 20.0, 40.0]
    assert ts.offsets.tolist() == [0, 2, 3, 4]
    x, y = ts.task_data("a")
    assert y.tolist() == [2.0] and x[:, 0].tolist() == [20.0]


def test_from_tasks_and_from_estimates():
    ts = bm.TaskSet.from_tasks(
        [(np.arange(3.0), np.ones(3)), (np.arange(2.0), np.zeros(2))],
        labels=["u", "v"],
        noise_scale=[0.5, 2.0],
    )
    assert ts.num_tasks == 2 and ts.num_obs == 5
    assert ts.noise_scale.tolist() == [0.5, 0.5, 0.5, 2.0, 2.0]
    est = bm.TaskSet.from_estimates(y=[1.0, 2.0], se=[0.1, 0.2], labels=["p", "q"])
    assert est.is_estimates and est.counts.tolist() == [1, 1]
    e, s = est.per_task_estimates()
    assert e.tolist() == [1.0, 2.0] and s.tolist() == [0.1, 0.2]


def test_from_csv_reads_columns(tmp_path):
    path = tmp_path / "radon.csv"
    path.write_text("county,floor,log_radon\nA,0,1.5\nB,1,0.5\nA,1,1.0\n")
    ts = bm.TaskSet.from_csv(str(path), task="county", y="log_radon", x=["floor"])
    assert ts.labels == ("A", "B")
    assert ts.y.tolist() == [1.5, 1.0, 0.5]
    assert ts.x[:, 0].tolist() == [0.0, 1.0, 1.0]


def test_split_shots_keeps_every_task_and_partitions_rows():
    rng = np.random.default_rng(0)
    ts = bm.TaskSet.from_arrays(y=rng.normal(size=40), task=np.repeat(np.arange(5), 8))
    sup, qry = ts.split_shots(0, num_support=3)
    assert sup.counts.tolist() == [3] * 5 and qry.counts.tolist() == [5] * 5
    for t in range(5):
        joined = np.sort(np.concatenate([sup.task_data(t)[1], qry.task_data(t)[1]]))
        assert np.array_equal(joined, np.sort(ts.task_data(t)[1]))


def test_split_tasks_and_subset():
    ts = bm.TaskSet.from_arrays(y=np.arange(10.0), task=np.arange(10) // 2)
    train, test = ts.split_tasks(1, test_fraction=0.2)
    assert train.num_tasks == 4 and test.num_tasks == 1
    assert set(train.labels) | set(test.labels) == set(ts.labels)
    sub = ts.subset(["3", "1"])
    assert sub.labels == ("3", "1") and sub.y.tolist() == [6.0, 7.0, 2.0, 3.0]


def test_per_task_estimates_weighted_by_known_noise():
    ts = bm.TaskSet.from_arrays(y=[1.0, 3.0, 5.0], task=[0, 0, 1], noise_scale=[1.0, 2.0, 1.0])
    est, se = ts.per_task_estimates()
    # inverse-variance mean of (1, 3) with variances (1, 4): (1 + 3/4) / (1 + 1/4) = 1.4
    assert est[0] == pytest.approx(1.4) and se[0] == pytest.approx(1 / np.sqrt(1.25))


@st.composite
def ragged(draw):
    counts = draw(st.lists(st.integers(1, 6), min_size=1, max_size=6))
    n = sum(counts)
    y = draw(st.lists(st.floats(-5, 5), min_size=n, max_size=n))
    task = np.repeat(np.arange(len(counts)), counts)
    perm = draw(st.permutations(list(range(n))))
    return np.asarray(y)[perm], task[perm]


@settings(max_examples=40, deadline=None)
@given(ragged(), st.integers(0, 3))
def test_padding_never_changes_the_log_density(data, extra):
    """Sum of N(y | theta_t, 1) over the flat rows equals the masked sum over the padded view,
    whatever extra padding is added."""
    y, task = data
    ts = bm.TaskSet.from_arrays(y=y, task=task)
    theta = np.linspace(-1, 1, ts.num_tasks)
    flat = np.sum(-0.5 * (ts.y - theta[ts.task_index]) ** 2)
    pad = ts.padded(max_count=int(ts.counts.max()) + extra)
    padded = np.sum(np.where(pad.mask, -0.5 * (pad.y - theta[:, None]) ** 2, 0.0))
    assert padded == pytest.approx(flat, rel=1e-12, abs=1e-12)
    assert pad.mask.sum(axis=1).tolist() == ts.counts.tolist()


@settings(max_examples=30, deadline=None)
@given(ragged())
def test_shuffling_rows_only_reorders_tasks(data):
    y, task = data
    a = bm.TaskSet.from_arrays(y=y, task=task)
    rev = np.arange(len(y))[::-1]
    b = bm.TaskSet.from_arrays(y=y[rev], task=task[rev])
    for label in a.labels:
        assert np.array_equal(np.sort(a.task_data(label)[1]), np.sort(b.task_data(label)[1]))


# ---------------------------------------------------------------------- task covariates
def test_task_x_from_rows_is_one_row_per_task_in_label_order():
    ts = bm.TaskSet.from_arrays(
        y=[1.0, 2.0, 3.0, 4.0],
        task=["b", "a", "b", "c"],
        task_x={"u": [5.0, 6.0, 5.0, 7.0], "v": [0.0, 1.0, 0.0, 1.0]},
    )
    assert ts.task_x_names == ("u", "v")
    assert ts.task_x.tolist() == [[5.0, 0.0], [6.0, 1.0], [7.0, 1.0]]
    sub = ts.subset(["c", "b"])
    assert sub.task_x.tolist() == [[7.0, 1.0], [5.0, 0.0]]
    train, test = ts.split_tasks(0, test_fraction=0.34)
    for part in (train, test):
        for t, label in enumerate(part.labels):
            assert part.task_x[t].tolist() == ts.task_x[ts.labels.index(label)].tolist()
    two = bm.TaskSet.from_arrays(y=[1.0, 2.0, 3.0, 4.0], task=[0, 0, 1, 1], task_x=[3, 3, 4, 4])
    support, query = two.split_shots(0, num_support=1)
    assert support.task_x.tolist() == query.task_x.tolist() == [[3.0], [4.0]]


def test_task_x_that_varies_within_a_task_names_column_task_and_rows():
    with pytest.raises(ValueError, match=r"'u' varies within task 'b': 5.0 at row 0, 9.0 at row 2"):
        bm.TaskSet.from_arrays(y=[1.0, 2.0, 3.0], task=["b", "a", "b"], task_x={"u": [5, 6, 9]})
    with pytest.raises(
        ValueError, match=r"column 'z0' has non-finite value nan at task 'a', row 1"
    ):
        bm.TaskSet.from_arrays(y=[1.0, 2.0, 3.0], task=["b", "a", "b"], task_x=[5, np.nan, 5])
    with pytest.raises(ValueError, match="task_x: expected 3 rows"):
        bm.TaskSet.from_arrays(y=[1.0, 2.0, 3.0], task=["b", "a", "b"], task_x=[5, 6])


def test_from_estimates_carries_moderators():
    ts = bm.TaskSet.from_estimates([0.1, 0.2], [1.0, 1.0], task_x={"lat": [40.0, 13.0]})
    assert ts.task_x[:, 0].tolist() == [40.0, 13.0] and ts.task_x_names == ("lat",)
    with pytest.raises(ValueError, match="'lat' has non-finite value inf at task '1'"):
        bm.TaskSet.from_estimates([0.1, 0.2], [1.0, 1.0], task_x={"lat": [40.0, np.inf]})


def test_from_dataframe_keeps_names_and_names_bad_cells():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(
        {
            "g": ["a", "a", "b", "b", "c"],
            "y": [1.0, 2.0, 3.0, 4.0, 5.0],
            "floor": [0, 1, 0, 1, 1],
            "u": [0.5, 0.5, -1.0, -1.0, 2.0],
            "n": [3, 4, 5, 6, 7],
        },
        index=[10, 11, 12, 13, 14],
    )
    ts = bm.TaskSet.from_dataframe(df, task="g", y="y", x=["floor"], task_x=["u"], trials="n")
    assert ts.feature_names == ("n", "floor")
    assert ts.x[:, 0].tolist() == [3, 4, 5, 6, 7]
    assert ts.task_x_names == ("u",) and ts.task_x[:, 0].tolist() == [0.5, -1.0, 2.0]
    lik = bm.likelihoods.Binomial(varying=["intercept"])
    lik.validate(ts)
    assert lik.coef_names(ts) == ["intercept", "floor"] and lik.common_names == ["floor"]
    bad = df.copy()
    bad.loc[13, "floor"] = np.nan
    with pytest.raises(ValueError, match="column 'floor' has a missing .* task 'b', row 13"):
        bm.TaskSet.from_dataframe(bad, task="g", y="y", x=["floor"])
    bad = df.copy()
    bad.loc[13, "u"] = 7.0
    with pytest.raises(
        ValueError, match="'u' varies within task 'b': -1.0 at row 12, 7.0 at row 13"
    ):
        bm.TaskSet.from_dataframe(bad, task="g", y="y", task_x=["u"])
    with pytest.raises(ValueError, match="x: column 'flor' not in the data frame"):
        bm.TaskSet.from_dataframe(df, task="g", y="y", x=["flor"])
    bad = df.astype({"floor": object})
    bad.loc[11, "floor"] = "first"
    with pytest.raises(ValueError, match="column 'floor' has 'first', not a number, at task 'a'"):
        bm.TaskSet.from_dataframe(bad, task="g", y="y", x=["floor"])


def test_with_y_replaces_only_the_responses():
    ts = bm.TaskSet.from_arrays(
        y=[1.0, 2.0, 3.0], task=["b", "a", "b"], x=[[0.1], [0.2], [0.3]], noise_scale=[1, 2, 3]
    ).with_task_x({"z": [5.0, 6.0]})
    new = ts.with_y([7.0, 8.0, 9.0])
    assert new.y.tolist() == [7.0, 8.0, 9.0] and ts.y.tolist() != new.y.tolist()
    assert new.labels == ts.labels and new.task_index.tolist() == ts.task_index.tolist()
    np.testing.assert_array_equal(new.x, ts.x)
    np.testing.assert_array_equal(new.noise_scale, ts.noise_scale)
    np.testing.assert_array_equal(new.task_x, ts.task_x)
    est = bm.datasets.eight_schools().with_y(np.zeros(8))
    assert (
        est.is_estimates
        and est.noise_scale.tolist() == bm.datasets.eight_schools().noise_scale.tolist()
    )
    with pytest.raises(ValueError, match=r"y: expected shape \(3,\)"):
        ts.with_y([1.0, 2.0])
    with pytest.raises(ValueError, match="y: non-finite value nan at task"):
        ts.with_y([1.0, np.nan, 2.0])


def test_input_order_recovers_the_callers_rows(tmp_path):
    TaskSet = bm.TaskSet
    """Rows are stored task-sorted; ``input_order`` gives them back as they were given, and
    survives the copies (``with_noise_scale``, ``with_task_x``, ``subset`` of all tasks)."""
    import pandas as pd

    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    task = np.array(["b", "a", "c", "a", "b"])
    ts = TaskSet.from_arrays(y=y, task=task, x=np.arange(5.0))
    assert ts.y.tolist() != y.tolist()  # stored in task order b, b, a, a, c
    np.testing.assert_array_equal(ts.y[ts.input_order], y)
    np.testing.assert_array_equal(ts.x[ts.input_order, 0], np.arange(5.0))
    for copy in (ts.with_noise_scale(1.0), ts.with_task_x([[0.0], [1.0], [2.0]])):
        np.testing.assert_array_equal(copy.y[copy.input_order], y)
    sub = ts.subset(["a", "c", "b"])
    np.testing.assert_array_equal(sub.y[sub.input_order], y)
    # a frame with an unsorted, non-numeric index: positions, not labels, give the order
    df = pd.DataFrame({"g": task, "y": y}, index=["r5", "r1", "r4", "r2", "r3"])
    ts = TaskSet.from_dataframe(df, task="g", y="y")
    np.testing.assert_array_equal(ts.y[ts.input_order], y)
    assert ts.row_ids[ts.input_order].tolist() == ["r5", "r1", "r4", "r2", "r3"]
    path = tmp_path / "rows.csv"
    df.to_csv(path, index=False)
    ts = TaskSet.from_csv(str(path), task="g", y="y")
    np.testing.assert_array_equal(ts.y[ts.input_order], y)
    # from_tasks is given task by task: stored order is the caller's
    ts = TaskSet.from_tasks([[1.0, 2.0], [3.0]])
    assert ts.input_order.tolist() == [0, 1, 2]
