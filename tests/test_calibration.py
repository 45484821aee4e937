"""The buyer model learned from the stream: its sample, fits, calibration and invariants."""

from __future__ import annotations

import math
import random

import msgpack
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from churnwatch.commands.status import ShardModel
from churnwatch.core.buyers import (
    BuyerModel,
    CalibrationMap,
    ValueEvidence,
    choose_value_coefficient,
    fit_calibration,
)
from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.customer import DAY, CustomerState
from churnwatch.core.engine import ShardEngine
from churnwatch.core.events import Event
from churnwatch.core.priors import SAMPLE_SIZE, PopulationPriors, customer_hash
from churnwatch.core.records import Incoming, ShardState
from churnwatch.core.scoring import (
    assess,
    buyer_model,
    chance_percent,
    next_review_at,
    reasons,
    return_probability,
    windows_of,
)

CONFIG = ChurnwatchConfig()
T0 = 1_700_000_000.0


def buyers(n: int, days: float, seed: int, mean_gap: float = 20.0, dropout: float = 0.2,
           join_days: float = 60.0) -> list[tuple[float, str]]:
    """(ts, customer) orders of gamma-heterogeneous Poisson buyers who may leave after each
    order (the model's own world, so its parameters are known)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rate = rng.gammavariate(2.0, 1.0 / (2.0 * mean_gap) * 2.0) / 2.0 * 2.0
        t = rng.random() * join_days
        while t < days:
            out.append((T0 + t * DAY, f"b{seed}-{i}"))
            if rng.random() < dropout:
                break
            t += rng.expovariate(rate)
    out.sort()
    return out


def learned(orders: list[tuple[float, str]], horizons: list[float]) -> PopulationPriors:
    priors = PopulationPriors()
    prior = CONFIG.recency.prior()
    for ts, cid in orders:
        priors.observe_order(cid, ts)
        if priors.refit_due(ts):
            priors.refit(ts, horizons, prior)
    return priors


STREAM = buyers(1500, 400.0, seed=5)
FITTED = learned(STREAM, [60.0])


def test_the_buyer_sample_is_the_same_whatever_the_arrival_order() -> None:
    # One order a day per customer: like the customer windows' basket lines, a second order on
    # a day that has already left the kept days counts again when it arrives late.
    stream = buyers(SAMPLE_SIZE + 600, 200.0, seed=2)
    orders = list({(cid, int(ts // DAY)): (ts, cid) for ts, cid in stream}.values())
    shuffled = list(orders)
    random.Random(9).shuffle(shuffled)
    a, b = PopulationPriors(), PopulationPriors()
    for ts, cid in orders:
        a.observe_order(cid, ts)
    for ts, cid in shuffled:
        b.observe_order(cid, ts)
    assert len(a.sample) == SAMPLE_SIZE
    assert a.sample == b.sample
    # Several lines on some days: the first basket adds up the first day's whatever their
    # order.
    rng = random.Random(4)
    lines = [(ts, cid, round(rng.uniform(1.0, 90.0), 2)) for ts, cid in orders
             for _ in range(rng.choice([1, 1, 2]))]
    shuffled_lines = list(lines)
    random.Random(9).shuffle(shuffled_lines)
    a, b = PopulationPriors(), PopulationPriors()
    for ts, cid, amount in lines:
        a.observe_order(cid, ts, amount)
    for ts, cid, amount in shuffled_lines:
        b.observe_order(cid, ts, amount)
    assert a.baskets == b.baskets and a.baskets.keys() == a.sample.keys()
    firsts: dict[str, list[tuple[int, float]]] = {}
    for ts, cid, amount in lines:
        firsts.setdefault(cid, []).append((int(ts // DAY), amount))
    for cid, days in firsts.items():
        key = customer_hash(cid)
        if key in a.sample:
            first = min(day for day, _ in days)
            assert a.baskets[key] == sum(round(x * 100) for day, x in days if day == first)


def test_the_shard_learns_its_population_from_the_stream() -> None:
    model = FITTED.model
    assert model is not None
    # The buyers order about every 20 days and leave after an order one time in five: the fit
    # finds rates and a dropout chance of that order, far from the defaults (30 days, 1/3).
    mean_rate_gap = model.alpha / model.r
    assert 10.0 < mean_rate_gap < 40.0, model
    assert 0.08 < model.a / (model.a + model.b) < 0.3, model
    assert 60.0 in FITTED.calibration


def test_matured_outcomes_calibrate_the_return_probability() -> None:
    # A world the model does not describe: customers order like clockwork every 10 to 40 days
    # and all stop at a fixed date, whatever their history. The calibration learned from the
    # matured outcomes moves the model's probability towards what really happened.
    rng = random.Random(3)
    orders = []
    for i in range(1500):
        t, gap = rng.random() * 100.0, rng.uniform(10.0, 40.0)
        stop = rng.uniform(150.0, 500.0)
        while t < min(stop, 420.0):
            orders.append((T0 + t * DAY, f"r{i}"))
            t += gap
    orders.sort()
    priors = learned(orders, [60.0])
    cal = priors.calibration[60.0]
    model = buyer_model(priors, CONFIG)
    raw, calibrated = [], []
    outcome = []
    now = orders[-1][0]
    by_customer: dict[str, list[float]] = {}
    for ts, cid in orders:
        by_customer.setdefault(cid, []).append(ts)
    at = now - 60 * DAY
    for times in by_customer.values():
        before = [t for t in times if t <= at]
        if not before:
            continue
        p = model.p_order_within(len(before) - 1, (before[-1] - before[0]) / DAY,
                                 (at - before[0]) / DAY, 60.0)
        raw.append(p)
        calibrated.append(cal.apply(p))
        outcome.append(any(at < t <= now for t in times))
    y = np.array(outcome, float)
    brier_raw = float(np.mean((np.array(raw) - y) ** 2))
    brier_cal = float(np.mean((np.array(calibrated) - y) ** 2))
    assert brier_cal < brier_raw


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans()), min_size=5, max_size=400))
# Found by hypothesis: the interpolation towards 1 rounded to 1.0000000000000002.
@example([(0.0, False), (0.0, False), (0.0, False), (0.436024854325917, False),
          (6.103515625e-05, True)])
def test_a_calibration_map_is_monotone_and_stays_within_0_1(pairs) -> None:
    p = np.array([a for a, _ in pairs])
    y = np.array([float(b) for _, b in pairs])
    cal = fit_calibration(p, y)
    grid = [cal.apply(v) for v in np.linspace(0.0, 1.0, 101)]
    assert all(0.0 <= v <= 1.0 for v in grid)
    assert all(a <= b + 1e-12 for a, b in zip(grid, grid[1:], strict=False))
    assert CalibrationMap.from_wire(cal.to_wire()) == cal  # reads back exactly as it is used


# The same stream learned at the default horizon too (FITTED learned other horizons only, so at
# 180 days it scores with the model's own chance).
FITTED_DEFAULT_HORIZON = learned(STREAM, [CONFIG.policy(None).horizon_days])


@pytest.mark.parametrize("learned_at", ["other horizons: the model's own chance",
                                        "default horizon: learned there"])
@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=300), min_size=1, max_size=25),
       st.floats(min_value=0, max_value=2000), st.floats(min_value=0, max_value=2000))
def test_with_learned_priors_more_silence_never_raises_score_or_chance(
        learned_at: str, days: list[float], a_days: float, b_days: float) -> None:
    priors = FITTED if learned_at.startswith("other") else FITTED_DEFAULT_HORIZON
    state = CustomerState(first_seen=T0 + min(days) * DAY)
    for day in days:
        state.apply(Event("c", "order", T0 + day * DAY, amount=20.0), windows_of(CONFIG))
    start = state.last_event_ts
    early, late = sorted((a_days, b_days))
    a = assess(state, start + early * DAY, CONFIG, priors)
    b = assess(state, start + late * DAY, CONFIG, priors)
    assert 0.0 <= b.components[0].value <= a.components[0].value <= 100.0
    assert 0.0 <= b.score <= a.score <= 100.0
    assert 0.0 <= b.return_probability <= a.return_probability <= 1.0


def test_the_score_is_the_calibrated_chance_and_never_ties_what_the_model_tells_apart() -> None:
    # One scale (docs/scoring.md, "The health score"): health 42 reads "42 % likely to order
    # within the horizon", the recency component is the calibrated model probability, and a
    # calibration map without flat stretches does not tie customers the model tells apart.
    priors = FITTED_DEFAULT_HORIZON
    horizon = CONFIG.policy(None).horizon_days
    model = buyer_model(priors, CONFIG)
    state = CustomerState(first_seen=T0)
    for day in range(0, 100, 10):
        state.apply(Event("c", "order", T0 + day * DAY, amount=20.0), windows_of(CONFIG))
    values = []
    for silence in (1.0, 30.0, 90.0, 91.0, 400.0):
        a = assess(state, T0 + (90.0 + silence) * DAY, CONFIG, priors)
        assert a.inputs is not None
        raw = return_probability(a.inputs, horizon, model)
        expected = priors.calibrated(raw, horizon)
        assert math.isclose(a.components[0].value, 100.0 * expected)
        assert math.isclose(a.score, 100.0 * a.return_probability)
        values.append(a.score)
    assert all(x > y for x, y in zip(values, values[1:], strict=False)), values


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=0.01, max_value=5000), st.floats(min_value=0.05, max_value=1.0))
def test_one_time_buyers_are_never_certainly_alive(age: float, weight: float) -> None:
    fitted = FITTED.model
    assert fitted is not None
    for model in (BuyerModel(), BuyerModel(fitted.r, fitted.alpha, fitted.a, fitted.b, weight)):
        assert model.p_alive(0, 0.0, age) < 1.0
        assert model.p_order_within(0, 0.0, age, 60.0) < 1.0


def test_long_silence_ends_churned_with_learned_priors() -> None:
    state = CustomerState(first_seen=T0)
    for day in range(0, 300, 10):
        state.apply(Event("c", "order", T0 + day * DAY, amount=20.0), windows_of(CONFIG))
    gone = assess(state, T0 + 300 * DAY + 20 * 365 * DAY, CONFIG, FITTED)
    assert chance_percent(gone) < CONFIG.policy(None).at_risk


def spenders(n: int, days: float, seed: int, baskets_matter: bool
             ) -> list[tuple[float, str, float]]:
    """(ts, customer, amount) orders of buyers like :func:`buyers`, each with a basket size of
    their own (log-normal); where ``baskets_matter``, those whose first basket is large leave
    after an order half as often as the others, and those whose first is small twice as
    often."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        size = math.exp(rng.gauss(3.5, 0.8))
        dropout = 0.2 * (math.exp(-0.9 * math.log(size / 33.0)) if baskets_matter else 1.0)
        rate = rng.gammavariate(2.0, 1.0 / 20.0)
        t = rng.random() * 60.0
        while t < days:
            out.append((T0 + t * DAY, f"s{seed}-{i}", round(size * rng.uniform(0.7, 1.3), 2)))
            if rng.random() < min(dropout, 0.9):
                break
            t += rng.expovariate(rate)
    out.sort()
    return out


