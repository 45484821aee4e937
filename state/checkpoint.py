"""A bucket's customers as one blob: the checkpoint codec of the columnar engine.

The columnar engine (:mod:`churnwatch.core.columnar`) holds a shard's customers as the columns
of :data:`~churnwatch.core.columns.SCHEMA`. The store keeps them as one blob per hash bucket
(:func:`~churnwatch.state.base.bucket_of`), written in one MULTI/EXEC with the shard's source
positions. :func:`encode_rows` makes the blob of a bucket's rows, :func:`decode_rows` puts them
back into a table (a worker resuming its shard), :func:`decode_customer` reads one customer's
state without decoding the whole bucket (``churnwatch explain``, the customer page).

The blob, format version 1::

    b"CWCK" | version (1 byte) | zstd frame (level 3, content size and checksum) of the body

    body = msgpack [columns, ids, labels, data, sparse]
    columns  str    the columns held, in the writer's SCHEMA order: "name:dtype" or
                    "name:dtypexwidth", separated by spaces ("first_seen:f8 ... channels:f8x25")
    ids      [str]  the customer ids, n of them
    labels   [str]  the segment and value-tier strings these rows use: the label columns
                    (LABEL_COLUMNS) hold indexes into this list (negative: none), not the
                    table's codes, which are the table's own
    data     bin    every column's n x width values, little-endian, one column after the other
                    in the order of ``columns``; a 2-D column counter by counter (all
                    customers' first counter, then the second ...)
    sparse   map    field (SPARSE_FIELDS) -> [[i, value], ...] for the customers i that have one

A reader takes a blob of an older schema (a column appended since reads as its default) and
refuses one naming a column it does not know, one whose column has another dtype or width than
its own, a newer format version, and a damaged or truncated blob, each with a ``ValueError``
that says what is wrong. Every column reads back bit for bit (a nan stays the same nan).

Measured, to choose the compression and the column transforms: stored bytes a customer, and
microseconds of CPU a customer to encode a bucket and to decode it into a table, and for one
customer of a bucket (``one``, a call; ``via table``: decoding the bucket into a fresh table and
reading their row), the least of two or three rounds of 7 to 9 runs on this 2-core machine while
other work ran beside it. Data: the first 200,000 lines of the bench workload through the
columnar shard (66,714 customers, 1,334 buckets of 50) and a simulated shop (``churnwatch
simulate --customers 2000 --days 365 --seed 3``, all 161,696 events: 2,000 customers, 40
buckets of 50), batches of 5,000, each customer's tier changes kept in ``history`` as the store
keeps them (a year, at least 3)::

                                bench                            shop
                                B     enc  dec   one via table   B     enc  dec   one via table
    today: to_wire, one         109.2 5.0  13.7   -     -        361.6 9.1  10.6   -     -
      msgpack value a customer
    no compression              483.2 4.7  2.8   146   194       544.5 2.7  3.1   170   219
    zlib level 1                 81.2 6.4  3.8   194   246       284.6 8.6  4.7   251   305
    lz4 (block)                  99.3 3.9  2.8   149   195       315.7 3.3  3.2   178   224
    zstd level 1                 79.9 5.0  3.2   169   219       289.9 3.9  3.6   199   251
    zstd level 3: chosen         76.0 4.6  3.4   162   213       282.2 4.4  3.9   204   257
    zstd 3, buckets of 32.6      83.1 5.2  3.7   145   180         -
      (2,048 a shard)

Column transforms, each on a prototype of the same layout with zstd 3 (each column its own
msgpack entry: 77.3 B, 5.5 and 4.3 us on the bench, 283.9 B, 6.0 and 4.2 us on the shop; 486.3
and 547.6 B uncompressed)::

                                        bench               shop
                                        B     enc   dec     B     enc   dec
    byte shuffle of numeric columns     99.2  5.8   5.6     293.7 6.4   5.4
    time columns as whole-second int32  84.6  8.5   4.8     285.4 9.2   4.5
      deltas against the bucket's
      least (nan: -1)
    time columns as float bits minus    85.7  5.6   4.5     288.4 5.9   4.3
      the first value's
    shuffle and second deltas           99.7  9.5   5.7     290.5 9.6   5.5
    columns all at their default in     77.0  7.5   3.8     283.3 8.0   3.8
      the bucket left out
    second deltas, no compression      445.0  7.5   4.1     506.3 7.0   4.0

So the columns are stored as they are, the whole body compressed once with zstd level 3: at
buckets of 50 a shuffle leaves planes of 50 bytes, and the compressor already finds the
repeated high bytes of the times and the runs of default values (a delta saves 41 B a customer
only without compression); leaving all-default columns out saves 0.3 to 0.6 B for about 2 us.
zstd 3 is 6 % (bench) and 1 % (shop) smaller than zlib 1 and faster to write, 23 % and 11 %
smaller than lz4; level 1 is no faster within the noise, for 3 to 5 % more bytes. Most of the
time is the Python around about 40 numpy calls a bucket (without compression 4.7 and 2.7 us to
encode, 2.8 and 3.1 us to decode). The blob is 30 % (bench) and 22 % (shop) smaller than
today's per-customer form, and a bucket decodes 4.1 and 2.7 times faster. A customer alone
(``decode_customer``) is read into a one-row table: 21 to 24 % cheaper than through a table of
the bucket, and 5 to 6 times under the millisecond a reader such as ``churnwatch explain`` may
spend. The column header is about 290 B of each blob (an empty bucket's blob is 298 B; 6 B a
customer at 50): a zstd dictionary of 16 KB trained on half the bench's buckets took the other
half from 77.4 to 65.9 B, at the price of a dictionary every reader keeps for as long as blobs
written with it exist; not used.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import msgpack
import numpy as np
import zstandard
from churnwatch.state.base import bucket_of

from churnwatch.core.columns import (
    COLUMNS,
    SCHEMA,
    SPARSE_FIELDS,
    Column,
    CustomerTable,
    set_from_state,
    to_state,
    to_states,
)
from churnwatch.core.customer import CustomerState

__all__ = ["FORMAT_VERSION", "LABEL_COLUMNS", "MAGIC", "BucketRows", "decode_customer",
           "decode_customers", "decode_rows", "decode_states", "encode_rows", "with_states"]

#: The first bytes of every bucket checkpoint.
MAGIC = b"CWCK"
#: The layout described in the module docstring; a reader refuses a newer one.
FORMAT_VERSION = 1
#: The columns holding label codes (:meth:`CustomerTable.label_code`), stored as indexes into
#: the blob's own label list since a table's codes are its own.
LABEL_COLUMNS = ("segment", "value_tier")
#: zstd level: 3 measured 3 to 5 % smaller than 1, no slower within the noise (module
#: docstring).
ZSTD_LEVEL = 3
#: The largest body a blob may hold once decompressed: a bucket of a hundred customers is tens
#: of kilobytes; a damaged frame header claiming more is refused before any allocation.
MAX_BODY_BYTES = 64 << 20

_PREFIX = len(MAGIC) + 1
_BODY_FIELDS = ("columns", "ids", "labels", "data", "sparse")
_codecs = threading.local()  # zstd contexts are not safe to share between threads


def _compressor() -> zstandard.ZstdCompressor:
    try:
        return _codecs.compressor  # type: ignore[no-any-return]
    except AttributeError:
        _codecs.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        return _codecs.compressor  # type: ignore[no-any-return]


def _decompressor() -> zstandard.ZstdDecompressor:
    try:
        return _codecs.decompressor  # type: ignore[no-any-return]
    except AttributeError:
        _codecs.decompressor = zstandard.ZstdDecompressor()
        return _codecs.decompressor  # type: ignore[no-any-return]


def _stored_dtype(column: Column) -> np.dtype[Any]:
    """The column's dtype as stored: little-endian whatever the machine."""
    return _little_endian(column.dtype)


