"""The Customer Health Score, the return chance behind it, tiers with hysteresis, reasons, next
review time.

One scale: the health score (0..100) *is* the customer's chance, in percent, of ordering again
within their segment's horizon (configured, or learned from the segment's reorders:
:mod:`churnwatch.core.horizon`). A CS agent reading "health 42" reads "42 % likely to order
within 3 weeks", and the tiers are bands of that same number, so a customer with a lower score
is never in a better tier than another of their segment (beyond the hysteresis band).

The chance is built from four components, each 0..100 with a confidence 0..1 (how much evidence
stands behind it), which are also its explanation:

- ``recency``: the buyer model's chance of an order within the horizon (given the customer's
  silence, their number of orders, their first basket where the shop's outcomes show that it
  matters, and the population learned from the stream; :mod:`churnwatch.core.buyers`), through
  the calibration map learned from matured outcomes. It falls with every silent day.
- ``engagement``: their answers to campaigns and messages against the population's usual rate.
- ``service``: support tickets and feedback.
- ``trend``: purchase frequency and value in recent months against earlier ones. It is read at
  the last order, so an order would reveal a slowdown just as it raises the chance; it is
  shown and named in reasons ("buying less often lately"), and does not move the chance.

Engagement and service move the recency chance on the log-odds, each by
``SHIFT_PER_WEIGHT * weight / recency weight * confidence * (value - neutral) / 100``: nothing
at their neutral value (``NEUTRAL``), down for silence to outreach or service problems, up a
little for eager answers. They change only at their own events, so silence alone only lowers
the chance, and an order only raises it.

>>> from churnwatch.core.config import ChurnwatchConfig
>>> from churnwatch.core.customer import CustomerState
>>> from churnwatch.core.events import Event
>>> from churnwatch.core.priors import ALL_SEGMENTS, PopulationPriors
>>> cfg, priors = ChurnwatchConfig(), PopulationPriors()
>>> c = CustomerState(first_seen=0.0)
>>> for day in range(0, 200, 20):
...     c.apply(Event("c1", "order", day * 86400.0, amount=30.0), windows=windows_of(cfg))
>>> fresh = assess(c, now=181 * 86400.0, config=cfg, priors=priors)
>>> silent = assess(c, now=260 * 86400.0, config=cfg, priors=priors)
>>> fresh.score > silent.score, fresh.score == chance_percent(fresh)
(True, True)
>>> tier_name(tier_for(chance_percent(fresh), -1, cfg.policy(None)))
'healthy'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

from churnwatch.core.buyers import BuyerModel, shifted
from churnwatch.core.config import COMPONENTS, TIERS, ChurnwatchConfig, SegmentPolicy
from churnwatch.core.customer import CustomerState
from churnwatch.core.horizon import describe_within
from churnwatch.core.priors import ALL_SEGMENTS, PopulationPriors
from churnwatch.core.signals import DAY, Windows

RECENCY, TREND, ENGAGEMENT, SERVICE = range(4)
#: How far a component at the far end of its range, weighted as much as recency, moves the
#: log-odds of the chance. With the default weights, a customer who ignores every campaign loses
#: 1.5 in log-odds (95 % becomes 81 %), one with urgent tickets and an NPS of 0 loses 1.1 (95 %
#: becomes 87 %), both together 2.6 (95 % becomes 59 %). On the zoo's one shop with outreach and
#: tickets (`mixed`, at the judged horizon) 8 ranked and forecast better than 3 (AUC 0.915
#: against 0.901, Brier skill +0.543 against +0.502; calibration error 0.038 against 0.020).
SHIFT_PER_WEIGHT = 8.0
#: The trend: recent order frequency against the long run weighs more than recent order value
#: (a customer who buys as often but smaller baskets is less at risk than one who stops
#: coming); the weights sum to one.
TREND_FREQUENCY_WEIGHT = 0.7
TREND_VALUE_WEIGHT = 0.3
#: The trend's curve: the ratio (0..1) is raised to this power, so a customer buying half as
#: often still scores about 60, and only a near stop falls toward 0.
TREND_CURVE = 0.7
#: Engagement's steepness: at the population's usual answer rate engagement reads
#: 100 * (1 - e**-1.4), about 75; silence reads 0, twice the usual rate about 94.
ENGAGEMENT_STEEPNESS = 1.4
#: Each recent support ticket (weighted by severity, decayed) multiplies the service reading by
#: e**-0.4, about two thirds: three open problems bring it from 100 to 30.
TICKET_DECAY = 0.4
#: Where each shifting component leaves the chance as it is: engagement at the population's
#: usual answer rate (100 * (1 - e**-1.4), see :func:`_engagement`), service at no tickets and
#: feedback 8 of 10.
NEUTRAL = {ENGAGEMENT: 100.0 * (1.0 - math.exp(-ENGAGEMENT_STEEPNESS)), SERVICE: 80.0}
HEALTHY, WATCH, AT_RISK, CHURNED = range(4)
_MAX_SILENCE_DAYS = 36500.0


class Component(NamedTuple):
    """One component of the score: its value (0..100) and the confidence behind it (0..1)."""

    value: float
    confidence: float


#: A component without evidence (confidence 0): it moves nothing.
_NO_EVIDENCE = Component(100.0, 0.0)


@dataclass(frozen=True, slots=True)
class Assessment:
    """The score of one customer at one instant, with what it is made of."""

    score: float
    components: tuple[Component, Component, Component, Component]
    return_probability: float
    # The recency model's inputs and the instant they were taken at, reused by next_review_at
    # and reasons when asked about the same instant.
    inputs: RecencyInputs | None = None
    at: float = math.nan
    #: What engagement and service add to the log-odds of the recency chance.
    shift: float = 0.0
    #: The horizon (days) the chance is about.
    horizon_days: float = 180.0


class RecencyInputs(NamedTuple):
    """What the return-probability model needs, in days."""

    repeats: int
    span_days: float
    silence_days: float
    population_gap_days: float
    #: What the customer's first basket adds to the log-odds of a return (the shard's
    #: :class:`~churnwatch.core.buyers.ValueEvidence`; 0 until its outcomes show an effect).
    value_shift: float = 0.0


def windows_of(config: ChurnwatchConfig) -> Windows:
    """The decayed-window half-lives of a configuration, in seconds."""
    return Windows(config.trend_short_half_life_days * DAY, config.trend_long_half_life_days * DAY,
                   config.engagement_half_life_days * DAY, config.service_half_life_days * DAY)


def horizon_days(segment: str | None, config: ChurnwatchConfig,
                 priors: PopulationPriors) -> float:
    """The horizon of a customer's chance: the segment's configured ``horizon_days``, else the
    one learned from its reorders (:meth:`PopulationPriors.horizon`), else the default.

    >>> from churnwatch.core.config import ChurnwatchConfig, parse_config
    >>> priors = PopulationPriors()
    >>> priors.horizons = {"*": 21.0}
    >>> horizon_days(None, ChurnwatchConfig(), priors)
    21.0
    >>> cfg = parse_config({"scoring": {"horizon_days": 60}}, source="shop.toml")
    >>> horizon_days(None, cfg, priors)
    60.0
    """
    policy = config.policy(segment)
    if not policy.horizon_learned:
        return policy.horizon_days
    return priors.horizon(config.segment_label(segment)) or policy.horizon_days


def horizons_in_use(config: ChurnwatchConfig, priors: PopulationPriors) -> list[float]:
    """Every horizon a chance may be asked for, the default segment's first: what a refit
    calibrates."""
    policies = [config.default_policy, *config.segment_policies.values()]
    out = [horizon_days(None, config, priors)]
    if any(p.horizon_learned for p in policies):
        out += sorted(priors.horizons.values())
        if ALL_SEGMENTS not in priors.horizons:  # nothing learned yet: the defaults meanwhile
            out += [p.horizon_days for p in policies if p.horizon_learned]
    out += [p.horizon_days for p in policies if not p.horizon_learned]
    return list(dict.fromkeys(out))


def return_probability(inputs: RecencyInputs, horizon_days: float, model: BuyerModel) -> float:
    """The buyer model's P(the customer orders again within ``horizon_days``), uncalibrated.

    See :mod:`churnwatch.core.buyers`: a tempered MBG/NBD whose population parameters each
    shard learns from its own stream. One-time buyers may have left after their first order,
    so they are never rated certainly alive; every repeat makes leaving less likely and every
    day of silence more. Where the shard has learned that the first basket's value matters, the
    customer's ``value_shift`` moves the chance on the log-odds (the same shift whatever the
    silence and later orders, so the chance still falls with every silent day and rises with
    every order).

    >>> from churnwatch.core.buyers import BuyerModel
    >>> model = BuyerModel()
    >>> regular = RecencyInputs(repeats=9, span_days=180, silence_days=10, population_gap_days=40)
    >>> once = RecencyInputs(repeats=0, span_days=0, silence_days=10, population_gap_days=40)
    >>> p_regular = return_probability(regular, 180, model)
    >>> p_once = return_probability(once, 180, model)
    >>> 0 < p_once < p_regular < 1
    True
    """
    silence = min(max(inputs.silence_days, 0.0), _MAX_SILENCE_DAYS)
    return shifted(model.p_order_within(inputs.repeats, inputs.span_days,
                                        inputs.span_days + silence, horizon_days),
                   inputs.value_shift)


def recency_chance(inputs: RecencyInputs, horizon: float, model: BuyerModel,
                   priors: PopulationPriors) -> float:
    """The purchases' chance of an order within ``horizon``: the model's probability through
    the calibration map (strictly increasing, so it ties no customers the model tells apart)."""
    return priors.calibrated(return_probability(inputs, horizon, model), horizon)


def buyer_model(priors: PopulationPriors, config: ChurnwatchConfig) -> BuyerModel:
    """The shard's fitted buyer model, or the configured prior before its first fit."""
    fitted = priors.model  # the prior is built only when needed: this runs at every scoring
    return fitted if fitted is not None else config.recency.prior()


