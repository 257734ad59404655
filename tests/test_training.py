"""The training loop on CPU: its losses are fitting's, bias sinks routed per sample, loss decreasing on a fixed
batch, the time budget, identical resume, checkpoints that load_official / export-engines / serve take unchanged,
the perceptual switches, the CLI (a few minutes on 2 cores)."""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from flexrt.corpus.dataset import CachedSplit, CorpusConfig, HeadCorpus, write_cache
from flexrt.model.checkpoint import load_official
from flexrt.model.flexavatar import DATASET_ID_2D, DATASET_ID_3D
from flexrt.training.losses import PerceptualLoss, photometric_loss, psnr, ssim
from flexrt.training.trainer import (LOG_FIELDS, TrainConfig, Trainer, batch_for_step, collate, difference_l1,
                                     masked_l1, forward_batch)

SMALL = dict(identities_2d=40, identities_3d=2, identities_heldout=2, image_size=32, input_size=48, template_res=48)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    torch.set_flush_denormal(True)
    d = tmp_path_factory.mktemp("corpus")
    corpus = HeadCorpus(CorpusConfig(**SMALL))
    for split, n in (("2d", 4), ("3d", 4), ("heldout", 2)):
        write_cache(corpus, split, n, d, progress=False)
    return d


def _cfg(tmp, cache_dir, **kw) -> TrainConfig:
    base = dict(out=str(tmp), corpus_cache=str(cache_dir), batch_size=2, steps=4, lr=1e-3, log_every=1,
                ckpt_every=2, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_training_losses_are_the_fitting_losses():
    """SSIM / L1 / PSNR are flexrt.fitting.losses' (tested there against a per-pixel reference and scikit-image);
    here: training's wrappers combine them as the trainer expects."""
    from flexrt.fitting import losses as fit_losses

    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 20, 17, generator=g)
    y = (x + 0.2 * torch.rand(2, 3, 20, 17, generator=g)).clamp(0, 1)
    assert ssim is fit_losses.ssim
    assert float(psnr(x.clamp(0, 0.8), x.clamp(0, 0.8) + 0.1)) == pytest.approx(20.0, abs=1e-3)  # mean of 2 images
    assert float(psnr(x, y)) == pytest.approx(float(fit_losses.psnr(x, y).mean()), rel=1e-6)
    loss, logs = photometric_loss(x, y)
    assert logs["ssim"] == pytest.approx(float(fit_losses.ssim(x, y)), rel=1e-6)
    assert logs["l1"] == pytest.approx(float((x - y).abs().mean()), rel=1e-6)
    assert float(loss) == pytest.approx(0.8 * logs["l1"] + 0.2 * (1 - logs["ssim"]), rel=1e-5)
    with pytest.raises(ValueError, match="one shape"):
        ssim(x, y[:, :, :10])


def test_sinks_are_routed_per_sample(tmp_path, cache_dir):
    tr = Trainer(_cfg(tmp_path, cache_dir))
    corpus_batch = [tr.source.get("2d", 0), tr.source.get("3d", 0)]
    rng = np.random.default_rng(0)
    b = collate(corpus_batch, 1, rng, sinks=True)
    assert b.dataset_ids.tolist() == [DATASET_ID_2D, DATASET_ID_3D]
    assert collate(corpus_batch, 1, rng, sinks=False).dataset_ids.tolist() == [DATASET_ID_3D, DATASET_ID_3D]
    emb = tr.model._head_transformer._dataset_embedding.weight
    with torch.no_grad():
        before = forward_batch(tr.model, tr.dino, b, 32)
        emb[DATASET_ID_2D] += 0.5  # perturb the 2D sink only
        after = forward_batch(tr.model, tr.dino, b, 32)
    assert float((after[0] - before[0]).abs().max()) > 1e-3  # the 2D sample sees it
    assert float((after[1] - before[1]).abs().max()) == 0.0  # the 3D sample does not


