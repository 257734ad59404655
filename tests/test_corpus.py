"""The procedural head corpus: determinism, what each part of the expression code does, camera distributions,
layouts, the monocular leak, the disk cache (CPU, ~1 min)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flexrt.corpus import cameras
from flexrt.corpus.codes import (
    CODE_DIM, EXP, EYELIDS, JAW, NECK, ROT, TRANS, euler_matrix, matrix_to_rotation_6d, matrix_to_yaw_pitch,
    neutral_code, pose_only, rig_controls, rotation_6d_to_matrix, sample_codes, with_rotation)
from flexrt.corpus.dataset import CachedSplit, CorpusConfig, HeadCorpus, tracked_rotation, write_cache
from flexrt.corpus.head import HeadRig, rgb_to_sh_dc, sample_identity
from flexrt.corpus.render import render
from flexrt.kernels import sh_dc_to_rgb
from flexrt.model.flexavatar import DATASET_ID_2D, DATASET_ID_3D
from flexrt.model.gaussians import GAUSSIAN_WIDTHS

SMALL = CorpusConfig(identities_2d=50, identities_3d=3, identities_heldout=2, image_size=32, input_size=48,
                     template_res=48)


@pytest.fixture(scope="module")
def rig():
    torch.set_flush_denormal(True)
    return HeadRig(64)


@pytest.fixture(scope="module")
def ident():
    return sample_identity(np.random.default_rng(3))


def _front_back(size=64):
    return cameras.eval_views(("front", "back"))


def _render_codes(rig, ident, codes, names=("front", "back"), size=64):
    out = rig.gaussians(ident, codes)
    c2w, K = cameras.eval_views(names)
    return torch.stack([render(out.gaussians.map(lambda x: x[f]), c2w, K, size, out.normals[f])
                        for f in range(codes.shape[0])])  # [F, V, H, W, 3]


def test_6d_round_trip_and_raw_scales():
    m = euler_matrix(torch.tensor([0.3, -1.0]), torch.tensor([0.2, 0.4]), torch.tensor([-0.1, 0.7]))
    assert torch.allclose(rotation_6d_to_matrix(matrix_to_rotation_6d(m)), m, atol=1e-6)
    raw = matrix_to_rotation_6d(m) * torch.tensor([1.7, 1.7, 1.7, 0.6, 0.6, 0.6])  # tracker-like row lengths
    assert torch.allclose(rotation_6d_to_matrix(raw), m, atol=1e-6)
    yaw, pitch = matrix_to_yaw_pitch(euler_matrix(torch.tensor(0.4), torch.tensor(-0.2), torch.tensor(0.3)))
    assert abs(float(yaw) - 0.4) < 1e-6 and abs(float(pitch) + 0.2) < 1e-6


def test_neutral_code_and_controls():
    c = neutral_code()
    ctl = rig_controls(c)
    assert c.shape == (CODE_DIM,)
    for k in ("jaw", "eye_left", "eye_right", "neck", "rot"):
        assert torch.allclose(ctl[k], torch.eye(3))
    assert float(ctl["closure"].max()) == 0.0 and float(ctl["smile"]) == 0.0


def test_sampled_codes_cover_the_shipped_ranges():
    codes = torch.from_numpy(sample_codes(np.random.default_rng(0), 4000))
    assert codes.shape == (4000, CODE_DIM) and codes.dtype == torch.float32
    ctl = rig_controls(codes)
    jaw = torch.rad2deg(matrix_to_yaw_pitch(ctl["jaw"])[1])
    yaw = torch.rad2deg(matrix_to_yaw_pitch(ctl["rot"])[0])
    assert float(jaw.min()) < 0.5 and float(jaw.max()) > 29.3  # shipped: -0.5 .. 29.3 deg
    assert float(yaw.abs().max()) > 44.0  # EXP-1 turns ~45 deg
    assert float(codes[:, EYELIDS].max()) > 0.84 and float(codes[:, EYELIDS].min()) < 0.05
    assert float(codes[:, JAW][:, :3].norm(dim=-1).max()) > 1.5  # raw, unnormalised rows like the tracker's


def test_code_spread_options_cover_the_trackers_tails():
    """exp_scale / translation_scale scale exactly what they name and leave the random draws alone (at 1: the codes
    of earlier corpora); at 1.7 the unused exp coefficients spread like the tracker's in the shipped sequences."""
    from flexrt.corpus.codes import IGNORED_EXP, RIG_EXP, exp_spread
    from flexrt.runtime.cli import find_shared_dir

    base = sample_codes(np.random.default_rng(3), 500, pose_scale=0.35)
    assert np.array_equal(base, sample_codes(np.random.default_rng(3), 500, pose_scale=0.35, exp_scale=1.0,
                                             translation_scale=1.0))
    wide = sample_codes(np.random.default_rng(3), 500, pose_scale=0.35, exp_scale=1.7, translation_scale=4.0)
    unused = IGNORED_EXP  # the exp coefficients the rig never reads
    np.testing.assert_allclose(wide[:, unused], 1.7 * base[:, unused], rtol=1e-6, atol=1e-7)
    assert np.array_equal(wide[:, list(RIG_EXP)], base[:, list(RIG_EXP)])  # smile, brows, cheeks unchanged
    np.testing.assert_allclose(wide[:, TRANS], 4.0 * base[:, TRANS], rtol=1e-6, atol=1e-9)
    assert np.array_equal(wide[:, 100:132], base[:, 100:132])  # eyes, eyelids, neck, jaw, R unchanged

    std = exp_spread()
    np.testing.assert_allclose(exp_spread(1.7)[unused], 1.7 * std[unused])
    assert np.array_equal(exp_spread(1.7)[list(RIG_EXP)], std[list(RIG_EXP)])
    for codes, lo, hi in ((base, 0.0, 0.03), (wide, 0.09, 0.25)):
        beyond = float((np.abs(codes[:, unused]) / std[unused] > 2.5).mean())
        assert lo <= beyond <= hi, beyond
    shared = find_shared_dir()  # the part on the reference data runs where ../shared is present
    seqs = shared / "reference/assets/expressions" if shared else None
    if seqs is not None and seqs.is_dir():  # the shipped sequences: 15-18 % of their unused exp coefficients lie beyond 2.5 std
        for f in sorted(seqs.glob("*.npz")):
            exp = np.load(f)["expression_codes"][:, unused]
            assert 0.09 <= float((np.abs(exp) / std[unused] > 2.5).mean()) <= 0.25, f.name
    cfg = CorpusConfig(exp_scale=1.7, translation_scale=4.0)
    assert cfg.code_spread() == {"exp_scale": 1.7, "translation_scale": 4.0}


