"""Population priors learned from the stream itself.

Nothing here is tuned to a data set: the typical gap between orders, the usual response rate to
campaigns and messages, and the spend that marks the top value tier are all learned from the
events as they arrive, starting from weak defaults that the data quickly outweighs.

Each shard of the dataflow keeps its own :class:`PopulationPriors` (see docs/scoring.md), so that
what a shard computes depends only on the events it has seen, in order: the same input gives the
same state on one worker or on a cluster.

>>> p = PopulationPriors()
>>> for gap_days in (10, 20, 30):
...     p.observe_gap(gap_days * 86400.0)
>>> round(p.mean_gap_days(default_days=30.0, default_weight=0.0), 1)
20.0
"""

from __future__ import annotations

import math

_SPEND_BINS = 48  # log2-spaced: bin i holds spends in [2**(i/2 - 1), 2**((i+1)/2 - 1))


class PopulationPriors:
    """Sufficient statistics of the population, updated one event at a time.

    ``observe_gap`` records a completed gap between two consecutive orders of one customer;
    ``observe_engagement`` the decayed-free counts of outreach and answers; ``move_spend`` keeps
    a histogram of every customer's current spend so a top share can be located.
    """

    __slots__ = ("gap_sum_days", "gap_count", "sent", "responded", "spend_bins", "_floor")

    def __init__(self) -> None:
        self.gap_sum_days = 0.0
        self.gap_count = 0
        self.sent = 0.0
        self.responded = 0.0
        self.spend_bins = [0] * _SPEND_BINS
        # (top_share, floor) of the last spend_quantile_floor call: every scoring asks, the
        # histogram changes only when a customer's spend crosses a bin edge.
        self._floor: tuple[float, float] | None = None

    def observe_gap(self, gap_seconds: float) -> None:
        """Record a completed gap between two consecutive orders."""
        self.gap_sum_days += max(gap_seconds, 0.0) / 86400.0
        self.gap_count += 1

    def observe_engagement(self, sent: float, responded: float) -> None:
        """Record outreach sent and answers (opens, clicks, replies) received."""
        self.sent += sent
        self.responded += responded

    def mean_gap_days(self, default_days: float, default_weight: float) -> float:
        """The population's mean gap between orders, shrunk towards a default while data is thin."""
        return (default_days * default_weight + self.gap_sum_days) / (
            default_weight + self.gap_count) if default_weight + self.gap_count > 0 else \
            default_days

    def response_rate(self) -> float:
        """The population's share of outreach that gets an answer (0.25 until data arrives)."""
        return (self.responded + 0.25 * 20.0) / (self.sent + 20.0)

    def move_spend(self, old: float, new: float) -> None:
        """A customer's spend changed from ``old`` to ``new`` (``old`` < 0: a new customer)."""
        bins = self.spend_bins
        new_bin = _spend_bin(new)
        if old >= 0:
            old_bin = _spend_bin(old)
            if bins[old_bin] > 0:
                if old_bin == new_bin:
                    return  # out of a bin and back into it
                bins[old_bin] -= 1
        bins[new_bin] += 1
        self._floor = None

    def spend_quantile_floor(self, top_share: float) -> float:
        """The lowest spend inside the top ``top_share`` of customers (inf when no customers)."""
        cached = self._floor
        if cached is not None and cached[0] == top_share:
            return cached[1]
        floor = self._spend_quantile_floor(top_share)
        self._floor = (top_share, floor)
        return floor

    def _spend_quantile_floor(self, top_share: float) -> float:
        total = sum(self.spend_bins)
        if total == 0 or top_share <= 0:
            return math.inf
        wanted = top_share * total
        seen = 0
        for index in range(_SPEND_BINS - 1, -1, -1):
            seen += self.spend_bins[index]
            if seen >= wanted:
                return _bin_floor(index)
        return 0.0

    def to_wire(self) -> list[object]:
        """A compact msgpack-able form."""
        return [self.gap_sum_days, self.gap_count, self.sent, self.responded,
                list(self.spend_bins)]

    @classmethod
    def from_wire(cls, data: list[object] | None) -> PopulationPriors:
        """Inverse of :meth:`to_wire`; ``None`` gives empty priors."""
        priors = cls()
        if data:
            gap_sum, gap_count, sent, responded, bins = data
            priors.gap_sum_days = float(gap_sum)  # type: ignore[arg-type]
            priors.gap_count = int(gap_count)  # type: ignore[call-overload]
            priors.sent = float(sent)  # type: ignore[arg-type]
            priors.responded = float(responded)  # type: ignore[arg-type]
            priors.spend_bins = [int(b) for b in bins]  # type: ignore[attr-defined]
            priors._floor = None
        return priors


def _spend_bin(spend: float) -> int:
    if spend <= 0.5:
        return 0
    index = int(2.0 * (math.log2(spend) + 1.0))
    return min(max(index, 0), _SPEND_BINS - 1)


def _bin_floor(index: int) -> float:
    return 0.0 if index == 0 else 2.0 ** (index / 2.0 - 1.0)
