"""Replay: JSON Lines files pushed through the same dataflow and store as live mode, in event
time, with the counts of what was read, applied and dead-lettered, and where the dead letters
go. ``churnwatch replay``, ``backtest`` (:mod:`churnwatch.backtest`) and ``import`` run on it;
every customer's score as CSV is :mod:`churnwatch.export`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bytewax.testing import cluster_main, run_main

from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.events import InvalidEvent
from churnwatch.core.records import BatchResult, FlowHooks, TierTransition
from churnwatch.dataflows.file_source import STDIN, FileSource, count_lines
from churnwatch.dataflows.flow import FlowSettings, advance_all, build_flow
from churnwatch.export import iso_utc
from churnwatch.runtime import UsageError
from churnwatch.state.base import StateStore, claim_layout_of

# A replay shorter than this shows no progress bar at all.
PROGRESS_DELAY_SECONDS = 0.5
#: A replay's shards commit what they did at most this often (and at the end of the input): a
#: customer met in many batches is written once per commit, and a crash redoes at most this
#: much work.
REPLAY_COMMIT_SECONDS = 10.0


@dataclass
class ReplaySummary:
    """What a replay did, as counted by the flow's own callbacks (:class:`ReplayCounts`).

    ``read`` counts non-blank input lines; each was ``applied``, a duplicate or a dead letter
    (``late`` events are applied too, within the allowed lateness).
    """

    as_of: float | None
    silent_transitions: int
    read: int = 0
    applied: int = 0
    duplicates: int = 0
    late: int = 0
    dead_letters: int = 0
    transitions: int = 0
    newest_event: float | None = None
    seconds: float = 0.0
    read_errors: list[str] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        """Lines read per second of the whole replay."""
        return self.read / self.seconds if self.seconds > 0 else 0.0


class AsOfBeforeData(UsageError):
    """``--as-of`` is earlier than the newest event replayed; ``summary`` is what was done."""

    def __init__(self, message: str, summary: ReplaySummary) -> None:
        super().__init__(message)
        self.summary = summary


class ReplayCounts(FlowHooks):
    """Counts what the flow did from its callbacks (and passes them on to ``inner``), and moves
    a progress bar if one is given. Called from the worker threads, hence the lock."""

    def __init__(self, inner: FlowHooks | None = None, progress: Any = None) -> None:
        self.inner = inner or FlowHooks()
        self.progress = progress
        self.lock = threading.Lock()
        self.counts = ReplaySummary(None, 0)

    @property
    def newest_event(self) -> float | None:
        """The newest event time applied so far."""
        return self.counts.newest_event

    def decoded(self, source: str, received: int, invalid: Sequence[InvalidEvent],
                newest_published_at: float | None) -> None:
        """A batch of ``received`` lines was decoded; ``invalid`` are dead letters."""
        with self.lock:
            self.counts.read += received
            self.counts.dead_letters += len(invalid)
            if self.progress is not None:
                self.progress.update(received)
        self.inner.decoded(source, received, invalid, newest_published_at)

    def committed(self, source: str, result: BatchResult, oldest_received_at: float) -> None:
        """A shard batch was committed: its applied events, duplicates, late events and the
        dead letters the engine found (events too late to apply)."""
        with self.lock:
            counts = self.counts
            counts.applied += result.scored
            counts.duplicates += result.duplicates
            counts.late += result.late
            counts.dead_letters += len(result.dead_letters)
            if result.scored and (counts.newest_event is None
                                  or result.last_event_ts > counts.newest_event):
                counts.newest_event = result.last_event_ts
        self.inner.committed(source, result, oldest_received_at)

    def transitions(self, transitions: Sequence[TierTransition]) -> None:
        """Tier transitions were committed (by the flow, or by the ``--as-of`` advance)."""
        with self.lock:
            self.counts.transitions += len(transitions)
        self.inner.transitions(transitions)

    def dead_lettered(self, source: str, items: Sequence[InvalidEvent]) -> None:
        """Passed on: the summary counts dead letters as they are decoded or found late."""
        self.inner.dead_lettered(source, items)

    def summary(self, as_of: float | None = None, silent_transitions: int = 0,
                seconds: float = 0.0, read_errors: Sequence[str] = ()) -> ReplaySummary:
        """The counts so far as a :class:`ReplaySummary`."""
        with self.lock:
            return replace(self.counts, as_of=as_of, silent_transitions=silent_transitions,
                           seconds=seconds, read_errors=list(read_errors))


def progress_bar(paths: Sequence[str], enabled: bool) -> Any:
    """A tqdm bar on standard error over the inputs' lines, or ``None``.

    Only on a terminal (nothing is written to a pipe or a log), and only once a replay has run
    for :data:`PROGRESS_DELAY_SECONDS`. Standard input has no known length: the bar then counts.
    """
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    total = None if STDIN in paths else sum(count_lines(p) for p in paths)
    # A terminal that reports no size (a bare pseudo-terminal) would otherwise hide the bar.
    size = shutil.get_terminal_size((80, 24))
    return tqdm(total=total, unit=" events", unit_scale=True, file=sys.stderr, leave=False,
                delay=PROGRESS_DELAY_SECONDS, ncols=min(size.columns or 80, 100),
                nrows=max(size.lines, 2), desc="replaying")


def run_flow(settings: FlowSettings, paths: Sequence[str], workers: int = 1,
             labels: Mapping[str, str] | None = None) -> list[str]:
    """Run the dataflow over files to the end, in this process; return the inputs' read errors
    (a truncated gzip stream ends its file early, with a message here)."""
    source = FileSource(paths, settings.config.batch_size, labels)
    flow = build_flow(settings, source, "file")
    if workers <= 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return list(source.read_errors)


def replay(paths: Sequence[str], config: ChurnwatchConfig, store_factory: Callable[[],
           StateStore], as_of: float | None = None, hooks: FlowHooks | None = None,
           workers: int = 1, transitions_path: str | None = None,
           dead_letters_path: str | None = None, labels: Mapping[str, str] | None = None,
           progress: bool = False) -> ReplaySummary:
    """Replay files (``-``: standard input; gzip or plain), then (``as_of``) advance every
    silent customer to that instant.

    ``as_of`` earlier than the newest event replayed is refused with :class:`UsageError`
    before anything is advanced: silences would be negative. ``progress``: show a bar on a
    terminal.
    """
    for path in paths:
        if path != STDIN and not Path(path).is_file():
            raise FileNotFoundError(f"replay: no such file: {path}")
    started = time.perf_counter()
    bar = progress_bar(paths, progress)
    counts = ReplayCounts(hooks, bar)
    settings = FlowSettings(config, store_factory, clock="event", hooks=counts,
                            transitions_path=transitions_path,
                            dead_letters_path=dead_letters_path,
                            commit_seconds=REPLAY_COMMIT_SECONDS)
    # A store written with another shard count is refused here, before the flow starts.
    claim_layout_of(store_factory)
    try:
        read_errors = run_flow(settings, paths, workers, labels)
    finally:
        if bar is not None:
            bar.close()
    silent = 0
    if as_of is not None and read_errors == []:
        newest = counts.newest_event
        if newest is not None and as_of < newest:
            raise AsOfBeforeData(
                f"--as-of {iso_utc(as_of)} is earlier than the newest event replayed, "
                f"{iso_utc(newest)}: give an --as-of at or after it (the events were replayed; "
                f"nothing was advanced or exported)",
                counts.summary(as_of, 0, time.perf_counter() - started, read_errors))
        store = store_factory()
        advanced = advance_all(store, config, as_of, counts)
        silent = len(advanced)
        if transitions_path and advanced:
            # The changes of silence up to --as-of belong in the file with the flow's (worker
            # 0's file when there are several).
            path = transitions_path if workers <= 1 else f"{transitions_path}.0"
            with open(path, "a", encoding="utf-8") as handle:
                handle.writelines(json.dumps(t.as_dict()) + "\n" for t in advanced)
    return counts.summary(as_of, silent, time.perf_counter() - started, read_errors)


def default_dead_letters_path(inputs: Sequence[str], export: str | None) -> str:
    """Where dead letters go without ``--dead-letters-out``: beside the export, else beside the
    first input, else in the working directory (standard input). Never beside a device or a
    pipe: ``/dev/null.dead-letters.jsonl`` is no place for a file.

    >>> default_dead_letters_path(["orders.jsonl.gz"], "out/scores.csv")
    'out/scores.csv.dead-letters.jsonl'
    >>> default_dead_letters_path(["data/orders.jsonl.gz"], "-")
    'data/orders.jsonl.gz.dead-letters.jsonl'
    >>> default_dead_letters_path(["data/orders.jsonl.gz"], "/dev/null")
    'data/orders.jsonl.gz.dead-letters.jsonl'
    >>> default_dead_letters_path(["-"], None)
    'stdin.dead-letters.jsonl'
    """
    for place in (export, inputs[0]):
        if place and _regular_file_place(place):
            return f"{place}.dead-letters.jsonl"
    name = "stdin" if inputs[0] == STDIN else os.path.basename(inputs[0])
    return f"{name}.dead-letters.jsonl"


def _regular_file_place(path: str) -> bool:
    """``path`` names a regular file or nothing yet (not ``-``, a device, a FIFO or a socket):
    a file beside it is the user's."""
    return path != STDIN and (os.path.isfile(path) or not os.path.exists(path))


