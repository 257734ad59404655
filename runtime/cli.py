"""`flexavatar serve | stream | demo | avatars`.

    flexavatar serve --engines engines/ [--backend auto] [--device auto] [--port 50051] [--store avatars/]
    flexavatar serve --model tiny                       # a TorchEngine straight from a preset (no export)
    flexavatar avatars create --image photo.png [--camera-npz cam.npz] [--name NAME]   # prints the avatar id
    flexavatar avatars create --npy code.npy | list | get ID | delete ID
    flexavatar avatars fit --inputs a_input.npz b_input.npz [--init ID] [--steps 200]    # FitAvatar; prints the id
    flexavatar stream --avatar ID --sequence seq.npz|synthetic --out frames/|video.mp4 [--fps 30]
    flexavatar demo [--out demo_out] [--checkpoint ckpt.pt] [--device auto] [--width 128 --height 128]

Every command ends with one line "error: ..." (exit code 1) for a mistake it can name: a missing or malformed
file, an unreachable server, an unknown avatar, a port in use. --debug shows the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .sequences import (  # noqa: F401  (re-exported: flexrt.runtime.cli.load_sequence etc. are public)
    Sequence,
    blink_sequence,
    load_sequence,
    neutral_expression,
    save_sequence,
    synthetic_sequence,
    turntable_sequence,
    widest_jaw_frame,
)

logger = logging.getLogger("flexrt.runtime.cli")

DEMO_PHOTO = "marble_sculpture"
DEMO_SEQUENCE = "EMO-1-shout+laugh"
BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt")
DEFAULT_SERVER = "127.0.0.1:50051"
MiB = 1 << 20


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


def _need_file(path: str | None, flag: str) -> Path | None:
    """A path the user named must exist: one clear line before any slow step otherwise."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise SystemExit(f"error: {flag} {path}: no such file or directory")
    return p


def _read_token(args) -> str | None:
    if getattr(args, "token_file", None):
        path = _need_file(args.token_file, "--token-file")
        token = path.read_text().strip()
        if not token:
            raise SystemExit(f"error: --token-file {args.token_file} is empty")
        return token
    if getattr(args, "token_env", None):
        value = os.environ.get(args.token_env)
        if not value:
            raise SystemExit(f"error: --token-env {args.token_env}: the variable is not set")
        return value.strip()
    return None


def _add_auth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token-file", help="file holding the bearer token (tokens never go on the command line)")
    p.add_argument("--token-env", metavar="VAR", help="environment variable holding the bearer token")


def _add_client_args(p: argparse.ArgumentParser) -> None:
    """How a client command reaches a server: address, auth, TLS."""
    p.add_argument("--server", default=DEFAULT_SERVER, metavar="HOST:PORT",
                   help="the flexavatar server (the default is where `flexavatar serve` listens)")
    _add_auth_args(p)
    p.add_argument("--tls-ca", help="PEM of the CA that signed the server certificate (enables TLS)")
    p.add_argument("--tls-server-name", help="name to check in the server certificate instead of the host in --server")


def _add_common_args(p: argparse.ArgumentParser, log_level: str) -> None:
    p.add_argument("--log-level", default=log_level, choices=("debug", "info", "warning", "error"),
                   help="log verbosity")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error instead of one line")


def _client(args):
    from .client import FlexAvatarClient

    _need_file(getattr(args, "tls_ca", None), "--tls-ca")
    return FlexAvatarClient(args.server, token=_read_token(args), tls_root_cert=args.tls_ca,
                            tls_server_name=args.tls_server_name)


def _rpc_error_line(err, server: str) -> str:
    """A failed call -> one line naming the server, the status and what to do."""
    import grpc

    code, details = err.code(), (err.details() or "").strip()
    if code == grpc.StatusCode.UNAVAILABLE and ("connect" in details.lower() or "dns" in details.lower()):
        return (f"cannot reach a flexavatar server at {server} ({details.splitlines()[0] if details else 'UNAVAILABLE'})"
                "; is `flexavatar serve` running there, on that port?")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"{server}: {details}; pass the server's token with --token-file or --token-env"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and not details:
        details = "no answer in time"
    return f"{server}: {code.name}: {details}"


def _one_line_errors(command):
    """User mistakes and server refusals -> 'error: ...' on stderr and exit code 1 (130 for Ctrl-C); the
    traceback only with --debug."""

    @functools.wraps(command)
    def run(args) -> int:
        import grpc

        debug = getattr(args, "debug", False)
        try:
            return command(args)
        except KeyboardInterrupt:
            if debug:
                raise
            print("interrupted", file=sys.stderr)
            return 130
        except grpc.RpcError as err:
            if debug or not hasattr(err, "code"):
                raise
            print(f"error: {_rpc_error_line(err, getattr(args, 'server', 'the server'))}", file=sys.stderr)
            return 1
        except (ValueError, OSError, RuntimeError) as exc:  # the library's errors say what was expected
            if debug:
                raise
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:
            if debug:
                raise
            print(f"error: unexpected {type(exc).__name__}: {exc} (run again with --debug for the traceback)",
                  file=sys.stderr)
            return 1

    return run


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


# ---------------------------------------------------------------------------------------------------------
# writing frames
# ---------------------------------------------------------------------------------------------------------

