"""The batch yardstick: what a nightly analytics job in polars computes over the same file the
replay reads (issue 20), and how fast.

Per customer, as of the file's newest event: recency (the last order's time, and how many
seconds before the newest event it was), frequency (orders, and distinct UTC order days), spend
(the orders' amounts), and decayed counts with a 90-day half-life of orders, sends (campaigns and
messages sent), answers (campaigns opened or clicked, messages replied: one each) and support
tickets. One lazy query from ``scan_ndjson`` to the per-customer table, on polars' own thread
pool (every core: it is a batch job, not one worker). The figure is the wall time from the file
opened to the table in memory.

>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as d:
...     path = pathlib.Path(d, "e.jsonl")
...     _ = path.write_text(
...         '{"customer_id": "a", "type": "order", "ts": 0.0, "amount": 10.0}\\n'
...         '{"customer_id": "b", "type": "visit", "ts": 86400.0}\\n'
...         '{"customer_id": "a", "type": "support_ticket", "ts": 7776000.0}\\n')
...     table = customer_table(path)
>>> table.select("customer_id", "orders", "recency_seconds", "decayed_orders").rows()
[('a', 1, 7776000.0, 0.5), ('b', 0, None, 0.0)]
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import polars as pl

from churnwatch.core import events as ev
from churnwatch.core.signals import DAY

#: The fields the job reads from each line (the others are skipped while parsing).
EVENT_SCHEMA = pl.Schema({"customer_id": pl.String, "type": pl.String, "ts": pl.Float64,
                          "amount": pl.Float64})
#: The half-life of every decayed count: the engine's default engagement and service window
#: (``Windows.default()``), so the batch job weighs the evidence as the scorer does.
HALF_LIFE = 90 * DAY
SENDS = (ev.CAMPAIGN_SENT, ev.MESSAGE_SENT)
ANSWERS = (ev.CAMPAIGN_OPENED, ev.CAMPAIGN_CLICKED, ev.MESSAGE_REPLIED)


def customer_table(path: Path, n_rows: int | None = None) -> pl.DataFrame:
    """The per-customer figures over ``path`` (its first ``n_rows`` lines if given), one row per
    customer seen, sorted by id; customers without orders have no last order and no recency."""
    kind = pl.col("type")
    is_order = kind == ev.ORDER
    # The weight of an event as of the newest one: 1 at that instant, 1/2 a half-life before.
    weight = pl.col("weight")
    return (
        pl.scan_ndjson(path, schema=EVENT_SCHEMA, n_rows=n_rows)
        .with_columns(age=pl.col("ts").max() - pl.col("ts"))
        .with_columns(weight=(pl.col("age") * (-math.log(2.0) / HALF_LIFE)).exp())
        .group_by("customer_id")
        .agg(
            events=pl.len(),
            last_order=pl.col("ts").filter(is_order).max(),
            recency_seconds=pl.col("age").filter(is_order).min(),
            orders=is_order.sum(),
            order_days=(pl.col("ts") / DAY).floor().filter(is_order).n_unique(),
            spend=pl.col("amount").filter(is_order).sum(),
            decayed_orders=weight.filter(is_order).sum(),
            decayed_sends=weight.filter(kind.is_in(SENDS)).sum(),
            decayed_answers=weight.filter(kind.is_in(ANSWERS)).sum(),
            decayed_tickets=weight.filter(kind == ev.SUPPORT_TICKET).sum(),
        )
        .sort("customer_id")
        .collect()
    )


def batch_job(path: Path) -> dict[str, Any]:
    """Run :func:`customer_table` over ``path``: events, customers, seconds, events/s, and sums
    over the table to check one run against another (orders, order days, spend, decayed
    orders)."""
    started = time.perf_counter()
    table = customer_table(path)
    seconds = time.perf_counter() - started
    events = int(table["events"].sum())
    return {"events": events, "customers": table.height, "seconds": round(seconds, 2),
            "events_per_second": round(events / seconds) if seconds > 0 else 0,
            "threads": pl.thread_pool_size(), "polars": pl.__version__,
            "orders": int(table["orders"].sum()), "order_days": int(table["order_days"].sum()),
            "spend": round(float(table["spend"].sum()), 2),
            "decayed_orders": round(float(table["decayed_orders"].sum()), 3)}
