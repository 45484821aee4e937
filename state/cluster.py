"""Redis Cluster as the state store: the client a URL names, and where each command must go.

A URL whose scheme is ``redis+cluster://`` (or ``rediss+cluster://`` for TLS) names a Redis
Cluster by one or more of its nodes, ``redis+cluster://[user:password@]host:port[,host:port...]``;
every other URL names a single Redis (``redis://``, ``rediss://``, ``unix://``).
:func:`redis_client` makes the client either way, so every command that takes a Redis URL works
on a cluster too.

:class:`~churnwatch.state.redis_store.RedisStore` keeps one shard's keys under one hash tag
(``P:{sN}:...``), so one shard lives in one slot of one node, and a shard's commit is one
MULTI/EXEC there. redis-py's cluster client (5.x) refuses MULTI/EXEC in its pipelines, routes a
Lua script through a pipeline poorly, scans every node for any pattern and refuses an MGET
across slots. The store therefore asks a :class:`RedisTopology` where a command goes:

- :meth:`RedisTopology.node_for`: the plain client of the node that holds a key's slot, for a
  shard's transaction, a script and a SCAN limited to one hash tag;
- :meth:`RedisTopology.nodes`: a client per primary, to SCAN the whole keyspace once;
- :meth:`RedisTopology.mget`: values of keys in any slots (one MGET per slot on a cluster);
- :meth:`RedisTopology.used_memory`: ``used_memory`` summed over the primaries;
- :meth:`RedisTopology.dead_letter_keys`: the dead-letter stream and its high-water hash, which
  one script updates together, so on a cluster they share a hash tag;
- :meth:`RedisTopology.refresh`: after a lost connection, learn the slots afresh (a failover
  moves them) before the store retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import redis
from churnwatch.state.connection import redact_url
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

# What a failover or a resharding raises while it lasts: waited out like a lost connection.
CLUSTER_TRANSIENT_ERRORS: tuple[type[redis.RedisError], ...] = (
    redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError,
    redis.exceptions.MovedError, redis.exceptions.SlotNotCoveredError)


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster.

    >>> is_cluster_url("redis+cluster://10.0.0.5:7000,10.0.0.6:7000")
    True
    >>> is_cluster_url("redis://10.0.0.5:6379/0")
    False
    """
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def cluster_seeds(url: str) -> tuple[str, list[tuple[str, int]]]:
    """A cluster URL as a single-node URL of its first node (which carries the password and the
    options) and the ``(host, port)`` of every node it lists.

    >>> cluster_seeds("redis+cluster://:pw@a:7000,b:7001")
    ('redis://:pw@a:7000', [('a', 7000), ('b', 7001)])
    >>> cluster_seeds("rediss+cluster://a")
    ('rediss://a:6379', [('a', 6379)])
    >>> cluster_seeds("redis+cluster://a:7000/1")
    Traceback (most recent call last):
    ...
    ValueError: a Redis Cluster has only database 0, not '/1' (in redis+cluster://a:7000/1)
    """
    scheme, _, rest = url.partition("://")
    base = CLUSTER_SCHEMES[scheme.lower()]
    parts = urlsplit(f"{base}://{rest}")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if parts.path not in ("", "/", "/0"):
        raise ValueError(f"a Redis Cluster has only database 0, not {parts.path!r} (in "
                         f"{redact_url(url)})")
    seeds: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = item.strip(), "6379"
        if not host or not port.isdigit():
            raise ValueError(f"not host:port: {item!r} (in {redact_url(url)})")
        seeds.append((unquote(host.strip("[]")), int(port)))
    first_host, first_port = seeds[0]
    query = f"?{parts.query}" if parts.query else ""
    return f"{base}://{userinfo}{at}{first_host}:{first_port}{query}", seeds


