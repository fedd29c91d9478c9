"""The README's set-up commands are the ones CI runs, and its tour runs as written."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_setup_commands_are_what_ci_runs():
    setup = _blocks("bash")[0].strip().splitlines()
    assert setup == ['python3 -m pip install -e ".[dev]"', "python3 -m pytest"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in setup:
        assert command in ci
    assert "bayesmeta fit" in _blocks("bash")[1]
    assert any(line.startswith("bayesmeta fit") for line in ci)


def test_tour_runs_as_written():
    tour = _blocks("python")[0]
    namespace = {}
    exec(compile(tour, "README.md (tour)", "exec"), namespace)
    post, post_new = namespace["post"], namespace["post_new"]
    assert post.samples["theta"].shape[2] == 8
    assert post_new.labels == ("new school",)


def test_mixed_models_section_runs_as_written():
    """The radon example of "Mixed models and meta-regression" (its own block)."""
    import pytest

    pytest.importorskip("formulae")
    block = next(b for b in _blocks("python") if "radon = bm.datasets.radon()" in b)
    namespace = {}
    exec(compile(block, "README.md (mixed models)", "exec"), namespace)
    post = namespace["post"]
    assert post.method == "collapsed"
    assert post.coords["common"] == ["floor"]
    assert post.coords["task_covariate"] == ["log_uranium"]
    model, tasks = namespace["model"], namespace["tasks"]
    assert tasks.num_tasks == 85 and tasks.task_x_names == ("log_uranium",)
    assert model.population.task_covariates is not None


def test_every_python_block_runs_as_written(tmp_path, monkeypatch):
    """Every ```python block of the README, each on its own in a fresh namespace, from a
    scratch folder holding the repository's models/ (the tour and the mixed-models blocks
    are checked in detail above; here every block must simply run)."""
    import shutil

    shutil.copytree(ROOT / "models", tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    blocks = _blocks("python")
    assert len(blocks) >= 7
    for i, block in enumerate(blocks):
        if "radon = bm.datasets.radon()" in block:
            continue  # the mixed-models block: test_mixed_models_section_runs_as_written
        if 'post = bm.fit(model, tasks, method="nuts", seed=0)' in block:
            continue  # the tour: test_tour_runs_as_written
        exec(compile(block, f"README.md (python block {i})", "exec"), {})
