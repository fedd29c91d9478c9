"""bm.plots: forest, funnel and shrinkage plots on BCG and eight schools (Agg backend).

The posteriors come from the exact engine (quadrature over tau, exact draws given it), so
the figures are drawn from a real posterior in well under a second. Each test reads back
what was drawn (diamond vertices, bar ends, arrow ends, text) and compares it with the
numbers of the result or posterior it was drawn from.
"""

import sys

import matplotlib
import numpy as np
import numpyro.distributions as dist
import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.patches import FancyArrowPatch, Polygon
from scipy import stats

import bayesmeta as bm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DATASETS = {
    "bcg": (bm.datasets.bcg, dist.HalfNormal(1.0)),
    "eight_schools": (bm.datasets.eight_schools, dist.HalfCauchy(5.0)),
}


@pytest.fixture(scope="module", params=sorted(DATASETS))
def case(request):
    data, tau_prior = DATASETS[request.param]
    tasks = data()
    res = bm.estimators.random_effects(tasks, method="REML")
    model = bm.Hierarchical(
        likelihood=bm.likelihoods.NormalKnownNoise(),
        population=bm.populations.Normal(loc=dist.Normal(0.0, 5.0), scale=tau_prior),
    )
    post = bm.fit(model, tasks, method="exact", seed=0, num_chains=2, num_samples=500)
    return request.param, tasks, res, post


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _diamonds(ax):
    """``(left, centre, right)`` of each filled diamond, top to bottom."""
    out = []
    for patch in ax.patches:
        if isinstance(patch, Polygon):
            xy = patch.get_xy()
            out.append((xy[:, 1].mean(), xy[0, 0], xy[1, 0], xy[2, 0]))
    return [d[1:] for d in sorted(out, reverse=True)]


def _segments(ax):
    return [
        seg for c in ax.collections if isinstance(c, LineCollection) for seg in c.get_segments()
    ]


@pytest.mark.parametrize("which", ["result", "posterior", "both"])
def test_forest_draws_tasks_weights_diamond_and_prediction_interval(case, which, tmp_path):
    name, tasks, res, post = case
    args = {"result": (res, None), "posterior": (None, post), "both": (res, post)}[which]
    path = tmp_path / f"{name}_forest.png"
    fig = bm.plots.forest(*args, xlabel="effect", path=path)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[: tasks.num_tasks] == list(tasks.labels)
    texts = _texts(fig)
    y, se = tasks.per_task_estimates()
    z = stats.norm.ppf(0.975)
    # each task's own estimate and 95% interval y +- z se is written out and drawn
    for i in range(tasks.num_tasks):
        assert any(
            f"{y[i]:6.2f} [{y[i] - z * se[i]:6.2f}, {y[i] + z * se[i]:6.2f}]" in t for t in texts
        )
    segments = _segments(ax)
    ends = {(round(s[0, 0], 9), round(s[1, 0], 9)) for s in segments}
    for i in range(tasks.num_tasks):
        assert (round(y[i] - z * se[i], 9), round(y[i] + z * se[i], 9)) in ends
    diamonds = _diamonds(ax)
    if res is not None and which != "posterior":
        # weights: metafor's weights of the RE model in percent, as in res.weights
        for w in res.weights:
            assert any(t.startswith(f"{100 * w:5.1f}%") for t in texts)
        np.testing.assert_allclose(diamonds[0], [res.ci_low, res.mu, res.ci_high], rtol=1e-12)
        assert (round(res.pi_low, 9), round(res.pi_high, 9)) in ends
        assert "RE model (REML)" in labels and "95% prediction interval" in labels
    if which != "result":
        mu = post.flat("mu")
        low, high = np.quantile(mu, [0.025, 0.975])
        np.testing.assert_allclose(diamonds[-1], [low, mu.mean(), high], rtol=1e-12)
        theta = post.flat("theta")
        t_low, t_high = np.quantile(theta, [0.025, 0.975], axis=0)
        for i in range(tasks.num_tasks):
            assert (round(t_low[i], 9), round(t_high[i], 9)) in ends
        assert "posterior of mu" in labels and "95% posterior predictive" in labels
    if which == "posterior":
        # weights 1/(se^2 + E[tau^2]) normalised, without a classical result
        w = 1 / (se**2 + np.mean(post.flat("tau") ** 2))
        for wi in w / w.sum():
            assert any(t.startswith(f"{100 * wi:5.1f}%") for t in texts)


def test_forest_prediction_interval_covers_the_posterior_predictive(case):
    """The posterior predictive bar is the 95% interval of theta_new = mu + tau * eps."""
    _, _, _, post = case
    fig = bm.plots.forest(posterior=post, seed=3)
    bar = min((s for s in _segments(fig.axes[0]) if s[0, 1] == s[1, 1]), key=lambda s: s[0, 1])
    rng = np.random.default_rng(0)
    mu, tau = post.flat("mu"), post.flat("tau")
    reps = 40
    new = (mu[:, None] + tau[:, None] * rng.standard_normal((mu.size, reps))).ravel()
    low, high = np.quantile(new, [0.025, 0.975])
    # Monte-Carlo: both are quantiles of >= 4000 predictive draws; allow a tenth of the width
    tol = 0.1 * (high - low)
    assert abs(bar[0, 0] - low) < tol and abs(bar[1, 0] - high) < tol


