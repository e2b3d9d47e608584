"""Prompt templates: ``{{name}}`` variables in message contents, versioned, rendered from the
``inputs`` object of a request body (pure: no I/O; ``gateway.clients.templates`` stores them).

A request names a template with ``floopy-prompt-id: <id>`` (latest version) or ``<id>@<version>``.
Its body carries ``inputs`` (an object of strings; numbers and booleans are written as JSON
writes them) instead of, or before, ``messages``: the rendered template messages come first, any
``messages`` of the body follow. Every variable of the template must be given and nothing else:
a missing or unknown name is a 400 naming it, so a typo never reaches the model as ``{{nmae}}``.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from gateway.policy.json_body import decode_json
from shared.errors import BadRequestError
from shared.redis_keys import MAX_ID_CHARS, check_id

__all__ = [
    "MAX_TEMPLATE_ID_CHARS",
    "Template",
    "TemplateMessage",
    "apply_template",
    "check_template_id",
    "parse_prompt_ref",
    "render_messages",
    "template_variables",
]

MAX_TEMPLATE_ID_CHARS = MAX_ID_CHARS
_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode


class TemplateMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: str
    content: str


class Template(msgspec.Struct, frozen=True, kw_only=True):
    template_id: str
    version: int
    messages: tuple[TemplateMessage, ...]
    created_at_ms: int = 0

    @property
    def variables(self) -> frozenset[str]:
        return template_variables(self.messages)


def check_template_id(template_id: str) -> str:
    """The one id charset of ``shared.redis_keys`` (org, key and template ids alike)."""
    return check_id("prompt template", template_id)


def template_variables(messages: tuple[TemplateMessage, ...]) -> frozenset[str]:
    return frozenset(name for m in messages for name in _VARIABLE.findall(m.content))


def parse_prompt_ref(header: str) -> tuple[str, int | None]:
    """``id`` or ``id@version`` from ``floopy-prompt-id``."""
    template_id, sep, version = header.strip().partition("@")
    check_template_id(template_id)
    if not sep:
        return template_id, None
    if not version.isdigit() or int(version) < 1:
        raise BadRequestError(
            f"floopy-prompt-id: version must be a positive integer, got {version!r}"
        )
    return template_id, int(version)


def _input_text(name: str, value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return _encode(value).decode()
    raise BadRequestError(f"prompt input {name!r} must be a string, number or boolean")


def render_messages(template: Template, inputs: dict[str, str]) -> list[dict[str, str]]:
    wanted = template.variables
    missing = sorted(wanted - inputs.keys())
    if missing:
        raise BadRequestError(
            f"prompt template {template.template_id!r} v{template.version}: missing input "
            + ", ".join(repr(m) for m in missing),
            details={"missing_inputs": missing},
        )
    unknown = sorted(inputs.keys() - wanted)
    if unknown:
        raise BadRequestError(
            f"prompt template {template.template_id!r} v{template.version} has no variable "
            + ", ".join(repr(u) for u in unknown),
            details={"unknown_inputs": unknown},
        )
    return [
        {"role": m.role, "content": _VARIABLE.sub(lambda g: inputs[g.group(1)], m.content)}
        for m in template.messages
    ]


def apply_template(body: bytes, template: Template) -> tuple[bytes, dict[str, str]]:
    """The body to send upstream (``inputs`` replaced by the rendered messages) and the inputs,
    as text, for the record."""
    fields = decode_json(_decode_object, body, "request body (a JSON object)") if body else {}
    raw_inputs = fields.pop("inputs", {})
    if not isinstance(raw_inputs, dict):
        raise BadRequestError("`inputs` must be an object of template variables")
    inputs = {str(k): _input_text(str(k), v) for k, v in raw_inputs.items()}
    extra = fields.get("messages") or []
    if not isinstance(extra, list):
        raise BadRequestError("invalid request body: `messages` must be an array")
    fields["messages"] = [*render_messages(template, inputs), *extra]
    return _encode(fields), inputs
