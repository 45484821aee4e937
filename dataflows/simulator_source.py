"""The built-in shop simulator as a Bytewax source, paced in wall-clock time for the demo.

The source reads any :class:`SimulatedShop` (``churnwatch.simulator.ShopSimulator`` is the one
the commands pass): an adapter does not import the application that uses it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Protocol

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from churnwatch.dataflows.messages import RawMessage

from churnwatch.core.signals import DAY


class SimulatedShop(Protocol):
    """What the source needs of a simulator: its seed (it names the partition) and its events,
    each a JSON-able mapping with a ``ts`` in epoch seconds, in time order."""

    seed: int

    def events(self) -> Iterator[dict[str, object]]:
        """The whole stream, from the start; called once per partition build."""
        ...


class SimulatorSource(FixedPartitionedSource[RawMessage, int]):
    """One partition; ``seconds_per_day`` wall seconds pass per simulated day (0: no pacing).
    Once ``stop`` is set (a clean stop) the partition ends at its next batch."""

    def __init__(self, simulator: SimulatedShop, seconds_per_day: float = 0.1,
                 batch_size: int = 2000, stop: threading.Event | None = None) -> None:
        self.simulator = simulator
        self.stop = stop
        self.seconds_per_day = seconds_per_day
        self.batch_size = batch_size

    def list_parts(self) -> list[str]:
        """Called by Bytewax at start: a single partition."""
        return [f"simulator:{self.simulator.seed}"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None
                   ) -> _SimulatorPartition:
        """Called on the worker owning the partition; on resume skips what was read."""
        return _SimulatorPartition(self, for_part, resume_state or 0)


class _SimulatorPartition(StatefulSourcePartition[RawMessage, int]):
    def __init__(self, source: SimulatorSource, name: str, skip: int) -> None:
        self._events: Iterator[dict[str, object]] = source.simulator.events()
        self._name = name
        self._pace = source.seconds_per_day
        self._batch = source.batch_size
        self._offset = 0
        self._started = time.monotonic()
        self._first_ts: float | None = None
        self._pending: dict[str, object] | None = None
        self._awake: datetime | None = None
        self._stop = source.stop
        for _ in range(skip):
            next(self._events, None)
            self._offset += 1

    def next_batch(self) -> list[RawMessage]:
        if self._stop is not None and self._stop.is_set():
            raise StopIteration
        out: list[RawMessage] = []
        now = time.time()
        self._awake = None
        while len(out) < self._batch:
            event = self._pending or next(self._events, None)
            self._pending = None
            if event is None:
                if out:
                    break
                raise StopIteration
            ts = float(event["ts"])  # type: ignore[arg-type]
            if self._first_ts is None:
                self._first_ts = ts
            if self._pace > 0:
                due = self._started + (ts - self._first_ts) / DAY * self._pace
                wait = due - time.monotonic()
                if wait > 0:
                    self._pending = event
                    self._awake = datetime.now(timezone.utc) + timedelta(seconds=min(wait, 0.5))
                    break
            self._offset += 1
            out.append(RawMessage(self._name, self._offset,
                                  json.dumps(event, separators=(",", ":")).encode(),
                                  f"simulator:{self._offset}", now, source="simulator"))
        return out

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._offset
