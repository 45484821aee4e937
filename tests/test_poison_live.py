"""Poison on every source: the real ``churnwatch run`` against a real redis-server, a Kafka
partition on a real Kafka-protocol broker (tansu), and a replayed file.

Each poison payload sits between two good events on one partition (issue 10, section 1).
The run must apply both good events and dead-letter every poison entry exactly once, and keep
doing so across a ``kill -9`` and a restart with ``--recovery-dir`` (the restart re-reads the
entries after its last snapshot: a poison entry that crashed the flow would crash it again).
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import msgpack
import pytest
import redis
from bytewax.testing import run_main
from churnwatch.dataflows.flow import FlowSettings, build_flow
from churnwatch.dataflows.kafka_source import KafkaEventSource
from churnwatch.state.redis_store import RedisStore
from live_servers import (
    LiveRedis,
    finish,
    kill_hard,
    live_redis,  # noqa: F401
    running_redis,
    start_run,
    tail,
    tansu,  # noqa: F401
    wait_for,
    write_config,
)

from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.events import TOO_LARGE_KEPT_BYTES
from churnwatch.replay import run_flow

pytestmark = pytest.mark.slow

STREAM = "churnwatch:events:0"
TS = 1_700_000_000
RUN_TIMEOUT = 120.0

POISON: list[bytes] = [
    b'{"customer_id": "c1", "type": ["order"], "ts": 1700000000}',
    b'{"customer_id": "c1", "type": "campaign_sent", "ts": 1700000000, "channel": {"a": 1}}',
    b'{"customer_id": "c1", "type": "support_ticket", "ts": 1700000000, "severity": []}',
    b'{"customer_id": "c1", "type": "feedback", "ts": 1700000000, "score": 5, "kind": [1]}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"customer_id": "c1", "type": "order", "ts": 1' + b"0" * 300 + b', "amount": 1}',
    b'{"customer_id": "c1", "type": "order", "ts": 1700000000, "amount": 1' + b"0" * 300 + b"}",
    b'{"customer_id": "\\ud800", "type": "visit", "ts": 1700000000}',
    b'{"customer_id": "c1", "event_id": "\\udc00", "type": "visit", "ts": 1700000000}',
    b'{"customer_id": "c\xff", "type": "visit", "ts": 1700000000}',
    b'{"customer_id": "c1", "type": "visit", "ts": 1e30}',
    b'{"customer_id": "c1", "type": "order", "ts": 1700000000, "amount": 1e308}',
    b'{"customer_id": "c1", "type": "order", "ts": 1700000000, "amount": NaN}',
    b"\xc1\xff\x00\x93 binary",
    msgpack.packb({"customer_id": "c1", "type": "visit", "ts": msgpack.ExtType(7, b"x")}),
    msgpack.packb({"customer_id": b"\xff", "type": "visit", "ts": TS}),
    b"\xdf\xff\xff\xff\xff",
    b'{"customer_id": "c1", "type": "visit", "ts": 1, "x": "' + b"y" * (1 << 20) + b'"}',
]


def order(n: int) -> bytes:
    return json.dumps({"customer_id": "c1", "type": "order", "ts": TS + n * 86400,
                       "amount": 10.0}).encode()


def publish_poison_between_good_events(client: redis.Redis, first: int) -> list[str]:
    """``good, poison..., good`` on one partition; returns the poison entries' positions."""
    client.xadd(STREAM, {"e": order(first)})
    ids = [client.xadd(STREAM, {"e": payload}).decode() for payload in POISON]
    client.xadd(STREAM, {"e": order(first + 1)})
    return [f"{STREAM}:{i}" for i in ids]


def run_args(server: LiveRedis, workdir: Path, prefix: str, *extra: str) -> list[str]:
    config = write_config(workdir / f"{prefix}.toml", prefix, state={"shards": 4},
                          source={"stream_partitions": 1})
    return ["--redis-url", server.url, "--config", str(config), "--clock", "event",
            "--no-metrics", *extra]


def orders_of_c1(server: LiveRedis, prefix: str) -> int:
    store = RedisStore(server.url, 4, prefix, max_wait=5)
    try:
        state = store.customer("c1")
        return 0 if state is None else state.purchases.orders
    finally:
        store.close()


def dead_positions(client: redis.Redis, prefix: str) -> list[str]:
    return [f[b"position"].decode() for _, f in client.xrange(f"{prefix}:deadletters")]


