"""The customer state as named columns: one declared schema, one table per shard.

The columnar engine (:mod:`churnwatch.core.columnar`) keeps a shard's customers as numpy
columns, one row per customer, instead of one :class:`~churnwatch.core.customer.CustomerState`
object each. :data:`SCHEMA` is the single declaration of those columns: each one's name, dtype,
the signal it belongs to (the reference class in :mod:`churnwatch.core.signals` it mirrors),
its default and what it means. The table, the stored checkpoint and the docs are derived from
it; :func:`to_state` and :func:`set_from_state` translate a row to and from the per-customer
reference model, which is how reasons are worded for the rows whose tier changed, how a state
written by the per-customer engine is taken over, and how the differential tests compare the
two engines.

Times are epoch seconds in float64 (``nan``: never, where the reference has ``None``); the
five engagement channels each have the five counters of
:attr:`~churnwatch.core.signals.Engagement.channels`, in one ``(rows, 25)`` column.

>>> table = CustomerTable()
>>> rows = table.rows_for(["c1", "c2", "c1"], first_seen=[5.0, 7.0, 9.0])
>>> rows.tolist(), len(table), table["first_seen"].tolist()
([0, 1, 0], 2, [5.0, 7.0])
>>> from churnwatch.core.events import Event
>>> from churnwatch.core.customer import CustomerState, Windows
>>> state = CustomerState(first_seen=0.0)
>>> state.apply(Event("c1", "order", 86400.0, amount=12.5), Windows.default())
>>> set_from_state(table, 1, state)
>>> to_state(table, 1).to_wire() == state.to_wire()
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from churnwatch.core.customer import CustomerState
from churnwatch.core.signals import Engagement, Purchases, PurchaseTrend, Service

#: The engagement channels, in the order of their counters in the ``channels`` column.
CHANNELS = ("email", "whatsapp", "sms", "push", "chat")
#: Counters per channel: sent, opened, clicked, message sent, replied
#: (:data:`churnwatch.core.signals.SENT` ... ``REPLIED``).
COUNTERS_PER_CHANNEL = 5
#: Event ids remembered per customer for dedupe (the reference's ``RECENT_IDS_KEPT``).
RECENT_IDS = 8
#: Components stored per customer (recency, trend, engagement, service).
COMPONENT_COUNT = 4


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the customer table."""

    name: str
    dtype: str
    #: The signal it belongs to: the reference class (or part of the state) it mirrors.
    signal: str
    meaning: str
    default: float = 0.0
    #: Values per row (a 2-D column when above 1).
    width: int = 1


NAN = math.nan

