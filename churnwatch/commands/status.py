"""``churnwatch status``: how far a running monitor has got, read from its Redis alone.

For every partition stream of the configuration: the stream's end (its newest entry), the
position up to which the monitor has committed every entry, the lag between them in entries,
and when a shard last committed; then customers per tier, the dead letters, and what each
shard's buyer model has learned so far. An operator
knows a backfill is consumed when every lag is 0, without Prometheus.

Where the figures come from: each shard commits, in the same Redis transaction as its state,
the highest offset it has processed per source partition (``P:{sN}:positions``, see
``churnwatch.state.redis_store``); a batch of dead letters only commits no shard, so the
dead-letter write records its own time per partition, and a partition's last commit is the
newest of both. A partition's events are spread over several shards, so the
lag is counted entry by entry after the lowest of those positions: an entry is pending when its
customer's shard has not processed it, and an entry that is a dead letter is pending until it
is on the dead-letter stream. Counting stops at ``scan_limit`` entries per partition (shown
as ``>= N``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import redis

from churnwatch.core.aggregates import TierCustomers
from churnwatch.core.config import TIERS, ChurnwatchConfig
from churnwatch.core.engine import partition_id
from churnwatch.core.events import Event, decode_event
from churnwatch.core.horizon import describe_within
from churnwatch.core.priors import PopulationPriors
from churnwatch.dataflows.redis_source import PAYLOAD_FIELD, id_offset, stream_names
from churnwatch.state.base import shard_of
from churnwatch.state.redis_store import CommittedPositions, RedisStore

SCAN_LIMIT = 200_000
SCAN_CHUNK = 2_000


@dataclass
class PartitionStatus:
    """One source partition (a Redis stream) as the monitor has consumed it."""

    stream: str
    end_id: str | None  # newest entry ever added; None: no such stream yet
    entries: int  # entries the stream holds now
    committed_id: str | None  # every entry up to this one is committed; None: none yet
    lag: int  # entries after it not yet committed (at least this many if lag_capped)
    lag_capped: bool
    last_commit: float | None  # wall clock, newest commit of a shard reading this partition


@dataclass
class ShardModel:
    """What one shard's buyer model has learned (docs/scoring.md)."""

    sampled_buyers: int
    fits: int  # 0: still on the configured defaults
    evidence_weight: float | None  # None before the first fit
    value_coefficient: float  # the first basket's log-odds shift per deviation; 0: none
    usual_first_basket: float | None  # the sample's typical first basket, where it counts
    calibrated_horizons: list[float]  # horizons whose matured outcomes calibrate the chance

    @classmethod
    def of(cls, priors: PopulationPriors) -> ShardModel:
        """Read from a shard's priors."""
        value = priors.value
        return cls(len(priors.sample), priors.fits,
                   None if priors.model is None else priors.model.evidence_weight,
                   value.coefficient,
                   round(math.expm1(value.mean), 2) if value.coefficient else None,
                   sorted(priors.calibration))


