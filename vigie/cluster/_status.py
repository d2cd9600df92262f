"""Every camera on every node's API: the holder publishes what it knows of its cameras in
PostgreSQL (`camera_status`), and any node answers for the cameras it does not watch from
there (with their last transition, which the holder writes as it happens).

Pictures go through the database too, rather than through a proxy to the holder's API: in
Kubernetes the nodes share no disk, and a proxy would need every pod to reach every other
one (an advertised address, network policies, the API's TLS and the caller's token
forwarded), and would fail exactly when it matters — the holder dead or cut off, its
cameras' last picture gone with it — while the database is what every node reaches anyway.
Writing every camera's picture all the time would cost a JPEG (30-60 kB) per camera every
few seconds of WAL for pictures nobody looks at. So: a node asked for a picture it does not
have asks the holder (NOTIFY on `PICTURE_CHANNEL`, which the holder hears on its lease
connection), the holder writes its latest one at once, and the node waits for it a moment;
in the background each camera's picture is written every `SNAPSHOT_EVERY` only, so that the
last one outlives a holder that dies. Rows are replaced in place, one per camera.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigie.cluster import _sql as sql
from vigie.cluster._leases import DB_ERRORS, CameraLeases
from vigie.metrics import Metrics
from vigie.secrets import redact_text
from vigie.store import Store
from vigie.store import _cameras as cameras_q

if TYPE_CHECKING:
    from vigie.cameras import CameraSupervisor

__all__ = ["CameraStatusPublisher", "latest_picture", "remote_view"]

log = logging.getLogger("vigie.cluster")

PUBLISH_EVERY = 5.0  # seconds between two views of a camera in the database
SNAPSHOT_EVERY = 300.0  # seconds between two pictures of a camera nobody asked for
ASK_AFTER = 10.0  # a published picture older than this: ask the holder (its own period)
ASK_WAIT = 2.0  # how long a node waits for the holder's answer before showing what it has
FORGET_EVERY = 3600.0  # rows of unconfigured cameras, pictures past their retention
KEPT_WITHIN = 3600.0  # alerts' pictures copied to the database when kept this recently
KEPT_PER_ROUND = 20
# What the API's camera view holds that comes from the camera's configuration, not from
# its holder: never published (the URL is a secret, even redacted it is config).
_CONFIGURED = ("id", "site", "name", "zone", "url")


class CameraStatusPublisher:
    def __init__(self, store: Store, cameras: CameraSupervisor, leases: CameraLeases,
                 keep_images_for: float, metrics: Metrics, data_dir: Path, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._data_dir = data_dir
        self._cameras = cameras
        self._leases = leases
        self._keep_images_for = keep_images_for
        self._clock = clock
        self._published: dict[str, tuple[float, float]] = {}  # camera: (snapshot mtime, when)
        self._forgotten_at = -FORGET_EVERY
        self._queries = metrics.cluster_queries.labels("camera_status")

    async def run(self) -> None:
        next_round = self._clock()
        while True:
            try:
                if self._clock() >= next_round:
                    next_round = self._clock() + PUBLISH_EVERY
                    await self.publish()
                wanted = self._leases.pictures_wanted & self._leases.judging
                self._leases.pictures_wanted.clear()
                self._leases.picture_asked.clear()
                if wanted:
                    await self.publish(asked=wanted)
            except DB_ERRORS as exc:  # the database being away is reported elsewhere
                log.debug("camera status not published: %s", redact_text(str(exc)))
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a stop that
            # comes in the loop turn a picture request wakes it (see CameraLeases._sleep).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_round - self._clock())):
                    await self._leases.picture_asked.wait()

    async def publish(self, asked: Collection[str] = ()) -> None:
        """One round: the views of every camera this node judges, and the pictures due;
        or, `asked`, the pictures of these cameras only, whatever their period."""
        if asked:
            pictures = await asyncio.to_thread(self._pictures_due, sorted(asked), True)
            async with self._store.connection() as conn:
                await self._write_pictures(conn, pictures)
            return
        keys = sorted(self._leases.judging)
        states = [self._cameras.cameras[k] for k in keys if k in self._cameras.cameras]
        rows = []
        for state in states:
            view = self._cameras.view(state)
            rows.append((state.site.id, state.camera.id,
                         {k: v for k, v in view.items() if k not in _CONFIGURED}))
        pictures = await asyncio.to_thread(self._pictures_due, keys)
        async with self._store.connection() as conn:
            if self._clock() - self._forgotten_at >= FORGET_EVERY:
                await cameras_q.forget_status(conn, self._keep_images_for)
                self._forgotten_at = self._clock()
                self._queries.inc(2)
            self._queries.inc(bool(rows))
            await cameras_q.publish_status(conn, self._leases.name, self._leases.incarnation,
                                           rows)
            await self._write_pictures(conn, pictures)
            await self._copy_kept(conn, keys)
        for key in self._published.keys() - set(keys):
            del self._published[key]  # handed over: published afresh if it comes back

    async def _copy_kept(self, conn: Any, cameras: list[str]) -> None:
        """Pictures kept for alerts of the cameras this node judges (their files are on its
        disk), copied to the database so that every node serves them."""
        if not cameras:
            return
        waiting = await cameras_q.kept_without_copy(conn, cameras, KEPT_WITHIN, KEPT_PER_ROUND)
        self._queries.inc()
        if not waiting:
            return
        found = await asyncio.to_thread(self._read_kept, waiting)
        for snapshot_id, data in found:
            await cameras_q.copy_kept(conn, snapshot_id, data)
        self._queries.inc(len(found))

    def _read_kept(self, waiting: list[tuple[int, str]]) -> list[tuple[int, bytes]]:
        out = []
        for snapshot_id, path in waiting:
            with contextlib.suppress(OSError):
                out.append((snapshot_id, (self._data_dir / path).read_bytes()))
        return out

    async def _write_pictures(self, conn: Any, pictures: list[tuple[str, float, bytes]]
                              ) -> None:
        self._queries.inc(len(pictures))
        for key, mtime, jpeg in pictures:
            site, camera = key.split("/", 1)
            taken = datetime.fromtimestamp(mtime, UTC)
            if await cameras_q.publish_snapshot(conn, self._leases.name,
                                                self._leases.incarnation, site, camera,
                                                taken, jpeg):
                self._published[key] = (mtime, self._clock())

    def _pictures_due(self, keys: Collection[str], asked: bool = False
                      ) -> list[tuple[str, float, bytes]]:
        """(camera, taken at, JPEG) of the pictures to publish now: a new one, and none of
        that camera for `SNAPSHOT_EVERY` (unless `asked`). At most a round's share of the
        cameras, so that a node taking many cameras at once does not write all their
        pictures together."""
        now = self._clock()
        budget = (len(keys) if asked
                  else max(1, int(len(keys) * PUBLISH_EVERY / SNAPSHOT_EVERY) + 1))
        out: list[tuple[str, float, bytes]] = []
        for key in keys:
            mtime, at = self._published.get(key, (0.0, -SNAPSHOT_EVERY))
            if now - at < SNAPSHOT_EVERY and not asked:
                continue
            site, camera = key.split("/", 1)
            path: Path = self._cameras.snapshot_path(site, camera)
            try:
                stat = path.stat()
                if stat.st_mtime == mtime and not asked:
                    continue  # (asked: the asking node may hold an older one)
                out.append((key, stat.st_mtime, path.read_bytes()))
            except OSError:
                continue  # none yet
            if len(out) >= budget:
                break
        return out


async def latest_picture(store: Store, site: str, camera: str
                         ) -> tuple[bytes, datetime] | None:
    """A camera's latest picture as its holder (another node) published it; asked of the
    holder first when what is there is older than its own snapshot period."""
    async with store.connection() as conn:
        found = await cameras_q.status_snapshot(conn, site, camera)
        if found is not None and (datetime.now(UTC) - found[1]).total_seconds() < ASK_AFTER:
            return found
        await conn.execute("SELECT pg_notify($1, $2)", sql.PICTURE_CHANNEL,
                           f"{site}/{camera}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ASK_WAIT
    while loop.time() < deadline:
        await asyncio.sleep(0.1)
        async with store.connection() as conn:
            fresh = await cameras_q.status_snapshot(conn, site, camera)
        if fresh is not None and (found is None or fresh[1] > found[1]):
            return fresh
    return found  # the holder had nothing newer, or did not answer: what there is


def remote_view(configured: dict[str, Any], row: dict[str, Any] | None) -> dict[str, Any]:
    """The API's view of a camera another node watches, from `cameras_q.cluster_states`:
    its configuration (`configured`: id, site, name, zone, redacted URL) and what its holder
    published, corrected by a newer transition. `node` is its holder (None: no live lease,
    nobody watches it now); `as_of` when the holder last published its view."""
    view: dict[str, Any] = {
        "state": "unknown", "reasons": [], "since": None, "last_frame_at": None,
        "last_analysed_at": None, "fps": None, "width": None, "height": None, "codec": None,
        "bitrate": None, "reconnects": 0, "error": None, "stale": False,
        "last_report_at": None,
        # What its holder published; before it has, nothing known here.
        "reference": {"status": "none"}}
    row = row or {}
    published = row.get("view") or {}
    view.update({k: v for k, v in published.items() if k in view})
    changed_at = row.get("changed_at")
    updated_at = row.get("updated_at")
    # Both times are the holder's clock (a transition's time is the `since` of the state it
    # starts): no node's clock is compared with the database's or another node's.
    seen = published.get("since")
    if changed_at is not None and (seen is None or changed_at > datetime.fromisoformat(seen)):
        view["state"] = row["state"]
        view["reasons"] = [] if row["state"] == "unknown" else sorted(row["reasons"] or ())
        view["since"] = changed_at.isoformat()
    holder = row.get("holder")
    # Nobody holds it: what was published is its last known state, not a live one.
    view["stale"] = bool(view["stale"]) or (holder is None and bool(published))
    return {**configured, **view, "node": holder,
            "as_of": updated_at.isoformat() if updated_at else None,
            "snapshot_at": (row["snapshot_at"].isoformat() if row.get("snapshot_at")
                            else None)}
