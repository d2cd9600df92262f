"""`vigie status`: a running node's health at a glance, through its HTTP API.

Without a token: liveness, readiness and the node's metrics. With one (`--token` or
$VIGIE_TOKEN, any role): sites, cameras and the unresolved alerts it may see. Exit status:
0 ready, 1 running but not ready, 2 unreachable or the token refused.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["NodeStatus", "fetch_status", "render_status"]

SEVERITIES = ("critical", "major", "minor", "info")
_COLOURS = {"critical": "1;31", "major": "33", "minor": "36", "info": "34", "ok": "32",
            "degraded": "33", "offline": "31", "unknown": "90", "bad": "1;31"}


@dataclass
class NodeStatus:
    url: str
    reachable: bool = False
    error: str = ""
    ready: bool = False
    checks: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    build: dict[str, str] = field(default_factory=dict)
    authorized: bool | None = None  # None: no token given
    sites: list[dict[str, Any]] = field(default_factory=list)
    cameras: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    more_alerts: bool = False

    @property
    def exit_code(self) -> int:
        if not self.reachable or self.authorized is False:
            return 2
        return 0 if self.ready else 1

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()} | {"exit_code": self.exit_code}


_WANTED = {"vigie_cameras_watched", "vigie_db_write_queue", "vigie_mqtt_connected",
           "vigie_db_up", "process_start_time_seconds", "vigie_sensor_events_total",
           "vigie_ingest_rejected_total", "vigie_alerts_total"}


def _read_metrics(text: str, status: NodeStatus) -> None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vigie_build_info":
                status.build = dict(sample.labels)
            elif sample.name in _WANTED:
                status.metrics[sample.name] = status.metrics.get(sample.name, 0) + sample.value


async def fetch_status(url: str, token: str | None, alerts: int = 10,
                       timeout: float = 5.0) -> NodeStatus:
    status = NodeStatus(url=url.rstrip("/"))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(status.url, timeout=client_timeout) as http:
        try:
            async with http.get("/readyz") as r:
                body = await r.json()
                status.reachable, status.ready = True, r.status == 200
                status.checks = dict(body.get("checks", {}))
            async with http.get("/metrics") as r:
                _read_metrics(await r.text(), status)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            status.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return status
        if not token:
            return status

        async def get(path: str) -> Any:
            async with http.get(path, headers=headers) as r:
                if r.status in (401, 403):
                    status.authorized = False
                    status.error = (await r.json())["error"]["message"]
                    return None
                r.raise_for_status()
                return await r.json()

        try:
            sites = await get("/api/v1/sites")
            if sites is None:
                return status
            status.authorized = True
            status.sites = sites["items"]
            cameras = await get("/api/v1/cameras")
            status.cameras = cameras["items"] if cameras else []
            listed = await get(f"/api/v1/alerts?state=open,acknowledged&limit={alerts}")
            if listed:
                status.alerts = listed["items"]
                status.more_alerts = listed["next_cursor"] is not None
        except (aiohttp.ClientError, TimeoutError) as exc:
            status.error = f"{type(exc).__name__}: {exc}"
    return status


class _Painter:
    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def __call__(self, text: str, key: str) -> str:
        code = _COLOURS.get(key)
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    return f"{days}d{hours:02d}h" if days else f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def _counts(counts: dict[str, int], order: tuple[str, ...], paint: _Painter) -> str:
    parts = [paint(f"{counts[k]} {k}", k) for k in order if counts.get(k)]
    return ", ".join(parts) if parts else "none"


def render_status(status: NodeStatus, out: TextIO, colour: bool | None = None) -> None:
    paint = _Painter(out.isatty() if colour is None else colour)
    w = out.write
    if not status.reachable:
        w(f"{paint('unreachable', 'bad')}: {status.url} ({status.error})\n")
        return
    b, m = status.build, status.metrics
    started = m.get("process_start_time_seconds")
    uptime = f" · up {_duration(time.time() - started)}" if started else ""
    w(f"vigie {b.get('version', '?')} · node {b.get('node', '?')} · {status.url}{uptime}\n")
    ready = paint("ready", "ok") if status.ready else paint("NOT READY", "bad")
    checks = " · ".join(f"{k} {paint(v, 'ok' if v == 'ok' else 'bad')}"
                        for k, v in status.checks.items())
    w(f"{ready}: {checks}\n")
    w(f"ingest: {int(m.get('vigie_sensor_events_total', 0))} events stored, "
      f"{int(m.get('vigie_ingest_rejected_total', 0))} rejected, "
      f"write queue {int(m.get('vigie_db_write_queue', 0))}\n")
    if status.authorized is None:
        w(f"cameras: {int(m.get('vigie_cameras_watched', 0))} watched "
          "(give --token or $VIGIE_TOKEN for sites, cameras and alerts)\n")
        return
    if status.authorized is False:
        w(f"{paint('token refused', 'bad')}: {status.error}\n")
        return
    states: dict[str, int] = {}
    for cam in status.cameras:
        states[cam["state"]] = states.get(cam["state"], 0) + 1
    w(f"cameras: {len(status.cameras)} · "
      f"{_counts(states, ('offline', 'degraded', 'unknown', 'ok'), paint)}\n")
    totals: dict[str, int] = {}
    for site in status.sites:
        for sev, n in site.get("alerts_open", {}).items():
            totals[sev] = totals.get(sev, 0) + n
    w(f"unresolved alerts: {_counts(totals, SEVERITIES, paint)}\n\n")
    _render_sites(status, w, paint)
    _render_alerts(status, w, paint)


def _render_sites(status: NodeStatus, w: Any, paint: _Painter) -> None:
    if not status.sites:
        return
    width = max(len(s["id"]) for s in status.sites) + 2
    w(f"{'site':{width}}{'open':5} {'alerts':28} cameras\n")
    for site in sorted(status.sites, key=lambda s: (-sum(s["alerts_open"].values()), s["id"])):
        open_now = "open" if site.get("open_now") else "shut"
        alerts = _counts(site.get("alerts_open", {}), SEVERITIES, _Painter(False))
        cams = _counts(site.get("camera_states", {}), ("offline", "degraded", "unknown", "ok"),
                       _Painter(False))
        w(f"{site['id']:{width}}{open_now:5} {alerts:28} {cams if site['cameras'] else '-'}\n")


def _render_alerts(status: NodeStatus, w: Any, paint: _Painter) -> None:
    if not status.alerts:
        return
    w("\nlatest unresolved alerts:\n")
    newest_first = sorted(status.alerts, key=lambda a: a["last_seen_at"], reverse=True)
    for a in sorted(newest_first, key=lambda a: SEVERITIES.index(a["severity"])):
        sev = paint(f"{a['severity']:8}", a["severity"])
        count = f" ×{a['count']}" if a["count"] > 1 else ""
        w(f"  {sev} {a['state']:12} {a['last_seen_at'][:16].replace('T', ' ')}  "
          f"{a['site']}/{a['source']}  {a['title']}{count}\n")
    if status.more_alerts:
        w("  … more: GET /api/v1/alerts?state=open,acknowledged\n")


def run_status(url: str, token: str | None, alerts: int, as_json: bool,
               out: TextIO = sys.stdout) -> int:
    status = asyncio.run(fetch_status(url, token or os.environ.get("VIGIE_TOKEN"), alerts))
    if as_json:
        out.write(orjson.dumps(status.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        render_status(status, out)
    return status.exit_code
