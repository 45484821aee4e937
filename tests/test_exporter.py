"""The Prometheus exporter: pipeline metrics from the hooks, business metrics from Redis at scrape
time, and the HTTP server's /metrics, against real redis-server and promtool."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections import Counter as Tally
from collections.abc import Iterator

import pytest
from churnwatch.metrics.business import BusinessCollector
from churnwatch.metrics.pipeline import REDIS_OPERATIONS, SOURCES, PipelineMetrics
from churnwatch.state.base import config_with_segments
from churnwatch.state.memory import MemoryStore
from churnwatch.state.redis_store import RedisStore
from churnwatch.web.auth import api_token_from_env
from churnwatch.web.server import start_metrics_server
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer, redis_server  # noqa: F401
from replayed_shop import Shop, replayed_shop  # noqa: F401

from churnwatch.core.aggregates import (
    SCORE_BANDS,
    ScoredCustomers,
    ScoreSum,
    TierCustomers,
    TransitionCount,
)
from churnwatch.core.config import COMPONENTS, TIERS, ChurnwatchConfig
from churnwatch.core.events import DEAD_LETTER_REASONS, InvalidEvent
from churnwatch.core.playbooks import DEFAULT_PLAYBOOKS
from churnwatch.core.records import BatchResult, ShardState
from churnwatch.replay import replay

BOUNDED_LABELS = {
    "tier": set(TIERS),
    "from_tier": set(TIERS),
    "to_tier": set(TIERS),
    "component": set(COMPONENTS),
    "band": set(SCORE_BANDS),
    "source": set(SOURCES),
    "reason": set(DEAD_LETTER_REASONS),
    "operation": set(REDIS_OPERATIONS),
    # Win-back: playbook names come from the configuration (here the defaults).
    "playbook": {p.name for p in DEFAULT_PLAYBOOKS},
    "group": {"treated", "holdout"},
    "bound": {"estimate", "low", "high"},
}


def fresh_metrics() -> tuple[CollectorRegistry, PipelineMetrics]:
    registry = CollectorRegistry()
    return registry, PipelineMetrics(registry, process_collector=False, version="9.9.9")


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# -- pipeline metrics ---------------------------------------------------------------------------


def test_every_bounded_pipeline_label_combination_exists_at_zero() -> None:
    registry, _ = fresh_metrics()
    for source in SOURCES:
        for name in ("churnwatch_events_received_total", "churnwatch_events_scored_total",
                     "churnwatch_events_late_total", "churnwatch_events_duplicate_total",
                     "churnwatch_processing_latency_seconds_count",
                     "churnwatch_source_lag_seconds", "churnwatch_source_lag_messages"):
            assert value(registry, name, source=source) == 0.0, (name, source)
        for reason in DEAD_LETTER_REASONS:
            assert value(registry, "churnwatch_events_dead_letter_total", source=source,
                         reason=reason) == 0.0
    for operation in REDIS_OPERATIONS:
        assert value(registry, "churnwatch_redis_errors_total", operation=operation) == 0.0
        assert value(registry, "churnwatch_redis_roundtrip_seconds_count",
                     operation=operation) == 0.0
    assert value(registry, "churnwatch_silent_rescores_total") == 0.0
    assert value(registry, "churnwatch_build_info", version="9.9.9") == 1.0


def test_timestamps_appear_only_for_a_source_that_was_read() -> None:
    registry, metrics = fresh_metrics()
    assert value(registry, "churnwatch_last_commit_timestamp_seconds", source="redis") is None
    metrics.decoded("redis", 3, [], None)
    # Read but not committed yet: the stall is counted from the start of the process.
    assert value(registry, "churnwatch_last_commit_timestamp_seconds",
                 source="redis") == metrics.started_at
    assert value(registry, "churnwatch_last_commit_timestamp_seconds", source="kafka") is None
    assert value(registry, "churnwatch_last_scored_event_timestamp_seconds",
                 source="redis") is None


def test_hooks_count_received_scored_dead_letters_and_latency() -> None:
    registry, metrics = fresh_metrics()
    bad = [InvalidEvent("invalid_json", "x", "f:1", b"x"),
           InvalidEvent("unknown_type", "x", "f:2", b"y")]
    metrics.decoded("file", 10, bad, None)
    result = BatchResult(scored=6, duplicates=1, late=2, rescored_silent=3,
                         last_event_ts=1_700_000_000.0,
                         dead_letters=[InvalidEvent("too_late", "x", "f:9", b"z")])
    import time

    metrics.committed("file", result, oldest_received_at=time.time() - 0.3)
    assert value(registry, "churnwatch_events_dead_letter_total", source="file",
                 reason="invalid_json") == 0  # counted once written, not when decoded
    metrics.dead_lettered("file", bad + result.dead_letters)
    assert value(registry, "churnwatch_events_received_total", source="file") == 10
    assert value(registry, "churnwatch_events_scored_total", source="file") == 6
    assert value(registry, "churnwatch_events_duplicate_total", source="file") == 1
    assert value(registry, "churnwatch_events_late_total", source="file") == 2
    assert value(registry, "churnwatch_silent_rescores_total") == 3
    for reason in ("invalid_json", "unknown_type", "too_late"):
        assert value(registry, "churnwatch_events_dead_letter_total", source="file",
                     reason=reason) == 1
    assert value(registry, "churnwatch_events_dead_letter_total", source="file",
                 reason="missing_field") == 0
    assert value(registry, "churnwatch_processing_latency_seconds_count", source="file") == 1
    assert 0.29 < value(registry, "churnwatch_processing_latency_seconds_sum",
                        source="file") < 5
    assert value(registry, "churnwatch_processing_latency_seconds_bucket", source="file",
                 le="0.25") == 0
    assert value(registry, "churnwatch_last_scored_event_timestamp_seconds",
                 source="file") == 1_700_000_000.0
    assert value(registry, "churnwatch_last_commit_timestamp_seconds",
                 source="file") >= time.time() - 5


def test_review_commits_update_commit_time_but_not_latency_and_newest_event_never_moves_back(
) -> None:
    registry, metrics = fresh_metrics()
    metrics.committed("redis", BatchResult(scored=1, last_event_ts=200.0), 0.0)
    metrics.committed("redis", BatchResult(scored=1, last_event_ts=100.0), 0.0)
    metrics.committed("redis", BatchResult(rescored_silent=5), 0.0)
    assert value(registry, "churnwatch_last_scored_event_timestamp_seconds",
                 source="redis") == 200.0
    assert value(registry, "churnwatch_processing_latency_seconds_count", source="redis") == 2
    assert value(registry, "churnwatch_silent_rescores_total") == 5


def test_source_lag_and_redis_observer() -> None:
    registry, metrics = fresh_metrics()
    metrics.set_source_lag("kafka", seconds=12.5, messages=300)
    metrics.set_source_lag("kafka", messages=10)
    assert value(registry, "churnwatch_source_lag_seconds", source="kafka") == 12.5
    assert value(registry, "churnwatch_source_lag_messages", source="kafka") == 10
    metrics.roundtrip("write_state", 0.003)
    metrics.error("write_state", ConnectionError("down"))
    metrics.error("write_state", ConnectionError("down"))
    assert value(registry, "churnwatch_redis_roundtrip_seconds_count",
                 operation="write_state") == 1
    assert value(registry, "churnwatch_redis_roundtrip_seconds_bucket", operation="write_state",
                 le="0.005") == 1
    assert value(registry, "churnwatch_redis_errors_total", operation="write_state") == 2


def test_decoded_sets_source_lag_from_the_newest_published_time() -> None:
    import time

    registry, metrics = fresh_metrics()
    metrics.decoded("redis", 1, [], time.time() - 30)
    assert 29 <= value(registry, "churnwatch_source_lag_seconds", source="redis") < 40


# -- business metrics ---------------------------------------------------------------------------


def test_every_transition_pair_exists_at_zero_for_every_segment() -> None:
    config = ChurnwatchConfig(segment_policies={"skincare": ChurnwatchConfig().default_policy})
    registry = CollectorRegistry()
    registry.register(BusinessCollector(MemoryStore(4), config))
    for segment in ("skincare", "other", "unassigned"):
        for old in TIERS:
            for new in TIERS:
                got = value(registry, "churnwatch_tier_transitions_total", segment=segment,
                            from_tier=old, to_tier=new)
                assert got == (None if old == new else 0.0), (segment, old, new)
            assert value(registry, "churnwatch_customers", segment=segment, tier=old) == 0
        for old in ("at_risk", "churned"):
            assert value(registry, "churnwatch_recoveries_total", segment=segment,
                         from_tier=old) == 0
        assert value(registry, "churnwatch_sudden_drops_total", segment=segment) == 0
        assert value(registry, "churnwatch_high_value_at_risk_customers", segment=segment) == 0
        # No customer, no mean: the series is absent rather than a made-up 0.
        assert value(registry, "churnwatch_health_score_mean", segment=segment) is None
    assert value(registry, "churnwatch_state_customers") == 0


def test_aggregates_of_a_segment_no_longer_configured_count_as_other() -> None:
    store = MemoryStore(2)
    state = ShardState()
    state.gauges = {TierCustomers("gone", "healthy"): 3.0, ScoredCustomers("gone"): 3.0,
                    ScoreSum("gone"): 210.0, TierCustomers("other", "healthy"): 1.0,
                    ScoredCustomers("other"): 1.0, ScoreSum("other"): 90.0}
    state.counters = {TransitionCount("gone", "healthy", "watch"): 2.0}
    store.commit(0, state, {}, [])
    registry = CollectorRegistry()
    registry.register(BusinessCollector(store, ChurnwatchConfig()))
    assert value(registry, "churnwatch_customers", segment="other", tier="healthy") == 4
    assert value(registry, "churnwatch_health_score_mean", segment="other") == 75.0
    assert value(registry, "churnwatch_tier_transitions_total", segment="other",
                 from_tier="healthy", to_tier="watch") == 2
    assert value(registry, "churnwatch_customers", segment="gone", tier="healthy") is None


def test_business_metrics_agree_with_the_customers_in_redis(replayed_shop: Shop) -> None:
    store = replayed_shop.store()
    # The shop's own segments (electronics, beside the configured two) are labels too.
    config = config_with_segments(store, replayed_shop.config)
    assert "electronics" in config.segments
    registry = CollectorRegistry()
    registry.register(BusinessCollector(store, config))
    customers = list(store.iter_customers())
    by_tier = Tally((config.segment_label(s.segment), TIERS[s.tier]) for _, s in customers)
    for segment in config.segments:
        for tier in TIERS:
            assert value(registry, "churnwatch_customers", segment=segment,
                         tier=tier) == by_tier[(segment, tier)], (segment, tier)
        members = [s for _, s in customers if config.segment_label(s.segment) == segment]
        high = sum(1 for s in members if s.high_value and s.tier >= 2)
        assert value(registry, "churnwatch_high_value_at_risk_customers",
                     segment=segment) == high
        if members:
            mean = sum(s.score for s in members) / len(members)
            assert value(registry, "churnwatch_health_score_mean",
                         segment=segment) == pytest.approx(mean, abs=0.01)
            bands = sum(value(registry, "churnwatch_score_band_customers", segment=segment,
                              band=b) for b in SCORE_BANDS)
            assert bands == len(members)
    assert value(registry, "churnwatch_state_customers") == len(customers) > 100
    assert value(registry, "churnwatch_redis_memory_bytes") > 100_000
    assert value(registry, "churnwatch_churn_rate_objective_ratio", segment="skincare") == 0.04
    assert value(registry, "churnwatch_churn_rate_objective_ratio", segment="fashion") == 0.06
    assert value(registry, "churnwatch_churn_rate_objective_ratio", segment="other") == 0.06
    # A replay of 300 days moves customers between tiers.
    moved = sum(value(registry, "churnwatch_tier_transitions_total", segment=s, from_tier=a,
                      to_tier=b) for s in config.segments for a in TIERS for b in TIERS
                if a != b)
    assert moved > 0
    store.close()


# -- the server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_shop(replayed_shop: Shop) -> Iterator[tuple[str, CollectorRegistry]]:  # noqa: F811
    """The metrics server over the replayed shop, its registry fed by a second replay pass
    through the same hooks (the file again: every event is a duplicate)."""
    config = replayed_shop.config
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)

    def factory() -> RedisStore:
        return RedisStore(replayed_shop.url, config.shards, config.key_prefix, observer=metrics,
                          max_wait=5.0)

    replay([str(replayed_shop.events_file)], config, factory, hooks=metrics)
    server = start_metrics_server(None, 0, config, factory, registry, metrics, api_token="t0k")
    try:
        yield f"{server.url}/metrics", registry
    finally:
        server.shutdown()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        return reply.read().decode()


def test_scrape_passes_promtool_check_metrics(served_shop: tuple[str, CollectorRegistry]
                                              ) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not on PATH: run `make system-deps`"
    text = scrape(served_shop[0])
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                           capture_output=True, timeout=60)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    assert "churnwatch_tier_transitions_total{" in text
    assert "process_cpu_seconds_total" in text


def test_scrape_is_open_without_the_api_token_and_counts_the_replay(
        served_shop: tuple[str, CollectorRegistry], replayed_shop: Shop) -> None:  # noqa: F811
    families = {f.name: f for f in text_string_to_metric_families(scrape(served_shop[0]))}
    received = {s.labels["source"]: s.value for s in families["churnwatch_events_received"]
                .samples if s.name.endswith("_total")}
    assert received["file"] == replayed_shop.valid_events + replayed_shop.invalid_events
    assert received["redis"] == 0
    dead = {(s.labels["reason"]): s.value for s in families["churnwatch_events_dead_letter"]
            .samples if s.name.endswith("_total") and s.labels["source"] == "file"}
    # The second pass reads the bad lines again, but they were dead-lettered by the first: each
    # source position is counted (and written) once.
    assert set(dead.values()) == {0.0}
    store = replayed_shop.store()
    reasons = sorted(str(d["reason"]) for d in store.dead_letters(100))
    store.close()
    assert reasons == ["invalid_json", "missing_field", "unknown_type"]
    duplicates = [s.value for s in families["churnwatch_events_duplicate"].samples
                  if s.name.endswith("_total") and s.labels["source"] == "file"]
    assert duplicates == [replayed_shop.valid_events]


def test_no_label_holds_a_customer_id_and_every_label_is_bounded(
        served_shop: tuple[str, CollectorRegistry], replayed_shop: Shop) -> None:  # noqa: F811
    text = scrape(served_shop[0])
    store = replayed_shop.store()
    ids = {cid for cid, _ in store.iter_customers()}
    # Bounded: the configured segments, those the store kept (at most max_segments), other and
    # unassigned.
    segments = set(config_with_segments(store, replayed_shop.config).segments)
    assert len(segments) <= len(replayed_shop.config.segments) + replayed_shop.config.max_segments
    store.close()
    seen = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for name, label in sample.labels.items():
                seen += 1
                assert label not in ids, (sample, name)
                if name == "segment":
                    assert label in segments, sample
                elif name in BOUNDED_LABELS:
                    assert label in BOUNDED_LABELS[name], sample
                else:
                    assert name in ("le", "version", "quantile"), sample
    assert seen > 500
    assert not any(cid in text for cid in ids if len(cid) > 4)


def test_scrape_survives_redis_down_and_counts_the_failure(tmp_path) -> None:  # noqa: ANN001
    server_process = RedisServer()
    server_process.start()
    config = ChurnwatchConfig(shards=2, stream_partitions=1)
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry, process_collector=False)

    def factory() -> RedisStore:
        return RedisStore(server_process.url, config.shards, config.key_prefix)

    server = start_metrics_server("127.0.0.1", 0, config, factory, registry, metrics)
    try:
        up = scrape(f"{server.url}/metrics")
        assert 'churnwatch_customers{segment="other",tier="healthy"} 0.0' in up
        server_process.cleanup()
        import time

        started = time.monotonic()
        down = scrape(f"{server.url}/metrics")
        assert time.monotonic() - started < 8
        assert "churnwatch_customers" not in down
        assert "churnwatch_events_received_total" in down
        assert value(registry, "churnwatch_redis_errors_total", operation="scrape") >= 1
    finally:
        server.shutdown()
        server_process.cleanup()


def test_api_token_from_the_environment_or_a_file(tmp_path) -> None:  # noqa: ANN001
    assert api_token_from_env({}) is None
    assert api_token_from_env({"CHURNWATCH_API_TOKEN": "abc"}) == "abc"
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    assert api_token_from_env({"CHURNWATCH_API_TOKEN_FILE": str(token_file)}) == "s3cret"
    token_file.write_text("")
    with pytest.raises(ValueError, match="empty"):
        api_token_from_env({"CHURNWATCH_API_TOKEN_FILE": str(token_file)})
    with pytest.raises(ValueError, match="cannot read"):
        api_token_from_env({"CHURNWATCH_API_TOKEN_FILE": str(tmp_path / "missing")})


def test_shutdown_unregisters_the_collector_so_a_new_server_can_start() -> None:
    registry = CollectorRegistry()
    config = ChurnwatchConfig()
    first = start_metrics_server(None, 0, config, lambda: MemoryStore(16), registry, None)
    first.shutdown()
    second = start_metrics_server(None, 0, config, lambda: MemoryStore(16), registry, None)
    try:
        assert 'churnwatch_state_customers 0.0' in scrape(f"{second.url}/metrics")
    finally:
        second.shutdown()


def test_business_collector_takes_a_store_factory_in_place_of_a_store() -> None:
    made: list[MemoryStore] = []

    def factory() -> MemoryStore:
        made.append(MemoryStore(16))
        return made[-1]

    registry = CollectorRegistry()
    collector = BusinessCollector(factory, ChurnwatchConfig())
    registry.register(collector)
    assert made == []  # nothing is read before the first scrape
    assert value(registry, "churnwatch_state_customers") == 0
    assert value(registry, "churnwatch_state_customers") == 0
    assert len(made) == 1
    collector.close()
