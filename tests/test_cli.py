"""The bayesmeta command: readable summary, --json as the only stdout, --out and --plot,
--version, help with defaults, exit codes."""

import json
import subprocess
import sys

import pytest

import bayesmeta as bm
from bayesmeta.cli import build_parser, main

SMALL = ["--chains", "2", "--warmup", "200", "--draws", "200"]


def test_fit_default_prints_the_eight_schools_summary(capsys):
    assert main(["fit", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "eight schools" in out
    for name in ("mu", "tau", "theta[0] (A)", "theta[7] (H)", "divergences", "hdi_3%", "hdi_97%"):
        assert name in out


@pytest.mark.arviz
def test_fit_json_out_and_plot(capsys, tmp_path):
    out_nc, png = tmp_path / "fit.nc", tmp_path / "forest.png"
    assert (
        main(["fit", "models/bcg.py", *SMALL, "--json", "--out", str(out_nc), "--plot", str(png)])
        == 0
    )
    payload = json.loads(capsys.readouterr().out)  # the whole of stdout is one document
    assert payload["method"] == "nuts"
    assert set(payload["parameters"]["mu"]) == {
        "mean",
        "sd",
        "hdi_3%",
        "hdi_97%",
        "ess_bulk",
        "r_hat",
    }
    assert payload["parameters"]["theta[12]"]["label"] == "Comstock et al (1976)"
    assert payload["labels"][12] == "Comstock et al (1976)"
    mu = payload["parameters"]["mu"]
    assert mu["hdi_3%"] < mu["mean"] < mu["hdi_97%"]
    assert payload["diagnostics"]["num_chains"] == 2
    assert payload["diagnostics"]["num_draws"] == 200
    assert payload["diagnostics"]["divergences"] is not None
    # BCG: the vaccine lowers risk on average (classical REML mu = -0.71)
    assert -1.2 < payload["parameters"]["mu"]["mean"] < -0.3
    assert out_nc.stat().st_size > 0 and png.stat().st_size > 0
    import arviz as az

    from bayesmeta.arviz import group_names

    reloaded = az.from_netcdf(str(out_nc))
    assert {"posterior", "log_likelihood", "sample_stats"} <= set(group_names(reloaded))


def test_fit_vi_json(capsys):
    assert (
        main(
            [
                "fit",
                "models/eight_schools.py",
                "--method",
                "vi",
                "--warmup",
                "500",
                "--draws",
                "100",
                "--chains",
                "1",
                "--json",
            ]
        )
        == 0
    )
    payload = json.loads(capsys.readouterr().out)
    assert payload["method"] == "vi" and payload["diagnostics"]["num_chains"] == 1
    assert payload["parameters"]["mu"]["r_hat"] is None  # one chain: no R-hat
    assert payload["parameters"]["theta[3]"]["label"] == "D"


def test_fit_json_hdi_matches_arviz_rule_at_the_level_asked(capsys):
    """--ci-prob 0.8 names the bounds hdi_10%/hdi_90%; they are the shortest window holding
    floor(0.8 n) sorted draws (ArviZ's hdi rule), recomputed here from the same fit's draws."""
    import numpy as np

    from bayesmeta.cli import _default_model

    args = ["fit", "--method", "exact", "--chains", "2", "--draws", "300", "--ci-prob", "0.8"]
    assert main([*args, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["ci_prob"] == 0.8
    model, tasks = _default_model()
    post = bm.fit(model, tasks, method="exact", seed=0, num_chains=2, num_samples=300)
    for key, x in (("tau", post.flat("tau")), ("theta[7]", post.flat("theta")[:, 7])):
        x = np.sort(x)
        inc = int(np.floor(0.8 * x.size))
        i = int(np.argmin(x[inc:] - x[: x.size - inc]))
        entry = payload["parameters"][key]
        assert entry["hdi_10%"] == pytest.approx(x[i], rel=1e-6)
        assert entry["hdi_90%"] == pytest.approx(x[i + inc], rel=1e-6)
    assert payload["parameters"]["theta[7]"]["label"] == "H"


def _hide_matplotlib(monkeypatch):
    # a None entry in sys.modules makes `import matplotlib...` raise ImportError
    for mod in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, mod, None)


def test_meta_analysis_json_is_the_whole_stdout(capsys):
    assert main(["meta-analysis", "--dataset", "bcg", "--json", "--level", "0.9"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["command"] == "meta-analysis" and payload["level"] == 0.9
    assert payload["labels"][0] == "Aronson (1948)"
    # metafor rma(yi, vi, data = dat.bcg), REML: mu = -0.7145
    assert payload["mu"] == pytest.approx(-0.7145, abs=1e-4)
    assert payload["ci_low"] < payload["mu"] < payload["ci_high"]
    assert payload["pi_low"] < payload["ci_low"]


def test_study_json_is_the_whole_stdout(capsys, tmp_path):
    png = tmp_path / "study.png"
    args = ["study", "--quick", "--num-reps", "4", "--num-tasks", "4", "--no-exact", "--json"]
    assert main([*args, "--plot", str(png)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["command"] == "study"
    assert "figure saved" in captured.err and png.stat().st_size > 0


def test_json_stdout_of_a_fresh_process_is_one_document():
    """As a script sees it: nothing else on stdout, even from imports or warnings (fit: see
    test_cli_cache.py, which reads the whole stdout of fresh ``fit --json`` processes)."""
    for args in (["meta-analysis", "--dataset", "eight_schools", "--json"],):
        proc = subprocess.run(
            [sys.executable, "-m", "bayesmeta.cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["command"] == args[0]


@pytest.mark.parametrize("kind", ["forest", "funnel", "shrinkage"])
def test_meta_analysis_plot_kinds(capsys, tmp_path, kind):
    png = tmp_path / f"{kind}.png"
    args = ["meta-analysis", "--dataset", "bcg", "--plot", str(png), "--plot-kind", kind]
    assert main(args) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert f"figure saved to {png}" in capsys.readouterr().out


def test_missing_matplotlib_meta_analysis(monkeypatch, capsys, tmp_path):
    _hide_matplotlib(monkeypatch)
    png = tmp_path / "forest.png"
    assert main(["meta-analysis", "--dataset", "bcg", "--plot", str(png)]) == 1
    captured = capsys.readouterr()
    assert "Random-effects model" in captured.out  # the results were printed first
    assert (
        captured.err == f"bayesmeta meta-analysis: error: --plot: {bm.plots.MATPLOTLIB_MISSING}\n"
    )
    assert not png.exists()
    assert main(["meta-analysis", "--dataset", "bcg", "--json", "--plot", str(png)]) == 1
    assert json.loads(capsys.readouterr().out)["k"] == 13


def test_missing_matplotlib_study(monkeypatch, capsys, tmp_path):
    _hide_matplotlib(monkeypatch)
    args = ["study", "--quick", "--num-reps", "4", "--num-tasks", "4", "--no-exact"]
    assert main([*args, "--plot", str(tmp_path / "s.png")]) == 1
    captured = capsys.readouterr()
    assert captured.out.strip()
    assert captured.err == f"bayesmeta study: error: --plot: {bm.plots.MATPLOTLIB_MISSING}\n"


@pytest.mark.arviz
def test_missing_matplotlib_fit_writes_everything_else(monkeypatch, capsys, tmp_path):
    # ArviZ 0.x imports matplotlib itself (a user without matplotlib has ArviZ 1.x), so it is
    # imported before matplotlib is hidden; --out then writes through it as usual
    import arviz  # noqa: F401

    _hide_matplotlib(monkeypatch)
    out_nc, png = tmp_path / "fit.nc", tmp_path / "forest.png"
    args = ["fit", "--method", "exact", "--chains", "2", "--draws", "100"]
    assert main([*args, "--json", "--out", str(out_nc), "--plot", str(png)]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["method"] == "exact"
    assert out_nc.stat().st_size > 0 and not png.exists()
    assert captured.err.strip().splitlines()[-1].startswith("bayesmeta fit: error: --plot:")
    assert "pip install matplotlib" in captured.err and "Traceback" not in captured.err
    assert main([*args, "--plot", str(png)]) == 1
    captured = capsys.readouterr()
    assert "theta[7] (H)" in captured.out  # the table came first
    assert captured.err == f"bayesmeta fit: error: --plot: {bm.plots.MATPLOTLIB_MISSING}\n"


@pytest.mark.parametrize("kind", ["auto", "forest", "funnel", "shrinkage"])
def test_fit_plot_kinds(capsys, tmp_path, kind):
    png = tmp_path / "plot.png"
    args = ["fit", "--method", "exact", "--chains", "2", "--draws", "100"]
    assert main([*args, "--plot", str(png), "--plot-kind", kind]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    expected = "forest" if kind == "auto" else kind
    assert f"saved {png} ({expected} plot)" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"bayesmeta {bm.__version__}"


def _help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping


def test_help_shows_a_description_defaults_and_exit_codes(capsys):
    top = _help([], capsys)
    assert "The ``bayesmeta`` command" not in top
    assert "Bayesian meta-learning and meta-analysis" in top
    for sub in ("fit", "meta-analysis", "study"):
        assert sub in top
    assert "exit status: 0 ok; 2 usage error" in top and "1 failure" in top
    fit = _help(["fit"], capsys)
    for text in ("(default: nuts)", "(default: 4)", "(default: 1000)", "(default: 0.94)"):
        assert text in fit
    assert "(default: auto)" in fit and "exit status" in fit
    meta = _help(["meta-analysis"], capsys)
    assert "(default: REML)" in meta and "(default: 0.95)" in meta and "(default: forest)" in meta
    study = _help(["study"], capsys)
    assert "(default: 8)" in study and "(default: 0.5)" in study and "exit status" in study


def test_every_option_with_a_default_shows_it(capsys):
    """No subcommand option with a real default (not None/False) hides it in the help."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        text = " ".join(p.format_help().split())
        for action in p._actions:
            if action.default in (None, False) or action.dest == "help":
                continue
            assert f"(default: {action.default})" in text, (name, action.dest)


def test_exit_codes(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:  # usage: argparse
        main(["fit", "--chains", "0"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["nonsense"])
    assert info.value.code == 2
    capsys.readouterr()
    bad = tmp_path / "bad.csv"
    bad.write_text("y,s\n1,0.5\n2,x\n")
    assert main(["meta-analysis", str(bad), "--estimate", "y", "--se", "s"]) == 2
    err = capsys.readouterr().err
    assert "column 's', line 3" in err and err.count("\n") == 1
    assert main(["fit", str(tmp_path / "missing.py"), "--draws", "10"]) == 2
    assert main(["meta-analysis", "--dataset", "bcg", "--mods", "ablat", "--plot", "x.png"]) == 2


def test_fit_hyper_sampler_is_passed_on_and_refused_where_it_means_nothing(capsys):
    """--hyper-sampler reaches the collapsed engine (the JSON names the sampler that ran)
    and is refused, before any fitting, by a method that has no such option."""
    small = ["--chains", "2", "--warmup", "50", "--draws", "50", "--json"]
    # "nuts", as the default ("auto") would run the independence sampler here
    assert main(["fit", "--method", "collapsed", "--hyper-sampler", "nuts", *small]) == 0
    assert json.loads(capsys.readouterr().out)["hyper_sampler"] == "nuts"
    assert main(["fit", "--method", "exact", "--hyper-sampler", "nuts", *small]) == 2
    assert "--hyper-sampler: method 'exact'" in capsys.readouterr().err
