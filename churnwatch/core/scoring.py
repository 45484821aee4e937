"""The Customer Health Score: components, tiers with hysteresis, reasons, next review time.

The score (0..100) is a weighted mean of four components, each 0..100 with a confidence 0..1
(how much evidence stands behind it); a component without evidence drops out instead of
pretending to be average:

- ``recency``: the probability that the customer orders again within the segment's horizon,
  given their silence, their own cadence and how many times they came back (see
  :func:`return_probability`), as ``100 * sqrt(p)``.
- ``trend``: purchase frequency and value in recent months against the customer's earlier months.
- ``engagement``: their answer rate to campaigns and messages against the population's.
- ``service``: support tickets and feedback.

Only ``recency`` moves while a customer is silent; the others are taken as of their last event,
and together they can lift the score at most ``MAX_LIFT_POINTS`` above recency alone, so a
customer silent long enough always ends ``churned``. So a score never rises with silence, and
the instant of the next tier change absent events has a direct solution
(:func:`next_review_at`).

>>> from churnwatch.core.config import ChurnwatchConfig
>>> from churnwatch.core.customer import CustomerState
>>> from churnwatch.core.events import Event
>>> from churnwatch.core.priors import PopulationPriors
>>> cfg, priors = ChurnwatchConfig(), PopulationPriors()
>>> c = CustomerState(first_seen=0.0)
>>> for day in range(0, 200, 20):
...     c.apply(Event("c1", "order", day * 86400.0, amount=30.0), windows=windows_of(cfg))
>>> fresh = assess(c, now=181 * 86400.0, config=cfg, priors=priors)
>>> silent = assess(c, now=260 * 86400.0, config=cfg, priors=priors)
>>> fresh.score > silent.score, tier_name(tier_for(fresh.score, -1, cfg.policy(None)))
(True, 'healthy')
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from churnwatch.core.config import COMPONENTS, TIERS, ChurnwatchConfig, SegmentPolicy
from churnwatch.core.customer import DAY, LN2, CustomerState, Windows
from churnwatch.core.priors import PopulationPriors

RECENCY, TREND, ENGAGEMENT, SERVICE = range(4)
#: How far the other components can lift the score above recency alone.
MAX_LIFT_POINTS = 15.0
HEALTHY, WATCH, AT_RISK, CHURNED = range(4)
_MAX_SILENCE_DAYS = 36500.0


@dataclass(frozen=True, slots=True)
class Component:
    """One component of the score: its value (0..100) and the confidence behind it (0..1)."""

    value: float
    confidence: float


#: A component without evidence (confidence 0): it drops out of the weighted mean.
_NO_EVIDENCE = Component(100.0, 0.0)


@dataclass(frozen=True, slots=True)
class Assessment:
    """The score of one customer at one instant, with what it is made of."""

    score: float
    components: tuple[Component, Component, Component, Component]
    return_probability: float
    # Parts of the weighted mean that do not move with silence, for next_review_at.
    fixed_weighted_sum: float
    fixed_weight: float
    recency_weight: float
    # The recency model's inputs and the instant they were taken at, reused by next_review_at
    # and reasons when asked about the same instant.
    inputs: RecencyInputs | None = None
    at: float = math.nan


@dataclass(frozen=True, slots=True)
class RecencyInputs:
    """What the return-probability model needs, in days."""

    repeats: int
    span_days: float
    silence_days: float
    population_gap_days: float


def windows_of(config: ChurnwatchConfig) -> Windows:
    """The decayed-window half-lives of a configuration, in seconds."""
    return Windows(config.trend_short_half_life_days * DAY, config.trend_long_half_life_days * DAY,
                   config.engagement_half_life_days * DAY, config.service_half_life_days * DAY)


def return_probability(inputs: RecencyInputs, horizon_days: float, config: ChurnwatchConfig
                       ) -> float:
    """P(the customer orders again within ``horizon_days``), given their history.

    Two things can explain a silence: the customer is still with us and simply has not needed to
    order yet, or they left. Leaving is a dropout after any order with a probability that starts
    at ``a / (a + b)`` and shrinks with every return (a Beta prior, so ``a / (a + b + repeats)``);
    unlike BG/NBD this includes the first order, so one-time buyers are not rated certainly
    alive. A customer who stayed orders after waiting times with a heavy (Lomax) tail around
    their own mean gap, shrunk towards the population's while they have few orders.

    >>> from churnwatch.core.config import ChurnwatchConfig
    >>> cfg = ChurnwatchConfig()
    >>> regular = RecencyInputs(repeats=9, span_days=180, silence_days=10, population_gap_days=40)
    >>> once = RecencyInputs(repeats=0, span_days=0, silence_days=10, population_gap_days=40)
    >>> p_regular = return_probability(regular, 180, cfg)
    >>> p_once = return_probability(once, 180, cfg)
    >>> 0 < p_once < p_regular < 1
    True
    """
    model = config.recency
    k = model.cadence_shrinkage
    mean_gap = (k * inputs.population_gap_days + inputs.span_days) / (k + inputs.repeats)
    shape = model.tail_shape
    scale = shape * max(mean_gap, 1e-6)
    silence = min(max(inputs.silence_days, 0.0), _MAX_SILENCE_DAYS)
    still_waiting = (scale / (scale + silence)) ** shape
    dropout = model.dropout_prior_a / (model.dropout_prior_a + model.dropout_prior_b
                                       + inputs.repeats)
    alive = (1.0 - dropout) * still_waiting
    p_alive = alive / (alive + dropout)
    p_order_if_alive = 1.0 - ((scale + silence) / (scale + silence + horizon_days)) ** shape
    return float(p_alive * p_order_if_alive)


def recency_inputs(state: CustomerState, now: float, priors: PopulationPriors,
                   config: ChurnwatchConfig) -> RecencyInputs:
    """The model's inputs for a customer at ``now``.

    A customer with no order yet is taken as if their first contact were a first order: a
    registered customer who never buys is as doubtful as a one-time buyer.
    """
    gap = priors.mean_gap_days(config.recency.default_gap_days, config.recency.default_gap_weight)
    if state.orders == 0 or state.first_order is None or state.last_order is None:
        return RecencyInputs(0, 0.0, (now - state.first_seen) / DAY, gap)
    return RecencyInputs(state.orders - 1, (state.last_order - state.first_order) / DAY,
                         (now - state.last_order) / DAY, gap)


def _inputs_at(assessment: Assessment, state: CustomerState, now: float,
               priors: PopulationPriors, config: ChurnwatchConfig) -> RecencyInputs:
    """The assessment's own recency inputs when it was made at ``now``, else fresh ones."""
    if assessment.inputs is not None and assessment.at == now:
        return assessment.inputs
    return recency_inputs(state, now, priors, config)


