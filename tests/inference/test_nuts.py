"""Full NUTS as one compiled program: reused by refits (no retrace, no compile), a refit
equal bit for bit to a fresh compile, timing in ``post.info``, and the ``auto`` target."""

import numpy as np
import numpyro.distributions as dist
import pytest
from conftest import COMPILES

import bayesmeta as bm
from bayesmeta.inference.nuts import TARGET_ACCEPT, TARGET_ACCEPT_RETRY, CompiledNUTS

OPTS = dict(num_chains=2, num_warmup=150, num_samples=100, progress_bar=False, warn=False)


def _logistic(num_tasks, rows, mu, tau, seed):
    rng = np.random.default_rng(seed)
    mu, tau = np.asarray(mu), np.asarray(tau)
    theta = mu + tau * rng.standard_normal((num_tasks, mu.size))
    x = rng.standard_normal((num_tasks * rows, mu.size - 1))
    task = np.repeat(np.arange(num_tasks), rows)
    eta = theta[task, 0] + np.sum(x * theta[task, 1:], axis=1)
    y = (rng.uniform(size=task.size) < 1 / (1 + np.exp(-eta))).astype(float)
    return bm.TaskSet.from_arrays(x=x, y=y, task=task)


def _model():
    return bm.Hierarchical(
        bm.likelihoods.LogisticRegression(),
        bm.populations.Normal(loc=dist.Normal(0.0, 2.0), scale=dist.HalfNormal(1.0)),
    )


COUNTER = COMPILES  # conftest's one listener


def test_second_fit_neither_retraces_nor_compiles():
    model = _model()
    first = bm.fit(model, _logistic(12, 15, [0.0, 1.0], [0.5, 0.3], 0), seed=0, **OPTS)
    assert first.info["timing"]["compiled"] is True
    assert first.info["timing"]["compile_s"] > 0
    (program,) = model._nuts_programs.values()
    assert isinstance(program, CompiledNUTS) and program.compiles == 1
    COUNTER.active = True
    try:
        second = bm.fit(model, _logistic(12, 15, [0.0, 1.0], [0.5, 0.3], 1), seed=1, **OPTS)
    finally:
        COUNTER.active = False
    assert COUNTER.count == 0  # nothing at all was compiled for the second fit
    assert second.info["timing"]["compiled"] is False
    assert second.info["timing"]["trace_s"] == 0.0 and second.info["timing"]["compile_s"] == 0
    assert program.compiles == 1 and len(model._nuts_programs) == 1
    # the second fit ran on the second data set, not the first
    assert not np.array_equal(first.samples["theta"], second.samples["theta"])


def test_refit_equals_a_fresh_compile_bit_for_bit():
    data1 = _logistic(12, 15, [0.0, 1.0], [0.5, 0.3], 2)
    data2 = _logistic(12, 15, [0.3, -1.0], [0.8, 0.2], 3)
    model = _model()
    bm.fit(model, data1, seed=0, **OPTS)
    reused = bm.fit(model, data2, seed=5, **OPTS)
    assert reused.info["timing"]["compiled"] is False
    fresh = bm.fit(_model(), data2, seed=5, **OPTS)
    assert fresh.info["timing"]["compiled"] is True
    for name in fresh.samples:
        np.testing.assert_array_equal(reused.samples[name], fresh.samples[name])
    for name in ("diverging", "n_steps", "energy"):
        np.testing.assert_array_equal(reused.sample_stats[name], fresh.sample_stats[name])


def test_a_new_shape_or_option_compiles_a_second_program():
    model = _model()
    bm.fit(model, _logistic(12, 15, [0.0, 1.0], [0.5, 0.3], 0), seed=0, **OPTS)
    bm.fit(model, _logistic(13, 15, [0.0, 1.0], [0.5, 0.3], 0), seed=0, **OPTS)
    bm.fit(
        model, _logistic(12, 15, [0.0, 1.0], [0.5, 0.3], 0), seed=0, **dict(OPTS, num_samples=60)
    )
    assert len(model._nuts_programs) == 3


def test_mixed_centring_is_an_input_of_the_program():
    """Two data sets whose per-task centring differs share one program (the mask is data)."""
    se = np.array([0.2, 0.2, 30.0, 30.0, 0.2, 30.0])
    model = bm.Hierarchical(bm.likelihoods.NormalKnownNoise())
    a = bm.TaskSet.from_estimates(y=[1.0, 9.0, 3.0, 2.0, 5.0, 0.0], se=se)
    b = bm.TaskSet.from_estimates(y=[1.0, 9.0, 3.0, 2.0, 5.0, 0.0], se=se[::-1])
    pa = bm.fit(model, a, seed=0, **OPTS)
    pb = bm.fit(model, b, seed=0, **OPTS)
    assert model.build(a).centered.tolist() != model.build(b).centered.tolist()
    assert pa.info["timing"]["compiled"] and not pb.info["timing"]["compiled"]
    assert len(model._nuts_programs) == 1