def learned_with_spend(orders: list[tuple[float, str, float]]) -> PopulationPriors:
    priors = PopulationPriors()
    prior = CONFIG.recency.prior()
    for ts, cid, amount in orders:
        priors.observe_order(cid, ts, amount)
        if priors.refit_due(ts):
            priors.refit(ts, [60.0], prior)
    return priors


def test_the_shard_learns_whether_the_first_basket_says_anything_of_a_return() -> None:
    matters = learned_with_spend(spenders(1800, 300.0, seed=3, baskets_matter=True))
    assert matters.value.coefficient > 0.0, matters.value
    # The first baskets' scale is the sample's: log(1 + basket) of about 3.5 +- 0.8.
    assert 3.0 < matters.value.mean < 4.0 and 0.5 < matters.value.spread < 1.1
    silent = learned_with_spend(spenders(1800, 300.0, seed=3, baskets_matter=False))
    assert silent.value == ValueEvidence()
    # In a shard that learned it, a big first basket raises the chance, at every silence,
    # and the chance still falls with silence; the next review is still when it leaves the
    # tier.
    big, small = CustomerState(first_seen=T0), CustomerState(first_seen=T0)
    for state, amount in ((big, 150.0), (small, 8.0)):
        for day in (0, 25, 50):
            state.apply(Event("c", "order", T0 + day * DAY, amount=amount), windows_of(CONFIG))
    previous = None
    for wait in (1, 20, 60, 120, 400):
        now = T0 + (50 + wait) * DAY
        p_big = assess(big, now, CONFIG, matters).return_probability
        p_small = assess(small, now, CONFIG, matters).return_probability
        assert p_big > p_small
        assert previous is None or p_big <= previous
        previous = p_big
        assert assess(big, now, CONFIG, silent).return_probability == pytest.approx(
            assess(small, now, CONFIG, silent).return_probability)
    # The reason says so, where it moved the chance.
    now = T0 + 170 * DAY
    why = reasons(small, assess(small, now, CONFIG, matters), now, CONFIG, matters)
    said = "first order worth 8, below the usual 35: in this shop that counts against a return"
    assert said in why[0], why
    why = reasons(small, assess(small, now, CONFIG, silent), now, CONFIG, silent)
    assert "first order" not in why[0]