def recency_inputs(state: CustomerState, now: float, priors: PopulationPriors,
                   config: ChurnwatchConfig) -> RecencyInputs:
    """The model's inputs for a customer at ``now``.

    A customer with no order yet is taken as if their first contact were a first order: a
    registered customer who never buys is as doubtful as a one-time buyer.
    """
    gap = priors.mean_gap_days(config.recency.default_gap_days, config.recency.default_gap_weight)
    bought = state.purchases
    if bought.orders == 0 or bought.first_order is None or bought.last_order is None:
        return RecencyInputs(0, 0.0, (now - state.first_seen) / DAY, gap)
    return RecencyInputs(bought.orders - 1, (bought.last_order - bought.first_order) / DAY,
                         (now - bought.last_order) / DAY, gap,
                         priors.value.shift(bought.basket()))


def _inputs_at(assessment: Assessment, state: CustomerState, now: float,
               priors: PopulationPriors, config: ChurnwatchConfig) -> RecencyInputs:
    """The assessment's own recency inputs when it was made at ``now``, else fresh ones."""
    if assessment.inputs is not None and assessment.at == now:
        return assessment.inputs
    return recency_inputs(state, now, priors, config)


def component_shift(component: int, value: Component, policy: SegmentPolicy) -> float:
    """What one of engagement or service adds to the log-odds of the chance.

    >>> from churnwatch.core.config import SegmentPolicy
    >>> p = SegmentPolicy()  # engagement weighs 0.15 against recency's 0.6
    >>> component_shift(ENGAGEMENT, Component(0.0, 1.0), p) < 0 < component_shift(
    ...     ENGAGEMENT, Component(100.0, 1.0), p)
    True
    >>> component_shift(SERVICE, Component(20.0, 0.0), p)  # no evidence: no move
    0.0
    """
    if value.confidence <= 0.0:
        return 0.0
    weights = policy.weights
    name = COMPONENTS[component]
    return (SHIFT_PER_WEIGHT * weights[name] / weights["recency"] * value.confidence
            * (value.value - NEUTRAL[component]) / 100.0)


