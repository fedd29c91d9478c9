"""Meta-analysis estimators against published output, statsmodels and hand formulas.

References used here:
- metafor (R) on the BCG trials, ``rma(yi, vi, data=dat.bcg)`` (REML; log risk ratios from
  ``escalc(measure="RR", ...)``), as printed in metafor's documentation: estimate -0.7145,
  se 0.1798, 95% CI [-1.0669, -0.3622], tau^2 = 0.3132, I^2 = 92.22%, H^2 = 12.86,
  Q(df = 12) = 152.2330; and ``confint()`` of that fit: tau^2 in [0.1197, 1.1115].
- statsmodels ``combine_effects`` (DerSimonian-Laird, Paule-Mandel, HKSJ standard error).
- scipy.optimize maximising the ML / REML criteria written out below.
- closed forms typed into the tests (HE, SJ, EB, Q, I^2, H^2, PI, BLUP, James-Stein).
"""

import json
import math

import numpy as np
import pytest
from scipy import optimize, stats
from statsmodels.stats.meta_analysis import combine_effects

import bayesmeta.estimators as E
from bayesmeta.tasks import TaskSet

# BCG trials (Colditz et al. 1994; metafor's dat.bcg), typed from shared/DATA.md:
# tpos, tneg, cpos, cneg
BCG = np.array(
    [
        [4, 119, 11, 128],
        [6, 300, 29, 274],
        [3, 228, 11, 209],
        [62, 13536, 248, 12619],
        [33, 5036, 47, 5761],
        [180, 1361, 372, 1079],
        [8, 2537, 10, 619],
        [505, 87886, 499, 87892],
        [29, 7470, 45, 7232],
        [17, 1699, 65, 1600],
        [186, 50448, 141, 27197],
        [5, 2493, 3, 2338],
        [27, 16886, 29, 17825],
    ],
    dtype=float,
)


def _bcg_logrr():
    tpos, tneg, cpos, cneg = BCG.T
    nt, nc = tpos + tneg, cpos + cneg
    y = np.log((tpos / nt) / (cpos / nc))
    v = 1 / tpos - 1 / nt + 1 / cpos - 1 / nc
    return y, np.sqrt(v)


Y, SE = _bcg_logrr()
V = SE**2


def _random_meta(seed, k=9, tau=0.4):
    rng = np.random.default_rng(seed)
    se = rng.uniform(0.1, 0.6, k)
    return 0.3 + tau * rng.standard_normal(k) + se * rng.standard_normal(k), se


# --------------------------------------------------------------------------- distributions
def test_distribution_functions_match_scipy():
    for df in (1.0, 2.0, 3.5, 11.0, 120.0):
        for t in (-30.0, -2.2, -0.3, 0.0, 0.7, 4.0):
            assert abs(E._t_cdf(t, df) - stats.t.cdf(t, df)) < 1e-14
        for q in (0.001, 0.025, 0.5, 0.9, 0.975):
            np.testing.assert_allclose(E._t_ppf(q, df), stats.t.ppf(q, df), rtol=1e-12, atol=1e-14)
        for x in (0.01, 0.5, df, 3 * df + 10):
            np.testing.assert_allclose(E._chi2_cdf(x, df), stats.chi2.cdf(x, df), rtol=1e-13)
            np.testing.assert_allclose(E._chi2_sf(x, df), stats.chi2.sf(x, df), rtol=1e-12)
        for q in (0.025, 0.5, 0.975):
            np.testing.assert_allclose(E._chi2_ppf(q, df), stats.chi2.ppf(q, df), rtol=1e-12)
    np.testing.assert_allclose(E._chi2_sf(152.2330, 12), stats.chi2.sf(152.2330, 12), rtol=1e-11)
    np.testing.assert_allclose(E._t_sf2(-3.2, 7), 2 * stats.t.sf(3.2, 7), rtol=1e-13)


# --------------------------------------------------------------------------- BCG (metafor)
def test_bcg_reml_reproduces_metafor():
    res = E.random_effects(Y, SE, method="REML")
    assert round(res.mu, 4) == -0.7145
    assert round(res.se, 4) == 0.1798
    assert round(res.ci_low, 4) == -1.0669 and round(res.ci_high, 4) == -0.3622
    assert round(res.tau2, 4) == 0.3132
    assert round(res.i2, 2) == 92.22
    assert round(res.h2, 2) == 12.86
    assert round(res.q, 4) == 152.2330 and res.q_df == 12
    assert round(res.tau2_ci[0], 4) == 0.1197 and round(res.tau2_ci[1], 4) == 1.1115
    # the lead's data set gives the same estimates
    from bayesmeta import datasets

    tasks = datasets.bcg()
    np.testing.assert_allclose(tasks.y, Y, rtol=1e-14)
    np.testing.assert_allclose(E.random_effects(tasks).tau2, res.tau2, rtol=1e-14)


