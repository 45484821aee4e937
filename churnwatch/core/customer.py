"""Per-customer state: the signals the health score is computed from, and the engine's record.

A :class:`CustomerState` is made of four signals (``churnwatch.core.signals``), each a small
class with ``update`` and readings: :class:`~churnwatch.core.signals.Purchases`
(``state.purchases``), :class:`~churnwatch.core.signals.PurchaseTrend` (``state.trend``),
:class:`~churnwatch.core.signals.Engagement` (``state.engagement``) and
:class:`~churnwatch.core.signals.Service` (``state.service``). :meth:`CustomerState.apply` hands
each event to the signal it concerns; the decayed windows among them do not depend on the order
events arrive in, so a late event is applied exactly as if it had come on time.

>>> from churnwatch.core.events import Event
>>> c = CustomerState(first_seen=0.0)
>>> c.apply(Event("c1", "order", 0.0, amount=20.0), windows=Windows.default())
>>> c.apply(Event("c1", "order", 30 * 86400.0, amount=40.0), windows=Windows.default())
>>> c.purchases.orders, c.purchases.spend, c.purchases.mean_gap_days()
(2, 60.0, 30.0)
"""

from __future__ import annotations

import math
from typing import Any

from churnwatch.core import events as ev
from churnwatch.core.signals import (
    DAY,
    ENGAGEMENT_SLOT,
    Engagement,
    Purchases,
    PurchaseTrend,
    Service,
    Windows,
)

# DAY and Windows live in churnwatch.core.signals; they are also importable from here, beside
# the state whose instants and windows they measure.
__all__ = ["DAY", "INTERVENTIONS_KEPT", "WIRE_FIELDS", "WIRE_VERSION", "CustomerState", "Windows"]


class CustomerState:
    """Everything churnwatch remembers about one customer.

    The signals (``purchases``, ``trend``, ``engagement``, ``service``) are public for the
    scoring functions; only :meth:`apply` updates them. The engine
    (``churnwatch.core.engine``) owns the scoring fields and the idempotence bookkeeping.
    """

    __slots__ = (
        "first_seen", "last_event_ts", "segment", "declared_value_tier",
        "purchases", "trend", "engagement", "service",
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
        self.purchases = Purchases()
        self.trend = PurchaseTrend()
        self.engagement = Engagement()
        self.service = Service()
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

    def apply(self, event: ev.Event, windows: Windows) -> None:
        """Fold one valid event into the signal it concerns (idempotence is the engine's
        job)."""
        ts = event.ts
        kind = event.type
        if ts > self.last_event_ts:
            self.last_event_ts = ts
        if ts < self.first_seen:
            self.first_seen = ts
        if kind == ev.ORDER:
            occasion = 1.0 if self.purchases.is_new_occasion(ts) else 0.0
            self.purchases.update(event)
            self.trend.update(ts, occasion, event.amount, windows)
        elif kind == ev.REFUND:
            self.purchases.update(event)
        elif kind in ENGAGEMENT_SLOT:
            self.engagement.update(str(event.channel), kind, ts, windows.engagement)
        elif kind == ev.SUPPORT_TICKET:
            self.service.update(ts, windows.service, tickets=event.severity)
        elif kind == ev.FEEDBACK:
            self.service.update(ts, windows.service, feedback=event.score)
        elif kind == ev.PROFILE:
            segment = event.attributes.get("segment")
            if segment:
                self.segment = segment
            value_tier = event.attributes.get("value_tier")
            if value_tier:
                self.declared_value_tier = value_tier
        elif kind == ev.INTERVENTION:
            self._intervened(event)

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
        bought, trend, engagement, service = (self.purchases, self.trend, self.engagement,
                                              self.service)
        # Defaults become None (the "or None"s, _fz), except where a zero is a value: the
        # relative instants and the score.
        fields: list[object] = [
            None if self.first_seen == 0 else math.floor(self.first_seen) - base,
            base, self.segment, self.declared_value_tier, bought.orders or None,
            None if bought.first_order is None else math.floor(bought.first_order) - base,
            None if bought.last_order is None else math.floor(bought.last_order) - base,
            _fz(bought.spend), _fz(bought.refunds), _fz(trend.ord_short), _fz(trend.ord_long),
            _fz(trend.val_short), _fz(trend.val_long),
            None if trend.ref == 0 else math.floor(trend.ref) - base,
            {_CHANNEL_CODES.get(name, name): [_f(v) for v in row]
             for name, row in engagement.channels.items()} or None,
            None if engagement.ref == 0 else math.floor(engagement.ref) - base,
            _fz(service.tickets), _fz(service.fb_sum), _fz(service.fb_weight),
            None if service.ref == 0 else math.floor(service.ref) - base,
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
            [[entry[0] - base, *entry[1:]] for entry in self.history] or None,
            bought.first_basket]
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
         recent_ids, outreach, model_fit, history, first_basket) = fields[:len(WIRE_FIELDS)]
        base = base or 0
        state = cls.__new__(cls)
        # Relative instants: absent is 0 ("never"), or None where that is the default.
        state.first_seen = 0 if first_seen is None else base + first_seen
        state.last_event_ts = base
        state.segment = segment
        state.declared_value_tier = declared_value_tier
        state.purchases = Purchases(
            orders or 0, None if first_order is None else base + first_order,
            None if last_order is None else base + last_order, float(spend or 0.0),
            float(refunds or 0.0), first_basket)
        state.trend = PurchaseTrend(
            float(ord_short or 0.0), float(ord_long or 0.0), float(val_short or 0.0),
            float(val_long or 0.0), 0 if trend_ref is None else base + trend_ref)
        state.engagement = Engagement(
            {_CHANNEL_NAMES[name] if isinstance(name, int) else name: [float(v) for v in row]
             for name, row in (channels or {}).items()},
            0 if eng_ref is None else base + eng_ref)
        state.service = Service(
            float(tickets or 0.0), float(fb_sum or 0.0), float(fb_weight or 0.0),
            0 if svc_ref is None else base + svc_ref)
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
#: being the version. Codes 5 to 20 hold the signals' fields (churnwatch.core.signals), under the
#: names they had when they were attributes of the state: ``orders`` to ``refunds`` are
#: ``purchases``, ``ord_short`` to ``trend_ref`` are ``trend`` (``trend_ref`` its ``ref``),
#: ``channels`` and ``eng_ref`` are ``engagement``, ``tickets`` to ``svc_ref`` are ``service``;
#: ``first_basket`` (code 36, whole cents; absent from states written before it: unknown) is
#: ``purchases``'.
#: Positions are never reused: a new field is appended and reads as its default from states
#: written before it.
WIRE_FIELDS = (
    "version", "first_seen", "last_event_ts", "segment", "declared_value_tier", "orders",
    "first_order", "last_order", "spend", "refunds", "ord_short", "ord_long", "val_short",
    "val_long", "trend_ref", "channels", "eng_ref", "tickets", "fb_sum", "fb_weight", "svc_ref",
    "score", "tier+1", "components", "scored_at", "next_review_at", "tier_since", "peak_score",
    "peak_at", "drop_counted", "high_value", "offsets", "recent_ids", "outreach", "model_fit",
    "history", "first_basket",
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
    return None if value == 0 else _f(value)


def _f(value: float) -> float | int:
    # An integral float as an int: one byte for 0 instead of nine, exact back through float().
    return int(value) if value.is_integer() and abs(value) < 2.0**53 else value


#: Interventions remembered per customer (for the customer page).
INTERVENTIONS_KEPT = 10