#: Every column of the customer table. A column is appended, never reused: the stored
#: checkpoint names its columns, so a checkpoint written before a column existed reads it as
#: its default.
SCHEMA: tuple[Column, ...] = (
    Column("first_seen", "f8", "customer", "first event time seen"),
    Column("last_event_ts", "f8", "customer", "newest event time applied"),
    Column("segment", "i2", "customer", "declared segment: index into the table's labels, -1 none",
           -1),
    Column("value_tier", "i2", "customer", "declared value tier: index into the labels, -1 none",
           -1),
    Column("orders", "i4", "purchases", "purchase occasions (lines of one basket are one)"),
    Column("first_order", "f8", "purchases", "time of the first order (nan: none)", NAN),
    Column("last_order", "f8", "purchases", "time of the last order (nan: none)", NAN),
    Column("spend", "f8", "purchases", "what the orders came to, less refunds"),
    Column("refunds", "f8", "purchases", "what was refunded"),
    Column("first_basket", "i8", "purchases", "cents of the first order day (-1: unknown)", -1),
    Column("ord_short", "f8", "trend", "occasions decayed over the short half-life, as of ref"),
    Column("ord_long", "f8", "trend", "occasions decayed over the long half-life, as of ref"),
    Column("val_short", "f8", "trend", "order value decayed over the short half-life"),
    Column("val_long", "f8", "trend", "order value decayed over the long half-life"),
    Column("trend_ref", "f8", "trend", "the newest order line's time (the windows' as-of)"),
    Column("channels", "f8", "engagement", "per channel (CHANNELS): sent, opened, clicked, "
           "message sent, replied, decayed as of eng_ref",
           width=len(CHANNELS) * COUNTERS_PER_CHANNEL),
    Column("channel_seen", "u1", "engagement", "bit c set: channel c has had an event"),
    Column("eng_ref", "f8", "engagement", "the newest engagement event's time"),
    Column("tickets", "f8", "service", "support tickets weighted by severity, decayed"),
    Column("fb_sum", "f8", "service", "feedback scores (0..10), decay-weighted sum"),
    Column("fb_weight", "f8", "service", "feedback count, decayed"),
    Column("svc_ref", "f8", "service", "the newest ticket or feedback time"),
    Column("score", "f8", "score", "health score 0..100, hundredths (nan: not scored yet)", NAN),
    Column("tier", "i1", "score", "0 healthy .. 3 churned, -1 none", -1),
    Column("components", "i2", "score", "recency, trend, engagement, service (whole points, -1: "
           "no evidence)", -1, COMPONENT_COUNT),
    Column("component_count", "u1", "score", "components stored (0 before the first scoring)"),
    Column("scored_at", "f8", "score", "when it was last scored"),
    Column("next_review_at", "f8", "score", "when silence alone changes the tier (nan: never)",
           NAN),
    Column("tier_since", "f8", "score", "when the tier was entered"),
    Column("peak_score", "f8", "score", "highest score within the sudden-drop window"),
    Column("peak_at", "f8", "score", "when that peak was"),
    Column("drop_counted", "u1", "score", "this fall from the peak was counted as a sudden drop"),
    Column("high_value", "u1", "score", "declared high value or in the shop's top spenders"),
    Column("model_fit", "i4", "score", "which of the shard's model fits scored it"),
    Column("recent_ids", "u4", "idempotence", "hashes of the newest event ids, oldest first", 0,
           RECENT_IDS),
    Column("recent_count", "u1", "idempotence", "how many of recent_ids are in use"),
    Column("last_partition", "i8", "idempotence", "the source partition of the newest applied "
           "event (0: none)"),
    Column("last_offset", "i8", "idempotence", "its offset there", -1),
)

COLUMNS = {column.name: column for column in SCHEMA}
#: Per-row values too irregular for a column, kept only for the rows that have them: the open
#: playbook assignment and interventions (``CustomerState.outreach``) and the year of tier
#: changes (``CustomerState.history``).
SPARSE_FIELDS = ("outreach", "history")
SIGNALS = tuple(dict.fromkeys(column.signal for column in SCHEMA))


def column_bytes() -> int:
    """Bytes one row takes in the columns (before any compression of a checkpoint).

    >>> column_bytes()
    458
    """
    return sum(np.dtype(c.dtype).itemsize * c.width for c in SCHEMA)