def test_batches_mix_splits_and_are_a_function_of_the_step(tmp_path, cache_dir):
    tr = Trainer(_cfg(tmp_path, cache_dir, batch_size=8))
    b1, b2 = batch_for_step(tr.source, tr.cfg, 5), batch_for_step(tr.source, tr.cfg, 5)
    assert torch.equal(b1.target_images, b2.target_images) and b1.splits == b2.splits
    splits = sum((batch_for_step(tr.source, tr.cfg, s).splits for s in range(10)), [])
    assert 20 < splits.count("3d") < 60  # mix_3d = 0.5
    for s in range(3):
        b = batch_for_step(tr.source, tr.cfg, s)
        assert b.dataset_ids.tolist() == [DATASET_ID_3D if x == "3d" else DATASET_ID_2D for x in b.splits]
    assert b.images.shape == (8, 3, 48, 48) and b.target_images.shape == (8, 1, 3, 32, 32)


def test_learning_rate_schedule():
    import types

    cfg = TrainConfig(lr=2e-3, lr_warmup=50, lr_schedule="cosine", lr_min=2e-4, steps=1050)
    lr = lambda step: Trainer.lr_at(types.SimpleNamespace(cfg=cfg), step)  # noqa: E731
    assert lr(0) == pytest.approx(4e-5) and lr(49) == pytest.approx(2e-3) and lr(50) == pytest.approx(2e-3)
    assert lr(550) == pytest.approx(1.1e-3) and lr(1050) == pytest.approx(2e-4) and lr(5000) == pytest.approx(2e-4)
    const = TrainConfig(lr=1e-4)
    assert Trainer.lr_at(types.SimpleNamespace(cfg=const), 10**6) == 1e-4
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


def test_time_budget_fixes_the_total_after_the_probe_steps(tmp_path, cache_dir):
    """A budget smaller than any step: training stops right after the timed probe steps, and the run's config (and
    so the cosine schedule, which now ends at that total, and --resume) says that total."""
    from flexrt.training.trainer import BUDGET_PROBE_STEPS

    tr = Trainer(_cfg(tmp_path, cache_dir, batch_size=1, steps=1000, lr_schedule="cosine", lr_min=1e-5,
                      time_budget_s=1e-3, log_every=5, ckpt_every=1000))
    rows = tr.run(progress=False)
    assert tr.step == BUDGET_PROBE_STEPS and tr.cfg.steps == BUDGET_PROBE_STEPS
    assert json.loads((tmp_path / "train_config.json").read_text())["steps"] == BUDGET_PROBE_STEPS
    assert rows[-1]["step"] == BUDGET_PROBE_STEPS and tr.lr_at(BUDGET_PROBE_STEPS) == pytest.approx(1e-5)
    assert (tmp_path / "checkpoints" / f"step_{BUDGET_PROBE_STEPS:07d}.safetensors").is_file()


def test_loss_decreases_on_a_fixed_batch(tmp_path, cache_dir):
    tr = Trainer(_cfg(tmp_path, cache_dir))
    batch = batch_for_step(tr.source, tr.cfg, 0)
    losses = [tr.train_step(batch)["loss"] for _ in range(8)]
    assert losses[-1] < 0.9 * losses[0], losses


def _assert_step_adds_masked_l1(tr, batch, masks, key: str, weight: float) -> None:
    """One train step on ``batch``: its loss is the plain loss + weight x masked_l1 over ``masks`` [B,V,1,H,W]
    (computed here from the same weights, before the step), and the log column ``key`` holds that L1."""
    with torch.no_grad():
        pred = forward_batch(tr.model, tr.dino, batch, tr.size).flatten(0, 1)
    target = batch.target_images.flatten(0, 1)
    base, _ = photometric_loss(pred, target)
    e = float(masked_l1(pred, target, masks.flatten(0, 1)))
    row = tr.train_step(batch)
    assert row[key] == pytest.approx(e, rel=1e-4) and e > 0
    assert row["loss"] == pytest.approx(float(base) + weight * e, rel=1e-4)


