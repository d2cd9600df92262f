"""The HTTP API on a real node and a real PostgreSQL: who may call what, site scoping, bad
input, pagination, health and metrics, and the OpenAPI document the answers must match.

Every answer the tests get goes through `Api.call`, which checks it against the schema the
served OpenAPI document declares for that route and status, and checks every error answer
for the `{"error": {"code", "message"}}` shape — so any test here is also a contract test.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import aiohttp
import jsonschema
import pytest
from multidict import CIMultiDictProxy

from tests.conftest import make_config
from tests.pg import temporary_database
from vigie.api._auth import Authenticator
from vigie.api._routes import endpoints
from vigie.app import Node, running_node
from vigie.store import Store
from vigie.store import _notify as notify_q
from vigie.store._alerts import AlertOccurrence, upsert_alert
from vigie.store._cameras import keep_snapshot
from vigie.store._silences import Matchers
from vigie.store._tokens import create_token, revoke_token

ROLES = ("admin", "operator", "technician", "viewer")
JM, PASTEUR = "clg-jean-moulin", "clg-pasteur"
NO_MQTT = "mqtt://127.0.0.1:1"  # never dialled: the nodes here run with_mqtt=False
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


# --- the OpenAPI document as a validator ---------------------------------------------------


def _to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema → JSON Schema: `nullable: true` becomes a type list, and an object
    that lists its properties gets `additionalProperties: false` unless it says otherwise, so
    a field the API sends but does not document fails too."""
    if isinstance(node, list):
        return [_to_json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("date-time", raises=ValueError)
def _is_rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value):
        raise ValueError(f"{value!r} is not an RFC 3339 timestamp")
    return datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None


@_FORMATS.checks("uuid", raises=ValueError)
def _is_uuid(value: object) -> bool:
    return not isinstance(value, str) or bool(uuid.UUID(value))


