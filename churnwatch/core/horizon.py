"""The horizon a segment's chances are about, learned from its own reorders.

A grocery's customers reorder within weeks, a fashion shop's within months: "will this customer
order again within 180 days" splits nobody in the first and everybody in the second. Where a
segment has no configured ``horizon_days``, its horizon is the gap within which
``REORDER_SHARE`` of its repeat orders come after the order before them (at least
``MEDIAN_MULTIPLE`` times the median gap: in a shop of clockwork buyers the two coincide, and a
customer on their usual cadence should have three chances to order, not one), rounded up
to a step of :data:`HORIZON_STEPS` (weeks, then months) and kept until the learned gap leaves
the band ``[HOLD_BELOW, HOLD_ABOVE]`` times the horizon in force, so tiers do not move with
every refit.

>>> gaps = ReorderGaps()
>>> for day in range(1, 25):
...     for _ in range(10):
...         gaps.update(float(day))
>>> gaps.count, round(gaps.quantile(0.5), 1)
(240, 12.4)
>>> learned_horizon(gaps, current=None)  # three median gaps, 37 days, rounded up
42.0
>>> learned_horizon(gaps, current=35.0)  # 37 days lies within the band around 35: kept
35.0
>>> describe_within(21.0), describe_within(91.0), describe_within(365.0)
('3 weeks', '3 months', 'a year')
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: The share of repeat orders that come within the horizon.
REORDER_SHARE = 0.9
#: The horizon is at least this many median gaps.
MEDIAN_MULTIPLE = 3.0
#: Fewest repeat orders (gaps) to learn a horizon from.
MIN_GAPS = 200
#: The horizons a segment may learn, in days: weeks up to ten weeks, then months.
HORIZON_STEPS = (7.0, 14.0, 21.0, 28.0, 35.0, 42.0, 49.0, 56.0, 63.0, 70.0, 91.0, 120.0,
                 150.0, 180.0, 210.0, 240.0, 270.0, 300.0, 365.0)
#: A learned horizon is kept while the learned gap stays within these multiples of it.
HOLD_BELOW, HOLD_ABOVE = 0.75, 1.25
#: Histogram bins per doubling of the gap (bin ``i`` holds gaps in ``[2**(i/4), 2**((i+1)/4))``
#: days; gaps under a day in bin 0), up to ``2**(_BINS/4)`` days.
_PER_DOUBLING = 4
_BINS = 44


class ReorderGaps:
    """A histogram of the gaps between consecutive orders of one customer, over a segment.

    >>> g = ReorderGaps()
    >>> g.update(3.0); g.update(30.0)
    >>> g.count, ReorderGaps.from_wire(g.to_wire()).bins == g.bins
    (2, True)
    """

    __slots__ = ("bins",)

    def __init__(self, bins: Sequence[int] | None = None) -> None:
        self.bins = list(bins) if bins is not None else [0] * _BINS

    @property
    def count(self) -> int:
        """How many gaps were recorded."""
        return sum(self.bins)

    def update(self, gap_days: float) -> None:
        """Record one gap (days between an order and the customer's order before it)."""
        index = 0 if gap_days < 1.0 else int(_PER_DOUBLING * math.log2(gap_days)) + 1
        self.bins[min(max(index, 0), _BINS - 1)] += 1

    def merged(self, other: ReorderGaps) -> ReorderGaps:
        """Both histograms added."""
        return ReorderGaps([a + b for a, b in zip(self.bins, other.bins, strict=True)])

    def quantile(self, share: float) -> float:
        """The gap (days) below which ``share`` of the recorded gaps lie, interpolated
        within its bin (``nan`` when empty)."""
        total = self.count
        if total == 0:
            return math.nan
        wanted = share * total
        seen = 0.0
        for index, count in enumerate(self.bins):
            if count and seen + count >= wanted:
                low, high = _edges(index)
                return low + (high - low) * (wanted - seen) / count
            seen += count
        return _edges(_BINS - 1)[1]

    def to_wire(self) -> list[int]:
        """A compact msgpack-able form (trailing empty bins dropped)."""
        end = len(self.bins)
        while end and not self.bins[end - 1]:
            end -= 1
        return self.bins[:end]

    @classmethod
    def from_wire(cls, data: Sequence[int]) -> ReorderGaps:
        """Inverse of :meth:`to_wire`."""
        bins = [int(v) for v in data][:_BINS]
        return cls(bins + [0] * (_BINS - len(bins)))


def _edges(index: int) -> tuple[float, float]:
    """The gaps (days) bin ``index`` spans."""
    if index == 0:
        return 0.0, 1.0
    return 2.0 ** ((index - 1) / _PER_DOUBLING), 2.0 ** (index / _PER_DOUBLING)


def learned_horizon(gaps: ReorderGaps, current: float | None) -> float | None:
    """The horizon ``gaps`` call for: the ``REORDER_SHARE`` quantile rounded up to a step,
    or ``current`` while the quantile stays within its band (``None``, or ``current``, with
    fewer than ``MIN_GAPS`` gaps)."""
    if gaps.count < MIN_GAPS:
        return current
    gap = max(gaps.quantile(REORDER_SHARE), MEDIAN_MULTIPLE * gaps.quantile(0.5))
    if current is not None and HOLD_BELOW * current <= gap <= HOLD_ABOVE * current:
        return current
    return next((step for step in HORIZON_STEPS if step >= gap), HORIZON_STEPS[-1])


def describe_within(days: float) -> str:
    """A horizon in words: ``3 weeks``, ``3 months``, ``a year``."""
    if days >= 360.0:
        return "a year"
    if days <= 70.0 and days % 7.0 == 0.0:
        weeks = round(days / 7.0)
        return "a week" if weeks == 1 else f"{weeks} weeks"
    if days >= 85.0:
        return f"{round(days / 30.4)} months"
    return f"{days:.0f} days"
