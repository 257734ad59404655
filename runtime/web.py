"""The browser bridge: ``flexavatar serve --web-port PORT`` serves one page and a WebSocket endpoint that drive the
same FlexAvatarService as gRPC (same sessions, batcher, stream limits, avatar store and bearer token).

    GET /                 the page (runtime/web_static/: plain HTML, CSS and JavaScript, no build step, no CDN)
    GET /static/NAME      its script and style sheet
    GET /synthetic.json   runtime/sequences.synthetic_sequence(121) as JSON: the page's shipped driving sequence
    GET /healthz          200 "SERVING" / 503 "NOT_SERVING"; open without a token, like grpc.health.v1
    WS  /ws               the protocol below (docs/WEB.md has it in full)

Browsers cannot open client-streaming gRPC calls, so the page speaks WebSocket. The bridge turns every request into
the service's own protobuf message and awaits the servicer method that gRPC would call (CreateAvatar, ListAvatars,
..., Animate) with ``_WebContext``, which implements the part of grpc.aio.ServicerContext the servicer uses (abort,
write, cancelled, done). Request validation, limits, latest wins, the per-stream in-flight bound and the render loop
are therefore the gRPC code itself, not a copy; a web stream takes one of the ``max_streams`` slots like any other.

Protocol. Client -> server, JSON text messages:
    {"type": "auth", "token": T}          first message when the server has a token and the URL carried none
    {"type": "call", "id": N, "method": M, "request": R}
                                          M: CreateAvatar, GetAvatar, ListAvatars, DeleteAvatar or GetServerInfo;
                                          R: its request message in proto3 JSON (bytes as base64)
    {"type": "start", "config": C}        opens the connection's stream; C: a SessionConfig in proto3 JSON
                                          (encoding defaults to JPEG here, the page's wire format)
    {"type": "frame", "sequence": S, "client_timestamp_us": T, "expression": [135 floats],
     "camera": {"cam2world": [16], "intrinsics": [9]}}   (camera optional)
    {"type": "end"}                       half-close: frames already sent are answered, then "ended"
    {"type": "parse_sequence", "id": N, "npz_base64": B}  a driving-sequence .npz -> its expression codes
Server -> client:
    {"type": "hello", "server": ServerInfo (proto3 JSON), "auth_required": bool}   once the connection is authorised
    {"type": "result", "id": N, "response": R}             R in proto3 JSON
    {"type": "started", "width": W, "height": H, "encoding": E}   the stream holds its slot
    binary: FRAME_HEADER (72 bytes, little endian) + the encoded frame
    {"type": "ended"}                     the stream finished after "end"
    {"type": "error", "id": N or null, "stream": bool, "code": "NOT_FOUND", "message": "..."}
                                          the gRPC status name and message. id N: that call failed; stream true:
                                          the stream ended with it (or was refused); otherwise a message of the
                                          connection was refused (UNAUTHENTICATED and a rate over the limit also
                                          close the connection)

One connection carries at most one stream at a time (one page = one stream; several tabs = several streams).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import http
import json
import logging
import secrets
import ssl
import struct
from importlib import resources
from urllib.parse import parse_qs, urlsplit

import grpc
from google.protobuf import json_format
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from flexrt.proto import flexavatar_pb2 as pb

from .limits import ServerConfig, TokenBucket, UndecodableRequestError, log_safe
from .sequences import load_sequence_bytes, synthetic_sequence

logger = logging.getLogger(__name__)
# the websockets library's own log (a line per connection and per plain HTTP request): warnings and errors only
transport_logger = logging.getLogger(__name__ + ".transport")
transport_logger.setLevel(logging.WARNING)

# One rendered frame: magic, header size, encoding, batch size, sequence, client timestamp, width, height, the five
# StageTimings (queue, decode, render, encode, server; microseconds) and the StreamCounters (received, rendered,
# dropped); the encoded image follows. Little endian, no padding.
FRAME_HEADER = struct.Struct("<4sHBBQqHH5I3Q")
FRAME_MAGIC = b"FXF1"
UNARY_METHODS = {
    "CreateAvatar": pb.CreateAvatarRequest,
    "GetAvatar": pb.GetAvatarRequest,
    "ListAvatars": pb.ListAvatarsRequest,
    "DeleteAvatar": pb.DeleteAvatarRequest,
    "GetServerInfo": pb.GetServerInfoRequest,
}
STATIC_FILES = {  # URL path -> (file in runtime/web_static, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
# the page loads nothing from elsewhere; frames are drawn from blobs
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; connect-src 'self' ws: wss:; "
                           "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
SYNTHETIC_FRAMES = 121  # 4 s at 30 fps, as `flexavatar stream --sequence synthetic`
STREAM_INPUT_QUEUE = 64  # frame messages buffered between the socket and the stream's reader (backpressure beyond)
MAX_CALLS_PER_CONNECTION = 4  # unary calls of one connection running at once (more: RESOURCE_EXHAUSTED)


def pack_frame(response: pb.AnimateResponse) -> bytes:
    """AnimateResponse -> the binary frame message: FRAME_HEADER + image bytes."""
    t, c = response.timings, response.counters
    header = FRAME_HEADER.pack(
        FRAME_MAGIC, FRAME_HEADER.size, response.encoding, min(t.batch_size, 255), response.sequence,
        response.client_timestamp_us, response.width, response.height,
        t.queue_us, t.decode_us, t.render_us, t.encode_us, t.server_us, c.received, c.rendered, c.dropped)
    return header + response.image


def unpack_frame(message: bytes) -> dict:
    """The binary frame message -> dict of the header fields and ``image`` (bytes); ValueError when malformed."""
    if len(message) < FRAME_HEADER.size or message[:4] != FRAME_MAGIC:
        raise ValueError(f"not a frame message ({len(message)} bytes, starts with {bytes(message[:4])!r})")
    (_, size, encoding, batch_size, sequence, client_timestamp_us, width, height, queue_us, decode_us, render_us,
     encode_us, server_us, received, rendered, dropped) = FRAME_HEADER.unpack_from(message)
    return dict(encoding=encoding, batch_size=batch_size, sequence=sequence, client_timestamp_us=client_timestamp_us,
                width=width, height=height, queue_us=queue_us, decode_us=decode_us, render_us=render_us,
                encode_us=encode_us, server_us=server_us, received=received, rendered=rendered, dropped=dropped,
                image=bytes(message[size:]))


class WebAbort(Exception):
    """What ``_WebContext.abort`` raises: the call ends with this gRPC status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class _WebContext:
    """The part of grpc.aio.ServicerContext that FlexAvatarService uses, over one WebSocket connection."""

    def __init__(self, connection: ServerConnection):
        self._connection = connection

    async def abort(self, code: grpc.StatusCode, details: str):
        raise WebAbort(code, details)

    async def write(self, response: pb.AnimateResponse) -> None:
        await self._connection.send(pack_frame(response))  # waits while the browser does not read (TCP)

    def cancelled(self) -> bool:
        return self._connection.close_code is not None

    def done(self) -> bool:
        return False

    def peer(self) -> str:
        return f"web:{self._connection.remote_address}"


