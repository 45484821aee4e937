"""Session fixtures shared across test modules.

``redis_cluster`` and ``cluster_url``: a real three-node Redis Cluster (tests/redis_cluster.py).

``compiled_kernels`` (for every session, first): the columnar engine's numba kernels compiled
once and cached on disk, so no test that starts a monitor with a deadline pays the compilation.

``monitor_metrics_url``: a live ``churnwatch run --source redis`` (wall clock) on its own
redis-server, fed a simulated shop's history, yielding its ``/metrics`` URL once the state holds
every customer (for tests/test_dashboard_queries.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from redis_cluster import cluster_url, redis_cluster  # noqa: F401  (fixtures for every module)

MONITOR_CONFIG = """\
[segments.skincare]
[segments.fashion]
churn_rate_objective = 0.08
[segments.electronics]
[state]
shards = 4
[source]
stream_partitions = 2
"""
MONITOR_CUSTOMERS = 120


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels() -> None:
    """Compile (or load from the on-disk cache) every kernel with one small batch."""
    from churnwatch.core.columnar import ColumnarShard
    from churnwatch.core.config import ChurnwatchConfig
    from churnwatch.core.events import Event
    from churnwatch.core.records import Incoming, ShardState

    shard = ColumnarShard(0, ChurnwatchConfig(), ShardState())
    events = [Event("c1", "order", 0.0, amount=10.0), Event("c1", "refund", 1.0, amount=1.0),
              Event("c1", "campaign_sent", 2.0, channel="email"),
              Event("c1", "support_ticket", 3.0), Event("c1", "feedback", 4.0, score=9.0)]
    shard.process_items([Incoming(e) for e in events], now=4.0)


@pytest.fixture(scope="session")
def monitor_metrics_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Imported here so that collecting any test never depends on these modules.
    from monitor_process import running_monitor
    from redis_server import RedisServer

    from churnwatch.core.config import load_config
    from churnwatch.publish import Publisher
    from churnwatch.simulator import DAY, ShopSimulator

    workdir = tmp_path_factory.mktemp("monitor")
    config_file = workdir / "churnwatch.toml"
    config_file.write_text(MONITOR_CONFIG)
    redis_server = RedisServer()
    redis_server.start()
    try:
        with running_monitor(redis_server.url, config_file, workdir) as monitor:
            days = 200
            shop = ShopSimulator(customers=MONITOR_CUSTOMERS, seed=5,
                                 start=time.time() - days * DAY, days=days)
            publisher = Publisher(redis_server.url, load_config(config_file))
            publisher.publish(shop.events())
            publisher.close()
            deadline = time.monotonic() + 60
            wanted = f"churnwatch_state_customers {float(MONITOR_CUSTOMERS)}"
            while wanted not in monitor.scrape():
                assert time.monotonic() < deadline, (
                    f"the monitor never held {MONITOR_CUSTOMERS} customers; log:\n"
                    f"{monitor.log_tail()}")
                time.sleep(0.5)
            yield monitor.metrics_url
    finally:
        redis_server.cleanup()
