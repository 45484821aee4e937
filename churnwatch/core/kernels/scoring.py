"""Scoring, as passes over rows: the kernel of :mod:`churnwatch.core.scoring`.

:func:`assess_rows` assesses many rows of the customer table at their own instants as
:func:`churnwatch.core.scoring.assess` assesses one customer; :func:`tiers_for` and
:func:`held_scores` are :func:`~churnwatch.core.scoring.tier_for` and
:func:`~churnwatch.core.scoring.held_in_tier` over arrays; :func:`next_reviews` is
:func:`~churnwatch.core.scoring.next_review_at`'s bisection run for every row at once. The
per-segment policy is looked up through the ``segment`` column (:class:`Policies`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from churnwatch.core.buyers import BuyerModel, CalibrationMap, shifted_many
from churnwatch.core.columns import CHANNELS, COUNTERS_PER_CHANNEL, CustomerTable
from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.priors import PopulationPriors
from churnwatch.core.scoring import (
    ENGAGEMENT,
    ENGAGEMENT_STEEPNESS,
    NEUTRAL,
    SERVICE,
    SHIFT_PER_WEIGHT,
    TICKET_DECAY,
    TREND_CURVE,
    TREND_FREQUENCY_WEIGHT,
    TREND_VALUE_WEIGHT,
    buyer_model,
    horizon_days,
)
from churnwatch.core.signals import CLICK_ANSWER, DAY, LN2, OPEN_ANSWER

MAX_SILENCE_DAYS = 36500.0
#: Where the bisection of the next review stops: one minute, in days.
REVIEW_RESOLUTION_DAYS = 1.0 / 1440.0
SENT, OPENED, CLICKED, MSG_SENT, REPLIED = range(COUNTERS_PER_CHANNEL)


@dataclass(frozen=True, slots=True)
class Policies:
    """Each segment's policy as arrays indexed by ``segment code + 1`` (index 0: no segment)."""

    horizon: np.ndarray
    bounds: np.ndarray  #: (segments + 1, 3): healthy, watch, at_risk lower bounds (percent)
    hysteresis: np.ndarray
    engagement_per_point: np.ndarray  #: log-odds per point of engagement away from neutral
    service_per_point: np.ndarray

    @classmethod
    def of(cls, table: CustomerTable, config: ChurnwatchConfig,
           priors: PopulationPriors) -> Policies:
        """The policies of every label the table knows (a label that is no segment gets the
        default policy, as :meth:`ChurnwatchConfig.policy` gives it)."""
        segments: list[str | None] = [None, *table.labels]
        policies = [config.policy(s) for s in segments]
        per_point = [SHIFT_PER_WEIGHT / p.weights["recency"] / 100.0 for p in policies]
        return cls(
            np.array([horizon_days(s, config, priors) for s in segments]),
            np.array([p.boundaries for p in policies], dtype=float),
            np.array([p.hysteresis for p in policies]),
            np.array([k * p.weights["engagement"] for k, p in zip(per_point, policies,
                                                                   strict=True)]),
            np.array([k * p.weights["service"] for k, p in zip(per_point, policies,
                                                                strict=True)]))


@dataclass(slots=True)
class Assessed:
    """The assessment of ``rows`` at ``at``: per row what :class:`~churnwatch.core.scoring.
    Assessment` holds for one customer."""

    rows: np.ndarray
    at: np.ndarray
    policy: np.ndarray  #: index into :class:`Policies`' arrays
    repeats: np.ndarray
    span_days: np.ndarray
    silence_days: np.ndarray
    value_shift: np.ndarray
    horizon: np.ndarray
    values: np.ndarray  #: (n, 4) components' values
    confidences: np.ndarray  #: (n, 4)
    shift: np.ndarray
    chance: np.ndarray  #: the return probability (0..1)

    @property
    def score(self) -> np.ndarray:
        """The health score (percent), unrounded."""
        return 100.0 * self.chance


