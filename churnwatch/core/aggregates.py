"""A shard's aggregates, typed: what the metrics, the segments overview, the demo and
``churnwatch status`` read, without rebuilding a customer.

The engine keeps two maps in :class:`churnwatch.core.engine.ShardState`: ``gauges`` (absolute
values, moved by a customer's contribution before and after a batch: customers per tier and per
score band, score and component sums) and ``counters`` (only ever added to: transitions,
recoveries, sudden drops, win-back outcomes). Their keys are the small classes below, one per
family, imported by every reader; nobody builds or splits a key string.

In the stored shard blob a key is a string, ``family|free text|fixed|...``, written and read
only here (:func:`encode_key`, :func:`decode_key`). That is the form shard blobs had before the
keys were typed, so blobs written by earlier versions read back unchanged (and a blob written
now reads in them). Each family has one free-text field (a segment or a playbook name, either
of which may hold ``|``) followed by fields from fixed vocabularies that never do (tiers, score
bands, components, groups); reading the fixed fields from the right therefore finds the free
one whole, whatever it holds.

>>> key = TierCustomers("pets|dogs", "healthy")
>>> encode_key(key)
'customers|pets|dogs|healthy'
>>> decode_key(encode_key(key)) == key
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Literal, NamedTuple, TypeVar

from churnwatch.core.config import COMPONENTS, OTHER_SEGMENT, TIERS

#: The score bands of ``churnwatch_score_band_customers``, lower bound inclusive.
SCORE_BANDS = tuple(f"{lo:02d}-{lo + 10}" for lo in range(0, 100, 10))

# Each class is a NamedTuple (hashed and compared in C: the engine moves a dozen of these per
# customer per batch). Its last field, ``family``, is fixed by the class and is the key's prefix
# in the stored form; it also keeps keys of different families apart in one map (a NamedTuple
# compares as a plain tuple, so ``ScoreSum("a")`` would otherwise equal ``ScoredCustomers("a")``).
# Never pass it.


class TierCustomers(NamedTuple):
    """Gauge: customers of a segment now in a risk tier.

    >>> TierCustomers("skincare", "at_risk")
    TierCustomers(segment='skincare', tier='at_risk', family='customers')
    """

    segment: str
    tier: str
    family: Literal["customers"] = "customers"


class BandCustomers(NamedTuple):
    """Gauge: customers of a segment whose score lies in a band of :data:`SCORE_BANDS`.

    >>> encode_key(BandCustomers("skincare", "30-40"))
    'band|skincare|30-40'
    """

    segment: str
    band: str
    family: Literal["band"] = "band"


class ScoreSum(NamedTuple):
    """Gauge: the sum of the current health scores of a segment's scored customers.

    >>> encode_key(ScoreSum("skincare"))
    'score_sum|skincare'
    """

    segment: str
    family: Literal["score_sum"] = "score_sum"


class ScoredCustomers(NamedTuple):
    """Gauge: a segment's customers with a score and a tier (the mean's denominator).

    >>> ScoredCustomers("a") == ScoreSum("a")
    False
    """

    segment: str
    family: Literal["scored"] = "scored"


class ComponentSum(NamedTuple):
    """Gauge: the sum of one score component over the segment's customers where it has data.

    >>> encode_key(ComponentSum("skincare", "recency"))
    'component_sum|skincare|recency'
    """

    segment: str
    component: str
    family: Literal["component_sum"] = "component_sum"


class ComponentCount(NamedTuple):
    """Gauge: the segment's customers where a score component has data.

    >>> encode_key(ComponentCount("skincare", "recency"))
    'component_n|skincare|recency'
    """

    segment: str
    component: str
    family: Literal["component_n"] = "component_n"


class HighValueAtRisk(NamedTuple):
    """Gauge: customers of the top value tier of a segment now in ``at_risk`` or ``churned``.

    >>> encode_key(HighValueAtRisk("skincare"))
    'high_value_at_risk|skincare'
    """

    segment: str
    family: Literal["high_value_at_risk"] = "high_value_at_risk"


class TransitionCount(NamedTuple):
    """Counter: tier changes of a segment's customers from one tier to another.

    >>> decode_key("transitions|pets|dogs|watch|at_risk")
    TransitionCount(segment='pets|dogs', from_tier='watch', to_tier='at_risk', family='transitions')
    """

    segment: str
    from_tier: str
    to_tier: str
    family: Literal["transitions"] = "transitions"


class RecoveryCount(NamedTuple):
    """Counter: customers of a segment back to ``healthy`` from ``at_risk`` or ``churned``.

    >>> encode_key(RecoveryCount("skincare", "churned"))
    'recoveries|skincare|churned'
    """

    segment: str
    from_tier: str
    family: Literal["recoveries"] = "recoveries"


class SuddenDropCount(NamedTuple):
    """Counter: sudden drops of a segment's customers (``[alerts] sudden_drop_points`` within
    ``sudden_drop_window_days``, once per fall).

    >>> encode_key(SuddenDropCount("skincare"))
    'sudden_drops|skincare'
    """

    segment: str
    family: Literal["sudden_drops"] = "sudden_drops"


class WinbackCount(NamedTuple):
    """Counter: customers of a playbook's group (``treated`` or ``holdout``) that reached an
    ``outcome`` (``assigned``, ``contacted`` or ``recovered``; churnwatch.core.winback).

    >>> encode_key(WinbackCount("assigned", "call_them", "holdout"))
    'winback_assigned|call_them|holdout'
    >>> decode_key("winback_recovered|call|them|treated")
    WinbackCount(outcome='recovered', playbook='call|them', group='treated', family='winback')
    """

    outcome: str
    playbook: str
    group: str
    family: Literal["winback"] = "winback"


GaugeKey = (TierCustomers | BandCustomers | ScoreSum | ScoredCustomers | ComponentSum
            | ComponentCount | HighValueAtRisk)
CounterKey = TransitionCount | RecoveryCount | SuddenDropCount | WinbackCount
AggregateKey = GaugeKey | CounterKey
GAUGE_TYPES = (TierCustomers, BandCustomers, ScoreSum, ScoredCustomers, ComponentSum,
               ComponentCount, HighValueAtRisk)
COUNTER_TYPES = (TransitionCount, RecoveryCount, SuddenDropCount, WinbackCount)
#: The families whose first field is a segment label (all but win-back's).
SEGMENT_TYPES = GAUGE_TYPES + (TransitionCount, RecoveryCount, SuddenDropCount)

_WINBACK = "winback_"

# family -> (fields in the stored form, the key from them)
_FAMILIES: dict[str, tuple[int, Callable[[list[str]], AggregateKey]]] = {
    "customers": (2, lambda p: TierCustomers(p[0], p[1])),
    "band": (2, lambda p: BandCustomers(p[0], p[1])),
    "score_sum": (1, lambda p: ScoreSum(p[0])),
    "scored": (1, lambda p: ScoredCustomers(p[0])),
    "component_sum": (2, lambda p: ComponentSum(p[0], p[1])),
    "component_n": (2, lambda p: ComponentCount(p[0], p[1])),
    "high_value_at_risk": (1, lambda p: HighValueAtRisk(p[0])),
    "transitions": (3, lambda p: TransitionCount(p[0], p[1], p[2])),
    "recoveries": (2, lambda p: RecoveryCount(p[0], p[1])),
    "sudden_drops": (1, lambda p: SuddenDropCount(p[0])),
}


def encode_key(key: AggregateKey) -> str:
    """A key's stored form: its family, then its fields, joined by ``|``.

    >>> encode_key(TransitionCount("skincare", "healthy", "watch"))
    'transitions|skincare|healthy|watch'
    """
    if isinstance(key, WinbackCount):
        return f"{_WINBACK}{key.outcome}|{key.playbook}|{key.group}"
    return "|".join((key.family, *key[:-1]))


def decode_key(text: str) -> AggregateKey | None:
    """The key a stored string names; ``None`` for one of no known family (a blob written by a
    later version: :class:`ShardAggregates` keeps such entries as they are).

    >>> decode_key("customers|skincare|healthy")
    TierCustomers(segment='skincare', tier='healthy', family='customers')
    >>> decode_key("visits|skincare") is None
    True
    """
    family, bar, rest = text.partition("|")
    if not bar:
        return None
    if family.startswith(_WINBACK):
        playbook, bar, group = rest.rpartition("|")
        return WinbackCount(family[len(_WINBACK):], playbook, group) if bar else None
    known = _FAMILIES.get(family)
    if known is None:
        return None
    fields, make = known
    parts = rest.rsplit("|", fields - 1)
    return make(parts) if len(parts) == fields else None


class SegmentKeys:
    """The gauge keys of one segment label, made once (the engine takes each customer's
    contribution twice per batch, before and after).

    >>> keys = SegmentKeys("skincare")
    >>> keys.tiers[2], keys.bands[0].band, keys.component_counts[0].component
    (TierCustomers(segment='skincare', tier='at_risk', family='customers'), '00-10', 'recency')
    """

    __slots__ = ("tiers", "bands", "score_sum", "scored", "component_sums", "component_counts",
                 "high_value_at_risk")

    def __init__(self, segment: str) -> None:
        self.tiers = tuple(TierCustomers(segment, tier) for tier in TIERS)
        self.bands = tuple(BandCustomers(segment, band) for band in SCORE_BANDS)
        self.score_sum = ScoreSum(segment)
        self.scored = ScoredCustomers(segment)
        self.component_sums = tuple(ComponentSum(segment, name) for name in COMPONENTS)
        self.component_counts = tuple(ComponentCount(segment, name) for name in COMPONENTS)
        self.high_value_at_risk = HighValueAtRisk(segment)


K = TypeVar("K", GaugeKey, CounterKey)


def as_other(key: K, known: Iterable[str]) -> K:
    """The key with its segment counted as ``other`` when the segment is not among ``known``
    (the configuration changed since the aggregate was written), so labels stay bounded.

    >>> as_other(TierCustomers("toys", "watch"), {"skincare", "other", "unassigned"})
    TierCustomers(segment='other', tier='watch', family='customers')
    >>> as_other(WinbackCount("assigned", "toys", "treated"), {"other"}).playbook
    'toys'
    """
    if isinstance(key, SEGMENT_TYPES) and key.segment not in known:
        return key._replace(segment=OTHER_SEGMENT)
    return key


def merge_shards(maps: Iterable[Mapping[K, float]], known: Iterable[str]) -> dict[K, float]:
    """The sum of several shards' gauges (or counters), a segment no longer configured counted
    as ``other`` (:func:`as_other`).

    >>> merged = merge_shards([{ScoreSum("a"): 2.0}, {ScoreSum("a"): 1.0, ScoreSum("b"): 5.0}],
    ...                       {"a"})
    >>> merged[ScoreSum("a")], merged[ScoreSum("other")]
    (3.0, 5.0)
    """
    segments = set(known)
    out: dict[K, float] = {}
    for source in maps:
        for key, value in source.items():
            key = as_other(key, segments)
            out[key] = out.get(key, 0.0) + value
    return out


class ShardAggregates:
    """A shard's ``gauges`` and ``counters`` to and from their stored form: a pair of maps from
    key strings to numbers. An entry of no known family (or in the other map than its family
    belongs to) is kept aside as it was and written back, so a blob read and rewritten loses
    nothing.

    >>> stored = ({"customers|a|healthy": 2.0, "visits|a": 1.0}, {"sudden_drops|a": 1.0})
    >>> aggregates = ShardAggregates.from_wire(*stored)
    >>> aggregates.gauges, aggregates.counters
    ({TierCustomers(segment='a', tier='healthy', family='customers'): 2.0}, \
{SuddenDropCount(segment='a', family='sudden_drops'): 1.0})
    >>> aggregates.to_wire() == stored
    True
    """

    __slots__ = ("gauges", "counters", "unknown_gauges", "unknown_counters", "_names")

    def __init__(self, gauges: dict[GaugeKey, float] | None = None,
                 counters: dict[CounterKey, float] | None = None) -> None:
        self.gauges: dict[GaugeKey, float] = {} if gauges is None else gauges
        self.counters: dict[CounterKey, float] = {} if counters is None else counters
        self.unknown_gauges: dict[str, float] = {}
        self.unknown_counters: dict[str, float] = {}
        # Each key's stored string, made once: a shard is written back at every commit with
        # the same few hundred keys (bounded labels, so this stays as small as they are).
        self._names: dict[AggregateKey, str] = {}

    @classmethod
    def from_wire(cls, gauges: Mapping[str, float], counters: Mapping[str, float]
                  ) -> ShardAggregates:
        """Read the stored maps (as any version wrote them)."""
        out = cls()
        names = out._names
        for text, value in gauges.items():
            key = decode_key(text)
            if isinstance(key, GAUGE_TYPES):
                out.gauges[key] = value
                names[key] = text
            else:
                out.unknown_gauges[text] = value
        for text, value in counters.items():
            key = decode_key(text)
            if isinstance(key, COUNTER_TYPES):
                out.counters[key] = value
                names[key] = text
            else:
                out.unknown_counters[text] = value
        return out

    def to_wire(self) -> tuple[dict[str, float], dict[str, float]]:
        """The stored maps: ``(gauges, counters)``."""
        names = self._names
        gauges = {names.get(key) or self._name(key): value for key, value in self.gauges.items()}
        gauges.update(self.unknown_gauges)
        counters = {names.get(key) or self._name(key): value
                    for key, value in self.counters.items()}
        counters.update(self.unknown_counters)
        return gauges, counters

    def _name(self, key: AggregateKey) -> str:
        text = self._names[key] = encode_key(key)
        return text
