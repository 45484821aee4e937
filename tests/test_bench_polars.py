"""The polars batch yardstick (bench/polars_batch.py) against a plain-Python pass over the first
100,000 lines of a generated workload: it must compute what it claims before its speed means
anything."""

from __future__ import annotations

import json
import math
import sys
from itertools import islice
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the `bench` package is not installed (as live_servers.py)
    sys.path.insert(0, str(REPO_ROOT))

from bench.polars_batch import ANSWERS, HALF_LIFE, SENDS, customer_table  # noqa: E402
from bench.workload import write_jsonl  # noqa: E402
from churnwatch.core.signals import DAY  # noqa: E402

PREFIX = 100_000


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # More lines than the prefix, so a job that read the whole file would not match.
    return write_jsonl(tmp_path_factory.mktemp("polars") / "events.jsonl", 120_000, 5_000, 7)


def reference(path: Path, limit: int) -> dict[str, dict[str, float]]:
    """The same figures by hand, one event at a time, over the first ``limit`` lines."""
    with open(path, "rb") as handle:
        events = [json.loads(line) for line in islice(handle, limit)]
    newest = max(e["ts"] for e in events)
    customers: dict[str, dict[str, object]] = {}
    for e in events:
        c = customers.setdefault(e["customer_id"], {
            "orders": 0, "last_order": None, "days": set(), "spend": 0.0,
            "decayed_orders": 0.0, "decayed_sends": 0.0, "decayed_answers": 0.0,
            "decayed_tickets": 0.0})
        weight = 0.5 ** ((newest - e["ts"]) / HALF_LIFE)
        if e["type"] == "order":
            c["orders"] += 1
            c["last_order"] = e["ts"] if c["last_order"] is None else max(c["last_order"], e["ts"])
            c["days"].add(math.floor(e["ts"] / DAY))
            c["spend"] += e["amount"]
            c["decayed_orders"] += weight
        elif e["type"] in SENDS:
            c["decayed_sends"] += weight
        elif e["type"] in ANSWERS:
            c["decayed_answers"] += weight
        elif e["type"] == "support_ticket":
            c["decayed_tickets"] += weight
    for c in customers.values():
        c["order_days"] = len(c.pop("days"))
        c["recency_seconds"] = None if c["last_order"] is None else newest - c["last_order"]
    return customers


def test_polars_job_matches_a_plain_python_pass_over_the_first_100000_lines(workload):
    with open(workload, "rb") as handle:
        assert sum(1 for _ in handle) > PREFIX
    expected = reference(workload, PREFIX)
    table = customer_table(workload, n_rows=PREFIX)
    got = {row["customer_id"]: row for row in table.iter_rows(named=True)}
    assert set(got) == set(expected)
    assert sum(row["events"] for row in got.values()) == PREFIX
    assert sum(c["orders"] for c in expected.values()) > 10_000  # the check has orders to check
    for cid, want in expected.items():
        row = got[cid]
        assert (row["orders"], row["last_order"]) == (want["orders"], want["last_order"]), cid
        assert (row["order_days"], row["recency_seconds"]) == (
            want["order_days"], want["recency_seconds"]), cid
        for name in ("spend", "decayed_orders", "decayed_sends",
                     "decayed_answers", "decayed_tickets"):
            assert row[name] == pytest.approx(want[name], rel=1e-9, abs=1e-9), (cid, name)
