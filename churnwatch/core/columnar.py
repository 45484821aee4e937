"""The columnar engine of one shard: micro-batches applied as passes over arrays.

The shard's customers are the rows of a :class:`~churnwatch.core.columns.CustomerTable`. A
micro-batch gives exactly what its reference, :meth:`churnwatch.core.engine.ShardEngine.
process`, gives event by event (differential tests hold it to that, on any batching):

1. each event's fate in arrival order (:func:`kernels.fold.admit`: dedupe, lateness);
2. what the shard's priors learn from the admitted events, up to the one that finds a refit of
   the buyer model due: the batch is cut there, so a refit falls at the same event whatever
   the batching;
3. the events before the cut in rounds, round ``k`` holding every customer's ``k``-th event:
   reviews due before it, the fold into the four signals (:func:`kernels.fold.apply_events`),
   the assessment (:mod:`kernels.scoring`); between refits a customer's score depends on their
   own events and the shop's model alone, so scoring every customer's first event, then every
   second one, is the reference's order as far as any score can tell;
4. at a cut, the reviews the watermark passed before it, then the refit; at the end, every row
   whose review time has come is brought to ``now``.

Python runs for the rows whose tier changes or whose playbook assignment is open (reasons,
playbooks, transition records), for profiles and interventions, and for the orders the buyer
sample learns from. The engine reads no clock and does no I/O.

>>> from churnwatch.core.config import ChurnwatchConfig
>>> from churnwatch.core.events import Event
>>> from churnwatch.core.records import Incoming, ShardState
>>> shard = ColumnarShard(0, ChurnwatchConfig(), ShardState())
>>> result = shard.process_items([Incoming(Event("c1", "order", 0.0, amount=10.0)),
...                               Incoming(Event("c2", "visit", 0.0))], now=0.0)
>>> result.scored, len(shard.table), shard.table["orders"].tolist()
(2, 2, [1, 0])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from churnwatch.core import events as ev
from churnwatch.core.aggregates import (
    CounterKey,
    GaugeKey,
    RecoveryCount,
    SegmentKeys,
    SuddenDropCount,
    TransitionCount,
)
from churnwatch.core.columns import CHANNELS, CustomerTable, set_from_state, to_states
from churnwatch.core.config import COMPONENTS, TIERS, ChurnwatchConfig
from churnwatch.core.customer import CustomerState
from churnwatch.core.engine import (
    HELD_RECHECK_SECONDS,
    MAX_REVIEWS_PER_ADVANCE,
    component_moves,
    id_hash,
)
from churnwatch.core.event_batch import TYPE_CODES, EventBatch
from churnwatch.core.history import change_evidence, history_entry, keep_history
from churnwatch.core.kernels import fold
from churnwatch.core.kernels.scoring import (
    Assessed,
    Policies,
    assess_rows,
    held_scores,
    next_reviews,
    rounded_components,
    tiers_for,
)
from churnwatch.core.priors import PopulationPriors
from churnwatch.core.records import BatchResult, Incoming, ShardState, SuddenDrop, TierTransition
from churnwatch.core.scoring import (
    AT_RISK,
    CHURNED,
    HEALTHY,
    Assessment,
    Component,
    RecencyInputs,
    buyer_model,
    horizons_in_use,
    reasons,
    tier_name,
    windows_of,
)
from churnwatch.core.signals import CLICK_ANSWER, DAY, OPEN_ANSWER
from churnwatch.core.winback import track

#: Review passes over the due rows at the end of a batch (each re-scores at most
#: ``MAX_REVIEWS_PER_ADVANCE`` times a row): a bound for rows held by hysteresis, who come due
#: again a minute on.
MAX_REVIEW_PASSES = 64
#: Type codes in the order of :mod:`churnwatch.core.kernels.fold`.
TYPE_CODE = {name: code for code, name in enumerate(TYPE_CODES)}
CHANNEL_CODE = {name: code for code, name in enumerate(CHANNELS)}
#: The type codes that can raise a customer's chance (``engine.LIFTING_EVENTS``).
LIFTING_CODES = np.array([fold.ORDER, fold.CAMPAIGN_OPENED, fold.CAMPAIGN_CLICKED,
                          fold.MESSAGE_REPLIED, fold.FEEDBACK])
#: What each engagement type code teaches the shard's response rate: (sent, answered).
ENGAGEMENT_OBSERVED = {fold.CAMPAIGN_SENT: (1.0, 0.0), fold.MESSAGE_SENT: (1.0, 0.0),
                       fold.CAMPAIGN_OPENED: (0.0, OPEN_ANSWER),
                       fold.CAMPAIGN_CLICKED: (0.0, CLICK_ANSWER),
                       fold.MESSAGE_REPLIED: (0.0, 1.0)}


@dataclass(slots=True)
class EventColumns:
    """A micro-batch of valid events as columns, in arrival order (one shard's share)."""

    customer_ids: list[str]
    types: np.ndarray
    ts: np.ndarray
    amount: np.ndarray
    channel: np.ndarray
    score: np.ndarray
    severity: np.ndarray
    event_ids: list[str | None]
    #: The whole event, for the rows Python handles (profiles and interventions).
    extras: dict[int, ev.Event] = field(default_factory=dict)
    partitions: np.ndarray | None = None
    offsets: np.ndarray | None = None
    positions: list[str] | None = None

    @classmethod
    def take(cls, batch: EventBatch, rows: np.ndarray, partitions: np.ndarray,
             offsets: np.ndarray, positions: Sequence[str]) -> EventColumns:
        """The decoded batch's valid events ``rows``, in that order, with each one's source
        partition id, offset and position."""
        listed = rows.tolist()
        extras = batch.extras
        return cls(
            [batch.customer_ids[r] for r in listed], batch.types[rows], batch.ts[rows],
            batch.amount[rows], batch.channel[rows], batch.score[rows], batch.severity[rows],
            [batch.event_ids[r] for r in listed],
            {i: extras[r] for i, r in enumerate(listed) if r in extras}, partitions, offsets,
            list(positions))

    @classmethod
    def concat(cls, parts: Sequence[EventColumns]) -> EventColumns:
        """Several batches as one, in order."""
        if len(parts) == 1:
            return parts[0]
        extras: dict[int, ev.Event] = {}
        base = 0
        for part in parts:
            extras.update({base + i: e for i, e in part.extras.items()})
            base += len(part.customer_ids)

        def joined(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])

        return cls(
            [c for p in parts for c in p.customer_ids], joined("types"), joined("ts"),
            joined("amount"), joined("channel"), joined("score"), joined("severity"),
            [e for p in parts for e in p.event_ids], extras,
            np.concatenate([p.partitions if p.partitions is not None
                            else np.zeros(len(p.customer_ids), dtype=np.int64) for p in parts]),
            np.concatenate([p.offsets if p.offsets is not None
                            else np.zeros(len(p.customer_ids), dtype=np.int64) for p in parts]),
            [x for p in parts for x in (p.positions or [""] * len(p.customer_ids))])

    @classmethod
    def empty(cls) -> EventColumns:
        """No events (a review of the due customers only)."""
        return cls.of([])

    @classmethod
    def of(cls, items: Sequence[Incoming]) -> EventColumns:
        """Columns of :class:`Incoming` items (tests and small callers)."""
        events = [item.event for item in items]
        return cls(
            [e.customer_id for e in events],
            np.array([TYPE_CODE[e.type] for e in events], dtype=np.uint8).reshape(-1),
            np.array([e.ts for e in events], dtype=float),
            np.array([e.amount for e in events], dtype=float),
            np.array([CHANNEL_CODE.get(e.channel or "", -1) for e in events], dtype=np.int8),
            np.array([math.nan if e.score is None else e.score for e in events], dtype=float),
            np.array([e.severity for e in events], dtype=float),
            [e.event_id for e in events],
            {i: e for i, e in enumerate(events) if e.type in (ev.PROFILE, ev.INTERVENTION)},
            np.array([item.partition for item in items], dtype=np.int64),
            np.array([item.offset for item in items], dtype=np.int64),
            [item.position for item in items])


