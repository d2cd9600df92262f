"""vigie.config: the shipped example, every broken fixture, and the parsing rules."""

from __future__ import annotations

import traceback
from datetime import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from vigie.config import (
    DEFAULT_RULES,
    SENSOR_KINDS,
    Config,
    SensorConfig,
    SiteConfig,
    load_config,
    parse_config,
)
from vigie.errors import ConfigError
from vigie.secrets import Secret, redact_url

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "vigie.example.yaml"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "config"
BROKEN = FIXTURES / "broken"

# Distinctive enough that finding it anywhere in an output can only mean a leak.
PASSWORD = "S3cr3t-Zebra-42"

KINDS = "expected one of door, intrusion, tamper, panic, smoke, technical"
DURATION = "expected a duration such as 5s, 500ms, 2m"
POSITIVE = "expected a positive duration"
UAI = "expected a UAI code: 7 digits and a letter, e.g. 0781234A"
RTSP = ("expected rtsp://[user:pass@]host[:port]/path "
        "(or file:///path/clip.mp4, replayed in a loop: demos, tests)")
Z2M_TOPIC = "required for format zigbee2mqtt (zigbee2mqtt/<friendly name>)"
JSON_MAPPING = "required for format json: {state: <path>, ts: <path>}"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixtures' own variables are never set, whatever the caller's shell holds."""
    for name in (
        "VIGIE_FIXTURE_BROKER",
        "VIGIE_FIXTURE_MQTT_PASSWORD",
        "VIGIE_FIXTURE_CAM_USER",
        "VIGIE_FIXTURE_CAM_PASS",
        "VIGIE_TEST_VAR",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAM_USER", "admin")
    monkeypatch.setenv("CAM_PASS", PASSWORD)
    monkeypatch.setenv("VIGIE_MQTT_PASSWORD", PASSWORD)


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    return info.value.problems


def site(**fields: Any) -> dict[str, Any]:
    return {"id": "clg-a", "name": "Collège A", "uai": "0781582W", **fields}


def one_problem(raw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert len(info.value.problems) == 1, info.value.problems
    return info.value.problems[0]


# --- the shipped example -------------------------------------------------------------


def test_example_validates(secrets_env: None) -> None:
    config = load_config(EXAMPLE)

    assert len(config.sites) == 3
    for s in config.sites:
        assert s.uai[:3] in ("078", "092") and len(s.uai) == 8 and s.uai[-1].isalpha()
        assert s.holiday_zone == "C"
        assert s.timezone == "Europe/Paris"
        assert 2 <= len(s.cameras) <= 4
        assert s.opening_hours.sat == () and s.opening_hours.sun == ()
        assert s.opening_hours.wed and s.opening_hours.wed[-1][1] <= time(13, 0)
        for camera in s.cameras:
            url = camera.url.reveal()
            assert url.startswith(f"rtsp://admin:{PASSWORD}@10.{s.uai[1:3]}.")
    sensors = [sensor for s in config.sites for sensor in s.sensors]
    assert {sensor.kind for sensor in sensors} == set(SENSOR_KINDS)
    assert {sensor.format for sensor in sensors} == {"native", "zigbee2mqtt", "json"}
    assert any(len(s.opening_hours.ranges(d)) == 2 for s in config.sites for d in range(7))
    json_sensors = [sensor for sensor in sensors if sensor.format == "json"]
    assert all(sensor.mapping and sensor.mapping.values for sensor in json_sensors)
    assert config.database.dsn is None  # the embedded server
    assert config.mqtt.password == Secret(PASSWORD)
    assert config.alerts.rules == DEFAULT_RULES  # the file shows them, commented out


def test_example_names_every_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CAM_USER", "CAM_PASS", "VIGIE_MQTT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    problems = problems_of(EXAMPLE)
    assert problems[0] == "mqtt.password: environment variable VIGIE_MQTT_PASSWORD is not set"
    assert "sites[0].cameras[0].url: environment variable CAM_USER is not set" in problems
    assert "sites[2].cameras[1].url: environment variable CAM_PASS is not set" in problems
    assert len(problems) == 1 + 2 * (4 + 3 + 2)  # every camera URL holds both variables


# --- valid fixtures --------------------------------------------------------------------


def test_minimal_file_takes_the_defaults() -> None:
    config = load_config(FIXTURES / "minimal.yaml")

    assert config.node.data_dir == Path("var")
    assert config.database.dsn is None
    assert config.mqtt.url == "mqtt://127.0.0.1:1883" and config.mqtt.password is None
    assert config.api.host == "127.0.0.1" and config.api.port == 8080
    assert config.alerts.rules == DEFAULT_RULES
    (s,) = config.sites
    assert s.timezone == "Europe/Paris" and s.holiday_zone is None
    assert all(s.opening_hours.ranges(day) == () for day in range(7))
    assert s.sensors[0].format == "native" and s.sensors[0].topic is None
    assert config.camera_checks(s.cameras[0]) == config.defaults.camera


def test_load_config_accepts_a_string_path() -> None:
    assert load_config(str(FIXTURES / "minimal.yaml")).sites[0].id == "clg-minimal"


def test_sites_dir_is_merged_after_the_main_sites(secrets_env: None) -> None:
    config = load_config(FIXTURES / "with-sites-dir.yaml")

    # File-name order; README.txt and the hidden (broken) editor copy are not read.
    assert [s.id for s in config.sites] == [
        "clg-jean-moulin-versailles",
        "clg-claude-debussy-st-germain",
        "clg-victor-hugo-issy",
    ]
    assert config.sites_dir == Path("sites.d")
    debussy = config.site("clg-claude-debussy-st-germain")
    assert debussy is not None
    assert debussy.cameras[0].url.reveal() == f"rtsp://admin:{PASSWORD}@10.78.14.10:554/stream1"
    assert debussy.sensors[0].topic == "zigbee2mqtt/clg-debussy/contact-portail"
    assert debussy.opening_hours.mon == ((time(7, 45), time(12, 15)), (time(13, 15), time(17, 30)))


# --- broken fixtures: every error, each on its exact path -----------------------------

SITES_D = BROKEN / "sites.d"
BROKEN_CASES: dict[str, list[str]] = {
    "bad-yaml.yaml": [
        f"{BROKEN / 'bad-yaml.yaml'}: invalid YAML at line 6, column 1: found unexpected end"
        " of stream (while scanning a quoted scalar at line 4, column 13)",
    ],
    "duplicate-yaml-key.yaml": [
        f"{BROKEN / 'duplicate-yaml-key.yaml'}: invalid YAML at line 8, column 5:"
        " duplicate key 'sensors'",
    ],
    "unknown-keys.yaml": [
        "mqtt.user: unknown key",
        "sites[0].sensors[0].qos: unknown key",
        "sites[0].holidays_zone: unknown key",
        "nodes: unknown key",
    ],
    "bad-sensor-kind.yaml": [
        f"sites[0].sensors[0].kind: {KINDS}",
        f"sites[0].sensors[2].kind: {KINDS}",
    ],
    "duplicate-site-ids.yaml": [
        "sites[3].name: String should have at least 1 character",
        "sites[2].id: duplicate site id 'clg-a' (already used by sites[0])",
        "sites[3].id: duplicate site id 'clg-a' (already used by sites[0])",
    ],
    "duplicate-sensor-ids.yaml": [
        "sites[0].cameras[1].id: duplicate camera id 'entree' (already used by cameras[0])",
        "sites[0].sensors[2].id: duplicate sensor id 'porte-hall' (already used by sensors[0])",
        "sites[1].sensors[0].topic: topic 'zigbee2mqtt/contact-1' already used by"
        " sites[0].sensors[3]",
    ],
    "bad-durations.yaml": [
        f"database.connect_timeout: {DURATION}",
        f"mqtt.session_expiry: {POSITIVE}",
        f"defaults.camera.offline_after: {DURATION}",
        f"defaults.camera.frozen_after: {POSITIVE}",
        f"defaults.sensor.heartbeat: {DURATION}",
        f"sites[0].cameras[0].checks.frozen_after: {DURATION}",
    ],
    "bad-opening-hours.yaml": [
        "sites[0].opening_hours.tue: range '18:30-07:30' ends before it starts",
        "sites[0].opening_hours.wed: bad range '13:00', expected HH:MM-HH:MM",
        "sites[0].opening_hours.thu: bad time '25:00', expected HH:MM",
        'sites[0].opening_hours.fri: expected ranges such as "07:30-18:30" or'
        ' "08:00-12:00, 13:30-17:00"',
        "sites[0].opening_hours.holiday: unknown key",
    ],
    "missing-env.yaml": [
        "mqtt.password: environment variable VIGIE_FIXTURE_MQTT_PASSWORD is not set",
        "sites[0].cameras[0].url: environment variable VIGIE_FIXTURE_CAM_USER is not set",
        "sites[0].cameras[0].url: environment variable VIGIE_FIXTURE_CAM_PASS is not set",
    ],
    "json-without-mapping.yaml": [
        f"sites[0].sensors[0].mapping: {JSON_MAPPING}",
        "sites[0].sensors[1].mapping.state: required",
        "sites[0].sensors[2].mapping: only used with format json",
    ],
    "zigbee2mqtt-without-topic.yaml": [
        f"sites[0].sensors[0].topic: {Z2M_TOPIC}",
        f"sites[0].sensors[1].topic: {Z2M_TOPIC}",
        "sites[0].sensors[2].topic: must not contain MQTT wildcards",
    ],
    "bad-camera-url.yaml": [
        f"sites[0].cameras[0].url: {RTSP}",
        f"sites[0].cameras[1].url: {RTSP}",
        "sites[0].cameras[2].url: required",
    ],
    "bad-timezone.yaml": [
        "sites[0].timezone: unknown time zone 'Europe/Pariss'",
        "sites[1].timezone: unknown time zone 'CET+1'",
    ],
    "bad-uai.yaml": [
        f"sites[0].uai: {UAI}",
        f"sites[1].uai: {UAI}",
        "sites[2].uai: Input should be a valid string",
        "sites[3].uai: required",
    ],
    "secret-fields.yaml": [
        "database.dsn: expected postgresql://user[:password]@host[:port]/dbname",
        "mqtt.password: expected a string",
        f"sites[0].cameras[0].url: {RTSP}",
        "sites[0].cameras[1].url: expected a string",
    ],
    "bad-sites-dir.yaml": [
        "sites[2].cameras[0].url: environment variable VIGIE_FIXTURE_CAM_USER is not set"
        f" (in {SITES_D / '20-broken.yaml'})",
        f"{SITES_D / '30-bad-yaml.yml'}: invalid YAML at line 3, column 1: expected ',' or"
        " ']', but got '<stream end>' (while parsing a flow sequence at line 2, column 7)",
        f"sites[2].sensors[0].kind: {KINDS} (in {SITES_D / '20-broken.yaml'})",
        "sites[3].id: duplicate site id 'clg-a' (already used by sites[0])"
        f" (in {SITES_D / '20-broken.yaml'})",
    ],
    "missing-sites-dir.yaml": [
        f"sites_dir: {BROKEN / 'no-such-dir'} is not a directory",
    ],
}


@pytest.mark.parametrize(("name", "expected"), BROKEN_CASES.items(), ids=list(BROKEN_CASES))
def test_broken_file_reports_every_error_on_its_path(name: str, expected: list[str]) -> None:
    assert problems_of(BROKEN / name) == expected


def test_every_broken_fixture_has_a_case() -> None:
    assert {p.name for p in BROKEN.glob("*.yaml")} == set(BROKEN_CASES)


def test_config_error_text_lists_every_problem() -> None:
    path = BROKEN / "bad-sensor-kind.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path}: 2 configuration error(s)"
    assert [line.strip() for line in lines[1:]] == BROKEN_CASES["bad-sensor-kind.yaml"]


def test_a_document_that_is_not_a_mapping() -> None:
    assert one_problem(["sites"]) == "(top level): expected a mapping of sections"


# --- ${VAR} substitution ----------------------------------------------------------------


def test_env_substitution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIE_TEST_HOST", "broker.test")
    monkeypatch.setenv("VIGIE_TEST_PORT", "1884")
    monkeypatch.setenv("VIGIE_TEST_USER", "${VIGIE_TEST_HOST}")  # values are not re-expanded
    config = parse_config(
        {
            "mqtt": {
                "url": "mqtt://${VIGIE_TEST_HOST}:${VIGIE_TEST_PORT}",
                "username": "${VIGIE_TEST_USER}",
                "client_id": "${VIGIE_TEST_VAR:-vigie-test}",
                "topic_prefix": "x${VIGIE_TEST_VAR:-}y",
                "keepalive": "${VIGIE_TEST_VAR:-45}",  # a string until validation types it
            }
        }
    )
    assert config.mqtt.url == "mqtt://broker.test:1884"
    assert config.mqtt.username == "${VIGIE_TEST_HOST}"
    assert config.mqtt.client_id == "vigie-test"
    assert config.mqtt.topic_prefix == "xy"
    assert config.mqtt.keepalive == 45


def test_env_default_is_ignored_when_the_variable_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIE_TEST_VAR", "from-env")
    assert parse_config({"mqtt": {"username": "${VIGIE_TEST_VAR:-x}"}}).mqtt.username == "from-env"


def test_env_missing_variable_is_reported_on_its_path() -> None:
    raw = {"sites": [site(cameras=[{"id": "c", "url": "rtsp://${VIGIE_TEST_VAR}@h/x"}])]}
    assert one_problem(raw) == (
        "sites[0].cameras[0].url: environment variable VIGIE_TEST_VAR is not set"
    )


# --- durations ----------------------------------------------------------------------------


def offline_after(value: object) -> float:
    config = parse_config({"defaults": {"camera": {"offline_after": value}}})
    return config.defaults.camera.offline_after


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("5s", 5.0),
        ("2m", 120.0),
        (3, 3.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("1d", 86_400.0),
        (0.25, 0.25),
        (" 10s ", 10.0),
    ],
)
def test_duration(value: object, seconds: float) -> None:
    assert offline_after(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5x", DURATION),
        (-1, POSITIVE),
        (True, DURATION),
        (0, POSITIVE),
        ("0s", POSITIVE),
        ("", DURATION),
        ("5 sec", DURATION),
        ("-5s", DURATION),
        (None, DURATION),
        (float("nan"), POSITIVE),
        (float("inf"), POSITIVE),
    ],
)
def test_bad_duration(value: object, message: str) -> None:
    raw = {"defaults": {"camera": {"offline_after": value}}}
    assert one_problem(raw) == f"defaults.camera.offline_after: {message}"


# --- opening hours --------------------------------------------------------------------------


def opening_hours(**days: object) -> Any:
    return parse_config({"sites": [site(opening_hours=days)]}).sites[0].opening_hours


def test_opening_hours_several_ranges_sorted() -> None:
    hours = opening_hours(mon="13:15-17:30, 07:45-12:15", tue=["08:00-12:00", "13:30-17:00"])
    assert hours.mon == ((time(7, 45), time(12, 15)), (time(13, 15), time(17, 30)))
    assert hours.ranges(1) == ((time(8, 0), time(12, 0)), (time(13, 30), time(17, 0)))
    assert hours.ranges(2) == ()  # a day left out is closed


def test_opening_hours_24_00_ends_the_day() -> None:
    hours = opening_hours(sun="00:00-24:00", sat="22:00-24:00")
    assert hours.sun == ((time(0, 0), time.max),)
    assert hours.ranges(5) == ((time(22, 0), time.max),)


def test_opening_hours_empty_string_means_closed() -> None:
    assert opening_hours(wed="").wed == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("18:30-07:30", "range '18:30-07:30' ends before it starts"),
        ("08:00-08:00", "range '08:00-08:00' ends before it starts"),
        ("24:00-24:00", "range '24:00-24:00' ends before it starts"),
        ("08:00-24:30", "bad time '24:30', expected HH:MM"),
        ("08:60-12:00", "bad time '08:60', expected HH:MM"),
        ("8h-12h", "bad time '8h', expected HH:MM"),
        ("08:00-12:00-14:00", "bad range '08:00-12:00-14:00', expected HH:MM-HH:MM"),
    ],
)
def test_bad_opening_hours(value: str, message: str) -> None:
    assert one_problem({"sites": [site(opening_hours={"thu": value})]}) == (
        f"sites[0].opening_hours.thu: {message}"
    )


# --- camera checks ----------------------------------------------------------------------------


def test_camera_checks_override_the_defaults() -> None:
    config = parse_config(
        {
            "defaults": {"camera": {"offline_after": "8s", "min_fps": 5}},
            "sites": [
                site(
                    cameras=[
                        {"id": "hall", "url": "rtsp://10.78.1.20/s"},
                        {
                            "id": "parking",
                            "url": "rtsp://10.78.1.21/s",
                            "checks": {"frozen_after": "2m", "min_fps": 1},
                        },
                    ]
                )
            ],
        }
    )
    hall, parking = config.sites[0].cameras
    assert parking.checks == {"frozen_after": 120.0, "min_fps": 1.0}  # normalised
    checks = config.camera_checks(hall)
    assert (checks.offline_after, checks.frozen_after, checks.min_fps) == (8.0, 10.0, 5.0)
    checks = config.camera_checks(parking)
    assert (checks.offline_after, checks.frozen_after, checks.min_fps) == (8.0, 120.0, 1.0)


def test_camera_checks_report_every_bad_override() -> None:
    raw = {
        "sites": [
            site(
                cameras=[
                    {
                        "id": "c",
                        "url": "rtsp://h/s",
                        "checks": {"offline_after": "5x", "fozen_after": "3s"},
                    }
                ]
            )
        ]
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.problems == [
        f"sites[0].cameras[0].checks.offline_after: {DURATION}",
        "sites[0].cameras[0].checks.fozen_after: unknown key",
    ]


# --- other parsing rules --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({1: "alarm", 0: "normal"}, {"1": "alarm", "0": "normal"}),
        (
            {True: "alarm", False: "normal", None: "fault"},
            {"true": "alarm", "false": "normal", "null": "fault"},
        ),
        ({"ALARM": "alarm", 2.5: "fault"}, {"ALARM": "alarm", "2.5": "fault"}),
    ],
)
def test_json_mapping_values_keep_the_json_spelling_of_yaml_scalars(
    values: dict[object, str], expected: dict[str, str]
) -> None:
    sensor = {
        "id": "s",
        "kind": "smoke",
        "format": "json",
        "mapping": {"state": "a.b", "values": values},
    }
    mapping = parse_config({"sites": [site(sensors=[sensor])]}).sites[0].sensors[0].mapping
    assert mapping is not None and mapping.values == expected


def test_dump_uses_the_config_spelling_and_loads_again(secrets_env: None) -> None:
    config = load_config(EXAMPLE)
    dumped = config.model_dump(mode="json")
    assert dumped["sites"][1]["opening_hours"]["mon"] == ["07:45-12:15", "13:15-17:30"]
    assert opening_hours(sun="00:00-24:00").model_dump(mode="json")["sun"] == ["00:00-24:00"]
    again = Config.model_validate(dumped)  # camera credentials excepted: a dump never has them
    assert [s.opening_hours for s in again.sites] == [s.opening_hours for s in config.sites]
    assert [s.sensors for s in again.sites] == [s.sensors for s in config.sites]
    assert (again.defaults, again.alerts) == (config.defaults, config.alerts)


def test_models_built_in_python_check_duplicates_too() -> None:
    door = SensorConfig(id="porte", kind="door")
    with pytest.raises(ValidationError) as info:
        SiteConfig(id="clg-a", name="A", uai="0781582W", sensors=(door, door))
    (error,) = info.value.errors()
    assert error["loc"] == ("sensors", 1, "id")
    assert error["msg"] == "duplicate sensor id 'porte' (already used by sensors[0])"


def test_config_is_frozen() -> None:
    config = parse_config({})
    with pytest.raises(ValueError, match="frozen"):
        config.api = config.api  # type: ignore[misc]


# --- secrets ------------------------------------------------------------------------------------


def assert_no_secret(text: str) -> None:
    assert PASSWORD not in text
    assert "S3cr3t" not in text


def test_secrets_never_shown_by_a_valid_config(secrets_env: None) -> None:
    config = load_config(EXAMPLE)
    assert config.sites[0].cameras[0].url.reveal().count(PASSWORD) == 1  # it is there...

    for text in (repr(config), str(config), config.model_dump_json(), str(config.model_dump())):
        assert_no_secret(text)  # ...and never shown
    dumped = config.model_dump(mode="json")
    assert dumped["mqtt"]["password"] == "***"
    assert dumped["sites"][0]["cameras"][0]["url"] == "rtsp://***@10.78.1.20:554/stream2"
    # The query string goes too: some cameras take credentials there.
    assert (
        dumped["sites"][0]["cameras"][2]["url"] == "rtsp://***@10.78.1.22:554/axis-media/media.amp"
    )


def test_secret_dsn_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIE_TEST_VAR", PASSWORD)
    config = parse_config({"database": {"dsn": "postgresql://vigie:${VIGIE_TEST_VAR}@db:5432/v"}})
    for text in (repr(config), str(config), config.model_dump_json()):
        assert_no_secret(text)
    assert '"dsn":"postgresql://***@db:5432/v"' in config.model_dump_json()


@pytest.mark.parametrize("name", ["secret-fields.yaml", "bad-camera-url.yaml", "bad-yaml.yaml"])
def test_secrets_never_shown_by_a_config_error(name: str) -> None:
    path = BROKEN / name
    assert PASSWORD in path.read_text(encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    # No chained library error either: pydantic's own text quotes the input values.
    assert err.__cause__ is None and err.__context__ is None
    assert_no_secret(str(err))
    assert_no_secret(repr(err))
    assert_no_secret("\n".join(err.problems))
    assert_no_secret("".join(traceback.format_exception(err)))


def test_secret_from_env_not_shown_when_its_field_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIE_TEST_VAR", PASSWORD)
    raw = {
        "database": {"dsn": "mysql://vigie:${VIGIE_TEST_VAR}@db/v"},
        "sites": [site(cameras=[{"id": "c", "url": "http://u:${VIGIE_TEST_VAR}@h/s"}])],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    paths = [p.split(": ")[0] for p in info.value.problems]
    assert paths == ["database.dsn", "sites[0].cameras[0].url"]
    assert_no_secret(str(info.value))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"rtsp://admin:{PASSWORD}@10.78.1.20:554/stream2", "rtsp://***@10.78.1.20:554/stream2"),
        ("rtsp://admin@10.78.1.20:554/stream2", "rtsp://***@10.78.1.20:554/stream2"),
        ("rtsp://10.78.1.20:554/stream2", "rtsp://10.78.1.20:554/stream2"),
        (
            f"rtsp://10.78.1.20/media.amp?user=admin&password={PASSWORD}",
            "rtsp://10.78.1.20/media.amp",
        ),
        (f"rtsps://admin:{PASSWORD}@cam.test/live", "rtsps://***@cam.test/live"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_secret_repr_and_str() -> None:
    secret = Secret(PASSWORD)
    assert repr(secret) == "Secret('***')" and str(secret) == "***" and f"{secret}" == "***"
    assert secret.reveal() == PASSWORD


@pytest.mark.parametrize(("value", "expected"), [
    ("0.5s", "api.token_snapshot_every: "),  # below a second: the database read each time
    ("2h", "api.token_snapshot_every: "),  # above an hour: a stale snapshot for too long
    ("often", "api.token_snapshot_every: "),
])
def test_bad_token_snapshot_interval_is_reported_on_its_path(value: str, expected: str) -> None:
    problem = one_problem({"sites": [site()], "api": {"token_snapshot_every": value}})
    assert problem.startswith(expected), problem
