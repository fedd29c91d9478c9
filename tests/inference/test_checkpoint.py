"""Checkpoint and resume of full NUTS (``bm.fit(..., checkpoint=path)``).

The reference for every resumed fit is the same fit run without interruption in this
process: a checkpointed fit gives the same draws bit for bit whatever its checkpoint
interval and however often it was stopped (the chunks run the same compiled kernel on the
same saved state and keys)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import bayesmeta as bm
from bayesmeta.inference import checkpoint as ck

KW = dict(num_chains=2, num_warmup=100, num_samples=150, target_accept=0.8, warn=False)
WARMUP, TOTAL = 100, 250


@pytest.fixture(scope="module")
def model():
    pop = bm.populations.Normal(parameterization="noncentered")
    return bm.Hierarchical(bm.likelihoods.NormalKnownNoise(), pop)


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """An uninterrupted checkpointed fit (checkpoint every 25 iterations)."""
    path = tmp_path_factory.mktemp("ref") / "ref.npz"
    return bm.fit(
        model, bm.datasets.eight_schools(), checkpoint=str(path), checkpoint_every=25, **KW
    )


def _same(a, b):
    assert set(a.samples) == set(b.samples)
    for k in a.samples:
        np.testing.assert_array_equal(a.samples[k], b.samples[k], err_msg=k)
    for k in a.sample_stats:
        np.testing.assert_array_equal(a.sample_stats[k], b.sample_stats[k], err_msg=k)


def test_interval_does_not_change_the_draws(model, reference, tmp_path):
    post = bm.fit(
        model,
        bm.datasets.eight_schools(),
        checkpoint=str(tmp_path / "c.npz"),
        checkpoint_every=60,
        **KW,
    )
    _same(post, reference)
    assert post.info["timing"]["resumed_at"] == 0
    assert post.samples["theta"].shape == (2, 150, 8)


def test_complete_checkpoint_returns_all_draws_without_sampling(model, reference):
    path = reference.info["checkpoint"]["path"]
    again = bm.fit(model, bm.datasets.eight_schools(), checkpoint=path, checkpoint_every=25, **KW)
    assert again.info["timing"]["resumed_at"] == TOTAL
    _same(again, reference)


_CHILD = textwrap.dedent(
    """
    import sys, time
    import bayesmeta as bm
    from bayesmeta.inference import checkpoint as ck

    real_save = ck.save

    def slow_save(*args, **kwargs):  # slows the child down so the parent can kill it mid-run
        real_save(*args, **kwargs)
        time.sleep(0.25)

    ck.save = slow_save
    pop = bm.populations.Normal(parameterization="noncentered")
    model = bm.Hierarchical(bm.likelihoods.NormalKnownNoise(), pop)
    bm.fit(model, bm.datasets.eight_schools(), checkpoint=sys.argv[1], checkpoint_every=25,
           num_chains=2, num_warmup=100, num_samples=150, target_accept=0.8, warn=False)
    print("finished")
    """
)


def _done(path) -> int:
    meta = ck.peek(path)  # atomic writes: a complete checkpoint or none
    return -1 if meta is None else int(meta["done"])


def test_sigkill_mid_sampling_then_resume_equals_uninterrupted(model, reference, tmp_path):
    path = str(tmp_path / "killed.npz")
    # the child runs as this test process does: float64 (tests/conftest.py)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), *sys.path]), JAX_ENABLE_X64="1")
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, path],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    killed_at = -1
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and child.poll() is None:
            killed_at = _done(path)
            if WARMUP < killed_at < TOTAL:  # mid-sampling: warmup finished, draws partial
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        if child.poll() is None and killed_at <= WARMUP:
            child.kill()
        _, err = child.communicate()
    assert child.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert WARMUP < killed_at < TOTAL
    left = _done(path)  # the last complete checkpoint survived the kill
    assert left >= killed_at
    post = bm.fit(model, bm.datasets.eight_schools(), checkpoint=path, checkpoint_every=25, **KW)
    assert post.info["timing"]["resumed_at"] == left  # warmup was not repeated
    _same(post, reference)


def test_checkpoint_of_another_fit_is_refused(model, reference):
    path = reference.info["checkpoint"]["path"]
    with pytest.raises(ValueError, match=r"checkpoint: .* another fit .*seed"):
        bm.fit(
            model, bm.datasets.eight_schools(), seed=1, checkpoint=path, checkpoint_every=25, **KW
        )
    with pytest.raises(ValueError, match=r"another fit .*data"):
        tasks = bm.TaskSet.from_estimates(y=np.arange(8.0), se=np.ones(8))
        bm.fit(model, tasks, checkpoint=path, checkpoint_every=25, **KW)


def test_damaged_checkpoint_is_refused(model, tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint: .* not a readable bayesmeta checkpoint"):
        bm.fit(model, bm.datasets.eight_schools(), checkpoint=str(path), **KW)


def test_checkpoint_options_are_checked_before_compiling(model, tmp_path):
    with pytest.raises(ValueError, match="checkpoint: the folder .* does not exist"):
        bm.fit(model, bm.datasets.eight_schools(), checkpoint=str(tmp_path / "no" / "c.npz"), **KW)
    with pytest.raises(ValueError, match="checkpoint_every: must be an integer >= 1"):
        bm.fit(
            model,
            bm.datasets.eight_schools(),
            checkpoint=str(tmp_path / "c.npz"),
            checkpoint_every=0,
            **KW,
        )
    with pytest.raises(ValueError, match="unknown option.*checkpoint"):
        bm.fit(model, bm.datasets.eight_schools(), method="exact", checkpoint="x.npz")


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    from bayesmeta.saving import atomic_write

    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def failing(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(str(path), failing)
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]  # no temporary file left behind


def test_vi_resumes_after_a_crash_and_equals_the_uninterrupted_fit(tmp_path, monkeypatch):
    """A crash after the third of ten windows (the checkpoint write raises); the rerun
    resumes there and ends on the same guide parameters, bit for bit, as a fit that was
    never stopped (same compiled window, same saved optimiser state)."""
    model = bm.Hierarchical(bm.likelihoods.NormalKnownNoise())
    tasks = bm.datasets.eight_schools()
    kw = dict(method="vi", num_steps=400, num_samples=100, warn=False)
    whole = bm.fit(model, tasks, checkpoint=str(tmp_path / "whole.npz"), **kw)
    real_save, calls = ck.save, []

    def crashing_save(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ck, "save", crashing_save)
    path = str(tmp_path / "vi.npz")
    with pytest.raises(KeyboardInterrupt):
        bm.fit(model, tasks, checkpoint=path, **kw)
    monkeypatch.setattr(ck, "save", real_save)
    assert ck.peek(path)["windows"] == 3
    post = bm.fit(model, tasks, checkpoint=path, **kw)
    assert post.info["timing"]["resumed_at"] == 3
    np.testing.assert_array_equal(post.info["elbo"], whole.info["elbo"])
    for k in whole.info["guide_params"]:
        np.testing.assert_array_equal(post.info["guide_params"][k], whole.info["guide_params"][k])
    assert post.info["converged"] == whole.info["converged"]
