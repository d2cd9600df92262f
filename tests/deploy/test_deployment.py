"""deploy/docker, deploy/systemd, deploy/kubernetes: what can be checked on this machine
with the real tools: the compose file through a compose client, the broker config through
a real Mosquitto, vigie's configs through `vigie check-config`, the unit through
`systemd-analyze`, the manifests against Kubernetes' schemas (kubernetes-validate), the
image's health check against /readyz. Building and running the image needs a Docker daemon
and the base images from a registry: skipped where there are none."""

from __future__ import annotations

import copy
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import paho.mqtt.client as paho
import pytest
import yaml
from aiohttp import web
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import free_port, wait_port
from tests.deploy.conftest import DEPLOY, ROOT, run

DOCKER = DEPLOY / "docker"
K8S = DEPLOY / "kubernetes"
VIGIE = str(Path(sys.executable).with_name("vigie"))
SECRETS = {"VIGIE_DB_PASSWORD": "db-pw", "VIGIE_MQTT_PASSWORD": "mqtt-pw",
           "CAM_USER": "cam", "CAM_PASS": "cam-pw", "GRAFANA_ADMIN_PASSWORD": "gf-pw"}


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRETS and k != "VIGIE_CONFIG"}
    return {**env, **extra}


# --- Dockerfile -------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def test_the_image_is_slim_and_runs_as_a_non_root_user() -> None:
    stage = _final_stage()
    assert "-slim" in stage[0][1]
    users = [arg for op, arg in stage if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    # The runtime stage gets the installed venv, not compilers or the source tree.
    copies = [arg for op, arg in stage if op == "COPY"]
    assert copies == ["--from=build /opt/vigie /opt/vigie"]
    assert dict(stage)["ENTRYPOINT"] == '["vigie"]'
    # What the build stage copies exists, and nothing else gets in (.dockerignore).
    for op, arg in _instructions():
        if op == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), source
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*"):][:1] == ["*"] and "!vigie/" in ignore


def _healthcheck_command() -> list[str]:
    [arg] = [arg for op, arg in _final_stage() if op == "HEALTHCHECK"]
    cmd = json.loads(arg.split("CMD", 1)[1].strip())
    assert isinstance(cmd, list)
    return [str(c) for c in cmd]


@pytest.fixture
async def readyz_server() -> AsyncIterator[tuple[int, dict[str, int]]]:
    """An HTTP server whose /readyz answers what the test says (vigie's own /readyz is
    tested with the API); the image's check must tell 200 from 503."""
    status = {"code": 200}

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response({"status": "x"}, status=status["code"])

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port, status
    await runner.cleanup()


async def test_the_image_health_check_follows_readyz(
        readyz_server: tuple[int, dict[str, int]]) -> None:
    port, status = readyz_server
    cmd = _healthcheck_command()
    assert cmd[0] == "python" and "http://127.0.0.1:8080/readyz" in cmd[-1]
    here = [sys.executable, *cmd[1:-1], cmd[-1].replace(":8080/", f":{port}/")]

    async def exit_code() -> int:
        import asyncio

        proc = await asyncio.create_subprocess_exec(*here, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL)
        return await proc.wait()

    assert await exit_code() == 0
    status["code"] = 503
    assert await exit_code() != 0


