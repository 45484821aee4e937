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
"""

from __future__ import annotations

import json
import math
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
)

MAX_CUSTOMER_ID_LENGTH = 256


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
    ``payload`` is the original bytes, untouched.
    """

    reason: str
    detail: str
    position: str
    payload: bytes
    customer_id: str | None = None


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
) -> Event | InvalidEvent:
    """Decode and validate one event from JSON text, msgpack bytes or an already-decoded mapping.

    ``now`` is the wall-clock time the caller trusts (the core never reads the clock); an event
    more than ``max_future_seconds`` after it is rejected as ``future_timestamp``.
    """
    raw = (
        payload
        if isinstance(payload, bytes)
        else str(payload).encode()
        if isinstance(payload, str)
        else b""
    )
    obj: Mapping[str, Any] | None = None
    try:
        obj = _to_mapping(payload)
        return _validate(obj, now=now, max_future_seconds=max_future_seconds)
    except ContractViolation as rejected:
        if isinstance(payload, Mapping):
            raw = json.dumps(payload, default=str, sort_keys=True).encode()
        customer = obj.get("customer_id") if obj is not None else None
        return InvalidEvent(
            rejected.reason,
            rejected.detail,
            position,
            raw,
            customer if isinstance(customer, str) else None,
        )


def _to_mapping(payload: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(payload, Mapping):
        return payload
    if isinstance(payload, str):
        payload = payload.encode()
    data = payload.lstrip()
    if data[:1] in (b"{", b"[", b'"') or data[:1].isdigit() or data[:1] in (b"t", b"f", b"n"):
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ContractViolation("invalid_json", f"not valid JSON: {exc}") from None
    else:
        try:
            obj = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise ContractViolation("invalid_msgpack", f"neither JSON nor msgpack: {exc}") from None
    if not isinstance(obj, Mapping):
        raise ContractViolation(
            "not_an_object", f"an event must be an object, got {type(obj).__name__}"
        )
    return obj


def _validate(obj: Mapping[str, Any], *, now: float | None, max_future_seconds: float) -> Event:
    customer_id = obj.get("customer_id")
    if customer_id is None:
        raise ContractViolation("missing_field", "field 'customer_id' is required")
    if isinstance(customer_id, int) and not isinstance(customer_id, bool):
        customer_id = str(customer_id)
    if not isinstance(customer_id, str) or not customer_id.strip():
        raise ContractViolation(
            "invalid_field", f"field 'customer_id' must be a non-empty string, got {customer_id!r}"
        )
    if len(customer_id) > MAX_CUSTOMER_ID_LENGTH:
        raise ContractViolation(
            "invalid_field",
            f"field 'customer_id' is longer than {MAX_CUSTOMER_ID_LENGTH} characters",
        )
    kind = obj.get("type")
    if kind is None:
        raise ContractViolation("missing_field", "field 'type' is required")
    if kind not in EVENT_TYPES:
        raise ContractViolation(
            "unknown_type",
            f"field 'type' is {kind!r}; expected one of {', '.join(sorted(EVENT_TYPES))}",
        )
    if "ts" not in obj:
        raise ContractViolation("missing_field", "field 'ts' is required")
    # Whole seconds: churn moves in days, and stored state then reads back bit for bit.
    ts = float(math.floor(parse_timestamp(obj["ts"])))
    if now is not None and ts > now + max_future_seconds:
        raise ContractViolation(
            "future_timestamp",
            f"field 'ts' ({obj['ts']!r}) is more than {max_future_seconds:.0f} s in the future",
        )
    event_id = obj.get("event_id")
    if event_id is not None:
        if isinstance(event_id, int) and not isinstance(event_id, bool):
            event_id = str(event_id)
        if not isinstance(event_id, str) or not event_id:
            raise ContractViolation(
                "invalid_field", f"field 'event_id' must be a non-empty string, got {event_id!r}"
            )

    if kind in (ORDER, REFUND):
        if "amount" not in obj:
            raise ContractViolation(
                "missing_field", f"field 'amount' is required for type '{kind}'"
            )
        amount = _number(obj["amount"], "amount")
        if amount < 0:
            raise ContractViolation(
                "invalid_field", f"field 'amount' must be >= 0, got {obj['amount']!r}"
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
                "invalid_field", f"field 'score' must be within 0..10, got {obj['score']!r}"
            )
        fb_kind = obj.get("kind")
        if fb_kind is not None and fb_kind not in FEEDBACK_KINDS:
            raise ContractViolation(
                "invalid_field",
                f"field 'kind' is {fb_kind!r}; expected one of {', '.join(sorted(FEEDBACK_KINDS))}",
            )
        return Event(customer_id, kind, ts, event_id, score=score)
    if kind == SUPPORT_TICKET:
        severity = obj.get("severity", "normal")
        if severity not in TICKET_SEVERITIES:
            raise ContractViolation(
                "invalid_field",
                f"field 'severity' is {severity!r}; expected one of {', '.join(TICKET_SEVERITIES)}",
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
            if not isinstance(value, str) or not value:
                raise ContractViolation(
                    "invalid_field", f"field '{key}' must be a non-empty string, got {value!r}"
                )
            attributes[key] = value
        return Event(customer_id, kind, ts, event_id, attributes=attributes)
    return Event(customer_id, kind, ts, event_id)  # visit


def parse_timestamp(value: Any) -> float:
    """Epoch seconds from an RFC 3339 string with a zone, or from epoch seconds.

    >>> parse_timestamp("2024-01-01T00:00:00+01:00")
    1704063600.0
    >>> parse_timestamp(1704067200)
    1704067200.0
    """
    if isinstance(value, bool):
        raise ContractViolation(
            "invalid_field", f"field 'ts' must be RFC 3339 or epoch seconds, got {value!r}"
        )
    if isinstance(value, (int, float)):
        ts = float(value)
        if not math.isfinite(ts) or ts < 0:
            raise ContractViolation(
                "invalid_field", f"field 'ts' must be a finite epoch time >= 0, got {value!r}"
            )
        if ts > 1e11:
            raise ContractViolation(
                "invalid_field",
                f"field 'ts' is {value!r}: epoch seconds expected (this looks like milliseconds)",
            )
        return ts
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ContractViolation(
                "invalid_field", f"field 'ts' is not an RFC 3339 time: {value!r}"
            ) from None
        if moment.tzinfo is None:
            raise ContractViolation(
                "invalid_field", f"field 'ts' has no time zone: {value!r} (add 'Z' or an offset)"
            )
        return moment.timestamp()
    raise ContractViolation(
        "invalid_field", f"field 'ts' must be RFC 3339 or epoch seconds, got {type(value).__name__}"
    )


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ContractViolation("invalid_field", f"field '{name}' must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ContractViolation("invalid_field", f"field '{name}' must be finite, got {value!r}")
    return number


def _channel(obj: Mapping[str, Any], kind: str, allowed: frozenset[str]) -> str:
    channel = obj.get("channel")
    if channel is None:
        raise ContractViolation("missing_field", f"field 'channel' is required for type '{kind}'")
    if channel not in allowed:
        raise ContractViolation(
            "invalid_field",
            f"field 'channel' is {channel!r}; for '{kind}' expected "
            f"one of {', '.join(sorted(allowed))}",
        )
    return str(channel)


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
        if not isinstance(playbook, str) or not playbook or len(playbook) > 64:
            raise ContractViolation(
                "invalid_field",
                f"field 'playbook' must be a non-empty string of at most 64 characters, "
                f"got {playbook!r}",
            )
        attributes["playbook"] = playbook
    return Event(customer_id, INTERVENTION, ts, event_id, channel=channel, attributes=attributes)
