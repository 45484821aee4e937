"""The signals a customer's state is made of: one small class per kind of evidence.

:class:`churnwatch.core.customer.CustomerState` holds one of each and hands every event to the
one it concerns:

- :class:`Purchases`: purchase occasions, first and last order, spend and refunds (orders and
  refunds); read by the recency model, the reasons, win-back and every customer view.
- :class:`PurchaseTrend`: decayed purchase frequency and value over a short and a long
  half-life (orders); read by the trend component.
- :class:`Engagement`: decayed campaign and message counters per channel (campaign and message
  events); read by the engagement component, the reasons and win-back's unanswered channels.
- :class:`Service`: decayed support tickets and feedback (tickets and feedback); read by the
  service component and the reasons.

Windows are exponentially decayed counters (a half-life instead of a hard edge): constant memory,
one multiply per update, and the result does not depend on the order events arrive in, so a late
event is applied exactly as if it had come on time. Every signal keeps its counters "as of" one
reference time (the newest event it saw) and decays them to any later instant on read. The
half-lives (:class:`Windows`) come from the configuration, so they are passed to ``update`` and
to the readings instead of being stored with every customer.

Like river's statistics (``river.stats``), each class has ``update`` and readings, and its
fields are public for the stored form (``CustomerState.to_wire``), which they map onto one to
one. Nothing here reads the clock: every instant is an argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from churnwatch.core import events as ev

LN2 = math.log(2.0)
#: Seconds in a day: event times are epoch seconds, windows and horizons are days. The one
#: definition; every module that converts imports it from here.
DAY = 86400.0

#: Per-channel engagement counters (:attr:`Engagement.channels`), in this order.
SENT, OPENED, CLICKED, MSG_SENT, REPLIED = range(5)
#: How much of an answer an opened campaign and a click are: a campaign opened and clicked is
#: one whole answer, as a reply to a message is; an open alone says less than a click.
OPEN_ANSWER = 0.6
CLICK_ANSWER = 0.4

#: The counter each engagement event type adds to.
ENGAGEMENT_SLOT = {
    ev.CAMPAIGN_SENT: SENT,
    ev.CAMPAIGN_OPENED: OPENED,
    ev.CAMPAIGN_CLICKED: CLICKED,
    ev.MESSAGE_SENT: MSG_SENT,
    ev.MESSAGE_REPLIED: REPLIED,
}


@dataclass(frozen=True, slots=True)
class Windows:
    """Half-lives of the decayed windows, in seconds."""

    trend_short: float
    trend_long: float
    engagement: float
    service: float

    @classmethod
    def default(cls) -> Windows:
        """60 and 365 days for the trend, 90 days for engagement and service."""
        return cls(60 * DAY, 365 * DAY, 90 * DAY, 90 * DAY)


def decay(value: float, elapsed: float, half_life: float) -> float:
    """``value`` decayed over ``elapsed`` seconds; negative elapsed does not grow it.

    >>> decay(8.0, 2 * 86400.0, 86400.0)
    2.0
    """
    if elapsed <= 0.0 or value == 0.0:
        return value
    return value * math.exp(-LN2 * elapsed / half_life)


def answers(counters: list[float]) -> float:
    """The answers in one channel's counters (:attr:`Engagement.channels`): opens and clicks
    weighted, replies, at most one per send.

    >>> answers([2.0, 1.0, 1.0, 1.0, 3.0])
    2.0
    """
    opened = OPEN_ANSWER * counters[OPENED] + CLICK_ANSWER * counters[CLICKED]
    return min(counters[SENT], opened) + min(counters[MSG_SENT], counters[REPLIED])


def first_basket_after(basket: int | None, first_day: int | None, day: int, amount: float
                       ) -> int | None:
    """The first basket (whole cents of the first order day; ``None``: unknown) after an order
    of ``amount`` on ``day``, given the first order day so far (``None``: no order yet). The
    customer's state and the shard's buyer sample both keep it this way, so what the sample
    learns from applies to the customers as they are stored. Whatever the arrival order, it
    ends as the sum of the earliest day's orders.

    >>> first_basket_after(None, None, 100, 12.5), first_basket_after(1250, 100, 100, 2.0)
    (1250, 1450)
    >>> first_basket_after(1450, 100, 101, 9.0), first_basket_after(1450, 100, 99, 9.0)
    (1450, 900)
    >>> first_basket_after(None, 100, 100, 2.0) is None  # unknown stays unknown
    True
    """
    cents = round(max(amount, 0.0) * 100.0)
    if first_day is None or day < first_day:
        return cents
    if day == first_day and basket is not None:
        return basket + cents
    return basket


def _add(value: float, ref: float, ts: float, amount: float, half_life: float
         ) -> tuple[float, float]:
    """Add ``amount`` at time ``ts`` to a counter kept as of ``ref``; returns (value, ref).

    A late amount (``ts`` before ``ref``) is decayed to ``ref`` instead of moving it, so the
    counter is the same whatever order the amounts came in.
    """
    if ts >= ref:
        return decay(value, ts - ref, half_life) + amount, ts
    return value + decay(amount, ref - ts, half_life), ref


class Signal:
    """What the signals share: equality and a representation by their fields (for tests and
    debugging; a signal is mutable, so it has no hash)."""

    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, name) == getattr(other, name) for name in self.__slots__)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({inner})"


class Purchases(Signal):
    """Purchase occasions, the first and last order, spend and refunds.

    Order lines at the instant of the first or the last order (the lines of one basket,
    same-day purchases in day-resolution logs) are one purchase occasion: they add value, not
    frequency. Refunds lower the spend, never below 0.

    >>> p = Purchases()
    >>> p.update(ev.Event("c1", "order", 0.0, amount=20.0))
    >>> p.update(ev.Event("c1", "order", 0.0, amount=5.0))        # same basket
    >>> p.update(ev.Event("c1", "order", 30 * DAY, amount=40.0))
    >>> p.update(ev.Event("c1", "refund", 31 * DAY, amount=15.0))
    >>> p.orders, p.spend, p.refunds, p.mean_gap_days(), p.basket()
    (2, 50.0, 15.0, 30.0, 25.0)
    """

    __slots__ = ("orders", "first_order", "last_order", "spend", "refunds", "first_basket")

    def __init__(self, orders: int = 0, first_order: float | None = None,
                 last_order: float | None = None, spend: float = 0.0,
                 refunds: float = 0.0, first_basket: int | None = None) -> None:
        self.orders = orders
        self.first_order = first_order
        self.last_order = last_order
        self.spend = spend
        self.refunds = refunds
        # What the orders of the first order day came to, in whole cents (the buyer sample
        # keeps the same; None before the first order, or for a customer stored before it was).
        self.first_basket = first_basket

    def is_new_occasion(self, ts: float) -> bool:
        """Whether an order at ``ts`` would be a purchase occasion of its own (not a line of
        the first or the last one)."""
        return ts not in (self.first_order, self.last_order)

    def update(self, event: ev.Event) -> None:
        """Fold an ``order`` or a ``refund`` in (other types are not purchases: ignored)."""
        ts = event.ts
        if event.type == ev.ORDER:
            self.first_basket = first_basket_after(
                self.first_basket,
                None if self.first_order is None else math.floor(self.first_order / DAY),
                math.floor(ts / DAY), event.amount)
            self.orders += 1 if self.is_new_occasion(ts) else 0
            self.spend += event.amount
            if self.first_order is None or ts < self.first_order:
                self.first_order = ts
            if self.last_order is None or ts > self.last_order:
                self.last_order = ts
        elif event.type == ev.REFUND:
            self.refunds += event.amount
            self.spend = max(self.spend - event.amount, 0.0)

    def basket(self) -> float | None:
        """What the first order day's orders came to (``None`` before the first order, or
        unknown): what the buyer sample keeps of its customers, whose matured outcomes teach
        the shard whether it says anything of a return."""
        return None if self.first_basket is None else self.first_basket / 100.0

    def mean_gap_days(self) -> float | None:
        """The customer's own mean gap between purchase occasions, in days (``None`` before a
        repeat)."""
        if self.orders < 2 or self.first_order is None or self.last_order is None:
            return None
        return (self.last_order - self.first_order) / DAY / (self.orders - 1)

    def tenure(self) -> float | None:
        """Seconds from the first to the last order (``None`` before the first)."""
        if self.first_order is None or self.last_order is None:
            return None
        return self.last_order - self.first_order


class TrendRates(NamedTuple):
    """Purchase occasions and value per second, over the short and the long window."""

    orders_short: float
    orders_long: float
    value_short: float
    value_long: float


class PurchaseTrend(Signal):
    """Decayed purchase frequency and value over a short and a long half-life, as of ``ref``
    (the newest order).

    ``update`` adds an order: ``occasion`` is 1 for a new purchase occasion, 0 for another line
    of one (see :meth:`Purchases.is_new_occasion`). :meth:`rates` reads the windows as rates,
    corrected for a history shorter than the window, so a steady buyer has about equal short
    and long rates whatever their age (the windows are read at an order, which lifts the
    short one a little), and one who slowed down a short rate below the long one.

    >>> w = Windows.default()
    >>> t = PurchaseTrend()
    >>> for day in range(0, 400, 20):
    ...     t.update(day * DAY, 1.0, 30.0, w)
    >>> r = t.rates(380 * DAY, w.trend_short, w.trend_long)
    >>> round(r.orders_short / r.orders_long, 2), round(r.value_short / r.value_long, 2)
    (1.06, 1.06)
    >>> for day in range(440, 600, 60):                          # now every 60 days
    ...     t.update(day * DAY, 1.0, 30.0, w)
    >>> r = t.rates(560 * DAY, w.trend_short, w.trend_long)
    >>> round(r.orders_short / r.orders_long, 2)
    0.73
    """

    __slots__ = ("ord_short", "ord_long", "val_short", "val_long", "ref")

    def __init__(self, ord_short: float = 0.0, ord_long: float = 0.0, val_short: float = 0.0,
                 val_long: float = 0.0, ref: float = 0.0) -> None:
        self.ord_short = ord_short
        self.ord_long = ord_long
        self.val_short = val_short
        self.val_long = val_long
        self.ref = ref

    def update(self, ts: float, occasion: float, amount: float, windows: Windows) -> None:
        """Add an order line at ``ts``: ``occasion`` to the frequency, ``amount`` to the
        value."""
        ref = self.ref
        self.ord_short, _ = _add(self.ord_short, ref, ts, occasion, windows.trend_short)
        self.ord_long, _ = _add(self.ord_long, ref, ts, occasion, windows.trend_long)
        self.val_short, _ = _add(self.val_short, ref, ts, amount, windows.trend_short)
        self.val_long, self.ref = _add(self.val_long, ref, ts, amount, windows.trend_long)

    def rates(self, tenure: float, short_half_life: float, long_half_life: float
              ) -> TrendRates:
        """The windows as rates at ``ref``, for a customer ordering for ``tenure`` seconds (the
        first to the last order; positive): each window divided by what it holds for one
        occasion a second over that tenure."""
        short = short_half_life * (1.0 - math.exp(-LN2 * tenure / short_half_life))
        long = long_half_life * (1.0 - math.exp(-LN2 * tenure / long_half_life))
        return TrendRates(self.ord_short / short, self.ord_long / long,
                          self.val_short / short, self.val_long / long)


class EngagementTotals(NamedTuple):
    """Decayed engagement over every channel."""

    sent: float  #: campaigns and messages sent
    responses: float  #: answers (opens and clicks weighted, replies), at most one per send
    campaigns: float  #: campaigns sent
    messages: float  #: messages sent


class Engagement(Signal):
    """Decayed campaign and message counters per channel, as of ``ref`` (the newest
    engagement event).

    ``channels`` maps a channel to its counters ``[sent, opened, clicked, message sent,
    replied]`` (indexes :data:`SENT` ... :data:`REPLIED`).

    >>> half_life = 90 * DAY
    >>> e = Engagement()
    >>> e.update("email", "campaign_sent", 0.0, half_life)
    >>> e.update("email", "campaign_opened", 0.0, half_life)
    >>> e.update("whatsapp", "message_sent", 90 * DAY, half_life)
    >>> e.totals(90 * DAY, half_life)
    EngagementTotals(sent=1.5, responses=0.3, campaigns=0.5, messages=1.0)
    """

    __slots__ = ("channels", "ref")

    def __init__(self, channels: dict[str, list[float]] | None = None, ref: float = 0.0
                 ) -> None:
        self.channels: dict[str, list[float]] = {} if channels is None else channels
        self.ref = ref

    def update(self, channel: str, kind: str, ts: float, half_life: float) -> None:
        """Count one event of type ``kind`` (a key of :data:`ENGAGEMENT_SLOT`) on
        ``channel``."""
        slot = ENGAGEMENT_SLOT[kind]
        counters = self.channels.get(channel)
        if counters is None:
            counters = self.channels[channel] = [0.0] * 5
        if ts > self.ref:
            elapsed = ts - self.ref
            for row in self.channels.values():
                for i in range(5):
                    row[i] = decay(row[i], elapsed, half_life)
            self.ref = ts
            counters[slot] += 1.0
        else:
            counters[slot] += decay(1.0, self.ref - ts, half_life)

    def totals(self, at: float, half_life: float) -> EngagementTotals:
        """Sends and answers over every channel, decayed to ``at``."""
        sent = responses = campaigns = messages = 0.0
        elapsed = at - self.ref
        for row in self.channels.values():
            campaigns += row[SENT]
            messages += row[MSG_SENT]
            sent += row[SENT] + row[MSG_SENT]
            responses += answers(row)
        return EngagementTotals(decay(sent, elapsed, half_life),
                                decay(responses, elapsed, half_life),
                                decay(campaigns, elapsed, half_life),
                                decay(messages, elapsed, half_life))


class Service(Signal):
    """Decayed support tickets (weighted by severity) and feedback scores (0..10), as of
    ``ref`` (the newest ticket or feedback).

    >>> half_life = 90 * DAY
    >>> s = Service()
    >>> s.update(0.0, half_life, tickets=2.0)
    >>> s.update(90 * DAY, half_life, feedback=8.0)
    >>> s.update(0.0, half_life, feedback=2.0)                  # late: weighs half
    >>> s.tickets, s.mean_feedback()
    (1.0, 6.0)
    """

    __slots__ = ("tickets", "fb_sum", "fb_weight", "ref")

    def __init__(self, tickets: float = 0.0, fb_sum: float = 0.0, fb_weight: float = 0.0,
                 ref: float = 0.0) -> None:
        self.tickets = tickets
        self.fb_sum = fb_sum
        self.fb_weight = fb_weight
        self.ref = ref

    def update(self, ts: float, half_life: float, tickets: float = 0.0,
               feedback: float | None = None) -> None:
        """Add ``tickets`` (a severity) and, when given, a ``feedback`` score at ``ts``."""
        if ts > self.ref:
            elapsed = ts - self.ref
            self.tickets = decay(self.tickets, elapsed, half_life)
            self.fb_sum = decay(self.fb_sum, elapsed, half_life)
            self.fb_weight = decay(self.fb_weight, elapsed, half_life)
            self.ref = ts
            weight = 1.0
        else:
            weight = decay(1.0, self.ref - ts, half_life)
        self.tickets += tickets * weight
        if feedback is not None:
            self.fb_sum += feedback * weight
            self.fb_weight += weight

    def mean_feedback(self) -> float | None:
        """The decay-weighted mean feedback score (0..10), ``None`` without any."""
        return self.fb_sum / self.fb_weight if self.fb_weight > 0 else None