class _StreamInput:
    """The Animate request iterator of one web stream: the SessionConfig, then the frames the connection queues.

    FlexAvatarService.Animate reads the config (_open_session) and registers the session before its reader asks
    for the next message, so that second request marks the moment the stream holds its slot (``on_open``)."""

    def __init__(self, config: pb.AnimateRequest, on_open):
        self.queue: asyncio.Queue = asyncio.Queue(STREAM_INPUT_QUEUE)
        self._config = config
        self._on_open = on_open
        self._asked = 0

    def __aiter__(self):
        return self

    async def __anext__(self) -> pb.AnimateRequest:
        self._asked += 1
        if self._asked == 1:
            return self._config
        if self._asked == 2:
            await self._on_open()
        item = await self.queue.get()
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, Exception):
            raise item
        return item


def _frame_request(message: dict) -> pb.AnimateRequest | UndecodableRequestError:
    """A JSON frame message -> AnimateRequest(frame=...); what cannot be one becomes the error Animate reports
    as INVALID_ARGUMENT (the value checks, 135 finite floats and the camera, are session.parse_frame's)."""
    try:
        frame = pb.Frame(sequence=int(message.get("sequence", 0)),
                         client_timestamp_us=int(message.get("client_timestamp_us", 0)),
                         expression=message.get("expression") or [])
        camera = message.get("camera")
        if camera is not None:
            frame.camera.cam2world.extend(camera.get("cam2world") or [])
            frame.camera.intrinsics.extend(camera.get("intrinsics") or [])
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        return UndecodableRequestError(
            f"frame message is malformed ({type(exc).__name__}: {exc}); expected sequence (integer >= 0), "
            "client_timestamp_us (integer), expression (135 numbers) and optionally camera {cam2world: 16 numbers, "
            "intrinsics: 9 numbers}")
    return pb.AnimateRequest(frame=frame)


