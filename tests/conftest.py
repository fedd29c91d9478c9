"""Test configuration: float64 everywhere so exact comparisons can be tight, and two host
devices are not needed (chains are vectorised on one device)."""

import atexit
import collections
import contextlib
import os
import shutil
import tempfile

import jax
import jax.monitoring

jax.config.update("jax_enable_x64", True)
# Many tests compile the same program again (a fresh model object, a fresh jit closure,
# the same computation): JAX's persistent compilation cache, in a scratch folder of this
# session only, turns those repeats into a read. It is set here, for this process only
# (never by the library; fresh processes started by tests do not inherit it), and
# CompileCounter below counts a read from it as a compile, so compile counts are those of
# a run without it. BAYESMETA_TEST_NO_CACHE=1 runs the suite without it. (Set once: a test
# that imports this file again as tests.conftest leaves the folder as it is.)
_CACHE_WANTED = os.environ.get("BAYESMETA_TEST_NO_CACHE", "") in ("", "0")
if _CACHE_WANTED and jax.config.jax_compilation_cache_dir is None:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="bayesmeta-test-xla-")
    atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)
    jax.config.update("jax_compilation_cache_dir", _SESSION_CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
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


#: a backend compile, or a compiled program read back from the persistent cache
_COMPILE_EVENTS = (
    "/jax/core/compile/backend_compile_duration",
    "/jax/compilation_cache/cache_retrieval_time_sec",
)


class CompileCounter:
    """Counts XLA compilations (JAX's backend-compile event, or a read of a compiled
    program from the session's persistent cache, which stands in for one) while
    ``active``, and JAX traces (jaxpr-trace event: every jit or eager primitive traced
    anew) in ``traces``."""

    def __init__(self):
        self.count, self.traces, self.active = 0, 0, False
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kwargs):
        if self.active and event in _COMPILE_EVENTS:
            self.count += 1
        if self.active and event == "/jax/core/compile/jaxpr_trace_duration":
            self.traces += 1

    @contextlib.contextmanager
    def watching(self):
        """Count inside a ``with`` block: yields a dict whose ``compiles`` and ``traces``
        hold the block's counts when it ends (also when it raises)."""
        seen = {"compiles": 0, "traces": 0}
        before, traces, was = self.count, self.traces, self.active
        self.active = True
        try:
            yield seen
        finally:
            self.active = was
            seen["compiles"], seen["traces"] = self.count - before, self.traces - traces


#: the one listener of the test session (registered once; tests switch it on and off)
COMPILES = CompileCounter()


@pytest.fixture
def compile_watch():
    """The session's compile counter: ``with compile_watch.watching() as seen: ...`` and
    then ``seen["compiles"]`` is the number of XLA programs compiled inside the block."""
    return COMPILES


#: cases tried by the fuzz suite (tests/test_fuzz.py), by category; reported at the end
FUZZ_CASES: collections.Counter = collections.Counter()


def pytest_sessionfinish(session):
    # a worker of pytest-xdist hands its fuzz counts to the controller
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["fuzz_cases"] = dict(FUZZ_CASES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    FUZZ_CASES.update(getattr(node, "workeroutput", {}).get("fuzz_cases", {}))


def pytest_terminal_summary(terminalreporter):
    if FUZZ_CASES:
        total = sum(FUZZ_CASES.values())
        shown = ", ".join(f"{k} {v}" for k, v in sorted(FUZZ_CASES.items()))
        terminalreporter.write_line(f"fuzz suite: {total} cases tried ({shown})")
