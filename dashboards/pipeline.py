"""Pipeline operations: is the stream flowing, fresh and cheap enough?

For whoever runs churnwatch. Pipeline metrics are per process, so rates are summed across
processes; Redis-wide figures (memory, state size) are the same from every process and take `max`.
The `source` variable filters the per-source panels.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import heatmap, timeseries
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models import units

from .common import (
    PROMETHEUS,
    bucket_y_axis,
    counts_heatmap_colors,
    finish,
    firing_alerts_annotation,
    new_dashboard,
    panel,
    query,
    shared_tooltip,
    stat_panel,
    table_legend,
    thresholds,
)

UID = "churnwatch-pipeline"

SOURCES = 'source=~"$source"'

CHURNWATCH_PROCESSES = "on (instance, job) churnwatch_build_info"
"""Restricts the process collector's series to the targets that are churnwatch processes."""


def _rate(metric: str, by: str = "", selector: str = SOURCES) -> str:
    matchers = f"{{{selector}}}" if selector else ""
    return f"sum{by} (rate({metric}{matchers}[$__rate_interval]))"


def _quantile(q: float, histogram: str, by: str, selector: str = "") -> str:
    matchers = f"{{{selector}}}" if selector else ""
    return (
        f"histogram_quantile({q}, sum by ({by}) "
        f"(rate({histogram}_bucket{matchers}[$__rate_interval])))"
    )


def source_variable() -> dashboard_builders.QueryVariable:
    """The `source` template variable: the event sources the processes read from."""
    return (
        dashboard_builders.QueryVariable("source")
        .label("Source")
        .description("Event sources churnwatch processes read (file, redis, kafka, simulator)")
        .datasource(PROMETHEUS)
        .query("label_values(churnwatch_events_received_total, source)")
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(dashboard_models.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def _now_row(builder: dashboard_builders.Dashboard) -> None:
    builder.with_row(dashboard_builders.Row("Now"))
    builder.with_panel(
        stat_panel(
            title="Events received",
            description="Raw messages read from the selected sources per second, all processes.",
            unit=units.EventsPerSecond,
            targets=[query(_rate("churnwatch_events_received_total"), "received")],
        ).color_mode(common_models.BigValueColorMode.NONE)
    )
    builder.with_panel(
        stat_panel(
            title="Events scored",
            description="Events applied to a customer's state and scored per second.",
            unit=units.EventsPerSecond,
            targets=[query(_rate("churnwatch_events_scored_total"), "scored")],
        ).color_mode(common_models.BigValueColorMode.NONE)
    )
    builder.with_panel(
        stat_panel(
            title="Dead-letter share",
            description=(
                "Share of the messages read that went to the dead-letter output (malformed, "
                "unknown type, too late...)."
            ),
            unit=units.PercentUnit,
            targets=[
                query(
                    f"{_rate('churnwatch_events_dead_letter_total')}"
                    f" / {_rate('churnwatch_events_received_total')}",
                    "dead letters",
                )
            ],
        )
        .decimals(2)
        .thresholds(thresholds((None, "green"), (0.01, "orange"), (0.05, "red")))
    )
    builder.with_panel(
        stat_panel(
            title="Time since last commit",
            description=(
                "Wall-clock seconds since a churnwatch process last committed state to Redis: "
                "grows when the pipeline stalls."
            ),
            unit=units.Seconds,
            targets=[
                query(
                    f"time() - max(churnwatch_last_commit_timestamp_seconds{{{SOURCES}}})",
                    "since last commit",
                )
            ],
        )
        .decimals(0)
        .thresholds(thresholds((None, "green"), (30, "orange"), (120, "red")))
    )
    builder.with_panel(
        stat_panel(
            title="Source lag",
            description=(
                "Wall-clock age of the newest message read (Redis stream id or Kafka timestamp), "
                "worst source."
            ),
            unit=units.Seconds,
            targets=[query(f"max(churnwatch_source_lag_seconds{{{SOURCES}}})", "lag")],
        ).thresholds(thresholds((None, "green"), (30, "orange"), (300, "red")))
    )
    builder.with_panel(
        stat_panel(
            title="Processing latency p99",
            description=(
                "99th percentile of the time from a message being read to its effect committed "
                "in Redis."
            ),
            unit=units.Seconds,
            targets=[
                query(
                    _quantile(0.99, "churnwatch_processing_latency_seconds", "le", SOURCES),
                    "p99",
                )
            ],
        ).thresholds(thresholds((None, "green"), (1, "orange"), (5, "red")))
    )


def _throughput_row(builder: dashboard_builders.Dashboard) -> None:
    builder.with_row(dashboard_builders.Row("Throughput and rejects"))
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Events in and out per source",
            description=(
                "Messages read from each source and events scored, per second. A gap between "
                "the two is dead letters and duplicates."
            ),
            unit=units.EventsPerSecond,
            targets=[
                query(
                    _rate("churnwatch_events_received_total", " by (source)"), "{{source}} received"
                ),
                query(_rate("churnwatch_events_scored_total", " by (source)"), "{{source}} scored"),
            ],
            width=12,
            height=8,
        )
        .legend(table_legend())
        .tooltip(shared_tooltip())
    )
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Dead letters by reason",
            description=(
                "Events sent to the dead-letter output per second, by reason (invalid_json, "
                "missing_field, future_timestamp, too_late, ...)."
            ),
            unit=units.EventsPerSecond,
            targets=[
                query(_rate("churnwatch_events_dead_letter_total", " by (reason)"), "{{reason}}")
            ],
            width=12,
            height=8,
        )
        .legend(table_legend())
        .tooltip(shared_tooltip())
    )
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Late and duplicate events",
            description=(
                "Per second: events older than their customer's latest event (still applied) and "
                "events already applied (skipped)."
            ),
            unit=units.EventsPerSecond,
            targets=[
                query(_rate("churnwatch_events_late_total", " by (source)"), "{{source}} late"),
                query(
                    _rate("churnwatch_events_duplicate_total", " by (source)"),
                    "{{source}} duplicate",
                ),
            ],
            width=12,
            height=8,
        )
        .legend(table_legend())
        .tooltip(shared_tooltip())
    )
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Silent re-scores",
            description=(
                "Customers re-scored per second by the due-time index because time passed "
                "without events from them."
            ),
            unit=units.OpsPerSecond,
            targets=[query(_rate("churnwatch_silent_rescores_total", selector=""), "re-scores")],
            width=12,
            height=8,
        ).tooltip(shared_tooltip())
    )


