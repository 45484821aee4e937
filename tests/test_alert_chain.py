"""The whole alert chain, every piece real: events published to Redis Streams, ``churnwatch run``
(wall clock) scoring them, Prometheus scraping it every second and evaluating metrics/rules,
Alertmanager routing with churnwatch's configuration, and a webhook receiving the page.

What makes the segment collapse. In wall-clock mode a silence only lowers a score once it is
long against the customer's own cadence, and with real shops' cadences that takes days. So the
test uses the other way customers show they are leaving, which the engine scores the moment
the events arrive: the customers of segment ``beauty`` stop ordering, open urgent support
tickets, give an NPS of 0 and ignore every campaign. Nothing is tuned for the test: the
configuration only names the two segments (and uses fewer shards to stay light); scoring
weights, tier thresholds, `[alerts] sudden_drop_points` and the alert rules are the defaults.
With those, such a customer's score falls about 25 points (recency stays high, service and
engagement fall to near 0), past the 20-point sudden-drop threshold, so
``ChurnwatchSegmentSuddenDrops`` (share >= 5 %, at least 5 drops, segment of at least 20,
``for: 1m``) must page customer success for ``beauty``, and for nothing else.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from monitor_process import Monitor, running_monitor
from redis_server import RedisServer
from servers import (
    ALERTMANAGER_CONFIG,
    RULE_FILES,
    running_alertmanager,
    running_prometheus,
    running_webhook_receiver,
    wait_until,
    write_test_alertmanager_config,
)

from churnwatch.core.config import load_config
from churnwatch.publish import Publisher

pytestmark = pytest.mark.slow

CONFIG = """\
[segments.beauty]
[segments.fashion]
[state]
shards = 4
[source]
stream_partitions = 2
"""
CUSTOMERS_PER_SEGMENT = 25
ORDER_EVERY_SECONDS = 2.0
STEADY_SECONDS = 45.0
ALERT_TIMEOUT_SECONDS = 240.0


class ShopTraffic:
    """Publishes a steady stream in wall-clock time: every customer orders every two seconds.
    ``collapse(segment)`` makes that segment's customers stop ordering and complain instead."""

    def __init__(self, redis_url: str, config_file: Path) -> None:
        self.publisher = Publisher(redis_url, load_config(config_file))
        self.customers = {f"{segment}-{n:02d}": segment for segment in ("beauty", "fashion")
                          for n in range(CUSTOMERS_PER_SEGMENT)}
        self.silent: set[str] = set()
        self.published = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="shop-traffic", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        now = time.time()
        self._publish([{"customer_id": cid, "type": "profile", "ts": now, "segment": segment,
                        "value_tier": "standard"} for cid, segment in self.customers.items()])
        self._thread.start()

    def _publish(self, events: list[dict[str, object]]) -> None:
        with self._lock:
            self.published += self.publisher.publish(events)

    def _run(self) -> None:
        try:
            n = 0
            while not self._stop.wait(ORDER_EVERY_SECONDS):
                now = time.time()
                n += 1
                self._publish([{"customer_id": cid, "type": "order", "ts": now,
                                "amount": 20.0 + (n % 5), "event_id": f"{cid}-o{n}"}
                               for cid in self.customers if cid not in self.silent])
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def collapse(self, segment: str) -> None:
        members = [cid for cid, s in self.customers.items() if s == segment]
        self.silent.update(members)
        now = time.time()
        events: list[dict[str, object]] = []
        for cid in members:
            events += [{"customer_id": cid, "type": "support_ticket", "ts": now,
                        "severity": "urgent", "topic": "delivery"} for _ in range(3)]
            events.append({"customer_id": cid, "type": "feedback", "ts": now, "kind": "nps",
                           "score": 0})
            events += [{"customer_id": cid, "type": "campaign_sent", "ts": now,
                        "channel": "email", "campaign_id": f"win-back-{k}"} for k in range(16)]
        self._publish(events)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.publisher.close()


def sample(prometheus, expr: str) -> dict[str, float]:  # noqa: ANN001
    """``{segment: value}`` of an instant query."""
    return {r["metric"].get("segment", ""): float(r["value"][1]) for r in prometheus.query(expr)}


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[tuple[RedisServer, Path]]:
    config_file = tmp_path / "churnwatch.toml"
    config_file.write_text(CONFIG)
    server = RedisServer()
    server.start()
    try:
        yield server, config_file
    finally:
        server.cleanup()


