"""Mixed-effects meta-regression (``random_effects(..., mods=...)``) against published
output, direct numerical optimisation and hand formulas.

References used here:
- metafor (R) on the BCG trials, ``rma(yi, vi, mods = ~ ablat, data = dat.bcg)`` (REML; log
  risk ratios from ``escalc(measure="RR", ...)``), as printed in metafor's documentation:
  intrcpt 0.2515 (se 0.2491), ablat -0.0291 (se 0.0072), tau^2 = 0.0764,
  QE(df = 11) = 30.7331, QM(df = 1) = 16.3571, R^2 = 75.63%, I^2 = 68.39%, H^2 = 3.16.
  Two of these (tau^2, QM) are metafor's Fisher scoring stopped at its default threshold
  (|change in tau^2| < 1e-5); the exact REML maximum is 0.07635 (QM 16.358), see
  ``test_bcg_ablat_reproduces_metafor``.
- scipy.optimize.minimize_scalar maximising the ML / REML likelihoods written out below, with
  the coefficients by generalised least squares.
- dense-matrix hand formulas typed into the tests (QE, QM, I^2, H^2, R^2, Knapp-Hartung, DL,
  HE, SJ) and scipy.optimize.brentq for the PM / EB root QE(tau^2) = k - p.
"""

import json

import numpy as np
import pytest
from scipy import optimize, stats

import bayesmeta.estimators as E
from bayesmeta import datasets
from bayesmeta.cli import main

METHODS = ("DL", "REML", "ML", "PM", "HE", "SJ", "EB")


def _bcg():
    """BCG log risk ratios, their se and absolute latitude (``bm.datasets``)."""
    tasks = datasets.bcg()
    y, se = tasks.per_task_estimates()
    return tasks, np.asarray(y), np.asarray(se), datasets.bcg_table()["ablat"].astype(float)


def _simulated(seed=1, k=24):
    """Two moderators, tau^2 = 0.05; the seed gives positive ML and REML estimates."""
    rng = np.random.default_rng(seed)
    z = np.column_stack([rng.normal(size=k), rng.uniform(0, 2, k)])
    se = np.sqrt(rng.uniform(0.02, 0.2, k))
    theta = 0.2 + 0.3 * z[:, 0] - 0.4 * z[:, 1] + np.sqrt(0.05) * rng.standard_normal(k)
    return theta + se * rng.standard_normal(k), se, z


# --------------------------------------------------------------------------- references
def _gls(y, v, x, tau2):
    """Dense GLS: (beta, (X'WX)^-1, W) with W = diag(1 / (v + tau2))."""
    w = np.diag(1.0 / (v + tau2))
    cov = np.linalg.inv(x.T @ w @ x)
    return cov @ x.T @ w @ y, cov, w


def _proj(v, x, tau2):
    """P = W - W X (X'WX)^-1 X'W, dense."""
    _, cov, w = _gls(np.zeros(len(v)), v, x, tau2)
    return w - w @ x @ cov @ x.T @ w


def _neg_loglik(tau2, y, v, x, reml):
    """Minus the (restricted) log-likelihood, profiled over beta (constants dropped)."""
    beta, cov, w = _gls(y, v, x, tau2)
    r = y - x @ beta
    out = 0.5 * (np.sum(np.log(v + tau2)) + r @ w @ r)
    if reml:
        out += 0.5 * np.linalg.slogdet(x.T @ w @ x)[1]
    return out


def _max_likelihood(y, v, x, reml):
    """tau^2 maximising the (restricted) likelihood over [0, 10 var(y)] by bounded Brent."""
    fit = optimize.minimize_scalar(
        _neg_loglik,
        bounds=(0.0, 10 * np.var(y)),
        args=(y, v, x, reml),
        method="bounded",
        options={"xatol": 1e-12},
    )
    return fit.x


def _design(z):
    z = np.asarray(z, dtype=float).reshape(len(z), -1)
    return np.column_stack([np.ones(len(z)), z])


def _qe(y, v, x, tau2):
    return y @ _proj(v, x, tau2) @ y


