"""The per-request context the stages share: ids, parsed inputs, decisions, timings, outcome.

It holds no framework or network objects (the open upstream stream stays with the route that
relays it; here is only what was seen of it), so unit tests can build it. Policies do not take
it: the stages hand them the values they decide on (``gateway.domain``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence

import msgspec

from gateway.domain import Bucket, ChatRequest, StageTiming, StreamObservation, UpstreamReply
from gateway.policy.cache import CacheOutcome
from gateway.policy.firewall import FirewallOutcome
from gateway.policy.headers import RequestMeta
from gateway.policy.keys import ApiKey, Org
from gateway.policy.routing import Target
from shared.errors import ClientError

__all__ = ["RequestContext"]


async def _no_body() -> bytes:
    return b""


class RequestContext(msgspec.Struct):
    headers: Mapping[str, str]
    """Request headers, names lower-cased."""
    header_items: list[tuple[str, str]] = msgspec.field(default_factory=list)
    """Every header as sent (repeats kept), names lower-cased: the record's request headers."""
    floopy_headers: list[tuple[str, str]] = msgspec.field(default_factory=list)
    """The ``floopy-*`` ones among them (the intake stage reads them)."""
    read_body: Callable[[], Awaitable[bytes]] = _no_body
    sent_headers: Mapping[str, str] = msgspec.field(default_factory=dict)
    """The headers of the answer the caller got (set when the response is made)."""
    request_id: str = msgspec.field(default_factory=lambda: str(uuid.uuid4()))
    created_at_ms: int = msgspec.field(default_factory=lambda: time.time_ns() // 1_000_000)
    started_ns: int = msgspec.field(default_factory=time.perf_counter_ns)

    org_id: str = ""
    api_key_id: str = ""
    api_key: ApiKey | None = None
    """Set by auth: permissions, limits and switches (cache, firewall, body logging)."""
    org: Org | None = None
    response_headers: dict[str, str] = msgspec.field(default_factory=dict)
    """Headers a stage wants on the answer, error or not (rate-limit state)."""
    after_response_charges: Sequence[Bucket] = ()
    """Token- and cost-unit buckets to charge once the record's tokens and cost are known."""
    prompt_id: str = ""
    prompt_version: int = 0
    prompt_inputs: dict[str, str] = msgspec.field(default_factory=dict)
    body: bytes = b""
    chat: ChatRequest | None = None
    meta: RequestMeta = msgspec.field(default_factory=RequestMeta)

    endpoint: str = "/v1/chat/completions"
    answered: bool = False
    """Set by a stage that answered (a cache hit): the stages after it do not run."""
    cache: CacheOutcome = msgspec.field(default_factory=CacheOutcome)
    firewall: FirewallOutcome = msgspec.field(default_factory=FirewallOutcome)
    child_spans: list[StageTiming] = msgspec.field(default_factory=list)
    """Spans inside a stage (``cache.exact``, ``cache.embed``, ``firewall.classifier`` …),
    each with a ``parent`` attribute naming its stage."""

    targets: list[Target] = msgspec.field(default_factory=list)
    """Set by routing: the provider/model pairs to try, in order."""
    provider_name: str = ""
    """The provider that answered (or, on failure, the last one tried)."""
    providers_tried: list[str] = msgspec.field(default_factory=list)
    retries: int = 0
    attempts: list[StageTiming] = msgspec.field(default_factory=list)
    """One per upstream attempt (spans named ``provider_attempt``), apart from the stages."""
    reply: UpstreamReply | None = None
    stream: StreamObservation | None = None
    """A streamed answer as seen so far (filled in while the route relays it)."""

    timings: list[StageTiming] = msgspec.field(default_factory=list)
    status_code: int = 0
    error: ClientError | None = None
    response_body: bytes = b""
    stream_error: str = ""
    """What cut a stream short after its 200 was sent (client gone, upstream broke)."""
    published: bool = False
    """Set by the publish step when it takes the record: one record per request."""

    @property
    def model_requested(self) -> str:
        return self.chat.model if self.chat else ""

    @property
    def answer(self) -> UpstreamReply | StreamObservation | None:
        """The answer the caller got, whole or streamed (None: no provider or cache answered)."""
        return self.reply if self.reply is not None else self.stream

    @property
    def model_used(self) -> str:
        if self.reply is not None and self.reply.model:
            return self.reply.model
        if self.stream is not None and self.stream.model:
            return self.stream.model
        return ""

    @property
    def model_priced(self) -> str:
        """The model the request is priced as: the one that answered, else the one routed to."""
        return self.model_used or (self.targets[0].model if self.targets else self.model_requested)

    def elapsed_ms(self, now_ns: int | None = None) -> float:
        return ((now_ns or time.perf_counter_ns()) - self.started_ns) / 1e6