def redis_client(url: str, **options: Any) -> redis.Redis | RedisCluster:
    """The client for ``url``: a :class:`redis.cluster.RedisCluster` for a cluster URL (it
    learns the other nodes from the ones listed), else a :class:`redis.Redis`. ``options`` go
    to every connection (timeouts, health checks)."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, **options)
    first, seeds = cluster_seeds(url)
    try:
        return RedisCluster.from_url(
            first, startup_nodes=[ClusterNode(host, port) for host, port in seeds[1:]],
            **options)
    except RedisClusterException as exc:
        # The cluster client connects at once, and says "no node reachable" for a refused
        # login as for an outage: raise what the last node said, so that callers tell one from
        # the other as they do for a single Redis (waited out, or stopped at once).
        cause = exc.__cause__
        if isinstance(cause, redis.RedisError):
            raise type(cause)(*cause.args) from None
        raise redis.ConnectionError(str(exc)) from None


class RedisTopology(Protocol):
    """Where the store's commands go: one Redis, or the nodes of a cluster."""

    def node_for(self, key: str) -> redis.Redis:
        """The plain client of the node holding ``key``'s slot (keys with the same hash tag
        share it): for a MULTI/EXEC, a Lua script or a SCAN within one hash tag."""

    def nodes(self) -> list[redis.Redis]:
        """A plain client per node holding data (the primaries), for a SCAN of everything."""

    def mget(self, keys: Sequence[str]) -> list[Any]:
        """The values of ``keys``, in order, whatever their slots (``None`` where missing)."""

    def used_memory(self) -> int:
        """Bytes Redis uses for everything it holds (``INFO memory``), over all primaries."""

    def dead_letter_keys(self, prefix: str) -> tuple[str, str]:
        """The dead-letter stream and its high-water hash (one script updates both)."""

    def refresh(self) -> None:
        """Forget where slots live (called before a retry after a lost connection)."""


class SingleNode:
    """One Redis holds every key."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def node_for(self, key: str) -> redis.Redis:
        return self.client

    def nodes(self) -> list[redis.Redis]:
        return [self.client]

    def mget(self, keys: Sequence[str]) -> list[Any]:
        return list(self.client.mget(keys)) if keys else []

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def dead_letter_keys(self, prefix: str) -> tuple[str, str]:
        # The names of the versions before cluster support: an upgrade keeps its dead letters.
        return f"{prefix}:deadletters", f"{prefix}:deadletters:offsets"

    def refresh(self) -> None:
        pass


class ClusterNodes:
    """A Redis Cluster: each command goes to the node that holds its keys' slot."""

    def __init__(self, client: RedisCluster) -> None:
        self.client = client

    def node_for(self, key: str) -> redis.Redis:
        node = self.client.get_node_from_key(key)
        return self.client.get_redis_connection(node)  # type: ignore[no-any-return]

    def nodes(self) -> list[redis.Redis]:
        return [self.client.get_redis_connection(node) for node in self.client.get_primaries()]

    def mget(self, keys: Sequence[str]) -> list[Any]:
        return list(self.client.mget_nonatomic(list(keys))) if keys else []

    def used_memory(self) -> int:
        primaries = self.client.get_primaries()
        return sum(int(self.client.get_redis_connection(node).info("memory")["used_memory"])
                   for node in primaries)

    def dead_letter_keys(self, prefix: str) -> tuple[str, str]:
        return f"{prefix}:{{deadletters}}", f"{prefix}:{{deadletters}}:offsets"

    def refresh(self) -> None:
        try:
            self.client.nodes_manager.initialize()
        except (redis.RedisError, RedisClusterException):
            pass  # no node answers yet: the next retry tries again


class NotConnected:
    """No client yet (a cluster client connects when made): nothing to route, nothing to
    refresh."""

    def node_for(self, key: str) -> redis.Redis:
        raise RuntimeError("not connected")

    def nodes(self) -> list[redis.Redis]:
        raise RuntimeError("not connected")

    def mget(self, keys: Sequence[str]) -> list[Any]:
        raise RuntimeError("not connected")

    def used_memory(self) -> int:
        raise RuntimeError("not connected")

    def dead_letter_keys(self, prefix: str) -> tuple[str, str]:
        raise RuntimeError("not connected")

    def refresh(self) -> None:
        pass


def topology_of(client: redis.Redis | RedisCluster) -> RedisTopology:
    """The topology ``client`` talks to."""
    if isinstance(client, RedisCluster):
        return ClusterNodes(client)
    return SingleNode(client)
