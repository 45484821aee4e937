"""The customer-success pages in a real browser: ``churnwatch serve`` (a real process) over a
replayed simulated shop in a real redis-server, opened in headless Chromium (Debian's
``chromium``, installed by ``make test``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from redis_server import free_port, redis_server  # noqa: F401
from replayed_shop import ODD_ID, Shop, replayed_shop, write_config  # noqa: F401

from churnwatch.core.events import decode_event

TOKEN = "browser-test-token"
CHURNWATCH = str(Path(sys.executable).with_name("churnwatch"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NASTY_ID = '<script>alert("x")</script>&'


@dataclass
class Served:
    url: str
    profile: Path
    workdir: Path


def chromium(profile: Path, url: str, *extra: str, budget_ms: int | None = None) -> str:
    """The DOM Chromium renders for ``url`` (with the profile's cookies)."""
    assert CHROMIUM, "chromium is not installed: run `make system-deps` (Debian's chromium)"
    command = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *extra]
    if budget_ms is not None:
        command.append(f"--virtual-time-budget={budget_ms}")
    command += ["--dump-dom", url]
    done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


def login(served: Served, token: str) -> str:
    """Submit the login form from a local page, as a person would, in the served profile."""
    page = served.workdir / f"login-{abs(hash(token))}.html"
    page.write_text(
        f'<form method="post" action="{served.url}/login">'
        f'<input name="token" value="{token}"><input name="next" value="/segments"></form>'
        "<script>document.forms[0].submit()</script>")
    return chromium(served.profile, page.as_uri(), budget_ms=8000)


