"""Closed forms of bayesmeta.meta.quadratic against an independent numerical optimiser
(scipy.optimize on objectives written out in the test)."""

import numpy as np
import pytest
from scipy import optimize

from bayesmeta.meta import quadratic as q


def _family(seed=0, n=5, d=3):
    rng = np.random.default_rng(seed)
    hessians = []
    for _ in range(n):
        basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
        hessians.append(basis @ np.diag(rng.uniform(0.3, 3.0, size=d)) @ basis.T)
    return np.stack(hessians), 2.0 * rng.normal(size=(n, d))


def _post_adaptation_loss(theta, hessians, optima, rates, num_steps):
    """Mean task loss after explicit gradient steps (written out, no closed form)."""
    total = 0.0
    for a, t in zip(hessians, optima, strict=True):
        phi = np.array(theta, dtype=float)
        for _ in range(num_steps):
            phi = phi - rates * (a @ (phi - t))
        total += 0.5 * (phi - t) @ a @ (phi - t)
    return total / len(optima)


def _minimise(fun, x0):
    res = optimize.minimize(fun, x0, method="BFGS", options={"gtol": 1e-12})
    return res.x


def test_center_of_gravity_and_average_loss_optimum():
    hessians, optima = _family()
    cog = _minimise(lambda th: np.mean(np.sum((optima - th) ** 2, axis=1)), np.zeros(3))
    np.testing.assert_allclose(q.center_of_gravity(optima), cog, atol=1e-6)
    avg = _minimise(lambda th: _post_adaptation_loss(th, hessians, optima, 0.0, 0), np.zeros(3))
    np.testing.assert_allclose(q.average_loss_optimum(hessians, optima), avg, atol=1e-6)


@pytest.mark.parametrize("num_steps", [1, 2, 4])
def test_maml_optimum_minimises_the_post_adaptation_loss(num_steps):
    hessians, optima = _family(1)
    ref = _minimise(
        lambda th: _post_adaptation_loss(th, hessians, optima, 0.2, num_steps), np.zeros(3)
    )
    np.testing.assert_allclose(q.maml_optimum(hessians, optima, 0.2, num_steps), ref, atol=1e-6)


def test_one_step_weights_are_the_textbook_form():
    hessians, _ = _family(2)
    alpha = 0.15
    eye = np.eye(3)
    expected = np.stack([(eye - alpha * a) @ a @ (eye - alpha * a) for a in hessians])
    np.testing.assert_allclose(q.maml_weights(hessians, alpha, 1), expected, rtol=1e-13)


def test_per_parameter_rates_give_the_meta_sgd_fixed_point():
    hessians, optima = _family(3)
    rates = np.array([0.1, 0.25, 0.05])
    ref = _minimise(lambda th: _post_adaptation_loss(th, hessians, optima, rates, 2), np.zeros(3))
    np.testing.assert_allclose(q.maml_optimum(hessians, optima, rates, 2), ref, atol=1e-6)


def test_best_inner_rates():
    hessians, optima = _family(4)
    theta = np.array([0.5, -1.0, 0.3])
    res = optimize.minimize_scalar(
        lambda a: _post_adaptation_loss(theta, hessians, optima, a, 1),
        bounds=(0.0, 2.0),
        method="bounded",
        options={"xatol": 1e-12},
    )
    np.testing.assert_allclose(q.best_inner_lr(hessians, optima, theta), res.x, rtol=1e-7)
    vec = _minimise(lambda a: _post_adaptation_loss(theta, hessians, optima, a, 1), np.full(3, 0.1))
    np.testing.assert_allclose(
        q.best_inner_lr_per_parameter(hessians, optima, theta), vec, rtol=1e-5
    )


def test_fixed_points_of_first_order_methods_and_imaml():
    hessians, optima = _family(5)
    eye = np.eye(3)
    m = [np.linalg.matrix_power(eye - 0.2 * a, 3) for a in hessians]

    def stationarity(theta, weights):
        return sum(w @ (theta - t) for w, t in zip(weights, optima, strict=True))

    fo = q.first_order_maml_optimum(hessians, optima, 0.2, 3)
    # first-order MAML: the mean query gradient at the adapted point vanishes
    np.testing.assert_allclose(
        stationarity(fo, [a @ mi for a, mi in zip(hessians, m, strict=True)]), 0, atol=1e-10
    )
    rep = q.reptile_optimum(hessians, optima, 0.2, 3)
    np.testing.assert_allclose(stationarity(rep, [eye - mi for mi in m]), 0, atol=1e-10)
    lam = 0.8

    def imaml_objective(theta):
        total = 0.0
        for a, t in zip(hessians, optima, strict=True):
            phi = np.linalg.solve(a + lam * eye, a @ t + lam * theta)
            total += 0.5 * (phi - t) @ a @ (phi - t)
        return total

    np.testing.assert_allclose(
        q.imaml_optimum(hessians, optima, lam), _minimise(imaml_objective, np.zeros(3)), atol=1e-6
    )


def test_validation():
    hessians, optima = _family()
    bad = hessians.copy()
    bad[2, 0, 1] += 1.0
    with pytest.raises(ValueError, match="hessians: task 2"):
        q.average_loss_optimum(bad, optima)
    with pytest.raises(ValueError, match="optima"):
        q.maml_optimum(hessians, optima[:, :2], 0.1)
    with pytest.raises(ValueError, match="inner_lr"):
        q.maml_optimum(hessians, optima, np.ones(2))