def test_rig_layout(rig, ident):
    out = rig.gaussians(ident, neutral_code(2))
    g = out.gaussians
    n = rig.num_gaussians
    for k, w in GAUSSIAN_WIDTHS.items():
        assert tuple(g[k].shape) == (2, n, w), k
        assert g[k].dtype == torch.float32 and bool(torch.isfinite(g[k]).all())
    assert torch.allclose(g.rotations.norm(dim=-1), torch.ones(2, n))
    assert float(g.opacities.min()) >= 0 and float(g.opacities.max()) < 1
    assert float(g.scales.min()) > 0 and float(g.scales.max()) <= 0.01  # the model's MAX_SCALE
    # colours are raw SH-DC: rgb_to_sh_dc inverts sh_dc_to_rgb on [0, 1]
    rgb = torch.rand(100, 3)
    assert torch.allclose(sh_dc_to_rgb(rgb_to_sh_dc(rgb)), rgb, atol=1e-6)
    lo, hi = g.positions[0].min(0).values, g.positions[0].max(0).values  # about the FLAME head box
    assert bool((lo > torch.tensor([-0.14, -0.23, -0.18])).all()) and bool((hi < torch.tensor([0.14, 0.17, 0.12])).all())
    assert out.regions["eyes"].sum() == 320 and out.regions["mouth_interior"].sum() > 100


