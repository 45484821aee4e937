"""Reproducible synthetic event streams for benchmarks and end-to-end tests.

The same ``(events, customers, seed)`` always gives the same byte-for-byte JSON Lines, so a
benchmark figure or a test failure can be reproduced anywhere. The stream is in event-time
order and mixes every event type in plausible proportions; a share of customers churn (they stop
ordering and answering, while outreach to them goes on), so scores and tier transitions have
something to find.

>>> first = list(generate(50, customers=10, seed=7))
>>> first == list(generate(50, customers=10, seed=7)), len(first)
(True, 50)
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

START = 1_704_067_200.0  # 2024-01-01T00:00:00Z
SEGMENTS = ("fashion", "beauty", "home", "electronics")
CAMPAIGN_CHANNELS = ("email", "whatsapp", "sms", "push")
MESSAGE_CHANNELS = ("whatsapp", "email", "chat")
SEVERITIES = ("low", "normal", "normal", "high", "urgent")


def generate(events: int, customers: int, seed: int, span_days: float = 365.0,
             start: float = START, poison_every: int = 0) -> Iterator[bytes]:
    """``events`` JSON Lines (without newline) for ``customers`` customers over ``span_days``.

    ``poison_every`` > 0 replaces every n-th line by a bad one (not JSON, not msgpack, wrong
    types, a far-future time), cycling through those kinds.
    """
    rng = random.Random(seed)
    ids = [f"c{n:07d}" for n in range(customers)]
    # Activity: a heavy-tailed weight per customer; churners stop ordering at churn_at.
    weights = [rng.lognormvariate(0.0, 1.0) for _ in range(customers)]
    cumulative = []
    total = 0.0
    for w in weights:
        total += w
        cumulative.append(total)
    span = span_days * 86400.0
    churn_at = [start + span * rng.uniform(0.2, 0.9) if rng.random() < 0.3 else float("inf")
                for _ in range(customers)]
    chosen = rng.choices(range(customers), cum_weights=cumulative, k=events)
    profiled = bytearray(customers)
    dumps = json.dumps
    for i, c in enumerate(chosen):
        ts = round(start + span * (i + rng.random()) / events, 3)
        cid = ids[c]
        if poison_every and i % poison_every == poison_every - 1:
            yield _poison(i // poison_every, cid, ts)
            continue
        if not profiled[c]:
            profiled[c] = 1
            event: dict[str, object] = {"customer_id": cid, "type": "profile", "ts": ts,
                                        "segment": SEGMENTS[c % len(SEGMENTS)]}
            yield dumps(event, separators=(",", ":")).encode()
            continue
        gone = ts > churn_at[c]
        r = rng.random()
        if r < 0.34:
            if gone:
                event = {"customer_id": cid, "type": "campaign_sent", "ts": ts,
                         "channel": CAMPAIGN_CHANNELS[i % 4]}
            else:
                event = {"customer_id": cid, "type": "order", "ts": ts,
                         "amount": round(rng.uniform(5.0, 200.0), 2), "event_id": f"o{i}"}
        elif r < 0.36:
            event = {"customer_id": cid, "type": "refund", "ts": ts,
                     "amount": round(rng.uniform(1.0, 40.0), 2)}
        elif r < 0.58:
            event = {"customer_id": cid, "type": "visit" if not gone else "campaign_sent",
                     "ts": ts}
            if gone:
                event["channel"] = "email"
        elif r < 0.72:
            event = {"customer_id": cid, "type": "campaign_sent", "ts": ts,
                     "channel": CAMPAIGN_CHANNELS[i % 4]}
        elif r < 0.82:
            kind = "campaign_opened" if not gone or rng.random() < 0.1 else "campaign_sent"
            event = {"customer_id": cid, "type": kind, "ts": ts,
                     "channel": CAMPAIGN_CHANNELS[(i >> 2) % 4]}
        elif r < 0.86:
            event = {"customer_id": cid, "type": "campaign_clicked" if not gone else
                     "campaign_sent", "ts": ts, "channel": "email"}
        elif r < 0.91:
            event = {"customer_id": cid, "type": "message_sent", "ts": ts,
                     "channel": MESSAGE_CHANNELS[i % 3]}
        elif r < 0.95:
            event = {"customer_id": cid, "type": "message_replied" if not gone else
                     "message_sent", "ts": ts, "channel": MESSAGE_CHANNELS[i % 3]}
        elif r < 0.98:
            event = {"customer_id": cid, "type": "support_ticket", "ts": ts,
                     "severity": SEVERITIES[i % 5]}
        else:
            event = {"customer_id": cid, "type": "feedback", "ts": ts,
                     "score": rng.randint(0, 10) if not gone else rng.randint(0, 4),
                     "kind": "nps"}
        yield dumps(event, separators=(",", ":")).encode()


def _poison(n: int, cid: str, ts: float) -> bytes:
    kind = n % 4
    if kind == 0:
        return b"{not json at all"
    if kind == 1:
        return b"\xc1\xff\x00binary that is no msgpack"
    if kind == 2:
        return json.dumps({"customer_id": cid, "type": "order", "ts": ts,
                           "amount": "twelve"}).encode()
    return json.dumps({"customer_id": cid, "type": "visit", "ts": 4_000_000_000.0}).encode()


def write_jsonl(path: str | Path, events: int, customers: int, seed: int, **kwargs: object
                ) -> Path:
    """Write a workload to ``path`` (reused when it already holds the same workload)."""
    path = Path(path)
    stamp = path.with_suffix(path.suffix + ".spec")
    spec = json.dumps({"events": events, "customers": customers, "seed": seed, **kwargs},
                      sort_keys=True)
    if path.exists() and stamp.exists() and stamp.read_text() == spec:
        return path
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    with open(tmp, "wb") as out:
        for line in generate(events, customers, seed, **kwargs):  # type: ignore[arg-type]
            out.write(line)
            out.write(b"\n")
    tmp.replace(path)
    stamp.write_text(spec)
    return path