def _ffmpeg_exe() -> str | None:
    """The ffmpeg of the imageio-ffmpeg wheel (the `video` extra), else one on PATH."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # not installed, or its binary missing
        return shutil.which("ffmpeg")


class FrameWriter:
    """Writes frames to a folder of PNGs (frame_00000.png, ... numbered without gaps) or to an H.264 .mp4.

    An .mp4 goes through an ffmpeg process that is started here, before any frame arrives, and without fork():
    subprocess.Popen without preexec_fn creates the child with vfork()/posix_spawn, which run no fork handlers.
    (imageio-ffmpeg's writer passes preexec_fn=os.setpgrp, which forces a real fork(); in a process where gRPC's
    threads are running, gRPC's fork handlers then run around it -- "Other threads are currently calling into
    gRPC, skipping fork() handlers" -- and the run could end in BrokenPipeError on ffmpeg's stdin.)"""

    def __init__(self, out: str | Path, fps: float, width: int, height: int):
        self.out = Path(out)
        self.mp4 = self.out.suffix.lower() == ".mp4"
        self.width, self.height = width, height
        self.count = 0
        self._ffmpeg: subprocess.Popen | None = None
        if not self.mp4:
            if self.out.exists() and not self.out.is_dir():
                raise SystemExit(f"error: --out {self.out} is a file; give a folder for PNG frames or a .mp4 path")
            self.out.mkdir(parents=True, exist_ok=True)
            return
        exe = _ffmpeg_exe()
        if exe is None:
            raise SystemExit(f"error: writing {self.out} needs ffmpeg: pip install imageio-ffmpeg (the `video` extra) "
                             "or put ffmpeg on PATH; or pass a folder to get PNG frames")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._log = tempfile.TemporaryFile()  # ffmpeg's messages, shown when it fails
        command = [
            exe, "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "-",
            # H.264 in yuv420p (what players expect) needs even sizes: odd ones get one white pixel row/column
            "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2:color=white", "-c:v", "libx264", "-pix_fmt", "yuv420p",
            "-movflags", "+faststart", str(self.out),
        ]
        # start_new_session: Ctrl-C reaches only this process, which then closes ffmpeg's input so the file is
        # finished (setsid in the child still allows vfork)
        self._ffmpeg = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log,
                                        start_new_session=True)

    def write(self, result) -> None:
        """The next frame (an AnimateResult); frames are numbered in the order they are written."""
        if (result.width, result.height) != (self.width, self.height):
            raise RuntimeError(f"frame {result.sequence} is {result.width}x{result.height}, expected "
                               f"{self.width}x{self.height}")
        if self._ffmpeg is not None:
            try:
                self._ffmpeg.stdin.write(np.ascontiguousarray(result.image, dtype=np.uint8).tobytes())  # [H,W,3]
            except BrokenPipeError:
                self.close()  # raises with ffmpeg's own message when it failed
                raise RuntimeError(f"ffmpeg stopped reading frames for {self.out}") from None
        elif result.encoding == "png":
            (self.out / f"frame_{self.count:05d}.png").write_bytes(result.data)  # already PNG
        else:
            from PIL import Image

            Image.fromarray(result.image).save(self.out / f"frame_{self.count:05d}.png", compress_level=1)
        self.count += 1

    def close(self) -> None:
        """Finish the file; raises RuntimeError with ffmpeg's last message when it failed."""
        if self._ffmpeg is None:
            return
        ffmpeg, self._ffmpeg = self._ffmpeg, None
        with contextlib.suppress(BrokenPipeError):
            ffmpeg.stdin.close()
        if ffmpeg.wait(timeout=120) != 0:
            self._log.seek(0)
            lines = self._log.read().decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"ffmpeg failed writing {self.out} (exit code {ffmpeg.returncode}): "
                               f"{lines[-1] if lines else 'no message'}")
        self._log.close()


def stream_sequence(client, avatar_id: str, sequence: Sequence, out: str | Path, *, width: int, height: int,
                    fps: float, encoding: str, camera: str, frames: int | None, max_in_flight: int | None = 1,
                    progress: bool = True, writer: FrameWriter | None = None,
                    resume_s: float = 0.0) -> tuple[list, dict]:
    """Stream a sequence and write its frames; -> (results, latency summary). ``resume_s``: as
    FlexAvatarClient.animate (reopen the stream after its replica died).

    max_in_flight 1 (the default) is lossless: the next frame is sent once the previous one has arrived, so the
    server never holds two frames of this stream and never drops one (latest wins only drops a frame that waits
    while a newer one arrives). With more in flight, or a server --max-stream-fps, frames can be dropped: they are
    reported on stderr and in the summary ("dropped_sequences"), and the files stay numbered without gaps."""
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

    writer = writer or FrameWriter(out, fps or 30.0, width, height)  # an .mp4's ffmpeg starts here
    results = []
    # the bar only on a terminal (None = tqdm's check), and it does not stay behind an error message
    bar = tqdm(total=count, desc="stream", unit="frame", disable=None if progress else True, file=sys.stderr)
    try:
        for result in client.animate(avatar_id, inputs(), width, height, encoding=encoding, fps=fps or None,
                                     max_in_flight=max_in_flight, resume_s=resume_s):
            writer.write(result)
            results.append(result)
            bar.update(result.sequence + 1 - bar.n)
            bar.set_postfix(ms=f"{result.latency_us / 1000:.1f}", dropped=result.dropped)
        bar.close()
    except BaseException:
        bar.leave = False
        bar.close()
        if results:
            print(f"stream ended early: {len(results)} of {count} frames arrived and were written to {out}",
                  file=sys.stderr)
        raise
    finally:
        writer.close()
    summary = latency_summary(results)
    received = {r.sequence for r in results}
    summary["dropped_sequences"] = [s for s in range(count) if s not in received]
    if summary["dropped_sequences"]:
        dropped = summary["dropped_sequences"]
        shown = ", ".join(map(str, dropped[:10])) + (", ..." if len(dropped) > 10 else "")
        print(f"WARNING: the server dropped {len(dropped)} of {count} frames (sequences {shown}); {out} has the "
              f"{len(results)} that arrived, numbered without gaps. --max-in-flight 1 sends each frame after the "
              "previous one arrived and loses none.", file=sys.stderr)
    return results, summary


# ---------------------------------------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------------------------------------

def build_engine(args):
    """--engines DIR -> load_engine(DIR, backend, device); --model NAME -> TorchEngine(load_official(NAME))."""
    device = resolve_device(args.device)
    fp8, residual = getattr(args, "fp8", "auto"), getattr(args, "residual", "auto")
    upsampler = getattr(args, "upsampler", "auto")
    if args.engines:
        from flexrt.runtime.engines import load_engine

        try:
            return load_engine(args.engines, backend=args.backend, device=device, precision=args.precision, fp8=fp8,
                               residual=residual, upsampler=upsampler)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
    if args.backend not in ("auto", "torch"):
        raise SystemExit(f"error: --model builds a PyTorch engine; --backend {args.backend} needs --engines DIR")
    from flexrt.model.pipeline import build_pipeline
    from flexrt.runtime.engines import TorchEngine
    from flexrt.runtime.engines.torch_engine import fp8_capable, resolve_decoder_options

    if args.checkpoint is None:
        logger.warning("no --checkpoint: the %s model has seeded RANDOM weights (renders are not a real avatar)",
                       args.model)
    pipeline = build_pipeline(args.model, args.checkpoint, args.dinov2, args.template)  # model + DINOv2 encoder
    on_cuda = device == "cuda"
    precision = ("bf16" if on_cuda else "fp32") if args.precision == "auto" else args.precision
    fp8, residual, upsampler, why = resolve_decoder_options(device, precision, fp8, residual, upsampler)
    if why:
        logger.info("decoder: %s", why)
    if (fp8 != "off" or residual != "fp32" or upsampler == "fp8") and precision != "bf16":
        raise SystemExit(f"error: --fp8 {fp8} / --residual {residual} / --upsampler {upsampler} need the bf16 decoder "
                         f"(--precision bf16 or auto on a GPU); this engine is {precision}")
    if fp8 != "off" and not fp8_capable(device):
        raise SystemExit(f"error: --fp8 {fp8} needs a CUDA GPU with FP8 tensor cores (compute capability >= 8.9: Ada, "
                         "Hopper); use --fp8 off")
    if upsampler == "fp8" and not fp8_capable(device):
        raise SystemExit("error: --upsampler fp8 needs a CUDA GPU with FP8 tensor cores (compute capability >= 8.9: "
                         "Ada, Hopper); use --upsampler bf16")
    # --fp8 fused without Triton, or with --residual fp32: TorchEngine / deploy_decoder refuse it in one line
    # on a GPU: CUDA graphs replay the decoder, torch.compile fuses its small kernels (see docs/BENCHMARKS.md)
    return TorchEngine(pipeline, device=device, precision=precision, graphs="cuda" if on_cuda else "none",
                       compile=on_cuda, fp8=fp8, residual=residual, upsampler=upsampler)


