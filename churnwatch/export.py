"""Every customer's score as CSV rows: the columns of ``churnwatch export`` and ``churnwatch
replay --export`` (the same functions write both), scored as of an instant without changing
the stored state."""

from __future__ import annotations

import csv
from collections.abc import Sequence

from churnwatch.core.config import COMPONENTS, ChurnwatchConfig
from churnwatch.core.customer import DAY
from churnwatch.core.scoring import assess_as_held, reasons, tier_name
from churnwatch.state.base import StateStore, config_with_segments, shard_of


def state_time(store: StateStore) -> float:
    """The newest event time any shard has seen (the instant "now" means after a replay)."""
    marks = [s.watermark for s in store.shard_states()]
    return max(marks) if marks else 0.0


EXPORT_COLUMNS = ["customer_id", "health_score", "tier", "segment", *COMPONENTS,
                  "return_probability", "horizon_days", "orders", "spend", "last_order",
                  "days_since_last_order", "high_value", "reasons"]


def export_rows(store: StateStore, config: ChurnwatchConfig, at: float
                ) -> list[dict[str, object]]:
    """Every customer's score, tier, components and reasons as of ``at``."""
    config = config_with_segments(store, config)  # the shop's own segments are labels too
    shard_priors = {}
    for shard in range(config.shards):
        shard_priors[shard] = store.load_shard(shard).priors
    rows: list[dict[str, object]] = []
    for cid, state in store.iter_customers():
        priors = shard_priors[shard_of(cid, config.shards)]
        assessment = assess_as_held(state, max(at, state.scored_at), config, priors)
        row: dict[str, object] = {
            "customer_id": cid,
            "health_score": round(assessment.score, 2),
            "tier": tier_name(state.tier),
            "segment": config.segment_label(state.segment),
        }
        for name, comp in zip(COMPONENTS, assessment.components, strict=True):
            row[name] = round(comp.value, 1) if comp.confidence > 0 else ""
        row["return_probability"] = round(assessment.return_probability, 4)
        row["horizon_days"] = round(assessment.horizon_days, 1)
        bought = state.purchases
        row["orders"] = bought.orders
        row["spend"] = round(bought.spend, 2)
        row["last_order"] = "" if bought.last_order is None else iso_utc(bought.last_order)
        row["days_since_last_order"] = ("" if bought.last_order is None else
                                        round((at - bought.last_order) / DAY, 1))
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


def iso_utc(ts: float) -> str:
    """An epoch time as RFC 3339 in UTC, fractions kept (``1970-01-01T00:00:00Z``)."""
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")
