"""The flat unconstrained view of a NumPyro model and the independence sampler on it
(bayesmeta/inference/_flat.py), shared by the collapsed and nested-Laplace engines."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from test_fit import _mcse_mean_sd

import bayesmeta as bm
from bayesmeta.inference import _flat


def _toy(y):
    """A location with a Gaussian likelihood, a Gamma-distributed scale with no data (its
    posterior is its prior) and a 3 x 3 LKJ Cholesky factor: three kinds of support."""

    def model(y):
        m = numpyro.sample("m", dist.Normal(0.0, 3.0))
        numpyro.sample("s", dist.Gamma(2.0, 1.0))
        numpyro.sample("L", dist.LKJCholesky(3, 2.0))
        numpyro.factor("y", jnp.sum(dist.Normal(m, 1.0).log_prob(y)))

    return model, {"y": jnp.asarray(y)}


def _programs(fn, inputs):
    progs = _flat.FlatPrograms(fn, inputs)

    def block(xs, key, inputs):
        lp, params = jax.vmap(lambda x: progs.logp(x, inputs)[:2])(xs)
        return {"lp": lp, "params": params}

    progs.define("value_and_grad", jax.value_and_grad(lambda x, inp: -progs.logp(x, inp)[0]))
    progs.define("block", block)
    return progs


def test_flat_log_density_is_minus_numpyros_potential_energy():
    """Own transforms and log-Jacobians, site by site, against NumPyro's potential energy
    of the same model at the same unconstrained point."""
    from numpyro.infer.util import potential_energy

    with jax.enable_x64(True):
        fn, inputs = _toy(np.array([0.3, -1.2, 2.0, 0.7]))
        progs = _programs(fn, inputs)
        assert progs.dim == 1 + 1 + 3  # m, log s, and 3 free values of a 3 x 3 factor
        rng = np.random.default_rng(0)
        xs = rng.normal(size=(8, progs.dim))
        lp = np.asarray(progs("block", jnp.asarray(xs), jax.random.PRNGKey(0), inputs)["lp"])
        for i in range(8):
            unconstrained, at = {}, 0
            for name, ushape, size, _ in progs._layout:
                unconstrained[name] = jnp.asarray(xs[i, at : at + size].reshape(ushape))
                at += size
            pe = float(potential_energy(fn, (), inputs, unconstrained))
            np.testing.assert_allclose(lp[i], -pe, rtol=1e-12)
            v, _ = progs("value_and_grad", jnp.asarray(xs[i]), inputs)
            np.testing.assert_allclose(float(v), pe, rtol=1e-12)


def test_independence_sampler_recovers_a_known_posterior():
    """m | y is Normal (conjugate: precision 1/9 + n, mean sum(y) / (1/9 + n)); s keeps
    its Gamma(2, 1) prior (mean 2, sd sqrt 2): skewed on the log scale, where the split
    proposal has to find its two sides. Means and sds within 4 Monte-Carlo errors."""
    rng = np.random.default_rng(1)
    y = 0.8 + rng.normal(size=12)
    with jax.enable_x64(True):
        fn, inputs = _toy(y)
        progs = _programs(fn, inputs)
        opts = dict(hyper_sampler="independence", num_chains=4, num_samples=1000, num_warmup=500)
        opts["thinning"] = 1
        samples, extras, timing, why, _ = _flat.independence_hyper(
            progs, inputs, opts, 3, block=64, dtype=jnp.float64
        )
    prec = 1 / 9 + y.size
    for name, mean, sd in (
        ("m", y.sum() / prec, prec**-0.5),
        ("s", 2.0, np.sqrt(2.0)),
    ):
        got_mean, got_sd, se_mean, se_sd = _mcse_mean_sd(samples[name])
        assert abs(got_mean - mean) < 4 * se_mean, (name, got_mean, mean)
        assert abs(got_sd - sd) < 4 * se_sd, (name, got_sd, sd)
    assert samples["L"].shape == (4, 1000, 3, 3)
    assert min(why["acceptance"]) >= _flat.MIN_ACCEPTANCE
    assert extras["potential_energy"].shape == (4, 1000)
    assert not extras["diverging"].any()


def test_auto_falls_back_to_nuts_and_says_why(monkeypatch):
    """Under hyper_sampler="auto" the collapsed engine runs NUTS where the rule says so
    (here forced: an acceptance floor no chain can meet, then a dimension cap of 1), and
    records the reason; "independence" forces the sampler or says why it cannot."""
    from conftest import eight_schools_model

    data = bm.datasets.eight_schools()
    kw = dict(method="collapsed", num_warmup=100, num_samples=100, progress_bar=False, warn=False)
    monkeypatch.setattr(_flat, "MIN_ACCEPTANCE", 1.01)
    post = bm.fit(eight_schools_model(), data, **kw)
    hs = post.info["hyper_sampler"]
    assert hs["used"] == "nuts" and "acceptance rate" in hs["reason"]
    assert "energy" in post.sample_stats  # NUTS's fields
    forced = bm.fit(eight_schools_model(), data, hyper_sampler="independence", **kw)
    assert forced.info["hyper_sampler"]["used"] == "independence"
    monkeypatch.setattr(_flat, "MAX_DIM", 1)
    post = bm.fit(eight_schools_model(), data, **kw)
    assert "2 hyperparameters, more than" in post.info["hyper_sampler"]["reason"]
    with pytest.raises(ValueError, match="hyper_sampler: 'independence' is not available"):
        bm.fit(eight_schools_model(), data, hyper_sampler="independence", **kw)


def test_hyper_sampler_option_is_checked():
    from conftest import eight_schools_model

    with pytest.raises(ValueError, match="hyper_sampler: one of"):
        bm.fit(
            eight_schools_model(),
            bm.datasets.eight_schools(),
            method="collapsed",
            hyper_sampler="imh",
        )