def assess(state: CustomerState, now: float, config: ChurnwatchConfig,
           priors: PopulationPriors) -> Assessment:
    """Score one customer at ``now`` (event time in replay, wall clock live)."""
    policy = config.policy(state.segment)
    weights = policy.weights
    inputs = recency_inputs(state, now, priors, config)
    probability = return_probability(inputs, policy.horizon_days, config)
    recency = Component(100.0 * math.sqrt(probability), 1.0)
    trend = _trend(state, config)
    engagement = _engagement(state, config, priors)
    service = _service(state)
    fixed_sum = fixed_weight = 0.0
    for name, comp in (("trend", trend), ("engagement", engagement), ("service", service)):
        w = weights[name] * comp.confidence
        fixed_sum += w * comp.value
        fixed_weight += w
    w_recency = weights["recency"]
    score = (fixed_sum + w_recency * recency.value) / (fixed_weight + w_recency)
    # The other components are frozen at the last event; without a ceiling, good engagement
    # from a year ago would keep a long-gone customer out of `churned` for ever.
    score = min(score, recency.value + MAX_LIFT_POINTS)
    return Assessment(min(max(score, 0.0), 100.0), (recency, trend, engagement, service),
                      probability, fixed_sum, fixed_weight, w_recency, inputs, now)


