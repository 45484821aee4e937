"""``churnwatch import``: shop CSV exports (samples written from Shopify's, WooCommerce's and
Stripe's published column lists, in tests/data/) become contract events, dead letters with their
line and column, or rows skipped for a stated cause; never a crash, whatever the bytes."""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from churnwatch.commands.import_csv import PRESETS, ColumnMapping, import_rows, parse_map
from churnwatch.core.events import Event, InvalidEvent, decode_event

DATA = Path(__file__).parent / "data"


def churnwatch(*args: str, cwd: Path | None = None, stdin: bytes | None = None
               ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CHURNWATCH_REDIS_URL"}
    result = subprocess.run([sys.executable, "-m", "churnwatch.cli", *args], input=stdin,
                            capture_output=True, timeout=300, cwd=cwd, env=env)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(),
                                       result.stderr.decode())


def events_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def dead_letters(path: Path) -> list[tuple[str, str, str]]:
    return [(d["position"], d["reason"], d["detail"])
            for d in map(json.loads, path.read_text().splitlines())]


def test_a_shopify_orders_export_becomes_one_order_per_order_in_utc(tmp_path: Path) -> None:
    sample = tmp_path / "orders_export.csv"
    sample.write_bytes((DATA / "shopify_orders_export.csv").read_bytes())
    run = churnwatch("import", "--preset", "shopify", str(sample))
    assert run.returncode == 0, run.stderr
    assert events_of(run.stdout) == [
        {"type": "order", "customer_id": "ann@example.com", "ts": "2024-03-02T15:15:38Z",
         "amount": 59.5, "order_id": "#1001", "currency": "USD", "event_id": "shopify:#1001"},
        {"type": "order", "customer_id": "bob@example.com", "ts": "2024-03-05T23:01:00Z",
         "amount": 1234.0, "order_id": "#1002", "currency": "USD", "event_id": "shopify:#1002"},
        {"type": "order", "customer_id": "carl@example.com", "ts": "2024-04-01T07:29:59Z",
         "amount": 50.0, "order_id": "#1005", "currency": "EUR", "event_id": "shopify:#1005"},
    ]
    # The line item of #1001, the voided #1003 skipped; the order without an e-mail (line 6)
    # dead-lettered beside the input, naming the column.
    assert "further line items of an order" in run.stderr
    assert "Financial Status 'voided'" in run.stderr
    dead = tmp_path / "orders_export.csv.dead-letters.jsonl"
    assert dead_letters(dead) == [("orders_export.csv:6", "missing_field",
                                   "column 'Email' (customer_id) is empty")]
    assert str(dead) in run.stderr


