"""Customer health overview: where the customers stand, how they move, whom to call.

For customer-success and operations teams. The `segment` variable (multi-select, All by default)
filters every panel; at-risk panels link to the CS worklist served by `churnwatch run`.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, heatmap, table, timeseries
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models import units

from . import queries
from .common import (
    SEGMENT_DASHBOARD_URL,
    SEGMENT_WORKLIST_URL,
    bucket_y_axis,
    counts_heatmap_colors,
    dashed,
    finish,
    firing_alerts_annotation,
    last_value,
    link,
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

UID = "churnwatch-overview"

SEGMENTS = 'segment=~"$segment"'
CUSTOMERS = queries.customers(SEGMENTS)

CHURN_RATE_DESCRIPTION = (
    "Share of the active customers (every tier but churned) that turned churned over the last "
    f"30 days, per segment, from the recording rule {queries.CHURN_RATE_RULE} (evaluated every "
    "2 minutes: reading 30 days of samples at every point of a graph would be too costly). "
    "Empty if Prometheus lacks churnwatch's rules; the stat above computes the same figure "
    "from the base metrics. Under-estimated while less than 30 days of data are kept."
)


def _now_row(builder: dashboard_builders.Dashboard) -> None:
    builder.with_row(dashboard_builders.Row("Now"))
    builder.with_panel(
        stat_panel(
            title="Customers",
            description="Customers churnwatch currently scores in the selected segments.",
            unit=units.Short,
            targets=[query(f"sum({CUSTOMERS})", "customers")],
        ).color_mode(common_models.BigValueColorMode.NONE)
    )
    builder.with_panel(
        stat_panel(
            title="At risk",
            description=(
                "Customers now in the at_risk tier. The panel link opens the customer-success "
                "worklist for the selected segment."
            ),
            unit=units.Short,
            targets=[query(f"sum({queries.in_tier('at_risk', SEGMENTS)})", "at risk")],
            links=[worklist_link()],
        ).thresholds(thresholds((None, "orange")))
    )
    builder.with_panel(
        stat_panel(
            title="High-value customers at risk",
            description=(
                "Customers of the top value tier now in at_risk or churned: the first calls to "
                "make. The panel link opens the worklist."
            ),
            unit=units.Short,
            targets=[
                query(
                    f"sum({queries.high_value_at_risk(SEGMENTS)})",
                    "high value at risk",
                )
            ],
            links=[worklist_link()],
        ).thresholds(thresholds((None, "green"), (1, "red")))
    )
    builder.with_panel(
        stat_panel(
            title="Mean health score",
            description=(
                "Mean current health score (0 to 100, higher is healthier) over the customers of "
                "the selected segments: each segment's mean weighted by its customers."
            ),
            unit=units.NoUnit,
            targets=[query(queries.mean_score(SEGMENTS), "mean score")],
        )
        .decimals(1)
        .min(0)
        .max(100)
        .color_mode(common_models.BigValueColorMode.NONE)
    )
    builder.with_panel(
        stat_panel(
            title="Churn rate vs objective (30 days)",
            description=(
                "Share of the active customers (every tier but churned) that turned churned over "
                "the last 30 days, next to the configured objective (weighted by active "
                "customers when several segments are selected). Computed from the base metrics, "
                "so it needs no recording rule."
            ),
            unit=units.PercentUnit,
            targets=[
                query(queries.churn_rate(SEGMENTS), "churn rate", instant=True),
                query(queries.churn_objective(SEGMENTS), "objective", instant=True),
            ],
        )
        .decimals(2)
        .graph_mode(common_models.BigValueGraphMode.NONE)
        .text_mode(common_models.BigValueTextMode.VALUE_AND_NAME)
        .color_mode(common_models.BigValueColorMode.NONE)
    )
    builder.with_panel(
        stat_panel(
            title="Sudden score drops",
            description=(
                "Customers whose score fell by more than [alerts] sudden_drop_points within "
                "sudden_drop_window_days, over the selected time range."
            ),
            unit=units.Short,
            targets=[
                query(
                    f"round(sum(max by (segment) (increase(churnwatch_sudden_drops_total"
                    f"{{{SEGMENTS}}}[$__range]))))",
                    "sudden drops",
                    instant=True,
                )
            ],
        )
        .graph_mode(common_models.BigValueGraphMode.NONE)
        .thresholds(thresholds((None, "green"), (1, "orange")))
    )


def _tiers_row(builder: dashboard_builders.Dashboard) -> None:
    builder.with_row(dashboard_builders.Row("Tiers and scores"))
    builder.with_panel(
        with_tier_colors(
            panel(
                timeseries.Panel(),
                title="Customers per tier",
                description=(
                    "Customers in each risk tier over time, stacked: the total is every scored "
                    "customer of the selected segments."
                ),
                unit=units.Short,
                targets=[query(f"sum by (tier) ({CUSTOMERS})", "{{tier}}")],
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
        panel(
            heatmap.Panel(),
            title="Health score distribution",
            description=(
                "Customers per health-score band (00-10 at the bottom to 90-100 at the top) over "
                "time; a shift of colour downwards is the population getting less healthy."
            ),
            unit=units.Short,
            targets=[
                query(
                    queries.score_bands(SEGMENTS),
                    "{{band}}",
                )
            ],
            width=12,
            height=9,
        )
        .calculate(False)
        .color(counts_heatmap_colors())
        .y_axis(bucket_y_axis(units.NoUnit, "health score band"))
        .cell_gap(1)
    )


def _transitions_row(builder: dashboard_builders.Dashboard) -> None:
    builder.with_row(dashboard_builders.Row("Tier transitions"))
    builder.with_panel(
        panel(
            table.Panel(),
            title="Transition matrix (selected time range)",
            description=(
                "Tier changes over the selected time range: one row per tier left (from_tier), one "
                "column per tier entered."
            ),
            unit=units.Short,
            targets=[
                query(
                    "round(sum by (from_tier, to_tier) (max by (segment, from_tier, to_tier) "
                    f"(increase(churnwatch_tier_transitions_total{{{SEGMENTS}}}[$__range]))))",
                    "",
                    instant=True,
                    table=True,
                )
            ],
            width=10,
            height=8,
        )
        .with_transformation(
            dashboard_models.DataTransformerConfig(
                id_val="groupingToMatrix",
                options={
                    "rowField": "from_tier",
                    "columnField": "to_tier",
                    "valueField": "Value",
                },
            )
        )
        .with_transformation(
            dashboard_models.DataTransformerConfig(
                id_val="organize",
                options={
                    "indexByName": {
                        "from_tier\\to_tier": 0,
                        "healthy": 1,
                        "watch": 2,
                        "at_risk": 3,
                        "churned": 4,
                    }
                },
            )
        )
    )
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Transition rate",
            description="Tier changes per minute, by the tier left and the tier entered.",
            unit=units.CountsPerMinute,
            targets=[
                query(
                    "60 * sum by (from_tier, to_tier) (max by (segment, from_tier, to_tier) "
                    f"(rate(churnwatch_tier_transitions_total{{{SEGMENTS}}}[$__rate_interval])))",
                    "{{from_tier}} → {{to_tier}}",
                )
            ],
            width=14,
            height=8,
        )
        .legend(table_legend())
        .tooltip(shared_tooltip())
    )


def _churn_row(builder: dashboard_builders.Dashboard) -> None:
    builder.with_row(dashboard_builders.Row("Churn and recovery"))
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="Churn rate vs objective",
            description=CHURN_RATE_DESCRIPTION
            + " Dashed: the objective configured for the segment.",
            unit=units.PercentUnit,
            targets=[
                query(queries.recorded_churn_rate_by_segment(SEGMENTS), "{{segment}} churn rate"),
                query(
                    f"max by (segment) (churnwatch_churn_rate_objective_ratio{{{SEGMENTS}}})",
                    "{{segment}} objective",
                ),
            ],
            width=12,
            height=8,
        )
        .interval("2m")
        .min(0)
        .override_by_regexp(".* objective", [dashed()])
        .legend(table_legend())
        .tooltip(shared_tooltip())
    )
    builder.with_panel(
        per_minute_bars(panel(
            timeseries.Panel(),
            title="Recoveries",
            description=(
                "Customers back to healthy from at_risk or churned, per interval of the graph, by "
                "the tier they recovered from."
            ),
            unit=units.Short,
            targets=[
                query(
                    "sum by (from_tier) (max by (segment, from_tier) "
                    f"(increase(churnwatch_recoveries_total{{{SEGMENTS}}}[$__interval])))",
                    "from {{from_tier}}",
                )
            ],
            width=12,
            height=8,
        ))
        .stacking(stacked())
        .tooltip(shared_tooltip())
    )


def _act_row(builder: dashboard_builders.Dashboard) -> None:
    builder.with_row(dashboard_builders.Row("Customers to act on"))
    builder.with_panel(
        panel(
            timeseries.Panel(),
            title="High-value customers at risk",
            description=(
                "Customers of the top value tier in at_risk or churned, per segment. The panel "
                "link opens the worklist."
            ),
            unit=units.Short,
            targets=[
                query(
                    queries.high_value_at_risk(SEGMENTS),
                    "{{segment}}",
                )
            ],
            width=8,
            height=8,
            links=[worklist_link()],
        )
        .data_links([link("Worklist for ${__field.labels.segment}", SEGMENT_WORKLIST_URL)])
        .tooltip(shared_tooltip())
    )
    builder.with_panel(
        panel(
            bargauge.Panel().reduce_options(last_value()),
            title="At-risk customers by segment",
            description=(
                "Customers now in at_risk, per segment. Click a bar for that segment's worklist or "
                "its drill-down dashboard."
            ),
            unit=units.Short,
            targets=[
                query(
                    queries.in_tier("at_risk", SEGMENTS),
                    "{{segment}}",
                    instant=True,
                )
            ],
            width=8,
            height=8,
            links=[worklist_link()],
        )
        .display_mode(common_models.BarGaugeDisplayMode.BASIC)
        .orientation(common_models.VizOrientation.HORIZONTAL)
        .min(0)
        .thresholds(thresholds((None, "orange")))
        .data_links(
            [
                link("Worklist for ${__field.labels.segment}", SEGMENT_WORKLIST_URL),
                link(
                    "Drill down into ${__field.labels.segment}", SEGMENT_DASHBOARD_URL
                ).target_blank(False),
            ]
        )
    )
    builder.with_panel(
        per_minute_bars(panel(
            timeseries.Panel(),
            title="Sudden score drops",
            description=(
                "Customers whose score fell by more than [alerts] sudden_drop_points within "
                "sudden_drop_window_days, per interval of the graph and segment."
            ),
            unit=units.Short,
            targets=[
                query(
                    "max by (segment) "
                    f"(increase(churnwatch_sudden_drops_total{{{SEGMENTS}}}[$__interval]))",
                    "{{segment}}",
                )
            ],
            width=8,
            height=8,
        ))
        .stacking(stacked())
        .tooltip(shared_tooltip())
    )


def _alerts_row(builder: dashboard_builders.Dashboard) -> None:
    builder.with_row(dashboard_builders.Row("Alerts"))
    builder.with_panel(
        panel(
            table.Panel(),
            title="Firing alerts",
            description=(
                "Alerts Prometheus evaluates as firing now (the ALERTS series); Alertmanager "
                "routes and silences them."
            ),
            unit=units.NoUnit,
            targets=[query('ALERTS{alertstate="firing"}', "", instant=True, table=True)],
            width=24,
            height=6,
        )
        .no_value("No alert is firing")
        .with_transformation(
            dashboard_models.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True, "Value": True, "__name__": True},
                    "indexByName": {"alertname": 0, "severity": 1, "segment": 2},
                },
            )
        )
    )


def build() -> dashboard_models.Dashboard:
    """The customer health overview dashboard."""
    builder = (
        new_dashboard(
            UID,
            "churnwatch / Customer health overview",
            "Customers per risk tier, score distribution, tier transitions, churn against its "
            "objective, recoveries and the customers to act on, per segment.",
        )
        .with_variable(segment_variable(multi=True))
        .annotation(
            firing_alerts_annotation(
                "Firing alerts (selected segments)", ', segment=~"$segment"', "red"
            )
        )
        .annotation(
            firing_alerts_annotation(
                "Firing alerts (not segment-specific)", ', segment=""', "purple"
            )
        )
    )
    _now_row(builder)
    _tiers_row(builder)
    _transitions_row(builder)
    _churn_row(builder)
    _act_row(builder)
    _alerts_row(builder)
    return finish(builder)
