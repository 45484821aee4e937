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
>>> result.scored, result.duplicates, result.changed["c1"].purchases.orders
(1, 1, 1)
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from churnwatch.core import events as ev
from churnwatch.core.aggregates import (
    CounterKey,
    GaugeKey,
    RecoveryCount,
    SegmentKeys,
    SuddenDropCount,
    TransitionCount,
)
from churnwatch.core.config import COMPONENTS, TIERS, ChurnwatchConfig, SegmentPolicy
from churnwatch.core.customer import DAY, CustomerState
from churnwatch.core.history import change_evidence
from churnwatch.core.records import BatchResult, Incoming, ShardState, SuddenDrop, TierTransition
from churnwatch.core.scoring import (
    AT_RISK,
    CHURNED,
    HEALTHY,
    Assessment,
    after_order,
    assess,
    chance_percent,
    component_values,
    held_in_tier,
    horizons_in_use,
    next_review_at,
    reasons,
    tier_for,
    tier_name,
    windows_of,
)
from churnwatch.core.signals import CLICK_ANSWER, OPEN_ANSWER
from churnwatch.core.winback import Suggestion, track

RECENT_IDS_KEPT = 8
#: At most this many reviews of one silent customer in one call of :meth:`ShardEngine._advance`:
#: a tier falls at most three times (healthy to churned) and a refit adds a review or two, so
#: eight cover every real run; the bound keeps a customer held by hysteresis (looked at again
#: every :data:`HELD_RECHECK_SECONDS`) from being re-scored once a minute through a long
#: silence. What is left waits for the next batch or review.
MAX_REVIEWS_PER_ADVANCE = 8
#: A customer already past a tier's threshold but held in the tier by hysteresis is looked at
#: again this many seconds later: a review time in the past would be due again at once.
HELD_RECHECK_SECONDS = 60.0
#: The events that can raise a customer's chance (an order, answers, feedback): only they may
#: move a customer to a better tier. Between them the customer did nothing, and a better
#: estimate of the shop's habits is no news of theirs: their tier and score hold (see
#: :func:`held`).
LIFTING_EVENTS = frozenset({ev.ORDER, ev.CAMPAIGN_OPENED, ev.CAMPAIGN_CLICKED,
                            ev.MESSAGE_REPLIED, ev.FEEDBACK})


@dataclass(slots=True)
class Touched:
    """The customers one call to the engine has touched: their states, what each contributed
    to the shard's gauges when loaded (taken back at the end), and the queue of review times
    that may fall within the batch, earliest first.

    >>> from churnwatch.core.config import ChurnwatchConfig
    >>> from churnwatch.core.events import Event
    >>> engine = ShardEngine(0, ChurnwatchConfig(), ShardState())
    >>> touched = engine.touch_due([], {})
    >>> state = engine.touch(Event("c1", "visit", 5.0), {"c1": None}, touched)
    >>> list(touched.states), touched.before, state.first_seen
    (['c1'], {'c1': {}}, 5.0)
    """

    states: dict[str, CustomerState] = field(default_factory=dict)
    before: dict[str, dict[GaugeKey, float]] = field(default_factory=dict)
    reviews: list[tuple[float, str]] = field(default_factory=list)

    def queue_review(self, cid: str, state: CustomerState) -> None:
        """Queue the customer's next review (if any) for :meth:`ShardEngine.review_due`."""
        if state.next_review_at is not None:
            heapq.heappush(self.reviews, (state.next_review_at, cid))


class Verdict(NamedTuple):
    """One assessment of a customer and what it decides: the tier before and after, the score
    and the components before (for the reasons of a transition).

    >>> from churnwatch.core.config import ChurnwatchConfig
    >>> from churnwatch.core.customer import CustomerState
    >>> from churnwatch.core.events import Event
    >>> engine = ShardEngine(0, ChurnwatchConfig(), ShardState())
    >>> state = CustomerState(first_seen=0.0)
    >>> state.apply(Event("c1", "order", 0.0, amount=10.0), engine.windows)
    >>> verdict = engine.assess_at(state, 0.0)
    >>> verdict.old_tier, verdict.new_tier, 0 <= verdict.score <= 100  # new: no tier yet
    (-1, 1, True)
    """

    assessment: Assessment
    old_tier: int
    new_tier: int
    old_score: float | None
    score: float
    previous_components: list[int]
    #: Scored last before the model in force was fitted.
    refitted: bool