class OpenApi:
    """The served document: find the operation of a request, validate an answer."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.components = {"schemas": _to_json_schema(doc["components"]["schemas"])}
        self._routes = [
            (re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$"), path)
            for path in doc["paths"]
        ]

    def operations(self) -> Iterable[tuple[str, str, dict[str, Any]]]:
        for path, item in self.doc["paths"].items():
            for method, op in item.items():
                yield method.upper(), path, op

    def route(self, method: str, url_path: str) -> tuple[str, dict[str, Any]] | None:
        for pattern, path in self._routes:
            op = self.doc["paths"][path].get(method.lower())
            if op is not None and pattern.match(url_path):
                return path, op
        return None

    def validator(self, schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
        # Refs are "#/components/schemas/X": resolve them against a root that holds them.
        root = {**_to_json_schema(schema), "components": self.components}
        return jsonschema.Draft202012Validator(root, format_checker=_FORMATS)

    def check(self, method: str, url_path: str, status: int, body: Any) -> None:
        found = self.route(method, url_path)
        if found is None:  # not a route: only the error shape can be checked
            assert status >= 400, f"{method} {url_path}: {status} on an undocumented path"
            self.validator({"$ref": "#/components/schemas/Error"}).validate(body)
            return
        path, op = found
        response = op["responses"].get(str(status))
        if response is None:
            if status >= 400:
                self.validator({"$ref": "#/components/schemas/Error"}).validate(body)
            return
        schema = response.get("content", {}).get("application/json", {}).get("schema")
        if schema is not None:
            errors = sorted(self.validator(schema).iter_errors(body), key=str)
            assert not errors, (
                f"{method} {path} → {status} does not match its declared schema:\n"
                + "\n".join(f"  at {list(e.absolute_path)}: {e.message}" for e in errors[:10]))


@dataclass
class Reply:
    status: int
    body: Any
    headers: CIMultiDictProxy[str]


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str, spec: OpenApi,
                 token: str) -> None:
        self.session, self.base, self.spec, self.token = session, base, spec, token

    async def call(self, method: str, path: str, token: str | None = None, *,
                   auth: str | None = None, session: aiohttp.ClientSession | None = None,
                   headers: dict[str, str] | None = None, **kwargs: Any) -> Reply:
        """`token` defaults to the fixture's; `auth` sets the raw Authorization header
        ("" sends none); `headers` are sent too."""
        header = auth if auth is not None else f"Bearer {token or self.token}"
        headers = {**(headers or {}), **({"Authorization": header} if header else {})}
        async with (session or self.session).request(
                method, self.base + path, headers=headers, **kwargs) as r:
            raw = await r.read()
            is_json = r.content_type == "application/json"
            body = await r.json() if is_json and raw else raw.decode(errors="replace")
            reply = Reply(r.status, body, r.headers)
        if reply.status >= 400:
            assert is_json, f"{method} {path} → {reply.status} is not JSON: {body!r}"
            assert isinstance(body.get("error", {}).get("code"), str), body
            assert isinstance(body["error"].get("message"), str), body
        if is_json:
            self.spec.check(method, path.partition("?")[0], reply.status, body)
        return reply

    async def get(self, path: str, **kwargs: Any) -> Any:
        reply = await self.call("GET", path, **kwargs)
        assert reply.status == 200, (path, reply.status, reply.body)
        return reply.body

    async def walk(self, path: str) -> tuple[list[Any], list[int]]:
        """Every item of a cursor-paginated list, and the size of each page."""
        items: list[Any] = []
        sizes: list[int] = []
        sep = "&" if "?" in path else "?"
        url = path
        while True:
            page = await self.get(url)
            items += page["items"]
            sizes.append(len(page["items"]))
            if page["next_cursor"] is None:
                return items, sizes
            assert len(sizes) < 100, "pagination does not end"
            url = f"{path}{sep}cursor={page['next_cursor']}"


# --- nodes, tokens, rows -------------------------------------------------------------------


@asynccontextmanager
async def _api_for(node: Node) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        async with session.get(node.api_url + "/api/v1/openapi.json") as r:
            assert r.status == 200
            doc = await r.json()
        yield Api(session, node.api_url, OpenApi(doc), await make_token(node, "admin"))


async def make_token(node: Node, role: str, sites: list[str] | None = None, *,
                     expires_at: datetime | None = None, name: str | None = None) -> str:
    async with node.store.connection() as conn:
        value, _ = await create_token(conn, name=name or f"{role}-{uuid.uuid4().hex[:8]}",
                                      role=role, sites=sites, expires_at=expires_at)
    return value


async def open_alert(node: Node, site: str = PASTEUR, kind: str = "intrusion",
                     severity: str = "critical") -> str:
    occ = AlertOccurrence(site=site, source=f"src-{uuid.uuid4().hex[:8]}", source_type="sensor",
                          kind=kind, severity=severity, title=f"{kind} at {site}", at=T0)
    async with node.store.transaction() as conn:
        alert, opened = await upsert_alert(conn, occ)
    assert opened
    return str(alert.id)


async def add_events(node: Node, rows: list[tuple[str, str, str, str, datetime]]) -> None:
    """(site, sensor, kind, state, ts) rows, inserted as the ingest writer would."""
    async with node.store.connection() as conn:
        await conn.executemany(
            "INSERT INTO events (dedup_key, site, sensor, kind, state, zone, ts, received_at, "
            "data) VALUES ($1, $2, $3, $4, $5, 'z', $6, $6, $7)",
            [(uuid.uuid4().hex, site, sensor, kind, state, ts, {"n": i})
             for i, (site, sensor, kind, state, ts) in enumerate(rows)])


# The notifier whose dead letters the notifier routes act on (a resend needs it configured);
# its receiver is a closed port: what it is sent becomes a dead letter at once.
NOTIFIERS = [{"type": "webhook", "name": "csu", "url": "http://127.0.0.1:9/hook",
              "secret": "role-test-secret-0123456789", "max_attempts": 1}]


@pytest.fixture
async def node(fresh_dsn: str) -> AsyncIterator[Node]:
    async with running_node(make_config(fresh_dsn, NO_MQTT, notifiers=NOTIFIERS),
                            with_mqtt=False) as node:
        yield node


@pytest.fixture
async def api(node: Node) -> AsyncIterator[Api]:
    async with _api_for(node) as api:
        yield api


@pytest.fixture(scope="module")
async def shared() -> AsyncIterator[Node]:
    """One node for the tests that only read, or that create the alert they change."""
    async with temporary_database("vigie_api") as dsn, running_node(
        make_config(dsn, NO_MQTT), with_mqtt=False
    ) as node:
        for site in (JM, PASTEUR):
            await open_alert(node, site)
        await add_events(node, [(JM, "porte-hall", "door", "open", T0),
                                (PASTEUR, "centrale", "intrusion", "alarm", T0)])
        async with node.store.connection() as conn:
            await conn.execute("UPDATE sensors SET last_state = 'closed', last_event_at = $1, "
                               "online = true, battery = 80", T0)
        yield node


@pytest.fixture(scope="module")
async def shared_api(shared: Node) -> AsyncIterator[Api]:
    async with _api_for(shared) as api:
        yield api


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# --- the OpenAPI document ------------------------------------------------------------------


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


async def test_openapi_document_is_well_formed(shared_api: Api) -> None:
    doc = shared_api.spec.doc
    assert re.fullmatch(r"3\.0\.\d+", doc["openapi"])
    assert doc["info"]["title"] and doc["info"]["version"]
    for ref in set(_refs(doc)):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], f"dangling {ref}"
    for name, schema in shared_api.spec.components["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise AssertionError(f"components.schemas.{name}: {exc.message}") from None
    seen = set()
    for method, path, op in shared_api.spec.operations():
        seen.add((method, path))
        where = f"{method} {path}"
        assert op.get("operationId") and op.get("responses"), where
        assert all(r.get("description") for r in op["responses"].values()), where
        assert any(code.startswith("2") for code in op["responses"]), where
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"\{([^}]+)\}", path)), where
        if op.get("security"):
            assert {"401", "403"} <= set(op["responses"]), where
    table = {(ep.method, ep.path): ep for ep in endpoints()}
    assert seen == set(table), "the document and the endpoint table disagree"
    for (method, path), ep in table.items():
        roles = doc["paths"][path][method.lower()]["x-vigie-roles"]
        assert roles == (sorted(ep.roles) if ep.roles is not None else ["public"])


# --- roles ---------------------------------------------------------------------------------


def _example_body(spec: OpenApi, op: dict[str, Any]) -> dict[str, Any] | None:
    """A minimal valid body for the operation's declared request schema."""
    if "requestBody" not in op:
        return None
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec.doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    if "example" in schema:  # a body that must name real things (a site, a camera)
        example: dict[str, Any] = schema["example"]
        return example
    body: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        assert prop.get("type") == "string", f"teach _example_body to fill {ref}.{name}"
        body[name] = "checked by the role test"
    return body


