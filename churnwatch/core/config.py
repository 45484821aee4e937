"""The TOML configuration: defaults, per-segment overrides, and validation.

Every key is checked before any event is read; an error names the key and the file.
The reference with every key and its default is ``docs/configuration.md``.

>>> cfg = parse_config({"segments": {"skincare": {"horizon_days": 90}}}, source="shop.toml")
>>> cfg.policy("skincare").horizon_days, cfg.policy("fashion").horizon_days
(90.0, 180.0)
>>> parse_config({"tiers": {"healthy": "high"}}, source="shop.toml")
Traceback (most recent call last):
...
churnwatch.core.config.ConfigError: shop.toml: tiers.healthy must be a number, got 'high'
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomllib

from churnwatch.core.buyers import BuyerModel
from churnwatch.core.playbooks import (
    ACTION_CHANNELS,
    DEFAULT_PLAYBOOKS,
    REASON_CODES,
    TEMPLATE_FIELDS,
    TIER_NAMES,
    VALUE_TIER_NAMES,
    Playbook,
    WinbackPolicy,
)

COMPONENTS = ("recency", "trend", "engagement", "service")
TIERS = ("healthy", "watch", "at_risk", "churned")
UNASSIGNED_SEGMENT = "unassigned"
OTHER_SEGMENT = "other"
#: ``[segments] max_segments``'s default: segment values declared by events kept as labels.
MAX_SEGMENTS = 20


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


@dataclass(frozen=True, slots=True)
class SegmentPolicy:
    """Everything that may differ per segment: horizon, weights, tier thresholds."""

    #: The horizon of the chance tiers are defined on; until a segment has enough repeat orders
    #: to learn its own (``horizon_learned``), or when configured, this one.
    horizon_days: float = 180.0
    #: Whether the horizon is learned from the segment's buyers (no ``horizon_days`` configured).
    horizon_learned: bool = True
    weights: Mapping[str, float] = field(
        default_factory=lambda: {"recency": 0.6, "trend": 0.15, "engagement": 0.15,
                                 "service": 0.1})
    # Lower bounds of the tiers on the calibrated chance of an order within the horizon, in %.
    healthy: float = 65.0
    watch: float = 45.0
    at_risk: float = 25.0
    hysteresis: float = 3.0
    churn_rate_objective: float = 0.05

    @property
    def boundaries(self) -> tuple[float, float, float]:
        """Lower bounds of healthy, watch and at_risk, best tier first."""
        return (self.healthy, self.watch, self.at_risk)


@dataclass(frozen=True, slots=True)
class RecencyModel:
    """Prior centres of the buyer model, which each shard then learns from its stream (see
    docs/scoring.md)."""

    default_gap_days: float = 30.0
    default_gap_weight: float = 10.0
    dropout_prior_a: float = 1.0
    dropout_prior_b: float = 2.0

    def prior(self) -> BuyerModel:
        """The buyer model before any fit, and the centre its fits are shrunk towards: rates
        around one order per ``default_gap_days``, a first dropout chance ``a / (a + b)``."""
        return BuyerModel(1.0, self.default_gap_days, self.dropout_prior_a,
                          self.dropout_prior_b, 1.0)


@dataclass(frozen=True, slots=True)
class ChurnwatchConfig:
    """The whole configuration, validated."""

    default_policy: SegmentPolicy = field(default_factory=SegmentPolicy)
    segment_policies: Mapping[str, SegmentPolicy] = field(default_factory=dict)
    recency: RecencyModel = field(default_factory=RecencyModel)
    trend_short_half_life_days: float = 60.0
    trend_long_half_life_days: float = 365.0
    engagement_half_life_days: float = 90.0
    service_half_life_days: float = 90.0
    sudden_drop_points: float = 20.0
    sudden_drop_window_days: float = 7.0
    high_value_tier: str = "high"
    high_value_top_share: float = 0.1
    shards: int = 1
    key_prefix: str = "cw"
    max_future_seconds: float = 86400.0
    allowed_lateness_days: float = 3650.0
    max_amount: float = 1e10
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    score_history_length: int = 3
    tier_history_days: float = 365.0
    customer_buckets: int = 2048
    transitions_kept: int = 3_000
    transitions_max_age_days: float = 7.0
    dead_letters_kept: int = 1_000
    dead_letters_max_age_days: float = 30.0
    source: str = "redis"
    stream_partitions: int = 1
    stream_prefix: str = "churnwatch:events"
    kafka_brokers: str = "127.0.0.1:9092"
    kafka_topic: str = "churnwatch-events"
    batch_size: int = 5000
    source_file: str = "<defaults>"
    # Customer success (churnwatch.core.playbooks): [playbooks.NAME] and [winback].
    playbooks: tuple[Playbook, ...] = DEFAULT_PLAYBOOKS
    winback: WinbackPolicy = field(default_factory=WinbackPolicy)
    #: ``[segments] max_segments``: how many segment values events declare, beyond the
    #: configured ones, are kept as labels (the rest count as ``other``).
    max_segments: int = MAX_SEGMENTS
    #: The declared segment values kept so far, shop-wide, in the order they were first kept
    #: (recorded by the state store: ``churnwatch.state.base.config_with_segments``).
    discovered_segments: tuple[str, ...] = ()

    @property
    def segments(self) -> tuple[str, ...]:
        """Every segment label value: the configured ones, the discovered ones, ``other`` and
        ``unassigned``."""
        return (tuple(self.segment_policies) + self.discovered_segments
                + (OTHER_SEGMENT, UNASSIGNED_SEGMENT))

    def with_discovered(self, values: Sequence[str]) -> ChurnwatchConfig:
        """This configuration with ``values`` kept as segments too (the configured and reserved
        names are left out: they are labels already).

        >>> ChurnwatchConfig().with_discovered(["fashion", "other"]).segment_label("fashion")
        'fashion'
        """
        found = tuple(v for v in dict.fromkeys(values)
                      if v and v not in self.segment_policies
                      and v not in (OTHER_SEGMENT, UNASSIGNED_SEGMENT))
        return self if found == self.discovered_segments else replace(
            self, discovered_segments=found)

    def policy(self, segment: str | None) -> SegmentPolicy:
        """The policy of a segment, falling back to the defaults."""
        if segment is None:
            return self.default_policy
        return self.segment_policies.get(segment, self.default_policy)

    def segment_label(self, segment: str | None) -> str:
        """The bounded label value for a customer's declared segment."""
        if not segment:
            return UNASSIGNED_SEGMENT
        if segment in self.segment_policies or segment in self.discovered_segments:
            return segment
        return OTHER_SEGMENT