def calibrated(p: np.ndarray, calibration: CalibrationMap | None) -> np.ndarray:
    """:meth:`CalibrationMap.apply` over an array."""
    if calibration is None or not calibration.predicted:
        return p
    xs = np.asarray(calibration.predicted)
    ys = np.asarray(calibration.observed)
    below = ys[0] * p / xs[0] if xs[0] > 0 else np.full_like(p, ys[0])
    span = 1.0 - xs[-1]
    above = np.minimum(1.0, ys[-1] + (1.0 - ys[-1]) * (p - xs[-1]) / span) if span > 0 \
        else np.full_like(p, ys[-1])
    inside = np.interp(p, xs, ys)
    return np.where(p <= xs[0], below, np.where(p >= xs[-1], above, inside))


def p_order_within(model: BuyerModel, x: np.ndarray, t_x: np.ndarray, age: np.ndarray,
                   horizon: np.ndarray) -> np.ndarray:
    """:meth:`BuyerModel.p_order_within` over arrays (``age`` at least ``t_x``)."""
    w = model.evidence_weight
    xe = w * x
    shape = model.r + xe
    age = np.maximum(age, t_x)
    base = model.alpha + w * age
    with np.errstate(over="ignore"):
        odds = model.a / (model.b + xe) * np.exp(shape * np.log(base / (model.alpha + w * t_x)))
    alive = np.where(np.isfinite(odds), 1.0 / (1.0 + odds), 0.0)
    return np.asarray(alive * (1.0 - np.exp(shape * np.log(base / (base + horizon)))))


def recency_chance(model: BuyerModel, priors: PopulationPriors, repeats: np.ndarray,
                   span: np.ndarray, silence: np.ndarray, value_shift: np.ndarray,
                   horizon: np.ndarray) -> np.ndarray:
    """The purchases' calibrated chance of an order within each row's horizon."""
    silence = np.clip(silence, 0.0, MAX_SILENCE_DAYS)
    p = shifted_many(p_order_within(model, repeats, span, span + silence, horizon), value_shift)
    out = np.empty_like(p)
    for h in np.unique(horizon):
        where = horizon == h
        out[where] = calibrated(p[where], priors.calibration.get(float(h)))
    return out


def assess_rows(table: CustomerTable, rows: np.ndarray, at: np.ndarray,
                config: ChurnwatchConfig, priors: PopulationPriors,
                policies: Policies) -> Assessed:
    """Assess ``rows`` at the instants ``at`` (event time), as ``scoring.assess`` does."""
    orders = table["orders"][rows].astype(float)
    first = table["first_order"][rows]
    last = table["last_order"][rows]
    bought = (orders > 0) & ~np.isnan(first) & ~np.isnan(last)
    repeats = np.where(bought, orders - 1.0, 0.0)
    span = np.where(bought, (last - first) / DAY, 0.0)
    since = np.where(bought, last, table["first_seen"][rows])
    silence = (at - since) / DAY
    baskets = table["first_basket"][rows]
    value = priors.value.shifts(np.where(baskets >= 0, baskets / 100.0, np.nan))
    value_shift = np.where(bought, value, 0.0)
    policy = table["segment"][rows].astype(np.int64) + 1
    horizon = policies.horizon[policy]
    model = buyer_model(priors, config)
    recency = recency_chance(model, priors, repeats, span, silence, value_shift, horizon)
    n = len(rows)
    values = np.empty((n, 4))
    confidences = np.zeros((n, 4))
    values[:, 0] = 100.0 * recency
    confidences[:, 0] = 1.0
    _trend(table, rows, orders, first, last, config, values, confidences)
    _engagement(table, rows, priors, values, confidences)
    _service(table, rows, values, confidences)
    shift = (policies.engagement_per_point[policy] * confidences[:, ENGAGEMENT]
             * (values[:, ENGAGEMENT] - NEUTRAL[ENGAGEMENT])
             + policies.service_per_point[policy] * confidences[:, SERVICE]
             * (values[:, SERVICE] - NEUTRAL[SERVICE]))
    chance = shifted_many(recency, shift)
    return Assessed(rows, at, policy, repeats, span, silence, value_shift, horizon, values,
                    confidences, shift, chance)