async def _fill_path(node: Node, path: str) -> str:
    """A real id for every path parameter: a new open alert for each alert id."""
    camera_route = "{camera}" in path or path.endswith("/cameras/reference")

    async def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "site":
            return JM if camera_route else PASTEUR
        if name == "camera":
            return await _camera_with_snapshot(node)
        if name == "snapshot_id":
            return await _kept_snapshot(node)
        if name == "alert_id":
            alert = await open_alert(node)
            if path.endswith("/unack"):  # only an acknowledged alert can be un-acknowledged
                await node.alerts.acknowledge(uuid.UUID(alert), "role test", None)
            return alert
        if name == "silence_id":
            return await _camera_silence(node)
        if name == "letter":
            return await _notifier_dead_letter(node)
        raise AssertionError(f"teach test_api how to fill the path parameter {{{name}}}")

    out, last = "", 0
    for match in re.finditer(r"\{([^}]+)\}", path):
        out += path[last:match.start()] + await value(match)
        last = match.end()
    return out + path[last:]


async def _camera_silence(node: Node) -> str:
    """A new silence any role that may end one may end: on the cameras of the test site."""
    silence, _ = await node.alerts.create_silence(
        Matchers(site=JM, source_type="camera"), datetime.now(UTC),
        datetime.now(UTC) + timedelta(hours=1), "role test", "test")
    return str(silence.id)


async def _notifier_dead_letter(node: Node) -> str:
    """A new dead letter of a notifier, on the test site."""
    async with node.store.connection() as conn:
        await notify_q.add_dead_letter(conn, "csu", 1, "alert.opened", None, JM, 3, "HTTP 500",
                                       {"type": "alert.opened"})
        return str(await conn.fetchval("SELECT max(id) FROM notify_dead_letters"))


async def _camera_with_snapshot(node: Node) -> str:
    """The test site's camera, with a latest frame on disk (the stream itself is offline)."""
    path = node.config.node.data_dir / "snapshots" / JM / "entree.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(JPEG)
    return "entree"