def test_culling_matches_full_render(rig, ident):
    out = rig.gaussians(ident, torch.from_numpy(sample_codes(np.random.default_rng(1), 1)))
    g = out.gaussians.map(lambda x: x[0])
    c2w, K = cameras.eval_views()
    culled = render(g, c2w, K, 64, out.normals[0])
    full = render(g, c2w, K, 64, None)
    mse = ((culled - full) ** 2).mean()
    assert float(-10 * torch.log10(mse)) > 40.0


@pytest.mark.gpu
def test_gpu_render_matches_cpu_reference(rig, ident):
    """`--device cuda` corpus builds: the CuPy kernels give the CPU reference's frames (culling included)."""
    out = rig.gaussians(ident, torch.from_numpy(sample_codes(np.random.default_rng(2), 1)))
    g = out.gaussians.map(lambda x: x[0])
    c2w, K = cameras.eval_views()
    cpu = render(g, c2w, K, 64, out.normals[0], "cpu")
    gpu = render(g, c2w, K, 64, out.normals[0], "cuda")
    assert gpu.device.type == "cpu" and gpu.shape == cpu.shape
    assert float(-10 * torch.log10(((gpu - cpu) ** 2).mean())) > 45.0


def test_jaw_opens_the_mouth_not_the_back(rig, ident):
    codes = neutral_code(2)
    codes = with_rotation(codes, "jaw", euler_matrix(torch.tensor(0.0), torch.tensor([0.0, 0.4]), torch.tensor(0.0)))
    img = _render_codes(rig, ident, codes)  # [2 frames, (front, back), 64, 64, 3]
    diff_front = (img[1, 0] - img[0, 0]).abs().amax(-1)  # [64, 64]
    diff_back = (img[1, 1] - img[0, 1]).abs().amax(-1)
    changed = diff_front > 0.1
    rows, cols = torch.nonzero(changed, as_tuple=True)
    assert changed.sum() > 20  # the mouth opens (teeth, cavity, the chin goes down)
    assert float(rows.float().mean()) > 40  # ... in the lower half of the face
    assert float(cols.float().mean() - 31.5) ** 2 < 25  # ... around the midline
    assert float(diff_front[:30].max()) < 1e-6  # eyes, brows, forehead untouched
    assert float(diff_back[:36].max()) < 1e-6  # the back of the head untouched (the jaw line below may move)
    assert float((diff_back > 0.1).float().mean()) < 0.03
    # the mouth goes dark: the cavity / teeth replace the lips
    assert float((img[1, 0] - img[0, 0])[changed].abs().mean()) > 0.15


def test_eyes_rotate_and_eyelids_close(rig, ident):
    codes = neutral_code(3)
    look = euler_matrix(torch.tensor(math.radians(25)), torch.tensor(0.0), torch.tensor(0.0))
    codes[1] = with_rotation(with_rotation(codes[1:2], "eye_left", look[None]), "eye_right", look[None])[0]
    codes[2, EYELIDS] = 1.0
    out = rig.gaussians(ident, codes)
    eyes = out.regions["eyes"]
    pos = out.gaussians.positions[:, eyes]  # [3, 320, 3]
    rgb = sh_dc_to_rgb(out.gaussians.colors[0, eyes])
    pupil = rgb.sum(-1) < 0.3  # the dark pupil Gaussians
    shift = pos[1, pupil].mean(0) - pos[0, pupil].mean(0)
    assert float(shift[0]) > 0.003  # yaw > 0 turns the gaze toward +x
    assert float(pos[2].sub(pos[0]).abs().max()) == 0.0  # eyelids do not move the eyeballs
    img = _render_codes(rig, ident, codes, names=("front",))[:, 0]  # [3, 64, 64, 3]
    d_gaze = (img[1] - img[0]).abs().amax(-1)
    assert float(d_gaze[18:34].max()) > 0.2 and float(d_gaze[40:].max()) < 1e-6  # eyes change, mouth does not
    # eyelids: with the lids closed the eyeballs do not show at all; open, they do
    c2w, K = cameras.eval_views(("front",))
    for frame, visible in ((0, True), (2, False)):
        g = out.gaussians.map(lambda x: x[frame])
        no_eyes = g.map(lambda x: x.clone())
        no_eyes.opacities[eyes] = 0.0
        diff = (render(g, c2w, K, 64, out.normals[frame]) - render(no_eyes, c2w, K, 64, out.normals[frame])).abs()
        assert (float(diff.max()) > 0.3) if visible else (float(diff.max()) < 0.02), (frame, float(diff.max()))