def _trend(table: CustomerTable, rows: np.ndarray, orders: np.ndarray, first: np.ndarray,
           last: np.ndarray, config: ChurnwatchConfig, values: np.ndarray,
           confidences: np.ndarray) -> None:
    short = config.trend_short_half_life_days * DAY
    long = config.trend_long_half_life_days * DAY
    tenure = last - first
    has = (orders >= 3) & ~np.isnan(tenure) & (tenure >= short)
    values[:, 1] = 100.0
    if not has.any():
        return
    idx = rows[has]
    t = tenure[has]
    short_w = short * (1.0 - np.exp(-LN2 * t / short))
    long_w = long * (1.0 - np.exp(-LN2 * t / long))
    ord_long = table["ord_long"][idx] / long_w
    val_long = table["val_long"][idx] / long_w
    with np.errstate(divide="ignore", invalid="ignore"):
        freq = np.where(ord_long > 0, (table["ord_short"][idx] / short_w) / ord_long, 1.0)
        value = np.where(val_long > 0, (table["val_short"][idx] / short_w) / val_long, freq)
    ratio = TREND_FREQUENCY_WEIGHT * np.minimum(freq, 1.0) + TREND_VALUE_WEIGHT * np.minimum(
        value, 1.0)
    values[has, 1] = 100.0 * ratio ** TREND_CURVE
    confidences[has, 1] = (np.minimum(1.0, (orders[has] - 2.0) / 3.0)
                           * np.minimum(1.0, t / (2.0 * short)))


def _engagement(table: CustomerTable, rows: np.ndarray, priors: PopulationPriors,
                values: np.ndarray, confidences: np.ndarray) -> None:
    values[:, ENGAGEMENT] = 100.0
    has = table["channel_seen"][rows] > 0
    if not has.any():
        return
    counters = table["channels"][rows[has]].reshape(-1, len(CHANNELS), COUNTERS_PER_CHANNEL)
    sent_c = counters[:, :, SENT]
    msg_c = counters[:, :, MSG_SENT]
    opened = OPEN_ANSWER * counters[:, :, OPENED] + CLICK_ANSWER * counters[:, :, CLICKED]
    answers = np.minimum(sent_c, opened) + np.minimum(msg_c, counters[:, :, REPLIED])
    sent = (sent_c + msg_c).sum(axis=1)
    responses = answers.sum(axis=1)
    usual = priors.response_rate()
    rate = (responses + 2.0 * usual) / (sent + 2.0)
    values[has, ENGAGEMENT] = 100.0 * (1.0 - np.exp(-ENGAGEMENT_STEEPNESS * rate / usual))
    confidences[has, ENGAGEMENT] = np.minimum(1.0, sent / 4.0)


def _service(table: CustomerTable, rows: np.ndarray, values: np.ndarray,
             confidences: np.ndarray) -> None:
    tickets = table["tickets"][rows]
    fb_sum = table["fb_sum"][rows]
    fb_weight = table["fb_weight"][rows]
    has = (tickets > 0.0) | (fb_weight > 0.0)
    from_tickets = 100.0 * np.exp(-TICKET_DECAY * tickets)
    with np.errstate(divide="ignore", invalid="ignore"):
        feedback = np.where(fb_weight > 0, 10.0 * fb_sum / fb_weight, 0.0)
    value = np.where(fb_weight > 0,
                     np.where(tickets > 0.5, np.minimum(from_tickets, feedback), feedback),
                     from_tickets)
    values[:, SERVICE] = np.where(has, value, 100.0)
    confidences[:, SERVICE] = np.where(has, np.minimum(1.0, tickets + fb_weight), 0.0)


def tiers_for(chance_percent: np.ndarray, current: np.ndarray, bounds: np.ndarray,
              margin: np.ndarray) -> np.ndarray:
    """:func:`churnwatch.core.scoring.tier_for` over arrays (``bounds`` per row, (n, 3))."""
    fresh = (chance_percent[:, None] < bounds).sum(axis=1)
    tier = np.maximum(current.astype(np.int64), 0)
    down = tier.copy()
    for _ in range(3):
        edge = bounds[np.arange(len(tier)), np.minimum(down, 2)]
        falls = (down < 3) & (chance_percent < edge - margin)
        down = np.where(falls, down + 1, down)
    up = tier.copy()
    for _ in range(3):
        edge = bounds[np.arange(len(tier)), np.maximum(up - 1, 0)]
        rises = (up > 0) & (chance_percent >= edge + margin)
        up = np.where(rises, up - 1, up)
    moved = np.where(down != tier, down, up)
    return np.where(current < 0, fresh, moved)