def load_config(path: str | Path | None) -> ChurnwatchConfig:
    """Read and validate a TOML file; ``None`` gives the defaults."""
    if path is None:
        return ChurnwatchConfig()
    source = str(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{source}: configuration file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return parse_config(data, source=source)


_POLICY_KEYS = {"horizon_days", "weights", "tiers", "churn_rate_objective"}


def parse_config(data: Mapping[str, Any], *, source: str) -> ChurnwatchConfig:
    """Validate an already-parsed TOML document."""
    reader = _Reader(source)
    reader.only(data, "", {"scoring", "tiers", "segments", "recency", "windows", "alerts",
                            "value", "state", "input", "metrics", "source", "playbooks",
                            "winback"})
    scoring = reader.table(data, "scoring")
    reader.only(scoring, "scoring", {"horizon_days", "weights", "churn_rate_objective"})
    tiers = reader.table(data, "tiers")
    default = _policy(reader, SegmentPolicy(), scoring, "scoring", tiers, "tiers")

    policies: dict[str, SegmentPolicy] = {}
    segments_table = dict(reader.table(data, "segments"))
    max_segments = reader.integer(segments_table, "segments", "max_segments",
                                  MAX_SEGMENTS, low=0, high=1000)
    segments_table.pop("max_segments", None)
    for name, table in segments_table.items():
        where = f"segments.{name}"
        if name in (OTHER_SEGMENT, UNASSIGNED_SEGMENT):
            raise ConfigError(f"{source}: {where}: '{name}' is reserved")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: {where} must be a table")
        reader.only(table, where, _POLICY_KEYS)
        policies[name] = _policy(reader, default, table, where, reader.table(table, "tiers",
                                 where), f"{where}.tiers")

    rec = reader.table(data, "recency")
    base = RecencyModel()
    recency = RecencyModel(
        default_gap_days=reader.number(rec, "recency", "default_gap_days",
                                       base.default_gap_days, low=0.01),
        default_gap_weight=reader.number(rec, "recency", "default_gap_weight",
                                         base.default_gap_weight, low=0.0),
        dropout_prior_a=reader.number(rec, "recency", "dropout_prior_a",
                                      base.dropout_prior_a, low=0.01),
        dropout_prior_b=reader.number(rec, "recency", "dropout_prior_b",
                                      base.dropout_prior_b, low=0.01),
    )
    reader.only(rec, "recency", set(RecencyModel.__dataclass_fields__))

    d = ChurnwatchConfig()
    win = reader.table(data, "windows")
    alerts = reader.table(data, "alerts")
    value = reader.table(data, "value")
    state = reader.table(data, "state")
    inp = reader.table(data, "input")
    met = reader.table(data, "metrics")
    src = reader.table(data, "source")
    reader.only(win, "windows", {"trend_short_half_life_days", "trend_long_half_life_days",
                                 "engagement_half_life_days", "service_half_life_days"})
    reader.only(alerts, "alerts", {"sudden_drop_points", "sudden_drop_window_days"})
    reader.only(value, "value", {"high_value_tier", "high_value_top_share"})
    reader.only(state, "state", {"shards", "key_prefix", "score_history_length",
                                 "tier_history_days",
                                 "customer_buckets", "transitions_kept",
                                 "transitions_max_age_days", "dead_letters_kept",
                                 "dead_letters_max_age_days"})
    reader.only(inp, "input", {"max_future_seconds", "allowed_lateness_days", "batch_size",
                               "max_amount"})
    reader.only(met, "metrics", {"host", "port"})
    reader.only(src, "source", {"kind", "stream_partitions", "stream_prefix", "kafka_brokers",
                                "kafka_topic"})
    short = reader.number(win, "windows", "trend_short_half_life_days",
                          d.trend_short_half_life_days, low=1.0)
    long = reader.number(win, "windows", "trend_long_half_life_days",
                         d.trend_long_half_life_days, low=1.0)
    if long <= short:
        raise ConfigError(f"{source}: windows.trend_long_half_life_days ({long:g}) must be "
                          f"greater than windows.trend_short_half_life_days ({short:g})")
    shards = reader.integer(state, "state", "shards", d.shards, low=1, high=4096)
    partitions = reader.integer(src, "source", "stream_partitions", d.stream_partitions, low=1,
                                high=4096)
    if shards % partitions:
        raise ConfigError(f"{source}: state.shards ({shards}) must be a multiple of "
                          f"source.stream_partitions ({partitions}) so that every shard reads "
                          "one partition")
    kind = reader.string(src, "source", "kind", d.source)
    if kind not in ("redis", "kafka", "simulator"):
        raise ConfigError(f"{source}: source.kind is {kind!r}; expected redis, kafka or "
                          "simulator")
    max_amount = reader.number(inp, "input", "max_amount", d.max_amount, low=0.0)
    if not math.isfinite(max_amount):
        raise ConfigError(f"{source}: input.max_amount must be a finite number, got "
                          f"{max_amount!r}")
    return ChurnwatchConfig(
        default_policy=default,
        segment_policies=policies,
        recency=recency,
        trend_short_half_life_days=short,
        trend_long_half_life_days=long,
        engagement_half_life_days=reader.number(win, "windows", "engagement_half_life_days",
                                                d.engagement_half_life_days, low=1.0),
        service_half_life_days=reader.number(win, "windows", "service_half_life_days",
                                             d.service_half_life_days, low=1.0),
        sudden_drop_points=reader.number(alerts, "alerts", "sudden_drop_points",
                                         d.sudden_drop_points, low=1.0, high=100.0),
        sudden_drop_window_days=reader.number(alerts, "alerts", "sudden_drop_window_days",
                                              d.sudden_drop_window_days, low=0.0001),
        high_value_tier=reader.string(value, "value", "high_value_tier", d.high_value_tier),
        high_value_top_share=reader.number(value, "value", "high_value_top_share",
                                           d.high_value_top_share, low=0.0, high=1.0),
        shards=shards,
        key_prefix=reader.string(state, "state", "key_prefix", d.key_prefix),
        score_history_length=reader.integer(state, "state", "score_history_length",
                                            d.score_history_length, low=0, high=100),
        tier_history_days=reader.number(state, "state", "tier_history_days",
                                        d.tier_history_days, low=0.0, high=36500.0),
        customer_buckets=reader.integer(state, "state", "customer_buckets", d.customer_buckets,
                                        low=1, high=1 << 20),
        transitions_kept=reader.integer(state, "state", "transitions_kept", d.transitions_kept,
                                        low=1, high=1 << 40),
        transitions_max_age_days=reader.number(state, "state", "transitions_max_age_days",
                                               d.transitions_max_age_days, low=0.0),
        dead_letters_kept=reader.integer(state, "state", "dead_letters_kept",
                                         d.dead_letters_kept, low=1, high=1 << 40),
        dead_letters_max_age_days=reader.number(state, "state", "dead_letters_max_age_days",
                                                d.dead_letters_max_age_days, low=0.0),
        max_future_seconds=reader.number(inp, "input", "max_future_seconds",
                                         d.max_future_seconds, low=0.0),
        allowed_lateness_days=reader.number(inp, "input", "allowed_lateness_days",
                                            d.allowed_lateness_days, low=0.0),
        batch_size=reader.integer(inp, "input", "batch_size", d.batch_size, low=1,
                                  high=1_000_000),
        max_amount=max_amount,
        metrics_host=reader.string(met, "metrics", "host", d.metrics_host),
        metrics_port=reader.integer(met, "metrics", "port", d.metrics_port, low=0, high=65535),
        source=kind,
        stream_partitions=partitions,
        stream_prefix=reader.string(src, "source", "stream_prefix", d.stream_prefix),
        kafka_brokers=reader.string(src, "source", "kafka_brokers", d.kafka_brokers),
        kafka_topic=reader.string(src, "source", "kafka_topic", d.kafka_topic),
        source_file=source,
        max_segments=max_segments,
        **_customer_success(reader, data),
    )


def _customer_success(reader: _Reader, data: Mapping[str, Any]) -> dict[str, Any]:
    """``[playbooks.NAME]`` and ``[winback]`` (:func:`parse_playbooks`, :func:`parse_winback`)."""
    return {"playbooks": parse_playbooks(reader.table(data, "playbooks"), source=reader.source),
            "winback": parse_winback(reader.table(data, "winback"), source=reader.source)}


def _policy(reader: _Reader, base: SegmentPolicy, table: Mapping[str, Any], where: str,
            tiers: Mapping[str, Any], tiers_where: str) -> SegmentPolicy:
    reader.only(tiers, tiers_where, {"healthy", "watch", "at_risk", "hysteresis"})
    weights = dict(base.weights)
    given = reader.table(table, "weights", where)
    reader.only(given, f"{where}.weights", set(COMPONENTS))
    for name in given:
        weights[name] = reader.number(given, f"{where}.weights", name, 0.0, low=0.0)
    if weights["recency"] <= 0:
        raise ConfigError(f"{reader.source}: {where}.weights.recency must be > 0")
    policy = replace(
        base,
        horizon_days=reader.number(table, where, "horizon_days", base.horizon_days, low=1.0),
        horizon_learned=base.horizon_learned and "horizon_days" not in table,
        weights=weights,
        healthy=reader.number(tiers, tiers_where, "healthy", base.healthy, low=0, high=100),
        watch=reader.number(tiers, tiers_where, "watch", base.watch, low=0, high=100),
        at_risk=reader.number(tiers, tiers_where, "at_risk", base.at_risk, low=0, high=100),
        hysteresis=reader.number(tiers, tiers_where, "hysteresis", base.hysteresis, low=0,
                                 high=20),
        churn_rate_objective=reader.number(table, where, "churn_rate_objective",
                                           base.churn_rate_objective, low=0.0, high=1.0),
    )
    if not policy.healthy > policy.watch > policy.at_risk:
        raise ConfigError(f"{reader.source}: {tiers_where}: thresholds must satisfy healthy > "
                          f"watch > at_risk, got {policy.healthy:g}, {policy.watch:g}, "
                          f"{policy.at_risk:g}")
    return policy


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def only(self, table: Mapping[str, Any], where: str, allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                name = f"{where}.{key}" if where else key
                raise ConfigError(f"{self.source}: unknown key {name} (expected one of "
                                  f"{', '.join(sorted(allowed))})")

    def table(self, table: Mapping[str, Any], key: str, where: str = "") -> Mapping[str, Any]:
        value = table.get(key, {})
        if not isinstance(value, Mapping):
            name = f"{where}.{key}" if where else key
            raise ConfigError(f"{self.source}: {name} must be a table")
        return value

    def number(self, table: Mapping[str, Any], where: str, key: str, default: float,
               low: float | None = None, high: float | None = None) -> float:
        if key not in table:
            return float(default)
        value = table[key]
        name = f"{where}.{key}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self.source}: {name} must be a number, got {value!r}")
        if low is not None and value < low:
            raise ConfigError(f"{self.source}: {name} must be >= {low:g}, got {value!r}")
        if high is not None and value > high:
            raise ConfigError(f"{self.source}: {name} must be <= {high:g}, got {value!r}")
        return float(value)

    def integer(self, table: Mapping[str, Any], where: str, key: str, default: int,
                low: int, high: int) -> int:
        if key not in table:
            return default
        value = table[key]
        name = f"{where}.{key}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.source}: {name} must be an integer, got {value!r}")
        if not low <= value <= high:
            raise ConfigError(f"{self.source}: {name} must be within {low}..{high}, got "
                              f"{value!r}")
        return value

    def string(self, table: Mapping[str, Any], where: str, key: str, default: str) -> str:
        if key not in table:
            return default
        value = table[key]
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.source}: {where}.{key} must be a non-empty string, got "
                              f"{value!r}")
        return value