async def _kept_snapshot(node: Node) -> str:
    relative = f"snapshots/{JM}/kept-{uuid.uuid4().hex[:6]}.jpg"
    (node.config.node.data_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    (node.config.node.data_dir / relative).write_bytes(JPEG)
    async with node.store.connection() as conn:
        snapshot_id = await keep_snapshot(conn, JM, "entree", datetime.now(UTC), relative,
                                          len(JPEG))
    return str(snapshot_id)


# The smallest valid JPEG is not needed: the API serves the bytes as they are.
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16 + b"\xff\xd9"


async def _bad_credentials(node: Node) -> dict[str, str]:
    """Authorization headers that must not get past a protected route."""
    revoked = await make_token(node, "admin", name="revoked-admin")
    async with node.store.connection() as conn:
        await revoke_token(conn, "revoked-admin")
    expired = await make_token(node, "admin", expires_at=datetime.now(UTC) - timedelta(hours=1))
    return {
        "no token": "",
        "not bearer": f"Basic {base64.b64encode(b'admin:admin').decode()}",
        "empty bearer": "Bearer ",
        "unknown token": f"Bearer vigie_{uuid.uuid4().hex}",
        "revoked token": f"Bearer {revoked}",
        "expired token": f"Bearer {expired}",
    }


async def test_every_route_answers_each_caller_as_its_roles_say(node: Node, api: Api) -> None:
    roles_of = {(ep.method, ep.path): ep.roles for ep in endpoints()}
    tokens = {role: await make_token(node, role) for role in ROLES}
    bad = await _bad_credentials(node)
    problems: list[str] = []
    for i, (method, path, op) in enumerate(api.spec.operations()):
        roles = roles_of[(method, path)]
        ok = {int(c) for c in op["responses"] if c.startswith("2")}
        body = _example_body(api.spec, op)
        for role, value in tokens.items():
            reply = await api.call(method, await _fill_path(node, path), value, json=body)
            expected = ok if roles is None or role in roles else {403}
            if reply.status not in expected:
                problems.append(f"{method} {path} as {role}: {reply.status}, "
                                f"expected {sorted(expected)}: {reply.body!r:.200}")
        # Failed authentications are throttled per address: give each route its own.
        connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{10 + i}", 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            for label, header in bad.items():
                url = await _fill_path(node, path)
                reply = await api.call(method, url, auth=header, session=session, json=body)
                expected = ok if roles is None else {401}
                if reply.status not in expected:
                    problems.append(f"{method} {path} with {label}: {reply.status}, "
                                    f"expected {sorted(expected)}")
                elif reply.status == 401 and reply.headers.get("WWW-Authenticate") != "Bearer":
                    problems.append(f"{method} {path} with {label}: 401 without "
                                    "WWW-Authenticate: Bearer")
    assert not problems, "\n".join(problems)


async def test_failed_authentications_are_throttled_per_address(node: Node, api: Api) -> None:
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    async with aiohttp.ClientSession(connector=connector) as attacker:
        statuses = [(await api.call("GET", "/api/v1/alerts", f"vigie_guess{i}",
                                    session=attacker)).status for i in range(25)]
    assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}
    # Another address is not affected.
    assert (await api.call("GET", "/api/v1/alerts")).status == 200


# --- site scoping --------------------------------------------------------------------------


async def test_a_token_limited_to_one_site_sees_only_that_site(node: Node, api: Api) -> None:
    mine, theirs = await open_alert(node, PASTEUR), await open_alert(node, JM)
    await add_events(node, [(PASTEUR, "centrale", "intrusion", "alarm", T0),
                            (JM, "porte-hall", "door", "open", T0)])
    viewer = await make_token(node, "viewer", [PASTEUR])
    operator = await make_token(node, "operator", [PASTEUR])

    sites = await api.get("/api/v1/sites", token=viewer)
    assert [s["id"] for s in sites["items"]] == [PASTEUR]
    assert (await api.get(f"/api/v1/sites/{PASTEUR}", token=viewer))["id"] == PASTEUR
    for path in ("/api/v1/sensors", "/api/v1/events", "/api/v1/alerts"):
        items = (await api.get(path, token=viewer))["items"]
        assert items and {i["site"] for i in items} == {PASTEUR}, path
        reply = await api.call("GET", f"{path}?site={JM}", viewer)
        assert reply.status == 404, path
    assert (await api.call("GET", f"/api/v1/sites/{JM}", viewer)).status == 404
    assert (await api.call("GET", f"/api/v1/alerts/{theirs}", viewer)).status == 404
    for action in ("ack", "resolve", "comments"):
        reply = await api.call("POST", f"/api/v1/alerts/{theirs}/{action}", operator,
                               json={"comment": "not mine"})
        assert reply.status == 404, action
    untouched = await api.get(f"/api/v1/alerts/{theirs}")  # as admin
    assert untouched["state"] == "open"
    assert [h["action"] for h in untouched["history"]] == ["opened"]
    reply = await api.call("POST", f"/api/v1/alerts/{mine}/ack", operator, json={})
    assert reply.status == 200 and reply.body["state"] == "acknowledged"


