"""The HTTP routes of the server (:mod:`churnwatch.web.server`): ``/metrics`` from the
registry, the JSON API (:class:`churnwatch.web.worklist.WorklistAPI`) behind the bearer token
or the session cookie, the pages (:class:`churnwatch.web.pages.WorkbenchPages`) behind the
sign-in at ``/login``, and 405 for every method but GET (and POST to ``/login``)."""

from __future__ import annotations

import gzip
import hmac
import json
import logging
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from churnwatch.web.auth import (
    API_TOKEN_ENV,
    API_TOKEN_FILE_ENV,
    SESSION_COOKIE,
    cookie_value,
    is_loopback,
    session_value,
)
from churnwatch.web.pages import WorkbenchPages, safe_next
from churnwatch.web.worklist import WorklistAPI
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger("churnwatch.metrics")  # the name operators filter on, as before the split

#: What the pages may load: nothing but their own inline styles and SVG.
PAGE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def make_handler(registry: CollectorRegistry, api: WorklistAPI, token: str | None,
                 api_off: bool) -> type[BaseHTTPRequestHandler]:
    """The request handler class for one server: ``token`` (``None``: none required) guards
    the API and the pages; ``api_off``: no token on a non-loopback address, so only local
    clients are answered."""
    expected = f"Bearer {token}".encode() if token else None
    session = session_value(token).encode() if token else None
    pages = WorkbenchPages(api)

    class Handler(BaseHTTPRequestHandler):
        server_version = "churnwatch"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            parts = urlsplit(self.path)
            path = parts.path
            if path == "/metrics":
                self._metrics()
                return
            if path.startswith("/api/") and api_off and not is_loopback(
                    str(self.client_address[0])):
                self._json(403, {"error": "the worklist API answers only local clients when "
                                 f"no token is set; set {API_TOKEN_ENV} or {API_TOKEN_FILE_ENV}"})
                return
            if not path.startswith("/api/") and path != "/healthz":
                self._page(path, parts.query)
                return
            if path.startswith("/api/") and expected is not None:
                if not self._authorized():
                    self._json(401, {"error": "missing or wrong bearer token",
                                     "parameter": "Authorization"},
                               {"WWW-Authenticate": 'Bearer realm="churnwatch"'})
                    return
            status, body = api.handle(path, parts.query)
            self._json(status, body)

        def do_HEAD(self) -> None:  # noqa: N802
            self._json(405, {"error": "use GET"}, {"Allow": "GET"})

        def do_POST(self) -> None:  # noqa: N802
            if urlsplit(self.path).path == "/login":
                self._login()
                return
            self._json(405, {"error": "use GET"}, {"Allow": "GET"})

        def do_PUT(self) -> None:  # noqa: N802
            self._json(405, {"error": "use GET"}, {"Allow": "GET"})

        do_DELETE = do_PATCH = do_PUT  # noqa: N815

        def _authorized(self) -> bool:
            """A bearer token (API clients) or the session cookie (browsers)."""
            if expected is None or session is None:
                return True
            given = self.headers.get("Authorization", "").encode()
            if hmac.compare_digest(given, expected):
                return True
            cookie = cookie_value(self.headers.get("Cookie", ""), SESSION_COOKIE) or ""
            return hmac.compare_digest(cookie.encode(), session)

        def _page(self, path: str, query: str) -> None:
            if api_off and not is_loopback(str(self.client_address[0])):
                self._html(403, pages.error("Local clients only", "No API token is set, so the "
                                            f"pages answer only this host; set {API_TOKEN_ENV} "
                                            f"or {API_TOKEN_FILE_ENV}."))
                return
            if path != "/login" and not self._authorized():
                target = path + (f"?{query}" if query else "")
                self._send(303, b"", {"Location": "/login?next=" + quote(target, safe="")})
                return
            status, body = pages.handle(path, query)
            self._html(status, body)

        def _login(self) -> None:
            length = min(int(self.headers.get("Content-Length") or 0), 8192)
            form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
            given = (form.get("token") or [""])[0]
            next_path = safe_next((form.get("next") or ["/"])[0])
            if token is not None and not hmac.compare_digest(given.encode(), token.encode()):
                log.warning("pages: wrong token from %s", self.address_string())
                self._html(401, pages.login(next_path, "Wrong token."))
                return
            headers = {"Location": next_path}
            if token is not None:
                headers["Set-Cookie"] = (f"{SESSION_COOKIE}={session_value(token)}; HttpOnly; "
                                         "SameSite=Strict; Path=/; Max-Age=43200")
            self._send(303, b"", headers)

        def _html(self, status: int, body: str) -> None:
            self._send(status, body.encode(), PAGE_HEADERS)

        def _metrics(self) -> None:
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            try:
                output = encoder(registry)
            except Exception:  # noqa: BLE001 - answer 500 and keep serving
                log.exception("scrape failed")
                self._json(500, {"error": "scrape failed, see the churnwatch log"})
                return
            headers = {"Content-Type": content_type}
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                output = gzip.compress(output)
                headers["Content-Encoding"] = "gzip"
            self._send(200, output, headers)

        def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body, indent=None, separators=(",", ":")).encode()
            self._send(status, data, {"Content-Type": "application/json", **(headers or {})})

        def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
