"""A Mosquitto that asks for TLS (certificates made for the test), a client certificate and
a username and password, started once for the security tests."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Mosquitto
from tests.security.certs import Certs, make_certs

# Distinctive, so that the secret scan can look for them anywhere.
MQTT_USER = "vigie-node"
MQTT_PASSWORD = "Mq77-Pw-Quokka-5512"


@dataclass(frozen=True)
class TlsBroker:
    port: int
    certs: Certs
    password_file: Path  # vigie's: the password alone, as a mounted secret would hold it

    @property
    def url(self) -> str:
        return f"mqtts://localhost:{self.port}"


@pytest.fixture(scope="session")
def tls_broker() -> Iterator[TlsBroker]:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    # Readable by the broker even if it drops root for the mosquitto user.
    base = Path(tempfile.mkdtemp(prefix="vigie-tls-"))
    base.chmod(0o755)
    certs = make_certs(base / "certs")
    for path in (base / "certs").iterdir():
        path.chmod(0o644)
    (base / "certs").chmod(0o755)
    passwd = base / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), MQTT_USER, MQTT_PASSWORD],
                   check=True, capture_output=True)
    passwd.chmod(0o644)
    secret = base / "mqtt-password"
    secret.write_text(MQTT_PASSWORD + "\n")
    broker = Mosquitto(base / "broker", extra="\n".join([
        "allow_anonymous false", f"password_file {passwd}",
        f"cafile {certs.ca}", f"certfile {certs.server_cert}", f"keyfile {certs.server_key}",
        "require_certificate true", "tls_version tlsv1.2",
    ]))
    (base / "broker").mkdir()
    (base / "broker").chmod(0o777)
    broker.start()
    yield TlsBroker(broker.port, certs, secret)
    broker.stop()
    shutil.rmtree(base, ignore_errors=True)
