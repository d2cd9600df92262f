"""vigie.spool: the append-only log on the node's disk, on a real filesystem.

What the ingest writer relies on: records come back in the order they were appended, across
segments and reopenings; a record handed out and not confirmed comes back; a torn append
(the process killed mid-write, never acknowledged) is cut off; numbering never goes back,
even once every segment has been removed; one process per spool.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vigie.spool import Spool, SpoolBusy


def payload(i: int) -> bytes:
    return f"record-{i:05d}".encode() * 3


async def drain(spool: Spool, per_read: int = 7) -> list[int]:
    seqs: list[int] = []
    while spool.pending_records:
        records = await spool.read(per_read)
        assert records, "pending records but nothing to read"
        seqs += [r.seq for r in records]
        await spool.confirm()
    return seqs


async def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool", segment_bytes=256)
    for i in range(50):
        await spool.append([(payload(i), 2)])
    assert spool.pending_records == 50 and spool.pending_messages == 100
    assert len(list((tmp_path / "spool").glob("*.seg"))) > 5  # it did roll over
    records: list[bytes] = []
    while spool.pending_records:
        batch = await spool.read(10)
        assert sum(r.messages for r in batch) <= 10
        records += [r.payload for r in batch]
        await spool.confirm()
    assert records == [payload(i) for i in range(50)]
    # Everything applied: the segments are gone, the numbering is kept.
    assert list((tmp_path / "spool").glob("*.seg")) == []
    assert spool.pending_bytes == 0 and spool.disk_bytes == 0
    await spool.close()


async def test_a_read_not_confirmed_is_handed_out_again(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool", segment_bytes=200)
    last = await spool.append([(payload(i), 1) for i in range(12)])
    assert last == 12
    first = await spool.read(5)
    assert [r.seq for r in first] == [1, 2, 3, 4, 5]
    spool.rewind()  # the transaction that applied them failed
    again = await spool.read(5)
    assert [r.seq for r in again] == [1, 2, 3, 4, 5]
    await spool.confirm()
    nxt = await spool.read(5)
    spool.rewind()
    assert [r.seq for r in nxt] == [6, 7, 8, 9, 10]
    # Appends while reading go after what is there.
    await spool.append([(payload(99), 1)])
    assert await drain(spool) == [*range(6, 13), 13]
    await spool.close()


async def test_reopened_spool_replays_from_its_first_unremoved_record(tmp_path: Path) -> None:
    """Confirmation is only local: after a restart, records of a segment not yet removed
    come back (the database's mark says they were applied: the writer skips them)."""
    spool = await Spool.open(tmp_path / "spool", segment_bytes=10_000)
    await spool.append([(payload(i), 1) for i in range(10)])
    await spool.read(3)
    await spool.confirm()
    epoch = spool.epoch
    await spool.close()

    spool = await Spool.open(tmp_path / "spool", segment_bytes=10_000)
    assert spool.epoch == epoch
    assert await drain(spool) == list(range(1, 11))
    await spool.close()


async def test_numbering_survives_a_drained_spool_and_a_restart(tmp_path: Path) -> None:
    # A number used again would be skipped as "already applied" by the database's mark.
    spool = await Spool.open(tmp_path / "spool")
    await spool.append([(payload(i), 1) for i in range(3)])
    await drain(spool)
    await spool.close()
    spool = await Spool.open(tmp_path / "spool")
    assert await spool.append([(payload(3), 1)]) == 4
    await spool.close()


async def test_a_torn_append_is_cut_off_and_appends_go_on_after_it(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool")
    await spool.append([(payload(i), 1) for i in range(3)])
    await spool.close()
    [segment] = (tmp_path / "spool").glob("*.seg")
    good = segment.stat().st_size
    with segment.open("ab") as f:  # a record's header and half its payload
        f.write((100).to_bytes(4, "little") + b"\0" * 20 + b"half a payload")

    spool = await Spool.open(tmp_path / "spool")
    assert segment.stat().st_size == good
    assert spool.pending_records == 3
    await spool.append([(payload(3), 1)])
    records = await spool.read(100)
    assert [r.payload for r in records] == [payload(i) for i in range(4)]
    await spool.close()


async def test_a_flipped_bit_stops_the_segment_there(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool")
    await spool.append([(payload(i), 1) for i in range(4)])
    await spool.close()
    [segment] = (tmp_path / "spool").glob("*.seg")
    data = bytearray(segment.read_bytes())
    size = len(data) // 4
    data[2 * size + 30] ^= 0x01  # inside the third record's payload
    segment.write_bytes(bytes(data))

    spool = await Spool.open(tmp_path / "spool")
    assert [r.payload for r in await spool.read(100)] == [payload(0), payload(1)]
    await spool.close()


async def test_one_process_per_spool(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool")
    with pytest.raises(SpoolBusy):
        await Spool.open(tmp_path / "spool")
    await spool.close()
    again = await Spool.open(tmp_path / "spool")  # released on close
    await again.close()


async def test_an_append_is_written_through_when_it_returns(tmp_path: Path) -> None:
    """Not left in the process's buffers: another process (the node restarted after a
    SIGKILL) reads it right after `append` returned, which is when the writer acknowledges
    to the broker. (That the fsync reached the disk, a power cut would show; the fault
    tests kill the process, not the machine.)"""
    spool = await Spool.open(tmp_path / "spool")
    await spool.append([(payload(7), 3)])
    [segment] = (tmp_path / "spool").glob("*.seg")
    fd = os.open(segment, os.O_RDONLY)
    try:
        assert payload(7) in os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    await spool.close()
