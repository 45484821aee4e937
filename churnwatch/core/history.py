"""A customer's tier history, compact: every tier change with its reasons as codes and numbers.

The reasons a transition carries on the stream are sentences of about 250 bytes; a customer's
stored history keeps, per change, what those sentences are made of: the time, the two tiers and
the cause, the scores in whole points, the chance of ordering in whole percent, and the
*evidence*: reason codes (:data:`REASONS`), each followed by its numbers. The words are rebuilt
from them when read (:func:`reason_words`), so a change a year old reads as well as one of
today, in about 12 bytes instead of 250.

The engine takes the evidence at the instant of the change (:func:`change_evidence`), the state
store keeps it in the customer's state (``CustomerState.history``, newest first), and the
worklist decodes it (:func:`decode_change`), also from the shorter records written before the
evidence existed.

>>> from churnwatch.core.config import ChurnwatchConfig
>>> from churnwatch.core.customer import CustomerState
>>> from churnwatch.core.events import Event
>>> from churnwatch.core.priors import PopulationPriors
>>> from churnwatch.core.scoring import assess, windows_of
>>> cfg = ChurnwatchConfig()
>>> c = CustomerState(first_seen=0.0)
>>> for day in (0, 21, 42, 63):
...     c.apply(Event("c1", "order", day * DAY, amount=30.0), windows=windows_of(cfg))
>>> now = 140 * DAY
>>> evidence = change_evidence(c, assess(c, now, cfg, PopulationPriors()), now, cfg, 1, 2)
>>> entry = encode_change(now, 1, 2, 61.0, 38.6, "silence", evidence)
>>> change = decode_change(entry)
>>> change.from_tier, change.to_tier, change.cause, change.old_score, change.new_score
('watch', 'at_risk', 'silence', 61.0, 39.0)
>>> reason_words(change, 180.0)[0].split("; ")[0]
'no order for 77 days, usually orders every 21 days (4 orders)'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from churnwatch.core.config import TIERS, ChurnwatchConfig
from churnwatch.core.customer import CustomerState
from churnwatch.core.scoring import ENGAGEMENT, SERVICE, TREND, Assessment
from churnwatch.core.signals import DAY, MSG_SENT, SENT, answers, decay

if TYPE_CHECKING:
    from churnwatch.core.records import TierTransition

__all__ = ["REASONS", "Reason", "TierChange", "change_evidence", "decode_change",
           "encode_change", "keep_history", "reason_words"]


@dataclass(frozen=True, slots=True)
class Reason:
    """One kind of reason: its name (as the API shows it), how many numbers follow its code,
    and its words with the numbers in braces."""

    name: str
    arity: int
    words: str


#: The reason codes of a tier change, by code (the position). Codes are never reused; a new one
#: is appended.
REASONS = (
    Reason("silent", 3, "no order for {0} days, usually orders every {1} days ({2} orders)"),
    Reason("one_order", 2, "one order, {0} days ago; customers typically reorder within {1} "
                           "days"),
    Reason("never_ordered", 1, "no order yet, first seen {0} days ago"),
    Reason("buying_less", 1, "buying less often lately: trend {0}/100 against their earlier "
                             "months"),
    Reason("unanswered", 3, "not answering on {channel}: about {2} answers to {1} recent "
                            "messages and campaigns"),
    Reason("service_problems", 3, "service problems: service {0}/100, {tickets} weighted "
                                  "support tickets recently{feedback}"),
    Reason("ordered_again", 3, "ordered again after {0} days, usually every {1} days ({2} "
                               "orders)"),
    Reason("first_order", 0, "placed a first order"),
    Reason("answering", 2, "answering again: about {1} answers to {0} recent messages and "
                           "campaigns"),
)
_CODE = {reason.name: code for code, reason in enumerate(REASONS)}

#: Channels as numbers in the evidence (a channel not listed is left out of it).
CHANNELS = ("email", "whatsapp", "sms", "push", "chat")
#: Below these a component is named among the problems, as the stream's reasons do (the trend
#: below 90, answers and service below 70 of 100).
TREND_PROBLEM, ENGAGEMENT_PROBLEM, SERVICE_PROBLEM = 90.0, 70.0, 70.0
#: A channel is unanswered with at least this many recent sends (decayed) and under this share
#: answered, as the playbooks' ``unanswered_*`` codes say.
UNANSWERED_SENDS, UNANSWERED_SHARE = 1.5, 0.15
#: Where the customer ordered within this many days of the change, an upgrade is explained by
#: that order.
ORDER_JUST_NOW_DAYS = 1.0
#: Without the model's typical gap between orders (no recency inputs), this many days.
TYPICAL_GAP_DAYS = 30.0

# The entry's second item: 32 + 16 x cause + 4 x from + to (32..63, one byte), which also tells
# it from the records written before the evidence, whose second item is a tier (0..3).
_TIERS_BASE = 32
_CAUSES = ("event", "silence")


def _days(seconds: float) -> int:
    return max(round(seconds / DAY), 0)


def change_evidence(state: CustomerState, assessment: Assessment, now: float,
                    config: ChurnwatchConfig, from_tier: int, to_tier: int,
                    waited_days: float | None = None) -> tuple[int, ...]:
    """The evidence of a tier change at ``now``: the chance of ordering in whole percent, then
    each reason's code and numbers (whole, never negative). A downgrade (or a change within a
    tier's boundaries) is explained by the problems, an upgrade by the order that lifted it,
    or the answers. ``waited_days``: the wait before the latest order, when the engine knows
    it."""
    comps = assessment.components
    bought = state.purchases
    half_life = config.engagement_half_life_days * DAY
    out = [round(100 * assessment.return_probability)]

    def add(name: str, *numbers: float) -> None:
        out.append(_CODE[name])
        out.extend(max(round(n), 0) for n in numbers)

    silence = (now - bought.last_order) / DAY if bought.last_order is not None else None
    gap = bought.mean_gap_days()
    if 0 <= to_tier < from_tier:
        if silence is not None and silence < ORDER_JUST_NOW_DAYS:
            if bought.orders == 1:
                add("first_order")
            else:
                usual = gap if gap is not None else 0.0
                if waited_days is not None and bought.orders > 2:
                    span = (usual * (bought.orders - 1)) - waited_days
                    usual = max(span, 0.0) / (bought.orders - 2)
                add("ordered_again", waited_days if waited_days is not None else usual, usual,
                    bought.orders)
        engagement = comps[ENGAGEMENT]
        if engagement.confidence > 0 and engagement.value >= ENGAGEMENT_PROBLEM:
            totals = state.engagement.totals(now, half_life)
            add("answering", totals.sent, totals.responses)
        return tuple(out)
    if bought.orders == 0 or silence is None:
        add("never_ordered", (now - state.first_seen) / DAY)
    elif gap is None:
        inputs = assessment.inputs
        add("one_order", silence,
            inputs.population_gap_days if inputs is not None else TYPICAL_GAP_DAYS)
    else:
        add("silent", silence, gap, bought.orders)
    if comps[TREND].confidence > 0 and comps[TREND].value < TREND_PROBLEM:
        add("buying_less", comps[TREND].value)
    if comps[ENGAGEMENT].confidence > 0 and comps[ENGAGEMENT].value < ENGAGEMENT_PROBLEM:
        for number, channel in enumerate(CHANNELS):
            row = state.engagement.channels.get(channel)
            if row is None:
                continue
            elapsed = now - state.engagement.ref
            sent = decay(row[SENT] + row[MSG_SENT], elapsed, half_life)
            answered = decay(answers(row), elapsed, half_life)
            if sent >= UNANSWERED_SENDS and answered < UNANSWERED_SHARE * sent:
                add("unanswered", number, sent, answered)
    if comps[SERVICE].confidence > 0 and comps[SERVICE].value < SERVICE_PROBLEM:
        feedback = state.service.mean_feedback()
        add("service_problems", comps[SERVICE].value, 10 * state.service.tickets,
            0 if feedback is None else 1 + 10 * feedback)
    return tuple(out)


def encode_change(at: float, from_tier: int, to_tier: int, old_score: float | None,
                  new_score: float, cause: str, evidence: Sequence[int]) -> list[object]:
    """One tier change as stored: ``[at, tiers and cause, new score, old score, *evidence]``,
    the time in whole seconds (the customer state stores it relative to its newest event), the
    scores in whole points (the old one ``None`` when unknown).

    >>> encode_change(1_700_000_000.5, 1, 2, 41.04, 28.96, "silence", (15, 0, 75, 21, 4))
    [1700000000, 54, 29, 41, 15, 0, 75, 21, 4]
    """
    tiers = _TIERS_BASE + 16 * _CAUSES.index(cause) + 4 * from_tier + to_tier
    return [math.floor(at), tiers, round(new_score),
            None if old_score is None else round(old_score), *evidence]


def history_entry(transition: TierTransition) -> list[object]:
    """A transition as a compact history record (:func:`encode_change`).

    >>> from churnwatch.core.records import TierTransition
    >>> history_entry(TierTransition("c1", "unassigned", "watch", "at_risk", 41.04, 28.96,
    ...                              1_700_000_000.5, ("no order for 90 days",), "silence",
    ...                              None, (12, 0, 90, 21, 4)))
    [1700000000, 54, 29, 41, 12, 0, 90, 21, 4]
    """
    return encode_change(transition.at, TIERS.index(transition.from_tier),
                         TIERS.index(transition.to_tier), transition.old_score,
                         transition.new_score, transition.cause, transition.evidence)


@dataclass(frozen=True, slots=True)
class TierChange:
    """A stored tier change, decoded. ``chance`` (percent) and ``reasons`` (code name and
    numbers) are ``None`` and empty for a record written before the evidence was kept."""

    at: float
    from_tier: str
    to_tier: str
    old_score: float | None
    new_score: float
    cause: str
    chance: int | None
    reasons: tuple[tuple[str, tuple[int, ...]], ...]


def decode_change(entry: Sequence[Any]) -> TierChange:
    """Inverse of :func:`encode_change`; also reads the records written before the evidence
    (``[at, from, to, old score x 10 or None, new score x 10, cause?]``, tiers as indexes into
    ``TIERS``, cause 1 for silence), whose reasons are unknown.

    >>> decode_change([1700000000, 1, 2, 410, 290, 1])
    TierChange(at=1700000000.0, from_tier='watch', to_tier='at_risk', old_score=41.0, \
new_score=29.0, cause='silence', chance=None, reasons=())
    """
    at = float(entry[0])
    code = entry[1]
    if isinstance(code, int) and code >= _TIERS_BASE:
        packed = code - _TIERS_BASE
        from_tier, to_tier = (packed >> 2) & 3, packed & 3
        cause = _CAUSES[packed >> 4 & 1]
        new, old = entry[2], entry[3]
        reasons: list[tuple[str, tuple[int, ...]]] = []
        rest = list(entry[5:])
        while rest:
            number = rest.pop(0)
            if not isinstance(number, int) or not 0 <= number < len(REASONS):
                break  # a code of a newer version: what follows cannot be read
            reason = REASONS[number]
            reasons.append((reason.name, tuple(rest[:reason.arity])))
            del rest[:reason.arity]
        return TierChange(at, TIERS[from_tier], TIERS[to_tier],
                          None if old is None else float(old), float(new), cause,
                          entry[4] if len(entry) > 4 else None, tuple(reasons))
    _, legacy_from, legacy_to, old, new, *rest = entry
    legacy_cause = (_CAUSES[rest[0]] if rest and rest[0] in (0, 1) else
                    str(rest[0]) if rest else "event")
    return TierChange(at, _tier_of(legacy_from), _tier_of(legacy_to),
                      None if old is None else old / 10, new / 10, legacy_cause, None, ())


def _tier_of(code: object) -> str:
    return TIERS[code] if isinstance(code, int) and 0 <= code < len(TIERS) else str(code)


def reason_words(change: TierChange, horizon_days: float) -> list[str]:
    """The reasons of a change in words, rebuilt from its codes and numbers; the chance of
    ordering within ``horizon_days`` joins the first (or stands alone). Empty for a record
    without evidence.

    >>> change = decode_change(encode_change(0, 2, 3, 30, 12, "silence",
    ...                                      (9, 1, 200, 35, 4, 0, 4, 0)))
    >>> reason_words(change, 180.0)
    ['one order, 200 days ago; customers typically reorder within 35 days; chance of ordering \
within 180 days 9%', 'not answering on email: about 0 answers to 4 recent messages and campaigns']
    """
    if change.chance is None:
        return []
    out = []
    for name, numbers in change.reasons:
        reason = REASONS[_CODE[name]]
        if len(numbers) < reason.arity:
            continue  # cut short: not worth guessing
        extra: dict[str, str] = {}
        if name == "unanswered":
            extra["channel"] = CHANNELS[numbers[0]] if numbers[0] < len(CHANNELS) else "?"
        if name == "service_problems":
            extra["tickets"] = f"{numbers[1] / 10:.1f}"
            extra["feedback"] = (f", feedback {(numbers[2] - 1) / 10:.1f}/10" if numbers[2]
                                 else "")
        text = reason.words.format(*numbers, **extra)
        if name == "silent" and numbers[0] < 1:
            text = text.replace("no order for 0 days", "ordered today")
        out.append(text)
    chance = f"chance of ordering within {horizon_days:.0f} days {change.chance}%"
    if out:
        out[0] = f"{out[0]}; {chance}"
    else:
        out.append(chance)
    return out


def keep_history(history: list[list[Any]], newest_at: float, keep_days: float,
                 keep_at_least: int) -> list[list[Any]]:
    """The changes to keep (newest first): every one within ``keep_days`` of ``newest_at``, and
    the ``keep_at_least`` newest whatever their age.

    >>> keep_history([[300 * DAY], [100 * DAY], [-200 * DAY]], 300 * DAY, 365, 1)
    [[25920000.0], [8640000.0]]
    """
    oldest = newest_at - keep_days * DAY
    return [entry for n, entry in enumerate(history)
            if n < keep_at_least or float(entry[0]) >= oldest]
