"""JSON Lines files as a replayable Bytewax source: one partition per file.

The snapshot is the byte offset and line number of the next line, so a resumed replay reads on
from where the last snapshot was taken; the engine's per-customer offsets make lines read twice
around a resume harmless.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from churnwatch.dataflows.messages import RawMessage

from churnwatch.core.events import MAX_PAYLOAD_BYTES

#: A line is read up to this many bytes; the rest of a longer one is skipped (it is a
#: ``too_large`` dead letter whatever follows), so one endless line cannot exhaust memory.
LINE_LIMIT = MAX_PAYLOAD_BYTES + 2


class FileSource(FixedPartitionedSource[RawMessage, tuple[int, int]]):
    """Reads JSON Lines files in batches; each file is a partition named ``file:<abs path>``."""

    def __init__(self, paths: Sequence[str | Path], batch_size: int = 5000) -> None:
        self.paths = [Path(p).resolve() for p in paths]
        self.batch_size = batch_size

    def list_parts(self) -> list[str]:
        """Called by Bytewax on every worker at start: one partition per file."""
        return [f"file:{p}" for p in self.paths]

    def build_part(self, step_id: str, for_part: str, resume_state: tuple[int, int] | None
                   ) -> _FilePartition:
        """Called once per partition on the worker that owns it, with the snapshot on resume."""
        return _FilePartition(Path(for_part[len("file:"):]), for_part, self.batch_size,
                              resume_state)


class _FilePartition(StatefulSourcePartition[RawMessage, tuple[int, int]]):
    def __init__(self, path: Path, name: str, batch_size: int,
                 resume_state: tuple[int, int] | None) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close() or at EOF
        self._name = name
        self._label = path.name
        self._batch_size = batch_size
        self._byte, self._line = resume_state or (0, 0)
        self._file.seek(self._byte)

    def next_batch(self) -> list[RawMessage]:
        batch: list[RawMessage] = []
        now = time.time()
        readline = self._file.readline
        while len(batch) < self._batch_size:
            line = readline(LINE_LIMIT)
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