def test_a_value_coefficient_needs_significance_to_start_and_falls_back_without_it() -> None:
    rng = np.random.default_rng(8)
    z, p = rng.normal(size=3000), np.full(3000, 0.4)
    null = (rng.random(3000) < 0.4).astype(float)
    real = (rng.random(3000) < 1 / (1 + np.exp(-(np.log(0.4 / 0.6) + 0.3 * z)))).astype(float)
    assert choose_value_coefficient(p, z, real) == 0.3
    assert choose_value_coefficient(p, z, null) == 0.0
    # Taken on a chance result once, it does not stay when the outcomes do not bear it out;
    # where they do, it stays, and a neighbour must do clearly better to replace it.
    assert choose_value_coefficient(p, z, null, current=0.3) == 0.0
    assert choose_value_coefficient(p, z, null, current=0.05) == 0.0  # none is no better by 2
    assert choose_value_coefficient(p, z, real, current=0.3) == 0.3
    assert choose_value_coefficient(p, z, real, current=0.28) == 0.28
    assert choose_value_coefficient(p, z, real, current=0.05) == 0.3


def test_status_reads_what_each_shard_learned() -> None:
    learned = ShardModel.of(FITTED)
    assert FITTED.model is not None
    assert (learned.fits, learned.evidence_weight) == (FITTED.fits, FITTED.model.evidence_weight)
    assert learned.fits > 0 and learned.sampled_buyers == len(FITTED.sample)
    assert learned.calibrated_horizons == [60.0]
    assert (learned.value_coefficient, learned.usual_first_basket) == (0.0, None)
    spending = ShardModel.of(VALUED[0.3])
    assert spending.value_coefficient == 0.3 and spending.usual_first_basket == 40.0
    assert ShardModel.of(PopulationPriors()).evidence_weight is None


