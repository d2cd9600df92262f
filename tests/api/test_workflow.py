"""The operator workflow over HTTP, on a real node and PostgreSQL with an injected clock:
silences (maintenance windows), assign, un-acknowledge, resolve with a category, reports,
and what the live feed says about escalations and silences.

Every answer goes through `Api.call` (tests/api/test_api.py), which checks it against the
OpenAPI document the node serves."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from tests.alerts.test_escalation import FakeClock
from tests.api.test_api import Api, OpenApi, make_token
from tests.api.test_stream import QUIET_SITES, stream
from tests.conftest import make_config
from tests.pg import temporary_database
from vigie.alerts import Raise
from vigie.app import Node, running_node
from vigie.store._alerts import AlertOccurrence

NO_MQTT = "mqtt://127.0.0.1:1"
JM, PASTEUR = "clg-jean-moulin", "clg-pasteur"
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def _config(dsn: str) -> Any:
    # No cameras: no alert but the ones a test raises. Critical alerts escalate after 5 min.
    return make_config(dsn, NO_MQTT, sites=QUIET_SITES,
                       alerts={"escalation": {"critical": {"after": "5m"}}})


@asynccontextmanager
async def _api_for(node: Node) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        async with session.get(node.api_url + "/api/v1/openapi.json") as r:
            doc = await r.json()
        yield Api(session, node.api_url, OpenApi(doc), await make_token(node, "admin"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def node(fresh_dsn: str, clock: FakeClock) -> AsyncIterator[Node]:
    async with running_node(_config(fresh_dsn), clock=clock, with_mqtt=False) as node:
        yield node


@pytest.fixture
async def api(node: Node) -> AsyncIterator[Api]:
    async with _api_for(node) as api:
        yield api


@pytest.fixture(scope="module")
async def shared_api() -> AsyncIterator[Api]:
    """One node for the tests of bad input, which must change nothing."""
    async with temporary_database("vigie_wf") as dsn, running_node(
        _config(dsn), clock=FakeClock(T0), with_mqtt=False
    ) as node, _api_for(node) as api:
        yield api


async def raise_alert(node: Node, site: str = PASTEUR, source: str = "centrale",
                      kind: str = "intrusion", severity: str = "critical",
                      at: datetime = T0, source_type: str = "sensor") -> str:
    changes = await node.alerts.raise_now([Raise(AlertOccurrence(
        site=site, source=source, source_type=source_type, kind=kind, severity=severity,
        title=f"{kind}: {source}", at=at))])
    return str(changes[0].alert.id)


async def audit(node: Node, action: str) -> list[tuple[str, str]]:
    async with node.store.connection() as conn:
        rows = await conn.fetch(
            "SELECT actor, outcome FROM audit_log WHERE action = $1 ORDER BY id", action)
    return [(r["actor"], r["outcome"]) for r in rows]


def camera_window(site: str = JM, **extra: Any) -> dict[str, Any]:
    return {"matchers": {"site": site, "source_type": "camera"}, "duration": "2h",
            "comment": "changement d'objectif", **extra}


# --- silences ------------------------------------------------------------------------------------


async def test_a_silence_is_created_listed_applied_and_ended(node: Node, api: Api,
                                                             clock: FakeClock) -> None:
    operator = await make_token(node, "operator", name="op-marie")
    created = await api.call("POST", "/api/v1/silences", operator, json={
        "matchers": {"site": PASTEUR, "kind": "intrusion"}, "duration": "90m",
        "comment": "essai de la centrale par l'installateur"})
    assert created.status == 201, created.body
    silence = created.body
    assert silence["matchers"] == {"site": PASTEUR, "source": "*", "kind": "intrusion",
                                   "source_type": "*"}
    assert (silence["starts_at"], silence["ends_at"]) == (
        T0.isoformat(), (T0 + 90 * MIN).isoformat())
    assert (silence["created_by"], silence["state"]) == ("op-marie", "active")
    assert await audit(node, "create_silence") == [("op-marie", "201")]

    listed = await api.get("/api/v1/silences")
    assert [s["id"] for s in listed["items"]] == [silence["id"]]
    assert (await api.get(f"/api/v1/silences/{silence['id']}"))["comment"].startswith("essai")

    # Raised during the silence: stored, flagged, left out of the default list.
    quiet = await raise_alert(node)
    loud = await raise_alert(node, kind="panic", source="panique")
    assert (await api.get(f"/api/v1/alerts/{quiet}"))["silenced"] is True
    ids = {kind: [a["id"] for a in (await api.get(f"/api/v1/alerts?silenced={kind}"))["items"]]
           for kind in ("false", "true", "any")}
    assert [a["id"] for a in (await api.get("/api/v1/alerts"))["items"]] == [loud]
    assert (ids["false"], ids["true"], set(ids["any"])) == ([loud], [quiet], {loud, quiet})

    clock.now = T0 + 10 * MIN
    ended = await api.call("DELETE", f"/api/v1/silences/{silence['id']}", operator)
    assert ended.status == 200, ended.body
    assert (ended.body["state"], ended.body["ended_by"], ended.body["ends_at"]) == (
        "expired", "op-marie", (T0 + 10 * MIN).isoformat())
    after = await api.get(f"/api/v1/alerts/{quiet}")
    assert after["silenced"] is False
    assert [(h["action"], h["actor"]) for h in after["history"]] == [
        ("opened", "vigie"), ("unsilenced", "op-marie")]
    assert (await api.call("DELETE", f"/api/v1/silences/{silence['id']}", operator)
            ).status == 409
    assert await api.get("/api/v1/silences") == {"items": [], "next_cursor": None}
    assert [s["id"] for s in (await api.get("/api/v1/silences?state=expired"))["items"]] == [
        silence["id"]]
    assert await audit(node, "end_silence") == [("op-marie", "200"), ("op-marie", "409")]


async def test_silences_page_with_a_cursor(node: Node, api: Api, clock: FakeClock) -> None:
    made = []
    for i in range(5):
        clock.now = T0 + i * MIN
        reply = await api.call("POST", "/api/v1/silences", json=camera_window(
            comment=f"fenêtre {i}"))
        made.append(reply.body["id"])
    items, sizes = await api.walk("/api/v1/silences?limit=2")
    assert sizes == [2, 2, 1]
    assert [s["id"] for s in items] == made[::-1]


_FUTURE = (T0 + timedelta(hours=3)).isoformat()
BAD_SILENCES: dict[str, tuple[Any, str]] = {
    "empty object": ({}, "matchers: required"),
    "matchers not an object": ({"matchers": "clg-pasteur", "duration": "1h", "comment": "x"},
                               "matchers: expected an object"),
    "unknown matcher": ({"matchers": {"zone": "cour"}, "duration": "1h", "comment": "x"},
                        "matchers.zone"),
    "unknown field": ({**camera_window(), "created_by": "someone else"}, "created_by"),
    "everything": ({"matchers": {}, "duration": "1h", "comment": "x"}, "at least one"),
    "only wildcards": ({"matchers": {"site": "*", "kind": "**"}, "duration": "1h",
                        "comment": "x"}, "at least one"),
    "uppercase": ({"matchers": {"site": "CLG-PASTEUR"}, "duration": "1h", "comment": "x"},
                  "matchers.site"),
    "matcher not a string": ({"matchers": {"site": 3}, "duration": "1h", "comment": "x"},
                             "matchers.site: expected a string"),
    "matcher with NUL": ({"matchers": {"site": "a\x00"}, "duration": "1h", "comment": "x"},
                         "matchers.site"),
    "unknown site": ({"matchers": {"site": "clg-nowhere"}, "duration": "1h", "comment": "x"},
                     "no site 'clg-nowhere'"),
    "unknown sensor": ({"matchers": {"site": PASTEUR, "source": "porte-hall"},
                        "duration": "1h", "comment": "x"}, "no camera or sensor 'porte-hall'"),
    "unknown kind": ({"matchers": {"site": PASTEUR, "kind": "fire"}, "duration": "1h",
                      "comment": "x"}, "unknown kind 'fire'"),
    "bad source type": ({"matchers": {"site": PASTEUR, "source_type": "door"},
                         "duration": "1h", "comment": "x"}, "matchers.source_type"),
    "no end": ({"matchers": {"site": PASTEUR}, "comment": "x"}, "give either ends_at"),
    "end and duration": ({"matchers": {"site": PASTEUR}, "comment": "x", "duration": "1h",
                          "ends_at": _FUTURE}, "give either ends_at"),
    "duration in words": ({"matchers": {"site": PASTEUR}, "comment": "x",
                           "duration": "2 hours"}, "duration"),
    "zero duration": ({"matchers": {"site": PASTEUR}, "comment": "x", "duration": "0m"},
                      "after starts_at"),
    "too long": ({"matchers": {"site": PASTEUR}, "comment": "x", "duration": "91d"},
                 "at most 90 days"),
    "naive end": ({"matchers": {"site": PASTEUR}, "comment": "x",
                   "ends_at": "2026-11-28T15:00:00"}, "time zone"),
    "end not a time": ({"matchers": {"site": PASTEUR}, "comment": "x", "ends_at": "tonight"},
                       "RFC 3339"),
    "end in the past": ({"matchers": {"site": PASTEUR}, "comment": "x",
                         "starts_at": "2026-11-27T08:00:00Z", "ends_at": "2026-11-27T09:00:00Z"},
                        "already past"),
    "end before start": ({"matchers": {"site": PASTEUR}, "comment": "x",
                          "starts_at": "2026-11-29T08:00:00Z",
                          "ends_at": "2026-11-29T07:00:00Z"}, "after starts_at"),
    "window too long": ({"matchers": {"site": PASTEUR}, "comment": "x",
                         "ends_at": "2027-06-01T00:00:00Z"}, "at most 90 days"),
    "no comment": ({"matchers": {"site": PASTEUR}, "duration": "1h"}, "comment: required"),
    "blank comment": ({"matchers": {"site": PASTEUR}, "duration": "1h", "comment": "  "},
                      "comment: must not be empty"),
    "long comment": ({"matchers": {"site": PASTEUR}, "duration": "1h", "comment": "x" * 4001},
                     "at most 4000"),
    "json array": ([camera_window()], "expected a JSON object"),
}


@pytest.mark.parametrize(("body", "message"),
                         [pytest.param(*case, id=name) for name, case in BAD_SILENCES.items()])
async def test_a_bad_silence_is_a_422_that_names_the_problem(
    shared_api: Api, body: Any, message: str
) -> None:
    reply = await shared_api.call("POST", "/api/v1/silences", json=body)
    assert reply.status == 422, reply.body
    assert reply.body["error"]["code"] == "invalid_body"
    assert message in reply.body["error"]["message"], reply.body
    everything = await shared_api.get("/api/v1/silences?state=pending,active,expired")
    assert everything["items"] == []


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), [
    ("POST", "/api/v1/silences", {}, 400),  # no body
    ("POST", "/api/v1/silences", {"data": b"{nope"}, 400),
    ("GET", "/api/v1/silences?state=over", {}, 400),
    ("GET", "/api/v1/silences?limit=0", {}, 400),
    ("GET", "/api/v1/silences?cursor=junk!", {}, 400),
    ("GET", "/api/v1/silences?site=%00", {}, 400),
    ("GET", "/api/v1/silences/not-a-uuid", {}, 404),
    ("GET", f"/api/v1/silences/{uuid.uuid4()}", {}, 404),
    ("DELETE", f"/api/v1/silences/{uuid.uuid4()}", {}, 404),
    ("DELETE", "/api/v1/silences/12", {}, 404),
    ("GET", "/api/v1/alerts?silenced=maybe", {}, 400),
    ("GET", "/api/v1/alerts?silenced=true&silenced=false", {}, 400),
])
async def test_bad_workflow_requests(shared_api: Api, method: str, path: str,
                                    kwargs: dict[str, Any], status: int) -> None:
    reply = await shared_api.call(method, path, **kwargs)
    assert reply.status == status, reply.body


async def test_technicians_open_windows_on_the_cameras_of_their_sites_only(
    node: Node, api: Api
) -> None:
    mine = await make_token(node, "technician", [JM])
    anywhere = await make_token(node, "technician")
    viewer = await make_token(node, "viewer")

    assert (await api.call("POST", "/api/v1/silences", mine, json=camera_window())).status == 201
    for body, token in [
        (camera_window(PASTEUR), mine),  # not their site
        (camera_window("clg-*"), mine),  # a pattern may reach other sites
        ({**camera_window(), "matchers": {"site": JM}}, mine),  # sensors too
        ({**camera_window(), "matchers": {"site": JM, "source_type": "sensor"}}, anywhere),
    ]:
        reply = await api.call("POST", "/api/v1/silences", token, json=body)
        assert reply.status == 403, (body, reply.body)
    assert (await api.call("POST", "/api/v1/silences", anywhere,
                           json=camera_window(PASTEUR))).status == 201
    assert (await api.call("POST", "/api/v1/silences", viewer,
                           json=camera_window())).status == 403
    assert len((await api.get("/api/v1/silences", token=viewer))["items"]) == 2

    # A technician cannot end an operator's silence on sensors.
    sensors = await api.call("POST", "/api/v1/silences", json={
        "matchers": {"site": JM, "source": "porte-hall"}, "duration": "1h",
        "comment": "porte en réparation"})
    reply = await api.call("DELETE", f"/api/v1/silences/{sensors.body['id']}", mine)
    assert reply.status == 403
    assert (await api.get(f"/api/v1/silences/{sensors.body['id']}"))["state"] == "active"


async def test_a_token_limited_to_sites_sees_and_ends_only_what_is_within_them(
    node: Node, api: Api
) -> None:
    pasteur_op = await make_token(node, "operator", [PASTEUR])
    theirs = (await api.call("POST", "/api/v1/silences", json=camera_window(JM))).body["id"]
    wide = (await api.call("POST", "/api/v1/silences", json=camera_window("clg-*"))).body["id"]
    ours = (await api.call("POST", "/api/v1/silences", pasteur_op,
                           json=camera_window(PASTEUR))).body["id"]

    listed = await api.get("/api/v1/silences", token=pasteur_op)
    assert {s["id"] for s in listed["items"]} == {wide, ours}
    assert (await api.call("GET", f"/api/v1/silences/{theirs}", pasteur_op)).status == 404
    assert (await api.call("GET", f"/api/v1/silences?site={JM}", pasteur_op)).status == 404
    assert (await api.call("DELETE", f"/api/v1/silences/{theirs}", pasteur_op)).status == 404
    # Visible (it can match their site), but ending it would also end it elsewhere.
    assert (await api.call("DELETE", f"/api/v1/silences/{wide}", pasteur_op)).status == 403
    assert (await api.call("DELETE", f"/api/v1/silences/{ours}", pasteur_op)).status == 200


# --- operator actions ----------------------------------------------------------------------------


async def test_assign_and_unassign_with_history(node: Node, api: Api, clock: FakeClock
                                                ) -> None:
    chief = await make_token(node, "operator", name="chef-de-salle")
    await make_token(node, "operator", name="op-marie")
    alert = await raise_alert(node)
    clock.now = T0 + MIN
    reply = await api.call("POST", f"/api/v1/alerts/{alert}/assign", chief,
                           json={"assignee": "op-marie", "comment": "pour toi"})
    assert reply.status == 200, reply.body
    assert (reply.body["assigned_to"], reply.body["assigned_at"]) == (
        "op-marie", (T0 + MIN).isoformat())
    assert reply.body["state"] == "open"  # assigned is not acknowledged
    clock.now = T0 + 2 * MIN
    reply = await api.call("POST", f"/api/v1/alerts/{alert}/assign", chief,
                           json={"assignee": None})
    assert (reply.status, reply.body["assigned_to"], reply.body["assigned_at"]) == (
        200, None, None)
    history = (await api.get(f"/api/v1/alerts/{alert}"))["history"]
    assert [(h["at"], h["actor"], h["action"], h["comment"], h["details"])
            for h in history[1:]] == [
        ((T0 + MIN).isoformat(), "chef-de-salle", "assigned", "pour toi",
         {"assignee": "op-marie", "previous": None}),
        ((T0 + 2 * MIN).isoformat(), "chef-de-salle", "assigned", None,
         {"assignee": None, "previous": "op-marie"}),
    ]
    assert await audit(node, "assign_alert") == [("chef-de-salle", "200")] * 2


async def test_an_alert_is_assigned_only_to_an_operator_who_can_see_it(
    node: Node, api: Api
) -> None:
    await make_token(node, "viewer", name="viewer-paul")
    await make_token(node, "operator", [JM], name="op-jm")
    await make_token(node, "operator", name="op-parti")
    async with node.store.connection() as conn:
        from vigie.store._tokens import revoke_token
        await revoke_token(conn, "op-parti")
    alert = await raise_alert(node)  # at PASTEUR
    for body, message in [
        ({"assignee": "nobody"}, "no active operator"), ({"assignee": "viewer-paul"}, "no active"),
        ({"assignee": "op-jm"}, "sees site clg-pasteur"), ({"assignee": "op-parti"}, "no active"),
        ({}, "assignee: required"), ({"assignee": ""}, "must not be empty"),
        ({"assignee": 7}, "expected a string"), ({"assignee": "x" * 129}, "at most 128"),
        ({"assignee": None, "team": "b"}, "unknown field"),
    ]:
        reply = await api.call("POST", f"/api/v1/alerts/{alert}/assign", json=body)
        assert reply.status == 422, (body, reply.body)
        assert message in reply.body["error"]["message"], (body, reply.body)
    assert (await api.call("POST", f"/api/v1/alerts/{alert}/assign")).status == 400
    assert (await api.get(f"/api/v1/alerts/{alert}"))["assigned_to"] is None

    await api.call("POST", f"/api/v1/alerts/{alert}/resolve", json={})
    reply = await api.call("POST", f"/api/v1/alerts/{alert}/assign", json={"assignee": None})
    assert reply.status == 409


async def test_unacknowledge_reopens_and_restarts_escalation(
    node: Node, api: Api, clock: FakeClock
) -> None:
    operator = await make_token(node, "operator", name="op-marie")
    alert = await raise_alert(node)
    opened = await api.get(f"/api/v1/alerts/{alert}")
    assert opened["next_escalation_at"] == (T0 + 5 * MIN).isoformat()  # alerts.escalation

    assert (await api.call("POST", f"/api/v1/alerts/{alert}/unack", operator)).status == 409
    clock.now = T0 + MIN
    acked = await api.call("POST", f"/api/v1/alerts/{alert}/ack", operator, json={})
    assert acked.body["next_escalation_at"] is None
    clock.now = T0 + 20 * MIN
    reply = await api.call("POST", f"/api/v1/alerts/{alert}/unack", operator,
                           json={"comment": "pas pour moi"})
    assert reply.status == 200, reply.body
    body = reply.body
    assert (body["state"], body["acknowledged_by"], body["acknowledged_at"]) == (
        "open", None, None)
    assert body["next_escalation_at"] == (T0 + 25 * MIN).isoformat()
    history = (await api.get(f"/api/v1/alerts/{alert}"))["history"]
    assert [(h["actor"], h["action"], h["comment"], h["details"]) for h in history[1:]] == [
        ("op-marie", "acknowledged", None, {}),
        ("op-marie", "unacknowledged", "pas pour moi", {"acknowledged_by": "op-marie"})]
    assert await audit(node, "unack_alert") == [("op-marie", "409"), ("op-marie", "200")]
    for bad in ({"comment": 1}, {"reason": "x"}, [1]):
        assert (await api.call("POST", f"/api/v1/alerts/{alert}/unack", json=bad)
                ).status == 422


async def test_resolve_with_a_category(node: Node, api: Api) -> None:
    alert = await raise_alert(node)
    for bad in ({"resolution": "prank"}, {"resolution": 3}, {"category": "test"}):
        reply = await api.call("POST", f"/api/v1/alerts/{alert}/resolve", json=bad)
        assert reply.status == 422, (bad, reply.body)
    assert (await api.get(f"/api/v1/alerts/{alert}"))["state"] == "open"
    reply = await api.call("POST", f"/api/v1/alerts/{alert}/resolve", json={
        "resolution": "false_alarm", "comment": "chat dans le hall"})
    assert (reply.status, reply.body["state"], reply.body["resolution"]) == (
        200, "resolved", "false_alarm")
    last = (await api.get(f"/api/v1/alerts/{alert}"))["history"][-1]
    assert (last["action"], last["comment"], last["details"]) == (
        "resolved", "chat dans le hall", {"resolution": "false_alarm"})


# --- reports -------------------------------------------------------------------------------------


async def test_report_counts_and_response_times(node: Node, api: Api, clock: FakeClock
                                                ) -> None:
    h = timedelta(hours=1)
    sec = timedelta(seconds=1)

    async def at(when: datetime) -> None:
        clock.now = when

    # The clock follows the story: the node's own timers tick meanwhile, and must find
    # nothing to escalate (each alert is acknowledged within its 5 minutes).
    await at(T0 - 3 * h)
    a1 = uuid.UUID(await raise_alert(node, PASTEUR, "centrale", at=T0 - 3 * h))
    await at(T0 - 3 * h + 60 * sec)
    await node.alerts.acknowledge(a1, "op", None)
    await at(T0 - 3 * h + 600 * sec)
    await node.alerts.resolve(a1, "op", None, resolution="false_alarm")

    await at(T0 - 2 * h)
    a2 = uuid.UUID(await raise_alert(node, JM, "centrale-a", at=T0 - 2 * h))
    await at(T0 - 2 * h + 120 * sec)
    await node.alerts.acknowledge(a2, "op", None)
    await node.alerts.unacknowledge(a2, "op", None)
    await at(T0 - 2 * h + 300 * sec)  # acknowledged again: the first one counts
    await node.alerts.acknowledge(a2, "op", None)
    await at(T0 - 2 * h + 1200 * sec)
    await node.alerts.resolve(a2, "op", None, resolution="real_incident")

    await raise_alert(node, JM, "porte-hall", kind="door", severity="info", at=T0 - h)
    async with node.store.transaction() as conn:
        from vigie.alerts import Resolve
        await node.alerts.apply(conn, [Resolve(f"{JM}/porte-hall/door", T0 - h + 30 * sec,
                                               "closed")])
    await raise_alert(node, JM, "entree", kind="offline", severity="major",
                      at=T0 - 30 * MIN, source_type="camera")
    # Before the period, and escalated (nobody acknowledged it): counted in no figure.
    await at(T0 - timedelta(days=10))
    await raise_alert(node, PASTEUR, "old", at=T0 - timedelta(days=10))
    await at(T0)
    await node.alerts.escalate_due()

    report = await api.get("/api/v1/reports/alerts")
    assert (report["from"], report["to"], report["site"]) == (
        (T0 - timedelta(days=7)).isoformat(), T0.isoformat(), None)
    assert report["totals"] == {
        "alerts": 4, "acknowledged": 2, "resolved": 3, "escalated": 0, "silenced": 0,
        "mean_seconds_to_acknowledge": 90.0, "mean_seconds_to_resolve": 610.0}
    assert {k: v["alerts"] for k, v in report["by_kind"].items()} == {
        "intrusion": 2, "door": 1, "offline": 1}
    critical = report["by_severity"]["critical"]
    assert (critical["alerts"], critical["mean_seconds_to_acknowledge"],
            critical["mean_seconds_to_resolve"]) == (2, 90.0, 900.0)
    assert {k: v["alerts"] for k, v in report["by_resolution"].items()} == {
        "false_alarm": 1, "real_incident": 1, "auto": 1, "unresolved": 1}
    assert {k: v["alerts"] for k, v in report["by_site"].items()} == {JM: 3, PASTEUR: 1}

    one_site = await api.get(f"/api/v1/reports/alerts?site={PASTEUR}")
    assert one_site["totals"]["alerts"] == 1 and one_site["site"] == PASTEUR
    scoped = await make_token(node, "viewer", [PASTEUR])
    assert (await api.get("/api/v1/reports/alerts", token=scoped))["by_site"].keys() == {PASTEUR}
    assert (await api.call("GET", f"/api/v1/reports/alerts?site={JM}", scoped)).status == 404
    longer = await api.get("/api/v1/reports/alerts?from=2026-11-01T00:00:00Z")
    assert (longer["totals"]["alerts"], longer["totals"]["escalated"]) == (5, 1)
    empty = await api.get("/api/v1/reports/alerts?from=2025-01-01T00:00:00Z"
                          "&to=2025-02-01T00:00:00Z")
    assert empty["totals"]["alerts"] == 0 and empty["by_kind"] == {}
    assert empty["totals"]["mean_seconds_to_acknowledge"] is None


@pytest.mark.parametrize("query", [
    "from=yesterday", "to=2026-11-28", "from=2026-11-28T00:00:00Z&to=2026-11-27T00:00:00Z",
    "from=2026-11-28T00:00:00Z&to=2026-11-28T00:00:00Z",
    "from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "bogus=1", "site=%00",
])
async def test_bad_report_queries_are_400(shared_api: Api, query: str) -> None:
    reply = await shared_api.call("GET", f"/api/v1/reports/alerts?{query}")
    assert reply.status == 400, reply.body


# --- the live feed -------------------------------------------------------------------------------


async def test_the_feed_carries_escalations_and_silences(node: Node, api: Api,
                                                         clock: FakeClock) -> None:
    token = await make_token(node, "viewer")
    async with aiohttp.ClientSession() as http, stream(http, node, token) as feed:
        assert (await feed.next())["type"] == "feed.hello"
        alert = await raise_alert(node)
        clock.now = T0 + 5 * MIN
        await node.alerts.escalate_due()
        reply = await api.call("POST", "/api/v1/silences", json={
            "matchers": {"site": PASTEUR}, "duration": "1h", "comment": "travaux"})
        clock.now = T0 + 6 * MIN
        await api.call("DELETE", f"/api/v1/silences/{reply.body['id']}")
        messages = await feed.take(4)
    assert [(m["type"], m["alert"]["id"], m["alert"]["escalation_level"],
             m["alert"]["silenced"]) for m in messages] == [
        ("alert.opened", alert, 0, False), ("alert.escalated", alert, 1, False),
        ("alert.silenced", alert, 1, True), ("alert.unsilenced", alert, 1, False)]
    # The timers act as vigie; the silence's effects are the admin's who made and ended it.
    actors = [m["actor"] for m in messages]
    assert actors[:2] == ["vigie", "vigie"]
    assert actors[2] == actors[3] and actors[2].startswith("admin-")