@lru_cache(maxsize=64)
def _little_endian(dtype: str) -> np.dtype[Any]:
    return np.dtype(dtype).newbyteorder("<")


def _column_spec(column: Column) -> str:
    return f"{column.name}:{column.dtype}" + (f"x{column.width}" if column.width > 1 else "")


def _header(columns: Sequence[Column]) -> str:
    return " ".join(map(_column_spec, columns))


_SCHEMA_HEADER = _header(SCHEMA)


# -- writing -------------------------------------------------------------------------------------


def encode_rows(table: CustomerTable, rows: np.ndarray, *,
                columns: Sequence[Column] = SCHEMA) -> bytes:
    """The checkpoint blob of ``table``'s ``rows`` (a bucket's customers).

    The store calls it for every bucket a batch touched and writes the blobs in the batch's
    MULTI/EXEC; writing the same rows again gives the same blob, so a batch repeated after a
    resume rewrites what it wrote. ``columns`` is the schema written (:data:`SCHEMA`; another
    only to test readers of other versions).

    >>> table = CustomerTable()
    >>> rows = table.rows_for(["c1", "c2"], first_seen=[1_700_000_000.0, 1_700_000_100.0])
    >>> table["segment"][1] = table.label_code("fashion")
    >>> blob = encode_rows(table, rows)
    >>> blob[:5], len(blob) < 500
    (b'CWCK\\x01', True)
    >>> other = CustomerTable()
    >>> decode_rows(blob, other).tolist(), other.ids, other.label(int(other["segment"][1]))
    ([0, 1], ['c1', 'c2'], 'fashion')
    """
    rows = np.asarray(rows)
    if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
        raise ValueError(f"checkpoint: rows must be a 1-D array of row numbers, not "
                         f"{rows.dtype} of shape {rows.shape}")
    rows = rows.astype(np.intp, copy=False)
    count = len(table)
    if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= count):
        bad = rows[(rows < 0) | (rows >= count)][0]
        raise ValueError(f"checkpoint: row {int(bad)} is not a row of the table ({count} rows)")
    row_list = rows.tolist()
    labels, recode = _local_labels(table, rows, row_list, columns)
    parts = []
    for column in columns:
        values = table.columns[column.name][rows]
        if column.name in recode:
            values = recode[column.name]
        if column.width > 1:
            values = values.T  # counter by counter: each compresses with its own kind
        parts.append(np.ascontiguousarray(values, dtype=_stored_dtype(column)).tobytes())
    sparse: dict[str, list[list[Any]]] = {}
    for name in SPARSE_FIELDS:
        held = table.sparse[name]
        if held:
            entries = [[i, held[row]] for i, row in enumerate(row_list) if row in held]
            if entries:
                sparse[name] = entries
    ids = table.ids
    header = _SCHEMA_HEADER if columns is SCHEMA else _header(columns)
    body = msgpack.packb([header, [ids[row] for row in row_list], labels, b"".join(parts),
                          sparse], use_bin_type=True)
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"checkpoint: {len(rows)} customers make a body of {len(body)} bytes, "
                         f"more than a bucket may hold ({MAX_BODY_BYTES})")
    return MAGIC + bytes((FORMAT_VERSION,)) + _compressor().compress(body)


