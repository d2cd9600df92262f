"""API latency under load: vigie's busiest reads against a trivial aiohttp handler, same run.

    .venv/bin/python tests/bench/api.py [--rate 500] [--duration 20] [--alerts 100000]
                                        [--events 1000000] [--sites 100] [--no-wrk]

A database of its own on 127.0.0.1:5432 (dropped at the end) is loaded with generate_series:
100k alerts (5 % open, 5 % acknowledged, the rest resolved, over 90 days) and 1M events
(over 30 days, spread over every sensor of every site). A node then serves the API
(`running_node(..., with_mqtt=False)`), and a trivial aiohttp handler returning a small JSON
document is served from the same process and event loop: the baseline.

A separate load process (multiprocessing, spawn) sends GET requests on an open-loop schedule:
request k is due at start + k / rate whatever happened to the previous ones, so a slow answer
delays nothing and cannot hide itself (no coordinated omission). Latency is measured from the
time the request was due to the time its whole body was read. Each target gets a warm-up
(not counted) then `duration` seconds; targets run one after the other:

    baseline   GET /bench/tiny
    alerts     GET /api/v1/alerts?state=open           (operator token, every site)
    events     GET /api/v1/events?site=<one site>

Printed: p50 / p99 / max, the ratio to the baseline, whether p99 <= 25 ms, the load
generator's own send lag (its health), CPU seconds of the node process, of PostgreSQL and of
the load process, and the server-side mean time per request from vigie's own histogram.
Then EXPLAIN (ANALYZE, BUFFERS) of the exact SQL the two routes run, and, where `wrk` is
installed, its closed-loop maximum throughput on each target as a side figure.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import shutil
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench._common import (  # noqa: E402
    create_database,
    drop_database,
    free_port,
    postgres_cpu,
    quantile,
    ratio,
)
from vigie.app import Node, running_node, settle_memory  # noqa: E402
from vigie.config import SENSOR_KINDS, Config, parse_config  # noqa: E402
from vigie.store import Store  # noqa: E402
from vigie.store import _alerts as alerts_q  # noqa: E402
from vigie.store import _events as events_q  # noqa: E402
from vigie.store._tokens import create_token  # noqa: E402

TARGET_P99 = 0.025
SENSORS_PER_SITE = 10
WARMUP = 3.0


# --- the load process ----------------------------------------------------------------------


def load_worker(url: str, token: str | None, rate: float, duration: float, warmup: float,
                out: Connection) -> None:
    """Entry point of the load process: drive one target, send back the samples."""
    cpu = time.process_time()
    samples = asyncio.run(_drive(url, token, rate, duration, warmup))
    out.send({"samples": samples, "cpu": time.process_time() - cpu})
    out.close()


async def _drive(url: str, token: str | None, rate: float, duration: float,
                 warmup: float) -> list[tuple[float, float, int]]:
    """(latency from due time, send lag, status) of every request after the warm-up."""
    loop = asyncio.get_running_loop()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    total = int((warmup + duration) * rate)
    skip = int(warmup * rate)
    results: list[tuple[float, float, int] | None] = [None] * total
    connector = aiohttp.TCPConnector(limit=0)  # never queue in the client
    timeout = aiohttp.ClientTimeout(total=30)

    async def one(k: int, due: float) -> None:
        sent = loop.time()
        try:
            async with session.get(url) as r:
                await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError):
            status = -1
        results[k] = (loop.time() - due, sent - due, status)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=headers) as session:
        pending: set[asyncio.Task[None]] = set()
        start = loop.time() + 0.05
        for k in range(total):
            due = start + k / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(k, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
    return [r for r in results[skip:] if r is not None]


# --- the database --------------------------------------------------------------------------


def site_ids(n: int) -> list[str]:
    return [f"clg-bench-{i:03d}" for i in range(n)]


def bench_config(dsn: str, sites: int) -> Config:
    return parse_config({
        "node": {"name": "bench-api"},
        "database": {"dsn": dsn},
        "mqtt": {"url": "mqtt://127.0.0.1:1"},  # not dialled: with_mqtt=False
        "api": {"listen": "127.0.0.1:0"},
        "sites": [
            {"id": sid, "name": f"Collège {i}", "uai": f"{780000 + i:07d}A",
             "sensors": [{"id": f"capteur-{j:02d}", "kind": SENSOR_KINDS[j % 4],
                          "zone": f"zone-{j % 3}"} for j in range(SENSORS_PER_SITE)]}
            for i, sid in enumerate(site_ids(sites))
        ],
    })


LOAD_ALERTS = """
INSERT INTO alerts (id, fingerprint, site, source, source_type, kind, severity, state, title,
                    details, opened_at, last_seen_at, count, acknowledged_by, acknowledged_at,
                    resolved_by, resolved_at)
