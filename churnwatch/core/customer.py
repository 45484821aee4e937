"""Per-customer state: the rolling windows that the health score is computed from.

Windows are exponentially decayed counters (a half-life instead of a hard edge): constant memory,
one multiply per update, and the result does not depend on the order events arrive in, so a late
event is applied exactly as if it had come on time. Every counter is kept "as of" a reference
time (the newest event of its kind) and decayed to any later instant on read.

>>> from churnwatch.core.events import Event
>>> c = CustomerState(first_seen=0.0)
>>> c.apply(Event("c1", "order", 0.0, amount=20.0), windows=Windows.default())
>>> c.apply(Event("c1", "order", 30 * 86400.0, amount=40.0), windows=Windows.default())
>>> c.orders, c.spend, c.mean_gap_days()
(2, 60.0, 30.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from churnwatch.core import events as ev

LN2 = math.log(2.0)
DAY = 86400.0

# Per-channel engagement counters, in this order.
SENT, OPENED, CLICKED, MSG_SENT, REPLIED = range(5)


@dataclass(frozen=True, slots=True)
class Windows:
    """Half-lives of the decayed windows, in seconds."""

    trend_short: float
    trend_long: float
    engagement: float
    service: float

    @classmethod
    def default(cls) -> Windows:
        """60 and 365 days for the trend, 90 days for engagement and service."""
        return cls(60 * DAY, 365 * DAY, 90 * DAY, 90 * DAY)


def decay(value: float, elapsed: float, half_life: float) -> float:
    """``value`` decayed over ``elapsed`` seconds; negative elapsed does not grow it.

    >>> decay(8.0, 2 * 86400.0, 86400.0)
    2.0
    """
    if elapsed <= 0.0 or value == 0.0:
        return value
    return value * math.exp(-LN2 * elapsed / half_life)


def _add(value: float, ref: float, ts: float, amount: float, half_life: float) -> tuple[float,
                                                                                        float]:
    """Add ``amount`` at time ``ts`` to a counter kept as of ``ref``; returns (value, ref)."""
    if ts >= ref:
        return decay(value, ts - ref, half_life) + amount, ts
    return value + amount * math.exp(-LN2 * (ref - ts) / half_life), ref


class CustomerState:
    """Everything churnwatch remembers about one customer.

    Fields are public for the scoring functions; only :meth:`apply` changes the windows, and the
    engine (``churnwatch.core.engine``) owns the scoring fields and the idempotence bookkeeping.
    """

    __slots__ = (
        "first_seen", "last_event_ts", "segment", "declared_value_tier",
        "orders", "first_order", "last_order", "spend", "refunds",
        "ord_short", "ord_long", "val_short", "val_long", "trend_ref",
        "channels", "eng_ref", "tickets", "fb_sum", "fb_weight", "svc_ref",
        "score", "tier", "components", "scored_at", "next_review_at", "tier_since",
        "peak_score", "peak_at", "drop_counted", "high_value",
        "offsets", "recent_ids", "model_fit",
        "outreach", "history",
    )

    def __init__(self, first_seen: float) -> None:
        self.first_seen = first_seen
        self.last_event_ts = first_seen
        self.segment: str | None = None
        self.declared_value_tier: str | None = None
        self.orders = 0
        self.first_order: float | None = None
        self.last_order: float | None = None
        self.spend = 0.0
        self.refunds = 0.0
        self.ord_short = 0.0
        self.ord_long = 0.0
        self.val_short = 0.0
        self.val_long = 0.0
        self.trend_ref = 0.0
        self.channels: dict[str, list[float]] = {}
        self.eng_ref = 0.0
        self.tickets = 0.0
        self.fb_sum = 0.0
        self.fb_weight = 0.0
        self.svc_ref = 0.0
        # Scoring, owned by the engine.
        self.score: float | None = None
        self.tier = -1
        self.components: list[int] = []
        self.scored_at = 0.0
        self.next_review_at: float | None = None
        self.tier_since = 0.0
        self.peak_score = 0.0
        self.peak_at = 0.0
        self.drop_counted = False
        self.high_value = False
        # Idempotence: the last applied offset per source partition, recent event ids.
        self.offsets: dict[int, int] = {}
        self.recent_ids: list[int] = []
        # Customer success (churnwatch.core.winback): the open playbook assignment and the
        # latest interventions; ``None`` until there is any.
        self.outreach: dict[str, Any] | None = None
        # Which of the shard's model fits (PopulationPriors.fits) the tier and score came from.
        self.model_fit = 0
        # The customer's newest tier changes, newest first, as compact records kept by the state
        # store when it commits a transition (``churnwatch.state.base.remember_transitions``);
        # the core only carries them.
        self.history: list[list[Any]] = []

    # -- windows -------------------------------------------------------------------------------

    def apply(self, event: ev.Event, windows: Windows) -> None:
        """Fold one valid event into the windows (idempotence is the engine's job)."""
        ts = event.ts
        kind = event.type
        if ts > self.last_event_ts:
            self.last_event_ts = ts
        if ts < self.first_seen:
            self.first_seen = ts
        if kind == ev.ORDER:
            # Order lines sharing the time of the first or last order (the lines of one basket,
            # same-day purchases in day-resolution logs) are one purchase occasion: they add
            # value, not frequency.
            occasion = 0.0 if ts in (self.first_order, self.last_order) else 1.0
            self.orders += int(occasion)
            self.spend += event.amount
            if self.first_order is None or ts < self.first_order:
                self.first_order = ts
            if self.last_order is None or ts > self.last_order:
                self.last_order = ts
            ref = self.trend_ref
            self.ord_short, _ = _add(self.ord_short, ref, ts, occasion, windows.trend_short)
            self.ord_long, _ = _add(self.ord_long, ref, ts, occasion, windows.trend_long)
            self.val_short, _ = _add(self.val_short, ref, ts, event.amount, windows.trend_short)
            self.val_long, self.trend_ref = _add(self.val_long, ref, ts, event.amount,
                                                 windows.trend_long)
        elif kind == ev.REFUND:
            self.refunds += event.amount
            self.spend = max(self.spend - event.amount, 0.0)
        elif kind in _ENGAGEMENT_SLOT:
            self._engage(str(event.channel), _ENGAGEMENT_SLOT[kind], ts, windows.engagement)
        elif kind == ev.SUPPORT_TICKET:
            self._service(ts, windows.service, tickets=event.severity)
        elif kind == ev.FEEDBACK:
            self._service(ts, windows.service, feedback=event.score)
        elif kind == ev.PROFILE:
            segment = event.attributes.get("segment")
            if segment:
                self.segment = segment
            value_tier = event.attributes.get("value_tier")
            if value_tier:
                self.declared_value_tier = value_tier
        elif kind == ev.INTERVENTION:
            self._intervened(event)

    def _engage(self, channel: str, slot: int, ts: float, half_life: float) -> None:
        counters = self.channels.get(channel)
        if counters is None:
            counters = self.channels[channel] = [0.0] * 5
        if ts > self.eng_ref:
            elapsed = ts - self.eng_ref
            for row in self.channels.values():
                for i in range(5):
                    row[i] = decay(row[i], elapsed, half_life)
            self.eng_ref = ts
            counters[slot] += 1.0
        else:
            counters[slot] += math.exp(-LN2 * (self.eng_ref - ts) / half_life)

    def _service(self, ts: float, half_life: float, tickets: float = 0.0,
                 feedback: float | None = None) -> None:
        if ts > self.svc_ref:
            elapsed = ts - self.svc_ref
            self.tickets = decay(self.tickets, elapsed, half_life)
            self.fb_sum = decay(self.fb_sum, elapsed, half_life)
            self.fb_weight = decay(self.fb_weight, elapsed, half_life)
            self.svc_ref = ts
            weight = 1.0
        else:
            weight = math.exp(-LN2 * (self.svc_ref - ts) / half_life)
        self.tickets += tickets * weight
        if feedback is not None:
            self.fb_sum += feedback * weight
            self.fb_weight += weight

    def _intervened(self, event: ev.Event) -> None:
        """Remember an intervention; the first one that answers the open playbook assignment
        marks the customer contacted (``churnwatch.core.winback`` counts it)."""
        outreach = self.outreach if self.outreach is not None else {}
        playbook = event.attributes.get("playbook")
        log = list(outreach.get("log", []))
        log.append([math.floor(event.ts), event.channel, playbook])
        log.sort(key=lambda entry: entry[0])
        outreach["log"] = log[-INTERVENTIONS_KEPT:]
        assigned = outreach.get("playbook")
        if (assigned is not None and outreach.get("contacted_at") is None
                and event.ts >= outreach.get("assigned_at", 0)
                and playbook in (None, assigned)):
            outreach["contacted_at"] = math.floor(event.ts)
        self.outreach = outreach

    # -- derived -------------------------------------------------------------------------------

    def mean_gap_days(self) -> float | None:
        """The customer's own mean gap between purchase occasions, in days (``None`` before a
        repeat)."""
        if self.orders < 2 or self.first_order is None or self.last_order is None:
            return None
        return (self.last_order - self.first_order) / DAY / (self.orders - 1)

    def engagement_totals(self, at: float, half_life: float) -> tuple[float, float, float, float]:
        """Decayed (sent, responses, campaign sends, message sends) as of ``at``."""
        sent = responses = campaigns = messages = 0.0
        elapsed = at - self.eng_ref
        for row in self.channels.values():
            c_sent, opened, clicked, m_sent, replied = row
            campaigns += c_sent
            messages += m_sent
            sent += c_sent + m_sent
            responses += min(c_sent, 0.6 * opened + 0.4 * clicked) + min(m_sent, replied)
        return (decay(sent, elapsed, half_life), decay(responses, elapsed, half_life),
                decay(campaigns, elapsed, half_life), decay(messages, elapsed, half_life))

    # -- wire format ---------------------------------------------------------------------------

    def to_wire(self) -> list[object]:
        """The stored form, for msgpack: ``[version, fields]``, the fields in the order of the
        field table :data:`WIRE_FIELDS` (the table names them; a new field is appended to it,
        so older blobs simply lack it). A field at its default (``None``; zero, false or empty
        where that is the default) is ``None``, and trailing ones are left out. Timestamps are
        whole seconds (relative to ``last_event_ts``, see ``_RELATIVE``), scores hundredths, a
        float with an integral value an integer (msgpack packs ``0`` in one byte, ``0.0`` in
        nine); all read back exactly. Measured against a map from field code to value: 13 bytes
        less per customer (a nil for each field at its default instead of a code for each one
        that is not).

        >>> state = CustomerState(first_seen=1_700_000_000.0)
        >>> wire = state.to_wire()
        >>> wire   # version 2; first seen 0 s before the newest event, at 1700000000
        [2, [0, 1700000000]]
        >>> CustomerState.from_wire(wire).to_wire() == wire
        True
        """
        base = math.floor(self.last_event_ts)
        # Defaults become None (the "or None"s, _fz), except where a zero is a value: the
        # relative instants and the score.
        fields: list[object] = [
            None if self.first_seen == 0 else math.floor(self.first_seen) - base,
            base, self.segment, self.declared_value_tier, self.orders or None,
            None if self.first_order is None else math.floor(self.first_order) - base,
            None if self.last_order is None else math.floor(self.last_order) - base,
            _fz(self.spend), _fz(self.refunds), _fz(self.ord_short), _fz(self.ord_long),
            _fz(self.val_short), _fz(self.val_long),
            None if self.trend_ref == 0 else math.floor(self.trend_ref) - base,
            {_CHANNEL_CODES.get(name, name): [_f(v) for v in row]
             for name, row in self.channels.items()} or None,
            None if self.eng_ref == 0 else math.floor(self.eng_ref) - base,
            _fz(self.tickets), _fz(self.fb_sum), _fz(self.fb_weight),
            None if self.svc_ref == 0 else math.floor(self.svc_ref) - base,
            None if self.score is None else round(self.score * 100),
            self.tier + 1 or None, self.components or None,
            None if self.scored_at == 0 else math.floor(self.scored_at) - base,
            None if self.next_review_at is None else math.ceil(self.next_review_at) - base,
            None if self.tier_since == 0 else math.floor(self.tier_since) - base,
            round(self.peak_score * 100) or None,
            None if self.peak_at == 0 else math.floor(self.peak_at) - base,
            self.drop_counted or None, self.high_value or None,
            self.offsets or None, self.recent_ids or None,
            None if self.outreach is None else {_OUTREACH_CODES.get(k, k): v
                                                for k, v in self.outreach.items()},
            self.model_fit or None,
            [[entry[0] - base, *entry[1:]] for entry in self.history] or None]
        while fields and fields[-1] is None:
            fields.pop()
        return [WIRE_VERSION, fields]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> CustomerState:
        """Inverse of :meth:`to_wire`; also reads version 1, a list of 34 to 36 values with no
        version (``tests/data/customer_wire_v1.msgpack``)."""
        if len(wire) > 2:
            fields = _from_version_1(wire)
        elif wire[0] != WIRE_VERSION:
            raise ValueError(f"customer state: wire format version {wire[0]!r} is not "
                             f"{WIRE_VERSION} (written by a newer churnwatch?)")
        else:
            fields = [None, *wire[1]]  # fields[code], code 0 being the version
            fields += [None] * (len(WIRE_FIELDS) - len(fields))
        (_, first_seen, base, segment, declared_value_tier, orders, first_order, last_order,
         spend, refunds, ord_short, ord_long, val_short, val_long, trend_ref, channels,
         eng_ref, tickets, fb_sum, fb_weight, svc_ref, score, tier, components, scored_at,
         next_review_at, tier_since, peak_score, peak_at, drop_counted, high_value, offsets,
         recent_ids, outreach, model_fit, history) = fields[:len(WIRE_FIELDS)]
        base = base or 0
        state = cls.__new__(cls)
        # Relative instants: absent is 0 ("never"), or None where that is the default.
        state.first_seen = 0 if first_seen is None else base + first_seen
        state.last_event_ts = base
        state.segment = segment
        state.declared_value_tier = declared_value_tier
        state.orders = orders or 0
        state.first_order = None if first_order is None else base + first_order
        state.last_order = None if last_order is None else base + last_order
        state.spend = float(spend or 0.0)
        state.refunds = float(refunds or 0.0)
        state.ord_short = float(ord_short or 0.0)
        state.ord_long = float(ord_long or 0.0)
        state.val_short = float(val_short or 0.0)
        state.val_long = float(val_long or 0.0)
        state.trend_ref = 0 if trend_ref is None else base + trend_ref
        state.channels = {_CHANNEL_NAMES[name] if isinstance(name, int) else name:
                          [float(v) for v in row] for name, row in (channels or {}).items()}
        state.eng_ref = 0 if eng_ref is None else base + eng_ref
        state.tickets = float(tickets or 0.0)
        state.fb_sum = float(fb_sum or 0.0)
        state.fb_weight = float(fb_weight or 0.0)
        state.svc_ref = 0 if svc_ref is None else base + svc_ref
        state.score = None if score is None else score / 100.0
        state.tier = (tier or 0) - 1
        state.components = list(components or [])
        state.scored_at = 0 if scored_at is None else base + scored_at
        state.next_review_at = None if next_review_at is None else base + next_review_at
        state.tier_since = 0 if tier_since is None else base + tier_since
        state.peak_score = (peak_score or 0) / 100.0
        state.peak_at = 0 if peak_at is None else base + peak_at
        state.drop_counted = bool(drop_counted)
        state.high_value = bool(high_value)
        state.offsets = {int(k): v for k, v in offsets.items()} if offsets else {}
        state.recent_ids = list(recent_ids or [])
        state.outreach = None if outreach is None else {
            _OUTREACH_NAMES[k] if isinstance(k, int) else k: v for k, v in outreach.items()}
        state.model_fit = int(model_fit or 0)
        state.history = [[base + entry[0], *entry[1:]] for entry in history or []]
        return state


#: The current version of :meth:`CustomerState.to_wire` (field code 0).
WIRE_VERSION = 2

#: The field table of the stored customer state (version 2): position -> name, position 0
#: being the version. Positions are never reused: a new field is appended and reads as its
#: default from states written before it.
WIRE_FIELDS = (
    "version", "first_seen", "last_event_ts", "segment", "declared_value_tier", "orders",
    "first_order", "last_order", "spend", "refunds", "ord_short", "ord_long", "val_short",
    "val_long", "trend_ref", "channels", "eng_ref", "tickets", "fb_sum", "fb_weight", "svc_ref",
    "score", "tier+1", "components", "scored_at", "next_review_at", "tier_since", "peak_score",
    "peak_at", "drop_counted", "high_value", "offsets", "recent_ids", "outreach", "model_fit",
    "history",
)


# Instants stored as whole seconds relative to ``last_event_ts`` (code 2; so are the times of
# the ``history`` records): most are equal or close to it, and a small integer packs in one to
# three bytes instead of five. Absent means 0 ("never") or, for first/last order and the next
# review, ``None``.
_RELATIVE = frozenset({1, 6, 7, 14, 16, 20, 24, 25, 26, 28})


# Channels (churnwatch.core.events) as one-byte codes in the stored form; a name not listed here
# is stored as it is.
_CHANNEL_NAMES = ("email", "whatsapp", "sms", "push", "chat")
_CHANNEL_CODES = {name: code for code, name in enumerate(_CHANNEL_NAMES)}

# The outreach record's keys (churnwatch.core.winback) as one-byte codes in the stored form.
_OUTREACH_NAMES = ("playbook", "assigned_at", "holdout", "contacted_at", "counted", "log")
_OUTREACH_CODES = {name: code for code, name in enumerate(_OUTREACH_NAMES)}


def _from_version_1(data: list[Any]) -> list[Any]:
    """Version 1 (a positional list of 34 to 36 fields, absolute instants, with ``visits`` and
    ``last_visit`` at 20 and 21, which nothing read) as the fields of version 2, by position
    (0 being the version)."""
    fields = list(data[:20]) + list(data[22:34])
    if fields[14]:
        fields[14] = {_CHANNEL_CODES.get(k, k): v for k, v in fields[14].items()}
    fields[21] = data[23] + 1  # tier -> tier + 1
    outreach = data[34] if len(data) > 34 else None
    fields.append(None if outreach is None else {_OUTREACH_CODES.get(k, k): v
                                                 for k, v in outreach.items()})
    fields.append(data[35] if len(data) > 35 else 0)
    out: list[Any] = [WIRE_VERSION, *fields]
    out += [None] * (len(WIRE_FIELDS) - len(out))
    base = out[2] or 0
    for code in _RELATIVE:
        if out[code] is not None:
            if out[code] == 0 and code not in (6, 7, 25):  # 0: never
                out[code] = None
            else:
                out[code] -= base
    return out


def _fz(value: float) -> float | int | None:
    # A counter at its default (0) as None, else as _f.
    if value == 0:
        return None
    return int(value) if value.is_integer() and abs(value) < 2.0**53 else value


def _f(value: float) -> float | int:
    # An integral float as an int: one byte for 0 instead of nine, exact back through float().
    return int(value) if value.is_integer() and abs(value) < 2.0**53 else value


#: Interventions remembered per customer (for the customer page).
INTERVENTIONS_KEPT = 10

_ENGAGEMENT_SLOT = {
    ev.CAMPAIGN_SENT: SENT,
    ev.CAMPAIGN_OPENED: OPENED,
    ev.CAMPAIGN_CLICKED: CLICKED,
    ev.MESSAGE_SENT: MSG_SENT,
    ev.MESSAGE_REPLIED: REPLIED,
}
