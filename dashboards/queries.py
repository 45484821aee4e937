"""PromQL expressions the customer dashboards share.

Business metrics are read from Redis at scrape time, so every churnwatch process reports the same
value: each expression first takes `max by (<the metric's own labels>)` across processes, then
sums over segments or tiers. `selector` is the inside of a label matcher, such as
`segment=~"$segment"`, or empty for all segments.

>>> customers('segment=~"a"')
'max by (segment, tier) (churnwatch_customers{segment=~"a"})'
>>> active_customers()
'max by (segment, tier) (churnwatch_customers{tier!="churned"})'
"""

from __future__ import annotations

CHURN_RATE_RULE = "segment:churnwatch_churn_rate:ratio30d"
"""The recording rule (metrics/rules/recording.yml) for the churn rate per segment."""


def _matchers(selector: str, extra: str) -> str:
    return f"{selector}, {extra}" if selector else extra


def _series(metric: str, matchers: str) -> str:
    return f"{metric}{{{matchers}}}" if matchers else metric


def customers(selector: str = "") -> str:
    """Customers per segment and tier."""
    return f"max by (segment, tier) ({_series('churnwatch_customers', selector)})"


def active_customers(selector: str = "") -> str:
    """Customers who can still churn (every tier but churned), per segment and tier."""
    matchers = _matchers(selector, 'tier!="churned"')
    return f"max by (segment, tier) (churnwatch_customers{{{matchers}}})"


def churned_last_30_days(selector: str = "", by: str = "") -> str:
    """Transitions into churned over the last 30 days (from every tier).

    `by` is a grouping clause for the final sum, such as ` by (segment)`. Reads 30 days of raw
    samples: use it in instant queries only; graphs read the recording rules instead.
    """
    matchers = _matchers(selector, 'to_tier="churned"')
    return (
        f"sum{by} (max by (segment, from_tier) (increase(churnwatch_tier_transitions_total"
        f"{{{matchers}}}[30d])))"
    )


def churn_rate(selector: str = "") -> str:
    """Share of active customers that turned churned over the last 30 days, segments together.

    The same quantity as the recording rule `segment:churnwatch_churn_rate:ratio30d`, computed
    from the base metrics so it works without rules; instant queries only.
    """
    return f"{churned_last_30_days(selector)} / sum({active_customers(selector)})"


def churn_rate_by_segment(selector: str = "") -> str:
    """The churn rate of each segment, computed from the base metrics; instant queries only."""
    return (
        f"{churned_last_30_days(selector, ' by (segment)')}"
        f" / sum by (segment) ({active_customers(selector)})"
    )


def recorded_churn_rate_by_segment(selector: str = "") -> str:
    """The churn rate of each segment from its recording rule (cheap over long time ranges)."""
    return f"max by (segment) ({_series(CHURN_RATE_RULE, selector)})"


def recorded_churn_rate(selector: str = "") -> str:
    """The churn rate of the matching segments together, from the recording rules."""
    return (
        f"sum({_series('segment:churnwatch_tier_transitions_to_churned:increase30d', selector)})"
        f" / sum({_series('segment:churnwatch_active_customers:sum', selector)})"
    )


def churn_objective(selector: str = "") -> str:
    """The configured churn-rate objective of the matching segments, weighted by active customers.

    For one segment this is its objective; for several, the objective their active customers
    together should meet.
    """
    return (
        f"sum(max by (segment) ({_series('churnwatch_churn_rate_objective_ratio', selector)})"
        f" * sum by (segment) ({active_customers(selector)}))"
        f" / sum({active_customers(selector)})"
    )


def mean_score(selector: str = "") -> str:
    """Mean health score over every customer of the matching segments (weighted by customers)."""
    return (
        f"sum(max by (segment) ({_series('churnwatch_health_score_mean', selector)})"
        f" * sum by (segment) ({customers(selector)})) / sum({customers(selector)})"
    )


def in_tier(tier: str, selector: str = "") -> str:
    """Customers now in `tier`, per segment."""
    matchers = _matchers(selector, f'tier="{tier}"')
    return f"max by (segment) (churnwatch_customers{{{matchers}}})"


def high_value_at_risk(selector: str = "") -> str:
    """Customers of the top value tier in at_risk or churned, per segment."""
    return f"max by (segment) ({_series('churnwatch_high_value_at_risk_customers', selector)})"


def tier_shares(selector: str = "") -> str:
    """Share of the matching segments' customers in each tier (0..1)."""
    return f"sum by (tier) ({customers(selector)}) / scalar(sum({customers(selector)}))"


def score_bands(selector: str = "") -> str:
    """Customers per health-score band, the matching segments together."""
    return (
        "sum by (band) (max by (segment, band) "
        f"({_series('churnwatch_score_band_customers', selector)}))"
    )
