"""The columnar engine held to its reference, batch by batch.

:class:`~churnwatch.core.columnar.ColumnarShard` must give what its reference,
:meth:`~churnwatch.core.engine.ShardEngine.process`, gives for the same micro-batches: the same
customers (tier, score, review time, components, signals, outreach), the same transitions,
the same counts and the same shard gauges and counters. Both are fed alike, as the dataflow
feeds them (:class:`Pair`): random streams from hypothesis (late, duplicated and id-less events,
any batching, quiet gaps, long silences), with and without a fitted buyer model, under the
default configuration and one with segment policies and playbooks; and a simulated shop's year
in batches of 500 and of 37, where the buyer model is refitted many times.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from itertools import pairwise

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnwatch.core.aggregates import ComponentSum, ScoredCustomers, WinbackCount
from churnwatch.core.columnar import ColumnarShard
from churnwatch.core.columns import to_state
from churnwatch.core.config import ChurnwatchConfig, parse_config
from churnwatch.core.customer import DAY, CustomerState
from churnwatch.core.engine import ShardEngine
from churnwatch.core.events import Event, decode_event
from churnwatch.core.priors import MIN_FIT, PopulationPriors
from churnwatch.core.records import BatchResult, Incoming, ShardState
from churnwatch.simulator import ShopSimulator

T0 = 1_700_000_000.0
HOUR = 3600.0

DEFAULT = ChurnwatchConfig()
#: Segment policies (a learned and a configured horizon, other thresholds), playbooks matching
#: on segments, value tiers and reason codes with a hold-out share, and a short lateness
#: allowance, so that too-late events and every win-back path occur in short streams.
WITH_PLAYBOOKS = parse_config({
    "segments": {
        "fashion": {"horizon_days": 90,
                    "tiers": {"healthy": 70, "watch": 50, "at_risk": 30, "hysteresis": 5}},
        "skincare": {"churn_rate_objective": 0.04, "weights": {"engagement": 0.3}},
    },
    "playbooks": {
        "call_vips": {"action": "Call", "channel": "phone", "value_tiers": ["high"],
                      "tiers": ["at_risk", "churned"], "priority": 1},
        "fix_service_first": {"action": "Fix it", "channel": "phone",
                              "reasons": ["service_problems"], "priority": 5,
                              "holdout_share": 0.5},
        "fashion_letter": {"action": "Write", "channel": "letter", "segments": ["fashion"],
                           "template": "Hello {customer_id}, {days_since_order} days"},
        "checkin": {"action": "Check in", "channel": "whatsapp", "tiers": ["watch"],
                    "priority": 200},
    },
    "winback": {"holdout_share": 0.3, "window_days": 45},
    "input": {"allowed_lateness_days": 30},
    "alerts": {"sudden_drop_points": 10},
}, source="test_columnar_differential.toml")

#: Playbook names an intervention may carry: configured ones, default ones, and unknown.
PLAYBOOK_NAMES = ("call_vips", "fix_service_first", "fashion_letter", "checkin",
                  "personal_checkin", "winback_offer", "nobody")
SEGMENT_VALUES = ("fashion", "skincare", "pets")  # pets: declared, not configured ("other")
VALUE_TIERS = ("high", "standard", "gold")
CAMPAIGN_CHANNELS = ("email", "whatsapp", "sms", "push")
MESSAGE_CHANNELS = ("whatsapp", "email", "sms", "chat")
INTERVENTION_CHANNELS = ("phone", "email", "whatsapp", "letter")
#: Event types, the common ones more often.
KINDS = ("order", "order", "order", "order", "visit", "campaign_sent", "campaign_sent",
         "campaign_opened", "campaign_clicked", "message_sent", "message_replied", "refund",
         "support_ticket", "feedback", "profile", "intervention")
AMOUNTS = (0.0, 0.01, 9.99, 25.0, 40.0, 120.0, 999.99)


# -- the two engines, fed alike -------------------------------------------------------------------

@dataclass
class Pair:
    """The reference and the columnar engine of one shard fed the same batches.

    The reference is driven as the dataflow drives it: per batch, ``customers`` holds the
    stored state of every customer the batch names (``None`` if unseen) and of every customer
    due for review by ``now``, ``due`` lists the latter. ``now`` is the batch's newest event
    or the shard's watermark, whichever is later, or later still after a quiet gap; it never
    goes back (the watermark in replay, the wall clock live). The columnar engine gets the
    items and ``now``. Items carry no source offset, so only event ids dedupe.
    """

    config: ChurnwatchConfig
    reference: ShardEngine = field(init=False)
    columnar: ColumnarShard = field(init=False)
    states: dict[str, CustomerState] = field(default_factory=dict)
    now: float = 0.0
    batches: int = 0

    def __post_init__(self) -> None:
        self.reference = ShardEngine(0, self.config, ShardState())
        self.columnar = ColumnarShard(0, self.config, ShardState())

    def feed(self, events: Sequence[Event], quiet: float = 0.0) -> tuple[BatchResult,
                                                                          BatchResult]:
        """One micro-batch into both, ``quiet`` seconds of silence after its newest event."""
        items = [Incoming(e, partition=0, offset=0) for e in events]
        newest = max((e.ts for e in events), default=self.reference.state.watermark)
        self.now = max(newest, self.reference.state.watermark, self.now) + quiet
        customers: dict[str, CustomerState | None] = {
            e.customer_id: self.states.get(e.customer_id) for e in events}
        due = [cid for cid, s in self.states.items()
               if s.next_review_at is not None and s.next_review_at <= math.floor(self.now)]
        for cid in due:
            customers[cid] = self.states[cid]
        expected = self.reference.process(items, customers, self.now, due)
        self.states.update(expected.changed)
        got = self.columnar.process_items(items, self.now)
        self.batches += 1
        return expected, got

    def differences(self, expected: BatchResult, got: BatchResult,
                    customers: Iterable[str] | None = None) -> list[str]:
        """Every way the columnar engine's outcome differs from the reference's (``[]``: none),
        over ``customers`` (default: every customer seen, and the shard's buyer sample and
        model too)."""
        out = _result_differences(expected, got)
        out += _shard_differences(self.reference.state, self.columnar.state,
                                  everything=customers is None)
        table = self.columnar.table
        if set(table.ids) != set(self.states):
            out.append(f"customers: {sorted(self.states)} vs {sorted(table.ids)}")
        for cid in sorted(self.states if customers is None else customers):
            row = table.row(cid)
            if row is None:
                continue
            for name, want, have in _state_differences(self.states[cid], to_state(table, row)):
                out.append(f"{cid}.{name}: {want!r} vs {have!r}")
        return out


def _transitions(result: BatchResult) -> Counter[tuple[object, ...]]:
    # The "components: ..." line shows whole points, compared in the states with their
    # rounding tolerance (a point); every other reason word for word.
    return Counter((t.customer_id, t.segment, t.from_tier, t.to_tier, t.at, t.cause,
                    round(t.new_score, 1),
                    tuple(r for r in t.reasons if not r.startswith("components: ")),
                    None if t.suggestion is None else (t.suggestion.playbook,
                                                       t.suggestion.holdout))
                   for t in result.transitions)


def _result_differences(expected: BatchResult, got: BatchResult) -> list[str]:
    out = []
    for name in ("scored", "duplicates", "late", "rescored_silent", "last_event_ts"):
        want, have = getattr(expected, name), getattr(got, name)
        if want != have:
            out.append(f"result.{name}: {want!r} vs {have!r}")
    dead = [Counter((d.reason, d.customer_id) for d in r.dead_letters) for r in (expected, got)]
    if dead[0] != dead[1]:
        out.append(f"result.dead_letters: {sorted(dead[0])} vs {sorted(dead[1])}")
    want_t, have_t = _transitions(expected), _transitions(got)
    if want_t != have_t:
        out.append(f"result.transitions: only in the reference {sorted(want_t - have_t)}, "
                   f"only in the columnar engine {sorted(have_t - want_t)}")
    drops = [Counter((d.customer_id, d.segment, round(d.from_score, 1), round(d.to_score, 1),
                      d.at) for d in r.drops) for r in (expected, got)]
    if drops[0] != drops[1]:
        out.append(f"result.drops: {sorted(drops[0])} vs {sorted(drops[1])}")
    return out


def _shard_differences(expected: ShardState, got: ShardState, everything: bool = True
                       ) -> list[str]:
    out = []
    gauges = [{k: round(v, 6) for k, v in s.gauges.items()} for s in (expected, got)]
    if gauges[0] != gauges[1]:
        keys = sorted(set(gauges[0]) | set(gauges[1]), key=repr)
        # Sums of whole-point components: each customer's may be a point apart (above).
        slack = {k: expected.gauges.get(ScoredCustomers(k.segment), 0.0)
                 for k in keys if isinstance(k, ComponentSum)}
        out += [f"gauge {k}: {gauges[0].get(k)} vs {gauges[1].get(k)}" for k in keys
                if abs((gauges[0].get(k) or 0.0) - (gauges[1].get(k) or 0.0))
                > slack.get(k, 0.0)]
    if expected.counters != got.counters:
        keys = sorted(set(expected.counters) | set(got.counters), key=repr)
        out += [f"counter {k}: {expected.counters.get(k)} vs {got.counters.get(k)}"
                for k in keys if expected.counters.get(k) != got.counters.get(k)]
    if expected.watermark != got.watermark:
        out.append(f"shard watermark: {expected.watermark!r} vs {got.watermark!r}")
    # What the shard learned, in its stored form: gaps, answers, the spend histogram and the
    # refit schedule, and with ``everything`` the buyer sample and the fitted model.
    learned = ((expected.priors.to_wire(), got.priors.to_wire()) if everything else
               (_learned(expected.priors), _learned(got.priors)))
    out += [f"shard priors.{key}: {learned[0][key]!r} vs {learned[1].get(key)!r}"
            for key in learned[0] if not _alike(learned[0][key], learned[1].get(key))]
    return out


def _learned(priors: PopulationPriors) -> dict[str, object]:
    """The quick part of ``priors.to_wire()``."""
    return {"gaps": [priors.gap_sum_days, priors.gap_count],
            "engagement": [priors.sent, priors.responded], "spend": priors.spend_bins,
            "next_fit_day": priors.next_fit_day, "fits": priors.fits,
            "growth": [priors.pending_days, priors.fitted_days],
            "at_fit": [priors.usual_response, priors.spend_bins_at_fit, *priors.gaps_at_fit]}


def _alike(a: object, b: object) -> bool:
    """Equal, floats within 1e-9 relative, through lists and dictionaries."""
    if isinstance(a, float) and isinstance(b, float):
        return _close(a, b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_alike(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_alike(a[k], b[k]) for k in a)
    return a == b


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _both_none_or(a: float | None, b: float | None, tolerance: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= tolerance


def _floats_close(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))


def _state_differences(want: CustomerState, have: CustomerState
                       ) -> list[tuple[str, object, object]]:
    """The fields of two states of one customer that differ beyond their tolerance: scores
    0.02, review times 120 s, decayed windows 1e-9 relative; the rest exactly (offsets too,
    empty on both sides: the items carry no source position)."""
    out: list[tuple[str, object, object]] = []

    def check(name: str, a: object, b: object, same: bool) -> None:
        if not same:
            out.append((name, a, b))

    exact = ("tier", "segment", "declared_value_tier", "high_value",
             "outreach", "purchases", "first_seen", "last_event_ts", "tier_since",
             "scored_at", "drop_counted", "peak_at", "recent_ids", "model_fit", "offsets")
    for name in exact:
        a, b = getattr(want, name), getattr(have, name)
        check(name, a, b, a == b)
    # Components are stored in whole points: a sub-score a rounding error away from a half
    # point rounds to neighbouring points in the two engines (found by hypothesis: 37 vs 38).
    check("components", want.components, have.components,
          len(want.components) == len(have.components) and all(
              (a < 0) == (b < 0) and abs(a - b) <= 1
              for a, b in zip(want.components, have.components, strict=True)))
    check("score", want.score, have.score, _both_none_or(want.score, have.score, 0.02))
    check("peak_score", want.peak_score, have.peak_score,
          abs(want.peak_score - have.peak_score) <= 0.02)
    check("next_review_at", want.next_review_at, have.next_review_at,
          _both_none_or(want.next_review_at, have.next_review_at, 120.0))
    e, f = want.engagement, have.engagement
    check("engagement", e, f, e.ref == f.ref and e.channels.keys() == f.channels.keys() and all(
        _floats_close(e.channels[c], f.channels[c]) for c in e.channels))
    s, t = want.service, have.service
    check("service", s, t, s.ref == t.ref and _floats_close(
        (s.tickets, s.fb_sum, s.fb_weight), (t.tickets, t.fb_sum, t.fb_weight)))
    p, q = want.trend, have.trend
    check("trend", p, q, p.ref == q.ref and _floats_close(
        (p.ord_short, p.ord_long, p.val_short, p.val_long),
        (q.ord_short, q.ord_long, q.val_short, q.val_long)))
    return out


def run_and_compare(pair: Pair, batches: Sequence[tuple[Sequence[Event], float]]) -> None:
    """Feed ``batches`` (events, quiet seconds after them) and compare after each one."""
    for number, (events, quiet) in enumerate(batches):
        expected, got = pair.feed(events, quiet)
        differences = pair.differences(expected, got)
        assert not differences, (f"batch {number} (now {pair.now!r}):\n  "
                                 + "\n  ".join(differences[:20]))


def _decoded(raw: dict[str, object], n: int) -> Event:
    event = decode_event(raw, position=f"simulated:{n}")  # type: ignore[arg-type]
    assert isinstance(event, Event), event
    return event


def run_shop(pair: Pair, events: Sequence[Event], batch_size: int, everyone_every: int = 1
             ) -> None:
    """Feed a simulated shop's ``events`` in batches of ``batch_size`` and compare after each:
    the batch's customers and the shard every batch, everyone every ``everyone_every`` batches
    and at the end."""
    for start in range(0, len(events), batch_size):
        expected, got = pair.feed(events[start:start + batch_size])
        everyone = pair.batches % everyone_every == 0 or start + batch_size >= len(events)
        differences = pair.differences(expected, got, None if everyone else expected.changed)
        assert not differences, (f"events {start}..{start + batch_size - 1}:\n  "
                                 + "\n  ".join(differences[:20]))


# -- disagreements found, now pinned --------------------------------------------------------------

def test_a_health_move_reason_prints_the_unrounded_score_as_the_reference_does() -> None:
    # Healthy at 62.2 (held by hysteresis above 62), then a small ticket: watch at 61.9499..,
    # stored as 61.95; the reason says 61.9 (the columnar engine said 62.0 until afcbba8).
    pair = Pair(DEFAULT)
    pair.feed([Event("c0", "order", T0, amount=25.0),
               Event("c0", "order", T0 + 864_000, amount=25.0)])
    pair.feed([Event("c0", "visit", T0 + 1_768_567)])
    expected, got = pair.feed([Event("c0", "support_ticket", T0 + 1_768_627, severity=0.6)])
    assert [t.reasons[1][:19] for t in expected.transitions] == ["health 62.2 -> 61.9"]
    assert _transitions(expected) == _transitions(got)


def test_refunds_of_nothing_make_no_spender_in_either_engine() -> None:
    # Two refunds of 0 before any order: the reference counted the customer into the spend
    # histogram at each, the columnar engine once per batch (until afcbba8).
    pair = Pair(DEFAULT)
    expected, got = pair.feed([Event("c0", "refund", T0, amount=0.0),
                               Event("c0", "refund", T0, amount=0.0)])
    assert not pair.differences(expected, got)


def test_reviews_before_the_first_fit_are_not_capped_at_the_refit_in_either_engine() -> None:
    # The batch in which the buyer sample reaches MIN_FIT customers: the reference capped the
    # review of those scored after that order only, the columnar engine everyone's (until
    # 1fa5ec6; since 671f3e8 neither caps before a model is fitted).
    pair = Pair(DEFAULT)
    expected, got = pair.feed([Event(f"c{n:02d}", "order", T0, amount=25.0)
                               for n in range(MIN_FIT)])
    assert not pair.differences(expected, got)


# -- random streams -------------------------------------------------------------------------------

#: How far the clock moves between two events: not at all (the same instant), seconds to
#: hours, days, weeks, a long silence.
ADVANCES = ((0.0, 0.0),) * 2 + ((1.0, 6 * HOUR),) * 6 + ((HOUR, 10 * DAY),) * 6 + (
    (10 * DAY, 60 * DAY),) * 2 + ((60 * DAY, 300 * DAY),)
#: How long after a batch's newest event its ``now`` is: mostly at once, else a quiet gap.
QUIET = ((0.0, 0.0),) * 5 + ((HOUR, 2 * DAY), (2 * DAY, 30 * DAY), (30 * DAY, 200 * DAY))


@st.composite
def _within(draw: st.DrawFn, bounds: Sequence[tuple[float, float]]) -> float:
    low, high = draw(st.sampled_from(bounds))
    return low if low == high else draw(st.floats(low, high, allow_nan=False))


@st.composite
def _event(draw: st.DrawFn, cid: str, ts: float, event_id: str | None) -> Event:
    kind = draw(st.sampled_from(KINDS))
    if kind in ("order", "refund"):
        amount = draw(st.one_of(st.sampled_from(AMOUNTS),
                                st.floats(0.0, 2000.0).map(lambda a: round(a, 2))))
        return Event(cid, kind, ts, event_id, amount=amount)
    if kind.startswith("campaign"):
        return Event(cid, kind, ts, event_id, channel=draw(st.sampled_from(CAMPAIGN_CHANNELS)))
    if kind.startswith("message"):
        return Event(cid, kind, ts, event_id, channel=draw(st.sampled_from(MESSAGE_CHANNELS)))
    if kind == "support_ticket":
        severity = draw(st.one_of(st.sampled_from((0.5, 1.0, 2.0, 3.0)), st.floats(0.5, 3.0)))
        return Event(cid, kind, ts, event_id, severity=severity)
    if kind == "feedback":
        score = draw(st.one_of(st.integers(0, 10).map(float), st.floats(0.0, 10.0)))
        return Event(cid, kind, ts, event_id, score=score)
    if kind == "profile":
        attributes = draw(st.fixed_dictionaries({}, optional={
            "segment": st.sampled_from(SEGMENT_VALUES),
            "value_tier": st.sampled_from(VALUE_TIERS)}))
        return Event(cid, kind, ts, event_id, attributes=attributes)
    if kind == "intervention":
        attributes = draw(st.fixed_dictionaries({}, optional={
            "playbook": st.sampled_from(PLAYBOOK_NAMES)}))
        return Event(cid, kind, ts, event_id,
                     channel=draw(st.sampled_from(INTERVENTION_CHANNELS)),
                     attributes=attributes)
    return Event(cid, kind, ts, event_id)


Batches = list[tuple[list[Event], float]]


@st.composite
def streams(draw: st.DrawFn, start: float, lateness_days: float,
            known: Sequence[str] = (), max_events: int = 60) -> Batches:
    """A stream of events for 3 to 12 customers (some of them ``known``), cut into batches.

    The clock moves on by nothing to months between events; an event may be late by hours,
    days, or more than ``lateness_days``; it may be an order line at the instant of one of the
    customer's earlier orders, a redelivery of an earlier event, or carry no id (ids are drawn
    from a small pool, so different events share them too). Any cut points; a batch may be
    followed by a quiet gap, and by an empty batch (the clock alone moves on).
    """
    count = draw(st.integers(3, 12))
    ids = draw(st.lists(st.sampled_from(known), unique=True, max_size=count)) if known else []
    ids += [f"c{n}" for n in range(count - len(ids))]
    lateness = ((0.0, 0.0),) * 6 + ((1.0, 48 * HOUR), (DAY, 20 * DAY)) + (
        (lateness_days * DAY + 1.0, (lateness_days + 200) * DAY),)
    clock = start
    events: list[Event] = []
    orders_at: dict[str, list[float]] = {cid: [] for cid in ids}
    for _ in range(draw(st.integers(1, max_events))):
        if events and draw(st.integers(0, 9)) == 0:
            events.append(draw(st.sampled_from(events)))  # redelivered
            continue
        clock += draw(_within(ADVANCES))
        cid = draw(st.sampled_from(ids))
        ts = round(clock - draw(_within(lateness)), 3)
        event_id = draw(st.one_of(st.none(), st.integers(0, 30).map("e{}".format)))
        event = draw(_event(cid, ts, event_id))
        if event.type == "order":
            if orders_at[cid] and draw(st.integers(0, 3)) == 0:  # a line of an earlier basket
                event = Event(cid, "order", draw(st.sampled_from(orders_at[cid])), event_id,
                              amount=event.amount)
            orders_at[cid].append(event.ts)
        events.append(event)
    cuts = sorted(draw(st.sets(st.integers(1, len(events) - 1)))) if len(events) > 1 else []
    batches: Batches = []
    for a, b in pairwise([0, *cuts, len(events)]):
        batches.append((events[a:b], draw(_within(QUIET))))
        if draw(st.integers(0, 7)) == 0:  # no events, the clock moves on: reviews alone
            batches.append(([], draw(_within(QUIET[-3:]))))
    return batches


RANDOM_STREAMS = settings(max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])


@RANDOM_STREAMS
@given(streams(start=T0, lateness_days=DEFAULT.allowed_lateness_days))
def test_random_streams_give_the_reference_result_under_the_defaults(batches: Batches) -> None:
    run_and_compare(Pair(DEFAULT), batches)


@RANDOM_STREAMS
@given(streams(start=T0, lateness_days=WITH_PLAYBOOKS.allowed_lateness_days))
def test_random_streams_give_the_reference_result_with_segment_policies_and_playbooks(
        batches: Batches) -> None:
    run_and_compare(Pair(WITH_PLAYBOOKS), batches)


# -- with a fitted buyer model --------------------------------------------------------------------

WARM_DAYS = 150


@cache
def warmed() -> Pair:
    """A pair (segment policies and playbooks) after 60 simulated customers' orders over 150
    days: the buyer model is fitted, and random streams continue from there (on copies)."""
    shop = ShopSimulator(customers=60, seed=11, start=T0, days=WARM_DAYS, with_engagement=False)
    pair = Pair(WITH_PLAYBOOKS)
    run_shop(pair, [_decoded(raw, n) for n, raw in enumerate(shop.events())], batch_size=200)
    return pair


WARM_IDS = tuple(f"cust-11-{n:06d}" for n in range(60))


@RANDOM_STREAMS
@given(streams(start=T0 + WARM_DAYS * DAY, lateness_days=WITH_PLAYBOOKS.allowed_lateness_days,
               known=WARM_IDS))
def test_random_streams_after_the_buyer_model_is_fitted(batches: Batches) -> None:
    pair = copy.deepcopy(warmed())
    assert pair.reference.state.priors.fits > 0  # the premise: a fitted model to refit
    run_and_compare(pair, batches)


# -- a simulated shop's year ----------------------------------------------------------------------

@cache
def simulated_year() -> list[Event]:
    shop = ShopSimulator(customers=300, seed=7, start=T0, days=365)
    return [_decoded(raw, n) for n, raw in enumerate(shop.events())]


def test_a_simulated_year_in_batches_of_500_gives_the_reference_result() -> None:
    pair = Pair(DEFAULT)
    run_shop(pair, simulated_year(), batch_size=500)
    assert pair.reference.state.priors.fits >= 5  # refitted along the way


def test_a_simulated_year_in_batches_of_37_gives_the_reference_result() -> None:
    pair = Pair(WITH_PLAYBOOKS)
    run_shop(pair, simulated_year(), batch_size=37, everyone_every=40)
    assert pair.reference.state.priors.fits >= 5
    assert any(isinstance(k, WinbackCount) for k in pair.reference.state.counters)
