"""Words for people: every reason a CS agent reads (transition records, the export, the pages)
speaks of the customer, never of how the score is computed (docs/scoring.md, "Tiers and
hysteresis")."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from churnwatch.state.memory import MemoryStore
from churnwatch.web.pages import WorkbenchPages
from churnwatch.web.worklist import WorklistAPI

from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.engine import ShardEngine
from churnwatch.core.events import Event, decode_event
from churnwatch.core.records import Incoming, ShardState
from churnwatch.export import export_rows
from churnwatch.simulator import ShopSimulator

#: What a CS agent should never have to read: the machinery behind the score.
INTERNAL = re.compile(r"shard|refit|weighted|prior|model|calibrat|percentile|log-odds",
                      re.IGNORECASE)
CONFIG = ChurnwatchConfig()


class _VisibleText(HTMLParser):
    """The text a browser shows (no tags, scripts or styles)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden and data.strip():
            self.parts.append(data.strip())


def visible(html: str) -> str:
    parser = _VisibleText()
    parser.feed(html)
    return " ".join(parser.parts)


def replayed_shop() -> tuple[MemoryStore, list[str], float]:
    """A simulated year of 400 customers (orders, campaigns, messages, tickets, feedback),
    through one shard in batches of 500, as the dataflow runs it."""
    simulator = ShopSimulator(customers=400, seed=5, days=365.0)
    events = []
    for payload in simulator.events():
        event = decode_event(payload, position="sim")
        assert isinstance(event, Event), event
        events.append(event)
    events.sort(key=lambda e: e.ts)
    store = MemoryStore(CONFIG.shards)
    engine = ShardEngine(0, CONFIG, ShardState())
    reasons: list[str] = []
    for start in range(0, len(events), 500):
        chunk = events[start:start + 500]
        ids = {e.customer_id for e in chunk}
        now = chunk[-1].ts
        due = [cid for cid, state in store.iter_customers()
               if state.next_review_at is not None and state.next_review_at <= now]
        loaded = store.load_customers(0, sorted(ids | set(due)))
        items = [Incoming(e, 1, start + n + 1) for n, e in enumerate(chunk)]
        result = engine.process(items, loaded, now, due)
        store.commit(0, engine.state, result.changed, result.transitions)
        reasons += [text for t in result.transitions for text in t.reasons]
    return store, reasons, events[-1].ts


def test_no_reason_page_or_export_speaks_of_the_machinery() -> None:
    store, reasons, end = replayed_shop()
    assert len(reasons) > 500  # a year of a shop changes many tiers
    for text in reasons:
        assert not INTERNAL.search(text), text
    rows = export_rows(store, CONFIG, end)
    assert len(rows) == 400
    for row in rows:
        assert not INTERNAL.search(str(row["reasons"])), row["reasons"]
    pages = WorkbenchPages(WorklistAPI(CONFIG, lambda: store))
    shown = [visible(pages.worklist({})), visible(pages.worklist({"tier": ["healthy"]}))]
    status, html = pages.handle("/segments", "")
    assert status == 200
    shown.append(visible(html))
    for row in rows[:40]:
        status, html = pages.customer(str(row["customer_id"]))
        assert status == 200
        shown.append(visible(html))
    for text in shown:
        found = INTERNAL.search(text)
        assert found is None, text[max(0, found.start() - 200):found.end() + 200]


def test_counts_in_reasons_are_whole() -> None:
    _, reasons, _ = replayed_shop()
    fractional = re.compile(r"\b\d+\.\d+ (support ticket|answer|message|order|campaign)")
    for text in reasons:
        assert not fractional.search(text), text


def test_every_customer_sits_in_the_tier_their_score_says_within_the_hysteresis() -> None:
    # One scale (docs/scoring.md): the health score is the chance the tiers are bands of, so no
    # customer is in a worse tier than another of their segment with a lower score, beyond the
    # hysteresis band. Held tiers (a silent customer is never moved up) keep their score in
    # their band too.
    from churnwatch.judge.report import outside_their_tier

    store, _, end = replayed_shop()
    rows = export_rows(store, CONFIG, end)
    tiers = {str(row["tier"]) for row in rows}
    assert len(tiers) >= 3, tiers
    outside = [row for row in rows if outside_their_tier(
        float(row["health_score"]), str(row["tier"]),  # type: ignore[arg-type]
        CONFIG.policy(str(row["segment"])))]
    assert outside == []
    for row in rows:
        assert abs(float(row["health_score"]) - 100 * float(row["return_probability"])) < 0.01