# --------------------------------------------------------------------------- likelihoods
@pytest.mark.parametrize("method", ["REML", "ML"])
def test_ml_reml_maximise_their_likelihood(method):
    reml = method == "REML"
    _, y, se, ablat = _bcg()
    ysim, sesim, zsim = _simulated()
    for yy, ss, z in ((y, se, {"ablat": ablat}), (ysim, sesim, zsim)):
        v = ss**2
        res = E.random_effects(yy, ss, method=method, mods=z)
        x = res.x
        ref = _max_likelihood(yy, v, x, reml)
        assert ref > 1e-3  # an interior maximum: the test checks the Fisher scoring
        np.testing.assert_allclose(res.tau2, ref, rtol=1e-6)
        # at least as high as the bounded search's optimum
        assert _neg_loglik(res.tau2, yy, v, x, reml) <= _neg_loglik(ref, yy, v, x, reml) + 1e-12
        beta, cov, _ = _gls(yy, v, x, res.tau2)
        np.testing.assert_allclose(res.coef, beta, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(res.vcov, cov, rtol=1e-10)
        np.testing.assert_allclose(res.se, np.sqrt(np.diag(cov)), rtol=1e-10)
        # standard error of tau^2 from the Fisher information (metafor's se.tau2)
        p_mat = _proj(v, x, res.tau2)
        info = np.sum(p_mat * p_mat) if reml else np.sum(np.diag(1 / (v + res.tau2)) ** 2)
        np.testing.assert_allclose(res.tau2_se, np.sqrt(2 / info), rtol=1e-10)


def test_zero_tau2_when_the_moderator_explains_everything():
    # y on a line with much less scatter than se: every truncated estimator gives 0 (SJ is
    # positive by construction: tau0^2 QE(tau0^2) / (k - p))
    rng = np.random.default_rng(1)
    z = np.linspace(0, 1, 10)
    se = np.full(10, 0.2)
    y = 1 + 2 * z + 0.05 * rng.standard_normal(10)
    for method in ("DL", "REML", "ML", "PM", "HE", "EB"):
        res = E.random_effects(y, se, method=method, mods=z)
        assert res.tau2 == 0.0 and res.i2 == 0.0 and res.h2 == 1.0


# --------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("method", METHODS)
def test_qe_qm_i2_h2_r2_hand_formulas(method):
    y, se, z = _simulated()
    v = se**2
    k, p = len(y), 3
    res = E.random_effects(y, se, method=method, mods=z, mod_names=["a", "b"])
    assert res.coef_names == ("intrcpt", "a", "b") and res.num_coef == p
    x = _design(z)
    np.testing.assert_array_equal(res.x, x)
    beta, cov, _ = _gls(y, v, x, res.tau2)
    p0 = _proj(v, x, 0.0)
    qe = y @ p0 @ y
    np.testing.assert_allclose(res.qe, qe, rtol=1e-12)
    assert res.qe_df == k - p
    np.testing.assert_allclose(res.qe_p, stats.chi2.sf(qe, k - p), rtol=1e-10)
    qm = beta[1:] @ np.linalg.solve(cov[1:, 1:], beta[1:])
    np.testing.assert_allclose(res.qm, qm, rtol=1e-10)
    assert res.qm_df == p - 1 and res.qm_df2 == np.inf
    np.testing.assert_allclose(res.qm_p, stats.chi2.sf(qm, p - 1), rtol=1e-10)
    s2 = (k - p) / np.trace(p0)  # metafor's typical within-study variance
    np.testing.assert_allclose(res.i2, 100 * res.tau2 / (s2 + res.tau2), rtol=1e-12)
    np.testing.assert_allclose(res.h2, 1 + res.tau2 / s2, rtol=1e-12)
    tau2_re = E.random_effects(y, se, method=method).tau2
    np.testing.assert_allclose(res.tau2_re, tau2_re, rtol=1e-14)
    r2 = max(0.0, 100 * (tau2_re - res.tau2) / tau2_re)
    np.testing.assert_allclose(res.r2, r2, rtol=1e-12, atol=1e-12)
    zc = stats.norm.ppf(0.975)
    np.testing.assert_allclose(res.z, beta / np.sqrt(np.diag(cov)), rtol=1e-10)
    np.testing.assert_allclose(res.p, 2 * stats.norm.sf(np.abs(res.z)), rtol=1e-10)
    np.testing.assert_allclose(res.ci_low, beta - zc * np.sqrt(np.diag(cov)), rtol=1e-10)
    np.testing.assert_allclose(res.ci_high, beta + zc * np.sqrt(np.diag(cov)), rtol=1e-10)


def test_knapp_hartung_hand_formulas():
    y, se, z = _simulated()
    v = se**2
    k, p = len(y), 3
    res = E.random_effects(y, se, mods=z, knapp_hartung=True, level=0.9)
    beta, cov, w = _gls(y, v, _design(z), res.tau2)
    r = y - _design(z) @ beta
    cov_kh = (r @ w @ r) / (k - p) * cov  # metafor's test="knha": no truncation at 1
    se_kh = np.sqrt(np.diag(cov_kh))
    np.testing.assert_allclose(res.se, se_kh, rtol=1e-10)
    np.testing.assert_allclose(res.vcov, cov_kh, rtol=1e-10)
    assert res.df == k - p
    np.testing.assert_allclose(res.p, 2 * stats.t.sf(np.abs(beta / se_kh), k - p), rtol=1e-9)
    crit = stats.t.ppf(0.95, k - p)
    np.testing.assert_allclose(res.ci_low, beta - crit * se_kh, rtol=1e-10)
    f = beta[1:] @ np.linalg.solve(cov_kh[1:, 1:], beta[1:]) / (p - 1)
    np.testing.assert_allclose(res.qm, f, rtol=1e-10)
    assert (res.qm_df, res.qm_df2) == (p - 1, k - p)
    np.testing.assert_allclose(res.qm_p, stats.f.sf(f, p - 1, k - p), rtol=1e-9)
    text = str(res)
    assert f"F(df1 = 2, df2 = {k - p}) = {f:.4f}" in text and "tval" in text


# --------------------------------------------------------------------------- tau^2 estimators
def _qe_root(y, v, x):
    """PM / EB by Brent's method on QE(tau^2) = k - p (0 if QE(0) <= k - p)."""
    k, p = x.shape
    if _qe(y, v, x, 0.0) <= k - p:
        return 0.0
    return optimize.brentq(lambda t: _qe(y, v, x, t) - (k - p), 0.0, 100.0, xtol=1e-15)


@pytest.mark.parametrize("data", ["bcg", "simulated"])
def test_moment_estimators_hand_formulas(data):
    if data == "bcg":
        _, y, se, z = _bcg()
    else:
        y, se, z = _simulated(seed=5)
    v = se**2
    x = _design(z)
    k, p = x.shape
    tau2 = {m: E.random_effects(y, se, method=m, mods=z).tau2 for m in METHODS}
    # DerSimonian-Laird: (QE - (k-p)) / tr P(0)   (metafor's rma.uni, method="DL")
    dl = max(0.0, (_qe(y, v, x, 0.0) - (k - p)) / np.trace(_proj(v, x, 0.0)))
    np.testing.assert_allclose(tau2["DL"], dl, rtol=1e-12)
    # Hedges: OLS residuals, (RSS - tr((I - H) V)) / (k - p)
    m_ols = np.eye(k) - x @ np.linalg.solve(x.T @ x, x.T)
    he = max(0.0, (y @ m_ols @ y - np.trace(m_ols @ np.diag(v))) / (k - p))
    np.testing.assert_allclose(tau2["HE"], he, rtol=1e-12)
    # Sidik-Jonkman: tau0 = sum (y - ybar)^2 / k, then tau0 QE(tau0) / (k - p)
    tau0 = np.sum((y - y.mean()) ** 2) / k
    np.testing.assert_allclose(tau2["SJ"], tau0 * _qe(y, v, x, tau0) / (k - p), rtol=1e-12)
    # Paule-Mandel and empirical Bayes share the root of QE(tau^2) = k - p
    root = _qe_root(y, v, x)
    assert root > 0
    np.testing.assert_allclose(tau2["PM"], root, rtol=1e-10)
    np.testing.assert_allclose(tau2["EB"], root, rtol=1e-10)


def test_intercept_only_design_gives_the_random_effects_estimators():
    # the meta-regression tau^2 code on X = 1 reproduces the module's (batched) estimators
    # (ML / REML to 1e-7: both stop where the likelihood is flat to rounding)
    for seed in range(3):
        y, se, _ = _simulated(seed=seed, k=9)
        for method in METHODS:
            ones = np.ones((len(y), 1))
            np.testing.assert_allclose(
                E._mr_tau2(y, se**2, ones, method),
                E.tau2_estimate(y, se, method),
                rtol=1e-7,
                atol=1e-13,
            )


# --------------------------------------------------------------------------- metafor (BCG)
def _metafor_reml_iterates(y, v, x, threshold=1e-5):
    """metafor's rma.uni REML: Fisher scoring from the Hedges estimate, stopped when
    |change in tau^2| < threshold (its default control$threshold = 1e-5)."""
    k, p = x.shape
    m_ols = np.eye(k) - x @ np.linalg.solve(x.T @ x, x.T)
    tau2 = max(0.0, (y @ m_ols @ y - np.trace(m_ols @ np.diag(v))) / (k - p))
    while True:
        p_mat = _proj(v, x, tau2)
        step = (y @ p_mat @ p_mat @ y - np.trace(p_mat)) / np.trace(p_mat @ p_mat)
        tau2, old = tau2 + step, tau2
        if abs(tau2 - old) < threshold:
            return tau2


def test_bcg_ablat_reproduces_metafor():
    tasks, y, se, ablat = _bcg()
    res = E.random_effects(tasks, mods={"ablat": ablat})
    assert res.coef_names == ("intrcpt", "ablat")
    assert round(res.coef[0], 4) == 0.2515 and round(res.se[0], 4) == 0.2491
    assert round(res.coef[1], 4) == -0.0291 and round(res.se[1], 4) == 0.0072
    assert round(res.qe, 4) == 30.7331 and res.qe_df == 11
    assert round(res.r2, 2) == 75.63
    assert round(res.i2, 2) == 68.39
    assert round(res.h2, 2) == 3.16
    assert res.qm_df == 1
    # metafor prints tau^2 = 0.0764 and QM = 16.3571: its Fisher scoring stops at a change
    # below 1e-5 (tau^2 = 0.076355); the REML maximum is 0.076348 (0.0763, QM 16.3582)
    x = res.x
    mf = _metafor_reml_iterates(y, se**2, x)
    beta, cov, _ = _gls(y, se**2, x, mf)
    assert round(mf, 4) == 0.0764 and round(beta[1] ** 2 / cov[1, 1], 4) == 16.3571
    assert abs(res.tau2 - 0.0764) < 1e-4 and abs(res.qm - 16.3571) < 2e-3
    assert _neg_loglik(res.tau2, y, se**2, x, True) < _neg_loglik(mf, y, se**2, x, True)
    np.testing.assert_allclose(res.tau2, _max_likelihood(y, se**2, x, True), rtol=1e-6)
    text = str(res)
    for line in (
        "Mixed-Effects Model (k = 13; tau^2 estimator: REML)",
        "tau^2 (estimated amount of residual heterogeneity):",
        "I^2 (residual heterogeneity / unaccounted variability): 68.39%",
        "H^2 (unaccounted variability / sampling variability):   3.16",
        "R^2 (amount of heterogeneity accounted for):            75.63%",
        "Test for Residual Heterogeneity:",
        "QE(df = 11) = 30.7331, p-val = 0.0012",
        "Test of Moderators (coefficients 2:2):",
        "QM(df = 1) = 16.3582, p-val < .0001",
        "Model Results:",
    ):
        assert line in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line}
    assert rows["intrcpt"][:2] == ["0.2515", "0.2491"]
    assert rows["ablat"][:2] == ["-0.0291", "0.0072"] and rows["ablat"][-1] == "***"
    assert rows["estimate"] == ["se", "zval", "pval", "ci.lb", "ci.ub"]


