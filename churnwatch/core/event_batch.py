"""A micro-batch of event lines decoded at once, into columns for the columnar engine.

:func:`decode_lines` gives, for every line, exactly what :func:`churnwatch.core.events.decode_event`
gives for it (the same :class:`~churnwatch.core.events.Event` or the same
:class:`~churnwatch.core.events.InvalidEvent`), the valid events as the columns of an
:class:`EventBatch` and the dead letters beside them, both in input order.

>>> batch = decode_lines(
...     [b'{"customer_id":"c1","type":"order","ts":1714557600.7,"amount":25.5,"event_id":"o1"}',
...      b'{"customer_id":"c1","type":"order","ts":0}',
...      b'{"customer_id":"c2","type":"campaign_sent","ts":"2024-05-01T10:00:00Z","channel":"sms"}',
...      b'{"customer_id":"c2","type":"profile","ts":0,"segment":"beauty"}'],
...     ["a.jsonl:1", "a.jsonl:2", "a.jsonl:3", "a.jsonl:4"])
>>> len(batch), batch.index.tolist(), batch.ts.tolist(), batch.amount.tolist()
(3, [0, 2, 3], [1714557600.0, 1714557600.0, 0.0], [25.5, 0.0, 0.0])
>>> [TYPE_CODES[t] for t in batch.types], batch.channel.tolist()
(['order', 'campaign_sent', 'profile'], [-1, 2, -1])
>>> batch.event(2).attributes, [(bad.reason, bad.position) for bad in batch.invalid]
({'segment': 'beauty'}, [('missing_field', 'a.jsonl:2')])

How it is fast: msgspec reads the typical line (one flat JSON object of the contract's fields)
into a typed :class:`_Line` in C, and the rules of ``decode_event`` are applied to whole columns
with numpy. What is left over goes through ``decode_event`` itself, one line at a time: a line
msgspec refuses (not JSON, not an object, a field of another type, null where a value belongs,
NaN, a lone surrogate), a line it might read otherwise than ``json.loads`` (invalid UTF-8,
nesting, longer than :data:`FAST_LINE_BYTES`), an intervention, an unknown type, and every line
a rule refuses, so that its dead letter is ``decode_event``'s own.

On 200,000 lines of the bench workload in batches of 1,000 (best of 5, on a shared 2-core
machine), ``decode_lines`` reads 970,000 lines/s (1.0 us a line) where a loop of
``decode_event`` reads 137,000 (7.3 us), 7 times as many; in batches of 100, 5 times. Measured
with (``bench`` is not installed, hence ``PYTHONPATH``)::

    PYTHONPATH=. .venv/bin/python -c "
    import time; from bench.workload import generate
    from churnwatch.core.events import decode_event
    from churnwatch.core.event_batch import decode_lines
    lines = list(generate(200_000, customers=20_000, seed=1))
    pos = [f'w:{i}' for i in range(len(lines))]
    t = time.perf_counter(); [decode_event(l, position=p, msgpack_allowed=False)
                              for l, p in zip(lines, pos)]
    one = time.perf_counter() - t
    t = time.perf_counter()
    for s in range(0, len(lines), 1000): decode_lines(lines[s:s + 1000], pos[s:s + 1000])
    batched = time.perf_counter() - t
    print(f'{len(lines) / one:,.0f} vs {len(lines) / batched:,.0f} lines/s')"
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, cast

import msgspec
import numpy as np
import numpy.typing as npt
from msgspec import UNSET, Meta, UnsetType

from churnwatch.core.columns import CHANNELS
from churnwatch.core.events import (
    CAMPAIGN_CHANNELS,
    CAMPAIGN_CLICKED,
    CAMPAIGN_OPENED,
    CAMPAIGN_SENT,
    DEFAULT_MAX_AMOUNT,
    FEEDBACK,
    FEEDBACK_KINDS,
    INTERVENTION,
    MAX_CUSTOMER_ID_LENGTH,
    MAX_EPOCH_SECONDS,
    MESSAGE_CHANNELS,
    MESSAGE_REPLIED,
    MESSAGE_SENT,
    ORDER,
    PROFILE,
    REFUND,
    SUPPORT_TICKET,
    TICKET_SEVERITIES,
    VISIT,
    Event,
    InvalidEvent,
    decode_event,
    parse_timestamp,
)

#: Event types by code: :attr:`EventBatch.types` holds an index into this tuple (the numba
#: kernels, :mod:`churnwatch.core.kernels.fold`, number them the same way).
TYPE_CODES: tuple[str, ...] = (ORDER, REFUND, CAMPAIGN_SENT, CAMPAIGN_OPENED, CAMPAIGN_CLICKED,
                               MESSAGE_SENT, MESSAGE_REPLIED, SUPPORT_TICKET, FEEDBACK, VISIT,
                               PROFILE, INTERVENTION)
#: Engagement channels by code: :attr:`EventBatch.channel` holds an index into this tuple, or
#: :data:`NO_CHANNEL` (the columns' order, :data:`churnwatch.core.columns.CHANNELS`).
CHANNEL_CODES: tuple[str, ...] = CHANNELS
#: The channel code of an event without an engagement channel (an intervention's ``phone`` is
#: not one: its full event is in :attr:`EventBatch.extras`).
NO_CHANNEL = -1

#: Lines longer than this go to ``decode_event``. Python's ``json`` refuses an integer of more
#: digits than ``sys.get_int_max_str_digits()`` (640 at the least) where msgspec reads it, and a
#: line this short cannot hold one. Typical event lines are about 100 bytes.
FAST_LINE_BYTES = 640
#: The largest amount taken on the fast path: up to it, every integer is a float exactly, so
#: msgspec's reading of an integer literal cannot differ from Python's ``float(int)``.
_EXACT_AMOUNT = 2.0**53

_TYPE_CODE = {name: code for code, name in enumerate(TYPE_CODES)}
#: A type the fast path leaves to ``decode_event``: unknown types and interventions.
_SLOW_TYPE = len(TYPE_CODES)
_FAST_TYPE = {name: code for name, code in _TYPE_CODE.items() if name != INTERVENTION}
#: A channel that is not an engagement channel, or none: refused where a channel is required.
_NOT_ENGAGEMENT = -2
_CHANNEL_CODE: dict[str | None, int] = {name: code for code, name in enumerate(CHANNEL_CODES)}


def _channel_rules() -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Which types carry a channel, and which channel codes each allows (by ``code + 2``)."""
    uses = np.zeros(_SLOW_TYPE + 1, dtype=np.bool_)
    allowed = np.zeros((_SLOW_TYPE + 1, len(CHANNEL_CODES) + 2), dtype=np.bool_)
    for kinds, channels in (((CAMPAIGN_SENT, CAMPAIGN_OPENED, CAMPAIGN_CLICKED), CAMPAIGN_CHANNELS),
                            ((MESSAGE_SENT, MESSAGE_REPLIED), MESSAGE_CHANNELS)):
        for kind in kinds:
            uses[_TYPE_CODE[kind]] = True
            for channel in channels:
                allowed[_TYPE_CODE[kind], _CHANNEL_CODE[channel] + 2] = True
    return uses, allowed


