"""A real three-node Redis Cluster on free loopback ports, for the tests of the cluster store.

Three ``redis-server --cluster-enabled yes`` (no persistence, files in a temporary directory),
joined by ``redis-cli --cluster create ... --cluster-replicas 0``; ready once every node says
``cluster_state:ok``. Each node's cluster bus gets a port of its own (``--cluster-port``), so
no port arithmetic can fall outside the valid range.

Fixtures (registered in tests/conftest.py): ``redis_cluster`` (the session's cluster) and
``cluster_url`` (its ``redis+cluster://`` URL, every node emptied before and after the test).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from servers import free_port

NODES = 3


class RedisClusterServer:
    """Three redis-server processes made into one cluster (no replicas)."""

    def __init__(self, nodes: int = NODES) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise RuntimeError("redis-server and redis-cli are needed on PATH: run `make "
                               "system-deps` (Debian package redis-server)")
        self.server_binary, self.cli_binary = server, cli
        self.ports = [free_port() for _ in range(nodes)]
        self.dir = tempfile.mkdtemp(prefix="churnwatch-cluster-")
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The URL naming every node: ``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...``."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def node_clients(self) -> list[redis.Redis]:
        """A plain client per node (each sees only the slots it holds)."""
        return [redis.Redis(port=p) for p in self.ports]

    def start(self) -> None:
        """Start the nodes, create the cluster, wait until every node reports it ok."""
        for port in self.ports:
            workdir = os.path.join(self.dir, str(port))
            os.makedirs(workdir)
            self.processes.append(subprocess.Popen(
                [self.server_binary, "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                 "--cluster-config-file", os.path.join(workdir, "nodes.conf"),
                 "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no",
                 "--dir", workdir, "--daemonize", "no", "--loglevel", "warning",
                 "--logfile", os.path.join(workdir, "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port, process in zip(self.ports, self.processes, strict=True):
            self._wait(lambda p=port: redis.Redis(port=p).ping(), process,
                       f"redis-server on port {port} to answer")
        created = subprocess.run(
            [self.cli_binary, "--cluster", "create",
             *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}"
                               f"{created.stderr}")
        for port, process in zip(self.ports, self.processes, strict=True):
            self._wait(lambda p=port: redis.Redis(port=p).execute_command("CLUSTER INFO").get(
                "cluster_state") == "ok", process, f"node {port} to report cluster_state:ok")

    def _wait(self, ready: Callable[[], object], process: subprocess.Popen[bytes], what: str
              ) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                if ready():
                    return
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}; logs in {self.dir}")
            time.sleep(0.05)

    def flush(self) -> None:
        """Empty every node."""
        for client in self.node_clients():
            client.flushall()
            client.close()

    def cleanup(self) -> None:
        """Stop every node (killed after ten seconds) and remove their files."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_cluster() -> Iterator[RedisClusterServer]:
    """A started three-node cluster, stopped and removed on exit."""
    cluster = RedisClusterServer()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """The session's three-node cluster."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture()
def cluster_url(redis_cluster: RedisClusterServer) -> Iterator[str]:
    """The cluster's URL, every node empty at the start and the end of the test."""
    redis_cluster.flush()
    yield redis_cluster.url
    redis_cluster.flush()