def test_to_dict_is_json():
    tasks, _, _, ablat = _bcg()
    res = E.random_effects(tasks, mods=ablat, mod_names=["ablat"])
    payload = json.loads(json.dumps(res.to_dict()))
    assert payload["coef_names"] == ["intrcpt", "ablat"]
    assert payload["df"] is None and payload["qm_df2"] is None  # inf -> None
    assert len(payload["vcov"]) == 2 and len(payload["x"]) == 13
    assert payload["labels"][0] == tasks.labels[0]


# --------------------------------------------------------------------------- predict
def test_predict_hand_formulas():
    tasks, _, _, ablat = _bcg()
    res = E.random_effects(tasks, mods={"ablat": ablat})
    at0 = res.predict({"ablat": 0.0})
    np.testing.assert_allclose(at0.pred, [res.coef[0]], rtol=1e-14)
    np.testing.assert_allclose(at0.se, [res.se[0]], rtol=1e-12)
    new = np.array([10.0, 33.0, 55.0])
    pred = res.predict(new)
    x = _design(new)
    np.testing.assert_allclose(pred.x, x)
    np.testing.assert_allclose(pred.pred, x @ res.coef, rtol=1e-13)
    se = np.sqrt(np.einsum("ij,jk,ik->i", x, res.vcov, x))
    np.testing.assert_allclose(pred.se, se, rtol=1e-12)
    zc = stats.norm.ppf(0.975)
    np.testing.assert_allclose(pred.ci_low, x @ res.coef - zc * se, rtol=1e-12)
    # prediction="t" (default): t on k - p - 1 = 10 df (metafor's predtype="Riley")
    half = stats.t.ppf(0.975, 10) * np.sqrt(se**2 + res.tau2)
    np.testing.assert_allclose(pred.pi_low, x @ res.coef - half, rtol=1e-12)
    np.testing.assert_allclose(pred.pi_high, x @ res.coef + half, rtol=1e-12)
    assert pred.pi_df == 10
    assert np.all(pred.pi_low < pred.ci_low) and np.all(pred.ci_high < pred.pi_high)
    # prediction="z": metafor's default pred +- z sqrt(se^2 + tau^2)
    pz = E.random_effects(tasks, mods={"ablat": ablat}, prediction="z").predict(new)
    np.testing.assert_allclose(pz.pi_high, x @ res.coef + zc * np.sqrt(se**2 + res.tau2))
    # Knapp-Hartung: t on k - p df for the confidence interval
    kh = E.random_effects(tasks, mods={"ablat": ablat}, knapp_hartung=True)
    pk = kh.predict(new)
    se_kh = np.sqrt(np.einsum("ij,jk,ik->i", x, kh.vcov, x))
    np.testing.assert_allclose(pk.ci_high, x @ kh.coef + stats.t.ppf(0.975, 11) * se_kh)
    assert "pi.lb" in str(pred)
    assert json.loads(json.dumps(pred.to_dict()))["pi_df"] == 10