def _server_config(args):
    from .limits import ServerConfig

    return ServerConfig(
        host=args.host, port=args.port, store_dir=args.store, max_width=args.max_size, max_height=args.max_size,
        max_streams=args.max_streams, max_pending_streams=args.max_pending_streams,
        pending_grace_s=args.pending_grace, config_timeout_s=args.config_timeout,
        stream_idle_timeout_s=args.idle_timeout,
        max_message_bytes=int(args.max_message_mib * MiB), max_stream_fps=args.max_stream_fps,
        max_stream_messages_per_s=args.max_stream_messages_per_s, max_avatars=args.max_avatars,
        max_store_bytes=int(args.max_store_mib * MiB), max_photo_pixels=int(args.max_photo_megapixels * 1e6),
        photo_workers=args.photo_workers, max_concurrent_creates=args.max_concurrent_creates,
        max_batch_size=args.max_batch, max_batch_wait_ms=args.max_batch_wait_ms, encode_workers=args.encode_workers,
        pipeline_slots=args.pipeline_slots, jpeg=args.jpeg, metrics_port=args.metrics_port, web_port=args.web_port,
        rasterizer=args.rasterizer, auth_token=_read_token(args), tls_cert=args.tls_cert, tls_key=args.tls_key,
        shutdown_grace_s=args.grace, shutdown_drain_s=args.drain,
        max_fit_observations=args.max_fit_observations, max_fit_resolution=args.max_fit_resolution,
        max_fit_steps=args.max_fit_steps, fit_preview_every=args.fit_preview_every,
        max_concurrent_fits=args.max_concurrent_fits, fit_dino_loss_weights=args.fit_dino_loss_weights,
    ).validate()


def _check_port_free(host: str, port: int) -> None:
    """One clear line when the port is taken, before the engine is built (gRPC alone only logs it)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SystemExit(f"error: --host {host}: cannot resolve it ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: only a live listener conflicts
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == 98:  # EADDRINUSE
                raise SystemExit(f"error: port {port} on {host} is already in use (another flexavatar serve?); "
                                 "stop it or pick another --port") from None
            raise SystemExit(f"error: cannot listen on {host}:{port}: {exc.strerror}") from None


def cmd_serve(args) -> int:
    _setup_logging(args.log_level)
    for path, flag in ((args.engines, "--engines"), (args.checkpoint, "--checkpoint"), (args.dinov2, "--dinov2"),
                       (args.template, "--template"), (args.tls_cert, "--tls-cert"), (args.tls_key, "--tls-key"),
                       (args.fit_dino_loss_weights, "--fit-dino-loss-weights")):
        _need_file(path, flag)
    config = _server_config(args)  # every limit checked before the (slow) engine build
    _check_port_free(config.host, config.port)
    if config.web_port is not None:
        _check_port_free(config.host, config.web_port)
    from .store import StoreUnavailable, open_store

    try:  # the database is reachable (or the directory usable) before the (slow) engine build
        store = open_store(config.store_dir)
    except (StoreUnavailable, ValueError, RuntimeError, OSError) as exc:
        raise SystemExit(f"error: --store: {exc}") from None
    from .server import serve  # torch and the model: after every cheap check

    engine = build_engine(args)
    serve(engine, config, store=store, ready=lambda port: print(f"flexavatar server listening on {config.host}:{port}", flush=True))
    return 0


# ---------------------------------------------------------------------------------------------------------
# stream
# ---------------------------------------------------------------------------------------------------------

def cmd_stream(args) -> int:
    from .client import format_latency_table
    from .store import is_valid_avatar_id

    _setup_logging(args.log_level)
    # everything local is checked before the server is contacted, and an .mp4's ffmpeg starts before gRPC does
    if not is_valid_avatar_id(args.avatar):
        raise SystemExit(f"error: --avatar {args.avatar!r} is not an avatar id (32 lowercase hex characters, as "
                         "`flexavatar avatars create` and `avatars list` print them)")
    if args.frames is not None and args.frames < 1:
        raise SystemExit(f"error: --frames must be >= 1, got {args.frames}")
    sequence = load_sequence(args.sequence, frames=args.frames, cameras=args.camera == "sequence")
    writer = FrameWriter(args.out, args.fps or 30.0, args.width, args.height)
    try:
        client = _client(args)
    except BaseException:
        writer.close()
        raise
    with client:
        results, summary = stream_sequence(
            client, args.avatar, sequence, args.out, width=args.width, height=args.height, fps=args.fps,
            encoding=args.encoding, camera=args.camera, frames=args.frames,
            max_in_flight=args.max_in_flight or None, progress=not args.no_progress, writer=writer,
            resume_s=args.resume_s)
    print(format_latency_table(summary))
    print(f"wrote {len(results)} frames to {args.out}")
    if args.latency_json:
        Path(args.latency_json).write_text(json.dumps(summary, indent=2))
    return 0 if results else 1


# ---------------------------------------------------------------------------------------------------------
# avatars
# ---------------------------------------------------------------------------------------------------------

def _avatar_dict(avatar) -> dict:
    return {"avatar_id": avatar.avatar_id, "name": avatar.name, "source": avatar.source,
            "num_head_tokens": avatar.num_head_tokens, "hidden_dim": avatar.hidden_dim,
            "created_unix_s": avatar.created_unix_s, "model": avatar.model}


def _avatar_line(avatar) -> str:
    from .limits import log_safe

    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(avatar.created_unix_s))
    return (f"{avatar.avatar_id}  {created}  {avatar.source:<5}  [{avatar.num_head_tokens},{avatar.hidden_dim}]  "
            f"{log_safe(avatar.name or '-', 40)}  {log_safe(avatar.model, 60)}")


def _check_id(avatar_id: str) -> str:
    from .store import is_valid_avatar_id

    if not is_valid_avatar_id(avatar_id):
        raise SystemExit(f"error: {avatar_id!r} is not an avatar id (32 lowercase hex characters, as "
                         "`flexavatar avatars list` prints them)")
    return avatar_id


def _read_photo(path: str) -> bytes:
    """The photo's bytes, after the checks the server makes from the image header (PNG/JPEG, square)."""
    import io

    from PIL import Image, UnidentifiedImageError

    from .codec import check_image_header

    data = _need_file(path, "--image").read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            check_image_header(image, max_pixels=2**62, square=True)
    except UnidentifiedImageError:
        raise SystemExit(f"error: --image {path}: not a PNG or JPEG image") from None
    except ValueError as exc:
        raise SystemExit(f"error: --image {path}: {exc}") from None
    return data


