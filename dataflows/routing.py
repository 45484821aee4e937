"""Which worker of a Bytewax cluster scores which shard: the one that reads the shard's events.

A shard's events all come from one source partition (``shard % P``: the publisher puts an event
on partition ``crc32(customer_id) % P`` and the shard is ``crc32(customer_id) % S``, ``S`` a
multiple of ``P``). Bytewax gives each source partition to one worker, and sends each item of a
stateful step to the worker its *key* hashes to. Keyed by the shard number alone (``"0"`` ..
``"15"``), that hash ignores where the events were read: on two workers ten of the sixteen
shards landed on one worker and half of all events were pickled across to the other process
(docs/benchmarks.md, "One process vs two").

:func:`shard_keys` picks, for every shard, a key that Bytewax routes to the worker reading the
shard's partition: the shard number, with a suffix (``"5~2"``) when the bare number hashes
elsewhere. Every worker computes the same keys from the same inputs, so the guarantee that one
shard is scored by one worker at a time is Bytewax's, whatever the keys are; only where the
work happens depends on the two models below of Bytewax 0.21.1 (pinned), which
``tests/test_routing.py`` checks against a real cluster. Were a future Bytewax to route
differently, the flow would stay correct and only lose this locality.
"""

from __future__ import annotations

from collections.abc import Sequence

_MASK = (1 << 64) - 1
_MAX_SUFFIX = 100_000


def _rotl(x: int, bits: int) -> int:
    return ((x << bits) | (x >> (64 - bits))) & _MASK


def _sip_round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _MASK
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _MASK
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _MASK
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _MASK
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash13(data: bytes) -> int:
    """SipHash-1-3 with the zero key: Rust's ``std::collections::hash_map::DefaultHasher::new``.

    >>> hex(siphash13(b""))
    '0xd1fba762150c532c'
    """
    v0, v1 = 0x736F6D6570736575, 0x646F72616E646F6D
    v2, v3 = 0x6C7967656E657261, 0x7465646279746573
    whole = len(data) - len(data) % 8
    for start in range(0, whole, 8):
        word = int.from_bytes(data[start:start + 8], "little")
        v3 ^= word
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
        v0 ^= word
    last = ((len(data) & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= last
    v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def key_worker(key: str, workers: int) -> int:
    """The worker Bytewax 0.21.1 sends a stateful step's item with ``key`` to: the key's Rust
    ``String`` hash (its bytes and a ``0xff`` terminator, through ``DefaultHasher``) modulo the
    worker count.

    >>> key_worker("3", 1)
    0
    >>> sorted({key_worker(str(s), 2) for s in range(16)})
    [0, 1]
    """
    return siphash13(key.encode() + b"\xff") % workers


def partition_workers(partitions: Sequence[str], workers: int) -> dict[str, int]:
    """The worker that reads each source partition under Bytewax 0.21.1 when every worker lists
    every partition: the partitions in the byte order of their names, dealt out in turn from
    worker 0 (note ``":10"`` sorts before ``":2"``).

    >>> partition_workers(["s:0", "s:1", "s:2", "s:3"], 2)
    {'s:0': 0, 's:1': 1, 's:2': 0, 's:3': 1}
    >>> partition_workers(["s:0", "s:1", "s:2", "s:10"], 3)["s:2"]
    0
    """
    ordered = sorted(partitions, key=lambda name: name.encode())
    return {name: index % workers for index, name in enumerate(ordered)}


def shard_keys(shards: int, workers: int, partitions: Sequence[str] | None = None) -> list[str]:
    """The stateful key of each shard, so that Bytewax routes shard ``s`` to the worker reading
    partition ``partitions[s % len(partitions)]`` (``partitions`` in the publisher's order: the
    name of partition ``p`` at index ``p``). Without partitions (a source that does not split by
    customer, such as a file) the shards are dealt out evenly: shard ``s`` to worker
    ``s % workers``. One worker keeps the bare shard numbers.

    >>> shard_keys(4, 1)
    ['0', '1', '2', '3']
    >>> keys = shard_keys(16, 2, ["e:0", "e:1", "e:2", "e:3"])
    >>> [key_worker(k, 2) for k in keys[:4]], keys[0].split("~")[0]
    ([0, 1, 0, 1], '0')
    """
    if workers <= 1:
        return [str(s) for s in range(shards)]
    if partitions:
        owners = partition_workers(partitions, workers)
        targets = [owners[partitions[s % len(partitions)]] for s in range(shards)]
    else:
        targets = [s % workers for s in range(shards)]
    keys = []
    for shard, target in enumerate(targets):
        key = str(shard)
        suffix = 0
        while key_worker(key, workers) != target:
            suffix += 1
            if suffix > _MAX_SUFFIX:  # 1 in `workers` keys fits: never reached in practice
                raise RuntimeError(f"no routing key for shard {shard} to worker {target}")
            key = f"{shard}~{suffix}"
        keys.append(key)
    return keys
