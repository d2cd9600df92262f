"""The `notifiers:` section and api.public_url: what is accepted, every error on its path,
and secrets that never show."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import SITES
from tests.notify.conftest import SECRET, URL_PASSWORD
from vigie.config import AlertmanagerNotifier, Config, WebhookNotifier, parse_config
from vigie.errors import ConfigError

HOOK = {"type": "webhook", "name": "csu", "url": "https://hooks.csu.test/vigie",
        "secret": SECRET}
AM = {"type": "alertmanager", "name": "am", "url": "http://alertmanager:9093"}


def parse(*notifiers: dict[str, Any], **sections: Any) -> Config:
    return parse_config({"sites": SITES, "notifiers": list(notifiers), **sections})


def problems(*notifiers: dict[str, Any], **sections: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(*notifiers, **sections)
    return caught.value.problems


def test_both_kinds_with_their_defaults() -> None:
    config = parse(HOOK, AM)
    hook, am = config.notifiers
    assert isinstance(hook, WebhookNotifier) and isinstance(am, AlertmanagerNotifier)
    assert hook.actions == ("opened", "unsilenced", "escalated", "acknowledged", "resolved")
    assert hook.severities == ("critical", "major", "minor", "info") and hook.sites is None
    assert (hook.max_attempts, hook.retry_first, hook.retry_max) == (6, 1.0, 300.0)
    assert am.resend_every == 60.0 and am.timeout == 10.0
    assert config.api.base_url == "http://127.0.0.1:8080"


def test_filters_and_tuning() -> None:
    [hook] = parse({**HOOK, "severities": ["critical"], "sites": ["clg-pasteur"],
                    "actions": ["opened", "resolved"], "max_attempts": 3,
                    "retry_first": "500ms", "retry_max": "2m", "timeout": "3s"}).notifiers
    assert hook.severities == ("critical",) and hook.sites == ("clg-pasteur",)
    assert hook.actions == ("opened", "resolved")
    assert (hook.max_attempts, hook.retry_first, hook.retry_max, hook.timeout) == (
        3, 0.5, 120.0, 3.0)


def test_public_url_is_the_base_of_links() -> None:
    config = parse(api={"public_url": "https://vigie.ac-versailles.test/"})
    assert config.api.base_url == "https://vigie.ac-versailles.test"


def test_every_error_is_reported_on_its_path() -> None:
    found = problems(
        {**HOOK, "url": "ftp://hooks.test/x", "secret": "short", "actions": ["open"]},
        {"name": "typeless", "url": "http://x"},
        {**AM, "type": "slack"},
        {**AM, "name": "csu", "severities": ["urgent"], "resend_every": "0s", "foo": 1},
        {**AM, "name": "Bad Name", "sites": ["clg-inconnu"], "max_attempts": 0},
        {**AM, "name": "am2", "severities": []},
    )
    assert found == [
        "notifiers[0].url: expected http(s)://host[:port][/path]",
        "notifiers[0].secret: too short: at least 16 characters (e.g. openssl rand -hex 32)",
        "notifiers[0].actions[0]: expected one of opened, repeated, acknowledged, "
        "unacknowledged, assigned, resolved, commented, escalated, silenced, unsilenced, "
        "correlated",
        "notifiers[1].type: expected one of webhook, alertmanager",
        "notifiers[2].type: expected one of webhook, alertmanager",
        "notifiers[3].severities[0]: expected one of critical, major, minor, info",
        "notifiers[3].resend_every: expected a positive duration",
        "notifiers[3].foo: unknown key",
        "notifiers[4].name: expected a slug: lowercase letters, digits, '-' or '_' (max 63)",
        "notifiers[4].max_attempts: Input should be greater than or equal to 1",
        "notifiers[5].severities: must list at least one",
        "notifiers[3].name: duplicate notifier name 'csu' (already used by notifiers[0])",
    ]


def test_a_webhook_needs_its_secret() -> None:
    assert problems({k: v for k, v in HOOK.items() if k != "secret"}) == [
        "notifiers[0].secret: required"]


def test_sites_must_exist() -> None:
    assert problems({**AM, "sites": ["clg-pasteur", "clg-inconnu"]}) == [
        "notifiers[0].sites[1]: unknown site 'clg-inconnu'"]


def test_public_url_without_credentials() -> None:
    assert problems(api={"public_url": "https://admin:pw@vigie.test"}) == [
        "api.public_url: expected http(s)://host[:port][/path], without credentials"]


def test_secrets_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    url = f"https://vigie:{URL_PASSWORD}@hooks.test/x?token={URL_PASSWORD}"
    config = parse({**HOOK, "url": url, "secret": "${HOOK_SECRET}"})
    [hook] = config.notifiers
    assert isinstance(hook, WebhookNotifier)
    assert hook.secret.reveal() == SECRET and hook.url.reveal() == url
    shown = repr(config) + str(config) + config.model_dump_json()
    assert SECRET not in shown and URL_PASSWORD not in shown
    # ...nor in the errors of a config that has them wrong.
    bad = problems({**HOOK, "url": url.replace("https", "gopher"), "secret": URL_PASSWORD[:9]})
    assert len(bad) == 2
    assert URL_PASSWORD not in "\n".join(bad) and URL_PASSWORD[:9] not in "\n".join(bad)