SELECT gen_random_uuid(), site || '/' || source || '/' || kind || '/' || i, site, source,
       'sensor', kind, (ARRAY['critical','major','minor','info'])[1 + i % 4], state,
       initcap(kind) || ' on ' || source, jsonb_build_object('zone', 'zone-' || i % 3),
       opened, opened + interval '1 minute', 1 + i % 5,
       CASE WHEN state <> 'open' THEN 'operateur-' || i % 7 END,
       CASE WHEN state <> 'open' THEN opened + interval '2 minutes' END,
       CASE WHEN state = 'resolved' THEN 'operateur-' || i % 7 END,
       CASE WHEN state = 'resolved' THEN opened + interval '10 minutes' END
FROM (SELECT i,
             'clg-bench-' || lpad((i % $2)::text, 3, '0') AS site,
             'capteur-' || lpad((i / $2 % 10)::text, 2, '0') AS source,
             (ARRAY['door','intrusion','tamper','panic'])[1 + i / $2 % 4] AS kind,
             CASE i % 20 WHEN 0 THEN 'open' WHEN 1 THEN 'acknowledged' ELSE 'resolved' END
                 AS state,
             now() - i * (interval '90 days' / $1) AS opened
      FROM generate_series(0, $1 - 1) AS i) s
"""

LOAD_EVENTS = """
INSERT INTO events (dedup_key, site, sensor, kind, state, zone, ts, received_at, data)
SELECT 'bench-' || i, 'clg-bench-' || lpad((i % $2)::text, 3, '0'),
       'capteur-' || lpad((i / $2 % 10)::text, 2, '0'),
       (ARRAY['door','intrusion','tamper','panic'])[1 + i / $2 % 4],
       (ARRAY['open','closed','alarm','normal'])[1 + i % 4], 'zone-' || i % 3,
       ts, ts + interval '150 milliseconds', jsonb_build_object('battery', 50 + i % 50)
FROM (SELECT i, now() - i * (interval '30 days' / $1) AS ts
      FROM generate_series(0, $1 - 1) AS i) s
"""


async def load(dsn: str, alerts: int, events: int, sites: int) -> None:
    store = await Store.open(dsn)
    try:
        await store.migrate()
    finally:
        await store.close()
    conn = await asyncpg.connect(dsn)
    try:
        t = time.perf_counter()
        await conn.execute(LOAD_ALERTS, alerts, sites)
        print(f"  {alerts:,} alerts in {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        await conn.execute(LOAD_EVENTS, events, sites)
        print(f"  {events:,} events in {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        await conn.execute("VACUUM ANALYZE alerts")
        await conn.execute("VACUUM ANALYZE events")
        print(f"  vacuum analyze in {time.perf_counter() - t:.1f} s", flush=True)
    finally:
        await conn.close()


# --- measuring -----------------------------------------------------------------------------


def server_seconds(node: Node, route: str) -> tuple[float, float]:
    """(sum, count) of vigie's own request-duration histogram for a route."""
    total = count = 0.0
    for metric in node.metrics.http_seconds.collect():
        for s in metric.samples:
            if s.labels.get("route") == route:
                if s.name.endswith("_sum"):
                    total = s.value
                elif s.name.endswith("_count"):
                    count = s.value
    return total, count


async def drive(label: str, url: str, token: str | None, args: argparse.Namespace,
                node: Node, route: str | None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=load_worker, name=f"load-{label}",
                       args=(url, token, args.rate, args.duration, WARMUP, theirs))
    cpu, pg = time.process_time(), postgres_cpu()
    before = server_seconds(node, route) if route else (0.0, 0.0)
    proc.start()
    theirs.close()
    loop = asyncio.get_running_loop()
    report = await loop.run_in_executor(None, mine.recv)
    await loop.run_in_executor(None, proc.join, 30)
    after = server_seconds(node, route) if route else (0.0, 0.0)
    samples = report["samples"]
    latencies = sorted(s[0] for s in samples)
    lags = sorted(s[1] for s in samples)
    errors = sum(1 for s in samples if s[2] != 200)
    served = after[1] - before[1]
    return {
        "label": label, "n": len(samples), "errors": errors,
        "p50": quantile(latencies, 0.50), "p99": quantile(latencies, 0.99),
        "max": latencies[-1] if latencies else float("nan"),
        "mean": statistics.fmean(latencies) if latencies else float("nan"),
        "lag_p99": quantile(lags, 0.99),
        "cpu_node": time.process_time() - cpu, "cpu_pg": postgres_cpu() - pg,
        "cpu_load": report["cpu"],
        "server_mean": (after[0] - before[0]) / served if served else float("nan"),
    }