def test_poison_between_two_good_events_is_dead_lettered_and_both_are_applied(
        tmp_path: Path) -> None:
    with running_redis(persist=False) as server:
        client = server.client()
        poison = publish_poison_between_good_events(client, 0)
        log = tmp_path / "run.log"
        out = tmp_path / "dead.jsonl"
        finish(start_run(run_args(server, tmp_path, "p", "--stop-at-end",
                                  "--dead-letters-out", str(out)), log), RUN_TIMEOUT, log)
        assert orders_of_c1(server, "p") == 2, tail(log)
        assert sorted(dead_positions(client, "p")) == sorted(poison)
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["position"] for r in records) == sorted(poison)
        assert {r["reason"] for r in records} <= {"invalid_json", "invalid_msgpack",
                                                  "invalid_field", "unknown_type",
                                                  "not_an_object", "too_large"}
        assert "Traceback" not in log.read_text()


def test_poison_is_dead_lettered_once_across_kill_9_and_restart(tmp_path: Path) -> None:
    with running_redis(persist=False) as server:
        client = server.client()
        poison = publish_poison_between_good_events(client, 0)
        out = tmp_path / "dead.jsonl"
        # No snapshot before the kill: the restart re-reads every entry, poison included.
        args = run_args(server, tmp_path, "k", "--recovery-dir", str(tmp_path / "recovery"),
                        "--snapshot-interval", "3600", "--dead-letters-out", str(out))
        log = tmp_path / "run.log"
        for round_ in range(2):
            process = start_run(args, log)
            try:
                wait_for(lambda r=round_, p=process: orders_of_c1(server, "k") == 2 * (r + 1)
                         or p.poll() is not None, RUN_TIMEOUT, "both good events")
                assert process.poll() is None, f"the run exited:\n{tail(log)}"
                time.sleep(1.0)  # let the dead-letter sink write, then crash
            finally:
                kill_hard(process)
            assert sorted(dead_positions(client, "k")) == sorted(poison), tail(log)
            # More poison between two more good events for the run after the kill.
            poison += publish_poison_between_good_events(client, 2 * (round_ + 1))
        finish(start_run([*args, "--stop-at-end"], log), RUN_TIMEOUT, log)
        assert orders_of_c1(server, "k") == 6
        assert sorted(dead_positions(client, "k")) == sorted(poison)
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["position"] for r in records) == sorted(poison)
        assert "Traceback" not in log.read_text()


def _exact_payload(record: dict[str, object]) -> bytes:
    text = str(record.get("payload", ""))
    return base64.b64decode(text) if record.get("payload_encoding") == "base64" else \
        text.encode()


def test_poison_on_a_kafka_partition_is_dead_lettered_and_both_good_events_applied(
        tansu: str, live_redis: LiveRedis) -> None:  # noqa: F811
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": tansu})
    for future in admin.create_topics([NewTopic("poison", 1, 1)]).values():
        future.result(timeout=30)
    producer = Producer({"bootstrap.servers": tansu, "message.max.bytes": 4 << 20})
    payloads = [order(0), *POISON, order(1)]
    for payload in payloads:
        producer.produce("poison", value=payload, partition=0)
    assert producer.flush(30) == 0

    config = ChurnwatchConfig(shards=4, stream_partitions=1, key_prefix="kp")
    settings = FlowSettings(config, lambda: RedisStore(live_redis.url, 4, "kp", max_wait=10),
                            clock="event")
    run_main(build_flow(settings, KafkaEventSource(tansu, "poison", batch_size=5, tail=False),
                        "kafka"))
    assert orders_of_c1(live_redis, "kp") == 2
    store = RedisStore(live_redis.url, 4, "kp")
    dead = store.dead_letters(100)
    store.close()
    assert sorted(str(d["position"]) for d in dead) == sorted(
        f"poison:0:{n}" for n in range(1, len(POISON) + 1))
    by_offset = {int(str(d["offset"])): d for d in dead}
    for n, payload in enumerate(POISON, start=1):
        kept = payload if by_offset[n]["reason"] != "too_large" else \
            payload[:TOO_LARGE_KEPT_BYTES]
        assert _exact_payload(by_offset[n]) == kept


def test_poison_lines_in_a_replayed_file_are_dead_lettered_and_both_good_events_applied(
        live_redis: LiveRedis, tmp_path: Path) -> None:  # noqa: F811
    lines = [order(0), *(p for p in POISON if b"\n" not in p), order(1)]
    path = tmp_path / "poison.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    config = ChurnwatchConfig(shards=4, stream_partitions=1, key_prefix="fp")
    run_flow(FlowSettings(config, lambda: RedisStore(live_redis.url, 4, "fp", max_wait=10),
                          clock="event"), [str(path)])
    assert orders_of_c1(live_redis, "fp") == 2
    store = RedisStore(live_redis.url, 4, "fp")
    dead = store.dead_letters(100)
    store.close()
    assert sorted(int(str(d["offset"])) for d in dead) == list(range(2, len(lines)))
    for record in dead:
        line = lines[int(str(record["offset"])) - 1]
        if record["reason"] == "too_large":  # its first bytes only
            assert _exact_payload(record) == line[:TOO_LARGE_KEPT_BYTES]
        else:
            assert _exact_payload(record) == line
