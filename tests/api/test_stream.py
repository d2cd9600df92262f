"""GET /api/v1/stream on real nodes and a real PostgreSQL: who may listen, what comes in
which order, resuming with since= (no gap, no repeat, or an explicit feed.gap), several
nodes on one database, slow clients, revoked tokens, shutdown, and a lost LISTEN connection.

Every message received is checked against the StreamMessage schema the node serves."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.api.test_api import OpenApi
from tests.conftest import SITES, eventually, make_config
from vigie.alerts import Raise
from vigie.alerts._feed import Feed
from vigie.app import Node, running_node
from vigie.metrics import Metrics
from vigie.store import Store
from vigie.store._alerts import AlertOccurrence
from vigie.store._tokens import create_token, revoke_token

NO_MQTT = "mqtt://127.0.0.1:1"  # never dialled: the nodes here run with_mqtt=False
JM, PASTEUR = "clg-jean-moulin", "clg-pasteur"
PATH = "/api/v1/stream"
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
# No camera to watch: the nodes here start no worker process and raise no camera alert of
# their own, so every message a test sees is one it caused.
QUIET_SITES = [{k: v for k, v in copy.deepcopy(s).items() if k != "cameras"} for s in SITES]


def config(dsn: str) -> Any:
    return make_config(dsn, NO_MQTT, sites=QUIET_SITES)


@pytest.fixture
async def node(fresh_dsn: str) -> AsyncIterator[Node]:
    async with running_node(config(fresh_dsn), with_mqtt=False) as node:
        yield node


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def make_token(node: Node, role: str = "admin", sites: list[str] | None = None,
                     name: str | None = None) -> str:
    async with node.store.connection() as conn:
        value, _ = await create_token(conn, name=name or f"{role}-{uuid.uuid4().hex[:8]}",
                                      role=role, sites=sites, expires_at=None)
    return value


_SPECS: dict[str, OpenApi] = {}


async def _spec(http: aiohttp.ClientSession, node: Node) -> OpenApi:
    if node.api_url not in _SPECS:
        async with http.get(node.api_url + "/api/v1/openapi.json") as r:
            _SPECS[node.api_url] = OpenApi(await r.json())
    return _SPECS[node.api_url]


class Stream:
    """A client of the feed: every message it reads is checked against the schema."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, spec: OpenApi) -> None:
        self.ws = ws
        self.validator = spec.validator({"$ref": "#/components/schemas/StreamMessage"})

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
        body: dict[str, Any] = msg.json()
        self.validator.validate(body)
        return body

    async def take(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        return [await self.next(timeout) for _ in range(n)]

    async def closed(self, timeout: float = 10.0) -> tuple[int | None, str]:
        """Skip what is left; the close code and reason."""
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type is aiohttp.WSMsgType.CLOSE:
                return msg.data, msg.extra or ""
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return self.ws.close_code, ""


@asynccontextmanager
async def stream(http: aiohttp.ClientSession, node: Node, token: str | None,
                 since: int | None = None, via: str = "header") -> AsyncIterator[Stream]:
    query = {} if since is None else {"since": str(since)}
    headers = {}
    if token is not None and via == "header":
        headers["Authorization"] = f"Bearer {token}"
    elif token is not None:
        query["token"] = token
    async with http.ws_connect(node.api_url + PATH, params=query, headers=headers,
                               autoclose=False) as ws:
        yield Stream(ws, await _spec(http, node))


async def raise_alert(node: Node, site: str = PASTEUR, source: str | None = None) -> str:
    occ = AlertOccurrence(site=site, source=source or f"src-{uuid.uuid4().hex[:8]}",
                          source_type="sensor", kind="intrusion", severity="critical",
                          title=f"intrusion at {site}", at=T0)
    changes = await node.alerts.raise_now([Raise(occ)])
    return str(changes[0].alert.id)


def camera(node: Node, site: str, name: str, state: str = "offline") -> None:
    """What the camera supervisor's hook does on a state change."""
    assert node.feed is not None
    node.feed.camera_state(site, name, state, ["offline"] if state == "offline" else [],
                           datetime.now(UTC))


async def post(http: aiohttp.ClientSession, node: Node, token: str, path: str,
               body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(node.api_url + path, json=body,
                         headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status in (200, 201), (r.status, await r.text())
        answer: dict[str, Any] = await r.json()
        return answer


async def status(http: aiohttp.ClientSession, node: Node, token: str) -> dict[str, Any]:
    async with http.get(node.api_url + PATH, headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200, await r.text()
        answer: dict[str, Any] = await r.json()
        return answer


# --- who may listen ------------------------------------------------------------------------


async def test_a_stream_needs_a_valid_token(node: Node, http: aiohttp.ClientSession) -> None:
    revoked = await make_token(node, name="gone")
    async with node.store.connection() as conn:
        await revoke_token(conn, "gone")
    for token, via in [(None, "header"), ("vigie_nope", "header"), ("vigie_nope", "query"),
                       (revoked, "query"), ("", "query")]:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            async with stream(http, node, token, via=via):
                pass
        assert caught.value.status == 401, (token, via)
    async with http.get(node.api_url + PATH) as r:
        assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert (await r.json())["error"]["code"] == "unauthorized"


async def test_every_role_may_listen(node: Node, http: aiohttp.ClientSession) -> None:
    for role in ("admin", "operator", "technician", "viewer"):
        async with stream(http, node, await make_token(node, role)) as s:
            assert (await s.next())["type"] == "feed.hello"
            assert s.ws._response.headers["Server"] == "vigie"


async def test_bad_parameters_and_handshakes_are_refused(
    node: Node, http: aiohttp.ClientSession
) -> None:
    token = await make_token(node)
    auth = {"Authorization": f"Bearer {token}"}
    for query in ("since=-1", "since=abc", "since=1.5", "since=1&since=2", "bogus=1",
                  f"token={token}&token={token}", f"since={2**63}"):
        async with http.get(f"{node.api_url}{PATH}?{query}", headers=auth) as r:
            assert r.status == 400, (query, r.status)
            assert (await r.json())["error"]["code"] == "invalid_query"
    broken = {**auth, "Upgrade": "websocket", "Connection": "Upgrade"}  # no key, no version
    async with http.get(node.api_url + PATH, headers=broken) as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == "bad_handshake"


async def test_a_plain_get_answers_the_feed_status(node: Node, http: aiohttp.ClientSession
                                                   ) -> None:
    token = await make_token(node, "viewer")

    async def following() -> bool:
        return bool((await status(http, node, token))["following"])

    await eventually(following)
    assert await status(http, node, token) == {"head": 0, "since_min": 0, "following": True}
    await raise_alert(node)
    await eventually(lambda: _head_above(http, node, token, 0))


async def _head_above(http: aiohttp.ClientSession, node: Node, token: str, seq: int) -> bool:
    return (await status(http, node, token))["head"] > seq


async def test_the_token_may_come_in_the_query_and_goes_nowhere_else(
    node: Node, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = await make_token(node, "viewer", [PASTEUR])
    async with stream(http, node, token, since=0, via="query") as s:
        assert (await s.next())["type"] == "feed.hello"
        alert = await raise_alert(node, PASTEUR)
        message = await s.next()
        assert (message["type"], message["alert"]["id"]) == ("alert.opened", alert)
    async with http.get(f"{node.api_url}{PATH}?token={token}&bogus=1") as r:
        assert r.status == 400 and token not in await r.text()
    async with http.get(node.api_url + "/metrics") as r:
        assert token not in await r.text()
    assert token not in caplog.text
    async with node.store.connection() as conn:
        audit = await conn.fetchval("SELECT string_agg(target || ' ' || details::text, ' ') "
                                    "FROM audit_log")
    assert token not in (audit or "")


# --- what comes, in which order ------------------------------------------------------------


async def test_every_change_comes_once_in_seq_order(node: Node, http: aiohttp.ClientSession
                                                    ) -> None:
    token = await make_token(node, "operator", name="nadia")
    async with stream(http, node, token) as s:
        hello = await s.next()
        assert hello["type"] == "feed.hello" and hello["since"] is None
        alert = await raise_alert(node, PASTEUR, source="centrale")
        await raise_alert(node, PASTEUR, source="centrale")  # the same: a repeat
        base = f"/api/v1/alerts/{alert}"
        await post(http, node, token, f"{base}/ack", {"comment": "on y va"})
        await post(http, node, token, f"{base}/comments", {"comment": "agent sur place"})
        await post(http, node, token, f"{base}/resolve", {})
        camera(node, JM, "entree", "offline")
        camera(node, JM, "entree", "ok")
        messages = await s.take(7)
    assert [m["type"] for m in messages] == [
        "alert.opened", "alert.repeated", "alert.acknowledged", "alert.commented",
        "alert.resolved", "camera.state", "camera.state"]
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(set(seqs)) and seqs[0] > hello["head"]
    opened, repeated, acked, commented, resolved, offline, ok = messages
    assert {m["alert"]["id"] for m in messages[:5]} == {alert}
    assert (opened["actor"], repeated["alert"]["count"]) == ("vigie", 2)
    assert (acked["actor"], acked["alert"]["state"]) == ("nadia", "acknowledged")
    assert commented["actor"] == "nadia" and resolved["alert"]["state"] == "resolved"
    assert all(m["site"] == PASTEUR for m in messages[:5])
    assert offline["site"] == JM and offline["camera"] == {
        "id": "entree", "site": JM, "state": "offline", "reasons": ["offline"],
        "since": offline["at"]}
    assert ok["camera"]["state"] == "ok" and ok["camera"]["reasons"] == []


async def test_a_token_limited_to_sites_gets_only_their_changes(
    node: Node, http: aiohttp.ClientSession
) -> None:
    admin, viewer = await make_token(node), await make_token(node, "viewer", [PASTEUR])
    async with stream(http, node, admin) as everything, stream(http, node, viewer) as mine:
        start = (await everything.next())["head"]
        assert (await mine.next())["type"] == "feed.hello"
        await raise_alert(node, JM)
        camera(node, JM, "entree")
        ours = await raise_alert(node, PASTEUR)
        camera(node, PASTEUR, "gymnase")
        await raise_alert(node, JM)
        camera(node, PASTEUR, "preau")  # last: once it is in, nothing else is on the way
        seen_all = await everything.take(6)
        seen_mine = await mine.take(3)
    assert [m["site"] for m in seen_all] == [JM, JM, PASTEUR, PASTEUR, JM, PASTEUR]
    assert [m["seq"] for m in seen_mine] == [m["seq"] for m in seen_all if m["site"] == PASTEUR]
    assert seen_mine[0]["alert"]["id"] == ours
    # A replay is scoped the same way.
    async with stream(http, node, viewer, since=start) as replay:
        assert (await replay.next())["type"] == "feed.hello"
        assert await replay.take(3) == seen_mine
        await raise_alert(node, JM)
        camera(node, PASTEUR, "cour")
        assert (await replay.next())["camera"]["id"] == "cour"


# --- resuming ------------------------------------------------------------------------------


async def test_resuming_with_since_misses_nothing_and_repeats_nothing(
    node: Node, http: aiohttp.ClientSession
) -> None:
    """Changes keep coming while the client is away and while it reconnects."""
    token = await make_token(node)
    total = 400

    async def produce() -> None:
        for i in range(total):
            camera(node, JM, f"cam-{i}")
            if i % 5 == 0:
                await asyncio.sleep(0.002)

    async with stream(http, node, token) as first:
        await first.next()
        producer = asyncio.create_task(produce())
        before = await first.take(60)
    try:
        await asyncio.sleep(0.05)  # away for a while
        async with stream(http, node, token, since=before[-1]["seq"]) as second:
            hello = await second.next()
            assert hello["type"] == "feed.hello" and hello["since"] == before[-1]["seq"]
            after = await second.take(total - 60)
    finally:
        await producer
    names = [m["camera"]["id"] for m in before + after]
    assert names == [f"cam-{i}" for i in range(total)]
    seqs = [m["seq"] for m in before + after]
    assert seqs == sorted(set(seqs))


async def test_since_older_than_the_backlog_is_a_gap(node: Node, http: aiohttp.ClientSession
                                                     ) -> None:
    assert node.feed is not None
    token = await make_token(node)
    for i in range(10):
        camera(node, JM, f"cam-{i}")
    assert await node.feed.flush(5)
    async with node.store.connection() as conn:
        seqs = [r["seq"] for r in await conn.fetch("SELECT seq FROM feed ORDER BY seq")]
    assert len(seqs) == 10
    node.feed.keep_rows = 3
    assert await node.feed.trim() == 7
    assert (await status(http, node, token))["since_min"] == seqs[6]
    await eventually(lambda: _head_above(http, node, token, seqs[-1] - 1))

    async with stream(http, node, token, since=seqs[0]) as s:
        gap = await s.next()
        assert gap == {"type": "feed.gap", "reason": "trimmed", "since": seqs[0],
                       "since_min": seqs[6], "head": seqs[-1]}
        camera(node, JM, "after-the-gap")  # what follows the gap is live, not the backlog
        assert (await s.next())["camera"]["id"] == "after-the-gap"
    async with stream(http, node, token, since=seqs[6]) as s:
        assert (await s.next())["type"] == "feed.hello"
        replay = await s.take(4)
        assert [m["camera"]["id"] for m in replay] == [
            "cam-7", "cam-8", "cam-9", "after-the-gap"]
    async with stream(http, node, token, since=10**12) as s:  # not a seq of this feed
        gap = await s.next()
        assert gap["type"] == "feed.gap" and gap["reason"] == "unknown"
        camera(node, JM, "next")
        assert (await s.next())["camera"]["id"] == "next"


async def test_trimming_keeps_the_newest_and_counts_age(node: Node) -> None:
    assert node.feed is not None
    for i in range(5):
        camera(node, JM, f"cam-{i}")
    assert await node.feed.flush(5)
    assert await node.feed.trim() == 0  # young and few: kept
    async with node.store.connection() as conn:
        await conn.execute("UPDATE feed SET stored_at = stored_at - interval '25 hours' "
                           "WHERE seq IN (SELECT seq FROM feed ORDER BY seq LIMIT 2)")
    assert await node.feed.trim() == 2
    async with node.store.connection() as conn:
        left = await conn.fetchval("SELECT count(*) FROM feed")
        horizon = await conn.fetchval("SELECT trimmed_through FROM feed_horizon")
        oldest = await conn.fetchval("SELECT min(seq) FROM feed")
    assert left == 3 and horizon == oldest - 1


# --- several nodes -------------------------------------------------------------------------


async def test_a_change_made_on_one_node_reaches_the_clients_of_another(
    fresh_dsn: str, http: aiohttp.ClientSession
) -> None:
    async with running_node(config(fresh_dsn), with_mqtt=False) as a, \
            running_node(config(fresh_dsn), with_mqtt=False) as b:
        token = await make_token(a, "operator", name="olivier")
        async with stream(http, b, token) as on_b, stream(http, a, token) as on_a:
            head = (await on_b.next())["head"]
            await on_a.next()
            alert = await raise_alert(a, PASTEUR)
            await post(http, a, token, f"/api/v1/alerts/{alert}/ack", {})
            await post(http, b, token, f"/api/v1/alerts/{alert}/comments", {"comment": "vu"})
            # Each node writes its changes a moment after the call that made them returns:
            # what the other node writes meanwhile may come first. Here the three come first.
            from_b, from_a = await on_b.take(3), await on_a.take(3)
            assert [m["type"] for m in from_b] == [
                "alert.opened", "alert.acknowledged", "alert.commented"]
            for i in range(20):  # both nodes write at once
                camera(a, JM, f"a-{i}")
                camera(b, PASTEUR, f"b-{i}")
            from_b += await on_b.take(40)
            from_a += await on_a.take(40)
        assert from_b[1]["actor"] == "olivier"
        assert from_a == from_b, "every node sends the same messages in the same order"
        async with a.store.connection() as conn:
            stored = [r["seq"] for r in await conn.fetch(
                "SELECT seq FROM feed WHERE seq > $1 ORDER BY seq", head)]
        assert [m["seq"] for m in from_b] == stored
        names = [m["camera"]["id"] for m in from_b[3:]]
        assert [n for n in names if n.startswith("a-")] == [f"a-{i}" for i in range(20)]
        assert [n for n in names if n.startswith("b-")] == [f"b-{i}" for i in range(20)]


# --- slow clients --------------------------------------------------------------------------


@asynccontextmanager
async def stalled_client(node: Node, token: str
                         ) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A WebSocket client that reads nothing once connected, with small buffers."""
    url = urlsplit(node.api_url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (url.hostname, url.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET {PATH} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    try:
        yield reader, writer
    finally:
        writer.close()
        await writer.wait_closed()


async def read_frames(reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> tuple[list[dict[str, Any]], int, str]:
    """Every text frame up to the server's close frame (answered); the close code, reason."""
    import orjson

    texts: list[dict[str, Any]] = []
    while True:
        first, second = await reader.readexactly(2)
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(await reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(size)
        opcode = first & 0x0F
        if opcode == 0x1:
            texts.append(orjson.loads(payload))
        elif opcode == 0x8:
            writer.write(b"\x88\x82\x00\x00\x00\x00" + payload[:2])  # masked with zeros
            return texts, int.from_bytes(payload[:2], "big"), payload[2:].decode()


async def test_a_slow_client_is_dropped_and_a_fast_one_is_not(
    node: Node, http: aiohttp.ClientSession
) -> None:
    assert node.feed is not None
    node.feed.client_queue = 20
    token = await make_token(node)
    # Big enough to fill the socket buffers between the node and a client that reads nothing
    # (a few MB on loopback), so the node's queue for it fills up.
    total, notes = 400, {"note": "x" * 20_000}
    async with stalled_client(node, token) as (reader, writer), \
            stream(http, node, token) as fast:
        await fast.next()
        await node.alerts.raise_now([Raise(AlertOccurrence(
            site=JM, source=f"src-{i}", source_type="sensor", kind="intrusion",
            severity="critical", title="intrusion", at=T0, details=notes))
            for i in range(total)])
        received = await fast.take(total)
        assert [m["alert"]["source"] for m in received] == [f"src-{i}" for i in range(total)]
        text = await _metrics(http, node)
        assert "vigie_feed_clients_dropped_total 1.0" in text
        assert "vigie_feed_clients 1.0" in text
        got, code, reason = await asyncio.wait_for(read_frames(reader, writer), 10)
    assert code == 1013 and reason.startswith("too slow: reconnect with since="), reason
    assert got[0]["type"] == "feed.hello" and 0 < len(got) - 1 < total
    # What it got is in order, and resuming where the reason says gives the rest.
    since = int(reason.rsplit("=", 1)[1])
    assert since == got[-1]["seq"]
    async with stream(http, node, token, since=since) as again:
        assert (await again.next())["type"] == "feed.hello"
        rest = await again.take(total - (len(got) - 1))
    sources = [m["alert"]["source"] for m in got[1:] + rest]
    assert sources == [f"src-{i}" for i in range(total)]


async def _metrics(http: aiohttp.ClientSession, node: Node) -> str:
    async with http.get(node.api_url + "/metrics") as r:
        return await r.text()


# --- the end of a stream -------------------------------------------------------------------


async def test_a_revoked_token_ends_its_streams(
    node: Node, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("vigie.api._stream.REVALIDATE_EVERY", 0.1)
    monkeypatch.setattr("vigie.api._auth.CACHE_SECONDS", 0.0)
    token = await make_token(node, "viewer", name="leaving")
    async with stream(http, node, token) as s:
        await s.next()
        async with node.store.connection() as conn:
            await revoke_token(conn, "leaving")
        assert await s.closed() == (1008, "token no longer valid")


async def test_the_server_pings(node: Node, http: aiohttp.ClientSession,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vigie.api._stream.HEARTBEAT", 0.2)
    headers = {"Authorization": f"Bearer {await make_token(node)}"}
    async with http.ws_connect(node.api_url + PATH, headers=headers, autoping=False) as ws:
        assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.TEXT  # hello
        assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.PING


async def test_shutdown_closes_streams_going_away(fresh_dsn: str,
                                                   http: aiohttp.ClientSession) -> None:
    async with running_node(config(fresh_dsn), with_mqtt=False) as node:
        token = await make_token(node)
        ws = await http.ws_connect(node.api_url + PATH,
                                   headers={"Authorization": f"Bearer {token}"})
        hello = (await ws.receive(timeout=5)).json()
        camera(node, JM, "last")
        last = (await ws.receive(timeout=5)).json()
        closing = asyncio.create_task(ws.receive(timeout=5))  # answers the close at once
    msg = await closing
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001
    assert msg.extra == f"server shutting down: reconnect with since={last['seq']}"
    assert hello["head"] < last["seq"]
    await ws.close()


async def test_a_node_that_loses_its_listening_connection_catches_up(
    node: Node, http: aiohttp.ClientSession
) -> None:
    assert node.feed is not None
    token = await make_token(node)
    async with stream(http, node, token) as s:
        await s.next()
        camera(node, JM, "before")
        assert (await s.next())["camera"]["id"] == "before"
        async with node.store.connection() as conn:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'vigie-feed' AND datname = current_database()")
        assert killed == 1
        for i in range(5):  # announced while nobody listens on this node
            camera(node, JM, f"while-away-{i}")
        assert [m["camera"]["id"] for m in await s.take(5)] == [
            f"while-away-{i}" for i in range(5)]

        async def following_again() -> bool:
            return bool(node.feed and node.feed.following)

        await eventually(following_again)
        camera(node, JM, "after")
        assert (await s.next())["camera"]["id"] == "after"


async def test_a_node_that_missed_trimmed_changes_sends_its_clients_to_resume(
    node: Node, http: aiohttp.ClientSession
) -> None:
    token = await make_token(node)
    async with stream(http, node, token) as s:
        await s.next()
        camera(node, JM, "before")
        before = await s.next()
        # Changes this node never read (no notification; gone at once, as if it had been
        # away for a day).
        async with node.store.transaction() as conn:
            await conn.execute(
                "INSERT INTO feed (at, type, site, payload) SELECT now(), 'camera.state', $1, "
                "'{}' FROM generate_series(1, 3)", JM)
            newest = await conn.fetchval("SELECT max(seq) FROM feed")
            await conn.execute("DELETE FROM feed")
            await conn.execute("UPDATE feed_horizon SET trimmed_through = $1", newest)
        camera(node, JM, "after")
        assert await s.closed() == (1013, f"node fell behind: reconnect with since="
                                          f"{before['seq']}")
    async with stream(http, node, token, since=before["seq"]) as again:
        gap = await again.next()
        assert (gap["type"], gap["reason"], gap["since_min"]) == ("feed.gap", "trimmed", newest)


# --- the writer's own node dispatches what it wrote ------------------------------------------


async def test_the_writing_node_dispatches_its_changes_after_what_others_wrote_before(
    store: Store,
) -> None:
    """A node's own changes reach its clients when its write commits (no notification
    round trip), but never ahead of changes another node committed earlier and this node
    has not read yet: seq order holds on every node."""
    feed = Feed(store, Metrics("a"), "unused: this feed does not follow")
    await feed.start()
    subscription = feed.subscribe(None)
    # Written here, nothing unread before it: dispatched as the write commits.
    feed.camera_state(JM, "own-1", "offline", ["offline"], datetime.now(UTC))
    await feed._write_some()
    first = subscription._queue.popleft()
    assert json.loads(first.wire)["camera"]["id"] == "own-1" and feed.head == first.seq
    # Another node writes; this node has not read it when it writes again itself.
    other = Feed(store, Metrics("b"), "unused")
    other.camera_state(PASTEUR, "other", "ok", [], datetime.now(UTC))
    await other._write_some()
    feed.camera_state(JM, "own-2", "offline", ["offline"], datetime.now(UTC))
    await feed._write_some()
    assert not subscription._queue, "own-2 must wait for the other node's change"
    async with store.connection() as conn:
        await feed._catch_up(conn)  # what the follower does on the notification
    names = [json.loads(m.wire)["camera"]["id"] for m in subscription._queue]
    assert names == ["other", "own-2"]
    assert [m.seq for m in subscription._queue] == [first.seq + 1, first.seq + 2]
    async with store.connection() as conn:
        await feed._catch_up(conn)  # read again: nothing twice
    assert len(subscription._queue) == 2
