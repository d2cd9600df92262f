"""A lone node's row in `nodes` (cluster.enabled off): listed by /api/v1/nodes, and a
warning when another node shares the database, since both then watch every camera."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

from vigie.cluster import _sql as sql
from vigie.cluster._leases import DB_ERRORS
from vigie.store import Store

__all__ = ["NodePresence"]

log = logging.getLogger("vigie.cluster")

HEARTBEAT_EVERY = 5.0


class NodePresence:
    def __init__(self, name: str, store: Store, cameras: Callable[[], int]) -> None:
        self.name = name
        self.incarnation = uuid.uuid4()
        self._store = store
        self._cameras = cameras
        self._warned: set[str] = set()

    async def start(self) -> None:
        async with self._store.transaction() as conn:
            await conn.execute(sql.REGISTER, self.name, self.incarnation, False,
                               3 * HEARTBEAT_EVERY, self._cameras())
            await conn.execute(sql.FORGET_OLD_NODES)
            others = await conn.fetch(sql.OTHERS, self.name)
        self._warn({r["name"] for r in others})

    async def run(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            try:
                async with self._store.connection() as conn:
                    await conn.fetchval(sql.HEARTBEAT, self.name, self.incarnation,
                                        3 * HEARTBEAT_EVERY, self._cameras())
                    others = await conn.fetch(sql.OTHERS, self.name)
                self._warn({r["name"] for r in others})
            except DB_ERRORS as exc:  # the database being away is reported elsewhere
                log.debug("node heartbeat failed: %s", exc)

    async def leave(self) -> None:
        with contextlib.suppress(*DB_ERRORS):
            async with asyncio.timeout(1.0), self._store.connection() as conn:
                await conn.execute(sql.LEAVE, self.name, self.incarnation)

    def _warn(self, others: set[str]) -> None:
        new = others - self._warned
        if new:
            log.warning("node(s) %s use this database too, but cluster.enabled is off: every "
                        "node watches every camera (enable cluster on all of them to share)",
                        ", ".join(sorted(new)))
        self._warned = others
