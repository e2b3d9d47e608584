"""Validation of providers and routes, in one place: the settings and the config file at
start-up, the stored ones each worker merges in (start-up and every reload), and every write
(admin API, ``floopy-admin``, the config seed through the store).

Two levels, one set of rules:

- **Shape** (``check_provider``, ``check_route``; pure, no environment): what any writer can
  check wherever it runs, ``floopy-admin`` included. A provider's fields are ``ProviderSettings``'
  fields and nothing else, with their types and bounds, an http(s) ``base_url``, an
  ``api_key_env`` that is a variable name, the credential never in plaintext; a route is a model
  and a non-empty list of ``provider`` or ``provider/model`` targets. ``RoutingConfigStore``
  runs it on every write.
- **As a worker builds it** (``merge_routing``, ``check_routing``; needs the worker's settings
  and environment): the variable named by ``api_key_env`` is set, ``api_key_encrypted``
  decrypts with the master key, and the merged routing table can route (no route to an unknown
  provider). A worker leaves an unusable stored provider out with a log line and keeps serving;
  a write through the admin API is refused instead (``strict``).

A refusal is a ``BadRequestError`` (400 BAD_REQUEST in the error table) whose message names the
provider or route and the field, with the field in ``param``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import SecretStr, ValidationError

from gateway.admin.secrets import decrypt
from gateway.clients.upstreams import routing_table
from gateway.settings import GatewaySettings, ProviderSettings
from shared.errors import BadRequestError

__all__ = [
    "check_key_env",
    "check_provider",
    "check_route",
    "check_routing",
    "merge_routing",
    "provider_settings",
]

log = logging.getLogger(__name__)


def _refusal(what: str, field: str, message: str) -> BadRequestError:
    return BadRequestError(f"{what}: {field}: {message}", details={"param": field})


def _field_error(what: str, exc: ValidationError) -> BadRequestError:
    """The first problem pydantic found, as one 400 naming the field (``models.0``)."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    if not field:  # the provider as a whole (its api_key_env unset): the message names it
        return BadRequestError(message)
    return _refusal(what, field, message)


def provider_settings(
    stored: Mapping[str, Any], *, master_key: str = "", environment: bool = True
) -> ProviderSettings:
    """A stored or declared provider as a worker uses it. ``environment=False``: its shape only
    (the variable of ``api_key_env`` is not looked up, ``api_key_encrypted`` not decrypted)."""
    fields = dict(stored)
    name = fields.get("name")
    what = f"provider {name!r}"
    if not isinstance(name, str) or not name:
        raise _refusal("provider", "name", "a provider needs a name")
    if fields.get("api_key"):
        raise _refusal(
            what,
            "api_key",
            "a plaintext api_key is never stored; use api_key_env or api_key_encrypted",
        )
    fields.pop("api_key", None)
    token = fields.pop("api_key_encrypted", "")
    if not isinstance(token, str):
        raise _refusal(what, "api_key_encrypted", "must be a string (a Fernet token)")
    if token and environment:
        fields["api_key"] = SecretStr(decrypt(master_key, token))
    try:
        return ProviderSettings.model_validate(fields, context={"environment": environment})
    except ValidationError as exc:
        raise _field_error(what, exc) from None


def check_provider(stored: Mapping[str, Any]) -> None:
    """The shape of a provider about to be stored or declared (no environment needed)."""
    provider_settings(stored, environment=False)


def check_route(model: object, targets: object) -> None:
    """The shape of a routing rule: a model, and targets ``provider`` or ``provider/model``."""
    if not isinstance(model, str) or not model:
        raise _refusal("route", "model", "a route needs a model name")
    what = f"route {model!r}"
    if not isinstance(targets, list) or not targets:
        raise _refusal(what, "targets", "must be a non-empty list of targets")
    for target in targets:
        if not isinstance(target, str) or not target.partition("/")[0]:
            raise _refusal(what, "targets", f"{target!r} is not 'provider' or 'provider/model'")


def check_key_env(provider: Mapping[str, Any], prefixes: Sequence[str]) -> None:
    """Only variables meant for provider keys (admin API writes): an admin key must not be able
    to name the master key (or any other secret of the gateway's environment) and have it sent
    to its own URL. The config file and the CLI are trusted with the environment."""
    env = provider.get("api_key_env")
    if env is None or env == "":
        return
    if not isinstance(env, str) or not any(env.startswith(p) for p in prefixes):
        allowed = ", ".join(f"{p}*" for p in prefixes) or "(none)"
        raise BadRequestError(
            f"api_key_env must name a variable matching {allowed}; or send api_key, which is "
            "stored encrypted",
            details={"param": "api_key_env"},
        )


def merge_routing(
    settings: GatewaySettings,
    providers: list[dict[str, Any]],
    routes: Mapping[str, list[str]],
    *,
    strict: bool = False,
) -> GatewaySettings:
    """Stored providers and routes over the settings' own (same name or model: the store wins).
    A stored provider that cannot be used (no master key, unset variable, a bad field) is
    logged and left out rather than stopping the worker: the others still serve. ``strict`` (a
    write through the admin API): such a provider is a 400 instead."""
    if not providers and not routes:
        return settings
    master = settings.master_key.get_secret_value()
    merged = {p.name: p for p in settings.provider_list()}
    for stored in providers:
        try:
            provider = provider_settings(stored, master_key=master)
        except BadRequestError as exc:
            if strict:
                raise
            log.error("stored provider %r left out: %s", stored.get("name"), exc.message)
            continue
        merged[provider.name] = provider
    return settings.model_copy(
        update={"providers": list(merged.values()), "routes": {**settings.routes, **routes}}
    )


def check_routing(
    settings: GatewaySettings, providers: list[dict[str, Any]], routes: Mapping[str, list[str]]
) -> None:
    """What a worker builds at start-up from these stored providers and routes, built now: a
    write that would stop the next start (a route to an unknown provider, a provider that
    cannot be used) is a 400 instead."""
    for model, targets in routes.items():
        check_route(model, targets)
    merged = merge_routing(settings, providers, routes, strict=True)
    names = {p.name for p in merged.provider_list()}
    for model, targets in merged.routes.items():
        for target in targets:
            if target.partition("/")[0] not in names:
                raise _refusal(f"route {model!r}", "targets", f"unknown provider in {target!r}")
    try:
        routing_table(merged)
    except ValueError as exc:
        raise BadRequestError(str(exc)) from None
