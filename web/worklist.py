"""The customer-success worklist: which customers to call first, and why.

Read-only views over the state store, shared by the HTTP API (served beside ``/metrics`` by
:func:`churnwatch.web.server.start_metrics_server`) and the ``churnwatch top`` and
``churnwatch explain`` commands. The reference is docs/worklist.md.

Every figure is the customer's stored assessment: the score, tier and components computed at
``scored_at``, the customer's last event or the last time the due-time index re-scored them
because their silence was about to change their tier. So the tier is always current; the score
of a silent customer may be a little higher than it would be this instant, never enough to
change the tier.

Urgency, the order of the list (:data:`URGENCY`, computed by
:func:`churnwatch.state.base.urgency_order`, which the urgency index stores): first whom an
agent can still win back, at risk or lately churned, by value at stake times how far the score
fell times how recently they last ordered; then ``watch``, then ``healthy``; churned customers
long gone last; the customer id breaks ties, so that paging is stable.

>>> from churnwatch.core.config import ChurnwatchConfig
>>> q = parse_worklist_query({"tier": ["at_risk"], "limit": ["10"]}, ChurnwatchConfig())
>>> sorted(q.tiers), q.limit, q.offset
([2], 10, 0)
>>> try:
...     parse_worklist_query({"tier": ["lost"], "limit": ["10"]}, ChurnwatchConfig())
... except BadRequest as exc:
...     print(exc.parameter, "|", exc.message)
tier | unknown tier 'lost'; expected healthy, watch, at_risk or churned
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, unquote

from churnwatch.state.base import (
    LONG_GONE_DAYS,
    URGENCY_GROUPS,
    StateStore,
    UrgencySelection,
    config_with_segments,
    shard_of,
    urgency_order,
)

from churnwatch.core.aggregates import (
    CounterKey,
    GaugeKey,
    HighValueAtRisk,
    RecoveryCount,
    TierCustomers,
    TransitionCount,
    merge_shards,
)
from churnwatch.core.config import COMPONENTS, TIERS, ChurnwatchConfig
from churnwatch.core.customer import CustomerState
from churnwatch.core.history import TierChange, reason_words
from churnwatch.core.horizon import describe_within
from churnwatch.core.priors import PopulationPriors
from churnwatch.core.scoring import assess_as_held, reasons, tier_name
from churnwatch.core.signals import MSG_SENT, SENT, answers
from churnwatch.core.winback import (
    reason_codes,
    suggest,
    winback_report,
)

log = logging.getLogger("churnwatch.worklist")

DEFAULT_TIERS = ("at_risk", "churned")
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_OFFSET = 10_000_000
DEFAULT_TRANSITIONS = 100
#: How often the API and pages read the shop's kept segments again.
SEGMENTS_REFRESH_SECONDS = 5.0
#: A customer's stored tier changes read for their page: all of them (the state keeps a year's).
HISTORY_READ = 100_000
#: ``value_tier`` filter values: ``high`` is what ``churnwatch_high_value_at_risk_customers``
#: counts (the configured top value tier, or spend within the configured top share).
VALUE_TIERS = ("high", "standard")
URGENCY = ("savable first: at risk or lately churned, by value at stake x how far the score fell "
           "x how recently they last ordered; then watch, then healthy; churned long gone (no "
           f"order for {LONG_GONE_DAYS:.0f} days when they churned) last")


class BadRequest(ValueError):
    """A query parameter is missing, unknown or out of range; ``parameter`` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


@dataclass(frozen=True)
class WorklistQuery:
    """A validated worklist request."""

    tiers: frozenset[int] = frozenset(TIERS.index(t) for t in DEFAULT_TIERS)
    segments: frozenset[str] | None = None
    value_tier: str | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0


@dataclass(frozen=True)
class WorklistPage:
    """One page of the worklist and how many customers match in all."""

    customers: list[dict[str, Any]]
    total: int
    query: WorklistQuery

    def as_dict(self) -> dict[str, Any]:
        """The page as the API answers it."""
        q = self.query
        end = q.offset + len(self.customers)
        return {
            "customers": self.customers,
            "total": self.total,
            "limit": q.limit,
            "offset": q.offset,
            "next_offset": end if end < self.total else None,
            "order": URGENCY,
        }


# -- parsing ------------------------------------------------------------------------------------


