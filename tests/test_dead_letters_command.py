"""``churnwatch dead-letters``: a live monitor's dead letters, read and replayed at most once.

A real ``churnwatch run`` on a real redis-server dead-letters an order above ``max_amount``, a
line that is not JSON and an unknown event type. The command lists them with their filters;
after the fix (a raised ``max_amount``) ``--replay`` pushes the order back onto its stream, once
however often it is run (also from several clients at once), and the monitor then scores it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import redis
from churnwatch.state.base import StoreLayout
from churnwatch.state.redis_store import RedisStore
from live_servers import finish, start_run, write_config
from redis_server import redis_server, redis_url  # noqa: F401

from churnwatch.cli import main
from churnwatch.commands.dead_letters import read_dead_letters, replay_dead_letters
from churnwatch.core.config import load_config
from churnwatch.publish import Publisher

RUN_TIMEOUT = 120.0
NOW = time.time()
GOOD = json.dumps({"customer_id": "c1", "type": "order", "ts": NOW - 86400, "amount": 10.0})
BIG = json.dumps({"customer_id": "c2", "type": "order", "ts": NOW - 86400, "amount": 5000.0})
BROKEN = "{broken"
UNKNOWN = json.dumps({"customer_id": "c3", "type": "teleport", "ts": NOW - 86400})


def _config(path: Path, max_amount: float) -> Path:
    return write_config(path, "dlr", source={"stream_partitions": 2,
                                             "stream_prefix": "dlr:events"},
                        state={"shards": 2}, input={"max_amount": max_amount})


def _run(args: list[str], tmp_path: Path, name: str) -> None:
    run = [*args, "--source", "redis", "--clock", "event", "--stop-at-end", "--no-metrics",
           "--recovery-dir", str(tmp_path / "recovery")]
    finish(start_run(run, tmp_path / f"{name}.log"), RUN_TIMEOUT, tmp_path / f"{name}.log")


def _command(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    capsys.readouterr()
    assert main(["dead-letters", *argv]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def _stream_lengths(client: redis.Redis) -> list[int]:
    return [int(client.xlen(f"dlr:events:{p}")) for p in range(2)]


def _store(url: str, config_path: Path) -> RedisStore:
    config = load_config(config_path)
    return RedisStore(url, config.shards, config.key_prefix, max_wait=5.0,
                      layout=StoreLayout.from_config(config))


def test_dead_letters_are_listed_filtered_and_replayed_at_most_once(
        redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    strict = _config(tmp_path / "strict.toml", 1000.0)
    args = ["--redis-url", redis_url, "--config", str(strict)]
    Publisher(redis_url, load_config(strict)).publish([GOOD, BIG, BROKEN, UNKNOWN])
    _run(args, tmp_path, "first")
    client = redis.Redis.from_url(redis_url)

    out, _ = _command(capsys, *args, "--json")
    letters = json.loads(out)  # oldest first; partitions are written in either order
    assert sorted(d["reason"] for d in letters) == ["invalid_field", "invalid_json",
                                                    "unknown_type"]
    big = next(d for d in letters if d["reason"] == "invalid_field")
    assert big["payload"] == BIG and big["payload_encoding"] == "utf-8"
    assert big["customer_id"] == "c2" and big["replayed"] is None
    assert big["position"].startswith("dlr:events:") and "amount" in big["detail"]
    assert abs(big["at"] - time.time()) < 300 and big["time"].endswith("Z")
    assert [d["id"] for d in letters] == sorted(d["id"] for d in letters)

    table, _ = _command(capsys, *args)
    assert table.count("invalid_field") == 1 and "{broken" in table
    assert "redis://" not in table
    only, _ = _command(capsys, *args, "--json", "--reason", "unknown_type")
    assert [d["payload"] for d in json.loads(only)] == [UNKNOWN]
    newest, _ = _command(capsys, *args, "--json", "--limit", "1")
    assert json.loads(newest) == letters[-1:]
    picked, _ = _command(capsys, *args, "--json", "--id", big["id"])
    assert [d["id"] for d in json.loads(picked)] == [big["id"]]
    later, _ = _command(capsys, *args, "--json", "--since", "2099-01-01T00:00:00Z")
    assert json.loads(later) == []
    recent, _ = _command(capsys, *args, "--json", "--since", "1h")
    assert len(json.loads(recent)) == 3

    # The fix: a higher ceiling. The order goes back onto its customer's stream, once.
    fixed = _config(tmp_path / "fixed.toml", 1e6)
    args = ["--redis-url", redis_url, "--config", str(fixed)]
    before = _stream_lengths(client)
    _, err = _command(capsys, *args, "--reason", "invalid_field", "--replay")
    assert "replayed 1 onto dlr:events:0..1; 0 replayed before" in err
    after = _stream_lengths(client)
    assert sum(after) == sum(before) + 1
    partition = next(p for p in range(2) if after[p] > before[p])
    [(_, fields)] = client.xrevrange(f"dlr:events:{partition}", count=1)
    assert fields[b"e"] == BIG.encode()
    _, err = _command(capsys, *args, "--reason", "invalid_field", "--replay")
    assert "replayed 0 onto" in err and "1 replayed before" in err
    assert _stream_lengths(client) == after
    listed, _ = _command(capsys, *args, "--json", "--id", big["id"])
    assert json.loads(listed)[0]["replayed"].startswith(f"dlr:events:{partition} ")

    _run(args, tmp_path, "second")
    store = _store(redis_url, fixed)
    try:
        replayed = store.customer("c2")
        assert replayed is not None, "the replayed order was not scored"
    finally:
        store.close()
    # Everything else, twice: each replayed once; what still fails is dead-lettered anew.
    _, err = _command(capsys, *args, "--replay")
    assert "replayed 2 onto" in err and "1 replayed before" in err
    _, err = _command(capsys, *args, "--replay")
    assert "replayed 0 onto" in err and "3 replayed before" in err
    _run(args, tmp_path, "third")
    final = json.loads(_command(capsys, *args, "--json")[0])
    assert sorted(d["reason"] for d in final[:3]) == ["invalid_field", "invalid_json",
                                                      "unknown_type"]
    assert sorted(d["reason"] for d in final[3:]) == ["invalid_json", "unknown_type"]
    assert [d["replayed"] is not None for d in final] == [True, True, True, False, False]
    assert {d["payload"] for d in final[3:]} == {BROKEN, UNKNOWN}
    client.close()


def test_replays_racing_from_several_clients_push_each_dead_letter_once(
        redis_url: str, tmp_path: Path) -> None:  # noqa: F811
    config_path = _config(tmp_path / "c.toml", 1000.0)
    config = load_config(config_path)
    writer = _store(redis_url, config_path)
    records = [{"reason": "unknown_type", "detail": "x", "position": f"dlr:events:0:{n}-0",
                "payload": json.dumps({"customer_id": f"r{n}", "type": "visit", "ts": NOW}),
                "payload_encoding": "utf-8", "partition": "redis:dlr:events:0", "offset": n}
               for n in range(40)]
    assert writer.add_dead_letters(records) == [True] * 40
    writer.close()
    client = redis.Redis.from_url(redis_url)
    pushed: list[int] = []
    start = threading.Barrier(6)

    def replay() -> None:
        store = _store(redis_url, config_path)
        try:
            letters = read_dead_letters(store, limit=0)
            start.wait()
            pushed.append(len(replay_dead_letters(store, config, letters).replayed))
        finally:
            store.close()

    threads = [threading.Thread(target=replay) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(pushed, reverse=True)[0] >= 1 and sum(pushed) == 40, pushed
    assert sum(_stream_lengths(client)) == 40
    payloads = sorted(f[b"e"].decode() for p in range(2)
                      for _, f in client.xrange(f"dlr:events:{p}"))
    assert payloads == sorted(str(r["payload"]) for r in records)
    # Records of dead letters the stream no longer holds (trimmed) are dropped at the next
    # replay; those still held stay replayed.
    assert client.hlen("dlr:deadletters:replayed") == 40
    client.xtrim("dlr:deadletters", maxlen=10, approximate=False)
    store = _store(redis_url, config_path)
    try:
        again = replay_dead_letters(store, config, read_dead_letters(store, limit=0))
    finally:
        store.close()
    assert not again.replayed and len(again.already) == 10
    assert client.hlen("dlr:deadletters:replayed") == 10
    client.close()


def test_replay_on_a_redis_cluster_pushes_each_dead_letter_once(
        cluster_url: str, tmp_path: Path) -> None:
    config_path = write_config(tmp_path / "c.toml", "dlx", state={"shards": 4},
                               source={"stream_partitions": 2, "stream_prefix": "dlx:events"})
    config = load_config(config_path)
    store = _store(cluster_url, config_path)
    try:
        records = [{"reason": "future_timestamp", "detail": "x", "payload_encoding": "utf-8",
                    "position": f"p:{n}", "partition": "redis:dlx:events:0", "offset": n,
                    "payload": json.dumps({"customer_id": f"x{n}", "type": "visit", "ts": NOW})}
                   for n in range(5)]
        store.add_dead_letters(records)
        letters = read_dead_letters(store, limit=0)
        assert len(letters) == 5
        first = replay_dead_letters(store, config, letters)
        again = replay_dead_letters(store, config, read_dead_letters(store, limit=0))
        assert len(first.replayed) == 5 and not first.already
        assert not again.replayed and len(again.already) == 5
        lengths = sum(int(store.client.xlen(f"dlx:events:{p}")) for p in range(2))
        assert lengths == 5
        assert all(d.replayed and d.replayed.startswith("dlx:events:")
                   for d in read_dead_letters(store, limit=0))
    finally:
        store.close()


def test_dead_letters_needs_the_monitors_redis_and_never_prints_its_password(
        redis_url: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("CHURNWATCH_REDIS_URL", "CHURNWATCH_REDIS_URL_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["dead-letters"]) == 2
    assert "dead-letters works on the monitor's Redis" in capsys.readouterr().err
    with_password = redis_url.replace("redis://", "redis://:s3cr3t-pw@")
    assert main(["dead-letters", "--redis-url", with_password, "--replay"]) == 2
    captured = capsys.readouterr()
    assert "s3cr3t-pw" not in captured.out + captured.err
    assert main(["dead-letters", "--redis-url", redis_url, "--id", "latest"]) == 2
    assert "--id: not a stream entry id" in capsys.readouterr().err
