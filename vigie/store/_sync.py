"""Mirror the configuration's sites, cameras and sensors into PostgreSQL.

Removed objects are marked inactive, not deleted: their events and alerts keep their meaning.
"""

from __future__ import annotations

from typing import Any

from vigie.config import Config
from vigie.secrets import redact_url

__all__ = ["sync_config"]


async def sync_config(conn: Any, config: Config) -> None:
    async with conn.transaction():
        await conn.execute("UPDATE sites SET active = false")
        await conn.execute("UPDATE cameras SET active = false")
        await conn.execute("UPDATE sensors SET active = false")
        await conn.executemany(
            """INSERT INTO sites (id, name, uai, commune, timezone, holiday_zone, active)
               VALUES ($1, $2, $3, $4, $5, $6, true)
               ON CONFLICT (id) DO UPDATE SET name = $2, uai = $3, commune = $4, timezone = $5,
                   holiday_zone = $6, active = true, updated_at = now()""",
            [(s.id, s.name, s.uai, s.commune, s.timezone, s.holiday_zone) for s in config.sites],
        )
        await conn.executemany(
            """INSERT INTO cameras (site, id, name, zone, url, transport, active)
               VALUES ($1, $2, $3, $4, $5, $6, true)
               ON CONFLICT (site, id) DO UPDATE SET name = $3, zone = $4, url = $5,
                   transport = $6, active = true, updated_at = now()""",
            [(s.id, c.id, c.name, c.zone, redact_url(c.url.reveal()), c.transport)
             for s in config.sites for c in s.cameras],
        )
        await conn.executemany(
            """INSERT INTO sensors (site, id, kind, name, zone, format, topic, active)
               VALUES ($1, $2, $3, $4, $5, $6, $7, true)
               ON CONFLICT (site, id) DO UPDATE SET kind = $3, name = $4, zone = $5,
                   format = $6, topic = $7, active = true, updated_at = now()""",
            [(s.id, x.id, x.kind, x.name, x.zone, x.format, x.topic)
             for s in config.sites for x in s.sensors],
        )
