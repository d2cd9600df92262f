"""The notifiers' API: an SRE sees how far behind each notifier is and the notifications it
gave up on, pages through them, sends them again once the receiver is mended, and dismisses
one dealt with by hand; site-limited admins see and send only their sites' dead letters;
receivers' URLs and secrets never appear."""

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
from vigie.store import _notify as notify_q
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
                         ("DELETE", "/api/v1/notifiers/dead-letters/1"),
                         ("POST", "/api/v1/notifiers/dead-letters/1/retry"),
                         ("POST", "/api/v1/notifiers/dead-letters/retry")):
        assert (await call(node, method, path, tok))[0] == 403


# --- sending dead letters again ----------------------------------------------------------


async def send(node: Node, path: str, tok: str, **kwargs: Any) -> tuple[int, Any]:
    """A POST with a body (`json=` or raw `data=`)."""
    async with aiohttp.ClientSession() as http, http.post(
            node.api_url + path, headers={"Authorization": f"Bearer {tok}"}, **kwargs) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else None)


async def dead_letters(node: Node, tok: str) -> list[Any]:
    status, body = await call(node, "GET", "/api/v1/notifiers/dead-letters", tok)
    assert status == 200
    return list(body["items"])


async def letters_of(node: Node, tok: str, n: int) -> list[Any]:
    """The dead letters once there are `n` of them."""
    async def found() -> tuple[list[Any]] | None:
        items = await dead_letters(node, tok)
        return (items,) if len(items) == n else None

    [items] = await eventually(found, timeout=20)
    return items


async def audited(node: Node, action: str) -> list[tuple[Any, ...]]:
    async with node.store.connection() as conn:
        rows = await conn.fetch("SELECT actor, site, outcome, target, details FROM audit_log "
                                "WHERE action = $1 ORDER BY id", action)
    return [tuple(r) for r in rows]


async def test_a_dead_letter_is_sent_again_once_the_receiver_is_back(
        node: Node, receiver: Receiver) -> None:
    receiver.fail = [500]
    await raise_on(node, JM, "a")
    admin = await token(node, "admin")
    [letter] = await letters_of(node, admin, 1)

    receiver.fail = [502]  # not mended yet: it stays, attempts added up
    status, queued = await send(node, f"/api/v1/notifiers/dead-letters/{letter['id']}/retry",
                                admin)
    assert status == 202
    assert queued["id"] == letter["id"] and queued["retry_requested_at"] is not None
    assert queued["retry_requested_by"].startswith("admin-")

    async def failed_again() -> list[Any]:
        return [d for d in await dead_letters(node, admin) if d["retries"] == 1]

    [again] = await eventually(failed_again, timeout=20)
    assert (again["attempts"], again["error"], again["retry_requested_at"]) == (
        2, "HTTP 502", None)

    status, _ = await send(node, f"/api/v1/notifiers/dead-letters/{letter['id']}/retry", admin)
    assert status == 202
    await letters_of(node, admin, 0)  # delivered: it leaves the list
    [resent] = [r.json for r in receiver.accepted]
    assert resent["id"] == f"csu:{letter['seq']}" and resent["redelivered"] is True
    rows = await audited(node, "retry_notifier_dead_letter")
    assert [(r[1], r[2], r[3]) for r in rows] == [
        (JM, "202", f"/api/v1/notifiers/dead-letters/{letter['id']}/retry")] * 2
    assert rows[0][4]["notifier"] == "csu"
    text = str(queued) + str(again) + str(rows)
    assert URL_PASSWORD not in text and SECRET not in text and "/hook" not in text


async def test_a_notifiers_dead_letters_are_sent_again_in_order_within_a_site(
        node: Node, receiver: Receiver) -> None:
    receiver.fail = [500, 500, 500]
    for site, source in ((JM, "a"), (PASTEUR, "b"), (JM, "c")):
        await raise_on(node, site, source)
    admin = await token(node, "admin")
    await letters_of(node, admin, 3)
    jm_admin = await token(node, "admin", sites=[JM])

    status, body = await send(node, "/api/v1/notifiers/dead-letters/retry", jm_admin,
                              json={"notifier": "csu"})
    assert status == 202
    assert body == {"notifier": "csu", "site": None, "queued": 2, "remaining": 0}
    [left] = await letters_of(node, admin, 1)
    assert left["site"] == PASTEUR and left["retry_requested_at"] is None
    assert [r.json["alert"]["source"] for r in receiver.accepted] == ["a", "c"]

    status, body = await send(node, "/api/v1/notifiers/dead-letters/retry", admin,
                              json={"notifier": "csu", "site": PASTEUR})
    assert (status, body["queued"], body["remaining"]) == (202, 1, 0)
    await letters_of(node, admin, 0)
    rows = await audited(node, "retry_notifier_dead_letters")
    assert [(r[1], r[2]) for r in rows] == [(None, "202"), (PASTEUR, "202")]


