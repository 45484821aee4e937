"""Building blocks shared by the churnwatch dashboards.

Every dashboard is built with grafana-foundation-sdk builders; this module holds what the three
have in common: the provisioned Prometheus datasource, query and panel defaults (a unit, a
description and the datasource on every panel), tier colours, the firing-alerts annotation and
the JSON rendering that `build.py` commits.

Business metrics are read from Redis at scrape time, so every churnwatch process reports the same
value for them: queries take `max by (<the metric's own labels>)` across processes before summing
over segments or tiers. Pipeline metrics are per process and are summed.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, Self, TypeVar

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import heatmap as heatmap_builders
from grafana_foundation_sdk.builders import prometheus as prometheus_builders
from grafana_foundation_sdk.builders import stat as stat_builders
from grafana_foundation_sdk.cog import builder as cog_builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models import heatmap as heatmap_models
from grafana_foundation_sdk.models import prometheus as prometheus_models

PROMETHEUS_UID = "churnwatch-prometheus"
"""The uid `deploy/grafana/provisioning/datasources/datasources.yml` gives the Prometheus."""

PROMETHEUS = dashboard_models.DataSourceRef(type_val="prometheus", uid=PROMETHEUS_UID)

DASHBOARD_TAG = "churnwatch"

WORKLIST_URL = "http://127.0.0.1:9464/?segment=${segment}&tier=at_risk"
"""The customer-success worklist page served by `churnwatch run` (and `churnwatch serve`) for
the selected segment."""

SEGMENT_WORKLIST_URL = (
    "http://127.0.0.1:9464/?segment=${__field.labels.segment}&tier=at_risk"
)
"""The worklist for the segment of the series (or bar) that was clicked."""

SEGMENT_DASHBOARD_URL = (
    "/d/churnwatch-segment?var-segment=${__field.labels.segment}&${__url_time_range}"
)

TIERS = ("healthy", "watch", "at_risk", "churned")
TIER_COLORS = {
    "healthy": "green",
    "watch": "yellow",
    "at_risk": "orange",
    "churned": "red",
}

REF_IDS = string.ascii_uppercase

P = TypeVar("P", bound="PanelBuilder")


class PanelBuilder(Protocol):
    """What every panel builder of the SDK offers (timeseries, stat, heatmap, table, ...)."""

    def title(self, title: str) -> Self: ...
    def description(self, description: str) -> Self: ...
    def unit(self, unit: str) -> Self: ...
    def datasource(self, datasource: dashboard_models.DataSourceRef) -> Self: ...
    def span(self, w: int) -> Self: ...
    def height(self, h: int) -> Self: ...
    def with_target(self, target: Any) -> Self: ...
    def links(self, links: list[Any]) -> Self: ...
    def override_by_name(self, name: str, properties: list[Any]) -> Self: ...
    def override_by_regexp(self, regexp: str, properties: list[Any]) -> Self: ...
    def build(self) -> dashboard_models.Panel: ...


def query(
    expr: str,
    legend: str = "__auto",
    *,
    instant: bool = False,
    table: bool = False,
    heatmap: bool = False,
) -> prometheus_builders.Dataquery:
    """A PromQL target on the provisioned Prometheus (its refId is set by `panel`)."""
    target = (
        prometheus_builders.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .datasource(PROMETHEUS)
        .editor_mode(prometheus_models.QueryEditorMode.CODE)
    )
    if instant:
        target.instant()
    else:
        target.range()
    if table:
        target.format(prometheus_models.PromQueryFormat.TABLE)
    elif heatmap:
        target.format(prometheus_models.PromQueryFormat.HEATMAP)
    return target


def panel(
    builder: P,
    *,
    title: str,
    description: str,
    unit: str,
    targets: Sequence[prometheus_builders.Dataquery],
    width: int,
    height: int = 8,
    links: Iterable[dashboard_builders.DashboardLink] = (),
) -> P:
    """Apply what every churnwatch panel has: title, description, unit, datasource, targets."""
    builder.title(title).description(description).unit(unit).datasource(PROMETHEUS)
    builder.span(width).height(height)
    for ref_id, target in zip(REF_IDS, targets, strict=False):
        builder.with_target(target.ref_id(ref_id))
    links = list(links)
    if links:
        builder.links(links)
    return builder


def stat_panel(
    *,
    title: str,
    description: str,
    unit: str,
    targets: Sequence[prometheus_builders.Dataquery],
    width: int = 4,
    height: int = 4,
    links: Iterable[dashboard_builders.DashboardLink] = (),
) -> stat_builders.Panel:
    """A stat panel showing its query's last value as one figure (the dashboards' "Now" rows).

    Chain `.thresholds(...)` for a coloured figure or `.color_mode(NONE)` for a plain one.
    """
    return panel(
        stat_builders.Panel().reduce_options(last_value()),
        title=title,
        description=description,
        unit=unit,
        targets=targets,
        width=width,
        height=height,
        links=links,
    )

def link(title: str, url: str) -> dashboard_builders.DashboardLink:
    """A link opening in a new tab (panel links and data links share this type)."""
    return dashboard_builders.DashboardLink(title).url(url).target_blank(True)


def worklist_link() -> dashboard_builders.DashboardLink:
    """The at-risk worklist of the segments selected in the `segment` variable."""
    return link("Customer-success worklist (at risk)", WORKLIST_URL).tooltip(
        "Customers now in at_risk for the selected segment, served by churnwatch"
    )


def fixed_color(color: str) -> dashboard_models.DynamicConfigValue:
    """An override property giving a series one fixed colour."""
    return dashboard_models.DynamicConfigValue(
        id_val="color", value={"mode": "fixed", "fixedColor": color}
    )


def dashed() -> dashboard_models.DynamicConfigValue:
    """An override property drawing a series as a dashed line (references, comparisons)."""
    return dashboard_models.DynamicConfigValue(
        id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}
    )


def with_tier_colors(builder: P, suffix: str = "") -> P:
    """Colour the series named `<tier><suffix>` the way the tiers are coloured everywhere."""
    for tier in TIERS:
        builder.override_by_name(f"{tier}{suffix}", [fixed_color(TIER_COLORS[tier])])
    return builder


def table_legend() -> common_builders.VizLegendOptions:
    """A legend listing the last and maximum value of every series."""
    return (
        common_builders.VizLegendOptions()
        .display_mode(common_models.LegendDisplayMode.TABLE)
        .placement(common_models.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["lastNotNull", "max"])
    )


def shared_tooltip() -> common_builders.VizTooltipOptions:
    """A tooltip listing every series at the hovered time, largest first."""
    return (
        common_builders.VizTooltipOptions()
        .mode(common_models.TooltipDisplayMode.MULTI)
        .sort(common_models.SortOrder.DESCENDING)
    )


def per_minute_bars(chart: Any) -> Any:
    """A time series of counts per minute drawn as solid bars (transitions, drops, recoveries)."""
    return chart.interval("1m").draw_style(common_models.GraphDrawStyle.BARS).fill_opacity(80)


def stacked() -> common_builders.StackingConfig:
    """Series stacked on each other (absolute values, not percentages)."""
    return common_builders.StackingConfig().mode(common_models.StackingMode.NORMAL)


def counts_heatmap_colors() -> heatmap_builders.HeatmapColorOptions:
    """A sequential colour scheme for the counts in heatmap cells."""
    return (
        heatmap_builders.HeatmapColorOptions()
        .mode(heatmap_models.HeatmapColorMode.SCHEME)
        .scheme("Blues")
        .scale(heatmap_models.HeatmapColorScale.EXPONENTIAL)
        .exponent(0.5)
        .steps(64)
    )


def bucket_y_axis(unit: str, label: str) -> heatmap_builders.YAxisConfig:
    """The y axis of a heatmap whose buckets are the query's series (nothing recalculated)."""
    return heatmap_builders.YAxisConfig().unit(unit).axis_label(label)


