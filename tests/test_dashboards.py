"""The Grafana dashboards: generated JSON committed, well-formed, and built on the metric catalog.

Grafana itself is not available here, so the dashboards are checked statically; every PromQL
query is sent to a real Prometheus in test_dashboard_queries.py (via `dashboard_queries()`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from churnwatch.dashboards import build, push

ROOT = Path(__file__).resolve().parents[1]
JSON_DIR = ROOT / "dashboards" / "json"
CATALOG = ROOT / "docs" / "metrics.md"
RULES_DIR = ROOT / "metrics" / "rules"
RECORDING_RULES = RULES_DIR / "recording.yml"

PROMETHEUS_UID = "churnwatch-prometheus"
EXPECTED_UIDS = {"churnwatch-overview", "churnwatch-segment", "churnwatch-pipeline"}
WORKLIST_URL = "http://127.0.0.1:9464/?segment=${segment}&tier=at_risk"

# Series Prometheus itself creates, which no catalog lists.
PROMETHEUS_BUILTIN_SERIES = {"ALERTS", "ALERTS_FOR_STATE", "up"}

# Values for Grafana's variables when a query is sent to Prometheus directly.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
TEMPLATE_VARIABLE_VALUE = ".+"  # a regex every value of a template variable matches

VARIABLE_REFERENCE = re.compile(
    r"\$\{(?P<braced>[A-Za-z_][\w.]*)(?::[\w]+)?\}|\$(?P<plain>[A-Za-z_]\w*)|\[\[(?P<old>\w+)\]\]"
)


# --- reading the committed dashboards -------------------------------------------------------


def committed_dashboards() -> list[dict[str, Any]]:
    return [
        json.loads(path.read_text(encoding="utf-8")) for path in sorted(JSON_DIR.glob("*.json"))
    ]


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for item in dashboard.get("panels", []):
        yield item
        yield from item.get("panels", [])


def visual_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (item for item in all_panels(dashboard) if item["type"] != "row")


def declared_variables(dashboard: dict[str, Any]) -> set[str]:
    return {variable["name"] for variable in dashboard.get("templating", {}).get("list", [])}


def substitute_variables(expr: str, declared: set[str]) -> str:
    """The query as Prometheus would receive it from Grafana, with representative values."""

    def value(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain") or match.group("old")
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        if name in declared:
            return TEMPLATE_VARIABLE_VALUE
        raise AssertionError(f"query uses the undeclared variable ${name}: {expr}")

    return VARIABLE_REFERENCE.sub(value, expr)


def dashboard_queries() -> Iterator[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL with variables substituted) for every query.

    Panel targets and Prometheus annotations; `$segment`-like template variables become a regex
    matching any value, `$__rate_interval` 1m, `$__interval` 15s and `$__range` 5m.
    """
    for dashboard in committed_dashboards():
        declared = declared_variables(dashboard)
        for annotation in dashboard.get("annotations", {}).get("list", []):
            if annotation.get("expr"):
                yield (
                    dashboard["uid"],
                    f"annotation: {annotation['name']}",
                    substitute_variables(annotation["expr"], declared),
                )
        for item in visual_panels(dashboard):
            for target in item.get("targets", []):
                yield (
                    dashboard["uid"],
                    item["title"],
                    substitute_variables(target["expr"], declared),
                )


# --- PromQL metric names and the catalog ---------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "atan2", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, labels and keywords left out)."""
    text = _STRING.sub('""', expr)
    text = _LABEL_MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub("", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


def catalog_metrics() -> set[str]:
    """Metric names of docs/metrics.md's tables, with the series of each histogram."""
    names: set[str] = set()
    for line in CATALOG.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        found = re.findall(r"`([A-Za-z_:][\w:]*)`", cells[0])
        names.update(found)
        if len(cells) > 1 and cells[1] == "histogram":
            names.update(
                f"{name}{suffix}" for name in found for suffix in ("_bucket", "_sum", "_count")
            )
    return names


def rule_groups() -> list[tuple[Path, dict[str, Any]]]:
    rules = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text(encoding="utf-8")).get("groups", []):
            rules.extend((path, rule) for rule in group.get("rules", []))
    return rules


