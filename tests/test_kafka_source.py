"""The Kafka source against a real Kafka-protocol broker (tansu): the same state as a file
replay, dead letters that name topic, partition and offset, and resume from a snapshot."""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import pytest
from bytewax.testing import run_main
from churnwatch.dataflows.flow import FlowSettings, build_flow
from churnwatch.dataflows.kafka_source import KafkaEventSource
from churnwatch.state.redis_store import RedisStore
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from live_servers import LiveRedis, live_redis, tansu  # noqa: F401

from bench.workload import write_jsonl
from churnwatch.core.config import ChurnwatchConfig
from churnwatch.publish import customer_of, read_lines
from churnwatch.replay import run_flow

PARTITIONS = 4


def _create_topic(broker: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": broker})
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        future.result(timeout=30)


def _produce(broker: str, topic: str, lines: list[bytes]) -> None:
    """Keyed by customer id with librdkafka's default partitioner, which is the publisher's
    rule (docs/operations.md): crc32(customer_id) % partitions; unreadable lines to 0."""
    producer = Producer({"bootstrap.servers": broker, "linger.ms": 5})
    placed: list[tuple[str | None, int]] = []

    def delivered(err: object, msg: object) -> None:
        assert err is None, err
        key = msg.key()  # type: ignore[attr-defined]
        placed.append((key.decode() if key else None, msg.partition()))  # type: ignore[attr-defined]

    for line in lines:
        cid = customer_of(line)
        if cid is None:
            producer.produce(topic, value=line.strip(), partition=0, on_delivery=delivered)
        else:
            producer.produce(topic, value=line.strip(), key=cid.encode(), on_delivery=delivered)
    assert producer.flush(30) == 0
    assert len(placed) == len(lines)
    for cid, partition in placed:
        assert partition == (zlib.crc32(cid.encode()) % PARTITIONS if cid else 0)


def _config(prefix: str) -> ChurnwatchConfig:
    return ChurnwatchConfig(shards=8, stream_partitions=PARTITIONS, key_prefix=prefix,
                            batch_size=500, kafka_topic="events")


def _states(store: RedisStore) -> dict[str, list[object]]:
    out = {}
    for cid, state in store.iter_customers():
        state.offsets = {}  # partition ids name the source
        out[cid] = state.to_wire()
    return out


def test_a_kafka_topic_gives_the_same_state_as_replaying_the_file(
        tansu: str, live_redis: LiveRedis, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", 3000, 200, seed=5, poison_every=500)
    lines = list(read_lines([str(path)]))
    _create_topic(tansu, "events")
    _produce(tansu, "events", lines)

    config = _config("k")
    settings = FlowSettings(config, lambda: RedisStore(live_redis.url, config.shards, "k"),
                            clock="event")
    run_main(build_flow(settings, KafkaEventSource(tansu, "events", batch_size=400, tail=False),
                        "kafka"))
    store = RedisStore(live_redis.url, config.shards, "k")

    replayed = _config("f")
    run_flow(FlowSettings(replayed, lambda: RedisStore(live_redis.url, replayed.shards, "f"),
                          clock="event"), [str(path)])
    reference = RedisStore(live_redis.url, replayed.shards, "f")
    want = _states(reference)
    assert len(want) > 150
    assert _states(store) == want

    dead = store.dead_letters(100)
    assert len(dead) == 3000 // 500
    for record in dead:
        topic, partition, offset = str(record["position"]).split(":")
        assert topic == "events" and 0 <= int(partition) < PARTITIONS and int(offset) >= 0
        assert record["reason"] and record["payload"]


def test_a_kafka_partition_resumes_after_its_snapshot(tansu: str) -> None:
    _create_topic(tansu, "resume")
    producer = Producer({"bootstrap.servers": tansu})
    for n in range(30):
        producer.produce("resume", value=json.dumps({"n": n}).encode(), partition=1)
    producer.flush(30)
    source = KafkaEventSource(tansu, "resume", batch_size=12, tail=False)
    assert sorted(source.list_parts()) == [f"{p}-resume" for p in range(PARTITIONS)]

    def drain(partition: object, limit: int) -> list[object]:
        got: list[object] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if len(got) >= limit:
                break
            try:
                got.extend(partition.next_batch())  # type: ignore[attr-defined]
            except StopIteration:
                break
        return got

    first = source.build_part("input", "1-resume", None)
    messages = drain(first, 12)
    snapshot = first.snapshot()
    first.close()
    assert snapshot == len(messages)
    message = messages[0]
    assert message.partition == "kafka:resume:1" and message.source == "kafka"  # type: ignore[attr-defined]
    assert message.position == "resume:1:0" and message.offset == 0  # type: ignore[attr-defined]
    assert message.published_at is not None  # type: ignore[attr-defined]

    resumed = source.build_part("input", "1-resume", snapshot)
    rest = drain(resumed, 30)
    resumed.close()
    numbers = [json.loads(m.payload)["n"] for m in messages + rest]  # type: ignore[attr-defined]
    assert numbers == list(range(30))


def test_an_empty_partition_asks_to_be_polled_later(tansu: str) -> None:
    _create_topic(tansu, "quiet")
    source = KafkaEventSource(tansu, "quiet", tail=True)
    partition = source.build_part("input", "0-quiet", None)
    try:
        assert partition.next_batch() == []
        assert partition.next_awake() is not None
    finally:
        partition.close()


@pytest.mark.parametrize("brokers", ["a:1,b:2", ["a:1", "b:2"]])
def test_brokers_may_be_a_comma_separated_string(brokers: object) -> None:
    assert KafkaEventSource(brokers, "t").brokers == ["a:1", "b:2"]  # type: ignore[arg-type]


def test_churnwatch_run_reads_a_kafka_topic(tansu: str, live_redis: LiveRedis,
                                             tmp_path: Path) -> None:
    from live_servers import finish, start_run, write_config

    lines = [json.dumps({"customer_id": f"k{i % 7}", "type": "visit",
                         "ts": 1_700_000_000 + i}).encode() for i in range(50)]
    _create_topic(tansu, "live")
    _produce(tansu, "live", lines)
    config = write_config(tmp_path / "k.toml", "kr",
                          source={"kind": "kafka", "kafka_brokers": tansu, "kafka_topic": "live",
                                  "stream_partitions": PARTITIONS},
                          state={"shards": PARTITIONS})
    log = tmp_path / "run.log"
    finish(start_run(["--redis-url", live_redis.url, "--config", str(config), "--clock", "event",
                      "--stop-at-end", "--no-metrics"], log), 120, log)
    assert "source kafka" in log.read_text()
    store = RedisStore(live_redis.url, PARTITIONS, "kr")  # one shard per topic partition
    assert store.customer_count() == 7