def test_head_rotation_code_moves_the_head(rig, ident):
    codes = neutral_code(2)
    codes = with_rotation(codes, "rot", euler_matrix(torch.tensor([0.0, 0.5]), torch.tensor(0.0), torch.tensor(0.0)))
    codes[1, 132:135] = torch.tensor([0.01, 0.0, 0.0])
    out = rig.gaussians(ident, codes)
    surf = out.regions["surface"]
    nose_front = out.gaussians.positions[0, surf, 2].argmax()
    moved = out.gaussians.positions[1, surf][nose_front] - out.gaussians.positions[0, surf][nose_front]
    assert float(moved[0]) > 0.03  # the face turned toward +x


def test_camera_distributions():
    rng = np.random.default_rng(0)
    c2w, K = cameras.frontal_cone(rng, 2000, 25.0)
    ang = cameras.camera_angle_from_front(c2w)
    assert float(ang.max()) < 26.5 and float(ang.max()) > 23.0
    c2w_s, _ = cameras.sphere(rng, 4000)
    ang_s = cameras.camera_angle_from_front(c2w_s)
    assert 0.4 < float((ang_s > 90).float().mean()) < 0.6  # half of the studio cameras see the back
    assert float(ang_s.max()) > 170.0
    elev = torch.rad2deg(torch.asin((c2w_s[:, 1, 3] - cameras.LOOK_AT[1]) / (c2w_s[:, :3, 3] - torch.tensor(cameras.LOOK_AT)).norm(dim=-1)))
    assert float(elev.min()) > -31.5 and float(elev.max()) < 66.5
    for c in (c2w, c2w_s):  # every camera looks at the head (OpenCV: +z forward)
        to_head = torch.nn.functional.normalize(torch.tensor(cameras.LOOK_AT) - c[:, :3, 3], dim=-1)
        assert float((to_head * c[:, :3, 2]).sum(-1).min()) > 0.999
        assert torch.allclose(c[:, :3, :3].transpose(1, 2) @ c[:, :3, :3], torch.eye(3).expand(len(c), 3, 3), atol=1e-5)
    assert torch.allclose(K[:, 0, 2], torch.full((2000,), 0.5))


def test_tracked_rotation_follows_the_camera():
    codes = neutral_code(1).expand(2, -1).clone()
    c2w, _ = cameras.cameras_from_directions(np.stack([cameras.direction(20.0, 0.0), cameras.direction(0.0, 15.0)]),
                                             np.ones(2))
    tracked = tracked_rotation(codes, c2w, leak=1.0)
    yaw, pitch = matrix_to_yaw_pitch(rotation_6d_to_matrix(tracked[:, ROT]))
    assert abs(math.degrees(float(yaw[0])) + 20.0) < 0.6  # camera to +x looks like the head turned to -x
    assert abs(math.degrees(float(pitch[1])) - 15.0) < 0.6  # camera above looks like a nod down
    assert torch.equal(tracked_rotation(codes, c2w, leak=0.0)[:, ROT], codes[:, ROT])


