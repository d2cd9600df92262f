"""`vigie notifiers`: the notifications a notifier gave up on (dead letters), listed and sent
again, straight from PostgreSQL like `vigie token` — for an SRE on a node's host, with no
API token; a resend is audited as `cli:<user>`.

A resend is only queued here: the node holding the notifier's lock sends it (see
`vigie.notify._runner`), as for `POST /api/v1/notifiers/dead-letters/{id}/retry`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from vigie.config import Config
from vigie.errors import VigieError
from vigie.store import _audit as audit
from vigie.store import _notify as q

__all__ = ["list_dead_letters", "retry_dead_letters"]


def _known(config: Config, notifier: str) -> None:
    if config.notifier(notifier) is None:
        raise VigieError(f"no notifier {notifier!r} in the configuration")


async def list_dead_letters(conn: Any, config: Config, notifier: str | None,
                            limit: int) -> int:
    if notifier is not None:
        _known(config, notifier)
    letters = await q.list_dead_letters(conn, notifier, None, limit, None)
    for d in letters:
        queued = " queued" if d["retry_requested_at"] else ""
        print(f"{d['id']:>8} {d['notifier']:20} {d['site']:28} {d['type']:20} "
              f"seq={d['seq']} attempts={d['attempts']}{queued} "
              f"failed_at={d['failed_at'].isoformat(timespec='seconds')} {d['error']}")
    if not letters:
        print("no dead letters", file=sys.stderr)
    return 0


async def retry_dead_letters(conn: Any, config: Config, actor: str, ids: Sequence[int],
                             notifier: str | None, site: str | None) -> int:
    """Queue the dead letters given by id, or a notifier's oldest (of one site)."""
    if ids:
        if notifier is not None or site is not None:
            raise VigieError("give dead letter ids, or --notifier (and --site), not both")
        for letter_id in ids:
            await _retry_one(conn, config, actor, letter_id)
        return 0
    if notifier is None:
        raise VigieError("give dead letter ids, or --notifier to send a notifier's again")
    _known(config, notifier)
    if site is not None and config.site(site) is None:
        raise VigieError(f"unknown site {site!r}")
    queued, remaining = await q.queue_retries_of(conn, notifier, site, None, actor)
    await audit.record(conn, actor=actor, action="notifiers.retry", target=notifier,
                       site=site, details={"notifier": notifier, "queued": queued})
    print(f"{queued} dead letter(s) of {notifier} queued to be sent again"
          f"{f'; {remaining} more for another run' if remaining else ''}")
    return 0


async def _retry_one(conn: Any, config: Config, actor: str, letter_id: int) -> None:
    letter = await q.get_dead_letter(conn, letter_id, None)
    if letter is None:
        raise VigieError(f"no dead letter {letter_id}")
    name = letter["notifier"]
    if config.notifier(name) is None:
        raise VigieError(f"dead letter {letter_id}: notifier {name!r} is not configured any "
                         "more, nothing can send it")
    if await q.queue_retry(conn, letter_id, actor) is None:
        raise VigieError(f"no dead letter {letter_id}")
    await audit.record(conn, actor=actor, action="notifiers.retry",
                       target=f"dead-letter {letter_id}", site=letter["site"],
                       details={"notifier": name})
    print(f"dead letter {letter_id} ({letter['type']} for {name}) queued to be sent again")