def assess(state: CustomerState, now: float, config: ChurnwatchConfig,
           priors: PopulationPriors) -> Assessment:
    """Score one customer at ``now`` (event time; see docs/scoring.md for the time rule)."""
    policy = config.policy(state.segment)
    inputs = recency_inputs(state, now, priors, config)
    horizon = horizon_days(state.segment, config, priors)
    chance = recency_chance(inputs, horizon, buyer_model(priors, config), priors)
    recency = Component(100.0 * chance, 1.0)
    trend = _trend(state, config)
    engagement = _engagement(state, config, priors)
    service = _service(state)
    shift = (component_shift(ENGAGEMENT, engagement, policy)
             + component_shift(SERVICE, service, policy))
    chance = shifted(chance, shift)
    return Assessment(100.0 * chance, (recency, trend, engagement, service), chance, inputs,
                      now, shift, horizon)


def after_order(before: Assessment, after: Assessment) -> Assessment:
    """The assessment ``after`` an order, given the one just ``before`` it (same instant, same
    priors): an order never lowers the score.

    The order raises the return chance and the recency component, but it also shows the trend
    what the silence before it meant (a long wait, a small basket), which can pull the trend
    component down by more than recency rose. That news belongs to the silence, which the score
    has already been paying for; the order itself is good news, so the score holds at least
    where it was.

    >>> from churnwatch.core.config import ChurnwatchConfig
    >>> from churnwatch.core.customer import CustomerState
    >>> from churnwatch.core.events import Event
    >>> cfg, priors = ChurnwatchConfig(), PopulationPriors()
    >>> c = CustomerState(first_seen=0.0)
    >>> for day in range(0, 200, 20):
    ...     c.apply(Event("c1", "order", day * DAY, amount=30.0), windows=windows_of(cfg))
    >>> high, low = assess(c, 181 * DAY, cfg, priors), assess(c, 260 * DAY, cfg, priors)
    >>> after_order(high, low).score == high.score, after_order(low, high) is high
    (True, True)
    """
    if after.score >= before.score:
        return after
    return replace(after, score=before.score, return_probability=before.return_probability)