_USES_CHANNEL, _CHANNEL_ALLOWED = _channel_rules()
_PROFILE_KEYS = ("segment", "category", "value_tier")

_NonEmpty = Annotated[str, Meta(min_length=1)]


class _Line(msgspec.Struct, gc=False):
    """The typical event line as msgspec reads it: the contract's fields with the types the
    fast path takes. A line whose field has another type (null where a value is required, a
    bool, a list) fails to decode here and goes to ``decode_event``; unknown fields are skipped,
    as ``decode_event`` ignores them. msgspec refuses lone surrogates in a kept string, so every
    string here is valid Unicode; ``UNSET`` is a field that is absent (not null)."""

    customer_id: Annotated[str, Meta(min_length=1, max_length=MAX_CUSTOMER_ID_LENGTH)] | int
    type: str
    ts: Annotated[float, Meta(ge=0.0, le=MAX_EPOCH_SECONDS)] | str
    event_id: _NonEmpty | int | None = None
    amount: float | UnsetType = UNSET
    channel: str | None = None
    score: float | UnsetType = UNSET
    kind: str | None = None
    severity: str | UnsetType = UNSET
    segment: _NonEmpty | None = None
    category: _NonEmpty | None = None
    value_tier: _NonEmpty | None = None


_DECODER = msgspec.json.Decoder(_Line)