def _local_labels(table: CustomerTable, rows: np.ndarray, row_list: list[int],
                  columns: Sequence[Column]) -> tuple[list[str], dict[str, np.ndarray]]:
    """The label strings ``rows`` use, and each label column re-coded as indexes into them."""
    held = [c.name for c in columns if c.name in LABEL_COLUMNS]
    values = {name: table.columns[name][rows] for name in held}
    codes = np.concatenate([values[name] for name in held]) if held else np.zeros(0, np.int64)
    used = np.unique(codes[codes >= 0])
    if used.size and int(used[-1]) >= len(table.labels):
        name = next(n for n in held if int(values[n].max()) == int(used[-1]))
        row = row_list[int(np.argmax(values[name]))]
        raise ValueError(f"checkpoint: {name} of customer {table.ids[row]!r} (row {row}) is "
                         f"label code {int(used[-1])}, but the table has "
                         f"{len(table.labels)} labels")
    # In the strings' order, not the table's codes: a worker that read its shard back from the
    # checkpoints interned the labels in another order, and must write the same bytes.
    strings = [table.labels[code] for code in used.tolist()]
    order = sorted(range(len(strings)), key=strings.__getitem__)
    place = np.empty(len(order), dtype=np.int64)
    place[order] = np.arange(len(order))
    recode = {name: np.where(v >= 0, place[np.searchsorted(used, v)] if len(order) else v,
                             v).astype(v.dtype)
              for name, v in values.items()}
    return [strings[i] for i in order], recode


# -- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Bucket:
    """A blob's body, checked against this churnwatch's schema."""

    ids: list[str]
    labels: list[str]
    #: Each column held, with where its values start in ``data``.
    columns: tuple[tuple[Column, int], ...]
    data: bytes
    sparse: dict[str, list[list[Any]]]

    def values(self, column: Column, offset: int) -> np.ndarray:
        """The column's values, ``(n,)`` or ``(n, width)`` (a read-only view of ``data``)."""
        n = len(self.ids)
        flat = np.frombuffer(self.data, _stored_dtype(column), n * column.width, offset)
        return flat.reshape(column.width, n).T if column.width > 1 else flat

    def row_values(self, column: Column, offset: int, i: int) -> np.ndarray:
        """Customer ``i``'s values of the column, ``(width,)``."""
        dtype = _stored_dtype(column)
        return np.ndarray((column.width,), dtype, self.data, offset + i * dtype.itemsize,
                          (len(self.ids) * dtype.itemsize,))


