"""Fitting inputs from files: the reference *_input.npz photos, N-frame .npz files (images inside, image files,
alpha), an .mp4 with a per-frame .npz in the driving-sequence spelling, and one clear error per bad file."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from flexrt.fitting import FitInputError
from flexrt.fitting.inputs import load_fit_inputs, save_fit_inputs

NAMES = ("einstein", "marble_sculpture", "asian_watercolor_girl")


def _neutral(n: int) -> np.ndarray:
    e = np.zeros((n, 135), np.float32)
    for s in (100, 106, 114, 120, 126):
        e[:, s: s + 6] = (1, 0, 0, 0, 1, 0)
    return e


def test_reference_photos(shared_dir):
    folder = shared_dir / "reference" / "assets" / "images"
    x = load_fit_inputs([folder / f"{n}_input.npz" for n in NAMES])
    assert x.images.shape == (3, 3, 512, 512) and x.images.dtype == np.float32
    assert x.names == list(NAMES)
    for i, n in enumerate(NAMES):
        z = np.load(folder / f"{n}_input.npz")
        np.testing.assert_array_equal(x.cam2world[i], z["input_cam2world"].astype(np.float32))
        np.testing.assert_array_equal(x.intrinsics[i], z["input_intrinsics_normalized"].astype(np.float32))
        np.testing.assert_array_equal(x.expression_codes[i], z["input_expression_code"].astype(np.float32))
        png = np.asarray(Image.open(folder / f"{n}.png").convert("RGB"), dtype=np.float32) / 255.0
        np.testing.assert_array_equal(x.images[i], png.transpose(2, 0, 1))


def test_n_frame_npz_with_images_alpha_and_pixel_intrinsics(tmp_path):
    n, h, w = 3, 24, 32
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (n, h, w), dtype=np.uint8)
    K = np.tile(np.array([[60.0, 0, 16], [0, 80.0, 12], [0, 0, 1]], np.float32), (n, 1, 1))
    c2w = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))
    np.savez(tmp_path / "frames.npz", images=images, alpha=alpha, cam2world_head_centric=c2w, intrinsics=K,
             expression_codes=_neutral(n))
    x = load_fit_inputs(tmp_path / "frames.npz")
    a = alpha[..., None] / 255.0
    expect = images / 255.0 * a + (1 - a)
    np.testing.assert_allclose(x.images, expect.transpose(0, 3, 1, 2), rtol=0, atol=1e-6)
    np.testing.assert_allclose(x.intrinsics[0], [[60 / w, 0, 16 / w], [0, 80 / h, 12 / h], [0, 0, 1]], rtol=1e-6)
    # image_size: pixel intrinsics tracked at another resolution are normalised by that size
    np.savez(tmp_path / "sized.npz", images=images, cam2world_head_centric=c2w, intrinsics=K, image_size=np.array([48, 64]),
             expression_codes=_neutral(n))
    np.testing.assert_allclose(load_fit_inputs(tmp_path / "sized.npz").intrinsics[0, 0, 0], 60 / 64, rtol=1e-6)
    # max_frames keeps evenly spaced frames
    two = load_fit_inputs(tmp_path / "frames.npz", max_frames=2)
    assert two.n == 2 and two.names == ["frames[0]", "frames[2]"]


def test_image_files_rgba_onto_white_and_roundtrip(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[5:15, 5:15] = (200, 10, 10, 255)  # an opaque red square on a transparent background
    Image.fromarray(rgba).save(tmp_path / "a.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "b.png")
    np.savez(tmp_path / "files.npz", image_files=np.array(["a.png", "b.png"]), input_cam2world=np.tile(np.eye(4), (2, 1, 1)),
             input_intrinsics_normalized=np.tile(np.diag([3.0, 3.0, 1.0]), (2, 1, 1)), input_expression_code=_neutral(2))
    x = load_fit_inputs(tmp_path / "files.npz")
    assert x.names == ["a", "b"]
    np.testing.assert_allclose(x.images[0, :, 0, 0], [1, 1, 1])  # transparent -> white
    np.testing.assert_allclose(x.images[1, :, 0, 0], [0, 0, 0])  # RGB keeps its black
    np.testing.assert_allclose(x.images[0, :, 10, 10], np.array([200, 10, 10]) / 255.0, rtol=1e-6)
    save_fit_inputs(tmp_path / "again.npz", x)
    y = load_fit_inputs(tmp_path / "again.npz")
    np.testing.assert_allclose(y.images, x.images, rtol=0, atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(y.cam2world, x.cam2world)
    np.testing.assert_array_equal(y.expression_codes, x.expression_codes)


def test_video_with_per_frame_tracking(tmp_path, shared_dir):
    """An .mp4 plus a per-frame .npz in the driving-sequence spelling (reference EMO-1 tracking, 121 frames)."""
    seq = np.load(shared_dir / "reference" / "assets" / "expressions" / "EMO-1-shout+laugh.npz")
    n = 6
    np.savez(tmp_path / "track.npz", expression_codes=seq["expression_codes"][:n],
             cam2world_head_centric=seq["cam2world_head_centric"][:n], intrinsics=seq["intrinsics"][:n],
             image_size=seq["image_size"], frame_indices=np.array([1, 3, 5]))
    video = tmp_path / "clip.mp4"
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        video.write_bytes(b"not decoded")
        with pytest.raises(FitInputError, match="needs imageio and imageio-ffmpeg"):
            load_fit_inputs(tmp_path / "track.npz", video=video)
        return
    levels = [30, 60, 90, 120, 150, 180]  # one flat grey level per frame survives H.264
    with imageio.get_writer(video, fps=10, codec="libx264", macro_block_size=1) as wr:
        for v in levels:
            wr.append_data(np.full((32, 32, 3), v, np.uint8))
    with pytest.raises(FitInputError, match="3 images but 6 cameras"):
        load_fit_inputs(tmp_path / "track.npz", video=video)
    np.savez(tmp_path / "track3.npz", expression_codes=seq["expression_codes"][:3],
             cam2world_head_centric=seq["cam2world_head_centric"][:3], intrinsics=seq["intrinsics"][:3],
             image_size=seq["image_size"], frame_indices=np.array([1, 3, 5]))
    x = load_fit_inputs(tmp_path / "track3.npz", video=video)
    assert x.images.shape == (3, 3, 32, 32) and x.names == ["clip[1]", "clip[3]", "clip[5]"]
    np.testing.assert_allclose(x.images.mean(axis=(1, 2, 3)), np.array([60, 120, 180]) / 255.0, atol=0.02)
    np.testing.assert_allclose(x.intrinsics[0, 0, 0], seq["intrinsics"][0, 0, 0] / 512.0, rtol=1e-6)
    np.savez(tmp_path / "late.npz", expression_codes=seq["expression_codes"][:1],
             cam2world_head_centric=seq["cam2world_head_centric"][:1], intrinsics=seq["intrinsics"][:1],
             frame_indices=np.array([40]))
    with pytest.raises(FitInputError, match=r"frames \[40\] not found \(the video has 6 frames\)"):
        load_fit_inputs(tmp_path / "late.npz", video=video)


def test_bad_files_name_the_problem(tmp_path):
    good = dict(images=np.zeros((2, 16, 16, 3), np.uint8), input_cam2world=np.tile(np.eye(4), (2, 1, 1)),
                input_intrinsics_normalized=np.tile(np.diag([3.0, 3.0, 1.0]), (2, 1, 1)), input_expression_code=_neutral(2))

    def write(name, **changes):
        arrays = {**good, **changes}
        arrays = {k: v for k, v in arrays.items() if v is not None}
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    with pytest.raises(FitInputError, match="no cameras"):
        load_fit_inputs(write("a.npz", input_cam2world=None))
    with pytest.raises(FitInputError, match="no expression codes"):
        load_fit_inputs(write("b.npz", input_expression_code=None))
    with pytest.raises(FitInputError, match=r"expression codes must be \[N,135\]"):
        load_fit_inputs(write("c.npz", input_expression_code=np.zeros((2, 100))))
    with pytest.raises(FitInputError, match="2 images but 3 cameras"):
        load_fit_inputs(write("d.npz", input_cam2world=np.tile(np.eye(4), (3, 1, 1))))
    with pytest.raises(FitInputError, match="no images inside"):
        load_fit_inputs(write("e.npz", images=None))
    with pytest.raises(FitInputError, match="differ in image size"):
        load_fit_inputs([write("f.npz"), write("g.npz", images=np.zeros((2, 20, 16, 3), np.uint8))])
    with pytest.raises(FitInputError, match="inputs file not found"):
        load_fit_inputs(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(FitInputError, match="not a readable .npz"):
        load_fit_inputs(tmp_path / "junk.npz")
    with pytest.raises(FitInputError, match="exactly one per-frame .npz"):
        load_fit_inputs([write("h.npz"), write("i.npz")], video=tmp_path / "x.mp4")
    with pytest.raises(FitInputError, match="no inputs given"):
        load_fit_inputs([])
