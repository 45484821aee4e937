"""A built-in simulator of a small shop, for the demo, tests and benchmarks.

Customers of three segments order at their own cadence; some stay loyal, some drift (orders
thin out, campaigns go unopened, a complaint or two) until they stop, some stop abruptly, some
come back after a long silence, some buy once and never again. Everything is drawn from one
seeded random generator, so a seed reproduces the same stream.

>>> sim = ShopSimulator(customers=20, seed=7, start=1_700_000_000.0, days=120)
>>> events = list(sim.events())
>>> all(a["ts"] <= b["ts"] for a, b in zip(events, events[1:]))
True
>>> events == list(ShopSimulator(customers=20, seed=7, start=1_700_000_000.0, days=120).events())
True
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

DAY = 86400.0
SEGMENTS = {"skincare": 30.0, "fashion": 60.0, "electronics": 120.0}
#: Mean time from joining to a persona's change (stop, drift, pause), as a share of the
#: simulated span.
LIFETIME_SHARE = 0.6
PERSONAS = (("loyal", 0.40), ("drifting", 0.2), ("stopping", 0.12), ("returning", 0.1),
            ("one_time", 0.18))


@dataclass(frozen=True)
class Regime:
    """A kind of shop for the zoo of backtests (``bench/zoo.py``): who buys how often, how long
    the history before the cut-off is and how long the judged horizon after it.

    The simulator runs ``history_days + horizon_days``; the cut-off is ``history_days`` after
    the start, and customers join during the first ``join_share`` of the history.
    """

    name: str
    segments: tuple[tuple[str, float], ...]
    history_days: float
    horizon_days: float
    personas: tuple[tuple[str, float], ...] = PERSONAS
    cadence_spread: float = 0.35
    join_share: float = 0.8
    with_engagement: bool = False
    #: A "returning" customer's pause, in mean gaps.
    pause_gaps: float = 5.0

    def simulator(self, customers: int, seed: int, start: float) -> ShopSimulator:
        """The simulator of this regime."""
        return ShopSimulator(customers=customers, seed=seed, start=start,
                             days=self.history_days + self.horizon_days,
                             with_engagement=self.with_engagement, segments=dict(self.segments),
                             personas=self.personas, cadence_spread=self.cadence_spread,
                             join_days=self.join_share * self.history_days,
                             pause_gaps=self.pause_gaps)


#: From weekly shoppers over two months to once-a-year buyers over three years.
REGIMES = {
    "weekly": Regime("weekly shoppers, 2 months, 2-month horizon", (("grocery", 7.0),), 60.0,
                     60.0),
    # Like the held-back frequent-shopper log: cadences spread widely, so a customer seen once
    # in two months is mostly a slow buyer, not a lost one.
    "frequent": Regime("frequent shoppers of mixed pace, 2 months, 2-month horizon",
                       (("skincare", 12.0),), 60.0, 60.0, cadence_spread=1.0,
                       personas=(("loyal", 0.6), ("drifting", 0.1), ("stopping", 0.15),
                                 ("one_time", 0.15)), join_share=0.9),
    # Like the third held-back log: a year of loyal frequent shoppers, few leave.
    "loyal-year": Regime("loyal frequent shoppers, 1 year, 3-month horizon",
                         (("grocery", 14.0),), 365.0, 90.0, cadence_spread=0.6,
                         personas=(("loyal", 0.86), ("drifting", 0.04), ("stopping", 0.05),
                                   ("one_time", 0.05)), join_share=0.9),
    "monthly": Regime("monthly shoppers, 1 year, 3-month horizon", (("skincare", 30.0),), 365.0,
                      90.0),
    "yearly": Regime("once-a-year buyers, 3 years, 1-year horizon", (("furniture", 365.0),),
                     3 * 365.0, 365.0, cadence_spread=0.25, pause_gaps=1.5),
    "mixed": Regime("the demo shop: 3 segments, campaigns and tickets, 18 months, 6-month "
                    "horizon", tuple(SEGMENTS.items()), 540.0, 180.0, join_share=0.5,
                    with_engagement=True, pause_gaps=150.0 / 60.0),
}


@dataclass(frozen=True)
class SimulatedCustomer:
    """Who a simulated customer is (kept so tests can check the score against the truth)."""

    customer_id: str
    segment: str
    persona: str
    cadence_days: float
    joined: float
    change_at: float  # when drifting starts, stopping happens, or a return begins


class ShopSimulator:
    """Generates a time-ordered event stream for ``customers`` customers over ``days`` days."""

    def __init__(self, customers: int = 300, seed: int = 1, start: float = 1_700_000_000.0,
                 days: float = 365.0, with_engagement: bool = True,
                 segments: dict[str, float] | None = None,
                 personas: tuple[tuple[str, float], ...] = PERSONAS,
                 cadence_spread: float = 0.35, join_days: float | None = None,
                 pause_gaps: float | None = None) -> None:
        self.count = customers
        self.seed = seed
        self.start = start
        self.days = days
        self.with_engagement = with_engagement
        self.segments = dict(SEGMENTS if segments is None else segments)
        # A returning customer's pause: 150 days in the demo shop, else in mean gaps.
        self.pause_gaps = pause_gaps
        join_window = days * 0.5 if join_days is None else join_days
        rng = random.Random(seed)
        self.customers: list[SimulatedCustomer] = []
        names, weights = zip(*personas, strict=True)
        for index in range(customers):
            segment = rng.choice(list(self.segments))
            persona = rng.choices(names, weights)[0]
            cadence = self.segments[segment] * math.exp(rng.gauss(0.0, cadence_spread))
            joined = start + rng.random() * join_window * DAY
            # When a stopping customer stops, a drifting one starts to drift, a returning one
            # pauses: an exponential lifetime from joining (a constant hazard, which is what a
            # forecaster can learn from the past), with a mean of 60 % of the simulated span.
            # Until December 2026 this was a uniform 30-90 % of the time left to the end of the
            # simulation, so every stopper still buying at a backtest's cut-off stopped within
            # its horizon: a hazard rising to certainty at the end of the data, which no model
            # calibrated on the past can see (docs/scoring.md, "The zoo of regimes").
            change = joined + rng.expovariate(1.0 / (LIFETIME_SHARE * days * DAY))
            self.customers.append(SimulatedCustomer(f"cust-{seed}-{index:06d}", segment,
                                                    persona, cadence, joined, change))

    def events(self) -> Iterator[dict[str, object]]:
        """Every event, in time order (``ts`` as epoch seconds)."""
        streams = [self._customer_events(c, random.Random(f"{self.seed}:{c.customer_id}"))
                   for c in self.customers]
        for _, _, event in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
            yield event

    def _customer_events(self, c: SimulatedCustomer, rng: random.Random
                         ) -> Iterator[tuple[float, int, dict[str, object]]]:
        end = self.start + self.days * DAY
        out: list[tuple[float, int, dict[str, object]]] = []
        seq = 0

        def emit(ts: float, event_type: str, **fields: object) -> None:
            nonlocal seq
            if ts > end:
                return
            seq += 1
            event: dict[str, object] = {"customer_id": c.customer_id, "type": event_type,
                                        "ts": round(ts, 3),
                                        "event_id": f"{c.customer_id}-{seq}"}
            event.update(fields)
            out.append((ts, seq, event))

        value_tier = "high" if rng.random() < 0.1 else "standard"
        emit(c.joined, "profile", segment=c.segment, value_tier=value_tier)
        basket = (120.0 if value_tier == "high" else 40.0) * math.exp(rng.gauss(0, 0.3))
        t = c.joined
        while t < end:
            active, cadence = self._state_at(c, t)
            if active:
                emit(t, "order", amount=round(basket * math.exp(rng.gauss(0, 0.25)), 2),
                     currency="EUR", order_id=f"o-{c.customer_id}-{seq}")
                if rng.random() < 0.3:
                    emit(t - rng.random() * DAY, "visit")
            if c.persona == "one_time":
                break
            t += rng.expovariate(1.0 / cadence) + 0.5 * DAY
            pause = self._pause(c)
            if c.persona == "returning" and c.change_at <= t < c.change_at + pause:
                t = c.change_at + pause
        if self.with_engagement:
            t = c.joined + rng.random() * 7 * DAY
            while t < end:
                active, _ = self._state_at(c, t)
                engaged = 0.45 if active else 0.05
                if c.persona == "drifting" and t > c.change_at:
                    engaged = 0.1
                channel = rng.choice(("email", "whatsapp", "email", "sms"))
                emit(t, "campaign_sent", channel=channel, campaign_id=f"cmp-{int(t // DAY)}")
                if rng.random() < engaged:
                    emit(t + 3600 * rng.random() * 12, "campaign_opened", channel=channel)
                    if rng.random() < 0.4:
                        emit(t + 3600 * 13, "campaign_clicked", channel=channel)
                if rng.random() < 0.15:
                    emit(t + 600, "message_sent", channel="whatsapp")
                    if rng.random() < engaged * 1.5:
                        emit(t + 7200, "message_replied", channel="whatsapp")
                troubled = c.persona in ("drifting", "stopping") and t > c.change_at - 30 * DAY
                if rng.random() < (0.12 if troubled else 0.01):
                    emit(t + DAY, "support_ticket", severity=rng.choice(("normal", "high")),
                         topic=rng.choice(("delivery", "quality", "refund")))
                if rng.random() < 0.05:
                    emit(t + 2 * DAY, "feedback", kind="nps",
                         score=rng.randint(0, 5) if troubled else rng.randint(7, 10))
                t += 7 * DAY * (0.5 + rng.random())
        out.sort(key=lambda item: (item[0], item[1]))
        yield from out

    def _pause(self, c: SimulatedCustomer) -> float:
        """How long a returning customer stays away, in seconds."""
        if self.pause_gaps is None:
            return 150 * DAY
        return self.pause_gaps * c.cadence_days * DAY

    def has_left(self, c: SimulatedCustomer, at: float) -> bool:
        """The truth the score is checked against: whether ``c`` will never order again after
        ``at`` (stopped, drifted away, or a one-time buyer past their order). A returning
        customer in their pause has not left; neither has a drifting one still buying.

        >>> sim = ShopSimulator(customers=50, seed=3, start=0.0, days=200)
        >>> gone = [c for c in sim.customers if sim.has_left(c, 200 * DAY)]
        >>> {c.persona for c in gone} <= {"stopping", "drifting", "one_time"}
        True
        """
        if at < c.joined:
            return False
        if c.persona == "one_time":
            return True
        if c.persona == "stopping":
            return at >= c.change_at
        if c.persona == "drifting":
            return not self._state_at(c, at)[0]
        return False

    def _state_at(self, c: SimulatedCustomer, t: float) -> tuple[bool, float]:
        """(still buying, current cadence) of a customer at ``t``."""
        if c.persona == "stopping":
            return t < c.change_at, c.cadence_days * DAY
        if c.persona == "drifting":
            if t < c.change_at:
                return True, c.cadence_days * DAY
            stretch = 1.0 + (t - c.change_at) / (c.cadence_days * DAY)
            return stretch < 4.0, c.cadence_days * DAY * stretch
        return True, c.cadence_days * DAY


def write_jsonl(path: str, simulator: ShopSimulator) -> int:
    """Write the simulator's events to a JSON Lines file; returns how many."""
    count = 0
    with (open(path, "w", encoding="utf-8") if path != "-" else sys.stdout) as out:
        for event in simulator.events():
            out.write(json.dumps(event, separators=(",", ":")) + "\n")
            count += 1
    return count