def _trend(state: CustomerState, config: ChurnwatchConfig) -> Component:
    """Recent purchase rate and value against the customer's longer history.

    Both windows are read at the last order and corrected for a tenure shorter than the window,
    so a steady customer sits at 100 whatever their age; buying half as often scores about 60.
    """
    if state.orders < 3 or state.first_order is None or state.last_order is None:
        return _NO_EVIDENCE
    tenure = state.last_order - state.first_order
    short = config.trend_short_half_life_days * DAY
    long = config.trend_long_half_life_days * DAY
    if tenure < short:
        return _NO_EVIDENCE
    fill_short = 1.0 - math.exp(-LN2 * tenure / short)
    fill_long = 1.0 - math.exp(-LN2 * tenure / long)
    rate_short = state.ord_short / (short * fill_short)
    rate_long = state.ord_long / (long * fill_long)
    value_short = state.val_short / (short * fill_short)
    value_long = state.val_long / (long * fill_long)
    freq = rate_short / rate_long if rate_long > 0 else 1.0
    value = value_short / value_long if value_long > 0 else freq
    ratio = 0.7 * min(freq, 1.0) + 0.3 * min(value, 1.0)
    confidence = min(1.0, (state.orders - 2) / 3.0) * min(1.0, tenure / (2.0 * short))
    return Component(100.0 * ratio ** 0.7, confidence)


def _engagement(state: CustomerState, config: ChurnwatchConfig, priors: PopulationPriors
                ) -> Component:
    """Answers to campaigns and messages against the population's usual answer rate."""
    if not state.channels:
        return _NO_EVIDENCE
    sent, responses, _, _ = state.engagement_totals(state.eng_ref,
                                                    config.engagement_half_life_days * DAY)
    usual = priors.response_rate()
    rate = (responses + 2.0 * usual) / (sent + 2.0)
    value = 100.0 * (1.0 - math.exp(-1.4 * rate / usual))
    return Component(value, min(1.0, sent / 4.0))


def _service(state: CustomerState) -> Component:
    """Support tickets (by severity) and feedback scores, recent ones weighing most."""
    if state.tickets <= 0.0 and state.fb_weight <= 0.0:
        return _NO_EVIDENCE
    tickets = 100.0 * math.exp(-0.4 * state.tickets)
    if state.fb_weight > 0:
        feedback = 10.0 * state.fb_sum / state.fb_weight
        value = min(tickets, feedback) if state.tickets > 0.5 else feedback
    else:
        value = tickets
    return Component(value, min(1.0, state.tickets + state.fb_weight))


# -- tiers ---------------------------------------------------------------------------------------


def tier_name(tier: int) -> str:
    """``0`` -> ``healthy`` ... ``3`` -> ``churned``; ``-1`` (not yet scored) -> ``none``."""
    return TIERS[tier] if tier >= 0 else "none"


def tier_for(score: float, current: int, policy: SegmentPolicy) -> int:
    """The tier for ``score``, given the ``current`` tier (``-1`` for none), with hysteresis.

    A boundary is crossed downwards only ``hysteresis`` points below it and upwards only that
    far above it, so a score hovering at a boundary does not flap.

    >>> from churnwatch.core.config import SegmentPolicy
    >>> p = SegmentPolicy()  # healthy >= 60, watch >= 45, at_risk >= 32, hysteresis 3
    >>> tier_for(59.0, HEALTHY, p), tier_for(56.0, HEALTHY, p), tier_for(61.0, WATCH, p)
    (0, 1, 1)
    >>> tier_for(10.0, HEALTHY, p), tier_for(59.0, -1, p)
    (3, 1)
    """
    bounds = policy.boundaries
    if current < 0:
        return sum(1 for b in bounds if score < b)
    margin = policy.hysteresis
    tier = current
    while tier < CHURNED and score < bounds[tier] - margin:
        tier += 1
    if tier == current:
        while tier > HEALTHY and score >= bounds[tier - 1] + margin:
            tier -= 1
    return tier


def next_review_at(state: CustomerState, assessment: Assessment, now: float,
                   config: ChurnwatchConfig, priors: PopulationPriors) -> float | None:
    """When the customer's tier would next fall if no new event arrives (``None``: never).

    Only recency moves with silence, so the score crossing the current tier's exit threshold is
    a crossing of the return probability, found by bisection on the silence.
    """
    tier = state.tier
    if tier < 0 or tier >= CHURNED:
        return None
    policy = config.policy(state.segment)
    # Aim a hair below the exit so the review lands past it despite rounding.
    threshold = policy.boundaries[tier] - policy.hysteresis - 0.01
    w = assessment.recency_weight
    needed = (threshold * (assessment.fixed_weight + w) - assessment.fixed_weighted_sum) / w
    # The score also falls below the threshold once recency alone drops below it minus the
    # ceiling's lift; whichever comes first.
    needed = max(needed, threshold - MAX_LIFT_POINTS)
    if needed <= 0.0:
        return None
    target = (needed / 100.0) ** 2
    if assessment.return_probability < target:
        return now
    inputs = _inputs_at(assessment, state, now, priors, config)
    anchor = now - inputs.silence_days * DAY
    horizon = policy.horizon_days
    exit_silence = _exit_silence(inputs, horizon, config, target)
    low = inputs.silence_days
    high = max(low, 1.0) * 2.0
    if exit_silence is None:
        def still_above(silence: float) -> bool:
            return return_probability(RecencyInputs(inputs.repeats, inputs.span_days, silence,
                                                    inputs.population_gap_days), horizon,
                                      config) >= target
    else:
        # The crossing is known in closed form, so each step is a comparison rather than a
        # model evaluation (the model clamps silence to 0.._MAX_SILENCE_DAYS, hence the clamp).
        crossing = exit_silence

        def still_above(silence: float) -> bool:
            return min(max(silence, 0.0), _MAX_SILENCE_DAYS) <= crossing

    # Bisection to the minute; its steps fix the instant, whichever predicate answers them.
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