# --- bad queries ---------------------------------------------------------------------------

_CURSOR_AT = "2026-11-28T08:00:00+00:00"
_ID = "7d0c6a4e-2b1f-4c55-9a37-4f2c1e0b9d11"
_JUNK = base64.urlsafe_b64encode(bytes(range(200, 230))).decode()

BAD_QUERIES = {
    # unknown parameters, on every list
    "alerts-unknown": "/api/v1/alerts?bogus=1", "events-unknown": "/api/v1/events?bogus=1",
    "sites-unknown": "/api/v1/sites?bogus=1", "sensors-unknown": "/api/v1/sensors?status=ok",
    "dead-letters-unknown": "/api/v1/dead-letters?site=x",
    # enums
    "state": "/api/v1/alerts?state=closed", "state-list": "/api/v1/alerts?state=open,closed",
    "severity": "/api/v1/alerts?severity=high", "severity-case": "/api/v1/alerts?severity=CRITICAL",
    "kind": "/api/v1/events?kind=fire",
    # limits
    **{f"{what}-limit={limit}": f"/api/v1/{what}?limit={limit}"
       for what in ("alerts", "events", "dead-letters")
       for limit in ("0", "501", "abc", "-1", "1.5", "1e3")},
    # dates
    "since-word": "/api/v1/events?since=yesterday",
    "since-naive": "/api/v1/events?since=2026-11-28T08:00:00",
    "since-date-only": "/api/v1/events?since=2026-11-28",
    "until-month-13": "/api/v1/events?until=2026-13-01T00:00:00Z",
    # cursors
    "alerts-cursor-text": "/api/v1/alerts?cursor=not-a-cursor!",
    "events-cursor-text": "/api/v1/events?cursor=not-a-cursor!",
    "alerts-cursor-b64-junk": f"/api/v1/alerts?cursor={_JUNK}",
    "events-cursor-b64-junk": f"/api/v1/events?cursor={_JUNK}",
    "alerts-cursor-no-time": f"/api/v1/alerts?cursor={b64('garbage|' + _ID)}",
    "alerts-cursor-no-uuid": f"/api/v1/alerts?cursor={b64(_CURSOR_AT + '|not-a-uuid')}",
    "alerts-cursor-naive": f"/api/v1/alerts?cursor={b64('2026-11-28T08:00:00|' + _ID)}",
    "alerts-cursor-no-key": f"/api/v1/alerts?cursor={b64(_CURSOR_AT)}",
    "events-cursor-no-int": f"/api/v1/events?cursor={b64(_CURSOR_AT + '|abc')}",
    "events-cursor-uuid": f"/api/v1/events?cursor={b64(_CURSOR_AT + '|' + _ID)}",
    "alerts-cursor-emoji": "/api/v1/alerts?cursor=%F0%9F%92%A5",
    # repeated parameters
    "repeated-limit": "/api/v1/alerts?limit=10&limit=20",
    "repeated-state": "/api/v1/alerts?state=open&state=resolved",
    "repeated-site": f"/api/v1/events?site={JM}&site={PASTEUR}",
    "repeated-same": f"/api/v1/sensors?site={JM}&site={JM}",
    # a repeated parameter whose first value is empty is still repeated
    "repeated-first-empty": "/api/v1/alerts?severity=&severity=critical",
    # values PostgreSQL cannot take are bad input, not a 500
    "alerts-site-nul": "/api/v1/alerts?site=%00",
    "events-site-nul": "/api/v1/events?site=%00",
    "events-sensor-nul": "/api/v1/events?sensor=a%00b",
    "sensors-site-nul": "/api/v1/sensors?site=%00",
    "events-cursor-id-past-int64": f"/api/v1/events?cursor={b64(_CURSOR_AT + '|' + '9' * 20)}",
    "alerts-cursor-before-year-1":
        f"/api/v1/alerts?cursor={b64('0001-01-01T00:00:00+14:00|' + _ID)}",
    "since-before-year-1": "/api/v1/events?since=0001-01-01T00:00:00%2B14:00",
    "until-after-year-9999": "/api/v1/events?until=9999-12-31T23:59:59-14:00",
}


