"""Cache keys: what makes two requests "the same" for each tier (pure).

- Exact: a SHA-256 of the canonical request (every body field except the ones that change how
  the answer is delivered, not what it is: ``stream``, ``stream_options``, ``user``,
  ``metadata``, ``store``), keys sorted at every level, integral floats written as integers
  (``"temperature": 1`` and ``1.0`` are one request), prefixed by the endpoint, the org id and
  the cache seed. Two orgs can never share an entry: the org is hashed in, and it names the
  Redis key too.
- Semantic: the same hash without the messages (``params_hash``, a hard filter beside the org,
  the model and the seed) and the messages' text (what is embedded).
- Advanced: the last user turn's text (embedded) and a hash of everything before and after it
  (``prefix_hash``: system prompt and earlier turns must match exactly).

A denylist rather than a list of known parameters: a parameter this code has never heard of
changes the key, so a new provider option can never produce a false hit.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

__all__ = ["DELIVERY_FIELDS", "RequestKeys", "request_keys"]

DELIVERY_FIELDS = frozenset({"stream", "stream_options", "user", "metadata", "store", "inputs"})
"""Fields that do not change the answer; ``inputs`` are template inputs, already rendered into
the messages by the template stage."""

_KEY_VERSION = b"floopy-cache-v1"
_encode_sorted = msgspec.json.Encoder(order="sorted").encode


class RequestKeys(msgspec.Struct, frozen=True):
    exact: str
    """Hex SHA-256: the Redis key's last part, and ``cache_key_hash`` in the record."""
    params_hash: str
    prompt_text: str
    last_turn: str
    prefix_hash: str


def _normalise(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256(_KEY_VERSION)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _message_text(message: Any) -> str:
    """The text of a message: its string content, or the text parts of a list content."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def _prompt_text(messages: list[Any]) -> str:
    """What the semantic tier embeds: one user message is its text (so it is also the last
    turn, embedded once); a conversation is one ``role: text`` line per message."""
    if len(messages) == 1:
        return _message_text(messages[0])
    return "\n".join(
        f"{m.get('role', '')}: {_message_text(m)}" for m in messages if isinstance(m, dict)
    )


def _last_user_index(messages: list[Any]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if isinstance(m, dict) and m.get("role") == "user":
            return i
    return -1


def request_keys(
    fields: dict[str, Any], *, endpoint: str, org_id: str, seed: str, vectors: bool = True
) -> RequestKeys:
    """``fields``: the decoded body as it goes upstream (after template rendering).
    ``vectors``: whether an embedding tier will look up or write; without one only ``exact``
    is made (the other keys are empty), two hashes and the prompt's text fewer per request."""
    kept = {k: _normalise(v) for k, v in fields.items() if k not in DELIVERY_FIELDS}
    scope = (endpoint.encode(), org_id.encode(), seed.encode())
    exact = _digest(*scope, _encode_sorted(kept))
    if not vectors:
        return RequestKeys(exact, "", "", "", "")
    messages = kept.pop("messages", None)
    params_hash = _digest(*scope, _encode_sorted(kept))
    if not isinstance(messages, list):
        return RequestKeys(exact, params_hash, "", "", "")
    prompt_text = _prompt_text(messages)
    last = _last_user_index(messages)
    if last < 0:
        return RequestKeys(exact, params_hash, prompt_text, "", "")
    around = [*messages[:last], {"role": "user", "content": None}, *messages[last + 1 :]]
    prefix_hash = _digest(params_hash.encode(), _encode_sorted(around))
    return RequestKeys(exact, params_hash, prompt_text, _message_text(messages[last]), prefix_hash)