def _status_name(code: grpc.StatusCode) -> str:
    return code.name  # e.g. "INVALID_ARGUMENT", as the gRPC clients print it


class WebBridge:
    """HTTP + WebSocket server on the gRPC server's event loop, driving ``service`` (a FlexAvatarService)."""

    def __init__(self, service, config: ServerConfig, serving=lambda: True):
        self.service = service
        self.config = config
        self._serving = serving  # False once shutdown began (health NOT_SERVING)
        self._token = config.auth_token.encode() if config.auth_token else None
        self._static = {path: (resources.files("flexrt.runtime").joinpath("web_static", name).read_bytes(), kind)
                        for path, (name, kind) in STATIC_FILES.items()}
        codes = synthetic_sequence(SYNTHETIC_FRAMES).expressions  # [T,135] float32
        self._static["/synthetic.json"] = (
            json.dumps({"name": "synthetic", "fps": 30.0, "expression_codes": codes.tolist()}).encode(),
            "application/json")
        # a connection holds no stream slot until it starts a stream; this bounds idle connections
        self.max_connections = config.max_streams + config.max_pending_streams
        self.connections: set[ServerConnection] = set()
        self._server = None
        self.port: int | None = None

    # ---- lifecycle ----
    async def start(self, host: str, port: int) -> int:
        cfg = self.config
        context = None
        if cfg.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        # a photo travels as base64 inside JSON: 4/3 of max_message_bytes plus room for the other fields
        max_size = cfg.max_message_bytes * 4 // 3 + 65536
        try:
            self._server = await serve(self._handle, host.strip("[]") or None, port, ssl=context,
                                       process_request=self._http, max_size=max_size, compression=None,
                                       server_header=None, logger=transport_logger)
        except OSError as exc:
            raise RuntimeError(f"cannot listen on {host}:{port} for the web page: {exc.strerror}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Closes every connection (1001 going away); their streams were ended by the service already."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # ---- plain HTTP (before a WebSocket upgrade) ----
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/ws":
            if len(self.connections) >= self.max_connections:
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                          f"the server holds {len(self.connections)} web connections (max_streams + "
                                          "max_pending_streams); retry later\n")
            return None  # the WebSocket handshake goes on
        if path == "/healthz":
            serving = self._serving()
            return connection.respond(http.HTTPStatus.OK if serving else http.HTTPStatus.SERVICE_UNAVAILABLE,
                                      "SERVING\n" if serving else "NOT_SERVING\n")
        if path not in self._static:
            return connection.respond(http.HTTPStatus.NOT_FOUND, f"no such page: {log_safe(path, 80)}\n")
        body, kind = self._static[path]
        headers = Headers([("Content-Type", kind), ("Content-Length", str(len(body))), ("Cache-Control", "no-cache"),
                           ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
                           ("X-Content-Type-Options", "nosniff")])
        return Response(200, "OK", headers, body)

    # ---- one WebSocket connection ----
    async def _handle(self, connection: ServerConnection) -> None:
        self.connections.add(connection)
        try:
            await _Connection(self, connection).run()
        except ConnectionClosed:
            pass
        finally:
            self.connections.discard(connection)

    def token_ok(self, presented: str | None) -> bool:
        """Constant-time comparison with the configured token (hmac.compare_digest, as limits.RequestGuard)."""
        if self._token is None:
            return True
        return bool(presented) and hmac.compare_digest(presented.encode(), self._token)


