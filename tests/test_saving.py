"""``Posterior.save`` / ``bm.load_posterior`` and atomic files (bayesmeta/saving.py).

The reference for every loaded posterior is the posterior that was saved, in this
process: the round trip must return equal arrays and equal answers from population(),
predict() and adapt() with the same seeds."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import bayesmeta as bm
from bayesmeta import cli, saving

pytestmark = pytest.mark.arviz


def _equal_posteriors(a, b):
    assert a.method == b.method and a.param_shape == b.param_shape
    assert a.dims == b.dims and a.coords == b.coords
    for group in ("samples", "sample_stats", "log_likelihood", "observed_data"):
        ga, gb = getattr(a, group), getattr(b, group)
        assert set(ga) == set(gb), group
        for k in ga:
            assert ga[k].dtype == gb[k].dtype, (group, k)
            np.testing.assert_array_equal(ga[k], gb[k], err_msg=f"{group}/{k}")
    assert a.tasks.labels == b.tasks.labels
    np.testing.assert_array_equal(a.tasks.y, b.tasks.y)
    assert a.info.diagnostics == b.info.diagnostics


@pytest.fixture(scope="module")
def exact_post():
    model = bm.Hierarchical(bm.likelihoods.NormalKnownNoise())
    return bm.fit(model, bm.datasets.eight_schools(), method="exact", num_samples=200)


@pytest.mark.parametrize("which", ["nuts", "exact"])
def test_round_trip_is_exact(which, eight_schools_post, exact_post, tmp_path):
    post = eight_schools_post if which == "nuts" else exact_post
    path = post.save(str(tmp_path / "fit.nc"))
    back = bm.load_posterior(path)
    _equal_posteriors(post, back)
    # what a restart needs: the learned prior, predictions and adaptation
    grid = np.linspace(-20, 40, 7)
    np.testing.assert_array_equal(
        post.population().log_prob(grid), back.population().log_prob(grid)
    )
    np.testing.assert_array_equal(post.predict(seed=3), back.predict(seed=3))
    new = bm.TaskSet.from_estimates(y=[5.0, -2.0], se=[10.0, 12.0], labels=["I", "J"])
    a, b = post.adapt(new, seed=1), back.adapt(new, seed=1)
    np.testing.assert_array_equal(a.samples["theta"], b.samples["theta"])


def test_arviz_reads_the_same_file(eight_schools_post, tmp_path):
    from bayesmeta.arviz import _az, group_arrays, group_names

    path = eight_schools_post.save(str(tmp_path / "fit.nc"))
    data = _az().from_netcdf(path)
    assert {"posterior", "sample_stats", "log_likelihood"} <= set(group_names(data))
    np.testing.assert_array_equal(group_arrays(data)["theta"], eight_schools_post.samples["theta"])


def test_truncated_file_is_refused(exact_post, tmp_path):
    path = exact_post.save(str(tmp_path / "fit.nc"))
    blob = Path(path).read_bytes()
    for keep in (len(blob) // 2, 100):
        cut = tmp_path / f"cut{keep}.nc"
        cut.write_bytes(blob[:keep])
        with pytest.raises(ValueError, match=r"path: .*(truncated|damaged|not written)"):
            bm.load_posterior(str(cut))


def test_foreign_and_missing_files_are_refused(exact_post, tmp_path):
    plain = str(tmp_path / "plain.nc")
    exact_post.to_arviz().to_netcdf(plain, engine="h5netcdf")
    with pytest.raises(ValueError, match="not written by Posterior.save"):
        bm.load_posterior(plain)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a readable NetCDF-4 file"):
        bm.load_posterior(str(text))
    with pytest.raises(ValueError, match="no such file"):
        bm.load_posterior(str(tmp_path / "absent.nc"))


def test_other_format_version_is_refused(exact_post, tmp_path, monkeypatch):
    monkeypatch.setattr(saving, "FORMAT_VERSION", saving.FORMAT_VERSION + 1)
    path = exact_post.save(str(tmp_path / "newer.nc"))
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"format 2 .* reads format 1"):
        bm.load_posterior(path)


def test_altered_draws_fail_the_digest(exact_post, tmp_path):
    path = exact_post.save(str(tmp_path / "fit.nc"))
    with h5py.File(path, "r+") as f:
        f["posterior/tau"][0, 0] = f["posterior/tau"][0, 0] + 1.0
    with pytest.raises(ValueError, match="do not match their digest"):
        bm.load_posterior(path)


def test_save_checks_the_path_first(exact_post, tmp_path):
    with pytest.raises(ValueError, match="the folder .* does not exist"):
        exact_post.save(str(tmp_path / "missing" / "fit.nc"))
    with pytest.raises(ValueError, match="is a folder"):
        exact_post.save(str(tmp_path))


def test_cli_out_writes_a_loadable_posterior(tmp_path, capsys):
    path = str(tmp_path / "fit.nc")
    assert cli.main(["fit", "--method", "exact", "--draws", "50", "--out", path, "--json"]) == 0
    back = bm.load_posterior(path)
    assert back.method == "exact" and back.labels == tuple("ABCDEFGH")
    assert back.population() is not None
    # output paths are checked before anything is fitted
    code = cli.main(["fit", "--out", str(tmp_path / "no" / "fit.nc")])
    assert code == 2
    assert "--out: the folder" in capsys.readouterr().err
