"""``churnwatch import``: a shop's CSV export as events of the contract (docs/events.md).

Each CSV row becomes one JSON Lines event, a dead letter (its line number, the reason and the
column at fault, in the same records `replay` writes), or, for the presets, a row skipped for a
stated cause (a further line item of an order already read, a payment that failed). Which
column feeds which field is a :class:`ColumnMapping`: one of the :data:`PRESETS` for a known
export, changed or written whole with ``--map field=Column,...``. Every event written is first
checked by the contract's own decoder, so what ``import`` writes ``replay`` and ``publish``
accept::

    churnwatch import --preset shopify orders_export.csv | churnwatch replay -

Times become RFC 3339 in UTC. A time without a zone is refused (which zone would it be?) unless
``--timezone`` names one; a preset whose export states its zone in the column name (Stripe's
``Created (UTC)``) brings it. Amounts are read as decimals, ``1,234.50`` included; ``12,50`` is
refused as ambiguous rather than guessed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shlex
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any, TextIO

from churnwatch.core.events import Event, InvalidEvent, decode_event

#: The contract fields a column may feed (``--map`` refuses others, so a typo is caught).
MAPPABLE_FIELDS = ("customer_id", "type", "ts", "amount", "score", "event_id", "order_id",
                   "currency", "category", "channel", "campaign_id", "severity", "topic", "kind",
                   "segment", "value_tier", "playbook")
_NUMBER_FIELDS = frozenset({"amount", "score"})
#: A plain decimal, or one with thousands separators (``1,234.50``).
_AMOUNT = re.compile(r"(?:\d+|\d{1,3}(?:,\d{3})+)(?:\.\d+)?")
#: Times without an ISO 8601 shape that shop exports write.
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S %z", "%Y-%m-%d %H:%M %z", "%m/%d/%Y %H:%M:%S",
                 "%m/%d/%Y %H:%M", "%m/%d/%Y")


@dataclass(frozen=True)
class ColumnMapping:
    """Which CSV column feeds which event field, and which rows a preset passes over.

    ``columns`` maps a field to one column or to several tried in turn (the first non-empty
    wins: WooCommerce's guests have a billing e-mail and no customer e-mail). ``constants`` are
    fields every event gets (``type = order``). ``keep`` lets through only rows whose column holds
    one of the values (case-insensitive); ``order_key`` names the column that repeats on an
    order's further line items, which are skipped. ``zone`` is the zone of times written
    without one, when the export says which.

    >>> m = parse_map("customer_id=Email,ts=\\"Created at\\",amount=Total")
    >>> m.columns["ts"], m.constants["type"]
    (('Created at',), 'order')
    """

    columns: Mapping[str, tuple[str, ...]]
    constants: Mapping[str, str] = field(default_factory=lambda: {"type": "order"})
    keep: tuple[str, frozenset[str]] | None = None
    order_key: str | None = None
    zone: tzinfo | None = None
    event_id_prefix: str = "csv"
    optional: frozenset[str] = frozenset()

    def required_columns(self) -> list[str]:
        """The columns a header must have: every field's that is not optional and has one."""
        return [names[0] for name, names in self.columns.items()
                if len(names) == 1 and name not in self.optional]


#: Columns a preset reads when the export has them (an export may leave them out).
_PRESET_OPTIONAL = frozenset({"order_id", "currency"})

#: The exports of the shops churnwatch meets, by their published column names
#: (docs/events.md#importing-csv-exports says which columns each reads).
PRESETS: dict[str, ColumnMapping] = {
    # Shopify admin, Orders > Export (one row per line item; the order's fields on its first).
    "shopify": ColumnMapping(
        columns={"customer_id": ("Email",), "ts": ("Created at",), "amount": ("Total",),
                 "order_id": ("Name",), "currency": ("Currency",)},
        keep=("Financial Status", frozenset({"paid", "partially_paid", "partially_refunded",
                                             "refunded", "authorized"})),
        order_key="Name", event_id_prefix="shopify", optional=_PRESET_OPTIONAL),
    # WooCommerce orders export (the order_* / customer_* / billing_* columns).
    "woocommerce": ColumnMapping(
        columns={"customer_id": ("customer_email", "billing_email"), "ts": ("order_date",),
                 "amount": ("order_total",), "order_id": ("order_id",),
                 "currency": ("order_currency",)},
        keep=("status", frozenset({"completed", "processing", "on-hold", "refunded"})),
        order_key="order_id", event_id_prefix="woocommerce", optional=_PRESET_OPTIONAL),
    # Stripe Dashboard, Payments > Export (amounts in major units, times in UTC).
    "stripe": ColumnMapping(
        columns={"customer_id": ("Customer Email", "Customer ID"), "ts": ("Created (UTC)",),
                 "amount": ("Amount",), "order_id": ("id",), "currency": ("Currency",)},
        keep=("Status", frozenset({"paid", "succeeded", "refunded", "partially refunded"})),
        zone=timezone.utc, event_id_prefix="stripe", optional=_PRESET_OPTIONAL),
}


class MappingError(ValueError):
    """A ``--map`` or a header that cannot work: the message says which pair or column."""


def parse_map(text: str, base: ColumnMapping | None = None) -> ColumnMapping:
    """``field=Column,...`` (a column with a comma or spaces in quotes) over ``base``.

    >>> parse_map('customer_id=Email, ts="Created at", amount=Total').columns["customer_id"]
    ('Email',)
    >>> parse_map("customr=Email")
    Traceback (most recent call last):
    ...
    churnwatch.commands.import_csv.MappingError: --map: 'customr' is not an event field \
(one of customer_id, type, ts, amount, score, event_id, order_id, currency, category, channel, \
campaign_id, severity, topic, kind, segment, value_tier, playbook)
    """
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace, lexer.whitespace_split, lexer.commenters = ",", True, ""
    try:
        pairs = [pair.strip() for pair in lexer if pair.strip()]
    except ValueError as exc:
        raise MappingError(f"--map {text!r}: {exc}") from None
    columns = dict(base.columns) if base else {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not column:
            raise MappingError(f"--map: {pair!r} is not field=Column")
        if name not in MAPPABLE_FIELDS:
            raise MappingError(f"--map: {name!r} is not an event field (one of "
                               f"{', '.join(MAPPABLE_FIELDS)})")
        columns[name] = (column,)
    named = {pair.partition("=")[0].strip() for pair in pairs}
    if base is None:
        return ColumnMapping(columns=columns)
    return replace(base, columns=columns, optional=base.optional - named)


@dataclass
class ImportSummary:
    """What one import did with the rows it read."""

    rows: int = 0
    events: int = 0
    dead_letters: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


# -- reading -----------------------------------------------------------------------------------

def _lines(text: TextIO, taken: list[str]) -> Iterator[str]:
    """The file's lines for the csv reader, each also kept in ``taken`` so a row's dead letter
    holds the exact text it came from (several lines for a quoted field with newlines)."""
    for line in text:
        taken.append(line)
        yield line


def import_rows(source: TextIO, label: str, mapping: ColumnMapping, zone: tzinfo | None,
                write_event: Callable[[dict[str, Any]], None],
                write_dead_letter: Callable[[InvalidEvent], None]) -> ImportSummary:
    """Read CSV text from ``source`` (opened with ``newline=""``), calling ``write_event`` with
    each row's event and ``write_dead_letter`` with each bad row (position ``label:line``, the
    row's first line). Raises :class:`MappingError` when the header lacks a column the mapping
    needs. Never raises on a bad row."""
    taken: list[str] = []
    reader = csv.reader(_lines(source, taken))
    summary = ImportSummary()
    header: list[str] | None = None
    line = 1
    previous_order: str | None = None
    zone = mapping.zone or zone
    while True:
        taken.clear()
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if header is None:
                raise MappingError(f"{label}: the header is not CSV ({exc})") from None
            summary.rows += 1
            summary.dead_letters += 1
            write_dead_letter(_dead(label, line, "invalid_field", f"not CSV: {exc}", taken))
            line = reader.line_num + 1
            continue
        first, line = line, reader.line_num + 1
        if not row or all(not cell.strip() for cell in row):
            continue
        if header is None:
            header = [_clean_header(cell) for cell in row]
            _check_header(header, mapping, label)
            continue
        summary.rows += 1
        if _invalid_text(taken):
            summary.dead_letters += 1
            write_dead_letter(_dead(label, first, "invalid_field", "not valid UTF-8", taken))
            continue
        cells = dict(zip(header, row, strict=False))
        if mapping.order_key is not None:
            order = cells.get(mapping.order_key, "").strip()
            if order and order == previous_order:
                summary.skipped["further line items of an order"] += 1
                continue
            previous_order = order or None
        if mapping.keep is not None:
            column, allowed = mapping.keep
            status = cells.get(column, "").strip()
            if status and status.lower() not in allowed:
                summary.skipped[f"{column} {status.lower()[:40]!r}"] += 1
                continue
        try:
            event = _event(cells, mapping, zone)
        except _BadCell as bad:
            summary.dead_letters += 1
            write_dead_letter(_dead(label, first, bad.reason, bad.detail, taken,
                                    bad.customer_id))
            continue
        checked = decode_event(event, position=f"{label}:{first}")
        if not isinstance(checked, Event):
            summary.dead_letters += 1
            write_dead_letter(_dead(label, first, checked.reason,
                                    _with_column(checked.detail, mapping), taken,
                                    checked.customer_id))
            continue
        summary.events += 1
        write_event(event)
    if header is None:
        raise MappingError(f"{label}: empty, no header row")
    return summary


def _with_column(detail: str, mapping: ColumnMapping) -> str:
    """The decoder's words on a field, with the column it was read from."""
    named = re.match(r"field '(\w+)'", detail)
    columns = mapping.columns.get(named[1]) if named else None
    return f"{detail} (column {' or '.join(map(repr, columns))})" if columns else detail


def _clean_header(cell: str) -> str:
    return cell.strip().lstrip("\ufeff").strip()


def _check_header(header: Sequence[str], mapping: ColumnMapping, label: str) -> None:
    missing = [c for c in mapping.required_columns() if c not in header]
    for choices in mapping.columns.values():
        if len(choices) > 1 and not any(c in header for c in choices):
            missing.append(" or ".join(choices))
    if missing:
        shown = ", ".join(repr(h) for h in header[:30])
        raise MappingError(f"{label}: no column {', '.join(repr(m) for m in missing)} "
                           f"(its header: {shown}); name the columns with --map")


def _invalid_text(taken: Sequence[str]) -> bool:
    """Whether the row's text holds bytes that were not UTF-8 (kept as lone surrogates)."""
    return any("\udc80" <= ch <= "\udcff" for line in taken for ch in line)


def _dead(label: str, line: int, reason: str, detail: str, taken: Sequence[str],
          customer_id: str | None = None) -> InvalidEvent:
    payload = "".join(taken).encode("utf-8", "surrogateescape")
    return InvalidEvent(reason, detail, f"{label}:{line}", payload, customer_id,
                        f"csv:{label}", line)


class _BadCell(Exception):
    def __init__(self, reason: str, detail: str, customer_id: str | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.customer_id = reason, detail, customer_id


def _cell(cells: Mapping[str, str], name: str, choices: Sequence[str]) -> tuple[str, str]:
    """The first non-empty of the columns feeding ``name``, and which column it was."""
    for column in choices:
        value = cells.get(column)
        if value is not None and value.strip():
            return column, value.strip()
    raise _BadCell("missing_field", f"column {' or '.join(map(repr, choices))} ({name}) is empty")


def _event(cells: Mapping[str, str], mapping: ColumnMapping, zone: tzinfo | None
           ) -> dict[str, Any]:
    event: dict[str, Any] = dict(mapping.constants)
    customer: str | None = None
    empty: dict[str, str] = {}
    for name, choices in mapping.columns.items():
        try:
            column, value = _cell(cells, name, choices)
        except _BadCell as bad:
            if name in ("customer_id", "ts"):
                raise _BadCell(bad.reason, bad.detail, customer) from None
            empty[name] = bad.detail
            continue
        try:
            if name == "customer_id":
                value = value.lower() if "@" in value else value
                customer = value
            elif name == "ts":
                value = rfc3339(value, zone)
            elif name in _NUMBER_FIELDS:
                value = amount(value)
        except ValueError as exc:
            raise _BadCell("invalid_field", f"column {column!r} ({name}) is "
                           f"{_show(value)}: {exc}", customer) from None
        event[name] = value
    if "amount" in empty and event.get("type") in ("order", "refund"):
        raise _BadCell("missing_field", empty["amount"], customer)
    if "event_id" not in event and "order_id" in event:
        event["event_id"] = f"{mapping.event_id_prefix}:{event['order_id']}"
    return event


def _show(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def amount(text: str) -> float:
    """A money amount as the contract's number, read as a decimal.

    >>> amount("1,234.50"), amount("19.99"), amount("0")
    (1234.5, 19.99, 0.0)
    >>> amount("12,50")
    Traceback (most recent call last):
    ...
    ValueError: not an amount (digits, an optional '.' and decimals, ',' between thousands)
    """
    text = text.strip()
    for symbol in ("$", "€", "£", "¥", "₹"):
        text = text.removeprefix(symbol)
    if not _AMOUNT.fullmatch(text):
        if text.startswith("-") and _AMOUNT.fullmatch(text[1:]):
            raise ValueError("negative; an amount is >= 0 (a refund is its own event)")
        raise ValueError("not an amount (digits, an optional '.' and decimals, ',' between "
                         "thousands)")
    try:
        return float(Decimal(text.replace(",", "")))
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        raise ValueError("not an amount") from None


def rfc3339(text: str, zone: tzinfo | None) -> str:
    """A time as RFC 3339 in UTC; a time without a zone is read in ``zone``, or refused.

    >>> rfc3339("2024-05-01 10:00:00 -0400", None)
    '2024-05-01T14:00:00Z'
    >>> rfc3339("2024-05-01T10:00:00+02:00", None)
    '2024-05-01T08:00:00Z'
    >>> rfc3339("2024-05-01 10:00", None)
    Traceback (most recent call last):
    ...
    ValueError: a time without a zone; give --timezone (e.g. --timezone Europe/Berlin)
    """
    text = text.strip()
    when: datetime | None = None
    try:
        when = datetime.fromisoformat(text.replace(" UTC", "+00:00"))
    except ValueError:
        for pattern in _TIME_FORMATS:
            try:
                when = datetime.strptime(text, pattern)  # noqa: DTZ007 - zone checked below
                break
            except ValueError:
                continue
    if when is None:
        raise ValueError("not a time (RFC 3339, '2024-05-01 10:00:00 -0400' or "
                         "'5/1/2024 10:00' expected)")
    if when.tzinfo is None:
        if zone is None:
            raise ValueError("a time without a zone; give --timezone (e.g. --timezone "
                             "Europe/Berlin)")
        when = when.replace(tzinfo=zone)
    try:
        utc = when.astimezone(timezone.utc)
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"out of range ({exc})") from None
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the command -------------------------------------------------------------------------------

def cmd_import(args: argparse.Namespace) -> int:
    """``churnwatch import``."""
    from churnwatch.dataflows.file_source import STDIN, input_label, open_input
    from churnwatch.dataflows.flow import dead_letter_record
    from churnwatch.replay import default_dead_letters_path
    from churnwatch.runtime import UsageError

    if args.file != STDIN and not os.path.isfile(args.file):
        raise UsageError(f"import: no such file: {args.file}")
    try:
        mapping = _mapping_from_args(args)
    except MappingError as exc:
        raise UsageError(str(exc)) from None
    zone = _zone(args.timezone) if args.timezone else None
    label = input_label(args.file)
    dead_path = args.dead_letters_out or default_dead_letters_path([args.file], args.out)
    dead_handle: TextIO | None = None

    def write_dead_letter(item: InvalidEvent) -> None:
        nonlocal dead_handle
        if dead_handle is None:
            dead_handle = open(dead_path, "a" if args.dead_letters_out else "w",  # noqa: SIM115
                               encoding="utf-8")
        dead_handle.write(json.dumps(dead_letter_record(item)) + "\n")

    out: TextIO = sys.stdout if args.out == STDIN else open(  # noqa: SIM115
        args.out, "w", encoding="utf-8")
    if not args.dead_letters_out and os.path.isfile(dead_path):
        os.remove(dead_path)  # a previous run's, replaced as replay replaces its own

    def write_event(event: dict[str, Any]) -> None:
        out.write(json.dumps(event, ensure_ascii=False) + "\n")

    try:
        with open_input(args.file) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape",
                                    newline="")
            summary = import_rows(text, label, mapping, zone, write_event, write_dead_letter)
    except MappingError as exc:
        if out is not sys.stdout:
            os.remove(args.out)  # nothing was converted: leave no empty output behind
        raise UsageError(f"import: {exc}") from None
    except (OSError, EOFError) as exc:
        raise UsageError(f"import: {label}: unreadable ({exc})") from None
    finally:
        if out is not sys.stdout:
            out.close()
        else:
            out.flush()
        if dead_handle is not None:
            dead_handle.close()
    print(render_summary(summary, dead_path if summary.dead_letters else None, args.out),
          file=sys.stderr)
    return 0


def render_summary(summary: ImportSummary, dead_path: str | None, out: str) -> str:
    """The end-of-run lines on standard error."""
    lines = [f"import: {summary.rows:,} rows read, {summary.events:,} events written"
             + ("" if out == "-" else f" to {out}")]
    for cause, count in sorted(summary.skipped.items()):
        lines.append(f"  skipped       {count:>10,}  {cause}")
    if summary.dead_letters:
        lines.append(f"  dead-lettered {summary.dead_letters:>10,}  written to {dead_path}")
    return "\n".join(lines)


def _mapping_from_args(args: argparse.Namespace) -> ColumnMapping:
    base = PRESETS[args.preset] if args.preset else None
    if base is None and not args.map:
        raise MappingError("import: give --preset (shopify, woocommerce, stripe) or --map "
                           "customer_id=Column,ts=Column,amount=Column")
    for text in args.map or []:
        base = parse_map(text, base)
    assert base is not None
    missing = [f for f in ("customer_id", "ts") if f not in base.columns]
    if missing:
        raise MappingError(f"import: --map names no column for {', '.join(missing)}")
    return base


def _zone(name: str) -> tzinfo:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from churnwatch.runtime import UsageError

    if name.upper() in ("UTC", "Z"):
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"--timezone {name!r}: no such time zone (an IANA name such as "
                         "Europe/Berlin, or UTC)") from None


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``import``."""
    p = sub.add_parser("import", help="convert a shop's CSV export (Shopify, WooCommerce, "
                       "Stripe, or any with --map) into JSON Lines events",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="the CSV export (plain or gzip); '-' reads "
                   "standard input")
    p.add_argument("--preset", choices=sorted(PRESETS), help="the export's columns, by shop "
                   "system (docs/events.md#importing-csv-exports)")
    p.add_argument("--map", action="append", metavar="FIELD=COLUMN,...",
                   help="which column feeds which event field, e.g. "
                   "'customer_id=Email,ts=\"Created at\",amount=Total' (over a preset's)")
    p.add_argument("--timezone", metavar="ZONE", help="the zone of times written without "
                   "one (an IANA name such as Europe/Berlin, or UTC); without it they are "
                   "dead-lettered")
    p.add_argument("--out", default="-", metavar="PATH",
                   help="JSON Lines output ('-', the default: standard output)")
    p.add_argument("--dead-letters-out", metavar="PATH", help="append dead letters as JSONL "
                   "(default: beside --out, else beside FILE, written only when there are any)")
    p.set_defaults(func=cmd_import)