class ColumnarShard:
    """The customers and priors of one shard, and the micro-batch steps over them."""

    def __init__(self, shard: int, config: ChurnwatchConfig, state: ShardState,
                 table: CustomerTable | None = None) -> None:
        self.shard = shard
        self.config = config
        self.state = state
        self.table = table if table is not None else CustomerTable()
        self._half_lives = np.array([config.trend_short_half_life_days * DAY,
                                     config.trend_long_half_life_days * DAY,
                                     config.engagement_half_life_days * DAY,
                                     config.service_half_life_days * DAY])
        self._keys: dict[str, SegmentKeys] = {}
        #: The rows the last call changed (for the store).
        self.changed_rows = np.zeros(0, dtype=np.int64)
        self._windows = windows_of(config)
        self._policy_key: tuple[object, ...] | None = None
        self._policy_cache: Policies | None = None
        self._policy_config = config
        # While a batch is processed: the watermark after each of its admitted events, and the
        # place of each transition in the reference's order.
        self._marks: np.ndarray | None = None
        self._keys_of: dict[int, tuple[int, int, float, str, int]] = {}

    # -- entry points ---------------------------------------------------------------------------

    def process_items(self, items: Sequence[Incoming], now: float) -> BatchResult:
        """:meth:`process` for :class:`Incoming` items."""
        return self.process(EventColumns.of(items), now)

    def process(self, batch: EventColumns, now: float) -> BatchResult:
        """Apply a micro-batch, then bring every due row to ``now`` (the watermark in replay,
        the wall clock live): what :meth:`ShardEngine.process` does, event by event, done as
        passes over arrays.

        Each customer's events are scored one at a time, as the reference does, but all
        customers at once: round ``k`` takes the ``k``-th admitted event of every customer in
        the batch. Between two refits of the buyer model a customer's score depends on their
        own events alone (the shop's rates are read as of the last refit), so the rounds give
        the reference's result; the batch is cut at each refit, which falls at the same event
        whatever the batching. The rows changed are left in :attr:`changed_rows`.
        """
        result = BatchResult()
        table = self.table
        replayed = self._replayed(batch)
        self._note_positions(batch)
        rows = table.rows_for(batch.customer_ids, batch.ts)
        floor_now = float(math.floor(now))
        affected = np.union1d(np.unique(rows), self._due_rows(max(
            floor_now, float(batch.ts.max()) if len(rows) else floor_now)))
        before = self._contributions(affected)
        status = self._admit(batch, rows, replayed)
        result.late = int((status == fold.LATE).sum())
        result.duplicates = int((status == fold.DUPLICATE).sum())
        self._too_late(batch, np.nonzero(status == fold.TOO_LATE)[0], result)
        admitted = np.nonzero(status <= fold.LATE)[0]
        result.scored = len(admitted)
        self._remember_positions(batch, rows, admitted)
        # The watermark as each admitted event finds it (the event's own time included).
        marks = np.maximum.accumulate(np.concatenate(
            ([self.state.watermark], batch.ts[admitted])))
        self._marks = marks[1:]
        self._keys_of = {}
        start = 0
        while start < len(admitted):
            stop = self._learn(batch, rows, admitted, marks, start)
            self._rounds(batch, rows, admitted[start:stop], marks[start + 1:stop + 1],
                         np.arange(start, stop), result)
            if stop < len(admitted):
                # The event at ``stop`` refits the model: every review the watermark passed
                # before it is done first, under the model it was due under.
                self._advance_all(float(marks[stop]), result)
                self.state.watermark = float(marks[stop + 1])
                self._refit(self.state.watermark)
            start = stop
        if len(admitted):
            result.last_event_ts = float(batch.ts[admitted].max())
            self.state.watermark = max(self.state.watermark, result.last_event_ts)
        self._advance_all(floor_now, result)
        self._account(before, self._contributions(affected))
        self.changed_rows = affected
        # In the order the reference records them, which no batching changes.
        keys = self._keys_of
        result.transitions.sort(key=lambda t: keys[id(t)])
        self._marks = None
        return result

    def review(self, now: float) -> BatchResult:
        """Bring the rows whose review time has come to ``now`` (no events)."""
        return self.process(EventColumns.empty(), now)

    def refit_at(self, now: float) -> bool:
        """Refit the buyer model at ``now`` if orders reached the sample since the last fit
        (``ShardEngine.refit_at``); ``True`` if it refitted, and :meth:`rescore` should
        follow."""
        priors = self.state.priors
        if not priors.unfitted_orders():
            return False
        self.state.watermark = max(self.state.watermark, now)
        self._refit(self.state.watermark)
        return True

    def rescore(self, now: float) -> BatchResult:
        """Re-score every scored row at ``now`` under the current model (after
        :meth:`refit_at`); a tier change is a silence transition (``ShardEngine.rescore``)."""
        result = BatchResult()
        now = float(math.floor(now))
        rows = np.nonzero(self.table["tier"] >= 0)[0]
        before = self._contributions(rows)
        self._advance(rows, np.full(len(rows), now), result)
        if len(rows):
            self._score(rows, np.maximum(now, self.table["scored_at"][rows]), result,
                        cause="silence", may_rise=np.zeros(len(rows), dtype=bool), waited=None)
        self._account(before, self._contributions(rows))
        self.changed_rows = rows
        return result

    def next_due(self) -> float | None:
        """The earliest review time of the shard's rows (``None``: nobody is due ever)."""
        due = self.table["next_review_at"]
        if not len(due) or np.isnan(due).all():
            return None
        return float(np.nanmin(due))

    def remember(self, transitions: Sequence[TierTransition], kept: int,
                 keep_days: float) -> None:
        """Add each transition to the front of its customer's tier history (``sparse
        ["history"]``), keeping every change within ``keep_days`` of the newest and at least the
        ``kept`` newest: what the reference's store does in ``commit``
        (:func:`churnwatch.state.base.remember_transitions`). The flow calls it just before it
        commits the rows, so the history is committed with them, exactly once."""
        history = self.table.sparse["history"]
        index = self.table.index
        for transition in transitions:
            row = index[transition.customer_id]
            history[row] = keep_history([history_entry(transition), *history.get(row, [])],
                                        transition.at, keep_days, kept)

    def _replayed(self, batch: EventColumns) -> np.ndarray:
        """Events at or before the shard's position in their source partition: applied (or
        skipped) already, committed with the shard; read again after a resume."""
        replayed = np.zeros(len(batch.customer_ids), dtype=np.bool_)
        if batch.partitions is None or batch.offsets is None or not self.state.positions:
            return replayed
        for partition, position in self.state.positions.items():
            replayed |= (batch.partitions == partition) & (batch.offsets <= position)
        return replayed

    def _refit(self, mark: float) -> None:
        priors = self.state.priors
        priors.learn_horizons()
        priors.refit(mark, horizons_in_use(self.config, priors), self.config.recency.prior())

    # -- the parts of a batch -------------------------------------------------------------------

    def _note_positions(self, batch: EventColumns) -> None:
        if batch.partitions is None or batch.offsets is None:
            return
        positions = self.state.positions
        for partition, offset in zip(batch.partitions.tolist(), batch.offsets.tolist(),
                                     strict=True):
            if partition and offset > positions.get(partition, -1):
                positions[partition] = offset

    def _too_late(self, batch: EventColumns, which: np.ndarray, result: BatchResult) -> None:
        days = self.config.allowed_lateness_days
        for i in which.tolist():
            partition = 0 if batch.partitions is None else int(batch.partitions[i])
            offset = 0 if batch.offsets is None else int(batch.offsets[i])
            result.dead_letters.append(ev.InvalidEvent(
                "too_late", f"event time {batch.ts[i]:.0f} is more than {days:g} days before "
                "the customer's latest event",
                batch.positions[i] if batch.positions else "", b"", batch.customer_ids[i],
                f"shard {self.shard} of {partition}" if partition else "",
                offset if partition else -1))

    def _remember_positions(self, batch: EventColumns, rows: np.ndarray,
                            admitted: np.ndarray) -> None:
        """Each customer's newest applied source position (shown with their state)."""
        if batch.partitions is None or batch.offsets is None or not len(admitted):
            return
        keep = admitted[batch.partitions[admitted] != 0]
        newest = len(keep) - 1 - np.unique(rows[keep][::-1], return_index=True)[1]
        last = keep[newest]
        self.table["last_partition"][rows[last]] = batch.partitions[last]
        self.table["last_offset"][rows[last]] = batch.offsets[last]

    def _admit(self, batch: EventColumns, rows: np.ndarray, replayed: np.ndarray
               ) -> np.ndarray:
        """Each event's fate (:func:`kernels.fold.admit`)."""
        table = self.table
        hashes = np.array([0 if e is None else id_hash(e) for e in batch.event_ids],
                          dtype=np.uint32)
        has_id = np.array([e is not None for e in batch.event_ids], dtype=np.bool_)
        status = np.empty(len(rows), dtype=np.int8)
        fold.admit(rows, batch.ts, hashes, has_id, replayed,
                   self.config.allowed_lateness_days * DAY, ~np.isnan(table["score"]),
                   table["last_event_ts"].copy(), table["recent_ids"], table["recent_count"],
                   status)
        return status

    def _learn(self, batch: EventColumns, rows: np.ndarray, admitted: np.ndarray,
               marks: np.ndarray, start: int) -> int:
        """What the shard's priors learn from the admitted events from ``start`` on, in arrival
        order (orders, the gaps before them, answers, spend), up to the event that finds a
        refit due (its index is returned; ``len(admitted)`` when none does)."""
        table, config, priors = self.table, self.config, self.state.priors
        types = batch.types
        stop = len(admitted)
        segment: dict[int, int] = {}
        last_order: dict[int, float] = {}
        for k in range(start, len(admitted)):
            if priors.refit_due(float(marks[k + 1])):
                stop = k
                break
            i = int(admitted[k])
            kind = int(types[i])
            if kind == fold.ORDER:
                row = int(rows[i])
                ts = float(batch.ts[i])
                priors.observe_order(batch.customer_ids[i], ts, float(batch.amount[i]))
                last = last_order.get(row, float(table["last_order"][row]))
                if last == last and ts > last:  # not nan: an earlier order
                    code = segment.get(row, int(table["segment"][row]))
                    priors.observe_gap(ts - last, config.segment_label(table.label(code)))
                if not last == last or ts > last:
                    last_order[row] = ts
            elif kind == fold.PROFILE:
                label = batch.extras[i].attributes.get("segment")
                if label:
                    segment[int(rows[i])] = table.label_code(label)
        part = admitted[start:stop]
        kinds = types[part]
        sent = np.isin(kinds, (fold.CAMPAIGN_SENT, fold.MESSAGE_SENT))
        answers = np.select([kinds == fold.CAMPAIGN_OPENED, kinds == fold.CAMPAIGN_CLICKED,
                             kinds == fold.MESSAGE_REPLIED], [OPEN_ANSWER, CLICK_ANSWER, 1.0],
                            0.0)
        if sent.any():  # added one by one, as the reference adds them
            priors.sent = float(np.add.accumulate(np.concatenate(
                ([priors.sent], np.ones(int(sent.sum())))))[-1])
        answered = answers[answers > 0]
        if len(answered):
            priors.responded = float(np.add.accumulate(np.concatenate(
                ([priors.responded], answered)))[-1])
        return stop

    def _rounds(self, batch: EventColumns, rows: np.ndarray, which: np.ndarray,
                marks: np.ndarray, positions: np.ndarray, result: BatchResult) -> None:
        """Score the admitted events ``which`` (no refit among them), each customer's in
        arrival order: round ``k`` is every customer's ``k``-th event."""
        if not len(which):
            return
        table = self.table
        r = rows[which]
        order = np.argsort(r, kind="stable")
        ordered = r[order]
        first = np.concatenate(([True], ordered[1:] != ordered[:-1]))
        position = np.arange(len(r))
        rank = np.empty(len(r), dtype=np.int64)
        rank[order] = position - np.maximum.accumulate(np.where(first, position, 0))
        spend_rows = np.unique(r[np.isin(batch.types[which], (fold.ORDER, fold.REFUND))])
        old_spend = table["spend"][spend_rows].copy()
        had_spend = (table["orders"][spend_rows] > 0) | (table["refunds"][spend_rows] > 0)
        for k in range(int(rank.max()) + 1):
            pick = rank == k
            self._event_round(batch, rows, which[pick], marks[pick], positions[pick], result)
        priors = self.state.priors
        new_spend = table["spend"][spend_rows]
        # In the shop's spend histogram from the first order or refund of any amount on.
        has = ((table["orders"][spend_rows] > 0) | (table["refunds"][spend_rows] > 0)).tolist()
        for old, had, new, counted in zip(old_spend.tolist(), had_spend.tolist(),
                                          new_spend.tolist(), has, strict=True):
            if counted:
                priors.move_spend(old if had else -1.0, new)

    def _event_round(self, batch: EventColumns, rows: np.ndarray, which: np.ndarray,
                     marks: np.ndarray, positions: np.ndarray, result: BatchResult) -> None:
        """One event of each of several customers: reviews due before it, apply, score
        (``ShardEngine.apply_event``)."""
        table = self.table
        r = rows[which]
        ts = batch.ts[which]
        self._advance(r, marks, result, own=(positions, ts))
        kinds = batch.types[which]
        for j in np.nonzero(kinds >= fold.PROFILE)[0].tolist():
            self._profile_or_intervention(int(r[j]), batch.extras[int(which[j])])
        at = np.maximum(ts, table["scored_at"][r])
        last = table["last_order"][r]
        is_order = kinds == fold.ORDER
        waited = np.where(is_order & (ts > last), (ts - last) / DAY, np.nan)  # nan > x: False
        before = np.full(len(r), np.nan)
        guarded = is_order & ~np.isnan(table["score"][r])
        if guarded.any():
            policies = self._policies()
            before[guarded] = assess_rows(table, r[guarded], at[guarded], self.config,
                                          self.state.priors, policies).chance
        fold.apply_events(
            which, rows, batch.types, batch.ts, batch.amount, batch.channel, batch.score,
            batch.severity, self._half_lives, table["last_event_ts"], table["first_seen"],
            table["orders"], table["first_order"], table["last_order"], table["spend"],
            table["refunds"], table["first_basket"], table["ord_short"], table["ord_long"],
            table["val_short"], table["val_long"], table["trend_ref"], table["channels"],
            table["channel_seen"], table["eng_ref"], table["tickets"], table["fb_sum"],
            table["fb_weight"], table["svc_ref"])
        self._score(r, at, result, cause="event", may_rise=np.isin(kinds, LIFTING_CODES),
                    waited=waited, before=before,
                    order=(positions, np.ones(len(r), dtype=np.int64), ts))

    def _profile_or_intervention(self, row: int, event: ev.Event) -> None:
        """A profile or an intervention, by the reference's own rules on a state holding just
        what they touch."""
        table = self.table
        state = CustomerState(event.ts)
        state.segment = table.label(int(table["segment"][row]))
        state.declared_value_tier = table.label(int(table["value_tier"][row]))
        state.outreach = table.sparse["outreach"].get(row)
        state.apply(event, self._windows)
        table["segment"][row] = table.label_code(state.segment)
        table["value_tier"][row] = table.label_code(state.declared_value_tier)
        if state.outreach:
            table.sparse["outreach"][row] = state.outreach

    def _advance_all(self, until: float, result: BatchResult) -> None:
        """Every row whose review time is at or before ``until``, reviewed until none is."""
        for _ in range(MAX_REVIEW_PASSES):
            due = self._due_rows(until)
            if not len(due):
                return
            self._advance(due, np.full(len(due), until), result)

    def _due_rows(self, now: float) -> np.ndarray:
        due = self.table["next_review_at"]
        return np.nonzero(due <= now)[0]

    def _advance(self, rows: np.ndarray, until: np.ndarray, result: BatchResult,
                 own: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Re-score ``rows`` at every review time up to ``until``: tier changes of silence.
        ``own``: the position among the batch's admitted events and the time of each row's
        event these reviews come before (for the order of the transitions)."""
        due_at = self.table["next_review_at"]
        chain = np.full((len(rows), 4), -1.0)  # the reference's review: event, kind, time, step
        for _ in range(MAX_REVIEWS_PER_ADVANCE):
            reviews = due_at[rows]
            due = reviews <= until  # nan: never
            if not due.any():
                return
            which = rows[due]
            at = np.maximum(reviews[due], self.table["scored_at"][which])
            order = None
            if self._marks is not None:
                order = self._review_order(reviews[due], None if own is None else
                                           (own[0][due], own[1][due]), chain[due])
                chain[due] = np.column_stack(order)
            self._score(which, at, result, cause="silence",
                        may_rise=np.zeros(len(which), dtype=bool), waited=None, order=order)
            result.rescored_silent += len(which)

    def _review_order(self, times: np.ndarray, own: tuple[np.ndarray, np.ndarray] | None,
                      chain: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Where the reference records the reviews at ``times``: after the first admitted event
        whose watermark reaches them (kind 2), or just before the customer's own event when it
        is that event and the review falls at or before its time (kind 0); after every event
        (kind 3) when no event's watermark reaches them. A review that the same step of the
        reference reaches as the customer's previous one (``chain``: its event, kind, time and
        step) follows it there."""
        assert self._marks is not None
        first = np.searchsorted(self._marks, times, side="left")
        kind = np.where(first >= len(self._marks), 3, 2)
        if own is not None:
            kind = np.where((first == own[0]) & (times <= own[1]), 0, kind)
        follows = (chain[:, 0] == first) & (chain[:, 1] == kind)
        return (first.astype(float), kind.astype(float),
                np.where(follows, chain[:, 2], times), np.where(follows, chain[:, 3] + 1, 0.0))

    def _score(self, rows: np.ndarray, at: np.ndarray, result: BatchResult, cause: str,
               may_rise: np.ndarray, waited: np.ndarray | None,
               before: np.ndarray | None = None,
               order: tuple[np.ndarray, ...] | None = None) -> None:
        """Score ``rows`` at ``at``: assess, hold, tiers, playbooks, transitions, drops, next
        review (``engine.ShardEngine._score`` for many rows)."""
        table, config, priors = self.table, self.config, self.state.priors
        policies = self._policies()
        assessed = assess_rows(table, rows, at, config, priors, policies)
        if before is not None:
            # An order never lowers the score: what it was just before, at the same instant.
            assessed.chance = np.where(before > assessed.chance, before, assessed.chance)
        old_tier = table["tier"][rows].astype(np.int64)
        old_score = table["score"][rows].copy()
        bounds = policies.bounds[assessed.policy]
        margin = policies.hysteresis[assessed.policy]
        new_tier = tiers_for(100.0 * assessed.chance, old_tier, bounds, margin)
        held = ~may_rise & (old_tier >= 0) & (new_tier < old_tier)
        new_tier = np.where(held, old_tier, new_tier)
        score = np.where(held, held_scores(assessed.score, old_tier, bounds, margin),
                         assessed.score)
        chance = np.where(held & (score != assessed.score), score / 100.0, assessed.chance)
        unrounded = score  # what reasons read (the reference's assessment); stored: hundredths
        score = np.round(score, 2)
        old_components = table["components"][rows].copy()
        old_count = table["component_count"][rows].copy()
        refitted = ~np.isnan(old_score) & (table["model_fit"][rows] != priors.fits)
        components = rounded_components(assessed)
        table["components"][rows] = components
        table["component_count"][rows] = len(COMPONENTS)
        floor = priors.spend_quantile_floor(config.high_value_top_share)
        high_tier = table.label_code(config.high_value_tier) if config.high_value_tier else -2
        table["high_value"][rows] = (table["value_tier"][rows] == high_tier) | (
            (table["spend"][rows] >= floor) & (floor > 0))
        changed = new_tier != old_tier
        assigned = np.array([bool((table.sparse["outreach"].get(r) or {}).get("playbook"))
                             for r in rows.tolist()]) if table.sparse["outreach"] else \
            np.zeros(len(rows), dtype=bool)
        # A first tier is an assignment, not a change: no record, no playbook (nothing to do
        # in Python unless an assignment is open).
        first = changed & (old_tier < 0)
        table["tier_since"][rows[first]] = assessed.at[first]
        self._assignments_held(rows, np.nonzero(assigned & ~changed)[0], assessed.at,
                               new_tier)
        python = np.nonzero(changed & ~first)[0]
        if len(python):
            states = to_states(table, rows[python])
            assessments = _assessments(assessed, python, unrounded, chance, priors, config)
            for i, state, assessment in zip(python.tolist(), states, assessments, strict=True):
                previous = old_components[i][:int(old_count[i])].tolist()
                made = len(result.transitions)
                self._in_python(i, rows, state, assessment, float(score[i]), old_tier,
                                new_tier, old_score, previous, bool(refitted[i]), cause, waited,
                                result)
                if order is not None and len(result.transitions) > made:
                    self._keys_of[id(result.transitions[-1])] = (
                        int(order[0][i]), int(order[1][i]), float(order[2][i]),
                        table.ids[int(rows[i])], int(order[3][i]) if len(order) > 3 else 0)
        table["tier"][rows] = new_tier
        self._watch_drops(rows, score, assessed.at, result)
        table["score"][rows] = score
        table["scored_at"][rows] = assessed.at
        table["model_fit"][rows] = priors.fits
        self._schedule(assessed, chance, new_tier, policies)

    def _in_python(self, i: int, rows: np.ndarray, state: CustomerState,
                   assessment: Assessment, score: float, old_tier: np.ndarray,
                   new_tier: np.ndarray,
                   old_score: np.ndarray, previous: list[int], refitted: bool, cause: str,
                   waited: np.ndarray | None, result: BatchResult) -> None:
        """One row whose tier changes or whose playbook assignment is open: win-back
        bookkeeping, and for a change its transition with reasons."""
        table, config, priors = self.table, self.config, self.state.priors
        row = int(rows[i])
        cid = table.ids[row]
        now = assessment.at
        old, new = int(old_tier[i]), int(new_tier[i])
        suggestion = track(cid, state, assessment, now, old, new, config, self.state.counters)
        if state.outreach:
            table.sparse["outreach"][row] = state.outreach
        else:
            table.sparse["outreach"].pop(row, None)
        if new == old:
            return
        if cause == "event" and refitted and new > old >= 0:
            cause = "silence"
        if old >= 0:
            waited_days = None if waited is None or math.isnan(waited[i]) else float(waited[i])
            prior_score = None if math.isnan(old_score[i]) else float(old_score[i])
            why = tuple(reasons(state, assessment, now, config, priors, previous,
                                from_tier=old, to_tier=new, old_score=prior_score,
                                gap_before_days=waited_days)) + (
                component_moves(previous, state.components),)
            segment = config.segment_label(state.segment)
            result.transitions.append(TierTransition(
                cid, segment, tier_name(old), tier_name(new), prior_score, score, now,
                why, cause, suggestion,
                change_evidence(state, assessment, now, config, old, new, waited_days)))
            counters = self.state.counters
            key: CounterKey = TransitionCount(segment, TIERS[old], TIERS[new])
            counters[key] = counters.get(key, 0.0) + 1.0
            if new == HEALTHY and old >= AT_RISK:
                key = RecoveryCount(segment, TIERS[old])
                counters[key] = counters.get(key, 0.0) + 1.0
        table["tier_since"][row] = now

    def _assignments_held(self, rows: np.ndarray, which: np.ndarray, at: np.ndarray,
                          tier: np.ndarray) -> None:
        """Rows with an open playbook assignment whose tier holds: the win-back bookkeeping
        only (contacted, recovered by an order, expired), which reads nothing of the score, so
        the rows need no full state."""
        table = self.table
        outreach = table.sparse["outreach"]
        last_order = table["last_order"]
        for i in which.tolist():
            row = int(rows[i])
            state = CustomerState(0.0)
            last = float(last_order[row])
            state.purchases.last_order = None if last != last else last
            state.outreach = outreach[row]
            track(table.ids[row], state, _NO_ASSESSMENT, float(at[i]), int(tier[i]),
                  int(tier[i]), self.config, self.state.counters)
            if state.outreach:
                outreach[row] = state.outreach
            else:
                outreach.pop(row, None)

    def _watch_drops(self, rows: np.ndarray, score: np.ndarray, now: np.ndarray,
                     result: BatchResult) -> None:
        table, config = self.table, self.config
        peak = table["peak_score"][rows]
        peak_at = table["peak_at"][rows]
        counted = table["drop_counted"][rows].astype(bool)
        reset = (now - peak_at > config.sudden_drop_window_days * DAY) | (score >= peak)
        drop = ~reset & (peak - score >= config.sudden_drop_points) & ~counted
        table["peak_score"][rows] = np.where(reset, score, peak)
        table["peak_at"][rows] = np.where(reset, now, peak_at)
        table["drop_counted"][rows] = np.where(reset, False, counted | drop)
        counters = self.state.counters
        for i in np.nonzero(drop)[0].tolist():
            row = int(rows[i])
            segment = config.segment_label(table.label(int(table["segment"][row])))
            result.drops.append(SuddenDrop(table.ids[row], segment, float(peak[i]),
                                           float(score[i]), float(now[i])))
            key = SuddenDropCount(segment)
            counters[key] = counters.get(key, 0.0) + 1.0

    def _schedule(self, assessed: Assessed, chance: np.ndarray, tier: np.ndarray,
                  policies: Policies) -> None:
        priors = self.state.priors
        refit_at = priors.next_fit_day * DAY
        not_after = refit_at if priors.model is not None else None  # as the reference
        due = next_reviews(assessed, chance, tier, policies,
                           buyer_model(priors, self.config), priors, not_after)
        now = assessed.at
        due = np.where(due <= now, now + HELD_RECHECK_SECONDS, due)
        self.table["next_review_at"][assessed.rows] = np.ceil(due)

    # -- aggregates ---------------------------------------------------------------------------

    def _contributions(self, rows: np.ndarray) -> dict[GaugeKey, float]:
        """What ``rows`` add to the shard's gauges, summed (``engine._contribution``)."""
        table = self.table
        out: dict[GaugeKey, float] = {}
        score = table["score"][rows]
        tier = table["tier"][rows]
        scored = ~np.isnan(score) & (tier >= 0)
        if not scored.any():
            return out
        rows, score, tier = rows[scored], score[scored], tier[scored].astype(np.int64)
        codes = table["segment"][rows]
        components = table["components"][rows]
        risky = table["high_value"][rows].astype(bool) & ((tier == AT_RISK) | (tier == CHURNED))
        bands = np.minimum((score // 10).astype(np.int64), 9)
        for code in np.unique(codes).tolist():
            keys = self._segment_keys(table.label(code))
            mine = codes == code
            _add_counts(out, keys.tiers, np.bincount(tier[mine], minlength=4))
            _add_counts(out, keys.bands, np.bincount(bands[mine], minlength=10))
            _add(out, keys.score_sum, float(score[mine].sum()))
            _add(out, keys.scored, float(mine.sum()))
            for index in range(len(COMPONENTS)):
                values = components[mine, index]
                present = values >= 0
                if present.any():
                    _add(out, keys.component_sums[index], float(values[present].sum()))
                    _add(out, keys.component_counts[index], float(present.sum()))
            _add(out, keys.high_value_at_risk, float(risky[mine].sum()))
        return out

    def _account(self, before: dict[GaugeKey, float], after: dict[GaugeKey, float]) -> None:
        gauges = self.state.gauges
        for key, value in before.items():
            gauges[key] = gauges.get(key, 0.0) - value
        for key, value in after.items():
            gauges[key] = gauges.get(key, 0.0) + value
        for key in [k for k, v in gauges.items() if abs(v) < 1e-9]:
            del gauges[key]

    def _policies(self) -> Policies:
        """The segments' policies as arrays, made again only when the labels, the
        configuration or the learned horizons change."""
        priors = self.state.priors
        key = (len(self.table.labels), priors.fits, tuple(priors.horizons.items()))
        cached = self._policy_cache
        if cached is None or self._policy_key != key or self._policy_config is not self.config:
            cached = self._policy_cache = Policies.of(self.table, self.config, priors)
            self._policy_key = key
            self._policy_config = self.config
        return cached

    def _segment_keys(self, segment: str | None) -> SegmentKeys:
        label = self.config.segment_label(segment)
        keys = self._keys.get(label)
        if keys is None:
            keys = self._keys[label] = SegmentKeys(label)
        return keys

    # -- taking over the reference model's states ----------------------------------------------

    def adopt(self, customer_id: str, state: CustomerState) -> int:
        """Take over a customer's state as the store keeps it (written by this engine or the
        per-customer one: upgrade in place); returns their row."""
        row = int(self.table.rows_for([customer_id], [state.first_seen])[0])
        set_from_state(self.table, row, state)
        return row


#: What :func:`track` is handed for a customer whose tier holds: it reads no assessment then.
_NO_ASSESSMENT = Assessment(0.0, (Component(0.0, 0.0),) * 4, 0.0)


def _add(out: dict[GaugeKey, float], key: GaugeKey, value: float) -> None:
    if value:
        out[key] = out.get(key, 0.0) + value


def _add_counts(out: dict[GaugeKey, float], keys: Sequence[GaugeKey], counts: np.ndarray
                ) -> None:
    for key, count in zip(keys, counts.tolist(), strict=False):
        _add(out, key, float(count))


def _first_index(rows: np.ndarray) -> np.ndarray:
    """The index of each row's first occurrence, in arrival order."""
    _, first = np.unique(rows, return_index=True)
    return np.sort(first)


def _admitted(rows: np.ndarray, batch: EventColumns, applied: np.ndarray,
              gap_before: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row with an admitted event, in the order of their first admitted event: the row,
    its newest admitted event time, whether any of its events can raise the chance, and the
    wait before its newest order (``nan``: none)."""
    which = np.nonzero(applied)[0]
    r = rows[which]
    unique, first, inverse = np.unique(r, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    newest = np.full(len(unique), -np.inf)
    np.maximum.at(newest, inverse, batch.ts[which])
    lifting = np.zeros(len(unique), dtype=bool)
    np.logical_or.at(lifting, inverse, np.isin(batch.types[which], LIFTING_CODES))
    waited = np.full(len(unique), np.nan)
    gaps = gap_before[which]
    for j in np.nonzero(~np.isnan(gaps))[0].tolist():  # the last one of each row wins
        waited[inverse[j]] = gaps[j] / DAY
    return unique[order], newest[order], lifting[order], waited[order]


def _assessments(assessed: Assessed, which: np.ndarray, score: np.ndarray, chance: np.ndarray,
                 priors: PopulationPriors, config: ChurnwatchConfig) -> list[Assessment]:
    """Rows ``which`` of a pass as the reference's :class:`Assessment` (for reasons and
    playbooks)."""
    gap = priors.mean_gap_days(config.recency.default_gap_days,
                               config.recency.default_gap_weight)
    values = assessed.values[which].tolist()
    confidences = assessed.confidences[which].tolist()
    columns = zip(score[which].tolist(), chance[which].tolist(),
                  assessed.repeats[which].tolist(), assessed.span_days[which].tolist(),
                  assessed.silence_days[which].tolist(), assessed.value_shift[which].tolist(),
                  assessed.at[which].tolist(), assessed.shift[which].tolist(),
                  assessed.horizon[which].tolist(), values, confidences, strict=True)
    return [Assessment(s, (Component(v[0], c[0]), Component(v[1], c[1]), Component(v[2], c[2]),
                           Component(v[3], c[3])), p,
                       RecencyInputs(int(repeats), span, silence, gap, value_shift), at, shift,
                       horizon)
            for s, p, repeats, span, silence, value_shift, at, shift, horizon, v, c in columns]