def test_expression_weight_adds_the_l1_inside_the_masks(tmp_path, cache_dir):
    """masked_l1 is the mean |error| over masked pixels (closed form); with expression_weight w the step's loss
    is the plain loss + w x that term, on the batch's own masks; a corpus without masks is refused."""
    g = torch.Generator().manual_seed(0)
    p, t = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    m = torch.zeros(2, 1, 8, 8)
    m[0, 0, 2:4, 3:6] = 1
    m[1, 0, 7, 0] = 1
    ref = torch.cat([(p[0, :, 2:4, 3:6] - t[0, :, 2:4, 3:6]).abs().flatten(), (p[1, :, 7, 0] - t[1, :, 7, 0]).abs()])
    assert float(masked_l1(p, t, m)) == pytest.approx(float(ref.mean()), rel=1e-6)
    assert float(masked_l1(p, t, torch.zeros_like(m))) == 0.0

    tr = Trainer(_cfg(tmp_path, cache_dir, expression_weight=5.0))
    batch = batch_for_step(tr.source, tr.cfg, 0)
    assert batch.target_masks is not None and batch.target_masks.shape[:2] == batch.target_images.shape[:2]
    assert float(batch.target_masks.sum()) > 0
    _assert_step_adds_masked_l1(tr, batch, batch.target_masks, "expr_l1", 5.0)

    off = tmp_path / "nomask"
    write_cache(HeadCorpus(CorpusConfig(**SMALL, expression_masks=False)), "2d", 2, off, progress=False)
    with pytest.raises(ValueError, match="expression masks"):
        Trainer(_cfg(tmp_path / "o", off, data="2d", expression_weight=1.0))
    with pytest.raises(ValueError, match="expression_weight must be >= 0"):
        _cfg(tmp_path, cache_dir, expression_weight=-1.0)


def test_feature_weight_adds_the_l1_inside_the_feature_masks(tmp_path):
    """With feature_weight w the step's loss is the plain loss + w x the L1 over the batch's feature masks (eyes,
    lids, lips, mouth), read back from the disk cache, twins included with rest_pairs; refused without them."""
    d = tmp_path / "features"
    corpus = HeadCorpus(CorpusConfig(**SMALL, feature_masks=True))
    write_cache(corpus, "2d", 3, d, progress=False)
    cached, fresh = CachedSplit(d / "2d")[1], corpus.sample("2d", 1)
    assert torch.equal(cached.target_feature_masks, fresh.target_feature_masks)
    assert float(fresh.target_feature_masks.sum()) > 0
    tr = Trainer(_cfg(tmp_path / "r", d, data="2d", feature_weight=4.0))
    batch = batch_for_step(tr.source, tr.cfg, 0)
    assert batch.target_feature_masks.shape[:2] == batch.target_images.shape[:2]
    _assert_step_adds_masked_l1(tr, batch, batch.target_feature_masks, "feat_l1", 4.0)
    twins = batch_for_step(tr.source, TrainConfig(**{**tr.cfg.__dict__, "rest_pairs": True}), 0)
    assert twins.target_feature_masks.shape[1] == 2 * batch.target_feature_masks.shape[1]
    plain = tmp_path / "plain"
    write_cache(HeadCorpus(CorpusConfig(**SMALL)), "2d", 2, plain, progress=False)
    with pytest.raises(ValueError, match="feature masks"):
        Trainer(_cfg(tmp_path / "o", plain, data="2d", feature_weight=1.0))
    with pytest.raises(ValueError, match="feature_weight must be >= 0"):
        _cfg(tmp_path, d, feature_weight=-1.0)


def test_rest_pairs_add_the_at_rest_twin_of_every_view(tmp_path, cache_dir):
    from flexrt.corpus.codes import pose_only

    tr = Trainer(_cfg(tmp_path, cache_dir, views_per_sample=2, rest_pairs=True, expression_weight=1.0))
    b = batch_for_step(tr.source, tr.cfg, 0)
    assert b.target_images.shape[1] == 4 and b.target_codes.shape[1] == 4 and b.target_masks.shape[1] == 4
    assert torch.equal(b.target_codes[:, 2:], pose_only(b.target_codes[:, :2]))
    assert torch.equal(b.target_cam2world[:, 2:], b.target_cam2world[:, :2])
    assert torch.equal(b.target_masks[:, 2:], b.target_masks[:, :2])
    plain = batch_for_step(tr.source, TrainConfig(**{**tr.cfg.__dict__, "rest_pairs": False}), 0)
    assert torch.equal(b.target_images[:, :2], plain.target_images)  # same samples and views, twins appended
    diff = (b.target_images[:, :2] - b.target_images[:, 2:]).abs().amax(2, keepdim=True)
    assert float(diff[b.target_masks[:, :2] == 0].max()) <= 0.03 + 1 / 255 + 1e-6  # only inside the masks (uint8)
    assert tr.train_step(b)["expr_l1"] > 0

    off = tmp_path / "nomask"
    write_cache(HeadCorpus(CorpusConfig(**SMALL, expression_masks=False)), "2d", 2, off, progress=False)
    with pytest.raises(ValueError, match="rest_pairs"):
        Trainer(_cfg(tmp_path / "o", off, data="2d", rest_pairs=True))