def test_predict_two_moderators_shapes():
    y, se, z = _simulated()
    res = E.random_effects(y, se, mods={"a": z[:, 0], "b": z[:, 1]})
    one = res.predict([0.5, 1.0])
    many = res.predict(np.array([[0.5, 1.0], [0.0, 0.0]]))
    by_name = res.predict({"b": [1.0, 0.0], "a": [0.5, 0.0]})
    np.testing.assert_allclose(many.pred[:1], one.pred)
    np.testing.assert_allclose(by_name.pred, many.pred)
    np.testing.assert_allclose(many.pred[1], res.coef[0])
    with pytest.raises(ValueError, match=r"new_mods: .*missing: b"):
        res.predict({"a": [1.0]})
    with pytest.raises(ValueError, match=r"new_mods: expected shape \(m, 2\)"):
        res.predict([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"new_mods: non-finite value at row 1, column 'b'"):
        res.predict([[0.0, 1.0], [1.0, np.nan]])


# --------------------------------------------------------------------------- inputs
def test_taskset_task_covariates_by_name():
    tasks, y, se, ablat = _bcg()
    year = datasets.bcg_table()["year"].astype(float)
    ref = E.random_effects(y, se, mods={"ablat": ablat, "year": year})
    # the task-level covariates of a TaskSet (task_x, task_x_names)
    tasks.task_x = np.column_stack([year, ablat])
    tasks.task_x_names = ["year", "ablat"]
    res = E.random_effects(tasks, mods=["ablat", "year"])
    assert res.coef_names == ("intrcpt", "ablat", "year")
    np.testing.assert_allclose(res.coef, ref.coef, rtol=1e-12)
    assert res.labels == tasks.labels
    with pytest.raises(ValueError, match=r"column 'lat' not among .*\(columns: year, ablat\)"):
        E.random_effects(tasks, mods=["lat"])
    with pytest.raises(ValueError, match="need a TaskSet with task covariates"):
        E.random_effects(y, se, mods=["ablat"])


def test_dataframe_moderators():
    pd = pytest.importorskip("pandas")
    _, y, se, ablat = _bcg()
    year = datasets.bcg_table()["year"].astype(float)
    frame = pd.DataFrame({"ablat": ablat, "year": year})
    res = E.random_effects(y, se, mods=frame)
    ref = E.random_effects(y, se, mods={"ablat": ablat, "year": year})
    assert res.coef_names == ("intrcpt", "ablat", "year")
    np.testing.assert_array_equal(res.coef, ref.coef)


def test_bad_moderators():
    tasks, y, se, ablat = _bcg()
    bad = ablat.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"column 'ablat' .*nan at task 'Hart & Sutherland.*row 3"):
        E.random_effects(tasks, mods={"ablat": bad})
    bad[3] = np.inf
    with pytest.raises(ValueError, match=r"column 'lat' .*inf at task '3' \(row 3\)"):
        E.random_effects(y, se, mods=bad, mod_names=["lat"])
    with pytest.raises(ValueError, match=r"column 'ablat' has shape \(12,\); expected \(13,\)"):
        E.random_effects(tasks, mods={"ablat": ablat[:12]})
    with pytest.raises(ValueError, match=r"mods: 12 rows for 13 tasks"):
        E.random_effects(tasks, mods=ablat[:12])
    with pytest.raises(
        ValueError, match=r"column 'one' is constant .*collinear with the intercept"
    ):
        E.random_effects(tasks, mods={"ablat": ablat, "one": np.ones(13)})
    with pytest.raises(ValueError, match=r"column 'b' is a linear combination .*'a'.*rank-def"):
        E.random_effects(tasks, mods={"a": ablat, "b": 2 * ablat - 3})
    with pytest.raises(ValueError, match=r"column 'c' is a linear combination .*'a', 'b'"):
        E.random_effects(tasks, mods={"a": ablat, "b": ablat**2, "c": ablat - ablat**2})
    with pytest.raises(ValueError, match=r"mods: 3 tasks for 3 coefficients"):
        E.random_effects(y[:3], se[:3], mods=np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"mod_names: 2 names for 1 moderator columns"):
        E.random_effects(tasks, mods=ablat, mod_names=["a", "b"])
    with pytest.raises(ValueError, match=r"mods: column 'a' given twice"):
        E.random_effects(tasks, mods=np.column_stack([ablat, ablat**2]), mod_names=["a", "a"])
    with pytest.raises(ValueError, match="mod_names: given without mods"):
        E.random_effects(tasks, mod_names=["a"])
    with pytest.raises(ValueError, match="'intrcpt' is reserved"):
        E.random_effects(tasks, mods={"intrcpt": ablat})
    with pytest.raises(ValueError, match="method: must be one of"):
        E.random_effects(tasks, mods={"ablat": ablat}, method="HS")


