"""How keys and orgs are laid out in Redis hashes, shared by the authenticator (which reads
them on the hot path) and the admin store (which writes them).

Invariants:
- A struct is a hash whose fields are the struct's fields, each JSON-encoded on its own, so one
  field (an org's ``cache`` or ``firewall``) can be replaced without rewriting the others.
- A reader ignores nothing and invents nothing: a field the struct does not know is an error of
  ``msgspec.convert``, a missing one takes the struct's default (an upgrade adds fields).
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar, cast

import msgspec

from gateway.policy.keys import ApiKey, Org

__all__ = ["aw", "decode_fields", "encode_fields", "flatten"]

S = TypeVar("S", ApiKey, Org)
T = TypeVar("T")


def encode_fields(struct: msgspec.Struct) -> dict[str, bytes]:
    raw = msgspec.to_builtins(struct)
    return {name: msgspec.json.encode(value) for name, value in raw.items()}


def decode_fields(kind: type[S], flat: Iterable[bytes]) -> S:
    items = list(flat)
    raw = {items[i].decode(): msgspec.json.decode(items[i + 1]) for i in range(0, len(items), 2)}
    return msgspec.convert(raw, kind)


def flatten(reply: Any) -> list[bytes]:
    """HGETALL through redis-py gives a dict; a Lua script gives a flat list."""
    if isinstance(reply, dict):
        return [item for pair in reply.items() for item in pair]
    return list(reply)


def aw(value: Awaitable[T] | T) -> Awaitable[T]:
    """redis-py types its asyncio client's commands as ``Awaitable[T] | T``; ours awaits."""
    return cast("Awaitable[T]", value)