def _exit_silence(inputs: RecencyInputs, horizon_days: float, config: ChurnwatchConfig,
                  target: float) -> float | None:
    """The silence (days) at which :func:`return_probability` falls to ``target``, in closed
    form for the default tail shape 1 (``None`` for other shapes: evaluate the model).

    With shape 1 and ``x = scale + silence`` the model is
    ``(1 - d) scale h / (((1 - d) scale + d x) (x + h))``, so the crossing is the positive root
    of ``t d x^2 + t (d h + (1 - d) scale) x - (1 - t)(1 - d) scale h = 0``, taken in the form
    that does not cancel.

    >>> from churnwatch.core.config import ChurnwatchConfig
    >>> cfg = ChurnwatchConfig()
    >>> inputs = RecencyInputs(repeats=4, span_days=120, silence_days=0, population_gap_days=30)
    >>> s = _exit_silence(inputs, 180.0, cfg, 0.3)
    >>> at = RecencyInputs(4, 120, s, 30)
    >>> round(return_probability(at, 180.0, cfg), 9)
    0.3
    """
    model = config.recency
    if model.tail_shape != 1.0:
        return None
    if target >= 1.0:
        return -math.inf
    k = model.cadence_shrinkage
    mean_gap = (k * inputs.population_gap_days + inputs.span_days) / (k + inputs.repeats)
    scale = max(mean_gap, 1e-6)
    dropout = model.dropout_prior_a / (model.dropout_prior_a + model.dropout_prior_b
                                       + inputs.repeats)
    stay = 1.0 - dropout
    a = target * dropout
    b = target * (dropout * horizon_days + stay * scale)
    minus_c = (1.0 - target) * stay * scale * horizon_days
    x = 2.0 * minus_c / (b + math.sqrt(b * b + 4.0 * a * minus_c))
    return x - scale


# -- reasons -------------------------------------------------------------------------------------


