"""The peer benchmark harness runs end to end (smallest case, no peers); timings are
reported, never asserted."""

import json

from benchmarks import run


def test_harness_quick_smoke(capsys, tmp_path):
    out = tmp_path / "bench.json"
    result = run.main(["eight_schools", "--quick", "--no-peers", "--json", "--out", str(out)])
    rows = {r["runner"]: r for r in result["rows"]}
    assert {"bayesmeta", "numpyro-sequential", "numpyro-vectorized"} <= set(rows)
    assert rows["bayesmeta"]["status"] == "ok"
    for key in ("min_ess", "divergences", "max_rhat"):
        assert key in rows["bayesmeta"]
    assert rows["nutpie"]["status"] != "ok"  # --no-peers
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1])["rows"] == json.loads(out.read_text())["rows"]
    assert "| case |" in "\n".join(printed)


def test_first_fit_benchmark_smoke(capsys):
    """benchmarks/first_fit.py: new processes with a cold then a warm compilation cache
    (the --quick case, short chains); its table is printed, its timings never asserted."""
    from benchmarks import first_fit

    result = first_fit.main(
        ["--quick", "--repeats", "1", "--methods", "collapsed", "--warmup", "50", "--draws", "50"]
    )
    rows = result["rows"]["collapsed"]
    for state in ("cold", "warm"):
        (row,) = rows[state]
        assert row["sampler"] in ("independence", "nuts") and row["min_ess"] > 0
    assert "| collapsed [" in capsys.readouterr().out