def decode_rows(blob: bytes, table: CustomerTable) -> np.ndarray:
    """Put the customers of a bucket checkpoint into ``table``; their rows.

    A customer the table has is overwritten, every column and sparse field (a column the blob
    lacks, added to the schema after it was written, at its default); a new one gets a row.
    The worker calls it for every bucket of its shard when it takes the shard over. Nothing is
    written when the blob is refused (``ValueError``).
    """
    bucket = _parse(blob)
    n = len(bucket.ids)
    decoded = [(column, bucket.values(column, offset)) for column, offset in bucket.columns]
    first_seen = next((v.tolist() for c, v in decoded if c.name == "first_seen"),
                      [COLUMNS["first_seen"].default] * n)
    rows = table.rows_for(bucket.ids, first_seen)
    codes = np.array([table.label_code(label) for label in bucket.labels] + [-1], np.int64)
    held = set()
    storage = table.columns
    for column, values in decoded:
        held.add(column.name)
        if column.name in LABEL_COLUMNS:
            values = np.where(values >= 0, codes[np.maximum(values, 0)], values)
        storage[column.name][rows] = values
    for column in SCHEMA:
        if column.name not in held:
            storage[column.name][rows] = column.default
    row_list = rows.tolist()
    for name in SPARSE_FIELDS:
        kept = table.sparse[name]
        if kept:
            for row in row_list:
                kept.pop(row, None)
        for i, value in bucket.sparse.get(name, ()):
            kept[row_list[i]] = value
    return rows


def decode_customers(blob: bytes, customer_ids: Sequence[str]) -> dict[str, CustomerState]:
    """The states of those of ``customer_ids`` the bucket checkpoint holds, each read from its
    own row of each column (the blob parsed once): a reader wanting a few customers of a big
    bucket (the worklist's page) decodes no one else.

    >>> table = CustomerTable()
    >>> rows = table.rows_for(["c1", "c2", "c3"], first_seen=[5.0, 7.0, 9.0])
    >>> table["orders"][2] = 3
    >>> got = decode_customers(encode_rows(table, rows), ["c3", "c1", "c9"])
    >>> sorted(got), got["c3"].purchases.orders
    (['c1', 'c3'], 3)
    """
    bucket = _parse(blob)
    places = {cid: i for i, cid in enumerate(bucket.ids)}
    wanted = [(cid, places[cid]) for cid in dict.fromkeys(customer_ids) if cid in places]
    if not wanted:
        return {}
    table = CustomerTable(capacity=len(wanted))
    for label in bucket.labels:  # checked distinct and non-empty: the codes are the blob's
        table.label_code(label)
    rows = table.rows_for([cid for cid, _ in wanted], [0.0] * len(wanted))
    at = np.array([i for _, i in wanted], dtype=np.intp)
    for column, offset in bucket.columns:
        table.columns[column.name][rows] = bucket.values(column, offset)[at]
    sparse = {name: dict(map(tuple, bucket.sparse.get(name, ()))) for name in SPARSE_FIELDS}
    for row, (_, i) in zip(rows.tolist(), wanted, strict=True):
        for name in SPARSE_FIELDS:
            if i in sparse[name]:
                table.sparse[name][row] = sparse[name][i]
    return dict(zip((cid for cid, _ in wanted), to_states(table, rows), strict=True))


def decode_customer(blob: bytes, customer_id: str) -> CustomerState | None:
    """One customer's state from a bucket checkpoint (``None`` when the bucket does not hold
    them), reading only their row of each column.

    >>> table = CustomerTable()
    >>> rows = table.rows_for(["c1", "c2"], first_seen=[5.0, 7.0])
    >>> table["orders"][1] = 3
    >>> blob = encode_rows(table, rows)
    >>> decode_customer(blob, "c2").purchases.orders, decode_customer(blob, "c3")
    (3, None)
    """
    bucket = _parse(blob)
    try:
        i = bucket.ids.index(customer_id)
    except ValueError:
        return None
    one = CustomerTable(capacity=1)
    for label in bucket.labels:  # checked distinct and non-empty: the codes are the blob's
        one.label_code(label)
    one.rows_for([customer_id], [0.0])
    for column, offset in bucket.columns:
        values = bucket.row_values(column, offset, i)
        one.columns[column.name][0] = values if column.width > 1 else values[0]
    for name in SPARSE_FIELDS:
        for j, value in bucket.sparse.get(name, ()):
            if j == i:
                one.sparse[name][0] = value
    return to_state(one, 0)


