"""A small simulated shop replayed into a real Redis, for the exporter and worklist tests.

``replayed_shop`` (module scope) flushes the session's redis-server (tests/redis_server.py),
replays 150 simulated customers plus a few hand-made ones and a few invalid lines, advances
silent customers to the end of the data, and yields a :class:`Shop`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from churnwatch.state.redis_store import RedisStore

from churnwatch.core.config import ChurnwatchConfig, parse_config
from churnwatch.core.customer import DAY
from churnwatch.replay import replay
from churnwatch.simulator import ShopSimulator

START = 1_650_000_000.0
DAYS = 300
END = START + DAYS * DAY
# A customer id that needs URL-encoding: a slash, a space, a non-ASCII letter.
ODD_ID = "vip/1 é"

CONFIG_DATA = {
    "segments": {"skincare": {"churn_rate_objective": 0.04}, "fashion": {}},
    "scoring": {"churn_rate_objective": 0.06},
    "state": {"shards": 4},
    "source": {"stream_partitions": 2},
}

INVALID_LINES = [
    "not json at all",
    '{"customer_id": "x1", "type": "order", "ts": 1650000000}',
    '{"customer_id": "x2", "type": "teleport", "ts": 1650000000}',
]


@dataclass
class Shop:
    """What was replayed, and where."""

    url: str
    config: ChurnwatchConfig
    events_file: Path
    valid_events: int
    invalid_events: int

    def store(self) -> RedisStore:
        return RedisStore(self.url, self.config.shards, self.config.key_prefix, max_wait=5.0)


def shop_config() -> ChurnwatchConfig:
    return parse_config(CONFIG_DATA, source="tests/replayed_shop.py")


def write_config(path: Path) -> Path:
    """The same configuration as a TOML file, for the commands."""
    lines = []
    for name, table in CONFIG_DATA["segments"].items():
        lines.append(f"[segments.{name}]")
        lines.extend(f"{k} = {v}" for k, v in table.items())
    for section in ("scoring", "state", "source"):
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {v}" for k, v in CONFIG_DATA[section].items())
    path.write_text("\n".join(lines) + "\n")
    return path


def hand_made_events() -> list[dict[str, object]]:
    """Three customers whose place on the worklist is known: two high-value customers who
    ordered early and went silent, one standard customer like them."""
    out: list[dict[str, object]] = []
    for cid, value in ((ODD_ID, "high"), ("vip-2", "high"), ("plain-3", "standard")):
        out.append({"customer_id": cid, "type": "profile", "ts": START, "segment": "fashion",
                    "value_tier": value})
        for n in range(3):
            out.append({"customer_id": cid, "type": "order", "ts": START + n * 20 * DAY,
                        "amount": 500.0 if value == "high" else 40.0})
    return out


def replay_shop(url: str, workdir: Path) -> Shop:
    redis.Redis.from_url(url).flushall()
    config = shop_config()
    events_file = workdir / "shop.jsonl"
    simulated = ShopSimulator(customers=150, seed=11, start=START, days=DAYS).events()
    # In time order, as a shop would have sent them (sorted() is stable: the simulator's order
    # is kept among equal times).
    events = sorted([*simulated, *hand_made_events()], key=lambda e: float(e["ts"]))
    with events_file.open("w") as handle:
        for event in events:
            handle.write(json.dumps(event) + "\n")
        for line in INVALID_LINES:
            handle.write(line + "\n")
    valid = len(events)

    def factory() -> RedisStore:
        return RedisStore(url, config.shards, config.key_prefix, max_wait=10.0)

    replay([str(events_file)], config, factory, as_of=END)
    return Shop(url, config, events_file, valid, len(INVALID_LINES))


@pytest.fixture(scope="module")
def replayed_shop(redis_server, tmp_path_factory: pytest.TempPathFactory  # noqa: ANN001
                  ) -> Iterator[Shop]:
    yield replay_shop(redis_server.url, tmp_path_factory.mktemp("shop"))