@dataclass
class MonitorStatus:
    """Everything ``churnwatch status`` reports."""

    partitions: list[PartitionStatus]
    tiers: dict[str, int]
    dead_letters: int  # ever added to the dead-letter stream
    dead_letters_kept: int  # still on it (the stream is capped)
    last_commit: float | None
    at: float  # when this status was read (wall clock)
    segments: dict[str, dict[str, int]] = field(default_factory=dict)
    models: list[ShardModel] = field(default_factory=list)  # per stored shard, in shard order
    #: The shop's own segments ([segments] max_segments): kept, a few refused, refused in all.
    kept_segments: list[str] = field(default_factory=list)
    max_segments: int = 0
    refused_segments: list[str] = field(default_factory=list)
    refused_segment_count: int = 0
    #: Per segment label, the horizon(s) its chances are about and whether they were learned
    #: from its reorders (several when shards learned different ones).
    horizons: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def customers(self) -> int:
        """Customers held, all tiers."""
        return sum(self.tiers.values())

    @property
    def consumed(self) -> bool:
        """Whether every partition is committed up to its end."""
        return all(p.lag == 0 for p in self.partitions)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``; times as RFC 3339 (UTC) beside epoch seconds."""
        data = asdict(self)
        for part in data["partitions"]:
            part["last_commit_time"] = _iso(part["last_commit"])
        data["last_commit_time"] = _iso(self.last_commit)
        data["customers"] = self.customers
        data["consumed"] = self.consumed
        return data

    def render(self) -> str:
        """A table for a person."""
        header = ("partition", "end", "committed", "lag", "last commit")
        rows = [header] + [
            (p.stream, p.end_id or "(no stream)", p.committed_id or "-",
             (">= " if p.lag_capped else "") + f"{p.lag:,}", _age(p.last_commit, self.at))
            for p in self.partitions]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) if i != 3 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
                 for row in rows]
        lag = sum(p.lag for p in self.partitions)
        lines.append("all consumed" if self.consumed else
                     f"{'at least ' if any(p.lag_capped for p in self.partitions) else ''}"
                     f"{lag:,} entries not yet committed")
        lines.append("")
        lines.append(f"customers: {self.customers:,}  " + "  ".join(
            f"{tier} {self.tiers.get(tier, 0):,}" for tier in TIERS))
        lines.append(f"last commit: {_age(self.last_commit, self.at)}")
        kept = "" if self.dead_letters_kept == self.dead_letters else \
            f" ({self.dead_letters_kept:,} still on the stream)"
        lines.append(f"dead letters: {self.dead_letters:,}{kept}")
        if self.horizons:
            lines.append(_horizons_line(self.horizons))
        if self.models:
            lines.append(_models_line(self.models))
        lines.extend(self._segment_lines())
        return "\n".join(lines)

    def _segment_lines(self) -> list[str]:
        kept = ", ".join(self.kept_segments) or "none"
        lines = [f"segments found in the events: {len(self.kept_segments)} kept of at most "
                 f"{self.max_segments} ({kept})"]
        if self.refused_segment_count:
            lines.append(
                f"warning: the segment cap is reached ([segments] max_segments = "
                f"{self.max_segments}): {self.refused_segment_count:,} more value(s) count as "
                f"'other' (e.g. {', '.join(self.refused_segments)}); name the segments you "
                "want in [segments.NAME] or raise max_segments")
        return lines


def monitor_status(store: RedisStore, config: ChurnwatchConfig,
                   scan_limit: int = SCAN_LIMIT, now: float | None = None) -> MonitorStatus:
    """Read the status of the monitor whose state ``store`` holds."""
    now = time.time() if now is None else now
    committed = store.committed_positions()
    dead_commits = store.dead_letter_commit_times()
    dead_positions: set[str] | None = None

    def dead() -> set[str]:
        nonlocal dead_positions
        if dead_positions is None:
            dead_positions = {str(r.get("position")) for r in store.dead_letters(10**7)}
        return dead_positions

    partitions = [_partition_status(store.client, stream, committed, config, scan_limit, now,
                                    dead, dead_commits.get(f"redis:{stream}"))
                  for stream in stream_names(config.stream_prefix, config.stream_partitions)]
    tiers = {tier: 0 for tier in TIERS}
    segments: dict[str, dict[str, int]] = {}
    shards = store.shard_states()
    for shard in shards:
        for key, value in shard.gauges.items():
            if isinstance(key, TierCustomers):
                tiers[key.tier] = tiers.get(key.tier, 0) + round(value)
                per = segments.setdefault(key.segment, {t: 0 for t in TIERS})
                per[key.tier] = per.get(key.tier, 0) + round(value)
    added, kept = store.dead_letter_count()
    commits = [c.committed_at for c in committed.values() if c.committed_at is not None]
    commits += dead_commits.values()
    record = store.segment_record()
    seen = config.with_discovered(record.kept)
    horizons: dict[str, dict[str, Any]] = {}
    for label in sorted(segments):
        policy = seen.policy(label)
        days = sorted({shard.priors.horizon(label) or policy.horizon_days for shard in shards}) \
            if policy.horizon_learned else [policy.horizon_days]
        horizons[label] = {"days": days, "learned": policy.horizon_learned}
    return MonitorStatus(partitions, tiers, added, kept, max(commits) if commits else None,
                         now, segments, [ShardModel.of(shard.priors) for shard in shards],
                         list(seen.discovered_segments),
                         config.max_segments, list(record.refused), record.refused_count,
                         horizons)


def _horizons_line(horizons: dict[str, dict[str, Any]]) -> str:
    """What each segment's chances and tiers are about.

    >>> print(_horizons_line({"fashion": {"days": [180.0], "learned": False},
    ...                       "other": {"days": [21.0], "learned": True}}))
    horizons: fashion 180 days (configured); other 3 weeks (learned from its reorders)
    """
    said = []
    for label, horizon in horizons.items():
        how = "learned from its reorders" if horizon["learned"] else "configured"
        words = (describe_within(horizon["days"][0]) if horizon["learned"]
                 else f"{horizon['days'][0]:g} days")
        if len(horizon["days"]) > 1:
            words = " / ".join(describe_within(d) for d in horizon["days"]) + " (by shard)"
        said.append(f"{label} {words} ({how})")
    return "horizons: " + "; ".join(said)


def _models_line(models: list[ShardModel]) -> str:
    """One line on the shards' buyer models: shard by shard up to eight shards, else how many
    shards share each value.

    >>> print(_models_line([ShardModel(900, 14, 0.7, 0.0, None, [180.0]),
    ...                     ShardModel(40, 0, None, 0.0, None, []),
    ...                     ShardModel(2048, 21, 1.0, 0.15, 38.5, [90.0, 180.0])]))
    buyer models, shard by shard: fits 14 / 0 / 21; evidence weight 0.7 / - / 1; first basket \