def held_in_tier(assessment: Assessment, tier: int, policy: SegmentPolicy) -> Assessment:
    """The assessment of a customer kept in ``tier`` while silent: the score (and the chance,
    which is the score) capped just below where the tier is left upwards.

    Only an event that can raise the chance moves a customer to a better tier; between such
    events a better estimate of the shop's habits is no news of the customer's, so their tier
    holds, and so that no customer sits in a worse tier than another with a lower score, their
    score holds at the top of that tier's band. Readers (the export, the pages) apply it as the
    engine does.

    >>> from churnwatch.core.config import SegmentPolicy
    >>> c = Component(80.0, 1.0)
    >>> a = Assessment(80.0, (c, c, c, c), 0.8)
    >>> kept = held_in_tier(a, AT_RISK, SegmentPolicy())  # at_risk is left upwards at 45 + 3
    >>> kept.score, kept.return_probability, held_in_tier(a, HEALTHY, SegmentPolicy()) is a
    (47.99, 0.4799, True)
    """
    if tier <= HEALTHY:
        return assessment
    ceiling = policy.boundaries[tier - 1] + policy.hysteresis - 0.01
    if assessment.score <= ceiling:
        return assessment
    return replace(assessment, score=ceiling, return_probability=ceiling / 100.0)


def assess_as_held(state: CustomerState, now: float, config: ChurnwatchConfig,
                   priors: PopulationPriors) -> Assessment:
    """A customer's assessment at ``now`` (no later than their next event) as a reader shows
    it: held in their stored tier (:func:`held_in_tier`), as the engine would hold it."""
    return held_in_tier(assess(state, now, config, priors), state.tier,
                        config.policy(state.segment))


def chance_percent(assessment: Assessment) -> float:
    """The calibrated return probability in percent: what tiers are defined on."""
    return 100.0 * assessment.return_probability


def _trend(state: CustomerState, config: ChurnwatchConfig) -> Component:
    """Recent purchase rate and value against the customer's longer history.

    Both windows are read at the last order and corrected for a tenure shorter than the window,
    so a steady customer sits at 100 whatever their age; buying half as often scores about 60.
    """
    orders = state.purchases.orders
    tenure = state.purchases.tenure()
    if orders < 3 or tenure is None:
        return _NO_EVIDENCE
    short = config.trend_short_half_life_days * DAY
    long = config.trend_long_half_life_days * DAY
    if tenure < short:
        return _NO_EVIDENCE
    rates = state.trend.rates(tenure, short, long)
    freq = rates.orders_short / rates.orders_long if rates.orders_long > 0 else 1.0
    value = rates.value_short / rates.value_long if rates.value_long > 0 else freq
    ratio = TREND_FREQUENCY_WEIGHT * min(freq, 1.0) + TREND_VALUE_WEIGHT * min(value, 1.0)
    confidence = min(1.0, (orders - 2) / 3.0) * min(1.0, tenure / (2.0 * short))
    return Component(100.0 * ratio ** TREND_CURVE, confidence)


