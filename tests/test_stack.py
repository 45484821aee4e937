"""`churnwatch stack` starts the whole native chain: Prometheus ends up with churnwatch's data and
the project's rules loaded, Alertmanager answers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from redis_server import free_port


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_stack_brings_up_the_chain_with_data_and_rules(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("redis", "metrics", "prometheus", "alertmanager")}
    process = subprocess.Popen(
        [sys.executable, "-m", "churnwatch.cli", "stack", "--workdir", str(tmp_path),
         "--duration", "240", "--seconds-per-day", "0.2", "--customers", "200",
         "--redis-port", str(ports["redis"]), "--metrics-port", str(ports["metrics"]),
         "--prometheus-port", str(ports["prometheus"]),
         "--alertmanager-port", str(ports["alertmanager"])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    prometheus = f"http://127.0.0.1:{ports['prometheus']}"
    try:
        deadline = time.monotonic() + 180
        customers = 0.0
        while time.monotonic() < deadline and process.poll() is None:
            try:
                query = urllib.parse.quote("sum(max by (segment, tier) (churnwatch_customers))")
                result = get(f"{prometheus}/api/v1/query?query={query}")["data"]["result"]
                customers = float(result[0]["value"][1]) if result else 0.0
            except OSError:
                customers = 0.0
            if customers > 0:
                break
            time.sleep(2)
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        assert customers > 0
        groups = get(f"{prometheus}/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert any(r["type"] == "alerting" for r in rules)
        assert all(r["health"] in ("ok", "unknown") for r in rules), [
            (r["name"], r.get("lastError")) for r in rules if r["health"] == "err"]
        status = get(f"http://127.0.0.1:{ports['alertmanager']}/api/v2/status")
        assert status["cluster"]["status"] in ("disabled", "ready")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    logs = tmp_path / "logs"
    assert {p.name for p in logs.iterdir()} >= {"redis.log", "churnwatch.log", "prometheus.log",
                                               "alertmanager.log", "simulator.log"}
