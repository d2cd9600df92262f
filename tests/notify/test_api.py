"""The notifiers' API: an SRE sees how far behind each notifier is and the notifications it
gave up on, pages through them, and dismisses one dealt with by hand; site-limited admins
see only their sites' dead letters; receivers' URLs and secrets never appear."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import eventually
from tests.notify.conftest import SECRET, T0, URL_PASSWORD, Receiver, notifier_config
from tests.test_node_e2e import token
from vigie.alerts import Raise
from vigie.app import Node, running_node
from vigie.store._alerts import AlertOccurrence

JM, PASTEUR = "clg-jean-moulin", "clg-pasteur"


@pytest.fixture
async def node(fresh_dsn: str, receiver: Receiver) -> AsyncIterator[Node]:
    hook_url = receiver.url.replace("http://", f"http://vigie:{URL_PASSWORD}@") + "/hook"
    config = notifier_config(fresh_dsn, {
        "type": "webhook", "name": "csu", "url": hook_url, "secret": SECRET,
        "max_attempts": 1})
    async with running_node(config, with_mqtt=False) as node:
        yield node


async def call(node: Node, method: str, path: str, tok: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.request(
            method, node.api_url + path, headers={"Authorization": f"Bearer {tok}"}) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else None)


async def raise_on(node: Node, site: str, source: str) -> None:
    await node.alerts.raise_now([Raise(AlertOccurrence(
        site=site, source=source, source_type="sensor", kind="intrusion",
        severity="critical", title="intrusion", at=T0))])


async def test_dead_letters_listed_paged_scoped_and_dismissed(
        node: Node, receiver: Receiver) -> None:
    receiver.fail = [500, 500, 500]
    for site, source in ((JM, "a"), (PASTEUR, "b"), (JM, "c")):
        await raise_on(node, site, source)
    admin = await token(node, "admin")

    async def three() -> list[Any]:
        status, body = await call(node, "GET", "/api/v1/notifiers/dead-letters", admin)
        assert status == 200
        return list(body["items"]) if len(body["items"]) == 3 else []

    letters = await eventually(three, timeout=20)
    assert [d["payload"]["alert"]["source"] for d in letters] == ["c", "b", "a"]
    assert all(d["notifier"] == "csu" and d["error"] == "HTTP 500" for d in letters)

    status, body = await call(node, "GET", "/api/v1/notifiers", admin)
    assert status == 200
    [csu] = body["items"]
    assert (csu["name"], csu["type"], csu["dead_letters"], csu["behind"]) == (
        "csu", "webhook", 3, 0)
    text = str(body) + str(letters)
    assert URL_PASSWORD not in text and SECRET not in text and "/hook" not in text

    status, page = await call(node, "GET", "/api/v1/notifiers/dead-letters?limit=2", admin)
    assert status == 200 and len(page["items"]) == 2 and page["next_cursor"]
    status, rest = await call(
        node, "GET", f"/api/v1/notifiers/dead-letters?limit=2&cursor={page['next_cursor']}",
        admin)
    assert [d["id"] for d in page["items"] + rest["items"]] == [d["id"] for d in letters]
    assert rest["next_cursor"] is None

    jm_admin = await token(node, "admin", sites=[JM])
    status, mine = await call(node, "GET", "/api/v1/notifiers/dead-letters", jm_admin)
    assert status == 200 and {d["site"] for d in mine["items"]} == {JM}
    pasteur_letter = next(d["id"] for d in letters if d["site"] == PASTEUR)
    status, _ = await call(node, "DELETE", f"/api/v1/notifiers/dead-letters/{pasteur_letter}",
                           jm_admin)
    assert status == 404, "another site's dead letter is not there for this admin"
    assert (await call(node, "GET", "/api/v1/notifiers", jm_admin))[0] == 403

    status, _ = await call(node, "DELETE", f"/api/v1/notifiers/dead-letters/{pasteur_letter}",
                           admin)
    assert status == 204
    status, body = await call(node, "GET", "/api/v1/notifiers/dead-letters", admin)
    assert [d["id"] for d in body["items"]] == [d["id"] for d in letters
                                                 if d["id"] != pasteur_letter]
    async with node.store.connection() as conn:
        audited = await conn.fetch(
            "SELECT actor, site, outcome FROM audit_log "
            "WHERE action = 'dismiss_notifier_dead_letter' AND target = $1 ORDER BY id",
            f"/api/v1/notifiers/dead-letters/{pasteur_letter}")
    (refused_by, _, refused), (dismissed_by, site, outcome) = (tuple(r) for r in audited)
    assert refused == "404" and refused_by != dismissed_by
    assert (site, outcome) == (PASTEUR, "204")


@pytest.mark.parametrize(("path", "error"), [
    ("/api/v1/notifiers/dead-letters?notifier=nope", 400),
    ("/api/v1/notifiers/dead-letters?limit=0", 400),
    ("/api/v1/notifiers/dead-letters?cursor=abc", 400),
    ("/api/v1/notifiers/dead-letters?cursor=99999999999999999999999", 400),
])
async def test_bad_queries_are_refused(node: Node, path: str, error: int) -> None:
    admin = await token(node, "admin")
    status, body = await call(node, "GET", path, admin)
    assert status == error and body["error"]


@pytest.mark.parametrize("role", ["operator", "technician", "viewer"])
async def test_only_admins_see_notifiers(node: Node, role: str) -> None:
    tok = await token(node, role)
    for method, path in (("GET", "/api/v1/notifiers"), ("GET", "/api/v1/notifiers/dead-letters"),
                         ("DELETE", "/api/v1/notifiers/dead-letters/1")):
        assert (await call(node, method, path, tok))[0] == 403
