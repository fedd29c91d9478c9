"""The bayesmeta command: readable summary, --json last line, --out and --plot."""

import json

import pytest

from bayesmeta.cli import main

SMALL = ["--chains", "2", "--warmup", "200", "--draws", "200"]


def test_fit_default_prints_the_eight_schools_summary(capsys):
    assert main(["fit", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "eight schools" in out
    for name in ("mu", "tau", "theta[0] (A)", "theta[7] (H)", "divergences"):
        assert name in out


@pytest.mark.arviz
def test_fit_json_out_and_plot(capsys, tmp_path):
    out_nc, png = tmp_path / "fit.nc", tmp_path / "forest.png"
    assert (
        main(["fit", "models/bcg.py", *SMALL, "--json", "--out", str(out_nc), "--plot", str(png)])
        == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    payload = json.loads(last)
    assert payload["method"] == "nuts"
    assert set(payload["parameters"]["mu"]) == {"mean", "sd", "ess_bulk", "r_hat"}
    assert "theta[12]" in payload["parameters"]
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
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["method"] == "vi" and payload["diagnostics"]["num_chains"] == 1
    assert payload["parameters"]["mu"]["r_hat"] is None  # one chain: no R-hat
