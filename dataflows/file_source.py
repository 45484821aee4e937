"""JSON Lines files as a replayable Bytewax source: one partition per file.

A file may be gzip-compressed (recognised by its first two bytes, whatever its name), and ``-``
names standard input. The snapshot is the (uncompressed) byte offset and line number of the
next line, so a resumed replay of a file reads on from where the last snapshot was taken; the
engine's per-customer offsets make lines read twice around a resume harmless. Standard input
cannot be rewound: a resumed replay of ``-`` reads on from wherever the pipe is.
"""

from __future__ import annotations

import gzip
import io
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from churnwatch.dataflows.messages import RawMessage

from churnwatch.core.events import MAX_PAYLOAD_BYTES

#: A line is read up to this many bytes; the rest of a longer one is skipped (it is a
#: ``too_large`` dead letter whatever follows), so one endless line cannot exhaust memory.
LINE_LIMIT = MAX_PAYLOAD_BYTES + 2

STDIN = "-"
#: A gzip member's first bytes: ID1, ID2 and CM 8 (deflate, the only method RFC 1952 defines).
GZIP_MAGIC = b"\x1f\x8b\x08"


def input_label(path: str | Path) -> str:
    """How positions name an input: the file's name, or ``stdin`` for ``-``.

    >>> input_label("/data/orders.jsonl.gz"), input_label("-")
    ('orders.jsonl.gz', 'stdin')
    """
    return "stdin" if str(path) == STDIN else Path(path).name


def open_input(path: str | Path) -> BinaryIO:
    """Open an event file for reading bytes: ``-`` is standard input, and a gzip stream (told by
    its magic bytes, not its suffix) is decompressed on the fly. The caller closes it."""
    if str(path) == STDIN:
        stdin = sys.stdin.buffer
        head = stdin.read(len(GZIP_MAGIC))
        # Standard input cannot seek back: put the sniffed bytes in front of the rest.
        stream: BinaryIO = io.BufferedReader(_Prepended(head, stdin))  # type: ignore[arg-type]
        if head == GZIP_MAGIC:
            return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
        return stream
    if _is_gzip_file(path):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")  # noqa: SIM115 - the caller closes it


def _is_gzip_file(path: str | Path) -> bool:
    """Whether a file is gzip: its magic bytes, and a header that decodes. A plain file that
    merely starts with those bytes (a garbage first line) is read as plain text, its lines
    dead-lettered as usual; a gzip file cut short after its first bytes is still gzip, and
    its read error names the line it stopped at."""
    with open(path, "rb") as probe:
        if probe.read(len(GZIP_MAGIC)) != GZIP_MAGIC:
            return False
    try:
        with gzip.open(path, "rb") as handle:
            handle.read(1)
    except (OSError, EOFError, zlib.error):
        return False
    return True


def count_lines(path: str | Path) -> int:
    """Lines in an event file (decompressed), for a progress bar's total."""
    with open_input(path) as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


class _Prepended(io.RawIOBase):
    """A stream that yields ``head`` and then whatever ``rest`` yields."""

    def __init__(self, head: bytes, rest: io.BufferedIOBase) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read1(len(buffer))  # what is there now: a pipe may never fill it
        buffer[:len(data)] = data
        return len(data)


class FileSource(FixedPartitionedSource[RawMessage, tuple[int, int]]):
    """Reads JSON Lines files in batches; each file is a partition named ``file:<abs path>``
    (``file:-`` for standard input).

    ``labels`` rename inputs in positions (``orders.jsonl:17``): the backtest replays a copy of
    the user's file and names the user's file in its dead letters.

    A file that cannot be read to its end (a truncated gzip stream) ends its partition where it
    breaks and leaves a message in :attr:`read_errors`, for the caller to report once the run is
    over: an exception raised inside the worker would end the run with a Rust panic instead.
    """

    def __init__(self, paths: Sequence[str | Path], batch_size: int = 5000,
                 labels: Mapping[str, str] | None = None) -> None:
        self.paths = [STDIN if str(p) == STDIN else str(Path(p).resolve()) for p in paths]
        self.batch_size = batch_size
        given = {(STDIN if str(k) == STDIN else str(Path(k).resolve())): v
                 for k, v in (labels or {}).items()}
        self.labels = {p: given.get(p, input_label(p)) for p in self.paths}
        self.read_errors: list[str] = []

    def list_parts(self) -> list[str]:
        """Called by Bytewax on every worker at start: one partition per file."""
        return [f"file:{p}" for p in self.paths]

    def build_part(self, step_id: str, for_part: str, resume_state: tuple[int, int] | None
                   ) -> _FilePartition:
        """Called once per partition on the worker that owns it, with the snapshot on resume."""
        path = for_part[len("file:"):]
        return _FilePartition(path, for_part, self.labels[path], self.batch_size, resume_state,
                              self.read_errors)


class _FilePartition(StatefulSourcePartition[RawMessage, tuple[int, int]]):
    def __init__(self, path: str, name: str, label: str, batch_size: int,
                 resume_state: tuple[int, int] | None, read_errors: list[str]) -> None:
        self._file = open_input(path)
        self._read_errors = read_errors
        self._name = name
        self._label = label
        self._batch_size = batch_size
        self._byte, self._line = resume_state or (0, 0)
        if self._byte and path != STDIN:
            self._file.seek(self._byte)

    def next_batch(self) -> list[RawMessage]:
        if self._file.closed:  # a read error ended the file with the previous batch
            raise StopIteration
        batch: list[RawMessage] = []
        now = time.time()
        readline = self._file.readline
        while len(batch) < self._batch_size:
            try:
                line = readline(LINE_LIMIT)
            except (OSError, EOFError, zlib.error) as exc:
                self._file.close()
                self._read_errors.append(f"{self._label}: unreadable after line {self._line} "
                                         f"({exc})")
                if batch:
                    return batch
                raise StopIteration from None
            if not line:
                if batch:
                    break
                self._file.close()
                raise StopIteration
            self._line += 1
            self._byte += len(line)
            if len(line) == LINE_LIMIT and not line.endswith(b"\n"):
                rest = line
                while rest and not rest.endswith(b"\n"):
                    rest = readline(LINE_LIMIT)
                    self._byte += len(rest)
            stripped = line.strip()
            if stripped:
                batch.append(RawMessage(self._name, self._line, stripped,
                                        f"{self._label}:{self._line}", now))
        return batch

    def snapshot(self) -> tuple[int, int]:
        return (self._byte, self._line)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