def _pm_root(y, v):
    """Paule-Mandel by Brent's method on sum w (y - mu_w)^2 = k - 1 (0 if Q <= k - 1)."""
    k = len(y)

    def excess(t):
        w = 1 / (v + t)
        m = np.sum(w * y) / np.sum(w)
        return np.sum(w * (y - m) ** 2) - (k - 1)

    if excess(0.0) <= 0:
        return 0.0
    return optimize.brentq(excess, 0.0, 100.0, xtol=1e-15, rtol=1e-15)


def test_dl_and_pm_match_statsmodels_and_brent():
    cases = [(Y, SE), _random_meta(1), _random_meta(2, k=5, tau=0.1)]
    assert combine_effects(cases[2][0], cases[2][1] ** 2, method_re="dl").tau2 < 0
    for y, se in cases:
        v = se**2
        ref = combine_effects(y, v, method_re="dl")
        res = E.random_effects(y, se, method="DL")
        # statsmodels reports the untruncated moment estimate; DL truncates at 0
        np.testing.assert_allclose(res.tau2, max(0.0, ref.tau2), rtol=1e-12, atol=1e-15)
        if ref.tau2 > 0:
            np.testing.assert_allclose(res.mu, ref.mean_effect_re, rtol=1e-12)
            np.testing.assert_allclose(res.se, ref.sd_eff_w_re, rtol=1e-12)
            kh = E.random_effects(y, se, method="DL", knapp_hartung=True)
            np.testing.assert_allclose(kh.se, ref.sd_eff_w_re_hksj, rtol=1e-12)
        res = E.random_effects(y, se, method="PM")
        np.testing.assert_allclose(res.tau2, _pm_root(y, v), rtol=1e-12, atol=1e-15)
        # statsmodels iterates the estimating equation to |Q_w - (k-1)| < 1e-5 (its default)
        ref = combine_effects(y, v, method_re="pm")
        np.testing.assert_allclose(res.tau2, ref.tau2, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(res.mu, ref.mean_effect_re, rtol=1e-5)


def _profile(y, v, tau2, reml):
    w = 1 / (v + tau2)
    mu = np.sum(w * y) / np.sum(w)
    ll = -0.5 * np.sum(np.log(v + tau2) + w * (y - mu) ** 2)
    return ll - 0.5 * np.log(np.sum(w)) if reml else ll


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_ml_and_reml_maximise_their_likelihood(method):
    reml = method == "REML"
    for y, se in ((Y, SE), _random_meta(3), _random_meta(4, k=6, tau=0.8)):
        v = se**2
        ref = optimize.minimize_scalar(
            lambda t, y=y, v=v: -_profile(y, v, t, reml),
            bounds=(0.0, 10.0),
            method="bounded",
            options={"xatol": 1e-13},
        )
        res = E.random_effects(y, se, method=method)
        np.testing.assert_allclose(res.tau2, ref.x, rtol=1e-7, atol=1e-10)
        # at least as high as the reference optimum
        assert _profile(y, v, res.tau2, reml) >= -ref.fun - 1e-12


def test_hand_formula_estimators():
    for y, se in ((Y, SE), _random_meta(5), _random_meta(6, k=4, tau=1.0)):
        v = se**2
        k = len(y)
        # Hedges: unweighted method of moments
        he = max(0.0, np.sum((y - y.mean()) ** 2) / (k - 1) - v.mean())
        np.testing.assert_allclose(E.random_effects(y, se, method="HE").tau2, he, rtol=1e-13)
        # Sidik-Jonkman: one reweighting from tau0^2 = sum (y - ybar)^2 / k
        t0 = np.sum((y - y.mean()) ** 2) / k
        w = 1 / (v + t0)
        m = np.sum(w * y) / np.sum(w)
        sj = t0 * np.sum(w * (y - m) ** 2) / (k - 1)
        np.testing.assert_allclose(E.random_effects(y, se, method="SJ").tau2, sj, rtol=1e-13)
        # empirical Bayes: its estimating equation holds at the estimate (or it is 0)
        eb = E.random_effects(y, se, method="EB").tau2
        w = 1 / (v + eb)
        m = np.sum(w * y) / np.sum(w)
        eq = np.sum(w * (k / (k - 1) * (y - m) ** 2 - v - eb))
        if eb > 0:
            assert abs(eq) < 1e-9 * np.sum(w * v)
        else:
            assert eq <= 0
        # ... and in this intercept-only model its root is the Paule-Mandel root
        np.testing.assert_allclose(
            eb, E.random_effects(y, se, method="PM").tau2, rtol=1e-9, atol=1e-14
        )


def test_q_i2_h2_pi_blup_hand_formulas():
    y, se = _random_meta(7)
    v = se**2
    k = len(y)
    res = E.random_effects(y, se, method="DL")
    w0 = 1 / v
    mfe = np.sum(w0 * y) / np.sum(w0)
    q = np.sum(w0 * (y - mfe) ** 2)
    np.testing.assert_allclose(res.q, q, rtol=1e-13)
    np.testing.assert_allclose(res.q_p, stats.chi2.sf(q, k - 1), rtol=1e-11)
    s2 = (k - 1) * np.sum(w0) / (np.sum(w0) ** 2 - np.sum(w0**2))
    np.testing.assert_allclose(res.i2, 100 * res.tau2 / (res.tau2 + s2), rtol=1e-13)
    np.testing.assert_allclose(res.h2, (res.tau2 + s2) / s2, rtol=1e-13)
    # DL: I^2 from tau^2 equals Higgins-Thompson (Q - df)/Q when tau^2 > 0
    assert res.tau2 > 0
    np.testing.assert_allclose(res.i2, 100 * (q - (k - 1)) / q, rtol=1e-12)
    w = 1 / (v + res.tau2)
    mu = np.sum(w * y) / np.sum(w)
    se_mu = 1 / np.sqrt(np.sum(w))
    np.testing.assert_allclose([res.mu, res.se], [mu, se_mu], rtol=1e-13)
    half = stats.t.ppf(0.975, k - 2) * np.sqrt(se_mu**2 + res.tau2)
    np.testing.assert_allclose([res.pi_low, res.pi_high], [mu - half, mu + half], rtol=1e-11)
    z = E.random_effects(y, se, method="DL", prediction="z")
    half = stats.norm.ppf(0.975) * np.sqrt(se_mu**2 + res.tau2)
    np.testing.assert_allclose([z.pi_low, z.pi_high], [mu - half, mu + half], rtol=1e-11)
    lam = res.tau2 / (res.tau2 + v)
    np.testing.assert_allclose(res.blups, lam * y + (1 - lam) * mu, rtol=1e-13)
    np.testing.assert_allclose(
        res.blup_se, np.sqrt(lam * v + (1 - lam) ** 2 * se_mu**2), rtol=1e-13
    )
    # Knapp-Hartung: scaled se and t on k-1 df
    kh = E.random_effects(y, se, method="DL", knapp_hartung=True)
    se_kh = np.sqrt(np.sum(w * (y - mu) ** 2) / ((k - 1) * np.sum(w)))
    crit = stats.t.ppf(0.975, k - 1)
    np.testing.assert_allclose(
        [kh.ci_low, kh.ci_high], [mu - crit * se_kh, mu + crit * se_kh], rtol=1e-12
    )
    np.testing.assert_allclose(kh.p, 2 * stats.t.sf(abs(mu / se_kh), k - 1), rtol=1e-10)
    # Q-profile bounds solve the generalised Q equation at chi-square quantiles
    lo, hi = res.tau2_ci
    for bound, qq in ((lo, stats.chi2.ppf(0.975, k - 1)), (hi, stats.chi2.ppf(0.025, k - 1))):
        wb = 1 / (v + bound)
        mb = np.sum(wb * y) / np.sum(wb)
        np.testing.assert_allclose(np.sum(wb * (y - mb) ** 2), qq, rtol=1e-10)


def test_no_heterogeneity_gives_zero_tau2():
    se = np.array([0.2, 0.3, 0.25, 0.4, 0.3])
    y = np.array([0.1, 0.12, 0.09, 0.11, 0.1])  # far less spread than the se
    for method in ("DL", "PM", "ML", "REML", "HE", "EB"):
        assert E.random_effects(y, se, method=method).tau2 == 0.0, method
    res = E.random_effects(y, se, method="DL")
    assert res.tau2_ci == (0.0, 0.0)
    fe = E.fixed_effect(y, se)
    np.testing.assert_allclose(res.mu, fe.mu, rtol=1e-14)
    assert fe.i2 == 0.0


def test_fixed_effect_and_simple_estimators():
    fe = E.fixed_effect(Y, SE)
    ref = combine_effects(Y, V, method_re="dl")
    np.testing.assert_allclose([fe.mu, fe.se], [ref.mean_effect_fe, ref.sd_eff_w_fe], rtol=1e-12)
    np.testing.assert_allclose(fe.i2 / 100, ref.i2, rtol=1e-12)
    np.testing.assert_allclose(fe.h2, fe.q / 12, rtol=1e-14)
    pooled = E.complete_pooling(Y, SE)
    np.testing.assert_allclose(pooled.mu, fe.mu, rtol=1e-14)
    mean = E.mean_of_estimates(Y, SE)
    np.testing.assert_allclose(mean.mu, Y.mean(), rtol=1e-14)
    t = stats.t.ppf(0.975, 12) * Y.std(ddof=1) / np.sqrt(13)
    np.testing.assert_allclose(
        [mean.ci_low, mean.ci_high], [Y.mean() - t, Y.mean() + t], rtol=1e-12
    )
    nop = E.no_pooling(Y, SE, labels=[f"t{i}" for i in range(13)])
    np.testing.assert_allclose(nop.ci_high - nop.estimate, 1.959963984540054 * SE, rtol=1e-12)
    assert nop.labels[0] == "t0"


def test_james_stein_classic_form():
    rng = np.random.default_rng(8)
    y = rng.normal(size=10)
    s = 0.7
    js = E.james_stein(y, np.full(10, s))
    factor = max(0.0, 1 - 7 * s**2 / np.sum((y - y.mean()) ** 2))
    np.testing.assert_allclose(js.estimate, y.mean() + factor * (y - y.mean()), rtol=1e-13)
    np.testing.assert_allclose(js.shrinkage, 1 - factor, rtol=1e-13)
    # shrinkage lies between pooled and per-task
    lo, hi = np.minimum(y, y.mean()), np.maximum(y, y.mean())
    assert np.all((js.estimate >= lo - 1e-12) & (js.estimate <= hi + 1e-12))


def test_taskset_inputs():
    est = E.random_effects(TaskSet.from_estimates(Y, SE))
    np.testing.assert_allclose(est.mu, E.random_effects(Y, SE).mu, rtol=1e-14)
    rng = np.random.default_rng(9)
    ids = np.repeat(np.arange(6), [3, 8, 4, 5, 2, 30])
    y = rng.normal(size=ids.size) + 0.5 * rng.normal(size=6)[ids]
    rows = TaskSet.from_arrays(y=y, task=ids)
    m, s = rows.per_task_estimates()
    np.testing.assert_allclose(
        E.random_effects(rows, method="PM").mu, E.random_effects(m, s, method="PM").mu, rtol=1e-14
    )
    pooled = E.complete_pooling(rows)
    np.testing.assert_allclose(pooled.mu, y.mean(), rtol=1e-14)
    np.testing.assert_allclose(pooled.se, y.std(ddof=1) / np.sqrt(y.size), rtol=1e-13)
    np.testing.assert_allclose(pooled.weights, np.bincount(ids) / ids.size)
    scale = rng.uniform(0.5, 1.5, ids.size)
    known = E.complete_pooling(TaskSet.from_arrays(y=y, task=ids, noise_scale=scale))
    np.testing.assert_allclose(known.mu, np.sum(y / scale**2) / np.sum(1 / scale**2), rtol=1e-13)


def test_batched_tau2_equals_loop():
    rng = np.random.default_rng(10)
    se = rng.uniform(0.1, 0.5, 7)
    y = 0.4 * rng.standard_normal((5, 7)) + se * rng.standard_normal((5, 7))
    for method in E.TAU2_METHODS:
        batch = E.tau2_estimate(y, se, method)
        loop = [E.random_effects(row, se, method=method).tau2 for row in y]
        np.testing.assert_allclose(batch, loop, rtol=1e-12, atol=1e-15)


def test_bad_input():
    with pytest.raises(ValueError, match="se: must be finite and positive.*task 1"):
        E.random_effects([1.0, 2.0, 3.0], [0.1, -0.1, 0.2])
    with pytest.raises(ValueError, match="at least 2"):
        E.random_effects([1.0], [0.1])
    with pytest.raises(ValueError, match="method"):
        E.random_effects(Y, SE, method="XYZ")
    with pytest.raises(ValueError, match="se: standard errors are required"):
        E.random_effects(Y)
    with pytest.raises(ValueError, match="level"):
        E.fixed_effect(Y, SE, level=1.5)
    with pytest.raises(ValueError, match="at least 4"):
        E.james_stein([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="labels"):
        E.random_effects(Y, SE, labels=["a"])


def test_result_prints_and_serialises():
    res = E.random_effects(Y, SE, labels=[f"trial {i}" for i in range(1, 14)])
    text = str(res)
    assert "tau^2 = 0.3132" in text and "I^2 = 92.22%" in text and "trial 13" in text
    data = json.loads(json.dumps(res.to_dict()))
    assert data["method"] == "REML" and len(data["blups"]) == 13


# --------------------------------------------------------------------------- command line
def _write_bcg_csv(path):
    lines = ["trial,logrr,se,var"] + [
        f"T{i + 1},{y:.17g},{s:.17g},{s * s:.17g}"
        for i, (y, s) in enumerate(zip(Y, SE, strict=True))
    ]
    path.write_text("\n".join(lines) + "\n")


def _parser():
    import argparse

    from bayesmeta import _cli_meta

    parser = argparse.ArgumentParser(prog="bayesmeta")
    sub = parser.add_subparsers(dest="command", required=True)
    _cli_meta.add_meta_analysis_parser(sub)
    _cli_meta.add_study_parser(sub)
    return parser


def test_cli_meta_analysis(tmp_path, capsys):
    csv_path = tmp_path / "bcg.csv"
    _write_bcg_csv(csv_path)
    args = _parser().parse_args(
        [
            "meta-analysis",
            str(csv_path),
            "--estimate",
            "logrr",
            "--se",
            "se",
            "--label",
            "trial",
            "--json",
        ]
    )
    assert args.func(args) == 0
    payload = json.loads(capsys.readouterr().out)  # --json: one JSON document, nothing else
    assert payload["command"] == "meta-analysis"
    assert round(payload["mu"], 4) == -0.7145 and round(payload["tau2"], 4) == 0.3132
    assert payload["labels"][0] == "T1"
    assert round(payload["i2"], 2) == 92.22  # metafor: I^2 = 92.22%
    # variance column, DL with Knapp-Hartung
    args = _parser().parse_args(
        [
            "meta-analysis",
            str(csv_path),
            "--estimate",
            "logrr",
            "--variance",
            "var",
            "--method",
            "DL",
            "--knapp-hartung",
            "--json",
        ]
    )
    assert args.func(args) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ref = combine_effects(Y, V, method_re="dl")
    np.testing.assert_allclose(payload["se"], ref.sd_eff_w_re_hksj, rtol=1e-12)
    assert payload["df"] == 12


def test_cli_meta_analysis_bad_csv(tmp_path, capsys):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("study,est,se\nA,0.1,0.2\nB,oops,0.3\nC,0.3,0.1\n")
    parser = _parser()
    args = parser.parse_args(["meta-analysis", str(csv_path), "--estimate", "est", "--se", "se"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "column 'est'" in err and "line 3" in err and "oops" in err
    args = parser.parse_args(["meta-analysis", str(csv_path), "--estimate", "effect", "--se", "se"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "--estimate: column 'effect' not in" in err and "study, est, se" in err
    csv_path.write_text("est,se\n0.1,0.2\n0.2,0\n")
    args = parser.parse_args(["meta-analysis", str(csv_path), "--estimate", "est", "--se", "se"])
    assert args.func(args) == 2
    assert "line 3" in capsys.readouterr().err


def test_cli_through_main_and_dataset(capsys):
    from bayesmeta import cli

    assert cli.main(["meta-analysis", "--dataset", "bcg", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert round(payload["i2"], 2) == 92.22


def test_cli_study(tmp_path, capsys):
    png = tmp_path / "study.png"
    args = _parser().parse_args(
        ["study", "--num-reps", "30", "--no-exact", "--json", "--plot", str(png)]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    payload = json.loads(out[-1])
    assert payload["command"] == "study" and payload["settings"]["num_reps"] == 30
    assert png.stat().st_size > 1000
    assert math.isfinite(payload["mu"][0]["rmse"])
