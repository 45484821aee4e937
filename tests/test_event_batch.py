"""The batched decoder against the one-line decoder: for every line of a batch,
``decode_lines`` answers exactly what ``decode_event`` answers for it (the same Event, field for
field and bit for bit, or the same dead letter), in input order, whatever the lines hold."""

from __future__ import annotations

import doctest
import json
import math
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the `bench` package is not installed (as live_servers.py)
    sys.path.insert(0, str(REPO_ROOT))

from bench.workload import START, generate  # noqa: E402
from churnwatch.core import columns, event_batch  # noqa: E402
from churnwatch.core.event_batch import (  # noqa: E402
    CHANNEL_CODES,
    FAST_LINE_BYTES,
    NO_CHANNEL,
    TYPE_CODES,
    EventBatch,
    decode_lines,
)
from churnwatch.core.events import (  # noqa: E402
    CAMPAIGN_CHANNELS,
    EVENT_TYPES,
    FEEDBACK_KINDS,
    INTERVENTION_CHANNELS,
    MESSAGE_CHANNELS,
    TICKET_SEVERITIES,
    Event,
    decode_event,
)

NOW = 1_720_000_000.0


def positions(count: int) -> list[str]:
    return [f"batch.jsonl:{n + 1}" for n in range(count)]


def assert_decoded_alike(lines: list[bytes], **options: Any) -> EventBatch:
    """``decode_lines`` against ``decode_event`` line by line: the same events (compared by
    ``repr``, so ``-0.0`` is not ``0.0`` and ``1`` is not ``1.0``), the same dead letters, the
    same input positions."""
    where = positions(len(lines))
    reference = [decode_event(line, position=at, **{"msgpack_allowed": False, **options})
                 for line, at in zip(lines, where, strict=True)]
    batch = decode_lines(lines, where, **options)
    assert [repr(e) for e in batch.events()] == [
        repr(e) for e in reference if isinstance(e, Event)]
    assert batch.invalid == [e for e in reference if not isinstance(e, Event)]
    assert batch.index.tolist() == [i for i, e in enumerate(reference) if isinstance(e, Event)]
    assert_columns_hold_the_events(batch)
    return batch


def assert_columns_hold_the_events(batch: EventBatch) -> None:
    rows = len(batch)
    assert (batch.types.dtype, batch.ts.dtype, batch.amount.dtype, batch.channel.dtype,
            batch.score.dtype, batch.severity.dtype, batch.index.dtype) == (
        np.uint8, np.float64, np.float64, np.int8, np.float64, np.float64, np.int64)
    assert {len(batch.customer_ids), len(batch.event_ids), len(batch.types), len(batch.ts),
            len(batch.amount), len(batch.channel), len(batch.score), len(batch.severity),
            len(batch.index)} == {rows}
    for i, event in enumerate(batch.events()):
        # The columns say what the engine reads, also for the rows kept whole in extras.
        assert (TYPE_CODES[batch.types[i]], batch.customer_ids[i], batch.event_ids[i]) == (
            event.type, event.customer_id, event.event_id)
        assert (batch.ts[i], batch.amount[i], batch.severity[i]) == (
            event.ts, event.amount, event.severity)
        channel = batch.channel[i]
        assert (CHANNEL_CODES[channel] if channel != NO_CHANNEL else None) == (
            event.channel if event.channel in CHANNEL_CODES else None)
        assert (None if math.isnan(batch.score[i]) else batch.score[i]) == event.score
        assert (i in batch.extras) == (event.type in ("profile", "intervention")), event


# -- strategies ----------------------------------------------------------------------------------

FIELDS = ("customer_id", "type", "ts", "event_id", "amount", "channel", "score", "kind",
          "severity", "segment", "category", "value_tier", "playbook")


@st.composite
def iso_times(draw: st.DrawFn) -> str:
    """ISO 8601 times as ``datetime.isoformat`` writes them: with an offset, ``Z`` or no zone,
    to the second or finer, before 1970 too."""
    zone = timezone(timedelta(minutes=draw(st.integers(-14 * 60, 14 * 60))))
    moment = datetime.fromtimestamp(draw(st.floats(-3e9, 5e9)), tz=zone)
    text = moment.isoformat(timespec=draw(st.sampled_from(["seconds", "milliseconds", "auto"])))
    form = draw(st.integers(0, 3))
    if form == 0:
        return text[:-6]  # no zone
    if form == 1 and text.endswith("+00:00"):
        return text[:-6] + "Z"
    return text


CHANNELS_OF = {"campaign_sent": CAMPAIGN_CHANNELS, "campaign_opened": CAMPAIGN_CHANNELS,
               "campaign_clicked": CAMPAIGN_CHANNELS, "message_sent": MESSAGE_CHANNELS,
               "message_replied": MESSAGE_CHANNELS, "intervention": INTERVENTION_CHANNELS}
