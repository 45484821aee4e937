"""Population priors learned from the stream itself.

Nothing here is tuned to a data set: the buyer model's population parameters (how purchase rates
vary across customers, how the chance of leaving falls with every order, how much to trust old
purchases), the calibration of its probability, the typical gap between orders, the usual
response rate to campaigns and messages, and the spend that marks the top value tier are all
learned from the events as they arrive, starting from weak defaults that the data outweighs.

The buyer model is fitted on a sample of the shard's buyers: the ``SAMPLE_SIZE`` customers whose
id hashes lowest (a bottom-k sample, so which customers are in it depends only on who ordered,
never on arrival order or batching), each kept as their first order day, their most recent
``KEPT_DAYS`` order days and a count of the older ones, with what they spent on their first
order day (their first basket, in whole cents). The engine refits when the shard's
watermark passes the next refit day (:meth:`PopulationPriors.refit_due`), so a refit happens at
the same event on one worker or many.

Each shard of the dataflow keeps its own :class:`PopulationPriors` (see docs/scoring.md), so that
what a shard computes depends only on the events it has seen, in order: the same input gives the
same state on one worker or on a cluster.

>>> p = PopulationPriors()
>>> for gap_days in (10, 20, 30):
...     p.observe_gap(gap_days * 86400.0)
>>> from churnwatch.core.buyers import BuyerModel
>>> p.refit(0.0, [180.0], BuyerModel())  # scores read the shop's rates as of the last refit
>>> round(p.mean_gap_days(default_days=30.0, default_weight=0.0), 1)
20.0
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from churnwatch.core.buyers import (
    BuyerModel,
    CalibrationMap,
    ValueEvidence,
    choose_evidence_weight,
    choose_value_coefficient,
    fit_buyer_model,
    fit_calibration,
    p_order_within_many,
    shifted_many,
)
from churnwatch.core.horizon import ReorderGaps, learned_horizon
from churnwatch.core.signals import DAY, first_basket_after

#: Customers kept in a shard's buyer sample.
SAMPLE_SIZE = 8192
#: Most recent order days kept per sampled customer (older ones are only counted).
KEPT_DAYS = 12
#: Fewest sampled customers worth a fit; fewer keep the defaults.
MIN_FIT = 30
#: Fewest sampled customers with a repeat order before the first fit: without repeats the
#: model cannot tell a slow buyer from one who left (both explain the silence), and a fit on a
#: history shorter than the usual gap reads everyone as gone.
MIN_REPEATERS = 10
#: Fewest matured outcomes for an evidence weight or a calibration map.
MIN_OUTCOMES = 100
#: Fewest matured outcomes with a known first basket for a value coefficient: the
#: likelihood-ratio test behind it is an approximation that small windows do not honour (on
#: 111 outcomes of a simulated shop whose baskets say nothing, one refit found -0.3 "at 1 %").
MIN_VALUE_OUTCOMES = 500
#: Wire format version of :class:`PopulationPriors`.
WIRE_VERSION = 5
#: The key of the reorder gaps of every segment together (:attr:`PopulationPriors.horizons`).
ALL_SEGMENTS = "*"
_SPEND_BINS = 48  # log2-spaced: bin i holds spends in [2**(i/2 - 1), 2**((i+1)/2 - 1))


class PopulationPriors:
    """Sufficient statistics of the population, updated one event at a time.

    ``observe_order`` feeds the buyer sample; ``refit`` refits the buyer model (``model``,
    ``None`` before the first fit) and its
    calibration from it; ``observe_gap`` records a completed gap between two consecutive orders
    of one customer; ``observe_engagement`` the decayed-free counts of outreach and answers;
    ``move_spend`` keeps a histogram of every customer's current spend so a top share can be
    located.
    """

    __slots__ = ("gap_sum_days", "gap_count", "sent", "responded", "spend_bins", "_floor",
                 "sample", "baskets", "model", "value", "calibration", "next_fit_day",
                 "fits", "_heap", "pending_days", "fitted_days", "reorder",
                 "horizons", "usual_response", "spend_bins_at_fit", "gaps_at_fit")

    def __init__(self) -> None:
        self.gap_sum_days = 0.0
        self.gap_count = 0
        self.sent = 0.0
        self.responded = 0.0
        self.spend_bins = [0] * _SPEND_BINS
        # The shop-wide rates a score reads, as they were at the last refit: the usual answer
        # rate and the spend histogram the top spenders' floor is read from. Between refits a
        # customer's score then depends on their own events and the shop's model alone, not on
        # which other customers' events came first (so any batching gives the same state).
        self.usual_response = 0.25
        self.spend_bins_at_fit = [0] * _SPEND_BINS
        self.gaps_at_fit = (0.0, 0)  # the gaps' sum (days) and count
        # (top_share, floor) of the last spend_quantile_floor call: every scoring asks, the
        # histogram changes only when a customer's spend crosses a bin edge.
        self._floor: tuple[float, float] | None = None
        # Buyer sample: id hash -> [first order day, older order days, *recent order days].
        self.sample: dict[int, list[int]] = {}
        # Each sampled customer's first basket: what they spent on their first order day, in
        # whole cents; None where unknown (sampled before version 4 of the wire format).
        self.baskets: dict[int, int | None] = {}
        self.model: BuyerModel | None = None
        # What a customer's basket value says of their return (no effect until shown).
        self.value = ValueEvidence()
        self.calibration: dict[float, CalibrationMap] = {}
        self.next_fit_day = 0
        # How many times the model was fitted: a customer scored at another count was judged
        # by another model (CustomerState.model_fit).
        self.fits = 0
        # The sample's id hashes as a max-heap (negated), built when the sample first fills:
        # a full sample admits a customer only below its largest hash, which it evicts.
        self._heap: list[int] | None = None
        # Order days the sample gained since the last fit, and the sample's order days then: a
        # log in customer order (CDNOW's is) brings most of the shard after the watermark has
        # reached its end, so the sample's growth triggers a refit as well as the calendar.
        self.pending_days = 0
        self.fitted_days = 0
        # Per segment label, the gaps between consecutive orders of one customer, and the
        # horizon learned from them at the last refit (ALL_SEGMENTS: every segment's gaps).
        self.reorder: dict[str, ReorderGaps] = {}
        self.horizons: dict[str, float] = {}

    # -- the buyer model ---------------------------------------------------------------------

    def observe_order(self, customer_id: str, ts: float, amount: float = 0.0) -> None:
        """Record an order (of ``amount``) in the buyer sample (if the customer belongs to
        it)."""
        key = customer_hash(customer_id)
        day = math.floor(ts / DAY)
        entry = self.sample.get(key)
        first_day = None if entry is None else entry[0]
        if entry is None:
            heap = self._heap
            if len(self.sample) >= SAMPLE_SIZE:
                if heap is None:
                    heap = self._heap = [-k for k in self.sample]
                    heapq.heapify(heap)
                top = -heap[0]
                if key >= top:
                    return
                heapq.heapreplace(heap, -key)
                del self.sample[top]
                del self.baskets[top]
            elif heap is not None:
                heapq.heappush(heap, -key)
            entry = self.sample[key] = [day, 0]
        self.baskets[key] = first_basket_after(self.baskets.get(key), first_day, day, amount)
        if day in entry[2:]:
            return
        self.pending_days += 1
        entry.append(day)
        recent = sorted(entry[2:])
        if len(recent) > KEPT_DAYS:
            recent.pop(0)
            entry[1] += 1
        entry[0] = min(entry[0], day)
        entry[2:] = recent

    def refit_due(self, now: float) -> bool:
        """Whether the watermark ``now`` has passed the next refit day, or the sample has grown
        by half since the last fit (whatever the order the events come in).

        >>> p = PopulationPriors()
        >>> p.next_fit_day = 10**6  # the calendar says not yet
        >>> for n in range(MIN_FIT):
        ...     p.observe_order(f"c{n}", 0.0)
        >>> p.refit_due(0.0)
        True
        """
        return now / DAY >= self.next_fit_day or self.pending_days >= max(
            MIN_FIT, self.fitted_days // 2)

    def unfitted_orders(self) -> bool:
        """Whether the sample gained orders since the last fit (``replay --as-of`` refits then,
        so the final model has seen every order)."""
        return self.pending_days > 0 and len(self.sample) >= MIN_FIT

    def refit(self, now: float, horizons: Iterable[float], prior: BuyerModel) -> None:
        """Refit the buyer model on the sample as of ``now``; choose the evidence weight and
        fit a calibration map per horizon on the sample's matured outcomes.

        Outcomes mature inside the sample: the customers' histories as of ``now - h`` predict
        whether they ordered within the ``h`` days that followed. The evidence weight is chosen
        on a window of the first horizon, or half the sample's history when that is shorter; a
        calibration map is made only for a horizon that has fully matured.
        """
        self.usual_response = self.current_response_rate()
        self.spend_bins_at_fit = list(self.spend_bins)
        self.gaps_at_fit = (self.gap_sum_days, self.gap_count)
        self._floor = None
        today = now / DAY
        keys = sorted(self.sample)
        entries = [self.sample[k] for k in keys]
        self.pending_days = 0
        self.fitted_days = sum(e[1] + len(e) - 2 for e in entries)
        first_day = min((e[0] for e in entries), default=today)
        history = today - first_day
        self.next_fit_day = math.floor(today) + int(min(28, max(2, round(history / 8.0))))
        repeaters = sum(1 for e in entries if e[1] + len(e) - 3 >= 1)  # x >= 1
        if len(entries) < MIN_FIT or repeaters < MIN_REPEATERS:
            return
        firsts = [self.baskets.get(k) for k in keys]
        x, t_x, age, _, basket = _summaries(entries, today, today, firsts)
        start = self.model if self.model is not None else prior
        model = fit_buyer_model(x, t_x, age, start, prior)
        horizons = list(dict.fromkeys(horizons))
        weight = model.evidence_weight
        value = self.value
        scale = _basket_scale(basket)
        window = min(horizons[0], history / 2.0) if horizons else 0.0
        fitted_at: dict[float, BuyerModel] = {}
        if window >= 7.0:
            xc, tc, agec, returned, then = _summaries(entries, today - window, today, firsts)
            if len(xc) >= MIN_OUTCOMES:
                earlier = fit_buyer_model(xc, tc, agec, model, prior)
                weight = choose_evidence_weight(earlier, xc, tc, agec, window, returned,
                                                current=weight)
                fitted_at[window] = earlier
                value = _choose_value(earlier, weight, xc, tc, agec, window, returned, then,
                                      scale, value)
        self.model = BuyerModel(model.r, model.alpha, model.a, model.b, weight)
        self.value = value
        self.fits += 1
        calibration: dict[float, CalibrationMap] = {}
        for horizon in horizons:
            if history < horizon + 7.0:
                continue
            xc, tc, agec, returned, then = _summaries(entries, today - horizon, today, firsts)
            if len(xc) < MIN_OUTCOMES:
                continue
            earlier = fitted_at.get(horizon) or fit_buyer_model(xc, tc, agec, model, prior)
            tempered = BuyerModel(earlier.r, earlier.alpha, earlier.a, earlier.b, weight)
            predicted = shifted_many(p_order_within_many(tempered, xc, tc, agec, horizon),
                                     value.shifts(then))
            calibration[horizon] = fit_calibration(predicted, returned)
        self.calibration = calibration

    def calibrated(self, p: float, horizon: float) -> float:
        """The model probability ``p`` for ``horizon`` through the shard's calibration map
        (unchanged while no outcome of that horizon has matured)."""
        cal = self.calibration.get(horizon)
        return p if cal is None else cal.apply(p)

    # -- cadence, engagement, spend ----------------------------------------------------------

    def observe_gap(self, gap_seconds: float, segment: str = ALL_SEGMENTS) -> None:
        """Record a completed gap between two consecutive orders of a customer of
        ``segment`` (a bounded segment label)."""
        days = max(gap_seconds, 0.0) / 86400.0
        self.gap_sum_days += days
        self.gap_count += 1
        gaps = self.reorder.get(segment)
        if gaps is None:
            gaps = self.reorder[segment] = ReorderGaps()
        gaps.update(days)

    def learn_horizons(self) -> None:
        """Update each segment's learned horizon from its reorder gaps, and the horizon of
        all segments together (see :mod:`churnwatch.core.horizon`). Called at a refit, so the
        horizons change at the same event whatever the batching."""
        pooled = ReorderGaps()
        for gaps in self.reorder.values():
            pooled = pooled.merged(gaps)
        own = [(label, gaps) for label, gaps in sorted(self.reorder.items())
               if label != ALL_SEGMENTS]
        for label, gaps in [(ALL_SEGMENTS, pooled), *own]:
            horizon = learned_horizon(gaps, self.horizons.get(label))
            if horizon is not None:
                self.horizons[label] = horizon

    def horizon(self, segment: str) -> float | None:
        """The horizon learned for ``segment`` (a segment label), or for all segments together
        while it has too few reorders of its own; ``None`` before either has enough."""
        return self.horizons.get(segment) or self.horizons.get(ALL_SEGMENTS)

    def observe_engagement(self, sent: float, responded: float) -> None:
        """Record outreach sent and answers (opens, clicks, replies) received."""
        self.sent += sent
        self.responded += responded

    def mean_gap_days(self, default_days: float, default_weight: float) -> float:
        """The population's mean gap between orders as of the last refit, shrunk towards a
        default while data is thin."""
        gap_sum, gap_count = self.gaps_at_fit
        return (default_days * default_weight + gap_sum) / (
            default_weight + gap_count) if default_weight + gap_count > 0 else default_days

    def response_rate(self) -> float:
        """The population's share of outreach that gets an answer, as of the last refit
        (0.25 until data arrives): what engagement is scored against."""
        return self.usual_response

    def current_response_rate(self) -> float:
        """The share of outreach answered so far (0.25 until data arrives)."""
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

    def spend_quantile_floor(self, top_share: float) -> float:
        """The lowest spend inside the top ``top_share`` of customers as of the last refit (inf
        when there were none)."""
        cached = self._floor
        if cached is not None and cached[0] == top_share:
            return cached[1]
        floor = self._spend_quantile_floor(top_share)
        self._floor = (top_share, floor)
        return floor

    def _spend_quantile_floor(self, top_share: float) -> float:
        bins = self.spend_bins_at_fit
        total = sum(bins)
        if total == 0 or top_share <= 0:
            return math.inf
        wanted = top_share * total
        seen = 0
        for index in range(_SPEND_BINS - 1, -1, -1):
            seen += bins[index]
            if seen >= wanted:
                return _bin_floor(index)
        return 0.0

    # -- wire format -------------------------------------------------------------------------

    def to_wire(self) -> dict[str, object]:
        """A compact msgpack-able form, versioned (``v``), fields named."""
        return {
            "v": WIRE_VERSION,
            "gaps": [self.gap_sum_days, self.gap_count],
            "engagement": [self.sent, self.responded],
            "spend": list(self.spend_bins),
            "sample": [[key, *_deltas(entry)] for key, entry in sorted(self.sample.items())],
            "baskets": [self.baskets.get(key) for key in sorted(self.sample)],
            "model": None if self.model is None else self.model.to_wire(),
            "value": self.value.to_wire() if self.value.coefficient else None,
            "calibration": [[h, *m.to_wire()] for h, m in sorted(self.calibration.items())],
            "next_fit_day": self.next_fit_day,
            "growth": [self.pending_days, self.fitted_days],
            "fits": self.fits,
            # Read by churnwatch before version 5 (it required the key), so a monitor can go
            # back a release; today's reads nothing from it.
            "percentiles": [],
            "reorder": {label: gaps.to_wire() for label, gaps in sorted(self.reorder.items())},
            "horizons": dict(sorted(self.horizons.items())),
            "at_fit": [self.usual_response, list(self.spend_bins_at_fit), *self.gaps_at_fit],
        }

    @classmethod
    def from_wire(cls, data: list[Any] | dict[str, Any] | None) -> PopulationPriors:
        """Inverse of :meth:`to_wire`; ``None`` gives empty priors. Reads the previous format
        (a positional list without sample or model) too: the model is then fitted at the next
        refit day."""
        priors = cls()
        if not data:
            return priors
        if isinstance(data, list):
            gap_sum, gap_count, sent, responded, bins = data
            gaps, engagement = [gap_sum, gap_count], [sent, responded]
        else:
            gaps, engagement, bins = data["gaps"], data["engagement"], data["spend"]
            rows = [[int(v) for v in row] for row in data["sample"]]
            # Version 3 keeps the order days as gaps (a byte each instead of three).
            priors.sample = {row[0]: (_days(row[1:]) if data["v"] >= 3 else row[1:])
                             for row in rows}
            # Before version 4 the sample kept no spend: those customers' baskets are unknown.
            baskets = data.get("baskets") or [None] * len(rows)
            priors.baskets = {row[0]: None if cents is None else int(cents)
                              for row, cents in zip(rows, baskets, strict=True)}
            priors.value = ValueEvidence.from_wire(data.get("value"))
            model = data.get("model")
            priors.model = None if model is None else BuyerModel.from_wire(model)
            priors.calibration = {float(row[0]): CalibrationMap.from_wire(row[1:])
                                  for row in data["calibration"]}
            priors.next_fit_day = int(data["next_fit_day"])
            # Absent from blobs written before the growth trigger: count from now on.
            priors.pending_days, priors.fitted_days = (int(v) for v in data.get("growth", (0, 0)))
            priors.fits = int(data.get("fits", 0))
            # Absent before version 5: no horizon learned yet, gaps counted from now on.
            priors.reorder = {str(label): ReorderGaps.from_wire(bins)
                              for label, bins in (data.get("reorder") or {}).items()}
            priors.horizons = {str(label): float(days)
                               for label, days in (data.get("horizons") or {}).items()}
        priors.gap_sum_days, priors.gap_count = float(gaps[0]), int(gaps[1])
        priors.sent, priors.responded = float(engagement[0]), float(engagement[1])
        priors.spend_bins = [int(b) for b in bins]
        at_fit = data.get("at_fit") if isinstance(data, dict) else None
        if at_fit:
            priors.usual_response = float(at_fit[0])
            priors.spend_bins_at_fit = [int(b) for b in at_fit[1]]
            priors.gaps_at_fit = (float(at_fit[2]), int(at_fit[3]))
        else:  # written before the rates were read as of the refit: as of now
            priors.usual_response = priors.current_response_rate()
            priors.spend_bins_at_fit = list(priors.spend_bins)
            priors.gaps_at_fit = (priors.gap_sum_days, priors.gap_count)
        return priors


def customer_hash(customer_id: str) -> int:
    """A stable 32-bit hash of a customer id, which orders the bottom-k buyer sample.

    >>> customer_hash("c1") == customer_hash("c1") != customer_hash("c2")
    True
    """
    return int.from_bytes(hashlib.blake2b(customer_id.encode(), digest_size=4,
                                          person=b"cw-sample").digest(), "big")


def _summaries(entries: list[list[int]], at: float, until: float,
               firsts: list[int | None] | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, t_x, age, returned, basket)`` of the sampled customers as of day ``at``, with
    whether they ordered after ``at`` up to ``until`` and their first basket (whole currency;
    NaN where unknown); customers not yet buying at ``at``, or whose last order before it is
    no longer kept, are left out. ``firsts`` are the entries' first baskets in cents
    (:attr:`PopulationPriors.baskets`)."""
    xs: list[float] = []
    ts: list[float] = []
    ages: list[float] = []
    back: list[float] = []
    baskets: list[float] = []
    for index, (first, older, *recent) in enumerate(entries):
        if first > at:
            continue
        kept = sum(1 for d in recent if d <= at)
        if kept == 0:
            continue  # not buying yet, or the last order before `at` has been forgotten
        xs.append(older + kept - 1)
        ts.append(recent[kept - 1] - first)
        ages.append(at - first)
        back.append(1.0 if any(at < d <= until for d in recent) else 0.0)
        first_basket = None if firsts is None else firsts[index]
        baskets.append(math.nan if first_basket is None else first_basket / 100.0)
    return (np.array(xs, float), np.array(ts, float), np.array(ages, float), np.array(back),
            np.array(baskets, float))


