"""A Kafka topic as a churnwatch source: Bytewax's own ``KafkaSource``, mapped to
:class:`~churnwatch.dataflows.messages.RawMessage`.

Bytewax's connector assigns each topic partition to one worker (``assign()``, no consumer group:
offsets live in Bytewax's snapshots, so a resumed flow reads on from its last snapshot); this
module only wraps each of its partitions so the flow sees the same messages as from any other
source: ``partition`` is ``kafka:<topic>:<n>``, ``offset`` the Kafka offset, ``published_at``
the message timestamp. Publishers key messages by customer id with the same hash as the Redis
publisher (see docs/operations.md), so a customer's events stay in one partition, in order.

An empty partition is polled again a few milliseconds later instead of spinning, and a consumer
error other than end-of-partition is logged and skipped (``raise_on_errors=False``): a broken
broker connection is librdkafka's to re-establish, never a reason to stop the flow.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from bytewax.connectors.kafka import KafkaError, KafkaSource
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from churnwatch.dataflows.messages import RawMessage
from churnwatch.dataflows.progress import SourceProgress

log = logging.getLogger("churnwatch.kafka_source")


class KafkaEventSource(FixedPartitionedSource[RawMessage, Any]):
    """Every partition of ``topic``; ``tail=False`` finishes each at its end (a backfill).
    Once ``stop`` is set (a clean stop) every partition ends at its next batch. ``progress``
    hears of every read (an empty one: the partition's end), for the live time rule."""

    def __init__(self, brokers: Sequence[str] | str, topic: str, batch_size: int = 5000,
                 tail: bool = True, poll_interval: float = 0.005,
                 add_config: dict[str, str] | None = None,
                 stop: threading.Event | None = None,
                 progress: SourceProgress | None = None) -> None:
        self.brokers = [b for b in brokers.split(",") if b] if isinstance(brokers, str) else \
            list(brokers)
        self.topic = topic
        self.poll_interval = poll_interval
        self.stop = stop
        self.progress = progress
        self.inner = KafkaSource(self.brokers, [topic], tail=tail, batch_size=batch_size,
                                 add_config=add_config, raise_on_errors=False)

    def list_parts(self) -> list[str]:
        """Called by Bytewax on every worker at start: the topic's partitions (``n-topic``)."""
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any
                   ) -> _KafkaEventPartition:
        """Called on the worker owning the partition; ``resume_state`` is the next offset."""
        inner = self.inner.build_part(step_id, for_part, resume_state)
        number = int(for_part.split("-", 1)[0])
        if self.progress is not None:
            self.progress.register(for_part, time.time())
        return _KafkaEventPartition(inner, self.topic, number, self.poll_interval, self.stop,
                                    self.progress, for_part)


class _KafkaEventPartition(StatefulSourcePartition[RawMessage, Any]):
    def __init__(self, inner: StatefulSourcePartition[Any, Any], topic: str, number: int,
                 poll_interval: float, stop: threading.Event | None = None,
                 progress: SourceProgress | None = None, part: str = "") -> None:
        self._inner = inner
        self._progress = progress
        self._part = part
        self._stop = stop
        self._name = f"kafka:{topic}:{number}"
        self._label = f"{topic}:{number}"
        self._poll = poll_interval
        self._awake: datetime | None = None
        self._next: int | None = None  # the offset after the last message handed on

    def next_batch(self) -> list[RawMessage]:
        if self._stop is not None and self._stop.is_set():
            raise StopIteration
        messages = self._inner.next_batch()
        now = time.time()
        out: list[RawMessage] = []
        errors = False
        for msg in messages:
            if isinstance(msg, KafkaError):
                errors = True
                log.warning("kafka %s: %s", self._label, msg.err)
                continue
            stamp = msg.timestamp
            published = stamp[1] / 1000.0 if stamp and stamp[0] and stamp[1] > 0 else None
            out.append(RawMessage(self._name, int(msg.offset), msg.value or b"",
                                  f"{self._label}:{msg.offset}", now, published, "kafka"))
            self._next = int(msg.offset) + 1
        if errors and self._next is not None and hasattr(self._inner, "_offset"):
            # Bytewax 0.21.1 moves its resume offset to an error's offset too, which for a
            # broker-level error is not a position in the partition: keep the real one.
            self._inner._offset = self._next
        self._awake = None if messages else datetime.now(timezone.utc) + timedelta(
            seconds=self._poll)
        if self._progress is not None:
            # The connector hands what the consumer had: only an empty read is the end.
            self._progress.read(self._part, len(out), bool(messages), now)
        return out

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> Any:
        return self._next if self._next is not None else self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()
