"""FitAvatar over real gRPC on the CPU (tiny preset, known answer): targets rendered from a known avatar code at
three views; a fit from another code streams progress at the promised cadence, raises PSNR on the targets, and
stores an avatar that Animate streams (and whose frames match the targets better than the initial code's);
cancelling mid-fit stores nothing and frees the fit slot; bad requests get their status and one clear line.

The tiny preset's random weights barely react to the avatar code, so the server's engine is built from a tiny
pipeline scaled as the fitting tests' model (tests/fitting_helpers.py, ``make_sensitive``)."""
from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from fitting_helpers import cameras, make_sensitive, random_codes, random_expressions
from service_helpers import make_config, tiny_engine, wait_until

from flexrt.fitting import psnr, render_views
from flexrt.proto import flexavatar_pb2 as pb
from flexrt.runtime import codec
from flexrt.runtime.client import FitCancelled, FlexAvatarClient
from flexrt.runtime.engines.base import Engine, EngineInfo
from flexrt.runtime.server import start_server

SIZE = 32  # observation side in pixels
YAWS = (-20.0, 0.0, 20.0)
STEPS = 20
PREVIEW_EVERY = 5
LIMITS = dict(max_fit_observations=4, max_fit_resolution=48, max_fit_steps=200, max_photo_pixels=48 * 48)


