from __future__ import annotations

from gateway.domain import StreamObservation
from gateway.policy.openai_wire import observe_event, read_completion
from gateway.policy.sse import SSESplitter, event_data

CHUNK = (
    b'data: {"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"%s"}}],"usage":null}\n\n'
)
USAGE = (
    b'data: {"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,'
    b'"total_tokens":10,"prompt_tokens_details":{"cached_tokens":2}}}\n\n'
)
DONE = b"data: [DONE]\n\n"


def test_splitter_yields_whole_events_across_arbitrary_reads() -> None:
    wire = (CHUNK % b"He") + (CHUNK % b"llo") + USAGE + DONE
    for cut in range(1, 40):
        splitter = SSESplitter()
        events: list[bytes] = []
        for i in range(0, len(wire), cut):
            events.extend(splitter.feed(wire[i : i + cut]))
        assert b"".join(events) == wire  # nothing lost, nothing re-serialised
        assert events[-1] == DONE and len(events) == 4
        assert splitter.pending == b""


def test_splitter_handles_crlf_and_keeps_partial_events() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b"data: a\r\n\r\ndata: b") == [b"data: a\r\n\r\n"]
    assert splitter.pending == b"data: b"
    assert splitter.feed(b"\n\n") == [b"data: b\n\n"]


def test_event_data_joins_data_lines() -> None:
    assert event_data(b'event: x\ndata: {"a":\ndata:1}\n\n') == b'{"a":\n1}'
    assert event_data(b": comment\n\n") == b""


def _run(forward_usage_chunk: bool) -> tuple[StreamObservation, list[bytes]]:
    stream = StreamObservation()
    events = [CHUNK % b"He", CHUNK % b"llo", USAGE, DONE]
    kept = [e for e in events if observe_event(stream, e, forward_usage_chunk)]
    return stream, kept


def test_usage_is_captured_and_the_usage_chunk_dropped_when_not_asked_for() -> None:
    stream, kept = _run(forward_usage_chunk=False)
    assert USAGE not in kept and len(kept) == 3
    assert stream.usage is not None
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (7, 3)
    assert stream.usage.total_tokens == 10 and stream.usage.cached_prompt_tokens == 2
    assert "".join(stream.content_parts) == "Hello"
    assert stream.model == "gpt-4o" and stream.completed


def test_usage_chunk_is_forwarded_when_the_caller_asked() -> None:
    stream, kept = _run(forward_usage_chunk=True)
    assert USAGE in kept and stream.usage is not None


def test_undecodable_events_are_forwarded_untouched() -> None:
    stream = StreamObservation()
    assert observe_event(stream, b"data: {broken\n\n", False)
    assert stream.usage is None and not stream.completed


def test_read_completion() -> None:
    model, usage = read_completion(
        b'{"model":"gpt-4o-mini","usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}'
    )
    assert model == "gpt-4o-mini" and usage is not None and usage.total_tokens == 6
    assert read_completion(b"<html>") == ("", None)