def parse_playbooks(tables: Mapping[str, Any], *, source: str) -> tuple[Playbook, ...]:
    """Validate the ``[playbooks.NAME]`` tables; errors name the key and the file. No tables:
    the defaults. Sorted by ``priority``, then by the order in the file.

    >>> pb = parse_playbooks({"call_vips": {"tiers": ["at_risk"], "value_tiers": ["high"],
    ...                       "action": "Call them", "channel": "phone"}}, source="shop.toml")
    >>> [p.name for p in pb]
    ['call_vips']
    >>> parse_playbooks({"x": {"action": "Call", "channel": "phone", "reasons": ["sad"]}},
    ...                 source="shop.toml")
    Traceback (most recent call last):
    ...
    churnwatch.core.config.ConfigError: shop.toml: playbooks.x.reasons: unknown reason code \
'sad' (expected one of buying_less, never_ordered, no_repeat_order, order_overdue, \
service_problems, unanswered_chat, unanswered_email, unanswered_sms, unanswered_whatsapp)
    """
    if not tables:
        return DEFAULT_PLAYBOOKS
    out: list[tuple[int, int, Playbook]] = []
    allowed = {"action", "channel", "template", "tiers", "segments", "value_tiers", "reasons",
               "priority", "holdout_share"}
    for order, (name, table) in enumerate(tables.items()):
        where = f"playbooks.{name}"

        def fail(key: str, message: str, where: str = where) -> ConfigError:
            return ConfigError(f"{source}: {where}{'.' + key if key else ''}: {message}")

        if not isinstance(table, Mapping):
            raise fail("", "must be a table")
        if not name.replace("_", "").isalnum() or not name.isascii() or len(name) > 40:
            raise fail("", "the name must be letters, digits and '_' (at most 40): it labels "
                       "metrics")
        for key in table:
            if key not in allowed:
                raise fail(key, f"unknown key (expected one of {', '.join(sorted(allowed))})")
        texts: dict[str, str | None] = {}
        for key in ("action", "channel", "template"):
            value = table.get(key)
            if value is None:
                if key != "template":
                    raise fail(key, "is required")
                texts[key] = None
                continue
            if not isinstance(value, str) or not value.strip():
                raise fail(key, f"must be a non-empty string, got {value!r}")
            texts[key] = value
        if texts["channel"] not in ACTION_CHANNELS:
            raise fail("channel", f"unknown channel {texts['channel']!r} (expected one of "
                       f"{', '.join(ACTION_CHANNELS)})")
        if texts["template"] is not None:
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(texts["template"]) if f]
            except ValueError as exc:
                raise fail("template", f"not a valid template: {exc}") from None
            for field_name in fields:
                if field_name not in TEMPLATE_FIELDS:
                    raise fail("template", f"unknown field {{{field_name}}} (expected "
                               f"{', '.join(TEMPLATE_FIELDS)})")

        def names(key: str, known: Sequence[str] | None,
                  table: Mapping[str, Any] = table) -> frozenset[str] | None:
            value = table.get(key)
            if value is None:
                return None
            if not isinstance(value, list) or not value or not all(
                    isinstance(v, str) and v for v in value):
                raise fail(key, f"must be a non-empty list of strings, got {value!r}")
            for v in value:
                if known is not None and v not in known:
                    what = {"tiers": "tier", "value_tiers": "value tier",
                            "reasons": "reason code"}[key]
                    raise fail(key, f"unknown {what} {v!r} (expected one of "
                               f"{', '.join(known)})")
            return frozenset(value)

        tiers = names("tiers", TIER_NAMES)
        priority = table.get("priority", 100)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise fail("priority", f"must be an integer, got {priority!r}")
        share = table.get("holdout_share")
        if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float))
                                  or not 0.0 <= share <= 0.5):
            raise fail("holdout_share", f"must be a number within 0..0.5, got {share!r}")
        playbook = Playbook(
            name=name, action=str(texts["action"]), channel=str(texts["channel"]),
            template=texts["template"],
            tiers=tiers if tiers is not None else Playbook.__dataclass_fields__[
                "tiers"].default,  # type: ignore[arg-type]
            segments=names("segments", None), value_tiers=names("value_tiers", VALUE_TIER_NAMES),
            reasons=names("reasons", REASON_CODES), priority=priority,
            holdout_share=None if share is None else float(share))
        out.append((priority, order, playbook))
    return tuple(p for _, _, p in sorted(out, key=lambda item: (item[0], item[1])))


def parse_winback(table: Mapping[str, Any], *, source: str) -> WinbackPolicy:
    """Validate ``[winback]``: ``holdout_share`` (0..0.5) and ``window_days`` (> 0)."""
    base = WinbackPolicy()
    for key in table:
        if key not in ("holdout_share", "window_days"):
            raise ConfigError(f"{source}: unknown key winback.{key} (expected one of "
                              "holdout_share, window_days)")
    values: dict[str, float] = {}
    for key, low, high in (("holdout_share", 0.0, 0.5), ("window_days", 1.0, 3650.0)):
        value = table.get(key, getattr(base, key))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                low <= value <= high):
            raise ConfigError(f"{source}: winback.{key} must be a number within {low:g}.."
                              f"{high:g}, got {value!r}")
        values[key] = float(value)
    return WinbackPolicy(**values)
