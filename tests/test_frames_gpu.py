"""FrameRenderer on the GPU: pipelined, graph-replayed batches against the CPU reference and against eager GPU runs."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from flexrt.proto import flexavatar_pb2 as pb
from flexrt.runtime.frames import FrameBatch, FrameRenderer
from flexrt.runtime.session import render_camera

from service_helpers import camera, expressions, random_avatar_code, reference_render, tiny_engine

pytestmark = pytest.mark.gpu

SPECS = [((64, 64), pb.RAW_RGB8, 0.0), ((80, 48), pb.RAW_RGB8, 25.0), ((64, 64), pb.JPEG, 0.0),
         ((64, 64), pb.PNG, -20.0), ((64, 64), pb.RAW_RGB8, 10.0)]


@pytest.fixture(scope="module")
def engines():
    if not torch.cuda.is_available():
        pytest.skip("gpu test: no CUDA device visible")
    from flexrt.model.pipeline import build_pipeline
    from flexrt.runtime.engines import TorchEngine

    return tiny_engine(), TorchEngine(build_pipeline("tiny"), device="cuda", precision="fp32", graphs="cuda")


def _batch(engine, seed: int, specs=SPECS) -> tuple[FrameBatch, list]:
    codes = [random_avatar_code(engine, seed + k) for k in range(2)]
    ex = expressions(len(specs), seed=seed)
    frames, refs = [], []
    for i, (size, enc, yaw) in enumerate(specs):
        c2w, K = camera(yaw_deg=yaw)
        view, Kp = render_camera(c2w, K, *size)
        frames.append(dict(avatar_code=torch.from_numpy(codes[i % 2]).cuda(), expression_code=ex[i], viewmat=view,
                           intrinsics=Kp, background=np.array([1.0, 0.9, 0.8], np.float32), size=size,
                           encoding=enc, quality=90))
        refs.append((codes[i % 2], ex[i], c2w, K, size))
    return FrameBatch.stack(frames), refs


def _image(frame, size, enc) -> np.ndarray:
    w, h = size
    if enc == pb.RAW_RGB8:
        return np.frombuffer(frame.data, np.uint8).reshape(h, w, 3)
    return np.asarray(Image.open(io.BytesIO(frame.data)).convert("RGB"))


def _psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_gpu_batch_matches_the_cpu_reference(engines):
    cpu_engine, gpu_engine = engines
    renderer = FrameRenderer(gpu_engine)
    assert renderer.rasterizer == "cupy" and renderer.jpeg == "cuda" and renderer.graphs
    batch, refs = _batch(cpu_engine, 1)
    result = renderer.render(batch)
    for (size, enc, _), frame, (code, ex, c2w, K, _s) in zip(SPECS, result.frames, refs):
        ref = reference_render(cpu_engine, code, ex, c2w, K, *size, background=(1.0, 0.9, 0.8))
        img = _image(frame, size, enc)
        assert img.shape == (size[1], size[0], 3)
        if enc == pb.JPEG:
            assert frame.encoded_on == "gpu" and _psnr(img, ref) > 30
        else:
            assert _psnr(img, ref) >= 50, (size, enc, _psnr(img, ref))  # GPU decode + CuPy vs CPU + reference
    assert result.decode_us > 0 and result.render_us > 0


def test_gpu_pipelined_graph_batches_equal_eager_in_order(engines):
    cpu_engine, gpu_engine = engines
    graphed = FrameRenderer(gpu_engine, slots=2)
    eager = FrameRenderer(gpu_engine, graphs=False, slots=1)
    batches = [_batch(cpu_engine, seed)[0] for seed in (3, 4, 5)]
    t1 = graphed.submit(batches[0])
    t2 = graphed.submit(batches[1])  # both slots busy now
    r1 = t1.result()
    t3 = graphed.submit(batches[2])
    results = [r1, t2.result(), t3.result()]
    for batch, got in zip(batches, results):
        want = eager.render(batch)
        for a, b in zip(got.frames, want.frames):
            assert a.data == b.data  # the same kernels on the same inputs: bit-identical, JPEG bytes included


def test_gpu_groups_of_every_size_share_the_slot_buffers(engines):
    """Each group size has its own render graph over views of one set of buffers per slot and output kind: 64x64
    raw groups of 3, 2 and 3 frames (batches of 5, 2, 5 frames) replayed one after another in one slot give the
    eager renderer's bytes, and the slot holds one storage per output kind, not one per size."""
    cpu_engine, gpu_engine = engines
    graphed = FrameRenderer(gpu_engine, slots=1, max_batch=8)
    eager = FrameRenderer(gpu_engine, graphs=False, slots=1, max_batch=8)
    full, _ = _batch(cpu_engine, 7)
    small, _ = _batch(cpu_engine, 8, specs=[SPECS[0], SPECS[4]])
    for batch in (full, small, full):
        got, want = graphed.render(batch), eager.render(batch)
        assert [a.data for a in got.frames] == [b.data for b in want.frames]
    slot = graphed._slots[0]
    assert sorted(k[0] for k in slot.groups if k[1:] == (64, 64, None)) == [2, 3]
    assert set(slot.storage) == {(64, 64, None), (80, 48, None), (64, 64, 90)}
    st = slot.storage[(64, 64, None)]
    assert st.u8.shape[0] == 8 and all(g.u8.data_ptr() == st.u8.data_ptr() for k, g in slot.groups.items()
                                       if k[1:] == (64, 64, None))


def test_gpu_jpeg_frames_too_large_for_the_capacity_are_encoded_on_the_cpu(engines):
    cpu_engine, gpu_engine = engines
    renderer = FrameRenderer(gpu_engine, jpeg_capacity=700)  # below any 64x64 head frame
    batch, _ = _batch(cpu_engine, 6)
    result = renderer.render(batch)
    jpeg = [f for (_, enc, _), f in zip(SPECS, result.frames) if enc == pb.JPEG]
    assert jpeg and all(f.encoded_on == "cpu" for f in jpeg) and renderer.jpeg_overflows == len(jpeg)
    assert all(Image.open(io.BytesIO(f.data)).size == (64, 64) for f in jpeg)


def test_gpu_memory_summary_adds_up(engines):
    """The start-up log's memory line: torch's reserved >= allocated > 0 (the GPU engine holds its weights), and the
    device total in use is at least what torch reserved."""
    import re

    from flexrt.runtime.metrics import gpu_memory_summary

    line = gpu_memory_summary(engines[1].device)
    nums = dict(re.findall(r"(allocated|reserved|processes\)) (\d+\.\d) ", line))
    assert line.startswith("GPU memory: torch allocated") and len(nums) == 3, line
    assert float(nums["processes)"]) >= float(nums["reserved"]) >= float(nums["allocated"]) >= 0.0