class CustomerTable:
    """A shard's customers as the columns of :data:`SCHEMA`, with an id -> row index.

    Rows are only ever added; a customer keeps their row for the table's life. ``labels``
    interns the declared segment and value-tier strings the ``segment`` and ``value_tier``
    columns point into.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.labels: list[str] = []
        self._label_codes: dict[str, int] = {}
        self.sparse: dict[str, dict[int, Any]] = {name: {} for name in SPARSE_FIELDS}
        #: The columns' storage, ``capacity`` rows each (the first ``len(self)`` in use):
        #: index it with rows directly where a view per call would cost too much.
        self.columns = {c.name: _filled(c, max(capacity, 16)) for c in SCHEMA}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, name: str) -> np.ndarray:
        """The column ``name`` over the table's rows (a view: writes go to the table)."""
        return self.columns[name][:len(self.ids)]

    def row(self, customer_id: str) -> int | None:
        """The customer's row, or ``None`` when the table has not seen them."""
        return self.index.get(customer_id)

    def rows_for(self, customer_ids: Sequence[str], first_seen: Sequence[float] | np.ndarray
                 ) -> np.ndarray:
        """The rows of ``customer_ids``, adding a row at its defaults for each new one (first
        seen at the matching ``first_seen``)."""
        out = np.empty(len(customer_ids), dtype=np.int64)
        index = self.index
        for i, cid in enumerate(customer_ids):
            row = index.get(cid)
            if row is None:
                row = self._append(cid)
                self.columns["first_seen"][row] = first_seen[i]
                self.columns["last_event_ts"][row] = first_seen[i]
            out[i] = row
        return out

    def label_code(self, label: str | None) -> int:
        """The code of a segment or value-tier string (interned), ``-1`` for none."""
        if not label:
            return -1
        code = self._label_codes.get(label)
        if code is None:
            code = self._label_codes[label] = len(self.labels)
            self.labels.append(label)
        return code

    def label(self, code: int) -> str | None:
        """The string of a label code (``None`` for -1)."""
        return None if code < 0 else self.labels[code]

    def _append(self, customer_id: str) -> int:
        row = len(self.ids)
        if row == len(self.columns["first_seen"]):
            self._grow()
        self.ids.append(customer_id)
        self.index[customer_id] = row
        return row

    def _grow(self) -> None:
        for column in SCHEMA:
            old = self.columns[column.name]
            new = _filled(column, 2 * len(old))
            new[:len(old)] = old
            self.columns[column.name] = new


def _filled(column: Column, rows: int) -> np.ndarray:
    shape = (rows, column.width) if column.width > 1 else (rows,)
    return np.full(shape, column.default, dtype=column.dtype)


# -- the reference model, row by row ------------------------------------------------------------


def to_state(table: CustomerTable, row: int) -> CustomerState:
    """Row ``row`` as the per-customer reference model's state (the same fields, exactly)."""
    return to_states(table, [row])[0]


def to_states(table: CustomerTable, rows: Sequence[int] | np.ndarray) -> list[CustomerState]:
    """:func:`to_state` for many rows, each column gathered once."""
    d = table.columns
    index = np.asarray(rows, dtype=np.int64)
    col = {c.name: d[c.name][index].tolist() for c in SCHEMA}
    labels = table.labels
    outreach = table.sparse["outreach"]
    history = table.sparse["history"]
    out = []
    for i, row in enumerate(index.tolist()):
        state = CustomerState.__new__(CustomerState)
        state.first_seen = col["first_seen"][i]
        state.last_event_ts = col["last_event_ts"][i]
        code = col["segment"][i]
        state.segment = labels[code] if code >= 0 else None
        code = col["value_tier"][i]
        state.declared_value_tier = labels[code] if code >= 0 else None
        basket = col["first_basket"][i]
        first, last = col["first_order"][i], col["last_order"][i]
        state.purchases = Purchases(col["orders"][i], None if first != first else first,
                                    None if last != last else last, col["spend"][i],
                                    col["refunds"][i], None if basket < 0 else basket)
        state.trend = PurchaseTrend(col["ord_short"][i], col["ord_long"][i],
                                    col["val_short"][i], col["val_long"][i],
                                    col["trend_ref"][i])
        seen = col["channel_seen"][i]
        channels: dict[str, list[float]] = {}
        if seen:
            counters = col["channels"][i]
            for c, name in enumerate(CHANNELS):
                if seen >> c & 1:
                    channels[name] = counters[c * COUNTERS_PER_CHANNEL:
                                              (c + 1) * COUNTERS_PER_CHANNEL]
        state.engagement = Engagement(channels, col["eng_ref"][i])
        state.service = Service(col["tickets"][i], col["fb_sum"][i], col["fb_weight"][i],
                                col["svc_ref"][i])
        score = col["score"][i]
        state.score = None if score != score else score
        state.tier = col["tier"][i]
        state.components = col["components"][i][:col["component_count"][i]]
        state.scored_at = col["scored_at"][i]
        review = col["next_review_at"][i]
        state.next_review_at = None if review != review else review
        state.tier_since = col["tier_since"][i]
        state.peak_score = col["peak_score"][i]
        state.peak_at = col["peak_at"][i]
        state.drop_counted = bool(col["drop_counted"][i])
        state.high_value = bool(col["high_value"][i])
        partition = col["last_partition"][i]
        state.offsets = {partition: col["last_offset"][i]} if partition else {}
        state.recent_ids = col["recent_ids"][i][:col["recent_count"][i]]
        state.outreach = outreach.get(row)
        state.model_fit = col["model_fit"][i]
        state.history = history.get(row, [])
        out.append(state)
    return out


