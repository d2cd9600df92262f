"""`vigie notifiers dead-letters` and `vigie notifiers retry`, run as an SRE runs them, on a
real PostgreSQL: letters listed, queued for the notifier's lock holder, audited as
cli:<user>; mistakes refused with a clear message, secrets never printed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg

from tests.notify.conftest import SECRET, URL_PASSWORD
from tests.test_cli import SITE, vigie_cli, write_config
from vigie.store import _notify as q

NO_MQTT = "mqtt://127.0.0.1:1"  # never dialled by these commands


async def configured(tmp_path: Path, dsn: str) -> Path:
    config = write_config(tmp_path / "vigie.yaml", dsn, NO_MQTT)
    with config.open("a", encoding="utf-8") as f:
        f.write(f"""\
notifiers:
  - {{type: webhook, name: csu, secret: "{SECRET}",
     url: "http://vigie:{URL_PASSWORD}@127.0.0.1:9/hook"}}
""")
    migrated = await vigie_cli("migrate", "--config", config)
    assert migrated.code == 0, migrated.err
    return config


async def add_letters(dsn: str, *rows: tuple[str, int, str]) -> list[int]:
    """(notifier, seq, site) dead letters; their ids."""
    conn = await asyncpg.connect(dsn)
    try:
        for notifier, seq, site in rows:
            await q.add_dead_letter(conn, notifier, seq, "alert.opened", None, site, 6,
                                    "HTTP 500", {"type": "alert.opened"})
        return [r["id"] for r in await conn.fetch("SELECT id FROM notify_dead_letters "
                                                  "ORDER BY id")]
    finally:
        await conn.close()


async def fetch(dsn: str, query: str) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(query)]
    finally:
        await conn.close()


async def test_dead_letters_are_listed_and_queued_by_id_or_by_notifier(
        tmp_path: Path, fresh_dsn: str) -> None:
    config = await configured(tmp_path, fresh_dsn)
    first, second, third = await add_letters(
        fresh_dsn, ("csu", 10, SITE), ("csu", 11, SITE), ("csu", 12, "clg-pasteur"))

    listed = await vigie_cli("notifiers", "dead-letters", "--config", config)
    assert listed.code == 0, listed.err
    assert [int(line.split()[0]) for line in listed.out.splitlines()] == [third, second, first]
    assert "attempts=6" in listed.out and "HTTP 500" in listed.out

    one = await vigie_cli("notifiers", "retry", "--config", config, str(first))
    assert one.code == 0, one.err
    assert one.out.strip() == f"dead letter {first} (alert.opened for csu) queued to be sent again"
    rest = await vigie_cli("notifiers", "retry", "--config", config, "--notifier", "csu",
                           "--site", SITE)
    assert rest.code == 0, rest.err
    assert rest.out.strip() == "1 dead letter(s) of csu queued to be sent again"
    listed = await vigie_cli("notifiers", "dead-letters", "-c", config, "--notifier", "csu")
    assert [" queued " in line for line in listed.out.splitlines()] == [False, True, True]

    queued = await fetch(fresh_dsn, "SELECT id, retry_requested_by FROM notify_dead_letters "
                                    "WHERE retry_requested_at IS NOT NULL ORDER BY id")
    assert [i for i, _ in queued] == [first, second]
    assert all(by.startswith("cli:") for _, by in queued)
    audited = await fetch(fresh_dsn, "SELECT actor, target, site FROM audit_log "
                                     "WHERE action = 'notifiers.retry' ORDER BY id")
    assert [(t, s) for _, t, s in audited] == [(f"dead-letter {first}", SITE), ("csu", SITE)]
    for out in (listed.both, one.both, rest.both):
        assert URL_PASSWORD not in out and SECRET not in out


async def test_mistakes_are_refused_clearly(tmp_path: Path, fresh_dsn: str) -> None:
    config = await configured(tmp_path, fresh_dsn)
    [old] = await add_letters(fresh_dsn, ("ancien", 3, SITE))
    for args, message in (
            (("retry",), "give dead letter ids, or --notifier"),
            (("retry", "424242"), "no dead letter 424242"),
            (("retry", str(old)), f"dead letter {old}: notifier 'ancien' is not configured"),
            (("retry", "--notifier", "nope"), "no notifier 'nope' in the configuration"),
            (("retry", "--notifier", "csu", "--site", "nope"), "unknown site 'nope'"),
            (("retry", str(old), "--notifier", "csu"), "not both"),
            (("dead-letters", "--notifier", "nope"), "no notifier 'nope'"),
            (("dead-letters", "--limit", "0"), "--limit must be at least 1")):
        result = await vigie_cli("notifiers", *args, "--config", config)
        assert result.code == 1 and message in result.err, (args, result)
        assert "Traceback" not in result.err
    bad = await vigie_cli("notifiers", "retry", "abc", "--config", config)
    assert bad.code == 2 and "invalid int value" in bad.err
    assert await fetch(fresh_dsn, "SELECT id FROM notify_dead_letters "
                                  "WHERE retry_requested_at IS NOT NULL") == []
