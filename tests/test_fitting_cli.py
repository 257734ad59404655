"""`flexavatar fit` end to end on the CPU (tiny preset): inputs file -> avatar .npy that the server's avatar store
imports, loss curve, before/after picture, fit.json saying which terms and which rasterizer ran; user mistakes
are one line, not a traceback."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fitting_helpers import SIZE, cameras, random_codes, random_expressions, write_feature_module
from flexrt.cli import main
from flexrt.fitting import render_views
from flexrt.fitting.inputs import FitInputs, save_fit_inputs
from flexrt.model import load_official, save_avatar_code
from flexrt.runtime.store import parse_avatar_code_npy


@pytest.fixture(scope="module")
def inputs_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("fit_cli")
    model = load_official("tiny")  # what `--config tiny` builds
    code_true, code_init = random_codes(model, seed=11)
    c2w, K = cameras((-15.0, 15.0))
    expr = random_expressions(2, seed=12)
    targets = render_views(model, code_true, c2w, K, expr, SIZE, SIZE)
    save_fit_inputs(d / "views.npz", FitInputs(targets.numpy(), c2w.numpy(), K.numpy(), expr.numpy(), ["a", "b"]))
    save_avatar_code(code_init, d / "init.npy")
    return d


def test_fit_cli_writes_an_importable_avatar_and_a_report(inputs_file, capsys):
    d = inputs_file
    rc = main(["fit", "--inputs", str(d / "views.npz"), "--out", str(d / "out" / "avatar.npy"), "--steps", "4",
               "--init", str(d / "init.npy"), "--device", "cpu", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "DINO off (no --dino-loss-weights" in text and "SAM off (no --sam-module)" in text
    assert "[fit] rasterizer: torch" in text and "this command does not track" in text
    code = parse_avatar_code_npy((d / "out" / "avatar.npy").read_bytes())  # the server store's importer
    assert code.shape == (64, 64) and code.dtype == np.float32
    assert np.load(d / "out" / "avatar.npy").shape == (64, 1, 64)  # official layout [HT,1,D]
    report = d / "out" / "avatar_fit"
    summary = json.loads((report / "fit.json").read_text())
    assert summary["steps_done"] == 4 and len(summary["losses"]) == 4 and summary["rasterizer"] == "torch"
    assert summary["terms"]["dino"].startswith("off") and summary["init"] == "init_code"
    assert summary["psnr_after_db"] > summary["psnr_before_db"]
    grid = Image.open(report / "before_after.png")
    assert grid.size[0] == 3 * 192 and grid.size[1] == 2 * (192 + 18)  # 2 views x (target | before | after), x4
    assert Image.open(report / "loss.png").size == (720, 400)


def test_fit_cli_feed_forward_init(inputs_file, capsys):
    d = inputs_file
    rc = main(["fit", "--inputs", str(d / "views.npz"), "--out", str(d / "ff.npy"), "--steps", "1", "--device", "cpu",
               "--no-progress", "--no-expression"])
    assert rc == 0 and "initial code: feed-forward" in capsys.readouterr().out
    assert json.loads((d / "ff_fit" / "fit.json").read_text())["init"] == "feed-forward"


def test_fit_cli_sam_module(inputs_file, capsys):
    d = inputs_file
    write_feature_module(d / "sam_standin.pt")  # a stand-in: no SAM2.1-hiera-small export exists here
    rc = main(["fit", "--inputs", str(d / "views.npz"), "--out", str(d / "sam.npy"), "--steps", "2", "--init",
               str(d / "init.npy"), "--device", "cpu", "--no-progress", "--sam-module", str(d / "sam_standin.pt")])
    assert rc == 0 and f"SAM on (1.0, TorchScript module {d / 'sam_standin.pt'})" in capsys.readouterr().out
    summary = json.loads((d / "sam_fit" / "fit.json").read_text())
    assert summary["terms"]["sam"].startswith("on (weight 1, TorchScript module")
    assert summary["sam_module"] == str(d / "sam_standin.pt")


@pytest.mark.parametrize("extra,match", [
    (["--sam-module", "missing_sam.pt"], "SAM feature module not found: missing_sam.pt"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--rasterizer", "gsplat"], "backend='gsplat' needs CUDA tensors"),
])
def test_fit_cli_errors_are_one_line(inputs_file, extra, match):
    d = inputs_file
    with pytest.raises(SystemExit) as info:
        main(["fit", "--inputs", str(d / "views.npz"), "--out", str(d / "x.npy"), "--init", str(d / "init.npy"),
              "--device", "cpu", "--no-progress", *extra])
    assert str(info.value).startswith("error: ") and match in str(info.value) and "\n" not in str(info.value)


def test_fit_cli_missing_inputs(tmp_path):
    with pytest.raises(SystemExit, match="error: inputs file not found"):
        main(["fit", "--inputs", str(tmp_path / "none.npz"), "--out", str(tmp_path / "x.npy"), "--device", "cpu"])


def test_fitting_benchmark_runs_on_cpu():
    """benchmarks/bench_fitting.py end to end at smoke size (the numbers come from the GPU run)."""
    from flexrt.benchmarks.bench_fitting import STAGES, format_report, run

    r = run(preset="tiny", device="cpu", views=2, res=32, steps=2, warmup=1)
    assert set(r["step_split"]["median_ms"]) == set(STAGES) and r["step_split"]["steps"] == 2
    assert r["rasterizer"] == "torch" and r["meets_target"] is None and r["fit_avatar_seconds"] > 0
    assert "| render_bwd |" in format_report(r)