def paced(events: Iterator[dict[str, object]], seconds_per_day: float,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[dict[str, object]]:
    """Yield events at the pace of ``seconds_per_day`` wall seconds per simulated day."""
    started = time.monotonic()
    first_ts: float | None = None
    for event in events:
        ts = float(event["ts"])  # type: ignore[arg-type]
        if first_ts is None:
            first_ts = ts
        due = started + (ts - first_ts) / DAY * seconds_per_day
        wait = due - time.monotonic()
        if wait > 0:
            sleep(wait)
        yield event


def cmd_simulate(args: argparse.Namespace) -> int:
    """``churnwatch simulate``: write the stream to a file, or publish it live."""
    from churnwatch.runtime import UsageError, time_option

    if args.customers < 1:
        raise UsageError(f"--customers must be a positive whole number, got {args.customers}")
    if not args.days > 0 or not math.isfinite(args.days):
        raise UsageError(f"--days must be a positive number of days, got {args.days:g}")
    if not args.seconds_per_day >= 0 or not math.isfinite(args.seconds_per_day):
        raise UsageError(f"--seconds-per-day must be 0 or more, got {args.seconds_per_day:g}")
    start = time_option(args.start, "--start") if args.start is not None else \
        time.time() - args.days * DAY
    sim = ShopSimulator(customers=args.customers, seed=args.seed, start=start, days=args.days)
    if args.publish:
        from churnwatch.publish import Publisher
        from churnwatch.runtime import check_login, config_from_args, monitor_redis_url

        config = config_from_args(args)
        # The monitor's streams: publishing into a private Redis would feed nobody.
        url = monitor_redis_url(args, "simulate --publish")
        check_login(url, must_answer=True)
        publisher = Publisher(url, config)
        events = paced(sim.events(), args.seconds_per_day) if args.seconds_per_day else \
            sim.events()
        batch: list[dict[str, object]] = []
        for event in events:
            batch.append(event)
            if len(batch) >= 500 or args.seconds_per_day:
                publisher.publish(batch)
                batch = []
        if batch:
            publisher.publish(batch)
        publisher.close()
        return 0
    count = write_jsonl(args.out, sim)
    print(f"wrote {count} events for {args.customers} customers to {args.out}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``simulate`` and ``demo``."""
    from churnwatch.runtime import add_monitor_options

    p = sub.add_parser("simulate", help="generate a simulated shop's event stream",
                       description="Generate a simulated shop's event stream: JSON Lines to a "
                       "file or standard output, or published to the Redis streams that "
                       "`churnwatch run` reads.")
    p.add_argument("--out", default="-", help="JSON Lines file to write "
                   "('-': standard output; default: %(default)s)")
    p.add_argument("--customers", type=int, default=300, help="how many customers the shop has "
                   "(default: %(default)s)")
    p.add_argument("--days", type=float, default=365.0, help="how many days of history "
                   "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=1,
                   help="random seed: the same seed gives the same stream (default: %(default)s)")
    p.add_argument("--start", default=None, help="the first day: RFC 3339 with a zone or "
                   "epoch seconds (default: DAYS before now)")
    p.add_argument("--publish", action="store_true", help="publish to the Redis streams that "
                   "`churnwatch run` reads instead of writing a file (default: write a file)")
    p.add_argument("--seconds-per-day", type=float, default=0.0,
                   help="with --publish: pace the stream, wall seconds per simulated day "
                   "(default: %(default)s, as fast as possible)")
    add_monitor_options(p, redis_help="with --publish: the monitor's Redis (default: "
                        "$CHURNWATCH_REDIS_URL, or the file named by $CHURNWATCH_REDIS_URL_FILE)")
    p.set_defaults(func=cmd_simulate)

    from churnwatch import demo

    demo.register(sub, common)