def recorded_metrics() -> set[str]:
    if not RECORDING_RULES.exists():
        return set()
    return {
        rule["record"]
        for path, rule in rule_groups()
        if path == RECORDING_RULES and "record" in rule
    }


def known_metrics() -> set[str]:
    return catalog_metrics() | recorded_metrics() | PROMETHEUS_BUILTIN_SERIES


# --- the generated JSON is the committed JSON ------------------------------------------------


def test_committed_json_matches_generated_dashboards() -> None:
    stale = build.stale_files(JSON_DIR)
    assert not stale, f"run `python -m churnwatch.dashboards.build`: stale {stale}"


def test_check_flag_fails_on_drift_and_passes_after_rebuild(tmp_path: Path) -> None:
    assert build.main(["--out", str(tmp_path)]) == 0
    assert build.main(["--check", "--out", str(tmp_path)]) == 0

    edited = tmp_path / "churnwatch-overview.json"
    edited.write_text(edited.read_text(encoding="utf-8").replace("Customers", "Clients", 1))
    (tmp_path / "churnwatch-removed.json").write_text("{}\n")
    assert build.main(["--check", "--out", str(tmp_path)]) == 1

    assert build.main(["--out", str(tmp_path)]) == 0
    assert build.main(["--check", "--out", str(tmp_path)]) == 0
    assert {path.name for path in tmp_path.iterdir()} == {f"{uid}.json" for uid in EXPECTED_UIDS}


def test_module_entry_point_checks_the_committed_json() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "churnwatch.dashboards.build", "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr


def test_json_is_sorted_pretty_and_stable() -> None:
    for path in JSON_DIR.glob("*.json"):
        text = path.read_text(encoding="utf-8")
        assert (
            text
            == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        )
    assert build.generate() == build.generate()


# --- structure -------------------------------------------------------------------------------


def test_dashboards_have_the_fixed_unique_uids() -> None:
    uids = [dashboard["uid"] for dashboard in committed_dashboards()]
    assert sorted(uids) == sorted(EXPECTED_UIDS)
    for path in JSON_DIR.glob("*.json"):
        assert json.loads(path.read_text(encoding="utf-8"))["uid"] == path.stem


def test_panel_ids_are_unique_within_each_dashboard() -> None:
    for dashboard in committed_dashboards():
        ids = [item["id"] for item in all_panels(dashboard)]
        assert all(isinstance(panel_id, int) and panel_id > 0 for panel_id in ids), ids
        assert len(ids) == len(set(ids)), f"{dashboard['uid']}: duplicate panel ids {ids}"


def test_panels_fit_the_24_column_grid_without_overlapping() -> None:
    for dashboard in committed_dashboards():
        occupied: dict[tuple[int, int], str] = {}
        for item in dashboard["panels"]:
            pos = item["gridPos"]
            assert pos["x"] >= 0 and pos["w"] > 0 and pos["h"] > 0, (
                dashboard["uid"],
                item["title"],
            )
            assert pos["x"] + pos["w"] <= 24, (dashboard["uid"], item["title"], pos)
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    other = occupied.setdefault((x, y), item["title"])
                    assert other == item["title"], (
                        f"{dashboard['uid']}: {item['title']!r} overlaps {other!r}"
                    )


def test_every_panel_has_a_unit_a_description_and_queries() -> None:
    for dashboard in committed_dashboards():
        for item in visual_panels(dashboard):
            where = f"{dashboard['uid']}: {item.get('title')!r}"
            assert item.get("title"), where
            assert item.get("description", "").strip(), f"{where} has no description"
            assert item.get("fieldConfig", {}).get("defaults", {}).get("unit"), (
                f"{where} has no unit"
            )
            assert item.get("targets"), f"{where} has no query"


