"""The spool: an append-only log of records on the node's disk, read back in order.

Layout under the spool directory:

- `state`: `{"epoch": <uuid>, "next_seq": n}`. The epoch names this spool for good (the
  database remembers, per epoch, the last record it applied); `next_seq` keeps sequence
  numbers growing once every segment has been replayed and removed.
- `<first seq, 20 digits>.seg`: segments of records, each
  `length u32 | crc32 u32 | seq u64 | messages u32 | payload`, all little-endian; the CRC
  covers seq, messages and payload.

An append is written and fsynced before `append` returns: a caller acknowledges what it
spooled only after that. A crash can leave a torn record at the end of the last segment
(never acknowledged, since its fsync did not return); opening the spool cuts it off.

One task uses a spool at a time (the ingest writer): appends and reads never run together.
File work runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from vigie.errors import VigieError

__all__ = ["Spool", "SpoolBusy", "SpoolRecord"]

log = logging.getLogger("vigie.spool")

_HEADER = struct.Struct("<IIQI")  # length, crc32, seq, messages
_SUFFIX = ".seg"
MAX_RECORD = 256 * 1024 * 1024  # a bigger length is corruption, not a record


class SpoolBusy(VigieError):
    """Another process holds the spool (two nodes configured with one data directory)."""


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    seq: int
    messages: int  # how many broker messages the record holds (for the metrics)
    payload: bytes
    size: int  # bytes on disk, header included


@dataclass(slots=True)
class _Segment:
    path: Path
    first_seq: int
    size: int = 0  # valid bytes


class Spool:
    """Open with `Spool.open(directory)`; see the module docstring."""

    def __init__(self, directory: Path, epoch: uuid.UUID, next_seq: int,
                 segments: list[_Segment], segment_bytes: int, lock: BinaryIO) -> None:
        self.directory = directory
        self._lock = lock
        self.epoch = epoch
        self._next_seq = next_seq
        self._segments = segments
        self._segment_bytes = segment_bytes
        self._out: BinaryIO | None = None
        # Reading position: the records before it were handed out by `read`.
        self._read_segment = 0
        self._read_offset = 0
        self._in_flight: list[SpoolRecord] = []
        self._in_flight_from: tuple[int, int] | None = None  # (segment's first seq, offset)
        self.pending_bytes = 0
        self.pending_messages = 0
        self.pending_records = 0

    # -- opening --------------------------------------------------------------------------

    @classmethod
    async def open(cls, directory: Path, segment_bytes: int = 64 * 1024 * 1024) -> Spool:
        return await asyncio.to_thread(cls._open, directory, segment_bytes)

    @classmethod
    def _open(cls, directory: Path, segment_bytes: int) -> Spool:
        directory.mkdir(parents=True, exist_ok=True)
        # One process per spool: two appending to the same segments would corrupt them.
        # The kernel releases the lock when its process dies, SIGKILL included.
        lock = open(directory / "lock", "wb")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise SpoolBusy(f"the spool {directory} is in use by another process") from None
        state_path = directory / "state"
        if state_path.exists():
            state = orjson.loads(state_path.read_bytes())
            epoch, next_seq = uuid.UUID(state["epoch"]), int(state["next_seq"])
        else:
            epoch, next_seq = uuid.uuid4(), 1
            _write_atomically(state_path, orjson.dumps(
                {"epoch": str(epoch), "next_seq": next_seq}))
        segments = sorted(
            (_Segment(p, int(p.name.removesuffix(_SUFFIX)))
             for p in directory.iterdir() if p.name.endswith(_SUFFIX)
             and p.name.removesuffix(_SUFFIX).isdigit()),
            key=lambda s: s.first_seq)
        spool = cls(directory, epoch, next_seq, segments, segment_bytes, lock)
        spool._scan()
        return spool

    def _scan(self) -> None:
        """Count what the segments hold; cut a torn or corrupt tail off."""
        for index, segment in enumerate(self._segments):
            valid = 0
            for record, end in _records(segment.path, 0):
                if record is None:
                    break
                valid = end
                self.pending_records += 1
                self.pending_bytes += record.size
                self.pending_messages += record.messages
                self._next_seq = max(self._next_seq, record.seq + 1)
            actual = segment.path.stat().st_size
            if valid < actual:
                last = index == len(self._segments) - 1
                # At the end of the last segment: an append that did not finish, never
                # acknowledged. Anywhere else: the disk lost data; say so loudly.
                (log.warning if last else log.error)(
                    "spool segment %s: %d byte(s) after offset %d are %s; cut off",
                    segment.path.name, actual - valid, valid,
                    "an unfinished append" if last else "corrupt")
                with open(segment.path, "r+b") as f:
                    f.truncate(valid)
                    os.fsync(f.fileno())
            segment.size = valid

    # -- writing --------------------------------------------------------------------------

    async def append(self, payloads: list[tuple[bytes, int]]) -> int:
        """Append records `(payload, messages)`, durably; return the last seq."""
        return await asyncio.to_thread(self._append, payloads)

    def _append(self, payloads: list[tuple[bytes, int]]) -> int:
        blob = bytearray()
        first = self._next_seq
        for n, (payload, messages) in enumerate(payloads):
            blob += _encode(first + n, messages, payload)
        out = self._writer(first)
        out.write(blob)
        out.flush()
        os.fsync(out.fileno())
        self._segments[-1].size += len(blob)
        self._next_seq = first + len(payloads)
        self.pending_records += len(payloads)
        self.pending_bytes += len(blob)
        self.pending_messages += sum(m for _, m in payloads)
        return self._next_seq - 1

    def _writer(self, first_seq: int) -> BinaryIO:
        """The last segment, opened for appending; a new one when it is full."""
        if self._segments and self._segments[-1].size < self._segment_bytes:
            if self._out is None:
                self._out = open(self._segments[-1].path, "ab")  # noqa: SIM115
            return self._out
        if self._out is not None:
            self._out.close()
        path = self.directory / f"{first_seq:020d}{_SUFFIX}"
        self._out = open(path, "ab")  # noqa: SIM115
        _fsync_directory(self.directory)  # the new file's name is durable too
        self._segments.append(_Segment(path, first_seq))
        return self._out

    # -- reading back ---------------------------------------------------------------------

    async def read(self, max_messages: int) -> list[SpoolRecord]:
        """The next records in order: at least one if any is pending, else no more than
        about `max_messages` messages. They are in flight until `confirm` (applied for good)
        or `rewind` (handed out again by the next `read`)."""
        return await asyncio.to_thread(self._read, max_messages)

    def _read(self, max_messages: int) -> list[SpoolRecord]:
        if self._in_flight_from is None and self._read_segment < len(self._segments):
            self._in_flight_from = (self._segments[self._read_segment].first_seq,
                                    self._read_offset)
        out: list[SpoolRecord] = []
        messages = 0
        while self._read_segment < len(self._segments):
            segment = self._segments[self._read_segment]
            for record, end in _records(segment.path, self._read_offset, segment.size):
                if record is None:
                    break
                if out and messages + record.messages > max_messages:
                    self._in_flight += out
                    return out
                out.append(record)
                messages += record.messages
                self._read_offset = end
            if self._read_segment == len(self._segments) - 1:
                break  # the segment still written to: more may come
            self._read_segment += 1
            self._read_offset = 0
        self._in_flight += out
        return out

    def rewind(self) -> None:
        """The records in flight were not applied: the next `read` hands them out again."""
        if self._in_flight_from is not None:
            first_seq, offset = self._in_flight_from
            self._read_segment = next(i for i, s in enumerate(self._segments)
                                      if s.first_seq == first_seq)
            self._read_offset = offset
        self._in_flight_from = None
        self._in_flight.clear()

    async def confirm(self) -> None:
        """The records in flight are applied for good: forget them, and remove the segments
        that hold nothing else."""
        done, self._in_flight = self._in_flight, []
        self._in_flight_from = None
        self.pending_records -= len(done)
        self.pending_bytes -= sum(r.size for r in done)
        self.pending_messages -= sum(r.messages for r in done)
        await asyncio.to_thread(self._drop_consumed)

    def _drop_consumed(self) -> None:
        if self.pending_records == 0:
            # Everything applied: remember where the numbering is, then remove every
            # segment. A crash in between leaves segments the database says are applied.
            _write_atomically(self.directory / "state", orjson.dumps(
                {"epoch": str(self.epoch), "next_seq": self._next_seq}))
            if self._out is not None:
                self._out.close()
                self._out = None
            for segment in self._segments:
                segment.path.unlink(missing_ok=True)
            self._segments.clear()
            self._read_segment = self._read_offset = 0
            _fsync_directory(self.directory)
            return
        # Whole segments before the reading position hold only applied records.
        gone = self._segments[:self._read_segment]
        for segment in gone:
            segment.path.unlink(missing_ok=True)
        if gone:
            del self._segments[:self._read_segment]
            self._read_segment = 0
            _fsync_directory(self.directory)

    # -- state ----------------------------------------------------------------------------

    @property
    def disk_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    async def close(self) -> None:
        if self._out is not None:
            out, self._out = self._out, None
            await asyncio.to_thread(out.close)
        self._lock.close()


def _encode(seq: int, messages: int, payload: bytes) -> bytes:
    body = struct.pack("<QI", seq, messages) + payload
    return struct.pack("<II", len(payload), zlib.crc32(body)) + body


def _records(path: Path, offset: int, limit: int | None = None
             ) -> Iterator[tuple[SpoolRecord | None, int]]:
    """(record, offset after it) from `offset`; (None, offset) where the data stops being
    valid records (end of the valid part, torn or corrupt)."""
    with open(path, "rb") as f:
        f.seek(offset)
        while limit is None or offset < limit:
            header = f.read(_HEADER.size)
            if len(header) < _HEADER.size:
                break
            length, crc, seq, messages = _HEADER.unpack(header)
            if length > MAX_RECORD:
                break
            payload = f.read(length)
            if len(payload) < length or zlib.crc32(header[8:] + payload) != crc:
                break
            offset += _HEADER.size + length
            yield SpoolRecord(seq, messages, payload, _HEADER.size + length), offset
    yield None, offset


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
