"""Segment drill-down: one segment's tiers, score and score components, next to all segments.

The `segment` variable selects exactly one segment; "all segments" series are drawn dashed.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import heatmap, table, timeseries
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models import units

from . import queries
from .common import (
    bucket_y_axis,
    counts_heatmap_colors,
    dashed,
    finish,
    firing_alerts_annotation,
    fixed_color,
    new_dashboard,
    panel,
    per_minute_bars,
    query,
    segment_variable,
    shared_tooltip,
    stacked,
    stat_panel,
    table_legend,
    thresholds,
    with_tier_colors,
    worklist_link,
)

UID = "churnwatch-segment"

THIS = 'segment=~"$segment"'

SEGMENT_DASHBOARD_VALUE_URL = "/d/churnwatch-segment?var-segment=${__value.raw}&${__url_time_range}"


def _now_row(builder: dashboard_builders.Dashboard) -> None:
    builder.with_row(dashboard_builders.Row("$segment now"))
    builder.with_panel(
        stat_panel(
            title="Customers",
            description="Customers churnwatch currently scores in this segment.",
            unit=units.Short,
            targets=[query(f"sum({queries.customers(THIS)})", "customers")],
        ).color_mode(common_models.BigValueColorMode.NONE)
    )
    builder.with_panel(
        stat_panel(
            title="At risk",
            description="Customers of this segment now in at_risk; the link opens the worklist.",
            unit=units.Short,
            targets=[query(f"sum({queries.in_tier('at_risk', THIS)})", "at risk")],
            links=[worklist_link()],
        ).thresholds(thresholds((None, "orange")))
    )
    builder.with_panel(
        stat_panel(
            title="High-value customers at risk",
            description=(
                "Customers of the top value tier in at_risk or churned in this segment; the link "
                "opens the worklist."
            ),
            unit=units.Short,
            targets=[
                query(
                    f"sum({queries.high_value_at_risk(THIS)})",
                    "high value at risk",
                )
            ],
            links=[worklist_link()],
        ).thresholds(thresholds((None, "green"), (1, "red")))
    )
    builder.with_panel(
        stat_panel(
            title="Mean health score vs all segments",
            description=(
                "Mean current health score of this segment (0 to 100) next to the mean over "
                "every customer of all segments."
            ),
            unit=units.NoUnit,
            targets=[
                query(queries.mean_score(THIS), "this segment"),
                query(queries.mean_score(), "all segments"),
            ],
            width=6,
        )
        .decimals(1)
        .graph_mode(common_models.BigValueGraphMode.NONE)
        .text_mode(common_models.BigValueTextMode.VALUE_AND_NAME)
        .color_mode(common_models.BigValueColorMode.NONE)
    )
    builder.with_panel(
        stat_panel(
            title="Churn rate vs objective (30 days)",
            description=(
                "Share of this segment's active customers (every tier but churned) that turned "
                "churned over the last 30 days, next to the configured objective. Computed from "
                "the base metrics, so it needs no recording rule."
            ),
            unit=units.PercentUnit,
            targets=[
                query(queries.churn_rate_by_segment(THIS), "churn rate", instant=True),
                query(
                    f"max by (segment) (churnwatch_churn_rate_objective_ratio{{{THIS}}})",
                    "objective",
                    instant=True,
                ),
            ],
            width=6,
        )
        .decimals(2)
        .graph_mode(common_models.BigValueGraphMode.NONE)
        .text_mode(common_models.BigValueTextMode.VALUE_AND_NAME)
        .color_mode(common_models.BigValueColorMode.NONE)
    )


def _tiers_row(builder: dashboard_builders.Dashboard) -> None:
    builder.with_row(dashboard_builders.Row("Tiers"))
    builder.with_panel(
        with_tier_colors(
            panel(
                timeseries.Panel(),
                title="Customers per tier",
                description="This segment's customers in each risk tier over time, stacked.",
                unit=units.Short,
                targets=[query(f"sum by (tier) ({queries.customers(THIS)})", "{{tier}}")],
                width=12,
                height=9,
            )
        )
        .stacking(stacked())
        .fill_opacity(60)
        .line_width(1)
        .legend(table_legend())
        .tooltip(shared_tooltip())
    )
    builder.with_panel(
        with_tier_colors(
            with_tier_colors(
                panel(
                    timeseries.Panel(),
                    title="Tier shares: this segment vs all segments",
                    description=(
                        "Share of customers in each tier, this segment (solid) against all "
                        "segments together (dashed)."
                    ),
                    unit=units.PercentUnit,
                    targets=[
                        query(
                            queries.tier_shares(THIS),
                            "{{tier}}",
                        ),
                        query(
                            queries.tier_shares(),
                            "{{tier}} (all segments)",
                        ),
                    ],
                    width=12,
                    height=9,
                )
            ),
            suffix=" (all segments)",
        )
        .override_by_regexp(".*\\(all segments\\)", [dashed()])
        .min(0)
        .legend(table_legend())
        .tooltip(shared_tooltip())
    )


def _score_row(builder: dashboard_builders.Dashboard) -> None:
    builder.with_row(dashboard_builders.Row("Health score and its components"))
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Mean health score vs all segments",
            description=(
                "Mean current health score of this segment (solid) and of every customer of all "
                "segments (dashed); 0 to 100, higher is healthier."
            ),
            unit=units.NoUnit,
            targets=[
                query(queries.mean_score(THIS), "this segment"),
                query(queries.mean_score(), "all segments"),
            ],
            width=12,
            height=8,
        )
        .override_by_name("all segments", [dashed()])
        .min(0)
        .max(100)
        .tooltip(shared_tooltip())
    )
    builder.with_panel(
        panel(
            heatmap.Panel(),
            title="Health score distribution",
            description="This segment's customers per health-score band over time.",
            unit=units.Short,
            targets=[
                query(
                    queries.score_bands(THIS),
                    "{{band}}",
                )
            ],
            width=12,
            height=8,
        )
        .calculate(False)
        .color(counts_heatmap_colors())
        .y_axis(bucket_y_axis(units.NoUnit, "health score band"))
        .cell_gap(1)
    )
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Score components vs all segments",
            description=(
                "Mean of each score component (0 to 100) over this segment's customers with data "
                "for it (solid), and the average of the segments' means (dashed, each segment "
                "counts once). A component far below the others says why the score is low."
            ),
            unit=units.NoUnit,
            targets=[
                query(
                    f"max by (component) (churnwatch_health_component_mean{{{THIS}}})",
                    "{{component}}",
                ),
                query(
                    "avg by (component) (max by (segment, component) "
                    "(churnwatch_health_component_mean))",
                    "{{component}} (all segments)",
                ),
            ],
            width=24,
            height=9,
        )
        .override_by_regexp(".*\\(all segments\\)", [dashed()])
        .min(0)
        .max(100)
        .legend(table_legend())
        .tooltip(shared_tooltip())
    )


def _movement_row(builder: dashboard_builders.Dashboard) -> None:
    builder.with_row(dashboard_builders.Row("Movement"))
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Transition rate",
            description="This segment's tier changes per minute, by tier left and tier entered.",
            unit=units.CountsPerMinute,
            targets=[
                query(
                    "60 * sum by (from_tier, to_tier) (max by (segment, from_tier, to_tier) "
                    f"(rate(churnwatch_tier_transitions_total{{{THIS}}}[$__rate_interval])))",
                    "{{from_tier}} → {{to_tier}}",
                )
            ],
            width=12,
            height=8,
        )
        .legend(table_legend())
        .tooltip(shared_tooltip())
    )
    builder.with_panel(
        per_minute_bars(panel(
            timeseries.Panel(),
            title="Recoveries and sudden drops",
            description=(
                "Per interval of the graph: customers back to healthy (by the tier they recovered "
                "from) and customers whose score fell suddenly ([alerts] sudden_drop_points)."
            ),
            unit=units.Short,
            targets=[
                query(
                    "sum by (from_tier) (max by (segment, from_tier) "
                    f"(increase(churnwatch_recoveries_total{{{THIS}}}[$__interval])))",
                    "recovered from {{from_tier}}",
                ),
                query(
                    "sum(max by (segment) "
                    f"(increase(churnwatch_sudden_drops_total{{{THIS}}}[$__interval])))",
                    "sudden drops",
                ),
            ],
            width=12,
            height=8,
        ))
        .override_by_name("sudden drops", [fixed_color("red")])
        .tooltip(shared_tooltip())
    )
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Churn rate vs objective and all segments",
            description=(
                "Share of the active customers that turned churned over the last 30 days: this "
                "segment, all segments together (dashed) and this segment's objective (red, "
                f"dashed). From the recording rules ({queries.CHURN_RATE_RULE} and its inputs), "
                "so empty if Prometheus lacks them; under-estimated while less than 30 days of "
                "data are kept."
            ),
            unit=units.PercentUnit,
            targets=[
                query(queries.recorded_churn_rate_by_segment(THIS), "this segment"),
                query(queries.recorded_churn_rate(), "all segments"),
                query(
                    f"max by (segment) (churnwatch_churn_rate_objective_ratio{{{THIS}}})",
                    "objective",
                ),
            ],
            width=12,
            height=8,
        )
        .interval("2m")
        .override_by_name("all segments", [dashed()])
        .override_by_name("objective", [dashed(), fixed_color("red")])
        .min(0)
        .tooltip(shared_tooltip())
    )
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="High-value customers at risk",
            description=(
                "Customers of the top value tier in at_risk or churned in this segment; the link "
                "opens the worklist."
            ),
            unit=units.Short,
            targets=[
                query(
                    queries.high_value_at_risk(THIS),
                    "{{segment}}",
                )
            ],
            width=12,
            height=8,
            links=[worklist_link()],
        ).tooltip(shared_tooltip())
    )


def _compare_row(builder: dashboard_builders.Dashboard) -> None:
    builder.with_row(dashboard_builders.Row("All segments compared"))
    by_segment_churn = queries.churn_rate_by_segment()
    columns = {
        "Value #A": ("customers", units.Short),
        "Value #B": ("at risk share", units.PercentUnit),
        "Value #C": ("mean score", units.NoUnit),
        "Value #D": ("high value at risk", units.Short),
        "Value #E": ("churn rate (30 d)", units.PercentUnit),
        "Value #F": ("objective", units.PercentUnit),
    }
    compare = panel(
        table.Panel(),
        title="Segments side by side",
        description=(
            "Every segment now: customers, share at risk, mean health score, high-value customers "
            "at risk, churn rate over the last 30 days and its objective. Click a segment to "
            "drill into it."
        ),
        unit=units.Short,
        targets=[
            query(f"sum by (segment) ({queries.customers()})", "", instant=True, table=True),
            query(
                f"{queries.in_tier('at_risk')} / sum by (segment) ({queries.customers()})",
                "",
                instant=True,
                table=True,
            ),
            query("max by (segment) (churnwatch_health_score_mean)", "", instant=True, table=True),
            query(
                queries.high_value_at_risk(),
                "",
                instant=True,
                table=True,
            ),
            query(by_segment_churn, "", instant=True, table=True),
            query(
                "max by (segment) (churnwatch_churn_rate_objective_ratio)",
                "",
                instant=True,
                table=True,
            ),
        ],
        width=24,
        height=8,
    )
    compare.with_transformation(dashboard_models.DataTransformerConfig(id_val="merge", options={}))
    compare.with_transformation(
        dashboard_models.DataTransformerConfig(
            id_val="organize",
            options={
                "excludeByName": {"Time": True},
                "renameByName": {name: label for name, (label, _) in columns.items()},
            },
        )
    )
    for label, unit in columns.values():
        compare.override_by_name(
            label, [dashboard_models.DynamicConfigValue(id_val="unit", value=unit)]
        )
    compare.override_by_name(
        "segment",
        [
            dashboard_models.DynamicConfigValue(
                id_val="links",
                value=[
                    {
                        "title": "Drill down into ${__value.raw}",
                        "url": SEGMENT_DASHBOARD_VALUE_URL,
                    }
                ],
            )
        ],
    )
    builder.with_panel(compare)


def build() -> dashboard_models.Dashboard:
    """The segment drill-down dashboard."""
    builder = (
        new_dashboard(
            UID,
            "churnwatch / Segment drill-down",
            "One segment's tiers, mean health score and score components over time, compared "
            "with all segments.",
        )
        .with_variable(segment_variable(multi=False))
        .annotation(
            firing_alerts_annotation("Firing alerts (this segment)", ', segment=~"$segment"', "red")
        )
    )
    _now_row(builder)
    _tiers_row(builder)
    _score_row(builder)
    _movement_row(builder)
    _compare_row(builder)
    return finish(builder)
