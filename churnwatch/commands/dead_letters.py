"""``churnwatch dead-letters``: read a live monitor's dead letters, and replay chosen ones.

The monitor writes every event it cannot use to its dead-letter stream in Redis
(``<key_prefix>:deadletters``, ``<key_prefix>:{deadletters}`` on a Redis Cluster; see
``churnwatch.state.redis_store``), each entry holding the reason, a detail, the source position,
the payload's exact bytes (``payload_encoding`` ``utf-8`` or ``base64``) and the customer id when
it is a valid one. The entry's id is when it was dead-lettered (milliseconds).

This command lists them, newest ``--limit`` of those chosen by ``--since``, ``--reason`` and
``--id``, oldest first. ``--replay`` pushes the chosen ones back onto the event streams after a
fix (an upgrade that knows a new event type, a raised ``max_amount`` or lateness, a clock that was
ahead), each to the partition its customer maps to as ``churnwatch publish`` does, so the flow
reads them like any new entry. Each dead letter is replayed at most once: the hash
``<dead-letter stream>:replayed`` maps a replayed entry's id to the stream entry it became,
written in the same atomic step as the ``XADD`` (one Lua script on one Redis); running the same
``--replay`` twice adds nothing the second time. On a Redis Cluster the streams and that hash
live in different slots: the id is claimed first (``HSETNX``), then pushed, so a replay cut off
between the two is lost rather than doubled (it shows as ``replayed: pending``). A replayed
event that fails again is a new dead letter with its new position.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, cast

import redis
from redis.cluster import RedisCluster

from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.events import DEAD_LETTER_REASONS
from churnwatch.dataflows.redis_source import PAYLOAD_FIELD, stream_names
from churnwatch.publish import partition_for
from churnwatch.state.redis_store import RedisStore

DEFAULT_LIMIT = 100
READ_CHUNK = 500
#: Payloads cut to their first bytes when dead-lettered: pushing the cut bytes back is no fix.
NOT_REPLAYABLE = frozenset({"too_large"})
PENDING = "pending"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ENTRY_ID = re.compile(r"^\d+-\d+$")

# Replays dead letters onto the event streams, each at most once, in one atomic step on one
# Redis. KEYS: the replayed hash, then the target streams. ARGV: per dead letter its entry id,
# the index of its stream in KEYS, the payload. Returns per dead letter the new entry id, or ""
# when the hash already holds it (replayed before).
_REPLAY = """
local out = {}
for i = 1, #ARGV, 3 do
  local id, k, payload = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if redis.call('HEXISTS', KEYS[1], id) == 1 then
    out[#out + 1] = ""
  else
    local new = redis.call('XADD', KEYS[k], '*', 'e', payload)
    redis.call('HSET', KEYS[1], id, KEYS[k] .. ' ' .. new)
    out[#out + 1] = new
  end
end
return out
"""


@dataclass
class DeadLetter:
    """One entry of the dead-letter stream, as ``--json`` prints it."""

    id: str  # the dead-letter stream entry id
    at: float  # when it was dead-lettered (epoch seconds, from the id)
    reason: str
    detail: str
    position: str
    payload: str
    payload_encoding: str  # "utf-8" or "base64"
    customer_id: str | None
    replayed: str | None  # "<stream> <entry id>" it became, "pending", or None

    def payload_bytes(self) -> bytes:
        """The payload's exact bytes."""
        if self.payload_encoding == "base64":
            return base64.b64decode(self.payload)
        return self.payload.encode("utf-8", "surrogateescape")

    def as_dict(self) -> dict[str, Any]:
        """Plain data, with the time also in RFC 3339."""
        data = asdict(self)
        data["time"] = _iso(self.at)
        return data


@dataclass
class ReplayOutcome:
    """What ``--replay`` did with the chosen dead letters."""

    replayed: list[tuple[str, str]]  # (dead-letter id, "<stream> <new entry id>")
    already: list[str]  # replayed before: left alone
    not_replayable: list[str]  # too_large: the payload was cut


def since_option(text: str, now: float | None = None) -> float:
    """``--since``: RFC 3339, epoch seconds, or an age (``90s``, ``30m``, ``6h``, ``7d``).

    >>> since_option("2h", now=10_000.0)
    2800.0
    >>> since_option("2024-01-01T00:00:00Z")
    1704067200.0
    """
    from churnwatch.runtime import time_option

    found = _DURATION.match(text.strip())
    if found:
        now = time.time() if now is None else now
        return now - float(found.group(1)) * _UNIT_SECONDS[found.group(2)]
    return time_option(text, "--since")


def dead_letter_keys(store: RedisStore) -> tuple[str, str]:
    """The dead-letter stream and its replayed hash (same hash tag: one cluster slot)."""
    stream, _ = store.topology.dead_letter_keys(store.prefix)
    return stream, f"{stream}:replayed"


def read_dead_letters(store: RedisStore, *, since: float | None = None,
                      reasons: Sequence[str] = (), ids: Sequence[str] = (),
                      limit: int = DEFAULT_LIMIT) -> list[DeadLetter]:
    """The newest ``limit`` dead letters (0: all retained) dead-lettered at or after ``since``,
    of one of ``reasons`` and among ``ids`` when given, oldest first."""
    stream, replayed_key = dead_letter_keys(store)
    client = store.client
    low = f"{max(int(since * 1000), 0)}-0" if since is not None else "-"
    chosen: list[tuple[bytes, dict[bytes, bytes]]] = []
    if ids:
        for entry_id in dict.fromkeys(ids):
            chosen.extend(client.xrange(stream, entry_id, entry_id, count=1))
        chosen.sort(key=lambda e: _id_key(e[0]), reverse=True)
        chosen = [e for e in chosen if low == "-" or _id_key(e[0]) >= _id_key(low.encode())]
        chosen = [e for e in chosen if not reasons or _text(e[1].get(b"reason")) in reasons]
    else:
        high = "+"
        while not limit or len(chosen) < limit:
            entries = client.xrevrange(stream, high, low, count=READ_CHUNK)
            chosen.extend(e for e in entries
                          if not reasons or _text(e[1].get(b"reason")) in reasons)
            if len(entries) < READ_CHUNK:
                break
            high = "(" + _text(entries[-1][0])
    if limit:
        chosen = chosen[:limit]
    chosen.reverse()
    done = client.hmget(replayed_key, [e[0] for e in chosen]) if chosen else []
    return [_letter(entry_id, fields, mark)
            for (entry_id, fields), mark in zip(chosen, done, strict=True)]


def replay_dead_letters(store: RedisStore, config: ChurnwatchConfig,
                        letters: Sequence[DeadLetter]) -> ReplayOutcome:
    """Push ``letters`` back onto the event streams, each at most once (see the module)."""
    stream_key, replayed_key = dead_letter_keys(store)
    streams = stream_names(config.stream_prefix, config.stream_partitions)
    outcome = ReplayOutcome([], [], [])
    todo: list[tuple[DeadLetter, str, bytes]] = []
    for letter in letters:
        if letter.reason in NOT_REPLAYABLE:
            outcome.not_replayable.append(letter.id)
            continue
        payload = letter.payload_bytes()
        todo.append((letter, streams[partition_for(payload, config.stream_partitions)],
                     payload))
    if not todo:
        return outcome
    if isinstance(store.client, RedisCluster):
        _replay_on_cluster(store.client, replayed_key, todo, outcome)
    else:
        targets = list(dict.fromkeys(stream for _, stream, _ in todo))
        args: list[str | bytes | int] = []
        for letter, stream, payload in todo:
            args += [letter.id, targets.index(stream) + 2, payload]
        script = store.client.register_script(_REPLAY)
        results = script(keys=[replayed_key, *targets], args=args)
        for (letter, stream, _), new in zip(todo, results, strict=True):
            if new:
                outcome.replayed.append((letter.id, f"{stream} {_text(new)}"))
            else:
                outcome.already.append(letter.id)
    _forget_trimmed(store.topology.node_for(stream_key), stream_key, replayed_key)
    return outcome


def _replay_on_cluster(client: RedisCluster, replayed_key: str,
                       todo: Sequence[tuple[DeadLetter, str, bytes]],
                       outcome: ReplayOutcome) -> None:
    """Claim each id, then push it: at most once, though not in one step across slots."""
    for letter, stream, payload in todo:
        if not client.hsetnx(replayed_key, letter.id, PENDING):
            outcome.already.append(letter.id)
            continue
        new = _text(cast(bytes, client.xadd(stream, {PAYLOAD_FIELD: payload})))
        client.hset(replayed_key, letter.id, f"{stream} {new}")
        outcome.replayed.append((letter.id, f"{stream} {new}"))


def _forget_trimmed(node: redis.Redis, stream: str, replayed_key: str) -> None:
    """Drop replay records of dead letters the stream no longer holds (trimmed by count or
    age): they can never be chosen again, and the hash stays as small as the stream."""
    first = cast(list[Any], node.xrange(stream, "-", "+", count=1))
    gone = [k for k in cast(list[bytes], node.hkeys(replayed_key))
            if not first or _id_key(k) < _id_key(first[0][0])]
    if gone:
        node.hdel(replayed_key, *[k.decode() for k in gone])


def render(letters: Sequence[DeadLetter]) -> str:
    """One line per dead letter for a person: time, id, reason, position, detail, payload."""
    if not letters:
        return "no dead letters match"
    lines = []
    for d in letters:
        payload = d.payload if d.payload_encoding == "utf-8" else f"base64:{d.payload}"
        payload = payload if len(payload) <= 80 else payload[:77] + "..."
        replayed = f"  [replayed: {d.replayed}]" if d.replayed else ""
        lines.append(f"{_iso(d.at)}  {d.id}  {d.reason}  {d.position}  {d.detail}{replayed}")
        lines.append(f"    {payload!r}")
    return "\n".join(lines)


def _letter(entry_id: bytes, fields: dict[bytes, bytes], mark: bytes | None) -> DeadLetter:
    text = _text(entry_id)
    return DeadLetter(
        id=text, at=int(text.partition("-")[0]) / 1000.0,
        reason=_text(fields.get(b"reason")), detail=_text(fields.get(b"detail")),
        position=_text(fields.get(b"position")),
        payload=fields.get(b"payload", b"").decode("utf-8", "surrogateescape"),
        payload_encoding=_text(fields.get(b"payload_encoding")) or "utf-8",
        customer_id=_text(fields.get(b"customer_id")) or None,
        replayed=_text(mark) if mark is not None else None)


def _id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.decode().partition("-")
    return int(ms), int(seq or 0)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """``churnwatch dead-letters``."""
    from churnwatch.runtime import UsageError, config_from_args, monitor_store

    config = config_from_args(args)
    if args.limit < 0:
        raise UsageError(f"--limit must be 0 (all) or more, got {args.limit}")
    since = since_option(args.since) if args.since else None
    for entry_id in args.id or ():
        if not _ENTRY_ID.match(entry_id):
            raise UsageError(f"--id: not a stream entry id (MILLISECONDS-SEQUENCE, as listed): "
                             f"{entry_id!r}")
    with monitor_store(args, config, "dead-letters") as store:
        letters = read_dead_letters(store, since=since, reasons=args.reason or (),
                                    ids=args.id or (), limit=args.limit)
        outcome = replay_dead_letters(store, config, letters) if args.replay else None
        if outcome is not None:
            marks = dict(outcome.replayed)
            for letter in letters:
                letter.replayed = marks.get(letter.id, letter.replayed)
    if args.json:
        print(json.dumps([d.as_dict() for d in letters], indent=2))
    else:
        print(render(letters))
    if outcome is not None:
        print(f"replayed {len(outcome.replayed)} onto {config.stream_prefix}:0.."
              f"{config.stream_partitions - 1}; {len(outcome.already)} replayed before, left "
              f"alone; {len(outcome.not_replayable)} too_large (payload cut), not replayed",
              file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``dead-letters``."""
    from churnwatch.runtime import add_monitor_options

    p = sub.add_parser("dead-letters", help="list a live monitor's dead letters (from its "
                       "Redis); --replay pushes chosen ones back onto the streams, each once",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--since", metavar="TIME", help="dead-lettered at or after TIME: RFC 3339, "
                   "epoch seconds, or an age such as 30m, 6h, 7d")
    p.add_argument("--reason", action="append", choices=DEAD_LETTER_REASONS,
                   help="only this reason (repeatable)")
    p.add_argument("--id", action="append", metavar="ENTRY_ID",
                   help="only this dead-letter entry (repeatable)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, metavar="N",
                   help="the newest N that match (default: %(default)s; 0: all retained)")
    p.add_argument("--json", action="store_true", help="print JSON (full payloads)")
    p.add_argument("--replay", action="store_true", help="push the chosen dead letters back "
                   "onto the event streams, each at most once (run without it first to see "
                   "which)")
    add_monitor_options(p)
    p.set_defaults(func=cmd_dead_letters)
