"""The business metrics: customers per tier, score distribution, transitions, recoveries,
sudden drops and win-back, read from the shards' aggregates in the store at scrape time (one
read), so every process that serves ``/metrics`` reports the same, complete values whatever
shards it owns (docs/metrics.md).

A ``prometheus_client`` custom collector: the server (``churnwatch.web.server``) registers one
on its registry; tests register one on a fresh ``CollectorRegistry()``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator

from churnwatch.metrics.pipeline import PipelineMetrics
from churnwatch.state.base import StateStore, config_with_segments
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from churnwatch.core.aggregates import (
    CounterKey,
    GaugeKey,
    RecoveryCount,
    SegmentKeys,
    SuddenDropCount,
    TransitionCount,
    merge_shards,
)
from churnwatch.core.config import COMPONENTS, TIERS, ChurnwatchConfig
from churnwatch.core.records import ShardState
from churnwatch.core.winback import winback_report

log = logging.getLogger("churnwatch.metrics")

#: Tiers a customer can recover from (back to ``healthy``).
RECOVERABLE_TIERS = ("at_risk", "churned")


#: How long a scrape keeps retrying Redis before it gives up and leaves the business families
#: out (a scrape must answer within Prometheus's timeout).
SCRAPE_MAX_WAIT_SECONDS = 1.0


class BusinessCollector:
    """Customer metrics read from the shards' aggregates in Redis at every scrape.

    ``store`` is used as given (a factory passed in its place is taken as ``store_factory``);
    ``store_factory`` is called once, at the first scrape, and the store it returns is this
    collector's own: its retries are bounded by ``max_wait`` seconds and reported to
    ``observer`` as operation ``scrape``, so a scrape while Redis is down returns quickly.
    Then the business families are left out of that scrape and the rest of ``/metrics`` is
    served as usual: Prometheus marks the business series stale (a gap in the dashboards) while
    ``churnwatch_redis_errors_total{operation="scrape"}`` and the platform alerts tell why. A
    failure the store does not count itself is counted here.
    """

    def __init__(self, store: StateStore | Callable[[], StateStore] | None = None,
                 config: ChurnwatchConfig | None = None,
                 *, store_factory: Callable[[], StateStore] | None = None,
                 observer: PipelineMetrics | None = None,
                 max_wait: float = SCRAPE_MAX_WAIT_SECONDS) -> None:
        if store is not None and store_factory is None and not hasattr(store, "shard_states"):
            store, store_factory = None, store  # given a factory positionally
        if (store is None) == (store_factory is None):
            raise ValueError("BusinessCollector needs exactly one of store or store_factory")
        self.config = config or ChurnwatchConfig()
        self.observer = observer
        self.max_wait = max_wait
        self._store = store
        self._factory = store_factory
        self._lock = threading.Lock()

    def _get_store(self) -> StateStore:
        with self._lock:
            if self._store is None:
                assert self._factory is not None
                self._store = own_store(self._factory, self.observer, self.max_wait)
            return self._store

    def close(self) -> None:
        """Close the store if this collector made it."""
        with self._lock:
            if self._factory is not None and self._store is not None:
                self._store.close()
                self._store = None

    def describe(self) -> Iterable[Metric]:
        """The families' names, for the registry's duplicate check, without reading Redis."""
        return list(self._families(None, None))

    def collect(self) -> Iterable[Metric]:
        """Called by the registry at every scrape, in the scrape's thread."""
        try:
            store = self._get_store()
            shards = store.shard_states()
            # The shop's own segments kept so far are labels too (bounded by the store).
            config = config_with_segments(store, self.config)
            memory_of = getattr(store, "memory_bytes", None)
            memory = memory_of() if memory_of is not None else None
        except Exception as exc:  # noqa: BLE001 - a scrape must survive anything Redis does
            log.warning("scrape: cannot read the shard aggregates from Redis: %s", exc)
            if self.observer is not None and not _counted_by_store(exc):
                self.observer.error("scrape", exc)
            return []
        return list(self._families(shards, memory, config))

    def _families(self, shards: list[ShardState] | None, memory: int | None,
                  config: ChurnwatchConfig | None = None) -> Iterator[Metric]:
        config = config or self.config
        segments = config.segments
        # A segment no longer configured (the configuration changed since the aggregate was
        # written) counts as ``other``, so labels stay bounded.
        gauges = merge_shards((shard.gauges for shard in shards or ()), segments)
        counters = merge_shards((shard.counters for shard in shards or ()), segments)

        def g(key: GaugeKey) -> float:
            return gauges.get(key, 0.0)

        def c(key: CounterKey) -> float:
            return counters.get(key, 0.0)

        customers = GaugeMetricFamily(
            "churnwatch_customers", "Customers currently in each tier.",
            labels=["segment", "tier"])
        bands = GaugeMetricFamily(
            "churnwatch_score_band_customers",
            "Customers whose current health score lies in the band (lower bound inclusive).",
            labels=["segment", "band"])
        mean = GaugeMetricFamily(
            "churnwatch_health_score_mean",
            "Mean current health score of the segment's customers (absent when it has none).",
            labels=["segment"])
        components = GaugeMetricFamily(
            "churnwatch_health_component_mean",
            "Mean of each score component (0..100) over the customers where it has data.",
            labels=["segment", "component"])
        transitions = CounterMetricFamily(
            "churnwatch_tier_transitions", "Tier changes of customers.",
            labels=["segment", "from_tier", "to_tier"])
        drops = CounterMetricFamily(
            "churnwatch_sudden_drops",
            "Customers whose score fell by more than [alerts] sudden_drop_points within "
            "sudden_drop_window_days.", labels=["segment"])
        recoveries = CounterMetricFamily(
            "churnwatch_recoveries", "Customers back to healthy from at_risk or churned.",
            labels=["segment", "from_tier"])
        high_value = GaugeMetricFamily(
            "churnwatch_high_value_at_risk_customers",
            "Customers of the top value tier now in at_risk or churned.", labels=["segment"])
        objective = GaugeMetricFamily(
            "churnwatch_churn_rate_objective_ratio",
            "Configured objective for the share of active customers turning churned per 30 "
            "days.", labels=["segment"])
        state_customers = GaugeMetricFamily(
            "churnwatch_state_customers", "Customers held in the Redis state.")
        redis_memory = GaugeMetricFamily(
            "churnwatch_redis_memory_bytes", "Redis used_memory.")
        winback = self._winback_families(shards)
        if shards is None:  # describe()
            yield from (customers, bands, mean, components, transitions, drops, recoveries,
                        high_value, objective, state_customers, redis_memory, *winback)
            return

        total = 0.0
        for segment in segments:
            keys = SegmentKeys(segment)
            for tier, key in zip(TIERS, keys.tiers, strict=True):
                customers.add_metric([segment, tier], round(g(key)))
            for key in keys.bands:
                bands.add_metric([segment, key.band], round(g(key)))
            scored = round(g(keys.scored))
            total += scored
            if scored > 0:
                mean.add_metric([segment], g(keys.score_sum) / scored)
            for name, count, value in zip(COMPONENTS, keys.component_counts,
                                          keys.component_sums, strict=True):
                n = round(g(count))
                if n > 0:
                    components.add_metric([segment, name], g(value) / n)
            for old in TIERS:
                for new in TIERS:
                    if old != new:
                        transitions.add_metric([segment, old, new],
                                               c(TransitionCount(segment, old, new)))
            drops.add_metric([segment], c(SuddenDropCount(segment)))
            for old in RECOVERABLE_TIERS:
                recoveries.add_metric([segment, old], c(RecoveryCount(segment, old)))
            high_value.add_metric([segment], round(g(keys.high_value_at_risk)))
            objective.add_metric([segment], config.policy(segment).churn_rate_objective)
        state_customers.add_metric([], total)
        yield from (customers, bands, mean, components, transitions, drops, recoveries,
                    high_value, objective, state_customers, *winback)
        if memory is not None:
            redis_memory.add_metric([], float(memory))
            yield redis_memory


    def _winback_families(self, shards: list[ShardState] | None) -> list[Metric]:
        """Win-back per playbook and group (``treated``, ``holdout``): labels bounded by the
        configured playbooks (docs/metrics.md)."""
        assigned = CounterMetricFamily(
            "churnwatch_winback_assigned", "Customers a playbook was assigned to, per group "
            "(treated: suggestion shown; holdout: withheld, the control group).",
            labels=["playbook", "group"])
        contacted = CounterMetricFamily(
            "churnwatch_winback_contacted", "Assigned customers with an intervention event "
            "after the assignment.", labels=["playbook", "group"])
        recovered = CounterMetricFamily(
            "churnwatch_winback_recovered", "Assigned customers who ordered again or were back "
            "to healthy within [winback] window_days.", labels=["playbook", "group"])
        rate = GaugeMetricFamily(
            "churnwatch_winback_recovery_ratio", "Recovered over assigned customers, per "
            "playbook and group (absent while a group is empty).", labels=["playbook", "group"])
        uplift = GaugeMetricFamily(
            "churnwatch_winback_uplift_ratio", "Treated minus hold-out recovery rate, with the "
            "bounds of Newcombe's 95% interval (absent while a group is empty).",
            labels=["playbook", "bound"])
        families: list[Metric] = [assigned, contacted, recovered, rate, uplift]
        if shards is None:
            return families
        for entry in winback_report(shards, self.config):
            name = entry["playbook"]
            for group in ("treated", "holdout"):
                numbers = entry[group]
                assigned.add_metric([name, group], numbers["assigned"])
                contacted.add_metric([name, group], numbers["contacted"])
                recovered.add_metric([name, group], numbers["recovered"])
                if numbers["recovery_rate"] is not None:
                    rate.add_metric([name, group], numbers["recovery_rate"])
            if entry["uplift"] is not None:
                low, high = entry["uplift"]["interval"]
                uplift.add_metric([name, "estimate"], entry["uplift"]["difference"])
                uplift.add_metric([name, "low"], low)
                uplift.add_metric([name, "high"], high)
        return families


def _counted_by_store(exc: BaseException) -> bool:
    """Whether the Redis store already reported this failure to its observer (it does for the
    connection errors it retries)."""
    try:
        import redis
    except ImportError:  # pragma: no cover - redis is a dependency
        return False
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
                            redis.ReadOnlyError))


def own_store(factory: Callable[[], StateStore], observer: PipelineMetrics | None,
              max_wait: float | None) -> StateStore:
    """A store from ``factory`` for the server's own use: its retries bounded by ``max_wait``
    seconds (a request must not hang while Redis is down) and reported to ``observer``."""
    store = factory()
    if hasattr(store, "max_wait"):
        store.max_wait = max_wait
    if observer is not None and hasattr(store, "observer"):
        store.observer = observer
    return store