def test_difference_weight_adds_the_l1_of_the_expression_change(tmp_path, cache_dir):
    """difference_l1 compares the rendered change from rest with the target's (closed form: zero when the render
    is the target plus anything the code does not change, the change's error otherwise); the step adds w x it;
    without rest pairs it is refused."""
    g = torch.Generator().manual_seed(1)
    t = torch.rand(2, 4, 3, 8, 8, generator=g)
    identity_error = torch.rand(2, 2, 3, 8, 8, generator=g)
    same_change = t + torch.cat([identity_error, identity_error], 1)  # wrong identity, right expression change
    assert float(difference_l1(same_change, t)) == pytest.approx(0.0, abs=1e-6)
    wobble = t.clone()
    wobble[:, :2, :, 0, :] += 0.5  # the code moves the top row, which the target keeps still
    assert float(difference_l1(wobble, t)) == pytest.approx(0.5 / 8, rel=1e-5)  # one row of 8 moves
    with pytest.raises(ValueError, match="2V"):
        difference_l1(t[:, :3], t[:, :3])

    tr = Trainer(_cfg(tmp_path, cache_dir, views_per_sample=1, rest_pairs=True, difference_weight=3.0))
    b = batch_for_step(tr.source, tr.cfg, 0)
    with torch.no_grad():
        pred = forward_batch(tr.model, tr.dino, b, tr.size)
    base, _ = photometric_loss(pred.flatten(0, 1), b.target_images.flatten(0, 1))
    d = float(difference_l1(pred, b.target_images))
    row = tr.train_step(b)
    assert row["diff_l1"] == pytest.approx(d, rel=1e-4) and d > 0
    assert row["loss"] == pytest.approx(float(base) + 3.0 * d, rel=1e-4)
    with pytest.raises(ValueError, match="needs rest_pairs"):
        _cfg(tmp_path, cache_dir, difference_weight=1.0)
    with pytest.raises(ValueError, match="difference_weight must be >= 0"):
        _cfg(tmp_path, cache_dir, rest_pairs=True, difference_weight=-1.0)


def test_freeze_encoder_trains_only_the_animation_path(tmp_path, cache_dir):
    """With freeze_encoder a step changes only model.animation_parameters() (stage b) and the optimizer holds only
    them; without it the encoder's weights change too."""
    def changed_after_one_step(**kw):
        tr = Trainer(_cfg(tmp_path / str(len(kw)), cache_dir, **kw))
        before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
        tr.train_step(batch_for_step(tr.source, tr.cfg, 0))
        animation = {id(p) for p in tr.model.animation_parameters()}
        names = {n for n, p in tr.model.named_parameters() if id(p) in animation}
        changed = {n for n, p in tr.model.named_parameters() if not torch.equal(p.detach(), before[n])}
        return tr, names, changed

    tr, animation, changed = changed_after_one_step(freeze_encoder=True)
    assert changed and changed <= animation
    assert {id(p) for p in tr.params} == {id(p) for p in tr.model.animation_parameters()}
    _, animation, changed = changed_after_one_step()
    assert changed - animation  # the encoder learns when it is not frozen