def _engagement(state: CustomerState, config: ChurnwatchConfig, priors: PopulationPriors
                ) -> Component:
    """Answers to campaigns and messages against the population's usual answer rate."""
    engagement = state.engagement
    if not engagement.channels:
        return _NO_EVIDENCE
    sent, responses, _, _ = engagement.totals(engagement.ref,
                                              config.engagement_half_life_days * DAY)
    usual = priors.response_rate()
    rate = (responses + 2.0 * usual) / (sent + 2.0)
    value = 100.0 * (1.0 - math.exp(-ENGAGEMENT_STEEPNESS * rate / usual))
    return Component(value, min(1.0, sent / 4.0))


def _service(state: CustomerState) -> Component:
    """Support tickets (by severity) and feedback scores, recent ones weighing most."""
    service = state.service
    if service.tickets <= 0.0 and service.fb_weight <= 0.0:
        return _NO_EVIDENCE
    tickets = 100.0 * math.exp(-TICKET_DECAY * service.tickets)
    if service.fb_weight > 0:
        feedback = 10.0 * service.fb_sum / service.fb_weight
        value = min(tickets, feedback) if service.tickets > 0.5 else feedback
    else:
        value = tickets
    return Component(value, min(1.0, service.tickets + service.fb_weight))


# -- tiers ---------------------------------------------------------------------------------------


def tier_name(tier: int) -> str:
    """``0`` -> ``healthy`` ... ``3`` -> ``churned``; ``-1`` (not yet scored) -> ``none``."""
    return TIERS[tier] if tier >= 0 else "none"


def tier_for(chance: float, current: int, policy: SegmentPolicy) -> int:
    """The tier for a return ``chance`` (percent), given the ``current`` tier (``-1`` for
    none), with hysteresis.

    A boundary is crossed downwards only ``hysteresis`` points below it and upwards only that
    far above it, so a chance hovering at a boundary does not flap.

    >>> from churnwatch.core.config import SegmentPolicy
    >>> p = SegmentPolicy()  # healthy >= 65 %, watch >= 45 %, at_risk >= 25 %, hysteresis 3
    >>> tier_for(64.0, HEALTHY, p), tier_for(61.0, HEALTHY, p), tier_for(66.0, WATCH, p)
    (0, 1, 1)
    >>> tier_for(10.0, HEALTHY, p), tier_for(64.0, -1, p)
    (3, 1)
    """
    bounds = policy.boundaries
    if current < 0:
        return sum(1 for b in bounds if chance < b)
    margin = policy.hysteresis
    tier = current
    while tier < CHURNED and chance < bounds[tier] - margin:
        tier += 1
    if tier == current:
        while tier > HEALTHY and chance >= bounds[tier - 1] + margin:
            tier -= 1
    return tier


