"""Redis Cluster as the state store, against a real three-node cluster (tests/redis_cluster.py).

The store contract itself runs on the cluster in tests/test_store_contract.py (its ``cluster``
parameter). Here: a replay into the cluster ends in the state a replay into one redis-server
ends in, customer by customer and shard by shard; shards really spread over the nodes, each
shard's keys on one node; a commit whose reply was lost is applied once on a cluster too; and
``churnwatch run`` on the cluster, killed with -9 and restarted, ends as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import msgpack
import pytest
import redis
import test_store_contract as contract
from churnwatch.state.base import UrgencySelection, shard_of
from churnwatch.state.checkpoint import decode_states
from churnwatch.state.cluster import is_cluster_url, redis_client
from churnwatch.state.redis_store import RedisStore
from live_servers import (
    CHURNWATCH,
    finish,
    kill_hard,
    start_run,
    state_snapshot,
    tail,
    wait_for,
    write_config,
)
from redis.cluster import RedisCluster
from redis_cluster import RedisClusterServer
from redis_server import redis_server, redis_url  # noqa: F401
from servers import free_port

from bench.workload import START as WORKLOAD_START
from bench.workload import write_jsonl
from churnwatch.core.config import ChurnwatchConfig, load_config
from churnwatch.core.customer import DAY
from churnwatch.export import export_rows
from churnwatch.publish import Publisher, read_lines
from churnwatch.replay import replay
from churnwatch.simulator import ShopSimulator

START = 1_700_000_000.0
DAYS = 240
AS_OF = START + DAYS * DAY


@pytest.fixture(scope="module")
def shop_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated shop (every event kind, three segments), with two bad lines."""
    shop = ShopSimulator(customers=250, seed=11, start=START, days=DAYS,
                         segments={"skincare": 0.5, "fashion": 0.3, "electronics": 0.2})
    lines = [json.dumps(e) for e in shop.events()]
    lines.insert(len(lines) // 3, "{not json")
    lines.insert(2 * len(lines) // 3, json.dumps({"customer_id": "x", "type": "order"}))
    path = tmp_path_factory.mktemp("shop") / "shop.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def replay_into(path: Path, url: str, shards: int) -> None:
    config = ChurnwatchConfig(shards=shards, stream_partitions=2)
    summary = replay([str(path)], config, lambda: RedisStore(url, shards, "cw", max_wait=10),
                     as_of=AS_OF, dead_letters_path=str(path) + f".{shards}.dead.jsonl")
    assert summary.dead_letters == 2 and summary.applied > 1000


def assert_same(got: object, expected: object, where: str = "") -> None:
    """Equal, floats within 1e-9 relative: a shard's sums of scores depend on the order its
    customers were added in, which a replay's batch boundaries (timing) may change."""
    if isinstance(expected, float) and isinstance(got, float):
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-9), where
    elif isinstance(expected, dict) and isinstance(got, dict):
        assert sorted(got) == sorted(expected), where
        for key, value in expected.items():
            assert_same(got[key], value, f"{where}.{key}")
    elif isinstance(expected, list) and isinstance(got, list):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert got == expected, where


def test_a_cluster_url_makes_a_cluster_client_that_finds_every_node(
        redis_cluster: RedisClusterServer) -> None:
    one_node = redis_cluster.url.split(",")[0]  # the client learns the others from it
    assert is_cluster_url(one_node)
    client = redis_client(one_node)
    try:
        assert isinstance(client, RedisCluster)
        assert sorted(n.port for n in client.get_primaries()) == sorted(redis_cluster.ports)
    finally:
        client.close()


def test_replay_into_the_cluster_equals_replay_into_one_redis(
        shop_log: Path, cluster_url: str, redis_url: str) -> None:  # noqa: F811
    shards = 8
    replay_into(shop_log, redis_url, shards)
    replay_into(shop_log, cluster_url, shards)
    single = RedisStore(redis_url, shards, "cw", max_wait=10)
    cluster = RedisStore(cluster_url, shards, "cw", max_wait=10)
    try:
        assert isinstance(cluster.client, RedisCluster)
        customers = dict(single.iter_customers())
        clustered = dict(cluster.iter_customers())
        assert len(customers) > 200 and sorted(clustered) == sorted(customers)
        for cid, state in customers.items():
            assert clustered[cid].to_wire() == state.to_wire(), cid
            assert (cluster.customer_transitions(cid, 30)
                    == single.customer_transitions(cid, 30)), cid
        for shard in range(shards):
            assert_same(cluster.load_shard(shard).to_wire(), single.load_shard(shard).to_wire())
            assert (cluster.due_customers(shard, float("inf"), 10_000)
                    == single.due_customers(shard, float("inf"), 10_000))
            assert cluster.next_due(shard) == single.next_due(shard)
        assert ({s: c.offsets for s, c in cluster.committed_positions().items()}
                == {s: c.offsets for s, c in single.committed_positions().items()})
        assert cluster.customer_count() == single.customer_count() == len(customers)
        assert cluster.recent_transitions(50) == single.recent_transitions(50)
        assert cluster.dead_letter_count() == single.dead_letter_count() == (2, 2)
        assert ([r["reason"] for r in cluster.dead_letters(10)]
                == [r["reason"] for r in single.dead_letters(10)])
        config = ChurnwatchConfig(shards=shards)
        assert export_rows(cluster, config, AS_OF) == export_rows(single, config, AS_OF)
        totals = []
        for selection in (UrgencySelection(frozenset({0, 1, 2, 3})),
                          UrgencySelection(frozenset({2, 3}), value_tier="standard"),
                          UrgencySelection(frozenset({0, 1, 2}),
                                           segment_filter=lambda s: s == "fashion")):
            for offset in (0, 17):
                page, total = cluster.urgency_page(selection, offset, 25)
                expected, expected_total = single.urgency_page(selection, offset, 25)
                assert total == expected_total
                assert [(c, s.to_wire()) for c, s in page] == [
                    (c, s.to_wire()) for c, s in expected]
                totals.append(total)
        assert totals[0] == len(customers) and min(totals) > 0, totals
        ghost = "cw:{s3}:u:ghost"  # a stale index the rebuild must drop
        for store in (single, cluster):
            store.topology.node_for(ghost).zadd(ghost, {"nobody": 1.0})
        assert cluster.rebuild_urgency_index() == single.rebuild_urgency_index() > 0
        assert not single.client.exists(ghost) and not cluster.client.exists(ghost)
        page, _ = cluster.urgency_page(UrgencySelection(frozenset({0, 1, 2, 3})), 0, 40)
        assert [c for c, _ in page] == [c for c, _ in single.urgency_page(
            UrgencySelection(frozenset({0, 1, 2, 3})), 0, 40)[0]]
        assert cluster.memory_bytes() > 0
    finally:
        single.close()
        cluster.close()


def test_sixty_four_shards_spread_over_every_node_one_shard_per_node(
        shop_log: Path, redis_cluster: RedisClusterServer, cluster_url: str) -> None:
    shards = 64
    replay_into(shop_log, cluster_url, shards)
    store = RedisStore(cluster_url, shards, "cw", max_wait=10)
    try:
        assert sum(1 for _ in store.iter_customers()) == store.customer_count() > 200
    finally:
        store.close()
    shards_on: list[set[int]] = []
    for node in redis_cluster.node_clients():
        keys = [k.decode() for k in node.scan_iter(match="cw:{s*}:*", count=1000)]
        tags = {int(k.split("{s", 1)[1].split("}", 1)[0]) for k in keys}
        customers = [k for k in keys if ":k:" in k]
        assert customers, f"node {node.connection_pool.connection_kwargs['port']} holds none"
        for key in customers:  # the checkpoints of the shard's customers' buckets
            for cid, _ in decode_states([node.get(key)]):
                assert f"{{s{shard_of(cid, shards)}}}" in key
        shards_on.append(tags)
        node.close()
    assert all(len(tags) >= 8 for tags in shards_on)
    # Each shard's keys live on one node (one slot): its commit is one MULTI/EXEC there.
    assert sum(len(tags) for tags in shards_on) == len(set().union(*shards_on)) == shards


def test_a_commit_retried_after_a_lost_reply_is_applied_once_on_a_cluster(
        cluster_url: str) -> None:
    contract.test_a_commit_retried_after_a_lost_reply_is_applied_once(cluster_url)


def test_the_dead_letter_stream_and_its_high_water_marks_share_a_node(
        redis_cluster: RedisClusterServer, cluster_url: str) -> None:
    store = RedisStore(cluster_url, 4, "cw", max_wait=5)
    try:
        record = {"reason": "invalid_json", "detail": "x", "position": "f:3", "payload": "{",
                  "partition": "f", "offset": 3}
        assert store.add_dead_letters([record, record]) == [True, False]
    finally:
        store.close()
    holders = []
    for node in redis_cluster.node_clients():
        names = {k.decode() for k in node.keys("cw:*deadletters*")}
        if names:
            holders.append(names)
        node.close()
    assert holders == [{"cw:{deadletters}", "cw:{deadletters}:offsets",
                        "cw:{deadletters}:committed_at"}]


def test_a_cluster_url_with_a_database_is_refused() -> None:
    with pytest.raises(ValueError, match="only database 0"):
        redis_client("redis+cluster://127.0.0.1:7000/2")
    assert isinstance(redis_client("redis://127.0.0.1:7000/2"), redis.Redis)


LIVE_EVENTS = 40_000
LIVE_CUSTOMERS = 4_000
LIVE_SPAN_DAYS = 365.0
RUN_TIMEOUT = 240.0


def _cluster_progress(client: RedisCluster, prefix: str, shards: int) -> float:
    raws = client.mget_nonatomic([f"{prefix}:{{s{s}}}:shard" for s in range(shards)])
    marks = [msgpack.unpackb(r, strict_map_key=False)[1] for r in raws if r]
    return (max(marks) - WORKLOAD_START) / (LIVE_SPAN_DAYS * DAY) if marks else 0.0


def _without_dead_letters(snapshot: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in snapshot.items() if "deadletters" not in k}


def _dead_positions(client: RedisCluster, prefix: str) -> list[str]:
    return sorted(fields[b"position"].decode()
                  for _, fields in client.xrange(f"{prefix}:{{deadletters}}"))


@pytest.mark.slow
def test_a_run_on_the_cluster_killed_and_restarted_ends_as_an_uninterrupted_one(
        cluster_url: str, tmp_path: Path) -> None:
    """``churnwatch run`` with its streams and state on the cluster, killed with -9 three
    times and restarted from its recovery directory, ends in the state (every key) and dead
    letters of one uninterrupted run over the same streams."""
    path = write_jsonl(tmp_path / "events.jsonl", LIVE_EVENTS, LIVE_CUSTOMERS, 7,
                       span_days=LIVE_SPAN_DAYS, poison_every=997)
    Publisher(cluster_url, load_config(write_config(tmp_path / "publish.toml", "unused"))
              ).publish(read_lines([str(path)]))

    def args(prefix: str, *extra: str) -> list[str]:
        config = write_config(tmp_path / f"{prefix}.toml", prefix)
        return ["--redis-url", cluster_url, "--config", str(config), "--clock", "event",
                "--stop-at-end", "--no-metrics", *extra]

    finish(start_run(args("ref"), tmp_path / "ref.log"), RUN_TIMEOUT, tmp_path / "ref.log")
    client = redis_client(cluster_url)
    assert isinstance(client, RedisCluster)
    log = tmp_path / "kill.log"
    killed = args("kill", "--recovery-dir", str(tmp_path / "recovery"),
                  "--snapshot-interval", "0.5")
    kills = []
    for fraction in (0.2, 0.5, 0.8):
        process = start_run(killed, log)
        wait_for(lambda f=fraction, p=process: _cluster_progress(client, "kill", 16) >= f
                 or p.poll() is not None, RUN_TIMEOUT, f"progress {fraction:.0%}")
        assert process.poll() is None, f"the run ended before the kill:\n{tail(log)}"
        kill_hard(process)
        kills.append(_cluster_progress(client, "kill", 16))
    assert kills == sorted(kills) and kills[-1] < 1.0
    finish(start_run(killed, log), RUN_TIMEOUT, log)

    reference = _without_dead_letters(state_snapshot(client, "ref"))
    customers = sum(":k:" in k and k.count(":") > 2 for k in reference)  # {sN}:k:<b>:<id>
    assert customers > LIVE_CUSTOMERS * 0.9
    assert_same(_without_dead_letters(state_snapshot(client, "kill")), reference)
    dead = _dead_positions(client, "ref")
    assert len(dead) == LIVE_EVENTS // 997 and _dead_positions(client, "kill") == dead
    client.close()

    # The one-shot commands read the same cluster: status sees every stream consumed, export
    # writes every customer.
    env = dict(os.environ, CHURNWATCH_REDIS_URL=cluster_url)
    config = str(tmp_path / "kill.toml")
    status = subprocess.run([CHURNWATCH, "status", "--config", config], env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "all consumed" in status.stdout, status.stderr
    export = tmp_path / "kill.csv"
    done = subprocess.run([CHURNWATCH, "export", "--config", config, "--out", str(export)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = export.read_text().splitlines()[1:]
    assert len(rows) == customers


def test_a_refused_login_or_no_reachable_node_is_one_line_with_exit_status_2(
        redis_cluster: RedisClusterServer) -> None:
    port = redis_cluster.ports[0]
    for url, said in ((f"redis+cluster://:s3cret@127.0.0.1:{port}", "refused the login"),
                      (f"redis+cluster://127.0.0.1:{free_port()}", "is unreachable")):
        # run too: the cluster client connects when made, so a cluster must answer at start.
        for command in (["status"], ["run", "--no-metrics"]):
            done = subprocess.run([CHURNWATCH, *command], capture_output=True, text=True,
                                  timeout=60, env=dict(os.environ, CHURNWATCH_REDIS_URL=url))
            assert done.returncode == 2 and said in done.stderr, done.stderr
            assert "s3cret" not in done.stderr and "Traceback" not in done.stderr
            assert len(done.stderr.strip().splitlines()) == 1


def test_the_store_waits_for_a_cluster_that_does_not_answer_yet() -> None:
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        RedisStore(f"redis+cluster://127.0.0.1:{free_port()}", 4, "cw", max_wait=0.5)
    assert time.monotonic() - started >= 0.5  # retried (a live monitor waits for ever)