def test_resume_continues_identically(tmp_path, cache_dir):
    a = Trainer(_cfg(tmp_path / "a", cache_dir))
    rows_a = a.run(progress=False)
    b = Trainer(_cfg(tmp_path / "b", cache_dir, steps=2))
    b.run(progress=False)
    b2 = Trainer(_cfg(tmp_path / "b", cache_dir, steps=4), resume=True)
    assert b2.step == 2
    rows_b = b2.run(progress=False)
    assert [r["loss"] for r in rows_a[2:]] == [r["loss"] for r in rows_b]
    sa, sb = a.model.state_dict(), b2.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    log = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and len(log) == 5  # header + steps 1..4 across the resume

    # a log written before a column existed (here without diff_l1): the resumed rows follow its own header
    old_fields = [f for f in LOG_FIELDS if f != "diff_l1"]
    c = Trainer(_cfg(tmp_path / "c", cache_dir, steps=2))
    c.run(progress=False)
    log_c = tmp_path / "c" / "log.csv"
    rows = list(csv.DictReader(log_c.open()))
    with log_c.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old_fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    Trainer(_cfg(tmp_path / "c", cache_dir, steps=4), resume=True).run(progress=False)
    lines = list(csv.reader(log_c.open()))
    assert lines[0] == old_fields and all(len(x) == len(old_fields) for x in lines)
    assert [int(x[0]) for x in lines[1:]] == [1, 2, 3, 4]


def test_checkpoint_loads_in_load_official_export_and_serve(tmp_path, cache_dir):
    from flexrt.export import export_engines
    from flexrt.runtime.cli import build_engine

    tr = Trainer(_cfg(tmp_path / "run", cache_dir, steps=1))
    tr.run(progress=False)
    ckpt = tr.latest_checkpoint()
    model = load_official("tiny", state_dict=ckpt)  # strict: every key, shape
    code = torch.randn(1, model.num_head_tokens, model.hidden_dim)
    expr = torch.zeros(1, 135)
    with torch.no_grad():
        ref = tr.model.eval().decode_frames(code, expr)
        got = model.decode_frames(code, expr)
    assert torch.equal(ref.positions, got.positions) and torch.equal(ref.colors, got.colors)
    manifest = export_engines("tiny", checkpoint=ckpt, out_dir=tmp_path / "engines", precisions=("fp32",),
                              progress=False, log=lambda *a: None)
    assert manifest["parity"]["ok"]
    args = argparse.Namespace(engines=None, model="tiny", checkpoint=str(ckpt), dinov2=None, template=None,
                              device="cpu", backend="auto", precision="auto")
    engine = build_engine(args)  # what `flexavatar serve --model tiny --checkpoint ckpt` runs
    assert torch.allclose(engine.decode(code, expr).positions.cpu(), ref.positions, atol=1e-5)


def test_perceptual_terms_off_without_weights_and_start_late(tmp_path):
    off = PerceptualLoss()
    assert not off.enabled and "DINO OFF" in off.describe() and "SAM OFF" in off.describe()
    x = torch.rand(1, 3, 32, 32)
    assert float(off(x, x * 0.5, step=10**6)[0]) == 0.0
    from flexrt.model.dinov2 import DinoV2Config, DinoVisionTransformer

    torch.manual_seed(0)
    vit = DinoVisionTransformer(DinoV2Config(embed_dim=32, depth=11, num_heads=2, num_register_tokens=0))
    on = PerceptualLoss(start_step=5, dino_vit=vit)
    assert on.enabled and "DINO ON" in on.describe() and "from step 5" in on.describe()
    assert float(on(x, x * 0.5, step=4)[0]) == 0.0
    val, logs = on(x, x * 0.5, step=5)
    assert float(val) > 0 and logs["dino"] > 0
    assert float(on(x, x, step=5)[0]) == 0.0
    # SAM: the fitting's SamFeatureLoss over a TorchScript module (a stand-in: no SAM2.1 export exists here)
    from fitting_helpers import write_feature_module

    net = write_feature_module(tmp_path / "sam_standin.pt")
    sam = PerceptualLoss(sam_module=tmp_path / "sam_standin.pt", w_sam=0.5)
    assert "SAM ON (w=0.5)" in sam.describe() and "DINO OFF" in sam.describe()
    val, logs = sam(x, x * 0.5, step=0)
    with torch.no_grad():
        expect = (net(x) - net(x * 0.5)).abs().mean()
    assert logs["sam"] == pytest.approx(float(expect), rel=1e-5) and float(val) == pytest.approx(0.5 * logs["sam"])
    with pytest.raises(FileNotFoundError, match="SAM feature module not found"):
        PerceptualLoss(sam_module=tmp_path / "missing.pt")


