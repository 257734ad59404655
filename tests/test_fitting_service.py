"""fitting.service on the CPU: a fit in a worker thread with progress events at the promised cadence,
cancellation, limits and bad requests refused before a thread starts, bounded concurrency. GPU: the low-priority
stream."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from fitting_helpers import SIZE, cameras, random_codes, random_expressions, sensitive_tiny_model
from flexrt.fitting import FitConfig, FitInputError, render_views
from flexrt.fitting.service import FIT_STREAM_PRIORITY, FitBusy, FitLimits, FitService


@pytest.fixture(scope="module")
def request_data():
    model = sensitive_tiny_model()
    code_true, code_init = random_codes(model, seed=21)
    c2w, K = cameras((-10.0, 10.0))
    expr = random_expressions(2, seed=22)
    images = render_views(model, code_true, c2w, K, expr, SIZE, SIZE)
    return model, dict(images=images, cam2world=c2w, intrinsics=K, expression_codes=expr), code_init


def test_progress_cadence_and_result(request_data):
    model, obs, code_init = request_data
    service = FitService(model, limits=FitLimits(preview_every=3))
    events, threads = [], []

    def on_progress(p):
        events.append(p)
        threads.append(threading.current_thread().name)

    job = service.start(**obs, config=FitConfig(steps=7), init_code=code_init, on_progress=on_progress)
    result = job.wait(timeout=300)
    assert job.done and not result.cancelled and result.steps_done == 7 and job.stream is None
    assert [p.step for p in events] == list(range(7)) and all(p.steps == 7 for p in events)
    assert set(threads) == {"flexavatar-fit"}  # progress comes from the worker thread
    assert [p.step for p in events if p.preview is not None] == [2, 5, 6]  # every 3rd step and the last
    for p in events:
        assert np.isfinite(p.loss) and 5.0 < p.psnr < 120.0 and p.view in (0, 1)
    np.testing.assert_allclose([p.loss for p in events], result.losses, rtol=1e-6)
    assert events[2].preview.dtype == np.uint8 and events[2].preview.shape == (SIZE, SIZE, 3)
    # the progress PSNR is that of the step's render against the view it fitted
    assert [p.view for p in events] == result.views.tolist()


def test_cancel_stops_after_the_current_step(request_data):
    model, obs, code_init = request_data
    service = FitService(model)
    holder = {}

    def on_progress(p):
        if p.step == 1:
            holder["job"].cancel()

    holder["job"] = job = service.start(**obs, config=FitConfig(steps=100), init_code=code_init, on_progress=on_progress)
    result = job.wait(timeout=300)
    assert result.cancelled and result.steps_done == 2 and result.avatar_code.shape == code_init.shape
    # the slot is free again
    service.start(**obs, config=FitConfig(steps=1), init_code=code_init).wait(timeout=300)


def test_limits_and_bad_requests_are_refused_before_a_thread_starts(request_data):
    model, obs, code_init = request_data
    service = FitService(model, limits=FitLimits(max_images=1, max_resolution=32, max_steps=50))
    before = threading.active_count()
    with pytest.raises(FitInputError, match="too many images: 2 \\(this server fits at most 1\\)"):
        service.start(**obs, init_code=code_init)
    one = {k: v[:1] for k, v in obs.items()}
    with pytest.raises(FitInputError, match="images are 48x48; this server fits at most 32x32"):
        service.start(**one, init_code=code_init)
    small = dict(one, images=one["images"][..., :32, :32])
    with pytest.raises(FitInputError, match="steps 200 is over this server's limit of 50"):
        service.start(**small, init_code=code_init)
    with pytest.raises(FitInputError, match="mismatched N"):
        service.start(**dict(small, expression_codes=obs["expression_codes"]), init_code=code_init, config=FitConfig(steps=5))
    with pytest.raises(FitInputError, match="no DINOv2 encoder"):
        service.start(**small, config=FitConfig(steps=5))
    with pytest.raises(FitInputError, match="does not load SAM feature modules"):  # never a client's TorchScript
        service.start(**small, init_code=code_init, config=FitConfig(steps=5, sam_module="sam.pt"))
    with pytest.raises(ValueError, match="FitLimits.max_steps must be a positive int"):
        FitService(model, limits=FitLimits(max_steps=0))
    assert threading.active_count() == before


def test_concurrency_is_bounded(request_data):
    model, obs, code_init = request_data
    service = FitService(model, limits=FitLimits(max_concurrent=1))
    gate = threading.Event()
    job = service.start(**obs, config=FitConfig(steps=3), init_code=code_init, on_progress=lambda p: gate.wait(60))
    try:
        with pytest.raises(FitBusy, match="all 1 fit slot"):
            service.start(**obs, config=FitConfig(steps=3), init_code=code_init)
    finally:
        gate.set()
    job.wait(timeout=300)


def test_progress_errors_end_the_fit(request_data):
    model, obs, code_init = request_data

    def broken(p):
        raise RuntimeError("client went away")

    job = FitService(model).start(**obs, config=FitConfig(steps=5), init_code=code_init, on_progress=broken)
    with pytest.raises(RuntimeError, match="client went away"):
        job.wait(timeout=300)


@pytest.mark.gpu
def test_gpu_fit_runs_on_a_low_priority_stream(request_data):
    model, obs, code_init = request_data
    model = model.cuda()
    try:
        job = FitService(model).start(**{k: v.cuda() for k, v in obs.items()}, config=FitConfig(steps=5),
                                      init_code=code_init.cuda())
        result = job.wait(timeout=300)
    finally:
        model.cpu()
    assert result.steps_done == 5 and job.stream is not None
    assert job.stream.priority == FIT_STREAM_PRIORITY
    live = torch.cuda.Stream(priority=-1)
    assert live.priority < job.stream.priority  # lower number = higher priority: live frames go first
