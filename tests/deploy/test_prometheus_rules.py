"""deploy/prometheus: the real promtool checks the scrape config and the rules, runs their
unit tests, and those unit tests are shown to catch a broken rule. Every alert has a
severity vigie uses and a runbook that exists in the README."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.conftest import DEPLOY, ROOT, run, tool

PROM = DEPLOY / "prometheus"
SEVERITIES = {"critical", "major", "minor", "info"}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM / "rules.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def readme_anchors() -> set[str]:
    return {github_anchor(m.group(1))
            for m in re.finditer(r"^#+\s+(.+)$", (ROOT / "README.md").read_text(), re.M)}


def test_promtool_checks_the_scrape_config_and_its_rule_file() -> None:
    result = run(tool("promtool"), "check", "config", "prometheus.yml", cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_checks_the_rules() -> None:
    result = run(tool("promtool"), "check", "rules", "rules.yml", cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    result = run(tool("promtool"), "test", "rules", "rules_test.yml", cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert rule is exercised by at least one unit test.
    tested = set(re.findall(r"alertname:\s*(\w+)", (PROM / "rules_test.yml").read_text()))
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert alerts <= tested, f"alert rules without a unit test: {sorted(alerts - tested)}"


def test_the_unit_tests_catch_a_rule_that_pages_too_early(tmp_path: Path) -> None:
    shutil.copy(PROM / "rules_test.yml", tmp_path)
    rules = (PROM / "rules.yml").read_text()
    broken = rules.replace("expr: vigie_camera_up == 0\n        for: 15m",
                           "expr: vigie_camera_up == 0\n        for: 5m")
    assert broken != rules
    (tmp_path / "rules.yml").write_text(broken)
    result = run(tool("promtool"), "test", "rules", "rules_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "VigieCameraDown" in result.stdout + result.stderr


def test_every_alert_has_a_severity_and_a_runbook_section_in_the_readme() -> None:
    anchors = readme_anchors()
    alerts = [r for r in _rules() if "alert" in r]
    assert len(alerts) >= 6
    for rule in alerts:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "README.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no README section #{anchor}"


def test_recording_rules_follow_the_naming_convention() -> None:
    for rule in _rules():
        if "record" in rule:
            level, metric, operations = rule["record"].split(":")
            assert level and metric.startswith("vigie") and operations, rule["record"]