none / none / +0.15 per deviation (usual 38.50); calibrated 1 / 0 / 2 horizons
    >>> print(_models_line([ShardModel(2048, 30, 1.0, 0.0, None, [180.0])] * 9
    ...                    + [ShardModel(2048, 31, 0.7, 0.2, 20.0, [180.0])]))
    buyer models of 10 shards: fits 30 to 31; evidence weight 1 on 9, 0.7 on 1; first basket \
counts on 1 (+0.2); calibrated on 10
    """
    def value(m: ShardModel) -> str:
        if not m.value_coefficient:
            return "none"
        return f"{m.value_coefficient:+g} per deviation (usual {m.usual_first_basket:.2f})"

    def weight(m: ShardModel) -> str:
        return "-" if m.evidence_weight is None else f"{m.evidence_weight:g}"

    if len(models) <= 8:
        return ("buyer models, shard by shard: fits " + " / ".join(str(m.fits) for m in models)
                + "; evidence weight " + " / ".join(weight(m) for m in models)
                + "; first basket " + " / ".join(value(m) for m in models)
                + "; calibrated " + " / ".join(str(len(m.calibrated_horizons)) for m in models)
                + " horizons")
    fits = sorted(m.fits for m in models)
    weights: dict[str, int] = {}
    for m in models:
        weights[weight(m)] = weights.get(weight(m), 0) + 1
    counting = sorted({m.value_coefficient for m in models if m.value_coefficient})
    counts = sum(1 for m in models if m.value_coefficient)
    return (f"buyer models of {len(models)} shards: fits {fits[0]} to {fits[-1]}; evidence "
            "weight " + ", ".join(f"{w} on {n}" for w, n in
                                  sorted(weights.items(), key=lambda item: -item[1]))
            + f"; first basket counts on {counts}"
            + (f" ({', '.join(f'{c:+g}' for c in counting)})" if counting else "")
            + f"; calibrated on {sum(1 for m in models if m.calibrated_horizons)}")


def _partition_status(client: redis.Redis, stream: str,
                      committed: Mapping[int, CommittedPositions], config: ChurnwatchConfig,
                      scan_limit: int, now: float, dead: Callable[[], set[str]],
                      dead_commit: float | None = None) -> PartitionStatus:
    pid = partition_id(f"redis:{stream}")
    done = {shard: c.offsets[pid] for shard, c in committed.items() if pid in c.offsets}
    times = [c.committed_at for c in committed.values()
             if pid in c.offsets and c.committed_at is not None]
    if dead_commit is not None:  # a batch of dead letters only: no shard committed it
        times.append(dead_commit)
    last_commit = max(times) if times else None
    try:
        info = client.xinfo_stream(stream)
    except redis.ResponseError:  # no such stream: nothing published yet
        return PartitionStatus(stream, None, 0, None, 0, False, last_commit)
    end_id = _text(info["last-generated-id"])
    start = f"({_entry_id(min(done.values()))}" if done else "-"
    pending = 0
    first_pending: str | None = None
    last_committed: str | None = start[1:] if done else None
    scanned = 0
    capped = False
    while True:
        wanted = min(SCAN_CHUNK, scan_limit - scanned)
        entries = client.xrange(stream, start, "+", count=wanted)
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            if _is_committed(stream, entry_id, fields, done, config, now, dead):
                if first_pending is None:
                    last_committed = entry_id
            else:
                pending += 1
                first_pending = first_pending or entry_id
        scanned += len(entries)
        if len(entries) < wanted:
            break
        start = f"({_text(entries[-1][0])}"
        if scanned >= scan_limit:
            capped = bool(client.xrange(stream, start, "+", count=1))
            break
    return PartitionStatus(stream, end_id, int(info["length"]),
                           last_committed if first_pending or capped else end_id,
                           pending, capped, last_commit)


def _is_committed(stream: str, entry_id: str, fields: Mapping[bytes, bytes],
                  done: Mapping[int, int], config: ChurnwatchConfig, now: float,
                  dead: Callable[[], set[str]]) -> bool:
    """Whether the monitor has committed the entry: its customer's shard processed it, or,
    for an entry that is not a valid event, it is on the dead-letter stream."""
    payload = fields.get(PAYLOAD_FIELD)
    if payload is None:  # not written by a churnwatch publisher: decoded as the source does
        payload = json.dumps({k.decode(errors="replace"): v.decode(errors="replace")
                              for k, v in fields.items()}).encode()
    position = f"{stream}:{entry_id}"
    decoded = decode_event(payload, position=position, now=now,
                           max_future_seconds=config.max_future_seconds)
    if isinstance(decoded, Event):
        shard = shard_of(decoded.customer_id, config.shards)
        return id_offset(entry_id) <= done.get(shard, -1)
    return position in dead()


def _entry_id(offset: int) -> str:
    """Inverse of ``id_offset``.

    >>> _entry_id(1714557600000000003)
    '1714557600000-3'
    """
    ms, seq = divmod(offset, 1_000_000)
    return f"{ms}-{seq}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def _age(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    seconds = max(now - ts, 0.0)
    ago = (f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
           if seconds < 7200 else f"{seconds / 3600:.1f} h")
    return f"{_iso(ts)} ({ago} ago)"


def cmd_status(args: argparse.Namespace) -> int:
    """``churnwatch status``."""
    from churnwatch.runtime import UsageError, config_from_args, monitor_store

    config = config_from_args(args)
    if args.scan_limit < 1:
        raise UsageError(f"--scan-limit must be at least 1, got {args.scan_limit}")
    with monitor_store(args, config, "status") as store:
        status = monitor_status(store, config, args.scan_limit)
    print(json.dumps(status.as_dict(), indent=2) if args.json else status.render())
    return 0


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``status``."""
    from churnwatch.runtime import add_monitor_options

    p = sub.add_parser("status", help="per partition: stream end, committed position, lag; "
                       "customers per tier, dead letters, what each shard's buyer model "
                       "learned (from the monitor's Redis)",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--scan-limit", type=int, default=SCAN_LIMIT, metavar="N",
                   help="count at most N pending entries per partition (default: %(default)s)")
    add_monitor_options(p)
    p.set_defaults(func=cmd_status)
