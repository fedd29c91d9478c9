"""The adaptive Gauss-Kronrod rule stops at the rounding floor of its integrand
(``bayesmeta.exact.quadrature``), in memory and streamed, instead of bisecting without end."""

import numpy as np
import pytest

from bayesmeta.exact import quadrature as q

EDGES = np.linspace(0.0, 1.0, 9)


def _noisy(level):
    """A Gaussian bump in u times ``1 + level * noise``: noise fixed per node (a hash of
    the node), so it looks like the rounding of a long sum, the same at every call."""

    def fn(u):
        noise = np.sin(u * 12345.678 + np.cos(u * 9876.54) * 1e3)  # deterministic, in [-1, 1]
        base = np.exp(-0.5 * ((u - 0.4) / 0.01) ** 2)
        return (base * (1.0 + level * noise))[:, None]

    return fn


def test_a_clean_integrand_meets_rtol_and_reports_it():
    edges, converged, reached = q._adaptive(_noisy(0.0), EDGES, 1e-11, 5000, 1)
    assert converged and reached <= 1e-11
    # the integral is the bump's: 0.01 sqrt(2 pi) (a Gaussian well inside [0, 1])
    nodes, half = q._panel_nodes(edges[:-1], edges[1:])
    total = np.sum(half[:, None] * q._KRONROD_W * _noisy(0.0)(nodes.reshape(-1)).reshape(-1, 15))
    assert total == pytest.approx(0.01 * np.sqrt(2 * np.pi), rel=1e-11)


@pytest.mark.parametrize("streamed", [False, True])
def test_rounding_noise_stops_the_rule_at_its_floor(streamed):
    fn = _noisy(3e-10)  # noise 30x the tolerance: rtol = 1e-11 cannot be met
    if streamed:
        edges, converged, reached = q._adaptive_streamed(
            lambda u: iter([fn(u)]), EDGES, 1e-11, 5000, 64
        )
    else:
        edges, converged, reached = q._adaptive(fn, EDGES, 1e-11, 5000, 1)
    panels = len(edges) - 1
    assert converged
    # above the target, within the floor's limit, and near the noise level itself
    assert 1e-11 < reached <= q._FLOOR_LIMIT * 1e-11
    assert 1e-11 < reached < 1e-8
    assert panels < 1000  # without the floor it bisects to max_panels (tested below)


def test_without_the_floor_rule_the_noise_runs_to_max_panels(monkeypatch):
    monkeypatch.setattr(q, "_STALL_ROUNDS", 10_000)
    edges, converged, _ = q._adaptive(_noisy(3e-10), EDGES, 1e-11, 2000, 1)
    assert not converged and len(edges) - 1 > 1000


def test_stalled_needs_rounds_without_halving_near_the_target():
    assert not q._stalled([100.0, 40.0, 15.0, 6.0, 2.5])  # halving: still converging
    assert q._stalled([9.8, 1.36, 1.46, 1.40, 1.22])  # the 300,000-task run's ratios
    assert not q._stalled([5e3, 5e3, 5e3, 5e3])  # flat but far from the target
    assert not q._stalled([1.4, 1.3])  # too few rounds to tell