def next_review_at(state: CustomerState, assessment: Assessment, now: float,
                   config: ChurnwatchConfig, priors: PopulationPriors,
                   not_after: float | None = None) -> float | None:
    """When the customer's tier would next fall if no new event arrives (``None``: never).

    Tiers are defined on the calibrated return chance, which only falls with silence (the
    buyer model's probability falls with every silent day and the calibration map is
    monotone), so the exit is found by bisection on the silence. With ``not_after`` (a review
    due then anyway), a tier still held at that instant answers ``not_after`` without a search.
    """
    tier = state.tier
    if tier < 0 or tier >= CHURNED:
        return None
    policy = config.policy(state.segment)
    # Aim a hair below the exit so the review lands past it despite rounding.
    target = (policy.boundaries[tier] - policy.hysteresis - 0.01) / 100.0
    if target <= 0.0:
        return None
    if assessment.return_probability < target:
        return now
    inputs = _inputs_at(assessment, state, now, priors, config)
    anchor = now - inputs.silence_days * DAY
    horizon = assessment.horizon_days
    model = buyer_model(priors, config)
    shift = assessment.shift

    def still_above(silence: float) -> bool:
        # Built directly: dataclasses.replace costs twice as much, on every bisection step.
        at = RecencyInputs(inputs.repeats, inputs.span_days, silence,
                           inputs.population_gap_days, inputs.value_shift)
        return shifted(recency_chance(at, horizon, model, priors), shift) >= target

    low = inputs.silence_days
    if not_after is not None and not_after > now:
        if still_above(low + (not_after - now) / DAY):
            return not_after
        high = low + (not_after - now) / DAY
    else:
        high = max(low, 1.0) * 2.0
    while still_above(high):
        if high >= _MAX_SILENCE_DAYS:
            return None
        high = min(high * 2.0, _MAX_SILENCE_DAYS)
    for _ in range(60):
        if high - low < 1.0 / 1440.0:  # one minute
            break
        mid = 0.5 * (low + high)
        if still_above(mid):
            low = mid
        else:
            high = mid
    return max(anchor + high * DAY, now)


# -- reasons -------------------------------------------------------------------------------------


def reasons(state: CustomerState, assessment: Assessment, now: float, config: ChurnwatchConfig,
            priors: PopulationPriors, previous: list[int] | None = None, *,
            from_tier: int | None = None, to_tier: int | None = None,
            old_score: float | None = None, gap_before_days: float | None = None
            ) -> list[str]:
    """Plain-language reasons for a CS agent to read, the biggest moves first.

    ``previous`` are the components (0..100) at the last scoring. For a tier change the engine
    passes ``from_tier``, ``to_tier`` and the ``old_score``: an upgrade is explained by what
    improved (an order, answers, a better trend or service), a downgrade by the problems, and a
    change whose two scores print the same says which threshold the score crossed.
    ``gap_before_days``, when the caller knows it, is the wait before the latest order.
    Every reason speaks of the customer (what they did, how long they have been silent against
    their own and the shop's habits), never of how the score is computed.

    >>> from churnwatch.core.config import ChurnwatchConfig
    >>> from churnwatch.core.customer import CustomerState
    >>> from churnwatch.core.events import Event
    >>> from churnwatch.core.priors import PopulationPriors
    >>> cfg, priors = ChurnwatchConfig(), PopulationPriors()
    >>> c = CustomerState(first_seen=0.0)
    >>> for day in (0, 21, 42, 63, 103):
    ...     c.apply(Event("c1", "order", day * 86400.0, amount=30.0), windows=windows_of(cfg))
    >>> now = 103 * 86400.0
    >>> a = assess(c, now, cfg, priors)
    >>> why = reasons(c, a, now, cfg, priors, [40, -1, -1, -1], from_tier=WATCH,
    ...               to_tier=HEALTHY, gap_before_days=40.0)
    >>> why[0].split("; ")[0]
    'ordered again after 40 days, usually every 21 days'
    """
    upgrade = from_tier is not None and to_tier is not None and 0 <= to_tier < from_tier
    if upgrade:
        out = _improvements(state, assessment, now, config, priors, previous, gap_before_days)
        if not out:
            # Nothing the customer did moved: say where they stand, in their terms.
            out = [(0.0, _recency_text(state, assessment, now, config, priors))]
    else:
        out = _problems(state, assessment, now, config, priors, previous)
    texts = [text for _, text in sorted(out, key=lambda item: -item[0])]
    crossing = _crossing(state, assessment, config, from_tier, to_tier, old_score)
    return texts + ([crossing] if crossing else [])