def test_priors_survive_the_wire_and_the_previous_format_still_reads() -> None:
    again = PopulationPriors.from_wire(FITTED.to_wire())
    assert again.to_wire() == FITTED.to_wire()
    assert again.model == FITTED.model
    valued = learned_with_spend(spenders(600, 200.0, seed=6, baskets_matter=True))
    valued.value = ValueEvidence(3.5, 0.8, 0.15)
    back = PopulationPriors.from_wire(msgpack.unpackb(msgpack.packb(valued.to_wire())))
    assert back.to_wire() == valued.to_wire()
    assert (back.value, back.baskets) == (valued.value, valued.baskets)
    # Format 5: the segments' reorder gaps and learned horizons survive; format 4 reads with none
    # learned yet; the (empty) percentiles stay for a release before 5, which requires the key.
    for days in (3.0, 10.0, 40.0):
        valued.observe_gap(days * DAY, "fashion")
    valued.horizons = {"*": 42.0, "fashion": 42.0}
    back = PopulationPriors.from_wire(msgpack.unpackb(msgpack.packb(valued.to_wire())))
    assert back.horizons == valued.horizons and back.reorder["fashion"].count == 3
    assert valued.to_wire()["percentiles"] == []
    v4 = {k: v for k, v in valued.to_wire().items() if k not in ("reorder", "horizons")}
    old4 = PopulationPriors.from_wire(dict(v4, v=4))
    assert old4.horizons == {} and old4.reorder == {} and old4.sample == valued.sample
    # Format 3: no first baskets (unknown, not 0) and no value evidence.
    v3 = {k: v for k, v in valued.to_wire().items() if k not in ("baskets", "value")}
    old3 = PopulationPriors.from_wire(dict(v3, v=3))
    assert old3.sample == valued.sample and old3.value == ValueEvidence()
    assert set(old3.baskets.values()) == {None}
    old3.observe_order("someone new", T0 + 300 * DAY, 20.0)  # unknown baskets stay unknown
    old3.refit(T0 + 300 * DAY, [60.0], CONFIG.recency.prior())
    assert old3.value == ValueEvidence() and None in old3.baskets.values()
    # Format 2: the sample's order days as days, not gaps (and a ranking weight, now unused).
    v2 = dict(FITTED.to_wire(), v=2, rank_weight=0.5,
              sample=[[key, *entry] for key, entry in sorted(FITTED.sample.items())])
    assert PopulationPriors.from_wire(v2).sample == FITTED.sample
    assert len(msgpack.packb(FITTED.to_wire())) < 0.8 * len(msgpack.packb(v2))
    # Format 1: a positional list [gap_sum, gap_count, sent, responded, spend_bins].
    old = PopulationPriors.from_wire([120.0, 4, 10.0, 3.0, [0] * 48])
    assert (old.gap_count, old.sent, old.model, old.sample) == (4, 10.0, None, {})
    assert math.isclose(old.mean_gap_days(30.0, 0.0), 30.0)


