"""``backtest()``: replay a log up to a cut-off, score everyone as of it, and hand each
customer's score and what they really did next to the judge (:mod:`churnwatch.judge`).

The log is split at the cut-off (:func:`split_at_cutoff`): the events before it are replayed
through the same dataflow as ``replay``; the orders after it, within the judged horizon, say
who returned. The classic models are fitted on the same orders.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.customer import DAY
from churnwatch.core.events import ORDER, Event, decode_event
from churnwatch.core.records import FlowHooks
from churnwatch.dataflows.file_source import input_label, open_input
from churnwatch.export import export_rows, iso_utc
from churnwatch.judge.classic import benchmark
from churnwatch.judge.report import (
    BacktestReport,
    CustomerOutcome,
    Prediction,
    build_report,
    outside_their_tier,
)
from churnwatch.replay import replay
from churnwatch.runtime import UsageError
from churnwatch.state.base import StateStore


@dataclass
class CutoffSplit:
    """A history cut at the cut-off: ``prefix`` is a copy of the file with every line after the
    cut-off blanked (so line numbers, hence dead-letter positions, stay the user's file's);
    ``churned`` says, per customer who ordered by the cut-off, whether no order followed within
    the horizon; ``orders_before`` holds their order times up to the cut-off; ``newest_event`` is
    the newest valid event time in the whole file."""

    prefix: str
    churned: dict[str, bool]
    orders_before: dict[str, list[float]]
    newest_event: float | None
    after_cutoff: int


def split_at_cutoff(path: str, cutoff: float, horizon_days: float, workdir: str,
                    max_amount: float | None = None) -> CutoffSplit:
    """Write the events up to ``cutoff`` to a new file (``path`` may be gzipped, or ``-``);
    invalid lines are kept in the prefix so the replay dead-letters them as usual."""
    limits = {} if max_amount is None else {"max_amount": max_amount}
    prefix = os.path.join(workdir, "before-cutoff.jsonl")
    end = cutoff + horizon_days * DAY
    orders_before: dict[str, list[float]] = {}
    ordered_after: set[str] = set()
    newest: float | None = None
    after = 0
    label = input_label(path)
    number = 0
    with open_input(path) as source, open(prefix, "wb") as out:
        lines = iter(source)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                break
            except (OSError, EOFError, zlib.error) as exc:
                raise UsageError(f"backtest: {label}: unreadable after line {number} ({exc})"
                                 ) from None
            number += 1
            if not line.strip():
                out.write(b"\n")
                continue
            event = decode_event(line, position=f"{label}:{number}", msgpack_allowed=False,
                                 **limits)
            if not isinstance(event, Event):
                out.write(line if line.endswith(b"\n") else line + b"\n")
                continue
            if newest is None or event.ts > newest:
                newest = event.ts
            if event.ts <= cutoff:
                out.write(line if line.endswith(b"\n") else line + b"\n")
                if event.type == ORDER:
                    orders_before.setdefault(event.customer_id, []).append(event.ts)
                continue
            out.write(b"\n")
            after += 1
            if event.ts <= end and event.type == ORDER:
                ordered_after.add(event.customer_id)
    return CutoffSplit(prefix, {c: c not in ordered_after for c in orders_before},
                       orders_before, newest, after)


def check_horizon(path: str, split: CutoffSplit, cutoff: float, horizon_days: float) -> None:
    """Refuse a backtest whose horizon runs past the newest event's day: every customer would
    count as churned for want of data, and the figures would lie."""
    if split.newest_event is None:
        raise UsageError(f"backtest: {path} holds no valid event")
    end = cutoff + horizon_days * DAY
    # A day's grace: logs with day resolution stamp their last day at midnight, and a horizon
    # ending within that day is covered by it.
    if end > split.newest_event + DAY:
        latest = split.newest_event + DAY - horizon_days * DAY
        raise UsageError(
            f"backtest: the cut-off {iso_utc(cutoff)} plus {horizon_days:g} days of horizon ends "
            f"at {iso_utc(end)}, after the newest event in {path} ({iso_utc(split.newest_event)}); "
            f"choose a cut-off at or before {iso_utc(latest)} or a shorter horizon")


def backtest(path: str, cutoff: float, horizon_days: float, config: ChurnwatchConfig,
             store_factory: Callable[[], StateStore], workers: int = 1,
             hooks: FlowHooks | None = None, dead_letters_path: str | None = None,
             progress: bool = False, classic: bool = True,
             truth: Mapping[str, bool] | None = None) -> BacktestReport:
    """Replay up to ``cutoff``, score everyone as of it, and judge against the next
    ``horizon_days`` (refused when the file ends before the horizon does), beside the classic
    models fitted on the same orders (``classic``) and the plain baselines (time since last
    order, order count), both read from the log itself. ``truth`` (customer id -> has really
    left, known for a simulated shop) adds the rankings against it."""
    with tempfile.TemporaryDirectory(prefix="churnwatch-backtest-") as workdir:
        split = split_at_cutoff(path, cutoff, horizon_days, workdir,
                                max_amount=config.max_amount)
        check_horizon(path, split, cutoff, horizon_days)
        summary = replay([split.prefix], config, store_factory, as_of=cutoff, workers=workers,
                         hooks=hooks, dead_letters_path=dead_letters_path,
                         labels={split.prefix: input_label(path)}, progress=progress)
    if summary.read_errors:
        raise UsageError("; ".join(summary.read_errors))
    store = store_factory()
    scored = {str(row["customer_id"]): row for row in export_rows(store, config, cutoff)}
    ids = sorted(c for c in split.churned if c in scored)
    outcomes = []
    for cid in ids:
        row, times = scored[cid], split.orders_before[cid]
        outcomes.append(CustomerOutcome(
            health_score=float(row["health_score"]),  # type: ignore[arg-type]
            tier=str(row["tier"]),
            return_probability=float(row["return_probability"]),  # type: ignore[arg-type]
            days_since_last_order=(cutoff - max(times)) / DAY, orders=len(times),
            churned=split.churned[cid]))
    predictions = []
    if classic and ids:
        for bench in benchmark({c: split.orders_before[c] for c in ids}, cutoff, horizon_days):
            # benchmark() orders customers by id, as ``ids`` is.
            predictions.append(Prediction(bench.name, bench.p_purchase.tolist(),
                                          bench.expected_purchases.tolist(), bench.detail()))
    # The horizon each segment's return_probability is for (configured or learned).
    horizons: dict[str, set[float]] = {}
    for row in scored.values():
        days = float(row["horizon_days"])  # type: ignore[arg-type]
        horizons.setdefault(str(row["segment"]), set()).add(days)
    every = set().union(*horizons.values()) if horizons else set()
    incoherent = sum(1 for row in scored.values() if outside_their_tier(
        float(row["health_score"]), str(row["tier"]),  # type: ignore[arg-type]
        config.policy(str(row["segment"]))))
    learned = any(config.policy(segment).horizon_learned for segment in horizons)
    return build_report(outcomes, predictions, horizon_days,
                        every.pop() if len(every) == 1 else None,
                        None if truth is None else [truth[c] for c in ids],
                        horizons={s: sorted(h) for s, h in sorted(horizons.items())},
                        horizons_learned=learned, incoherent=incoherent)


def dump_json(data: object) -> str:
    """Pretty JSON for reports."""
    return json.dumps(data, indent=2, sort_keys=True, default=str)
