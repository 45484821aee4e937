"""The bucket checkpoint (state/checkpoint.py): random tables read back bit for bit, into an
empty table or over the customers a table already has; one customer reads alone; a simulated
shard's buckets read back exactly and take less room than today's per-customer form; a blob of
an older schema reads the columns it lacks as their defaults; a blob naming an unknown column,
of a newer format, truncated or damaged is refused with a ValueError saying what is wrong."""

from __future__ import annotations

import re
import struct
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from churnwatch.state.base import bucket_of, history_entry
from churnwatch.state.checkpoint import (
    FORMAT_VERSION,
    LABEL_COLUMNS,
    MAGIC,
    decode_customer,
    decode_rows,
    encode_rows,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from churnwatch.core.columnar import ColumnarShard
from churnwatch.core.columns import SCHEMA, SPARSE_FIELDS, Column, CustomerTable, to_state
from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.customer import CustomerState
from churnwatch.core.events import Event, decode_event
from churnwatch.core.history import keep_history
from churnwatch.core.records import Incoming, ShardState
from churnwatch.simulator import ShopSimulator

# -- random tables --------------------------------------------------------------------------------

small_ints = st.integers(-(2**31), 2**31 - 1)
# CustomerState.outreach (churnwatch.core.winback, CustomerState._intervened)
outreach = st.fixed_dictionaries(
    {"playbook": st.text(max_size=20), "assigned_at": small_ints},
    optional={"holdout": st.booleans(), "contacted_at": small_ints, "counted": st.booleans(),
              "log": st.lists(st.tuples(small_ints, st.none() | st.text(max_size=8),
                                        st.none() | st.text(max_size=8)).map(list),
                              max_size=10)})
# CustomerState.history (churnwatch.core.history.encode_change): time, tiers and cause, new
# score, old score or None, evidence numbers
stored_change = st.tuples(small_ints, st.integers(0, 255), st.integers(0, 100),
                          st.none() | st.integers(0, 100),
                          st.lists(st.integers(0, 10_000), max_size=8)).map(
    lambda t: [*t[:4], *t[4]])
history = st.lists(stored_change, min_size=1, max_size=6)


@st.composite
def tables(draw: st.DrawFn, ids: st.SearchStrategy[list[str]] | None = None) -> CustomerTable:
    """A table of random customers: every column at random values of its dtype (nan, infinities
    and the extreme integers among them), random labels, random sparse fields."""
    customer_ids = draw(ids if ids is not None else
                        st.lists(st.text(max_size=12), unique=True, max_size=12))
    labels = draw(st.lists(st.text(min_size=1, max_size=10), unique=True, max_size=4))
    table = CustomerTable(capacity=draw(st.integers(1, 40)))
    for label in labels:
        table.label_code(label)
    n = len(customer_ids)
    table.rows_for(customer_ids, [0.0] * n)
    for column in SCHEMA:
        shape = (n, column.width) if column.width > 1 else (n,)
        if column.name in LABEL_COLUMNS:
            elements = st.integers(-3, len(labels) - 1)
            values = draw(hnp.arrays(column.dtype, shape, elements=elements))
        else:
            values = draw(hnp.arrays(column.dtype, shape))
        table.columns[column.name][:n] = values
    for name, sparse_values in (("outreach", outreach), ("history", history)):
        for row in draw(st.sets(st.integers(0, max(n - 1, 0)), max_size=n)):
            table.sparse[name][row] = draw(sparse_values)
    return table


def by_customer(table: CustomerTable, customer_id: str) -> dict[str, Any]:
    """A customer's row as comparable values: every column's bytes (a label column's strings),
    every sparse field."""
    row = table.index[customer_id]
    out: dict[str, Any] = {}
    for column in SCHEMA:
        value = table.columns[column.name][row]
        if column.name in LABEL_COLUMNS:
            out[column.name] = table.label(int(value)) if value >= 0 else int(value)
        else:
            out[column.name] = np.asarray(value).tobytes()
    for name in SPARSE_FIELDS:
        out[name] = table.sparse[name].get(row, "absent")
    return out


def plain(value: Any) -> Any:
    """A state's value with every float as its bytes (so nan equals the same nan)."""
    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if hasattr(value, "__slots__"):
        return type(value).__name__, {n: plain(getattr(value, n)) for n in value.__slots__}
    return value


@settings(max_examples=150, deadline=None)
@given(tables(), st.data())
def test_random_rows_read_back_bit_for_bit_into_an_empty_table(table: CustomerTable,
                                                               data: st.DataObject) -> None:
    rows = np.array(data.draw(st.permutations(range(len(table)))), dtype=np.int64)
    rows = rows[:data.draw(st.integers(0, len(rows)))]
    blob = encode_rows(table, rows)
    assert encode_rows(table, rows) == blob  # a repeated batch rewrites the same bytes
    other = CustomerTable(capacity=1)
    decoded = decode_rows(blob, other)
    assert [other.ids[r] for r in decoded] == [table.ids[r] for r in rows]
    assert len(other) == len(rows)
    for row in rows.tolist():
        assert by_customer(other, table.ids[row]) == by_customer(table, table.ids[row])


@st.composite
def overlapping_tables(draw: st.DrawFn) -> tuple[CustomerTable, CustomerTable]:
    """A bucket's table and a table holding half of its customers (at other values, with
    other labels) and a customer of another bucket."""
    ids = draw(st.lists(st.text(max_size=6), unique=True, min_size=1, max_size=10))
    source = draw(tables(st.just(ids)))
    kept = draw(st.permutations(ids))[:len(ids) // 2]
    target = draw(tables(st.just([*kept, "a customer of another bucket"])))
    return source, target


@settings(max_examples=100, deadline=None)
@given(overlapping_tables())
def test_a_bucket_overwrites_the_customers_a_table_has_and_leaves_the_others(
        pair: tuple[CustomerTable, CustomerTable]) -> None:
    source, target = pair
    others = {cid: by_customer(target, cid) for cid in target.ids if cid not in source.index}
    decode_rows(encode_rows(source, np.arange(len(source))), target)
    for cid in source.ids:
        assert by_customer(target, cid) == by_customer(source, cid)
    for cid, before in others.items():
        assert by_customer(target, cid) == before


@settings(max_examples=100, deadline=None)
@given(tables(), st.text(max_size=6))
def test_one_customer_reads_as_the_state_of_their_row(table: CustomerTable,
                                                      stranger: str) -> None:
    blob = encode_rows(table, np.arange(len(table)))
    for row, cid in enumerate(table.ids):
        state = decode_customer(blob, cid)
        assert isinstance(state, CustomerState)
        assert plain(state) == plain(to_state(table, row))
    if stranger not in table.index:
        assert decode_customer(blob, stranger) is None


def test_a_simulated_shards_buckets_read_back_exactly_and_smaller_than_per_customer() -> None:
    # A simulated shop through the columnar shard, its transitions kept in each customer's
    # history as the store keeps them; every bucket of 2048 round trips.
    shard = ColumnarShard(0, ChurnwatchConfig(), ShardState())
    table = shard.table
    events = [decode_event(raw, position=f"simulated:{n}") for n, raw in enumerate(
        ShopSimulator(customers=200, seed=3, start=1_700_000_000.0, days=200).events())]
    for start in range(0, len(events), 1000):
        batch = [e for e in events[start:start + 1000] if isinstance(e, Event)]
        result = shard.process_items([Incoming(e) for e in batch], max(e.ts for e in batch))
        for change in result.transitions:
            row = table.index[change.customer_id]
            table.sparse["history"][row] = keep_history(
                [history_entry(change), *table.sparse["history"].get(row, [])], change.at,
                365.0, 3)
    assert table.sparse["history"] and table.sparse["outreach"]
    buckets: dict[int, list[int]] = {}
    for row, cid in enumerate(table.ids):
        buckets.setdefault(bucket_of(cid, 1, 8), []).append(row)
    stored = 0
    copy = CustomerTable()
    for rows in buckets.values():
        blob = encode_rows(table, np.array(rows))
        stored += len(blob)
        decode_rows(blob, copy)
        for row in rows:
            cid = table.ids[row]
            assert by_customer(copy, cid) == by_customer(table, cid)
            assert plain(decode_customer(blob, cid)) == plain(to_state(table, row))
    per_customer = sum(len(msgpack.packb(to_state(table, row).to_wire()))
                       for row in range(len(table)))
    assert len(copy) == len(table) == 200
    assert stored < 0.9 * per_customer


# -- schema versions ------------------------------------------------------------------------------


def shop() -> CustomerTable:
    """Three customers with something in every column and sparse field."""
    table = CustomerTable()
    rows = table.rows_for(["c1", "c2", "c3"], [1_700_000_000.0, 1_700_000_100.0, 0.0])
    for k, column in enumerate(SCHEMA):
        values = k + 1 + np.arange(3 * column.width)
        table.columns[column.name][rows] = values.reshape(3, -1) if column.width > 1 else values
    table["segment"][:] = [table.label_code("fashion"), -1, table.label_code("beauty")]
    table["value_tier"][:] = [-1, table.label_code("high"), -1]
    table.sparse["outreach"][1] = {"playbook": "winback_offer", "assigned_at": 1_700_000_050}
    table.sparse["history"][2] = [[1_700_000_000, 54, 29, 41, 15, 0, 75, 21, 4]]
    return table


def test_a_blob_of_a_schema_without_the_last_column_reads_it_as_its_default() -> None:
    table = shop()
    last = SCHEMA[-1]
    assert not (table[last.name] == last.default).any()
    blob = encode_rows(table, np.arange(3), columns=SCHEMA[:-1])
    fresh, reused = CustomerTable(), shop()
    for target in (fresh, reused):
        decode_rows(blob, target)
        assert (target[last.name] == last.default).all()
        assert target["orders"].tolist() == table["orders"].tolist()
        assert plain(decode_customer(blob, "c2")) == plain(to_state(target, target.index["c2"]))


def test_a_blob_naming_a_column_this_schema_lacks_is_refused_by_name() -> None:
    table = shop()
    later = Column("loyalty_points", "i4", "loyalty", "a column of a later churnwatch")
    table.columns[later.name] = np.arange(len(table.columns["orders"]), dtype=np.int32)
    blob = encode_rows(table, np.arange(3), columns=(*SCHEMA, later))
    target = CustomerTable()
    with pytest.raises(ValueError, match="loyalty_points.*newer churnwatch"):
        decode_rows(blob, target)
    assert len(target) == 0  # nothing written
    with pytest.raises(ValueError, match="loyalty_points"):
        decode_customer(blob, "c1")


def test_a_blob_whose_column_has_another_dtype_is_refused_by_name() -> None:
    table = shop()
    wider = [Column("orders", "i8", "purchases", "orders") if c.name == "orders" else c
             for c in SCHEMA]
    table.columns["orders"] = table.columns["orders"].astype(np.int64)
    with pytest.raises(ValueError, match="orders is i8 in the blob, orders:i4 here"):
        decode_rows(encode_rows(table, np.arange(3), columns=wider), CustomerTable())


# -- damaged blobs --------------------------------------------------------------------------------


def blob_of(body: object, version: int = FORMAT_VERSION) -> bytes:
    """A well-compressed blob around any body."""
    return MAGIC + bytes((version,)) + zstandard.ZstdCompressor(write_checksum=True).compress(
        msgpack.packb(body, use_bin_type=True))


def readers(blob: bytes) -> list[str]:
    """What each reader says of ``blob`` (both must refuse it alike)."""
    messages = []
    for read in (lambda: decode_rows(blob, CustomerTable()), lambda: decode_customer(blob, "c1")):
        with pytest.raises(ValueError) as refused:
            read()
        messages.append(str(refused.value))
    return messages


def refused_or_intact(blob: bytes, written: CustomerTable) -> None:
    """``blob`` is refused with a ValueError by both readers, or reads back all of ``written``
    (a damaged byte that zstd's checksum finds harmless: the same body)."""
    try:
        table = CustomerTable()
        decode_rows(blob, table)
    except ValueError:
        readers(blob)
        return
    for cid in written.ids:
        assert by_customer(table, cid) == by_customer(written, cid)
        assert plain(decode_customer(blob, cid)) == plain(to_state(written, written.index[cid]))


def test_every_truncation_and_every_flipped_byte_is_refused_or_harmless() -> None:
    table = shop()
    blob = encode_rows(table, np.arange(3))
    for cut in range(len(blob)):
        readers(blob[:cut])
    refused = 0
    for at in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(blob)
            damaged[at] ^= mask
            try:
                decode_rows(bytes(damaged), CustomerTable())
            except ValueError:
                refused += 1
            refused_or_intact(bytes(damaged), table)
    assert refused > 2.9 * len(blob)  # the checksum leaves few flips unseen, all harmless
    readers(blob + b"\x00")


def test_a_damaged_blob_is_refused_saying_what_is_wrong() -> None:
    good = encode_rows(shop(), np.arange(3))
    spec, ids, labels, data, sparse = msgpack.unpackb(
        zstandard.ZstdDecompressor().decompress(good[len(MAGIC) + 1:]))
    cases = {
        b"XXXX" + good[4:]: "not a bucket checkpoint",
        good[:5] + b"\x28\xb5\x2f\xfd": "compressed body is damaged or truncated",
        blob_of([spec, ids, labels, data, sparse], FORMAT_VERSION + 1):
            f"format version {FORMAT_VERSION + 1}",
        MAGIC + bytes((FORMAT_VERSION,)) + zstandard.ZstdCompressor().compress(b"\xc1"):
            "not valid msgpack",
        blob_of([spec, ids, labels, data]): "not a list of 5 parts",
        blob_of([spec, ids, labels, data[:-1], sparse]): "column data is",
        blob_of([spec, ["c1", "c2", "c1"], labels, data, sparse]): r"\['c1'\] appear more",
        blob_of([spec, ids, ["fashion", "fashion"], data, sparse]): "not distinct",
        blob_of([spec, ids, labels[:1], data, sparse]): "segment of customer 'c1' is label 1",
        blob_of([spec, ids, labels, data, {"loyalty": []}]): r"sparse fields \['loyalty'\]",
        blob_of([spec, ids, labels, data, {"history": [[3, []]]}]): "'history' is not a list",
        blob_of([spec.replace("orders:i4", "orders"), ids, labels, data, sparse]):
            "column entry 'orders'",
        blob_of([spec + " orders:i4", ids, labels, data, sparse]): r"\['orders'\] appear more",
        blob_of([spec, ids, labels, "data", sparse]): "data is str, not bytes",
        blob_of([spec, [1, 2, 3], labels, data, sparse]): "ids is not a list of strings",
    }
    # A frame header claiming an enormous body: refused before anything is allocated.
    frame = good[len(MAGIC) + 1:]
    assert frame[4] == 0x64  # single segment, checksum, a 2-byte content size
    huge = (good[:len(MAGIC) + 1] + frame[:4] + b"\xe4" + (1 << 60).to_bytes(8, "little")
            + frame[7:])
    cases[huge] = f"claims a body of {1 << 60} bytes"
    for blob, says in cases.items():
        for message in readers(blob):
            assert message.startswith("checkpoint: ")
            assert re.search(says, message), (says, message)


def test_encoding_refuses_a_row_the_table_lacks_and_a_label_it_does_not_hold() -> None:
    table = shop()
    with pytest.raises(ValueError, match="row 3 is not a row of the table"):
        encode_rows(table, np.array([0, 3]))
    table["value_tier"][1] = 7
    with pytest.raises(ValueError, match="value_tier of customer 'c2' .*label code 7"):
        encode_rows(table, np.arange(3))