def _problems(state: CustomerState, assessment: Assessment, now: float,
              config: ChurnwatchConfig, priors: PopulationPriors, previous: list[int] | None
              ) -> list[tuple[float, str]]:
    """What holds the score down, each with how far its component fell since ``previous``."""
    comps = assessment.components
    out = [(_drop(previous, RECENCY, comps[RECENCY].value),
            _recency_text(state, assessment, now, config, priors))]
    if comps[TREND].confidence > 0 and comps[TREND].value < 90:
        out.append((_drop(previous, TREND, comps[TREND].value),
                    "buying less often lately than in their earlier months"))
    if comps[ENGAGEMENT].confidence > 0 and comps[ENGAGEMENT].value < 70:
        out.append((_drop(previous, ENGAGEMENT, comps[ENGAGEMENT].value),
                    "not answering outreach: " + _answers_text(state, config)))
    if comps[SERVICE].confidence > 0 and comps[SERVICE].value < 70:
        out.append((_drop(previous, SERVICE, comps[SERVICE].value),
                    "service problems: " + _service_text(state)))
    return out


def _improvements(state: CustomerState, assessment: Assessment, now: float,
                  config: ChurnwatchConfig, priors: PopulationPriors,
                  previous: list[int] | None, gap_before_days: float | None
                  ) -> list[tuple[float, str]]:
    """What got better since ``previous``, each with how far its component rose."""
    comps = assessment.components
    out: list[tuple[float, str]] = []
    chance = _chance_text(assessment)
    rise = -_drop(previous, RECENCY, comps[RECENCY].value)
    inputs = _inputs_at(assessment, state, now, priors, config)
    orders = state.purchases.orders
    if orders > 0 and inputs.silence_days < 1.0 and (rise > 0.5 or not previous):
        span = inputs.span_days
        if gap_before_days is None and orders == 2:
            gap_before_days = span
        if orders == 1:
            text = "placed a first order"
        elif gap_before_days is None:
            text = f"ordered again, usually {_every(span / (orders - 1))}"
        elif orders == 2:
            text = f"ordered again after {_days(gap_before_days)}, their second order"
        else:
            # Their cadence before this order, which the long wait made look late.
            usual = max(span - gap_before_days, 0.0) / (orders - 2)
            text = f"ordered again after {_days(gap_before_days)}, usually {_every(usual)}"
        out.append((max(rise, 0.0), f"{text}; {chance}"))
    for index in (ENGAGEMENT, TREND, SERVICE):
        comp = comps[index]
        if comp.confidence <= 0:
            continue
        fresh = _drop(previous, index, -1.0) == 0.0  # no evidence at the last scoring
        gained = 0.0 if fresh else -_drop(previous, index, comp.value)
        if (fresh and comp.value < 70.0) or (not fresh and gained < 1.0):
            continue  # nothing that lifted the score
        if index == ENGAGEMENT:
            text = "answering again: " + _answers_text(state, config)
        elif index == TREND:
            text = (f"buying {'steadily' if fresh else 'more often'} lately, against their "
                    "earlier months")
        else:
            text = ("good service: " if fresh else "service better: ") + _service_text(state)
        out.append((gained, text))
    return out


def _recency_text(state: CustomerState, assessment: Assessment, now: float,
                  config: ChurnwatchConfig, priors: PopulationPriors) -> str:
    inputs = _inputs_at(assessment, state, now, priors, config)
    silence = inputs.silence_days
    orders = state.purchases.orders
    own_gap = state.purchases.mean_gap_days()
    if orders == 0:
        text = f"no order yet, first seen {_ago(silence)}"
    elif own_gap is not None:
        last = f"no order for {_days(silence)}" if silence >= 1.0 else "ordered today"
        text = f"{last}, usually orders {_every(own_gap)} ({orders} orders)"
    else:
        text = f"one order, {_ago(silence)}"
    habit = ""
    if config.policy(state.segment).horizon_learned and \
            priors.horizon(config.segment_label(state.segment)) is not None:
        habit = ("; customers here usually reorder within "
                 f"{describe_within(assessment.horizon_days)}")
    return f"{text}{habit}; {_chance_text(assessment)}" + _basket_text(state, inputs, priors)


def _chance_text(assessment: Assessment) -> str:
    """``31% likely to order within 3 weeks``: the score, said as what it is."""
    return (f"{100 * assessment.return_probability:.0f}% likely to order within "
            f"{describe_within(assessment.horizon_days)}")