@pytest.mark.parametrize("path", [pytest.param(p, id=k) for k, p in BAD_QUERIES.items()])
async def test_bad_query_is_a_400_with_the_error_shape(shared_api: Api, path: str) -> None:
    reply = await shared_api.call("GET", path)
    assert reply.status == 400, (reply.status, reply.body)
    assert reply.body["error"]["code"] == "invalid_query"


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/v1/alerts/not-a-uuid"), ("POST", "/api/v1/alerts/not-a-uuid/ack"),
    ("POST", "/api/v1/alerts/12345/comments"), ("GET", f"/api/v1/alerts/{_ID}"),
    ("POST", f"/api/v1/alerts/{_ID}/resolve"), ("GET", "/api/v1/sites/nowhere"),
    ("GET", "/api/v1/sites/%00"),
])
async def test_unknown_or_malformed_id_is_a_404(shared_api: Api, method: str, path: str) -> None:
    reply = await shared_api.call(method, path, json={})
    assert reply.status == 404, (reply.status, reply.body)
    assert reply.body["error"]["code"] == "not_found"


# --- bad bodies ----------------------------------------------------------------------------


async def _chunks(data: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


BAD_BODIES: dict[str, dict[str, Any]] = {
    "not json": {"data": b"{not json"},
    "truncated json": {"data": b'{"comment": "x"'},
    "json array": {"json": [{"comment": "x"}]},
    "json string": {"json": "x"},
    "unknown field": {"json": {"comment": "x", "assignee": "bob"}},
    "comment not a string": {"json": {"comment": 42}},
    "comment a list": {"json": {"comment": ["x"]}},
    "comment too long": {"json": {"comment": "x" * 4001}},
    "invalid utf-8": {"data": b'{"comment": "\xff\xfe"}'},
    "lone surrogate": {"data": b'{"comment": "\\ud800"}'},
    "huge body": {"json": {"comment": "x" * 70_000}},
    "huge body, chunked": {"chunked": b'{"comment": "x"}' + b" " * 70_000},
    "beyond the server's limit": {"data": b"x" * 300_000},
    # PostgreSQL text cannot hold NUL: refuse it as bad input, not fail as 500
    "comment with NUL": {"json": {"comment": "a\x00b"}},
    # a body past the limit is refused whatever it holds, blanks included
    "huge blank body, chunked": {"chunked": b" " * 70_000},
}
REQUIRED_COMMENT_BODIES = {
    "no body": {},
    "empty object": {"json": {}},
    "null comment": {"json": {"comment": None}},
    "empty comment": {"json": {"comment": ""}},
    "blank comment": {"json": {"comment": " \n\t "}},
}


def _body_cases() -> list[Any]:
    cases = [pytest.param(action, name, id=f"{action}-{name}")
             for action in ("ack", "resolve", "comments") for name in BAD_BODIES]
    return cases + [pytest.param("comments", name, id=f"comments-{name}")
                    for name in REQUIRED_COMMENT_BODIES]


@pytest.mark.parametrize(("action", "case"), _body_cases())
async def test_bad_body_is_refused_and_leaves_the_alert_alone(
    shared: Node, shared_api: Api, action: str, case: str
) -> None:
    alert = await open_alert(shared)
    kwargs = dict(BAD_BODIES.get(case) or REQUIRED_COMMENT_BODIES[case])
    if "chunked" in kwargs:  # no Content-Length: the server only learns the size by reading
        kwargs["data"] = _chunks(kwargs.pop("chunked"))
    reply = await shared_api.call("POST", f"/api/v1/alerts/{alert}/{action}", **kwargs)
    assert 400 <= reply.status < 500, (reply.status, reply.body)
    after = await shared_api.get(f"/api/v1/alerts/{alert}")
    assert after["state"] == "open" and after["acknowledged_by"] is None
    assert [h["action"] for h in after["history"]] == ["opened"]


async def test_comment_of_4000_characters_is_accepted(shared: Node, shared_api: Api) -> None:
    alert = await open_alert(shared)
    text = "é" * 4000
    reply = await shared_api.call("POST", f"/api/v1/alerts/{alert}/comments",
                                  json={"comment": text})
    assert reply.status == 201
    history = (await shared_api.get(f"/api/v1/alerts/{alert}"))["history"]
    assert [(h["action"], h["comment"]) for h in history] == [("opened", None),
                                                                ("commented", text)]


# --- pagination and filters ----------------------------------------------------------------


@pytest.fixture
async def alerts250(node: Node) -> list[dict[str, Any]]:
    """250 alerts on both sites, every state and severity; pairs share an opened_at so the
    order has to break ties on the id."""
    async with node.store.connection() as conn:
        rows = await conn.fetch(
            """INSERT INTO alerts (id, fingerprint, site, source, source_type, kind, severity,
                   state, title, opened_at, last_seen_at, acknowledged_by, acknowledged_at)
               SELECT gen_random_uuid(), site || '/src-' || i || '/intrusion', site,
                      'src-' || i, 'sensor', 'intrusion',
                      (ARRAY['critical','major','minor','info'])[1 + i % 4],
                      (ARRAY['open','acknowledged','resolved'])[1 + i % 3],
                      'alert ' || i, $1::timestamptz - (i / 2) * interval '1 minute', $1,
                      CASE WHEN i % 3 = 1 THEN 'op' END, CASE WHEN i % 3 = 1 THEN $1 END
               FROM (SELECT i, (ARRAY[$2, $3])[1 + i % 2] AS site
                     FROM generate_series(0, 249) i) s
               RETURNING id, site, severity, state, opened_at""", T0, JM, PASTEUR)
    return sorted((dict(r) for r in rows), key=lambda r: (r["opened_at"], r["id"]),
                  reverse=True)


async def test_cursor_walk_sees_every_alert_once_newest_first(
    api: Api, alerts250: list[dict[str, Any]]
) -> None:
    items, sizes = await api.walk("/api/v1/alerts")
    assert sizes == [100, 100, 50]
    assert [i["id"] for i in items] == [str(r["id"]) for r in alerts250]
    assert len({i["id"] for i in items}) == 250


@pytest.mark.parametrize("query", [
    "state=open", "state=open,acknowledged", "state=resolved", "severity=critical",
    f"site={PASTEUR}", f"state=acknowledged&severity=major&site={PASTEUR}",
    "state=open,acknowledged,resolved&severity=info",
])
async def test_filters_hold_across_pages(
    api: Api, alerts250: list[dict[str, Any]], query: str
) -> None:
    wanted = dict(part.split("=") for part in query.split("&"))

    def keep(row: dict[str, Any]) -> bool:
        return all(row[k] in v.split(",") for k, v in wanted.items())

    expected = [str(r["id"]) for r in alerts250 if keep(r)]
    assert expected, "the data set has no alert for this filter"
    items, sizes = await api.walk(f"/api/v1/alerts?{query}&limit=17")
    assert [i["id"] for i in items] == expected
    assert all(size == 17 for size in sizes[:-1]) and 1 <= sizes[-1] <= 17


async def test_events_since_until_kind_and_pages(node: Node, api: Api) -> None:
    sensors = [(JM, "porte-hall", "door"), (JM, "centrale-a", "intrusion"),
               (PASTEUR, "porte-gymnase", "door"), (PASTEUR, "centrale", "intrusion")]
    await add_events(node, [(*sensors[i % 4], "alarm", T0 + timedelta(minutes=i // 2))
                            for i in range(60)])
    async with node.store.connection() as conn:
        rows = [dict(r) for r in await conn.fetch("SELECT id, site, sensor, kind, ts FROM events")]
    rows.sort(key=lambda r: (r["ts"], r["id"]), reverse=True)

    def expect(keep: Any) -> list[int]:
        return [r["id"] for r in rows if keep(r)]

    since, until = T0 + timedelta(minutes=10), T0 + timedelta(minutes=20, seconds=30)
    enc = {"since": since.isoformat().replace("+00:00", "Z"),
           "until": until.isoformat().replace("+00:00", "%2B00:00")}
    cases = {
        "": expect(lambda r: True),
        f"since={enc['since']}": expect(lambda r: r["ts"] >= since),
        f"until={enc['until']}": expect(lambda r: r["ts"] < until),
        f"since={enc['since']}&until={enc['until']}&kind=door":
            expect(lambda r: since <= r["ts"] < until and r["kind"] == "door"),
        "kind=intrusion": expect(lambda r: r["kind"] == "intrusion"),
        f"site={PASTEUR}&sensor=centrale":
            expect(lambda r: (r["site"], r["sensor"]) == (PASTEUR, "centrale")),
        "kind=smoke": [],
    }
    for query, expected in cases.items():
        items, _ = await api.walk(f"/api/v1/events?limit=7&{query}")
        assert [i["id"] for i in items] == expected, query
    page = await api.get(f"/api/v1/events?since={enc['since']}&limit=500")
    assert page["next_cursor"] is None and len(page["items"]) == len(cases[f"since={enc['since']}"])


# --- operations endpoints and the shape of every answer ------------------------------------

SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                    "Cache-Control": "no-store"}


async def test_health_readiness_metrics_and_security_headers(shared_api: Api) -> None:
    health = await shared_api.call("GET", "/healthz", auth="")
    assert health.status == 200 and health.body["status"] == "ok"
    ready = await shared_api.call("GET", "/readyz", auth="")
    assert ready.status == 200 and ready.body["status"] == "ready"
    assert ready.body["checks"]["database"] == "ok"
    assert all(v == "ok" for v in ready.body["checks"].values())
    metrics = await shared_api.call("GET", "/metrics", auth="")
    assert metrics.status == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert "vigie_build_info" in metrics.body and "# TYPE" in metrics.body
    replies = [health, ready, metrics,
               await shared_api.call("GET", "/api/v1/alerts"),
               await shared_api.call("GET", "/api/v1/alerts", auth=""),
               await shared_api.call("GET", "/api/v1/nowhere")]
    for reply in replies:
        for name, value in SECURITY_HEADERS.items():
            assert reply.headers.get(name) == value, (reply.status, name)


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/nowhere", 404), ("GET", "/api/v1/nowhere", 404), ("GET", "/api/v2/alerts", 404),
    ("DELETE", "/api/v1/alerts", 405), ("POST", "/healthz", 405),
    ("PUT", f"/api/v1/alerts/{_ID}/ack", 405),
])
async def test_unknown_route_answers_the_error_shape(
    shared_api: Api, method: str, path: str, status: int
) -> None:
    reply = await shared_api.call(method, path)
    assert reply.status == status and reply.body["error"]["code"]


