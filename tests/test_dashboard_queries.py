"""Every dashboard query against a real Prometheus.

`test_every_dashboard_query_parses` needs only the `prometheus` binary: an empty Prometheus
still rejects a malformed expression with HTTP 400. `test_every_dashboard_query_returns_data`
scrapes a live `churnwatch run` (the `monitor_metrics_url` fixture of tests/conftest.py) with the
rules of metrics/rules loaded, and checks that each query whose metrics the monitor exposes
returns series.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import yaml
from test_dashboards import (
    ROOT,
    dashboard_queries,
    metric_names,
    recorded_metrics,
    rule_groups,
)

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus binary not on PATH")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """A Prometheus server on a free loopback port, with its data in a temporary directory."""

    def __init__(self, workdir: Path, config: dict) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("prometheus not ready")

    def query(self, expr: str) -> tuple[int, dict[str, Any]]:
        """HTTP status and decoded body of an instant query (400 for a parse error)."""
        body = urlencode({"query": expr}).encode()
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query", data=body, timeout=30) as reply:
                return reply.status, json.load(reply)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def empty_prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path, {"global": {"scrape_interval": "15s"}})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_every_dashboard_query_parses(empty_prometheus: Prometheus) -> None:
    rejected = []
    for uid, title, expr in dashboard_queries():
        status, reply = empty_prometheus.query(expr)
        if status != 200:
            rejected.append((uid, title, expr, reply.get("error")))
    assert not rejected, "\n".join(map(str, rejected))


def _exposed_metric_names(metrics_url: str) -> set[str]:
    names = set()
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        exposition = reply.read().decode()
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


def test_every_dashboard_query_returns_data(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    try:
        metrics_url: str = request.getfixturevalue("monitor_metrics_url")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py provides no monitor_metrics_url fixture yet")
    target = urlsplit(metrics_url)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in sorted((ROOT / "metrics" / "rules").glob("*.yml"))],
        "scrape_configs": [
            {
                "job_name": "churnwatch",
                "metrics_path": target.path or "/metrics",
                "static_configs": [{"targets": [target.netloc]}],
            }
        ],
    }
    server = Prometheus(tmp_path, config)
    try:
        server.wait_ready()
        deadline = time.monotonic() + 30
        while not server.query("churnwatch_build_info")[1]["data"]["result"]:
            assert time.monotonic() < deadline, "prometheus never scraped the monitor"
            time.sleep(0.5)
        time.sleep(5)  # several scrapes, so that rate() and increase() have two samples

        exposed = _exposed_metric_names(metrics_url)
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
            status, reply = server.query(expr)
            if status != 200 or reply["status"] != "success":
                failed.append((uid, title, expr, reply))
                continue
            names = metric_names(expr)
            # Queries on series the monitor does not expose yet (counters of events that did not
            # happen, ALERTS) or on rules evaluated every few minutes may rightly be empty.
            expected = names and names <= exposed and not names & recorded
            if expected and not reply["data"]["result"]:
                empty.append((uid, title, expr))
        assert not failed, "\n".join(map(str, failed))
        assert not empty, (
            "queries with no series although their metrics are exposed:\n"
            + "\n".join(map(str, empty))
        )
    finally:
        server.stop()
