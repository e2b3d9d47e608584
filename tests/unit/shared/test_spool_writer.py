from __future__ import annotations

import itertools
import multiprocessing
import uuid
from pathlib import Path

import pytest

from shared.codec import decode_record, encode_record
from shared.records import RequestRecord
from shared.spool.reader import count_lines, read_batches
from shared.spool.writer import DROPPED, SpoolWriter, read_dropped, spool_path
from shared.streams import Sink


def _payload(i: int, body: int = 200) -> bytes:
    record = RequestRecord(
        request_id=str(uuid.uuid4()),
        org_id="org-1",
        api_key_id="key-1",
        created_at_ms=1_700_000_000_000 + i,
        request_body="x" * body,
        properties={"n": str(i)},
    )
    return encode_record(record)


def _all_payloads(directory: Path, sink: Sink = Sink.REQUESTS) -> list[bytes]:
    out: list[bytes] = []
    for path in sorted(directory.glob(f"{sink.value}.jsonl*")):
        if path.name.endswith(".lock"):
            continue
        for batch in read_batches(path, 1000):
            out.extend(batch.payloads)
    return out


def test_append_writes_one_line_per_payload(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, Sink.REQUESTS)
    first, second = [_payload(i) for i in range(3)], [_payload(i) for i in range(3, 5)]
    writer.append(first)
    writer.append(second)
    path = spool_path(tmp_path, Sink.REQUESTS)
    assert path.read_bytes() == b"".join(p + b"\n" for p in first + second)
    assert [decode_record(Sink.REQUESTS, p) for p in _all_payloads(tmp_path)] == [
        decode_record(Sink.REQUESTS, p) for p in first + second
    ]


def test_empty_append_creates_nothing(tmp_path: Path) -> None:
    SpoolWriter(tmp_path, Sink.SPANS).append([])
    assert not spool_path(tmp_path, Sink.SPANS).exists()


def test_payload_with_a_newline_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="newline"):
        SpoolWriter(tmp_path, Sink.REQUESTS).append([b'{"a":1}', b"{\n}"])
    assert not spool_path(tmp_path, Sink.REQUESTS).exists()


def test_a_torn_line_is_closed_before_the_next_append(tmp_path: Path) -> None:
    path = spool_path(tmp_path, Sink.REQUESTS)
    good = _payload(1)
    path.write_bytes(good + b"\n" + good[:50])  # a writer killed mid-line
    later = _payload(2)
    SpoolWriter(tmp_path, Sink.REQUESTS).append([later])
    lines = path.read_bytes().split(b"\n")
    assert lines == [good, good[:50], later, b""]


def test_a_batch_larger_than_the_cap_is_written_whole(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, Sink.REQUESTS, cap_bytes=3000, generations=2)
    writer.append([_payload(0, body=100)])
    big = [_payload(i, body=400) for i in range(5)]
    writer.append(big)
    assert spool_path(tmp_path, Sink.REQUESTS).read_bytes() == b"".join(p + b"\n" for p in big)
    assert spool_path(tmp_path, Sink.REQUESTS, 1).stat().st_size < 3000


def _spool_bytes(directory: Path, sink: Sink) -> tuple[int, int]:
    files = [spool_path(directory, sink, g) for g in range(10)]
    present = [f for f in files if f.exists()]
    return sum(f.stat().st_size for f in present), sum(count_lines(f) for f in present)


def test_rotation_bounds_the_files_and_counts_every_drop(tmp_path: Path) -> None:
    cap, generations = 64 * 1024, 3
    writer = SpoolWriter(tmp_path, Sink.REQUESTS, cap_bytes=cap, generations=generations)
    before = DROPPED.get(Sink.REQUESTS)
    written_bytes = written_records = largest = 0
    for i in range(300):
        batch = [_payload(i * 10 + j, body=100 + 37 * (i % 7)) for j in range(1 + i % 9)]
        writer.append(batch)
        size = sum(len(p) + 1 for p in batch)
        written_bytes, written_records = written_bytes + size, written_records + len(batch)
        largest = max(largest, size)
        sizes = [s for s in writer.sizes() if s is not None]
        assert all(s <= cap for s in sizes)
        assert sum(sizes) <= generations * cap
    assert not spool_path(tmp_path, Sink.REQUESTS, generations).exists()
    remaining_bytes, remaining_records = _spool_bytes(tmp_path, Sink.REQUESTS)
    sidecar = read_dropped(tmp_path, Sink.REQUESTS)
    assert sidecar.records > 0
    assert sidecar.bytes == written_bytes - remaining_bytes
    assert sidecar.records == written_records - remaining_records
    after = DROPPED.get(Sink.REQUESTS)
    assert after.records - before.records == sidecar.records
    assert after.bytes - before.bytes == sidecar.bytes
    assert after.files - before.files == sidecar.files


def test_rotation_fills_a_gap_instead_of_dropping(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, Sink.SPANS, cap_bytes=500, generations=3)
    spool_path(tmp_path, Sink.SPANS, 2).write_bytes(b"old\n")
    spool_path(tmp_path, Sink.SPANS).write_bytes(b"x" * 400 + b"\n")
    writer.append([b"y" * 200])
    assert spool_path(tmp_path, Sink.SPANS, 1).read_bytes() == b"x" * 400 + b"\n"
    assert spool_path(tmp_path, Sink.SPANS, 2).read_bytes() == b"old\n"
    assert read_dropped(tmp_path, Sink.SPANS).records == 0


def _append_many(directory: str, worker: int, appends: int, cap: int) -> None:
    writer = SpoolWriter(Path(directory), Sink.REQUESTS, cap_bytes=cap, generations=3)
    for i in range(appends):
        writer.append(
            [f'{{"w":{worker},"i":{i},"j":{j},"pad":"{"p" * 90}"}}'.encode() for j in range(4)]
        )


def test_processes_sharing_a_directory_never_interleave_lines(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    workers, appends, cap = 3, 150, 32 * 1024
    procs = [
        ctx.Process(target=_append_many, args=(str(tmp_path), w, appends, cap))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = _all_payloads(tmp_path)
    dropped = read_dropped(tmp_path, Sink.REQUESTS)
    assert all(line.startswith(b'{"w":') and line.endswith(b'"}') for line in lines)
    assert len(set(lines)) == len(lines)
    assert len(lines) + dropped.records == workers * appends * 4
    remaining_bytes, _ = _spool_bytes(tmp_path, Sink.REQUESTS)
    assert remaining_bytes <= 3 * cap


def test_reader_batches_offsets_and_resume(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    lines = [b'{"i":%d}' % i for i in range(10)]
    path.write_bytes(
        b"\n".join(lines[:5]) + b"\n\n" + b"\n".join(lines[5:])
    )  # a blank, no final \n
    batches = list(read_batches(path, 4))
    assert [b.payloads for b in batches] == [lines[:4], lines[4:8], lines[8:]]
    assert batches[0].start_offset == 0
    assert all(a.end_offset == b.start_offset for a, b in itertools.pairwise(batches))
    assert batches[-1].end_offset == path.stat().st_size
    resumed = list(read_batches(path, 100, start_offset=batches[0].end_offset))
    assert resumed[0].payloads == lines[4:]
    assert count_lines(path) == 10
    with pytest.raises(ValueError, match="batch_records"):
        list(read_batches(path, 0))
