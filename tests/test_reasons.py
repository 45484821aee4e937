"""Reasons that read right: upgrades explained by what improved, numbers with the right plural,
and a tier change whose two scores print alike explained."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.customer import DAY, CustomerState
from churnwatch.core.engine import ShardEngine
from churnwatch.core.events import Event, decode_event
from churnwatch.core.priors import PopulationPriors
from churnwatch.core.records import Incoming, ShardState
from churnwatch.core.scoring import (
    AT_RISK,
    HEALTHY,
    WATCH,
    assess,
    component_values,
    reasons,
    windows_of,
)

T0 = 1_700_000_000.0
CONFIG = ChurnwatchConfig()
# What must never be printed: a zero or fractional silence in days, a singular count with a
# plural noun, a plural-less count above one is fine.
WRONG = re.compile(r"\b0 days?\b|\b1 (orders|answers|days|messages|tickets)\b|every 0\b"
                   r"|every 1 day\b|\b0 days ago\b|about 0 ")


def incoming(event: Event, offset: int) -> Incoming:
    return Incoming(event, partition=3, offset=offset)


def run_engine(events: list[Event], now: float) -> tuple[ShardEngine, dict, list]:
    engine, store = ShardEngine(0, CONFIG, ShardState()), {}
    transitions = []
    for n, event in enumerate(events, 1):
        result = engine.process([incoming(event, n)], {event.customer_id:
                                                      store.get(event.customer_id)}, event.ts)
        store.update(result.changed)
        transitions += result.transitions
    result = engine.review(dict(store), now)
    store.update(result.changed)
    transitions += result.transitions
    return engine, store, transitions


def order(day: float, cid: str = "c1") -> Event:
    return Event(cid, "order", T0 + day * DAY, amount=30.0)


def test_an_upgrade_after_a_long_silence_is_explained_by_the_new_order() -> None:
    days = [0, 21, 42, 63, 84, 105]
    # Silent long enough to fall, then an order: the way back up is the order, not the silence.
    engine, store = ShardEngine(0, CONFIG, ShardState()), {}
    transitions = []
    for n, day in enumerate(days, 1):
        result = engine.process([incoming(order(day), n)], {"c1": store.get("c1")}, T0 + day * DAY)
        store.update(result.changed)
    fall = engine.review({"c1": store["c1"]}, T0 + 420 * DAY)
    store.update(fall.changed)
    down = fall.transitions
    assert down and down[-1].to_tier != "healthy"
    assert any(r.startswith("no order for ") for r in down[-1].reasons)
    back = engine.process([incoming(order(425), 99)], {"c1": store["c1"]}, T0 + 425 * DAY)
    transitions = back.transitions
    assert transitions, "an order after the silence moves the customer up"
    up = transitions[-1]
    assert ["healthy", "watch", "at_risk", "churned"].index(up.to_tier) < \
        ["healthy", "watch", "at_risk", "churned"].index(up.from_tier)
    first = up.reasons[0]
    assert first.startswith("ordered again after 320 days, usually every 21 days; "), up.reasons
    assert first.endswith(f"{up.new_score:.0f}% likely to order within 6 months"), up.reasons
    assert not any("no order for" in r for r in up.reasons)
    assert not any(WRONG.search(r) for r in up.reasons)


def test_an_upgrade_of_a_second_order_says_how_long_they_waited() -> None:
    state = CustomerState(first_seen=T0)
    windows = windows_of(CONFIG)
    state.apply(order(0), windows)
    state.apply(order(40), windows)
    now = T0 + 40 * DAY
    assessment = assess(state, now, CONFIG, PopulationPriors())
    text = reasons(state, assessment, now, CONFIG, PopulationPriors(), [30, -1, -1, -1],
                   from_tier=AT_RISK, to_tier=HEALTHY)
    assert text[0] == ("ordered again after 40 days, their second order; "
                       f"{assessment.score:.0f}% likely to order within 6 months")
    unknown = CustomerState(first_seen=T0)
    for day in (0, 10, 20, 60):
        unknown.apply(order(day), windows)
    now = T0 + 60 * DAY
    text = reasons(unknown, assess(unknown, now, CONFIG, PopulationPriors()), now, CONFIG,
                   PopulationPriors(), [30, -1, -1, -1], from_tier=WATCH, to_tier=HEALTHY)
    assert text[0].startswith("ordered again, usually every 20 days; ")


def test_an_upgrade_from_answering_outreach_names_the_answers_not_the_silence() -> None:
    windows = windows_of(CONFIG)
    state = CustomerState(first_seen=T0)
    for day in (0, 30, 60):
        state.apply(order(day), windows)
    for day in (70, 75, 80):
        state.apply(Event("c1", "message_sent", T0 + day * DAY, channel="whatsapp"), windows)
    priors = PopulationPriors()
    before = component_values(assess(state, T0 + 81 * DAY, CONFIG, priors))
    state.apply(Event("c1", "message_replied", T0 + 82 * DAY, channel="whatsapp"), windows)
    state.apply(Event("c1", "message_replied", T0 + 83 * DAY, channel="whatsapp"), windows)
    now = T0 + 83 * DAY
    after = assess(state, now, CONFIG, priors)
    assert component_values(after)[2] > before[2]
    text = reasons(state, after, now, CONFIG, priors, before, from_tier=WATCH, to_tier=HEALTHY)
    assert text[0] == "answering again: about 2 answers to 3 recent messages and campaigns " \
                      "(whatsapp)"
    assert not any("no order for" in r or "not answering" in r for r in text)


def test_a_change_whose_scores_print_alike_says_which_threshold_was_crossed() -> None:
    windows = windows_of(CONFIG)
    state = CustomerState(first_seen=T0)
    for day in (0, 20, 40, 60):
        state.apply(order(day), windows)
    priors = PopulationPriors()
    now = T0 + 100 * DAY
    assessment = assess(state, now, CONFIG, priors)
    old = round(assessment.score) + 0.31
    assert f"{old:.0f}" == f"{assessment.score:.0f}" and f"{old:.2f}" != f"{assessment.score:.2f}"
    text = reasons(state, assessment, now, CONFIG, priors, component_values(assessment),
                   from_tier=HEALTHY, to_tier=WATCH, old_score=old)
    assert text[-1] == (f"health {old:.1f} -> {assessment.score:.1f}, below 62: healthy starts "
                        "at 65, and a customer crosses that line only 3 points beyond it, so "
                        "that tiers do not flicker")
    same = reasons(state, assessment, now, CONFIG, priors, None, from_tier=AT_RISK,
                   to_tier=WATCH, old_score=assessment.score)
    assert same[-1] == (f"health {assessment.score:.1f} -> {assessment.score:.1f}, at or above "
                        "48: watch starts at 45, and a customer crosses that line only 3 points "
                        "beyond it, so that tiers do not flicker")
    apart = reasons(state, assessment, now, CONFIG, priors, None, from_tier=HEALTHY,
                    to_tier=WATCH, old_score=assessment.score + 5)
    assert not any("flicker" in r for r in apart)


def test_a_fresh_order_reads_ordered_today_not_zero_days() -> None:
    windows = windows_of(CONFIG)
    state = CustomerState(first_seen=T0)
    state.apply(order(0), windows)
    state.apply(order(30), windows)
    now = T0 + 30 * DAY + 3600
    text = reasons(state, assess(state, now, CONFIG, PopulationPriors()), now, CONFIG,
                   PopulationPriors())
    assert text[0].startswith("ordered today, usually orders every 30 days (2 orders)")
    once = CustomerState(first_seen=T0)
    once.apply(order(0), windows)
    text = reasons(once, assess(once, T0 + 600, CONFIG, PopulationPriors()), T0 + 600, CONFIG,
                   PopulationPriors())
    assert text[0].startswith("one order, today; ")
    assert text[0].endswith("% likely to order within 6 months")


KINDS = st.sampled_from(["order", "order", "campaign_sent", "campaign_opened",
                         "message_sent", "message_replied", "support_ticket", "feedback"])


@settings(max_examples=150, deadline=None)
@given(events=st.lists(st.tuples(KINDS, st.floats(0, 400)), min_size=1, max_size=25),
       wait=st.floats(0, 400), tiers=st.tuples(st.integers(-1, 3), st.integers(0, 3)),
       nudge=st.sampled_from([None, 0.0, 0.003, 7.0]),
       previous=st.one_of(st.none(), st.lists(st.integers(-1, 100), min_size=4, max_size=4)))
def test_reasons_never_print_zero_days_or_a_wrong_plural(
        events: list[tuple[str, float]], wait: float, tiers: tuple[int, int],
        nudge: float | None, previous: list[int] | None) -> None:
    windows = windows_of(CONFIG)
    state = CustomerState(first_seen=T0)
    for kind, day in sorted(events, key=lambda e: e[1]):
        fields: dict[str, object] = {"customer_id": "c1", "type": kind, "ts": T0 + day * DAY}
        if kind == "order":
            fields["amount"] = 20.0
        elif kind == "feedback":
            fields.update(kind="nps", score=3)
        elif kind == "support_ticket":
            fields["severity"] = "high"
        else:
            fields["channel"] = "whatsapp" if kind.startswith("message") else "email"
        event = decode_event(fields, position="test")
        assert isinstance(event, Event), event
        state.apply(event, windows)
    now = state.last_event_ts + wait * DAY
    priors = PopulationPriors()
    assessment = assess(state, now, CONFIG, priors)
    old = None if nudge is None else assessment.score + nudge
    text = reasons(state, assessment, now, CONFIG, priors, previous, from_tier=tiers[0],
                   to_tier=tiers[1], old_score=old)
    assert text
    for line in text:
        assert not WRONG.search(line), line


def test_an_upgrade_from_good_feedback_or_from_nothing_named_is_not_explained_by_problems(
        ) -> None:
    windows = windows_of(CONFIG)
    state = CustomerState(first_seen=T0)
    state.apply(order(0), windows)
    priors = PopulationPriors()
    before = component_values(assess(state, T0 + 30 * DAY, CONFIG, priors))
    feedback = decode_event({"customer_id": "c1", "type": "feedback", "kind": "nps",
                             "score": 9, "ts": T0 + 31 * DAY}, position="test")
    assert isinstance(feedback, Event)
    state.apply(feedback, windows)
    now = T0 + 31 * DAY
    after = assess(state, now, CONFIG, priors)
    text = reasons(state, after, now, CONFIG, priors, before, from_tier=WATCH, to_tier=HEALTHY)
    assert text == ["good service: feedback 9.0/10"]
    quiet = reasons(state, after, now, CONFIG, priors, component_values(after),
                    from_tier=AT_RISK, to_tier=WATCH, old_score=after.score - 6)
    # Nothing the customer did is named: where they stand, in their terms, not a problem.
    assert quiet == [f"one order, 31 days ago; {after.score:.0f}% likely to order within 6 months"]
