"""``churnwatch run`` as an operator starts it: metrics per process, SIGTERM, recovery
partitions, the simulator source, argument errors."""

from __future__ import annotations

import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
from churnwatch.state.redis_store import RedisStore
from live_servers import (
    CHURNWATCH,
    LiveRedis,
    finish,
    free_port,
    kill_hard,
    live_redis,  # noqa: F401
    start_run,
    tail,
    wait_for,
    write_config,
)

from churnwatch.cli import main
from churnwatch.core.config import load_config
from churnwatch.live import ensure_recovery_partitions
from churnwatch.publish import Publisher

SERVING = re.compile(r"process (\d+) serves metrics on (http://\S+)/metrics")


def _scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
        return reply.read().decode()


def _events(n: int) -> list[dict[str, object]]:
    return [{"customer_id": f"c{i % 40}", "type": "order" if i % 3 else "visit",
             "ts": 1_700_000_000 + i * 3600, "amount": 20.0} for i in range(n)]


def test_each_process_of_a_cluster_serves_metrics_on_its_own_port_business_only_on_0(
        live_redis: LiveRedis, tmp_path: Path) -> None:
    config_path = write_config(tmp_path / "c.toml", "m", state={"shards": 4},
                               source={"stream_partitions": 2})
    config = load_config(config_path)
    Publisher(live_redis.url, config).publish(_events(300))
    port = free_port()
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    processes = [start_run(["--redis-url", live_redis.url, "--config", str(config_path),
                            "--metrics-port", str(port), "-i", str(i), "-a", addresses], logs[i])
                 for i in range(2)]
    try:
        urls = {}
        for i, log in enumerate(logs):
            found = wait_for(lambda log=log: SERVING.search(log.read_text()), 60,
                             f"process {i} to serve metrics")
            urls[int(found.group(1))] = found.group(2)
        assert urls == {0: f"http://127.0.0.1:{port}", 1: f"http://127.0.0.1:{port + 1}"}
        store = RedisStore(live_redis.url, config.shards, "m")
        wait_for(lambda: store.customer_count() == 40, 60, "every customer scored")

        def scored(text: str) -> float:
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith('churnwatch_events_scored_total{source="redis"}'))

        texts = [_scrape(urls[i]) for i in range(2)]
        assert all("churnwatch_build_info" in text for text in texts)
        wait_for(lambda: sum(scored(_scrape(urls[i])) for i in range(2)) == 300, 30,
                 "300 events scored across the two processes")
        assert "churnwatch_customers{" in texts[0]
        assert "churnwatch_customers{" not in texts[1]
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process, log in zip(processes, logs, strict=True):
            finish(process, 30, log)
    finally:
        for process in processes:
            kill_hard(process)


def test_sigterm_stops_a_run_cleanly(live_redis: LiveRedis, tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    process = start_run(["--redis-url", live_redis.url, "--metrics-port", "0"], log)
    try:
        wait_for(lambda: SERVING.search(log.read_text()), 60, "the metrics server")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, tail(log)
    finally:
        kill_hard(process)


def test_an_empty_recovery_dir_gets_partitions_once(tmp_path: Path) -> None:
    directory = tmp_path / "recovery"
    assert ensure_recovery_partitions(directory, 3)
    assert sorted(p.name for p in directory.glob("part-*.sqlite3")) == [
        "part-0.sqlite3", "part-1.sqlite3", "part-2.sqlite3"]
    assert not ensure_recovery_partitions(directory, 5)
    assert len(list(directory.glob("part-*.sqlite3"))) == 3


def test_the_simulator_source_runs_through_the_same_flow(live_redis: LiveRedis,
                                                         tmp_path: Path) -> None:
    config_path = write_config(tmp_path / "s.toml", "sim")
    log = tmp_path / "run.log"
    process = start_run(["--redis-url", live_redis.url, "--config", str(config_path),
                         "--source", "simulator", "--customers", "25", "--days", "60",
                         "--seconds-per-day", "0", "--no-metrics"], log)
    finish(process, 120, log)
    assert "clock event" in log.read_text()
    store = RedisStore(live_redis.url, load_config(config_path).shards, "sim")
    assert store.customer_count() == 25


@pytest.mark.parametrize("args, message", [
    (["-i", "0"], "-i/--process-id and -a/--addresses go together"),
    (["-i", "2", "-a", "h:1;h:2"], "not an index"),
    (["--workers", "0"], "--workers"),
])
def test_bad_cluster_arguments_are_usage_errors(args: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--redis-url", "redis://127.0.0.1:1/0", *args]) == 2
    assert message in capsys.readouterr().err


def test_run_without_redis_for_the_redis_source_says_what_is_missing(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHURNWATCH_REDIS_URL", raising=False)
    monkeypatch.delenv("CHURNWATCH_REDIS_URL_FILE", raising=False)
    assert main(["run", "--source", "redis"]) == 2
    assert "--redis-url" in capsys.readouterr().err


def test_run_help_lists_the_scaling_options() -> None:
    result = subprocess.run([CHURNWATCH, "run", "--help"], capture_output=True, text=True,
                            check=True)
    for option in ("--process-id", "--addresses", "--recovery-dir", "--clock", "--source"):
        assert option in result.stdout
