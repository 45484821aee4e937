"""Writes ``shard_wire_v1.msgpack`` (a shard blob: ``msgpack.packb(ShardState.to_wire())``) and
``shard_wire_v1.json`` (its aggregates as the strings they were stored as, and its watermark).

Run once on commit d9a81bd, before the shard aggregates became typed keys
(churnwatch/core/aggregates.py), so tests/test_aggregates.py can check that blobs written by
that code still read back: ``python tests/data/make_shard_wire_v1.py tests/data/shard_wire_v1``.
Every aggregate family is in it, with a segment whose name holds ``|`` (``pets|dogs``), a segment
no longer configured (``toys``, counted as ``other``) and customers without one.
"""

from __future__ import annotations

import json
import sys

import msgpack

from churnwatch.core.config import parse_config
from churnwatch.core.customer import DAY, CustomerState
from churnwatch.core.engine import ShardEngine
from churnwatch.core.events import Event
from churnwatch.core.records import BatchResult, Incoming, ShardState

T0 = 1_700_000_000.0
CONFIG = parse_config({
    "segments": {"skincare": {}, "pets|dogs": {}},
    "playbooks": {"call_them": {"action": "Call", "channel": "phone",
                                "tiers": ["watch", "at_risk", "churned"]}},
    "winback": {"holdout_share": 0.3, "window_days": 400},
    "alerts": {"sudden_drop_points": 20.0, "sudden_drop_window_days": 365.0},
    "state": {"shards": 1}, "source": {"stream_partitions": 1},
}, source="make_shard_wire_v1.py")
SEGMENTS = ["skincare", "pets|dogs", "toys", None]


def history() -> list[Event]:
    """40 customers over four segments: a profile, orders every 10 to 30 days for 90 days, a
    campaign, and a support ticket for every third one."""
    events = []
    for n in range(40):
        cid, segment = f"c{n:02d}", SEGMENTS[n % 4]
        attributes = {"segment": segment} if segment else {}
        profile = dict(attributes, value_tier="high") if n % 5 == 0 else attributes
        if profile:
            events.append(Event(cid, "profile", T0 - DAY, attributes=profile))
        for day in range(0, 91, 10 + (n % 5) * 5):
            events.append(Event(cid, "order", T0 + day * DAY, amount=20.0 + n))
        events.append(Event(cid, "campaign_sent", T0 + 91 * DAY, channel="email"))
        if n % 3 == 0:
            events.append(Event(cid, "support_ticket", T0 + 92 * DAY, severity=2.0))
    return sorted(events, key=lambda e: e.ts)


def main(out: str) -> None:
    """Silence walks every customer down to churned; interventions, then a third order again."""
    engine = ShardEngine(0, CONFIG, ShardState())
    store: dict[str, CustomerState] = {}
    offset = 0

    def run(events: list[Event], now: float) -> BatchResult:
        nonlocal offset
        items = [Incoming(e, 9, offset + n + 1) for n, e in enumerate(events)]
        offset += len(events)
        ids = list(dict.fromkeys(e.customer_id for e in events))
        result = engine.process(items, {c: store.get(c) for c in ids}, now)
        store.update(result.changed)
        return result

    run(history(), T0 + 95 * DAY)
    store.update(engine.review(dict(store), T0 + 300 * DAY).changed)
    run([Event(f"c{n:02d}", "intervention", T0 + 300.5 * DAY, channel="phone",
               attributes={"playbook": "call_them"}) for n in range(40)], T0 + 300.5 * DAY)
    run([Event(f"c{n:02d}", "order", T0 + 301 * DAY, amount=30.0) for n in range(0, 40, 3)],
        T0 + 301 * DAY)
    wire = engine.state.to_wire()
    with open(out + ".msgpack", "wb") as blob:
        blob.write(msgpack.packb(wire))
    with open(out + ".json", "w", encoding="utf-8") as expected:
        json.dump({"gauges": wire[2], "counters": wire[3], "watermark": wire[1]}, expected,
                  indent=1, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1])