def test_cli_train_resume_eval_and_errors(tmp_path, cache_dir, capsys):
    from flexrt.cli import main

    out = tmp_path / "cli"
    common = ["train", "--out", str(out), "--no-progress", "--log-level", "warning", "--device", "cpu"]
    assert main(common + ["--corpus-cache", str(cache_dir), "--steps", "1", "--batch-size", "1"]) == 0
    assert main(common + ["--resume", "--steps", "2", "--eval"]) == 0
    text = capsys.readouterr().out
    assert "[train] step 2" in text and "[eval] held-out, 3D sink: front PSNR" in text
    ev = json.loads((out / "eval.json").read_text())
    assert set(ev) >= {"front", "side_back", "per_view", "expression"} and ev["count"] == 2
    assert "[eval] expression: mouth change for a 0.45 rad jaw" in text
    assert [p["person"] for p in ev["expression"]["persons"]] == [0, 1, 2, 3, 4, 5]
    assert ev["expression"]["passes"] is False  # two steps from random weights do not animate
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert main(common + ["--resume"]) == 0  # no --steps: the run's own total (2), nothing left to do
    recorded = json.loads((out / "train_config.json").read_text())
    assert recorded["steps"] == 2
    from flexrt.corpus.dataset import read_cache_config

    # the corpus trained on is the cache's (its image size, pose scale, ...), not the CLI's defaults
    assert recorded["corpus"] == dataclasses.asdict(read_cache_config(cache_dir))
    assert main(["train", "--out", str(tmp_path / "none"), "--resume", "--no-progress"]) == 2
    assert "error: " in capsys.readouterr().out
    assert main(common + ["--corpus-cache", str(tmp_path / "missing"), "--steps", "1"]) == 2


@pytest.mark.gpu
def test_training_steps_on_gpu(tmp_path, cache_dir):
    tr = Trainer(_cfg(tmp_path, cache_dir, device="cuda"))
    batch = batch_for_step(tr.source, tr.cfg, 0)
    losses = [tr.train_step(batch)["loss"] for _ in range(8)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses


def test_package_and_demo_use_the_shipped_model(tmp_path, cache_dir, monkeypatch, capsys):
    """The packaging step writes weights + card; `flexavatar demo` then exports them and builds the avatar from a
    held-out corpus person (the weights here are a 1-step run: this checks the plumbing, not the quality)."""
    from flexrt.cli import main
    from flexrt.model.checkpoint import file_sha256
    from flexrt.runtime import cli as runtime_cli
    from flexrt.training import shipped

    tr = Trainer(_cfg(tmp_path / "run", cache_dir, steps=1))
    tr.run(progress=False)
    monkeypatch.setattr(shipped, "ASSETS", tmp_path / "assets")
    monkeypatch.setattr(shipped, "SHIPPED_WEIGHTS", tmp_path / "assets" / "w.safetensors")
    monkeypatch.setattr(shipped, "SHIPPED_CARD", tmp_path / "assets" / "w.json")
    path = shipped.package(tmp_path / "run")
    card = shipped.shipped_card()
    assert shipped.shipped_checkpoint() == path and card["sha256"] == file_sha256(path) and card["steps"] == 1
    assert card["corpus"]["image_size"] == 32 and card["train_config"]["lr"] == 1e-3
    photo, c2w, K, name = shipped.demo_photo(0)
    assert photo.shape == (512, 512, 3) and photo.dtype == np.uint8 and name.startswith("held-out corpus person")
    monkeypatch.setattr(runtime_cli, "find_shared_dir", lambda: None)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--frames", "3", "--width", "32", "--height", "32", "--fps", "0",
                 "--turntable", "2", "--no-progress"]) == 0
    report = json.loads((out / "latency.json").read_text())
    assert report["avatar"]["source"].startswith("held-out corpus person")
    assert "the shipped model trained on the procedural head corpus" in capsys.readouterr().out
    manifest = json.loads((out / "engines" / "manifest.json").read_text())
    assert card["sha256"] in json.dumps(manifest)  # the engines hold the shipped weights


