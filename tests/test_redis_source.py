"""The Redis Streams source: the same scores as a file replay, poison messages dead-lettered
without stalling a partition, resume from a snapshot, outages waited out."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import msgpack
import pytest
from bytewax.testing import run_main
from churnwatch.dataflows.flow import FlowSettings, build_flow
from churnwatch.dataflows.redis_source import RedisStreamSource, id_offset, stream_names
from churnwatch.state.base import shard_of
from churnwatch.state.redis_store import RedisStore
from live_servers import LiveRedis, live_redis  # noqa: F401

from bench.workload import write_jsonl
from churnwatch.core.config import ChurnwatchConfig
from churnwatch.publish import Publisher, read_lines
from churnwatch.replay import run_flow


def _config(prefix: str, **kwargs: object) -> ChurnwatchConfig:
    values: dict[str, object] = {"shards": 8, "stream_partitions": 4, "key_prefix": prefix,
                                 "batch_size": 500}
    values.update(kwargs)
    return ChurnwatchConfig(**values)  # type: ignore[arg-type]


def _run_redis_flow(server: LiveRedis, config: ChurnwatchConfig) -> RedisStore:
    store = RedisStore(server.url, config.shards, config.key_prefix)
    settings = FlowSettings(config, lambda: RedisStore(server.url, config.shards,
                                                       config.key_prefix), clock="event")
    source = RedisStreamSource(server.url, stream_names(config.stream_prefix,
                                                        config.stream_partitions),
                               batch_size=config.batch_size, stop_at_end=True)
    run_main(build_flow(settings, source, "redis"))
    return store


def _states(store: RedisStore) -> dict[str, list[object]]:
    out = {}
    for cid, state in store.iter_customers():
        state.offsets = {}  # partition ids name the source: file vs stream
        out[cid] = state.to_wire()
    return out


def test_streams_give_the_same_state_as_replaying_the_file(live_redis: LiveRedis,
                                                          tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", 4000, 300, seed=11)
    streamed = _config("s")
    Publisher(live_redis.url, streamed, pipeline_size=500).publish(read_lines([str(path)]))
    store = _run_redis_flow(live_redis, streamed)

    replayed = _config("f")
    settings = FlowSettings(replayed, lambda: RedisStore(live_redis.url, replayed.shards, "f"),
                            clock="event")
    run_flow(settings, [str(path)])
    reference = RedisStore(live_redis.url, replayed.shards, "f")

    got, want = _states(store), _states(reference)
    assert len(want) > 250
    assert got == want
    for shard in range(streamed.shards):
        a, b = store.load_shard(shard), reference.load_shard(shard)
        assert (a.watermark, a.counters, a.priors.to_wire()) == \
            (b.watermark, b.counters, b.priors.to_wire())
    # every customer remembers the offset of its last event in its own stream
    for cid, state in store.iter_customers():
        assert len(state.offsets) == 1, cid


def test_poison_messages_are_dead_lettered_and_never_stall_the_partition(
        live_redis: LiveRedis) -> None:
    config = _config("p", stream_partitions=1, shards=2, batch_size=3)
    stream = stream_names(config.stream_prefix, 1)[0]
    client = live_redis.client()
    ts = 1_700_000_000

    def order(n: int) -> bytes:
        return json.dumps({"customer_id": "c1", "type": "order", "ts": ts + n,
                           "amount": 10.0}).encode()

    poison = [
        (b"{not json", "invalid_json"),
        (b"\xc1\xc1\xc1", "invalid_msgpack"),
        (json.dumps({"customer_id": "c1", "type": "order", "ts": ts, "amount": "x"}).encode(),
         "invalid_field"),
        (msgpack.packb({"customer_id": "c1", "type": "visit", "ts": [1]}), "invalid_field"),
        (json.dumps({"customer_id": "c1", "type": "visit", "ts": 4_102_444_800}).encode(),
         "future_timestamp"),
        (json.dumps(["c1", "visit"]).encode(), "not_an_object"),
    ]
    ids = [client.xadd(stream, {"e": order(0)})]
    for payload, _ in poison:
        ids.append(client.xadd(stream, {"e": payload}))
    ids.append(client.xadd(stream, {"customer": "c1", "kind": "visit"}))  # no field "e"
    ids += [client.xadd(stream, {"e": order(n)}) for n in (1, 2, 3)]

    store = _run_redis_flow(live_redis, config)
    customer = store.customer("c1")
    # Nothing after the poison was lost.
    assert customer is not None and customer.purchases.orders == 4

    dead = store.dead_letters(100)
    assert len(dead) == len(poison) + 1
    by_position = {d["position"]: d for d in dead}
    for entry_id, (payload, reason) in zip(ids[1:], poison, strict=False):
        record = by_position[f"{stream}:{entry_id.decode()}"]
        assert record["reason"] == reason
        # The exact bytes: as text when UTF-8, else base64 (docs/events.md).
        kept = (base64.b64decode(str(record["payload"]))
                if record["payload_encoding"] == "base64" else str(record["payload"]).encode())
        assert kept == payload
        assert record["detail"]
    no_field = by_position[f"{stream}:{ids[len(poison) + 1].decode()}"]
    assert json.loads(no_field["payload"]) == {"customer": "c1", "kind": "visit"}


def _partition(server: LiveRedis, stream: str, resume: str | None, batch: int = 10,
               **kwargs: object) -> object:
    source = RedisStreamSource(server.url, [stream], batch_size=batch, **kwargs)  # type: ignore[arg-type]
    return source.build_part("input", stream, resume)


def test_a_partition_resumes_right_after_its_snapshot(live_redis: LiveRedis) -> None:
    client = live_redis.client()
    ids = [client.xadd("s:0", {"e": f'{{"n": {n}}}'.encode()}).decode() for n in range(25)]
    first = _partition(live_redis, "s:0", None)
    batch = first.next_batch()  # type: ignore[attr-defined]
    assert [m.position for m in batch] == [f"s:0:{i}" for i in ids[:10]]
    snapshot = first.snapshot()  # type: ignore[attr-defined]
    assert snapshot == ids[9]
    first.close()  # type: ignore[attr-defined]

    resumed = _partition(live_redis, "s:0", snapshot)
    batch = resumed.next_batch()  # type: ignore[attr-defined]
    assert [json.loads(m.payload)["n"] for m in batch] == list(range(10, 20))
    message = batch[0]
    assert message.partition == "redis:s:0" and message.source == "redis"
    assert message.offset == id_offset(ids[10])
    assert message.published_at == int(ids[10].split("-")[0]) / 1000
    assert abs(message.received_at - time.time()) < 5
    offsets = [m.offset for m in batch]
    assert offsets == sorted(offsets) and len(set(offsets)) == 10


def test_an_empty_stream_yields_at_once_and_asks_to_be_woken_later(
        live_redis: LiveRedis) -> None:
    tailing = _partition(live_redis, "empty:0", None)
    started = time.monotonic()
    assert tailing.next_batch() == []  # type: ignore[attr-defined]
    assert time.monotonic() - started < 0.5  # no BLOCK: the worker thread is never held
    wake = tailing.next_awake()  # type: ignore[attr-defined]
    assert wake is not None and 0 < (wake - datetime.now(timezone.utc)).total_seconds() <= 1
    finishing = _partition(live_redis, "empty:0", None, stop_at_end=True)
    with pytest.raises(StopIteration):
        finishing.next_batch()  # type: ignore[attr-defined]


class _Observer:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.roundtrips: list[str] = []

    def roundtrip(self, operation: str, seconds: float) -> None:
        self.roundtrips.append(operation)

    def error(self, operation: str, exc: BaseException) -> None:
        self.errors.append(operation)


def test_a_partition_waits_out_a_redis_outage_and_reads_on(live_redis: LiveRedis) -> None:
    client = live_redis.client()
    client.xadd("s:0", {"e": b'{"n": 0}'})
    observer = _Observer()
    partition = _partition(live_redis, "s:0", None, observer=observer)
    assert len(partition.next_batch()) == 1  # type: ignore[attr-defined]
    live_redis.stop()
    waits = []
    for _ in range(3):
        assert partition.next_batch() == []  # type: ignore[attr-defined]
        wake = partition.next_awake()  # type: ignore[attr-defined]
        waits.append((wake - datetime.now(timezone.utc)).total_seconds())
    assert observer.errors == ["source_read"] * 3
    assert waits[0] > 0.05 and waits[2] > waits[0]  # backing off
    live_redis.start()
    live_redis.client().xadd("s:0", {"e": b'{"n": 1}'})
    batch = partition.next_batch()  # type: ignore[attr-defined]
    assert [json.loads(m.payload)["n"] for m in batch] == [1]
    assert "source_read" in observer.roundtrips


def test_the_source_reports_how_many_entries_are_left_to_read(live_redis: LiveRedis) -> None:
    client = live_redis.client()
    for _ in range(100):
        client.xadd("s:0", {"e": b"{}"})
    reported: list[int] = []
    source = RedisStreamSource(live_redis.url, ["s:0"], batch_size=30,
                               lag_reporter=reported.append)
    partition = source.build_part("input", "s:0", None)
    assert len(partition.next_batch()) == 30
    assert reported == [70]
    partition._next_lag_check = 0.0  # as if a second had passed
    partition.next_batch()
    partition._next_lag_check = 0.0
    partition.next_batch()
    partition._next_lag_check = 0.0
    assert len(partition.next_batch()) == 10
    assert reported[-1] == 0


def test_shards_read_exactly_one_partition() -> None:
    config = _config("x", shards=16, stream_partitions=4)
    for n in range(200):
        cid = f"cust-{n}"
        assert shard_of(cid, config.shards) % config.stream_partitions == shard_of(
            cid, config.stream_partitions)
