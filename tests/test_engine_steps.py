"""The engine's named steps, each on its own (tests/test_engine.py runs them together)."""

from __future__ import annotations

from churnwatch.core.aggregates import (
    BandCustomers,
    ScoredCustomers,
    TierCustomers,
    TransitionCount,
)
from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.customer import DAY, CustomerState
from churnwatch.core.engine import ShardEngine
from churnwatch.core.events import Event
from churnwatch.core.records import BatchResult, Incoming, ShardState

T0 = 1_700_000_000.0
CONFIG = ChurnwatchConfig(allowed_lateness_days=30)


def engine() -> ShardEngine:
    return ShardEngine(3, CONFIG, ShardState())


def scored_customer(engine: ShardEngine, cid: str = "c1", days: int = 100) -> CustomerState:
    """A customer ordering every 10 days, applied through the engine's own steps."""
    touched = engine.touch_due([], {})
    state = engine.touch(Event(cid, "order", T0), {cid: None}, touched)
    result = BatchResult()
    for n, day in enumerate(range(0, days + 1, 10)):
        engine.apply_event(Incoming(Event(cid, "order", T0 + day * DAY, amount=20.0), 7, n + 1),
                           state, result)
    return state


def test_dedupe_knows_an_offset_or_an_event_id_it_has_applied() -> None:
    e = engine()
    state = scored_customer(e)
    result = BatchResult()
    assert e.is_duplicate(state, Incoming(Event("c1", "order", T0), 7, 3), result)
    assert not e.is_duplicate(state, Incoming(Event("c1", "order", T0), 7, 99), result)
    assert not e.is_duplicate(state, Incoming(Event("c1", "order", T0), 8, 1), result)
    with_id = Incoming(Event("c1", "order", T0 + 101 * DAY, "e-9", amount=5.0), 0, 0)
    assert not e.is_duplicate(state, with_id, result)
    e.apply_event(with_id, state, result)
    assert e.is_duplicate(state, with_id, result)
    assert result.duplicates == 2


def test_lateness_applies_a_late_event_within_the_bound_and_dead_letters_one_beyond() -> None:
    e = engine()
    state = scored_customer(e)  # latest event: day 100
    result = BatchResult()
    on_time = Incoming(Event("c1", "visit", T0 + 100 * DAY), 7, 50)
    assert not e.is_too_late(state, on_time, result) and result.late == 0
    late = Incoming(Event("c1", "visit", T0 + 75 * DAY), 7, 51)
    assert not e.is_too_late(state, late, result) and result.late == 1
    too_late = Incoming(Event("c1", "visit", T0 + 60 * DAY), 7, 52, position="f:52")
    assert e.is_too_late(state, too_late, result)
    [dead] = result.dead_letters
    assert (dead.reason, dead.position, dead.customer_id) == ("too_late", "f:52", "c1")
    assert (dead.partition, dead.offset) == ("shard 3 of 7", 52)  # dead-lettered once
    # A customer never scored has no "latest" to be late against.
    assert not e.is_too_late(CustomerState(T0), too_late, BatchResult())


def test_apply_event_scores_the_customer_and_moves_the_watermark() -> None:
    e = engine()
    state = scored_customer(e, days=50)
    assert state.purchases.orders == 6 and state.score is not None and state.tier == 0
    assert e.state.watermark == T0 + 50 * DAY
    assert state.next_review_at is not None and state.next_review_at > T0 + 50 * DAY


def test_a_first_tier_is_an_assignment_and_a_change_is_a_counted_transition() -> None:
    e = engine()
    first = BatchResult()
    new = CustomerState(T0)
    e.apply_event(Incoming(Event("n1", "order", T0, amount=20.0), 7, 1), new, first)
    assert new.tier >= 0 and first.transitions == [] and e.state.counters == {}
    state = scored_customer(e)
    counted = dict(e.state.counters)
    result = BatchResult()
    e.bring_to(T0 + 400 * DAY, {"c1": state}, result)
    assert [(t.from_tier, t.to_tier) for t in result.transitions][0] == ("healthy", "watch")
    assert all(t.cause == "silence" for t in result.transitions)
    key = TransitionCount("unassigned", "healthy", "watch")
    assert e.state.counters[key] - counted.get(key, 0.0) == 1
    assert result.changed == {"c1": state}


def test_review_due_skips_a_queued_time_an_event_has_superseded() -> None:
    e = engine()
    state = scored_customer(e)
    touched = e.touch_due(["c1"], {"c1": state})
    queued = state.next_review_at
    assert queued is not None and touched.reviews == [(queued, "c1")]
    state.next_review_at = queued + DAY  # as an event in the batch would have moved it
    e.state.watermark = queued
    result = BatchResult()
    e.review_due(touched, result)
    assert touched.reviews == [] and result.rescored_silent == 0


def test_accounting_moves_a_customer_between_tiers_and_drops_emptied_gauges() -> None:
    e = engine()
    state = scored_customer(e)
    e.account({"c1": {}}, {"c1": state})
    assert e.state.gauges[TierCustomers("unassigned", "healthy")] == 1
    assert e.state.gauges[ScoredCustomers("unassigned")] == 1
    band = BandCustomers("unassigned", f"{int(state.score // 10) * 10:02d}-"
                                       f"{int(state.score // 10) * 10 + 10}")
    assert e.state.gauges[band] == 1
    touched = e.touch_due([], {})
    e.touch(Event("c1", "visit", T0 + 101 * DAY), {"c1": state}, touched)  # loaded: before
    state.tier = 3
    e.account(touched.before, touched.states)
    assert TierCustomers("unassigned", "healthy") not in e.state.gauges  # 0: dropped
    assert e.state.gauges[TierCustomers("unassigned", "churned")] == 1
    assert e.state.gauges[ScoredCustomers("unassigned")] == 1


def test_note_position_only_moves_forward() -> None:
    e = engine()
    for offset in (5, 9, 4):
        e.note_position(Incoming(Event("c1", "visit", T0), 2, offset))
    e.note_position(Incoming(Event("c1", "visit", T0), 0, 100))  # no replayable position
    assert e.state.positions == {2: 9}
