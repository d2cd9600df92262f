"""The API's defences on a real node: the audit log (read by admins, append-only in
PostgreSQL), client addresses from trusted proxies only, security headers, CORS, HTTPS,
and site scoping on every camera, snapshot and audit route."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.api.test_api import JM, PASTEUR, Api, _api_for, _kept_snapshot, make_token, open_alert
from tests.conftest import make_config
from tests.security.certs import make_certs
from vigie.app import Node, running_node
from vigie.errors import StoreError
from vigie.store._audit import record

NO_MQTT = "mqtt://127.0.0.1:1"
PROXY = "127.0.0.1"  # the test client connects from here: it plays the reverse proxy


@asynccontextmanager
async def started(dsn: str, **api: Any) -> AsyncIterator[tuple[Node, Api]]:
    config = make_config(dsn, NO_MQTT, api={"listen": "127.0.0.1:0", **api})
    async with running_node(config, with_mqtt=False) as node, _api_for(node) as client:
        yield node, client


@pytest.fixture
async def plain(fresh_dsn: str) -> AsyncIterator[tuple[Node, Api]]:
    async with started(fresh_dsn) as pair:
        yield pair


@pytest.fixture
async def proxied(fresh_dsn: str) -> AsyncIterator[tuple[Node, Api]]:
    async with started(fresh_dsn, trusted_proxies=[f"{PROXY}/32"],
                       cors_origins=["https://csu.example.fr"]) as pair:
        yield pair


async def audit_rows(node: Node, action: str) -> list[dict[str, Any]]:
    async with node.store.connection() as conn:
        rows = await conn.fetch("SELECT * FROM audit_log WHERE action = $1 ORDER BY id", action)
    return [dict(r) for r in rows]


# --- the audit log ---------------------------------------------------------------------


async def test_admins_read_the_audit_log_filtered_and_paginated(plain: tuple[Node, Api]
                                                                ) -> None:
    node, api = plain
    operator = await make_token(node, "operator", name="op-lyon")
    for site in (JM, PASTEUR, PASTEUR):
        alert = await open_alert(node, site)
        reply = await api.call("POST", f"/api/v1/alerts/{alert}/ack", operator, json={})
        assert reply.status == 200
    refused = await api.call("POST", f"/api/v1/alerts/{uuid.uuid4()}/ack", operator, json={})
    assert refused.status == 404
    async with node.store.connection() as conn:
        for i in range(30):
            await record(conn, actor="cli:root", action="token.list", details={"i": i})

    entries, sizes = await api.walk("/api/v1/audit?limit=7")
    assert len(entries) >= 34 and sizes[0] == 7
    stamps = [(e["at"], e["id"]) for e in entries]
    assert stamps == sorted(stamps, reverse=True), "newest first"
    mine = [e for e in entries if e["actor"] == "op-lyon"]
    assert [e["outcome"] for e in mine] == ["404", "200", "200", "200"]
    assert all(e["action"] == "ack_alert" and e["remote"] == "127.0.0.1" for e in mine)
    assert mine[0]["details"] == {"role": "operator"}

    only = (await api.get("/api/v1/audit?actor=op-lyon&limit=500"))["items"]
    assert [e["id"] for e in only] == [e["id"] for e in mine]
    now = datetime.now(UTC)
    window = (f"from={(now - timedelta(minutes=5)).isoformat().replace('+00:00', 'Z')}"
              f"&to={(now + timedelta(minutes=5)).isoformat().replace('+00:00', 'Z')}")
    assert len((await api.get(f"/api/v1/audit?{window}&limit=500"))["items"]) == len(entries)
    future = (now + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert (await api.get(f"/api/v1/audit?from={future}"))["items"] == []


async def test_audit_of_a_scoped_admin_is_limited_to_its_sites(plain: tuple[Node, Api]) -> None:
    node, api = plain
    async with node.store.connection() as conn:
        await record(conn, actor="a", action="x", site=JM)
        await record(conn, actor="b", action="x", site=PASTEUR)
        await record(conn, actor="c", action="token.create")  # global: not a site's
    scoped = await make_token(node, "admin", [PASTEUR])
    items = (await api.get("/api/v1/audit", token=scoped))["items"]
    assert {e["site"] for e in items} == {PASTEUR}
    assert (await api.call("GET", f"/api/v1/audit?site={JM}", scoped)).status == 404


async def test_actions_on_alerts_silences_and_snapshots_are_audited_with_their_site(
    plain: tuple[Node, Api]
) -> None:
    """Their paths name no site; the entry still carries it, so that an admin of that
    site finds them (and an admin of another site does not)."""
    node, api = plain
    alert = await open_alert(node, PASTEUR)
    for action in ("ack", "comments", "unack", "resolve"):
        body = {"comment": f"{action} par l'opérateur"}
        assert (await api.call("POST", f"/api/v1/alerts/{alert}/{action}",
                               json=body)).status in (200, 201)
    silence = await api.call("POST", "/api/v1/silences", json={
        "matchers": {"site": PASTEUR, "source": "centrale"}, "duration": "1h",
        "comment": "maintenance de la centrale"})
    assert silence.status == 201, silence.body
    assert (await api.call("DELETE", f"/api/v1/silences/{silence.body['id']}")).status == 200
    snapshot = await _kept_snapshot(node)  # of JM's camera
    assert (await api.call("GET", f"/api/v1/snapshots/{snapshot}")).status == 200

    async with node.store.connection() as conn:
        rows = await conn.fetch("SELECT action, site FROM audit_log ORDER BY id")
    sites = {r["action"]: r["site"] for r in rows}
    assert {a: sites.get(a) for a in (
        "ack_alert", "comment_alert", "unack_alert", "resolve_alert", "create_silence",
        "end_silence", "get_snapshot")} == {
        "ack_alert": PASTEUR, "comment_alert": PASTEUR, "unack_alert": PASTEUR,
        "resolve_alert": PASTEUR, "create_silence": PASTEUR, "end_silence": PASTEUR,
        "get_snapshot": JM}
    theirs = await make_token(node, "admin", [JM])
    seen = {e["action"] for e in (await api.get("/api/v1/audit?limit=500",
                                                   token=theirs))["items"]}
    assert "get_snapshot" in seen and "ack_alert" not in seen


@pytest.mark.parametrize("query", [
    "from=yesterday", "to=2026-11-28T08:00:00", "limit=0", "limit=501", "cursor=zzz",
    "from=2026-11-28T10:00:00Z&to=2026-11-28T09:00:00Z", "actor=a%00b", "bogus=1",
])
async def test_bad_audit_queries_are_400(plain: tuple[Node, Api], query: str) -> None:
    _, api = plain
    reply = await api.call("GET", f"/api/v1/audit?{query}")
    assert reply.status == 400, reply.body
    assert reply.body["error"]["code"] == "invalid_query"


async def test_the_audit_log_is_append_only(plain: tuple[Node, Api]) -> None:
    node, _ = plain
    async with node.store.connection() as conn:
        await record(conn, actor="someone", action="ack_alert")
    for statement in ("UPDATE audit_log SET actor = 'nobody'", "DELETE FROM audit_log",
                      "TRUNCATE audit_log"):
        with pytest.raises(StoreError, match="append-only"):
            async with node.store.connection() as conn:
                await conn.execute(statement)
    # Sent to a partition directly, the same.
    async with node.store.connection() as conn:
        part = await conn.fetchval(
            "SELECT tableoid::regclass::text FROM audit_log WHERE actor = 'someone'")
    with pytest.raises(StoreError, match="append-only"):
        async with node.store.connection() as conn:
            await conn.execute(f'DELETE FROM "{part}"')
    assert await audit_rows(node, "ack_alert")


async def test_the_application_role_has_no_grant_to_rewrite_the_audit(fresh_dsn: str) -> None:
    """Deployed with an owner role for migrations and vigie_app for the node (README)."""
    admin = await asyncpg.connect(fresh_dsn)
    try:
        await admin.execute("""DO $$ BEGIN CREATE ROLE vigie_app LOGIN;
                               EXCEPTION WHEN duplicate_object THEN NULL; END $$""")
    finally:
        await admin.close()
    config = make_config(fresh_dsn, NO_MQTT)
    async with running_node(config, with_mqtt=False):
        pass  # migrated by the owner, with vigie_app in place
    app_dsn = fresh_dsn.replace("postgres@", "vigie_app@", 1)
    app = await asyncpg.connect(app_dsn)
    try:
        await app.execute("INSERT INTO audit_log (actor, action, outcome) VALUES ('a', 'b', 'ok')")
        assert await app.fetchval("SELECT count(*) FROM audit_log WHERE actor = 'a'") == 1
        for statement in ("UPDATE audit_log SET actor = 'z'", "DELETE FROM audit_log",
                          "TRUNCATE audit_log"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await app.execute(statement)
        # What the node does every day, it may.
        await app.execute("INSERT INTO event_keys VALUES ('k', now())")
        await app.execute("DELETE FROM event_keys WHERE dedup_key = 'k'")
    finally:
        await app.close()


# --- client addresses, headers, CORS ----------------------------------------------------


async def test_forwarded_addresses_are_believed_from_trusted_proxies_only(
    plain: tuple[Node, Api], proxied: tuple[Node, Api]
) -> None:
    for (node, api), expected in ((plain, PROXY), (proxied, "203.0.113.9")):
        alert = await open_alert(node)
        reply = await api.call("POST", f"/api/v1/alerts/{alert}/ack", json={},
                               headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.9"})
        assert reply.status == 200
        assert (await audit_rows(node, "ack_alert"))[-1]["remote"] == expected


async def test_a_client_cannot_hide_behind_a_forged_hop(proxied: tuple[Node, Api]) -> None:
    """A client writes its own X-Forwarded-For; the proxy appends the address it saw. Only
    the hops our trusted proxies added are believed: the rightmost untrusted one is it."""
    node, api = proxied
    alert = await open_alert(node)
    forged = "10.0.0.1, 192.0.2.77"  # "10.0.0.1" forged by the client, 192.0.2.77 by the proxy
    await api.call("POST", f"/api/v1/alerts/{alert}/ack", json={},
                   headers={"X-Forwarded-For": forged})
    assert (await audit_rows(node, "ack_alert"))[-1]["remote"] == "192.0.2.77"


async def test_the_throttle_counts_the_forwarded_client(proxied: tuple[Node, Api]) -> None:
    _, api = proxied
    attacker = {"X-Forwarded-For": "198.51.100.66"}
    statuses = [(await api.call("GET", "/api/v1/alerts", f"vigie_guess{i}",
                                headers=attacker)).status for i in range(22)]
    assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}
    # Another client behind the same proxy is not affected, nor the proxy itself.
    other = await api.call("GET", "/api/v1/alerts", "vigie_wrong",
                           headers={"X-Forwarded-For": "198.51.100.67"})
    assert other.status == 401
    assert (await api.call("GET", "/api/v1/alerts")).status == 200


async def test_security_headers(plain: tuple[Node, Api], proxied: tuple[Node, Api]) -> None:
    _, api = plain
    for path, auth in (("/api/v1/alerts", None), ("/healthz", ""), ("/api/v1/nowhere", None),
                       ("/api/v1/alerts", "Bearer nope")):
        reply = await api.call("GET", path, auth=auth)
        headers = reply.headers
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["X-Frame-Options"] == "DENY", path
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path
        assert headers["Referrer-Policy"] == "no-referrer", path
        assert headers["Cache-Control"] == "no-store", path
        assert headers["Server"] == "vigie", path
        # Plain HTTP, not behind a trusted proxy: HSTS would mean nothing.
        assert "Strict-Transport-Security" not in headers, path
    https = {"X-Forwarded-Proto": "https"}
    assert "Strict-Transport-Security" not in (
        await api.call("GET", "/healthz", auth="", headers=https)).headers
    _, behind = proxied
    reply = await behind.call("GET", "/healthz", auth="", headers=https)
    assert reply.headers["Strict-Transport-Security"].startswith("max-age=31536000")


async def test_cors_is_off_unless_configured(plain: tuple[Node, Api],
                                             proxied: tuple[Node, Api]) -> None:
    origin = "https://csu.example.fr"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}
    _, api = plain
    reply = await api.call("GET", "/api/v1/alerts", headers={"Origin": origin})
    assert reply.status == 200 and "Access-Control-Allow-Origin" not in reply.headers
    async with api.session.options(api.base + "/api/v1/alerts", headers=preflight) as r:
        assert "Access-Control-Allow-Origin" not in r.headers
    _, api = proxied
    async with api.session.options(api.base + "/api/v1/alerts", headers=preflight) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == origin
        assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    reply = await api.call("GET", "/api/v1/alerts", headers={"Origin": origin})
    assert reply.headers["Access-Control-Allow-Origin"] == origin
    evil = await api.call("GET", "/api/v1/alerts", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in evil.headers


async def test_the_api_over_https(fresh_dsn: str, tmp_path: Any) -> None:
    certs = make_certs(tmp_path / "certs")
    config = make_config(fresh_dsn, NO_MQTT, api={
        "listen": "127.0.0.1:0", "tls_cert": str(certs.server_cert),
        "tls_key": str(certs.server_key)})
    async with running_node(config, with_mqtt=False) as node:
        assert node.api_url.startswith("https://127.0.0.1:")
        trusting = ssl.create_default_context(cafile=str(certs.ca))
        async with aiohttp.ClientSession() as session:
            async with session.get(node.api_url + "/healthz", ssl=trusting) as r:
                assert r.status == 200
                assert r.headers["Strict-Transport-Security"].startswith("max-age=")
            # A client that does not trust the certificate's CA does not get through.
            distrusting = ssl.create_default_context(cafile=str(certs.other_ca))
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(node.api_url + "/healthz", ssl=distrusting):
                    pass
            # Nor does plain HTTP on the HTTPS port.
            with pytest.raises(aiohttp.ClientError):
                async with session.get(node.api_url.replace("https", "http") + "/healthz"):
                    pass


# --- site scoping of the camera, snapshot and audit routes ------------------------------


async def test_a_scoped_token_sees_no_camera_or_image_of_another_site(
    plain: tuple[Node, Api]
) -> None:
    node, api = plain
    snapshot = await _kept_snapshot(node)  # of JM's camera
    latest = node.config.node.data_dir / "snapshots" / JM / "entree.jpg"
    latest.write_bytes(b"\xff\xd8\xff\xd9")
    mine = {role: await make_token(node, role, [PASTEUR]) for role in
            ("admin", "operator", "technician", "viewer")}
    theirs = await make_token(node, "technician", [JM])
    camera = f"/api/v1/cameras/{JM}/entree"
    for role, token in mine.items():
        assert (await api.get("/api/v1/cameras", token=token))["items"] == [], role
        for path in (camera, f"{camera}/history", f"{camera}/snapshot",
                     f"/api/v1/snapshots/{snapshot}", f"/api/v1/cameras?site={JM}"):
            reply = await api.call("GET", path, token)
            assert reply.status == 404, (role, path, reply.status)
    reply = await api.call("POST", f"{camera}/reference", mine["technician"])
    assert reply.status == 404
    # The same calls with a token of that site: the objects exist.
    assert (await api.call("GET", f"{camera}/snapshot", theirs)).status == 200
    assert (await api.call("GET", f"/api/v1/snapshots/{snapshot}", theirs)).status == 200
    assert (await api.call("POST", f"{camera}/reference", theirs)).status == 202
    # Rejected MQTT messages belong to no site: for admins of every site only.
    assert (await api.call("GET", "/api/v1/dead-letters", mine["admin"])).status == 403
    assert (await api.call("GET", "/api/v1/dead-letters")).status == 200
    # Every image view is audited, refused ones too.
    views = [v["outcome"] for v in await audit_rows(node, "camera_snapshot")]
    assert sorted(views) == ["200"] + ["404"] * 4
