"""Redis URLs as people see them, and which Redis failures are worth waiting out.

Every message that names a Redis (logs, errors, ``/healthz``, a command's banner) shows it
through :func:`redact_url`, so a password in ``CHURNWATCH_REDIS_URL`` never reaches a terminal
or a log file. :func:`is_lost_connection` is the one rule for retrying: a connection that was
lost (Redis restarting, a network cut, a failover) is waited out; a refused login is not, since
waiting cannot fix a wrong password.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis


def redact_url(url: str) -> str:
    """``url`` with its password (and any ``password=`` query value) replaced by ``***``.

    >>> redact_url("redis://:s3cret@db.internal:6379/0")
    'redis://:***@db.internal:6379/0'
    >>> redact_url("rediss://app:s3cret@db.internal/1")
    'rediss://app:***@db.internal/1'
    >>> redact_url("unix:///run/redis.sock?db=0&password=s3cret")
    'unix:///run/redis.sock?db=0&password=***'
    >>> redact_url("redis://127.0.0.1:6390/0")
    'redis://127.0.0.1:6390/0'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable Redis URL)"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"{user}@{host}"
    query = "&".join(
        f"{key}=***" if key.lower() == "password" else item
        for item in parts.query.split("&") if item
        for key in [item.partition("=")[0]]) if parts.query else ""
    if not parts.scheme:
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    # By hand: urlunsplit would drop the empty host of ``unix:///path``.
    return (f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
            + (f"#{parts.fragment}" if parts.fragment else ""))


def is_authentication_error(exc: BaseException) -> bool:
    """A refused login: wrong password or user, or a server that wants one and got none.

    >>> is_authentication_error(redis.AuthenticationError("invalid username-password pair"))
    True
    >>> is_authentication_error(redis.ConnectionError("Connection refused"))
    False
    """
    return isinstance(exc, (redis.AuthenticationError,
                            redis.AuthenticationWrongNumberOfArgsError))


# What waiting may cure; the cluster errors are a failover or a resharding while it lasts
# (a slot without a primary, a key moved under a transaction sent to its old node).
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError,
    redis.exceptions.ClusterError, redis.exceptions.TryAgainError, redis.exceptions.MovedError,
    redis.exceptions.SlotNotCoveredError)


def is_lost_connection(exc: BaseException) -> bool:
    """A failure that waiting may cure: the connection is down, timed out, or Redis is loading
    its data or read-only during a failover, or a cluster is moving a slot. Not a refused login.

    >>> is_lost_connection(redis.ConnectionError("Connection refused"))
    True
    >>> is_lost_connection(redis.AuthenticationError("invalid username-password pair"))
    False
    """
    return isinstance(exc, TRANSIENT_ERRORS) and not is_authentication_error(exc)


def describe_failure(url: str, exc: BaseException) -> str:
    """One line for a person: which Redis (redacted) and what went wrong.

    >>> describe_failure("redis://:pw@h:1/0", redis.AuthenticationError("bad password"))[:60]
    'Redis at redis://:***@h:1/0 refused the login (bad password)'
    """
    where = f"Redis at {redact_url(url)}"
    if is_authentication_error(exc):
        return (f"{where} refused the login ({exc}): check the password in "
                "CHURNWATCH_REDIS_URL or CHURNWATCH_REDIS_URL_FILE")
    if is_lost_connection(exc):
        return f"{where} is unreachable ({exc})"
    return f"{where}: {exc}"
