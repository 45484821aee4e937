"""The signal classes of the customer state (churnwatch/core/signals.py): their doctests, each
against a from-scratch recomputation on every prefix of random events, arrival order not
mattering, and :meth:`CustomerState.apply` handing each event to its one signal."""

from __future__ import annotations

import doctest
import math
from collections.abc import Iterator
from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st

from churnwatch.core import customer, signals
from churnwatch.core import events as ev
from churnwatch.core.customer import CustomerState
from churnwatch.core.events import Event
from churnwatch.core.signals import (
    DAY,
    ENGAGEMENT_SLOT,
    LN2,
    Engagement,
    Purchases,
    PurchaseTrend,
    Service,
    Windows,
)

WINDOWS = Windows.default()
T0 = 1_700_000_000.0
SIGNALS = ("purchases", "trend", "engagement", "service")


def test_the_signal_and_customer_doctests_pass() -> None:
    failed, tried = doctest.testmod(signals)
    assert failed == 0 and tried >= 25
    failed, tried = doctest.testmod(customer)
    assert failed == 0 and tried >= 5


def test_every_signal_class_has_slots_and_a_doctest() -> None:
    for cls in (Purchases, PurchaseTrend, Engagement, Service):
        assert not hasattr(cls(), "__dict__"), cls
        assert cls.__doc__ is not None and ">>> " in cls.__doc__, cls
        assert ".update(" in cls.__doc__, cls


def test_the_state_keeps_no_flat_copies_of_the_signals() -> None:
    state = CustomerState(T0)
    for name in ("orders", "first_order", "last_order", "spend", "refunds", "ord_short",
                 "ord_long", "val_short", "val_long", "trend_ref", "channels", "eng_ref",
                 "tickets", "fb_sum", "fb_weight", "svc_ref", "mean_gap_days",
                 "engagement_totals"):
        assert not hasattr(state, name), name
    assert [type(getattr(state, name)) for name in SIGNALS] == [
        Purchases, PurchaseTrend, Engagement, Service]


def one_of_each(ts: float) -> list[Event]:
    return [Event("c", ev.ORDER, ts, amount=12.5), Event("c", ev.REFUND, ts, amount=2.0),
            *(Event("c", kind, ts, channel="sms") for kind in ENGAGEMENT_SLOT),
            Event("c", ev.SUPPORT_TICKET, ts, severity=2.0),
            Event("c", ev.FEEDBACK, ts, score=7.0), Event("c", ev.VISIT, ts),
            Event("c", ev.PROFILE, ts, attributes={"segment": "pets"}),
            Event("c", ev.INTERVENTION, ts, channel="phone")]


def test_apply_hands_each_event_to_the_one_signal_it_concerns() -> None:
    concerns = {ev.ORDER: {"purchases", "trend"}, ev.REFUND: {"purchases"},
                ev.SUPPORT_TICKET: {"service"}, ev.FEEDBACK: {"service"}, ev.VISIT: set(),
                ev.PROFILE: set(), ev.INTERVENTION: set(),
                **{kind: {"engagement"} for kind in ENGAGEMENT_SLOT}}
    for event in one_of_each(T0 + DAY):
        fresh, state = CustomerState(T0), CustomerState(T0)
        state.apply(event, WINDOWS)
        changed = {name for name in SIGNALS if getattr(state, name) != getattr(fresh, name)}
        assert changed == concerns[event.type], event.type


# -- against a recomputation from scratch -------------------------------------------------------

days = st.floats(min_value=0, max_value=800)


@st.composite
def engagement_events(draw: st.DrawFn) -> Event:
    return Event("c", draw(st.sampled_from(sorted(ENGAGEMENT_SLOT))), T0 + draw(days) * DAY,
                 channel=draw(st.sampled_from(["email", "sms", "whatsapp"])))


@st.composite
def service_events(draw: st.DrawFn) -> Event:
    ts = T0 + draw(days) * DAY
    if draw(st.booleans()):
        return Event("c", ev.SUPPORT_TICKET, ts, severity=draw(st.sampled_from([0.5, 1.0, 3.0])))
    return Event("c", ev.FEEDBACK, ts, score=draw(st.floats(min_value=0, max_value=10)))


@st.composite
def purchase_events(draw: st.DrawFn) -> Event:
    kind = draw(st.sampled_from([ev.ORDER, ev.ORDER, ev.REFUND]))
    return Event("c", kind, T0 + draw(days) * DAY,
                 amount=draw(st.floats(min_value=0, max_value=500)))


def fold(evs: list[Event]) -> CustomerState:
    state = CustomerState(evs[0].ts)
    for event in evs:
        state.apply(event, WINDOWS)
    return state


def prefixes_in_any_order(evs: list[Event], rnd: Random) -> Iterator[tuple[list[Event],
                                                                       list[Event]]]:
    """Every prefix of ``evs``, in order and shuffled."""
    for n in range(1, len(evs) + 1):
        prefix = evs[:n]
        shuffled = list(prefix)
        rnd.shuffle(shuffled)
        yield prefix, shuffled


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def engagement_reference(evs: list[Event]) -> dict[str, list[float]]:
    """Every send and answer weighted by its age at the newest of them: plain sums."""
    ref = max(e.ts for e in evs)
    rows: dict[str, list[float]] = {}
    for e in evs:
        row = rows.setdefault(str(e.channel), [0.0] * 5)
        row[ENGAGEMENT_SLOT[e.type]] += math.exp(-LN2 * (ref - e.ts) / WINDOWS.engagement)
    return rows


