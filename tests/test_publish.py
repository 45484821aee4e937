"""The publisher: partition routing, order per customer, pipelining, bad lines, the CLI."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import msgpack
import pytest
from churnwatch.state.base import shard_of
from live_servers import LiveRedis, live_redis  # noqa: F401

from churnwatch.cli import main
from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.events import Event, decode_event
from churnwatch.publish import Publisher, partition_for

CONFIG = ChurnwatchConfig(stream_partitions=4, shards=16)


def _entries(server: LiveRedis, config: ChurnwatchConfig = CONFIG) -> list[list[bytes]]:
    client = server.client()
    return [[fields[b"e"] for _, fields in client.xrange(f"{config.stream_prefix}:{p}")]
            for p in range(config.stream_partitions)]


def _events(n: int, customers: int) -> list[dict[str, object]]:
    return [{"customer_id": f"cust-{i % customers}", "type": "visit", "ts": 1_700_000_000 + i,
             "event_id": f"e{i}"} for i in range(n)]


def test_each_event_goes_to_the_partition_of_its_customers_hash(live_redis: LiveRedis) -> None:
    publisher = Publisher(live_redis.url, CONFIG)
    events = _events(400, 37)
    assert publisher.publish(events) == 400
    for partition, payloads in enumerate(_entries(live_redis)):
        assert payloads, "37 customers should reach every one of 4 partitions"
        for payload in payloads:
            cid = json.loads(payload)["customer_id"]
            assert zlib.crc32(cid.encode()) % 4 == partition
            # shard s reads partition s % P: the shard of a customer is in its partition
            assert shard_of(cid, CONFIG.shards) % CONFIG.stream_partitions == partition


def test_a_customers_events_keep_their_order(live_redis: LiveRedis) -> None:
    events = _events(3000, 11)
    Publisher(live_redis.url, CONFIG, pipeline_size=128).publish(events)
    seen: dict[str, list[str]] = {}
    for payloads in _entries(live_redis):
        for payload in payloads:
            event = json.loads(payload)
            seen.setdefault(event["customer_id"], []).append(event["event_id"])
    expected: dict[str, list[str]] = {}
    for event in events:
        expected.setdefault(str(event["customer_id"]), []).append(str(event["event_id"]))
    assert seen == expected


def test_events_are_written_in_pipelined_batches_not_one_round_trip_each(
        live_redis: LiveRedis) -> None:
    publisher = Publisher(live_redis.url, CONFIG, pipeline_size=1000)
    round_trips: list[int] = []
    assert publisher.publish(_events(2500, 50), on_batch=round_trips.append) == 2500
    assert round_trips == [1000, 1000, 500]
    stats = live_redis.client().info("commandstats")
    assert stats["cmdstat_xadd"]["calls"] == 2500


def test_bad_lines_are_published_unchanged_and_unreadable_ones_go_to_partition_0(
        live_redis: LiveRedis) -> None:
    good = b'{"customer_id":"cust-9","type":"visit","ts":1700000000}'
    wrong_type = b'{"customer_id":"cust-9","type":"order","ts":1700000001,"amount":"ten"}'
    not_json = b"{this is not json"
    no_customer = b'{"type":"visit","ts":1700000002}'
    binary = b"\xc1\xc1 not msgpack either"
    Publisher(live_redis.url, CONFIG).publish([good, wrong_type, not_json, no_customer, binary])
    entries = _entries(live_redis)
    home = zlib.crc32(b"cust-9") % 4
    assert [p for p in entries[home] if p in (good, wrong_type)] == [good, wrong_type]
    assert not_json in entries[0] and no_customer in entries[0] and binary in entries[0]
    assert sum(len(p) for p in entries) == 5


def test_integer_customer_ids_route_like_their_decimal_text() -> None:
    assert partition_for({"customer_id": 12345}, 8) == partition_for({"customer_id": "12345"}, 8)
    assert partition_for({"customer_id": True}, 8) == 0


def test_msgpack_format_round_trips_through_the_event_contract(live_redis: LiveRedis) -> None:
    line = b'{"customer_id":"c1","type":"order","ts":1700000000,"amount":12.5}'
    Publisher(live_redis.url, CONFIG, format="msgpack").publish(
        [line, {"customer_id": "c1", "type": "visit", "ts": 1700000100}, b"{broken"])
    payloads = [p for part in _entries(live_redis) for p in part]
    assert b"{broken" in payloads  # a bad line is never re-encoded
    packed = [p for p in payloads if p != b"{broken"]
    assert len(packed) == 2
    for payload in packed:
        assert isinstance(msgpack.unpackb(payload), dict)
        assert isinstance(decode_event(payload, position="test"), Event)


def test_publish_command_reads_files_and_reports_a_missing_redis(
        live_redis: LiveRedis, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in _events(250, 9)) + "\n\n")
    assert main(["publish", str(path), "--redis-url", live_redis.url]) == 0
    client = live_redis.client()
    default = ChurnwatchConfig()
    assert sum(client.xlen(f"{default.stream_prefix}:{p}")
               for p in range(default.stream_partitions)) == 250
    monkeypatch.delenv("CHURNWATCH_REDIS_URL", raising=False)
    assert main(["publish", str(path)]) == 2
    assert "--redis-url" in capsys.readouterr().err


def test_publisher_rejects_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="'xml'"):
        Publisher("redis://127.0.0.1:1/0", CONFIG, format="xml")