def _read_camera(path: str) -> tuple[np.ndarray, np.ndarray]:
    """--camera-npz: input_cam2world [4,4] and input_intrinsics_normalized [3,3] (the reference
    <photo>_input.npz layout; docs/SEQUENCES.md)."""
    try:
        with np.load(_need_file(path, "--camera-npz"), allow_pickle=False) as z:
            c2w = np.asarray(z["input_cam2world"], dtype=np.float32)
            K = np.asarray(z["input_intrinsics_normalized"], dtype=np.float32)
    except KeyError as exc:
        raise SystemExit(f"error: --camera-npz {path}: no {exc} array (needs input_cam2world [4,4] and "
                         "input_intrinsics_normalized [3,3])") from None
    except Exception as exc:
        raise SystemExit(f"error: --camera-npz {path}: not a readable .npz file ({type(exc).__name__})") from None
    if c2w.shape != (4, 4) or K.shape != (3, 3) or not (np.isfinite(c2w).all() and np.isfinite(K).all()):
        raise SystemExit(f"error: --camera-npz {path}: needs finite input_cam2world [4,4] and "
                         f"input_intrinsics_normalized [3,3], got {list(c2w.shape)} and {list(K.shape)}")
    return c2w, K


def cmd_avatars(args) -> int:
    from .store import check_avatar_name, parse_avatar_code_npy

    _setup_logging(args.log_level)
    if args.action == "create":
        check_avatar_name(args.name)
        if args.image:
            source = dict(image=_read_photo(args.image))
            if args.camera_npz:
                source["cam2world"], source["intrinsics"] = _read_camera(args.camera_npz)
        else:
            if args.camera_npz:
                raise SystemExit("error: --camera-npz goes with --image (an avatar code needs no camera)")
            data = _need_file(args.npy, "--npy").read_bytes()
            try:
                parse_avatar_code_npy(data)
            except ValueError as exc:
                raise SystemExit(f"error: --npy {args.npy}: {exc}") from None
            source = dict(npy=data)
        with _client(args) as client:
            avatar = client.create_avatar(name=args.name, **source)
        print(json.dumps(_avatar_dict(avatar)) if args.json else avatar.avatar_id)
    elif args.action == "list":
        with _client(args) as client:
            avatars = client.list_avatars()
        if args.json:
            print(json.dumps([_avatar_dict(a) for a in avatars], indent=1))
        else:
            for avatar in avatars:
                print(_avatar_line(avatar))
            print(f"{len(avatars)} avatars on {args.server}", file=sys.stderr)
    elif args.action == "get":
        with _client(args) as client:
            avatar = client.get_avatar(_check_id(args.avatar_id))
        print(json.dumps(_avatar_dict(avatar)) if args.json else _avatar_line(avatar))
    elif args.action == "fit":
        return _fit_on_server(args)
    else:  # delete
        with _client(args) as client:
            client.delete_avatar(_check_id(args.avatar_id))
        print(f"deleted {args.avatar_id}")
    return 0


def _fit_on_server(args) -> int:
    """`avatars fit`: tracked inputs (flexrt.fitting.inputs) -> FitAvatar with a progress bar -> the new id."""
    from tqdm.auto import tqdm

    from flexrt.fitting.inputs import load_fit_inputs

    from .store import check_avatar_name

    check_avatar_name(args.name)
    for path in args.inputs:
        _need_file(path, "--inputs")
    _need_file(args.video, "--video")
    init = {}
    if args.init:
        init["init_avatar_id"] = _check_id(args.init)
    elif args.init_npy:
        init["init_code"] = _need_file(args.init_npy, "--init-npy").read_bytes()
    inputs = load_fit_inputs(args.inputs, video=args.video, max_frames=args.max_frames)  # FitInputError: one line
    previews = Path(args.previews) if args.previews else None
    if previews is not None:
        previews.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=None, desc="fit", unit="step", disable=True if args.no_progress else None, file=sys.stderr)

    def on_progress(p) -> None:
        bar.total = p.steps
        bar.update(p.step - bar.n)
        bar.set_postfix(loss=f"{p.loss:.4f}", psnr=f"{p.psnr:.2f}")
        if previews is not None and p.preview_jpeg:
            (previews / f"step{p.step:04d}_view{p.view}.jpg").write_bytes(p.preview_jpeg)

    try:
        with _client(args) as client:
            avatar, result = client.fit_avatar(
                inputs.images, inputs.cam2world, inputs.intrinsics, inputs.expression_codes, name=args.name,
                steps=args.steps, expression_offsets=not args.no_expression, seed=args.seed,
                preview_every=args.preview_every, resolution=args.resolution, on_progress=on_progress, **init)
    finally:
        bar.close()
    terms = "; ".join(f"{k}: {v}" for k, v in sorted(result.loss_terms.items()))
    print(f"fitted {inputs.n} observation(s) at {result.resolution}x{result.resolution}, {result.steps} steps in "
          f"{result.fit_seconds:.1f} s ({result.rasterizer}; initial code: {result.init}); PSNR on the inputs "
          f"{result.psnr_before:.2f} -> {result.psnr_after:.2f} dB; {terms}", file=sys.stderr)
    if args.json:
        print(json.dumps({**_avatar_dict(avatar), "psnr_before": result.psnr_before,
                          "psnr_after": result.psnr_after, "steps": result.steps, "init": result.init,
                          "loss_terms": dict(result.loss_terms), "losses": list(result.losses)}))
    else:
        print(avatar.avatar_id)
    return 0


# ---------------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------------