def test_chains_on_threads_equal_one_program_bit_for_bit():
    """``chain_threads``: chain ``i`` depends only on the ``i``-th key, so spreading three
    chains over two threads (one-chain executables) gives the one program's draws exactly."""
    tasks = _logistic(10, 12, [0.0, 1.0], [0.5, 0.3], 6)
    model = _model()
    opts = dict(OPTS, num_chains=3, num_warmup=60, num_samples=40)
    one = bm.fit(model, tasks, seed=3, chain_threads=1, **opts)
    two = bm.fit(model, tasks, seed=3, chain_threads=2, **opts)
    assert one.info["timing"]["threads"] == 1 and two.info["timing"]["threads"] == 2
    assert two.info["timing"]["compiled"] is True  # the one-chain executable is another
    assert two.samples["theta"].shape[0] == 3
    for name in one.samples:
        np.testing.assert_array_equal(one.samples[name], two.samples[name])
    for name in ("diverging", "n_steps", "energy", "lp"):
        np.testing.assert_array_equal(one.sample_stats[name], two.sample_stats[name])
    # the chains differ from each other: the keys reached the right calls
    assert not np.array_equal(two.samples["mu"][0], two.samples["mu"][1])


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_chain_threads(bad):
    with pytest.raises(ValueError, match="chain_threads"):
        bm.fit(_model(), _logistic(4, 5, [0.0, 1.0], [0.5, 0.3], 0), chain_threads=bad, **OPTS)


def test_timing_fields_add_up():
    post = bm.fit(_model(), _logistic(8, 10, [0.0, 1.0], [0.5, 0.3], 4), seed=0, **OPTS)
    t = post.info["timing"]
    parts = t["trace_s"] + t["compile_s"] + t["sampling_s"]
    assert 0 < parts <= t["first_posterior_s"]


def test_chain_layouts_agree_in_distribution():
    """Sequential and vectorised layouts are two runs of the same sampler: their means of
    mu agree within Monte-Carlo error (4 combined MCSEs, from the bulk ESS)."""
    from bayesmeta.inference.diagnostics import ess_bulk

    tasks = bm.datasets.eight_schools()
    opts = dict(OPTS, num_samples=500)
    means, mcse = [], []
    for layout in ("sequential", "vectorized"):
        model = bm.Hierarchical(bm.likelihoods.NormalKnownNoise())
        post = bm.fit(model, tasks, seed=0, chain_method=layout, **opts)
        assert post.info["chain_method"] == layout
        mu = post.samples["mu"]
        means.append(mu.mean())
        mcse.append(mu.std() / np.sqrt(ess_bulk(mu)))
    assert abs(means[0] - means[1]) < 4 * np.hypot(*mcse)


def test_auto_target_reruns_only_after_divergences():
    tasks = bm.datasets.eight_schools()
    calm = bm.fit(bm.Hierarchical(bm.likelihoods.NormalKnownNoise()), tasks, seed=0, **OPTS)
    if calm.info.get("retried"):
        assert calm.info["target_accept"] == TARGET_ACCEPT_RETRY
        assert calm.info["retried"]["divergences"] > 0
    else:
        assert calm.info["target_accept"] == TARGET_ACCEPT
    # a centred eight schools diverges at 0.8: auto reruns at 0.95 with the same program
    centred = bm.Hierarchical(
        bm.likelihoods.NormalKnownNoise(), bm.populations.Normal(parameterization="centered")
    )
    # (measured: 7 divergences at 0.8 with 2 chains x 300 + 300, seed 0)
    opts = dict(OPTS, num_warmup=300, num_samples=300)
    post = bm.fit(centred, tasks, seed=0, **opts)
    assert post.info["retried"]["target_accept"] == TARGET_ACCEPT
    assert post.info["retried"]["divergences"] > 0
    assert post.info["target_accept"] == TARGET_ACCEPT_RETRY
    (program,) = centred._nuts_programs.values()
    assert program.compiles == 1
    fixed = bm.fit(centred, tasks, seed=0, target_accept=0.8, **opts)
    assert "retried" not in fixed.info and fixed.info["target_accept"] == 0.8


@pytest.mark.parametrize("bad", ["0.8", True, 1.0, 0.0])
def test_bad_target_accept(bad):
    with pytest.raises(ValueError, match="target_accept"):
        bm.fit(_model(), _logistic(4, 5, [0.0, 1.0], [0.5, 0.3], 0), target_accept=bad, **OPTS)
