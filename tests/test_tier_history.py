"""A customer's tier history: every change of the last year is kept in the customer's state with
its reasons as codes and numbers, read back in words after the transition stream has let the
change go, and drawn on the customer page. A shop replayed through the real dataflow into a real
redis-server."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import msgpack
import pytest
import redis
from churnwatch.state.base import StoreLayout, history_records
from churnwatch.state.redis_store import RedisStore
from churnwatch.web.pages import WorkbenchPages
from churnwatch.web.worklist import WorklistAPI, customer_detail
from redis_server import redis_server, redis_url  # noqa: F401

from churnwatch.core.config import parse_config
from churnwatch.core.customer import CustomerState
from churnwatch.core.history import decode_change, encode_change
from churnwatch.replay import replay

DAY = 86400.0
T0 = 1_650_000_000.0
#: Order days of a customer who slips and comes back, twice: seven tier changes in a year.
FLAPPER_DAYS = (0, 10, 20, 30, 40, 200, 210, 220, 500)


def replayed(url: str, workdir: Path, **state: object) -> tuple[RedisStore, object]:
    rng = random.Random(5)
    events = []
    for n in range(80):  # a shop around the customer, so the shard learns its habits
        t = T0 + rng.uniform(0, 20) * DAY
        while t < T0 + 760 * DAY:
            events.append({"customer_id": f"bg-{n}", "type": "order", "ts": t, "amount": 30.0})
            t += rng.uniform(10, 40) * DAY
    events += [{"customer_id": "flapper", "type": "order", "ts": T0 + d * DAY, "amount": 50.0}
               for d in FLAPPER_DAYS]
    events.sort(key=lambda e: float(e["ts"]))  # type: ignore[arg-type]
    path = workdir / "shop.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    config = parse_config({"state": {"shards": 2, **state}, "source": {"stream_partitions": 1}},
                          source="tests/test_tier_history.py")

    def factory() -> RedisStore:
        return RedisStore(url, 2, "cw", max_wait=5, layout=StoreLayout.from_config(config))

    transitions = workdir / "transitions.jsonl"
    replay([str(path)], config, factory, as_of=T0 + 800 * DAY,
           transitions_path=str(transitions))
    return factory(), config


def flapper_changes(workdir: Path) -> list[dict]:
    records = [json.loads(line) for file in workdir.glob("transitions*.jsonl")
               for line in file.read_text().splitlines()]
    return sorted((r for r in records if r["customer_id"] == "flapper"),
                  key=lambda r: -r["at"])


def test_every_change_of_the_year_keeps_its_reasons_after_the_stream_let_it_go(
        redis_url: str, tmp_path: Path) -> None:  # noqa: F811
    store, config = replayed(redis_url, tmp_path)
    emitted = flapper_changes(tmp_path)
    newest = emitted[0]["at"]
    in_year = [r for r in emitted if r["at"] >= newest - 365 * DAY]
    assert len(in_year) > 3, emitted  # more than the three newest of before
    # The streams keep a week; here they are gone altogether.
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match="cw:*:transitions"):
        client.delete(key)
    detail = customer_detail(store, config, "flapper")  # type: ignore[arg-type]
    assert detail is not None
    shown = detail["transitions"]
    assert [(t["from"], t["to"]) for t in shown] == [(r["from"], r["to"]) for r in in_year]
    matched = 0
    for change, record in zip(shown, in_year, strict=True):
        assert change["at"][:16] == detail_time(record["at"])
        # Whole points in the state; the stream's record has a tenth.
        assert abs(change["new_score"] - record["new_score"]) <= 0.55
        assert change["reasons"], change
        assert "chance of ordering within 180 days" in change["reasons"][0]
        # The rebuilt words say what the stream said, numbers included (a change the stream
        # puts down to a refit of the shard's model says the customer's silence too).
        said = " ".join(record["reasons"])
        number = re.search(r"(no order for|ordered again after) (\d+) days", said)
        if number is not None:
            assert f"{number.group(1)} {number.group(2)} days" in " ".join(change["reasons"]), (
                change, said)
            matched += 1
    assert matched >= len(in_year) - 1
    # Drawn: a point per change, and the score now.
    page = WorkbenchPages(WorklistAPI(config, lambda: store))  # type: ignore[arg-type]
    status, html = page.customer("flapper")
    assert status == 200
    chart = html[html.index('id="score-chart"'):html.index("</svg>")]
    assert chart.count("<circle") == len(in_year) + 1
    assert html.count('<td data-label="Reasons"><div>') == len(in_year)
    store.close()


def detail_time(at: float) -> str:
    from churnwatch.web.worklist import iso

    return str(iso(at))[:16]


def test_changes_older_than_the_kept_days_go_the_newest_stay(
        redis_url: str, tmp_path: Path) -> None:  # noqa: F811
    store, config = replayed(redis_url, tmp_path, tier_history_days=60,
                             score_history_length=2)
    emitted = flapper_changes(tmp_path)
    newest = emitted[0]["at"]
    kept = [r for n, r in enumerate(emitted) if n < 2 or r["at"] >= newest - 60 * DAY]
    assert len(kept) < len(emitted)
    state = store.customer("flapper")
    assert state is not None
    assert [decode_change(e).at for e in state.history] == [float(int(r["at"])) for r in kept]
    store.close()


def test_a_change_costs_a_few_bytes_in_the_stored_state() -> None:
    # Ten changes over a year, each with two reasons (silent: days, gap, orders; buying less:
    # the trend): the time (relative to the newest event), tiers and cause, two scores, the
    # chance and the codes with their numbers.
    changes = [encode_change(T0 - (300 - 30 * n) * DAY, n % 4, (n + 1) % 4, 55.4, 38.6,
                             "silence", (15, 0, 75, 21, 4, 3, 62)) for n in range(10)]
    state = CustomerState(T0)
    state.history = changes[:1]
    one = len(msgpack.packb(state.to_wire()))
    state.history = changes
    per_change = (len(msgpack.packb(state.to_wire())) - one) / 9
    assert per_change <= 16, per_change


def test_a_history_written_before_the_evidence_still_reads() -> None:
    # As the previous version stored it: [at, from, to, old x 10, new x 10, cause].
    state = CustomerState(T0)
    state.history = [[int(T0), 1, 2, 571, 386, 1], [int(T0 - 30 * DAY), 0, 1, 801, 600]]
    back = CustomerState.from_wire(msgpack.unpackb(msgpack.packb(state.to_wire()),
                                                   strict_map_key=False))
    records = history_records("c1", back, 10, [])
    assert [(r["from"], r["to"], r["old_score"], r["new_score"], r["cause"], r["reasons"])
            for r in records] == [("watch", "at_risk", 57.1, 38.6, "silence", []),
                                  ("healthy", "watch", 80.1, 60.0, "event", [])]


@pytest.mark.parametrize("days", [0, 0.5])
def test_the_configured_days_are_read_and_checked(days: float) -> None:
    config = parse_config({"state": {"tier_history_days": days}}, source="x.toml")
    assert StoreLayout.from_config(config).history_days == days
    with pytest.raises(ValueError, match="tier_history_days"):
        parse_config({"state": {"tier_history_days": -1}}, source="x.toml")


def test_the_history_and_urgency_doctests_pass() -> None:
    import doctest

    from churnwatch.state import base

    from churnwatch.core import history

    failed, tried = doctest.testmod(history)
    assert failed == 0 and tried >= 10
    failed, tried = doctest.testmod(base)
    assert failed == 0 and tried >= 10
