"""Fuzzing the decoder: whatever bytes, text or values come in, the answer is an Event or an
InvalidEvent with a reason from DEAD_LETTER_REASONS and the position it was given. Never an
exception: one odd message must not stop the flow (issue 10)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import msgpack
import pytest
from churnwatch.dataflows.file_source import LINE_LIMIT, FileSource
from churnwatch.dataflows.flow import dead_letter_record
from churnwatch.state.base import shard_of
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from churnwatch.core.config import ChurnwatchConfig, ConfigError, load_config
from churnwatch.core.events import (
    DEAD_LETTER_REASONS,
    EVENT_TYPES,
    MAX_PAYLOAD_BYTES,
    TOO_LARGE_KEPT_BYTES,
    Event,
    InvalidEvent,
    decode_event,
)

NOW = 1_700_000_000.0
POSITION = "fuzz.jsonl:42"
FIELDS = ("customer_id", "type", "ts", "event_id", "amount", "channel", "score", "kind",
          "severity", "segment", "category", "value_tier", "playbook")

json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-10**400,
                                                                          max_value=10**400)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text()
                | st.sampled_from(sorted(EVENT_TYPES) + ["email", "nps", "urgent", "\ud800"]))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


def assert_decoded(result: Event | InvalidEvent) -> None:
    """The invariant: an event usable downstream, or a dead letter that can be written."""
    if isinstance(result, Event):
        shard_of(result.customer_id, 16)  # hashes: valid UTF-8
        if result.event_id is not None:
            result.event_id.encode()
        assert math.isfinite(result.ts) and result.ts >= 0
        assert math.isfinite(result.amount) and result.amount >= 0
        for value in result.attributes.values():
            value.encode()
        return
    assert isinstance(result, InvalidEvent), type(result)
    assert result.reason in DEAD_LETTER_REASONS
    assert result.position == POSITION
    assert isinstance(result.payload, bytes)
    assert result.detail and len(result.detail) < 2000
    result.detail.encode("utf-8")  # goes to Redis and files as text
    if result.customer_id is not None:
        shard_of(result.customer_id, 16)
    record = dead_letter_record(result)
    json.dumps(record)  # the file and the stream take it as it is
    for value in record.values():
        if isinstance(value, str):
            value.encode("utf-8")


def decode(payload: Any) -> Event | InvalidEvent:
    result = decode_event(payload, position=POSITION, now=NOW)
    assert_decoded(result)
    return result


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
@example(b"\xc1")
@example(b"\xd4\x05\x00")  # a msgpack ext type
@example(b"\xff\xfe{\x00")
@example(b'{"customer_id": "c\xff", "type": "visit", "ts": 0}')
def test_arbitrary_bytes_decode_to_an_event_or_a_dead_letter(payload: bytes) -> None:
    decode(payload)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_arbitrary_text_decodes_to_an_event_or_a_dead_letter(payload: str) -> None:
    decode(payload)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(EVENT_TYPES)), st.dictionaries(st.sampled_from(FIELDS),
                                                             json_values, max_size=8))
def test_any_json_value_in_any_field_decodes_to_an_event_or_a_dead_letter(
        kind: str, fields: dict[str, Any]) -> None:
    event = {"customer_id": "c1", "type": kind, "ts": 1_600_000_000, "amount": 3,
             "channel": "email", "score": 5, **fields}
    decode(event)  # as a mapping (the simulator, tests)
    try:
        text = json.dumps(event)
    except (ValueError, RecursionError):
        return
    decode(text.encode("utf-8", "surrogatepass"))
    decode(text)
    try:
        packed = msgpack.packb(event, unicode_errors="surrogatepass")
    except (OverflowError, ValueError, TypeError):
        return
    decode(packed)


@settings(max_examples=200)
@given(st.sampled_from(["type", "channel", "severity", "kind", "customer_id", "event_id",
                        "segment", "ts", "amount", "score"]),
       st.sampled_from([[], ["order"], {}, {"a": 1}, [["email"]]]))
def test_unhashable_values_in_set_checked_fields_are_invalid_not_a_crash(
        name: str, value: Any) -> None:
    for kind in ("order", "campaign_sent", "feedback", "support_ticket", "profile"):
        event = {"customer_id": "c1", "type": kind, "ts": 1_600_000_000, "amount": 3,
                 "channel": "email", "score": 5, name: value}
        result = decode(json.dumps(event).encode())
        if name not in ("kind", "severity", "segment", "channel", "amount", "score") or (
                kind == "campaign_sent" and name == "channel"):
            assert isinstance(result, InvalidEvent), (kind, name, value)


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize("where", ["top", "field"])
def test_deep_nesting_is_a_dead_letter(depth: int, where: str) -> None:
    nested = "[" * depth + "]" * depth
    text = nested if where == "top" else (
        '{"customer_id": "c1", "type": "visit", "ts": 1, "extra": ' + nested + "}")
    result = decode(text.encode())
    if where == "top" or depth > 900:
        assert isinstance(result, InvalidEvent)
    nested_map: Any = {}
    for _ in range(min(depth, 5000)):
        nested_map = {"x": nested_map}
    decode({"customer_id": nested_map, "type": "visit", "ts": 1})
    packed = b"\x91" * depth + b"\x90"  # msgpack arrays in arrays
    assert isinstance(decode(packed), InvalidEvent)


@pytest.mark.parametrize("field", ["ts", "amount", "score", "customer_id", "event_id"])
@pytest.mark.parametrize("number", ["1" + "0" * 400, "-" + "9" * 300, "1e400", "-1e400",
                                    "NaN", "Infinity", "-Infinity", "1e308", "9" * 5000])
def test_huge_and_non_finite_numbers_are_dead_letters(field: str, number: str) -> None:
    text = ('{"customer_id": "c1", "type": "order", "ts": 1600000000, "amount": 1, '
            f'"score": 1, "{field}": {number}}}')
    for kind in ("order", "feedback"):
        result = decode(text.replace('"order"', f'"{kind}"').encode())
        if field in ("ts", "amount") and kind == "order" or field in ("ts", "score") and \
                kind == "feedback":
            assert isinstance(result, InvalidEvent), (kind, field, number)
            assert result.reason in ("invalid_field", "invalid_json")


def test_huge_python_ints_in_a_mapping_are_dead_letters() -> None:
    for field in ("ts", "amount", "customer_id", "event_id"):
        event = {"customer_id": "c1", "type": "order", "ts": 1_600_000_000, "amount": 1,
                 field: 10**5000}
        result = decode(event)
        assert isinstance(result, InvalidEvent) and field in result.detail


def test_ts_far_beyond_milliseconds_is_out_of_range() -> None:
    result = decode(b'{"customer_id": "c1", "type": "visit", "ts": 1e30}')
    assert isinstance(result, InvalidEvent) and "out of range" in result.detail
    assert "milliseconds" not in result.detail
    millis = decode(b'{"customer_id": "c1", "type": "visit", "ts": 1700000000000}')
    assert isinstance(millis, InvalidEvent) and "milliseconds" in millis.detail


def test_amount_above_the_ceiling_is_a_dead_letter_naming_the_key() -> None:
    line = b'{"customer_id": "c1", "type": "order", "ts": 1, "amount": 1e308}'
    result = decode_event(line, position=POSITION)
    assert isinstance(result, InvalidEvent) and "input.max_amount" in result.detail
    assert isinstance(decode_event(line.replace(b"1e308", b"5000"), position=POSITION,
                                   max_amount=1000), InvalidEvent)
    assert isinstance(decode_event(line.replace(b"1e308", b"500"), position=POSITION,
                                   max_amount=1000), Event)


@pytest.mark.parametrize(("kind", "field"), [("profile", "customer_id"), ("profile", "event_id"),
                                             ("profile", "segment"), ("intervention", "playbook")])
def test_lone_surrogates_in_kept_strings_are_invalid_fields(kind: str, field: str) -> None:
    text = (f'{{"customer_id": "c1", "type": "{kind}", "ts": 1, "channel": "phone", '
            f'"{field}": "a\\ud800b"}}')
    for payload in (text.encode(), text, json.loads(text)):
        result = decode(payload)
        assert isinstance(result, InvalidEvent) and result.reason == "invalid_field"
        assert field in result.detail and "surrogate" in result.detail


def test_invalid_utf8_is_invalid_json_with_its_byte_offset() -> None:
    result = decode(b'{"customer_id": "c\xff1", "type": "visit", "ts": 1}')
    assert isinstance(result, InvalidEvent) and result.reason == "invalid_json"
    assert "UTF-8 at byte 18" in result.detail


def test_very_long_lines_are_too_large_and_keep_their_bytes() -> None:
    line = b'{"customer_id": "c1", "type": "visit", "ts": 1, "x": "' + b"a" * MAX_PAYLOAD_BYTES \
        + b'"}'
    result = decode(line)
    assert isinstance(result, InvalidEvent) and result.reason == "too_large"
    assert result.payload == line[:TOO_LARGE_KEPT_BYTES]
    long_but_fine = b'{"customer_id": "c1", "type": "visit", "ts": 1, "x": "' + b"a" * 500_000 \
        + b'"}'
    assert isinstance(decode(long_but_fine), Event)


def test_msgpack_oddities_are_dead_letters() -> None:
    base = {"customer_id": "c1", "type": "order", "ts": 1_600_000_000, "amount": 1}
    oddities = [
        msgpack.packb({**base, "amount": msgpack.ExtType(5, b"x")}),
        msgpack.packb({**base, "customer_id": b"\xff\xfe"}),
        msgpack.packb({**base, "type": b"order"}),
        msgpack.packb({1: 2, b"k": "v", **base, "ts": msgpack.Timestamp(1_600_000_000)}),
        b"\x81\xa2ts\xc7\x03\xff\x00\x00\x00",  # a timestamp extension of a wrong length
        b"\xdf\xff\xff\xff\xff",  # a map announcing four billion entries
        b"\xdd\xff\xff\xff\xff",  # an array announcing as many
        msgpack.packb({**base, "amount": 2**64 - 1}),
    ]
    for payload in oddities:
        result = decode(payload)
        if payload is not oddities[-1]:
            assert isinstance(result, InvalidEvent), payload
    # A map with non-string keys besides valid fields is still an event: extra keys are ignored.
    assert isinstance(decode(msgpack.packb({1: 2, **base})), Event)


def test_binary_payloads_keep_their_exact_bytes_in_the_dead_letter_record() -> None:
    import base64

    payload = b"\x93\xff\x00\xc1 not utf-8"
    result = decode(payload)
    assert isinstance(result, InvalidEvent)
    record = dead_letter_record(result)
    assert record["payload_encoding"] == "base64"
    assert base64.b64decode(str(record["payload"])) == payload
    text = decode(b"{nope \xc3\xa9}")
    assert isinstance(text, InvalidEvent)
    record = dead_letter_record(text)
    assert (record["payload_encoding"], record["payload"]) == ("utf-8", "{nope \u00e9}")


def test_the_file_source_reads_an_endless_line_as_one_too_large_dead_letter(
        tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    good = b'{"customer_id": "c1", "type": "visit", "ts": 1}'
    path.write_bytes(good + b"\n" + b"x" * (3 * LINE_LIMIT + 5) + b"\n" + good + b"\n"
                     + b"y" * (5 * LINE_LIMIT))
    part = FileSource([path]).build_part("input", f"file:{path}", None)
    batch = part.next_batch()
    part.close()
    assert [m.offset for m in batch] == [1, 2, 3, 4]
    assert max(len(m.payload) for m in batch) <= LINE_LIMIT
    results = [decode_event(m.payload, position=m.position) for m in batch]
    assert [r.reason if isinstance(r, InvalidEvent) else "ok" for r in results] == [
        "ok", "too_large", "ok", "too_large"]
    assert part.snapshot() == (path.stat().st_size, 4)


def test_the_amount_ceiling_is_a_validated_configuration_key(tmp_path: Path) -> None:
    path = tmp_path / "churnwatch.toml"
    for value, error in [("-1", ">= 0"), ("nan", "finite"), ("inf", "finite"),
                         ('"many"', "must be a number")]:
        path.write_text(f"[input]\nmax_amount = {value}\n")
        with pytest.raises(ConfigError, match=f"{path}: input.max_amount .*{error}"):
            load_config(path)
    path.write_text("[input]\nmax_amount = 5000\n")
    assert load_config(path).max_amount == 5000.0
    assert ChurnwatchConfig().max_amount == 1e10
