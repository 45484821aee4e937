"""Publishing events to the Redis streams that ``churnwatch run`` reads.

An event goes to partition ``crc32(customer_id) % P`` (``P`` = ``[source] stream_partitions``),
the hash :func:`churnwatch.state.base.shard_of` uses for shards; shards are a multiple of ``P``,
so shard ``s`` reads only partition ``s % P`` and a customer's events stay in order. Each stream
entry holds the encoded event in its field ``e``.

Lines that are not valid events are published all the same, unchanged: the flow dead-letters
them with their position, which is where an operator looks for them. A line whose
``customer_id`` is not a valid one (missing, not a string, a lone surrogate...) goes to partition
0. Nothing a line holds makes the publisher raise: what cannot be re-encoded (``--format
msgpack``) is published as it came.

>>> from churnwatch.core.config import ChurnwatchConfig
>>> partition_for({"customer_id": "c-42"}, 4) == partition_for(b'{"customer_id": "c-42"}', 4)
True
>>> partition_for(b"not json", 4)
0
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import msgpack
import redis
from redis.cluster import RedisCluster

from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.events import MAX_PAYLOAD_BYTES, customer_id_of
from churnwatch.dataflows.redis_source import PAYLOAD_FIELD, stream_names
from churnwatch.state.base import shard_of
from churnwatch.state.cluster import redis_client

FORMATS = ("json", "msgpack")
PIPELINE_SIZE = 1000


def customer_of(event: Mapping[str, Any] | bytes | str) -> str | None:
    """The customer id of an event as the flow will read it (``None`` when it has no valid
    one)."""
    obj: Any = event
    if isinstance(event, str):
        event = event.encode("utf-8", "surrogatepass")
    if isinstance(event, bytes):
        obj = _loads(event)
    return customer_id_of(obj)


def partition_for(event: Mapping[str, Any] | bytes | str, partitions: int) -> int:
    """The stream partition of an event (0 when its customer cannot be read)."""
    cid = customer_of(event)
    return 0 if cid is None else shard_of(cid, partitions)


def _loads(data: bytes) -> Any:
    if len(data) > MAX_PAYLOAD_BYTES:
        return None  # the flow refuses it unread (too_large)
    data = data.lstrip()
    if data.startswith(b"\xef\xbb\xbf"):  # a byte-order mark, skipped by the flow as well
        data = data[3:]
    head = data.lstrip()[:1]
    try:
        if head in (b"{", b"["):
            return json.loads(data.decode("utf-8"))
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # any undecodable line (RecursionError too) is published as it is
        return None


class Publisher:
    """Appends events to the partition streams, ``pipeline_size`` XADDs per round trip.

    ``maxlen`` caps each stream approximately (``XADD MAXLEN ~``); leave it ``None`` unless the
    flow keeps up, since entries trimmed before they are read are lost to it.
    """

    def __init__(self, url: str, config: ChurnwatchConfig | None = None, *,
                 format: str = "json", pipeline_size: int = PIPELINE_SIZE,
                 maxlen: int | None = None,
                 client: redis.Redis | RedisCluster | None = None) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        self.config = config or ChurnwatchConfig()
        self.format = format
        self.pipeline_size = max(1, pipeline_size)
        self.maxlen = maxlen
        self.client = client or redis_client(url, socket_connect_timeout=5, socket_timeout=30)
        self.streams = stream_names(self.config.stream_prefix, self.config.stream_partitions)

    def encode(self, event: Mapping[str, Any] | bytes | str) -> tuple[int, bytes]:
        """The partition and the payload of one event.

        A mapping is encoded in the publisher's format; a line (bytes or text) is published as
        it is, except that a valid JSON object is re-encoded when the format is msgpack.
        """
        partitions = self.config.stream_partitions
        if isinstance(event, Mapping):
            obj: Any = event
            raw = None
        else:
            raw = (event.encode("utf-8", "surrogatepass") if isinstance(event, str)
                   else bytes(event))
            raw = raw.strip()
            obj = _loads(raw)
        cid = customer_id_of(obj)
        partition = 0 if cid is None else shard_of(cid, partitions)
        if raw is not None and (self.format == "json" or not isinstance(obj, Mapping)):
            return partition, raw
        try:
            if self.format == "msgpack":
                payload = msgpack.packb(obj, default=str)
            else:
                payload = json.dumps(obj, separators=(",", ":"), default=str).encode()
        except Exception:  # lone surrogates, huge ints, nesting too deep, cycles
            if raw is not None:
                return partition, raw  # valid JSON as it came: the flow reads it all the same
            payload = _last_resort(obj)
        if cid is None:
            # Encoding may have made an id of what was none (msgpack writes an integer beyond
            # 64 bits as its text): the partition is that of the id the flow will read.
            read = customer_id_of(_loads(payload))
            partition = 0 if read is None else shard_of(read, partitions)
        return partition, payload

    def publish(self, events: Iterable[Mapping[str, Any] | bytes | str],
                on_batch: Callable[[int], None] | None = None) -> int:
        """Publish every event in order; returns how many. ``on_batch(n)`` is called after each
        round trip with the number just written (pacing, progress)."""
        total = 0
        pipe = self.client.pipeline(transaction=False)
        pending = 0
        streams = self.streams
        field = PAYLOAD_FIELD
        maxlen = self.maxlen
        for event in events:
            partition, payload = self.encode(event)
            pipe.xadd(streams[partition], {field: payload}, maxlen=maxlen,
                      approximate=maxlen is not None)
            pending += 1
            if pending >= self.pipeline_size:
                pipe.execute()
                total += pending
                if on_batch is not None:
                    on_batch(pending)
                pending = 0
        if pending:
            pipe.execute()
            total += pending
            if on_batch is not None:
                on_batch(pending)
        return total

    def close(self) -> None:
        """Release the connection."""
        self.client.close()


def _last_resort(obj: Any) -> bytes:
    """Some bytes for a mapping nothing can encode: the flow dead-letters them with their
    position (the payload then says what the mapping looked like)."""
    try:
        return json.dumps(obj, default=str, ensure_ascii=True).encode()
    except Exception:
        try:
            return repr(obj).encode("utf-8", "backslashreplace")
        except Exception:
            return f"<unencodable {type(obj).__name__}>".encode()


def read_lines(paths: Iterable[str]) -> Iterator[bytes]:
    """Non-empty lines of files in order (``-`` is standard input)."""
    for path in paths:
        handle = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
        try:
            for line in handle:
                if line.strip():
                    yield line
        finally:
            if handle is not sys.stdin.buffer:
                handle.close()


