"""`flexavatar serve | stream | demo`.

    flexavatar serve --engines engines/ [--backend auto] [--device auto] [--port 50051] [--store avatars/]
    flexavatar serve --model tiny                       # a TorchEngine straight from a preset (no export)
    flexavatar stream --server 127.0.0.1:50051 --avatar ID --sequence seq.npz --out frames/ [--fps 30]
    flexavatar demo [--out demo_out] [--checkpoint ckpt.pt] [--device auto] [--width 128 --height 128]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger("flexrt.runtime.cli")

DEMO_PHOTO = "marble_sculpture"
DEMO_SEQUENCE = "EMO-1-shout+laugh"
BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt")


# ---------------------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------------------

def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def resolve_device(device: str) -> str:
    """'auto' | 'cpu' | 'cuda' -> 'cpu' or 'cuda'; 'cuda' without a visible GPU is an error, not a fallback."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise SystemExit(f"error: --device must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        picked = "cuda" if torch.cuda.is_available() else "cpu"
        logger.info("--device auto picked %s%s", picked,
                    f" ({torch.cuda.get_device_name(0)})" if picked == "cuda" else " (no CUDA device visible)")
        return picked
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested, but no CUDA device is visible (torch.cuda.is_available() "
                         "is False); use --device cpu or auto")
    return device


def find_shared_dir() -> Path | None:
    """The read-only reference data folder: $FLEXRT_SHARED, or shared/ beside the checkout or the cwd."""
    candidates = []
    if os.environ.get("FLEXRT_SHARED"):
        candidates.append(Path(os.environ["FLEXRT_SHARED"]))
    import flexrt

    repo = Path(flexrt.__file__).resolve().parents[1]
    candidates += [repo.parent / "shared", Path.cwd().parent / "shared", Path.cwd() / "shared"]
    for c in candidates:
        if (c / "reference" / "assets").is_dir():
            return c
    return None


def _read_token(args) -> str | None:
    if getattr(args, "token_file", None):
        return Path(args.token_file).read_text().strip()
    if getattr(args, "token_env", None):
        value = os.environ.get(args.token_env)
        if not value:
            raise SystemExit(f"error: --token-env {args.token_env}: the variable is not set")
        return value.strip()
    return None


def _add_auth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token-file", help="file holding the bearer token (tokens never go on the command line)")
    p.add_argument("--token-env", help="environment variable holding the bearer token")


@dataclass
class Sequence:
    expressions: np.ndarray  # [T,135] float32
    cam2world: np.ndarray | None  # [T,4,4] OpenCV head-centric
    intrinsics: np.ndarray | None  # [T,3,3] normalised
    name: str


def load_sequence(path: str | Path) -> Sequence:
    """A driving sequence .npz: expression_codes [T,135]; optional cam2world_head_centric [T,4,4] and pixel
    intrinsics [T,3,3] for image_size (default 512x512), converted here to normalised intrinsics."""
    with np.load(path) as z:
        if "expression_codes" not in z.files:
            raise SystemExit(f"error: {path} has no 'expression_codes' array (found {sorted(z.files)})")
        expressions = np.asarray(z["expression_codes"], dtype=np.float32)
        cam2world = np.asarray(z["cam2world_head_centric"], dtype=np.float32) if "cam2world_head_centric" in z.files else None
        intrinsics = None
        if cam2world is not None and "intrinsics" in z.files:
            size = z["image_size"] if "image_size" in z.files else np.array([512, 512])
            intrinsics = np.asarray(z["intrinsics"], dtype=np.float32).copy()
            intrinsics[:, 0, :] /= float(size[1])  # row 0 (fx, 0, cx) / width; image_size is (H, W)
            intrinsics[:, 1, :] /= float(size[0])  # row 1 (0, fy, cy) / height
            intrinsics[:, 2, :] = (0.0, 0.0, 1.0)
    if expressions.ndim != 2 or expressions.shape[1] != 135:
        raise SystemExit(f"error: {path}: expression_codes must be [T,135], got {list(expressions.shape)}")
    return Sequence(expressions, cam2world, intrinsics, Path(path).stem)