class _Connection:
    """One page: authorises, answers calls, runs at most one stream at a time."""

    def __init__(self, bridge: WebBridge, connection: ServerConnection):
        self.bridge = bridge
        self.service = bridge.service
        self.ws = connection
        self.context = _WebContext(connection)
        self.stream: asyncio.Task | None = None
        self.stream_input: _StreamInput | None = None
        self.tasks: set[asyncio.Task] = set()
        self.bucket = TokenBucket(bridge.config.max_stream_messages_per_s)  # messages other than frames
        self.warned_no_stream = False

    async def send_json(self, message: dict) -> None:
        await self.ws.send(json.dumps(message))

    async def send_error(self, code: grpc.StatusCode, message: str, id=None, stream: bool = False) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.send_json({"type": "error", "id": id, "stream": stream, "code": _status_name(code),
                                  "message": message})

    async def refuse(self, code: grpc.StatusCode, message: str, close_code: int = 1008) -> None:
        """A connection-level error: one error message, then the connection closes."""
        await self.send_error(code, message)
        await self.ws.close(close_code, message[:120])

    async def run(self) -> None:
        if not await self.authorise():
            return
        await self.send_json({"type": "hello", "auth_required": self.bridge._token is not None,
                              "server": json_format.MessageToDict(self.service.server_info(),
                                                                  preserving_proto_field_name=True)})
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    await self.send_error(grpc.StatusCode.INVALID_ARGUMENT,
                                          "binary messages from the client are not part of the protocol; send JSON "
                                          "text (photos as base64 in CreateAvatar's request.image)")
                    continue
                try:
                    msg = json.loads(message)
                except ValueError as exc:
                    await self.send_error(grpc.StatusCode.INVALID_ARGUMENT, f"message is not JSON: {exc}")
                    continue
                kind = msg.get("type") if isinstance(msg, dict) else None
                if kind == "frame":
                    await self.on_frame(msg)
                    continue
                if not self.bucket.take():
                    await self.refuse(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      f"more than {self.bridge.config.max_stream_messages_per_s:g} messages per second")
                    return
                await self.dispatch(kind, msg)
        finally:
            await self.close_all()

    async def authorise(self) -> bool:
        """A valid token from the URL (?token=), an 'Authorization: Bearer' header or the first message."""
        if self.bridge._token is None:
            return True
        presented = parse_qs(urlsplit(self.ws.request.path).query).get("token", [None])[0]
        header = self.ws.request.headers.get("Authorization", "")
        if presented is None and header.startswith("Bearer "):
            presented = header[len("Bearer "):]
        if presented is None:
            try:
                first = await asyncio.wait_for(self.ws.recv(), self.bridge.config.config_timeout_s)
                msg = json.loads(first) if isinstance(first, str) else None
            except asyncio.TimeoutError:
                msg = None
            except ValueError:
                msg = None
            if isinstance(msg, dict) and msg.get("type") == "auth" and isinstance(msg.get("token"), str):
                presented = msg["token"]
        if self.bridge.token_ok(presented):
            return True
        reason = "missing" if not presented else "invalid"
        logger.warning("web connection from %s refused: %s token", log_safe(self.ws.remote_address), reason)
        await self.refuse(grpc.StatusCode.UNAUTHENTICATED,
                          f"{reason} bearer token: open the page with ?token=<token>, or send "
                          '{"type": "auth", "token": "<token>"} as the first message')
        return False

    async def dispatch(self, kind, msg: dict) -> None:
        if kind == "call":
            self.spawn(self.call(msg), msg)
        elif kind == "start":
            await self.start(msg)
        elif kind == "end":
            if self.stream_input is not None:
                await self.stream_input.queue.put(None)  # half-close: the reader sees the end of the requests
        elif kind == "parse_sequence":
            self.spawn(self.parse_sequence(msg), msg)
        elif kind == "auth":
            pass  # already authorised (a page that always sends it)
        else:
            await self.send_error(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"unknown message type {log_safe(kind, 40)!r}; expected call, start, frame, end, "
                                  "parse_sequence or auth", id=msg.get("id") if isinstance(msg, dict) else None)

    def spawn(self, coro, msg: dict) -> None:
        """Runs a call as its own task (frames keep flowing meanwhile); more than MAX_CALLS_PER_CONNECTION at once
        are refused, so a page cannot pile up requests (a photo each) in the server's memory."""
        if len(self.tasks) >= MAX_CALLS_PER_CONNECTION:
            coro.close()
            coro = self.send_error(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"this connection already has {len(self.tasks)} calls running (at most "
                                   f"{MAX_CALLS_PER_CONNECTION}); wait for their results", id=msg.get("id"))
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._call_done)

    def _call_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # e.g. the page left before its answer
            logger.debug("web call ended: %s", log_safe(task.exception()))

    async def close_all(self) -> None:
        """The page went away: its stream and calls are cancelled, as gRPC cancels the calls of a closed channel."""
        pending = list(self.tasks) + ([self.stream] if self.stream is not None else [])
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task

    # ---- unary calls ----
    async def call(self, msg: dict) -> None:
        call_id, method = msg.get("id"), msg.get("method")
        if method not in UNARY_METHODS:
            await self.send_error(grpc.StatusCode.UNIMPLEMENTED,
                                  f"method {log_safe(method, 40)!r} is not served over the web bridge; expected "
                                  f"one of {', '.join(UNARY_METHODS)}", id=call_id)
            return
        try:
            request = json_format.ParseDict(msg.get("request") or {}, UNARY_METHODS[method]())
        except (json_format.ParseError, TypeError, ValueError) as exc:
            await self.send_error(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"{method} request is not a valid {UNARY_METHODS[method].DESCRIPTOR.name} in "
                                  f"proto3 JSON: {exc}", id=call_id)
            return
        try:
            response = await getattr(self.service, method)(request, self.context)
        except WebAbort as err:
            await self.send_error(err.code, err.message, id=call_id)
            return
        await self.send_json({"type": "result", "id": call_id,
                              "response": json_format.MessageToDict(response, preserving_proto_field_name=True)})

    async def parse_sequence(self, msg: dict) -> None:
        """A driving-sequence .npz (runtime/sequences.py format) -> its expression codes, validated by the same code
        as `flexavatar stream --sequence FILE`."""
        call_id = msg.get("id")
        try:
            data = base64.b64decode(msg.get("npz_base64") or "", validate=True)
            loop = asyncio.get_running_loop()
            sequence = await loop.run_in_executor(None, load_sequence_bytes, data, str(msg.get("name") or "upload"))
        except (ValueError, TypeError) as exc:
            await self.send_error(grpc.StatusCode.INVALID_ARGUMENT, str(exc), id=call_id)
            return
        await self.send_json({"type": "result", "id": call_id, "response": {
            "name": sequence.name, "expression_codes": sequence.expressions.tolist()}})

    # ---- the stream ----
    async def start(self, msg: dict) -> None:
        if self.stream is not None:
            await self.send_error(grpc.StatusCode.FAILED_PRECONDITION,
                                  "this connection already runs a stream; send 'end' first, or open another WebSocket "
                                  "(every page or tab is its own stream)")
            return
        config = msg.get("config")
        try:
            if not isinstance(config, dict):
                raise TypeError(f"'config' must be an object, got {type(config).__name__}")
            request = pb.AnimateRequest(config=json_format.ParseDict(config, pb.SessionConfig()))
        except (json_format.ParseError, TypeError, ValueError) as exc:
            await self.send_error(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"start: 'config' is not a SessionConfig in proto3 JSON: {exc}", stream=True)
            return
        if "encoding" not in config:
            request.config.encoding = pb.JPEG
        settings = request.config

        async def opened():
            await self.send_json({"type": "started", "width": settings.width, "height": settings.height,
                                  "encoding": pb.Encoding.Name(settings.encoding)})

        self.warned_no_stream = False
        self.stream_input = _StreamInput(request, opened)
        self.stream = asyncio.get_running_loop().create_task(self.animate(self.stream_input))

    async def animate(self, stream_input: _StreamInput) -> None:
        try:
            await self.service.Animate(stream_input, self.context)
            await self.send_json({"type": "ended"})
        except WebAbort as err:
            await self.send_error(err.code, err.message, stream=True)
        except (ConnectionClosed, asyncio.CancelledError):
            pass
        except Exception as exc:  # a fault of the server: details stay in the log
            error_id = secrets.token_hex(4)
            logger.error("web stream failed (error id %s)", error_id, exc_info=exc)
            await self.send_error(grpc.StatusCode.INTERNAL, f"internal server error (error id {error_id}; the server "
                                  "log has the details)", stream=True)
        finally:
            if self.stream_input is stream_input:
                self.stream, self.stream_input = None, None
            while not stream_input.queue.empty():  # frees a reader blocked on a full queue of this ended stream
                stream_input.queue.get_nowait()

    async def on_frame(self, msg: dict) -> None:
        if self.stream_input is None:
            if not self.warned_no_stream:  # once, not for every frame still on its way after a stream ended
                self.warned_no_stream = True
                await self.send_error(grpc.StatusCode.FAILED_PRECONDITION,
                                      "frame without a stream: send 'start' with a SessionConfig first")
            return
        await self.stream_input.queue.put(_frame_request(msg))  # waits when the reader is behind (backpressure)

