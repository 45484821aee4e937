"""The event contract: every way an event can be wrong gets a reason naming the field."""

from __future__ import annotations

import msgpack
import pytest

from churnwatch.core.events import Event, InvalidEvent, decode_event

NOW = 1_700_000_000.0


@pytest.mark.parametrize("payload, reason, words", [
    (b"{nope", "invalid_json", "not valid JSON"),
    (b"\xc1\xc1", "invalid_msgpack", "neither JSON nor msgpack"),
    (b"[1, 2]", "not_an_object", "must be an object"),
    (b'{"type": "order", "ts": 1}', "missing_field", "'customer_id'"),
    (b'{"customer_id": "", "type": "order", "ts": 1, "amount": 1}', "invalid_field",
     "'customer_id'"),
    (b'{"customer_id": "a", "type": "purchase", "ts": 1}', "unknown_type", "'purchase'"),
    (b'{"customer_id": "a", "type": "order", "amount": 1}', "missing_field", "'ts'"),
    (b'{"customer_id": "a", "type": "order", "ts": "2024-01-01 10:00", "amount": 1}',
     "invalid_field", "no time zone"),
    (b'{"customer_id": "a", "type": "order", "ts": 1700000000000, "amount": 1}',
     "invalid_field", "milliseconds"),
    (b'{"customer_id": "a", "type": "order", "ts": 1, "amount": -3}', "invalid_field",
     "'amount' must be >= 0"),
    (b'{"customer_id": "a", "type": "order", "ts": 1, "amount": "12"}', "invalid_field",
     "'amount' must be a number"),
    (b'{"customer_id": "a", "type": "campaign_opened", "ts": 1, "channel": "fax"}',
     "invalid_field", "'channel'"),
    (b'{"customer_id": "a", "type": "feedback", "ts": 1, "score": 11}', "invalid_field",
     "'score'"),
    (b'{"customer_id": "a", "type": "visit", "ts": 4000000000}', "future_timestamp",
     "in the future"),
])
def test_broken_events_are_rejected_with_a_reason_naming_the_field(payload: bytes, reason: str,
                                                                   words: str) -> None:
    result = decode_event(payload, position="in.jsonl:7", now=NOW)
    assert isinstance(result, InvalidEvent)
    assert (result.reason, result.position, result.payload) == (reason, "in.jsonl:7", payload)
    assert words in result.detail


def test_msgpack_and_unknown_fields_are_accepted() -> None:
    payload = msgpack.packb({"customer_id": "a", "type": "message_replied", "ts": 5,
                             "channel": "whatsapp", "extra": {"kept": True}})
    event = decode_event(payload, position="s:1")
    assert isinstance(event, Event) and event.channel == "whatsapp" and event.ts == 5.0


def test_the_customer_of_a_broken_event_is_kept_when_readable() -> None:
    result = decode_event(b'{"customer_id": "a", "type": "order", "ts": 1}', position="x")
    assert isinstance(result, InvalidEvent) and result.customer_id == "a"