# --------------------------------------------------------------------------- CLI
def test_cli_dataset_mods(capsys):
    assert main(["meta-analysis", "--dataset", "bcg", "--mods", "ablat"]) == 0
    out = capsys.readouterr().out
    assert "QM(df = 1)" in out and "Mixed-Effects Model (k = 13" in out
    assert any(line.startswith("ablat ") for line in out.splitlines())
    assert main(["meta-analysis", "--dataset", "bcg", "--mods", "ablat", "year", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["command"] == "meta-analysis"
    assert payload["coef_names"] == ["intrcpt", "ablat", "year"] and payload["qm_df"] == 2
    assert main(["meta-analysis", "--dataset", "bcg", "--mods", "lat"]) == 2
    err = capsys.readouterr().err
    assert "--mods: column 'lat' not in the bcg data set" in err and "ablat" in err
    assert "year" in err
    assert main(["meta-analysis", "--dataset", "eight_schools", "--mods", "x"]) == 2
    assert "no moderator columns" in capsys.readouterr().err


def test_cli_csv_mods(tmp_path, capsys):
    tasks, y, se, ablat = _bcg()
    path = tmp_path / "bcg.csv"
    rows = ["trial,logrr,se,ablat"]
    rows += [f"T{i + 1},{y[i]:.17g},{se[i]:.17g},{ablat[i]:g}" for i in range(len(y))]
    path.write_text("\n".join(rows) + "\n")
    args = ["meta-analysis", str(path), "--estimate", "logrr", "--se", "se", "--label", "trial"]
    assert main([*args, "--mods", "ablat", "--knapp-hartung", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ref = E.random_effects(tasks, mods={"ablat": ablat}, knapp_hartung=True)
    np.testing.assert_allclose(payload["coef"], ref.coef, rtol=1e-12)
    assert payload["df"] == 11 and payload["labels"][0] == "T1"
    assert main([*args, "--mods", "lat"]) == 2
    err = capsys.readouterr().err
    assert "--mods: column 'lat' not in" in err and "trial, logrr, se, ablat" in err
    path.write_text(path.read_text().replace(",44\n", ",n/a\n", 1))
    assert main([*args, "--mods", "ablat"]) == 2
    err = capsys.readouterr().err
    assert "column 'ablat', line 2" in err and "'n/a' is not a number" in err
