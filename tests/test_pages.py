"""The page renderer without a browser: any query string or path answers a page (never a 500),
and customer-provided strings never reach the HTML unescaped, whatever they hold."""

from __future__ import annotations

from urllib.parse import quote

from churnwatch.metrics.pages import WorkbenchPages, score_chart
from churnwatch.metrics.worklist import WorklistAPI
from churnwatch.state.base import shard_of
from churnwatch.state.memory import MemoryStore
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnwatch.core.config import ChurnwatchConfig, SegmentPolicy
from churnwatch.core.engine import Incoming, ShardEngine, ShardState
from churnwatch.core.events import Event

CONFIG = ChurnwatchConfig(shards=2, stream_partitions=1)
T0 = 1_700_000_000.0


def pages_over(ids: list[str]) -> WorkbenchPages:
    store = MemoryStore(CONFIG.shards)
    engines = {s: ShardEngine(s, CONFIG, ShardState()) for s in range(CONFIG.shards)}
    for n, cid in enumerate(ids):
        shard = shard_of(cid, CONFIG.shards)
        items = [Incoming(Event(cid, "profile", T0, attributes={"segment": cid[:20] or "x"}),
                          1, 3 * n + 1),
                 Incoming(Event(cid, "order", T0, amount=10.0), 1, 3 * n + 2),
                 Incoming(Event(cid, "order", T0 + 5e6, amount=10.0), 1, 3 * n + 3)]
        result = engines[shard].process(items, store.load_customers(shard, [cid]),
                                        now=T0 + 4e7)
        store.commit(shard, engines[shard].state, result.changed, result.transitions, [])
    return WorkbenchPages(WorklistAPI(CONFIG, lambda: store))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(min_size=1, max_size=40).filter(str.strip), min_size=1, max_size=6,
                unique=True))
def test_customer_ids_and_segments_are_always_escaped(ids: list[str]) -> None:
    pages = pages_over(ids)
    status, body = pages.handle("/", "tier=healthy,watch,at_risk,churned&limit=1000")
    assert status == 200
    for cid in ids:
        if "<" in cid:
            assert cid not in body
        status, page = pages.handle("/customers/" + quote(cid, safe=""), "")
        assert status == 200, cid
        if "<" in cid:
            assert cid not in page


@settings(max_examples=150, deadline=None)
@given(path=st.sampled_from(["/", "/segments", "/login", "/customers/x", "/nowhere"]),
       query=st.text(max_size=60))
def test_any_query_answers_a_page_not_an_error(path: str, query: str) -> None:
    pages = PAGES
    status, body = pages.handle(path, query)
    assert status in (200, 400, 404), (path, query, body[-500:])
    assert body.startswith("<!doctype html>")


PAGES = pages_over(["a<b>", "plain", "é/ü"])


def test_score_chart_is_drawn_from_numbers_only() -> None:
    svg = score_chart([{"at": "2024-01-01T00:00:00Z", "health_score": 80.0},
                       {"at": "2024-02-01T00:00:00Z", "health_score": 40.0}], SegmentPolicy())
    assert svg.count("<circle") == 2 and "2024-01-01" in svg and "2024-02-01" in svg
    assert "no score yet" in score_chart([], SegmentPolicy())
