from __future__ import annotations

import pytest

from shared.errors import BadRequestError
from shared.redis_keys import RedisKeys, check_id, is_id


@pytest.mark.parametrize("good", ["acme", "org-1", "key_0123abcd", "a.b", "A" * 128])
def test_ids_in_the_charset(good: str) -> None:
    assert check_id("org", good) == good


@pytest.mark.parametrize("bad", ["", "acme:eu", "a/b", "a b", "ü", "*", "a@b", "A" * 129, "a\n"])
def test_ids_outside_it(bad: str) -> None:
    assert not is_id(bad)
    with pytest.raises(BadRequestError, match="org id"):
        check_id("org", bad)


def test_no_valid_id_reaches_into_another_orgs_keys() -> None:
    """The attack of issue 10: ``acme`` listing ``tpl:acme:*`` found ``acme:eu``'s templates.
    With ``:`` out of the charset, one org's template keys are never under another's prefix."""
    keys = RedisKeys("p")
    mine = keys.template("acme", "")
    assert not keys.template("acme.eu", "secret").startswith(mine)
    assert not keys.org("acme-eu").startswith(keys.org("acme") + ":")
