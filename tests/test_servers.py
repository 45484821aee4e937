"""Self-test of tests/servers.py: the real servers start, answer and talk to each other."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from servers import (  # noqa: F401 (fixtures, requested by name)
    AlertmanagerServer,
    PrometheusServer,
    PromQLError,
    WebhookReceiver,
    alertmanager_factory_fixture,
    alertmanager_fixture,
    prometheus_factory_fixture,
    wait_until,
    webhook_receiver_fixture,
)


def test_prometheus_scrapes_itself_and_answers_instant_queries(prometheus_factory):
    prometheus: PrometheusServer = prometheus_factory(scrape_self=True)

    up = wait_until(
        lambda: prometheus.query('up{job="prometheus"} == 1'),
        timeout=30,
        what="Prometheus' scrape of itself",
    )

    assert up[0]["metric"]["instance"] == f"127.0.0.1:{prometheus.port}"
    assert prometheus.query("1 + 1")[1] == "2"  # a scalar: [time, "value"]
    with pytest.raises(PromQLError, match="parse error"):
        prometheus.query("sum(")


def test_an_alert_posted_to_alertmanager_reaches_the_webhook_receiver(
    alertmanager: AlertmanagerServer, webhook_receiver: WebhookReceiver
):
    alertmanager.post_alerts(
        [
            {
                "labels": {
                    "alertname": "ServersSelfTest",
                    "severity": "page",
                    "team": "customer-success",
                    "segment": "selftest",
                },
                "annotations": {"summary": "posted by test_servers.py"},
            }
        ]
    )

    payload, alert = webhook_receiver.wait_for_alert("ServersSelfTest", timeout=30)

    # churnwatch's routing is kept: a customer-success page goes to the CS page receiver.
    assert payload["receiver"] == "customer-success-page"
    assert alert["labels"]["segment"] == "selftest"
    assert alert["annotations"]["summary"] == "posted by test_servers.py"


def test_a_prometheus_alert_travels_through_alertmanager_to_the_webhook(
    tmp_path: Path,
    prometheus_factory,
    alertmanager: AlertmanagerServer,
    webhook_receiver: WebhookReceiver,
):
    rule_file = tmp_path / "always.yml"
    rule_file.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "selftest",
                        "rules": [
                            {
                                "alert": "ServersAlwaysFiring",
                                "expr": "vector(1)",
                                "labels": {"severity": "ticket", "team": "platform"},
                            }
                        ],
                    }
                ]
            }
        )
    )
    prometheus: PrometheusServer = prometheus_factory(
        rule_files=[rule_file], alertmanager_urls=[alertmanager.url]
    )

    prometheus.wait_for_alert("ServersAlwaysFiring", timeout=30)
    payload, _ = webhook_receiver.wait_for_alert("ServersAlwaysFiring", timeout=30)

    assert payload["receiver"] == "platform"
