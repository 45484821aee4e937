"""Replay, export and backtest: the file-driven uses of the dataflow.

``replay`` pushes JSON Lines files through the same dataflow and store as live mode, in event
time; ``export`` writes every customer's score as of an instant; ``backtest`` replays up to a
cut-off and judges the scores against what customers really did next.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bytewax.testing import cluster_main, run_main

from churnwatch.backtest import BacktestReport, build_report
from churnwatch.core.config import COMPONENTS, ChurnwatchConfig
from churnwatch.core.customer import DAY
from churnwatch.core.events import ORDER, Event, decode_event
from churnwatch.core.scoring import assess, reasons, tier_name
from churnwatch.dataflows.file_source import FileSource
from churnwatch.dataflows.flow import FlowHooks, FlowSettings, advance_all, build_flow
from churnwatch.state.base import StateStore, shard_of


@dataclass
class ReplaySummary:
    """What a replay did."""

    as_of: float | None
    silent_transitions: int


def run_flow(settings: FlowSettings, paths: Sequence[str], workers: int = 1) -> None:
    """Run the dataflow over files to the end, in this process."""
    flow = build_flow(settings, FileSource(paths, settings.config.batch_size), "file")
    if workers <= 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)


def replay(paths: Sequence[str], config: ChurnwatchConfig, store_factory: Callable[[],
           StateStore], as_of: float | None = None, hooks: FlowHooks | None = None,
           workers: int = 1, transitions_path: str | None = None,
           dead_letters_path: str | None = None) -> ReplaySummary:
    """Replay files, then (``as_of``) advance every silent customer to that instant."""
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"replay: no such file: {path}")
    settings = FlowSettings(config, store_factory, clock="event", hooks=hooks or FlowHooks(),
                            transitions_path=transitions_path,
                            dead_letters_path=dead_letters_path)
    run_flow(settings, paths, workers)
    silent = 0
    if as_of is not None:
        store = store_factory()
        silent = len(advance_all(store, config, as_of, hooks))
    return ReplaySummary(as_of, silent)


def state_time(store: StateStore) -> float:
    """The newest event time any shard has seen (the instant "now" means after a replay)."""
    marks = [s.watermark for s in store.shard_states()]
    return max(marks) if marks else 0.0


EXPORT_COLUMNS = ["customer_id", "health_score", "tier", "segment", *COMPONENTS,
                  "return_probability", "orders", "spend", "last_order", "days_since_last_order",
                  "high_value", "reasons"]


def export_rows(store: StateStore, config: ChurnwatchConfig, at: float
                ) -> list[dict[str, object]]:
    """Every customer's score, tier, components and reasons as of ``at``."""
    shard_priors = {}
    for shard in range(config.shards):
        shard_priors[shard] = store.load_shard(shard).priors
    rows: list[dict[str, object]] = []
    for cid, state in store.iter_customers():
        priors = shard_priors[shard_of(cid, config.shards)]
        assessment = assess(state, max(at, state.scored_at), config, priors)
        row: dict[str, object] = {
            "customer_id": cid,
            "health_score": round(assessment.score, 2),
            "tier": tier_name(state.tier),
            "segment": config.segment_label(state.segment),
        }
        for name, comp in zip(COMPONENTS, assessment.components, strict=True):
            row[name] = round(comp.value, 1) if comp.confidence > 0 else ""
        row["return_probability"] = round(assessment.return_probability, 4)
        row["orders"] = state.orders
        row["spend"] = round(state.spend, 2)
        row["last_order"] = "" if state.last_order is None else _iso(state.last_order)
        row["days_since_last_order"] = ("" if state.last_order is None else
                                        round((at - state.last_order) / DAY, 1))
        row["high_value"] = int(state.high_value)
        row["reasons"] = " | ".join(reasons(state, assessment, at, config, priors))
        rows.append(row)
    rows.sort(key=lambda r: str(r["customer_id"]))
    return rows


def write_export(rows: Sequence[dict[str, object]], path: str) -> None:
    """Write export rows as CSV with a header (``-`` for standard output)."""
    if path == "-":
        import sys

        writer = csv.DictWriter(sys.stdout, fieldnames=EXPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        return
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=EXPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _iso(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class CutoffSplit:
    """A log cut at an instant: the file of events up to it, and per customer who ordered by
    then, their order times before it and whether they churned (no order within the horizon)."""

    prefix: str
    churned: dict[str, bool]
    orders_before: dict[str, list[float]]


def split_at_cutoff(path: str, cutoff: float, horizon_days: float, workdir: str) -> CutoffSplit:
    """Write the events up to ``cutoff`` to a new file; note, per customer who ordered by the
    cut-off, their order times and whether they ordered again within the horizon after it
    (invalid lines are kept in the prefix so the replay dead-letters them as usual)."""
    prefix = os.path.join(workdir, "before-cutoff.jsonl")
    end = cutoff + horizon_days * DAY
    orders_before: dict[str, list[float]] = {}
    ordered_after: set[str] = set()
    with open(path, "rb") as source, open(prefix, "wb") as out:
        for number, line in enumerate(source, 1):
            if not line.strip():
                continue
            event = decode_event(line, position=f"{path}:{number}")
            if not isinstance(event, Event):
                out.write(line if line.endswith(b"\n") else line + b"\n")
                continue
            if event.ts <= cutoff:
                out.write(line if line.endswith(b"\n") else line + b"\n")
                if event.type == ORDER:
                    orders_before.setdefault(event.customer_id, []).append(event.ts)
            elif event.ts <= end and event.type == ORDER:
                ordered_after.add(event.customer_id)
    return CutoffSplit(prefix, {c: c not in ordered_after for c in orders_before},
                       orders_before)


def backtest(path: str, cutoff: float, horizon_days: float, config: ChurnwatchConfig,
             store_factory: Callable[[], StateStore], workers: int = 1,
             classic: bool = True, truth: Mapping[str, bool] | None = None) -> BacktestReport:
    """Replay up to ``cutoff``, score everyone as of it, and judge against the next
    ``horizon_days``, beside the classic models fitted on the same orders (``classic``) and
    the plain baselines (time since last order, order count), both read from the log itself.
    ``truth`` (customer id -> has really left, known for a simulated shop) adds the rankings
    against it."""
    from churnwatch.backtest import CustomerOutcome, Prediction

    with tempfile.TemporaryDirectory(prefix="churnwatch-backtest-") as workdir:
        split = split_at_cutoff(path, cutoff, horizon_days, workdir)
        replay([split.prefix], config, store_factory, as_of=cutoff, workers=workers)
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
        from churnwatch.classic import benchmark

        for bench in benchmark({c: split.orders_before[c] for c in ids}, cutoff, horizon_days):
            # benchmark() orders customers by id, as ``ids`` is.
            predictions.append(Prediction(bench.name, bench.p_purchase.tolist(),
                                          bench.expected_purchases.tolist(), bench.detail()))
    # The horizon return_probability is for, when one horizon holds for every segment.
    horizons = {config.policy(None).horizon_days,
                *(policy.horizon_days for policy in config.segment_policies.values())}
    return build_report(outcomes, predictions, horizon_days,
                        horizons.pop() if len(horizons) == 1 else None,
                        None if truth is None else [truth[c] for c in ids])


def dump_json(data: object) -> str:
    """Pretty JSON for reports."""
    return json.dumps(data, indent=2, sort_keys=True, default=str)
