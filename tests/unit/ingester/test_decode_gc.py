"""The collector kept off prepared batches, and garbage cycles still collected (memory flat).

Run in a child interpreter: freezing and tuning the collector is process-wide and must not
leak into the test process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent(
    """
    import gc, threading, weakref

    import ingester.decode as decode
    from shared.codec import encode_record
    from shared.records import RequestRecord
    from shared.streams import Sink

    class Node:
        pass

    payloads = [
        encode_record(RequestRecord(
            request_id=str(i), org_id="o", api_key_id="k", created_at_ms=1_700_000_000_000,
            properties={"p": str(i)}, providers_tried=["openai"],
        ))
        for i in range(200)
    ]
    decode.tune_gc_for_batches()
    frozen = gc.get_freeze_count()
    batch = decode.prepare(Sink.REQUESTS, payloads)
    assert len(batch.rows) == 200 and not batch.letters
    assert gc.isenabled(), "collector left paused"
    assert gc.get_freeze_count() >= frozen + 200, "the batch was not frozen"

    # A garbage cycle made while a batch is prepared is frozen with it...
    def make_cycle():
        a, b = Node(), Node()
        a.other, b.other = b, a
        return weakref.ref(a)

    ref = None
    def during_prepare(_value):
        global ref
        ref = ref or make_cycle()
        return _value
    original = decode.build_columns
    decode.build_columns = lambda sink, records: original(sink, during_prepare(records))
    decode.prepare(Sink.REQUESTS, payloads)
    decode.build_columns = original
    gc.collect()
    assert ref() is not None, "expected the cycle frozen until the next full collection"

    # ...and collected by the next prepare once a full collection is due.
    decode.FULL_COLLECTION_EVERY_S = 0.0
    decode.prepare(Sink.REQUESTS, payloads)
    assert ref() is None, "frozen garbage cycle never collected"

    # Overlapping prepares in two threads leave the collector running afterwards.
    barrier = threading.Barrier(2)
    def work():
        barrier.wait()
        for _ in range(20):
            decode.prepare(Sink.REQUESTS, payloads)
    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gc.isenabled()
    print("ok")
    """
)


def test_prepared_batches_are_frozen_and_cycles_still_collected() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
