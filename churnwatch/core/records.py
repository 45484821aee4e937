"""The records every layer exchanges: what the engine takes in and gives out, what the stores
keep of a shard, and the hooks through which the dataflow tells its observers what it did.

They live here, in the core, so that the adapters (``dataflows/``, ``state/``, ``metrics/``,
``web/``) and the commands share one vocabulary without importing one another:

- :class:`Incoming`: a valid event and its source position, into the engine;
- :class:`TierTransition`, :class:`SuddenDrop`, :class:`BatchResult`: out of the engine;
- :class:`ShardState`: a shard's learned priors, watermark and aggregates, as a store keeps it;
- :class:`FlowHooks`: the dataflow's callbacks (the pipeline metrics implement them).

>>> from churnwatch.core.events import Event
>>> Incoming(Event("c1", "order", 0.0), partition=7, offset=41).offset
41
>>> BatchResult().scored
0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from churnwatch.core import events as ev
from churnwatch.core.aggregates import CounterKey, GaugeKey, ShardAggregates
from churnwatch.core.customer import CustomerState
from churnwatch.core.priors import PopulationPriors
from churnwatch.core.winback import Suggestion


@dataclass(frozen=True, slots=True)
class Incoming:
    """A valid event with where it came from: a source partition (a stable 32-bit id) and the
    offset in it. ``partition`` 0 means "no replayable position" (only ``event_id`` dedupes)."""

    event: ev.Event
    partition: int = 0
    offset: int = 0
    position: str = ""


@dataclass(frozen=True, slots=True)
class TierTransition:
    """A customer moved from one risk tier to another, and why."""

    customer_id: str
    segment: str
    from_tier: str
    to_tier: str
    old_score: float | None
    new_score: float
    at: float
    reasons: tuple[str, ...]
    cause: str  # "event" or "silence"
    #: The playbook suggested at this change (churnwatch.core.winback), if any.
    suggestion: Suggestion | None = None
    #: The chance and the reasons as codes and numbers, for the customer's stored history
    #: (churnwatch.core.history.change_evidence).
    evidence: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, object]:
        """The record as plain data (for streams, files and the API)."""
        record: dict[str, object] = {
            "customer_id": self.customer_id, "segment": self.segment,
            "from": self.from_tier, "to": self.to_tier,
            "old_score": None if self.old_score is None else round(self.old_score, 1),
            "new_score": round(self.new_score, 1), "at": self.at,
            "reasons": list(self.reasons), "cause": self.cause}
        if self.suggestion is not None:
            record["playbook"] = self.suggestion.playbook
            record["holdout"] = self.suggestion.holdout
            if not self.suggestion.holdout:
                record["action"] = self.suggestion.action
                record["channel"] = self.suggestion.channel
                if self.suggestion.message is not None:
                    record["message"] = self.suggestion.message
        return record


@dataclass(frozen=True, slots=True)
class SuddenDrop:
    """A score fell by more than the configured points within the configured window."""

    customer_id: str
    segment: str
    from_score: float
    to_score: float
    at: float


class ShardState:
    """What a shard keeps besides its customers: learned priors, event-time watermark, and the
    running aggregates the metrics are read from (absolute values, so rewriting them is
    idempotent): ``gauges`` and ``counters``, keyed by the typed keys of
    :mod:`churnwatch.core.aggregates`.

    ``positions`` holds, per source partition id, the highest offset the shard has processed
    (applied, or skipped as a duplicate). It is not part of :meth:`to_wire`: a store keeps it
    beside the wire form, committed in the same transaction, so an operator can see how far the
    monitor has consumed each partition (``churnwatch status``).

    >>> from churnwatch.core.aggregates import TierCustomers
    >>> from churnwatch.core.config import ChurnwatchConfig
    >>> from churnwatch.core.engine import ShardEngine
    >>> from churnwatch.core.events import Event
    >>> engine = ShardEngine(0, ChurnwatchConfig(), ShardState())
    >>> _ = engine.process([Incoming(Event("c1", "order", 0.0), partition=7, offset=41),
    ...                     Incoming(Event("c1", "order", 0.0), partition=7, offset=40)],
    ...                    {"c1": None}, now=0.0)
    >>> engine.state.positions
    {7: 41}
    >>> engine.state.gauges[TierCustomers("unassigned", "watch")]
    1.0
    >>> ShardState.from_wire(engine.state.to_wire()).gauges == engine.state.gauges
    True
    """

    __slots__ = ("priors", "watermark", "aggregates", "positions")

    def __init__(self) -> None:
        self.priors = PopulationPriors()
        self.watermark = 0.0
        self.aggregates = ShardAggregates()
        self.positions: dict[int, int] = {}

    @property
    def gauges(self) -> dict[GaugeKey, float]:
        """Customers per tier and score band, score and component sums, per segment."""
        return self.aggregates.gauges

    @gauges.setter
    def gauges(self, value: dict[GaugeKey, float]) -> None:
        self.aggregates.gauges = value

    @property
    def counters(self) -> dict[CounterKey, float]:
        """Transitions, recoveries, sudden drops and win-back outcomes since the state began."""
        return self.aggregates.counters

    @counters.setter
    def counters(self, value: dict[CounterKey, float]) -> None:
        self.aggregates.counters = value

    def to_wire(self) -> list[object]:
        """A compact msgpack-able form: ``[priors, watermark, gauges, counters]``, the
        aggregates as maps from key strings (churnwatch.core.aggregates)."""
        gauges, counters = self.aggregates.to_wire()
        return [self.priors.to_wire(), self.watermark, gauges, counters]

    @classmethod
    def from_wire(cls, data: list[object] | None) -> ShardState:
        """Inverse of :meth:`to_wire` (and of every earlier version's); ``None`` gives a fresh
        shard."""
        state = cls()
        if data:
            priors, watermark, gauges, counters = data
            state.priors = PopulationPriors.from_wire(priors)  # type: ignore[arg-type]
            state.watermark = float(watermark)  # type: ignore[arg-type]
            state.aggregates = ShardAggregates.from_wire(gauges, counters)  # type: ignore[arg-type]
        return state


@dataclass(slots=True)
class BatchResult:
    """What one call to the engine produced, for the store and the outputs.

    ``drops`` lists the batch's sudden drops for whoever runs the engine in-process; they are
    counted in the shard's counters (:class:`churnwatch.core.aggregates.SuddenDropCount`), which
    is what the metrics and the alert read, and are not stored one by one."""

    changed: dict[str, CustomerState] = field(default_factory=dict)
    transitions: list[TierTransition] = field(default_factory=list)
    drops: list[SuddenDrop] = field(default_factory=list)
    dead_letters: list[ev.InvalidEvent] = field(default_factory=list)
    scored: int = 0
    duplicates: int = 0
    late: int = 0
    rescored_silent: int = 0
    last_event_ts: float = 0.0


class FlowHooks:
    """Callbacks for what the dataflow does (``churnwatch.dataflows.flow`` calls them); the
    pipeline metrics (``churnwatch.metrics.pipeline``), the replay's counts and the demo's
    live summary implement them. Called from the worker threads, so implementations must be
    thread-safe. Every method does nothing here: a subclass overrides what it listens to."""

    def decoded(self, source: str, received: int, invalid: Sequence[ev.InvalidEvent],
                newest_published_at: float | None) -> None:
        """A batch of raw messages was decoded; ``invalid`` are on their way to the dead-letter
        output (after a resume some may be repeats: :meth:`dead_lettered` says which are new)."""

    def committed(self, source: str, result: BatchResult, oldest_received_at: float) -> None:
        """A shard batch's effects were committed to the store."""

    def transitions(self, transitions: Sequence[TierTransition]) -> None:
        """Tier transitions were committed."""

    def dead_lettered(self, source: str, items: Sequence[ev.InvalidEvent]) -> None:
        """Dead letters were written to the store for the first time (each source position
        once, across restarts: count them here, not in :meth:`decoded`)."""
