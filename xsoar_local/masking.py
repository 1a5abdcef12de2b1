"""An instance's secrets, as its params hold them, and their masking in text the platform shows or stores.

The same rules as the script environment's IntegrationLogger: the password of every credentials param (and the
base64 of `identifier:password`, as in a Basic Authorization header), and the text value of every param whose
name contains key, password, secret, token or credential.
"""

from __future__ import annotations

import base64
from typing import Any

SECRET_NAME_PARTS = ("key", "password", "secret", "token", "credential")
MASK = "<XX_REPLACED>"


def secret_values(params: dict[str, Any]) -> list[str]:
    """The secret strings in `params`, longest first."""
    found: list[str] = []
    for name, value in params.items():
        if isinstance(value, dict):
            password, identifier = value.get("password"), value.get("identifier")
            if isinstance(password, str) and password.strip():
                found.append(password)
                if isinstance(identifier, str) and identifier:
                    found.append(base64.b64encode(f"{identifier}:{password}".encode()).decode())
        elif (
            isinstance(value, str)
            and value.strip()
            and any(part in str(name).lower() for part in SECRET_NAME_PARTS)
            # A boolean-looking value is a checkbox, not a secret; masking it would garble every message.
            and value.strip().lower() not in ("true", "false")
        ):
            found.append(value)
    return sorted(set(found), key=len, reverse=True)


def mask_secrets(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text
