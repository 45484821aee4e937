"""Fuzzing the publisher: whatever a line or a mapping holds, ``churnwatch publish`` puts
something on a stream without raising, on the partition the flow expects for the customer, and
the flow then reads it as an event or a dead letter (issue 10)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from churnwatch.state.base import shard_of
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from live_servers import LiveRedis, live_redis  # noqa: F401

from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.events import (
    DEAD_LETTER_REASONS,
    EVENT_TYPES,
    MAX_PAYLOAD_BYTES,
    Event,
    InvalidEvent,
    decode_event,
)
from churnwatch.publish import Publisher

CONFIG = ChurnwatchConfig(stream_partitions=4, shards=16)
FIELDS = ("customer_id", "type", "ts", "event_id", "amount", "channel", "score", "kind",
          "severity", "segment")
scalars = (st.none() | st.booleans() | st.integers(min_value=-10**300, max_value=10**300)
           | st.floats() | st.text(max_size=20)
           | st.sampled_from(sorted(EVENT_TYPES) + ["c1", "\ud800", "a\udfffb", "email"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
mappings = st.dictionaries(st.sampled_from(FIELDS), values, max_size=7)


def publishers() -> list[Publisher]:
    # The client connects lazily: encode() never talks to Redis.
    return [Publisher("redis://127.0.0.1:1/0", CONFIG, format=f) for f in ("json", "msgpack")]


PUBLISHERS = publishers()


def assert_published(event: Any) -> None:
    for publisher in PUBLISHERS:
        partition, payload = publisher.encode(event)
        assert 0 <= partition < CONFIG.stream_partitions
        assert isinstance(payload, bytes)
        decoded = decode_event(payload, position="s:1-0", now=1_700_000_000.0)
        if isinstance(decoded, Event):
            # The flow reads this customer on the partition its hash names.
            assert partition == shard_of(decoded.customer_id, CONFIG.stream_partitions)
        else:
            assert isinstance(decoded, InvalidEvent)
            assert decoded.reason in DEAD_LETTER_REASONS


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_any_bytes_are_published(line: bytes) -> None:
    assert_published(line)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_any_text_is_published(line: str) -> None:
    assert_published(line)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mappings)
# An id beyond 64 bits: msgpack writes it as its text, which the flow reads as an id.
@example({"customer_id": 21889308805388597498})
def test_any_values_in_any_field_are_published_as_lines_and_as_mappings(
        fields: dict[str, Any]) -> None:
    event = {"customer_id": "c1", "type": "order", "ts": 1_600_000_000, "amount": 2, **fields}
    assert_published(event)
    try:
        line = json.dumps(event)
    except (ValueError, RecursionError):
        return
    assert_published(line)
    assert_published(line.encode("utf-8", "surrogatepass"))


POISON = [
    b'{"customer_id": "\\ud800", "type": "visit", "ts": 1}',
    b'{"customer_id": "c1", "event_id": "\\udfff", "type": "visit", "ts": 1}',
    b'{"customer_id": "c1", "type": ["order"], "ts": 1}',
    b'{"customer_id": "c1", "type": "order", "ts": 1, "amount": 1' + b"0" * 400 + b"}",
    b'{"customer_id": "c1", "type": "order", "ts": 1e30, "amount": 1}',
    b'{"customer_id": "c1", "type": "order", "ts": 1, "amount": 1e308}',
    b'{"customer_id": "c1", "type": "visit", "ts": NaN}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a": ' * 50_000 + b"1" + b"}" * 50_000,
    b'{"customer_id": "c\xff\xfe", "type": "visit", "ts": 1}',
    b"\xc1\xff\x00 binary",
    b'{"customer_id": "c1", "type": "visit", "ts": 1, "x": "' + b"y" * MAX_PAYLOAD_BYTES + b'"}',
    msgpack.packb({"customer_id": "c1", "type": "visit", "ts": msgpack.ExtType(3, b"z")}),
]


@pytest.mark.parametrize("line", POISON, ids=range(len(POISON)))
def test_known_poison_lines_are_published(line: bytes) -> None:
    assert_published(line)
    assert_published(line.decode("utf-8", "surrogateescape"))


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_the_publish_command_puts_every_poison_line_on_the_streams(
        live_redis: LiveRedis, tmp_path: Path, fmt: str) -> None:  # noqa: F811
    good = json.dumps({"customer_id": "c1", "type": "visit", "ts": 1_600_000_000}).encode()
    lines = [good, *(p for p in POISON if b"\n" not in p), good]
    path = tmp_path / "poison.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    done = subprocess.run([sys.executable, "-m", "churnwatch.cli", "publish", str(path),
                           "--redis-url", live_redis.url, "--format", fmt],
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"Traceback" not in done.stderr
    client = live_redis.client()
    default = ChurnwatchConfig()
    entries = [fields[b"e"] for p in range(default.stream_partitions)
               for _, fields in client.xrange(f"{default.stream_prefix}:{p}")]
    assert len(entries) == len(lines)
    for payload in entries:
        decoded = decode_event(payload, position="x")
        assert isinstance(decoded, (Event, InvalidEvent))
    assert sum(isinstance(decode_event(e, position="x"), Event) for e in entries) == 2