def cmd_demo(args) -> int:
    _setup_logging(args.log_level)
    t_start = time.perf_counter()
    out = Path(args.out)
    for path, flag in ((args.engines, "--engines"), (args.checkpoint, "--checkpoint"), (args.dinov2, "--dinov2"),
                       (args.template, "--template")):
        _need_file(path, flag)
    if args.turntable < 0:
        raise SystemExit(f"error: --turntable is a number of frames (0 = none), got {args.turntable}")
    if args.blink < 0 or 0 < args.blink < 3:
        raise SystemExit(f"error: --blink is a number of frames, 0 (none) or at least 3, got {args.blink}")

    # 1. inputs first (a mistake there costs no export): the photo and driving sequence given, the reference
    #    data's examples, or synthetic ones
    shared = find_shared_dir()
    cam2world = intrinsics = None
    shipped_weights = None
    if args.checkpoint is None and not args.engines and (args.config or "tiny") == "tiny" \
            and args.template is None and not args.random_weights:
        from flexrt.training.shipped import shipped_checkpoint

        shipped_weights = shipped_checkpoint()  # the project's own model, trained on its procedural head corpus
    if args.image:
        photo, photo_name = _read_photo(args.image), args.image
    elif shipped_weights is not None:  # the shipped model has only seen procedural heads: a person it never saw
        from flexrt.training.shipped import demo_photo

        photo, cam2world, intrinsics, photo_name = demo_photo()
    elif shared and (shared / "reference/assets/images" / f"{DEMO_PHOTO}.png").is_file():
        images = shared / "reference/assets/images"
        photo, photo_name = (images / f"{DEMO_PHOTO}.png").read_bytes(), str(images / f"{DEMO_PHOTO}.png")
        with np.load(images / f"{DEMO_PHOTO}_input.npz") as z:
            cam2world, intrinsics = z["input_cam2world"], z["input_intrinsics_normalized"]
    else:
        photo, photo_name = synthetic_photo(), "synthetic head drawing"
    if args.sequence:
        sequence = load_sequence(args.sequence, frames=args.frames, cameras=args.camera == "sequence")
    elif shared and (shared / "reference/assets/expressions" / f"{DEMO_SEQUENCE}.npz").is_file():
        sequence = load_sequence(shared / "reference/assets/expressions" / f"{DEMO_SEQUENCE}.npz")
    else:
        sequence = synthetic_sequence(args.frames or 60, fps=args.fps or 30.0, cameras=args.camera == "sequence")
    frames = min(args.frames or len(sequence.expressions), len(sequence.expressions))
    if args.camera == "sequence" and sequence.intrinsics is None:
        raise SystemExit(f"error: --camera sequence: {sequence.name} has no cameras with intrinsics; "
                         "use --camera default")
    if shipped_weights is not None and not args.raw_codes:  # keep what the shipped model ignores in its range
        sequence, clip_line = clip_for_shipped_model(sequence)
        if clip_line:
            print(clip_line)
    if shipped_weights is not None:  # say it when the sequence drives codes the shipped model has never seen
        note = shipped_model_range_note(sequence.expressions[:frames], sequence.name)
        if note:
            print(note)

    from flexrt.runtime.engines import load_engine  # torch and the model: after the inputs are checked

    from .client import FlexAvatarClient, format_latency_table
    from .limits import ServerConfig
    from .server import start_server

    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    default_size = 512 if device == "cuda" else 128  # small frames keep the CPU rasterizer interactive
    args.width, args.height = args.width or default_size, args.height or default_size
    if args.checkpoint is None and not args.engines and shipped_weights is None:
        print("[demo] no --checkpoint: the model has seeded RANDOM weights, so the frames show the head template's "
              "silhouette as a flat grey-green oval on white that barely changes, not a face (pass the released "
              "weights with --checkpoint for a real avatar)")

    # 2. engines for the default model
    if args.engines:
        engine_dir = Path(args.engines)
        print(f"[demo] using engines in {engine_dir}")
    else:
        from flexrt.export import export_engines

        engine_dir = out / "engines"
        config = args.config or ("flex1" if args.checkpoint else "tiny")
        checkpoint = args.checkpoint or shipped_weights
        if shipped_weights is not None and args.dinov2 is None:
            print("[demo] the shipped model was trained with the seeded random tiny DINOv2 (docs/TRAINING.md), so "
                  "the RANDOM DINOv2 warning below is expected for it")
        what = ("the shipped model trained on the procedural head corpus (docs/TRAINING.md)" if shipped_weights
                else f"checkpoint {checkpoint}" if checkpoint else "random weights")
        print(f"[demo] exporting the {config!r} model to {engine_dir} ({what})")
        export_engines(config=config, checkpoint=checkpoint, dinov2=args.dinov2, template=args.template,
                       out_dir=engine_dir,
                       precisions=("fp32",), tensorrt=False, max_batch=args.max_batch, progress=not args.no_progress)
    engine = load_engine(engine_dir, backend=args.backend, device=device)
    print(f"[demo] engine: {engine.info.describe()}")

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
            spin_results = []
            if args.turntable > 0 and results:  # 4. the 3D shape: one orbit at the sequence's widest jaw
                jaw = widest_jaw_frame(Sequence(sequence.expressions[:frames], None, None, sequence.name))
                spin = turntable_sequence(sequence.expressions[jaw], args.turntable)
                print(f"[demo] turntable: {args.turntable} frames around the head at frame {jaw} (widest jaw)")
                spin_results, _ = stream_sequence(
                    client, avatar.avatar_id, spin, out / "turntable", width=args.width, height=args.height,
                    fps=args.fps, encoding="png", camera="sequence", frames=None,
                    max_in_flight=args.max_in_flight or None, progress=not args.no_progress)
            blink_results = []
            if args.blink > 0 and results:  # 5. the eyes: a blink at the sequence's first frame, front camera
                blink = blink_sequence(sequence.expressions[0], args.blink)
                print(f"[demo] blink: {args.blink} frames at frame 0, both eyelids from open to shut and open "
                      "again (EMO-1's own eyelids only squint)")
                blink_results, _ = stream_sequence(
                    client, avatar.avatar_id, blink, out / "blink", width=args.width, height=args.height,
                    fps=args.fps, encoding="png", camera="default", frames=None,
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
    pictures = write_demo_pictures(out, [r.image for r in results], [r.image for r in spin_results], args.fps,
                                   blink=[r.image for r in blink_results])
    print(f"[demo] wrote {len(results)} frames to {out / 'frames'}"
          + (f", {len(spin_results)} to {out / 'turntable'}" if spin_results else "")
          + (f", {len(blink_results)} to {out / 'blink'}" if blink_results else "")
          + f", {' and '.join(str(p) for p in pictures)}, and {out / 'latency.json'} ({report['wall_s']:.1f} s)")
    return 0 if results else 1


def clip_for_shipped_model(sequence: Sequence) -> tuple[Sequence, str | None]:
    """The shipped model's corpus rig ignores every exp coefficient but smile, brows and cheeks, and its training
    corpus drew those it ignores within a few std (the model card's ``exp_scale``): a tracked sequence's larger
    values (EMO-1: up to 7.6 std) carry nothing the model learnt and move its face in ways it never saw. -> (the
    sequence with them clipped to RANGE_STD std, ``corpus.codes.clip_ignored_exp``, and one line saying so; or the
    sequence unchanged and None when no more than RANGE_BEYOND of them lie beyond, as in a normal draw). What the
    rig would render is unchanged either way."""
    from flexrt.corpus.codes import RANGE_BEYOND, RANGE_STD, clip_ignored_exp
    from flexrt.training.shipped import shipped_corpus_config

    cfg = shipped_corpus_config()
    clipped, changed = clip_ignored_exp(sequence.expressions, cfg.exp_scale)
    if changed <= RANGE_BEYOND:
        return sequence, None
    line = (f"[demo] {sequence.name}: {changed:.0%} of the exp values that the shipped model's training rig ignores "
            f"lie beyond {RANGE_STD} std of its corpus; clipped to that range, which leaves what the rig renders "
            "unchanged (--raw-codes drives the model with them as they are; docs/TRAINING.md, section 3)")
    return dataclasses.replace(sequence, expressions=clipped), line


def shipped_model_range_note(expressions, name: str) -> str | None:
    """One line when driving codes [T,135] go beyond what the shipped model's training corpus drew
    (``corpus.codes.codes_beyond_range`` with the model card's corpus options), else None."""
    from flexrt.corpus.codes import RANGE_BEYOND, RANGE_STD, codes_beyond_range
    from flexrt.training.shipped import shipped_corpus_config

    cfg = shipped_corpus_config()
    r = codes_beyond_range(expressions, cfg.pose_scale, cfg.exp_scale, cfg.translation_scale)
    if r["within"]:
        return None
    beyond = []
    if r["exp_beyond"] > RANGE_BEYOND:
        beyond.append(f"{r['exp_beyond']:.0%} of the exp values its corpus rig ignores lie beyond {RANGE_STD} std, "
                      f"up to {r['exp_max_std']:.1f} std")
    if r["translation_beyond"] > RANGE_BEYOND:
        beyond.append(f"head translation up to {100 * r['translation_max_m']:.0f} cm, {r['translation_beyond']:.0%} "
                      f"of it beyond {RANGE_STD} std")
    return (f"[demo] note: {name} drives codes beyond what the shipped model was trained on ({'; '.join(beyond)}): "
            f"expect its mouth to follow the jaw only faintly (docs/TRAINING.md, section 3)")


def write_demo_pictures(out: Path, frames: list, spin: list, fps: float, tile: int = 256,
                        blink: list | None = None) -> list[Path]:
    """The demo at a glance: ``contact_sheet.png`` (six frames of the sequence over six of the turntable, over six of
    the blink) and ``demo.gif`` (the sequence, at most 60 frames, then the turntable, then the blink), tiles at most
    ``tile`` pixels. frames, spin, blink: uint8 [H,W,3] images."""
    blink = blink or []
    from PIL import Image

    if not frames:
        return []

    def tiles(images, n):
        picks = np.linspace(0, len(images) - 1, num=min(n, len(images))).round().astype(int)
        out_tiles = []
        for i in picks:
            im = Image.fromarray(images[i])
            scale = min(1.0, tile / max(im.size))
            out_tiles.append(im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                                       Image.BILINEAR) if scale < 1.0 else im)
        return out_tiles

    rows = [tiles(frames, 6)] + ([tiles(spin, 6)] if spin else []) + ([tiles(blink, 6)] if blink else [])
    w, h = rows[0][0].size
    sheet = Image.new("RGB", (w * 6, h * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            sheet.paste(im, (c * w, r * h))
    sheet_path = out / "contact_sheet.png"
    sheet.save(sheet_path)
    gif = tiles(frames, 60) + tiles(spin, 60) + tiles(blink, 60)
    gif_path = out / "demo.gif"
    step = max(1, len(frames) // 60)  # the sequence is subsampled: keep its real speed
    gif[0].save(gif_path, save_all=True, append_images=gif[1:], loop=0,
                duration=round(1000 * step / (fps if fps and fps > 0 else 30.0)))
    return [sheet_path, gif_path]


# ---------------------------------------------------------------------------------------------------------
# parsers
# ---------------------------------------------------------------------------------------------------------

class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks and shows each option's default (where it has one)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, "", argparse.SUPPRESS) \
                and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _parser(subparsers, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help=help_text, description=description, formatter_class=_Formatter)


def add_parser(subparsers) -> None:
    from .limits import ServerConfig

    d = ServerConfig()  # the serve options' defaults are the library's

    # serve
    p = _parser(subparsers, "serve", "run the gRPC streaming server",
                "Run the flexavatar.v1 gRPC server until Ctrl-C / SIGTERM.\n\n"
                "Shutdown: health turns NOT_SERVING at once and every call is still served for --drain seconds (so "
                "load balancers move clients away); then new calls are refused, live streams end after the frame "
                "they are rendering (status UNAVAILABLE 'server is shutting down') and calls still running get "
                "--grace seconds. A second Ctrl-C / SIGTERM stops at once.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--engines", help="engine directory from `flexavatar export-engines`")
    src.add_argument("--model", help="build a PyTorch engine from a preset ('tiny', 'flex1') or model_config.json")
    p.add_argument("--checkpoint", help="with --model: FLEX-1 weights (.pt/.safetensors); default: random weights")
    p.add_argument("--dinov2", help="with --model: DINOv2 weights; default: random weights")
    p.add_argument("--template", help="with --model: head template OBJ or template_samples.npz (FLEX-1: the official "
                                      "gghead_template.obj); default: the project's own head")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="engine backend; auto logs which it picked")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto = cuda when a GPU is visible, else cpu; cuda without a GPU is an error")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="engine precision (onnxruntime: fp32/fp16, torch: fp32/bf16); auto = bf16 for the torch "
                        "backend on a GPU (render PSNR vs fp32 in docs/BENCHMARKS.md), else fp32")
    p.add_argument("--fp8", default="auto", choices=("auto", "off", "static", "fused"),
                   help="the PyTorch decoder (--model, or --engines with the torch backend): static = the decoder's "
                        "sample-stream GEMMs in float8 e4m3 with activation scales calibrated at start-up (needs FP8 "
                        "tensor cores: Ada, Hopper; 10 %% faster than bf16 on the H200, rendered PSNR vs fp32 66 dB on "
                        "EMO-1: docs/SERVING.md section 5); fused = static, with GELU, quantisation and residual adds "
                        "in the GEMMs' epilogues (a Triton kernel, kernels/fp8_gemm.py); off = bf16 GEMMs; "
                        "auto = fused on such a GPU with the bf16 decoder where Triton is there, static where it "
                        "is not, else off (the log says which and why)")
    p.add_argument("--upsampler", default="auto", choices=("auto", "fp32", "bf16", "fp8"),
                   help="the PyTorch decoder's StyleGAN upsampler: bf16 channels-last, or fp8 = its 3x3 convolutions "
                        "as FP8 implicit GEMMs with their epilogues (a Triton kernel, kernels/fp8_conv.py; 0.413 vs "
                        "0.457 ms a frame at batch 32 on the H200, rendered PSNR vs fp32 62.4 dB on EMO-1); auto = "
                        "fp8 where --fp8 resolves to FP8 and Triton is there, bf16 with the bf16 decoder otherwise, "
                        "fp32 with the fp32 decoder")
    p.add_argument("--residual", default="auto", choices=("auto", "fp32", "bf16"),
                   help="the PyTorch decoder: the dtype of its residual stream (bf16 moves half the bytes through "
                        "the per-layer norms); auto = bf16 with the bf16 decoder, else fp32")
    p.add_argument("--rasterizer", default="auto", choices=("auto", "cpu", "cupy"),
                   help="auto = the CuPy kernel when the engine runs on CUDA, else the CPU reference")
    p.add_argument("--jpeg", default="auto", choices=("auto", "cuda", "cpu"),
                   help="where JPEG frames are encoded: cuda = on the GPU next to the rendered frame "
                        "(kernels.jpeg), cpu = Pillow; auto = cuda when frames are rendered on the GPU")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (0 = any free port; off by default)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=50051, help="port to listen on (0 = any free port, printed)")
    p.add_argument("--web-port", type=int, default=None, metavar="PORT",
                   help="also serve the browser client (a page + WebSocket bridge into the same sessions, limits "
                        "and token; docs/WEB.md) on this port (0 = any free port, printed); off by default")
    p.add_argument("--store", default="avatars", metavar="DIR|URL",
                   help="where avatars are kept (across restarts): a directory (one host), or redis://HOST:PORT/DB, "
                        "a Redis database shared by every replica behind a load balancer (docs/SCALEOUT.md); "
                        "--max-avatars / --max-store-mib then count all replicas' avatars together")
    g = p.add_argument_group("streams")
    g.add_argument("--max-size", type=int, default=d.max_width, help="largest frame width/height a stream may ask for")
    g.add_argument("--max-streams", type=int, default=d.max_streams,
                   help="concurrent Animate streams; a stream takes a slot only once its SessionConfig arrived and "
                        "names a stored avatar; one more gets RESOURCE_EXHAUSTED")
    g.add_argument("--max-pending-streams", type=int, default=d.max_pending_streams,
                   help="streams that have not sent their SessionConfig yet (they hold no --max-streams slot); when "
                        "one more arrives, the one waiting longest is closed with RESOURCE_EXHAUSTED once it has "
                        "waited --pending-grace, so connections that send nothing cannot keep real streams out")
    g.add_argument("--pending-grace", type=float, default=d.pending_grace_s, metavar="S",
                   help="seconds a new stream may wait for its SessionConfig before newer streams can close it: a "
                        "burst of clients reconnecting at once is not cut (more than --max-pending-streams + "
                        "--max-streams waiting streams close the longest-waiting one at once)")
    g.add_argument("--config-timeout", type=float, default=d.config_timeout_s, metavar="S",
                   help="seconds a new stream has to send its SessionConfig (then DEADLINE_EXCEEDED)")
    g.add_argument("--idle-timeout", type=float, default=d.stream_idle_timeout_s, metavar="S",
                   help="a stream that sends no message for this many seconds is closed with DEADLINE_EXCEEDED, "
                        "freeing its slot")
    g.add_argument("--max-stream-fps", type=float, default=d.max_stream_fps,
                   help="rendered frames per second per stream (frames arriving faster: latest wins); 0 = unlimited")
    g.add_argument("--max-stream-messages-per-s", type=float, default=d.max_stream_messages_per_s,
                   help="request messages per second per stream (burst: one second's worth); a stream sending "
                        "faster ends with RESOURCE_EXHAUSTED")
    g.add_argument("--max-message-mib", type=float, default=d.max_message_bytes / MiB,
                   help="largest request message in MiB (photo uploads are the largest); bigger ones get "
                        "RESOURCE_EXHAUSTED before they are parsed")
    g = p.add_argument_group("avatars")
    g.add_argument("--max-avatars", type=int, default=d.max_avatars,
                   help="avatars the store may hold; CreateAvatar beyond it gets RESOURCE_EXHAUSTED (0 = no limit)")
    g.add_argument("--max-store-mib", type=float, default=d.max_store_bytes / MiB,
                   help="MiB of stored avatar codes (a FLEX-1 avatar is 3 MiB, on disk and in memory; 0 = no limit)")
    g.add_argument("--max-photo-megapixels", type=float, default=round(d.max_photo_pixels / 1e6, 1),
                   help="largest photo CreateAvatar decodes (width x height, read from the image header before any "
                        "decoding, so a small file declaring a huge image is refused in microseconds)")
    g.add_argument("--photo-workers", type=int, default=d.photo_workers,
                   help="threads decoding photos: their own pool, so uploads never hold up frame encoding")
    g.add_argument("--max-concurrent-creates", type=int, default=d.max_concurrent_creates,
                   help="CreateAvatar calls from photos in progress at once; more get RESOURCE_EXHAUSTED (retry)")
    g = p.add_argument_group("avatar fitting (FitAvatar; needs the PyTorch backend, else UNIMPLEMENTED)")
    g.add_argument("--max-fit-observations", type=int, default=d.max_fit_observations,
                   help="observations (photos / video frames) one FitAvatar request may send")
    g.add_argument("--max-fit-resolution", type=int, default=d.max_fit_resolution,
                   help="largest side in pixels the observations are fitted at (as sent, or after the request's "
                        "resolution); a fit step's cost grows with it (the official fit: 512)")
    g.add_argument("--max-fit-steps", type=int, default=d.max_fit_steps,
                   help="most optimisation steps a request may ask for (the official recipe: 200, the default of "
                        "a request that says 0)")
    g.add_argument("--fit-preview-every", type=int, default=d.fit_preview_every,
                   help="a preview JPEG in the progress every this many steps, for requests that say 0")
    g.add_argument("--max-concurrent-fits", type=int, default=d.max_concurrent_fits,
                   help="fits running at once; more get RESOURCE_EXHAUSTED (each keeps the GPU busy for seconds, "
                        "on a low-priority CUDA stream below the live frames)")
    g.add_argument("--fit-dino-loss-weights", metavar="FILE",
                   help="DINOv2-small weights for the fit's perceptual DINO loss (dinov2_vits14_pretrain.pth or "
                        "facebook/dinov2-small model.safetensors); without them the term is off and every result "
                        "says so")
    g = p.add_argument_group("batching")
    g.add_argument("--max-batch", type=int, default=d.max_batch_size,
                   help="frames of different streams decoded in one engine call; on a GPU every batch size up to it "
                        "gets its own CUDA graphs at start-up (no padding; GPU memory grows with it)")
    g.add_argument("--max-batch-wait-ms", type=float, default=d.max_batch_wait_ms,
                   help="with the GPU idle, how long the oldest frame waits for company at most")
    g.add_argument("--pipeline-slots", type=int, default=d.pipeline_slots,
                   help="batches in flight at once (batch k+1 decodes while batch k renders and copies)")
    g.add_argument("--encode-workers", type=int, default=d.encode_workers,
                   help="threads encoding frames with Pillow (PNG; JPEG when frames are not encoded on the GPU)")
    g = p.add_argument_group("security and shutdown")
    g.add_argument("--tls-cert", help="PEM certificate chain (with --tls-key: serve TLS)")
    g.add_argument("--tls-key", help="PEM private key")
    _add_auth_args(g)
    g.add_argument("--drain", type=float, default=d.shutdown_drain_s, metavar="S",
                   help="at shutdown: seconds health reports NOT_SERVING while every call is still served")
    g.add_argument("--grace", type=float, default=d.shutdown_grace_s, metavar="S",
                   help="at shutdown, after the drain: seconds calls still running get before they are cancelled")
    _add_common_args(p, "info")
    p.set_defaults(func=_one_line_errors(cmd_serve))

    # stream
    p = _parser(subparsers, "stream", "stream a driving sequence to a server and save the frames",
                "Stream a driving sequence (.npz, or 'synthetic') to an avatar and write the frames (PNG folder or "
                ".mp4) plus latency statistics. Sequence format: docs/SEQUENCES.md.")
    _add_client_args(p)
    p.add_argument("--avatar", required=True, help="avatar id (from `flexavatar avatars create` / `avatars list`)")
    p.add_argument("--sequence", required=True,
                   help=".npz with expression_codes [T,135] (+ cameras), or 'synthetic' for the built-in procedural "
                        "sequence (121 frames unless --frames)")
    p.add_argument("--out", required=True, help="folder for PNG frames, or a .mp4 file (needs imageio-ffmpeg)")
    p.add_argument("--fps", type=float, default=30.0, help="send rate; 0 = as fast as the server answers")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--encoding", default="png", choices=("raw_rgb8", "jpeg", "png"), help="frame encoding on the wire")
    p.add_argument("--camera", default="default", choices=("default", "sequence"),
                   help="default: the server's frontal camera; sequence: the sequence's per-frame cameras")
    p.add_argument("--frames", type=int, default=None, help="stream only the first N frames")
    p.add_argument("--max-in-flight", type=int, default=1,
                   help="frames sent but not yet answered. 1 = lossless: every frame is rendered and written. More "
                        "pipelines frames (higher throughput) but the server may drop some (latest wins; reported); "
                        "0 = unlimited")
    p.add_argument("--resume-s", type=float, default=0.0, metavar="S",
                   help="behind a load balancer (docs/SCALEOUT.md): when the replica serving the stream dies, reopen "
                        "the stream (same avatar and camera, unanswered frames sent again) for up to S seconds; "
                        "0 = end with the error")
    p.add_argument("--latency-json", help="also write the latency summary here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_common_args(p, "warning")
    p.set_defaults(func=_one_line_errors(cmd_stream))

    # avatars
    p = _parser(subparsers, "avatars", "create, list, show and delete avatars on a server",
                "Manage the avatars of a running server.\n\n"
                "  flexavatar avatars create --image photo.png [--camera-npz photo_input.npz] [--name NAME]\n"
                "  flexavatar avatars create --npy code.npy     (an avatar code, [HT,1,D] or [HT,D])\n"
                "  flexavatar avatars fit --inputs a_input.npz b_input.npz [--init ID] [--steps 200]\n"
                "  flexavatar avatars list | get ID | delete ID\n\n"
                "create prints the new avatar's id (for `flexavatar stream --avatar ID`).")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    a = actions.add_parser("create", help="create an avatar from a photo or import an avatar code; prints its id",
                           formatter_class=_Formatter,
                           description="Create an avatar from a square head photo (PNG/JPEG; the encoder resizes it "
                                       "to 512x512) or import an avatar code (.npy). Prints the new id.")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="square head crop, PNG or JPEG (alpha is composited on white)")
    src.add_argument("--npy", help="avatar code .npy, float [HT,1,D] (official layout) or [HT,D]")
    a.add_argument("--camera-npz", help="with --image: the photo's camera, an .npz with input_cam2world [4,4] "
                                        "(OpenCV, head-centric) and input_intrinsics_normalized [3,3]; default: the "
                                        "server's frontal camera")
    a.add_argument("--name", default="", help="a label (at most 128 characters, no control characters)")
    a.add_argument("--json", action="store_true", help="print the whole avatar record as JSON")
    a = actions.add_parser(
        "fit", help="fit an avatar to several photos or video frames on the server (FitAvatar); prints its id",
        formatter_class=_Formatter,
        description="Fit an avatar code to tracked observations on the server (FitAvatar: the official test-time "
                    "fitting, docs/FITTING.md) and store it; prints the new id. Inputs as for `flexavatar fit`: "
                    "one .npz per photo (<name>_input.npz beside <name>.png) or one N-frame .npz (images inside, "
                    "or --video). Ctrl-C cancels the fit (nothing is stored).")
    a.add_argument("--inputs", nargs="+", required=True, metavar="NPZ",
                   help="tracked observations: cameras, expression codes and images (docs/FITTING.md, Inputs)")
    a.add_argument("--video", help="an .mp4 whose frames go with the single per-frame --inputs .npz")
    a.add_argument("--max-frames", type=int, default=None, help="send at most this many frames, evenly spaced")
    init = a.add_mutually_exclusive_group()
    init.add_argument("--init", metavar="ID", help="start from this stored avatar (default: the server's "
                                                   "feed-forward code of the first observation)")
    init.add_argument("--init-npy", metavar="NPY", help="start from this avatar code .npy ([HT,1,D] or [HT,D])")
    a.add_argument("--steps", type=int, default=0, help="optimisation steps (0 = the official 200)")
    a.add_argument("--resolution", type=int, default=0,
                   help="side in pixels the server fits at (0 = as sent; at most the server's --max-fit-resolution)")
    a.add_argument("--no-expression", action="store_true",
                   help="keep the tracked expression codes (default: per-view offsets are fitted, as the paper)")
    a.add_argument("--seed", type=int, default=0, help="seed of the per-step view choice")
    a.add_argument("--preview-every", type=int, default=0, help="preview cadence in steps (0 = the server's)")
    a.add_argument("--previews", metavar="DIR", help="write the preview JPEGs here (stepNNNN_viewV.jpg)")
    a.add_argument("--name", default="", help="a label (at most 128 characters, no control characters)")
    a.add_argument("--json", action="store_true", help="print the avatar record, PSNRs and losses as JSON")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name, help_text in (("list", "list every avatar, oldest first"), ("get", "show one avatar"),
                            ("delete", "delete one avatar")):
        b = actions.add_parser(name, help=help_text, formatter_class=_Formatter, description=help_text + ".")
        if name != "list":
            b.add_argument("avatar_id", metavar="ID", help="avatar id (32 hex characters)")
        if name != "delete":
            b.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for sub in actions.choices.values():
        _add_client_args(sub)
        _add_common_args(sub, "warning")
    p.set_defaults(func=_one_line_errors(cmd_avatars))

    # demo
    p = _parser(subparsers, "demo", "export, serve, create an avatar and stream, all on localhost",
                "End-to-end demo: export engines, start a server, create an avatar from an example photo, stream a "
                "driving sequence, save frames and latency.\n\nWithout --checkpoint the tiny preset has seeded "
                "RANDOM weights: the frames show the head template's silhouette as a flat grey-green oval on white "
                "that barely moves, not a face. The photo must be a square head crop (PNG/JPEG).")
    p.add_argument("--out", default="demo_out", help="output folder (engines/, avatars/, frames/, turntable/, "
                                                     "contact_sheet.png, demo.gif, latency.json)")
    p.add_argument("--checkpoint", help="FLEX-1 weights; without it the tiny preset with the shipped weights "
                                        "(trained on the procedural head corpus, docs/TRAINING.md) is used")
    p.add_argument("--random-weights", action="store_true",
                   help="without --checkpoint: seeded random tiny weights instead of the shipped model")
    p.add_argument("--raw-codes", action="store_true",
                   help="with the shipped model: drive it with the sequence's codes as they are. By default the "
                        "exp coefficients its training rig ignores are clipped to the range its corpus drew "
                        "(2.5 std; said in one line when it clips), which leaves the face the rig would draw "
                        "unchanged and about doubles the mouth's motion under EMO-1 (docs/TRAINING.md, section 3)")
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
    p.add_argument("--max-in-flight", type=int, default=1,
                   help="frames sent but not yet answered; 1 = lossless (see `flexavatar stream --help`)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--camera", default="default", choices=("default", "sequence"))
    p.add_argument("--turntable", type=int, default=48,
                   help="after the sequence, this many frames of one orbit around the head at the sequence's widest "
                        "jaw opening (turntable/), so the 3D shape is visible; 0 = none")
    p.add_argument("--blink", type=int, default=12,
                   help="then this many frames of a blink at the sequence's first frame, front camera (blink/): "
                        "EMO-1's tracked eyelids only squint, so this shows that the eyes are modelled; 0 = none")
    p.add_argument("--image", help="square head photo, PNG or JPEG (default: the reference example, or a drawing)")
    p.add_argument("--sequence", help="driving sequence .npz or 'synthetic' (default: the reference EMO-1, or the "
                                      "synthetic one); format: docs/SEQUENCES.md")
    p.add_argument("--no-progress", action="store_true")
    _add_common_args(p, "warning")
    p.set_defaults(func=_one_line_errors(cmd_demo))