class Links(HTMLParser):
    """Collects elements by id/class and links."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: dict[str, str] = {}
        self._current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and "customer-link" in (values.get("class") or ""):
            self.links.append(values.get("href") or "")
        if values.get("id"):
            self._current = values["id"]
            self.ids.setdefault(self._current, "")

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self.ids[self._current] += data

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h1", "strong", "span", "p"):
            self._current = None


def parse(dom: str) -> Links:
    parser = Links()
    parser.feed(dom)
    return parser


def api(url: str, path: str) -> dict:
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def add_nasty_customer(shop: Shop) -> None:
    """A customer whose id is markup, committed through the real engine and store."""
    from churnwatch.state.base import shard_of

    from churnwatch.core.engine import ShardEngine
    from churnwatch.core.records import Incoming

    store = shop.store()
    try:
        shard = shard_of(NASTY_ID, shop.config.shards)
        engine = ShardEngine(shard, shop.config, store.load_shard(shard))
        events = []
        for n, ts in enumerate((1_650_000_000, 1_651_000_000)):
            event = decode_event({"customer_id": NASTY_ID, "type": "order", "ts": ts,
                                  "amount": 30.0}, position=f"test:{n}")
            assert not hasattr(event, "reason")
            events.append(Incoming(event, 7, n + 1))  # type: ignore[arg-type]
        loaded = store.load_customers(shard, [NASTY_ID])
        result = engine.process(events, loaded, now=1_650_000_000 + 300 * 86400.0)
        store.commit(shard, engine.state, result.changed, result.transitions)
    finally:
        store.close()


@pytest.fixture(scope="module")
def served(replayed_shop: Shop, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
           ) -> Iterator[Served]:
    add_nasty_customer(replayed_shop)
    workdir = tmp_path_factory.mktemp("browser")
    config = write_config(workdir / "churnwatch.toml")
    port = free_port()
    env = {**os.environ, "CHURNWATCH_API_TOKEN": TOKEN}
    log = (workdir / "serve.log").open("wb")
    process = subprocess.Popen(
        [CHURNWATCH, "serve", "--redis-url", replayed_shop.url, "--config", str(config),
         "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, (workdir / "serve.log").read_text()
                assert time.monotonic() < deadline, "churnwatch serve did not start"
                time.sleep(0.2)
        profile = workdir / "profile"
        yield Served(url, profile, workdir)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        finally:
            if process.poll() is None:
                process.kill()
            log.close()


@pytest.fixture(scope="module")
def signed_in(served: Served) -> Served:
    login(served, TOKEN)
    return served


def test_a_wrong_token_is_refused(served: Served, tmp_path: Path) -> None:
    other = Served(served.url, tmp_path / "profile", tmp_path)
    dom = login(other, "not-the-token")
    assert "Wrong token." in dom
    # Without a session the pages send the browser to the login form, never the data.
    dom = chromium(other.profile, served.url + "/")
    assert 'name="token"' in dom and "customer-row" not in dom
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(
            served.url + "/api/v1/customers", headers={"Authorization": "Bearer nope"}))
    assert refused.value.code == 401


def test_worklist_names_first_the_customer_the_api_ranks_first(signed_in: Served) -> None:
    first = api(signed_in.url, "/api/v1/customers?limit=1")["customers"][0]
    dom = chromium(signed_in.profile, signed_in.url + "/")
    page = parse(dom)
    assert page.links, dom[-3000:]
    assert page.links[0] == "/customers/" + quote(first["customer_id"], safe="")
    assert 'name="viewport"' in dom


def test_worklist_lists_the_savable_before_the_long_gone(signed_in: Served) -> None:
    # The replayed shop holds both kinds: at-risk customers who ordered lately, and churned ones
    # (some high-value) whose last order was long before they churned.
    rows = api(signed_in.url, "/api/v1/customers?limit=1000")["customers"]

    def long_gone(row: dict) -> bool:
        last = row["last_order"] or row["tier_since"]
        silence = (_epoch(row["scored_at"]) - _epoch(last)) / 86400.0
        return row["tier"] == "churned" and silence > 180

    savable = {r["customer_id"] for r in rows if not long_gone(r)}  # at risk, lately churned
    gone = {r["customer_id"] for r in rows if long_gone(r)}
    assert any(r["tier"] == "at_risk" for r in rows if r["customer_id"] in savable)
    assert savable and gone and any(r["high_value"] for r in rows if r["customer_id"] in gone)
    dom = chromium(signed_in.profile, signed_in.url + "/?limit=1000")
    shown = [unquote(link.removeprefix("/customers/")) for link in parse(dom).links]
    assert set(shown) >= savable | gone
    assert max(shown.index(c) for c in savable) < min(shown.index(c) for c in gone)
    assert shown[0] in savable
    order = parse(dom).ids["order"]
    assert order.startswith("Order: savable first") and "long gone" in order, order


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_rows_link_to_customer_pages_with_id_score_chart_and_suggestion(
        signed_in: Served) -> None:
    page = parse(chromium(signed_in.profile, signed_in.url + "/"))
    target = signed_in.url + page.links[0]
    dom = chromium(signed_in.profile, target)
    detail = api(signed_in.url, "/api/v1" + page.links[0])
    customer = parse(dom)
    assert customer.ids["customer-id"].strip() == detail["customer_id"]
    assert customer.ids["score"].strip() == f"{detail['health_score']:.1f}"
    assert re.search(r'<svg[^>]*id="score-chart"', dom) and "<polyline" in dom
    suggestion = detail["suggestion"]
    if suggestion is not None:
        assert suggestion["action"] in dom.replace("&amp;", "&")
    else:
        assert f"no action: hold-out group of {detail['holdout_playbook']}" in dom


def test_filters_and_paging(signed_in: Served) -> None:
    dom = chromium(signed_in.profile, signed_in.url + "/?tier=at_risk,churned&limit=5")
    first_page = parse(dom).links
    assert len(first_page) == 5 and 'id="next"' in dom
    expected = api(signed_in.url, "/api/v1/customers?limit=5&offset=5")["customers"]
    second = parse(chromium(signed_in.profile,
                            signed_in.url + "/?tier=at_risk,churned&limit=5&offset=5")).links
    assert second == ["/customers/" + quote(c["customer_id"], safe="") for c in expected]
    assert not set(second) & set(first_page)
    dom = chromium(signed_in.profile, signed_in.url + "/?segment=fashion&value_tier=high"
                   "&tier=healthy,watch,at_risk,churned")
    rows = re.findall(r'<tr class="customer-row">(.*?)</tr>', dom, flags=re.S)
    assert rows and all("fashion" in row and "high value" in row for row in rows)
    assert "/customers/" + quote(ODD_ID, safe="") in dom


def test_customer_provided_strings_are_escaped(signed_in: Served) -> None:
    dom = chromium(signed_in.profile,
                   signed_in.url + "/?tier=healthy,watch,at_risk,churned&limit=1000")
    assert "<script>alert" not in dom
    assert "&lt;script&gt;alert" in dom
    page = chromium(signed_in.profile, signed_in.url + "/customers/" + quote(NASTY_ID, safe=""))
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page


def test_segments_page_shows_tiers_and_winback_per_playbook(signed_in: Served) -> None:
    overview = api(signed_in.url, "/api/v1/segments")
    dom = chromium(signed_in.profile, signed_in.url + "/segments")
    assert 'id="segments"' in dom and 'id="winback"' in dom
    for segment in overview["segments"]:
        assert f">{segment['segment']}</a>" in dom
    for playbook in overview["winback"]:
        assert playbook["playbook"] in dom