async def test_a_site_limited_admin_cannot_send_another_sites_letter(
        node: Node, receiver: Receiver) -> None:
    receiver.fail = [500]
    await raise_on(node, PASTEUR, "b")
    admin = await token(node, "admin")
    [letter] = await letters_of(node, admin, 1)
    jm_admin = await token(node, "admin", sites=[JM])
    path = f"/api/v1/notifiers/dead-letters/{letter['id']}/retry"
    status, body = await send(node, path, jm_admin)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await send(node, "/api/v1/notifiers/dead-letters/retry", jm_admin,
                              json={"notifier": "csu", "site": PASTEUR})
    assert status == 422 and body["error"]["message"] == "site: no site of that name"
    [still] = await dead_letters(node, admin)
    assert still["retry_requested_at"] is None
    assert [r[2] for r in await audited(node, "retry_notifier_dead_letter")] == ["404"]


async def test_a_letter_of_a_notifier_no_longer_configured_cannot_be_sent(node: Node) -> None:
    async with node.store.connection() as conn:
        await notify_q.add_dead_letter(conn, "ancien", 1, "alert.opened", None, JM, 3,
                                       "HTTP 500", {"type": "alert.opened"})
        letter = await conn.fetchval("SELECT max(id) FROM notify_dead_letters")
    admin = await token(node, "admin")
    status, body = await send(node, f"/api/v1/notifiers/dead-letters/{letter}/retry", admin)
    assert status == 409 and body["error"]["code"] == "notifier_not_configured"
    assert "dismiss" in body["error"]["message"]


async def test_a_method_a_route_lacks_is_405_even_where_an_id_could_stand(
        node: Node) -> None:
    admin = await token(node, "admin")
    status, body = await call(node, "DELETE", "/api/v1/notifiers/dead-letters/retry", admin)
    assert (status, body["error"]["code"]) == (405, "method_not_allowed")


@pytest.mark.parametrize(("path", "kwargs", "status", "message"), [
    # An id that is not a number is no route at all (the path is no dead letter's).
    ("/api/v1/notifiers/dead-letters/abc/retry", {}, 404, "Not Found"),
    ("/api/v1/notifiers/dead-letters/0/retry", {}, 404, "letter: must be at least 1"),
    ("/api/v1/notifiers/dead-letters/424242/retry", {}, 404, "dead letter 424242 not found"),
    ("/api/v1/notifiers/dead-letters/retry", {}, 400, "expected a JSON object body"),
    ("/api/v1/notifiers/dead-letters/retry", {"data": b"{notifier"}, 400,
     "body is not valid JSON"),
    ("/api/v1/notifiers/dead-letters/retry", {"json": ["csu"]}, 422, "expected a JSON object"),
    ("/api/v1/notifiers/dead-letters/retry", {"json": {}}, 422, "notifier: required"),
    ("/api/v1/notifiers/dead-letters/retry", {"json": {"notifier": 7}}, 422,
     "notifier: expected a string"),
    ("/api/v1/notifiers/dead-letters/retry", {"json": {"notifier": "nope"}}, 422,
     "notifier: no notifier of that name"),
    ("/api/v1/notifiers/dead-letters/retry", {"json": {"notifier": "csu", "limit": 5}}, 422,
     "unknown field(s): limit"),
    ("/api/v1/notifiers/dead-letters/retry", {"json": {"notifier": "csu", "site": "nope"}},
     422, "site: no site of that name"),
])
async def test_bad_retry_requests_are_refused_clearly(
        node: Node, path: str, kwargs: dict[str, Any], status: int, message: str) -> None:
    admin = await token(node, "admin")
    got, body = await send(node, path, admin, **kwargs)
    assert (got, body["error"]["message"]) == (status, message)