class ShardEngine:
    """Applies events to the customers of one shard, in arrival order."""

    def __init__(self, shard: int, config: ChurnwatchConfig, state: ShardState) -> None:
        self.shard = shard
        self.config = config
        self.state = state
        self.windows = windows_of(config)
        self._lateness = config.allowed_lateness_days * DAY
        self._keys: dict[str | None, SegmentKeys] = {}

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

        Each line below is one step, a method of its own: dedupe (:meth:`is_duplicate`),
        lateness (:meth:`is_too_late`), apply and score (:meth:`apply_event`, which assesses,
        records transitions and watches for sudden drops), reviews of silent customers on time
        (:meth:`review_due`, :meth:`bring_to`) and the gauges' accounting (:meth:`account`).
        """
        result = BatchResult()
        touched = self.touch_due(due, customers)
        for item in items:
            self.note_position(item)
            state = self.touch(item.event, customers, touched)
            if self.is_duplicate(state, item, result) or self.is_too_late(state, item, result):
                continue
            self.apply_event(item, state, result)
            touched.queue_review(item.event.customer_id, state)
            self.review_due(touched, result)
        self.bring_to(float(math.floor(now)), touched.states, result)
        self.account(touched.before, touched.states)
        return result

    def review(self, customers: Mapping[str, CustomerState], now: float) -> BatchResult:
        """Re-score silent customers whose review time has come (from the due-time index)."""
        result = BatchResult()
        before = {cid: self._contribution(state) for cid, state in customers.items()}
        self.bring_to(float(math.floor(now)), customers, result)
        self.account(before, customers)
        return result

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
        self._refit(max(now, self.state.watermark))
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
        self.account(before, customers)
        return result

    # -- the steps of a batch, in order ---------------------------------------------------------

    def touch_due(self, due: Iterable[str], customers: Mapping[str, CustomerState | None]
                  ) -> Touched:
        """Start a batch: the silent customers listed ``due`` are touched and their reviews
        queued, so each is reviewed when the batch's events carry the watermark past it."""
        touched = Touched()
        for cid in due:
            state = customers.get(cid)
            if state is not None and state.next_review_at is not None:
                touched.states[cid] = state
                touched.before[cid] = self._contribution(state)
                touched.queue_review(cid, state)
        return touched

    def note_position(self, item: Incoming) -> None:
        """Advance the shard's consumed offset of the item's source partition (applied or
        skipped alike)."""
        positions = self.state.positions
        if item.partition and item.offset > positions.get(item.partition, -1):
            positions[item.partition] = item.offset

    def touch(self, event: ev.Event, customers: Mapping[str, CustomerState | None],
              touched: Touched) -> CustomerState:
        """The state of the event's customer within the batch: already touched, loaded, or new
        (first seen at this event)."""
        cid = event.customer_id
        state = touched.states.get(cid)
        if state is None:
            state = customers.get(cid)
            if state is not None:
                touched.before[cid] = self._contribution(state)
        if state is None:
            state = CustomerState(first_seen=event.ts)
            touched.before[cid] = {}
        touched.states[cid] = state
        return state

    def is_duplicate(self, state: CustomerState, item: Incoming, result: BatchResult) -> bool:
        """Dedupe: the customer has applied this source offset, or this event id, already."""
        if item.partition and item.offset <= state.offsets.get(item.partition, -1):
            duplicate = True
        elif item.event.event_id is not None:
            duplicate = id_hash(item.event.event_id) in state.recent_ids
        else:
            duplicate = False
        if duplicate:
            result.duplicates += 1
        return duplicate

    def is_too_late(self, state: CustomerState, item: Incoming, result: BatchResult) -> bool:
        """Lateness: an event older than the customer's latest is applied (counted late) within
        ``[input] allowed_lateness_days``; older than that, it is dead-lettered instead."""
        event = item.event
        if state.score is None or event.ts >= state.last_event_ts:
            return False
        if event.ts >= state.last_event_ts - self._lateness:
            result.late += 1
            return False
        result.dead_letters.append(ev.InvalidEvent(
            "too_late", f"event time {event.ts:.0f} is more than "
            f"{self.config.allowed_lateness_days:g} days before the customer's latest event",
            item.position, b"", event.customer_id,
            # Its position, so that it is dead-lettered once: per shard, since shards report
            # their own too_late events of a source partition.
            f"shard {self.shard} of {item.partition}" if item.partition else "",
            item.offset if item.partition else -1))
        return True

    def apply_event(self, item: Incoming, state: CustomerState, result: BatchResult) -> None:
        """Apply one admitted event and score the customer right after it."""
        event = item.event
        cid = event.customer_id
        if event.ts > self.state.watermark:
            self.state.watermark = event.ts
        # The refit comes before the event is scored: the customer's tier before the event and
        # after it are then judged under the same model (docs/scoring.md). Checked at every
        # event: the sample's growth by the events before this one triggers a refit too, at the
        # same event whatever the batching.
        self._refit_if_due()
        self._advance(cid, state, event.ts, result)
        # The wait before a new latest order, for the reasons of an upgrade it causes.
        last_order = state.purchases.last_order
        waited = (event.ts - last_order) / DAY if event.type == ev.ORDER and \
            last_order is not None and event.ts > last_order else None
        at = max(event.ts, state.scored_at)
        # An order never lowers the score: what it was just before, at the same instant.
        just_before = assess(state, at, self.config, self.state.priors) \
            if event.type == ev.ORDER and state.score is not None else None
        self._apply(state, event)
        self._remember(state, item)
        self._score(cid, state, at, result, cause="event", waited_days=waited,
                    before=just_before, may_rise=event.type in LIFTING_EVENTS)
        result.scored += 1
        if event.ts > result.last_event_ts:
            result.last_event_ts = event.ts

    def review_due(self, touched: Touched, result: BatchResult) -> None:
        """Review, in (time, customer) order, the touched customers whose review time the
        watermark has passed."""
        mark = self.state.watermark
        reviews = touched.reviews
        while reviews and reviews[0][0] <= mark:
            queued_at, cid = heapq.heappop(reviews)
            state = touched.states[cid]
            if state.next_review_at != queued_at:
                # Superseded by an event (its new time is queued too): reviewing now would put
                # it out of (time, customer) order, which depends on the batching.
                continue
            self._advance(cid, state, mark, result)
            touched.queue_review(cid, state)  # the next review may fall in this batch

    def bring_to(self, now: float, states: Mapping[str, CustomerState], result: BatchResult
                 ) -> None:
        """End of a batch: every touched customer re-scored at each review time up to ``now``,
        and handed to the store."""
        for cid, state in states.items():
            self._advance(cid, state, now, result)
            result.changed[cid] = state

    def account(self, before: Mapping[str, Mapping[GaugeKey, float]],
                after: Mapping[str, CustomerState]) -> None:
        """Accounting: move the shard's gauges from what each customer contributed ``before``
        to what they contribute now (absolute values: a replayed batch writes the same)."""
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

    # -- the parts of a step ------------------------------------------------------------------

    def _remember(self, state: CustomerState, item: Incoming) -> None:
        if item.partition:
            state.offsets[item.partition] = item.offset
        if item.event.event_id is not None:
            ids = state.recent_ids
            ids.append(id_hash(item.event.event_id))
            if len(ids) > RECENT_IDS_KEPT:
                del ids[0]

    def _apply(self, state: CustomerState, event: ev.Event) -> None:
        priors = self.state.priors
        kind = event.type
        bought = state.purchases
        if kind == ev.ORDER:
            priors.observe_order(event.customer_id, event.ts, event.amount)
            if bought.last_order is not None and event.ts > bought.last_order:
                priors.observe_gap(event.ts - bought.last_order,
                                   self.config.segment_label(state.segment))
        old_spend = bought.spend if bought.orders or bought.refunds else -1.0
        state.apply(event, self.windows)
        if kind in (ev.ORDER, ev.REFUND) and (bought.orders or bought.refunds):
            # In the shop's spend histogram from the first order or refund of any amount on
            # (a refund of nothing before any order is no spender yet).
            priors.move_spend(old_spend, bought.spend)
        elif kind in (ev.CAMPAIGN_SENT, ev.MESSAGE_SENT):
            priors.observe_engagement(1.0, 0.0)
        elif kind == ev.CAMPAIGN_OPENED:
            priors.observe_engagement(0.0, OPEN_ANSWER)
        elif kind in (ev.CAMPAIGN_CLICKED,):
            priors.observe_engagement(0.0, CLICK_ANSWER)
        elif kind == ev.MESSAGE_REPLIED:
            priors.observe_engagement(0.0, 1.0)

    def _refit_if_due(self) -> None:
        """Refit the shard's buyer model when the watermark passes the next refit day or the
        buyer sample has grown by half: both fall at the same event whatever the batching."""
        priors = self.state.priors
        mark = self.state.watermark
        if priors.refit_due(mark):
            self._refit(mark)

    def _refit(self, mark: float) -> None:
        """Learn the segments' horizons from their reorders, then refit the buyer model and
        calibrate it for every horizon in use (the default segment's first: the evidence
        weight is chosen on its window)."""
        priors = self.state.priors
        priors.learn_horizons()
        priors.refit(mark, horizons_in_use(self.config, priors), self.config.recency.prior())

    def _judged_by_older_model(self, state: CustomerState) -> bool:
        """Whether the customer's tier and score came from another of the shard's model fits
        than the one in force. A count, not a time: live, reviews follow the wall clock while
        refits follow the watermark, so a review after the refit day may still have used the
        model before it."""
        return state.score is not None and state.model_fit != self.state.priors.fits

    def _advance(self, cid: str, state: CustomerState, until: float, result: BatchResult) -> None:
        """Re-score at every review time up to ``until``: tier changes of silence, on time."""
        reviews = 0
        while (state.next_review_at is not None and state.next_review_at <= until
               and reviews < MAX_REVIEWS_PER_ADVANCE):
            at = max(state.next_review_at, state.scored_at)
            self._score(cid, state, at, result, cause="silence")
            result.rescored_silent += 1
            reviews += 1

    def _score(self, cid: str, state: CustomerState, now: float, result: BatchResult,
               cause: str, waited_days: float | None = None,
               before: Assessment | None = None, may_rise: bool = False) -> None:
        """Score one customer at ``now``: assess, playbooks, transitions, drops, next review.
        Unless ``may_rise`` (an event that can raise the chance), the tier and score hold where
        a better tier would come from the shop's learned habits alone (:func:`held`)."""
        # Stored times read back as whole-second ints: make "now" one type whichever way it
        # came, so a record reads the same whether or not the state was reloaded in between.
        now = float(now)
        verdict = self.assess_at(state, now, before)
        if not may_rise and 0 <= verdict.old_tier and verdict.new_tier < verdict.old_tier:
            verdict = held(verdict, self.config.policy(state.segment))
        if cause == "event" and verdict.refitted and verdict.new_tier > verdict.old_tier >= 0:
            # Scored last under the shop's earlier habits, and lower now despite this event:
            # the silence before it, judged again, moved them (one change, not two).
            cause = "silence"
        segment = self.config.segment_label(state.segment)
        # Playbook assignment and win-back counting (churnwatch.core.winback).
        suggestion = track(cid, state, verdict.assessment, now, verdict.old_tier,
                           verdict.new_tier, self.config, self.state.counters)
        if verdict.new_tier != verdict.old_tier:
            self._change_tier(cid, state, verdict, segment, now, result, cause, waited_days,
                              suggestion)
        self._watch_drop(cid, state, verdict.score, segment, now, result)
        state.score = verdict.score
        state.scored_at = now
        state.model_fit = self.state.priors.fits
        self._schedule_review(state, verdict.assessment, now)

    def assess_at(self, state: CustomerState, now: float, before: Assessment | None = None
                  ) -> Verdict:
        """Assess: the score and tier at ``now`` (hysteresis against the current tier); the
        customer's components and value flag are updated, the rest is left to the caller."""
        config = self.config
        priors = self.state.priors
        assessment = assess(state, now, config, priors)
        if before is not None:
            assessment = after_order(before, assessment)
        verdict = Verdict(
            assessment, state.tier,
            tier_for(chance_percent(assessment), state.tier, config.policy(state.segment)),
            state.score, round(assessment.score, 2), state.components,
            self._judged_by_older_model(state))
        state.components = component_values(assessment)
        state.high_value = (state.declared_value_tier == config.high_value_tier
                            or state.purchases.spend >= priors.spend_quantile_floor(
                                config.high_value_top_share) > 0)
        return verdict

    def _change_tier(self, cid: str, state: CustomerState, verdict: Verdict, segment: str,
                     now: float, result: BatchResult, cause: str, waited_days: float | None,
                     suggestion: Suggestion | None) -> None:
        """Transitions: record the change with its reasons and count it (a customer's first
        tier is an assignment, not a change: it is in the state and the tier gauges, but makes
        no transition record)."""
        old_tier, new_tier = verdict.old_tier, verdict.new_tier
        if old_tier >= 0:
            why = tuple(reasons(state, verdict.assessment, now, self.config, self.state.priors,
                                verdict.previous_components, from_tier=old_tier,
                                to_tier=new_tier, old_score=verdict.old_score,
                                gap_before_days=waited_days)) + (
                component_moves(verdict.previous_components, state.components),)
            result.transitions.append(TierTransition(
                cid, segment, tier_name(old_tier), tier_name(new_tier), verdict.old_score,
                verdict.score, now, why, cause, suggestion,
                change_evidence(state, verdict.assessment, now, self.config, old_tier, new_tier,
                                waited_days)))
            counters = self.state.counters
            key: CounterKey = TransitionCount(segment, TIERS[old_tier], TIERS[new_tier])
            counters[key] = counters.get(key, 0.0) + 1.0
            if new_tier == HEALTHY and old_tier >= AT_RISK:
                key = RecoveryCount(segment, TIERS[old_tier])
                counters[key] = counters.get(key, 0.0) + 1.0
        state.tier = new_tier
        state.tier_since = now

    def _watch_drop(self, cid: str, state: CustomerState, score: float, segment: str,
                    now: float, result: BatchResult) -> None:
        """Sudden drops: against the highest score within the configured window, counted once
        per fall."""
        config = self.config
        window = config.sudden_drop_window_days * DAY
        if now - state.peak_at > window or score >= state.peak_score:
            state.peak_score = score
            state.peak_at = now
            state.drop_counted = False
        elif state.peak_score - score >= config.sudden_drop_points and not state.drop_counted:
            state.drop_counted = True
            result.drops.append(SuddenDrop(cid, segment, state.peak_score, score, now))
            key = SuddenDropCount(segment)
            counters = self.state.counters
            counters[key] = counters.get(key, 0.0) + 1.0

    def _schedule_review(self, state: CustomerState, assessment: Assessment, now: float
                         ) -> None:
        """When to look at the customer again if nothing happens: when silence alone would
        change their tier, or right after the shard's next refit."""
        priors = self.state.priors
        # The shard's next refit moves every probability a little: a silent customer is looked
        # at again right after it, so their tier follows the model rather than the one they
        # were scored with. (Churned customers wait for an event.)
        refit_at = priors.next_fit_day * DAY
        # Before the first fit, the prior stands until a refit fits a model; only a fitted
        # model is refitted in a way that moves everyone. (A fact of the last refit: any
        # batching reads it alike.)
        capped = refit_at > now and priors.model is not None
        due = next_review_at(state, assessment, now, self.config, priors,
                             not_after=refit_at if capped else None)
        if due is not None and due <= now:
            due = now + HELD_RECHECK_SECONDS  # past the threshold, held by hysteresis
        # Whole seconds, as stored: the due index must read back exactly as written.
        state.next_review_at = None if due is None else float(math.ceil(due))

    # -- aggregates ---------------------------------------------------------------------------

    def _contribution(self, state: CustomerState) -> dict[GaugeKey, float]:
        """What one customer adds to the shard's gauges."""
        if state.score is None or state.tier < 0:
            return {}
        keys = self._segment_keys(state.segment)
        out: dict[GaugeKey, float] = {
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

    def _segment_keys(self, segment: str | None) -> SegmentKeys:
        """The gauge keys of a declared segment's label, made once per engine."""
        keys = self._keys.get(segment)
        if keys is None:
            keys = self._keys[segment] = SegmentKeys(self.config.segment_label(segment))
        return keys


def held(verdict: Verdict, policy: SegmentPolicy) -> Verdict:
    """The verdict with the customer kept in their tier (:func:`held_in_tier`).

    >>> from churnwatch.core.config import SegmentPolicy
    >>> from churnwatch.core.scoring import Assessment, Component
    >>> c = Component(80.0, 1.0)
    >>> v = Verdict(Assessment(80.0, (c, c, c, c), 0.8), 2, 0, 30.0, 80.0, [30], False)
    >>> kept = held(v, SegmentPolicy())  # at_risk is left upwards at 45 + 3
    >>> kept.new_tier, kept.score
    (2, 47.99)
    """
    assessment = held_in_tier(verdict.assessment, verdict.old_tier, policy)
    return verdict._replace(assessment=assessment, new_tier=verdict.old_tier,
                            score=round(assessment.score, 2))


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


def id_hash(event_id: str) -> int:
    """The 32-bit hash a customer's recent event ids are kept as.

    >>> id_hash("o-1") == id_hash("o-1") < 2 ** 32
    True
    """
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=4).digest(), "big")


def partition_id(name: str) -> int:
    """A stable non-zero 32-bit id for a source partition name (a file, a stream, a topic
    partition).

    >>> partition_id("file:/data/orders.jsonl") == partition_id("file:/data/orders.jsonl")
    True
    """
    digest = hashlib.blake2b(name.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") or 1
