"""A batch that holds only dead letters is its partition's commit (issue 21, item 13).

Such a batch reaches no shard, so no shard commits it; before, ``churnwatch status`` showed the
partition's "last commit" from the batch before, however long ago, and
``churnwatch_last_commit_timestamp_seconds`` did not move either (an alert on it would take a
monitor reading nothing but bad input for a stalled one). A real ``churnwatch run`` on a real
redis-server, resumed with ``--recovery-dir`` so the second run reads the dead letters only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from churnwatch.metrics.pipeline import PipelineMetrics
from live_servers import finish, start_run, write_config
from prometheus_client import CollectorRegistry
from redis_server import redis_server, redis_url  # noqa: F401

from churnwatch.cli import main
from churnwatch.core.events import InvalidEvent

STREAM = "dlc:events:0"
RUN_TIMEOUT = 120.0


def _status(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["status", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_batch_of_dead_letters_only_advances_the_partitions_last_commit(
        redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    config = write_config(tmp_path / "c.toml", "dlc", source={"stream_partitions": 1,
                                                             "stream_prefix": "dlc:events"})
    args = ["--redis-url", redis_url, "--config", str(config)]
    run = [*args, "--source", "redis", "--clock", "event", "--stop-at-end", "--no-metrics",
           "--recovery-dir", str(tmp_path / "recovery")]
    client = redis.Redis.from_url(redis_url)
    order = {"customer_id": "c1", "type": "order", "ts": time.time() - 86400, "amount": 5.0}
    client.xadd(STREAM, {"e": json.dumps(order).encode()})
    finish(start_run(run, tmp_path / "first.log"), RUN_TIMEOUT, tmp_path / "first.log")
    first = _status(args, capsys)
    (part,) = first["partitions"]
    assert part["lag"] == 0 and part["last_commit"] is not None

    time.sleep(1.5)
    sent_at = time.time()
    for line in (b"{broken", b'{"customer_id": "c1", "type": "teleport", "ts": 1700000000}'):
        client.xadd(STREAM, {"e": line})
    finish(start_run(run, tmp_path / "second.log"), RUN_TIMEOUT, tmp_path / "second.log")
    second = _status(args, capsys)
    (part,) = second["partitions"]
    assert second["dead_letters"] == 2
    assert part["lag"] == 0 and part["committed_id"] == part["end_id"]
    assert part["last_commit"] >= sent_at, (part, first["partitions"])
    assert second["last_commit"] >= sent_at
    client.close()


def test_dead_letters_written_move_the_last_commit_gauge() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry, process_collector=False, sources=("redis",))
    metrics.decoded("redis", 1, [], None)
    started = registry.get_sample_value("churnwatch_last_commit_timestamp_seconds",
                                        {"source": "redis"})
    assert started is not None
    time.sleep(0.05)
    before = time.time()
    metrics.dead_lettered("redis", [InvalidEvent("invalid_json", "not JSON", "s:1-0", b"{")])
    after = registry.get_sample_value("churnwatch_last_commit_timestamp_seconds",
                                      {"source": "redis"})
    assert after is not None and after >= before > started
