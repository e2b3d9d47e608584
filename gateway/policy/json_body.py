"""Decoding a caller's JSON, whatever it sent: every failure is a 400 naming what was wrong.

msgspec raises more than ``DecodeError`` on hostile input: ``RecursionError`` past ~1,000
levels of nesting and ``UnicodeDecodeError`` for invalid UTF-8 inside a string. Each of them
reached a caller as a 5xx before (issue 10); this is the one place that maps them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import msgspec

from shared.errors import BadRequestError

__all__ = ["decode_json"]

_T = TypeVar("_T")


def decode_json(decode: Callable[[bytes], _T], raw: bytes, what: str = "request body") -> _T:
    try:
        return decode(raw)
    except msgspec.ValidationError as exc:
        raise BadRequestError(f"invalid {what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequestError(f"{what} is nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise BadRequestError(f"{what} is not valid UTF-8 (byte {exc.start})") from None
