"""The Prometheus rules and the Alertmanager configuration, checked with the real tools.

promtool checks and unit-tests metrics/rules/ (cases in metrics/rules/tests/), amtool checks
metrics/alertmanager/alertmanager.yml and its routing cases (routes_test.yml), and a real
Alertmanager shows that a page holds back the tickets of its segment.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import (  # noqa: F401 (fixtures, requested by name)
    ALERTMANAGER_CONFIG,
    REPO_ROOT,
    RULE_FILES,
    RULES_DIR,
    AlertmanagerServer,
    alertmanager_factory_fixture,
    alertmanager_fixture,
    find_binary,
    wait_until,
    webhook_receiver_fixture,
)

RULE_TESTS = sorted((RULES_DIR / "tests").glob("*.yml"))
ROUTES_TEST = ALERTMANAGER_CONFIG.parent / "routes_test.yml"
RUNBOOKS = REPO_ROOT / "docs" / "runbooks.md"
RUNBOOK_URL = "https://github.com/churnwatch/churnwatch/blob/main/docs/runbooks.md#"
WORKLIST_URL = (
    "http://127.0.0.1:9464/?segment={{ $labels.segment | urlquery }}&tier=at_risk"
)
TOOL_TIMEOUT_SECONDS = 120


def run_tool(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool or amtool; a missing binary fails the test with how to install it."""
    command = [find_binary(name), *args]
    return subprocess.run(
        command, capture_output=True, text=True, cwd=cwd, timeout=TOOL_TIMEOUT_SECONDS
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"{' '.join(result.args)} exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(RULES_DIR / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def recording_rules() -> list[dict[str, Any]]:
    groups = load_yaml(RULES_DIR / "recording.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def runbook_anchors() -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", RUNBOOKS.read_text(), flags=re.M)
    return {github_anchor(h) for h in headings}


ALERT_NAMES = [rule["alert"] for rule in alert_rules()]


# ------------------------------------------------------------------------------ promtool


def test_promtool_accepts_the_rule_files():
    result = run_tool("promtool", "check", "rules", *map(str, RULE_FILES))

    assert result.returncode == 0, describe(result)
    for path, count in ((RULE_FILES[0], len(recording_rules())), (RULE_FILES[1], len(ALERT_NAMES))):
        assert f"Checking {path}\n  SUCCESS: {count} rules found" in result.stdout, describe(result)


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(test_file: Path):
    # Relative rule_files in the test files resolve from the test file's directory.
    result = run_tool("promtool", "test", "rules", test_file.name, cwd=test_file.parent)

    assert result.returncode == 0, describe(result)
    assert "SUCCESS" in result.stdout and "FAILED" not in result.stdout, describe(result)


def test_rule_unit_tests_exist():
    assert [p.name for p in RULE_TESTS], f"no promtool tests in {RULES_DIR / 'tests'}"


def test_every_alert_has_unit_tests_that_fire_and_that_stay_quiet():
    fired: set[str] = set()
    quiet: set[str] = set()
    for test_file in RULE_TESTS:
        for case in load_yaml(test_file)["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])

    assert sorted(set(ALERT_NAMES) - fired) == [], "alerts never tested firing"
    assert sorted(set(ALERT_NAMES) - quiet) == [], "alerts never tested staying quiet"
    assert sorted((fired | quiet) - set(ALERT_NAMES)) == [], "tests of unknown alerts"


def test_every_fired_alert_in_unit_tests_states_all_its_annotations():
    annotations_of = {rule["alert"]: set(rule.get("annotations", {})) for rule in alert_rules()}
    for test_file in RULE_TESTS:
        for case in load_yaml(test_file)["tests"]:
            for check in case.get("alert_rule_test", []):
                for expected in check.get("exp_alerts") or []:
                    stated = set(expected.get("exp_annotations", {}))
                    assert stated == annotations_of[check["alertname"]], (
                        f"{test_file.name}: {check['alertname']} at {check['eval_time']}"
                    )


# ------------------------------------------------------------------- conventions of rules


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_has_routing_labels_and_annotations(rule: dict[str, Any]):
    labels, annotations = rule.get("labels", {}), rule.get("annotations", {})

    assert labels.get("severity") in {"page", "ticket"}
    assert labels.get("team") in {"customer-success", "platform"}
    assert annotations.get("summary") and annotations.get("description")
    assert rule["alert"].startswith("Churnwatch")
    if labels["team"] == "customer-success":
        # Customer-success alerts are per segment and link to its worklist.
        assert "segment" in rule["expr"]
        assert annotations.get("worklist_url") == WORKLIST_URL
    else:
        assert "worklist_url" not in annotations


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_links_to_an_existing_runbook_section(rule: dict[str, Any]):
    url = rule["annotations"]["runbook_url"]

    assert url.startswith(RUNBOOK_URL)
    anchor = url.removeprefix(RUNBOOK_URL)
    assert anchor == rule["alert"].lower(), "one runbook section per alert, named after it"
    assert anchor in runbook_anchors(), f"no heading with anchor #{anchor} in {RUNBOOKS}"


def test_recording_rules_are_named_level_metric_operations():
    pattern = re.compile(r"^[a-z][a-z_]*:churnwatch_[a-z0-9_]+:[a-z0-9_]+$")
    names = [rule["record"] for rule in recording_rules()]

    assert [n for n in names if not pattern.match(n)] == []
    assert len(names) == len(set(names)), "a recording rule is defined twice"


def all_expressions() -> list[tuple[str, str]]:
    rules = recording_rules() + alert_rules()
    return [(rule.get("record") or rule["alert"], rule["expr"]) for rule in rules]


@pytest.mark.parametrize(("name", "expr"), all_expressions(), ids=lambda v: str(v)[:60])
def test_counter_functions_read_counters_and_deriv_reads_gauges(name: str, expr: str):
    counter_functions = re.findall(r"\b(?:rate|irate|increase)\(\s*([\w:]+)", expr)
    for metric in counter_functions:
        assert re.search(r"_(total|bucket|count|sum)$", metric), f"{name}: rate of gauge {metric}"
    for metric in re.findall(r"\b(?:deriv|delta|predict_linear)\(\s*([\w:]+)", expr):
        assert not metric.endswith("_total"), f"{name}: deriv/delta of counter {metric}"


def test_rules_read_only_metrics_of_the_catalog():
    catalog = set(
        re.findall(r"`(churnwatch_[a-z0-9_]+)`", (REPO_ROOT / "docs/metrics.md").read_text())
    )
    read = set()
    for _, expr in all_expressions():
        # Raw metric names only: recorded series contain colons.
        for name in re.findall(r"(?<![\w:])(churnwatch_[a-z0-9_]+)(?![\w:])", expr):
            read.add(re.sub(r"_(bucket|count|sum)$", "", name))

    assert read, "no metric found in the rules"
    assert sorted(read - catalog) == [], "metrics missing from docs/metrics.md"


# ------------------------------------------------------------------------------ amtool


def test_amtool_accepts_the_alertmanager_config():
    result = run_tool("amtool", "check-config", str(ALERTMANAGER_CONFIG))

    assert result.returncode == 0, describe(result)
    assert "SUCCESS" in result.stdout, describe(result)


def test_alertmanager_config_holds_no_secret():
    config = load_yaml(ALERTMANAGER_CONFIG)
    text = ALERTMANAGER_CONFIG.read_text()

    assert config["global"]["slack_api_url_file"].startswith("/")
    assert "hooks.slack.com" not in text
    for receiver in config["receivers"]:
        for slack in receiver.get("slack_configs", []):
            assert "api_url" not in slack, f"{receiver['name']}: use slack_api_url_file"


def routing_cases() -> list[dict[str, Any]]:
    return list(load_yaml(ROUTES_TEST)["cases"])


def routing_case_id(case: dict[str, Any]) -> str:
    labels = case["labels"]
    return "-".join(str(labels.get(k, "none")) for k in ("alertname", "team", "severity"))


@pytest.mark.parametrize("case", routing_cases(), ids=routing_case_id)
def test_alert_is_routed_to_the_expected_receivers(case: dict[str, Any]):
    receivers = ",".join(case["receivers"])
    labels = [f"{key}={value}" for key, value in case["labels"].items()]

    result = run_tool(
        "amtool",
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        f"--verify.receivers={receivers}",
        *labels,
    )

    assert result.returncode == 0, describe(result)
    assert result.stdout.strip() == receivers, describe(result)


def test_every_alert_has_a_routing_case_with_its_labels():
    cases = [case["labels"] for case in routing_cases()]
    for rule in alert_rules():
        wanted = {"alertname": rule["alert"], **rule["labels"]}
        assert any(wanted.items() <= case.items() for case in cases), rule["alert"]


# ----------------------------------------------------------------- inhibition, for real


def cs_alert(name: str, severity: str, segment: str) -> dict[str, Any]:
    labels = {"alertname": name, "severity": severity, "team": "customer-success"}
    return {"labels": {**labels, "segment": segment}}


def platform_alert(name: str, severity: str, **labels: str) -> dict[str, Any]:
    return {"labels": {"alertname": name, "severity": severity, "team": "platform", **labels}}


def test_a_page_holds_back_the_tickets_of_its_segment_or_source(
    alertmanager: AlertmanagerServer,
):
    # Inhibition does not depend on receivers: any Alertmanager with this config will do.
    alertmanager.post_alerts(
        [
            cs_alert("ChurnwatchHighValueCustomersAtRiskBurst", "page", segment="smb"),
            cs_alert("ChurnwatchHighValueCustomerAtRisk", "ticket", segment="smb"),
            cs_alert("ChurnwatchHighValueCustomerAtRisk", "ticket", segment="retail"),
            platform_alert("ChurnwatchPipelineStalled", "page", source="kafka", instance="a"),
            platform_alert("ChurnwatchSourceLagHigh", "ticket", source="kafka"),
            platform_alert("ChurnwatchTargetDown", "page", instance="b", job="churnwatch"),
            platform_alert("ChurnwatchRedisErrors", "ticket", operation="write_state"),
        ]
    )

    def states() -> dict[tuple[str, str], str] | None:
        held = alertmanager.alerts()
        if len(held) < 7:
            return None
        found = {}
        for item in held:
            labels = item["labels"]
            where = labels.get("segment") or labels.get("source") or labels.get("operation", "")
            found[(labels["alertname"], where)] = item["status"]["state"]
        # The inhibitor learns of the pages asynchronously: wait until it has.
        if found[("ChurnwatchHighValueCustomerAtRisk", "smb")] != "suppressed":
            return None
        if found[("ChurnwatchSourceLagHigh", "kafka")] != "suppressed":
            return None
        return found

    found = wait_until(states, timeout=20, what="Alertmanager to inhibit the tickets")

    assert found == {
        ("ChurnwatchHighValueCustomersAtRiskBurst", "smb"): "active",
        ("ChurnwatchHighValueCustomerAtRisk", "smb"): "suppressed",
        ("ChurnwatchHighValueCustomerAtRisk", "retail"): "active",
        ("ChurnwatchPipelineStalled", "kafka"): "active",
        ("ChurnwatchSourceLagHigh", "kafka"): "suppressed",
        ("ChurnwatchTargetDown", ""): "active",
        ("ChurnwatchRedisErrors", "write_state"): "active",
    }
