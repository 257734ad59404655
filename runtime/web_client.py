"""A small asyncio client of the browser bridge (runtime/web.py), for tests, benchmarks and scripts.

    async with WebClient("ws://127.0.0.1:8080/ws", token=None) as client:
        avatar = await client.call("CreateAvatar", {"image": base64_png, "name": "me"})   # proto3 JSON in and out
        await client.start({"avatar_id": avatar["avatar_id"], "width": 256, "height": 256})
        await client.send_frame(0, expression)           # [135]
        frame = await client.next_frame()                # dict: sequence, timings, counters, image (bytes)
        await client.end()                               # then next_frame() returns None once the stream ended

Errors of calls and streams raise WebError with the gRPC status name and the server's message.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time

import numpy as np
from websockets.asyncio.client import connect

from .web import unpack_frame


class WebError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class WebClient:
    def __init__(self, url: str, token: str | None = None, auth: str = "message", open_timeout: float = 10.0,
                 ssl_context=None):
        """``auth``: how a token travels: "message" (the first message, as the page does), "query" (?token=) or
        "header" (Authorization: Bearer). ``ssl_context``: for a wss:// URL whose certificate is not in the
        system's trust store (ssl.create_default_context(cafile=...))."""
        self.url, self.token, self.auth, self.open_timeout = url, token, auth, open_timeout
        self.ssl_context = ssl_context
        self.ws = None
        self.hello: dict | None = None
        self._next_id = 1
        self._calls: dict[int, asyncio.Future] = {}
        self._frames: asyncio.Queue = asyncio.Queue()  # frame dicts, then None (ended) or a WebError
        self._started: asyncio.Future | None = None
        self._reader: asyncio.Task | None = None
        self.notices: asyncio.Queue = asyncio.Queue()  # WebErrors about messages that were neither calls nor the stream

    async def __aenter__(self) -> "WebClient":
        url, headers = self.url, None
        if self.token is not None and self.auth == "query":
            url += ("&" if "?" in url else "?") + f"token={self.token}"
        if self.token is not None and self.auth == "header":
            headers = {"Authorization": f"Bearer {self.token}"}
        extra = {"ssl": self.ssl_context} if self.ssl_context is not None else {}
        self.ws = await connect(url, additional_headers=headers, max_size=None, compression=None,
                                open_timeout=self.open_timeout, **extra)
        if self.token is not None and self.auth == "message":
            await self.ws.send(json.dumps({"type": "auth", "token": self.token}))
        first = json.loads(await self.ws.recv())
        if first.get("type") != "hello":
            await self.ws.close()
            raise WebError(first.get("code", "UNKNOWN"), first.get("message", str(first)))
        self.hello = first
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    frame = unpack_frame(message)
                    frame["received_ns"] = time.perf_counter_ns()
                    self._frames.put_nowait(frame)
                    continue
                msg = json.loads(message)
                kind = msg.get("type")
                if kind == "result" or (kind == "error" and msg.get("id") is not None):
                    future = self._calls.pop(msg["id"], None)
                    if future is not None and not future.done():
                        if kind == "result":
                            future.set_result(msg["response"])
                        else:
                            future.set_exception(WebError(msg["code"], msg["message"]))
                elif kind == "started":
                    if self._started is not None and not self._started.done():
                        self._started.set_result(msg)
                elif kind == "ended":
                    self._frames.put_nowait(None)
                elif kind == "error":
                    err = WebError(msg["code"], msg["message"])
                    if msg.get("stream"):
                        if self._started is not None and not self._started.done():
                            self._started.set_exception(err)  # refused at start: start() raises it
                        else:
                            self._frames.put_nowait(err)  # the running stream ended with it
                    else:
                        self.notices.put_nowait(err)  # a message of the connection was refused
        finally:
            closed = WebError("UNAVAILABLE", "connection closed")
            for future in self._calls.values():
                if not future.done():
                    future.set_exception(closed)
            if self._started is not None and not self._started.done():
                self._started.set_exception(closed)
            self._frames.put_nowait(closed)

    async def send(self, message: dict) -> None:
        await self.ws.send(json.dumps(message))

    async def call(self, method: str, request: dict | None = None, timeout: float = 60.0) -> dict:
        return await self._request({"type": "call", "method": method, "request": request or {}}, timeout)

    async def parse_sequence(self, npz_base64: str, name: str = "upload", timeout: float = 60.0) -> dict:
        return await self._request({"type": "parse_sequence", "npz_base64": npz_base64, "name": name}, timeout)

    async def _request(self, message: dict, timeout: float) -> dict:
        call_id = self._next_id
        self._next_id += 1
        future = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        await self.send({**message, "id": call_id})
        return await asyncio.wait_for(future, timeout)

    async def start(self, config: dict, timeout: float = 30.0) -> dict:
        """Opens the stream; returns the "started" message, raises WebError when the server refuses it."""
        self._started = asyncio.get_running_loop().create_future()
        await self.send({"type": "start", "config": config})
        return await asyncio.wait_for(self._started, timeout)

    async def send_frame(self, sequence: int, expression, cam2world=None, intrinsics=None,
                         timestamp_us: int | None = None) -> None:
        message = {"type": "frame", "sequence": int(sequence),
                   "client_timestamp_us": time.perf_counter_ns() // 1000 if timestamp_us is None else timestamp_us,
                   "expression": np.asarray(expression, dtype=np.float32).tolist()}
        if cam2world is not None:
            message["camera"] = {"cam2world": np.asarray(cam2world, np.float32).reshape(-1).tolist(),
                                 "intrinsics": np.asarray(intrinsics, np.float32).reshape(-1).tolist()}
        await self.send(message)

    async def next_frame(self, timeout: float = 60.0) -> dict | None:
        """The next frame (dict of unpack_frame + received_ns); None once the stream ended after end();
        raises WebError when the stream ended with an error."""
        item = await asyncio.wait_for(self._frames.get(), timeout)
        if isinstance(item, WebError):
            raise item
        return item

    async def end(self) -> None:
        await self.send({"type": "end"})