def neutral_expression() -> np.ndarray:
    """Zeros with the identity 6D rotation [1,0,0,0,1,0] in the eyes (x2), neck, jaw and global-rotation slots."""
    code = np.zeros(135, dtype=np.float32)
    for start in (100, 106, 114, 120, 126):
        code[start:start + 6] = (1, 0, 0, 0, 1, 0)
    return code


def synthetic_sequence(frames: int, fps: float = 30.0) -> Sequence:
    """A procedural driving sequence: the neutral code plus smooth sinusoids on exp[0:10] and a jaw that opens
    and closes (rotation about x, first two rows of the matrix as the 6D code)."""
    t = np.arange(frames, dtype=np.float32) / fps  # seconds
    codes = np.repeat(neutral_expression()[None], frames, axis=0)  # [T,135]
    k = np.arange(10, dtype=np.float32)
    codes[:, 0:10] = 1.5 * np.sin(2 * np.pi * (0.3 + 0.07 * k)[None] * t[:, None] + k[None])  # [T,10]
    angle = 0.15 * (1 - np.cos(2 * np.pi * 0.5 * t))  # [T] jaw opening, 0 .. 0.3 rad
    c, s = np.cos(angle), np.sin(angle)
    codes[:, 120:126] = np.stack([np.ones_like(c), 0 * c, 0 * c, 0 * c, c, -s], axis=1)
    return Sequence(codes.astype(np.float32), None, None, "synthetic")


