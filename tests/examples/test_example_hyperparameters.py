"""Smoke run of examples/hyperparameters.py with --quick; its hypergradient checks are the
agreement test: the implicit hypergradient (ridge penalty, anchor shapes) against central
finite differences of the exact inner solution and against unrolled differentiation."""

import importlib.util
import json
import os

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    path = os.path.join(ROOT, "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hyperparameters_quick(tmp_path, capsys):
    example = _load("hyperparameters")
    with jax.enable_x64(True):
        result = example.main(["--quick", "--out", str(tmp_path), "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["seconds"] == result["seconds"]
    keys = [
        "lr_rel_err",
        "ridge_fd_rel_err",
        "ridge_unrolled_rel_err",
        "anchor_fd_rel_err",
        "anchor_unrolled_rel_err",
        "log_lambda_learned",
        "log_lambda_grid",
    ]
    assert all(np.isfinite(summary[k]) for k in keys)
    # stated tolerances: float64 central differences (step 1e-5) and a converged loop
    assert summary["ridge_fd_rel_err"] < example.TOL_FD
    assert summary["anchor_fd_rel_err"] < example.TOL_FD
    assert summary["ridge_unrolled_rel_err"] < example.TOL_UNROLLED
    assert summary["anchor_unrolled_rel_err"] < example.TOL_UNROLLED
    # the learned rate is the closed-form best rate, the learned penalty the grid minimiser
    assert summary["lr_rel_err"] < example.TOL_LR
    assert abs(summary["log_lambda_learned"] - summary["log_lambda_grid"]) < example.TOL_GRID
    assert summary["all_within_tolerance"]
    for row in summary["anchors"].values():
        assert 0 < row["anchor_iou"] <= 1 and 0 < row["regressed_iou"] <= 1
    # the anchors were learned on the outer objective: no worse there than k-means
    learned, kmeans = summary["anchors"]["learned (implicit)"], summary["anchors"]["k-means (IoU)"]
    assert learned["outer_val"] <= kmeans["outer_val"]
    assert os.path.isfile(tmp_path / "hyperparameters.png")