def last_value() -> common_builders.ReduceDataOptions:
    """Stat and bar gauge panels show the latest value of each series."""
    return common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def thresholds(*steps: tuple[float | None, str]) -> dashboard_builders.ThresholdsConfig:
    """Absolute thresholds; the first step's value is None (the base colour)."""
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(dashboard_models.ThresholdsMode.ABSOLUTE)
        .steps([dashboard_models.Threshold(value=value, color=color) for value, color in steps])
    )


class PrometheusAnnotationQuery(dashboard_models.AnnotationQuery):
    """An annotation fed by a Prometheus query.

    The SDK's `AnnotationQuery` model knows `expr` but not the fields the Prometheus datasource
    reads to turn series into annotation events (`step`, `titleFormat`, `textFormat`,
    `tagKeys`), so this subclass adds them to the JSON.
    """

    def __init__(
        self,
        *,
        name: str,
        expr: str,
        icon_color: str,
        title_format: str,
        text_format: str,
        tag_keys: Sequence[str],
        step: str = "60s",
    ) -> None:
        super().__init__(
            name=name, datasource=PROMETHEUS, enable=True, icon_color=icon_color, expr=expr
        )
        self.step = step
        self.title_format = title_format
        self.text_format = text_format
        self.tag_keys = ",".join(tag_keys)

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload.update(
            {
                "step": self.step,
                "titleFormat": self.title_format,
                "textFormat": self.text_format,
                "tagKeys": self.tag_keys,
                "useValueForTime": False,
            }
        )
        return payload


