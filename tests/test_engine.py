"""The shard engine: idempotence, late events, hysteresis, silent customers on time."""

from __future__ import annotations

from churnwatch.core.aggregates import (
    RecoveryCount,
    SuddenDropCount,
    TierCustomers,
    TransitionCount,
)
from churnwatch.core.config import ChurnwatchConfig, SegmentPolicy
from churnwatch.core.customer import DAY
from churnwatch.core.engine import ShardEngine
from churnwatch.core.events import Event
from churnwatch.core.records import Incoming, ShardState
from churnwatch.core.scoring import tier_for

T0 = 1_700_000_000.0
CONFIG = ChurnwatchConfig()


def order(cid: str, day: float, offset: int = 0, event_id: str | None = None) -> Incoming:
    return Incoming(Event(cid, "order", T0 + day * DAY, event_id, amount=30.0),
                    partition=7 if offset else 0, offset=offset)


def run(engine: ShardEngine, store: dict, items: list[Incoming], now: float):
    ids = {i.event.customer_id for i in items}
    result = engine.process(items, {c: store.get(c) for c in ids}, now)
    store.update(result.changed)
    return result


def regular_history(cid: str = "c1", n: int = 12, every: float = 20.0) -> list[Incoming]:
    return [order(cid, i * every, offset=i + 1) for i in range(n)]


def test_events_seen_twice_by_offset_or_event_id_are_applied_once() -> None:
    engine, store = ShardEngine(0, CONFIG, ShardState()), {}
    first = run(engine, store, regular_history(), T0 + 230 * DAY)
    again = run(engine, store, regular_history(), T0 + 230 * DAY)
    assert first.scored == 12 and again.scored == 0 and again.duplicates == 12
    assert store["c1"].purchases.orders == 12
    by_id = [order("c2", 1, event_id="e-1"), order("c2", 1, event_id="e-1")]
    result = run(engine, store, by_id, T0 + DAY)
    assert (result.scored, result.duplicates, store["c2"].purchases.orders) == (1, 1, 1)


def test_a_late_event_is_counted_and_gives_the_same_state_as_on_time() -> None:
    history = regular_history()
    on_time = ShardEngine(0, CONFIG, ShardState())
    late = ShardEngine(0, CONFIG, ShardState())
    a, b = {}, {}
    run(on_time, a, history, T0 + 230 * DAY)
    # Within a partition offsets follow arrival, so the late order has the highest offset.
    shuffled = history[:5] + history[6:] + [history[5]]
    renumbered = [Incoming(i.event, 7, n + 1) for n, i in enumerate(shuffled)]
    result = run(late, b, renumbered, T0 + 230 * DAY)
    assert result.late == 1
    assert a["c1"].purchases.orders == b["c1"].purchases.orders
    assert abs(a["c1"].trend.ord_long - b["c1"].trend.ord_long) < 1e-9
    # Only the shard priors differ (a late order is not counted as a gap), by a hair.
    assert abs(a["c1"].score - b["c1"].score) < 0.5


def test_events_older_than_the_allowed_lateness_go_to_dead_letters() -> None:
    config = ChurnwatchConfig(allowed_lateness_days=30)
    engine, store = ShardEngine(0, config, ShardState()), {}
    run(engine, store, regular_history(), T0 + 230 * DAY)
    result = run(engine, store, [order("c1", 10, offset=99)], T0 + 230 * DAY)
    assert result.scored == 0
    assert [d.reason for d in result.dead_letters] == ["too_late"]


def test_hysteresis_keeps_a_score_hovering_at_a_boundary_in_its_tier() -> None:
    policy = SegmentPolicy()
    tier = tier_for(66.0, -1, policy)  # tiers are on the return chance, in percent
    changes = 0
    for chance in [64.5, 65.5, 63.2, 66.0, 62.5, 65.0] * 5:
        new = tier_for(chance, tier, policy)
        changes += new != tier
        tier = new
    assert changes == 0
    assert tier_for(61.0, tier, policy) != tier  # a real fall still moves it


def test_a_silent_customer_changes_tier_at_its_review_time_with_reasons() -> None:
    engine, store = ShardEngine(0, CONFIG, ShardState()), {}
    run(engine, store, regular_history(), T0 + 220 * DAY)
    state = store["c1"]
    assert state.tier == 0 and state.next_review_at is not None
    due = state.next_review_at
    result = engine.review({"c1": state}, due + 3650 * DAY)
    walk = [(t.from_tier, t.to_tier) for t in result.transitions]
    assert walk == [("healthy", "watch"), ("watch", "at_risk"), ("at_risk", "churned")]
    assert result.transitions[0].at == due
    assert all(t.cause == "silence" for t in result.transitions)
    assert "usually orders every 20" in result.transitions[0].reasons[0]
    assert store["c1"].next_review_at is None  # churned: nothing more to wait for


def test_aggregates_follow_customers_between_tiers() -> None:
    engine, store = ShardEngine(0, CONFIG, ShardState()), {}
    both = sorted(regular_history("a") + regular_history("b"), key=lambda i: i.event.ts)
    run(engine, store, both, T0 + 220 * DAY)
    assert engine.state.gauges[TierCustomers("unassigned", "healthy")] == 2
    counters = dict(engine.state.counters)
    engine.review({"a": store["a"]}, T0 + 5000 * DAY)
    gauges = engine.state.gauges
    assert gauges[TierCustomers("unassigned", "healthy")] == 1
    assert gauges[TierCustomers("unassigned", "churned")] == 1
    key = TransitionCount("unassigned", "healthy", "watch")
    assert engine.state.counters[key] - counters.get(key, 0.0) == 1


def test_one_time_buyers_are_not_rated_certainly_alive() -> None:
    engine, store = ShardEngine(0, CONFIG, ShardState()), {}
    run(engine, store, [order("once", 0, offset=50)] + regular_history("regular"),
        T0 + 220 * DAY)
    once = engine.review({"once": store["once"]}, T0 + 400 * DAY)
    assert store["once"].tier == 3, once.transitions
    assert store["regular"].tier == 0


def test_recoveries_and_sudden_drops_are_counted_once() -> None:
    # A regular customer falls silent, walks down to churned, orders again: one recovery.
    engine, store = ShardEngine(0, CONFIG, ShardState()), {}
    run(engine, store, regular_history(), T0 + 220 * DAY)
    walk = engine.review({"c1": store["c1"]}, T0 + 420 * DAY)
    assert [t.to_tier for t in walk.transitions] == ["watch", "at_risk", "churned"]
    back = run(engine, store, [order("c1", 421, offset=20)], T0 + 421 * DAY)
    assert [(t.from_tier, t.to_tier) for t in back.transitions] == [("churned", "healthy")]
    assert engine.state.counters[RecoveryCount("unassigned", "churned")] == 1
    assert RecoveryCount("unassigned", "at_risk") not in engine.state.counters
    # The same walk as a sudden drop (20 points within a year): counted once, not per step.
    drops = ChurnwatchConfig(sudden_drop_points=20.0, sudden_drop_window_days=365.0)
    engine, store = ShardEngine(0, drops, ShardState()), {}
    run(engine, store, regular_history(), T0 + 220 * DAY)
    walk = engine.review({"c1": store["c1"]}, T0 + 420 * DAY)
    assert len(walk.drops) == 1 and walk.drops[0].from_score - walk.drops[0].to_score >= 20.0
    assert engine.state.counters[SuddenDropCount("unassigned")] == 1
    again = engine.review({"c1": store["c1"]}, T0 + 430 * DAY)
    assert again.drops == [] and engine.state.counters[SuddenDropCount("unassigned")] == 1