def test_segment_collapse_pages_customer_success_and_steady_traffic_pages_nobody(
        shop: tuple[RedisServer, Path], tmp_path: Path) -> None:
    redis_server, config_file = shop
    with (running_webhook_receiver() as webhook,
          running_monitor(redis_server.url, config_file, tmp_path / "monitor") as monitor,
          running_alertmanager(write_test_alertmanager_config(
              ALERTMANAGER_CONFIG, tmp_path / "alertmanager.yml", webhook.url),
              workdir=tmp_path / "alertmanager") as alertmanager,
          running_prometheus([monitor.address], rule_files=RULE_FILES,
                             alertmanager_urls=[alertmanager.url],
                             workdir=tmp_path / "prometheus") as prometheus):
        traffic = ShopTraffic(redis_server.url, config_file)
        traffic.start()
        try:
            run_scenario(monitor, prometheus, webhook, traffic)
        finally:
            traffic.stop()
        assert traffic.error is None, traffic.error


def run_scenario(monitor: Monitor, prometheus, webhook, traffic: ShopTraffic  # noqa: ANN001
                 ) -> None:
    everyone = 2 * CUSTOMERS_PER_SEGMENT
    # Warm-up: every customer scored, scraped, and the recording rules evaluated.
    wait_until(lambda: sum(sample(prometheus, "segment:churnwatch_customers:sum").values())
               == everyone, timeout=90, what=f"{everyone} customers in Prometheus "
               f"(monitor log:\n{monitor.log_tail()})")

    # Rule groups evaluate independently: an alert group evaluated before the first scrape
    # (absent(up) pending) clears at its next evaluation; give every group a few.
    time.sleep(3.0)
    # Steady traffic: nothing pending, nothing firing, nothing sent, for the whole window.
    steady_until = time.monotonic() + STEADY_SECONDS
    while time.monotonic() < steady_until:
        assert prometheus.alerts() == [], "an alert is pending or firing under steady traffic"
        time.sleep(1.0)
    assert webhook.payloads == [], "Alertmanager sent a notification under steady traffic"
    scored_before = sample(prometheus, "sum(churnwatch_events_scored_total)")[""]
    assert scored_before >= everyone * (STEADY_SECONDS / ORDER_EVERY_SECONDS) * 0.8
    assert sample(prometheus, "segment:churnwatch_sudden_drops:increase15m") == {
        "beauty": 0.0, "fashion": 0.0, "other": 0.0, "unassigned": 0.0}

    # One segment collapses; the other keeps ordering.
    collapsed_at = time.monotonic()
    traffic.collapse("beauty")
    payload, alert = webhook.wait_for_alert("ChurnwatchSegmentSuddenDrops", segment="beauty",
                                            timeout=ALERT_TIMEOUT_SECONDS)
    took = time.monotonic() - collapsed_at
    print(f"ChurnwatchSegmentSuddenDrops reached the webhook {took:.0f} s after the collapse")
    labels = alert["labels"]
    assert labels["severity"] == "page" and labels["team"] == "customer-success"
    assert payload["receiver"] == "customer-success-page"
    assert "segment=beauty" in alert["annotations"]["worklist_url"]
    assert alert["annotations"]["runbook_url"].endswith("#churnwatchsegmentsuddendrops")
    assert took < ALERT_TIMEOUT_SECONDS

    # Every beauty customer's drop was counted; fashion, still ordering, is left alone.
    drops = sample(prometheus, "max by (segment) (churnwatch_sudden_drops_total)")
    assert drops["beauty"] == CUSTOMERS_PER_SEGMENT and drops["fashion"] == 0
    notified = {(a["labels"]["alertname"], a["labels"].get("segment"))
                for _, a in webhook.alerts()}
    assert not any(segment == "fashion" for _, segment in notified), notified
    assert not any(a["labels"].get("segment") == "fashion" for a in prometheus.alerts())

    # The worklist explains what happened to a customer of the collapsed segment.
    import json
    import urllib.request

    with urllib.request.urlopen(f"{monitor.url}/api/v1/customers/beauty-00", timeout=10) as r:
        detail = json.loads(r.read())
    assert detail["segment"] == "beauty"
    assert any(reason.startswith("service problems") for reason in detail["reasons"])
    assert detail["components"]["service"] is not None and detail["components"]["service"] < 10