def test_every_query_names_the_provisioned_prometheus() -> None:
    for dashboard in committed_dashboards():
        for item in visual_panels(dashboard):
            assert item["datasource"]["uid"] == PROMETHEUS_UID, item["title"]
            ref_ids = [target["refId"] for target in item["targets"]]
            assert all(ref_ids) and len(ref_ids) == len(set(ref_ids)), (item["title"], ref_ids)
            for target in item["targets"]:
                assert target["datasource"] == {"type": "prometheus", "uid": PROMETHEUS_UID}, item[
                    "title"
                ]
                assert target["expr"].strip(), item["title"]
        for annotation in dashboard["annotations"]["list"]:
            assert annotation["datasource"]["uid"] == PROMETHEUS_UID, annotation["name"]
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == PROMETHEUS_UID, variable["name"]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_every_variable_used_is_declared() -> None:
    for dashboard in committed_dashboards():
        declared = declared_variables(dashboard)
        used = set()
        for text in _strings(dashboard):
            for match in VARIABLE_REFERENCE.finditer(text):
                name = match.group("braced") or match.group("plain") or match.group("old")
                if not name.startswith("__"):  # Grafana's own: __interval, __field.labels.x, ...
                    used.add(name.split(".")[0])
        assert used <= declared, f"{dashboard['uid']} uses undeclared {sorted(used - declared)}"
        assert declared <= used, f"{dashboard['uid']} declares unused {sorted(declared - used)}"


def test_overview_segment_variable_is_multi_with_all() -> None:
    (overview,) = [d for d in committed_dashboards() if d["uid"] == "churnwatch-overview"]
    (segment,) = overview["templating"]["list"]
    assert segment["name"] == "segment"
    assert segment["query"] == "label_values(churnwatch_customers, segment)"
    assert segment["multi"] is True and segment["includeAll"] is True


def test_at_risk_panels_link_to_the_worklist() -> None:
    (overview,) = [d for d in committed_dashboards() if d["uid"] == "churnwatch-overview"]
    at_risk = [item for item in visual_panels(overview) if "at risk" in item["title"].lower()]
    assert len(at_risk) >= 3
    for item in at_risk:
        assert WORKLIST_URL in [link["url"] for link in item.get("links", [])], item["title"]


def test_overview_annotates_firing_alerts() -> None:
    (overview,) = [d for d in committed_dashboards() if d["uid"] == "churnwatch-overview"]
    exprs = [annotation["expr"] for annotation in overview["annotations"]["list"]]
    assert exprs and all(expr.startswith('ALERTS{alertstate="firing"') for expr in exprs)


# --- metric names ----------------------------------------------------------------------------


def test_metric_names_reads_only_metrics() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, source) (rate(a_seconds_bucket{source=~"x|y"}[5m])))'
        " / on (instance) group_left (version) b_info and c:d:e offset 1h"
        ' or time() - max(f_timestamp_seconds{reason="too late"}) * 1e3 > bool 2'
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_info", "c:d:e", "f_timestamp_seconds"}
    assert metric_names("sum without (tier) (rate(x_total[$__rate_interval:1m]))") == {"x_total"}


def test_catalog_is_read() -> None:
    catalog = catalog_metrics()
    assert {"churnwatch_customers", "churnwatch_processing_latency_seconds_bucket"} <= catalog
    assert "process_resident_memory_bytes" in catalog


def test_every_metric_in_the_dashboards_is_in_the_catalog() -> None:
    known = known_metrics()
    unknown = {
        (uid, title, name)
        for uid, title, expr in dashboard_queries()
        for name in metric_names(expr)
        if name not in known
    }
    for dashboard in committed_dashboards():
        for variable in dashboard["templating"]["list"]:
            match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable.get("query", ""))
            assert match, variable
            if match.group(1) not in known:
                unknown.add((dashboard["uid"], f"${variable['name']}", match.group(1)))
    assert not unknown, f"not in docs/metrics.md nor metrics/rules/recording.yml: {sorted(unknown)}"


