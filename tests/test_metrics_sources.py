"""A monitor exports per-source series only for the source it reads (issue 21, item 14).

``churnwatch run``'s own metrics server (``churnwatch.live.metrics_server``) on a fresh
registry, its business collector reading a real redis-server: a Redis-only run has its
dead-letter counters at 0 for every reason of ``redis`` and none for file, Kafka or the
simulator; label values stay the bounded, known-at-start set.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from churnwatch.metrics.pipeline import SOURCES, PipelineMetrics
from churnwatch.state.base import StoreLayout
from churnwatch.state.redis_store import RedisStore
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from redis_server import redis_server, redis_url  # noqa: F401

from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.events import DEAD_LETTER_REASONS
from churnwatch.live import RunOptions, metrics_server

PER_SOURCE = ("churnwatch_events_received_total", "churnwatch_events_scored_total",
              "churnwatch_events_late_total", "churnwatch_events_duplicate_total",
              "churnwatch_source_lag_seconds", "churnwatch_source_lag_messages",
              "churnwatch_processing_latency_seconds_count")


def _sources_of(text: str, name: str) -> set[str]:
    """The ``source`` label values of ``name``'s samples in an exposition."""
    found = set()
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels = line[len(name) + 1:line.index("}")]
            for pair in labels.split(","):
                key, _, value = pair.partition("=")
                if key == "source":
                    found.add(value.strip('"'))
    return found


@pytest.mark.parametrize("source", ["redis", "kafka"])
def test_a_run_exports_dead_letter_series_for_its_own_source_only(
        source: str, redis_url: str, tmp_path: Path) -> None:  # noqa: F811
    config = ChurnwatchConfig()

    def factory() -> RedisStore:
        return RedisStore(redis_url, config.shards, config.key_prefix, max_wait=2.0,
                          layout=StoreLayout.from_config(config))

    options = RunOptions(config, redis_url, source, metrics_host="127.0.0.1", metrics_port=0)
    with metrics_server(options, factory) as hooks:
        registry = hooks.registry
        for reason in DEAD_LETTER_REASONS:
            assert registry.get_sample_value("churnwatch_events_dead_letter_total",
                                             {"source": source, "reason": reason}) == 0.0
        for other in set(SOURCES) - {source}:
            for reason in DEAD_LETTER_REASONS:
                assert registry.get_sample_value("churnwatch_events_dead_letter_total",
                                                 {"source": other, "reason": reason}) is None
        text = generate_latest(registry).decode()
        dead = [line for line in text.splitlines()
                if line.startswith("churnwatch_events_dead_letter_total{")]
        assert len(dead) == len(DEAD_LETTER_REASONS), dead
        for name in PER_SOURCE:
            assert _sources_of(text, name) == {source}, name
        # A dead letter counted later keeps to the known reasons of that source.
        hooks.events_dead_letter.labels(source, DEAD_LETTER_REASONS[0]).inc()
        assert registry.get_sample_value("churnwatch_events_dead_letter_total",
                                         {"source": source,
                                          "reason": DEAD_LETTER_REASONS[0]}) == 1.0


def test_pipeline_metrics_refuse_an_unknown_source() -> None:
    with pytest.raises(ValueError, match="unknown sources"):
        PipelineMetrics(CollectorRegistry(), process_collector=False, sources=("ftp",))


def test_pipeline_metrics_default_to_every_source() -> None:
    registry = CollectorRegistry()
    PipelineMetrics(registry, process_collector=False)
    for source in SOURCES:
        assert registry.get_sample_value("churnwatch_events_received_total",
                                         {"source": source}) == 0.0
