"""The scoring engine of one shard: events in, states, transitions and aggregates out.

A shard is the unit of ownership: one worker owns it at a time, so the engine may hold the
shard's learned priors and running aggregates in memory and write them back whole with the
customers it changed (the store does that in one transaction, which is what makes a replay after
a crash harmless). The engine reads no clock and does no I/O; the dataflow loads the customers a
batch touches, calls :meth:`ShardEngine.process`, and stores what comes back.

>>> from churnwatch.core.config import ChurnwatchConfig
>>> from churnwatch.core.events import Event
>>> engine = ShardEngine(0, ChurnwatchConfig(), ShardState())
>>> batch = [Incoming(Event("c1", "order", 0.0, amount=10.0), partition=1, offset=1),
...          Incoming(Event("c1", "order", 0.0, amount=10.0), partition=1, offset=1)]
>>> result = engine.process(batch, {"c1": None}, now=0.0)
>>> result.scored, result.duplicates, result.changed["c1"].orders
(1, 1, 1)
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from churnwatch.core import events as ev
from churnwatch.core.config import COMPONENTS, TIERS, ChurnwatchConfig
from churnwatch.core.customer import DAY, CustomerState
from churnwatch.core.priors import PopulationPriors
from churnwatch.core.scoring import (
    AT_RISK,
    CHURNED,
    HEALTHY,
    Assessment,
    after_order,
    assess,
    chance_percent,
    component_values,
    next_review_at,
    reasons,
    tier_for,
    tier_name,
    windows_of,
)
from churnwatch.core.winback import Suggestion, track

RECENT_IDS_KEPT = 8
SCORE_BANDS = tuple(f"{lo:02d}-{lo + 10}" for lo in range(0, 100, 10))


@dataclass(frozen=True, slots=True)
class Incoming:
    """A valid event with where it came from: a source partition (a stable 32-bit id) and the
    offset in it. ``partition`` 0 means "no replayable position" (only ``event_id`` dedupes)."""

    event: ev.Event
    partition: int = 0
    offset: int = 0
    position: str = ""


@dataclass(frozen=True, slots=True)
class TierTransition:
    """A customer moved from one risk tier to another, and why."""

    customer_id: str
    segment: str
    from_tier: str
    to_tier: str
    old_score: float | None
    new_score: float
    at: float
    reasons: tuple[str, ...]
    cause: str  # "event" or "silence"
    #: The playbook suggested at this change (churnwatch.core.winback), if any.
    suggestion: Suggestion | None = None

    def as_dict(self) -> dict[str, object]:
        """The record as plain data (for streams, files and the API)."""
        record: dict[str, object] = {
            "customer_id": self.customer_id, "segment": self.segment,
            "from": self.from_tier, "to": self.to_tier,
            "old_score": None if self.old_score is None else round(self.old_score, 1),
            "new_score": round(self.new_score, 1), "at": self.at,
            "reasons": list(self.reasons), "cause": self.cause}
        if self.suggestion is not None:
            record["playbook"] = self.suggestion.playbook
            record["holdout"] = self.suggestion.holdout
            if not self.suggestion.holdout:
                record["action"] = self.suggestion.action
                record["channel"] = self.suggestion.channel
                if self.suggestion.message is not None:
                    record["message"] = self.suggestion.message
        return record


@dataclass(frozen=True, slots=True)
class SuddenDrop:
    """A score fell by more than the configured points within the configured window."""

    customer_id: str
    segment: str
    from_score: float
    to_score: float
    at: float


class ShardState:
    """What a shard keeps besides its customers: learned priors, event-time watermark, and the
    running aggregates the metrics are read from (absolute values, so rewriting them is
    idempotent).

    ``positions`` holds, per source partition id, the highest offset the shard has processed
    (applied, or skipped as a duplicate). It is not part of :meth:`to_wire`: a store keeps it
    beside the wire form, committed in the same transaction, so an operator can see how far the
    monitor has consumed each partition (``churnwatch status``).

    >>> from churnwatch.core.config import ChurnwatchConfig
    >>> from churnwatch.core.events import Event
    >>> engine = ShardEngine(0, ChurnwatchConfig(), ShardState())
    >>> _ = engine.process([Incoming(Event("c1", "visit", 0.0), partition=7, offset=41),
    ...                     Incoming(Event("c1", "visit", 0.0), partition=7, offset=40)],
    ...                    {"c1": None}, now=0.0)
    >>> engine.state.positions
    {7: 41}
    """

    __slots__ = ("priors", "watermark", "gauges", "counters", "positions")

    def __init__(self) -> None:
        self.priors = PopulationPriors()
        self.watermark = 0.0
        self.gauges: dict[str, float] = {}
        self.counters: dict[str, float] = {}
        self.positions: dict[int, int] = {}

    def to_wire(self) -> list[object]:
        """A compact msgpack-able form."""
        return [self.priors.to_wire(), self.watermark, self.gauges, self.counters]

    @classmethod
    def from_wire(cls, data: list[object] | None) -> ShardState:
        """Inverse of :meth:`to_wire`; ``None`` gives a fresh shard."""
        state = cls()
        if data:
            priors, watermark, gauges, counters = data
            state.priors = PopulationPriors.from_wire(priors)  # type: ignore[arg-type]
            state.watermark = float(watermark)  # type: ignore[arg-type]
            state.gauges = dict(gauges)  # type: ignore[call-overload]
            state.counters = dict(counters)  # type: ignore[call-overload]
        return state


@dataclass(slots=True)
class BatchResult:
    """What one call to the engine produced, for the store and the outputs."""

    changed: dict[str, CustomerState] = field(default_factory=dict)
    transitions: list[TierTransition] = field(default_factory=list)
    drops: list[SuddenDrop] = field(default_factory=list)
    dead_letters: list[ev.InvalidEvent] = field(default_factory=list)
    scored: int = 0
    duplicates: int = 0
    late: int = 0
    rescored_silent: int = 0
    last_event_ts: float = 0.0


class ShardEngine:
    """Applies events to the customers of one shard, in arrival order."""

    def __init__(self, shard: int, config: ChurnwatchConfig, state: ShardState) -> None:
        self.shard = shard
        self.config = config
        self.state = state
        self.windows = windows_of(config)
        self._lateness = config.allowed_lateness_days * DAY
        self._keys: dict[str | None, _GaugeKeys] = {}
        # The default horizon first: the evidence weight is chosen on its window.
        self._horizons = [config.default_policy.horizon_days] + sorted(
            {p.horizon_days for p in config.segment_policies.values()})

    # -- entry points -------------------------------------------------------------------------

    def process(self, items: Iterable[Incoming], customers: Mapping[str, CustomerState | None],
                now: float, due: Iterable[str] = ()) -> BatchResult:
        """Apply a batch of events in arrival order.

        ``customers`` holds the loaded state of every customer the batch names (``None`` for a
        new one) and of the silent customers listed in ``due`` (those whose review time is at or
        before the batch's newest event). A silent customer is reviewed right after the event
        that carries the shard's watermark past its review time, so where batches happen to
        start and end never changes the result. ``now`` is the instant everyone touched is
        brought to at the end: the watermark in replay, the wall clock live.
        """
        result = BatchResult()
        now = float(math.floor(now))
        touched: dict[str, CustomerState] = {}
        before: dict[str, dict[str, float]] = {}
        pending: list[tuple[float, str]] = []
        for cid in due:
            state = customers.get(cid)
            if state is not None and state.next_review_at is not None:
                touched[cid] = state
                before[cid] = self._contribution(state)
                heapq.heappush(pending, (state.next_review_at, cid))
        positions = self.state.positions
        for item in items:
            if item.partition and item.offset > positions.get(item.partition, -1):
                positions[item.partition] = item.offset
            event = item.event
            cid = event.customer_id
            state = touched.get(cid)
            if state is None:
                state = customers.get(cid)
                if state is not None:
                    before[cid] = self._contribution(state)
            if state is None:
                state = CustomerState(first_seen=event.ts)
                before[cid] = {}
            touched[cid] = state
            if self._is_duplicate(state, item):
                result.duplicates += 1
                continue
            if state.score is not None and event.ts < state.last_event_ts:
                if event.ts < state.last_event_ts - self._lateness:
                    result.dead_letters.append(ev.InvalidEvent(
                        "too_late", f"event time {event.ts:.0f} is more than "
                        f"{self.config.allowed_lateness_days:g} days before the customer's "
                        f"latest event", item.position, b"", cid,
                        # Its position, so that it is dead-lettered once: per shard, since
                        # shards report their own too_late events of a source partition.
                        f"shard {self.shard} of {item.partition}" if item.partition else "",
                        item.offset if item.partition else -1))
                    continue
                result.late += 1
            if event.ts > self.state.watermark:
                self.state.watermark = event.ts
            # The refit comes before the event is scored: the customer's tier before the event
            # and after it are then judged under the same model (docs/scoring.md). Checked at
            # every event: the sample's growth by the events before this one triggers a refit
            # too, at the same event whatever the batching.
            self._refit_if_due()
            if self._judged_by_older_model(state):
                # Last judged by an older model and not looked at since the refit: judge them
                # under the current one first, so what the event changes is measured under one
                # model (an order never lowers the tier or the score; docs/scoring.md).
                self._score(cid, state, max(event.ts, state.scored_at), result,
                            cause="silence")
            self._advance(cid, state, event.ts, result)
            # The wait before a new latest order, for the reasons of an upgrade it causes.
            waited = (event.ts - state.last_order) / DAY if event.type == ev.ORDER and \
                state.last_order is not None and event.ts > state.last_order else None
            at = max(event.ts, state.scored_at)
            # An order never lowers the score: what it was just before, at the same instant.
            just_before = assess(state, at, self.config, self.state.priors) \
                if event.type == ev.ORDER and state.score is not None else None
            self._apply(state, event)
            self._remember(state, item)
            self._score(cid, state, at, result, cause="event", waited_days=waited,
                        before=just_before)
            if state.next_review_at is not None:
                heapq.heappush(pending, (state.next_review_at, cid))
            result.scored += 1
            if event.ts > result.last_event_ts:
                result.last_event_ts = event.ts
            mark = self.state.watermark
            while pending and pending[0][0] <= mark:
                queued_at, silent = heapq.heappop(pending)
                quiet = touched[silent]
                if quiet.next_review_at != queued_at:
                    # Superseded by an event (its new time is queued too): reviewing now would
                    # put it out of (time, customer) order, which depends on the batching.
                    continue
                self._advance(silent, quiet, mark, result)
                if quiet.next_review_at is not None:  # the next review may fall in this batch
                    heapq.heappush(pending, (quiet.next_review_at, silent))
        for cid, state in touched.items():
            self._advance(cid, state, now, result)
            result.changed[cid] = state
        self._account(before, touched)
        return result

    def review(self, customers: Mapping[str, CustomerState], now: float) -> BatchResult:
        """Re-score silent customers whose review time has come (from the due-time index)."""
        result = BatchResult()
        now = float(math.floor(now))
        before = {cid: self._contribution(state) for cid, state in customers.items()}
        for cid, state in customers.items():
            self._advance(cid, state, now, result)
            result.changed[cid] = state
        self._account(before, dict(customers))
        return result

    # -- steps --------------------------------------------------------------------------------

    def _is_duplicate(self, state: CustomerState, item: Incoming) -> bool:
        if item.partition and item.offset <= state.offsets.get(item.partition, -1):
            return True
        if item.event.event_id is not None:
            return _id_hash(item.event.event_id) in state.recent_ids
        return False

    def _remember(self, state: CustomerState, item: Incoming) -> None:
        if item.partition:
            state.offsets[item.partition] = item.offset
        if item.event.event_id is not None:
            ids = state.recent_ids
            ids.append(_id_hash(item.event.event_id))
            if len(ids) > RECENT_IDS_KEPT:
                del ids[0]

    def _apply(self, state: CustomerState, event: ev.Event) -> None:
        priors = self.state.priors
        kind = event.type
        if kind == ev.ORDER:
            priors.observe_order(event.customer_id, event.ts)
            if state.last_order is not None and event.ts > state.last_order:
                priors.observe_gap(event.ts - state.last_order)
        old_spend = state.spend if state.orders or state.refunds else -1.0
        state.apply(event, self.windows)
        if kind in (ev.ORDER, ev.REFUND):
            priors.move_spend(old_spend, state.spend)
        elif kind in (ev.CAMPAIGN_SENT, ev.MESSAGE_SENT):
            priors.observe_engagement(1.0, 0.0)
        elif kind == ev.CAMPAIGN_OPENED:
            priors.observe_engagement(0.0, 0.6)
        elif kind in (ev.CAMPAIGN_CLICKED,):
            priors.observe_engagement(0.0, 0.4)
        elif kind == ev.MESSAGE_REPLIED:
            priors.observe_engagement(0.0, 1.0)

    def refit_at(self, now: float) -> bool:
        """Refit the buyer model at ``now`` if orders reached the sample since the last fit
        (``replay --as-of``: the final model has then seen every order, in whatever order the
        log came); ``True`` if it refitted, and the shard's customers should be re-scored with
        :meth:`rescore`."""
        priors = self.state.priors
        if not priors.unfitted_orders():
            return False
        if now > self.state.watermark:
            self.state.watermark = now
        priors.refit(max(now, self.state.watermark), self._horizons,
                     self.config.recency.prior())
        return True

    def rescore(self, customers: Mapping[str, CustomerState], now: float) -> BatchResult:
        """Re-score ``customers`` at ``now`` under the shard's current model (after
        :meth:`refit_at`), so stored tiers follow it; a tier change is a silence transition."""
        result = BatchResult()
        now = float(math.floor(now))
        before = {cid: self._contribution(state) for cid, state in customers.items()}
        for cid, state in customers.items():
            if state.tier < 0:
                continue
            self._advance(cid, state, now, result)
            self._score(cid, state, max(now, state.scored_at), result, cause="silence")
            result.changed[cid] = state
        self._account(before, dict(customers))
        return result

    def _refit_if_due(self) -> None:
        """Refit the shard's buyer model when the watermark passes the next refit day or the
        buyer sample has grown by half: both fall at the same event whatever the batching."""
        priors = self.state.priors
        mark = self.state.watermark
        if priors.refit_due(mark):
            priors.refit(mark, self._horizons, self.config.recency.prior())

    def _judged_by_older_model(self, state: CustomerState) -> bool:
        """Whether the customer's tier and score came from another of the shard's model fits
        than the one in force. A count, not a time: live, reviews follow the wall clock while
        refits follow the watermark, so a review after the refit day may still have used the
        model before it."""
        return state.score is not None and state.model_fit != self.state.priors.fits

    def _advance(self, cid: str, state: CustomerState, until: float, result: BatchResult) -> None:
        """Re-score at every review time up to ``until``: tier changes of silence, on time."""
        guard = 0
        while state.next_review_at is not None and state.next_review_at <= until and guard < 8:
            at = max(state.next_review_at, state.scored_at)
            self._score(cid, state, at, result, cause="silence")
            result.rescored_silent += 1
            guard += 1

    def _score(self, cid: str, state: CustomerState, now: float, result: BatchResult,
               cause: str, waited_days: float | None = None,
               before: Assessment | None = None) -> None:
        # Stored times read back as whole-second ints: make "now" one type whichever way it
        # came, so a record reads the same whether or not the state was reloaded in between.
        now = float(now)
        config = self.config
        priors = self.state.priors
        policy = config.policy(state.segment)
        assessment = assess(state, now, config, priors)
        if before is not None:
            assessment = after_order(before, assessment)
        old_tier = state.tier
        old_score = state.score
        # Scored before the model in force was fitted: a change of tier now is the refit's.
        refitted = self._judged_by_older_model(state)
        new_tier = tier_for(chance_percent(assessment), old_tier, policy)
        score = round(assessment.score, 2)
        previous = state.components
        state.components = component_values(assessment)
        state.high_value = (state.declared_value_tier == config.high_value_tier
                            or state.spend >= priors.spend_quantile_floor(
                                config.high_value_top_share) > 0)
        segment = config.segment_label(state.segment)
        # Playbook assignment and win-back counting (churnwatch.core.winback).
        suggestion = track(cid, state, assessment, now, old_tier, new_tier, config,
                           self.state.counters)
        if new_tier != old_tier:
            # A customer's first tier is an assignment, not a change: it is in the state and the
            # tier gauges, but makes no transition record.
            if old_tier >= 0:
                why = tuple(reasons(state, assessment, now, config, priors, previous,
                                    from_tier=old_tier, to_tier=new_tier, old_score=old_score,
                                    gap_before_days=waited_days,
                                    refitted=refitted and cause == "silence")) + (
                    component_moves(previous, state.components),)
                result.transitions.append(TierTransition(
                    cid, segment, tier_name(old_tier), tier_name(new_tier), old_score, score,
                    now, why, cause, suggestion))
                key = f"transitions|{segment}|{TIERS[old_tier]}|{TIERS[new_tier]}"
                self.state.counters[key] = self.state.counters.get(key, 0.0) + 1.0
                if new_tier == HEALTHY and old_tier >= AT_RISK:
                    key = f"recoveries|{segment}|{TIERS[old_tier]}"
                    self.state.counters[key] = self.state.counters.get(key, 0.0) + 1.0
            state.tier = new_tier
            state.tier_since = now
        # Sudden drops: against the highest score within the configured window.
        window = config.sudden_drop_window_days * DAY
        if now - state.peak_at > window or score >= state.peak_score:
            state.peak_score = score
            state.peak_at = now
            state.drop_counted = False
        elif state.peak_score - score >= config.sudden_drop_points and not state.drop_counted:
            state.drop_counted = True
            result.drops.append(SuddenDrop(cid, segment, state.peak_score, score, now))
            key = f"sudden_drops|{segment}"
            self.state.counters[key] = self.state.counters.get(key, 0.0) + 1.0
        state.score = score
        state.scored_at = now
        state.model_fit = priors.fits
        # The shard's next refit moves every probability a little: a silent customer is looked
        # at again right after it, so their tier follows the model rather than the one they
        # were scored with. (Churned customers wait for an event.)
        refit_at = priors.next_fit_day * DAY
        capped = refit_at > now and priors.may_change_at_refit()
        due = next_review_at(state, assessment, now, config, priors,
                             not_after=refit_at if capped else None)
        if due is not None and due <= now:
            due = now + 60.0  # already past the threshold but held by hysteresis: look again
        # Whole seconds, as stored: the due index must read back exactly as written.
        state.next_review_at = None if due is None else float(math.ceil(due))

    # -- aggregates ---------------------------------------------------------------------------

    def _contribution(self, state: CustomerState) -> dict[str, float]:
        if state.score is None or state.tier < 0:
            return {}
        keys = self._gauge_keys(state.segment)
        out = {
            keys.tiers[state.tier]: 1.0,
            keys.bands[min(int(state.score // 10), 9)]: 1.0,
            keys.score_sum: state.score,
            keys.scored: 1.0,
        }
        for index, value in enumerate(state.components[:len(COMPONENTS)]):
            if value >= 0:
                out[keys.component_sums[index]] = float(value)
                out[keys.component_counts[index]] = 1.0
        if state.high_value and state.tier in (AT_RISK, CHURNED):
            out[keys.high_value_at_risk] = 1.0
        return out

    def _gauge_keys(self, segment: str | None) -> _GaugeKeys:
        """The aggregate keys of a segment, made once: a customer's contribution is taken twice
        per batch, before and after."""
        keys = self._keys.get(segment)
        if keys is None:
            keys = self._keys[segment] = _GaugeKeys(self.config.segment_label(segment))
        return keys

    def _account(self, before: Mapping[str, dict[str, float]],
                 after: Mapping[str, CustomerState]) -> None:
        gauges = self.state.gauges
        for cid, state in after.items():
            old = before.get(cid, {})
            new = self._contribution(state)
            for key, value in old.items():
                gauges[key] = gauges.get(key, 0.0) - value
            for key, value in new.items():
                gauges[key] = gauges.get(key, 0.0) + value
        for key in [k for k, v in gauges.items() if abs(v) < 1e-9]:
            del gauges[key]


class _GaugeKeys:
    """The names of one segment's aggregates in ``ShardState.gauges``."""

    __slots__ = ("tiers", "bands", "score_sum", "scored", "component_sums", "component_counts",
                 "high_value_at_risk")

    def __init__(self, segment: str) -> None:
        self.tiers = tuple(f"customers|{segment}|{tier}" for tier in TIERS)
        self.bands = tuple(f"band|{segment}|{band}" for band in SCORE_BANDS)
        self.score_sum = f"score_sum|{segment}"
        self.scored = f"scored|{segment}"
        self.component_sums = tuple(f"component_sum|{segment}|{n}" for n in COMPONENTS)
        self.component_counts = tuple(f"component_n|{segment}|{n}" for n in COMPONENTS)
        self.high_value_at_risk = f"high_value_at_risk|{segment}"


def component_moves(previous: list[int], current: list[int]) -> str:
    """Which components moved and by how much, for a transition record.

    >>> component_moves([80, -1, 70, -1], [55, -1, 72, 40])
    'components: recency 80 -> 55 (-25), engagement 70 -> 72 (+2), service 40 (new)'
    """
    parts = []
    for index, name in enumerate(COMPONENTS):
        new = current[index] if index < len(current) else -1
        old = previous[index] if index < len(previous) else -1
        if new < 0:
            continue
        if old < 0:
            parts.append(f"{name} {new} (new)")
        else:
            parts.append(f"{name} {old} -> {new} ({new - old:+d})" if new != old else
                         f"{name} {new}")
    return "components: " + ", ".join(parts)


def _id_hash(event_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=4).digest(), "big")


def partition_id(name: str) -> int:
    """A stable non-zero 32-bit id for a source partition name (a file, a stream, a topic
    partition).

    >>> partition_id("file:/data/orders.jsonl") == partition_id("file:/data/orders.jsonl")
    True
    """
    digest = hashlib.blake2b(name.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") or 1
