"""Test configuration: float64 everywhere so exact comparisons can be tight, and two host
devices are not needed (chains are vectorised on one device)."""

import os

import jax
import jax.monitoring

jax.config.update("jax_enable_x64", True)
# in-process CLI calls must not switch on JAX's persistent compilation cache for the
# whole test session (test_cli_cache.py checks the cache in fresh processes)
os.environ["BAYESMETA_NO_CACHE"] = "1"


import numpyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402

import bayesmeta as bm  # noqa: E402


def eight_schools_model():
    """mu ~ N(0, 5), tau ~ HalfCauchy(5): the model the issue's reference test uses."""
    return bm.Hierarchical(
        likelihood=bm.likelihoods.NormalKnownNoise(),
        population=bm.populations.Normal(loc=dist.Normal(0.0, 5.0), scale=dist.HalfCauchy(5.0)),
    )


@pytest.fixture(scope="session")
def eight_schools_post():
    """One shared NUTS fit of the eight schools (default parameterisation and options,
    4 chains x 1000 draws) so that the compile is paid once per test session."""
    return bm.fit(
        eight_schools_model(),
        bm.datasets.eight_schools(),
        method="nuts",
        seed=0,
        num_warmup=1000,
        num_samples=1000,
        progress_bar=False,
    )


class CompileCounter:
    """Counts XLA compilations (JAX's backend-compile event) while ``active``."""

    def __init__(self):
        self.count, self.active = 0, False
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kwargs):
        if self.active and event == "/jax/core/compile/backend_compile_duration":
            self.count += 1


#: the one listener of the test session (registered once; tests switch it on and off)
COMPILES = CompileCounter()
