"""Every gallery model file loads and fits (tiny runs), and simulated truths are sane."""

import glob

import numpy as np
import pytest

import bayesmeta as bm

GALLERY = [
    "models/eight_schools.py",
    "models/bcg.py",
    "models/hier_linear.py",
    "models/hier_logistic.py",
    "models/radon.py",
    "models/seeds.py",
    "models/bcg_latitude.py",
]


def test_gallery_files_exist():
    assert set(GALLERY) <= set(glob.glob("models/*.py"))


@pytest.mark.parametrize("path", GALLERY)
def test_gallery_model_loads_and_fits(path):
    model, tasks = bm.load_model(path)
    assert isinstance(tasks, bm.TaskSet) and tasks.num_tasks >= 8
    post = bm.fit(model, tasks, method="vi", num_steps=300, num_samples=50, warn=False)
    assert post.samples["theta"].shape[:3] == (1, 50, tasks.num_tasks)
    assert np.all(np.isfinite(post.samples["theta"]))


def test_bcg_counts_model_builds():
    tasks = bm.datasets.bcg(kind="counts")
    assert tasks.num_tasks == 13 and tasks.num_obs == 26
    built = bm.Hierarchical(bm.likelihoods.Binomial(), bm.populations.MvNormal()).build(tasks)
    assert built.coords["coef"] == ["intercept", "vaccinated"]


@pytest.mark.parametrize(
    "path, common, task_covariate",
    [
        ("models/radon.py", ["floor"], ["log_uranium"]),
        ("models/seeds.py", ["x1", "x2", "x1x2"], None),
        ("models/bcg_latitude.py", None, ["ablat"]),
    ],
)
def test_gallery_regression_coords(path, common, task_covariate):
    # the common coefficients and the task-covariate coefficients are named by the data's
    # columns, so the printed table and the ArviZ data say which is which
    model, tasks = bm.load_model(path)
    coords = model.build(tasks).coords
    assert coords.get("common") == common
    assert coords.get("task_covariate") == task_covariate


def test_load_model_rejects_a_file_without_model(tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no 'model'"):
        bm.load_model(str(path))