@dataclass
class EventBatch:
    """The valid events of a batch of lines as columns, one row per event in input order, and
    the batch's dead letters.

    Row ``i`` came from input line ``index[i]``. A row's full :class:`Event` is
    :meth:`event`; rows whose event carries what the columns do not hold (attributes, a channel
    that is not an engagement channel: profiles and interventions) keep it in ``extras``.

    >>> batch = decode_lines([b'{"customer_id":"c1","type":"visit","ts":86400}'], ["x:1"])
    >>> batch.events()
    [Event(customer_id='c1', type='visit', ts=86400.0, event_id=None, amount=0.0, channel=None, \
score=None, severity=1.0, attributes={})]
    """

    customer_ids: list[str]
    #: Index into :data:`TYPE_CODES`.
    types: npt.NDArray[np.uint8]
    #: Event time in whole epoch seconds.
    ts: npt.NDArray[np.float64]
    #: An order's or a refund's amount; 0.0 for other types.
    amount: npt.NDArray[np.float64]
    #: Index into :data:`CHANNEL_CODES`; :data:`NO_CHANNEL` for none or another channel.
    channel: npt.NDArray[np.int8]
    #: Feedback's score; nan for other types.
    score: npt.NDArray[np.float64]
    #: A support ticket's severity weight; 1.0 for other types.
    severity: npt.NDArray[np.float64]
    event_ids: list[str | None]
    #: The position of each row's line among the batch's input lines.
    index: npt.NDArray[np.int64]
    #: The full event of the rows with attributes or a non-engagement channel, by row.
    extras: dict[int, Event] = field(default_factory=dict)
    #: The dead letters, in input order.
    invalid: list[InvalidEvent] = field(default_factory=list)

    def __len__(self) -> int:
        """The number of valid events (rows)."""
        return len(self.customer_ids)

    def event(self, i: int) -> Event:
        """Row ``i`` as the :class:`Event` ``decode_event`` gave or would give for its line."""
        kept = self.extras.get(i)
        if kept is not None:
            return kept
        channel = int(self.channel[i])
        score = float(self.score[i])
        return Event(self.customer_ids[i], TYPE_CODES[int(self.types[i])], float(self.ts[i]),
                     self.event_ids[i], amount=float(self.amount[i]),
                     channel=None if channel == NO_CHANNEL else CHANNEL_CODES[channel],
                     score=None if math.isnan(score) else score,
                     severity=float(self.severity[i]))

    def events(self) -> list[Event]:
        """Every row's :class:`Event`, in input order."""
        return [self.event(i) for i in range(len(self))]


