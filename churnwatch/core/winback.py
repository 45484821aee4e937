"""Suggested next actions and win-back, measured: reason codes, suggestions, hold-out groups.

The engine calls :func:`track` each time it scores a customer. When a customer moves into a
tier a playbook applies to (and has no open assignment), the first matching playbook is
*assigned*: the customer joins its ``treated`` group, or, for a stable hash share, its
``holdout`` group whose suggestion is withheld. An assignment stays open until the customer
recovers (orders again, or is back to ``healthy``) or the window (``[winback] window_days``)
runs out. Counters in the shard's aggregates, per playbook and group
(:class:`churnwatch.core.aggregates.WinbackCount`), are what the exporter turns into
``churnwatch_winback_*`` metrics:

- ``WinbackCount("assigned", P, G)``: customers assigned;
- ``WinbackCount("contacted", P, G)``: of those, with an ``intervention`` event after the
  assignment;
- ``WinbackCount("recovered", P, G)``: of those, recovered within the window.

>>> from churnwatch.core.config import ChurnwatchConfig
>>> from churnwatch.core.customer import DAY, CustomerState, Windows
>>> from churnwatch.core.events import Event
>>> from churnwatch.core.priors import PopulationPriors
>>> from churnwatch.core.scoring import assess
>>> c = CustomerState(first_seen=0.0)
>>> for day in (0, 10, 20):
...     c.apply(Event("c1", "order", day * DAY, amount=20.0), Windows.default())
>>> c.apply(Event("c1", "support_ticket", 21 * DAY, severity=3.0), Windows.default())
>>> a = assess(c, 60 * DAY, ChurnwatchConfig(), PopulationPriors())
>>> sorted(reason_codes(c, a, 60 * DAY, ChurnwatchConfig()))
['order_overdue', 'service_problems']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from churnwatch.core.aggregates import CounterKey, WinbackCount
from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.customer import CustomerState
from churnwatch.core.playbooks import UNANSWERED_CHANNELS, Playbook, choose, in_holdout
from churnwatch.core.scoring import HEALTHY, SERVICE, TREND, Assessment, tier_name
from churnwatch.core.signals import DAY, MSG_SENT, OPENED, REPLIED, SENT, decay

#: Groups of a playbook's customers.
GROUPS = ("treated", "holdout")
#: Shard counters kept per playbook and group.
WINBACK_COUNTERS = ("assigned", "contacted", "recovered")

#: A customer is overdue when silent this many times their own mean gap between orders.
OVERDUE_FACTOR = 1.5


@dataclass(frozen=True, slots=True)
class Suggestion:
    """What to do next for one customer; ``holdout``: withheld (the customer is in the control
    group), so ``action``, ``channel`` and ``message`` are not shown."""

    playbook: str
    action: str
    channel: str
    message: str | None
    holdout: bool

    def as_dict(self) -> dict[str, object]:
        """As the API and the transition stream carry it (no action for a hold-out)."""
        if self.holdout:
            return {"playbook": self.playbook, "holdout": True}
        return {"playbook": self.playbook, "holdout": False, "action": self.action,
                "channel": self.channel, "message": self.message}


def reason_codes(state: CustomerState, assessment: Assessment, now: float,
                 config: ChurnwatchConfig) -> tuple[str, ...]:
    """The structured reasons playbooks match on (``churnwatch.core.playbooks.REASON_CODES``)."""
    codes: list[str] = []
    comps = assessment.components
    bought = state.purchases
    if (comps[SERVICE].confidence > 0 and comps[SERVICE].value < 70) \
            or state.service.tickets > 0.5:
        codes.append("service_problems")
    if bought.orders == 0:
        codes.append("never_ordered")
    elif bought.last_order is not None:
        silence_days = (now - bought.last_order) / DAY
        gap = bought.mean_gap_days()
        if gap is not None:
            if silence_days > max(OVERDUE_FACTOR * gap, 7.0):
                codes.append("order_overdue")
        else:
            inputs = assessment.inputs
            typical = inputs.population_gap_days if inputs is not None else 30.0
            if silence_days > typical:
                codes.append("no_repeat_order")
    if comps[TREND].confidence > 0 and comps[TREND].value < 60:
        codes.append("buying_less")
    half_life = config.engagement_half_life_days * DAY
    elapsed = now - state.engagement.ref
    for channel in UNANSWERED_CHANNELS:
        row = state.engagement.channels.get(channel)
        if row is None:
            continue
        sent = decay(row[SENT] + row[MSG_SENT], elapsed, half_life)
        answered = row[OPENED] + row[REPLIED]
        if sent >= 1.5 and answered < 0.15 * (row[SENT] + row[MSG_SENT]):
            codes.append(f"unanswered_{channel}")
    return tuple(codes)


def value_tier(state: CustomerState) -> str:
    """``high`` or ``standard``, as the worklist's filter says."""
    return "high" if state.high_value else "standard"


