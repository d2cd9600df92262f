"""Several nodes on one real PostgreSQL: what the tests of vigie.cluster share.

`Judges` watches every node's camera assignment as it happens (all nodes run in this
process, on one event loop, so an assignment is one atomic step): a camera judged by two
nodes at once is recorded as a violation the moment it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Collection, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

import pytest

# The RTSP harness's fixtures (tests/cameras is another team's; used as it is).
from tests.cameras.conftest import (  # noqa: F401
    h264_clip,
    rtsp_server,
    rtsp_server_process,
)


class Judges:
    """Who judges which camera, over time."""

    def __init__(self) -> None:
        self.holder: dict[str, str] = {}
        self.violations: list[str] = []
        self.started: dict[str, list[tuple[float, str]]] = {}  # camera: [(when, node)]
        self.stopped: dict[str, list[tuple[float, str]]] = {}

    def start(self, node: str, camera: str) -> None:
        other = self.holder.get(camera)
        if other is not None and other != node:
            self.violations.append(f"{camera} judged by {node} while {other} judges it")
        self.holder[camera] = node
        self.started.setdefault(camera, []).append((time.monotonic(), node))

    def stop(self, node: str, camera: str) -> None:
        if self.holder.get(camera) == node:
            del self.holder[camera]
        self.stopped.setdefault(camera, []).append((time.monotonic(), node))

    def of(self, node: str) -> set[str]:
        return {c for c, n in self.holder.items() if n == node}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for node in self.holder.values():
            out[node] = out.get(node, 0) + 1
        return out

    def gaps(self, since: float) -> dict[str, float]:
        """For each camera that changed hands after `since`: the longest time nobody judged
        it, from one node's stop to the next node's start."""
        out: dict[str, float] = {}
        for camera, stops in self.stopped.items():
            starts = self.started.get(camera, [])
            for at, _ in stops:
                if at < since:
                    continue
                after = [t for t, _ in starts if t >= at]
                out[camera] = max(out.get(camera, 0.0),
                                  (min(after) if after else time.monotonic()) - at)
        return out


class Recorder:
    """A camera supervisor's stand-in for one node (CameraWatch): records what it is told,
    and says a stream flows 0.2 s after it is first watched."""

    def __init__(self, node: str, judges: Judges) -> None:
        self.node = node
        self.judges = judges
        self.watch: set[str] = set()
        self.judge: set[str] = set()
        self.since: dict[str, float] = {}
        self.dead = False
        self.resumed: dict[str, set[str]] = {}

    def assign(self, watch: AbstractSet[str], judge: AbstractSet[str], *,
               references: Mapping[str, bytes] | None = None,
               open_reasons: Mapping[str, Collection[str]] | None = None) -> None:
        assert not self.dead, f"{self.node} was killed but is still told what to watch"
        assert set(judge) <= set(watch)
        for camera in set(judge) - self.judge:
            self.judges.start(self.node, camera)
            self.resumed[camera] = set((open_reasons or {}).get(camera, ()))
        for camera in self.judge - set(judge):
            self.judges.stop(self.node, camera)
        now = time.monotonic()
        self.since = {c: self.since.get(c, now) for c in watch}
        self.watch, self.judge = set(watch), set(judge)

    def receiving(self, key: str) -> bool:
        return key in self.since and time.monotonic() - self.since[key] > 0.2

    def die(self) -> None:
        """The process is gone: it judges nothing any more."""
        for camera in self.judge:
            self.judges.stop(self.node, camera)
        self.judge, self.watch, self.dead = set(), set(), True


class TcpProxy:
    """A node's way to PostgreSQL that the test can cut like a network partition: bytes stop
    flowing both ways (connections stay open, nothing is refused), and flow again when it
    heals, as TCP would retransmit them."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._open.wait()
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await src.read(65536):
                await self._open.wait()
                dst.write(data)
                await dst.drain()
        dst.close()


@pytest.fixture
async def pg_proxy(fresh_dsn: str) -> AsyncIterator[TcpProxy]:
    from urllib.parse import urlsplit

    parts = urlsplit(fresh_dsn)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    yield proxy
    await proxy.stop()


def through(dsn: str, proxy: TcpProxy) -> str:
    """The same database, reached through the proxy."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    netloc = f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else (
        f"127.0.0.1:{proxy.port}")
    return urlunsplit(parts._replace(netloc=netloc))


async def wait_for(check: Any, timeout: float, interval: float = 0.05) -> float:
    """Poll a synchronous predicate; the seconds it took. Fails with its last value."""
    started = time.monotonic()
    while True:
        result = check()
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)
