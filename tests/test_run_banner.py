"""``churnwatch run``'s banner names every page and API route it serves, and each answers.

A real ``churnwatch run`` on a real redis-server: the URLs are read from its own output, one
customer is published so that ``<id>`` has a value, and every URL named is fetched.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import redis
from monitor_process import running_monitor
from redis_server import redis_server, redis_url  # noqa: F401

CUSTOMER = "banner-c1"
BANNER_URL = re.compile(r"http://\S+")


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.headers.get("Content-Type", ""), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def test_run_banner_names_the_pages_and_the_api_and_each_answers(redis_url: str,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    config = tmp_path / "churnwatch.toml"
    config.write_text("[source]\nstream_partitions = 1\n")
    with running_monitor(redis_url, config, tmp_path) as monitor:
        event = {"customer_id": CUSTOMER, "type": "order", "ts": time.time() - 86400,
                 "amount": 20.0}
        redis.Redis.from_url(redis_url).xadd("churnwatch:events:0",
                                             {"e": json.dumps(event).encode()})
        deadline = time.monotonic() + 60
        while _get(f"{monitor.url}/api/v1/customers/{CUSTOMER}")[0] != 200:
            assert time.monotonic() < deadline, monitor.log_tail()
            time.sleep(0.2)
        log = monitor.log_file.read_text(errors="replace")
        start = log.index("serves metrics on")
        banner = log[start:].split("\n")
        named = [u for line in banner[:8] for u in BANNER_URL.findall(line)]
        paths = [u[len(monitor.url):] for u in named if u.startswith(monitor.url)]
        for wanted in ("/metrics", "/", "/customers/<id>", "/segments", "/api/v1/customers",
                       "/api/v1/customers/<id>", "/api/v1/segments", "/api/v1/winback",
                       "/api/v1/transitions", "/healthz"):
            assert wanted in paths, f"the banner does not name {wanted}:\n{log[start:]}"
        for path in paths:
            status, content_type, body = _get(monitor.url + path.replace("<id>", CUSTOMER))
            assert status == 200, (path, status, body[:300])
            if path.startswith("/api/"):
                assert content_type == "application/json", path
            elif path not in ("/metrics", "/healthz"):
                assert content_type.startswith("text/html"), path
        assert CUSTOMER in _get(f"{monitor.url}/customers/{CUSTOMER}")[2]
