"""deploy/grafana: each dashboard is loaded, every PromQL expression in it (panels and
template variables) is extracted, its Grafana variables resolved, and run against a real
Prometheus that scrapes a running vigie node with cameras on the RTSP test server, sensor
traffic over a real Mosquitto and alerts: every query must parse and return data.
Also the provisioning: the datasource uid the dashboards use is the one provisioned.

Grafana itself is not run here (Debian does not package it): its JSON model is checked for
what Grafana needs to load it (unique panel ids, grid positions, known datasources)."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.cameras.harness import RtspServer
from tests.deploy.conftest import DEPLOY
from tests.deploy.live import SITE, Prometheus, camera_node, make_token, prometheus, traffic
from vigie.app import Node

GRAFANA = DEPLOY / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
# What Grafana would put in place of its built-in variables, for a 1 s scrape interval.
BUILTINS = {"__rate_interval": "20s", "__interval": "2s", "__range": "60s"}
# Series that exist only once something happened, which the test node does not stage: an
# alert escalated, a site gone dark, a notifier delivering, a camera worker restarted, camera
# samples dropped. Their queries must still parse, and may return nothing only while their
# metric has no series at all (a wrong label or function on them is still caught); each name
# must be one the node declares in its /metrics. Notifier failures and dead letters are
# staged (a webhook nobody answers), so their panels are checked on data.
AFTER_AN_EVENT = frozenset({
    "vigie_alerts_escalated_total", "vigie_site_unreachable", "vigie_notifications_sent_total",
    "vigie_camera_worker_restarts_total", "vigie_camera_history_dropped_total"})
# A webhook to the discard port, given up after one attempt: every alert change it is told
# of fails and is dead-lettered.
UNANSWERED_WEBHOOK = {"type": "webhook", "name": "injoignable", "url": "http://127.0.0.1:9/h",
                      "secret": "0123456789abcdef0123456789abcdef", "max_attempts": 1}


def _load(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows keep theirs inside
    return out


def _queries(board: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(panel title, expression, instant) for every PromQL target."""
    return [(p["title"], t["expr"], bool(t.get("instant")) and not t.get("range"))
            for p in _panels(board) for t in p.get("targets", []) if t.get("expr")]


def _variables(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in board["templating"]["list"] if v["type"] == "query"]


def resolve(expr: str, values: dict[str, str]) -> str:
    """Grafana's interpolation of $var, ${var} and [[var]] (values already regex-ready)."""
    def sub(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        return values[name]

    resolved = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", sub, expr)
    assert "$" not in resolved, resolved
    return resolved


def test_the_dashboards_are_there() -> None:
    titles = {_load(p)["title"] for p in DASHBOARDS}
    assert titles == {"vigie — Supervision", "vigie — Caméras"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_grafana_can_load_the_dashboard(path: Path) -> None:
    board = _load(path)
    datasource = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "vigie.yaml").read_text())
    [ds] = datasource["datasources"]
    assert board["uid"] and len(board["uid"]) <= 40 and board["schemaVersion"] >= 36
    ids = [p["id"] for p in _panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels(board):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": ds["uid"]}
            assert panel["targets"], panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]
    for variable in _variables(board):
        assert variable["datasource"]["uid"] == ds["uid"]
    # Panels do not overlap.
    cells: set[tuple[int, int]] = set()
    for panel in _panels(board):
        g = panel["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "vigie.yaml").read_text())
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"../grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts


# --- against a real Prometheus -------------------------------------------------------------


@pytest.fixture
async def scraped(fresh_dsn: str, mqtt_url: str, rtsp_server: RtspServer, tmp_path: Path
                  ) -> AsyncIterator[tuple[Node, Prometheus]]:
    async with camera_node(fresh_dsn, mqtt_url, rtsp_server,
                           notifiers=[UNANSWERED_WEBHOOK]) as node:
        stop = asyncio.Event()
        feeder = asyncio.create_task(traffic(node, await make_token(node), stop))
        target = node.api_url.removeprefix("http://")
        try:
            with prometheus(tmp_path / "prometheus", target) as prom:
                await prom.ready()
                yield node, prom
        finally:
            stop.set()
            await feeder


class PromApi:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url

    async def get(self, path: str, **params: Any) -> dict[str, Any]:
        async with self.http.get(self.url + path, params=params) as r:
            body: dict[str, Any] = await r.json()
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]  # type: ignore[no-any-return]

    async def has_data(self, expr: str, instant: bool) -> bool:
        now = time.time()
        if instant:
            data = await self.get("/api/v1/query", query=expr, time=now)
        else:
            data = await self.get("/api/v1/query_range", query=expr, start=now - 60, end=now,
                                  step=2)
        values = [v[1] for s in data["result"] for v in
                  (s.get("values") or [s["value"]] if data["resultType"] != "scalar" else [])]
        return any(not math.isnan(float(v)) for v in values)

    async def label_values(self, query: str) -> list[str]:
        match = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)", query.strip())
        assert match, f"not a label_values() query: {query}"
        selector, label = match.groups()
        params = {"match[]": selector} if selector else {}
        values: list[str] = await self.get(f"/api/v1/label/{label}/values", **params)
        return values