class PrometheusAnnotation(cog_builder.Builder[dashboard_models.AnnotationQuery]):
    """Builder wrapper so `Dashboard.annotation()` accepts a `PrometheusAnnotationQuery`."""

    def __init__(self, annotation: PrometheusAnnotationQuery) -> None:
        self._annotation = annotation

    def build(self) -> dashboard_models.AnnotationQuery:
        return self._annotation


def firing_alerts_annotation(name: str, selector: str, icon_color: str) -> PrometheusAnnotation:
    """Mark the time ranges in which alerts matching `selector` fired (Prometheus' ALERTS)."""
    return PrometheusAnnotation(
        PrometheusAnnotationQuery(
            name=name,
            expr=f'ALERTS{{alertstate="firing"{selector}}}',
            icon_color=icon_color,
            title_format="{{alertname}}",
            text_format="severity {{severity}} {{segment}}",
            tag_keys=("alertname", "severity", "segment"),
        )
    )


def new_dashboard(uid: str, title: str, description: str) -> dashboard_builders.Dashboard:
    """A dashboard with the settings all churnwatch dashboards share."""
    return (
        dashboard_builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([DASHBOARD_TAG])
        .timezone("browser")
        .time("now-6h", "now")
        .refresh("30s")
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .link(
            dashboard_builders.DashboardLink("churnwatch dashboards")
            .type(dashboard_models.DashboardLinkType.DASHBOARDS)
            .tags([DASHBOARD_TAG])
            .as_dropdown(True)
            .keep_time(True)
            .include_vars(False)
        )
    )


def segment_variable(*, multi: bool) -> dashboard_builders.QueryVariable:
    """The `segment` template variable, from the segments churnwatch reports."""
    variable = (
        dashboard_builders.QueryVariable("segment")
        .label("Segment")
        .description(
            "Customer segments configured in churnwatch ([segments]), plus other/unassigned"
        )
        .datasource(PROMETHEUS)
        .query("label_values(churnwatch_customers, segment)")
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(multi)
    )
    if multi:
        variable.current(
            dashboard_models.VariableOption(selected=True, text=["All"], value=["$__all"])
        )
    return variable


def finish(builder: dashboard_builders.Dashboard) -> dashboard_models.Dashboard:
    """Build the dashboard and number its panels (rows included) 1, 2, ... in layout order.

    The SDK leaves row ids at 0 and panel ids unset unless each builder is given one; numbering
    after the layout keeps the ids unique and stable when panels are added or moved.
    """
    dashboard = builder.build()
    for number, item in enumerate(dashboard.panels or [], start=1):
        item.id_val = number
    return dashboard


def render(dashboard: dashboard_models.Dashboard) -> str:
    """The dashboard as committed: pretty JSON with sorted keys and a final newline."""
    return (
        json.dumps(dashboard, cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    )


def as_dict(dashboard: dashboard_models.Dashboard) -> dict[str, Any]:
    """The dashboard as plain JSON data (what Grafana stores)."""
    data: dict[str, Any] = json.loads(render(dashboard))
    return data
