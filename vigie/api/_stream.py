"""GET /api/v1/stream: the live feed of alert and camera-state changes, over a WebSocket.

The server sends JSON text frames:

- first `{"type": "feed.hello", "head": H, "since": S | null}`: with `?since=S`, every stored
  change after S that the token may see comes next, then the live ones; without it, the
  changes after H. Or, instead, `{"type": "feed.gap", "reason": "trimmed" | "unknown",
  "since": S, "since_min": M, "head": H}`: the changes after S are no longer all kept (or S
  is not a seq of this feed): reload through the REST API; the changes after H follow.
  (A gap can also interrupt a replay, if the feed is trimmed meanwhile.)
- then changes, `{"seq", "type", "at", "site", ...}`, in seq order, each once: `alert.opened`,
  `alert.repeated`, `alert.acknowledged`, `alert.resolved`, `alert.commented` (with `actor`
  and `alert`), `camera.state` (with `camera`: `id`, `site`, `state`, `reasons`, `since`).
- while the database is away, alert changes this node makes in memory (an intrusion during
  an outage) and its cameras' state changes come at once as `{"seq": null, "provisional":
  true, "type": "alert.opened", …}`; once stored, an `alert.opened` / `alert.resolved`
  already told is not sent again on this connection (later changes of the alert are, with
  their seq; a camera state comes again, the same). A provisional message moves no resume
  position: `since` stays the last seq received, and resuming at this node's head needs no
  database (a client reconnects during an outage).

Close codes: 1001 the node is shutting down; 1008 the token is no longer valid; 1011 an
internal error; 1013 the client (or this node) fell too far behind, or the database is
away — reconnect with `?since=` the last seq received. What clients send is ignored. A plain GET (no
Upgrade) answers the feed's status instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, web

from vigie.alerts._feed import LAGGED, SHUTDOWN, SLOW, Feed, FeedMessage, Subscription
from vigie.api._auth import Principal
from vigie.api._errors import ApiError
from vigie.errors import StoreError, VigieError

if TYPE_CHECKING:
    from vigie.api._routes import ApiContext

__all__ = ["PATH", "install_stream", "stream"]

log = logging.getLogger("vigie.api")

PATH = "/api/v1/stream"
HEARTBEAT = 30.0  # ping every so often; no pong within half of it closes the connection
CLOSE_SECONDS = 5.0  # for the client to answer our close frame
REVALIDATE_EVERY = 30.0  # a revoked or expired token ends its streams this fast (+ cache)


async def stream(request: web.Request, ctx: ApiContext, p: Principal,
                 q: dict[str, Any]) -> web.StreamResponse:
    feed = ctx.feed
    if feed is None:
        raise ApiError(503, "feed_unavailable", "the live feed does not run on this node")
    if request.headers.get("Upgrade", "").strip().lower() != "websocket":
        return await _status(feed)
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT, timeout=CLOSE_SECONDS, compress=False,
                               max_msg_size=4096)
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "bad_handshake", "not a valid WebSocket handshake")
    ws.headers["Server"] = "vigie"  # the handshake is sent before any middleware sees it
    # Before reading the backlog: nothing falls between.
    subscription = feed.subscribe(p.sites, provisional=True)
    try:
        await ws.prepare(request)
        await _Session(request, ws, ctx, feed, subscription, q["since"], p.name).run()
    finally:
        feed.unsubscribe(subscription)
    return ws


async def _status(feed: Feed) -> web.Response:
    from vigie.api._routes import ok

    since_min, _ = await feed.position()
    return ok({"head": feed.head, "since_min": since_min, "following": feed.following})


class _Session:
    def __init__(self, request: web.Request, ws: web.WebSocketResponse, ctx: ApiContext,
                 feed: Feed, subscription: Subscription, since: int | None, who: str) -> None:
        self._request = request
        self._ws = ws
        self._ctx = ctx
        self._feed = feed
        self._subscription = subscription
        self._since = since
        self._who = who
        self._last = subscription.start  # the client has everything up to here

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_all(), name="vigie:stream-send")
        token = asyncio.create_task(self._watch_token(), name="vigie:stream-token")
        tasks = (
            sender, token,
            asyncio.create_task(self._read_all(), name="vigie:stream-read"),
            asyncio.create_task(self._subscription.wait_closed(), name="vigie:stream-drop"),
        )
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._close(*self._verdict(done, sender, token))

    def _verdict(self, done: set[asyncio.Task[Any]], sender: asyncio.Task[None],
                 token: asyncio.Task[None]) -> tuple[int, str]:
        """The close code and reason, by what ended the session first."""
        resume = f"reconnect with since={self._last}"
        why = self._subscription.closed_because
        if why == SLOW:
            log.warning("live feed: %s fell %d messages behind at seq %d; dropped", self._who,
                        self._feed.client_queue, self._last)
            return WSCloseCode.TRY_AGAIN_LATER, f"too slow: {resume}"
        if why == LAGGED:
            return WSCloseCode.TRY_AGAIN_LATER, f"node fell behind: {resume}"
        if why == SHUTDOWN:
            return WSCloseCode.GOING_AWAY, f"server shutting down: {resume}"
        if token in done:
            return WSCloseCode.POLICY_VIOLATION, "token no longer valid"
        error = sender.exception() if sender in done else None
        if isinstance(error, StoreError):
            return WSCloseCode.TRY_AGAIN_LATER, f"database unavailable: {resume}"
        if error is not None and not isinstance(error, ConnectionError):
            log.error("live feed of %s failed", self._who, exc_info=error)
            return WSCloseCode.INTERNAL_ERROR, "internal error"
        return WSCloseCode.OK, ""  # the client left

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_SECONDS):
                await self._ws.close(code=code, message=reason.encode()[:123])
        # A client that reads nothing keeps our buffer full: do not keep it for ever.
        transport = self._request.transport
        if transport is not None and transport.get_write_buffer_size():
            transport.abort()

    async def _send(self, text: str) -> None:
        await self._ws.send_str(text)

    async def _send_all(self) -> None:
        await self._begin()
        while (message := await self._subscription.get()) is not None:
            if message.provisional:  # no seq: the resume position stays where it is
                await self._send(message.wire)
            elif message.seq > self._last:
                await self._deliver(message)

    async def _deliver(self, message: FeedMessage) -> None:
        # Counted before the wait: once send_str has been called, the frame is in the
        # connection's buffer even if the wait for room is cut short by a close.
        self._last = message.seq
        await self._send(message.wire)

    async def _begin(self) -> None:
        """feed.hello or feed.gap, then the stored changes after `since`, if asked."""
        start, since = self._subscription.start, self._since
        if since is None:
            await self._hello(start, None)
            return
        if since == start:
            # It has had everything this node dispatched: nothing to read back, so a client
            # resumes even while the database is away.
            self._last = since
            await self._hello(start, since)
            return
        if since > start:
            since_min, newest = await self._feed.position()
            if since > newest:
                await self._gap("unknown", since, since_min, start)
            else:  # this node has not read them yet: the ones after `since` follow, live
                self._last = since
                await self._hello(start, since)
            return
        after = self._last = since
        while True:
            since_min, messages = await self._feed.replay(after, start,
                                                          self._subscription.sites)
            if since_min > after:
                await self._gap("trimmed", after, since_min, start)
                return
            if after == since:
                await self._hello(start, since)
            for message in messages:
                await self._deliver(message)
            if not messages:
                break
            after = messages[-1].seq
        self._last = start

    async def _hello(self, head: int, since: int | None) -> None:
        await self._send(_dumps({"type": "feed.hello", "head": head, "since": since}))

    async def _gap(self, reason: str, since: int, since_min: int, head: int) -> None:
        self._last = head
        await self._send(_dumps({"type": "feed.gap", "reason": reason, "since": since,
                                 "since_min": since_min, "head": head}))

    async def _read_all(self) -> None:
        async for _ in self._ws:  # aiohttp answers pings; what clients say is ignored
            pass

    async def _watch_token(self) -> None:
        """Return once the token that opened the stream is revoked or expired."""
        token = self._request.headers.get("Authorization", "").partition(" ")[2].strip()
        while True:
            await asyncio.sleep(REVALIDATE_EVERY)
            try:
                principal = await self._ctx.auth.principal(token, self._ctx.clock())
            except VigieError:
                continue  # the database is away: that is not the token's fault
            if principal is None:
                return


def _dumps(value: Any) -> str:
    from vigie.api._routes import dumps

    return dumps(value)


@web.middleware
async def query_token(request: web.Request, handler: Any) -> web.StreamResponse:
    """Browsers cannot set headers on a WebSocket, so the stream takes `?token=` too: moved
    into the Authorization header, for the endpoint table's guard, and out of the URL, so
    that nothing downstream can log it."""
    if request.path != PATH or "token" not in request.query:
        response: web.StreamResponse = await handler(request)
        return response
    tokens = request.query.getall("token")
    if len(tokens) > 1:
        raise ApiError(400, "invalid_query", "token: given more than once")
    query = [(k, v) for k, v in request.query.items() if k != "token"]
    headers = request.headers.copy()
    headers.setdefault("Authorization", f"Bearer {tokens[0]}")
    response = await handler(request.clone(headers=headers,
                                           rel_url=request.rel_url.with_query(query)))
    return response


def install_stream(app: web.Application, feed: Feed | None) -> None:
    """What the stream needs beyond the endpoint table: `?token=`, and closing every stream
    (1001) as soon as the node starts shutting down."""
    app.middlewares.append(query_token)
    if feed is not None:
        async def close_streams(_: web.Application) -> None:
            feed.close_subscriptions(SHUTDOWN)

        app.on_shutdown.append(close_streams)