async def test_every_list_and_view_matches_its_schema_with_data(
    shared: Node, shared_api: Api
) -> None:
    """Lists with items in them, so the item schemas are exercised, not only the envelope."""
    alert = await open_alert(shared, JM)
    await shared_api.call("POST", f"/api/v1/alerts/{alert}/ack", json={"comment": "vu"})
    for path in ("/api/v1/sites", "/api/v1/sensors", "/api/v1/events", "/api/v1/alerts",
                 "/api/v1/alerts?state=acknowledged"):
        assert (await shared_api.get(path))["items"], path
    site = await shared_api.get(f"/api/v1/sites/{JM}")
    assert site["alerts_open"], "the site summary counts its open alerts"
    view = await shared_api.get(f"/api/v1/alerts/{alert}")
    assert [(h["action"], h["comment"]) for h in view["history"]] == [
        ("opened", None), ("acknowledged", "vu")]


async def test_request_metrics_count_the_status_that_was_sent(node: Node, api: Api) -> None:
    alert = await open_alert(node)
    assert (await api.call("GET", f"/api/v1/alerts/{uuid.uuid4()}")).status == 404
    assert (await api.call("POST", f"/api/v1/alerts/{alert}/resolve", json={})).status == 200
    assert (await api.call("POST", f"/api/v1/alerts/{alert}/ack", json={})).status == 409
    text = (await api.call("GET", "/metrics", auth="")).body
    lines = [line for line in text.splitlines() if line.startswith("vigie_http_requests_total")]
    assert any('route="/api/v1/alerts/{alert_id}"' in line and 'status="404"' in line
               for line in lines), lines
    assert any('route="/api/v1/alerts/{alert_id}/ack"' in line and 'status="409"' in line
               for line in lines), lines
    assert not [line for line in lines if 'status="500"' in line], lines


def test_the_throttle_allows_the_configured_failures() -> None:
    auth = Authenticator(cast(Store, None), max_failures=3)  # no token lookups here
    for _ in range(3):
        assert not auth.throttled("192.0.2.7")
        auth.failed("192.0.2.7")
    assert auth.throttled("192.0.2.7")
    assert not auth.throttled("192.0.2.8")