def test_samples_are_deterministic_and_well_formed():
    a, b = HeadCorpus(SMALL), HeadCorpus(SMALL)
    for split, sink in (("2d", DATASET_ID_2D), ("3d", DATASET_ID_3D), ("heldout", DATASET_ID_3D)):
        s1, s2 = a.sample(split, 7), b.sample(split, 7)
        for k in ("input_image", "target_images", "target_cam2world", "target_codes", "input_cam2world"):
            assert torch.equal(getattr(s1, k), getattr(s2, k)), (split, k)
        assert s1.dataset_id == sink
        v = 4 if split == "heldout" else SMALL.views
        assert s1.input_image.shape == (3, 48, 48) and s1.target_images.shape == (v, 3, 32, 32)
        assert s1.target_codes.shape == (v, CODE_DIM) and s1.target_intrinsics.shape == (v, 3, 3)
        assert float(s1.target_images.min()) >= 0 and float(s1.target_images.max()) <= 1
        assert not torch.equal(s1.target_images, a.sample(split, 8).target_images)
    other = HeadCorpus(CorpusConfig(**{**SMALL.__dict__, "seed": 1})).sample("2d", 7)
    assert not torch.equal(other.input_image, a.sample("2d", 7).input_image)
    s3 = a.sample("3d", 4)  # 3D: one frame from several cameras, the true code
    assert torch.equal(s3.target_codes[0], s3.target_codes[1])
    s2d = a.sample("2d", 4)  # 2D: each target its own frame
    assert not torch.equal(s2d.target_codes[0], s2d.target_codes[1])
    assert a.sample("2d", 3).identity == a.sample("2d", 53).identity == 3  # index mod identities


def test_pose_only_keeps_the_pose_and_rests_the_face():
    codes = torch.from_numpy(sample_codes(np.random.default_rng(4), 3))
    rest = pose_only(codes)
    for s in (NECK, ROT, TRANS):
        assert torch.equal(rest[:, s], codes[:, s])
    assert torch.equal(rest[:, EXP], torch.zeros(3, 100)) and torch.equal(rest[:, EYELIDS], torch.zeros(3, 2))
    assert torch.equal(rest[:, JAW], neutral_code(3)[:, JAW])
    assert torch.equal(pose_only(rest), rest)


def test_expression_masks_mark_what_the_face_moves():
    """The mask is where the render differs from the same head, same pose, expression at rest: empty for a code
    already at rest, on the mouth for an open jaw, absent when switched off."""
    corpus = HeadCorpus(CorpusConfig(**{**SMALL.__dict__, "image_size": 64}))
    ident = corpus.identity("heldout", 0)
    c2w, K = cameras.eval_views(("front",))
    rest = pose_only(torch.from_numpy(sample_codes(np.random.default_rng(2), 1, pose_scale=0.3)))
    img = corpus._render_frames(ident, rest, c2w, K, 64, False)
    assert float(corpus._expression_masks(ident, rest, c2w, K, False, img)[0].sum()) == 0
    jaw = with_rotation(rest, "jaw", euler_matrix(torch.tensor(0.0), torch.tensor(0.45), torch.tensor(0.0))[None])
    img = corpus._render_frames(ident, jaw, c2w, K, 64, False)
    mask, at_rest = corpus._expression_masks(ident, jaw, c2w, K, False, img)
    assert at_rest.shape == img.shape
    assert mask.shape == (1, 1, 64, 64) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert float(mask[0, 0, 38:54, 22:42].mean()) > 0.2  # the mouth box moved ...
    assert float(mask[0, 0, :28].sum()) == 0  # ... the upper head did not
    for split in ("2d", "3d", "heldout"):
        s = corpus.sample(split, 1)
        assert s.target_masks.shape == (s.target_images.shape[0], 1, 64, 64)
        assert s.target_rest_images.shape == s.target_images.shape
        moved = (s.target_images - s.target_rest_images).abs().amax(1, keepdim=True)  # the at-rest twins differ
        assert float(moved[s.target_masks == 0].max()) <= 0.03 + 1e-6  # from the targets only inside the mask
    off = HeadCorpus(CorpusConfig(**{**SMALL.__dict__, "expression_masks": False})).sample("2d", 1)
    assert off.target_masks is None