def set_from_state(table: CustomerTable, row: int, state: CustomerState) -> None:
    """Write the reference model's ``state`` into row ``row`` (of its source offsets, the
    newest: the shard's committed positions are what dedupes a source read again)."""
    t = table
    t["first_seen"][row] = state.first_seen
    t["last_event_ts"][row] = state.last_event_ts
    t["segment"][row] = t.label_code(state.segment)
    t["value_tier"][row] = t.label_code(state.declared_value_tier)
    bought = state.purchases
    t["orders"][row] = bought.orders
    t["first_order"][row] = NAN if bought.first_order is None else bought.first_order
    t["last_order"][row] = NAN if bought.last_order is None else bought.last_order
    t["spend"][row] = bought.spend
    t["refunds"][row] = bought.refunds
    t["first_basket"][row] = -1 if bought.first_basket is None else bought.first_basket
    trend = state.trend
    t["ord_short"][row], t["ord_long"][row] = trend.ord_short, trend.ord_long
    t["val_short"][row], t["val_long"][row] = trend.val_short, trend.val_long
    t["trend_ref"][row] = trend.ref
    counters = t["channels"][row]
    counters[:] = 0.0
    seen = 0
    for name, values in state.engagement.channels.items():
        c = CHANNELS.index(name)
        seen |= 1 << c
        counters[c * COUNTERS_PER_CHANNEL:(c + 1) * COUNTERS_PER_CHANNEL] = values
    t["channel_seen"][row] = seen
    t["eng_ref"][row] = state.engagement.ref
    service = state.service
    t["tickets"][row], t["fb_sum"][row] = service.tickets, service.fb_sum
    t["fb_weight"][row], t["svc_ref"][row] = service.fb_weight, service.ref
    t["score"][row] = NAN if state.score is None else state.score
    t["tier"][row] = state.tier
    components = t["components"][row]
    components[:] = -1
    components[:len(state.components)] = state.components[:COMPONENT_COUNT]
    t["component_count"][row] = min(len(state.components), COMPONENT_COUNT)
    t["scored_at"][row] = state.scored_at
    t["next_review_at"][row] = NAN if state.next_review_at is None else state.next_review_at
    t["tier_since"][row] = state.tier_since
    t["peak_score"][row], t["peak_at"][row] = state.peak_score, state.peak_at
    t["drop_counted"][row] = state.drop_counted
    t["high_value"][row] = state.high_value
    t["model_fit"][row] = state.model_fit
    t["last_partition"][row], t["last_offset"][row] = next(
        iter(sorted(state.offsets.items(), key=lambda item: item[1], reverse=True)), (0, -1))
    ids = state.recent_ids[-RECENT_IDS:]
    recent = t["recent_ids"][row]
    recent[:] = 0
    recent[:len(ids)] = ids
    t["recent_count"][row] = len(ids)
    for name in SPARSE_FIELDS:
        value = getattr(state, name)
        if value:
            t.sparse[name][row] = value
        else:
            t.sparse[name].pop(row, None)
