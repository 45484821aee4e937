"""SIGTERM and Ctrl-C stop ``run``, ``demo`` and ``stack`` cleanly: the last batches are
committed, ``run --recovery-dir`` takes a final snapshot so a restart re-reads nothing, no Rust
panic line and no Python traceback, exit status 0 after SIGTERM and 130 after Ctrl-C.

Every child is started with SIGINT reset to its default: background jobs of a non-interactive
shell (CI) start with SIGINT ignored, and a test must see what a terminal user sees.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest
from live_servers import (
    CHURNWATCH,
    LiveRedis,
    kill_hard,
    live_redis,  # noqa: F401
    tail,
    tansu,  # noqa: F401
    wait_for,
    write_config,
)
from servers import free_port

from churnwatch.core.config import load_config
from churnwatch.publish import Publisher
from churnwatch.simulator import DAY, ShopSimulator

SERVING = re.compile(r"process 0 serves metrics on (http://\S+)/metrics")
NOISE = ("panicked", "Traceback", "BytewaxRuntimeError", "PanicException")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(argv: Sequence[str], log: Path, **kwargs: object) -> subprocess.Popen[bytes]:
    """A churnwatch command as a terminal user starts it, its output going to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen([CHURNWATCH, *argv], stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                preexec_fn=_default_sigint, **kwargs)  # type: ignore[call-overload]


def stopped_with(process: subprocess.Popen[bytes], sig: int, log: Path, timeout: float = 60
                 ) -> int:
    process.send_signal(sig)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_hard(process)
        raise AssertionError(f"no exit {timeout:g} s after {sig!r}:\n{tail(log)}") from None


def assert_clean(log: Path) -> None:
    text = log.read_text(errors="replace")
    for word in NOISE:
        assert word not in text, f"{word!r} in the output:\n{text[-3000:]}"


def counter(metrics_url: str, name: str, source: str = "redis") -> float:
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    found = re.search(rf'^{name}{{source="{source}"}} (\S+)$', text, re.MULTILINE)
    assert found, f"{name} missing from {metrics_url}"
    return float(found.group(1))


def serving(log: Path) -> str:
    found = wait_for(lambda: SERVING.search(log.read_text(errors="replace")), 60,
                     f"the metrics server (log {log})")
    return f"{found.group(1)}/metrics"


def test_sigterm_commits_and_snapshots_so_a_restart_rereads_nothing_and_ctrl_c_exits_130(
        live_redis: LiveRedis, tmp_path: Path) -> None:
    config_path = write_config(tmp_path / "c.toml", "stop", state={"shards": 4},
                               source={"stream_partitions": 2})
    config = load_config(config_path)
    shop = ShopSimulator(customers=150, seed=3, start=time.time() - 120 * DAY, days=120)
    published = Publisher(live_redis.url, config).publish(shop.events())
    assert published > 3000
    # One snapshot interval of an hour: without a final snapshot a restart would re-read all.
    argv = ["-v", "run", "--redis-url", live_redis.url, "--config", str(config_path),
            "--metrics-port", "0", "--recovery-dir", str(tmp_path / "recovery"),
            "--snapshot-interval", "3600"]
    first_log = tmp_path / "first.log"
    first = start(argv, first_log)
    try:
        metrics = serving(first_log)
        wait_for(lambda: counter(metrics, "churnwatch_events_received_total") == published,
                 90, f"all {published} events read")
        assert stopped_with(first, signal.SIGTERM, first_log) == 0, tail(first_log)
    finally:
        kill_hard(first)
    assert_clean(first_log)
    assert "stopped (SIGTERM)" in first_log.read_text()

    second_log = tmp_path / "second.log"
    second = start(argv, second_log)
    try:
        metrics = serving(second_log)
        Publisher(live_redis.url, config).publish(
            [{"customer_id": "after-restart", "type": "order", "ts": time.time() - 60,
              "amount": 5.0}])
        wait_for(lambda: counter(metrics, "churnwatch_events_scored_total") == 1, 60,
                 "the one new event scored")
        # Only the new event was read: nothing before the SIGTERM came back.
        assert counter(metrics, "churnwatch_events_received_total") == 1
        assert counter(metrics, "churnwatch_events_duplicate_total") == 0
        assert stopped_with(second, signal.SIGINT, second_log) == 130, tail(second_log)
    finally:
        kill_hard(second)
    assert_clean(second_log)
    assert "stopped (Ctrl-C)" in second_log.read_text()