class QueryError(AssertionError):
    pass


async def _without_data(api: PromApi, boards: list[dict[str, Any]]) -> list[str]:
    """What returns no data yet, with every variable on "All" (Grafana's allValue .*),
    then with one collège; a query that does not parse fails the test at once."""
    missing: list[str] = []
    for board in boards:
        for choice in ({"site": ".*", "camera": ".*"}, {"site": SITE, "camera": ".*"}):
            values = {**BUILTINS, **choice}
            for variable in _variables(board):
                query = resolve(variable["query"]["query"], values)
                if not await api.label_values(query):
                    missing.append(f"{board['title']}: variable ${variable['name']} "
                                   f"({query}) has no values")
            for title, expr, instant in _queries(board):
                query = resolve(expr, values)
                try:
                    if (not await api.has_data(query, instant)
                            and not await _nothing_happened(api, query)):
                        missing.append(f"{board['title']} / {title}: {query}")
                except QueryError as exc:  # a parse error never heals
                    pytest.fail(f"{board['title']} / {title}: {query}: {exc}")
    return missing


async def _nothing_happened(api: PromApi, query: str) -> bool:
    """Whether the query reads a metric of AFTER_AN_EVENT that has no series yet."""
    for name in set(re.findall(r"\bvigie_\w+", query)) & AFTER_AN_EVENT:
        if not await api.has_data(f"count({name})", True):
            return True
    return False


async def test_every_dashboard_query_parses_and_returns_data(
        scraped: tuple[Node, Prometheus]) -> None:
    node, prom = scraped
    boards = [_load(p) for p in DASHBOARDS]
    async with aiohttp.ClientSession() as http:
        api = PromApi(http, prom.url)
        deadline = time.monotonic() + 90
        while missing := await _without_data(api, boards):
            if time.monotonic() > deadline:
                pytest.fail("queries without data after 90 s of scraping:\n  "
                            + "\n  ".join(missing) + "\nprometheus log:\n" + prom.log_tail())
            await asyncio.sleep(2)
        # The rules of deploy/prometheus/rules.yml load and evaluate on real data.
        rules = await api.get("/api/v1/rules")
        groups = {g["name"]: g for g in rules["groups"]}
        assert set(groups) == {"vigie.records", "vigie.alerts"}
        for group in groups.values():
            for rule in group["rules"]:
                assert rule["health"] == "ok", rule
        # Every recorded series gets data (the alerts' expressions use the same metrics).
        recorded = [rule["name"] for rule in groups["vigie.records"]["rules"]]
        while empty := [name for name in recorded if not await api.has_data(name, True)]:
            assert time.monotonic() < deadline, f"recording rules without data: {empty}"
            await asyncio.sleep(1)
    assert node.cameras is not None and len(node.cameras.cameras) == 3
    exposition = node.metrics.exposition().decode()
    undeclared = [name for name in AFTER_AN_EVENT if f"# TYPE {name} " not in exposition]
    assert not undeclared, f"not metrics of vigie: {undeclared}"
    used = {name for board in boards for _, expr, _ in _queries(board)
            for name in re.findall(r"\bvigie_\w+", expr)}
    assert used >= AFTER_AN_EVENT, "an exemption no dashboard needs: remove it"