def _basket_scale(basket: np.ndarray) -> tuple[float, float] | None:
    """Mean and standard deviation of the sample's ``log(1 + basket)`` (``None`` when too
    few baskets are known, or they do not vary)."""
    known = np.log1p(basket[~np.isnan(basket)])
    if len(known) < MIN_OUTCOMES:
        return None
    spread = float(known.std())
    return (float(known.mean()), spread) if spread > 1e-6 else None


def _choose_value(model: BuyerModel, weight: float, x: np.ndarray, t_x: np.ndarray,
                  age: np.ndarray, window: float, returned: np.ndarray, basket: np.ndarray,
                  scale: tuple[float, float] | None, current: ValueEvidence) -> ValueEvidence:
    """The value evidence for the next period: the coefficient chosen on the window's matured
    outcomes (first baskets standardised on the whole sample's), or none while too few
    baskets are known."""
    known = ~np.isnan(basket)
    if scale is None or int(known.sum()) < MIN_VALUE_OUTCOMES:
        return ValueEvidence()
    mean, spread = scale
    tempered = BuyerModel(model.r, model.alpha, model.a, model.b, weight)
    predicted = p_order_within_many(tempered, x[known], t_x[known], age[known], window)
    standardised = ValueEvidence(mean, spread).standardised(basket[known])
    coefficient = choose_value_coefficient(predicted, standardised, returned[known],
                                           current=current.coefficient)
    # No effect is stored as nothing (ValueEvidence()), so a reloaded shard equals this one.
    return ValueEvidence(round(mean, 6), round(spread, 6), coefficient) if coefficient else \
        ValueEvidence()


def _deltas(entry: list[int]) -> list[int]:
    """A sample entry ``[first, older, *recent days]`` with each recent day as the gap from the
    one before it (the first from ``first``): the wire form of version 3.

    >>> _deltas([19000, 2, 19003, 19010]), _days(_deltas([19000, 2, 19003, 19010]))
    ([19000, 2, 3, 7], [19000, 2, 19003, 19010])
    """
    first, older, *recent = entry
    previous, gaps = first, []
    for day in recent:
        gaps.append(day - previous)
        previous = day
    return [first, older, *gaps]


def _days(row: list[int]) -> list[int]:
    """Inverse of :func:`_deltas`."""
    first, older, *gaps = row
    days, day = [], first
    for gap in gaps:
        day += gap
        days.append(day)
    return [first, older, *days]


def _spend_bin(spend: float) -> int:
    if spend <= 0.5:
        return 0
    index = int(2.0 * (math.log2(spend) + 1.0))
    return min(max(index, 0), _SPEND_BINS - 1)


def _bin_floor(index: int) -> float:
    return 0.0 if index == 0 else 2.0 ** (index / 2.0 - 1.0)