def reasons(state: CustomerState, assessment: Assessment, now: float, config: ChurnwatchConfig,
            priors: PopulationPriors, previous: list[int] | None = None, *,
            from_tier: int | None = None, to_tier: int | None = None,
            old_score: float | None = None, gap_before_days: float | None = None) -> list[str]:
    """Plain-language reasons for a CS agent to read, the biggest moves first.

    ``previous`` are the components (0..100) at the last scoring. For a tier change the engine
    passes ``from_tier``, ``to_tier`` and the ``old_score``: an upgrade is explained by what
    improved (an order, answers, a better trend or service), a downgrade by the problems, and a
    change whose two scores print the same says which threshold the score crossed.
    ``gap_before_days``, when the caller knows it, is the wait before the latest order.

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
            # Nothing named moved (learned priors did, say): the rise itself, not the problems.
            rose = "score rose" if old_score is None else f"score rose from {old_score:.0f}"
            horizon = config.policy(state.segment).horizon_days
            out = [(0.0, f"{rose} to {assessment.score:.0f}; chance of ordering within "
                         f"{horizon:.0f} days now {100 * assessment.return_probability:.0f}%")]
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
                    f"buying less often lately: trend {comps[TREND].value:.0f}/100 against their "
                    "earlier months"))
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
    horizon = config.policy(state.segment).horizon_days
    chance = (f"chance of ordering within {horizon:.0f} days now "
              f"{100 * assessment.return_probability:.0f}%")
    rise = -_drop(previous, RECENCY, comps[RECENCY].value)
    inputs = _inputs_at(assessment, state, now, priors, config)
    if state.orders > 0 and inputs.silence_days < 1.0 and (rise > 0.5 or not previous):
        span = inputs.span_days
        if gap_before_days is None and state.orders == 2:
            gap_before_days = span
        if state.orders == 1:
            text = "placed a first order"
        elif gap_before_days is None:
            text = f"ordered again, usually {_every(span / (state.orders - 1))}"
        elif state.orders == 2:
            text = f"ordered again after {_days(gap_before_days)}, their second order"
        else:
            # Their cadence before this order, which the long wait made look late.
            usual = max(span - gap_before_days, 0.0) / (state.orders - 2)
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
            text = (f"buying {'steadily' if fresh else 'more often'} lately: trend "
                    f"{comp.value:.0f}/100 against their earlier months")
        else:
            text = ("good service: " if fresh else "service better: ") + _service_text(state)
        out.append((gained, text))
    return out


def _recency_text(state: CustomerState, assessment: Assessment, now: float,
                  config: ChurnwatchConfig, priors: PopulationPriors) -> str:
    inputs = _inputs_at(assessment, state, now, priors, config)
    silence = inputs.silence_days
    own_gap = state.mean_gap_days()
    if state.orders == 0:
        text = f"no order yet, first seen {_ago(silence)}"
    elif own_gap is not None:
        last = f"no order for {_days(silence)}" if silence >= 1.0 else "ordered today"
        text = f"{last}, usually orders {_every(own_gap)} ({state.orders} orders)"
    else:
        text = (f"one order, {_ago(silence)}; customers typically reorder within "
                f"{_days(inputs.population_gap_days)}")
    return (f"{text}; chance of ordering within "
            f"{config.policy(state.segment).horizon_days:.0f} days "
            f"{100 * assessment.return_probability:.0f}%")


def _answers_text(state: CustomerState, config: ChurnwatchConfig) -> str:
    sent, responses, _, _ = state.engagement_totals(state.eng_ref,
                                                    config.engagement_half_life_days * DAY)
    channels = ", ".join(sorted(state.channels))
    answers = round(responses)
    sends = max(round(sent), 1)
    said = "no answers" if answers == 0 else "about " + _plural(answers, "answer")
    recent = "recent message or campaign" if sends == 1 else "recent messages and campaigns"
    return f"{said} to {sends} {recent} ({channels})"


def _service_text(state: CustomerState) -> str:
    parts = []
    if state.tickets > 0.3:
        parts.append(f"{state.tickets:.1f} weighted support tickets recently")
    if state.fb_weight > 0:
        parts.append(f"feedback {state.fb_sum / state.fb_weight:.1f}/10")
    return ", ".join(parts) or "no recent tickets"


def _crossing(state: CustomerState, assessment: Assessment, config: ChurnwatchConfig,
              from_tier: int | None, to_tier: int | None, old_score: float | None) -> str:
    """Why the tier changed when the old and new score print alike (``""`` otherwise)."""
    if from_tier is None or to_tier is None or old_score is None or from_tier < 0 \
            or to_tier == from_tier or f"{old_score:.0f}" != f"{assessment.score:.0f}":
        return ""
    policy = config.policy(state.segment)
    margin = policy.hysteresis
    if to_tier > from_tier:
        boundary, side = policy.boundaries[to_tier - 1], -1.0
        edge = f"the {TIERS[to_tier - 1]} boundary {policy.boundaries[to_tier - 1]:g}"
    else:
        boundary, side = policy.boundaries[to_tier], 1.0
        edge = f"the {TIERS[to_tier]} boundary {policy.boundaries[to_tier]:g}"
    threshold = boundary + side * margin
    hysteresis = f"{'less' if side < 0 else 'plus'} the {margin:g}-point hysteresis"
    if f"{old_score:.2f}" == f"{assessment.score:.2f}":
        return (f"score unchanged at {assessment.score:.2f}: the tier follows the threshold "
                f"{threshold:g} ({edge} {hysteresis}), held until this review")
    return (f"score {old_score:.2f} -> {assessment.score:.2f} crossed {threshold:g}: "
            f"{edge} {hysteresis}")


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


__all__ = ["COMPONENTS", "Assessment", "Component", "assess", "next_review_at", "reasons",
           "return_probability", "tier_for", "tier_name"]
