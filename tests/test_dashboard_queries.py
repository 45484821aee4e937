"""Every dashboard query against a real Prometheus.

`test_every_dashboard_query_parses` needs only the `prometheus` binary: an empty Prometheus
still rejects a malformed expression. `test_every_dashboard_query_returns_data` scrapes a live
`churnwatch run` (the `monitor_metrics_url` fixture of tests/conftest.py) with the rules of
metrics/rules loaded, and checks that each query whose metrics the monitor exposes returns
series. Prometheus is started by tests/servers.py, like everywhere else in the suite.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from servers import PromQLError, running_prometheus
from test_dashboards import (
    ROOT,
    dashboard_queries,
    metric_names,
    recorded_metrics,
    rule_groups,
)


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    rejected = []
    with running_prometheus(workdir=tmp_path / "prometheus") as prometheus:
        for uid, title, expr in dashboard_queries():
            try:
                prometheus.query(expr)
            except PromQLError as error:
                rejected.append((uid, title, expr, str(error)))
    assert not rejected, "\n".join(map(str, rejected))


def _exposed_metric_names(metrics_url: str) -> set[str]:
    names = set()
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        exposition = reply.read().decode()
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


def test_every_dashboard_query_returns_data(monitor_metrics_url: str, tmp_path: Path) -> None:
    rule_files = sorted((ROOT / "metrics" / "rules").glob("*.yml"))
    with running_prometheus([monitor_metrics_url], rule_files=rule_files,
                            workdir=tmp_path / "prometheus") as server:
        deadline = time.monotonic() + 30
        while not server.query("churnwatch_build_info"):
            assert time.monotonic() < deadline, "prometheus never scraped the monitor"
            time.sleep(0.5)
        time.sleep(5)  # several scrapes, so that rate() and increase() have two samples

        exposed = _exposed_metric_names(monitor_metrics_url)
        recorded = recorded_metrics()
        used = {name for _, _, expr in dashboard_queries() for name in metric_names(expr)}
        for _, rule in rule_groups():
            used |= metric_names(str(rule.get("expr", "")))
        builtin = {"ALERTS", "ALERTS_FOR_STATE", "up", "time", "vector", "scalar"}
        missing = sorted(used - exposed - recorded - builtin)
        assert not missing, f"metric names used in dashboards or rules but absent from a real " \
                            f"/metrics scrape: {missing}"
        failed, empty = [], []
        for uid, title, expr in dashboard_queries():
            try:
                result = server.query(expr)
            except PromQLError as error:
                failed.append((uid, title, expr, str(error)))
                continue
            names = metric_names(expr)
            # Queries on series the monitor does not expose yet (counters of events that did not
            # happen, ALERTS) or on rules evaluated every few minutes may rightly be empty.
            expected = names and names <= exposed and not names & recorded
            if expected and not result:
                empty.append((uid, title, expr))
        assert not failed, "\n".join(map(str, failed))
        assert not empty, (
            "queries with no series although their metrics are exposed:\n"
            + "\n".join(map(str, empty))
        )

