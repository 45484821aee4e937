"""The event contract: decoding and validating one customer event.

Every adapter (file replay, Redis Streams, Kafka, the simulator) hands raw payloads to
:func:`decode_event`; what comes back is either an :class:`Event` or an :class:`InvalidEvent`
naming what was wrong. Nothing here raises on bad input, so a poison message can never stop the
flow. The contract itself is documented in ``docs/events.md``.

>>> e = decode_event(b'{"customer_id": "c1", "type": "order", "ts": "2024-05-01T10:00:00Z",'
...                  b' "amount": 25.5}', position="orders.jsonl:1")
>>> (e.customer_id, e.type, e.ts, e.amount)
('c1', 'order', 1714557600.0, 25.5)
>>> bad = decode_event(b'{"customer_id": "c1", "type": "order", "ts": 0}', position="x:2")
>>> (bad.reason, bad.detail)
('missing_field', "field 'amount' is required for type 'order'")

Whatever the payload (not JSON, nested a million deep, numbers of a thousand digits, invalid
UTF-8, lone surrogates, msgpack extension types), the answer is one of the two:

>>> decode_event(b'{"customer_id": "c1", "type": ["order"], "ts": 0}', position="x:3").reason
'unknown_type'
>>> decode_event(b'{"customer_id": "\\\\ud800", "type": "visit", "ts": 0}', position="x:4").detail
"field 'customer_id' is not valid Unicode (a lone surrogate at index 0)"
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgpack

ORDER = "order"
REFUND = "refund"
CAMPAIGN_SENT = "campaign_sent"
CAMPAIGN_OPENED = "campaign_opened"
CAMPAIGN_CLICKED = "campaign_clicked"
MESSAGE_SENT = "message_sent"
MESSAGE_REPLIED = "message_replied"
SUPPORT_TICKET = "support_ticket"
FEEDBACK = "feedback"
VISIT = "visit"
PROFILE = "profile"
#: Customer success acted: a playbook's outreach went out (see docs/events.md).
INTERVENTION = "intervention"

CAMPAIGN_CHANNELS = frozenset({"email", "whatsapp", "sms", "push"})
MESSAGE_CHANNELS = frozenset({"whatsapp", "email", "sms", "chat"})
EVENT_TYPES = frozenset(
    {
        ORDER,
        REFUND,
        CAMPAIGN_SENT,
        CAMPAIGN_OPENED,
        CAMPAIGN_CLICKED,
        MESSAGE_SENT,
        MESSAGE_REPLIED,
        SUPPORT_TICKET,
        FEEDBACK,
        VISIT,
        PROFILE,
        INTERVENTION,
    }
)
FEEDBACK_KINDS = frozenset({"nps", "csat", "review"})
TICKET_SEVERITIES = {"low": 0.5, "normal": 1.0, "high": 2.0, "urgent": 3.0, "critical": 3.0}

#: Dead-letter reasons; a bounded set, so it can label a metric.
DEAD_LETTER_REASONS = (
    "invalid_json",
    "invalid_msgpack",
    "not_an_object",
    "missing_field",
    "invalid_field",
    "unknown_type",
    "future_timestamp",
    "too_late",
    "too_large",
)

MAX_CUSTOMER_ID_LENGTH = 256
#: Payloads longer than this are ``too_large`` dead letters, refused before parsing; such a dead
#: letter keeps the first :data:`TOO_LARGE_KEPT_BYTES` of the payload (dead letters are capped in
#: number, and this caps them in size).
MAX_PAYLOAD_BYTES = 1 << 20
TOO_LARGE_KEPT_BYTES = 1 << 16
#: The default ceiling of ``amount`` (``[input] max_amount``).
DEFAULT_MAX_AMOUNT = 1e10
#: Epoch seconds beyond this are refused; between it and :data:`_MAX_EPOCH_MILLIS` they look like
#: epoch milliseconds (years 5138 and 5138 in milliseconds), beyond that they are out of range.
MAX_EPOCH_SECONDS = 1e11
_MAX_EPOCH_MILLIS = 1e14
_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class Event:
    """One validated customer event. ``ts`` is event time in epoch seconds (UTC)."""

    customer_id: str
    type: str
    ts: float
    event_id: str | None = None
    amount: float = 0.0
    channel: str | None = None
    score: float | None = None
    severity: float = 1.0
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InvalidEvent:
    """An input that broke the contract, on its way to the dead-letter output.

    ``position`` says where it came from (``file:line``, ``stream:id``, ``topic:partition:offset``);
    ``payload`` is the original bytes, untouched. ``partition`` and ``offset`` are the replayable
    position the adapter knows (a source partition and an increasing offset in it; ``""`` and
    ``-1`` when there is none): the dead-letter output writes each position once, so a dead
    letter read again after a resume is not repeated. ``customer_id`` is set only when it is a
    valid one.
    """

    reason: str
    detail: str
    position: str
    payload: bytes
    customer_id: str | None = None
    partition: str = ""
    offset: int = -1


class ContractViolation(Exception):
    """An input breaks the event contract; ``reason`` is one of :data:`DEAD_LETTER_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def decode_event(
    payload: bytes | str | Mapping[str, Any],
    *,
    position: str,
    now: float | None = None,
    max_future_seconds: float = 86400.0,
    max_amount: float = DEFAULT_MAX_AMOUNT,
    msgpack_allowed: bool = True,
) -> Event | InvalidEvent:
    """Decode and validate one event from JSON text, msgpack bytes or an already-decoded mapping.

    ``now`` is the wall-clock time the caller trusts (the core never reads the clock); an event
    more than ``max_future_seconds`` after it is rejected as ``future_timestamp``. An ``amount``
    above ``max_amount`` is an ``invalid_field``. Never raises: anything that is not a valid event
    comes back as an :class:`InvalidEvent` whose ``reason`` is in :data:`DEAD_LETTER_REASONS`.

    A file's line is JSON or nothing (``msgpack_allowed=False``), so bytes that are not UTF-8
    are ``invalid_json`` there; on a stream, a payload that does not start like JSON is taken
    for msgpack, and binary that is neither is ``invalid_msgpack``:

    >>> decode_event(b"caf\\xe9", position="orders.jsonl:7", msgpack_allowed=False).detail
    'not valid UTF-8 at byte 3'
    >>> decode_event(b"caf\\xe9", position="churnwatch:events:0:1-0").reason
    'invalid_msgpack'
    """
    raw = _payload_bytes(payload)
    obj: Mapping[Any, Any] | None = None
    try:
        obj = _to_mapping(payload, raw, msgpack_allowed)
        return _validate(obj, now=now, max_future_seconds=max_future_seconds,
                         max_amount=max_amount)
    except ContractViolation as rejected:
        reason, detail = rejected.reason, rejected.detail
    except Exception as exc:  # a bug in a rule must not stop the flow either: say what it was
        reason, detail = "invalid_field", f"could not be validated: {type(exc).__name__}"
    if reason == "too_large":
        raw = raw[:TOO_LARGE_KEPT_BYTES]
    return InvalidEvent(reason, detail, position, raw, _readable_customer(obj))


def customer_id_of(obj: Any) -> str | None:
    """The customer id of a decoded event as the flow reads it, or ``None`` when it has no valid
    one (publishers partition by it).

    >>> customer_id_of({"customer_id": 42}), customer_id_of({"customer_id": ["c1"]})
    ('42', None)
    """
    if not isinstance(obj, Mapping):
        return None
    try:
        return _customer_id(obj)
    except ContractViolation:
        return None


def _payload_bytes(payload: Any) -> bytes:
    """The payload as the exact bytes a dead letter keeps (a mapping as JSON, best effort)."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogatepass")
    try:
        return json.dumps(payload, default=str, sort_keys=True).encode("utf-8", "surrogatepass")
    except Exception:  # circular, nested too deep, keys that do not sort: keep what repr says
        try:
            return repr(payload).encode("utf-8", "surrogatepass")
        except Exception:
            return f"<{type(payload).__name__}>".encode()


def _readable_customer(obj: Mapping[Any, Any] | None) -> str | None:
    if obj is None:
        return None
    try:
        return customer_id_of(obj)
    except Exception:
        return None


def _to_mapping(payload: Any, raw: bytes, msgpack_allowed: bool = True) -> Mapping[Any, Any]:
    if isinstance(payload, Mapping):
        return payload
    if not isinstance(payload, (bytes, bytearray, memoryview, str)):
        raise ContractViolation(
            "not_an_object", f"an event must be an object, got {type(payload).__name__}"
        )
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise ContractViolation(
            "too_large",
            f"payload of {len(raw)} bytes; at most {MAX_PAYLOAD_BYTES} are read (the first "
            f"{TOO_LARGE_KEPT_BYTES} are kept here)",
        )
    data = raw.lstrip()
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM):].lstrip()
    head = data[:1]
    if (not msgpack_allowed or head in (b"{", b"[", b'"', b"-") or head.isdigit()
            or head in (b"t", b"f", b"n")):
        try:
            obj = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ContractViolation(
                "invalid_json", f"not valid UTF-8 at byte {exc.start + len(raw) - len(data)}"
            ) from None
        except ValueError as exc:
            raise ContractViolation("invalid_json", f"not valid JSON: {_clip(str(exc))}") from None
        except RecursionError:
            raise ContractViolation("invalid_json", "JSON nested too deep") from None
    else:
        try:
            obj = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except RecursionError:
            raise ContractViolation("invalid_msgpack", "msgpack nested too deep") from None
        except Exception as exc:  # msgpack raises several unrelated types
            raise ContractViolation(
                "invalid_msgpack", f"neither JSON nor msgpack: {_clip(str(exc))}"
            ) from None
    if not isinstance(obj, Mapping):
        raise ContractViolation(
            "not_an_object", f"an event must be an object, got {type(obj).__name__}"
        )
    return obj


def _validate(
    obj: Mapping[Any, Any], *, now: float | None, max_future_seconds: float, max_amount: float
) -> Event:
    customer_id = _customer_id(obj)
    kind = obj.get("type")
    if kind is None:
        raise ContractViolation("missing_field", "field 'type' is required")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        raise ContractViolation(
            "unknown_type",
            f"field 'type' is {_show(kind)}; expected one of {', '.join(sorted(EVENT_TYPES))}",
        )
    if "ts" not in obj:
        raise ContractViolation("missing_field", "field 'ts' is required")
    # Whole seconds: churn moves in days, and stored state then reads back bit for bit.
    ts = float(math.floor(parse_timestamp(obj["ts"])))
    if now is not None and ts > now + max_future_seconds:
        raise ContractViolation(
            "future_timestamp",
            f"field 'ts' ({_show(obj['ts'])}) is more than {max_future_seconds:.0f} s in the "
            "future",
        )
    event_id = obj.get("event_id")
    if event_id is not None:
        event_id = _text(_integer_as_text(event_id), "event_id")

    if kind in (ORDER, REFUND):
        if "amount" not in obj:
            raise ContractViolation(
                "missing_field", f"field 'amount' is required for type '{kind}'"
            )
        amount = _number(obj["amount"], "amount")
        if amount < 0:
            raise ContractViolation(
                "invalid_field", f"field 'amount' must be >= 0, got {_show(obj['amount'])}"
            )
        if amount > max_amount:
            raise ContractViolation(
                "invalid_field",
                f"field 'amount' is {_show(obj['amount'])}, above the ceiling {max_amount:g} "
                "(input.max_amount)",
            )
        return Event(customer_id, kind, ts, event_id, amount=amount)
    if kind in (CAMPAIGN_SENT, CAMPAIGN_OPENED, CAMPAIGN_CLICKED):
        return Event(
            customer_id, kind, ts, event_id, channel=_channel(obj, kind, CAMPAIGN_CHANNELS)
        )
    if kind in (MESSAGE_SENT, MESSAGE_REPLIED):
        return Event(customer_id, kind, ts, event_id, channel=_channel(obj, kind, MESSAGE_CHANNELS))
    if kind == FEEDBACK:
        if "score" not in obj:
            raise ContractViolation(
                "missing_field", "field 'score' is required for type 'feedback'"
            )
        score = _number(obj["score"], "score")
        if not 0 <= score <= 10:
            raise ContractViolation(
                "invalid_field", f"field 'score' must be within 0..10, got {_show(obj['score'])}"
            )
        fb_kind = obj.get("kind")
        if fb_kind is not None and (not isinstance(fb_kind, str) or fb_kind not in FEEDBACK_KINDS):
            raise ContractViolation(
                "invalid_field",
                f"field 'kind' is {_show(fb_kind)}; expected one of "
                f"{', '.join(sorted(FEEDBACK_KINDS))}",
            )
        return Event(customer_id, kind, ts, event_id, score=score)
    if kind == SUPPORT_TICKET:
        severity = obj.get("severity", "normal")
        if not isinstance(severity, str) or severity not in TICKET_SEVERITIES:
            raise ContractViolation(
                "invalid_field",
                f"field 'severity' is {_show(severity)}; expected one of "
                f"{', '.join(TICKET_SEVERITIES)}",
            )
        return Event(customer_id, kind, ts, event_id, severity=TICKET_SEVERITIES[severity])
    if kind == INTERVENTION:
        return _intervention(obj, customer_id, ts, event_id)
    if kind == PROFILE:
        attributes: dict[str, str] = {}
        for key in ("segment", "category", "value_tier"):
            value = obj.get(key)
            if value is None:
                continue
            attributes[key] = _text(value, key)
        return Event(customer_id, kind, ts, event_id, attributes=attributes)
    return Event(customer_id, kind, ts, event_id)  # visit


def parse_timestamp(value: Any) -> float:
    """Epoch seconds from an RFC 3339 string with a zone, or from epoch seconds.

    >>> parse_timestamp("2024-01-01T00:00:00+01:00")
    1704063600.0
    >>> parse_timestamp(1704067200)
    1704067200.0
    >>> parse_timestamp(1e30)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    churnwatch.core.events.ContractViolation: field 'ts' is 1e+30: out of range (epoch seconds...
    """
    if isinstance(value, bool):
        raise ContractViolation(
            "invalid_field", f"field 'ts' must be RFC 3339 or epoch seconds, got {value!r}"
        )
    if isinstance(value, (int, float)):
        if isinstance(value, int) and abs(value) > 2**63:
            raise ContractViolation(
                "invalid_field",
                f"field 'ts' is {_show(value)}: out of range (epoch seconds from 0 to "
                f"{MAX_EPOCH_SECONDS:g} expected)",
            )
        ts = float(value)
        if not math.isfinite(ts) or ts < 0:
            raise ContractViolation(
                "invalid_field", f"field 'ts' must be a finite epoch time >= 0, got {_show(value)}"
            )
        if ts > _MAX_EPOCH_MILLIS:
            raise ContractViolation(
                "invalid_field",
                f"field 'ts' is {_show(value)}: out of range (epoch seconds from 0 to "
                f"{MAX_EPOCH_SECONDS:g} expected)",
            )
        if ts > MAX_EPOCH_SECONDS:
            raise ContractViolation(
                "invalid_field",
                f"field 'ts' is {_show(value)}: epoch seconds expected (this looks like "
                "milliseconds)",
            )
        return ts
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ContractViolation(
                "invalid_field", f"field 'ts' is not an RFC 3339 time: {_show(value)}"
            ) from None
        if moment.tzinfo is None:
            raise ContractViolation(
                "invalid_field",
                f"field 'ts' has no time zone: {_show(value)} (add 'Z' or an offset)",
            )
        try:
            ts = moment.timestamp()
        except (OverflowError, ValueError):
            ts = -1.0
        if not 0 <= ts <= MAX_EPOCH_SECONDS:
            raise ContractViolation(
                "invalid_field", f"field 'ts' is {_show(value)}: out of range (before 1970)"
            )
        return ts
    raise ContractViolation(
        "invalid_field", f"field 'ts' must be RFC 3339 or epoch seconds, got {type(value).__name__}"
    )


def _customer_id(obj: Mapping[Any, Any]) -> str:
    customer_id = obj.get("customer_id")
    if customer_id is None:
        raise ContractViolation("missing_field", "field 'customer_id' is required")
    customer_id = _text(_integer_as_text(customer_id), "customer_id")
    if not customer_id.strip():
        raise ContractViolation(
            "invalid_field", f"field 'customer_id' must be a non-empty string, got {customer_id!r}"
        )
    if len(customer_id) > MAX_CUSTOMER_ID_LENGTH:
        raise ContractViolation(
            "invalid_field",
            f"field 'customer_id' is longer than {MAX_CUSTOMER_ID_LENGTH} characters",
        )
    return customer_id


def _integer_as_text(value: Any) -> Any:
    """An integer id as its decimal text (within 64 bits; longer ones stay integers, refused)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() <= 64:
        return str(value)
    return value


def _text(value: Any, name: str) -> str:
    """A non-empty string field that can be written as UTF-8 (keys, hashes, labels need it).

    Lone surrogates (``"\\ud800"`` in JSON) are refused rather than escaped: an escaped id could
    collide with a real one spelled like the escape.
    """
    if not isinstance(value, str) or not value:
        raise ContractViolation(
            "invalid_field", f"field '{name}' must be a non-empty string, got {_show(value)}"
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ContractViolation(
                "invalid_field",
                f"field '{name}' is not valid Unicode (a lone surrogate at index {exc.start})",
            ) from None
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ContractViolation(
            "invalid_field", f"field '{name}' must be a number, got {_show(value)}"
        )
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ContractViolation(
            "invalid_field", f"field '{name}' must be a finite number, got {_show(value)}"
        )
    return number


def _channel(obj: Mapping[Any, Any], kind: str, allowed: frozenset[str]) -> str:
    channel = obj.get("channel")
    if channel is None:
        raise ContractViolation("missing_field", f"field 'channel' is required for type '{kind}'")
    if not isinstance(channel, str) or channel not in allowed:
        raise ContractViolation(
            "invalid_field",
            f"field 'channel' is {_show(channel)}; for '{kind}' expected "
            f"one of {', '.join(sorted(allowed))}",
        )
    return channel


_REPR = reprlib.Repr()
_REPR.maxstring = 80
_REPR.maxother = 80
_REPR.maxlevel = 2


def _show(value: Any) -> str:
    """A short, safe rendering of an offending value for a dead letter's detail: bounded in
    length and depth, ASCII-escaped, whatever the value (a 10,000-digit integer, a list nested a
    thousand deep)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    try:
        return _REPR.repr(value).encode("ascii", "backslashreplace").decode("ascii")
    except Exception:
        return f"a {type(value).__name__}"


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# -- interventions -------------------------------------------------------------------------------

#: Channels an intervention can go out on.
INTERVENTION_CHANNELS = frozenset({"phone", "whatsapp", "email", "sms", "chat", "letter", "visit"})


def _intervention(obj: Mapping[str, Any], customer_id: str, ts: float,
                  event_id: str | None) -> Event:
    """An ``intervention``: ``channel`` required, ``playbook`` (the playbook acted on) optional.

    >>> e = decode_event({"customer_id": "c1", "type": "intervention", "ts": 0,
    ...                   "channel": "phone", "playbook": "fix_service_first"}, position="x:1")
    >>> e.channel, e.attributes["playbook"]
    ('phone', 'fix_service_first')
    """
    channel = _channel(obj, INTERVENTION, INTERVENTION_CHANNELS)
    attributes: dict[str, str] = {}
    playbook = obj.get("playbook")
    if playbook is not None:
        playbook = _text(playbook, "playbook")
        if len(playbook) > 64:
            raise ContractViolation(
                "invalid_field",
                f"field 'playbook' must be at most 64 characters, got {_show(playbook)}",
            )
        attributes["playbook"] = playbook
    return Event(customer_id, INTERVENTION, ts, event_id, channel=channel, attributes=attributes)
