"""The page renderer without a browser: any query string or path answers a page (never a 500),
and customer-provided strings never reach the HTML unescaped, whatever they hold."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import quote

from churnwatch.state.base import shard_of
from churnwatch.state.memory import MemoryStore
from churnwatch.web.pages import WorkbenchPages, score_chart
from churnwatch.web.worklist import WorklistAPI
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.engine import ShardEngine
from churnwatch.core.events import Event
from churnwatch.core.records import Incoming, ShardState

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
        store.commit(shard, engines[shard].state, result.changed, result.transitions)
    return WorkbenchPages(WorklistAPI(CONFIG, lambda: store))


class _Texts(HTMLParser):
    def __init__(self, css_class: str | None, element_id: str | None) -> None:
        super().__init__(convert_charrefs=True)
        self.css_class, self.element_id = css_class, element_id
        self.texts: list[str] = []
        self.depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if self.depth:
            self.depth += 1
        elif ((self.css_class and self.css_class in (values.get("class") or "").split())
              or (self.element_id and values.get("id") == self.element_id)):
            self.depth = 1
            self.texts.append("")

    def handle_endtag(self, tag: str) -> None:
        if self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.texts[-1] += data


def link_texts(page: str, css_class: str | None, element_id: str | None = None) -> list[str]:
    parser = _Texts(css_class, element_id)
    parser.feed(page)
    return parser.texts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1,
                        max_size=40).filter(lambda s: s.strip() == s and s),
                min_size=1, max_size=6, unique=True))
@example(['<script>alert("x")</script>', "a&amp;b", '"><img src=x onerror=alert(1)>', "é/ü"])
def test_customer_ids_and_segments_are_always_escaped(ids: list[str]) -> None:
    pages = pages_over(ids)
    status, body = pages.handle("/", "tier=healthy,watch,at_risk,churned&limit=1000")
    assert status == 200
    # Read back as a browser would: each id is the text of one customer link, so no id was
    # taken for markup.
    assert sorted(link_texts(body, "customer-link")) == sorted(ids)
    for cid in ids:
        status, page = pages.handle("/customers/" + quote(cid, safe=""), "")
        assert status == 200, cid
        assert link_texts(page, None, element_id="customer-id") == [cid]


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
                       {"at": "2024-02-01T00:00:00Z", "health_score": 40.0, "tier": "churned"}])
    assert svg.count("<circle") == 2 and "2024-01-01" in svg and "2024-02-01" in svg
    # Each point in its tier's colour; tier thresholds are chances, never bands on the score.
    assert 'fill="#c0392b"' in svg and "churned: 40.0" in svg and "<rect" not in svg
    assert "no score yet" in score_chart([])