@pytest.mark.parametrize("which", ["result", "posterior", "both"])
def test_funnel_points_and_pseudo_confidence_lines(case, which, tmp_path):
    name, tasks, res, post = case
    args = {"result": (res, None), "posterior": (None, post), "both": (res, post)}[which]
    fig = bm.plots.funnel(*args, annotate=True, path=tmp_path / f"{name}_funnel.png")
    ax = fig.axes[0]
    y, se = tasks.per_task_estimates()
    points = next(c for c in ax.collections if isinstance(c, PathCollection))
    np.testing.assert_allclose(points.get_offsets(), np.column_stack([y, se]), rtol=1e-12)
    centre = res.mu if which != "posterior" else post.mean("mu")
    z = stats.norm.ppf(0.975)
    left, right = ax.lines[0].get_xydata(), ax.lines[1].get_xydata()
    for (x0, s0), (x1, s1) in zip(left, right, strict=True):
        assert x0 == pytest.approx(centre - z * s0) and x1 == pytest.approx(centre + z * s1)
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # standard error axis reversed
    assert set(_texts(fig)) == set(tasks.labels)


@pytest.mark.parametrize("which", ["result", "posterior"])
def test_shrinkage_arrows_go_from_own_estimate_to_partial_pooling(case, which, tmp_path):
    name, tasks, res, post = case
    args = (res, None) if which == "result" else (None, post)
    fig = bm.plots.shrinkage(*args, path=tmp_path / f"{name}_shrinkage.png")
    ax = fig.axes[0]
    y, _ = tasks.per_task_estimates()
    pooled = res.blups if which == "result" else post.mean("theta")
    centre = res.mu if which == "result" else post.mean("mu")
    arrows = [c for c in ax.texts if isinstance(getattr(c, "arrow_patch", None), FancyArrowPatch)]
    assert len(arrows) == tasks.num_tasks
    for i, arrow in enumerate(arrows):
        assert arrow.xyann[0] == pytest.approx(y[i]) and arrow.xy[0] == pytest.approx(pooled[i])
    line = ax.lines[0].get_xdata()
    assert line[0] == pytest.approx(centre)
    if which == "result":
        # BLUPs lie between the own estimate and mu: every arrow points toward the mean
        assert np.all(np.abs(pooled - centre) <= np.abs(y - centre) + 1e-12)


def test_draws_on_a_given_axes(case):
    _, _, res, _ = case
    fig, axes = plt.subplots(1, 3)
    for ax, plot in zip(axes, (bm.plots.forest, bm.plots.funnel, bm.plots.shrinkage), strict=True):
        assert plot(res, ax=ax) is fig
    assert all(ax.has_data() for ax in axes)


def test_missing_matplotlib_is_a_one_line_import_error(monkeypatch, case):
    _, _, res, _ = case
    # a None entry in sys.modules makes `import matplotlib...` raise ImportError
    for mod in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, mod, None)
    for plot in (bm.plots.forest, bm.plots.funnel, bm.plots.shrinkage):
        with pytest.raises(ImportError) as info:
            plot(res)
        message = str(info.value)
        assert message == bm.plots.MATPLOTLIB_MISSING
        assert "\n" not in message and "pip install matplotlib" in message


def test_bad_input_is_a_value_error_naming_the_field(case):
    name, _, res, post = case
    with pytest.raises(ValueError, match="forest: give"):
        bm.plots.forest()
    with pytest.raises(ValueError, match="result: expected"):
        bm.plots.funnel(post)
    with pytest.raises(ValueError, match="posterior: expected"):
        bm.plots.shrinkage(res, res)
    with pytest.raises(ValueError, match="level"):
        bm.plots.forest(res, level=1.5)
    other = bm.estimators.random_effects(
        bm.datasets.bcg() if name == "eight_schools" else bm.datasets.eight_schools()
    )
    with pytest.raises(ValueError, match="posterior: has .* tasks"):
        bm.plots.forest(other, post)
    vector = bm.Posterior(
        {"theta": np.zeros((1, 10, 3, 2)), "mu": np.zeros((1, 10))},
        method="nuts",
        dims={"theta": ["task", "coef"]},
    )
    with pytest.raises(ValueError, match="one scalar effect per task"):
        bm.plots.shrinkage(posterior=vector)
    meta_regression = bm.estimators.random_effects(bm.datasets.bcg(), mods=["ablat"])
    with pytest.raises(ValueError, match="result: expected"):
        bm.plots.forest(meta_regression)


@pytest.mark.slow
def test_example_script_writes_the_six_pngs(tmp_path, capsys):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "meta_plots.py"
    spec = importlib.util.spec_from_file_location("meta_plots", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--out", str(tmp_path)]) == 0
    for name in ("bcg", "eight_schools"):
        for kind in ("forest", "funnel", "shrinkage"):
            png = tmp_path / f"{name}_{kind}.png"
            assert png.read_bytes()[:4] == b"\x89PNG"
    assert "REML mu" in capsys.readouterr().out