def decode_lines(
    lines: Sequence[bytes],
    positions: Sequence[str],
    *,
    now: float | None = None,
    max_future_seconds: float = 86400.0,
    max_amount: float = DEFAULT_MAX_AMOUNT,
    msgpack_allowed: bool = False,
) -> EventBatch:
    """Decode and validate a batch of lines; ``positions[i]`` says where ``lines[i]`` came from.

    Line by line the answer is what ``decode_event(line, position=..., now=now,
    max_future_seconds=..., max_amount=..., msgpack_allowed=...)`` answers; see
    :func:`churnwatch.core.events.decode_event` for the arguments (a file's line is JSON or
    nothing, hence ``msgpack_allowed=False`` here). Never raises on bad input; lines and
    positions of different lengths are a ``ValueError``.
    """
    if len(positions) != len(lines):
        raise ValueError(f"decode_lines: {len(lines)} lines but {len(positions)} positions")
    rows: list[_Line] = []
    at: list[int] = []
    slow: list[int] = []
    decode = _DECODER.decode
    for i, line in enumerate(lines):
        try:
            rows.append(decode(line))
            at.append(i)
        except Exception:  # msgspec refuses it (or a rule of the struct does): the slow path
            slow.append(i)
    plain = _read_alike([lines[i] for i in at])
    if plain is not None:
        slow.extend(i for i, ok in zip(at, plain, strict=True) if not ok)
        rows = [row for row, ok in zip(rows, plain, strict=True) if ok]
        at = [i for i, ok in zip(at, plain, strict=True) if ok]
    fast = _FastColumns(rows, now=now, max_future_seconds=max_future_seconds,
                        max_amount=max_amount)
    keep = fast.ok
    if not keep.all():
        slow.extend(i for i, ok in zip(at, keep.tolist(), strict=True) if not ok)
        fast = fast.only(keep)
        at = [i for i, ok in zip(at, keep.tolist(), strict=True) if ok]
    slow.sort()
    batch = EventBatch(fast.customer_ids, fast.types, fast.ts, fast.amount, fast.channel,
                       fast.score, fast.severity, fast.event_ids, np.array(at, dtype=np.int64),
                       {row: event for row, event in zip(fast.profile_rows, fast.profiles,
                                                         strict=True)})
    if slow:
        _add_slow(batch, [decode_event(lines[i], position=positions[i], now=now,
                                       max_future_seconds=max_future_seconds,
                                       max_amount=max_amount, msgpack_allowed=msgpack_allowed)
                          for i in slow], slow)
    return batch


def _read_alike(lines: list[bytes]) -> list[bool] | None:
    """Which lines msgspec and ``json.loads`` are sure to read alike; ``None`` for all of them.

    msgspec skips an unknown field's value with less care than ``json`` reads it: invalid UTF-8
    or an encoded surrogate in its strings passes there where ``json`` refuses the whole line.
    They also differ on integers longer than ``json`` reads (:data:`FAST_LINE_BYTES`) and on
    how deep they nest. A flat object (one ``{``, no ``[``, so every skipped value is a scalar)
    of valid UTF-8 and modest length is read alike. Checked on the whole batch at once (each
    line msgspec read as an object has a ``{``), line by line only when the batch has an odd
    one.
    """
    try:
        blob = b"".join(lines)
        if (not lines or blob.count(b"{") == len(lines) and b"[" not in blob
                and max(map(len, lines)) <= FAST_LINE_BYTES and blob.isascii()):
            return None
    except TypeError:  # not bytes: the slow path says what it is
        pass
    return [_flat_utf8(line) for line in lines]