@pytest.fixture(scope="module")
def engine():
    from flexrt.model.pipeline import build_pipeline
    from flexrt.runtime.engines import TorchEngine

    pipeline = build_pipeline("tiny")
    make_sensitive(pipeline.model)  # before the engine deploys its per-frame decoder from the model's weights
    return TorchEngine(pipeline, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def scene(engine):
    model = engine.model
    code_true, code_init = random_codes(model, seed=31)
    c2w, K = cameras(YAWS)
    expr = random_expressions(len(YAWS), seed=32)
    rendered = render_views(model, code_true, c2w, K, expr, SIZE, SIZE)  # [N,3,S,S] in [0,1]
    targets = (rendered.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)  # what the client sends
    return dict(code_true=code_true, code_init=code_init, c2w=c2w.numpy(), K=K.numpy(), expr=expr.numpy(),
                targets=targets, target_float=torch.from_numpy(targets).permute(0, 3, 1, 2).float() / 255.0)


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    store = tmp_path_factory.mktemp("fit_rpc")
    with start_server(engine, make_config(store, warmup_sizes=((SIZE, SIZE),), max_batch_size=4, **LIMITS)) as s:
        yield s


@pytest.fixture()
def client(server):
    with FlexAvatarClient(server.address) as c:
        yield c


def _obs_args(scene, views=slice(None)):
    return (list(scene["targets"][views]), scene["c2w"][views], scene["K"][views], scene["expr"][views])


def _local_psnr(engine, scene, code) -> np.ndarray:
    """PSNR per view of the fitting renderer's image of ``code`` against the uint8 targets the server got."""
    r = render_views(engine.model, torch.as_tensor(code), torch.from_numpy(scene["c2w"]),
                     torch.from_numpy(scene["K"]), torch.from_numpy(scene["expr"]), SIZE, SIZE)
    return psnr(r, scene["target_float"]).double().numpy()


def _psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    err = (a.astype(np.float64) - b.astype(np.float64)) / 255.0
    return float(-10.0 * np.log10(np.mean(err ** 2)))


def _animate_psnr(client, avatar_id, scene) -> np.ndarray:
    """Animate the avatar at every view (its camera and expression) -> PSNR per view against the targets."""
    out = []
    for i in range(len(YAWS)):
        frames = list(client.animate(avatar_id, [scene["expr"][i]], SIZE, SIZE, encoding="png",
                                     cam2world=scene["c2w"][i], intrinsics=scene["K"][i], timeout=60))
        assert len(frames) == 1 and frames[0].image.shape == (SIZE, SIZE, 3)
        out.append(_psnr_uint8(frames[0].image, scene["targets"][i]))
    return np.array(out)


def _status(fn):
    with pytest.raises(grpc.RpcError) as err:
        fn()
    code, details = err.value.code(), err.value.details()
    assert "\n" not in details and "Traceback" not in details, details  # one clear line
    return code, details


def test_fit_streams_progress_and_stores_an_avatar_that_animates(engine, scene, server, client):
    init = client.create_avatar(npy=scene["code_init"].numpy(), name="init")
    events = []
    avatar, result = client.fit_avatar(*_obs_args(scene), init_avatar_id=init.avatar_id, steps=STEPS, seed=3,
                                       preview_every=PREVIEW_EVERY, name="fitted", on_progress=events.append)

    # progress: one event per step, in order, previews every PREVIEW_EVERY steps (and at the last), decodable
    assert [p.step for p in events] == list(range(1, STEPS + 1)) and {p.steps for p in events} == {STEPS}
    assert [p.step for p in events if p.preview_jpeg] == list(range(PREVIEW_EVERY, STEPS + 1, PREVIEW_EVERY))
    assert {p.view for p in events} <= set(range(len(YAWS))) and all(np.isfinite(p.loss) for p in events)
    for p in events:
        if p.preview_jpeg:  # the preview is that step's render of its view: its PSNR is the event's, up to JPEG
            preview = codec.decode_frame(p.preview_jpeg, "jpeg", SIZE, SIZE)
            db = [_psnr_uint8(preview, t) for t in scene["targets"]]
            print(f"step {p.step}: progress PSNR {p.psnr:.2f} dB, preview JPEG vs each target {np.round(db, 2)}")
            # measured: the JPEG (quality 90, 32x32) is 0.3 .. 1.3 dB below the render's PSNR; asserted 2 dB
            assert abs(db[p.view] - p.psnr) < 2.0 and db[p.view] == max(db), (p.step, p.view, p.psnr, db)
    np.testing.assert_allclose(result.losses, [p.loss for p in events], rtol=1e-6)

    # result: the stored avatar, the known answer before, a measured gain after
    assert avatar == result.avatar and avatar.source == "fit" and avatar.name == "fitted"
    assert client.get_avatar(avatar.avatar_id) == avatar
    assert (result.init, result.steps, result.resolution, result.rasterizer) == ("init_avatar_id", STEPS, SIZE, "torch")
    assert result.loss_terms["l1"].startswith("on") and result.loss_terms["ssim"].startswith("on")
    assert result.loss_terms["dino"] == "off: no DINOv2-small weights on this server (serve --fit-dino-loss-weights)"
    assert result.loss_terms["sam"].startswith("off (no --sam-module")
    before = _local_psnr(engine, scene, scene["code_init"])
    np.testing.assert_allclose(result.psnr_before_per_view, before, atol=1e-3)  # the server fitted these views
    after = np.array(result.psnr_after_per_view)
    print(f"FitAvatar {STEPS} steps: PSNR {result.psnr_before:.2f} -> {result.psnr_after:.2f} dB, per view "
          f"{before.round(2)} -> {after.round(2)}")
    # measured (this machine, torch 2.13 CPU): 22.50 -> 26.27 dB (+3.8; per view +3.1 .. +4.5) with the recipe's
    # lr 1e-2; asserted: +2 dB on the mean, +1.5 dB on each view
    assert result.psnr_after >= result.psnr_before + 2.0
    assert (after >= before + 1.5).all()

    # Animate streams the stored avatar; its frames (tracked expressions, no offsets) beat the initial code's
    fitted_anim, init_anim = _animate_psnr(client, avatar.avatar_id, scene), _animate_psnr(client, init.avatar_id, scene)
    print(f"Animate PSNR against the targets: initial avatar {init_anim.round(2)}, fitted avatar {fitted_anim.round(2)}")
    # measured: [23.20, 21.82, 22.48] -> [26.61, 25.94, 25.51] dB (+3.0 .. +4.1); asserted +1.5 dB per view
    assert (fitted_anim >= init_anim + 1.5).all()
    np.testing.assert_allclose(init_anim, before, atol=0.5)  # Animate's renderer sees what the fit's renderer saw
    assert server.stats()["fits"]["completed"] >= 1


def test_second_fit_is_refused_and_cancelling_stores_nothing(scene, server, client):
    avatars_before = {a.avatar_id for a in client.list_avatars()}
    started, release = threading.Event(), threading.Event()
    outcome = {}

    def on_progress(p):
        started.set()
        return not release.is_set()  # False cancels

    def long_fit():
        try:
            client.fit_avatar(*_obs_args(scene), init_code=scene["code_init"].numpy(), steps=200,
                              on_progress=on_progress, timeout=120)
            outcome["result"] = "finished"
        except FitCancelled as exc:
            outcome["result"] = str(exc)

    thread = threading.Thread(target=long_fit)
    thread.start()
    try:
        assert started.wait(60)
        code, details = _status(lambda: client.fit_avatar(*_obs_args(scene, slice(0, 1)),
                                                          init_code=scene["code_init"].numpy(), steps=2))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "already running 1 fit(s)" in details
        assert server.server_info().stats.fits_running == 1
    finally:
        release.set()
        thread.join(120)
    assert outcome["result"].startswith("fit cancelled after step") and "nothing was stored" in outcome["result"]
    # the server's fit stops after its current step (200 steps would take minutes) and frees its slot
    wait_until(lambda: server.stats()["fits"]["running"] == 0, timeout=30, what="the cancelled fit to stop")
    assert server.stats()["fits"]["cancelled"] >= 1
    assert {a.avatar_id for a in client.list_avatars()} == avatars_before
    assert {p.stem for p in Path(server.config.store_dir).glob("*.npy")} == avatars_before


def test_feed_forward_initial_code(engine, scene, client):
    """No initial code: the server's encoder on the first observation (resized to 512), as CreateAvatar."""
    avatar, result = client.fit_avatar(*_obs_args(scene, slice(0, 1)), steps=2, name="ff")
    assert result.init == "feed-forward" and result.steps == 2 and avatar.source == "fit"
    rgb512 = codec.resize_square(scene["targets"][0], engine.image_size)
    with torch.inference_mode():
        code = engine.encode(torch.from_numpy(np.array(rgb512)).permute(2, 0, 1)[None].float() / 255.0,
                             torch.from_numpy(scene["c2w"][:1]), torch.from_numpy(scene["K"][:1]))[0]
    expected = _local_psnr(engine, scene, code)[0]
    np.testing.assert_allclose(result.psnr_before_per_view, [expected], atol=1e-3)


def _png(side_w: int, side_h: int | None = None) -> bytes:
    return codec.encode_frame(np.full((side_h or side_w, side_w, 3), 255, np.uint8), "png")


def _request(scene, n=1, **fields) -> pb.FitAvatarRequest:
    request = pb.FitAvatarRequest(**fields)
    for i in range(n):
        j = i % len(YAWS)
        request.observations.add(image=codec.encode_frame(scene["targets"][j], "png"),
                                 expression=scene["expr"][j].tolist())
    return request


def test_bad_requests_get_their_status_and_one_line(scene, server, client):
    def call(request):
        return lambda: list(client.stub.FitAvatar(request, timeout=60))

    def with_obs(request, i, **fields):
        for k, v in fields.items():
            if k == "expression":
                del request.observations[i].expression[:]
                request.observations[i].expression.extend(v)
            else:
                setattr(request.observations[i], k, v)
        return request

    unknown = "0" * 32
    two_sizes = _request(scene, 2)
    two_sizes.observations[1].image = _png(40)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    cases = {
        "no observations": (pb.FitAvatarRequest(), invalid, "has no observations"),
        "too many": (_request(scene, 5), invalid, "too many observations: 5 (this server fits at most 4)"),
        "short expression": (with_obs(_request(scene), 0, expression=[0.0] * 134), invalid,
                             "observations[0].expression must have 135 floats, got 134"),
        "NaN expression": (with_obs(_request(scene), 0, expression=[float("nan")] * 135), invalid,
                           "observations[0].expression contains NaN or Inf"),
        "non-square photo": (with_obs(_request(scene), 0, image=_png(32, 24)), invalid,
                             "observations[0].image: image must be a square head crop, got 32x24"),
        "photo over the pixel limit": (with_obs(_request(scene), 0, image=_png(64)), invalid,
                                       "over the limit of 2304 pixels"),
        "not an image": (with_obs(_request(scene), 0, image=b"not a photo"), invalid, "could not be decoded"),
        "steps over the limit": (_request(scene, steps=201), invalid, "steps 201 is outside this server's range 1..200"),
        "resolution over the limit": (_request(scene, resolution=64), invalid, "resolution 64 is outside"),
        "photos of two sizes": (two_sizes, invalid, "observations[1].image is 40x40 but observations[0] is 32x32"),
        "bad camera": (_request(scene), invalid, "observations[0].camera: cam2world needs 16 floats"),
        "bad init code": (_request(scene, init_avatar_code_npy=b"\x93NUMPY junk"), invalid, "init_avatar_code_npy"),
        "malformed init id": (_request(scene, init_avatar_id="../x"), invalid, "32 lowercase hex"),
        "unknown init id": (_request(scene, init_avatar_id=unknown), grpc.StatusCode.NOT_FOUND,
                            f"avatar '{unknown}' not found"),
    }
    cases["bad camera"][0].observations[0].camera.cam2world.extend([1.0] * 3)
    before = {a.avatar_id for a in client.list_avatars()}
    for name, (request, code, message) in cases.items():
        got_code, details = _status(call(request))
        assert (got_code, message in details) == (code, True), f"{name}: {got_code} {details!r}"
    assert {a.avatar_id for a in client.list_avatars()} == before
    assert server.stats()["fits"]["running"] == 0


class _NoTorchModelEngine(Engine):
    """An engine without a PyTorch model, as the ONNX Runtime and TensorRT engines: decodes through another."""

    def __init__(self, inner):
        self.inner, self.info = inner, EngineInfo(backend="decode-only", device="cpu", precision="fp32")
        self.num_head_tokens, self.hidden_dim, self.num_gaussians = inner.num_head_tokens, inner.hidden_dim, inner.num_gaussians

    def encode(self, images, cam2world, intrinsics):
        return self.inner.encode(images, cam2world, intrinsics)

    def decode(self, avatar_code, expression_codes):
        return self.inner.decode(avatar_code, expression_codes)


def test_unimplemented_without_a_torch_model_and_full_store(scene, engine):
    request = _request(scene, init_avatar_code_npy=b"")
    with start_server(_NoTorchModelEngine(tiny_engine()), make_config(warmup_sizes=((SIZE, SIZE),))) as server, \
            FlexAvatarClient(server.address) as client:
        assert not client.server_info().limits.fitting_available
        code, details = _status(lambda: list(client.stub.FitAvatar(request, timeout=30)))
        assert code == grpc.StatusCode.UNIMPLEMENTED and "FitAvatar needs the PyTorch backend" in details
    with start_server(engine, make_config(max_avatars=1, warmup_sizes=((SIZE, SIZE),))) as server, \
            FlexAvatarClient(server.address) as client:
        limits = client.server_info().limits
        assert limits.fitting_available and limits.max_fit_steps == 1000 and limits.max_concurrent_fits == 1
        client.create_avatar(npy=scene["code_init"].numpy())
        code, details = _status(lambda: client.fit_avatar(*_obs_args(scene, slice(0, 1)),
                                                          init_code=scene["code_init"].numpy(), steps=2))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "the avatar store is full: 1 of 1 avatars" in details
        assert server.stats()["fits"] == {"running": 0, "completed": 0, "cancelled": 0, "failed": 0}  # refused first


def test_avatars_fit_command(scene, server, tmp_path, capsys):
    """`flexavatar avatars fit`: tracked inputs (.npz, images inside) -> FitAvatar -> the id and a summary line."""
    import json

    from flexrt.cli import main
    from flexrt.fitting.inputs import FitInputs, save_fit_inputs

    inputs = tmp_path / "views_input.npz"
    save_fit_inputs(inputs, FitInputs(scene["target_float"].numpy()[:2], scene["c2w"][:2], scene["K"][:2],
                                      scene["expr"][:2]))
    code = tmp_path / "init.npy"
    np.save(code, scene["code_init"].numpy()[:, None])  # the official [HT,1,D] layout
    previews = tmp_path / "previews"
    rc = main(["avatars", "fit", "--server", server.address, "--inputs", str(inputs), "--init-npy", str(code),
               "--steps", "2", "--preview-every", "1", "--previews", str(previews), "--name", "cli", "--json",
               "--no-progress"])
    assert rc == 0
    out, err = capsys.readouterr()
    record = json.loads(out)
    assert record["source"] == "fit" and record["name"] == "cli" and record["steps"] == 2 and len(record["losses"]) == 2
    assert record["init"] == "init_avatar_code_npy" and "PSNR on the inputs" in err and "dino: off" in err
    assert sorted(p.name[:8] for p in previews.glob("*.jpg")) == ["step0001", "step0002"]
    with FlexAvatarClient(server.address) as client:
        assert client.get_avatar(record["avatar_id"]).source == "fit"
    # a mistake is one line
    rc = main(["avatars", "fit", "--server", server.address, "--inputs", str(inputs), "--steps", "5000",
               "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "INVALID_ARGUMENT: steps 5000 is outside" in err and "\n" not in err


@pytest.mark.gpu
def test_fit_on_cuda_with_gsplat_while_a_stream_runs(scene):
    """On the GPU: the fit runs through gsplat on the engine's CUDA model while an Animate stream keeps getting
    every frame; the stored avatar animates closer to the targets than the initial code."""
    pytest.importorskip("gsplat", reason="this test checks the gsplat path of a fit (the `gpu` extra)")
    from flexrt.model.pipeline import build_pipeline
    from flexrt.runtime.engines import TorchEngine

    pipeline = build_pipeline("tiny")
    make_sensitive(pipeline.model)
    engine = TorchEngine(pipeline, device="cuda", precision="fp32")
    with start_server(engine, make_config(warmup_sizes=((SIZE, SIZE),), max_batch_size=4)) as server, \
            FlexAvatarClient(server.address) as client:
        init = client.create_avatar(npy=scene["code_init"].numpy())
        frames, failures = [], []

        def live():
            try:
                frames.extend(client.animate(init.avatar_id, [scene["expr"][0]] * 90, SIZE, SIZE, encoding="jpeg",
                                             fps=30, max_in_flight=2, decode=False, timeout=120))
            except Exception as exc:  # reported below
                failures.append(exc)

        thread = threading.Thread(target=live)
        thread.start()
        avatar, result = client.fit_avatar(*_obs_args(scene), init_avatar_id=init.avatar_id, steps=STEPS)
        thread.join(120)
        print(f"CUDA FitAvatar: {result.psnr_before:.2f} -> {result.psnr_after:.2f} dB in {result.fit_seconds:.2f} s; "
              f"live stream: {len(frames)} frames")
        assert not failures and len(frames) == 90
        assert result.rasterizer == "gsplat" and result.psnr_after >= result.psnr_before + 1.5
        fitted_anim, init_anim = _animate_psnr(client, avatar.avatar_id, scene), _animate_psnr(client, init.avatar_id, scene)
        assert (fitted_anim >= init_anim + 1.0).all()