def with_states(blob: bytes | None, states: Iterable[tuple[str, CustomerState]]
                ) -> tuple[bytes, int]:
    """The checkpoint of a bucket holding ``blob``'s customers (none for ``None``) with
    ``states`` put in, and how many customers it holds: a commit of the reference engine's
    states, and the conversion of a store of the earlier format.

    >>> blob, count = with_states(None, [("c1", CustomerState(5.0))])
    >>> count, with_states(blob, [("c2", CustomerState(7.0))])[1]
    (1, 2)
    """
    table = CustomerTable()
    if blob is not None:
        decode_rows(blob, table)
    for cid, state in states:
        set_from_state(table, int(table.rows_for([cid], [state.first_seen])[0]), state)
    return encode_rows(table, np.arange(len(table))), len(table)


def decode_states(blobs: Sequence[bytes]) -> list[tuple[str, CustomerState]]:
    """Every customer of some bucket checkpoints, as the reference model's states (the
    readers: ``export``, the pages, a store's ``commit`` of states)."""
    table = CustomerTable()
    rows = [decode_rows(blob, table) for blob in blobs]
    if not rows:
        return []
    every = np.concatenate(rows)
    return list(zip((table.ids[r] for r in every.tolist()), to_states(table, every),
                    strict=True))


class BucketRows:
    """Which rows of a shard's table make each bucket (:func:`~churnwatch.state.base.bucket_of`
    their ids), kept as the table grows: a commit rewrites the checkpoint of every bucket a
    changed row is in, with all of that bucket's rows.

    >>> table = CustomerTable()
    >>> rows = table.rows_for([f"c{i}" for i in range(6)], [0.0] * 6)
    >>> groups = BucketRows(shards=1, buckets=2).groups(table, np.array([4]))
    >>> [(b, r.tolist()) for b, r in groups] == [
    ...     (bucket_of("c4", 1, 2), [i for i in range(6) if bucket_of(f"c{i}", 1, 2)
    ...                              == bucket_of("c4", 1, 2)])]
    True
    """

    def __init__(self, shards: int, buckets: int) -> None:
        self.shards = shards
        self.buckets = buckets
        self._table: CustomerTable | None = None
        self._of_row = np.zeros(0, dtype=np.int64)
        self._order: np.ndarray | None = None
        self._bounds = np.zeros(0, dtype=np.int64)

    def of_rows(self, table: CustomerTable) -> np.ndarray:
        """The bucket of every row of ``table``."""
        if table is not self._table:
            self._table, self._of_row, self._order = table, np.zeros(0, dtype=np.int64), None
        known, count = len(self._of_row), len(table)
        if known < count:
            shards, buckets = self.shards, self.buckets
            new = np.fromiter((bucket_of(cid, shards, buckets) for cid in table.ids[known:count]),
                              dtype=np.int64, count=count - known)
            self._of_row = np.concatenate([self._of_row, new])
            self._order = None
        return self._of_row

    def groups(self, table: CustomerTable, rows: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Each bucket holding one of ``rows``, with every row of the table in it (ascending)."""
        of_row = self.of_rows(table)
        if self._order is None:
            self._order = np.argsort(of_row, kind="stable")
            self._bounds = np.searchsorted(of_row[self._order], np.arange(self.buckets + 1))
        order, bounds = self._order, self._bounds
        return [(bucket, order[bounds[bucket]:bounds[bucket + 1]])
                for bucket in np.unique(of_row[rows]).tolist()]


def _parse(blob: bytes) -> _Bucket:
    """The blob's body, every part checked (``ValueError`` naming what is wrong)."""
    head = bytes(blob[:_PREFIX])
    if len(head) < _PREFIX or head[:len(MAGIC)] != MAGIC:
        raise ValueError(f"checkpoint: not a bucket checkpoint (starts with {head!r}, not "
                         f"{MAGIC!r})")
    if head[-1] != FORMAT_VERSION:
        raise ValueError(f"checkpoint: format version {head[-1]} is not {FORMAT_VERSION}, the "
                         f"one this churnwatch reads (written by a newer churnwatch?)")
    frame = blob[_PREFIX:]
    try:
        size = zstandard.frame_content_size(frame)
        if not 0 <= size <= MAX_BODY_BYTES:
            raise ValueError(f"checkpoint: the zstd frame claims a body of {size} bytes "
                             f"(at most {MAX_BODY_BYTES}; -1: unknown): damaged")
        raw = _decompressor().decompress(frame, allow_extra_data=False)
    except zstandard.ZstdError as error:
        raise ValueError(f"checkpoint: the compressed body is damaged or truncated "
                         f"({len(blob)} bytes): {error}") from error
    try:
        body = msgpack.unpackb(raw)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise ValueError(f"checkpoint: the body is not valid msgpack: {error}") from error
    if not isinstance(body, list) or len(body) != len(_BODY_FIELDS):
        raise ValueError(f"checkpoint: the body is not a list of {len(_BODY_FIELDS)} parts "
                         f"({', '.join(_BODY_FIELDS)})")
    spec, ids, labels, data, sparse = body
    _expect(spec, str, "columns")
    _expect_strings(ids, "ids")
    _expect_strings(labels, "labels")
    _expect(data, bytes, "data")
    _expect(sparse, dict, "sparse")
    columns = _columns_of(spec)
    n = len(ids)
    if len(set(ids)) != n:
        twice = sorted({cid for cid in ids if ids.count(cid) > 1})
        raise ValueError(f"checkpoint: customer ids {twice} appear more than once")
    if len(set(labels)) != len(labels) or "" in labels:
        raise ValueError(f"checkpoint: labels {labels} are not distinct non-empty strings")
    placed = []
    offset = 0
    for column in columns:
        placed.append((column, offset))
        offset += n * column.width * _stored_dtype(column).itemsize
    if offset != len(data):
        raise ValueError(f"checkpoint: the column data is {len(data)} bytes, the header's "
                         f"{len(columns)} columns for {n} customers take {offset}")
    unknown = sorted(set(sparse) - set(SPARSE_FIELDS), key=str)
    if unknown:
        raise ValueError(f"checkpoint: sparse fields {unknown} are not in this churnwatch's "
                         f"{list(SPARSE_FIELDS)} (written by a newer churnwatch?)")
    for name, entries in sparse.items():
        if not isinstance(entries, list) or not all(
                isinstance(e, list) and len(e) == 2 and type(e[0]) is int and 0 <= e[0] < n
                for e in entries):
            raise ValueError(f"checkpoint: sparse field {name!r} is not a list of [customer "
                             f"index below {n}, value] pairs")
    bucket = _Bucket(ids, labels, tuple(placed), data, sparse)
    for column, offset in placed:
        if column.name in LABEL_COLUMNS:
            codes = bucket.values(column, offset)
            if codes.size and int(codes.max()) >= len(labels):
                cid = ids[int(np.argmax(codes))]
                raise ValueError(f"checkpoint: {column.name} of customer {cid!r} is label "
                                 f"{int(codes.max())}, but the blob holds {len(labels)} labels")
    return bucket


def _expect(value: object, kind: type, part: str) -> None:
    if not isinstance(value, kind):
        raise ValueError(f"checkpoint: the body's {part} is {type(value).__name__}, not "
                         f"{kind.__name__}")


def _expect_strings(value: object, part: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"checkpoint: the body's {part} is not a list of strings")


@lru_cache(maxsize=64)
def _columns_of(spec: str) -> tuple[Column, ...]:
    """The schema columns a blob's header names, checked: every one known, with the dtype and
    width this churnwatch gives it, none twice."""
    names, unknown, mismatched = [], [], []
    for entry in spec.split(" ") if spec else []:
        name, colon, kind = entry.partition(":")
        dtype, _, width = kind.partition("x")
        if not colon or not name or not dtype or not (width.isdigit() or not width):
            raise ValueError(f"checkpoint: column entry {entry!r} of the header is not "
                             f"name:dtype or name:dtypexwidth")
        names.append(name)
        column = COLUMNS.get(name)
        if column is None:
            unknown.append(name)
        elif (dtype, int(width or 1)) != (column.dtype, column.width):
            mismatched.append(f"{name} is {kind} in the blob, {_column_spec(column)} here")
    if unknown:
        raise ValueError(f"checkpoint: columns {unknown} are not in this churnwatch's schema "
                         f"(written by a newer churnwatch?)")
    if mismatched:
        raise ValueError(f"checkpoint: columns of another dtype or width: "
                         f"{'; '.join(mismatched)}")
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"checkpoint: columns {twice} appear more than once in the header")
    return tuple(COLUMNS[name] for name in names)