def test_shipped_model_animates():
    """Quality bar of the packaged model (training/assets; skips on a checkout without it): on held-out persons, with the 3D sink,
    the mouth region follows the jaw (truth: ~0.02-0.04 mean change on 0..1) more than the forehead does, and the
    back view is a covered head, not background (``training.evaluate.expression_response``)."""
    from flexrt.model.checkpoint import file_sha256
    from flexrt.training.evaluate import (BACK_COVERED_BAR, EYE_BAR, FOREHEAD_RATIO_BAR, MOUTH_BAR, blink_response,
                                          expression_response)
    from flexrt.training.shipped import shipped_card, shipped_checkpoint
    from flexrt.training.trainer import build_model

    assert (MOUTH_BAR, FOREHEAD_RATIO_BAR, BACK_COVERED_BAR) == (0.01, 0.5, 0.9)  # the bar of issue 12, pinned
    ckpt = shipped_checkpoint()
    if ckpt is None:
        pytest.skip("no shipped model in training/assets yet: no run has passed this bar (docs/TRAINING.md, section 3)")
    card = shipped_card()
    assert card["sha256"] == file_sha256(ckpt) and card["bytes"] == ckpt.stat().st_size < 10_000_000
    model, dino, _ = build_model(TrainConfig(init_checkpoint=str(ckpt)))
    r = expression_response(model, dino, CorpusConfig(**card["corpus"]))
    for p in r["persons"]:
        assert p["mouth"] > MOUTH_BAR, p
        assert p["forehead"] < FOREHEAD_RATIO_BAR * p["mouth"], p
        assert p["back_covered"] > BACK_COVERED_BAR, p
        assert p["truth_in_context"] > 0.02 and p["mouth_in_context"] > 0.0, p  # reported, not in the bar
    assert r["passes"]
    # the eyes: the model shows a blink (the rig's eyelids shut), at least EYE_BAR of the rig's own change on every
    # person probed (docs/TRAINING.md, section 3: models before the feature masks showed 1-2 %)
    b = blink_response(model, dino, CorpusConfig(**card["corpus"]))
    assert b["ratio_min"] > EYE_BAR, b["persons"]

def test_jaw_probe_codes_in_context():
    """The in-context jaw probe: pairs that differ only in the jaw (shut, then JAW_PROBE_RAD open), on top of
    sampled expressions with the head pose at rest; deterministic."""
    from flexrt.corpus.codes import JAW, NECK, ROT, TRANS
    from flexrt.runtime.sequences import rotation_6d_angle
    from flexrt.training.evaluate import JAW_CONTEXTS, JAW_PROBE_RAD, jaw_context_codes, jaw_probe_codes

    codes = jaw_context_codes()
    assert codes.shape == (2 * JAW_CONTEXTS, 135) and torch.equal(codes, jaw_context_codes())
    shut, opened = codes[0::2], codes[1::2]
    outside = torch.ones(135, dtype=torch.bool)
    outside[JAW] = False
    assert torch.equal(shut[:, outside], opened[:, outside])  # only the jaw differs within a pair
    np.testing.assert_allclose(rotation_6d_angle(shut[:, JAW].numpy()), 0.0, atol=1e-6)
    np.testing.assert_allclose(rotation_6d_angle(opened[:, JAW].numpy()), JAW_PROBE_RAD, atol=1e-6)
    for slot in (NECK, ROT):  # head pose at rest
        np.testing.assert_allclose(rotation_6d_angle(shut[:, slot].numpy()), 0.0, atol=1e-6)
    assert float(shut[:, TRANS].abs().max()) == 0.0
    assert float(shut[:, :100].abs().max()) > 0.5  # a real expression around the jaw, unlike the neutral probe
    assert float(jaw_probe_codes()[:, :100].abs().max()) == 0.0
