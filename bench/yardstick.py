"""The yardstick the replay is measured against: what Bytewax itself moves over the same file
when it only parses each line and counts events per customer (issue "Engine v2").

One worker, the same JSON lines file as the replay: Bytewax's own ``FileSource`` (1,000 lines
per batch), ``json.loads`` per line, ``count_final`` keyed by customer id, the per-customer
counts collected at the end. No scoring and no Redis: whatever churnwatch does beyond this is
its own cost.

>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as d:
...     path = pathlib.Path(d, "e.jsonl")
...     _ = path.write_text('{"customer_id": "a"}\\n{"customer_id": "b"}\\n{"customer_id": "a"}\\n')
...     result = parse_and_count(path)
>>> result["events"], result["customers"]
(3, 2)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.connectors.files import FileSource
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main


def parse_and_count(path: Path) -> dict[str, Any]:
    """Run the parse-and-count flow over ``path``: events, customers, seconds, events/s."""
    counts: list[tuple[str, int]] = []
    flow = Dataflow("yardstick")
    lines = op.input("read", flow, FileSource(path))
    events = op.map("parse", lines, json.loads)
    counted = op.count_final("count", events, key=lambda event: str(event["customer_id"]))
    op.output("collect", counted, TestingSink(counts))
    started = time.perf_counter()
    run_main(flow)
    seconds = time.perf_counter() - started
    total = sum(n for _, n in counts)
    return {"events": total, "customers": len(counts), "seconds": round(seconds, 2),
            "events_per_second": round(total / seconds) if seconds > 0 else 0}
