"""One way to open Redis for both processes: a single node or a Redis Cluster, chosen by
``RedisSettings.cluster``, and the few rules that keep multi-key work valid on a cluster.

Invariants:
- A Lua script, a ``MULTI`` transaction or a multi-key command only ever touches keys of one
  hash slot on a cluster. Keys used together per org (rate-limit buckets, the org's request
  counter, its keys' usage counters) carry the org id as a hash tag, ``{org}``, in cluster mode
  only: on one node the names stay what they always were, so upgrading keeps the counters.
- The cluster client's own failures (no reachable node, a slot not covered while a master is
  down) are raised as redis-py's ``ConnectionError``: every client of ours already handles
  ``RedisError`` (fail open, retry, count), and redis-py roots those outside it.
- The cluster client is typed as ``Redis``: it answers the same commands, and the clients keep
  one code path. ``pipeline(transaction=True)`` gives a plain pipeline there (redis-py offers no
  MULTI on a cluster): callers that ask for a transaction order their writes so that a prefix of
  them is safe, and what must be atomic is a one-key Lua script. No WATCH is used anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from redis._parsers.hiredis import NOT_ENOUGH_DATA
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import Connection
from redis.connection import HiredisRespSerializer
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError

if TYPE_CHECKING:
    from shared.settings import RedisSettings

__all__ = ["is_cluster", "open_redis", "org_tag", "slot_of"]


_CLUSTER_FAILURES = (RedisClusterException, RuntimeError, AttributeError)
"""RuntimeError, AttributeError: after a connection error redis-py 5's cluster client closes
every connection of the client while other coroutines may be connecting or writing on them;
uvloop then refuses a write on a closed transport (RuntimeError) or the connection's writer is
already gone (``'NoneType' object has no attribute 'writelines'``). Seen in the master-kill
test; both mean "this command did not reach Redis"."""


class _HiredisPacked(Connection):
    """redis-py 5 packs a command of its asyncio client in Python (its sync client packs with
    hiredis, through ``HiredisRespSerializer``): this connection uses that serializer, the same
    bytes for ≈15 µs less CPU per gateway request (a limits call 8.9 → 2.0 µs, ``timeit``)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = _PACKER.pack(*args)
        return packed

    async def can_read_destructive(self) -> bool:
        """Whether a connection the pool hands out holds unread data (the pool then reconnects
        it). redis-py polls the socket under a zero timeout to find out, on every command: a
        cancelled read raised through the loop, most of a pooled get and release (12.9 → 3.0
        µs measured apart; 0.663 → 0.626 ms of CPU per gateway request). What the loop has
        received is in the stream's buffer; when that and the parser's are empty there is
        nothing to read, and the poll is kept for every other case. Bytes still in the
        kernel's buffer are missed, as redis-py's poll misses bytes not yet arrived: the check
        guards against a connection given back with a reply unread, which redis-py already
        prevents by closing a connection whose read failed or was cancelled."""
        stream = self._reader
        buffered = getattr(stream, "_buffer", None)
        parser = getattr(self._parser, "_reader", None)
        if stream is None or buffered is None or parser is None or buffered or stream.at_eof():
            return bool(await super().can_read_destructive())  # type: ignore[no-untyped-call]
        return parser.gets() is not NOT_ENOUGH_DATA

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        """redis-py sends every command under ``asyncio.wait_for`` (a task and a timer per
        send) for a write that only waits when the socket's buffer is full. When the transport
        is open and not paused for writing, the bytes go to it at once, as redis-py's own
        untimed branch does; anything else (not connected, paused, a health check due) takes
        redis-py's path."""
        writer = self._writer
        if (
            writer is None
            or self.health_check_interval
            or not isinstance(command, list)
            or writer.transport.is_closing()
            or getattr(getattr(writer, "_protocol", None), "_paused", True)  # flow control
        ):
            await super().send_packed_command(command, check_health)
            return
        try:
            writer.writelines(command)
        except OSError as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to socket: {exc}") from exc
        except BaseException:
            await self.disconnect(nowait=True)
            raise

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - redis-py's signature
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        """A reply already in the parser's buffer (the second and later replies of a
        pipeline) is returned without redis-py's read timeout around it (a timer per reply);
        it is checked as redis-py checks it. Otherwise redis-py's path."""
        parser = self._parser
        reader = getattr(parser, "_reader", None)
        if reader is None or self.health_check_interval or not getattr(parser, "_connected", False):
            return await super().read_response(
                disable_decoding,
                timeout,
                disconnect_on_error=disconnect_on_error,
                push_request=push_request,
            )
        response = reader.gets(False) if disable_decoding else reader.gets()
        if response is NOT_ENOUGH_DATA:
            return await super().read_response(
                disable_decoding,
                timeout,
                disconnect_on_error=disconnect_on_error,
                push_request=push_request,
            )
        failed = response
        if isinstance(response, list) and response:
            failed = response[0]
        if isinstance(failed, RedisConnectionError):
            if disconnect_on_error:
                await self.disconnect(nowait=True)
            raise failed
        if isinstance(response, ResponseError):
            raise response from None
        return response


