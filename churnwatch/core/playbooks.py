"""Playbooks: what customer success should do next for a customer, and who is held out.

A playbook says *when* (tiers, segments, value tiers, reason codes) and *what* (an action text, a
channel, an optional message template). The first playbook that matches a customer, by
``priority``, is the suggested next action. Playbooks match on structured reason codes
(:data:`REASON_CODES`, derived from the state by :func:`churnwatch.core.winback.reason_codes`),
never on the English reasons a person reads.

A stable share of the customers each playbook applies to is held out (:func:`in_holdout`): their
suggestion is withheld, and they are the control group that win-back is measured against
(``docs/worklist.md``).

The ``[playbooks.NAME]`` tables of a configuration are read and checked by
:func:`churnwatch.core.config.parse_playbooks`; this module knows no file.

>>> pb = (Playbook("call_vips", "Call them", "phone", tiers=frozenset({"at_risk"}),
...                value_tiers=frozenset({"high"})),)
>>> choose(pb, tier="at_risk", segment="fashion", value_tier="high", codes=()).name
'call_vips'
>>> choose(pb, tier="watch", segment="fashion", value_tier="high", codes=()) is None
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: The risk tiers by name (the same as ``churnwatch.core.config.TIERS``, which imports us).
TIER_NAMES = ("healthy", "watch", "at_risk", "churned")
#: The worklist's value tiers.
VALUE_TIER_NAMES = ("high", "standard")
#: Channels an engagement can go unanswered on (the event contract's message channels).
UNANSWERED_CHANNELS = ("whatsapp", "email", "sms", "chat")
#: Every reason code a playbook can match on; see :func:`churnwatch.core.winback.reason_codes`.
REASON_CODES = tuple(sorted(
    ("service_problems", "order_overdue", "no_repeat_order", "never_ordered", "buying_less")
    + tuple(f"unanswered_{c}" for c in UNANSWERED_CHANNELS)))
#: Names a message template may use.
TEMPLATE_FIELDS = ("customer_id", "segment", "tier", "days_since_order", "orders")
#: Channels an action can name.
ACTION_CHANNELS = ("phone", "whatsapp", "email", "sms", "chat", "letter", "visit")


@dataclass(frozen=True, slots=True)
class Playbook:
    """When a suggestion applies, and what it says.

    An empty condition matches everything; ``reasons`` match when the customer has any of them.

    >>> p = Playbook("p", "Call", "phone", tiers=frozenset({"at_risk"}))
    >>> p.matches("at_risk", "fashion", "standard", ())
    True
    """

    name: str
    action: str
    channel: str
    template: str | None = None
    tiers: frozenset[str] = frozenset({"watch", "at_risk", "churned"})
    segments: frozenset[str] | None = None
    value_tiers: frozenset[str] | None = None
    reasons: frozenset[str] | None = None
    priority: int = 100
    holdout_share: float | None = None

    def matches(self, tier: str, segment: str, value_tier: str, codes: Iterable[str]) -> bool:
        """Whether this playbook applies to a customer with these attributes."""
        if tier not in self.tiers:
            return False
        if self.segments is not None and segment not in self.segments:
            return False
        if self.value_tiers is not None and value_tier not in self.value_tiers:
            return False
        return self.reasons is None or not self.reasons.isdisjoint(codes)

    def message(self, fields: Mapping[str, object]) -> str | None:
        """The template filled in (``None`` without a template).

        >>> Playbook("p", "a", "whatsapp", template="Hi {customer_id}!").message(
        ...     {"customer_id": "c1"})
        'Hi c1!'
        """
        if self.template is None:
            return None
        return self.template.format_map({k: fields.get(k, "") for k in TEMPLATE_FIELDS})


@dataclass(frozen=True, slots=True)
class WinbackPolicy:
    """How win-back is measured: the hold-out share and the recovery window."""

    holdout_share: float = 0.1
    window_days: float = 30.0


def in_holdout(customer_id: str, playbook: str, share: float) -> bool:
    """Whether a customer is in a playbook's hold-out: a stable hash, the same in every process.

    >>> in_holdout("c1", "fix_service", 0.0), in_holdout("c1", "fix_service", 1.0)
    (False, True)
    >>> 1900 < sum(in_holdout(f"c{i}", "p", 0.2) for i in range(10_000)) < 2100
    True
    """
    if share <= 0.0:
        return False
    digest = hashlib.blake2b(f"{playbook}\x00{customer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < share


def choose(playbooks: Sequence[Playbook], *, tier: str, segment: str, value_tier: str,
           codes: Iterable[str]) -> Playbook | None:
    """The first matching playbook (``playbooks`` are kept sorted by priority)."""
    codes = tuple(codes)
    for playbook in playbooks:
        if playbook.matches(tier, segment, value_tier, codes):
            return playbook
    return None


#: Shipped defaults: fix open service problems first, personal outreach before discounts, a
#: different channel when one goes unanswered. ``docs/configuration.md`` lists them as TOML.
DEFAULT_PLAYBOOKS: tuple[Playbook, ...] = (
    Playbook("fix_service_first",
             "Fix the open service problem first: call, apologise, resolve the ticket; no offer "
             "until it is solved", "phone",
             reasons=frozenset({"service_problems"}), priority=10),
    Playbook("switch_from_whatsapp",
             "WhatsApp messages go unanswered: write an email or call instead", "email",
             template="Hello, we have not heard from you in a while - is everything all right "
                      "with your last order? Reply here and we will take care of it.",
             reasons=frozenset({"unanswered_whatsapp"}), priority=20),
    Playbook("switch_from_email",
             "Emails go unanswered: send a short personal WhatsApp message instead", "whatsapp",
             template="Hi! It has been {days_since_order} days since your last order - anything "
                      "we can help with?",
             reasons=frozenset({"unanswered_email", "unanswered_sms", "unanswered_chat"}),
             priority=30),
    Playbook("personal_call_high_value",
             "A personal call from the account owner: ask how things are, no discount",
             "phone", tiers=frozenset({"at_risk", "churned"}),
             value_tiers=frozenset({"high"}), priority=40),
    Playbook("personal_checkin",
             "Overdue against their own rhythm: a personal check-in message, no discount yet",
             "whatsapp",
             template="Hi! It has been {days_since_order} days since your last order - shall we "
                      "put together your usual?",
             tiers=frozenset({"watch", "at_risk"}),
             reasons=frozenset({"order_overdue", "no_repeat_order", "buying_less"}),
             priority=50),
    Playbook("winback_offer",
             "Lapsed after personal outreach: a win-back offer by email", "email",
             template="We miss you: here is 10% off your next order.",
             tiers=frozenset({"churned"}), priority=90),
)
