"""A real redis-server on a free loopback port, for the tests that need Redis.

Import the fixtures into a test module: ``from redis_server import redis_url  # noqa: F401``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from live_servers import LiveRedis
from servers import free_port

__all__ = ["RedisServer", "free_port", "redis_server", "redis_url"]


# One redis-server starter and one port finder for the whole suite.
RedisServer = LiveRedis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture()
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A clean database on the session's server."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    client.flushall()
    client.close()