#: The fields each type needs and the ones it may have, beside customer_id, type, ts, event_id.
REQUIRED = {"order": ("amount",), "refund": ("amount",), "feedback": ("score",),
            **{kind: ("channel",) for kind in CHANNELS_OF}}
OPTIONAL = {"feedback": ("kind",), "support_ticket": ("severity",),
            "profile": ("segment", "category", "value_tier"), "intervention": ("playbook",)}
#: Values each field takes in a valid event, the edges of its rule included: integer ids, text
#: that is not ASCII, ISO times in every form, -0.0, tiny and ceiling amounts.
VALID = {
    "customer_id": st.sampled_from(["c1", "c0000042", "\u00fc-7", " c2 ", "\u5ba2", "x" * 256])
    | st.integers(-2**63, 2**64 - 1) | st.text(min_size=1, max_size=8).filter(str.strip),
    "ts": st.floats(0, 1e11) | st.integers(0, 10**11) | iso_times() | st.just(-0.0),
    "event_id": st.sampled_from(["o1", "e-9", "\u00e9"]) | st.integers(-2**63, 2**64 - 1),
    "amount": st.floats(0, 1e4) | st.integers(0, 10**6) | st.sampled_from([-0.0, 1e10, 1e-320]),
    "score": st.floats(0, 10) | st.integers(0, 10),
    "kind": st.none() | st.sampled_from(sorted(FEEDBACK_KINDS)),
    "severity": st.sampled_from(sorted(TICKET_SEVERITIES)),
    "segment": st.text(min_size=1, max_size=6),
    "category": st.text(min_size=1, max_size=6),
    "value_tier": st.text(min_size=1, max_size=6),
    "playbook": st.text(min_size=1, max_size=64),
}
#: Values at or past the edge of each field's rule.
EDGE = {
    "customer_id": st.sampled_from(["", " ", "\u2003", "x" * 257, "\ud800"])
    | st.integers(2**64, 2**70) | st.integers(-2**70, -2**63 - 1),
    "ts": st.floats(-1, 2e14) | st.sampled_from([1e11 + 1, 1e14 + 1, 2**63 + 1, "1e3", "nope",
                                                 "1969-12-31T23:59:59Z", "2024-01-01"]),
    "event_id": st.sampled_from(["", "\udfff"]) | st.integers(2**64, 2**70),
    "amount": st.floats(-10, 1e12) | st.integers(10**10, 10**20) | st.just(-1),
    "score": st.floats(-1, 11) | st.sampled_from([10.000001, -0.0, 11]),
    "kind": st.sampled_from(["poll", "", "NPS"]),
    "severity": st.sampled_from(["minor", "", "Low"]),
    "channel": st.sampled_from(sorted(INTERVENTION_CHANNELS | CAMPAIGN_CHANNELS) + ["fax", ""]),
    "segment": st.sampled_from(["", "\ud800"]),
    "category": st.sampled_from(["", "\ud800"]),
    "value_tier": st.sampled_from(["", "\ud800"]),
    "playbook": st.sampled_from(["p" * 65, ""]),
    "type": st.sampled_from(["Order", "", "visits"]),
}
odd_scalars = (st.none() | st.booleans() | st.integers() | st.integers(-10**700, 10**700)
               | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=10)
               | st.sampled_from(["\ud800", "a\udfffb", "\ud83d\ude00", " ", "", "\t"]))
odd_values = st.recursive(odd_scalars, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                          max_leaves=6)


