"""The gateway's own nouns, as plain values: what the policies decide on and the clients fill in.

Layering (enforced by the import-linter contracts in ``pyproject.toml``): ``gateway.policy``
and this module never import ``gateway.clients`` nor a network library; the clients, the
pipeline and the context import these values from here. So a policy can be read and unit-tested
without a socket, and a provider adapter speaks the same types the record is built from.

Nothing here does I/O or holds an open resource: an open upstream stream is a client object
(``gateway.clients.providers.base.UpstreamStream``); what was seen of it while it was read is
a ``StreamObservation``, which is what the context and the record keep. ``StageTiming`` is the
record contract's own (``shared.records``): the gateway's timings are sent as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from shared.records import StageTiming

if TYPE_CHECKING:
    from gateway.policy.ratelimit import RateLimitPolicy

__all__ = [
    "Bucket",
    "ChatRequest",
    "StageTiming",
    "StreamObservation",
    "TokenUsage",
    "UpstreamReply",
    "UsageEntry",
]


class TokenUsage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_prompt_tokens: int = 0


class ChatRequest(msgspec.Struct):
    """A validated chat-completions request: the caller's bytes and what was read of them."""

    raw: bytes
    model: str
    stream: bool = False
    client_wants_usage: bool = False
    """The caller itself set ``stream_options.include_usage``."""
    fields: dict[str, Any] | None = None
    """The decoded body, when a stage needed all of it (streams do, to ask for usage)."""

    def for_model(self, model: str) -> ChatRequest:
        """The same request for another model (a routing target); the body is re-encoded only
        when the model changes."""
        if model == self.model:
            return self
        fields = dict(self.fields if self.fields is not None else msgspec.json.decode(self.raw))
        fields["model"] = model
        return ChatRequest(
            raw=msgspec.json.encode(fields),
            model=model,
            stream=self.stream,
            client_wants_usage=self.client_wants_usage,
            fields=fields,
        )


class UpstreamReply(msgspec.Struct):
    """A complete (non-streamed) successful answer, passed to the caller byte for byte."""

    status_code: int
    body: bytes
    content_type: str
    model: str = ""
    usage: TokenUsage | None = None


class StreamObservation(msgspec.Struct):
    """What a streamed answer told while it was relayed: the record needs it, the caller got
    the bytes. Filled in by whoever reads the stream (a provider's stream, a cache replay)."""

    status_code: int = 200
    model: str = ""
    usage: TokenUsage | None = None
    first_chunk_ns: int = 0
    """``time.perf_counter_ns()`` when the first event arrived (0: none yet)."""
    completed: bool = False
    """The upstream ended the stream properly (``data: [DONE]``, or Anthropic's stop)."""
    content_parts: list[str] = msgspec.field(default_factory=list)
    finish_reason: str = ""


class Bucket(msgspec.Struct, frozen=True):
    """One bucket to take from: its Redis key (``policy.ratelimit.bucket_key``) and policy."""

    key: str
    policy: RateLimitPolicy
    cost: int = 1
    force: bool = False
    segmented: bool = False
    """One of many buckets of a policy split by user or property value (capped per org)."""


class UsageEntry(msgspec.Struct, frozen=True):
    """What one finished request spent, on its way to the key's usage counters (after the
    response), and the token- or cost-unit buckets it is charged to."""

    key_id: str
    tokens: int
    cost_usd: float | None
    now_ms: int
    charges: tuple[Bucket, ...] = ()
    org_id: str = ""
    """Needed on a Redis Cluster (the usage keys carry the org's hash tag)."""
    origin: str = ""
    seq: int = -1
    """With ``origin`` (the gateway process), the entry's identity: the ``seq``-th entry of
    that process for this org. Redis counts an entry once whatever sends it (the live batch,
    its spooled copy); -1: no identity (spool lines of an older gateway), counted as sent."""