def _freshness_row(builder: dashboard_builders.Dashboard) -> None:
    builder.with_row(dashboard_builders.Row("Lag and freshness"))
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Time since last commit",
            description="Wall-clock seconds since the last state commit to Redis, per source.",
            unit=units.Seconds,
            targets=[
                query(
                    "time() - max by (source) "
                    f"(churnwatch_last_commit_timestamp_seconds{{{SOURCES}}})",
                    "{{source}}",
                )
            ],
            width=6,
            height=8,
        ).tooltip(shared_tooltip())
    )
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Source lag (time)",
            description=(
                "Wall-clock age of the newest message read, per source: how far behind the "
                "source the pipeline reads."
            ),
            unit=units.Seconds,
            targets=[
                query(f"max by (source) (churnwatch_source_lag_seconds{{{SOURCES}}})", "{{source}}")
            ],
            width=6,
            height=8,
        ).tooltip(shared_tooltip())
    )
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Source lag (messages)",
            description="Messages in the source not yet read, per source, all processes.",
            unit=units.Short,
            targets=[
                query(
                    f"sum by (source) (churnwatch_source_lag_messages{{{SOURCES}}})", "{{source}}"
                )
            ],
            width=6,
            height=8,
        ).tooltip(shared_tooltip())
    )
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Event-time delay",
            description=(
                "Wall-clock now minus the event time of the newest scored event, per source. "
                "Large during a replay of old data; in live operation it is the end-to-end delay."
            ),
            unit=units.Seconds,
            targets=[
                query(
                    "time() - max by (source) "
                    f"(churnwatch_last_scored_event_timestamp_seconds{{{SOURCES}}})",
                    "{{source}}",
                )
            ],
            width=6,
            height=8,
        ).tooltip(shared_tooltip())
    )


