"""Micro-benchmark of TopicRouter.decode: decodes per second, one core, per payload shape.

Run: .venv/bin/python tests/bench/decode.py [seconds-per-case]
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from vigie.config import parse_config
from vigie.errors import IngestError
from vigie.sensors._decode import TopicRouter

SITES, PER_SITE = 20, 500


def sensors(site: int) -> list[dict[str, str]]:
    native = [{"id": f"door-{i}", "kind": "door", "zone": "hall"} for i in range(PER_SITE)]
    z2m = [{"id": f"z-{i}", "kind": "door", "format": "zigbee2mqtt",
            "topic": f"zigbee2mqtt/site-{site}/porte {i}"} for i in range(PER_SITE)]
    return native + z2m


CONFIG = parse_config({"sites": [
    {"id": f"site-{n}", "name": "Lycée", "uai": "0781234A", "sensors": sensors(n)}
    for n in range(SITES)
]})

CASES = {
    "native, id + ts": ("vigie/site-7/door-42/event",
                        b'{"id": "evt-000123", "ts": "2026-03-01T12:30:00.123+01:00", '
                        b'"kind": "door", "state": "open", "zone": "hall", '
                        b'"data": {"contact": 3}, "battery": 80}'),
    "native, state only": ("vigie/site-7/door-42/event", b'{"state": "closed"}'),
    "native status": ("vigie/site-7/door-42/status", b"online"),
    "zigbee2mqtt + tamper": ("zigbee2mqtt/site-7/porte 42",
                             b'{"contact": false, "tamper": true, "battery": 91, '
                             b'"linkquality": 120, "voltage": 3005, '
                             b'"last_seen": "2026-03-01T12:04:05+01:00"}'),
    "zigbee2mqtt, no ts": ("zigbee2mqtt/site-7/porte 42",
                           b'{"contact": true, "battery": 91, "linkquality": 120}'),
    "rejected: unknown sensor": ("vigie/site-7/nope/event", b'{"state": "open"}'),
    "rejected: not json": ("vigie/site-7/door-42/event", b'{"state": "open"'),
}


def rate(router: TopicRouter, topic: str, payload: bytes, seconds: float) -> float:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    decode = router.decode
    done, rejected, batch = 0, 0, 2_000
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(batch):
            try:
                decode(topic, payload, now)
            except IngestError:
                rejected += 1
        done += batch
    return done / elapsed


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    started = time.perf_counter()
    router = TopicRouter(CONFIG)
    routes = SITES * PER_SITE * 2
    print(f"router for {routes} sensors built in {time.perf_counter() - started:.3f}s")
    for name, (topic, payload) in CASES.items():
        print(f"{name:26s} {rate(router, topic, payload, seconds):>12,.0f} decodes/s")


if __name__ == "__main__":
    main()
