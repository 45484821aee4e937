"""Properties of the scoring core, against a slow batch reference on every prefix."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.customer import DAY, CustomerState
from churnwatch.core.events import Event
from churnwatch.core.priors import PopulationPriors
from churnwatch.core.scoring import assess, chance_percent, next_review_at, windows_of
from churnwatch.core.signals import LN2

CONFIG = ChurnwatchConfig()
WINDOWS = windows_of(CONFIG)
T0 = 1_600_000_000.0

event_types = st.sampled_from(["order", "order", "order", "refund", "campaign_sent",
                               "campaign_opened", "campaign_clicked", "message_sent",
                               "message_replied", "support_ticket", "feedback", "visit"])


@st.composite
def events(draw: st.DrawFn) -> Event:
    kind = draw(event_types)
    ts = T0 + draw(st.floats(min_value=0, max_value=800)) * DAY
    amount = draw(st.floats(min_value=0, max_value=500))
    channel = draw(st.sampled_from(["email", "whatsapp", "sms"]))
    if kind in ("order", "refund"):
        return Event("c", kind, ts, amount=amount)
    if kind.startswith(("campaign", "message")):
        return Event("c", kind, ts, channel=channel)
    if kind == "feedback":
        return Event("c", kind, ts, score=draw(st.floats(min_value=0, max_value=10)))
    if kind == "support_ticket":
        return Event("c", kind, ts, severity=draw(st.sampled_from([0.5, 1.0, 2.0])))
    return Event("c", kind, ts)


def fold(evs: list[Event]) -> CustomerState:
    state = CustomerState(first_seen=evs[0].ts)
    for e in evs:
        state.apply(e, WINDOWS)
    return state


def reference(evs: list[Event]) -> dict[str, float]:
    """The windows recomputed from scratch: plain sums over the events, no incremental state."""
    orders = [e for e in evs if e.type == "order"]
    occasions = sorted({e.ts for e in orders})  # lines at one instant are one purchase
    out: dict[str, float] = {"orders": len(occasions)}
    if orders:
        ref = max(e.ts for e in orders)
        w = lambda e, h: math.exp(-LN2 * (ref - e.ts) / h)  # noqa: E731
        decay_at = lambda t, h: math.exp(-LN2 * (ref - t) / h)  # noqa: E731
        out["ord_short"] = sum(decay_at(t, WINDOWS.trend_short) for t in occasions)
        out["ord_long"] = sum(decay_at(t, WINDOWS.trend_long) for t in occasions)
        out["val_long"] = sum(e.amount * w(e, WINDOWS.trend_long) for e in orders)
        out["first_order"] = min(e.ts for e in orders)
        out["last_order"] = ref
    service = [e for e in evs if e.type in ("support_ticket", "feedback")]
    if service:
        ref = max(e.ts for e in service)
        out["tickets"] = sum(e.severity * math.exp(-LN2 * (ref - e.ts) / WINDOWS.service)
                             for e in service if e.type == "support_ticket")
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(events(), min_size=1, max_size=25))
def test_incremental_windows_equal_batch_recomputation_on_every_prefix(evs: list[Event]) -> None:
    evs = sorted(evs, key=lambda e: e.ts)  # arrival in time order; lateness is tested below
    for n in range(1, len(evs) + 1):
        prefix = evs[:n]
        state = fold(prefix)
        expected = reference(prefix)
        assert state.purchases.orders == expected["orders"]
        if expected["orders"]:
            assert state.purchases.first_order == expected["first_order"]
            assert state.purchases.last_order == expected["last_order"]
            for name in ("ord_short", "ord_long", "val_long"):
                assert math.isclose(getattr(state.trend, name), expected[name], rel_tol=1e-9,
                                    abs_tol=1e-9), name
        if "tickets" in expected:
            assert math.isclose(state.service.tickets, expected["tickets"], rel_tol=1e-9,
                                abs_tol=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(events(), min_size=1, max_size=25), st.randoms(use_true_random=False))
def test_windows_do_not_depend_on_arrival_order(evs: list[Event], rnd) -> None:
    shuffled = list(evs)
    rnd.shuffle(shuffled)
    a, b = fold(sorted(evs, key=lambda e: e.ts)), fold(shuffled)
    assert math.isclose(a.trend.val_short, b.trend.val_short, rel_tol=1e-9, abs_tol=1e-9)
    times = [e.ts for e in evs if e.type == "order"]
    if len(set(times)) == len(times):  # lines of one basket merge only with the newest/oldest
        assert a.purchases.orders == b.purchases.orders
        assert math.isclose(a.trend.ord_long, b.trend.ord_long, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=80, deadline=None)
@given(st.lists(events(), min_size=1, max_size=30),
       st.floats(min_value=0, max_value=3000), st.floats(min_value=0, max_value=3000),
       st.integers(min_value=0, max_value=50), st.floats(min_value=1, max_value=400))
def test_score_stays_within_0_100_and_more_silence_never_raises_it(
        evs: list[Event], a_days: float, b_days: float, gaps: int, gap_days: float) -> None:
    state = fold(evs)
    priors = PopulationPriors()
    for _ in range(gaps):
        priors.observe_gap(gap_days * DAY)
    start = state.last_event_ts
    early, late = sorted((a_days, b_days))
    s_early = assess(state, start + early * DAY, CONFIG, priors).score
    s_late = assess(state, start + late * DAY, CONFIG, priors).score
    assert 0.0 <= s_late <= s_early <= 100.0


@settings(max_examples=60, deadline=None)
@given(st.lists(events(), min_size=1, max_size=20), st.integers(min_value=0, max_value=2))
def test_next_review_is_when_the_return_chance_falls_below_the_tier_exit(evs: list[Event],
                                                                         tier: int) -> None:
    state = fold(evs)
    priors = PopulationPriors()
    now = state.last_event_ts
    policy = CONFIG.policy(None)
    assessment = assess(state, now, CONFIG, priors)
    threshold = policy.boundaries[tier] - policy.hysteresis
    if chance_percent(assessment) < threshold:
        return
    state.tier = tier
    due = next_review_at(state, assessment, now, CONFIG, priors)

    def chance(at: float) -> float:
        return chance_percent(assess(state, at, CONFIG, priors))

    if due is None:  # never: even endless silence keeps it above the threshold
        assert chance(now + 36000 * DAY) >= threshold - 1e-6
        return
    assert chance(due + 120) < threshold + 1e-6
    if due - 120 > now:
        assert chance(due - 120) >= threshold - 0.02


@settings(max_examples=60, deadline=None)
@given(st.lists(events(), min_size=1, max_size=30))
def test_silence_long_enough_always_ends_below_at_risk(evs: list[Event]) -> None:
    state = fold(evs)
    policy = CONFIG.policy(None)
    score = assess(state, state.last_event_ts + 30 * 365 * DAY, CONFIG, PopulationPriors()).score
    assert score < policy.at_risk - policy.hysteresis


def _buyer(order_days: list[float]) -> CustomerState:
    return fold([Event("c", "order", T0 + d * DAY, amount=40.0) for d in order_days])


def test_with_orders_only_the_score_is_the_recency_chance_and_outreach_and_service_move_it(
) -> None:
    # One scale (docs/scoring.md): the score is the chance. The trend is shown and named in
    # reasons, but an order would reveal a slowdown just as it raises the chance, so it moves
    # nothing; unanswered outreach and support tickets lower the chance, on the log-odds.
    priors = PopulationPriors()
    steady = _buyer([float(d) for d in range(0, 400, 20)])
    now = steady.last_event_ts + 90 * DAY
    steady_at = assess(steady, now, CONFIG, priors)
    recency, trend = steady_at.components[0], steady_at.components[1]
    assert trend.confidence == 1.0 and trend.value > 99.0
    assert math.isclose(steady_at.score, recency.value, abs_tol=1e-9)
    slowing = _buyer([float(d) for d in range(0, 300, 15)] + [330.0, 360.0, 390.0])
    slowing_at = assess(slowing, slowing.last_event_ts + 90 * DAY, CONFIG, priors)
    assert slowing_at.components[1].value < 90.0
    assert math.isclose(slowing_at.score, slowing_at.components[0].value, abs_tol=1e-9)
    days = [float(d) for d in range(0, 400, 20)]
    ignored = fold([Event("c", "order", T0 + d * DAY, amount=40.0) for d in days]
                   + [Event("c", "campaign_sent", T0 + (d + 1) * DAY, channel="email")
                      for d in days])
    troubled = fold([Event("c", "order", T0 + d * DAY, amount=40.0) for d in days]
                    + [Event("c", "support_ticket", T0 + (d + 1) * DAY) for d in days[-4:]])
    for customer in (ignored, troubled):
        at = assess(customer, now, CONFIG, priors)
        assert math.isclose(at.components[0].value, recency.value, abs_tol=1e-9)
        assert at.score < recency.value - 1.0, at
        assert math.isclose(at.score, 100.0 * at.return_probability)
