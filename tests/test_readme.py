"""The README's set-up commands are the ones CI runs, and its tour runs as written."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_setup_commands_are_what_ci_runs():
    setup = _blocks("bash")[0].strip().splitlines()
    assert setup == ['python3 -m pip install -e ".[dev]"', "python3 -m pytest"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in setup:
        assert command in ci
    assert "bayesmeta fit" in _blocks("bash")[1]
    assert any(line.startswith("bayesmeta fit") for line in ci)


def test_tour_runs_as_written():
    tour = _blocks("python")[0]
    namespace = {}
    exec(compile(tour, "README.md (tour)", "exec"), namespace)
    post, post_new = namespace["post"], namespace["post_new"]
    assert post.samples["theta"].shape[2] == 8
    assert post_new.labels == ("new school",)
