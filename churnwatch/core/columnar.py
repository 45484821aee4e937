"""The columnar engine of one shard: a micro-batch folded and assessed as passes over arrays.

The shard's customers are the rows of a :class:`~churnwatch.core.columns.CustomerTable`; a
micro-batch is handled in the four steps of its reference,
:meth:`churnwatch.core.engine.ShardEngine.process_batch` (which differential tests hold it to):

1. each customer the batch names is brought to their first event's time (due reviews);
2. the batch is folded into the columns in arrival order (:func:`kernels.fold.fold_batch`:
   dedupe, lateness, the four signals), and the shard's priors learn from it;
3. the buyer model is refitted when due at the batch's watermark;
4. each customer with an admitted event is assessed once, at their newest event
   (:mod:`kernels.scoring`), then every row whose review time has come is brought to ``now``.

Python runs only for the rows whose tier changes or whose playbook assignment is open
(reasons, playbooks, transition records) and for the events the priors learn from. The engine
reads no clock and does no I/O.

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

import hashlib
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
from churnwatch.core.columns import CHANNELS, CustomerTable, set_from_state, to_state
from churnwatch.core.config import COMPONENTS, TIERS, ChurnwatchConfig
from churnwatch.core.engine import HELD_RECHECK_SECONDS, MAX_REVIEWS_PER_ADVANCE, component_moves
from churnwatch.core.history import change_evidence
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

#: Type codes in the order of :mod:`churnwatch.core.kernels.fold`.
TYPES = (ev.ORDER, ev.REFUND, ev.CAMPAIGN_SENT, ev.CAMPAIGN_OPENED, ev.CAMPAIGN_CLICKED,
         ev.MESSAGE_SENT, ev.MESSAGE_REPLIED, ev.SUPPORT_TICKET, ev.FEEDBACK, ev.VISIT,
         ev.PROFILE, ev.INTERVENTION)
TYPE_CODE = {name: code for code, name in enumerate(TYPES)}
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
    def of(cls, items: Sequence[Incoming]) -> EventColumns:
        """Columns of :class:`Incoming` items (tests and small callers)."""
        events = [item.event for item in items]
        return cls(
            [e.customer_id for e in events],
            np.array([TYPE_CODE[e.type] for e in events], dtype=np.uint8),
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


def id_hash(event_id: str) -> int:
    """The 32-bit hash a customer's recent event ids are kept as (the reference's)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=4).digest(), "big")


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
        self._windows = windows_of(config)

    # -- entry points ---------------------------------------------------------------------------

    def process_items(self, items: Sequence[Incoming], now: float) -> BatchResult:
        """:meth:`process` for :class:`Incoming` items."""
        return self.process(EventColumns.of(items), now)

    def process(self, batch: EventColumns, now: float) -> BatchResult:
        """Fold and assess one micro-batch, then bring every due row to ``now`` (the watermark
        in replay, the wall clock live). Returns what the store and the outputs need; the rows
        it changed are in :attr:`BatchResult.changed` only by id (``changed_rows``)."""
        result = BatchResult()
        table = self.table
        n = len(batch.customer_ids)
        self._note_positions(batch)
        rows = table.rows_for(batch.customer_ids, batch.ts)
        first_of = _first_index(rows)
        touched = np.unique(rows)
        due_now = self._due_rows(float(math.floor(now)))
        affected = np.union1d(touched, due_now)
        before = self._contributions(affected)
        # 1. Each named customer to their first event's time.
        self._advance(rows[first_of], batch.ts[first_of], result)
        # 2. The fold, then what the priors learn.
        status = np.empty(n, dtype=np.int8)
        gap_before = np.empty(n)
        old = {name: table[name][touched].copy() for name in ("spend", "orders", "refunds")}
        hashes, has_id = self._id_hashes(batch.event_ids)
        fold.fold_batch(
            rows, batch.types, batch.ts, batch.amount, batch.channel, batch.score,
            batch.severity, hashes, has_id, self.config.allowed_lateness_days * DAY,
            self._half_lives, table["score"], table["last_event_ts"], table["first_seen"],
            table["orders"], table["first_order"], table["last_order"], table["spend"],
            table["refunds"], table["first_basket"], table["ord_short"], table["ord_long"],
            table["val_short"], table["val_long"], table["trend_ref"], table["channels"],
            table["channel_seen"], table["eng_ref"], table["tickets"], table["fb_sum"],
            table["fb_weight"], table["svc_ref"], table["recent_ids"], table["recent_count"],
            status, gap_before)
        applied = status <= fold.LATE
        result.scored = int(applied.sum())
        result.late = int((status == fold.LATE).sum())
        result.duplicates = int((status == fold.DUPLICATE).sum())
        self._too_late(batch, np.nonzero(status == fold.TOO_LATE)[0], result)
        if result.scored:
            newest = float(batch.ts[applied].max())
            result.last_event_ts = newest
            self.state.watermark = max(self.state.watermark, newest)
        self._learn(batch, rows, applied, gap_before)
        self._move_spend(touched, old)
        # 3. The refit, at the batch's watermark.
        priors = self.state.priors
        if priors.refit_due(self.state.watermark):
            priors.learn_horizons()
            priors.refit(self.state.watermark, horizons_in_use(self.config, priors),
                         self.config.recency.prior())
        # 4. Once per customer with an admitted event, then everyone due to now.
        if result.scored:
            scored_rows, newest_at, lifting, waited = _admitted(rows, batch, applied, gap_before)
            at = np.maximum(newest_at, table["scored_at"][scored_rows])
            self._score(scored_rows, at, result, cause="event", may_rise=lifting, waited=waited)
        reviewed = np.union1d(touched, due_now)
        self._advance(reviewed, np.full(len(reviewed), float(math.floor(now))), result)
        self._account(before, self._contributions(affected))
        result.changed = {}
        self.changed_rows = affected
        return result

    # -- the parts of a batch -------------------------------------------------------------------

    def _note_positions(self, batch: EventColumns) -> None:
        if batch.partitions is None or batch.offsets is None:
            return
        positions = self.state.positions
        for partition, offset in zip(batch.partitions.tolist(), batch.offsets.tolist(),
                                     strict=True):
            if partition and offset > positions.get(partition, -1):
                positions[partition] = offset

    def _id_hashes(self, event_ids: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
        hashes = np.array([0 if e is None else id_hash(e) for e in event_ids], dtype=np.uint32)
        has_id = np.array([e is not None for e in event_ids], dtype=np.bool_)
        return hashes, has_id

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

    def _learn(self, batch: EventColumns, rows: np.ndarray, applied: np.ndarray,
               gap_before: np.ndarray) -> None:
        """What the shard's priors learn from the applied events (orders, gaps, answers), and
        the profiles and interventions, in arrival order."""
        table = self.table
        priors = self.state.priors
        config = self.config
        types = batch.types
        interesting = applied & ((types == fold.ORDER) | (types >= fold.PROFILE)
                                 | ((types >= fold.CAMPAIGN_SENT)
                                    & (types <= fold.MESSAGE_REPLIED)))
        segment = table["segment"]
        for i in np.nonzero(interesting)[0].tolist():
            kind = int(types[i])
            if kind == fold.ORDER:
                priors.observe_order(batch.customer_ids[i], float(batch.ts[i]),
                                     float(batch.amount[i]))
                gap = gap_before[i]
                if gap == gap:  # not nan
                    priors.observe_gap(float(gap), config.segment_label(
                        table.label(int(segment[rows[i]]))))
            elif kind >= fold.PROFILE:
                row = int(rows[i])
                state = to_state(table, row)
                state.apply(batch.extras[i], self._windows)
                table["segment"][row] = table.label_code(state.segment)
                table["value_tier"][row] = table.label_code(state.declared_value_tier)
                if state.outreach:
                    table.sparse["outreach"][row] = state.outreach
            else:
                sent, answered = ENGAGEMENT_OBSERVED[kind]
                priors.observe_engagement(sent, answered)

    def _move_spend(self, touched: np.ndarray, old: dict[str, np.ndarray]) -> None:
        table = self.table
        new_spend = table["spend"][touched]
        moved = (new_spend != old["spend"]) | (table["orders"][touched] != old["orders"]) | (
            table["refunds"][touched] != old["refunds"])
        priors = self.state.priors
        for i in np.nonzero(moved)[0].tolist():
            had = old["orders"][i] > 0 or old["refunds"][i] > 0
            priors.move_spend(float(old["spend"][i]) if had else -1.0, float(new_spend[i]))

    def _due_rows(self, now: float) -> np.ndarray:
        due = self.table["next_review_at"]
        return np.nonzero(due <= now)[0]

    def _advance(self, rows: np.ndarray, until: np.ndarray, result: BatchResult) -> None:
        """Re-score ``rows`` at every review time up to ``until``: tier changes of silence."""
        due_at = self.table["next_review_at"]
        for _ in range(MAX_REVIEWS_PER_ADVANCE):
            reviews = due_at[rows]
            due = reviews <= until  # nan: never
            if not due.any():
                return
            which = rows[due]
            at = np.maximum(reviews[due], self.table["scored_at"][which])
            self._score(which, at, result, cause="silence",
                        may_rise=np.zeros(len(which), dtype=bool), waited=None)
            result.rescored_silent += len(which)

    def _score(self, rows: np.ndarray, at: np.ndarray, result: BatchResult, cause: str,
               may_rise: np.ndarray, waited: np.ndarray | None) -> None:
        """Score ``rows`` at ``at``: assess, hold, tiers, playbooks, transitions, drops, next
        review (``engine.ShardEngine._score`` for many rows)."""
        table, config, priors = self.table, self.config, self.state.priors
        policies = Policies.of(table, config, priors)
        assessed = assess_rows(table, rows, at, config, priors, policies)
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
        for i in np.nonzero(changed | assigned)[0].tolist():
            previous = old_components[i][:int(old_count[i])].tolist()
            self._in_python(i, rows, assessed, score, chance, old_tier, new_tier, old_score,
                            previous, bool(refitted[i]), cause, may_rise, waited, result)
        table["tier"][rows] = new_tier
        self._watch_drops(rows, score, assessed.at, result)
        table["score"][rows] = score
        table["scored_at"][rows] = assessed.at
        table["model_fit"][rows] = priors.fits
        self._schedule(assessed, chance, new_tier, policies)

    def _in_python(self, i: int, rows: np.ndarray, assessed: Assessed, score: np.ndarray,
                   chance: np.ndarray, old_tier: np.ndarray, new_tier: np.ndarray,
                   old_score: np.ndarray, previous: list[int], refitted: bool, cause: str,
                   may_rise: np.ndarray, waited: np.ndarray | None, result: BatchResult
                   ) -> None:
        """One row whose tier changes or whose playbook assignment is open: win-back
        bookkeeping, and for a change its transition with reasons."""
        table, config, priors = self.table, self.config, self.state.priors
        row = int(rows[i])
        cid = table.ids[row]
        now = float(assessed.at[i])
        state = to_state(table, row)
        assessment = _assessment(assessed, i, float(score[i]), float(chance[i]), priors,
                                 config)
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
                cid, segment, tier_name(old), tier_name(new), prior_score, float(score[i]), now,
                why, cause, suggestion,
                change_evidence(state, assessment, now, config, old, new, waited_days)))
            counters = self.state.counters
            key: CounterKey = TransitionCount(segment, TIERS[old], TIERS[new])
            counters[key] = counters.get(key, 0.0) + 1.0
            if new == HEALTHY and old >= AT_RISK:
                key = RecoveryCount(segment, TIERS[old])
                counters[key] = counters.get(key, 0.0) + 1.0
        table["tier_since"][row] = now

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
        not_after = refit_at if priors.may_change_at_refit() else None
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

    def _segment_keys(self, segment: str | None) -> SegmentKeys:
        label = self.config.segment_label(segment)
        keys = self._keys.get(label)
        if keys is None:
            keys = self._keys[label] = SegmentKeys(label)
        return keys

    # -- taking over the reference model's states ----------------------------------------------

    def adopt(self, customer_id: str, state: object) -> int:
        """Take over a customer's state written by the per-customer engine (upgrade in
        place); returns their row."""
        from churnwatch.core.customer import CustomerState

        assert isinstance(state, CustomerState)
        row = int(self.table.rows_for([customer_id], [state.first_seen])[0])
        set_from_state(self.table, row, state)
        return row


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


def _assessment(assessed: Assessed, i: int, score: float, chance: float,
                priors: object, config: ChurnwatchConfig) -> Assessment:
    """Row ``i`` of a pass as the reference's :class:`Assessment` (for reasons and
    playbooks)."""
    from churnwatch.core.priors import PopulationPriors

    assert isinstance(priors, PopulationPriors)
    gap = priors.mean_gap_days(config.recency.default_gap_days,
                               config.recency.default_gap_weight)
    components = tuple(Component(float(assessed.values[i, k]),
                                 float(assessed.confidences[i, k])) for k in range(4))
    inputs = RecencyInputs(int(assessed.repeats[i]), float(assessed.span_days[i]),
                           float(assessed.silence_days[i]), gap, float(assessed.value_shift[i]))
    return Assessment(score, components, chance, inputs,  # type: ignore[arg-type]
                      float(assessed.at[i]), float(assessed.shift[i]),
                      float(assessed.horizon[i]))
