"""What stands for the supervision room in the fault tests: a live-feed client on vigie's
WebSocket, and a webhook receiver for the notifiers. Both run in a thread of their own (the
fault tests are synchronous: vigie is a child process) and keep everything they got."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiohttp

from tests.conftest import free_port


class FeedClient:
    """Connected to /api/v1/stream until `close`; `messages` in the order received."""

    def __init__(self, api: str, token: str, since: int | None = None) -> None:
        self.url = api.replace("http://", "ws://") + "/api/v1/stream"
        self._params = {"token": token} | ({"since": str(since)} if since is not None else {})
        self.messages: list[dict[str, Any]] = []
        self.closed: str | None = None  # why the server closed it, if it did
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True,
                                        name="feed-client")

    def start(self, timeout: float = 10) -> FeedClient:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.of_type("feed.hello"):
            if self.closed is not None or time.monotonic() > deadline:
                raise AssertionError(f"no feed.hello from {self.url}: {self.closed}")
            time.sleep(0.05)
        return self

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                self.url, params=self._params, heartbeat=10) as ws:
            while not self._stop.is_set():
                try:
                    msg = await ws.receive(timeout=0.2)
                except TimeoutError:
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    self.closed = f"{msg.type.name} {ws.close_code} {msg.extra}"
                    return
                with self._lock:
                    self.messages.append(json.loads(msg.data))

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.messages if m.get("type") == type_]

    def about(self, alert_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.messages if (m.get("alert") or {}).get("id") == alert_id]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


class WebhookSink:
    """An HTTP server that takes every POST (any signature) and keeps its JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        lock = threading.Lock()
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    bodies.append(json.loads(raw))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="webhook-sink")
        self._thread.start()

    def about(self, alert_id: str) -> list[str]:
        """The change types notified for an alert, in order."""
        return [b["type"] for b in list(self.bodies)
                if (b.get("alert") or {}).get("id") == alert_id]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
