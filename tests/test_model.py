"""User NumPyro models in the usual style: ``bm.fit(model, {argument: value, ...})``
(bayesmeta/model.py::build_callable)."""

from __future__ import annotations

import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import bayesmeta as bm
from bayesmeta.model import build_callable

ES = bm.datasets.eight_schools()


def eight_schools(sigma, y=None):
    """Eight schools written as any NumPyro user writes it (non-centred)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("task", len(sigma)):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * z)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def regression(x, group, num_groups, y=None):
    """A varying intercept and slope per task; theta is a (task, 2) deterministic computed
    outside the plate, the case whose dims came out as ['theta_dim_0', 'task']."""
    mu = numpyro.sample("mu", dist.Normal(0, 5).expand([2]).to_event(1))
    tau = numpyro.sample("tau", dist.HalfNormal(1).expand([2]).to_event(1))
    with numpyro.plate("task", num_groups):
        z = numpyro.sample("z", dist.Normal(0, 1).expand([2]).to_event(1))
    theta = numpyro.deterministic("theta", mu + tau * z)
    sigma = numpyro.sample("sigma", dist.HalfNormal(1))
    with numpyro.plate("obs", len(x)):
        numpyro.sample("y", dist.Normal(theta[group, 0] + theta[group, 1] * x, sigma), obs=y)


@pytest.mark.arviz
def test_usual_style_model_matches_the_exact_posterior():
    """Reference: the exact normal-normal posterior of the same model (mu ~ N(0, 5),
    tau ~ HalfCauchy(5)), by bm's exact engine; NUTS means within 4 Monte-Carlo SEs."""
    data = {"sigma": np.asarray(ES.noise_scale), "y": np.asarray(ES.y)}
    post = bm.fit(eight_schools, data, seed=1, num_chains=2, num_warmup=500, num_samples=500)
    assert post.dims["theta"] == ["task"] and post.dims["y"] == ["task"]
    exact = bm.fit(
        bm.Hierarchical(
            bm.likelihoods.NormalKnownNoise(),
            bm.populations.Normal(loc=dist.Normal(0.0, 5.0), scale=dist.HalfCauchy(5.0)),
        ),
        ES,
        method="exact",
        num_samples=4000,
    )
    ess = post.info["diagnostics"]["ess_bulk"]
    for name in ("mu", "theta"):
        mcse = post.sd(name) / np.sqrt(ess[name])
        assert np.all(np.abs(post.mean(name) - exact.mean(name)) < 4 * mcse + 0.05), name
    data_ = post.to_arviz()
    from bayesmeta.arviz import group_names

    assert {"posterior", "log_likelihood", "observed_data"} <= set(group_names(data_))


def test_vector_valued_per_task_sites_get_the_task_dim():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(5), 4)
    data = {"x": rng.normal(size=20), "group": g, "num_groups": 5, "y": rng.normal(size=20)}
    built = build_callable(regression, data)
    assert built.dims["theta"] == ["task", "theta_dim_1"]
    assert built.dims["z"] == ["task", "z_dim_1"]
    assert built.dims["y"] == ["obs"] and built.coords["task"] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(built.observed["y"], data["y"])


def test_usual_style_errors_name_the_problem():
    data = {"sigma": np.ones(8), "y": np.zeros(8)}

    def no_plate(sigma, y=None):
        numpyro.sample("y", dist.Normal(0.0, sigma).to_event(1), obs=y)

    with pytest.raises(ValueError, match="no task plate: name the plate over tasks 'task'"):
        build_callable(no_plate, data)
    with pytest.raises(ValueError, match="no observed site"):
        build_callable(eight_schools, {"sigma": np.ones(8)})
    with pytest.raises(ValueError, match=r"data\['y'\]: non-finite value at row 2"):
        build_callable(eight_schools, {"sigma": np.ones(8), "y": [0, 0, np.nan, 0, 0, 0, 0, 0]})
    with pytest.raises(ValueError, match="calling the model with the data's arguments"):
        build_callable(eight_schools, {"s": np.ones(8), "y": np.zeros(8)})
    with pytest.raises(ValueError, match="runs by 'nuts', 'vi' or 'chees'"):
        bm.fit(eight_schools, data, method="exact")


def test_library_signature_error_points_to_the_usual_style():
    with pytest.raises(ValueError, match=r"bm.fit\(model, \{'x': x, 'y': y"):
        build_callable(eight_schools, ES)