def dead_letter_files(path: str, workers: int) -> list[str]:
    """The files the dead-letter sink writes for ``path`` (one per worker when several)."""
    return [path] if workers <= 1 else [f"{path}.{i}" for i in range(workers)]


def clear_dead_letter_files(path: str, workers: int) -> None:
    """Remove a previous run's files at the default path, so they hold this run's only."""
    for name in dead_letter_files(path, workers):
        if os.path.isfile(name):
            os.remove(name)


def settle_dead_letter_files(path: str, workers: int) -> list[str]:
    """After a run at the default path: drop the empty files the sink opened, return the rest."""
    kept = []
    for name in dead_letter_files(path, workers):
        if os.path.isfile(name) and os.path.getsize(name) == 0:
            os.remove(name)
        elif os.path.isfile(name):
            kept.append(name)
    return kept


def render_summary(command: str, summary: ReplaySummary, customers: int,
                   dead_letters_where: str = "", extra: Sequence[tuple[str, str]] = ()) -> str:
    """The end-of-run report on standard error: one figure a line, the label first."""
    rows: list[tuple[str, str, str]] = [
        ("events read", f"{summary.read:,}", ""),
        ("applied", f"{summary.applied:,}", ""),
        ("duplicates", f"{summary.duplicates:,}", "(already applied: skipped)"
         if summary.duplicates else ""),
        ("late", f"{summary.late:,}", "(applied: within the allowed lateness)"
         if summary.late else ""),
        ("dead-lettered", f"{summary.dead_letters:,}", dead_letters_where),
        ("transitions", f"{summary.transitions:,}", "(tier changes, first tiers included)"),
        ("customers", f"{customers:,}", ""),
        ("seconds", f"{summary.seconds:.1f}", ""),
        ("events/s", f"{summary.events_per_second:,.0f}", ""),
        *((label, value, "") for label, value in extra),
    ]
    lines = [f"churnwatch {command}:"]
    for label, value, note in rows:
        lines.append(f"  {label:<14}{value:>12}  {note}".rstrip())
    if summary.read and not summary.applied:
        lines.append("  no line was a valid event: is the input JSON Lines of the contract in "
                     "docs/events.md? The dead letters say what each line lacked.")
    return "\n".join(lines)