def test_refits_fall_on_the_same_events_whatever_the_batch_boundaries() -> None:
    orders = buyers(300, 200.0, seed=8)
    items = [Incoming(Event(cid, "order", ts, amount=10.0), partition=3, offset=n + 1)
             for n, (ts, cid) in enumerate(orders)]

    def run(batch: int) -> list[object]:
        engine = ShardEngine(0, CONFIG, ShardState())
        store: dict[str, CustomerState] = {}
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            ids = {i.event.customer_id for i in chunk}
            due = [c for c, s in store.items() if s.next_review_at is not None
                   and s.next_review_at <= chunk[-1].event.ts]
            loaded = {c: store.get(c) for c in ids | set(due)}
            result = engine.process(chunk, loaded, chunk[-1].event.ts, due)
            store.update(result.changed)
        return [engine.state.priors.to_wire(), engine.state.counters,
                sorted((c, s.to_wire()) for c, s in store.items())]

    # (Gauges hold float sums whose rounding follows the batching; they are compared in
    # tests/test_dataflow.py through the store.)
    small, large = run(97), run(1000)
    assert small == large
    assert small[0]["model"] is not None  # type: ignore[index]


def valued(priors: PopulationPriors, coefficient: float) -> PopulationPriors:
    """A copy of ``priors`` whose shard has learned that first baskets matter."""
    copy = PopulationPriors.from_wire(priors.to_wire())
    copy.value = ValueEvidence(mean=math.log1p(40.0), spread=0.8, coefficient=coefficient)
    return copy


VALUED = {c: valued(FITTED, c) for c in (-0.3, 0.0, 0.3)}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=300), min_size=1, max_size=25),
       st.integers(min_value=0, max_value=2), st.sampled_from([-0.3, 0.0, 0.3]),
       st.floats(min_value=0, max_value=2000))
def test_with_learned_priors_the_next_review_is_when_the_chance_leaves_the_tier(
        days: list[float], tier: int, coefficient: float, amount: float) -> None:
    priors = VALUED[coefficient]
    state = CustomerState(first_seen=T0 + min(days) * DAY)
    for day in days:
        state.apply(Event("c", "order", T0 + day * DAY, amount=amount), windows_of(CONFIG))
    now = state.last_event_ts
    policy = CONFIG.policy(None)
    assessment = assess(state, now, CONFIG, priors)
    threshold = policy.boundaries[tier] - policy.hysteresis
    if chance_percent(assessment) < threshold:
        return
    state.tier = tier
    due = next_review_at(state, assessment, now, CONFIG, priors)
    assert due is not None  # a long enough silence always leaves every tier but churned
    assert chance_percent(assess(state, due + 120, CONFIG, priors)) < threshold
    if due - 120 > now:
        assert chance_percent(assess(state, due - 120, CONFIG, priors)) >= threshold - 0.02


def test_the_fit_gradient_is_the_posterior_s() -> None:
    # The buyer model's fit follows an analytic gradient: it must be the finite differences'.
    from scipy.optimize import check_grad

    from churnwatch.core.buyers import neg_log_posterior

    rng = np.random.default_rng(3)
    x = rng.poisson(2.0, 400).astype(float)
    t_x = rng.uniform(0.0, 300.0, 400) * (x > 0)
    age = t_x + rng.uniform(0.0, 200.0, 400)
    centre = np.log([1.0, 30.0, 1.0, 2.0])
    for theta in (np.log([0.6, 50.0, 0.8, 1.3]), np.log([13.0, 4000.0, 0.05, 0.2]),
                  np.array([0.1, 2.0, -1.0, 0.5])):
        def value(th: np.ndarray) -> float:
            return neg_log_posterior(th, x, t_x, age, centre)[0]

        def gradient(th: np.ndarray) -> np.ndarray:
            return neg_log_posterior(th, x, t_x, age, centre)[1]

        error = check_grad(value, gradient, theta, epsilon=1e-6)
        assert error < 1e-5 * max(1.0, float(np.linalg.norm(gradient(theta))))
