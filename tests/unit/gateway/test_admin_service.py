from __future__ import annotations

import pytest

from gateway.admin.service import KeyPatch, key_view, patched_key
from gateway.policy.keys import ApiKey, KeyLimits, Permission
from shared.errors import BadRequestError

KEY = ApiKey(
    key_id="k1",
    key_hash="h" * 64,
    org_id="org",
    name="ci",
    limits=KeyLimits(rate_limit_policy="10;w=60", daily_tokens=5),
)


def test_a_patch_changes_what_it_names_and_keeps_the_rest() -> None:
    patch = KeyPatch(
        limits={"daily_tokens": None, "monthly_cost_usd": 2.5}, switches={"cache": False}
    )
    key = patched_key(KEY, patch)
    assert key.limits == KeyLimits(rate_limit_policy="10;w=60", monthly_cost_usd=2.5)
    assert (key.switches.cache, key.switches.log_bodies) == (False, True)
    assert (key.name, key.permissions, key.key_hash) == (KEY.name, KEY.permissions, KEY.key_hash)
    renamed = patched_key(KEY, KeyPatch(name="prod", permissions=frozenset({Permission.READ})))
    assert renamed.name == "prod" and renamed.permissions == {Permission.READ}


@pytest.mark.parametrize(
    "patch",
    [
        KeyPatch(permissions=frozenset()),
        KeyPatch(limits={"rate_limit_policy": "10"}),
        KeyPatch(limits={"unknown": 1}),
        KeyPatch(switches={"cache": "sometimes"}),  # type: ignore[dict-item]
    ],
)
def test_bad_patches_are_bad_requests(patch: KeyPatch) -> None:
    with pytest.raises(BadRequestError):
        patched_key(KEY, patch)


def test_key_view_never_shows_the_hash() -> None:
    assert "key_hash" not in key_view(KEY) and key_view(KEY)["permissions"] == ["proxy"]
