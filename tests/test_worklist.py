"""The customer-success worklist API, served by a real metrics server over a real Redis holding a
replayed shop: filters, urgency order, paging, and the 400/401/404/503 answers."""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from churnwatch.metrics.pipeline import PipelineMetrics
from churnwatch.state.base import LONG_GONE_DAYS, RECENCY_DAYS
from churnwatch.state.redis_store import RedisStore
from churnwatch.web.server import start_metrics_server
from prometheus_client import CollectorRegistry
from redis_server import redis_server  # noqa: F401
from replayed_shop import END, ODD_ID, Shop, replayed_shop  # noqa: F401

from churnwatch.core.config import TIERS, ChurnwatchConfig
from churnwatch.core.customer import DAY, CustomerState
from churnwatch.core.playbooks import DEFAULT_PLAYBOOKS

TOKEN = "worklist-test-token"


@pytest.fixture(scope="module")
def api(replayed_shop: Shop) -> Iterator[str]:  # noqa: F811
    config = replayed_shop.config
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry, process_collector=False)

    def factory() -> RedisStore:
        return RedisStore(replayed_shop.url, config.shards, config.key_prefix)

    server = start_metrics_server(None, 0, config, factory, registry, metrics, api_token=TOKEN)
    try:
        yield server.url
    finally:
        server.shutdown()