def test_feature_masks_cover_eyes_and_mouth_whatever_the_code():
    """Feature masks: where eyeballs, lids, lips and mouth interior show, the rest of the head occluding them. On
    both eyes and the mouth from the front, open eyes or shut, nowhere on the forehead or the background, nowhere
    from behind; in every sample when on, off by default (the disk cache: tests/test_training.py)."""
    from flexrt.corpus.codes import EYELIDS, neutral_code

    corpus = HeadCorpus(CorpusConfig(**{**SMALL.__dict__, "image_size": 64, "feature_masks": True}))
    ident = corpus.identity("heldout", 0)
    c2w, K = cameras.eval_views(("front", "back"))
    codes = neutral_code(2)
    codes[1, EYELIDS] = 0.9  # eyes shut: the lids still count
    rig = corpus.rig.gaussians(ident, codes)
    assert int(rig.regions["features"].sum()) > int(rig.regions["eyes"].sum()) > 0  # eyeballs + lids + lips + mouth
    assert not bool((rig.regions["features"] & rig.regions["hair"]).any())
    for f in range(2):
        m = corpus._feature_masks(ident, codes[f:f + 1], c2w, K, False, 64)  # [2 views,1,64,64]
        front, back = m[0, 0], m[1, 0]
        assert set(front.unique().tolist()) == {0.0, 1.0}
        assert float(front[22:34, 10:30].sum()) >= 4 and float(front[22:34, 34:54].sum()) >= 4  # both eyes ...
        assert float(front[40:54, 22:42].sum()) >= 6  # ... and the mouth ...
        assert float(front[:16].sum()) == 0 and float(front[:, :4].sum()) == 0  # ... not forehead, not background
        assert float(back.sum()) == 0  # seen from behind, the head hides them all
    s = corpus.sample("2d", 1)
    assert s.target_feature_masks.shape == (s.target_images.shape[0], 1, 64, 64)
    assert HeadCorpus(SMALL).sample("2d", 1).target_feature_masks is None
    assert CorpusConfig().feature_masks is False


def test_cache_round_trip(tmp_path):
    corpus = HeadCorpus(SMALL)
    path = write_cache(corpus, "3d", 3, tmp_path, shard_size=2, progress=False)
    split = CachedSplit(path)
    assert len(split) == 3 and len(list(path.glob("shard_*.npz"))) == 2
    mtime = (path / "shard_0000.npz").stat().st_mtime_ns
    write_cache(corpus, "3d", 3, tmp_path, shard_size=2, progress=False)  # complete shards are kept
    assert (path / "shard_0000.npz").stat().st_mtime_ns == mtime
    par = write_cache(corpus, "3d", 3, tmp_path / "par", shard_size=2, progress=False, jobs=2)  # worker processes
    for name in ("shard_0000.npz", "shard_0001.npz"):
        with np.load(path / name) as a, np.load(par / name) as b:
            assert all(np.array_equal(a[k], b[k]) for k in a.files)
    s, ref = split[1], corpus.sample("3d", 1)
    assert (s.target_images - ref.target_images).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(s.target_codes, ref.target_codes) and s.dataset_id == ref.dataset_id
    assert torch.equal(s.target_masks, ref.target_masks)
    assert (s.target_rest_images - ref.target_rest_images).abs().max() <= 0.5 / 255 + 1e-6
    off = write_cache(HeadCorpus(CorpusConfig(**{**SMALL.__dict__, "expression_masks": False})), "3d", 1,
                      tmp_path / "off", progress=False)
    assert CachedSplit(off)[0].target_masks is None and CachedSplit(off)[0].target_rest_images is None
    (path / "shard_0001.npz").replace(tmp_path / "moved.npz")  # a cache mixing shards with and without masks
    (off / "shard_0000.npz").replace(path / "shard_0001.npz")
    with pytest.raises(ValueError, match="expression masks"):
        CachedSplit(path)
    with pytest.raises(FileNotFoundError, match="corpus cache not found"):
        CachedSplit(tmp_path / "2d")
    with pytest.raises(ValueError, match="another config"):
        write_cache(HeadCorpus(CorpusConfig(**{**SMALL.__dict__, "seed": 5})), "2d", 1, tmp_path, progress=False)