def days_since_order(state: CustomerState, now: float) -> int | None:
    """Whole days since the last order."""
    last = state.purchases.last_order
    return None if last is None else max(int((now - last) // DAY), 0)


def suggest(customer_id: str, state: CustomerState, assessment: Assessment, now: float,
            config: ChurnwatchConfig, tier: int | None = None) -> Suggestion | None:
    """The suggested next action for a customer in ``tier`` (default: their current tier), or
    ``None`` when no playbook applies. A customer whose open assignment is held out gets no
    other suggestion either, so the control group stays untouched."""
    tier = state.tier if tier is None else tier
    if tier < 0:
        return None
    open_assignment = state.outreach.get("playbook") if state.outreach else None
    if open_assignment is not None and state.outreach and state.outreach.get("holdout"):
        return Suggestion(str(open_assignment), "", "", None, True)
    segment = config.segment_label(state.segment)
    playbook = choose(config.playbooks, tier=tier_name(tier), segment=segment,
                      value_tier=value_tier(state),
                      codes=reason_codes(state, assessment, now, config))
    if playbook is None:
        return None
    return _suggestion(customer_id, state, tier, playbook, now, config)


def _suggestion(customer_id: str, state: CustomerState, tier: int, playbook: Playbook,
                now: float, config: ChurnwatchConfig) -> Suggestion:
    share = (playbook.holdout_share if playbook.holdout_share is not None
             else config.winback.holdout_share)
    held = in_holdout(customer_id, playbook.name, share)
    days = days_since_order(state, now)
    message = playbook.message({
        "customer_id": customer_id, "segment": config.segment_label(state.segment),
        "tier": tier_name(tier), "days_since_order": "" if days is None else days,
        "orders": state.purchases.orders})
    return Suggestion(playbook.name, playbook.action, playbook.channel, message, held)


def _count(counters: MutableMapping[CounterKey, float], what: str, playbook: str,
           holdout: bool) -> None:
    key = WinbackCount(what, playbook, GROUPS[1] if holdout else GROUPS[0])
    counters[key] = counters.get(key, 0.0) + 1.0


def track(customer_id: str, state: CustomerState, assessment: Assessment, now: float,
          old_tier: int, new_tier: int, config: ChurnwatchConfig,
          counters: MutableMapping[CounterKey, float]) -> Suggestion | None:
    """Advance the customer's win-back bookkeeping at a scoring (called by the engine with the
    tier before and after), counting into the shard's ``counters``. Returns the suggestion a
    transition record carries (``None`` when the tier did not change or nothing applies).

    Deterministic in its inputs, so a replayed batch repeats it exactly.
    """
    outreach = state.outreach
    window = config.winback.window_days * DAY
    if outreach is not None and outreach.get("playbook") is not None:
        playbook = str(outreach["playbook"])
        holdout = bool(outreach.get("holdout"))
        assigned_at = float(outreach.get("assigned_at", now))
        if outreach.get("contacted_at") is not None and not outreach.get("counted"):
            outreach["counted"] = True
            _count(counters, "contacted", playbook, holdout)
        last_order = state.purchases.last_order
        ordered = last_order is not None and last_order > assigned_at
        back = ordered or new_tier == HEALTHY
        recovered_at = float(last_order) if ordered and last_order is not None else now
        if back or now - assigned_at > window:
            if back and recovered_at - assigned_at <= window:
                _count(counters, "recovered", playbook, holdout)
            for key in ("playbook", "assigned_at", "holdout", "contacted_at", "counted"):
                outreach.pop(key, None)
            state.outreach = outreach or None
    if new_tier == old_tier or new_tier == HEALTHY:
        return None
    suggestion = suggest(customer_id, state, assessment, now, config, tier=new_tier)
    if suggestion is None:
        return None
    outreach = state.outreach
    if old_tier >= 0 and (outreach is None or outreach.get("playbook") is None):
        outreach = outreach if outreach is not None else {}
        outreach.update({"playbook": suggestion.playbook, "assigned_at": math.floor(now),
                         "holdout": suggestion.holdout})
        state.outreach = outreach
        _count(counters, "assigned", suggestion.playbook, suggestion.holdout)
    return suggestion


# -- statistics ----------------------------------------------------------------------------------

Z95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (``(0, 1)`` without trials).

    >>> [round(x, 3) for x in wilson_interval(8, 20)]
    [0.219, 0.613]
    """
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(centre - half, 0.0), min(centre + half, 1.0)


def newcombe_difference(k1: int, n1: int, k2: int, n2: int, z: float = Z95
                        ) -> tuple[float, float, float] | None:
    """The difference of two proportions ``k1/n1 - k2/n2`` with Newcombe's hybrid score interval
    (method 10, from the two Wilson intervals); ``None`` when a group is empty.

    >>> [round(x, 4) for x in newcombe_difference(56, 70, 48, 80)]  # Newcombe (1998), ex. 1
    [0.2, 0.0524, 0.3339]
    """
    if n1 <= 0 or n2 <= 0:
        return None
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, low, high


class CountedShard(Protocol):
    """What :func:`winback_report` reads of a shard: its counters (a
    :class:`churnwatch.core.records.ShardState` has them)."""

    @property
    def counters(self) -> Mapping[CounterKey, float]:
        """The shard's counters by typed key."""
        ...


def winback_report(shards: Sequence[CountedShard], config: ChurnwatchConfig
                   ) -> list[dict[str, Any]]:
    """Per configured playbook: customers assigned, contacted and recovered within the window,
    in the treated group and the hold-out, each rate with its Wilson interval, and the
    difference of the rates with Newcombe's interval (``None`` while a group is empty)."""
    counts: dict[WinbackCount, float] = {}
    for shard in shards:
        for key, value in shard.counters.items():
            if isinstance(key, WinbackCount):
                counts[key] = counts.get(key, 0.0) + value
    out = []
    for playbook in config.playbooks:
        entry: dict[str, Any] = {"playbook": playbook.name, "channel": playbook.channel}
        for group in GROUPS:
            numbers = {what: round(counts.get(WinbackCount(what, playbook.name, group), 0.0))
                       for what in WINBACK_COUNTERS}
            n, k = numbers["assigned"], numbers["recovered"]
            low, high = wilson_interval(k, n)
            entry[group] = {**numbers, "recovery_rate": k / n if n else None,
                            "interval": [round(low, 4), round(high, 4)] if n else None}
        diff = newcombe_difference(entry["treated"]["recovered"], entry["treated"]["assigned"],
                                   entry["holdout"]["recovered"], entry["holdout"]["assigned"])
        entry["uplift"] = None if diff is None else {
            "difference": round(diff[0], 4), "interval": [round(diff[1], 4), round(diff[2], 4)]}
        out.append(entry)
    return out