def _basket_text(state: CustomerState, inputs: RecencyInputs, priors: PopulationPriors) -> str:
    """Where the shard has learned that first baskets say something of a return and this
    customer's moved their chance by a point or more (at even odds): which way, and why."""
    basket = state.purchases.basket()
    if basket is None or abs(inputs.value_shift) < 0.04:
        return ""
    usual = math.expm1(priors.value.mean)
    helps = inputs.value_shift > 0
    return (f"; first order worth {basket:,.0f}, {'above' if basket > usual else 'below'} "
            f"the usual {usual:,.0f}: in this shop that counts "
            f"{'for' if helps else 'against'} a return")


def _answers_text(state: CustomerState, config: ChurnwatchConfig) -> str:
    engagement = state.engagement
    sent, responses, _, _ = engagement.totals(engagement.ref,
                                              config.engagement_half_life_days * DAY)
    channels = ", ".join(sorted(engagement.channels))
    answers = round(responses)
    sends = max(round(sent), 1)
    said = "no answers" if answers == 0 else "about " + _plural(answers, "answer")
    recent = "recent message or campaign" if sends == 1 else "recent messages and campaigns"
    return f"{said} to {sends} {recent} ({channels})"


def _service_text(state: CustomerState) -> str:
    parts = []
    service = state.service
    tickets = round(service.tickets)
    if tickets >= 1:
        # A decayed count: recent tickets count most, so "lately" rather than a calendar span.
        parts.append(f"{_plural(tickets, 'support ticket')} lately")
    feedback = service.mean_feedback()
    if feedback is not None:
        parts.append(f"feedback {feedback:.1f}/10")
    return ", ".join(parts) or "no recent tickets"


def _crossing(state: CustomerState, assessment: Assessment, config: ChurnwatchConfig,
              from_tier: int | None, to_tier: int | None, old_score: float | None) -> str:
    """Why the tier changed when the old and new score print alike (``""`` otherwise): which
    line the score crossed, and why a customer at a line does not flicker across it.
    """
    if from_tier is None or to_tier is None or old_score is None or from_tier < 0 \
            or to_tier == from_tier or f"{old_score:.0f}" != f"{assessment.score:.0f}":
        return ""
    policy = config.policy(state.segment)
    margin = policy.hysteresis
    if to_tier > from_tier:
        boundary, side, name = policy.boundaries[to_tier - 1], -1.0, TIERS[to_tier - 1]
    else:
        boundary, side, name = policy.boundaries[to_tier], 1.0, TIERS[to_tier]
    threshold = boundary + side * margin
    where = "below" if side < 0 else "at or above"
    return (f"health {old_score:.1f} -> {assessment.score:.1f}, {where} {threshold:g}: "
            f"{name} starts at {boundary:g}, and a customer crosses that line only "
            f"{margin:g} points beyond it, so that tiers do not flicker")


def _days(days: float) -> str:
    """``1 day``, ``21 days``; less than a day reads as such, never as ``0 days``.

    >>> _days(0.2), _days(1.2), _days(20.6)
    ('less than a day', '1 day', '21 days')
    """
    whole = round(days)
    return "less than a day" if whole < 1 else _plural(whole, "day")


def _every(days: float) -> str:
    """``every 21 days``, ``every day``, ``several times a day``."""
    whole = round(days)
    if whole < 1:
        return "several times a day"
    return "every day" if whole == 1 else f"every {_days(days)}"


def _ago(days: float) -> str:
    return "today" if days < 1.0 else f"{_days(days)} ago"


def _plural(count: int, noun: str) -> str:
    """``1 order``, ``2 orders``.

    >>> _plural(1, "answer"), _plural(3, "answer")
    ('1 answer', '3 answers')
    """
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _drop(previous: list[int] | None, index: int, value: float) -> float:
    if not previous or len(previous) <= index or previous[index] < 0:
        return 0.0
    return previous[index] - value


def component_values(assessment: Assessment) -> list[int]:
    """Components rounded to whole points for storage (``-1`` where there is no evidence)."""
    return [round(c.value) if c.confidence > 0 else -1 for c in assessment.components]


__all__ = ["COMPONENTS", "Assessment", "Component", "after_order", "assess", "assess_as_held",
           "buyer_model", "chance_percent", "held_in_tier", "horizon_days", "horizons_in_use",
           "next_review_at", "reasons", "return_probability", "tier_for", "tier_name"]
