"""The outage spool's lines: a record of an earlier epoch carries its stream and fence, any
other is the record's bytes as they are (what an older gateway spooled, too)."""

from __future__ import annotations

import msgspec

from gateway.clients.publisher import _fenced, _unspooled, spooled_record

RECORD = b'{"schema_version":3,"request_id":"r 1"}'


def test_a_fenced_line_gives_back_its_stream_fence_number_and_record() -> None:
    line = _fenced("p:stream:requests:2", "p:publish-fence:{p:stream:requests:2}:ab:3", 41, RECORD)
    assert msgspec.json.decode(line)["record"] == msgspec.json.decode(RECORD)  # a JSON line
    streams = ["p:stream:requests", "p:stream:requests:1", "p:stream:requests:2"]
    assert _unspooled(line, streams) == (
        "p:stream:requests:2",
        RECORD,
        "p:publish-fence:{p:stream:requests:2}:ab:3",
        41,
    )
    assert spooled_record(line) == RECORD


def test_a_plain_line_goes_to_shard_0_unfenced() -> None:
    assert _unspooled(RECORD, ["p:stream:requests"]) == ("p:stream:requests", RECORD, "", 0)
    assert spooled_record(RECORD) == RECORD


def test_a_fenced_line_for_a_stream_no_longer_written_goes_to_shard_0_unfenced() -> None:
    """Spooled with 3 shards, drained with 1: shard 2 has no consumer any more."""
    line = _fenced("p:stream:requests:2", "p:publish-fence:{p:stream:requests:2}:ab:3", 41, RECORD)
    assert _unspooled(line, ["p:stream:requests"]) == ("p:stream:requests", RECORD, "", 0)


def test_a_malformed_fenced_line_is_sent_as_it_is() -> None:
    """The ingester sets it aside as a dead letter, as it would any other broken line."""
    line = b'{"fence":"f","stream":'
    assert _unspooled(line, ["p:stream:requests"]) == ("p:stream:requests", line, "", 0)