def test_woocommerce_times_without_a_zone_are_refused_unless_a_timezone_is_given(
        tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    sample = str(DATA / "woocommerce_orders_export.csv")
    run = churnwatch("import", "--preset", "woocommerce", sample, "--dead-letters-out",
                     str(dead))
    assert run.returncode == 0 and run.stdout == "", run.stderr
    assert [(p, r) for p, r, _ in dead_letters(dead)] == [
        ("woocommerce_orders_export.csv:2", "invalid_field"),
        ("woocommerce_orders_export.csv:4", "invalid_field"),
        ("woocommerce_orders_export.csv:5", "invalid_field")]
    assert all("column 'order_date' (ts)" in d and "--timezone" in d
               for _, _, d in dead_letters(dead))
    dead.unlink()
    out = tmp_path / "events.jsonl"
    run = churnwatch("import", "--preset", "woocommerce", sample, "--timezone", "Europe/Berlin",
                     "--out", str(out), "--dead-letters-out", str(dead))
    assert run.returncode == 0, run.stderr
    events = events_of(out.read_text())
    # 09:12 in Berlin (CET) is 08:12 UTC; the guest is known by the billing e-mail; "1,050.00"
    # is read with its thousands separator.
    assert [(e["customer_id"], e["ts"], e["amount"]) for e in events] == [
        ("dora@example.com", "2024-03-01T08:12:00Z", 32.1),
        ("eve@example.com", "2024-03-09T13:05:00Z", 1050.0)]
    assert dead_letters(dead) == [(
        "woocommerce_orders_export.csv:5", "invalid_field",
        "column 'order_total' (amount) is '-5.00': negative; an amount is >= 0 (a refund is "
        "its own event)")]
    assert "status 'cancelled'" in run.stderr


def test_a_stripe_payments_export_reads_created_utc_and_falls_back_to_the_customer_id(
        tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    run = churnwatch("import", "--preset", "stripe", str(DATA / "stripe_payments_export.csv"),
                     "--dead-letters-out", str(dead))
    assert run.returncode == 0, run.stderr
    assert [(e["customer_id"], e["ts"], e["amount"], e["event_id"])
            for e in events_of(run.stdout)] == [
        ("ann@example.com", "2024-03-02T15:04:05Z", 59.5, "stripe:ch_3Oa1"),
        ("cus_Pq3", "2024-03-04T19:45:00Z", 120.0, "stripe:ch_3Oa3")]
    assert dead_letters(dead) == [(
        "stripe_payments_export.csv:5", "invalid_field",
        "column 'Amount' (amount) is 'twelve': not an amount (digits, an optional '.' and "
        "decimals, ',' between thousands)")]
    assert "Status 'failed'" in run.stderr


def test_a_column_mapping_reads_any_export_and_quoted_columns(tmp_path: Path) -> None:
    export = tmp_path / "crm.csv"
    export.write_text('Client,"Created at",Total,Channel\n'
                      'c-1,2024-01-05T10:00:00Z,"19,99",web\n'
                      'c-2,2024-01-06T11:00:00+01:00,7.5,web\n'
                      '"multi\nline",2024-01-07T00:00:00Z,3,web\n')
    run = churnwatch("import", str(export), "--map",
                     'customer_id=Client,ts="Created at",amount=Total')
    assert run.returncode == 0, run.stderr
    assert events_of(run.stdout) == [
        {"type": "order", "customer_id": "c-2", "ts": "2024-01-06T10:00:00Z", "amount": 7.5},
        {"type": "order", "customer_id": "multi\nline", "ts": "2024-01-07T00:00:00Z",
         "amount": 3.0}]
    # "19,99" is not guessed: a comma is a thousands separator or nothing.
    assert [(p, r) for p, r, _ in dead_letters(tmp_path / "crm.csv.dead-letters.jsonl")] == \
        [("crm.csv:2", "invalid_field")]


@pytest.mark.parametrize("args, words", [
    (["--map", "customr=Client"], "'customr' is not an event field"),
    (["--map", "customer_id=Email,ts=When,amount=Total"], "no column 'When'"),
    ([], "give --preset"),
    (["--preset", "shopify", "--timezone", "Mars/Olympus"], "no such time zone"),
])
def test_a_mapping_that_cannot_work_is_a_one_line_error(tmp_path: Path, args: list[str],
                                                        words: str) -> None:
    export = tmp_path / "x.csv"
    export.write_text("Email,Created at,Total\na@b.c,2024-01-01T00:00:00Z,1\n")
    out = tmp_path / "out.jsonl"
    run = churnwatch("import", str(export), "--out", str(out), *args)
    assert run.returncode == 2
    assert words in run.stderr and "Traceback" not in run.stderr
    assert not out.exists()


def test_an_import_piped_into_replay_scores_the_shops_customers(tmp_path: Path) -> None:
    scores = tmp_path / "scores.csv"
    cli = f"{shlex.quote(sys.executable)} -m churnwatch.cli"
    sample = shlex.quote(str(DATA / "shopify_orders_export.csv"))
    env = {k: v for k, v in os.environ.items() if k != "CHURNWATCH_REDIS_URL"}
    run = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {cli} import --preset shopify {sample} "
         f"--dead-letters-out dead.jsonl | {cli} replay - --export {shlex.quote(str(scores))}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    with open(scores) as f:
        rows = {r["customer_id"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["ann@example.com", "bob@example.com", "carl@example.com"]
    assert rows["bob@example.com"]["orders"] == "1"
    # The replay read only good events: its own dead letters are none.
    assert not (tmp_path / "stdin.dead-letters.jsonl").exists()


# -- never a crash ------------------------------------------------------------------------------

def import_bytes(data: bytes, mapping: ColumnMapping, timezone_given: bool = False
                 ) -> tuple[Any, list[dict[str, Any]], list[InvalidEvent]]:
    from datetime import timezone

    events: list[dict[str, Any]] = []
    dead: list[InvalidEvent] = []
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", errors="surrogateescape",
                            newline="")
    summary = import_rows(text, "fuzz.csv", mapping, timezone.utc if timezone_given else None,
                          events.append, dead.append)
    return summary, events, dead


CELL = st.one_of(
    st.sampled_from(["", "a@b.c", "2024-01-01T00:00:00Z", "2024-01-01 10:00:00 -0400",
                     "3/1/2024 9:12:00", "1,234.50", "-1", "1e400", "NaN", "paid", "voided",
                     "#1001", '"', "\r", "\n", "\x00", "\ufeff"]),
    st.text(max_size=12))
ROWS = st.lists(st.lists(CELL, max_size=6), max_size=8).map(
    lambda rows: "".join(",".join(r) + "\n" for r in rows).encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(st.binary(max_size=400), ROWS),
       preset=st.sampled_from([None, *sorted(PRESETS)]), timezone_given=st.booleans())
@example(body=b"a@b.c,2024-01-01T00:00:00Z,\xff\xfe\n\"open quote\n", preset=None,
         timezone_given=False)
@example(body=b"x" * 200_000 + b"\n", preset=None, timezone_given=False)
def test_any_bytes_under_a_header_become_events_or_dead_letters_never_a_crash(
        body: bytes, preset: str | None, timezone_given: bool) -> None:
    mapping = PRESETS[preset] if preset else parse_map("customer_id=c,ts=t,amount=a")
    header = {None: "c,t,a", "shopify": "Name,Email,Financial Status,Created at,Total",
              "woocommerce": "order_id,order_date,status,order_total,customer_email",
              "stripe": "id,Created (UTC),Amount,Status,Customer Email"}[preset]
    summary, events, dead = import_bytes(header.encode() + b"\n" + body, mapping,
                                         timezone_given)
    assert summary.rows == len(events) + len(dead) + sum(summary.skipped.values())
    assert (summary.events, summary.dead_letters) == (len(events), len(dead))
    for event in events:  # what is written is what replay and publish accept
        assert isinstance(decode_event(json.dumps(event), position="x"), Event)
    lines = body.count(b"\n") + body.count(b"\r") + 2
    for item in dead:
        assert item.reason in ("missing_field", "invalid_field", "unknown_type", "not_an_object")
        assert 2 <= item.offset <= lines and item.position == f"fuzz.csv:{item.offset}"
        assert item.payload and item.payload in header.encode() + b"\n" + body
