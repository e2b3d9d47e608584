"""``seal``: what it returns is out of the writers' reach, oldest first, earlier seals included."""

from __future__ import annotations

from pathlib import Path

from shared.spool.reader import read_batches
from shared.spool.writer import SpoolWriter, pending_files, seal, spool_path


def _lines(paths: list[Path]) -> list[bytes]:
    return [p for path in paths for batch in read_batches(path, 100) for p in batch.payloads]


def test_seal_returns_every_sealed_file_oldest_first_and_writers_start_afresh(
    tmp_path: Path,
) -> None:
    writer = SpoolWriter(tmp_path, "usage", cap_bytes=40, generations=3)
    for i in range(3):
        writer.append([b'{"n":%d,"pad":"xxxxxxxxxxxxxxxx"}' % i])
    first = seal(tmp_path, "usage")
    assert len(first) == 3
    assert not spool_path(tmp_path, "usage").exists()
    writer.append([b'{"n":3}'])
    second = seal(tmp_path, "usage")
    assert second[:3] == first, "files sealed earlier come first"
    assert [int(p.split(b'"n":')[1][:1]) for p in _lines(second)] == [0, 1, 2, 3]
    writer.append([b'{"n":4}'])
    assert spool_path(tmp_path, "usage") not in second
    assert pending_files(tmp_path, "usage")[-1] == spool_path(tmp_path, "usage")


def test_seal_of_an_empty_or_missing_spool_is_empty(tmp_path: Path) -> None:
    tmp_path.joinpath("other.jsonl").write_bytes(b"{}\n")
    assert seal(tmp_path, "usage") == []
    assert tmp_path.joinpath("other.jsonl").exists()
