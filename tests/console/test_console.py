"""The operator console in a real headless Chromium, against a real node (PostgreSQL,
Mosquitto, cameras on the RTSP test server): log in with a token, see an alert raised by an
MQTT event appear live, acknowledge it, see its state change; the camera wall; a laptop
screen; and that the console weakens nothing (CSP, the API still wants its token).
Screenshots are saved under var/artifacts/ (or $VIGIE_ARTIFACTS)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from tests.cameras.harness import RtspServer
from tests.console.conftest import artifacts_dir, collect_errors
from tests.deploy.live import SITE, Publisher, camera_node, make_token
from vigie.app import Node
from vigie.console import CSP

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def node(fresh_dsn: str, mqtt_url: str, rtsp_server: RtspServer) -> AsyncIterator[Node]:
    async with camera_node(fresh_dsn, mqtt_url, rtsp_server) as node:
        yield node


async def _login(page: Page, node: Node, token: str) -> None:
    await page.goto(node.api_url + "/")
    await expect(page.locator("#login-form")).to_be_visible()
    await page.fill("#token", token)
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#app")).to_be_visible()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15000)


async def _rest(node: Node, token: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.request(
            method, node.api_url + path, headers={"Authorization": f"Bearer {token}"},
            **kw) as r:
        return r.status, await r.json()


async def test_operator_sees_an_mqtt_alarm_live_and_acknowledges_it(
        browser: Browser, node: Node) -> None:
    token = await make_token(node, "operator")
    page = await browser.new_page(viewport={"width": 1920, "height": 1080})
    errors = collect_errors(page)

    # A wrong token is refused on the login form; the right one opens the console.
    await page.goto(node.api_url + "/")
    await page.fill("#token", "not-a-token")
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#login-error")).to_have_text("Jeton refusé.")
    await _login(page, node, token)
    assert await page.evaluate("sessionStorage.getItem('vigie.token')") == token
    await expect(page.locator("#alerts .alert")).to_have_count(0)

    # A site's intrusion panel goes off: the alert appears without a reload, highlighted.
    publisher = Publisher(node)
    try:
        await asyncio.to_thread(publisher.event, SITE, "centrale-a", "intrusion", "alarm",
                                zone="batiment-a")
    finally:
        await asyncio.to_thread(publisher.close)
    item = page.locator("#alerts .alert", has_text="centrale-a")
    await expect(item).to_be_visible(timeout=15000)
    await expect(item).to_have_class("alert new")
    await expect(item).to_have_attribute("data-severity", "critical")
    await expect(item).to_have_attribute("data-state", "open")
    await expect(page.locator("#summary")).to_contain_text("1 critique")

    # Open it, acknowledge it with a comment: list and detail show the new state.
    await item.click()
    await expect(page.locator("#detail h3")).to_be_visible()
    await expect(page.locator("#detail-state")).to_have_attribute("data-state", "open")
    await page.fill("#comment", "rondier envoyé")
    await page.click("#detail button[data-action=ack]")
    await expect(page.locator("#detail-state")).to_have_attribute("data-state", "acknowledged")
    await expect(item).to_have_attribute("data-state", "acknowledged")
    await expect(page.locator("#detail .history")).to_contain_text("rondier envoyé")
    alert_id = await item.get_attribute("data-id")
    status, body = await _rest(node, token, "GET", f"/api/v1/alerts/{alert_id}")
    assert status == 200 and body["state"] == "acknowledged"
    assert body["acknowledged_by"].startswith("operator-")
    assert [h["action"] for h in body["history"]] == ["opened", "acknowledged"]

    # A comment from the console is stored too.
    await page.fill("#comment", "fenêtre cassée côté cour")
    await page.click("#detail button[data-action=comments]")
    await expect(page.locator("#detail .history")).to_contain_text("fenêtre cassée côté cour")

    # The camera wall: each camera with its state colour, the healthy one with its picture.
    await expect(page.locator('.tile[data-key="clg-jean-moulin/entree"]')).to_have_attribute(
        "data-state", "ok", timeout=40000)
    await expect(page.locator('.tile[data-key="clg-jean-moulin/gymnase"]')).to_have_attribute(
        "data-state", "offline", timeout=30000)
    await expect(page.locator('.tile[data-key="clg-jean-moulin/cour"]')).to_have_attribute(
        "data-state", "degraded", timeout=30000)
    picture = page.locator('.tile[data-key="clg-jean-moulin/entree"] img')
    await expect(picture).to_be_visible(timeout=40000)
    assert await picture.evaluate("img => img.complete && img.naturalWidth") > 0
    await expect(page.locator("#detail")).not_to_contain_text("null")
    shot = artifacts_dir() / "console-1920x1080.png"
    await page.screenshot(path=str(shot))
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000

    # Another operator resolves it elsewhere: the console follows the feed.
    status, _ = await _rest(node, token, "POST", f"/api/v1/alerts/{alert_id}/resolve",
                            json={"comment": "levée de doute faite"})
    assert status == 200
    await expect(item).to_have_attribute("data-state", "resolved", timeout=10000)

    assert errors == [], errors


async def test_site_filter_laptop_screen_and_session(browser: Browser, node: Node) -> None:
    token = await make_token(node, "viewer")
    page = await browser.new_page(viewport={"width": 1366, "height": 768})
    errors = collect_errors(page)
    publisher = Publisher(node)
    try:
        await asyncio.to_thread(publisher.event, SITE, "centrale-a", "intrusion", "alarm")
        await asyncio.to_thread(publisher.event, "clg-pasteur", "centrale", "intrusion",
                                "alarm")
    finally:
        await asyncio.to_thread(publisher.close)
    await _login(page, node, token)
    await expect(page.locator("#alerts .alert")).to_have_count(2, timeout=15000)

    # The site filter narrows alerts and cameras, and survives a reload (in the URL).
    await page.select_option("#site-filter", "clg-pasteur")
    await expect(page.locator("#alerts .alert")).to_have_count(1)
    await expect(page.locator("#alerts .alert")).to_contain_text("Louis Pasteur")
    await expect(page.locator("#wall .tile")).to_have_count(0)
    await page.select_option("#site-filter", SITE)
    await expect(page.locator("#wall .tile")).to_have_count(3)

    # A laptop screen: nothing wider than the window, the alert list on screen.
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1366
    await expect(page.locator("#alerts-pane")).to_be_in_viewport()

    # A viewer sees the alert but has no right to act: the API says so, the console shows it.
    await page.locator("#alerts .alert").first.click()
    await page.click("#detail button[data-action=ack]")
    await expect(page.locator("#action-status")).to_contain_text("may not")

    # The sound, when asked for, plays for a new alert (and is remembered).
    await page.check("#sound")
    publisher = Publisher(node)
    try:
        await asyncio.to_thread(publisher.event, SITE, "autoprot-baie", "tamper", "alarm")
    finally:
        await asyncio.to_thread(publisher.close)
    await expect(page.locator("#alerts .alert.new", has_text="autoprot-baie")).to_be_visible(
        timeout=15000)
    assert await page.evaluate("localStorage.getItem('vigie.sound')") == "on"

    # The token stays for the tab's session (reload), and logging out forgets it.
    await page.reload()
    await expect(page.locator("#app")).to_be_visible()
    await expect(page.locator("#site-filter")).to_have_value(SITE)
    shot = artifacts_dir() / "console-1366x768.png"
    await page.screenshot(path=str(shot))
    await page.click("#logout")
    await expect(page.locator("#login-form")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('vigie.token')") is None
    assert errors == [], errors


async def test_the_console_weakens_nothing(node: Node) -> None:
    async with aiohttp.ClientSession() as http:
        # The page and its assets need no token, and carry a strict CSP.
        for path in ("/", "/console/console.js", "/console/console.css"):
            async with http.get(node.api_url + path) as r:
                assert r.status == 200, path
                host = node.api_url.removeprefix("http://")
                assert r.headers["Content-Security-Policy"] == CSP.replace(
                    "connect-src 'self'", f"connect-src 'self' ws://{host} wss://{host}")
                assert r.headers["X-Frame-Options"] == "DENY"
                assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP
        assert "frame-ancestors 'none'" in CSP and "script-src 'self'" in CSP
        async with http.get(node.api_url + "/") as r:
            html = await r.text()
        assert "<script>" not in html and "http://" not in html and "https://" not in html
        # A Host header that is not a host name does not get into the policy.
        async with http.get(node.api_url + "/", headers={"Host": "x; script-src *"}) as r:
            assert r.headers["Content-Security-Policy"] == CSP
        # Nothing else is served from the package, and the API still wants its token.
        for path in ("/console/__init__.py", "/console/index.html", "/console/..%2f__init__.py"):
            async with http.get(node.api_url + path) as r:
                assert r.status == 404, path
        async with http.get(node.api_url + "/api/v1/alerts") as r:
            assert r.status == 401