def _latency_row(builder: dashboard_builders.Dashboard) -> None:
    builder.with_row(dashboard_builders.Row("Processing latency"))
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Processing latency quantiles",
            description=(
                "From a message being read to its effect committed in Redis: median, 90th and "
                "99th percentile over the selected sources."
            ),
            unit=units.Seconds,
            targets=[
                query(_quantile(q, "churnwatch_processing_latency_seconds", "le", SOURCES), label)
                for q, label in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"))
            ],
            width=12,
            height=8,
        )
        .legend(table_legend())
        .tooltip(shared_tooltip())
    )
    builder.with_panel(
        panel(
            heatmap.Panel(),
            title="Processing latency distribution",
            description=(
                "Messages per latency bucket of churnwatch_processing_latency_seconds over time "
                "(counts per interval of the graph)."
            ),
            unit=units.Short,
            targets=[
                query(
                    "sum by (le) (increase(churnwatch_processing_latency_seconds_bucket"
                    f"{{{SOURCES}}}[$__rate_interval]))",
                    "{{le}}",
                    heatmap=True,
                )
            ],
            width=12,
            height=8,
        )
        .calculate(False)
        .color(counts_heatmap_colors())
        .y_axis(bucket_y_axis(units.Seconds, "latency"))
    )


def _redis_row(builder: dashboard_builders.Dashboard) -> None:
    builder.with_row(dashboard_builders.Row("Redis"))
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Redis errors by operation",
            description="Failed Redis calls per second by operation; each retry counts.",
            unit=units.OpsPerSecond,
            targets=[
                query(
                    _rate("churnwatch_redis_errors_total", " by (operation)", selector=""),
                    "{{operation}}",
                )
            ],
            width=6,
            height=8,
        )
        .legend(table_legend())
        .tooltip(shared_tooltip())
    )
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Redis round-trip time",
            description=(
                "Round-trip time of the batched Redis calls by operation: median and 99th "
                "percentile."
            ),
            unit=units.Seconds,
            targets=[
                query(
                    _quantile(0.5, "churnwatch_redis_roundtrip_seconds", "operation, le"),
                    "{{operation}} p50",
                ),
                query(
                    _quantile(0.99, "churnwatch_redis_roundtrip_seconds", "operation, le"),
                    "{{operation}} p99",
                ),
            ],
            width=6,
            height=8,
        )
        .legend(table_legend())
        .tooltip(shared_tooltip())
    )
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Redis memory",
            description=(
                "Redis used_memory: the state, the due-time index, streams and dead letters."
            ),
            unit=units.BytesIEC,
            targets=[query("max(churnwatch_redis_memory_bytes)", "used memory")],
            width=6,
            height=8,
        )
        .min(0)
        .tooltip(shared_tooltip())
    )
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="State size",
            description="Customers held in the Redis state.",
            unit=units.Short,
            targets=[query("max(churnwatch_state_customers)", "customers in state")],
            width=6,
            height=8,
        )
        .min(0)
        .tooltip(shared_tooltip())
    )


def _process_row(builder: dashboard_builders.Dashboard) -> None:
    builder.with_row(dashboard_builders.Row("Processes"))
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Process CPU",
            description="CPU time used per second by each churnwatch process (100% = one core).",
            unit=units.PercentUnit,
            targets=[
                query(
                    f"rate(process_cpu_seconds_total[$__rate_interval]) and {CHURNWATCH_PROCESSES}",
                    "{{instance}}",
                )
            ],
            width=10,
            height=8,
        )
        .min(0)
        .tooltip(shared_tooltip())
    )
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Process memory",
            description="Resident memory of each churnwatch process.",
            unit=units.BytesIEC,
            targets=[
                query(f"process_resident_memory_bytes and {CHURNWATCH_PROCESSES}", "{{instance}}")
            ],
            width=10,
            height=8,
        )
        .min(0)
        .tooltip(shared_tooltip())
    )
    builder.with_panel(
        stat_panel(
            title="Running processes",
            description="churnwatch processes Prometheus scrapes, by version.",
            unit=units.Short,
            targets=[query("count by (version) (churnwatch_build_info)", "{{version}}")],
            height=8,
        )
        .graph_mode(common_models.BigValueGraphMode.NONE)
        .text_mode(common_models.BigValueTextMode.VALUE_AND_NAME)
        .color_mode(common_models.BigValueColorMode.NONE)
    )


def build() -> dashboard_models.Dashboard:
    """The pipeline operations dashboard."""
    builder = (
        new_dashboard(
            UID,
            "churnwatch / Pipeline operations",
            "Events in and out per source, rejects, lag and freshness, processing latency, Redis "
            "health and the churnwatch processes.",
        )
        .with_variable(source_variable())
        .annotation(
            firing_alerts_annotation("Firing alerts (not segment-specific)", ', segment=""', "red")
        )
    )
    _now_row(builder)
    _throughput_row(builder)
    _freshness_row(builder)
    _latency_row(builder)
    _redis_row(builder)
    _process_row(builder)
    return finish(builder)