def get(url: str, token: str | None = TOKEN, method: str = "GET") -> tuple[int, dict]:
    request = urllib.request.Request(url, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def everyone(shop: Shop) -> dict[str, object]:
    store = shop.store()
    try:
        return dict(store.iter_customers())
    finally:
        store.close()


def reference_order(shop: Shop, tiers: set[str]) -> list[str]:
    """The urgency order, computed the slow, obvious way: the priority at the end of the data
    (value at stake x slip x exp(-silence / RECENCY_DAYS)), savable before watch before healthy
    before the long gone."""
    config = shop.config
    now = END

    def key(item: tuple[str, CustomerState]) -> tuple[int, float, str]:
        cid, s = item
        assert s.score is not None
        last = s.purchases.last_order if s.purchases.last_order is not None else s.first_seen
        gone = TIERS[s.tier] == "churned" and s.scored_at - last > LONG_GONE_DAYS * DAY
        group = 3 if gone else {"at_risk": 0, "churned": 0, "watch": 1, "healthy": 2}[
            TIERS[s.tier]]
        priority = (max(s.purchases.spend - s.purchases.refunds, 1.0)
                    * max(100.0 - s.score, 1.0) / 100.0
                    * math.exp(-(now - last) / (RECENCY_DAYS * DAY)))
        return group, -priority, cid

    rows = [(cid, s) for cid, s in everyone(shop).items() if TIERS[s.tier] in tiers]
    assert config.segments
    return [cid for cid, _ in sorted(rows, key=key)]


# -- the list -----------------------------------------------------------------------------------


def test_default_worklist_is_at_risk_and_churned_customers_most_urgent_first(
        api: str, replayed_shop: Shop) -> None:  # noqa: F811
    status, page = get(f"{api}/api/v1/customers?limit=1000")
    assert status == 200
    expected = reference_order(replayed_shop, {"at_risk", "churned"})
    assert len(expected) >= 10
    assert [c["customer_id"] for c in page["customers"]] == expected
    assert page["total"] == len(expected) and page["next_offset"] is None
    assert {c["tier"] for c in page["customers"]} <= {"at_risk", "churned"}
    assert page["order"].startswith("savable first")


def test_high_value_silent_customers_come_before_a_standard_one_in_the_same_state(
        api: str) -> None:
    status, page = get(f"{api}/api/v1/customers?segment=fashion&limit=1000")
    assert status == 200
    ids = [c["customer_id"] for c in page["customers"]]
    assert ODD_ID in ids and "vip-2" in ids and "plain-3" in ids
    assert max(ids.index(ODD_ID), ids.index("vip-2")) < ids.index("plain-3")
    odd = page["customers"][ids.index(ODD_ID)]
    assert odd["high_value"] is True and odd["value_tier"] == "high"
    assert odd["segment"] == "fashion" and odd["orders"] == 3


def test_filters_by_tier_segment_and_value_tier(api: str, replayed_shop: Shop) -> None:  # noqa: F811
    customers = everyone(replayed_shop)
    config = replayed_shop.config
    status, page = get(f"{api}/api/v1/customers?tier=healthy,watch&limit=1000")
    assert status == 200
    assert {c["tier"] for c in page["customers"]} == {"healthy", "watch"}
    assert page["total"] == sum(1 for s in customers.values() if s.tier in (0, 1))

    # electronics is the shop's own segment, found in its events, not configured.
    status, page = get(f"{api}/api/v1/customers?tier=healthy,watch,at_risk,churned"
                       f"&segment=skincare,electronics&limit=1000")
    assert status == 200
    assert {c["segment"] for c in page["customers"]} == {"skincare", "electronics"}
    assert page["total"] == sum(1 for s in customers.values()
                                if s.segment in ("skincare", "electronics"))
    assert config.segment_label("electronics") == "other"  # the configuration alone

    all_tiers = "tier=healthy,watch,at_risk,churned"
    _, high = get(f"{api}/api/v1/customers?{all_tiers}&value_tier=high&limit=1000")
    _, standard = get(f"{api}/api/v1/customers?{all_tiers}&value_tier=standard&limit=1000")
    assert high["total"] >= 2 and all(c["high_value"] for c in high["customers"])
    assert not any(c["high_value"] for c in standard["customers"])
    assert high["total"] + standard["total"] == len(customers)


def test_pages_concatenate_to_the_whole_list(api: str) -> None:
    _, whole = get(f"{api}/api/v1/customers?tier=healthy,watch,at_risk,churned&limit=1000")
    ids: list[str] = []
    offset: int | None = 0
    pages = 0
    while offset is not None:
        status, page = get(f"{api}/api/v1/customers?tier=healthy,watch,at_risk,churned"
                           f"&limit=7&offset={offset}")
        assert status == 200 and page["total"] == whole["total"]
        assert len(page["customers"]) <= 7
        ids += [c["customer_id"] for c in page["customers"]]
        offset = page["next_offset"]
        pages += 1
    assert ids == [c["customer_id"] for c in whole["customers"]]
    assert pages == -(-whole["total"] // 7)
    status, beyond = get(f"{api}/api/v1/customers?offset={whole['total'] + 5}")
    assert status == 200 and beyond["customers"] == [] and beyond["next_offset"] is None


@pytest.mark.parametrize(("query", "parameter"), [
    ("tier=lost", "tier"),
    ("tier=at_risk,", "tier"),
    ("tier=at_risk&tier=churned", "tier"),
    ("segment=garden", "segment"),
    ("value_tier=gold", "value_tier"),
    ("limit=0", "limit"),
    ("limit=1001", "limit"),
    ("limit=ten", "limit"),
    ("offset=-1", "offset"),
    ("offset=1.5", "offset"),
    ("sort=score", "sort"),
])
def test_bad_list_requests_answer_400_naming_the_parameter(api: str, query: str,
                                                           parameter: str) -> None:
    status, body = get(f"{api}/api/v1/customers?{query}")
    assert status == 400
    assert body["parameter"] == parameter
    assert body["error"]


# -- one customer, transitions -------------------------------------------------------------------


def test_customer_detail_explains_score_and_history(api: str) -> None:
    status, detail = get(f"{api}/api/v1/customers/{quote(ODD_ID, safe='')}")
    assert status == 200
    assert detail["customer_id"] == ODD_ID
    assert detail["tier"] in ("at_risk", "churned")
    assert set(detail["components"]) == {"recency", "trend", "engagement", "service"}
    assert detail["components"]["recency"] is not None
    assert detail["reasons"] and "no order for" in detail["reasons"][0]
    assert 0 <= detail["return_probability"] < 0.5
    transitions = detail["transitions"]
    assert transitions and transitions[0]["to"] == detail["tier"]
    assert [t["at"] for t in transitions] == sorted((t["at"] for t in transitions),
                                                    reverse=True)
    history = detail["score_history"]
    assert [p["at"] for p in history] == sorted(p["at"] for p in history)
    assert history[-1]["health_score"] == detail["health_score"]
    assert history[-1]["tier"] == detail["tier"]


def test_rows_and_customers_carry_reason_codes_and_a_suggestion(api: str) -> None:
    status, page = get(f"{api}/api/v1/customers?limit=1000")
    assert status == 200
    playbooks = {p.name for p in DEFAULT_PLAYBOOKS}
    for row in page["customers"]:
        assert row["main_reason"] and isinstance(row["reason_codes"], list)
        if row["suggestion"] is None:
            # No suggestion only for a hold-out (every at-risk or churned customer matches
            # one of the defaults).
            assert row["holdout_playbook"] in playbooks, row
        else:
            assert row["suggestion"]["playbook"] in playbooks
            assert row["suggestion"]["action"] and row["suggestion"]["channel"]
    status, detail = get(f"{api}/api/v1/customers/{quote(ODD_ID, safe='')}")
    assert status == 200 and "suggestion" in detail and "interventions" in detail


def test_segments_and_winback_endpoints_add_up(api: str, replayed_shop: Shop) -> None:  # noqa: F811
    status, overview = get(f"{api}/api/v1/segments")
    assert status == 200
    store = replayed_shop.store()
    try:
        everyone = list(store.iter_customers())
    finally:
        store.close()
    assert sum(s["customers"] for s in overview["segments"]) == len(everyone)
    by_name = {s["segment"]: s for s in overview["segments"]}
    # The configured segments, the one the shop's events declare besides, other, unassigned.
    assert set(by_name) == set(replayed_shop.config.segments) | {"electronics"}
    fashion_at_risk = sum(1 for _, s in everyone if s.segment == "fashion" and s.tier == 2)
    assert by_name["fashion"]["tiers"]["at_risk"] == fashion_at_risk
    status, winback = get(f"{api}/api/v1/winback")
    assert status == 200
    assert [w["playbook"] for w in winback["playbooks"]] == [p.name for p in DEFAULT_PLAYBOOKS]
    assigned = sum(w["treated"]["assigned"] + w["holdout"]["assigned"]
                   for w in winback["playbooks"])
    assert assigned > 0
    assert overview["winback"] == winback["playbooks"]


def test_unknown_customer_is_404_and_unknown_endpoint_is_404(api: str) -> None:
    status, body = get(f"{api}/api/v1/customers/nobody-here")
    assert status == 404 and "nobody-here" in body["error"]
    status, body = get(f"{api}/api/v2/customers")
    assert status == 404


def test_recent_transitions_newest_first(api: str) -> None:
    status, body = get(f"{api}/api/v1/transitions?limit=5")
    assert status == 200
    records = body["transitions"]
    assert len(records) == 5
    assert [r["at"] for r in records] == sorted((r["at"] for r in records), reverse=True)
    assert {"customer_id", "segment", "from", "to", "new_score", "reasons", "cause"} <= set(
        records[0])
    status, body = get(f"{api}/api/v1/transitions?limit=5000")
    assert status == 400 and body["parameter"] == "limit"


# -- access ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_api_needs_the_bearer_token(api: str, token: str | None) -> None:
    for path in ("/api/v1/customers", f"/api/v1/customers/{quote(ODD_ID, safe='')}",
                 "/api/v1/transitions"):
        status, body = get(f"{api}{path}", token=token)
        assert status == 401, path
        assert "token" in body["error"]


def test_metrics_and_healthz_stay_open(api: str) -> None:
    status, body = get(f"{api}/healthz", token=None)
    assert status == 200 and body == {"status": "ok", "redis": "ok"}
    with urllib.request.urlopen(f"{api}/metrics", timeout=10) as reply:
        assert reply.status == 200
        assert b"churnwatch_customers{" in reply.read()


def test_only_get_is_allowed(api: str) -> None:
    status, _ = get(f"{api}/api/v1/customers", method="POST")
    assert status == 405


def test_api_answers_503_quickly_while_redis_is_down() -> None:
    from redis_server import free_port

    config = ChurnwatchConfig(shards=2, stream_partitions=1)
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    server = start_metrics_server(None, 0, config,
                                  lambda: RedisStore(url, config.shards, config.key_prefix),
                                  CollectorRegistry(), None, api_token="")
    try:
        started = time.monotonic()
        status, body = get(f"{server.url}/api/v1/customers", token=None)
        assert status == 503 and "unavailable" in body["error"]
        assert time.monotonic() - started < 10
        status, body = get(f"{server.url}/healthz", token=None)
        assert status == 200 and body["redis"] == "unreachable"
    finally:
        server.shutdown()


def _non_loopback_address() -> str | None:
    """An address of this host that is not loopback (None on a host with loopback only)."""
    import socket

    for target in ("198.51.100.1", "10.254.254.254"):  # routing only: UDP connect sends nothing
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((target, 9))
            except OSError:
                continue
            address = str(probe.getsockname()[0])
            if not address.startswith("127."):
                return address
    return None


def test_without_a_token_a_server_beyond_loopback_serves_the_api_to_local_clients_only(
        replayed_shop: Shop) -> None:  # noqa: F811
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to connect from")
    config = replayed_shop.config
    server = start_metrics_server(
        "0.0.0.0", 0, config,
        lambda: RedisStore(replayed_shop.url, config.shards, config.key_prefix),
        CollectorRegistry(), None, api_token="")
    try:
        status, body = get(f"http://{address}:{server.port}/api/v1/customers", token=None)
        assert status == 403 and "CHURNWATCH_API_TOKEN" in body["error"]
        status, _ = get(f"http://127.0.0.1:{server.port}/api/v1/customers", token=None)
        assert status == 200
        with urllib.request.urlopen(f"http://{address}:{server.port}/metrics",
                                    timeout=10) as reply:
            assert reply.status == 200
    finally:
        server.shutdown()


def test_with_a_token_a_server_beyond_loopback_serves_the_api_to_anyone_with_it(
        replayed_shop: Shop) -> None:  # noqa: F811
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to connect from")
    config = replayed_shop.config
    server = start_metrics_server(
        "0.0.0.0", 0, config,
        lambda: RedisStore(replayed_shop.url, config.shards, config.key_prefix),
        CollectorRegistry(), None, api_token=TOKEN)
    try:
        assert get(f"http://{address}:{server.port}/api/v1/transitions")[0] == 200
        assert get(f"http://{address}:{server.port}/api/v1/transitions", token=None)[0] == 401
    finally:
        server.shutdown()


# -- the pages on the same server (what `churnwatch run` serves) ----------------------------------


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        return None


def raw(url: str, data: bytes | None = None, cookie: str | None = None
        ) -> tuple[int, dict[str, str], str]:
    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if cookie:
        request.add_header("Cookie", cookie)
    try:
        with opener.open(request, timeout=30) as reply:
            return reply.status, dict(reply.headers), reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def test_pages_need_a_session_that_login_sets_with_a_strict_http_only_cookie(api: str) -> None:
    status, headers, _ = raw(f"{api}/?segment=fashion")
    assert status == 303 and headers["Location"] == "/login?next=%2F%3Fsegment%3Dfashion"
    status, headers, body = raw(f"{api}/login", data=b"token=wrong&next=/")
    assert status == 401 and "Wrong token." in body and "Set-Cookie" not in headers
    status, headers, _ = raw(f"{api}/login",
                             data=f"token={TOKEN}&next=https://evil.example/".encode())
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    session = cookie.split(";")[0]
    status, headers, body = raw(f"{api}/?segment=fashion", cookie=session)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src" not in headers["Content-Security-Policy"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert 'class="customer-row"' in body
    status, _, body = raw(f"{api}/customers/{quote(ODD_ID, safe='')}", cookie=session)
    assert status == 200 and "vip/1 é" in body and "<svg" in body
    status, _, body = raw(f"{api}/customers/nobody-here", cookie=session)
    assert status == 404 and "nobody-here" in body
    status, _, body = raw(f"{api}/?tier=lost", cookie=session)
    assert status == 400 and "unknown tier" in body
    # The session cookie also opens the API, for a browser.
    status, _, body = raw(f"{api}/api/v1/customers?limit=1", cookie=session)
    assert status == 200 and json.loads(body)["customers"]