@st.composite
def event_objects(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """The key/value pairs of one event object: a valid event of any type, then none to three
    changes (a value at the edge of its rule, a value of another type, a field dropped,
    repeated, or unknown)."""
    kind = draw(st.sampled_from(sorted(EVENT_TYPES)))
    fields: dict[str, Any] = {"customer_id": draw(VALID["customer_id"]), "type": kind,
                              "ts": draw(VALID["ts"])}
    if draw(st.booleans()):
        fields["event_id"] = draw(VALID["event_id"])
    for name in REQUIRED.get(kind, ()):
        fields[name] = draw(st.sampled_from(sorted(CHANNELS_OF[kind])) if name == "channel"
                            else VALID[name])
    for name in OPTIONAL.get(kind, ()):
        if draw(st.booleans()):
            fields[name] = draw(VALID[name])
    pairs = list(fields.items())
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        change = draw(st.integers(0, 4))
        name = draw(st.sampled_from(FIELDS))
        if change == 0:
            pairs.append((name, draw(EDGE.get(name, VALID.get(name, odd_scalars)))))
        elif change == 1:
            pairs.append((name, draw(odd_values)))
        elif change == 2:
            pairs = [pair for pair in pairs if pair[0] != name]
        elif change == 3:  # another type's field, valid for it: ignored here
            pairs.append((name, draw(VALID.get(name, odd_scalars))))
        else:
            pairs.append((draw(st.text(max_size=6)), draw(odd_scalars)))
    return draw(st.permutations(pairs)) if draw(st.booleans()) else pairs


def json_text(pairs: list[tuple[str, Any]], ensure_ascii: bool, spaced: bool) -> bytes:
    """An object written pair by pair, so that a key may repeat; NaN as JSON's NaN."""
    colon, comma = (": ", ", ") if spaced else (":", ",")
    body = comma.join(json.dumps(key, ensure_ascii=ensure_ascii) + colon
                      + json.dumps(value, ensure_ascii=ensure_ascii) for key, value in pairs)
    return ("{" + body + "}").encode("utf-8", "surrogatepass")


@st.composite
def event_lines(draw: st.DrawFn) -> bytes:
    pairs = draw(event_objects())
    form = draw(st.integers(0, 19))
    if form == 0:  # msgpack: a stream's payload; a file's line is JSON or nothing
        try:
            return bytes(msgpack.packb(dict(pairs), unicode_errors="surrogatepass"))
        except (OverflowError, ValueError, TypeError):
            return b"\x91\xc0"
    try:
        line = json_text(pairs, ensure_ascii=draw(st.booleans()), spaced=draw(st.booleans()))
    except ValueError:  # an integer of more digits than Python writes
        return b'{"customer_id": "c1"}'
    if form == 1:  # whitespace, a byte-order mark, a line end, a stray byte around the object
        before = draw(st.sampled_from([b"", b" ", b"\t", b"\n", b"\x0c", b"\xef\xbb\xbf"]))
        after = draw(st.sampled_from([b"", b"\n", b"\r\n", b" ", b"\x0c", b"\x00", b"}", b"]"]))
        line = before + line + after
    if form == 2 and len(line) > 2:  # cut short, or a byte changed
        cut = draw(st.integers(1, len(line) - 1))
        line = line[:cut] if draw(st.booleans()) else (
            line[:cut] + bytes([draw(st.integers(0, 255))]) + line[cut + 1:])
    return line


batch_options = st.fixed_dictionaries({}, optional={
    "now": st.none() | st.floats(0, 1e11) | st.just(NOW),
    "max_future_seconds": st.sampled_from([0.0, 86400.0, 1e9]),
    "max_amount": st.sampled_from([1e10, 100.0, 0.0, math.inf]),
    "msgpack_allowed": st.booleans(),
})


# -- the differential fuzz ----------------------------------------------------------------------

@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=120), max_size=12), batch_options)
@example([b"", b" ", b"{}", b"[]", b"null", b"\xc1", b"\xef\xbb\xbf{}"], {})
def test_arbitrary_bytes_decode_as_decode_event_decodes_each(lines: list[bytes],
                                                             options: dict[str, Any]) -> None:
    assert_decoded_alike(lines, **options)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event_lines(), max_size=10), batch_options)
def test_odd_and_valid_event_objects_decode_as_decode_event_decodes_each(
        lines: list[bytes], options: dict[str, Any]) -> None:
    assert_decoded_alike(lines, **options)


def visit(extra: str | bytes) -> bytes:
    """A visit's line with ``extra`` fields after its own (a later one overrides)."""
    tail = extra if isinstance(extra, bytes) else extra.encode()
    return b'{"customer_id":"c1","type":"visit","ts":1700000000' + tail + b"}"