def _single(params: Mapping[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(name, "given more than once; separate several values with commas")
    return values[0]


def _list(text: str, name: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise BadRequest(name, f"empty value in {text!r}")
    return items


def parse_int(text: str | None, name: str, default: int, low: int, high: int) -> int:
    """An integer parameter within ``low..high``."""
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(name, f"must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise BadRequest(name, f"must be within {low}..{high}, got {value}")
    return value


def parse_worklist_query(params: Mapping[str, list[str]], config: ChurnwatchConfig
                         ) -> WorklistQuery:
    """Validate the parameters of ``GET /api/v1/customers`` (as ``parse_qs`` gives them)."""
    allowed = {"tier", "segment", "value_tier", "limit", "offset"}
    for name in params:
        if name not in allowed:
            raise BadRequest(name, f"unknown parameter; expected {', '.join(sorted(allowed))}")
    tiers = frozenset(TIERS.index(t) for t in DEFAULT_TIERS)
    text = _single(params, "tier")
    if text is not None:
        names = _list(text, "tier")
        for name in names:
            if name not in TIERS:
                raise BadRequest("tier", f"unknown tier {name!r}; expected "
                                 f"{', '.join(TIERS[:-1])} or {TIERS[-1]}")
        tiers = frozenset(TIERS.index(n) for n in names)
    segments = None
    text = _single(params, "segment")
    if text is not None:
        names = _list(text, "segment")
        for name in names:
            if name not in config.segments:
                raise BadRequest("segment", f"unknown segment {name!r}; expected one of "
                                 f"{', '.join(config.segments)}")
        segments = frozenset(names)
    value_tier = _single(params, "value_tier")
    if value_tier is not None and value_tier not in VALUE_TIERS:
        raise BadRequest("value_tier", f"unknown value tier {value_tier!r}; expected "
                         f"{' or '.join(VALUE_TIERS)}")
    limit = parse_int(_single(params, "limit"), "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = parse_int(_single(params, "offset"), "offset", 0, 0, MAX_OFFSET)
    return WorklistQuery(tiers, segments, value_tier, limit, offset)


# -- views --------------------------------------------------------------------------------------


def iso(ts: float | None) -> str | None:
    """RFC 3339 in UTC, whole seconds (``None`` stays ``None``).

    >>> iso(0)
    '1970-01-01T00:00:00Z'
    """
    if ts is None:
        return None
    moment = datetime.fromtimestamp(int(ts), tz=timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def urgency_key(customer_id: str, state: CustomerState) -> tuple[int, int, str]:
    """Sort key of the worklist: smaller is more urgent (see the module docstring); the order of
    the urgency index."""
    group, rank = urgency_order(state) or (len(URGENCY_GROUPS), 0)
    return group, rank, customer_id


def customer_summary(customer_id: str, state: CustomerState, config: ChurnwatchConfig
                     ) -> dict[str, Any]:
    """One line of the worklist."""
    return {
        "customer_id": customer_id,
        "segment": config.segment_label(state.segment),
        "tier": tier_name(state.tier),
        "health_score": None if state.score is None else round(state.score, 1),
        "high_value": bool(state.high_value),
        "value_tier": state.declared_value_tier,
        "tier_since": iso(state.tier_since),
        "scored_at": iso(state.scored_at),
        "last_event": iso(state.last_event_ts),
        "last_order": iso(state.purchases.last_order),
        "orders": state.purchases.orders,
        "spend": round(state.purchases.spend, 2),
    }


def matches(state: CustomerState, query: WorklistQuery, config: ChurnwatchConfig) -> bool:
    """Whether a customer belongs on the worklist ``query`` asks for."""
    if state.tier not in query.tiers:
        return False
    if query.segments is not None and config.segment_label(state.segment) not in query.segments:
        return False
    if query.value_tier is not None and state.high_value != (query.value_tier == "high"):
        return False
    return True


def worklist(customers: Iterable[tuple[str, CustomerState]], config: ChurnwatchConfig,
             query: WorklistQuery) -> WorklistPage:
    """The page of the worklist ``query`` asks for, from every customer (one pass, keeping only
    the ``offset + limit`` most urgent in memory)."""
    total = 0
    wanted = query.offset + query.limit

    def selected() -> Iterable[tuple[tuple[int, int, str], str, CustomerState]]:
        nonlocal total
        for cid, state in customers:
            if matches(state, query, config):
                total += 1
                yield urgency_key(cid, state), cid, state

    chosen = heapq.nsmallest(wanted, selected(), key=lambda item: item[0])
    page = chosen[query.offset:wanted]
    return WorklistPage([customer_summary(cid, state, config) for _, cid, state in page], total,
                        query)


def score_history(state: CustomerState, transitions: list[dict[str, object]]
                  ) -> list[dict[str, Any]]:
    """The score at each tier change (from the customer's stored transitions, newest first),
    then the current score, oldest first."""
    points: list[dict[str, Any]] = [
        {"at": iso(float(str(t["at"]))), "health_score": t.get("new_score"),
         "tier": t.get("to")} for t in reversed(transitions)]
    if state.score is not None:
        current: dict[str, Any] = {"at": iso(state.scored_at),
                                   "health_score": round(state.score, 1),
                                   "tier": tier_name(state.tier)}
        if not points or points[-1] != current:
            points.append(current)
    return points


def change_of(record: Mapping[str, Any]) -> TierChange:
    """A history record (:func:`churnwatch.state.base.history_records`) as the tier change its
    words are rebuilt from."""
    return TierChange(float(record["at"]), str(record["from"]), str(record["to"]),
                      record.get("old_score"), float(record["new_score"]),
                      str(record.get("cause")), record.get("chance"),
                      tuple((str(code[0]), tuple(code[1:]))
                            for code in record.get("reason_codes") or ()))


def transition_view(record: Mapping[str, object]) -> dict[str, Any]:
    """A stored transition record with its time as RFC 3339."""
    view = dict(record)
    at = view.get("at")
    if isinstance(at, (int, float, str)) and str(at):
        view["at"] = iso(float(at))
    return view


def customer_detail(store: StateStore, config: ChurnwatchConfig, customer_id: str
                    ) -> dict[str, Any] | None:
    """Everything about one customer a CS agent needs; ``None`` if the store does not know
    them. Reasons are computed at ``scored_at`` with the shard's current priors."""
    state = store.customer(customer_id)
    if state is None:
        return None
    detail = customer_summary(customer_id, state, config)
    detail["components"] = {name: (state.components[i] if i < len(state.components)
                                   and state.components[i] >= 0 else None)
                            for i, name in enumerate(COMPONENTS)}
    detail["next_review_at"] = iso(state.next_review_at)
    detail["engagement"] = engagement_view(state)
    detail["first_seen"] = iso(state.first_seen)
    priors = priors_of(store, customer_id, config)
    if state.score is not None:
        assessment = assess_as_held(state, state.scored_at, config, priors)
        detail["return_probability"] = round(assessment.return_probability, 4)
        detail["horizon_days"] = assessment.horizon_days
        detail["horizon"] = describe_within(assessment.horizon_days)
        detail["reasons"] = reasons(state, assessment, state.scored_at, config, priors)
    else:
        detail["return_probability"] = None
        detail["horizon_days"] = detail["horizon"] = None
        detail["reasons"] = []
    detail.update(customer_success(customer_id, state, config, priors))
    history = store.customer_transitions(customer_id, HISTORY_READ)
    horizon = config.policy(state.segment).horizon_days
    for record in history:
        if not record.get("reasons") and record.get("chance") is not None:
            record["reasons"] = reason_words(change_of(record), horizon)
    detail["transitions"] = [transition_view(t) for t in history]
    detail["score_history"] = score_history(state, history)
    return detail


# -- from the urgency index, with suggestions --------------------------------------------------


def priors_of(store: StateStore, customer_id: str, config: ChurnwatchConfig) -> PopulationPriors:
    """The learned priors of a customer's shard."""
    return store.load_shard(shard_of(customer_id, config.shards)).priors


def holdout_action(playbook: str) -> str:
    """What a hold-out customer's next action reads, everywhere it is shown (pages, CLI, API):
    never the playbook's name alone, which reads like an instruction.

    >>> holdout_action("personal_call_high_value")
    'no action: hold-out group of personal_call_high_value'
    """
    return f"no action: hold-out group of {playbook}"


def customer_success(customer_id: str, state: CustomerState, config: ChurnwatchConfig,
                     priors: PopulationPriors) -> dict[str, Any]:
    """The main reason, the reason codes, the suggested next action (``None`` for a customer
    in a hold-out, whose suggestion is withheld: then ``holdout_playbook`` names the playbook
    and ``next_action`` says there is none) and the interventions so far, as of the
    customer's last scoring."""
    if state.score is None:
        return {"main_reason": None, "reason_codes": [], "suggestion": None,
                "holdout_playbook": None, "next_action": None, "interventions": []}
    at = state.scored_at
    assessment = assess_as_held(state, at, config, priors)
    found = suggest(customer_id, state, assessment, at, config)
    outreach = state.outreach or {}
    held = found is not None and found.holdout
    return {
        "main_reason": (reasons(state, assessment, at, config, priors) or [None])[0],
        "reason_codes": list(reason_codes(state, assessment, at, config)),
        "suggestion": None if found is None or held else found.as_dict(),
        "holdout_playbook": found.playbook if found is not None and held else None,
        "next_action": (None if found is None else holdout_action(found.playbook) if held
                        else found.action),
        "interventions": [{"at": iso(ts), "channel": channel, "playbook": playbook}
                          for ts, channel, playbook in reversed(outreach.get("log", []))],
        "assigned_playbook": outreach.get("playbook"),
    }


def engagement_view(state: CustomerState) -> list[dict[str, Any]]:
    """Per channel: recent (decayed) messages and campaigns sent, and answers to them."""
    out = []
    for channel, row in sorted(state.engagement.channels.items()):
        out.append({"channel": channel, "sent": round(row[SENT] + row[MSG_SENT], 1),
                    "answers": round(answers(row), 1)})
    return out


def selection_of(query: WorklistQuery, config: ChurnwatchConfig) -> UrgencySelection:
    """The urgency-index selection of a worklist query."""
    segments = query.segments
    return UrgencySelection(
        query.tiers,
        None if segments is None else (lambda raw: config.segment_label(raw) in segments),
        query.value_tier)


def worklist_page(store: StateStore, config: ChurnwatchConfig, query: WorklistQuery
                  ) -> WorklistPage:
    """The page of the worklist ``query`` asks for, from the urgency index: a few sorted-set
    ranges and one read of the page's customers, whatever the number of customers."""
    rows, total = store.urgency_page(selection_of(query, config), query.offset, query.limit)
    priors: dict[int, PopulationPriors] = {}
    out = []
    for cid, state in rows:
        shard = shard_of(cid, config.shards)
        if shard not in priors:
            priors[shard] = store.load_shard(shard).priors
        row = customer_summary(cid, state, config)
        row.update(customer_success(cid, state, config, priors[shard]))
        out.append(row)
    return WorklistPage(out, total, query)


def segments_overview(store: StateStore, config: ChurnwatchConfig) -> dict[str, Any]:
    """Per segment: customers per tier, the churned share, customers who turned churned and who
    recovered (since the state began), high-value customers at risk; and win-back per
    playbook. From the shards' aggregates: one read, whatever the number of customers."""
    shards = store.shard_states()
    # A segment no longer configured counts as ``other``, as in the metrics.
    gauges = merge_shards((shard.gauges for shard in shards), config.segments)
    counters = merge_shards((shard.counters for shard in shards), config.segments)

    def g(key: GaugeKey) -> int:
        return round(gauges.get(key, 0.0))

    def c(key: CounterKey) -> int:
        return round(counters.get(key, 0.0))

    segments = []
    for segment in config.segments:
        tiers = {tier: g(TierCustomers(segment, tier)) for tier in TIERS}
        customers = sum(tiers.values())
        segments.append({
            "segment": segment,
            "customers": customers,
            "tiers": tiers,
            "churned_share": tiers["churned"] / customers if customers else None,
            "turned_churned": sum(c(TransitionCount(segment, old, "churned"))
                                  for old in TIERS if old != "churned"),
            "recoveries": sum(c(RecoveryCount(segment, old)) for old in ("at_risk",
                                                                          "churned")),
            "high_value_at_risk": g(HighValueAtRisk(segment)),
        })
    return {"segments": segments, "winback": winback_report(shards, config),
            "window_days": config.winback.window_days,
            "holdout_share": config.winback.holdout_share}


# -- HTTP API -----------------------------------------------------------------------------------


class WorklistAPI:
    """The JSON API, independent of the HTTP server: ``handle(path, query) -> (status, body)``.

    ``store_factory`` is called once, at the first request; its store is shared by the
    server's request threads (redis-py clients are thread-safe).
    """

    def __init__(self, config: ChurnwatchConfig, store_factory: Callable[[], StateStore]
                 ) -> None:
        self._config = self._current = config
        self._config_read_at = -SEGMENTS_REFRESH_SECONDS
        self._factory = store_factory
        self._store: StateStore | None = None
        self._lock = threading.Lock()

    @property
    def config(self) -> ChurnwatchConfig:
        """The configuration with the shop's own segments as the store has kept them, read
        again at most every :data:`SEGMENTS_REFRESH_SECONDS`."""
        now = time.monotonic()
        if now - self._config_read_at >= SEGMENTS_REFRESH_SECONDS:
            self._current = config_with_segments(self.store, self._config)
            self._config_read_at = now
        return self._current

    @property
    def store(self) -> StateStore:
        """The store, made at first use."""
        with self._lock:
            if self._store is None:
                self._store = self._factory()
            return self._store

    def close(self) -> None:
        """Close the store if one was made."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def handle(self, path: str, query_string: str) -> tuple[int, Any]:
        """Answer ``GET path?query_string``."""
        try:
            params = parse_qs(query_string, keep_blank_values=True, strict_parsing=False)
            if path == "/healthz":
                return self._healthz()
            if path in ("/api/v1/customers", "/api/v1/customers/"):
                query = parse_worklist_query(params, self.config)
                return 200, worklist_page(self.store, self.config, query).as_dict()
            if path.startswith("/api/v1/customers/"):
                _no_params(params)
                customer_id = unquote(path[len("/api/v1/customers/"):])
                detail = customer_detail(self.store, self.config, customer_id)
                if detail is None:
                    return 404, {"error": f"unknown customer {customer_id!r}",
                                 "parameter": "customer_id"}
                return 200, detail
            if path == "/api/v1/segments":
                _no_params(params)
                return 200, segments_overview(self.store, self.config)
            if path == "/api/v1/winback":
                _no_params(params)
                return 200, {"playbooks": winback_report(self.store.shard_states(), self.config),
                             "window_days": self.config.winback.window_days,
                             "holdout_share": self.config.winback.holdout_share}
            if path == "/api/v1/transitions":
                for name in params:
                    if name != "limit":
                        raise BadRequest(name, "unknown parameter; expected limit")
                limit = parse_int(_single(params, "limit"), "limit", DEFAULT_TRANSITIONS, 1,
                                  MAX_LIMIT)
                records = self.store.recent_transitions(limit)
                return 200, {"transitions": [transition_view(r) for r in records]}
            return 404, {"error": f"no such endpoint: {path}"}
        except BadRequest as exc:
            return 400, {"error": exc.message, "parameter": exc.parameter}
        except Exception as exc:  # noqa: BLE001 - Redis down, or a bug: answer, keep serving
            if is_redis_outage(exc):
                log.warning("worklist API: Redis unavailable: %s", exc)
                return 503, {"error": "the state store (Redis) is unavailable, retry later"}
            log.exception("worklist API: %s failed", path)
            return 500, {"error": "internal error, see the churnwatch log"}

    def _healthz(self) -> tuple[int, Any]:
        """Liveness: the server answers. Redis's state is reported, not required, since the
        dataflow rides out an outage by retrying: ``ok``, ``unreachable`` or ``login refused``
        (a wrong password: no retry cures that). Never the URL, which may hold a password."""
        from churnwatch.state.connection import is_authentication_error

        client = getattr(self.store, "client", None)
        redis_state = "unknown"
        if client is not None:
            try:
                client.ping()
                redis_state = "ok"
            except Exception as exc:  # noqa: BLE001
                redis_state = "login refused" if is_authentication_error(exc) else "unreachable"
        return 200, {"status": "ok", "redis": redis_state}


def _no_params(params: Mapping[str, list[str]]) -> None:
    for name in params:
        raise BadRequest(name, "unknown parameter; this endpoint takes none")


def is_redis_outage(exc: BaseException) -> bool:
    """Whether a failure is Redis being unreachable (answered 503, not 500)."""
    try:
        import redis
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, redis.RedisError)