_PACKER = HiredisRespSerializer()


def _connection_class(url: str) -> dict[str, Any]:
    """Plain TCP only: TLS and unix sockets keep redis-py's own connection classes (a cluster's
    nodes likewise: ``_Cluster``)."""
    return {"connection_class": _HiredisPacked} if urlsplit(url).scheme == "redis" else {}


class _ClusterPipeline(ClusterPipeline):
    async def execute(self, *args: Any, **kwargs: Any) -> list[Any]:
        client = self._client
        if isinstance(client, _Cluster):
            client.reseed()
        try:
            return await super().execute(*args, **kwargs)
        except _CLUSTER_FAILURES as exc:
            raise RedisConnectionError(f"redis cluster: {exc}") from exc


class _Cluster(RedisCluster):
    """redis-py's cluster client whose failures are ``RedisError``s (see the invariants), and
    which can always find the cluster again: redis-py 5 drops a node from its start-up list
    on each connection error and, once the list is empty, never reconnects even after the
    node is back (redis-py issues #2555, #3693). Every node address ever seen is kept here and
    given back to it when its list ran dry.

    Its nodes' plain TCP connections pack commands with hiredis (``_HiredisPacked``): redis-py's
    cluster client fixes the class of its nodes' connections, and packing in Python cost a
    gateway request ≈ 30 µs of CPU on a cluster (py-spy, ``pack_command``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        manager = self.nodes_manager
        if manager.connection_kwargs.get("connection_class") is Connection:  # not TLS
            manager.connection_kwargs["connection_class"] = _HiredisPacked
            for node in manager.startup_nodes.values():  # made before: no connection yet
                node.connection_class = _HiredisPacked

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        self.reseed()
        try:
            return await super().execute_command(*args, **kwargs)
        except _CLUSTER_FAILURES as exc:
            raise RedisConnectionError(f"redis cluster: {exc}") from exc

    def reseed(self) -> None:
        manager = self.nodes_manager
        known: dict[str, tuple[str, int]] = self.__dict__.setdefault("_known_nodes", {})
        for node in (*manager.startup_nodes.values(), *manager.nodes_cache.values()):
            known.setdefault(node.name, (node.host, int(node.port)))
        if not manager.startup_nodes and known:
            manager.startup_nodes = {
                name: ClusterNode(host, port, **manager.connection_kwargs)
                for name, (host, port) in known.items()
            }

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        """A pipeline, never a transaction (see the invariants)."""
        return _ClusterPipeline(self)  # type: ignore[abstract]  # as redis-py's own pipeline()


def open_redis(settings: RedisSettings, *, extra_timeout_s: float = 0.0) -> Redis:
    """A client for ``settings.url``; ``extra_timeout_s`` is added to the socket timeout (a
    blocked XREADGROUP must not look like a dead server)."""
    timeout = settings.socket_timeout_s + extra_timeout_s
    if settings.cluster:
        cluster = _Cluster.from_url(
            settings.url,
            socket_timeout=timeout,
            socket_connect_timeout=settings.connect_timeout_s,
            # a master being restarted: retry the command on the refreshed slot map
            cluster_error_retry_attempts=3,
        )
        return cast(Redis, cluster)
    return Redis.from_url(  # type: ignore[no-any-return]  # redis-py 5 types from_url loosely
        settings.url,
        socket_timeout=timeout,
        socket_connect_timeout=settings.connect_timeout_s,
        **_connection_class(settings.url),
    )


def is_cluster(redis: Redis) -> bool:
    return isinstance(redis, RedisCluster)


def org_tag(org_id: str, cluster: bool) -> str:
    """The org id as it appears in the names of keys used together: a hash tag on a cluster."""
    return f"{{{org_id}}}" if cluster else org_id


def slot_of(key: str) -> int:
    return key_slot(key.encode())