def test_a_kafka_run_stops_cleanly_and_resumes_after_what_it_read(
        live_redis: LiveRedis, tansu: str, tmp_path: Path) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = "clean-stop"
    admin = AdminClient({"bootstrap.servers": tansu})
    for future in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        future.result(timeout=30)

    def produce(events: list[dict[str, object]]) -> None:
        producer = Producer({"bootstrap.servers": tansu, "linger.ms": 5})
        for event in events:
            producer.produce(topic, value=json.dumps(event).encode(),
                             key=str(event["customer_id"]).encode())
        assert producer.flush(30) == 0

    now = time.time()
    first_events = [{"customer_id": f"k{i % 50}", "type": "order", "ts": now - 86400 * (300 - i),
                     "amount": 10.0} for i in range(300)]
    produce(first_events)
    config_path = write_config(tmp_path / "k.toml", "kstop", state={"shards": 4},
                               source={"stream_partitions": 2, "kafka_brokers": tansu,
                                       "kafka_topic": topic})
    argv = ["run", "--source", "kafka", "--redis-url", live_redis.url, "--config",
            str(config_path), "--metrics-port", "0", "--recovery-dir",
            str(tmp_path / "recovery"), "--snapshot-interval", "3600"]
    first_log = tmp_path / "first.log"
    first = start(argv, first_log)
    try:
        metrics = serving(first_log)
        wait_for(lambda: counter(metrics, "churnwatch_events_received_total", "kafka") == 300,
                 90, "all 300 messages read")
        assert stopped_with(first, signal.SIGTERM, first_log) == 0, tail(first_log)
    finally:
        kill_hard(first)
    assert_clean(first_log)
    second_log = tmp_path / "second.log"
    second = start(argv, second_log)
    try:
        metrics = serving(second_log)
        produce([{"customer_id": "k-new", "type": "order", "ts": now, "amount": 1.0}])
        wait_for(lambda: counter(metrics, "churnwatch_events_scored_total", "kafka") == 1, 90,
                 "the new message scored")
        assert counter(metrics, "churnwatch_events_received_total", "kafka") == 1
        assert stopped_with(second, signal.SIGINT, second_log) == 130, tail(second_log)
    finally:
        kill_hard(second)
    assert_clean(second_log)


def test_a_simulator_run_on_a_private_redis_stops_cleanly_on_ctrl_c(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHURNWATCH_REDIS_URL", raising=False)
    monkeypatch.delenv("CHURNWATCH_REDIS_URL_FILE", raising=False)
    log = tmp_path / "sim.log"
    run = start(["run", "--source", "simulator", "--customers", "40", "--seconds-per-day",
                 "0.05", "--metrics-port", "0"], log)
    try:
        metrics = serving(log)
        wait_for(lambda: counter(metrics, "churnwatch_events_scored_total", "simulator") > 0,
                 60, "events scored")
        assert stopped_with(run, signal.SIGINT, log) == 130, tail(log)
    finally:
        kill_hard(run)
    assert_clean(log)
    assert "state in a private Redis (discarded on exit)" in log.read_text()
    assert "stopped (Ctrl-C)" in log.read_text()


@pytest.mark.parametrize(("sig", "code", "said"), [(signal.SIGINT, 130, "Ctrl-C"),
                                                   (signal.SIGTERM, 0, "SIGTERM")])
def test_demo_stops_cleanly_and_removes_its_private_redis(
        sig: int, code: int, said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    monkeypatch.delenv("CHURNWATCH_REDIS_URL", raising=False)
    monkeypatch.delenv("CHURNWATCH_REDIS_URL_FILE", raising=False)
    log = tmp_path / "demo.log"
    demo = start(["demo", "--customers", "60", "--days", "400", "--seconds-per-day", "0.05",
                  "--refresh", "0.5"], log)
    try:
        banner = wait_for(lambda: re.search(r"state in unix://(\S+)/redis\.sock;",
                                            log.read_text(errors="replace")), 60, "the banner")
        wait_for(lambda: "scored" in log.read_text(errors="replace").split(banner.group(0))[1],
                 30, "a first summary")
        assert stopped_with(demo, sig, log) == code, tail(log)
    finally:
        kill_hard(demo)
    assert_clean(log)
    assert f"demo stopped ({said})" in log.read_text()
    assert not Path(banner.group(1)).exists(), "the private Redis's directory is left behind"


def _processes_mentioning(*needles: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        if any(n in cmdline for n in needles) and "pytest" not in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_stack_stops_every_service_on_a_signal(sig: int, code: int, tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("redis", "metrics", "prometheus", "alertmanager")}
    log = tmp_path / "stack.out"
    workdir = tmp_path / "stack"
    stack = start(["stack", "--workdir", str(workdir), "--customers", "50",
                   "--seconds-per-day", "0.2", "--redis-port", str(ports["redis"]),
                   "--metrics-port", str(ports["metrics"]),
                   "--prometheus-port", str(ports["prometheus"]),
                   "--alertmanager-port", str(ports["alertmanager"])], log)
    try:
        wait_for(lambda: "churnwatch stack is up" in log.read_text(errors="replace")
                 or stack.poll() is not None, 120, "the stack to come up")
        assert stack.poll() is None, tail(log)
        assert stopped_with(stack, sig, log, timeout=90) == code, tail(log)
    finally:
        kill_hard(stack)
    assert_clean(log)
    assert "churnwatch stack: stopped" in log.read_text()
    left = _processes_mentioning(str(workdir), f"127.0.0.1:{ports['redis']}/",
                                 f"--port {ports['redis']} ")
    assert not left, f"services left running: {left}"
    monitor_log = (workdir / "logs" / "churnwatch.log").read_text(errors="replace")
    assert "stopped (SIGTERM)" in monitor_log, monitor_log[-2000:]
    assert_clean(workdir / "logs" / "churnwatch.log")
    if sys.platform == "linux":
        assert all(p not in _listening_ports() for p in ports.values())


def _listening_ports() -> set[int]:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
