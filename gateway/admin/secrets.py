"""Provider credentials at rest: Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) with a
master key that lives only in the environment (``FLOOPY_GATEWAY_MASTER_KEY``).

What is stored is either the ciphertext (``api_key_encrypted``) or the name of an environment
variable (``api_key_env``); a plaintext provider key is never written to Redis, a record or a log.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

from shared.errors import BadRequestError

__all__ = ["decrypt", "encrypt", "new_master_key"]


def new_master_key() -> str:
    return Fernet.generate_key().decode()


def _fernet(master_key: str) -> Fernet:
    if not master_key:
        raise BadRequestError("no master key configured (FLOOPY_GATEWAY_MASTER_KEY)")
    try:
        return Fernet(master_key.encode())
    except ValueError as exc:
        raise BadRequestError(f"the master key is not a Fernet key: {exc}") from None


def encrypt(master_key: str, secret: str) -> str:
    return _fernet(master_key).encrypt(secret.encode()).decode()


def decrypt(master_key: str, token: str) -> str:
    try:
        return _fernet(master_key).decrypt(token.encode()).decode()
    except InvalidToken:
        raise BadRequestError(
            "api_key_encrypted does not decrypt with the configured master key"
        ) from None