def test_every_metric_in_the_rules_is_in_the_catalog() -> None:
    rules = rule_groups()
    if not rules:
        pytest.skip("no rule files in metrics/rules yet")
    known = known_metrics()
    unknown = {
        (path.name, rule.get("record") or rule.get("alert"), name)
        for path, rule in rules
        for name in metric_names(str(rule["expr"]))
        if name not in known
    }
    assert not unknown, f"not in docs/metrics.md nor metrics/rules/recording.yml: {sorted(unknown)}"


def test_dashboard_queries_substitute_every_variable() -> None:
    queries = list(dashboard_queries())
    assert {uid for uid, _, _ in queries} == EXPECTED_UIDS
    for uid, title, expr in queries:
        assert "$" not in expr and "[[" not in expr, (uid, title, expr)


# --- push ------------------------------------------------------------------------------------


class _RecordingGrafana(BaseHTTPRequestHandler):
    """Answers like Grafana's folder and dashboard API and records every request."""

    requests: list[dict[str, Any]] = []
    folders: set[str] = set()

    def _record(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        request = {
            "method": self.command,
            "path": self.path,
            "authorization": self.headers.get("Authorization"),
            "body": body,
        }
        self.requests.append(request)
        return request

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        request = self._record()
        uid = request["path"].rsplit("/", 1)[-1]
        if request["path"].startswith("/api/folders/") and uid in self.folders:
            self._reply(200, {"uid": uid, "title": uid})
        else:
            self._reply(404, {"message": "folder not found"})

    def do_POST(self) -> None:  # noqa: N802
        request = self._record()
        if request["path"] == "/api/folders":
            self.folders.add(request["body"]["uid"])
            self._reply(200, {"uid": request["body"]["uid"], "title": request["body"]["title"]})
        elif request["path"] == "/api/dashboards/db":
            uid = request["body"]["dashboard"]["uid"]
            self._reply(200, {"status": "success", "uid": uid, "url": f"/d/{uid}/x", "version": 1})
        else:
            self._reply(404, {"message": "not found"})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def recording_grafana() -> Iterator[tuple[str, type[_RecordingGrafana]]]:
    handler = type("Handler", (_RecordingGrafana,), {"requests": [], "folders": set()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_push_creates_the_folder_once_and_overwrites_each_dashboard(recording_grafana) -> None:
    url, grafana = recording_grafana

    assert push.push_dashboards(url, "secret-token") == sorted(EXPECTED_UIDS)
    assert push.push_dashboards(url, "secret-token") == sorted(EXPECTED_UIDS)

    assert all(request["authorization"] == "Bearer secret-token" for request in grafana.requests)
    folder_creations = [r for r in grafana.requests if r["path"] == "/api/folders"]
    assert [r["body"] for r in folder_creations] == [{"title": "churnwatch", "uid": "churnwatch"}]
    uploads = [r["body"] for r in grafana.requests if r["path"] == "/api/dashboards/db"]
    assert len(uploads) == 2 * len(EXPECTED_UIDS)
    committed = {dashboard["uid"]: dashboard for dashboard in committed_dashboards()}
    for upload in uploads:
        assert upload["overwrite"] is True and upload["folderUid"] == "churnwatch"
        dashboard = upload["dashboard"]
        assert dashboard["id"] is None
        assert {**dashboard, "id": None} == {**committed[dashboard["uid"]], "id": None}


def test_push_with_basic_auth_uses_the_given_folder(recording_grafana) -> None:
    url, grafana = recording_grafana
    push.push_dashboards(url, None, folder="Customer Success", basic_auth=("admin", "pw"))
    assert all(request["authorization"].startswith("Basic ") for request in grafana.requests)
    assert {
        r["body"]["folderUid"] for r in grafana.requests if r["path"] == "/api/dashboards/db"
    } == {"customer-success"}


def test_push_without_credentials_is_refused() -> None:
    with pytest.raises(ValueError, match="GRAFANA_TOKEN"):
        push.push_dashboards("http://127.0.0.1:1", None)