def test_shipped_sequence_drives_the_rig(rig, ident, shared_dir):
    path = shared_dir / "reference/assets/expressions/EMO-1-shout+laugh.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    codes = torch.from_numpy(np.load(path)["expression_codes"])
    ctl = rig_controls(codes)
    jaw = matrix_to_yaw_pitch(ctl["jaw"])[1]
    lo, hi = int(jaw.argmin()), int(jaw.argmax())
    swapped = codes[[lo, lo]].clone()
    swapped[1, JAW] = codes[hi, JAW]  # the shout's jaw, everything else from the calm frame
    img = _render_codes(rig, ident, swapped, names=("front",))[:, 0]
    diff = (img[1] - img[0]).abs().amax(-1)
    rows = torch.nonzero(diff > 0.1, as_tuple=True)[0]
    assert len(rows) > 20 and float(rows.float().mean()) > 40 and float(diff[:30].max()) < 1e-6
    frames = _render_codes(rig, ident, codes[::30], names=("front",))[:, 0]  # the head moves over the sequence
    assert float((frames[1:] - frames[:1]).abs().amax(-1).gt(0.1).float().mean()) > 0.02


def test_codes_beyond_range_tells_tracked_sequences_from_corpus_codes():
    """``codes_beyond_range``: the corpus's own draws are within its range (a normal draw puts ~1.2 % beyond 2.5
    std); codes pushed out (exp x3, the head moved 5 cm) are not; the demo's note fires for EMO-1 only."""
    from flexrt.corpus.codes import TRANS, codes_beyond_range
    from flexrt.runtime.cli import find_shared_dir, shipped_model_range_note

    c = sample_codes(np.random.default_rng(3), 200, pose_scale=0.35)
    r = codes_beyond_range(c, pose_scale=0.35)
    assert r["within"] and r["exp_beyond"] < 0.03 and r["translation_beyond"] < 0.03, r
    wide = c.copy()
    wide[:, :100] *= 3.0
    r = codes_beyond_range(wide, pose_scale=0.35)
    assert not r["within"] and r["exp_beyond"] > 0.3 and r["translation_beyond"] < 0.03, r
    assert codes_beyond_range(wide, pose_scale=0.35, exp_scale=3.0)["within"]  # a corpus drawn that wide covers it
    moved = c.copy()
    moved[:, TRANS] += np.array([0.0, 0.0, 0.05], dtype=np.float32)
    r = codes_beyond_range(moved, pose_scale=0.35)
    assert not r["within"] and r["translation_beyond"] > 0.3 and r["translation_max_m"] > 0.04, r
    assert shipped_model_range_note(c, "procedural") is None
    shared = find_shared_dir()
    seq = shared / "reference/assets/expressions/EMO-1-shout+laugh.npz" if shared else None
    if seq is not None and seq.is_file():
        emo = np.load(seq)["expression_codes"]
        r = codes_beyond_range(emo, pose_scale=0.35)
        assert not r["within"] and r["exp_max_std"] > 5.0, r  # measured: 18 % beyond, up to 7.6 std; t up to 8 cm
        note = shipped_model_range_note(emo, "EMO-1")
        assert note.startswith("[demo] note: EMO-1 drives codes beyond") and "\n" not in note  # one line
        assert "exp values" in note and "head translation" in note