@pytest.mark.parametrize("line", [
    # What msgspec skips unread but json refuses, or reads where json gives up.
    visit(b',"note":"caf\xff"'), visit(b',"note":"\xed\xa0\x80"'), visit(b',"note":"\xc0\x80"'),
    visit(b',"customer_id":"caf\xc3\xa9"'), visit(',"note":"\\ud800"'),
    visit(',"customer_id":"\\ud800"'), visit(',"customer_id":"\\ud83d\\ude00"'),
    visit(',"note":' + "[" * 900 + "]" * 900), visit(',"note":' + "[" * 2000 + "]" * 2000),
    visit(',"note":' + "9" * 5000), visit(',"note":' + "9" * 600), visit(',"note":NaN'),
    visit(',"note":1e400'), visit(',"note":{"a":{"b":1}}'),
    # Values at the edges of the rules.
    visit(',"ts":-0'), visit(',"ts":-0.0'), visit(',"ts":100000000000'),
    visit(',"ts":100000000000.5'), visit(',"ts":"2024-01-01T00:00:00"'),
    visit(',"ts":" 2024-01-01T00:00:00.999+01:00 "'), visit(',"ts":"1969-12-31T23:59:59Z"'),
    visit(',"customer_id":18446744073709551615'), visit(',"customer_id":18446744073709551616'),
    visit(',"customer_id":-18446744073709551615'), visit(',"customer_id":" \\u2003"'),
    visit(',"customer_id":"' + "x" * 256 + '"'), visit(',"customer_id":"' + "x" * 257 + '"'),
    visit(',"event_id":""'), visit(',"event_id":18446744073709551616'), visit(',"event_id":7'),
    visit(',"type":"intervention","channel":"phone","playbook":"call"'),
    visit(',"type":"profile","segment":"a","value_tier":"b","category":"c"'),
    visit(',"type":"profile","segment":null,"value_tier":""'),
    visit(',"type":"order","amount":-0'), visit(',"type":"order","amount":-0.0'),
    visit(',"type":"order","amount":10000000000'), visit(',"type":"order","amount":1e-320'),
    visit(',"type":"order","amount":9007199254740993'), visit(',"type":"order","amount":null'),
    visit(',"type":"order","amount":1,"amount":"1"'), visit(',"type":"order","amount":"1"'),
    visit(',"type":"feedback","score":10,"kind":"nps"'), visit(',"type":"feedback","score":10.5'),
    visit(',"type":"feedback","score":5,"kind":"poll"'),
    visit(',"type":"support_ticket","severity":"urgent"'),
    visit(',"type":"support_ticket","severity":"minor"'),
    visit(',"type":"campaign_sent","channel":"chat"'),
    visit(',"type":"message_sent","channel":"chat"'),
    visit(',"type":"message_sent","channel":"push"'), visit(',"type":"campaign_sent"'),
    visit(',"type":"visit","channel":"phone","amount":-5,"score":99'),
    visit(',"\\u0074ype":"order","amount":3'),
])
def test_lines_at_the_edges_decode_as_decode_event_decodes_them(line: bytes) -> None:
    lines = [visit(""), line, visit(',"type":"order","amount":2')]
    assert_decoded_alike(lines)
    assert_decoded_alike(lines, msgpack_allowed=True)
    assert_decoded_alike(lines, now=1_700_000_000.0, max_future_seconds=0.0, max_amount=2.0)


def test_a_long_line_is_left_to_decode_event_and_decoded_alike() -> None:
    padding = "x" * FAST_LINE_BYTES
    assert_decoded_alike([visit(f',"note":"{padding}"'), visit("")])


# -- the bench workload --------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 7, 1000, 20_000])
def test_the_bench_workload_decodes_as_decode_event_decodes_each_line(size: int) -> None:
    lines = list(generate(20_000, customers=2_000, seed=11, poison_every=97))
    for start in range(0, len(lines), size):
        assert_decoded_alike(lines[start:start + size], now=START + 400 * 86400.0)


def test_a_workload_batch_holds_every_type_in_columns_and_its_profiles_in_extras() -> None:
    lines = list(generate(5_000, customers=500, seed=3))
    batch = assert_decoded_alike(lines)
    assert len(batch) == len(lines) and batch.invalid == []
    assert set(batch.types.tolist()) == {TYPE_CODES.index(t) for t in EVENT_TYPES} - {
        TYPE_CODES.index("intervention")}
    profiles = np.flatnonzero(batch.types == TYPE_CODES.index("profile")).tolist()
    assert sorted(batch.extras) == profiles and len(profiles) == len(set(batch.customer_ids))


def test_an_intervention_between_fast_lines_keeps_its_place_and_its_full_event() -> None:
    lines = [visit(""), visit(',"type":"intervention","channel":"phone","playbook":"call"'),
             b"not json", visit(',"customer_id":"\\u00fc"'),
             visit(',"type":"profile","segment":"home"'), visit(',"type":"order","amount":1')]
    batch = assert_decoded_alike(lines)
    assert batch.index.tolist() == [0, 1, 3, 4, 5]
    assert sorted(batch.extras) == [1, 3]
    assert batch.extras[1].attributes == {"playbook": "call"}
    assert batch.channel[1] == NO_CHANNEL and [e.reason for e in batch.invalid] == [
        "invalid_json"]


# -- the codes, the call, the doctests ------------------------------------------------------------

def test_the_codes_are_the_event_types_and_the_engines_channels() -> None:
    from churnwatch.core.kernels import fold

    assert set(TYPE_CODES) == EVENT_TYPES and len(TYPE_CODES) == len(EVENT_TYPES)
    assert [TYPE_CODES.index(t) for t in ("order", "feedback", "profile", "intervention")] == [
        fold.ORDER, fold.FEEDBACK, fold.PROFILE, fold.INTERVENTION]
    assert CHANNEL_CODES == columns.CHANNELS


def test_lines_and_positions_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 lines but 1 positions"):
        decode_lines([b"{}", b"{}"], ["x:1"])
    empty = decode_lines([], [])
    assert len(empty) == 0 and empty.events() == [] and empty.invalid == []


def test_the_module_doctests_pass() -> None:
    failed, tried = doctest.testmod(event_batch)
    assert failed == 0 and tried >= 6
