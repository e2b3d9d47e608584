from __future__ import annotations

from pathlib import Path

import msgspec

from ingester.dead_letter import DeadLetter, DeadLetterFile, dead_letter_path
from shared.streams import Sink


def test_append_and_read_back(tmp_path: Path) -> None:
    dead = DeadLetterFile(tmp_path / "dead", Sink.REQUESTS)
    letters = [DeadLetter(b'{"request_id":"r1"}', "column x"), DeadLetter(b"\xff\xfe", "not JSON")]
    dead.append(letters)
    dead.append([DeadLetter(b"third", "e3")])
    assert dead.path == dead_letter_path(tmp_path / "dead", Sink.REQUESTS)
    assert dead.path.name == "requests.dead.jsonl"
    assert list(dead.read()) == [*letters, DeadLetter(b"third", "e3")]


def test_lines_are_json_with_payload_and_error(tmp_path: Path) -> None:
    dead = DeadLetterFile(tmp_path, Sink.SPANS)
    dead.append([DeadLetter(b'{"span_id":"s"}', "boom"), DeadLetter(b"\x80", "bad")])
    first, second = (msgspec.json.decode(line) for line in dead.path.read_bytes().splitlines())
    assert first["payload"] == '{"span_id":"s"}'
    assert (first["sink"], first["error"]) == ("spans", "boom")
    assert isinstance(first["dead_at_ms"], int)
    assert "payload" not in second and second["payload_b64"] == "gA=="


def test_nothing_to_append_creates_no_file(tmp_path: Path) -> None:
    dead = DeadLetterFile(tmp_path, Sink.BREAKER_EVENTS)
    dead.append([])
    assert not dead.path.exists()
    assert list(dead.read()) == []