def test_building_the_image() -> None:
    docker = shutil.which("docker")
    if docker is None or run(docker, "info").returncode != 0:
        pytest.skip("not run: no Docker daemon on this machine (building the image also "
                    "needs python:*-slim-bookworm from a container registry)")
    tag = f"vigie-test:{uuid.uuid4().hex[:8]}"
    result = run(docker, "build", "-f", str(DOCKER / "Dockerfile"), "-t", tag, str(ROOT),
                 timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    run(docker, "image", "rm", tag)


# --- compose ----------------------------------------------------------------------------------


def _compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and run(docker, "compose", "version").returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")  # Debian's docker-compose (Compose v1)
    return [legacy] if legacy else None


def test_compose_config_is_accepted_by_a_compose_client(tmp_path: Path) -> None:
    client = _compose_client()
    if client is None:
        pytest.skip("not run: neither `docker compose` nor docker-compose is installed "
                    "(apt-get install --no-install-recommends docker-compose)")
    empty = tmp_path / "empty.env"  # not deploy/docker/.env, if someone made one
    empty.write_text("")
    args = [*client, "-f", str(DOCKER / "compose.yaml"), "--env-file", str(empty), "config"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False,
                            env=_clean_env(**SECRETS))
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == {"postgres", "mosquitto", "vigie", "prometheus",
                                         "alertmanager", "grafana"}
    # Secrets come from the environment, and compose refuses to start without them.
    assert resolved["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "db-pw"
    missing = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False,
                             env=_clean_env())
    assert missing.returncode != 0 and "VIGIE_DB_PASSWORD" in missing.stderr


def test_compose_services_are_wired_together() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every address"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: {source} does not exist"
    vigie = services["vigie"]
    assert vigie["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert (DOCKER / vigie["build"]["context"]).resolve() == ROOT
    assert vigie["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Prometheus scrapes the service names compose gives: vigie and alertmanager.
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] if job["job_name"] == "vigie"
               for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["vigie:8080"]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"]
    # No secret is written in the repository: every one is a ${VAR:?} reference.
    text = (DOCKER / "compose.yaml").read_text()
    for name in ("VIGIE_DB_PASSWORD", "VIGIE_MQTT_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert re.search(rf"\$\{{{name}:\?", text), name


def test_vigies_config_for_compose_is_valid() -> None:
    result = subprocess.run([VIGIE, "check-config", "--config", str(DOCKER / "vigie.yaml")],
                            capture_output=True, text=True, timeout=60, check=False,
                            env=_clean_env(**SECRETS))
    assert result.returncode == 0, result.stderr
    assert "1 site(s)" in result.stdout and "mqtt://mosquitto:1883" in result.stdout
    assert "db-pw" not in result.stdout + result.stderr


@pytest.fixture
def compose_mosquitto() -> Iterator[int]:
    """Debian's Mosquitto with deploy/docker/mosquitto.conf: only the container paths and the
    port changed, and the password file made the way the compose command makes it (owned by
    the broker's user, which Mosquitto switches to when started as root, as in the image)."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    passwd_tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(mosquitto).exists():
        pytest.fail("mosquitto is missing: apt-get install mosquitto", pytrace=False)
    workdir = Path(tempfile.mkdtemp(prefix="vigie-mosquitto-"))
    port = free_port()
    conf = (DOCKER / "mosquitto.conf").read_text()
    conf = conf.replace("listener 1883", f"listener {port} 127.0.0.1")
    conf = conf.replace("/mosquitto/data/", f"{workdir}/")
    (workdir / "mosquitto.conf").write_text(conf)
    made = run(passwd_tool, "-c", "-b", str(workdir / "passwd"), "vigie", "mqtt-pw")
    assert made.returncode == 0, made.stderr
    (workdir / "passwd").chmod(0o600)
    if os.getuid() == 0:
        owner = pwd.getpwnam("mosquitto")
        for path in (workdir, workdir / "passwd"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    with (workdir / "log").open("wb") as log:
        proc = subprocess.Popen([mosquitto, "-c", str(workdir / "mosquitto.conf")],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port("127.0.0.1", port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _connect(port: int, username: str | None, password: str | None) -> int:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:6]}")
    if username is not None:
        client.username_pw_set(username, password)
    codes: list[int] = []
    client.on_connect = lambda c, u, f, reason, p: codes.append(reason.value)
    client.connect("127.0.0.1", port)
    for _ in range(50):
        client.loop(0.1)
        if codes:
            break
    client.disconnect()
    return codes[0] if codes else -1


def test_the_compose_broker_config_runs_on_mosquitto_with_the_recommended_settings(
        compose_mosquitto: int) -> None:
    conf = (DOCKER / "mosquitto.conf").read_text()
    settings = dict(re.findall(r"^(\w+)\s+(\S+)", conf, re.M))
    assert settings["persistence"] == "true"
    assert settings["max_queued_messages"] == "1000000"
    assert settings["max_inflight_messages"] == "0"
    assert settings["allow_anonymous"] == "false"
    assert _connect(compose_mosquitto, "vigie", "mqtt-pw") == 0
    assert _connect(compose_mosquitto, "vigie", "wrong") != 0
    assert _connect(compose_mosquitto, None, None) != 0


# --- systemd ----------------------------------------------------------------------------------


def _unit() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / "vigie.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def _unit_here(tmp_path: Path) -> Path:
    """The unit with vigie's path on this machine (/opt/vigie is where the README installs)."""
    unit = (DEPLOY / "systemd" / "vigie.service").read_text()
    assert "/opt/vigie/bin/vigie" in unit
    path = tmp_path / "vigie.service"
    path.write_text(unit.replace("/opt/vigie/bin/vigie", VIGIE))
    return path


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("not run: systemd-analyze is not installed (Debian: systemd)")
    return tool


def test_the_unit_is_hardened() -> None:
    unit = _unit()
    expected = {"DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                "NoNewPrivileges": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
                "CapabilityBoundingSet": "", "StateDirectory": "vigie",
                "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
                "KillSignal": "SIGTERM"}
    for key, value in expected.items():
        assert unit.get(key) == [value], key
    assert unit["ExecStart"] == ["/opt/vigie/bin/vigie run --json-logs"]


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    result = run(_systemd_analyze(), "verify", str(_unit_here(tmp_path)))
    # verify warns (unknown key, bad value) on stderr and still exits 0: both must be clean.
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_analyze_verify_catches_a_typo(tmp_path: Path) -> None:
    path = _unit_here(tmp_path)
    path.write_text(path.read_text().replace("ProtectSystem=strict", "ProtectSystem=strcit"))
    result = run(_systemd_analyze(), "verify", str(path))
    assert "strcit" in result.stderr


def test_systemd_rates_the_unit_exposure_ok(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    result = run(tool, "security", "--offline=true", "--no-pager", str(_unit_here(tmp_path)))
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("not run: this systemd-analyze has no --offline (systemd < 250)")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= 2.0, match.group(0)


# --- Kubernetes -------------------------------------------------------------------------------


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def _kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _manifests() if doc["kind"] == kind]


K8S_VERSION = "1.30.0"


def test_the_prometheus_rule_is_rules_yml() -> None:
    [rule] = _kind("PrometheusRule")
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    assert rule["spec"] == shipped, "deploy/kubernetes/prometheusrule.yaml is out of date"
    assert rule["metadata"]["labels"]["app.kubernetes.io/name"] == "vigie"


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    built_in = [(f, d) for f, d in _manifests() if d["apiVersion"] != "monitoring.coreos.com/v1"]
    assert {d["kind"] for _, d in built_in} == {
        "Namespace", "ConfigMap", "Secret", "Service", "StatefulSet", "PodDisruptionBudget",
        "HorizontalPodAutoscaler"}
    for name, doc in built_in:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} {doc['kind']}/{doc['metadata']['name']}: {exc}")


def test_the_schema_check_catches_a_misspelt_field() -> None:
    [sts] = _kind("StatefulSet")
    broken = copy.deepcopy(sts)
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_probes_selectors_and_ports_fit_together() -> None:
    [sts] = _kind("StatefulSet")
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert _selects(sts["spec"]["selector"]["matchLabels"], labels)
    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"]

    services = {s["metadata"]["name"]: s for s in _kind("Service")}
    assert sts["spec"]["serviceName"] in services
    assert services[sts["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    for service in services.values():
        assert _selects(service["spec"]["selector"], labels)
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
    [pdb] = _kind("PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    # The ServiceMonitor (a CRD: no schema here) scrapes exactly one Service, on its port.
    [monitor] = _kind("ServiceMonitor")
    chosen = [s for s in services.values()
              if _selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert len(chosen) == 1, [s["metadata"]["name"] for s in chosen]
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in chosen[0]["spec"]["ports"]}

    # Every ConfigMap key a volume mounts exists; the Secret holds every ${VAR} the config
    # uses, except the pod name that the StatefulSet gives.
    [config_map] = _kind("ConfigMap")
    for volume in pod["spec"]["volumes"]:
        for item in volume.get("configMap", {}).get("items", []):
            assert item["key"] in config_map["data"], item
    used = set(re.findall(r"\$\{(\w+)", "".join(config_map["data"].values())))
    [secret] = _kind("Secret")
    env = {e["name"] for e in container.get("env", [])}
    assert used - env <= set(secret["stringData"])
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_the_configmap_config_is_valid_for_vigie(tmp_path: Path) -> None:
    [config_map] = _kind("ConfigMap")
    [sts] = _kind("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    # Lay the files out as the volumes mount them.
    (tmp_path / "sites.d").mkdir()
    for volume in pod["volumes"]:
        if volume["name"] == "sites":
            for item in volume["configMap"]["items"]:
                (tmp_path / "sites.d" / item["path"]).write_text(config_map["data"][item["key"]])
    (tmp_path / "vigie.yaml").write_text(config_map["data"]["vigie.yaml"])
    result = subprocess.run([VIGIE, "check-config", "--config", str(tmp_path / "vigie.yaml")],
                            capture_output=True, text=True, timeout=60, check=False,
                            env=_clean_env(**SECRETS, POD_NAME="vigie-0"))
    assert result.returncode == 0, result.stderr
    assert "as vigie-vigie-0" in result.stdout  # the MQTT client id follows the pod


def test_no_secret_values_in_deploy() -> None:
    """Placeholders and ${VAR} references only."""
    [secret] = _kind("Secret")
    assert set(secret["stringData"].values()) == {"REPLACE-ME"}
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert not re.search(r"rtsp://[^$*\s\"]+:[^$*\s\"]+@", text), path
            assert not re.search(r"postgresql://\w+:(?!\$\{)[^@\s\"]+@", text), path