def held_scores(score: np.ndarray, tier: np.ndarray, bounds: np.ndarray, margin: np.ndarray
                ) -> np.ndarray:
    """:func:`churnwatch.core.scoring.held_in_tier`'s score over arrays: capped just below where
    ``tier`` is left upwards (healthy: unchanged)."""
    ceiling = bounds[np.arange(len(tier)), np.maximum(tier - 1, 0)] + margin - 0.01
    return np.where((tier > 0) & (score > ceiling), ceiling, score)


def next_reviews(assessed: Assessed, chance: np.ndarray, tier: np.ndarray,
                 policies: Policies, model: BuyerModel, priors: PopulationPriors,
                 not_after: float | None) -> np.ndarray:
    """When each row's tier would next fall if nothing happens (``nan``: never), as
    :func:`churnwatch.core.scoring.next_review_at` finds it; ``chance`` is the (held) chance
    the tier was set from, ``not_after`` the shard's next refit (a review due then anyway)."""
    now = assessed.at
    n = len(now)
    out = np.full(n, np.nan)
    policy = assessed.policy
    bounds = policies.bounds[policy]
    edge = bounds[np.arange(n), np.clip(tier, 0, 2)]
    target = (edge - policies.hysteresis[policy] - 0.01) / 100.0
    live = (tier >= 0) & (tier < 3) & (target > 0.0)
    past = live & (chance < target)
    out[past] = now[past]
    todo = np.nonzero(live & ~past)[0]
    if len(todo) == 0:
        return out

    def still_above(idx: np.ndarray, silence: np.ndarray) -> np.ndarray:
        moved = recency_chance(model, priors, assessed.repeats[idx], assessed.span_days[idx],
                               silence, assessed.value_shift[idx], assessed.horizon[idx])
        return np.asarray(shifted_many(moved, assessed.shift[idx]) >= target[idx])

    low = assessed.silence_days[todo].copy()
    t_now = now[todo]
    high = np.maximum(low, 1.0) * 2.0
    result = np.full(len(todo), np.nan)
    searching = np.ones(len(todo), dtype=bool)
    if not_after is not None:
        ahead = not_after > t_now
        capped = low + (not_after - t_now) / DAY
        held_until = ahead & still_above(todo, capped)
        result[held_until] = not_after
        searching &= ~held_until
        high = np.where(ahead, capped, high)
    grow = searching.copy()
    grow[grow] = still_above(todo[grow], high[grow])
    while grow.any():
        never = grow & (high >= MAX_SILENCE_DAYS)
        searching &= ~never
        grow &= ~never
        high = np.where(grow, np.minimum(high * 2.0, MAX_SILENCE_DAYS), high)
        again = grow.copy()
        again[again] = still_above(todo[again], high[again])
        grow = again
    active = searching.copy()
    for _ in range(60):
        active &= (high - low) >= REVIEW_RESOLUTION_DAYS
        if not active.any():
            break
        mid = 0.5 * (low + high)
        above = np.zeros(len(todo), dtype=bool)
        above[active] = still_above(todo[active], mid[active])
        low = np.where(active & above, mid, low)
        high = np.where(active & ~above, mid, high)
    anchor = t_now - assessed.silence_days[todo] * DAY
    found = np.maximum(anchor + high * DAY, t_now)
    result = np.where(searching, found, result)
    out[todo] = result
    return out


def rounded_components(assessed: Assessed) -> np.ndarray:
    """Components as stored: whole points, ``-1`` without evidence (``component_values``)."""
    return np.where(assessed.confidences > 0, np.round(assessed.values), -1).astype(np.int16)


__all__ = ["Assessed", "Policies", "assess_rows", "calibrated", "held_scores",
           "next_reviews", "p_order_within", "recency_chance", "rounded_components",
           "tiers_for"]
