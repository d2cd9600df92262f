"""Secrets from files and environment variables, and the database's TLS settings passed
through to the connection."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from vigie.config import load_config, parse_config
from vigie.errors import ConfigError, VigieError
from vigie.secrets import redact_text
from vigie.store import Store


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_secrets_come_from_files_and_are_masked(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "cam-pass", "Cam-File-Pw-Ibex-77\n")
    write(tmp_path / "mqtt-pass", "Mqtt-File-Pw-Lynx-88\n")
    write(tmp_path / "db-pass", "Db-File-Pw-Gnu/99@x\n")
    monkeypatch.setenv("CAM_USER", "operateur")
    config = write(tmp_path / "vigie.yaml", """
database: {dsn: "postgresql://vigie@db.example:5432/vigie", password_file: db-pass-abs,
           sslmode: verify-full, sslrootcert: ca-abs}
mqtt: {url: "mqtts://broker.example:8883", username: vigie, password_file: mqtt-pass-abs}
sites:
  - id: clg-a
    name: A
    uai: "0781234A"
    cameras:
      - {id: entree, url: "rtsp://${CAM_USER}:${file:cam-pass}@10.0.0.1/stream"}
""".replace("db-pass-abs", str(tmp_path / "db-pass")).replace(
        "mqtt-pass-abs", str(tmp_path / "mqtt-pass")).replace(
        "ca-abs", str(write(tmp_path / "ca.pem", "x"))))
    loaded = load_config(config)
    url = loaded.sites[0].cameras[0].url.reveal()
    assert url == "rtsp://operateur:Cam-File-Pw-Ibex-77@10.0.0.1/stream"
    password = loaded.mqtt.secret_password()
    assert password is not None and password.reveal() == "Mqtt-File-Pw-Lynx-88"
    dsn = loaded.database.connect_dsn()
    assert dsn is not None
    parts = urlsplit(dsn)
    assert (parts.username, unquote(parts.password or ""), parts.hostname, parts.path) == (
        "vigie", "Db-File-Pw-Gnu/99@x", "db.example", "/vigie")
    assert parse_qs(parts.query) == {"sslmode": ["verify-full"],
                                     "sslrootcert": [str(tmp_path / "ca.pem")]}
    # Once read, each of them is masked in any text vigie redacts (logs, errors).
    text = f"a Cam-File-Pw-Ibex-77 b Mqtt-File-Pw-Lynx-88 c Db-File-Pw-Gnu/99@x d {dsn}"
    assert redact_text(text) == f"a *** b *** c *** d {redact_text(dsn)}"
    assert "Db-File" not in redact_text(dsn)
    for dumped in (repr(loaded), loaded.model_dump_json()):
        assert "File-Pw" not in dumped


@pytest.mark.parametrize(("raw", "problem"), [
    ({"mqtt": {"password_file": "/nonexistent/pw"}},
     "mqtt.password_file: /nonexistent/pw: no such file"),
    ({"mqtt": {"password": "x", "password_file": __file__}},
     "mqtt: give password or password_file, not both"),
    ({"mqtt": {"tls": {"cert_file": __file__}}}, "mqtt.tls: cert_file and key_file go together"),
    ({"api": {"tls_key": __file__}}, "api: tls_cert and tls_key go together"),
    ({"api": {"trusted_proxies": ["10.0.0.0/8", "proxy.local"]}},
     "api.trusted_proxies[1]: 'proxy.local': expected an IP address or network, "
     "e.g. 10.0.0.0/8"),
    ({"api": {"cors_origins": ["csu.example.fr"]}},
     "api.cors_origins[0]: 'csu.example.fr': expected an origin such as "
     "https://csu.example.fr"),
    ({"database": {"sslmode": "always"}},
     "database.sslmode: expected one of disable, allow, prefer, require, verify-ca, "
     "verify-full"),
    ({"sites": [{"id": "a", "name": "A", "uai": "0781234A",
                 "cameras": [{"id": "c", "url": "rtsp://u:${file:/nonexistent/x}@h/"}]}]},
     "sites[0].cameras[0].url: /nonexistent/x: cannot read the secret (FileNotFoundError)"),
])
def test_bad_secret_and_transport_settings_are_reported(raw: dict[str, Any], problem: str
                                                        ) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert caught.value.problems == [problem]


async def test_sslmode_reaches_the_connection(pg_dsn: str) -> None:
    """The test server does not speak TLS: `require` must fail, and say why (proof that the
    setting went through), `disable` must work."""
    base = {"dsn": pg_dsn}
    ok = parse_config({"database": {**base, "sslmode": "disable"}}).database.connect_dsn()
    assert ok is not None and "sslmode=disable" in ok
    store = await Store.open(ok, size=2)
    await store.ping()
    await store.close()
    required = parse_config({"database": {**base, "sslmode": "require"}}).database.connect_dsn()
    assert required is not None
    with pytest.raises(VigieError, match=r"(?i)ssl"):
        await Store.open(required, size=2, timeout=5)
