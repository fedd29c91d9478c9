"""linear_cka and relative_change (bayesmeta.meta.representations)."""

import numpy as np
import pytest

import bayesmeta as bm


def _cka_gram(x, y):
    """An independent computation: CKA as normalised HSIC of the linear Gram matrices,
    ``tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))`` with ``H = I - 11^T / n``
    (Kornblith et al., 2019, eq. 4), in float64 numpy."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def test_linear_cka_matches_the_gram_matrix_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    y = np.tanh(x @ rng.normal(size=(4, 6))) + 0.3 * rng.normal(size=(30, 6))
    assert bm.meta.linear_cka(x, y) == pytest.approx(_cka_gram(x, y), rel=1e-12)
    assert bm.meta.linear_cka(y, x) == pytest.approx(_cka_gram(x, y), rel=1e-12)


def test_linear_cka_invariances_and_range():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    # orthogonal map, isotropic scaling and a shift leave the features "unmoved"
    assert bm.meta.linear_cka(x, 2.5 * x @ q + 7.0) == pytest.approx(1.0, abs=1e-12)
    # a non-isotropic scaling moves them (CKA < 1)
    assert bm.meta.linear_cka(x, x * np.array([1.0, 0.1, 0.01])) < 0.9
    assert 0.0 <= bm.meta.linear_cka(x, rng.normal(size=(40, 5))) <= 1.0
    assert np.isnan(bm.meta.linear_cka(x, np.ones((40, 2))))  # no variance to align


def test_linear_cka_bad_input():
    x = np.zeros((5, 2)) + np.arange(5)[:, None]
    with pytest.raises(ValueError, match="y: expected the same number of inputs"):
        bm.meta.linear_cka(x, x[:4])
    with pytest.raises(ValueError, match="x: representations must be finite"):
        bm.meta.linear_cka(np.full((5, 2), np.nan), x)
    with pytest.raises(ValueError, match=r"x: expected an array \(n, features\)"):
        bm.meta.linear_cka(np.zeros((5, 2, 2)), x)
    with pytest.raises(ValueError, match="at least 2 inputs"):
        bm.meta.linear_cka(x[:1], x[:1])


def test_relative_change_by_layer():
    before = {"h1": {"w": np.array([[3.0, 4.0]]), "b": np.zeros(2)}, "out": np.array([1.0])}
    after = {"h1": {"w": np.array([[3.0, 4.0]]), "b": np.array([0.0, 1.0])}, "out": np.array([1.5])}
    # h1: ||(0, 0, 0, 1)|| / ||(3, 4, 0, 0)|| = 1/5; out: 0.5 / 1
    assert bm.meta.relative_change(before, after) == pytest.approx({"h1": 0.2, "out": 0.5})
    assert bm.meta.relative_change(np.ones(4), 2 * np.ones(4)) == {"all": 1.0}
    assert bm.meta.relative_change({"z": np.zeros(2)}, {"z": np.ones(2)}) == {"z": np.inf}


def test_relative_change_bad_input():
    with pytest.raises(ValueError, match="after: expected the structure of before"):
        bm.meta.relative_change({"a": np.ones(2)}, {"b": np.ones(2)})
    with pytest.raises(ValueError, match=r"after: a leaf of shape \(3,\)"):
        bm.meta.relative_change({"a": np.ones(2)}, {"a": np.ones(3)})
