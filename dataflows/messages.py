"""What sources hand to the flow: a raw payload and where it came from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One undecoded message.

    ``partition`` names the replayable unit it was read from (``file:/abs/path``,
    ``redis:<stream>``, ``kafka:<topic>:<n>``); ``offset`` is its position there, increasing
    (a line number, a stream id as an integer, a Kafka offset); ``position`` says the same for a
    human (``orders.jsonl:17``); ``received_at`` is the wall-clock time it was read, and
    ``published_at`` when the source knows when it was written (for lag).
    """

    partition: str
    offset: int
    payload: bytes
    position: str
    received_at: float
    published_at: float | None = None
    source: str = "file"
