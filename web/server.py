"""The HTTP server of ``churnwatch run`` and ``churnwatch serve``: ``/metrics`` (the registry
of :mod:`churnwatch.metrics`), ``/healthz``, the customer-success pages and the worklist API,
in a thread (routes: :mod:`churnwatch.web.router`; tokens and sessions: :mod:`churnwatch.web.auth`).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer

from churnwatch.metrics.business import BusinessCollector, own_store
from churnwatch.metrics.pipeline import PipelineMetrics
from churnwatch.state.base import StateStore
from churnwatch.web.auth import API_TOKEN_ENV, API_TOKEN_FILE_ENV, api_token_from_env, is_loopback
from churnwatch.web.router import make_handler
from churnwatch.web.worklist import WorklistAPI
from prometheus_client import CollectorRegistry

from churnwatch.core.config import ChurnwatchConfig

log = logging.getLogger("churnwatch.metrics")  # the name operators filter on, as before the split

#: How long an API request or a page keeps retrying Redis before it answers 503.
API_MAX_WAIT_SECONDS = 2.0


class MetricsServer:
    """A running metrics and worklist server; :meth:`shutdown` stops it."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread,
                 registry: CollectorRegistry, collector: BusinessCollector | None,
                 api: WorklistAPI) -> None:
        self._httpd = httpd
        self._thread = thread
        self._registry = registry
        self._collector = collector
        self._api = api
        self.host = str(httpd.server_address[0])
        self.port = int(httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port`` (IPv6 hosts bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def shutdown(self) -> None:
        """Stop serving, wait for the serving thread, unregister the collector, close stores."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)
        if self._collector is not None:
            try:
                self._registry.unregister(self._collector)
            except KeyError:
                pass
            self._collector.close()
        self._api.close()


def start_metrics_server(host: str | None, port: int, config: ChurnwatchConfig,
                         store_factory: Callable[[], StateStore], registry: CollectorRegistry,
                         pipeline_metrics: PipelineMetrics | None,
                         serve_business: bool = True, api_token: str | None = None
                         ) -> MetricsServer:
    """Serve ``/metrics``, ``/healthz`` and the worklist API (``/api/v1/...``) in a thread.

    ``host`` defaults to 127.0.0.1; ``port`` 0 picks a free port (see ``.port``).
    ``serve_business`` registers a :class:`BusinessCollector` on ``registry``; turn it off in
    all but one of several processes that share a Prometheus job if their scrapes should not
    read Redis. ``api_token`` (default: :func:`api_token_from_env`; ``""``: none) makes the API
    require ``Authorization: Bearer <token>``. Without a token, and ``host`` beyond loopback,
    the API answers 403 to clients that do not connect from this host: it would hand customer
    data to the network. ``/metrics`` and ``/healthz`` stay open: they carry no customer data,
    and Prometheus then needs no secret (see docs/worklist.md).

    Called by ``churnwatch run`` once at start, before the dataflow; ``shutdown()`` on exit.
    """
    host = host or "127.0.0.1"
    token = api_token if api_token is not None else api_token_from_env()
    api_off = not token and not is_loopback(host)
    if api_off:
        log.warning("no API token is set (%s or %s): the worklist API on %s:%s answers local "
                    "clients only; /metrics and /healthz answer everyone", API_TOKEN_ENV,
                    API_TOKEN_FILE_ENV, host, port)
    collector = None
    if serve_business:
        collector = BusinessCollector(config=config, store_factory=store_factory,
                                      observer=pipeline_metrics)
        registry.register(collector)
    api = WorklistAPI(config, lambda: own_store(store_factory, pipeline_metrics,
                                                API_MAX_WAIT_SECONDS))
    handler = make_handler(registry, api, token or None, api_off)
    try:
        httpd = (_ThreadingHTTPServerV6 if ":" in host else ThreadingHTTPServer)(
            (host, port), handler)
    except OSError:
        if collector is not None:
            registry.unregister(collector)
        raise
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="churnwatch-metrics-http",
                              daemon=True)
    thread.start()
    server = MetricsServer(httpd, thread, registry, collector, api)
    log.info("serving /metrics and the worklist API on %s", server.url)
    return server


class _ThreadingHTTPServerV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6