def synthetic_photo(size: int = 512) -> np.ndarray:
    """A drawn head on white, uint8 [size,size,3] (for when no example photo is available)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(image)
    u = size / 512
    d.ellipse([136 * u, 70 * u, 376 * u, 420 * u], fill=(224, 180, 150))  # face
    d.chord([126 * u, 40 * u, 386 * u, 260 * u], 180, 360, fill=(70, 45, 30))  # hair
    d.rectangle([216 * u, 400 * u, 296 * u, 512 * u], fill=(214, 170, 140))  # neck
    for x in (200, 312):
        d.ellipse([(x - 22) * u, 200 * u, (x + 22) * u, 228 * u], fill=(255, 255, 255))
        d.ellipse([(x - 9) * u, 205 * u, (x + 9) * u, 223 * u], fill=(60, 40, 30))
    d.polygon([(256 * u, 230 * u), (240 * u, 300 * u), (272 * u, 300 * u)], fill=(205, 160, 130))
    d.arc([206 * u, 310 * u, 306 * u, 360 * u], 10, 170, fill=(150, 60, 60), width=max(1, int(6 * u)))
    return np.asarray(image)


class FrameWriter:
    """Writes frames to a folder of PNGs, or to an .mp4 when imageio with its ffmpeg plugin is installed."""

    def __init__(self, out: str | Path, fps: float):
        self.out = Path(out)
        self.mp4 = self.out.suffix.lower() == ".mp4"
        self._video = None
        if self.mp4:
            try:
                import imageio.v2 as imageio
                import imageio_ffmpeg  # noqa: F401
            except ImportError:
                raise SystemExit(f"error: writing {self.out} needs imageio and imageio-ffmpeg "
                                 "(pip install imageio imageio-ffmpeg); or pass a folder to get PNG frames") from None
            self.out.parent.mkdir(parents=True, exist_ok=True)
            # H.264 at the stream's rate; macro_block_size=1 keeps sizes that are not multiples of 16 as they are
            self._video = imageio.get_writer(self.out, fps=fps, codec="libx264", macro_block_size=1)
        else:
            self.out.mkdir(parents=True, exist_ok=True)

    def write(self, index: int, result) -> None:
        if self._video is not None:
            self._video.append_data(result.image)  # uint8 [H,W,3]
        elif result.encoding == "png":
            (self.out / f"frame_{index:05d}.png").write_bytes(result.data)  # already PNG
        else:
            from PIL import Image

            Image.fromarray(result.image).save(self.out / f"frame_{index:05d}.png", compress_level=1)

    def close(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None


def stream_sequence(client, avatar_id: str, sequence: Sequence, out: str | Path, *, width: int, height: int,
                    fps: float, encoding: str, camera: str, frames: int | None, max_in_flight: int | None,
                    progress: bool = True) -> tuple[list, dict]:
    """Stream a sequence, write its frames; -> (results, latency summary)."""
    from tqdm.auto import tqdm

    from .client import FrameInput, latency_summary

    count = len(sequence.expressions) if frames is None else min(frames, len(sequence.expressions))
    if camera == "sequence" and sequence.cam2world is None:
        raise SystemExit(f"error: --camera sequence: {sequence.name} has no cameras; use --camera default")
    if camera == "sequence" and sequence.intrinsics is None:
        raise SystemExit(f"error: --camera sequence: {sequence.name} has cameras but no intrinsics")

    def inputs():
        for i in range(count):
            if camera == "sequence":
                yield FrameInput(sequence.expressions[i], sequence.cam2world[i], sequence.intrinsics[i])
            else:
                yield FrameInput(sequence.expressions[i])

    writer = FrameWriter(out, fps or 30.0)  # fails before streaming when an .mp4 cannot be written
    results = []
    try:
        with tqdm(total=count, desc="stream", unit="frame", disable=not progress, file=sys.stderr) as bar:
            for result in client.animate(avatar_id, inputs(), width, height, encoding=encoding, fps=fps or None,
                                         max_in_flight=max_in_flight):
                writer.write(result.sequence, result)
                results.append(result)
                bar.update(result.sequence + 1 - bar.n)
                bar.set_postfix(ms=f"{result.latency_us / 1000:.1f}", dropped=result.dropped)
    finally:
        writer.close()
    return results, latency_summary(results)


# ---------------------------------------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------------------------------------

def build_engine(args):
    """--engines DIR -> load_engine(DIR, backend, device); --model NAME -> TorchEngine(load_official(NAME))."""
    device = resolve_device(args.device)
    if args.engines:
        from flexrt.runtime.engines import load_engine

        return load_engine(args.engines, backend=args.backend, device=device, precision=args.precision)
    if args.backend not in ("auto", "torch"):
        raise SystemExit(f"error: --model builds a PyTorch engine; --backend {args.backend} needs --engines DIR")
    from flexrt.model.pipeline import build_pipeline
    from flexrt.runtime.engines import TorchEngine

    if args.checkpoint is None:
        logger.warning("no --checkpoint: the %s model has seeded RANDOM weights (renders are not a real avatar)",
                       args.model)
    pipeline = build_pipeline(args.model, args.checkpoint, args.dinov2, args.template)  # model + DINOv2 encoder
    on_cuda = device == "cuda"
    precision = ("bf16" if on_cuda else "fp32") if args.precision == "auto" else args.precision
    # on a GPU: CUDA graphs replay the decoder, torch.compile fuses its small kernels (see docs/BENCHMARKS.md)
    return TorchEngine(pipeline, device=device, precision=precision, graphs="cuda" if on_cuda else "none",
                       compile=on_cuda)


def _server_config(args):
    from .limits import ServerConfig

    return ServerConfig(
        host=args.host, port=args.port, store_dir=args.store, max_width=args.max_size, max_height=args.max_size,
        max_streams=args.max_streams, max_stream_fps=args.max_stream_fps, max_batch_size=args.max_batch,
        max_batch_wait_ms=args.max_batch_wait_ms, pipeline_slots=args.pipeline_slots, jpeg=args.jpeg,
        metrics_port=args.metrics_port, rasterizer=args.rasterizer, auth_token=_read_token(args),
        tls_cert=args.tls_cert, tls_key=args.tls_key, shutdown_grace_s=args.grace, shutdown_drain_s=args.drain,
    ).validate()


def cmd_serve(args) -> int:
    from .server import serve

    _setup_logging(args.log_level)
    config = _server_config(args)
    engine = build_engine(args)
    serve(engine, config, ready=lambda port: print(f"flexavatar server listening on {config.host}:{port}", flush=True))
    return 0


# ---------------------------------------------------------------------------------------------------------
# stream
# ---------------------------------------------------------------------------------------------------------

def _client(args):
    from .client import FlexAvatarClient

    return FlexAvatarClient(args.server, token=_read_token(args), tls_root_cert=args.tls_ca,
                            tls_server_name=args.tls_server_name)


def cmd_stream(args) -> int:
    from .client import format_latency_table

    _setup_logging(args.log_level)
    sequence = load_sequence(args.sequence)
    with _client(args) as client:
        results, summary = stream_sequence(
            client, args.avatar, sequence, args.out, width=args.width, height=args.height, fps=args.fps,
            encoding=args.encoding, camera=args.camera, frames=args.frames,
            max_in_flight=args.max_in_flight or None, progress=not args.no_progress)
    print(format_latency_table(summary))
    print(f"wrote {len(results)} frames to {args.out}")
    if args.latency_json:
        Path(args.latency_json).write_text(json.dumps(summary, indent=2))
    return 0 if results else 1


# ---------------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------------

def cmd_demo(args) -> int:
    from flexrt.runtime.engines import load_engine

    from .client import FlexAvatarClient, format_latency_table
    from .limits import ServerConfig
    from .server import start_server

    _setup_logging(args.log_level)
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    default_size = 512 if device == "cuda" else 128  # small frames keep the CPU rasterizer interactive
    args.width, args.height = args.width or default_size, args.height or default_size

    # 1. engines for the default model
    if args.engines:
        engine_dir = Path(args.engines)
        print(f"[demo] using engines in {engine_dir}")
    else:
        from flexrt.export import export_engines

        engine_dir = out / "engines"
        config = args.config or ("flex1" if args.checkpoint else "tiny")
        print(f"[demo] exporting the {config!r} model to {engine_dir} "
              f"({'checkpoint ' + str(args.checkpoint) if args.checkpoint else 'random weights'})")
        export_engines(config=config, checkpoint=args.checkpoint, dinov2=args.dinov2, template=args.template,
                       out_dir=engine_dir,
                       precisions=("fp32",), tensorrt=False, max_batch=args.max_batch, progress=not args.no_progress)
    engine = load_engine(engine_dir, backend=args.backend, device=device)
    print(f"[demo] engine: {engine.info.describe()}")

    # 2. inputs: the example photo / driving sequence from the reference data, or synthetic ones
    shared = find_shared_dir()
    cam2world = intrinsics = None
    if args.image:
        photo, photo_name = Path(args.image).read_bytes(), args.image
    elif shared and (shared / "reference/assets/images" / f"{DEMO_PHOTO}.png").is_file():
        images = shared / "reference/assets/images"
        photo, photo_name = (images / f"{DEMO_PHOTO}.png").read_bytes(), str(images / f"{DEMO_PHOTO}.png")
        with np.load(images / f"{DEMO_PHOTO}_input.npz") as z:
            cam2world, intrinsics = z["input_cam2world"], z["input_intrinsics_normalized"]
    else:
        photo, photo_name = synthetic_photo(), "synthetic head drawing"
    if args.sequence:
        sequence = load_sequence(args.sequence)
    elif shared and (shared / "reference/assets/expressions" / f"{DEMO_SEQUENCE}.npz").is_file():
        sequence = load_sequence(shared / "reference/assets/expressions" / f"{DEMO_SEQUENCE}.npz")
    else:
        sequence = synthetic_sequence(args.frames or 60, fps=args.fps or 30.0)
    frames = min(args.frames or len(sequence.expressions), len(sequence.expressions))

    # 3. server on a free localhost port, avatar, stream
    config = ServerConfig(host="127.0.0.1", port=0, store_dir=str(out / "avatars"), max_batch_size=args.max_batch,
                          rasterizer=args.rasterizer)
    with start_server(engine, config) as server:
        print(f"[demo] server on {server.address}; rasterizer: {server.rasterizer}")
        with FlexAvatarClient(server.address) as client:
            t0 = time.perf_counter()
            avatar = client.create_avatar(image=photo, cam2world=cam2world, intrinsics=intrinsics, name="demo")
            create_ms = (time.perf_counter() - t0) * 1000
            print(f"[demo] avatar {avatar.avatar_id} from {photo_name} in {create_ms:.0f} ms")
            print(f"[demo] streaming {frames} frames of {sequence.name} at {args.width}x{args.height}, "
                  f"{args.fps or 'max'} fps")
            results, summary = stream_sequence(
                client, avatar.avatar_id, sequence, out / "frames", width=args.width, height=args.height,
                fps=args.fps, encoding="png", camera=args.camera, frames=frames,
                max_in_flight=args.max_in_flight or None, progress=not args.no_progress)
            info = client.server_info()
    report = {
        "summary": summary,
        "avatar": {"avatar_id": avatar.avatar_id, "source": photo_name, "create_ms": create_ms},
        "sequence": {"name": sequence.name, "frames": frames, "camera": args.camera},
        "stream": {"width": args.width, "height": args.height, "fps": args.fps, "max_in_flight": args.max_in_flight},
        "server": {"engine": info.engine_description, "rasterizer": info.rasterizer_backend, "model": info.model,
                   "batch_sizes": dict(info.stats.batch_sizes)},
        "wall_s": time.perf_counter() - t_start,
    }
    (out / "latency.json").write_text(json.dumps(report, indent=2))
    print(format_latency_table(summary))
    print(f"[demo] wrote {len(results)} frames to {out / 'frames'} and {out / 'latency.json'} "
          f"({report['wall_s']:.1f} s)")
    return 0 if results else 1


# ---------------------------------------------------------------------------------------------------------
# parsers
# ---------------------------------------------------------------------------------------------------------

def add_parser(subparsers) -> None:
    # serve
    p = subparsers.add_parser("serve", help="run the gRPC streaming server",
                              description="Run the flexavatar.v1 gRPC server (Ctrl-C / SIGTERM: graceful shutdown).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--engines", help="engine directory from `flexavatar export-engines`")
    src.add_argument("--model", help="build a PyTorch engine from a preset ('tiny', 'flex1') or model_config.json")
    p.add_argument("--checkpoint", help="with --model: FLEX-1 weights (.pt/.safetensors); default: random weights")
    p.add_argument("--dinov2", help="with --model: DINOv2 weights; default: random weights")
    p.add_argument("--template", help="with --model: head template OBJ or template_samples.npz (FLEX-1: the official "
                                      "gghead_template.obj); default: the project's own head")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="engine precision (onnxruntime: fp32/fp16, torch: fp32/bf16); auto = bf16 for the torch "
                        "backend on a GPU (render PSNR vs fp32 in docs/BENCHMARKS.md), else fp32")
    p.add_argument("--rasterizer", default="auto", choices=("auto", "cpu", "cupy"),
                   help="auto = the CuPy/CUDA kernels with a CUDA engine, the PyTorch reference on the CPU")
    p.add_argument("--jpeg", default="auto", choices=("auto", "cuda", "cpu"),
                   help="where JPEG frames are encoded: cuda = on the GPU next to the rendered frame "
                        "(kernels.jpeg), cpu = Pillow; auto = cuda when frames are rendered on the GPU")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--store", default="avatars", help="avatar store directory (kept across restarts)")
    p.add_argument("--max-size", type=int, default=1024, help="largest frame width/height")
    p.add_argument("--max-streams", type=int, default=64, help="concurrent Animate streams (one more gets "
                                                                "RESOURCE_EXHAUSTED)")
    p.add_argument("--max-stream-fps", type=float, default=0.0, help="0 = unlimited")
    p.add_argument("--max-batch", type=int, default=64, help="most frames in one batch (one decode call)")
    p.add_argument("--max-batch-wait-ms", type=float, default=1.0,
                   help="with the GPU idle, how long the oldest frame waits for company at most")
    p.add_argument("--pipeline-slots", type=int, default=2,
                   help="batches in flight at once (batch k+1 decodes while batch k renders and copies)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (off by default)")
    p.add_argument("--tls-cert", help="PEM certificate chain (with --tls-key: serve TLS)")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--grace", type=float, default=5.0, help="seconds in-flight calls get at shutdown")
    p.add_argument("--drain", type=float, default=0.0, help="seconds NOT_SERVING is reported before refusing calls")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    _add_auth_args(p)
    p.set_defaults(func=cmd_serve)

    # stream
    p = subparsers.add_parser("stream", help="stream a driving sequence to a server and save the frames",
                              description="Stream an expression sequence (.npz) and write frames + latency stats.")
    p.add_argument("--server", required=True, help="HOST:PORT")
    p.add_argument("--avatar", required=True, help="avatar id")
    p.add_argument("--sequence", required=True, help=".npz with expression_codes [T,135] (+ cameras)")
    p.add_argument("--out", required=True, help="folder for PNG frames, or a .mp4 file (needs imageio-ffmpeg)")
    p.add_argument("--fps", type=float, default=30.0, help="send rate; 0 = as fast as the server answers")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--encoding", default="png", choices=("raw_rgb8", "jpeg", "png"))
    p.add_argument("--camera", default="default", choices=("default", "sequence"),
                   help="default: the server's frontal camera; sequence: the sequence's per-frame cameras")
    p.add_argument("--frames", type=int, default=None, help="stream only the first N frames")
    p.add_argument("--max-in-flight", type=int, default=2,
                   help="frames sent but unanswered; 0 = unlimited (the server then drops stale frames)")
    p.add_argument("--latency-json", help="also write the latency summary here")
    p.add_argument("--tls-ca", help="PEM of the CA that signed the server certificate (enables TLS)")
    p.add_argument("--tls-server-name", help="expected name in the server certificate")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    _add_auth_args(p)
    p.set_defaults(func=cmd_stream)

    # demo
    p = subparsers.add_parser("demo", help="export, serve, create an avatar and stream, all on localhost",
                              description="End-to-end demo: export engines, start a server, create an avatar from "
                                          "an example photo, stream a driving sequence, save frames and latency.")
    p.add_argument("--out", default="demo_out", help="output folder (engines/, avatars/, frames/, latency.json)")
    p.add_argument("--checkpoint", help="FLEX-1 weights; without it the tiny preset with random weights is used")
    p.add_argument("--dinov2", help="DINOv2 weights for the encoder")
    p.add_argument("--template", help="head template OBJ or template_samples.npz (FLEX-1: the official "
                                      "gghead_template.obj); default: the project's own head")
    p.add_argument("--config", help="model preset or model_config.json (default: tiny, or flex1 with --checkpoint)")
    p.add_argument("--engines", help="use this engine directory instead of exporting")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--rasterizer", default="auto", choices=("auto", "cpu", "cupy"),
                   help="auto = the CuPy/CUDA kernels with a CUDA engine, the PyTorch reference on the CPU")
    p.add_argument("--jpeg", default="auto", choices=("auto", "cuda", "cpu"),
                   help="where JPEG frames are encoded: cuda = on the GPU next to the rendered frame "
                        "(kernels.jpeg), cpu = Pillow; auto = cuda when frames are rendered on the GPU")
    p.add_argument("--width", type=int, default=None, help="frame width (default: 128 on CPU, 512 on CUDA)")
    p.add_argument("--height", type=int, default=None, help="frame height (default: 128 on CPU, 512 on CUDA)")
    p.add_argument("--frames", type=int, default=None, help="frames to stream (default: the whole sequence)")
    p.add_argument("--fps", type=float, default=30.0, help="send rate; 0 = as fast as the server answers")
    p.add_argument("--max-in-flight", type=int, default=2)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--camera", default="default", choices=("default", "sequence"))
    p.add_argument("--image", help="photo to build the avatar from (default: the reference example, or a drawing)")
    p.add_argument("--sequence", help="driving sequence .npz (default: the reference EMO-1, or a synthetic one)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_demo)