def print_results(results: list[dict[str, Any]], rate: float, duration: float) -> None:
    base = results[0]
    span = WARMUP + duration
    print(f"\nopen-loop load: {rate:.0f} req/s for {duration:.0f} s per target "
          f"(+{WARMUP:.0f} s warm-up); latency from the time each request was due\n")
    head = (f"{'target':<9} {'n':>6} {'err':>4} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
            f"{'p50 x':>6} {'p99 x':>6} {'p99<=25ms':>9} {'srv ms':>7} {'lag p99':>7} "
            f"{'cpu node':>8} {'cpu pg':>7} {'cpu load':>8}")
    print(head)
    print("-" * len(head))
    for r in results:
        ok = "yes" if r["p99"] <= TARGET_P99 and not r["errors"] else "NO"
        mean = r["server_mean"]
        srv = f"{mean * 1e3:7.2f}" if mean == mean else "      -"  # NaN: no histogram
        print(f"{r['label']:<9} {r['n']:>6} {r['errors']:>4} {r['p50'] * 1e3:7.2f} "
              f"{r['p99'] * 1e3:7.2f} {r['max'] * 1e3:7.1f} {ratio(r['p50'], base['p50']):6.2f} "
              f"{ratio(r['p99'], base['p99']):6.2f} {ok:>9} {srv} {r['lag_p99'] * 1e3:7.2f} "
              f"{r['cpu_node'] / span:7.0%} {r['cpu_pg'] / span:7.0%} "
              f"{r['cpu_load'] / span:7.0%}")
    print("\n(x: ratio to the baseline; srv ms: mean server-side time from vigie's histogram; "
          "lag: how late the load process sent, its own health; cpu: share of one core over "
          "warm-up + run)")


# --- profiling -----------------------------------------------------------------------------


class _Capture:
    """Stands in for a connection: records the SQL a store query function would run."""

    def __init__(self) -> None:
        self.sql = ""
        self.args: tuple[Any, ...] = ()

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self.sql, self.args = sql, args
        return []


async def explain(dsn: str, site: str) -> None:
    alerts, events = _Capture(), _Capture()
    await alerts_q.list_alerts(alerts, states=["open"], site=None, severity=None, sites=None,
                               limit=100, cursor=None)
    await events_q.list_events(events, site=site, sensor=None, kind=None, since=None,
                               until=None, sites=None, limit=100, cursor=None)
    conn = await asyncpg.connect(dsn)
    try:
        for label, q in (("alerts?state=open", alerts), (f"events?site={site}", events)):
            print(f"\nEXPLAIN ANALYZE — {label}\n  " + " ".join(q.sql.split()))
            # asyncpg prepares its statements: after five runs PostgreSQL may switch to the
            # generic plan, so show that one too.
            for mode in ("force_custom_plan", "force_generic_plan"):
                await conn.execute(f"SET plan_cache_mode = {mode}")
                rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {q.sql}", *q.args)
                print(f"  [{mode}]")
                for (line,) in rows:
                    print("   ", line)
    finally:
        await conn.close()


async def wrk_throughput(label: str, url: str, token: str | None) -> None:
    cmd = ["wrk", "-t1", "-c16", "-d5s", "--latency"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    proc = await asyncio.create_subprocess_exec(*cmd, url, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    lines = out.decode().splitlines()
    rps = next((ln.split()[-1] for ln in lines if ln.startswith("Requests/sec")), "?")
    p99 = next((ln.split()[-1] for ln in lines if ln.strip().startswith("99%")), "?")
    print(f"  wrk closed loop, 16 connections, 5 s — {label:<9} {rps:>9} req/s   p99 {p99}")


# --- the run -------------------------------------------------------------------------------


async def tiny(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "items": [], "next_cursor": None})


async def bench(args: argparse.Namespace, dsn: str) -> None:
    print(f"loading (sites: {args.sites}) …", flush=True)
    await load(dsn, args.alerts, args.events, args.sites)
    config = bench_config(dsn, args.sites)
    site = site_ids(args.sites)[args.sites // 2]
    baseline = web.AppRunner(web.Application(), access_log=None)
    baseline.app.router.add_get("/bench/tiny", tiny)
    await baseline.setup()
    port = free_port()
    await web.TCPSite(baseline, "127.0.0.1", port).start()
    try:
        async with running_node(config, with_mqtt=False) as node:
            settle_memory()  # as `vigie run` does once its node runs
            async with node.store.connection() as conn:
                token, _ = await create_token(conn, name="bench-operator", role="operator",
                                              sites=None, expires_at=None)
            targets = [
                ("baseline", f"http://127.0.0.1:{port}/bench/tiny", None, None),
                ("alerts", f"{node.api_url}/api/v1/alerts?state=open", token, "/api/v1/alerts"),
                ("events", f"{node.api_url}/api/v1/events?site={site}", token, "/api/v1/events"),
            ]
            results = []
            for label, url, tok, route in targets:
                print(f"driving {label}: {url}", flush=True)
                results.append(await drive(label, url, tok, args, node, route))
            print_results(results, args.rate, args.duration)
            await explain(dsn, site)
            if shutil.which("wrk") is None:
                print("\nwrk: not installed (apt-get install wrk for a closed-loop "
                      "throughput figure; not needed by this benchmark)")
            elif args.wrk:
                print("\nwrk: available")
                for label, url, tok, _ in targets:
                    await wrk_throughput(label, url, tok)
    finally:
        await baseline.cleanup()


async def main(args: argparse.Namespace) -> None:
    dsn = await create_database("vigie_bench_api")
    try:
        await bench(args, dsn)
    finally:
        await drop_database(dsn)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per target")
    parser.add_argument("--alerts", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--no-wrk", dest="wrk", action="store_false",
                        help="skip the wrk side figure even where wrk is installed")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