def test_clip_ignored_exp_keeps_what_the_rig_renders():
    """``clip_ignored_exp``: the exp coefficients the rig ignores end within +-2.5 std of sample_codes' spread, the
    rig's controls (all it renders from) are bit for bit those of the given codes, codes already in range come back
    unchanged; the demo's ``clip_for_shipped_model`` clips EMO-1 (one line) so that only its head translation stays
    beyond the shipped model's corpus."""
    from flexrt.corpus.codes import IGNORED_EXP, RIG_EXP, clip_ignored_exp, exp_spread, rig_controls
    from flexrt.runtime.cli import clip_for_shipped_model, find_shared_dir, shipped_model_range_note
    from flexrt.runtime.sequences import Sequence

    c = sample_codes(np.random.default_rng(5), 300, pose_scale=0.35)
    same, changed = clip_ignored_exp(c)
    assert changed < 0.03 and np.array_equal(clip_ignored_exp(same)[0], same)
    wide = c.copy()
    wide[:, :100] *= 4.0
    clipped, changed = clip_ignored_exp(wide)
    assert sorted(IGNORED_EXP + list(RIG_EXP)) == list(range(100))
    lim = 2.5 * exp_spread()
    assert changed > 0.3 and np.all(np.abs(clipped[:, IGNORED_EXP]) <= lim[IGNORED_EXP] + 1e-6)
    assert np.array_equal(clipped[:, list(RIG_EXP)], wide[:, list(RIG_EXP)])
    assert np.array_equal(clipped[:, 100:], wide[:, 100:])
    inside = np.abs(wide[:, IGNORED_EXP]) <= lim[IGNORED_EXP]
    assert np.array_equal(clipped[:, IGNORED_EXP][inside], wide[:, IGNORED_EXP][inside])  # values in range untouched
    a, b = rig_controls(torch.from_numpy(wide)), rig_controls(torch.from_numpy(clipped))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    seq = Sequence(c, None, None, "procedural")
    out, line = clip_for_shipped_model(seq)
    assert out is seq and line is None  # the corpus's own codes: nothing to clip, nothing said
    shared = find_shared_dir()
    path = shared / "reference/assets/expressions/EMO-1-shout+laugh.npz" if shared else None
    if path is not None and path.is_file():
        emo = Sequence(np.load(path)["expression_codes"].astype(np.float32), None, None, "EMO-1")
        out, line = clip_for_shipped_model(emo)
        assert line.startswith("[demo] EMO-1: ") and "\n" not in line and "--raw-codes" in line
        assert out.name == "EMO-1" and not np.array_equal(out.expressions, emo.expressions)
        a, b = rig_controls(torch.from_numpy(emo.expressions)), rig_controls(torch.from_numpy(out.expressions))
        assert all(torch.equal(a[k], b[k]) for k in a)  # what the rig renders of EMO-1 is unchanged
        note = shipped_model_range_note(out.expressions, "EMO-1")
        assert "exp values" not in note and "head translation" in note


def test_showcase_clip_keeps_the_truth(tmp_path):
    """``training.showcase`` with ``clip_ignored``: the truth rows (the rig's renders) measure the same mouth change
    as without it (the rig never reads what is clipped), the PNG is written, and the option is recorded."""
    from flexrt.training.showcase import showcase

    codes = sample_codes(np.random.default_rng(2), 24, pose_scale=0.35)
    codes[:, :100] *= 4.0  # a tracker's spread: far beyond the corpus for the coefficients the rig ignores
    seq = tmp_path / "wide.npz"
    np.savez(seq, expression_codes=codes)
    a = showcase(None, tmp_path / "a.png", str(seq), persons=(0,), columns=3)["person_0"]
    b = showcase(None, tmp_path / "b.png", str(seq), persons=(0,), columns=3, clip_ignored=True)["person_0"]
    assert (tmp_path / "b.png").stat().st_size > 0 and b["clip_ignored_exp"] and not a["clip_ignored_exp"]
    assert a["frames"] == b["frames"] and a["mouth_change_truth"] == b["mouth_change_truth"] > 0
