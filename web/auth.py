"""Who may read the worklist: the API's bearer token (from the environment or a file, never
from code or a command line), the browser session cookie derived from it, and the rule that
without a token only this host is answered (docs/worklist.md)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from pathlib import Path

from churnwatch.core.config import ConfigError

API_TOKEN_ENV = "CHURNWATCH_API_TOKEN"


API_TOKEN_FILE_ENV = "CHURNWATCH_API_TOKEN_FILE"


def api_token_from_env(environ: dict[str, str] | None = None) -> str | None:
    """The worklist API's bearer token: ``$CHURNWATCH_API_TOKEN``, else the first line of the
    file named by ``$CHURNWATCH_API_TOKEN_FILE``, else ``None`` (no token required). A named
    file that is missing or empty is a :class:`ConfigError` (the command exits with code 2),
    never a silently open API."""
    env = os.environ if environ is None else environ
    token = env.get(API_TOKEN_ENV)
    if token:
        return token.strip()
    path = env.get(API_TOKEN_FILE_ENV)
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{API_TOKEN_FILE_ENV}={path}: cannot read the API token: "
                              f"{exc.strerror}") from None
        if not text:
            raise ConfigError(f"{API_TOKEN_FILE_ENV}={path}: the file is empty")
        return text.splitlines()[0].strip()
    return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine.

    >>> is_loopback("localhost"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: The browser session cookie set by ``POST /login``: an HMAC of the token, never the token.
SESSION_COOKIE = "churnwatch_session"


def session_value(token: str) -> str:
    """The session cookie's value for a token (so the cookie never carries the token)."""
    return hmac.new(token.encode(), b"churnwatch browser session", hashlib.sha256).hexdigest()


def cookie_value(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header, if it is there.

    >>> cookie_value("a=1; churnwatch_session=abc", SESSION_COOKIE)
    'abc'
    """
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None
