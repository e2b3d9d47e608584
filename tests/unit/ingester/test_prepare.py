"""``prepare`` decodes a batch in one pass when every payload is a current record, and one by one
otherwise; either way the same rows and dead letters."""

from __future__ import annotations

import msgspec

from ingester.decode import prepare
from shared.records import SCHEMA_VERSION, RequestRecord
from shared.streams import Sink


def _payload(n: int, **changes: object) -> bytes:
    record = RequestRecord(
        request_id=f"r{n}", org_id="o1", api_key_id="k1", created_at_ms=1_700_000_000_000 + n
    )
    raw = msgspec.structs.asdict(record)
    raw.update(changes)
    return msgspec.json.encode(raw)


def _id(record: object) -> str:
    assert isinstance(record, RequestRecord)
    return record.request_id


def test_a_batch_of_current_records_keeps_each_payload_with_its_record() -> None:
    payloads = [_payload(n) for n in range(3)]
    batch = prepare(Sink.REQUESTS, payloads)
    assert [(_id(record), payload) for record, payload in batch.rows] == [
        ("r0", payloads[0]),
        ("r1", payloads[1]),
        ("r2", payloads[2]),
    ]
    assert batch.letters == []


def test_an_older_record_and_garbage_in_a_batch_are_decoded_one_by_one() -> None:
    payloads = [_payload(0), _payload(1, schema_version=2), b"{not json", _payload(3)]
    batch = prepare(Sink.REQUESTS, payloads)
    assert [_id(record) for record, _ in batch.rows] == ["r0", "r1", "r3"]
    assert {record.schema_version for record, _ in batch.rows} == {SCHEMA_VERSION}  # upgraded
    assert [letter.payload for letter in batch.letters] == [b"{not json"]