def _flat_utf8(line: bytes) -> bool:
    """Whether one line is a flat object of valid UTF-8 and modest length (as above)."""
    if (not isinstance(line, bytes) or len(line) > FAST_LINE_BYTES or line.count(b"{") != 1
            or b"[" in line):
        return False
    if line.isascii():
        return True
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _FastColumns:
    """The decoded rows as columns, with ``ok`` saying which rows ``_validate`` accepts as read
    here; the rules are those of :func:`churnwatch.core.events.decode_event`, row by row."""

    def __init__(self, rows: list[_Line], *, now: float | None, max_future_seconds: float,
                 max_amount: float) -> None:
        n = len(rows)
        self.types = np.array([_FAST_TYPE.get(row.type, _SLOW_TYPE) for row in rows],
                              dtype=np.uint8)
        ok = self.types != _SLOW_TYPE
        self.customer_ids, refused = _customer_ids([row.customer_id for row in rows])
        self.event_ids, refused_events = _integers_as_text([row.event_id for row in rows])
        ok[refused + refused_events] = False
        # ts: a number in range (the struct checks it) or RFC 3339 text, to whole seconds.
        raw_ts = [row.ts for row in rows]
        ts = np.array([t if isinstance(t, float) else _seconds_of(t) for t in raw_ts],
                      dtype=np.float64)
        ts = np.floor(ts) + 0.0  # floor(-0.0) is -0.0; decode_event's is 0.0
        ok &= ~np.isnan(ts)
        if now is not None:
            ok &= ts <= now + max_future_seconds
        self.ts = ts

        # order, refund: an amount is required, from 0 to max_amount.
        is_money = (self.types == _TYPE_CODE[ORDER]) | (self.types == _TYPE_CODE[REFUND])
        self.amount = np.zeros(n, dtype=np.float64)
        money = np.flatnonzero(is_money)
        amount = np.array([_float_or_nan(rows[i].amount) for i in money.tolist()],
                          dtype=np.float64)
        with np.errstate(invalid="ignore"):
            ok[money] &= (amount >= 0) & (amount <= max_amount) & (amount <= _EXACT_AMOUNT)
        self.amount[money] = amount

        # Campaigns and messages: a channel is required, one of the type's; others have none.
        codes = np.array([_CHANNEL_CODE.get(row.channel, _NOT_ENGAGEMENT) for row in rows],
                         dtype=np.int8)
        uses = _USES_CHANNEL[self.types]
        ok &= ~uses | _CHANNEL_ALLOWED[self.types, codes.astype(np.intp) + 2]
        self.channel = np.where(uses, codes, np.int8(NO_CHANNEL)).astype(np.int8)

        # feedback: a score from 0 to 10 is required; a kind, when given, is one of its kinds.
        self.score = np.full(n, np.nan)
        feedback = np.flatnonzero(self.types == _TYPE_CODE[FEEDBACK])
        score = np.array([_float_or_nan(rows[i].score) for i in feedback.tolist()],
                         dtype=np.float64)
        kind_ok = np.array([rows[i].kind is None or rows[i].kind in FEEDBACK_KINDS
                            for i in feedback.tolist()], dtype=np.bool_)
        with np.errstate(invalid="ignore"):
            ok[feedback] &= (score >= 0) & (score <= 10) & kind_ok
        self.score[feedback] = score

        # support_ticket: a severity, "normal" when absent, is one of the severities.
        self.severity = np.ones(n)
        tickets = np.flatnonzero(self.types == _TYPE_CODE[SUPPORT_TICKET])
        self.severity[tickets] = [_severity_or_nan(rows[i].severity) for i in tickets.tolist()]
        ok[tickets] &= ~np.isnan(self.severity[tickets])

        # Profiles: their attributes, which the columns do not hold.
        self.profile_rows = np.flatnonzero((self.types == _TYPE_CODE[PROFILE]) & ok).tolist()
        self.profiles = [Event(self.customer_ids[i], PROFILE, float(ts[i]), self.event_ids[i],
                               attributes=_attributes(rows[i])) for i in self.profile_rows]
        self.ok = ok

    def only(self, keep: npt.NDArray[np.bool_]) -> _FastColumns:
        """The rows where ``keep`` holds (``keep`` is ``ok``: every kept row is valid)."""
        rows = np.flatnonzero(keep).tolist()
        renumber = np.cumsum(keep) - 1
        self.customer_ids = [self.customer_ids[i] for i in rows]
        self.event_ids = [self.event_ids[i] for i in rows]
        for name in ("types", "ts", "amount", "channel", "score", "severity"):
            setattr(self, name, getattr(self, name)[rows])
        self.profile_rows = [int(renumber[i]) for i in self.profile_rows]
        self.ok = np.ones(len(rows), dtype=np.bool_)
        return self


def _customer_ids(raw: list[str | int]) -> tuple[list[str], list[int]]:
    """The customer ids as ``decode_event`` reads them (integers as their text) and the rows
    whose id it refuses: blank, or an integer beyond 64 bits (the struct checked the length)."""
    try:
        # All text and none blank, the common batch, in one C loop (str.strip refuses an int).
        if all(map(str.strip, cast(list[str], raw))):
            return cast(list[str], raw), []
    except TypeError:  # an integer among them
        pass
    ids, refused = _integers_as_text(raw)
    texts = cast(list[str], ids)
    return texts, refused + [i for i, value in enumerate(texts) if not value.strip()]