@settings(max_examples=60, deadline=None)
@given(st.lists(engagement_events(), min_size=1, max_size=20), st.randoms(use_true_random=False))
def test_engagement_equals_its_recomputation_on_every_prefix_in_any_order(evs: list[Event],
                                                                          rnd) -> None:
    for prefix, shuffled in prefixes_in_any_order(evs, rnd):
        want = engagement_reference(prefix)
        for got in (fold(prefix).engagement, fold(shuffled).engagement):
            assert got.ref == max(e.ts for e in prefix)
            assert sorted(got.channels) == sorted(want)
            for channel, row in want.items():
                assert all(close(a, b) for a, b in zip(got.channels[channel], row, strict=True))
    engagement = fold(evs).engagement
    at = engagement.ref + 45 * DAY
    now, later = engagement.totals(engagement.ref, WINDOWS.engagement), \
        engagement.totals(at, WINDOWS.engagement)
    assert all(close(b, a * 2 ** -0.5) for a, b in zip(now, later, strict=True))
    assert close(now.sent, now.campaigns + now.messages)
    assert 0.0 <= now.responses <= now.sent + 1e-9


@settings(max_examples=60, deadline=None)
@given(st.lists(service_events(), min_size=1, max_size=20), st.randoms(use_true_random=False))
def test_service_equals_its_recomputation_on_every_prefix_in_any_order(evs: list[Event],
                                                                       rnd) -> None:
    for prefix, shuffled in prefixes_in_any_order(evs, rnd):
        ref = max(e.ts for e in prefix)
        weight = {id(e): math.exp(-LN2 * (ref - e.ts) / WINDOWS.service) for e in prefix}
        tickets = sum(e.severity * weight[id(e)] for e in prefix if e.type == ev.SUPPORT_TICKET)
        feedback = [e for e in prefix if e.type == ev.FEEDBACK]
        fb_weight = sum(weight[id(e)] for e in feedback)
        for got in (fold(prefix).service, fold(shuffled).service):
            assert got.ref == ref and close(got.tickets, tickets)
            assert close(got.fb_weight, fb_weight)
            mean = got.mean_feedback()
            if feedback:
                want = sum(float(e.score or 0.0) * weight[id(e)] for e in feedback) / fb_weight
                assert mean is not None and close(mean, want)
            else:
                assert mean is None


@settings(max_examples=60, deadline=None)
@given(st.lists(purchase_events(), min_size=1, max_size=25))
def test_purchases_equal_their_recomputation_on_every_prefix(evs: list[Event]) -> None:
    evs = sorted(evs, key=lambda e: e.ts)  # basket lines merge with the first or last order
    for n in range(1, len(evs) + 1):
        prefix = evs[:n]
        got = fold(prefix).purchases
        spend = 0.0
        for e in prefix:  # a refund never takes the spend below 0
            spend = spend + e.amount if e.type == ev.ORDER else max(spend - e.amount, 0.0)
        orders = sorted({e.ts for e in prefix if e.type == ev.ORDER})
        assert got.spend == spend and got.spend >= 0.0
        assert got.refunds == sum(e.amount for e in prefix if e.type == ev.REFUND)
        assert got.orders == len(orders)
        if orders:
            assert (got.first_order, got.last_order) == (orders[0], orders[-1])
            assert got.tenure() == orders[-1] - orders[0]
        gap = got.mean_gap_days()
        if len(orders) < 2:
            assert gap is None
        else:
            assert gap is not None and close(gap, (orders[-1] - orders[0]) / DAY
                                             / (len(orders) - 1))


@settings(max_examples=60, deadline=None)
@given(st.lists(purchase_events(), min_size=1, max_size=25), st.randoms(use_true_random=False))
def test_the_first_basket_is_the_first_order_days_total_in_any_arrival_order(
        evs: list[Event], rnd: Random) -> None:
    shuffled = list(evs)
    rnd.shuffle(shuffled)
    for n in range(1, len(shuffled) + 1):
        prefix = shuffled[:n]
        orders = [e for e in prefix if e.type == ev.ORDER]
        got = fold(prefix).purchases
        if not orders:
            assert got.first_basket is None and got.basket() is None
            continue
        first_day = min(math.floor(e.ts / DAY) for e in orders)
        want = sum(round(e.amount * 100) for e in orders if math.floor(e.ts / DAY) == first_day)
        assert got.first_basket == want
        assert got.basket() == want / 100


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(days, st.floats(min_value=0, max_value=500)), min_size=1,
                max_size=20), st.randoms(use_true_random=False),
       st.floats(min_value=1, max_value=2000))
def test_trend_rates_do_not_depend_on_arrival_order(lines: list[tuple[float, float]], rnd,
                                                    tenure_days: float) -> None:
    def trend_of(order: list[tuple[float, float]]) -> PurchaseTrend:
        trend = PurchaseTrend()
        for day, amount in order:
            trend.update(T0 + day * DAY, 1.0, amount, WINDOWS)
        return trend

    shuffled = list(lines)
    rnd.shuffle(shuffled)
    a = trend_of(sorted(lines)).rates(tenure_days * DAY, WINDOWS.trend_short, WINDOWS.trend_long)
    b = trend_of(shuffled).rates(tenure_days * DAY, WINDOWS.trend_short, WINDOWS.trend_long)
    assert all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-15) for x, y in zip(a, b, strict=True))
    ref = T0 + max(day for day, _ in lines) * DAY
    short = WINDOWS.trend_short * (1 - math.exp(-LN2 * tenure_days * DAY / WINDOWS.trend_short))
    want = sum(math.exp(-LN2 * (ref - T0 - day * DAY) / WINDOWS.trend_short)
               for day, _ in lines) / short
    assert math.isclose(a.orders_short, want, rel_tol=1e-9, abs_tol=1e-15)
