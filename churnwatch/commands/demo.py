"""``churnwatch demo``: the live monitor on the built-in shop simulator, with a terminal summary.

Starts a private Redis (unless one is given), runs the same dataflow as ``churnwatch run`` over
the simulator paced in wall-clock time (event time inside: a simulated day passes every
``--seconds-per-day``), and redraws customers per tier, recent transitions with their reasons
and the event rate. Ctrl-C or SIGTERM stops it cleanly: the last batches are committed, the
final summary printed, and the private Redis stopped (exit status 130 after Ctrl-C, 0 after
SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from importlib import resources

from bytewax.testing import run_main

from churnwatch.core.aggregates import TierCustomers
from churnwatch.core.config import TIERS, ChurnwatchConfig
from churnwatch.core.records import BatchResult, FlowHooks, TierTransition
from churnwatch.dataflows.flow import FlowSettings, build_flow
from churnwatch.dataflows.simulator_source import SimulatorSource
from churnwatch.simulator import DAY, ShopSimulator
from churnwatch.state.base import StateStore


class LiveSummary(FlowHooks):
    """Counts events and keeps the newest transitions for the terminal view."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scored = 0
        self.dead = 0
        self.recent: deque[TierTransition] = deque(maxlen=8)
        self.rate = 0.0
        self._last = (time.monotonic(), 0)

    def dead_lettered(self, source: str, items: Sequence[object]) -> None:
        with self.lock:
            self.dead += len(items)

    def committed(self, source: str, result: BatchResult, oldest_received_at: float) -> None:
        with self.lock:
            self.scored += result.scored

    def transitions(self, transitions: Sequence[TierTransition]) -> None:
        with self.lock:
            self.recent.extend(t for t in transitions if t.from_tier != "none")

    def tick(self) -> float:
        """Events per second since the previous tick."""
        now = time.monotonic()
        with self.lock:
            then, count = self._last
            self.rate = (self.scored - count) / max(now - then, 1e-6)
            self._last = (now, self.scored)
        return self.rate


def render(store: StateStore, summary: LiveSummary, config: ChurnwatchConfig) -> str:
    """The terminal view: tiers per segment, the newest transitions, rates."""
    counts: dict[tuple[str, str], float] = {}
    watermark = 0.0
    for shard in store.shard_states():
        watermark = max(watermark, shard.watermark)
        for key, value in shard.gauges.items():
            if isinstance(key, TierCustomers):
                counts[(key.segment, key.tier)] = counts.get((key.segment, key.tier), 0.0) + value
    segments = sorted({s for s, _ in counts})
    day = datetime.fromtimestamp(watermark, tz=timezone.utc).strftime("%Y-%m-%d") \
        if watermark else "-"
    lines = [f"churnwatch demo  simulated date {day}  {summary.rate:,.0f} events/s  "
             f"{summary.scored:,} scored  {summary.dead} dead letters", ""]
    lines.append(f"{'segment':14}" + "".join(f"{t:>10}" for t in TIERS))
    for segment in segments:
        lines.append(f"{segment:14}" + "".join(f"{counts.get((segment, t), 0):>10.0f}"
                                              for t in TIERS))
    lines.append(f"{'all':14}" + "".join(
        f"{sum(v for (s, t), v in counts.items() if t == tier):>10.0f}" for tier in TIERS))
    lines += ["", "recent tier changes:"]
    with summary.lock:
        recent = list(summary.recent)[::-1]
    for t in recent:
        when = datetime.fromtimestamp(t.at, tz=timezone.utc).strftime("%Y-%m-%d")
        lines.append(f"  {when} {t.customer_id} ({t.segment}) {t.from_tier} -> {t.to_tier} "
                     f"{t.old_score or 0:.1f} -> {t.new_score:.1f}")
        if t.reasons:
            lines.append(f"      {t.reasons[0]}")
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo until the simulated period ends (or Ctrl-C, or SIGTERM)."""
    from churnwatch.runtime import (
        GracefulStop,
        config_from_args,
        store_factory,
        tune_garbage_collector,
    )
    from churnwatch.state.connection import redact_url

    tune_garbage_collector()
    if not args.config and not os.environ.get("CHURNWATCH_CONFIG"):
        args.config = str(resources.files("churnwatch").joinpath("data/demo.toml"))
    config = config_from_args(args)
    sim = ShopSimulator(customers=args.customers, seed=args.seed,
                        start=time.time() - args.days * DAY, days=args.days)
    summary = LiveSummary()
    stop = GracefulStop("demo")
    with stop.installed(), store_factory(args, config) as (factory, url):
        settings = FlowSettings(config, factory, clock="event", hooks=summary,
                                stop=stop.requested)
        flow = build_flow(settings, SimulatorSource(sim, args.seconds_per_day,
                                                    stop=stop.requested), "simulator")
        store = factory()
        done = threading.Event()
        tty = sys.stdout.isatty()

        def show() -> None:
            while not done.wait(args.refresh):
                summary.tick()
                text = render(store, summary, config)
                if tty:
                    sys.stdout.write("\x1b[2J\x1b[H" + text + "\n")
                else:
                    sys.stdout.write(text + "\n\n")
                sys.stdout.flush()

        printer = threading.Thread(target=show, daemon=True)
        printer.start()
        print(f"churnwatch demo: {args.customers} simulated customers over {args.days:.0f} days,"
              f" one day every {args.seconds_per_day} s; state in {redact_url(url)}; Ctrl-C "
              "stops", flush=True)
        try:
            run_main(flow)
        finally:
            done.set()
            printer.join(timeout=5)
        summary.tick()
        print(render(store, summary, config))
        ended = f"stopped ({stop.reason})" if stop.requested.is_set() else "finished"
        print(f"\ndemo {ended}: replay it on a file with `churnwatch simulate --out "
              "shop.jsonl` then `churnwatch replay shop.jsonl --export scores.csv`", flush=True)
    return stop.exit_code


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``demo``."""
    p = sub.add_parser("demo", help="the live monitor on a simulated shop, in the terminal")
    p.add_argument("--customers", type=int, default=400)
    p.add_argument("--days", type=float, default=540.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seconds-per-day", type=float, default=0.1)
    p.add_argument("--refresh", type=float, default=2.0, help="seconds between redraws")
    common(p)
    p.set_defaults(func=cmd_demo)
