"""kernels.jpeg: the batched JPEG encoder against libjpeg (Pillow) and its CUDA kernels against the torch reference."""
from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from flexrt.kernels.jpeg import JpegEncoder, encode_jpeg, jpeg_header


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _segments(data: bytes) -> dict[int, list[bytes]]:
    """JPEG marker segments before the scan: marker -> payloads."""
    out, i = {}, 2
    while i < len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        out.setdefault(marker, []).append(data[i + 4:i + 2 + length])
        if marker == 0xDA:
            break
        i += 2 + length
    return out


def _pillow(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)  # libjpeg defaults: 4:2:0, standard tables
    return buf.getvalue()


def _images(h=48, w=64, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([128 + 100 * np.sin(xx / 9), 128 + 90 * np.cos(yy / 7), 128 + 60 * np.sin((xx + yy) / 13)], -1)
    head = np.full((h, w, 3), 255, np.uint8)  # a rendered-head-like frame: white, an ellipse, an edge
    head[((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2 < 1] = (224, 180, 150)
    return {"smooth": smooth.astype(np.uint8), "noise": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "white": np.full((h, w, 3), 255, np.uint8), "head": head}


@pytest.mark.parametrize("quality", [50, 75, 90, 95])
def test_tables_and_frame_header_are_libjpegs(quality):
    ref = _segments(_pillow(_images()["smooth"], quality))
    ours = _segments(jpeg_header(48, 64, quality) + b"\xff\xd9")
    for marker in (0xDB, 0xC4, 0xC0, 0xDA):  # quantisation tables, Huffman tables, frame header, scan header
        assert sorted(ours[marker]) == sorted(ref[marker]), hex(marker)


@pytest.mark.parametrize("quality", [50, 90])
def test_decodes_like_libjpeg_at_the_same_size(quality):
    """Pillow decodes every frame; quality and size are libjpeg's own (float vs integer DCT: tiny differences)."""
    imgs = _images()
    batch = torch.from_numpy(np.stack(list(imgs.values())))
    blobs = encode_jpeg(batch, quality)
    for (name, img), blob in zip(imgs.items(), blobs):
        dec = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
        assert dec.shape == img.shape
        ref = _pillow(img, quality)
        ref_dec = np.asarray(Image.open(io.BytesIO(ref)).convert("RGB"))
        assert _psnr(img, dec) >= min(_psnr(img, ref_dec), 60.0) - 0.3, name
        assert abs(len(blob) - len(ref)) <= 0.02 * len(ref) + 8, (name, len(blob), len(ref))


def test_sizes_that_are_not_multiples_of_16_and_single_frames():
    img = _images(37, 50)["smooth"]
    (blob,) = encode_jpeg(torch.from_numpy(img)[None], 90)
    dec = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
    assert dec.shape == (37, 50, 3) and _psnr(img, dec) > 35


def test_a_batch_encodes_each_frame_as_alone_with_byte_stuffing():
    """Byte stuffing counts each frame's own 0xFF bytes (one batch-wide scan, each frame's offset subtracted): every
    frame of a batch is byte for byte its encoding alone, noise frames (many stuffed bytes) after other frames too."""
    imgs = _images(seed=3)
    batch = np.stack([imgs["noise"], imgs["head"], _images(seed=4)["noise"], imgs["smooth"]])
    enc = JpegEncoder(48, 64, 90)
    blobs = enc.to_bytes(*enc.encode(torch.from_numpy(batch)))
    assert all(b.count(b"\xff\x00") > 0 for b in (blobs[0], blobs[2]))  # the noise frames have stuffed bytes
    for img, blob in zip(batch, blobs):
        assert blob == enc.to_bytes(*enc.encode(torch.from_numpy(img)[None]))[0]
        libjpeg = np.asarray(Image.open(io.BytesIO(_pillow(img, 90))).convert("RGB"))
        assert _psnr(img, np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))) > _psnr(img, libjpeg) - 0.5


def test_frames_that_do_not_fit_are_flagged_not_corrupted():
    imgs = _images()
    enc = JpegEncoder(48, 64, 95, capacity=2000)  # the noise frame needs ~6 KB, the white one < 1 KB
    data, lengths = enc.encode(torch.from_numpy(np.stack([imgs["noise"], imgs["white"]])))
    assert lengths[0] == 0 and 0 < lengths[1] <= 2000
    blob = enc.to_bytes(data, lengths)[1]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")), imgs["white"])


def test_bad_input_is_refused():
    enc = JpegEncoder(16, 16)
    with pytest.raises(ValueError, match="uint8 frames"):
        enc.encode(torch.zeros(1, 16, 16, 3))
    with pytest.raises(ValueError, match="quality"):
        JpegEncoder(16, 16, quality=0)
    with pytest.raises(ValueError, match="backend"):
        JpegEncoder(16, 16, backend="nvjpeg")


@pytest.mark.skipif(shutil.which("g++") is None, reason="the CPU emulation of jpeg.cu needs g++ (C++20)")
def test_cuda_kernels_emulated_on_the_cpu_give_the_reference_bytes():
    """kernels/cuda/jpeg.cu compiled as C++ (one thread after another) with the real orchestration of
    ``_entropy_cuda``: bit-identical to the torch reference, including 0xFF-rich noise and ZRL runs."""
    from flexrt.kernels._host_emu import HostJpegKernels

    imgs = _images()
    enc = JpegEncoder(48, 64, 90)
    coef = enc.dc_differences(enc.coefficients(torch.from_numpy(np.stack(list(imgs.values())))))
    coef[0, 0, 0, 40] = 7  # a lone coefficient after a run of 39 zeros: two ZRL codes
    raw_c, total_c = enc._entropy_cuda(coef, HostJpegKernels())
    raw_t, total_t = enc._entropy_torch(coef)
    assert torch.equal(total_c, total_t) and torch.equal(raw_c, raw_t)


@pytest.mark.skipif(shutil.which("g++") is None, reason="the CPU emulation of jpeg.cu needs g++ (C++20)")
def test_cuda_coefficient_kernel_emulated_on_the_cpu_matches_the_torch_path():
    """jpeg_coefficients (colour, 4:2:0, DCT, quantisation, one thread per block) against ``coefficients`` +
    ``dc_differences`` in torch: sizes that are multiples of 16 and not (replicated edges), four qualities. The
    kernel rounds every product and sum as torch does; only the DCT's summation order differs from torch's matmul,
    so a coefficient may move by one where its quotient sits at a rounding boundary: at most 0.1 % of them."""
    from flexrt.kernels._host_emu import HostJpegKernels

    kernels = HostJpegKernels()
    for h, w in ((48, 64), (40, 56)):
        x = torch.from_numpy(np.stack(list(_images(h, w, seed=h).values())))
        for quality in (50, 75, 90, 95):
            enc = JpegEncoder(h, w, quality)
            ref = enc.dc_differences(enc.coefficients(x))
            out = enc._coefficients_cuda(x, kernels)
            assert out.dtype == torch.int32 and out.shape == ref.shape
            d = (out.long() - ref).abs()
            assert int(d.max()) <= 1 and float((d > 0).float().mean()) <= 1e-3, (h, w, quality)


@pytest.mark.gpu
def test_gpu_cuda_backend_equals_reference_and_replays_in_a_graph():
    if not torch.cuda.is_available():
        pytest.skip("gpu test: no CUDA device visible")
    imgs = _images(64, 96)
    x = torch.from_numpy(np.stack(list(imgs.values()) * 3)).cuda()
    ref = JpegEncoder(64, 96, 90, "cpu").encode(x.cpu())
    enc = JpegEncoder(64, 96, 90, "cuda", backend="cuda")
    data, lengths = enc.encode(x)
    assert torch.equal(lengths.cpu(), ref[1])
    for i, n in enumerate(ref[1].tolist()):
        assert torch.equal(data[i, :n].cpu(), ref[0][i, :n])
    from flexrt.kernels import capture_graph

    static = x.clone()
    graph, (g_data, g_len) = capture_graph(lambda: enc.encode(static))
    static.copy_(x.flip(0))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(g_len.cpu(), ref[1].flip(0))
