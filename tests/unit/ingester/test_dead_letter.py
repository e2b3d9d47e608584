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


def test_a_line_torn_by_a_crash_is_skipped_not_fatal(tmp_path: Path) -> None:
    dead = DeadLetterFile(tmp_path, Sink.REQUESTS)
    dead.append([DeadLetter(b"one", "e")])
    with dead.path.open("ab") as f:
        f.write(b'{"sink":"requests","err')  # the crash; the next append closes the line
    dead.append([DeadLetter(b"two", "e")])
    assert [letter.payload for letter in dead.read()] == [b"one", b"two"]


def test_a_claim_moves_the_file_aside_and_later_letters_start_a_new_one(tmp_path: Path) -> None:
    from ingester.dead_letter import claim_for_requeue, mark_requeued, read_letters

    dead = DeadLetterFile(tmp_path, Sink.REQUESTS)
    dead.append([DeadLetter(b"old", "e")])
    [claimed] = claim_for_requeue(tmp_path, Sink.REQUESTS, 1000)
    dead.append([DeadLetter(b"new", "e")])
    assert [letter.payload for letter in read_letters(claimed)] == [b"old"]
    assert [letter.payload for letter in dead.read()] == [b"new"]
    # a second claim in the same millisecond must not overwrite the first
    second = claim_for_requeue(tmp_path, Sink.REQUESTS, 1000)
    assert [p.name for p in second] == [
        "requests.dead.requeue-1000.jsonl",
        "requests.dead.requeue-1001.jsonl",
    ]
    done = mark_requeued(claimed)
    assert done.name == "requests.dead.requeued-1000.jsonl" and done.exists()
    assert claim_for_requeue(tmp_path, Sink.REQUESTS, 2000)[0].name.endswith("-1001.jsonl")