def _integers_as_text(raw: Sequence[str | int | None]) -> tuple[list[str | None], list[int]]:
    """``_integer_as_text`` of events.py over a column: integers within 64 bits as their decimal
    text; the rows of longer ones (``decode_event`` refuses them) come back apart, as ``""``."""
    if int not in set(map(type, raw)):
        return cast(list[str | None], raw), []
    texts: list[str | None] = []
    refused: list[int] = []
    for i, value in enumerate(raw):
        if isinstance(value, int):  # msgspec gives int for a JSON integer, never bool
            if value.bit_length() > 64:
                refused.append(i)
            value = str(value) if value.bit_length() <= 64 else ""
        texts.append(value)
    return texts, refused


def _seconds_of(text: str) -> float:
    """``parse_timestamp``'s reading of an RFC 3339 string, or nan where it refuses it."""
    try:
        return parse_timestamp(text)
    except Exception:  # ContractViolation, or a bug in a rule: decode_event says which
        return math.nan


def _float_or_nan(value: float | UnsetType) -> float:
    return math.nan if isinstance(value, UnsetType) else value


def _severity_or_nan(value: str | UnsetType) -> float:
    """A ticket's severity weight (absent: ``normal``), or nan for one ``decode_event`` refuses."""
    if isinstance(value, UnsetType):
        return TICKET_SEVERITIES["normal"]
    return TICKET_SEVERITIES.get(value, math.nan)


def _attributes(row: _Line) -> dict[str, str]:
    """A profile's attributes, in ``decode_event``'s order (the struct checked each is text)."""
    attributes: dict[str, str] = {}
    for key in _PROFILE_KEYS:
        value = getattr(row, key)
        if value is not None:
            attributes[key] = value
    return attributes


def _add_slow(batch: EventBatch, decoded: list[Event | InvalidEvent], at: list[int]) -> None:
    """Merge the lines ``decode_event`` answered into ``batch``, in input order."""
    events = [(i, event) for i, event in zip(at, decoded, strict=True)
              if isinstance(event, Event)]
    batch.invalid = [event for event in decoded if isinstance(event, InvalidEvent)]
    if not events:
        return
    fast_rows = len(batch)
    batch.customer_ids = batch.customer_ids + [event.customer_id for _, event in events]
    batch.event_ids = batch.event_ids + [event.event_id for _, event in events]
    batch.types = np.concatenate([batch.types, np.array([_TYPE_CODE[e.type] for _, e in events],
                                                        dtype=np.uint8)])
    batch.ts = np.concatenate([batch.ts, [event.ts for _, event in events]])
    batch.amount = np.concatenate([batch.amount, [event.amount for _, event in events]])
    batch.channel = np.concatenate([batch.channel, np.array(
        [_CHANNEL_CODE.get(event.channel, NO_CHANNEL) for _, event in events], dtype=np.int8)])
    batch.score = np.concatenate([batch.score, [math.nan if event.score is None else event.score
                                                for _, event in events]])
    batch.severity = np.concatenate([batch.severity, [event.severity for _, event in events]])
    batch.index = np.concatenate([batch.index, np.array([i for i, _ in events], dtype=np.int64)])
    for row, (_, event) in enumerate(events, start=fast_rows):
        if (event.attributes or event.type in (PROFILE, INTERVENTION)
                or (event.channel is not None and event.channel not in _CHANNEL_CODE)):
            batch.extras[row] = event
    order = np.argsort(batch.index, kind="stable")
    if (order == np.arange(len(order))).all():
        return
    new_row = np.empty_like(order)
    new_row[order] = np.arange(len(order))
    batch.customer_ids = [batch.customer_ids[i] for i in order]
    batch.event_ids = [batch.event_ids[i] for i in order]
    for name in ("types", "ts", "amount", "channel", "score", "severity", "index"):
        setattr(batch, name, getattr(batch, name)[order])
    batch.extras = {int(new_row[row]): event for row, event in batch.extras.items()}
